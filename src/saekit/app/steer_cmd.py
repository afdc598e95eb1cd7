"""``saekit steer`` and ``saekit ablate``: what a feature does to the model's output.

    saekit steer RUN --feature F --strength S --prompt "..."    continuations with and without
    saekit ablate RUN --feature F --text "..."                  next-token changes when removed

Strengths and clamp values are multiples of the feature's largest activation on the
run's corpus (``--unit max``, the default; RUN/features must exist), or absolute values
(``--unit abs``: S in the units of the activation at the hook point, v in those of the
feature's activation). See interpret/steer.py for the edits themselves.
"""

from __future__ import annotations

import shutil
import textwrap
from pathlib import Path
from typing import Any

from .._runtime.atomic import atomic_write_json
from .._runtime.errors import FolderError, UsageError
from .pipeline import open_run


def _refuse_existing(json_path: str | None, overwrite: bool) -> None:
    if json_path and Path(json_path).exists() and not overwrite:
        raise FolderError(f"--json {json_path} already exists; choose another file, or add --overwrite to replace it.")


def _max_activation(run, feature: int) -> float:
    from ..interpret import FeatureStats

    if not (run.features_path / "feature_stats.safetensors").is_file():
        raise UsageError(
            f"--unit max needs the run's feature statistics, and {run.folder} has none yet; run "
            f"`saekit interpret {run.folder}` first, or give --unit abs."
        )
    peak = float(FeatureStats.load(run.features_path).max_activation[feature])
    if peak <= 0:
        raise UsageError(
            f"feature {feature} never fired on the run's corpus, so it has no max activation to scale by; "
            "give --unit abs with an absolute strength."
        )
    return peak


def run_steer(
    run_folder: str,
    feature: int,
    prompts: list[str],
    *,
    strength: float | None,
    clamp: float | None,
    unit: str,
    max_new_tokens: int,
    temperature: float = 0.0,
    seed: int = 0,
    json_path: str | None = None,
    overwrite: bool = False,
) -> dict[str, Any]:
    from ..interpret.steer import check_feature, edit, feature_write, generate, prompt_ids

    _refuse_existing(json_path, overwrite)
    if (strength is None) == (clamp is None):
        raise UsageError("give either --strength S (steer along the feature) or --clamp V (set its activation).")
    for prompt in prompts:
        if not prompt.strip():
            raise UsageError("the prompt is empty; give some text to continue, e.g. --prompt 'To be, or not'.")
    run = open_run(run_folder, write=False)
    sae = run.load_sae()
    feature = check_feature(sae, feature, what="--feature")
    peak = _max_activation(run, feature) if unit == "max" else None
    if strength is not None:
        absolute = strength * peak * float(feature_write(sae, feature).norm()) if peak else strength
        edits: dict[str, Any] = {"steer": {feature: absolute}}
        described = {"kind": "steer", "value": strength, "unit": unit, "absolute": absolute}
    else:
        absolute = clamp * peak if peak else clamp
        edits = {"clamp": {feature: absolute}}
        described = {"kind": "clamp", "value": clamp, "unit": unit, "absolute": absolute}
    rows = []
    for prompt in prompts:
        ids = prompt_ids(run.model, prompt)
        plain = generate(run.model, ids, max_new_tokens, temperature=temperature, seed=seed)[0]
        with edit(run.model, sae, **edits):
            steered = generate(run.model, ids, max_new_tokens, temperature=temperature, seed=seed)[0]
        rows.append({"prompt": prompt, "unsteered": plain, "steered": steered})
    result = {
        "feature": feature,
        "hook": sae.cfg.hook_out or sae.cfg.hook,
        "edit": described,
        "max_activation": peak,
        "max_new_tokens": max_new_tokens,
        "temperature": temperature,
        "seed": seed,
        "continuations": rows,
    }
    if json_path:
        atomic_write_json(Path(json_path), result)
    return result


def print_steer(result: dict[str, Any]) -> None:
    e = result["edit"]
    if e["kind"] == "steer":
        how = f"x ← x + {e['absolute']:.4g}·d_F"
        what = f"steer {e['value']:+g}" + (" × max activation" if e["unit"] == "max" else "")
    else:
        how = f"f_F clamped to {e['absolute']:.4g}"
        what = f"clamp {e['value']:g}" + (" × max activation" if e["unit"] == "max" else "")
    mode = "greedy" if result["temperature"] == 0 else f"sampled at T={result['temperature']}, seed {result['seed']}"
    print(f"feature {result['feature']} at {result['hook']}: {what} ({how}); {mode}, {result['max_new_tokens']} tokens")
    width = max(20, (min(shutil.get_terminal_size((120, 24)).columns, 160) - 3) // 2)
    for row in result["continuations"]:
        print(f"\nprompt: {row['prompt']!r}")
        left = textwrap.wrap(" ".join(row["unsteered"].split()), width) or [""]
        right = textwrap.wrap(" ".join(row["steered"].split()), width) or [""]
        print(f"{'unsteered':<{width}} │ steered")
        print(f"{'─' * width}─┼─{'─' * width}")
        for i in range(max(len(left), len(right))):
            print(f"{left[i] if i < len(left) else '':<{width}} │ {right[i] if i < len(right) else ''}")


def run_ablate(
    run_folder: str, feature: int, text: str, *, k: int = 3, json_path: str | None = None, overwrite: bool = False
) -> dict[str, Any]:
    from ..interpret.steer import ablation_effects, check_feature

    _refuse_existing(json_path, overwrite)
    if not text.strip():
        raise UsageError("the text is empty; give the text to ablate the feature on, e.g. --text 'To be, or not'.")
    run = open_run(run_folder, write=False)
    sae = run.load_sae()
    feature = check_feature(sae, feature, what="--feature")
    result = ablation_effects(run.model, sae, feature, text, k=k)
    if json_path:
        atomic_write_json(Path(json_path), result)
    return result


def print_ablate(result: dict[str, Any]) -> None:
    positions = result["positions"]
    fired = sum(p["activation"] > 0 for p in positions)
    print(
        f"feature {result['feature']} at {result['hook']}, ablated (x ← x − f_F·w_F) at every token: "
        f"it fires on {fired} of {len(positions)} tokens. Δ = change of log p(next token) at each position; "
        "up/down: among tokens with p >= 0.001 with or without it."
    )
    print(f"{'pos':>4} {'token':<14} {'act':>7} {'Δ next':>8}  {'most up':<34} most down")
    for i, p in enumerate(positions):
        up = ", ".join(f"{t!r} {d:+.2f}" for t, d in p["up"]) or ("(unchanged)" if p["max_abs_delta"] == 0 else "-")
        down = ", ".join(f"{t!r} {d:+.2f}" for t, d in p["down"]) or ("" if p["max_abs_delta"] == 0 else "-")
        nxt = f"{p['next_delta']:+8.3f}" if p["next_delta"] is not None else f"{'':>8}"
        token = repr(p["token"])[:14]
        print(f"{i:>4} {token:<14} {p['activation']:>7.2f} {nxt}  {up:<34} {down}")
