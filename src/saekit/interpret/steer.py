"""What a feature does: steer, clamp or ablate it inside the model, at the SAE's hook point.

With f = SAE.encode(x) at the hook point and w_F the feature's write per unit of
activation (row F of W_dec, times its feature scale where the SAE has one; for an SAE
with input normalisation, what decode adds per unit of f_F on that token), the edits are

    steer   x ← x + S · d_F                  d_F = w_F / ‖w_F‖, the unit decoder direction
    clamp   x ← x + (v − f_F(x)) · w_F       f_F set to v in the SAE's code
    ablate  x ← x − f_F(x) · w_F             clamp to 0: the feature removed

Clamp and ablate change only the feature's own term of the reconstruction and add the
change to x itself, not to x̂: the SAE's reconstruction error x − x̂ is kept, so an
edit that changes nothing (ablating a feature that is zero everywhere, steering with
S = 0) leaves the model's output exactly as it was, and the effect measured is the
feature's alone, not that of splicing the SAE in.

Strength units: ``S`` is in the units of the activation at the hook point (a norm in
the residual stream). ``strength_unit(sae, max_activation, F)`` gives the norm of what
the feature writes at its largest activation seen (feature_stats' max_activation), so
that ``S = m · strength_unit(...)`` steers with m times that: m = 1 is as strong as the
feature ever is on the corpus, and is comparable across features (the pipeline's
steering stage uses such multiples). A transcoder reads its input hook point and its
edits are made where it writes (``hook_out``).

    with saekit.interpret.edit(loaded, sae, steer={123: 40.0}):
        texts = generate(loaded, prompt_ids(loaded, "The king said"), 16)   # or any forward

The hooks are removed when the block ends, also when it ends by an exception.
"""

from __future__ import annotations

import math
import operator
from collections.abc import Callable, Iterable, Iterator, Mapping
from contextlib import contextmanager
from typing import Any

import torch
from torch import Tensor

from .._runtime.errors import UsageError
from ..data.model import LoadedModel, splice_from
from ..evaluation.splice import hook_points
from ..sae.base import SparseAutoencoder

# ---- a feature's direction and units ------------------------------------------------------


def check_feature(sae: SparseAutoencoder, feature: Any, *, what: str = "feature") -> int:
    """``feature`` as an int in 0..d_sae−1, or a one-line error naming the range."""
    try:
        index = None if isinstance(feature, bool) else operator.index(feature)  # int, numpy or 0-d tensor ints
    except TypeError:
        index = None
    if index is None or not 0 <= index < sae.d_sae:
        raise UsageError(
            f"{what} {feature!r} is out of range: the SAE has {sae.d_sae} features, numbered 0..{sae.d_sae - 1}."
        )
    return index


@torch.no_grad()
def feature_write(sae: SparseAutoencoder, feature: int) -> Tensor:
    """w_F: [d_out] float32, what the decoder adds per unit of f_F (before any per-token
    output de-normalisation): decode(e_F) − decode(0) for an SAE without input normalisation."""
    check_feature(sae, feature)
    row = sae.W_dec[feature].detach().float()
    scale = getattr(sae, "feature_scale", None) if sae.cfg.feature_scale else None
    return row * float(scale[feature]) if scale is not None else row


def feature_direction(sae: SparseAutoencoder, feature: int) -> Tensor:
    """d_F: [d_out] float32, the unit vector along the feature's decoder row."""
    write = feature_write(sae, feature)
    norm = write.norm()
    if not norm > 0:
        raise UsageError(f"feature {feature} has a zero decoder row: it has no direction to steer along.")
    return write / norm


def strength_unit(sae: SparseAutoencoder, max_activation: Tensor, feature: int) -> float:
    """‖max_F · w_F‖: the norm of what feature F writes at its largest activation seen
    (``max_activation``: [d_sae], FeatureStats.max_activation). Multiply a steering
    multiple by it to get an absolute strength; 0 for a feature that never fired."""
    return float(max_activation[feature]) * float(feature_write(sae, feature).norm())


# ---- the edit ------------------------------------------------------------------------------


def _edit_function(
    sae: SparseAutoencoder,
    steer: dict[int, float],
    clamp: dict[int, float],
    ablate: list[int],
    mask: Tensor | None,
) -> Callable[[Tensor, Tensor], Tensor]:
    """(read [B, T, d_in], act [B, T, d_out]) ↦ the edited act, in act's dtype."""
    device = sae.W_dec.device
    shift = torch.zeros(sae.d_out, device=device)
    for feature, strength in steer.items():
        shift += strength * feature_direction(sae, feature).to(device)
    coded = list(clamp) + [f for f in ablate if f not in clamp]

    def apply(read: Tensor, act: Tensor) -> Tensor:
        delta = shift.expand(act.shape)  # [B, T, d_out]
        if coded:
            f = sae.encode(read.to(device, torch.float32))  # [B, T, d_sae]
            change = torch.zeros_like(f)
            for feature in coded:
                target = clamp.get(feature, 0.0)
                change[..., feature] = target - f[..., feature]
            # The change of the SAE's output, through its own decode (feature scale, input
            # normalisation); b_dec cancels, and a zero change is exactly zero.
            delta = delta + (sae.decode(change) - sae.decode(torch.zeros_like(change)))
        if mask is not None:
            if tuple(mask.shape) != tuple(act.shape[:-1]):
                raise UsageError(
                    f"edit(mask=...) has shape {tuple(mask.shape)} but the forward pass has {tuple(act.shape[:-1])} "
                    "tokens; a mask fits one full forward pass (no key-value cache)."
                )
            delta = delta * mask.to(delta.device, delta.dtype)[..., None]
        return (act.float() + delta.to(act.device)).to(act.dtype)

    return apply


