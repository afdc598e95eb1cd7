"""Names of hook points: saekit's, and the TransformerLens names other tools use. Pure
strings here; which module of a model a name means is resolved in data/model.py alone.

    layers.{L}.resid_pre    the residual stream entering decoder block L   blocks.L.hook_resid_pre
    layers.{L}.attn_out     what block L's attention adds to it            blocks.L.hook_attn_out
    layers.{L}.mlp_in       the input of block L's MLP, after its norm     blocks.L.ln2.hook_normalized
    layers.{L}.mlp_out      what block L's MLP adds to it                  blocks.L.hook_mlp_out
    layers.{L}.resid_post   the residual stream leaving block L            blocks.L.hook_resid_post
    final_norm              the output of the final norm                   ln_final.hook_normalized
"""

from __future__ import annotations

import re
from dataclasses import dataclass

SITES = ("resid_pre", "attn_out", "mlp_in", "mlp_out", "resid_post")
FINAL_NORM = "final_norm"
HOOK_SYNTAX = (
    "layers.{L}.resid_pre, layers.{L}.attn_out, layers.{L}.mlp_in, layers.{L}.mlp_out, "
    "layers.{L}.resid_post or final_norm"
)
_HOOK = re.compile(r"layers\.(\d+)\.(resid_pre|resid_post|attn_out|mlp_in|mlp_out)")
_TL_HOOK = re.compile(r"blocks\.(\d+)\.hook_(resid_pre|resid_post|attn_out|mlp_out)")
_TL_MLP_IN = re.compile(r"blocks\.(\d+)\.ln2\.hook_normalized")


@dataclass(frozen=True)
class HookPoint:
    """A parsed hook point: ``layer`` is None for ``final_norm``."""

    layer: int | None
    site: str

    def __str__(self) -> str:
        return FINAL_NORM if self.site == FINAL_NORM else f"layers.{self.layer}.{self.site}"

    @property
    def transformer_lens_name(self) -> str:
        """The same point in TransformerLens / SAELens naming (e.g. for exported SAEs)."""
        if self.site == FINAL_NORM:
            return "ln_final.hook_normalized"
        if self.site == "mlp_in":
            return f"blocks.{self.layer}.ln2.hook_normalized"
        return f"blocks.{self.layer}.hook_{self.site}"


def parse_hook(hook: str | HookPoint) -> HookPoint:
    """Parse a hook-point string, saekit's or TransformerLens's (syntax only;
    data.model.resolve_hook also checks the layer against a model)."""
    if isinstance(hook, HookPoint):
        return hook
    text = str(hook).strip()
    if text in (FINAL_NORM, "ln_final.hook_normalized"):
        return HookPoint(None, FINAL_NORM)
    match = _TL_MLP_IN.fullmatch(text)
    if match:
        return HookPoint(int(match.group(1)), "mlp_in")
    match = _HOOK.fullmatch(text) or _TL_HOOK.fullmatch(text)
    if match is None:
        raise ValueError(f"unknown hook point {hook!r}; hook points are {HOOK_SYNTAX}, with L a layer index.")
    return HookPoint(int(match.group(1)), match.group(2))


def transformer_lens_name(hook: str | None) -> str | None:
    """The TransformerLens name of a hook point (the text itself when it is no hook name)."""
    if hook is None:
        return None
    try:
        return parse_hook(hook).transformer_lens_name
    except ValueError:
        return hook


def layer_of(hook: str | None) -> int | None:
    try:
        return parse_hook(hook).layer if hook is not None else None
    except ValueError:
        return None
