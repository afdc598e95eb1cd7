"""FeatureStats: what saekit knows about every feature of an SAE after one pass over a corpus.

Saved as one safetensors file (tensors, plus a JSON header in its metadata): no pickle,
so loading never runs code from the file.
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file, save_file
from torch import Tensor

from .._runtime.atomic import atomic_path
from .examples import Examples

FORMAT = "saekit.feature_stats/1"
STATS_FILE = "feature_stats.safetensors"


@dataclass
class LogitEffects:
    """The output tokens each feature's decoder direction promotes and suppresses most:
    the largest and smallest entries of W_U · norm(d_i) (see interpret/logits.py)."""

    promoted: Tensor
    """[d_sae, k] int64 token ids, largest effect first."""
    promoted_values: Tensor
    """[d_sae, k] float32 logit effects."""
    suppressed: Tensor
    """[d_sae, k] int64 token ids, most negative effect first."""
    suppressed_values: Tensor
    """[d_sae, k] float32 logit effects."""


@dataclass
class FeatureStats:
    """Per-feature statistics over the ``n_tokens`` train-mask tokens of a corpus."""

    n_tokens: int
    """Tokens the statistics were collected on."""
    count: Tensor
    """[d_sae] int64: tokens on which each feature fired (f_i > 0)."""
    activation_sum: Tensor
    """[d_sae] float64: Σ_t f_ti."""
    max_activation: Tensor
    """[d_sae] float32: max_t f_ti (0 for a feature that never fired)."""
    hist_edges: Tensor
    """[n_bins + 1] float64: log-spaced bin edges of the activation histograms; bin j
    counts edges[j] ≤ f < edges[j+1], the first bin also counts anything below edges[0]
    and the last anything at or above edges[-1]."""
    hist_counts: Tensor
    """[d_sae, n_bins] int64: histogram of each feature's non-zero activations."""
    l0_counts: Tensor
    """[d_sae + 1] int64: l0_counts[k] = tokens on which exactly k features fired."""
    top: Examples
    """The top-activating examples of each feature, largest first."""
    random: Examples
    """A uniform random sample of each feature's firings, sorted by activation."""
    logits: LogitEffects | None
    """Promoted / suppressed output tokens (None when no model unembedding was available)."""
    meta: dict[str, Any] = field(default_factory=dict)
    """Provenance: model, hook, corpus fingerprint, options of the pass."""

    @property
    def d_sae(self) -> int:
        return self.count.shape[0]

    @property
    def frequency(self) -> Tensor:
        """[d_sae] float64: firing frequency, count / n_tokens."""
        return self.count.double() / max(self.n_tokens, 1)

    @property
    def mean_activation(self) -> Tensor:
        """[d_sae] float64: mean activation over the tokens where the feature fired (0 if never)."""
        return self.activation_sum / self.count.clamp_min(1).double()

    def quantile_of(self, feature: int, value: float) -> float:
        """Fraction of the feature's firings below the histogram bin holding ``value``
        (resolution: one bin)."""
        counts = self.hist_counts[feature]
        total = int(counts.sum())
        if total == 0:
            return float("nan")
        bin_index = int(torch.bucketize(torch.tensor(value, dtype=torch.float64), self.hist_edges[1:-1], right=True))
        return float(counts[:bin_index].sum()) / total

    # ---- persistence ------------------------------------------------------------------------
    def save(self, path: str | Path) -> Path:
        """Write to ``path``, atomically: a .safetensors file, or a folder that will hold
        feature_stats.safetensors (a new folder appears only once complete)."""
        path = Path(path)
        tensors = {
            "count": self.count,
            "activation_sum": self.activation_sum,
            "max_activation": self.max_activation,
            "hist_edges": self.hist_edges,
            "hist_counts": self.hist_counts,
            "l0_counts": self.l0_counts,
            **self.top.tensors("top"),
            **self.random.tensors("random"),
        }
        if self.logits is not None:
            tensors.update(
                {
                    f"logits.{name}": getattr(self.logits, name)
                    for name in ("promoted", "promoted_values", "suppressed", "suppressed_values")
                }
            )
        header = {
            "format": FORMAT,
            "n_tokens": self.n_tokens,
            "top_before": self.top.before,
            "random_before": self.random.before,
            "meta": self.meta,
        }

        def write(file: Path) -> None:
            save_file(
                {k: v.contiguous().cpu() for k, v in tensors.items()},
                str(file),
                metadata={"saekit": json.dumps(header)},
            )

        if path.suffix == ".safetensors" or path.is_dir():
            file = path if path.suffix == ".safetensors" else path / STATS_FILE
            with atomic_path(file) as tmp:
                write(tmp)
            return file
        with atomic_path(path) as tmp:  # a new folder: build it aside, rename it into place
            tmp.mkdir()
            write(tmp / STATS_FILE)
        return path / STATS_FILE

    @classmethod
    def load(cls, path: str | Path) -> FeatureStats:
        """Read what ``save`` wrote (a file, or a folder holding feature_stats.safetensors)."""
        path = Path(path)
        if path.is_dir():
            path = path / STATS_FILE
        if not path.is_file():
            raise FileNotFoundError(f"{path} does not exist; collect feature statistics first (collect_feature_stats).")
        try:
            tensors = load_file(str(path))
            from safetensors import safe_open

            with safe_open(str(path), "pt") as file:
                header = json.loads((file.metadata() or {}).get("saekit", "{}"))
        except (SafetensorError, OSError, json.JSONDecodeError) as error:
            raise ValueError(f"{path} is not a readable feature-statistics file: {error}") from None
        if header.get("format") != FORMAT:
            raise ValueError(
                f"{path} is not a saekit feature-statistics file (format {header.get('format')!r}, "
                f"expected {FORMAT!r})."
            )
        logits = None
        if "logits.promoted" in tensors:
            logits = LogitEffects(
                *(
                    tensors[f"logits.{name}"]
                    for name in ("promoted", "promoted_values", "suppressed", "suppressed_values")
                )
            )
        return cls(
            n_tokens=int(header["n_tokens"]),
            count=tensors["count"],
            activation_sum=tensors["activation_sum"],
            max_activation=tensors["max_activation"],
            hist_edges=tensors["hist_edges"],
            hist_counts=tensors["hist_counts"],
            l0_counts=tensors["l0_counts"],
            top=Examples.from_tensors(tensors, "top", header["top_before"]),
            random=Examples.from_tensors(tensors, "random", header["random_before"]),
            logits=logits,
            meta=header.get("meta", {}),
        )
