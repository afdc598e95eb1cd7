"""Evaluate an SAE inside the model: splice its reconstruction in and measure the loss.

On held-out token contexts, the next-token cross-entropy (nats per prediction) is taken
four times, the activation at the SAE's hook point (a transcoder's target hook point, an
MLP's output say, replaced by its prediction from its input hook point) being

    clean     left as it is                        CE_clean
    SAE       replaced by x̂ = SAE(x)               CE_SAE
    zero      replaced by 0                        CE_zero
    mean      replaced by μ, its mean over the     CE_mean
              evaluated tokens

and reported with

    loss_recovered = (CE_zero − CE_SAE) / (CE_zero − CE_clean)   (1: as good as the model,
                     0: as bad as deleting the activation; SAELens' "CE loss score")
    loss_recovered_mean_ablation   the same with CE_mean in place of CE_zero
    delta_lm_loss  = CE_SAE − CE_clean
    kl_div         = mean over predictions of KL(p_clean ‖ p_SAE) = Σ_v p_clean(v) log(p_clean(v) / p_SAE(v))
    kl_div_zero_ablation, kl_div_score = (KL_zero − KL_SAE) / KL_zero   (SAEBench's KL score)

Only tokens in the corpus's ``train_mask`` are replaced; special tokens (BOS, separators)
and padding keep their original activation, as they were never part of the SAE's
training data. A prediction is scored when the token it is made at is in the train mask
and the token it predicts is not padding, so every scored prediction is made at a
spliced position.

The activation metrics (L0, FVU, explained variance, dead and dense fractions, relative
reconstruction bias, ...) come from ``saekit.evaluate`` on the activations of the same
tokens, so the two sets of numbers describe the same data.
"""

from __future__ import annotations

import math
import sys
import warnings
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TextIO

import torch
import torch.nn.functional as F
from torch import Tensor

from .._runtime.atomic import atomic_write_json
from .._runtime.errors import UsageError
from ..data.corpus import TokenizedCorpus
from ..data.model import LoadedModel, capture, resolve_hook, splice_from
from ..data.pairs import Pair
from ..sae.base import SparseAutoencoder
from .metrics import evaluate

DEFAULT_BATCH_CONTEXTS = 8


def evaluate_in_model(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    tokens: TokenizedCorpus,
    *,
    hook: str | None = None,
    batch_contexts: int = DEFAULT_BATCH_CONTEXTS,
    max_tokens: int | None = None,
    dense_threshold: float = 0.1,
    progress: bool = True,
) -> dict[str, Any]:
    """Spliced cross-entropies and the activation metrics of ``sae`` on ``tokens``.

    ``hook`` defaults to ``sae.cfg.hook``; ``batch_contexts`` contexts go through each
    forward pass (which holds a few [batch_contexts, context_size, vocab] float32 logit tensors);
    ``max_tokens`` keeps the first contexts that together hold that many train-mask tokens.
    Costs one forward pass to the hook point and four full forward passes per batch.

    Returns a flat dict: hook, model, n_contexts, n_predictions, ce_clean, ce_sae,
    ce_zero_ablation, ce_mean_ablation, loss_recovered, loss_recovered_mean_ablation,
    delta_lm_loss, kl_div, then everything ``saekit.evaluate`` returns (n_tokens, l0,
    fvu, ..., feature_frequency as a [d_sae] tensor).
    """
    hook, hook_out = _check_inputs(sae, loaded, hook, batch_contexts)
    corpus = limit_tokens(tokens, max_tokens)
    was_training = sae.training
    sae.eval()
    try:
        mean = _RunningMean(loaded.d_model)
        activation_metrics = evaluate(
            sae,
            mean.tap(_masked_activations(loaded, hook, hook_out, corpus, batch_contexts, progress)),
            batch_size=1 << 16,
            dense_threshold=dense_threshold,
        )
        ce = _spliced_cross_entropies(sae, loaded, hook, hook_out, corpus, mean.value(), batch_contexts, progress)
    finally:
        sae.train(was_training)
    where = {"hook": hook} if hook_out == hook else {"hook": hook, "hook_out": hook_out}
    return {**where, "model": loaded.name, "n_contexts": len(corpus), **ce, **activation_metrics}


