"""Quantile-binned example groups: a feature's kept examples, grouped by activation quantile.

SAEDashboard and Neuronpedia show a feature's firings at several activation levels, not
only its top ones, because the top contexts often say little about what the feature does
most of the time. Here the examples FeatureStats kept (the top examples and the uniform
random sample of firings, the same firing counted once) are sorted by activation and cut
at the activations of fixed quantiles of the feature's whole firing distribution,

    v(q): the activation below which a fraction q of the feature's firings lie,

read from its activation histogram (interpolated log-linearly within a bin, so the edges
are approximate, to within one histogram bin). A group [v(q_lo), v(q_hi)) holds a
fraction q_hi − q_lo of all firings; the random sample fills the lower groups in
proportion, the top examples the highest.
"""

from __future__ import annotations

import bisect
import math

from torch import Tensor

QUANTILES = (0.0, 0.5, 0.75, 0.9, 0.99, 1.0)
"""Group edges, as fractions of a feature's firings: the lower half, then ever thinner upper slices."""


def quantile_values(edges: Tensor, counts: Tensor, max_activation: float, quantiles=QUANTILES) -> list[float]:
    """v(q) for each q, from a histogram: ``edges`` [n_bins + 1] (positive, increasing; the
    first bin also holds what lies below edges[0], the last what lies above edges[-1]),
    ``counts`` [n_bins]; v(0) = 0, v(1) = the feature's max activation."""
    cumulative = [0]
    for n in counts.tolist():
        cumulative.append(cumulative[-1] + n)
    total = cumulative[-1]
    edge = edges.tolist()
    values = []
    for q in quantiles:
        if q <= 0 or total == 0:
            values.append(0.0)
            continue
        if q >= 1:
            values.append(float(max_activation))
            continue
        target = q * total
        j = min(bisect.bisect_left(cumulative, target) - 1, len(counts) - 1)
        j = max(j, 0)
        inside = (target - cumulative[j]) / max(cumulative[j + 1] - cumulative[j], 1)
        values.append(edge[j] * math.exp(inside * math.log(edge[j + 1] / edge[j])))
    values = [min(max(v, 0.0), float(max_activation)) for v in values]
    for i in range(1, len(values)):  # keep them non-decreasing
        values[i] = max(values[i], values[i - 1])
    return values


def quantile_at(edges: Tensor, counts: Tensor, value: float) -> float:
    """The fraction of firings below ``value``, read from the histogram as ``quantile_values``
    reads it (its inverse): log-linear within the bin that holds ``value``; NaN when empty."""
    cumulative = [0]
    for n in counts.tolist():
        cumulative.append(cumulative[-1] + n)
    total = cumulative[-1]
    if total == 0:
        return float("nan")
    edge = edges.tolist()
    j = min(max(bisect.bisect_right(edge, value) - 1, 0), len(counts) - 1)
    if value <= 0:
        return 0.0
    inside = math.log(value / edge[j]) / math.log(edge[j + 1] / edge[j])
    inside = min(max(inside, 0.0), 1.0)
    return (cumulative[j] + inside * (cumulative[j + 1] - cumulative[j])) / total


def quantile_groups(
    examples: list[tuple[int, float]], edges: Tensor, counts: Tensor, max_activation: float, quantiles=QUANTILES
) -> list[dict]:
    """Groups of ``examples`` [(index, activation)], highest quantiles first:
    [{"q": [q_lo, q_hi], "range": [v(q_lo), v(q_hi)], "members": [index, ...]}], members
    sorted by activation, largest first; every example is in exactly one group."""
    bounds = quantile_values(edges, counts, max_activation, quantiles)
    last = len(quantiles) - 2
    members: list[list[int]] = [[] for _ in range(last + 1)]
    for i, v in sorted(examples, key=lambda pair: (-pair[1], pair[0])):
        # the group whose [lo, hi) holds v (edges can coincide: the highest such group), the max in the last
        members[min(max(bisect.bisect_right(bounds, v) - 1, 0), last)].append(i)
    return [
        {
            "q": [quantiles[g], quantiles[g + 1]],
            "range": [_round(bounds[g]), _round(bounds[g + 1])],
            "members": members[g],
        }
        for g in reversed(range(last + 1))
    ]


def _round(x: float) -> float:
    return float(f"{x:.4g}")
