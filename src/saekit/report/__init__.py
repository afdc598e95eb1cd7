"""Reports: PNG plots (plots.py) and the HTML dashboard (dashboard.py, templates/).

path = write_report(run / "report", sae, stats, metrics, loaded.tokenizer)   # report/index.html
"""

from __future__ import annotations

from .dashboard import write_report
from .plots import feature_density, frequency_vs_activation, l0_histogram, loss_comparison, write_plots

__all__ = [
    "feature_density",
    "frequency_vs_activation",
    "l0_histogram",
    "loss_comparison",
    "write_plots",
    "write_report",
]
