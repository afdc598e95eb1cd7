"""What other stages wrote about features, read for the dashboard: explanations and steering.

    RUN/features/explanations.jsonl   one JSON object a line (saekit explain):
        {"feature": 12, "explanation": "...", "explainer": "...", "detection": 0.61,
         "fuzzing": 0.55, "n_detection": 40, "n_fuzzing": 40, "settings": {...}}
        detection / fuzzing are balanced accuracies in [0, 1], or null when not scored.
    RUN/features/steering.json        (the steering stage):
        {"hook": str, "prompts": [str], "strengths": [float], "max_new_tokens": int,
         "unsteered": [str per prompt],
         "features": {"<id>": [{"prompt": index, "strength": float, "text": str}, ...]}}

Both are optional; a file that is there but damaged is refused with one line naming the
file, the line or field, and the fix. The last line of explanations.jsonl is skipped when
it is incomplete (no newline and not JSON: an explain run being written or interrupted).
A feature explained twice keeps its last line (a re-explained feature is appended).
"""

from __future__ import annotations

import json
import math
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from .._runtime.errors import DataError

EXPLANATIONS_FILE = "explanations.jsonl"
STEERING_FILE = "steering.json"


@dataclass(frozen=True)
class Explanation:
    """One feature's explanation and its scores."""

    feature: int
    explanation: str
    explainer: str | None
    detection: float | None
    """Balanced accuracy of detection in [0, 1]; None when not scored."""
    fuzzing: float | None
    """Balanced accuracy of fuzzing in [0, 1]; None when not scored."""
    n_detection: int | None
    n_fuzzing: int | None


@dataclass(frozen=True)
class Steering:
    """Steered continuations of fixed prompts, for some features."""

    hook: str
    prompts: list[str]
    strengths: list[float]
    max_new_tokens: int
    unsteered: list[str]
    """The continuation of each prompt without steering."""
    features: dict[int, list[dict[str, Any]]]
    """feature → [{"prompt": index into prompts, "strength": float, "text": continuation}]."""


def read_explanations(path: str | Path, d_sae: int) -> dict[int, Explanation]:
    """feature → Explanation, from an explanations.jsonl file; {} when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return {}
    fix = f"run `saekit explain` again, or delete {path} to show the dashboard without explanations."
    raw = path.read_bytes()
    lines = raw.split(b"\n")
    out: dict[int, Explanation] = {}
    for number, line in enumerate(lines, 1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
        except (json.JSONDecodeError, UnicodeDecodeError):
            if number == len(lines):  # the last line, without its newline: still being written
                continue
            raise DataError(f"{path}, line {number}, is not JSON; {fix}") from None
        explanation = _explanation(record, d_sae, f"{path}, line {number}", fix)
        out[explanation.feature] = explanation
    return out


def _explanation(record: Any, d_sae: int, where: str, fix: str) -> Explanation:
    if not isinstance(record, dict):
        raise DataError(f"{where} is not a JSON object; {fix}")
    feature = record.get("feature")
    if not isinstance(feature, int) or isinstance(feature, bool) or not 0 <= feature < d_sae:
        raise DataError(f"{where}: feature {feature!r} is not a feature id of this SAE (0–{d_sae - 1}); {fix}")
    text = record.get("explanation")
    if not isinstance(text, str):
        raise DataError(f"{where}: explanation must be a string, got {type(text).__name__}; {fix}")
    scores = {}
    for name in ("detection", "fuzzing"):
        value = record.get(name)
        if value is not None and (
            isinstance(value, bool)
            or not isinstance(value, (int, float))
            or not math.isfinite(value)
            or not 0 <= value <= 1
        ):
            raise DataError(f"{where}: {name} must be a number in [0, 1] or null, got {value!r}; {fix}")
        scores[name] = None if value is None else float(value)
    counts = {}
    for name in ("n_detection", "n_fuzzing"):
        value = record.get(name)
        counts[name] = value if isinstance(value, int) and not isinstance(value, bool) else None
    explainer = record.get("explainer")
    return Explanation(
        feature=feature,
        explanation=text,
        explainer=explainer if isinstance(explainer, str) else None,
        detection=scores["detection"],
        fuzzing=scores["fuzzing"],
        n_detection=counts["n_detection"],
        n_fuzzing=counts["n_fuzzing"],
    )


def read_steering(path: str | Path, d_sae: int) -> Steering | None:
    """The steering results in a steering.json file; None when it does not exist."""
    path = Path(path)
    if not path.is_file():
        return None
    fix = f"run the steering stage again, or delete {path} to show the dashboard without steering."
    try:
        data = json.loads(path.read_text())
    except (json.JSONDecodeError, UnicodeDecodeError) as error:
        raise DataError(f"{path} is not valid JSON ({error.__class__.__name__}); {fix}") from None

    def bad(what: str) -> DataError:
        return DataError(f"{path}: {what}; {fix}")

    if not isinstance(data, dict):
        raise bad("the file must hold a JSON object")
    prompts, unsteered = data.get("prompts"), data.get("unsteered")
    if not isinstance(prompts, list) or not all(isinstance(p, str) for p in prompts):
        raise bad('"prompts" must be a list of strings')
    if not (
        isinstance(unsteered, list) and len(unsteered) == len(prompts) and all(isinstance(u, str) for u in unsteered)
    ):
        raise bad('"unsteered" must hold one string per prompt')
    strengths = data.get("strengths", [])
    if not isinstance(strengths, list) or not all(_is_number(s) for s in strengths):
        raise bad('"strengths" must be a list of numbers')
    features = data.get("features")
    if not isinstance(features, dict):
        raise bad('"features" must be an object of feature id → continuations')
    out: dict[int, list[dict[str, Any]]] = {}
    for key, entries in features.items():
        if not key.isdigit() or not int(key) < d_sae:
            raise bad(f"feature {key!r} is not a feature id of this SAE (0–{d_sae - 1})")
        if not isinstance(entries, list):
            raise bad(f"feature {key}: the continuations must be a list")
        rows = []
        for entry in entries:
            ok = (
                isinstance(entry, dict)
                and isinstance(entry.get("prompt"), int)
                and not isinstance(entry.get("prompt"), bool)
                and 0 <= entry["prompt"] < len(prompts)
                and _is_number(entry.get("strength"))
                and isinstance(entry.get("text"), str)
            )
            if not ok:
                raise bad(
                    f"feature {key}: each continuation needs a prompt index (0–{len(prompts) - 1}), "
                    "a strength and a text"
                )
            rows.append({"prompt": entry["prompt"], "strength": float(entry["strength"]), "text": entry["text"]})
        out[int(key)] = sorted(rows, key=lambda r: (r["prompt"], r["strength"]))
    max_new = data.get("max_new_tokens")
    return Steering(
        hook=str(data.get("hook", "")),
        prompts=prompts,
        strengths=[float(s) for s in strengths],
        max_new_tokens=max_new if isinstance(max_new, int) else 0,
        unsteered=unsteered,
        features=out,
    )


def _is_number(value: Any) -> bool:
    return isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value)
