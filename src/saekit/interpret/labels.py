"""A feature's label in a table: the tokens it fires on most among its top examples.

The label is read from the feature statistics a run already has (FeatureStats.top): the
token at each top example's position, counted, most frequent first (ties: the one with
the larger activation first). It is what a reader scans a ranking by; the dashboard
shows the contexts themselves.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable

from .examples import Examples


def top_token_ids(examples: Examples, feature: int, n: int = 5) -> list[int]:
    """Up to ``n`` distinct token ids the feature's top examples sit on, most frequent first."""
    centre = examples.before
    tokens = [example.tokens[centre] for example in examples.of(feature)]  # largest activation first
    counts = Counter(tokens)
    first = {token: i for i, token in reversed(list(enumerate(tokens)))}
    return sorted(counts, key=lambda t: (-counts[t], first[t]))[:n]


def top_tokens(examples: Examples, feature: int, decode: Callable[[int], str], n: int = 5) -> list[str]:
    """``top_token_ids`` as text (``decode``: token id → its text)."""
    return [decode(token) for token in top_token_ids(examples, feature, n)]


def token_decoder(tokenizer) -> Callable[[int], str]:
    """Token id → ``tokenizer.decode([id])``, cached."""
    cache: dict[int, str] = {}

    def decode(token: int) -> str:
        if token not in cache:
            cache[token] = tokenizer.decode([token])
        return cache[token]

    return decode