def limit_tokens(corpus: TokenizedCorpus, max_tokens: int | None) -> TokenizedCorpus:
    """The first contexts of ``corpus`` that hold at least ``max_tokens`` train-mask tokens
    (whole contexts, so the count may run over by less than one context)."""
    if max_tokens is None:
        return corpus
    if max_tokens < 1:
        raise ValueError(f"max_tokens must be at least 1, got {max_tokens}.")
    per_context = corpus.train_mask.sum(dim=1).cumsum(0)
    if len(per_context) == 0 or int(per_context[-1]) <= max_tokens:
        return corpus
    n_contexts = int(torch.searchsorted(per_context, max_tokens)) + 1
    return corpus.select(torch.arange(n_contexts), f"first:{max_tokens}")


# ---- the two passes ---------------------------------------------------------------------


def _masked_activations(
    loaded: LoadedModel, hook: str, hook_out: str, corpus: TokenizedCorpus, batch_contexts: int, progress: bool
) -> Iterator[Tensor | Pair]:
    """Activations at ``hook`` of the train-mask tokens, batch by batch: [n, d_model] float32
    (Pairs of ``hook`` and ``hook_out``'s, where the SAE predicts another hook point)."""
    for tokens, mask, _ in _batches(corpus, batch_contexts, progress, f"activations at {hook}"):
        acts = capture(loaded, tokens, list(dict.fromkeys([hook, hook_out])))
        keep = mask.to(acts[hook].device)
        x = acts[hook][keep].float()
        yield x if hook_out == hook else Pair(x, acts[hook_out][keep].float())


def _spliced_cross_entropies(
    sae: SparseAutoencoder,
    loaded: LoadedModel,
    hook: str,
    hook_out: str,
    corpus: TokenizedCorpus,
    mean: Tensor,
    batch_contexts: int,
    progress: bool,
) -> dict[str, float]:
    """CE with the activation at ``hook_out`` replaced: by the SAE's output from the
    activation at ``hook`` (the same point for an SAE), by zeros, or by its mean."""
    sae_device = sae.W_dec.device
    mean = mean.to(loaded.device)

    def reconstruct(read: Tensor, act: Tensor) -> Tensor:
        return sae(read.to(sae_device, torch.float32)).to(act.device, act.dtype)

    replacements: dict[str, Callable[[Tensor, Tensor], Tensor]] = {
        "sae": reconstruct,
        "zero_ablation": lambda read, act: torch.zeros_like(act),
        "mean_ablation": lambda read, act: mean.to(act.dtype).expand_as(act),
    }
    sums = dict.fromkeys(["clean", *replacements, "kl", "kl_zero"], 0.0)
    n_predictions = 0
    for tokens, mask, real in _batches(corpus, batch_contexts, progress, "spliced cross-entropy"):
        tokens, mask, real = tokens.to(loaded.device), mask.to(loaded.device), real.to(loaded.device)
        scored, targets = _scored_predictions(tokens, mask, real)
        if not scored.any():
            continue
        n_predictions += int(scored.sum())
        logp_clean = _log_probs(loaded, tokens, scored)  # [n, vocab]
        sums["clean"] += float(F.nll_loss(logp_clean, targets, reduction="sum"))
        for name, replace in replacements.items():
            with splice_from(loaded, hook, hook_out, _only_where(mask, replace)):
                logp = _log_probs(loaded, tokens, scored)
            sums[name] += float(F.nll_loss(logp, targets, reduction="sum"))
            if name in ("sae", "zero_ablation"):  # KL(p_clean ‖ p), summed over the vocabulary
                sums["kl" if name == "sae" else "kl_zero"] += float(
                    F.kl_div(logp, logp_clean, log_target=True, reduction="sum")
                )
            del logp
    if n_predictions == 0:
        raise ValueError(
            "no prediction to score: no context has a train-mask token followed by another token. "
            "Give longer contexts or more text."
        )
    ce = {name: total / n_predictions for name, total in sums.items()}
    return {
        "n_predictions": n_predictions,
        "ce_clean": ce["clean"],
        "ce_sae": ce["sae"],
        "ce_zero_ablation": ce["zero_ablation"],
        "ce_mean_ablation": ce["mean_ablation"],
        "loss_recovered": _recovered(ce["zero_ablation"], ce["sae"], ce["clean"]),
        "loss_recovered_mean_ablation": _recovered(ce["mean_ablation"], ce["sae"], ce["clean"]),
        "delta_lm_loss": ce["sae"] - ce["clean"],
        "kl_div": ce["kl"],
        "kl_div_zero_ablation": ce["kl_zero"],
        "kl_div_score": (ce["kl_zero"] - ce["kl"]) / ce["kl_zero"] if ce["kl_zero"] > 0 else float("nan"),
    }


