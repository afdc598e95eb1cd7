"""RUN/features/explanations.jsonl: one JSON object per explained feature, sorted by
feature (the format shared with the dashboard):

    {"feature": 12, "explanation": "...", "explainer": "local:SmolLM2-135M-Instruct",
     "detection": 0.61, "fuzzing": 0.55, "n_detection": 40, "n_fuzzing": 40, "settings": {...}, ...}

detection / fuzzing are balanced accuracies in [0, 1], or null when not scored.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from pathlib import Path

from .._runtime.atomic import atomic_write_text
from .._runtime.errors import DataError

EXPLANATIONS_FILE = "explanations.jsonl"


def read_explanations(path: str | Path) -> dict[int, dict]:
    """The records of an explanations.jsonl by feature; {} when there is none. A file that
    is not saekit's is refused: saekit never overwrites what it did not write."""
    path = Path(path)
    if not path.is_file():
        return {}
    records = {}
    for number, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            record = json.loads(line)
            valid = isinstance(record, dict) and isinstance(record.get("feature"), int) and "settings" in record
        except json.JSONDecodeError:
            valid = False
        if not valid:
            raise DataError(
                f"{path} line {number} is not a saekit explanation record; saekit does not overwrite a file it did "
                "not write: move it away and run again."
            )
        records[record["feature"]] = record
    return records


def write_explanations(path: str | Path, records: dict[int, dict]) -> None:
    """All records, one per line, sorted by feature, written atomically."""
    atomic_write_text(path, "".join(json.dumps(records[f]) + "\n" for f in sorted(records)))


def feature_list(ids: Sequence[int]) -> str:
    """Feature ids for a message: the first 8, then how many more."""
    shown = ", ".join(str(f) for f in ids[:8])
    return shown + (f" and {len(ids) - 8} more" if len(ids) > 8 else "")


def difference(old, new: dict) -> str:
    """The first settings that differ, as `key: old → new`."""
    if not isinstance(old, dict):
        return "no settings recorded"
    keys = [k for k in sorted(set(old) | set(new)) if old.get(k) != new.get(k)]
    return "; ".join(f"{k}: {old.get(k)!r} → {new.get(k)!r}" for k in keys[:3])