@contextmanager
def edit(
    loaded: LoadedModel,
    sae: SparseAutoencoder,
    *,
    steer: Mapping[int, float] | None = None,
    clamp: Mapping[int, float] | None = None,
    ablate: Iterable[int] = (),
    mask: Tensor | None = None,
    hook: str | None = None,
) -> Iterator[None]:
    """Within the block, every forward of ``loaded.model`` edits the activation at the
    SAE's hook point (module docstring): ``steer`` {feature: S} adds S·d_F, ``clamp``
    {feature: v} sets f_F to v, ``ablate`` [features] sets them to 0; edits add up.

    ``mask`` [B, T] bool limits the edit to some tokens of one full forward pass (leave
    it out for generation with a cache, where each forward sees only the new tokens).
    ``hook`` overrides the SAE's own hook point. The hooks are removed on exit, also on
    an exception."""
    read, write = hook_points(sae, loaded, hook)
    steer = {check_feature(sae, f): _finite(s, f"steering strength of feature {f}") for f, s in (steer or {}).items()}
    clamp = {check_feature(sae, f): _finite(v, f"clamp value of feature {f}") for f, v in (clamp or {}).items()}
    ablate = [check_feature(sae, f) for f in ablate]
    was_training = sae.training
    sae.eval()
    try:
        with torch.no_grad(), splice_from(loaded, read, write, _edit_function(sae, steer, clamp, ablate, mask)):
            yield
    finally:
        sae.train(was_training)


@contextmanager
def steer_rows(loaded: LoadedModel, sae: SparseAutoencoder, shifts: Tensor, *, hook: str | None = None):
    """Within the block, row b of every batch has ``shifts[b]`` ([B, d_out]) added at every
    token: one batch steers a different feature (or strength) in each row."""
    read, write = hook_points(sae, loaded, hook)

    def apply(_: Tensor, act: Tensor) -> Tensor:
        if act.shape[0] != shifts.shape[0]:
            raise UsageError(f"steer_rows has {shifts.shape[0]} rows but the batch has {act.shape[0]}.")
        return (act.float() + shifts.to(act.device)[:, None, :]).to(act.dtype)

    with torch.no_grad(), splice_from(loaded, read, write, apply):
        yield


def _finite(value: Any, what: str) -> float:
    try:
        number = float(value)
    except (TypeError, ValueError):
        raise UsageError(f"the {what} must be a number, got {value!r}.") from None
    if not math.isfinite(number):
        raise UsageError(f"the {what} must be finite, got {value!r}.")
    return number


# ---- generation --------------------------------------------------------------------------


def prompt_ids(loaded: LoadedModel, prompt: str) -> Tensor:
    """[1, T] int64: BOS followed by the prompt's tokens, the layout of saekit's training
    contexts (data/corpus.py)."""
    if not prompt or not prompt.strip():
        raise UsageError("the prompt is empty; give some text to continue, e.g. --prompt 'To be, or not'.")
    tokenizer = loaded.tokenizer
    ids = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    bos = tokenizer.bos_token_id if tokenizer.bos_token_id is not None else tokenizer.eos_token_id
    return torch.tensor([([bos] if bos is not None else []) + list(ids)], dtype=torch.int64)


@torch.no_grad()
def generate(
    loaded: LoadedModel, ids: Tensor, max_new_tokens: int, *, temperature: float = 0.0, seed: int = 0
) -> list[str]:
    """The continuations (text after the prompt) of the rows of ``ids`` [B, T]: greedy
    (``temperature`` 0), else sampled from softmax(logits / temperature) with ``seed``.
    A row stops at its end-of-sequence token.

    A plain loop over a key-value cache, not ``model.generate``: the same tokens, in half
    the time on a CPU (measured: 1.0 s against 2.4 s for 8 rows × 16 tokens of SmolLM2-135M)."""
    if max_new_tokens < 1:
        raise UsageError(f"max_new_tokens must be at least 1, got {max_new_tokens}.")
    tokenizer = loaded.tokenizer
    eos = tokenizer.eos_token_id
    generator = torch.Generator(device=loaded.device).manual_seed(seed) if temperature > 0 else None
    cache_name = _cache_argument(loaded.model)
    ids = ids.to(loaded.device)
    step_input, cache, new = ids, None, []
    done = torch.zeros(ids.shape[0], dtype=torch.bool, device=loaded.device)
    for _ in range(max_new_tokens):
        out = loaded.model(input_ids=step_input, use_cache=True, **{cache_name: cache})
        cache = out["cache"] if "cache" in out else out.past_key_values
        logits = out.logits[:, -1].float()
        if generator is None:
            token = logits.argmax(dim=-1)
        else:
            token = torch.multinomial(torch.softmax(logits / temperature, dim=-1), 1, generator=generator)[:, 0]
        if eos is not None:
            token = torch.where(done, torch.full_like(token, eos), token)
            done |= token == eos
        new.append(token)
        if bool(done.all()):
            break
        step_input = token[:, None]
    rows = torch.stack(new, dim=1).tolist()
    return [tokenizer.decode(row, skip_special_tokens=True) for row in rows]


