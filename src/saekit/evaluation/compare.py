"""Match the features of two SAEs on the same hook point by decoder cosine similarity.

For each feature i of A, its best counterpart in B is argmax_j cos(d^A_i, d^B_j); A's
features whose best cosine is below a threshold have no counterpart. Trained on one
author's texts (A) and on a general corpus (B), those are the features specific to the
author.
"""

from __future__ import annotations

from pathlib import Path

import torch

from .._runtime.errors import UsageError
from ..formats import load as load_sae


def compare(
    a: str | Path,
    b: str | Path,
    *,
    threshold: float = 0.7,
    chunk: int = 4096,
    labels: dict[int, list[str]] | None = None,
) -> dict:
    """A's features matched against B's (SAE folders); ``labels``: words to show for A's features."""
    sae_a, sae_b = load_sae(a), load_sae(b)
    if sae_a.d_in != sae_b.d_in:
        raise UsageError(
            f"the SAEs read activations of different widths ({sae_a.d_in} and {sae_b.d_in}); "
            "compare SAEs trained at the same hook point of the same model."
        )
    if sae_a.cfg.hook != sae_b.cfg.hook or sae_a.cfg.model != sae_b.cfg.model:
        print(
            f"warning: A reads {sae_a.cfg.model}:{sae_a.cfg.hook} and B reads {sae_b.cfg.model}:{sae_b.cfg.hook}; "
            "their directions live in different spaces unless these match."
        )
    with torch.no_grad():
        dec_a = torch.nn.functional.normalize(sae_a.W_dec.float(), dim=1)
        dec_b = torch.nn.functional.normalize(sae_b.W_dec.float(), dim=1)
        best, match = [], []
        for begin in range(0, dec_a.shape[0], chunk):  # [chunk, d_sae_B] at a time, never [d_sae_A, d_sae_B]
            cos = dec_a[begin : begin + chunk] @ dec_b.t()
            value, index = cos.max(dim=1)
            best.append(value)
            match.append(index)
        best_cos, best_match = torch.cat(best), torch.cat(match)
    unmatched = torch.nonzero(best_cos < threshold).flatten()
    order = unmatched[best_cos[unmatched].argsort()]
    return {
        "a": str(a),
        "b": str(b),
        "threshold": threshold,
        "d_sae_a": sae_a.d_sae,
        "d_sae_b": sae_b.d_sae,
        "mean_best_cosine": float(best_cos.mean()),
        "fraction_matched": float((best_cos >= threshold).float().mean()),
        "unmatched": [
            {
                "feature": int(i),
                "best_cosine": float(best_cos[i]),
                "closest_in_b": int(best_match[i]),
                **({"top_tokens": labels[int(i)]} if labels and int(i) in labels else {}),
            }
            for i in order
        ],
    }


def print_comparison(result: dict, *, limit: int = 30) -> None:
    print(f"A: {result['a']} ({result['d_sae_a']} features)   B: {result['b']} ({result['d_sae_b']} features)")
    print(
        f"mean best cosine {result['mean_best_cosine']:.3f}; {result['fraction_matched']:.1%} of A's features have a "
        f"counterpart in B at cosine >= {result['threshold']}"
    )
    print(
        f"{len(result['unmatched'])} features of A without a counterpart; "
        f"the {min(limit, len(result['unmatched']))} most distinct:"
    )
    print(f"{'feature':>8} {'best cos':>9} {'closest B':>10}  top tokens")
    for row in result["unmatched"][:limit]:
        print(
            f"{row['feature']:>8} {row['best_cosine']:>9.3f} {row['closest_in_b']:>10}  "
            f"{' '.join(row.get('top_tokens', []))}"
        )