def _scored_predictions(tokens: Tensor, mask: Tensor, real: Tensor) -> tuple[Tensor, Tensor]:
    """(scored [B, T] bool, targets [n] int64): the prediction made at position t (of
    token t + 1) is scored when token t is in the train mask and token t + 1 is real
    text, not padding (``real``: [B, T] bool)."""
    scored = torch.zeros_like(mask)
    scored[:, :-1] = mask[:, :-1] & real[:, 1:]
    targets = tokens[:, 1:][scored[:, :-1]]
    return scored, targets


def _log_probs(loaded: LoadedModel, tokens: Tensor, scored: Tensor) -> Tensor:
    """log softmax of the model's logits at the scored positions: [n, vocab] float32."""
    with torch.no_grad():
        logits = loaded.model(input_ids=tokens, use_cache=False).logits
    return torch.log_softmax(logits[scored].float(), dim=-1)


def _only_where(mask: Tensor, replace: Callable[[Tensor, Tensor], Tensor]) -> Callable[[Tensor, Tensor], Tensor]:
    """(read, act [B, T, d]) ↦ replace(read, act) at the train-mask tokens, act elsewhere."""
    return lambda read, act: torch.where(mask[..., None], replace(read, act).to(act.dtype), act)


def _recovered(ce_ablated: float, ce_sae: float, ce_clean: float) -> float:
    gap = ce_ablated - ce_clean
    return (ce_ablated - ce_sae) / gap if gap != 0 else float("nan")


def _batches(
    corpus: TokenizedCorpus, batch_contexts: int, progress: bool, desc: str
) -> Iterator[tuple[Tensor, Tensor, Tensor]]:
    """(tokens [b, T] int64, train_mask [b, T] bool, real [b, T] bool: not padding) for
    consecutive contexts."""
    from tqdm.auto import tqdm

    for begin in tqdm(
        range(0, len(corpus), batch_contexts), desc=desc, unit="batch", disable=not progress, leave=False
    ):
        end = begin + batch_contexts
        yield corpus.tokens[begin:end], corpus.train_mask[begin:end], corpus.doc_ids[begin:end] >= 0


class _RunningMean:
    """Σ x / N over every row passed through ``tap``, accumulated in float64."""

    def __init__(self, d: int) -> None:
        self.total = torch.zeros(d, dtype=torch.float64)
        self.n = 0

    def tap(self, batches: Iterator[Tensor | Pair]) -> Iterator[Tensor | Pair]:
        """The batches, unchanged; the mean is of what is replaced (a Pair's target)."""
        for batch in batches:
            replaced = batch.y if isinstance(batch, Pair) else batch
            self.total += replaced.sum(0).double().cpu()
            self.n += replaced.shape[0]
            yield batch

    def value(self) -> Tensor:
        if self.n == 0:
            raise UsageError("the corpus has no train-mask tokens to evaluate on.")
        return (self.total / self.n).float()


def hook_points(sae: SparseAutoencoder, loaded: LoadedModel, hook: str | None = None) -> tuple[str, str]:
    """(the hook point the SAE reads, the one its output replaces: the same for an SAE),
    resolved in ``loaded``; refuses an SAE whose width is not the model's."""
    hook = hook or sae.cfg.hook
    if hook is None:
        raise UsageError(
            "the SAE's cfg.json names no hook point; pass hook= (CLI: --hook), e.g. 'layers.15.resid_post'."
        )
    hook = str(resolve_hook(loaded, hook))
    hook_out = str(resolve_hook(loaded, sae.cfg.hook_out)) if sae.cfg.hook_out else hook
    if sae.d_in != loaded.d_model:
        raise UsageError(
            f"the SAE reads d_in={sae.d_in} but {loaded.name} has d_model={loaded.d_model}; "
            "use it with the model it was trained on."
        )
    return hook, hook_out


