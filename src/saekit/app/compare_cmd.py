"""``saekit compare A B`` on run folders: the SAEs' decoders matched (evaluation/compare.py),
each side's dead latents read from its feature statistics, and features labelled with the
tokens their top examples sit on (RUN/features/feature_stats.safetensors)."""

from __future__ import annotations

from pathlib import Path

from .._runtime.errors import UsageError


def sae_folder(path: str | Path) -> Path:
    """A run folder's SAE, or the SAE folder itself."""
    return Path(path) / "sae" if (Path(path) / "sae" / "cfg.json").is_file() else Path(path)


def _feature_stats(path: str | Path):
    """The feature statistics of a run folder (or of the run holding an SAE folder), or None."""
    from ..interpret import STATS_FILE, FeatureStats

    for folder in (Path(path), Path(path).parent):
        if (folder / "features" / STATS_FILE).is_file():
            return FeatureStats.load(folder / "features")
    return None


def compare_runs(a: str, b: str, *, threshold: float, all_latents: bool = False) -> dict:
    """``compare`` of two runs' (or SAE folders') SAEs, with each side's dead latents from its
    feature statistics and labels from their top examples; ``all_latents`` keeps the dead
    and untrained ones."""
    from ..data.tokenizer import load_tokenizer
    from ..evaluation.compare import DEFAULT_UNTRAINED_COSINE, compare
    from ..formats import load as load_sae
    from ..interpret.labels import token_decoder, top_tokens

    stats = {side: _feature_stats(path) for side, path in (("a", a), ("b", b))}
    decode = None
    if any(s is not None for s in stats.values()):
        model = next((s.meta.get("model") for s in stats.values() if s is not None and s.meta.get("model")), None)
        decode = token_decoder(load_tokenizer(model or load_sae(sae_folder(a)).cfg.model))
    labels, dead = {}, {}
    for side, s in stats.items():
        if s is None:
            labels[side], dead[side] = None, None
            continue
        labels[side] = {f: top_tokens(s.top, f, decode) for f in range(s.d_sae) if int(s.count[f]) > 0}
        dead[side] = s.count == 0
    for side, path in (("a", a), ("b", b)):
        s = stats[side]
        if s is not None and s.d_sae != load_sae(sae_folder(path)).d_sae:
            raise UsageError(
                f"{path}: its feature statistics describe {s.d_sae} features, not its SAE's; rerun "
                f"`saekit interpret {path} --force`."
            )
    return compare(
        sae_folder(a),
        sae_folder(b),
        threshold=threshold,
        labels=labels["a"],
        labels_b=labels["b"],
        dead_a=None if all_latents else dead["a"],
        dead_b=None if all_latents else dead["b"],
        untrained_cosine=None if all_latents else DEFAULT_UNTRAINED_COSINE,
    )
