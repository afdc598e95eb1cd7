"""Reports: PNG plots (plots.py) and the HTML dashboard (dashboard.py, templates/).

path = write_report(run / "report", sae, stats, metrics, loaded.tokenizer, loaded=loaded)   # report/index.html

The feature pages' optional parts (extras.py) are gathered by write_report: co-firing
from RUN/store, explanations and steering from RUN/features (annotations.py), the
logit-weight histograms from ``loaded``; quantile groups of examples come from groups.py.
"""

from __future__ import annotations

from .annotations import Explanation, Steering, read_explanations, read_steering
from .dashboard import write_report
from .extras import FeatureExtras, gather_extras
from .plots import feature_density, frequency_vs_activation, l0_histogram, loss_comparison, write_plots

__all__ = [
    "Explanation",
    "FeatureExtras",
    "Steering",
    "feature_density",
    "frequency_vs_activation",
    "gather_extras",
    "l0_histogram",
    "loss_comparison",
    "read_explanations",
    "read_steering",
    "write_plots",
    "write_report",
]