def _check_inputs(
    sae: SparseAutoencoder, loaded: LoadedModel, hook: str | None, batch_contexts: int
) -> tuple[str, str]:
    """hook_points, a warning when the model is not the SAE's, and batch_contexts ≥ 1."""
    hook, hook_out = hook_points(sae, loaded, hook)
    if sae.cfg.model and sae.cfg.model != loaded.name:
        warnings.warn(f"the SAE was trained on {sae.cfg.model!r} but is evaluated in {loaded.name!r}.", stacklevel=3)
    if batch_contexts < 1:
        raise UsageError(f"batch_contexts (contexts per forward pass) must be at least 1, got {batch_contexts}.")
    return hook, hook_out


# ---- output ------------------------------------------------------------------------------


def write_metrics(path: str | Path, metrics: dict[str, Any]) -> Path:
    """Write ``metrics`` as JSON, atomically: tensors become lists, NaN and ±inf become null."""
    path = Path(path)
    atomic_write_json(path, _jsonable(metrics))
    return path


def read_metrics(path: str | Path) -> dict[str, Any]:
    """Read a metrics.json written by ``write_metrics``."""
    import json

    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"{path} does not exist; run `saekit evaluate RUN` first to write it.")
    return json.loads(path.read_text())


def _jsonable(value: Any) -> Any:
    if isinstance(value, Tensor):
        return _jsonable(value.tolist())
    if isinstance(value, dict):
        return {str(k): _jsonable(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_jsonable(v) for v in value]
    if isinstance(value, float) and not math.isfinite(value):
        return None
    return value


_TABLE = (
    ("in the model", None),
    ("ce_clean", "CE clean (nats)"),
    ("ce_sae", "CE with SAE spliced in"),
    ("ce_mean_ablation", "CE mean-ablated"),
    ("ce_zero_ablation", "CE zero-ablated"),
    ("loss_recovered", "loss recovered (vs zero)"),
    ("loss_recovered_mean_ablation", "loss recovered (vs mean)"),
    ("delta_lm_loss", "ΔLM loss"),
    ("kl_div", "KL(clean ‖ SAE) per token"),
    ("n_predictions", "predictions scored"),
    ("activations", None),
    ("l0", "L0"),
    ("l1", "L1"),
    ("fvu", "FVU"),
    ("explained_variance", "explained variance"),
    ("mse", "MSE per dimension"),
    ("cosine_similarity", "cosine similarity"),
    ("relative_reconstruction_bias", "relative reconstruction bias γ"),
    ("dead_fraction", "dead fraction"),
    ("dense_fraction", "dense fraction"),
    ("n_tokens", "tokens"),
)


def table_rows(metrics: dict[str, Any]) -> list[tuple[str, str | None]]:
    """(label, formatted value) for the known metrics present; a row with value None is a
    section heading (left out when none of its metrics is present)."""
    rows: list[tuple[str, str | None]] = []
    heading: str | None = None
    for key, label in _TABLE:
        if label is None:
            heading = key
        elif key in metrics:
            if heading is not None:
                rows.append((heading, None))
                heading = None
            rows.append((label, format_value(metrics[key])))
    return rows


def format_value(value: Any) -> str:
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "n/a"
    if isinstance(value, int):
        return f"{value:,}"
    if isinstance(value, float):
        return f"{value:.4g}" if abs(value) < 1e4 else f"{value:,.0f}"
    return str(value)


def print_table(metrics: dict[str, Any], file: TextIO | None = None) -> None:
    """Print the metrics as a two-column table, grouped into model and activation metrics."""
    file = file or sys.stdout
    rows = table_rows(metrics)
    width = max((len(label) for label, value in rows if value is not None), default=0)
    title = " · ".join(str(metrics[k]) for k in ("model", "hook") if metrics.get(k))
    if title:
        print(title, file=file)
    for label, value in rows:
        if value is None:
            print(f"-- {label} " + "-" * max(0, width + 8 - len(label)), file=file)
        else:
            print(f"  {label:<{width}}  {value:>10}", file=file)
