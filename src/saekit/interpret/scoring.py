"""Scoring an explanation on held-out examples: Delphi's detection and fuzzing.

Both scorers mix the held-out activating windows with the same number of non-activating
windows drawn at random, shuffle them, and show them ``per_prompt`` at a time with the
explanation; the model answers with a list of 0s and 1s, one per example.

- **Detection**: plain text. 1 = "this text activates the feature".
- **Fuzzing**: every example is marked. Activating windows carry their real active tokens
  (f ≥ 0.3 · the window's maximum), non-activating ones the same number of tokens (the mean
  over the activating windows, rounded up) marked at random. 1 = "the marked tokens are
  what the explanation describes".

The score is the balanced accuracy, (TP/P + TN/N) / 2 (Delphi's reported "accuracy"):
0.5 is chance, whatever the mix. An answer that cannot be read as exactly one 0/1 per
example counts as wrong for every example of its prompt (Delphi drops such examples,
which flatters a model that rambles), and the number of such examples is reported.
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np

from .explain import THRESHOLD, active_marks, highlight
from .llm import Message

SCORERS = ("detection", "fuzzing")

_SYSTEM = {
    "detection": """You are an intelligent and meticulous linguistics researcher.
You will be given a certain feature of text, such as "male pronouns" or "text with negative sentiment".
You will then be given several text examples. Your task is to determine which examples possess the feature.
For each example in turn, return 1 if the sentence possesses the feature or 0 if it does not. You must return \
your response in a valid Python list. Do not return anything else besides a Python list.""",
    "fuzzing": """You are an intelligent and meticulous linguistics researcher.
You will be given a certain feature of text, such as "male pronouns" or "text with negative sentiment". You will \
be given a few examples of text that contain this feature. Portions of the sentence which strongly represent this \
feature are between tokens << and >>.
Some examples might be mislabeled. Your task is to determine if every single token within << and >> is correctly \
labeled. Consider that all provided examples could be correct, none of the examples could be correct, or a mix. \
An example is only correct if every marked token is representative of the feature.
For each example in turn, return 1 if the sentence is correctly labeled or 0 if the tokens are mislabeled. You \
must return your response in a valid Python list. Do not return anything else besides a Python list.""",
}
_FEW_SHOT = {
    "detection": (
        """Feature explanation: Words related to American football positions, specifically the tight end position.

Text examples:

Example 0: Getting ready for the tight end to catch the ball
Example 1: He was always a quiet man who liked to read
Example 2: The weather will be sunny with a light breeze
Example 3: Prices fell for the third day in a row
Example 4: The offensive line and the tight end blocked well""",
        "[1,0,0,0,1]",
    ),
    "fuzzing": (
        """Feature explanation: Words related to American football positions, specifically the tight end position.

Text examples:

