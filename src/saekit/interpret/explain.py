"""Writing an explanation: a feature's examples as marked text, Delphi's explainer prompt,
and the parse of the reply.

An example is a window of token strings with the feature's activation on each. Tokens at
or above ``threshold`` × the window's own maximum are *active*, and each run of consecutive
active tokens is wrapped in one pair of marks, ``<<over the moon>>`` (Delphi's
``_highlight``, threshold 0.3). After each example the explainer also reads the active
tokens' levels, ceil(10 · f / max_f) clamped to 0–10, where max_f is the feature's largest
activation over the scanned corpus, not the window's (Delphi's normalisation), at most 11
of them. The reply's last line is ``[EXPLANATION]: …``; a reply without it falls back to
its first non-empty line, and the result says so (``parsed`` false).
"""

from __future__ import annotations

import math
import re
from collections.abc import Sequence

from .llm import Message

THRESHOLD = 0.3
"""Delphi's: a token is active when f ≥ 0.3 · the window's maximum."""
MAX_LEVELS = 11
"""Delphi lists at most 11 active tokens' levels per example."""
UNPARSED = "Explanation could not be parsed."

SYSTEM = """You are a meticulous AI researcher conducting an important investigation into patterns found in \
language. Your task is to analyze text and provide an explanation that thoroughly encapsulates possible patterns \
found in it.
Guidelines:
You will be given a list of text examples on which special words are selected and between delimiters like \
<<this>>. If a sequence of consecutive tokens all are important, the entire sequence of tokens will be contained \
between delimiters <<just like this>>. How important each token is for the behavior is listed after each example \
in parentheses.
- Try to produce a concise final description. Simply describe the text features that are common in the examples, \
and what patterns you found.
- If the examples are uninformative, you don't need to mention them. Don't focus on giving examples of important \
tokens, but try to summarize the patterns found in the examples.
- Do not mention the marker tokens (<< >>) in your explanation.
- Do not make lists of possible explanations. Keep your explanations short and concise.
- The last line of your response must be the formatted explanation, using [EXPLANATION]:"""

FEW_SHOT_USER = """Example 1: and he was <<over the moon>> to find
Activations: ("over", 5), (" the", 6), (" moon", 9)
Example 2: we'll be laughing <<till the cows come home>>! Pro
Activations: ("till", 5), (" the", 5), (" cows", 8), (" come", 8), (" home", 8)
Example 3: thought Scotland was boring, but really there's more <<than meets the eye>>! I'd
Activations: ("than", 5), (" meets", 7), (" the", 6), (" eye", 8)"""
ASK = "What do the marked tokens have in common? Answer in one line that starts with [EXPLANATION]:"
"""Ends the last user turn (not in Delphi): small models otherwise comment on the worked example."""
FEW_SHOT_ASSISTANT = "\n[EXPLANATION]: Common idioms in text conveying positive sentiment.\n"


def clean_token(text: str) -> str:
    """A token's text as one line: newlines become ↵, tabs spaces, broken UTF-8 pieces vanish."""
    return text.replace("\r", "").replace("\n", "↵").replace("\t", " ").replace("\ufffd", "")


def active_marks(acts: Sequence[float], threshold: float = THRESHOLD) -> list[bool]:
    """Tokens at or above ``threshold`` × the window's maximum (none when it is 0)."""
    peak = max(acts, default=0.0)
    return [peak > 0 and a >= threshold * peak for a in acts]


def highlight(tokens: Sequence[str], marks: Sequence[bool]) -> str:
    """The window's text with each run of marked tokens in one ``<<…>>`` pair; a leading
    space of the run stays outside the marks (`` <<moon>>``)."""
    out: list[str] = []
    run: list[str] = []

    def close() -> None:
        if run:
            text = "".join(run)
            stripped = text.lstrip()
            out.append(text[: len(text) - len(stripped)] + f"<<{stripped}>>" if stripped else text)
            run.clear()

    for token, marked in zip(tokens, marks):
        if marked:
            run.append(token)
        else:
            close()
            out.append(token)
    close()
    return "".join(out)


def levels(acts: Sequence[float], max_activation: float) -> list[int]:
    """Delphi's normalised levels: ceil(10 · f / max_f), clamped to 0–10."""
    if max_activation <= 0:
        return [0] * len(acts)
    return [min(10, max(0, math.ceil(a * 10 / max_activation))) for a in acts]


def example_text(tokens: Sequence[str], acts: Sequence[float], max_activation: float, threshold: float) -> str:
    """One example for the explainer: the marked text, then its active tokens' levels."""
    marks = active_marks(acts, threshold)
    shown = [(t, n) for t, n, m in zip(tokens, levels(acts, max_activation), marks) if m][:MAX_LEVELS]
    line = ", ".join(f'("{t}", {n})' for t, n in shown)
    return f"{highlight(tokens, marks)}\nActivations: {line}"


def explainer_messages(
    examples: Sequence[tuple[Sequence[str], Sequence[float]]], max_activation: float, threshold: float = THRESHOLD
) -> list[Message]:
    """Delphi's explainer conversation: system text, one worked example, the examples."""
    body = "\n".join(
        f"Example {i}: {example_text(tokens, acts, max_activation, threshold)}"
        for i, (tokens, acts) in enumerate(examples, start=1)
    )
    return [
        {"role": "system", "content": SYSTEM},
        {"role": "user", "content": FEW_SHOT_USER},
        {"role": "assistant", "content": FEW_SHOT_ASSISTANT},
        {"role": "user", "content": f"\n{body}\n\n{ASK}"},
    ]


_MARKER = re.compile(r"\[EXPLANATION\]\s*:\s*(.*)", re.DOTALL | re.IGNORECASE)
_PREFIX = re.compile(r"^\s*(explanation|answer)\s*:\s*", re.IGNORECASE)


def parse_explanation(reply: str) -> tuple[str, bool]:
    """(explanation, parsed): the first line after ``[EXPLANATION]:``; without the marker,
    the reply's first non-empty line and parsed False; an empty reply gives UNPARSED."""
    found = _MARKER.search(reply)
    if found:
        text = next((line.strip() for line in found.group(1).splitlines() if line.strip()), "")
        if text:
            return _tidy(text), True
    line = next((line.strip() for line in reply.splitlines() if line.strip()), "")
    line = _PREFIX.sub("", _MARKER.sub("", line)).strip()
    return (_tidy(line), False) if line else (UNPARSED, False)


def _tidy(text: str, limit: int = 300) -> str:
    text = " ".join(text.replace("<<", "").replace(">>", "").split())
    return text if len(text) <= limit else text[: limit - 1].rstrip() + "…"