def _cache_argument(model: torch.nn.Module) -> str:
    """The forward's key-value cache argument: ``cache`` in transformers 5, ``past_key_values``
    before. (Asking for the last position's logits only, ``logits_to_keep=1``, measured
    twice as slow on a CPU in bf16, so all positions' logits are computed.)"""
    import inspect

    return "cache" if "cache" in inspect.signature(model.forward).parameters else "past_key_values"


def steered_continuations(
    loaded: LoadedModel,
    sae: SparseAutoencoder,
    prompt: str,
    shifts: Tensor,
    max_new_tokens: int,
    *,
    batch: int = 16,
) -> list[str]:
    """Greedy continuations of ``prompt``, one per row of ``shifts`` [n, d_out] (each
    added at every token), ``batch`` rows per generation."""
    ids = prompt_ids(loaded, prompt)
    texts: list[str] = []
    for begin in range(0, shifts.shape[0], batch):
        rows = shifts[begin : begin + batch]
        with steer_rows(loaded, sae, rows):
            texts += generate(loaded, ids.expand(rows.shape[0], -1), max_new_tokens)
    return texts


# ---- ablation: what removing a feature does to the next-token distribution ------------------


@torch.no_grad()
def ablation_effects(
    loaded: LoadedModel, sae: SparseAutoencoder, feature: int, text: str, *, k: int = 5, min_prob: float = 1e-3
) -> dict[str, Any]:
    """The text's tokens, the feature's activation on each, and how ablating it (at every
    token of the text, not at BOS) changes the next-token log-probabilities at each position:
    the k tokens pushed up most and the k pushed down most among those with probability
    at least ``min_prob`` with or without the feature, and the change for the token that
    actually comes next. max_abs_delta is over the whole vocabulary.

    Returns {"feature", "hook", "tokens": [str], "positions": [{"token", "activation",
    "next": str | None, "next_delta": float | None, "up": [[str, Δ]], "down": [[str, Δ]],
    "max_abs_delta": float}]}."""
    feature = check_feature(sae, feature)
    read, _ = hook_points(sae, loaded)
    ids = prompt_ids(loaded, text).to(loaded.device)  # [1, T]: BOS + text
    mask = torch.ones_like(ids, dtype=torch.bool)
    mask[:, 0] = False  # BOS is never part of an SAE's data (data/corpus.py)
    from ..data.model import capture

    activation = sae.encode(capture(loaded, ids, read)[read].to(sae.W_dec.device, torch.float32))[0, :, feature]
    clean = torch.log_softmax(loaded.model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
    with edit(loaded, sae, ablate=[feature], mask=mask):
        ablated = torch.log_softmax(loaded.model(input_ids=ids, use_cache=False).logits[0].float(), dim=-1)
    delta = ablated - clean  # [T, vocab]
    # Only plausible next tokens are ranked: the largest log-prob changes over the whole
    # vocabulary are those of tokens nobody would predict (1e-9 → 1e-8 is +2.3 nats).
    plausible = (clean.exp() >= min_prob) | (ablated.exp() >= min_prob)
    tokenizer = loaded.tokenizer
    names = [tokenizer.decode([t]) for t in ids[0].tolist()]

    def ranked(row: Tensor, keep: Tensor, sign: float) -> list[list]:
        score = torch.where(keep & (sign * row > 0), sign * row, torch.full_like(row, -math.inf))
        top = score.topk(min(k, int(torch.isfinite(score).sum())))
        return [[tokenizer.decode([i]), float(row[i])] for i in top.indices.tolist()]

    positions = []
    for t in range(1, ids.shape[1]):
        following = int(ids[0, t + 1]) if t + 1 < ids.shape[1] else None
        positions.append(
            {
                "token": names[t],
                "activation": float(activation[t]),
                "next": names[t + 1] if following is not None else None,
                "next_delta": float(delta[t, following]) if following is not None else None,
                "up": ranked(delta[t], plausible[t], 1.0),
                "down": ranked(delta[t], plausible[t], -1.0),
                "max_abs_delta": float(delta[t].abs().max()),
            }
        )
    return {"feature": feature, "hook": read, "tokens": names[1:], "positions": positions}