Example 0: Getting ready for the <<tight end>> to catch the ball
Example 1: He was <<always>> a quiet man who <<liked>> to read
Example 2: The weather will be <<sunny>> with a light breeze
Example 3: Prices fell for the <<third>> day in a row
Example 4: The offensive line and the <<tight end>> blocked well""",
        "[1,0,0,0,1]",
    ),
}


@dataclass(frozen=True)
class Sample:
    text: str
    """The example as the scorer sees it."""
    activating: bool
    """The truth: an activating window (for fuzzing: its marks are the real active tokens)."""


@dataclass(frozen=True)
class Score:
    balanced_accuracy: float | None
    """(TP/P + TN/N) / 2, unreadable answers counted wrong; None without both classes."""
    n: int
    """Examples scored (activating + non-activating)."""
    n_unparsed: int
    """Examples whose prompt got an answer that could not be read."""


def detection_samples(positives: Sequence[Sequence[str]], negatives: Sequence[Sequence[str]]) -> list[Sample]:
    """Plain text of each window (lists of token strings)."""
    return [Sample("".join(t), True) for t in positives] + [Sample("".join(t), False) for t in negatives]


def fuzzing_samples(
    positives: Sequence[tuple[Sequence[str], Sequence[float]]],
    negatives: Sequence[Sequence[str]],
    rng: np.random.Generator,
    threshold: float = THRESHOLD,
) -> list[Sample]:
    """Activating windows with their real active tokens marked; non-activating windows with
    as many tokens marked at random (independently per window)."""
    marks = [active_marks(acts, threshold) for _, acts in positives]
    n_marked = max(1, math.ceil(np.mean([sum(m) for m in marks]))) if marks else 1
    out = [Sample(highlight(tokens, m), True) for (tokens, _), m in zip(positives, marks)]
    for tokens in negatives:
        chosen = set(rng.choice(len(tokens), size=min(n_marked, len(tokens)), replace=False).tolist())
        out.append(Sample(highlight(tokens, [i in chosen for i in range(len(tokens))]), False))
    return out


def scorer_prompts(
    kind: str, explanation: str, samples: Sequence[Sample], *, per_prompt: int, seed: int
) -> tuple[list[list[int]], list[list[Message]]]:
    """The samples shuffled and cut into prompts: (sample indices of each prompt, messages)."""
    if kind not in _SYSTEM:
        raise ValueError(f"unknown scorer {kind!r}; the scorers are {', '.join(SCORERS)}.")
    order = np.random.default_rng(seed).permutation(len(samples)).tolist()
    batches = [order[i : i + per_prompt] for i in range(0, len(order), per_prompt)]
    user, assistant = _FEW_SHOT[kind]
    conversations = []
    for batch in batches:
        body = "\n".join(f"Example {j}: {samples[i].text}" for j, i in enumerate(batch))
        conversations.append(
            [
                {"role": "system", "content": _SYSTEM[kind]},
                {"role": "user", "content": user},
                {"role": "assistant", "content": assistant},
                {"role": "user", "content": f"Feature explanation: {explanation}\n\nText examples:\n\n{body}"},
            ]
        )
    return batches, conversations


def score_replies(samples: Sequence[Sample], batches: Sequence[Sequence[int]], replies: Sequence[str]) -> Score:
    """Balanced accuracy of the answers, an unreadable answer counted wrong."""
    truth, predicted = [], []
    for batch, reply in zip(batches, replies):
        answer = parse_answer(reply, len(batch))
        for j, i in enumerate(batch):
            truth.append(samples[i].activating)
            predicted.append(None if answer is None else answer[j])
    return Score(balanced_accuracy(truth, predicted), len(truth), sum(p is None for p in predicted))


def balanced_accuracy(truth: Sequence[bool], predicted: Sequence[bool | None]) -> float | None:
    """(TP/P + TN/N) / 2 where a None prediction is wrong; None unless both classes occur."""
    positives = sum(1 for t in truth if t)
    negatives = len(truth) - positives
    if positives == 0 or negatives == 0:
        return None
    tp = sum(1 for t, p in zip(truth, predicted) if t and p is True)
    tn = sum(1 for t, p in zip(truth, predicted) if not t and p is False)
    return (tp / positives + tn / negatives) / 2


_VALUE = {"1": True, "0": False, "true": True, "false": False, "yes": True, "no": False}
_LIST = re.compile(r"\[([^\[\]]*)(\]?)")
_NUMBERED = re.compile(r"example\s*(\d+)\s*[:=\-]\s*(1|0|yes|no|true|false)\b", re.IGNORECASE)
_BARE = re.compile(r"(?<![\w.])([01])(?![\w.])")


def parse_answer(reply: str, n: int) -> list[bool] | None:
    """One truth value per example, or None. Read, in order: the first bracketed list of
    exactly n values 0/1 (also true/false, yes/no), or a list left open at the end of the
    reply (generation stops at "]", or a small model runs on counting) whose first n items
    are such values; "Example i: 1" lines covering 0..n−1; a reply whose only bare digits
    are exactly n 0s and 1s."""
    for inside, closed in _LIST.findall(reply):
        items = [item.strip().strip("'\"").lower() for item in inside.split(",")]
        if not closed and len(items) > n:
            items = items[:n]
        if len(items) == n and all(item in _VALUE for item in items):
            return [_VALUE[item] for item in items]
    numbered = {int(i): _VALUE[v.lower()] for i, v in _NUMBERED.findall(reply)}
    if set(numbered) == set(range(n)):
        return [numbered[i] for i in range(n)]
    if not re.search(r"\d", re.sub(r"(?<![\w.])[01](?![\w.])", "", reply)):
        bare = _BARE.findall(reply)
        if len(bare) == n:
            return [_VALUE[b] for b in bare]
    return None
