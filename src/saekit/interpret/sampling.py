"""Examples for explaining and scoring one feature: text windows, then disjoint samples.

**Windows.** The rows of an activation store (train-mask tokens in corpus order) are cut
into consecutive, non-overlapping windows of ``length`` tokens that never cross a context
or a document (Delphi's aligned windows; Delphi uses 32 tokens). A window is *activating*
for feature i when f_i > 0 on at least one of its tokens; its level is max_t f_ti.

**Samples** (``split_windows``), following Delphi's quantile protocol
(Paulo et al. 2024, "Automatically interpreting millions of features in LLMs"):

- the ``n_top`` windows with the highest level go to the explainer;
- the remaining activating windows, sorted by level, are cut into ``n_quantiles`` equal
  consecutive slices (slice 1 the strongest). Each slice is shuffled and cut in two: its
  head is the explainer's pool, its tail the scorers' pool, so the held-out examples the
  scorers see are **disjoint** from the explainer's (Delphi draws both sets from the same
  pool and lets them overlap; saekit does not);
- the explainer takes ``n_train_per_quantile`` windows from each slice's head, the scorers
  up to ``n_test`` windows from the tails, one slice after the other in turn;
- ``n_negatives`` non-activating windows are drawn uniformly without replacement from the
  windows where the feature fires on no token at all (checked on every row of the window).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


@dataclass(frozen=True)
class WindowIndex:
    """Non-overlapping windows over store rows: window w is rows starts[w] .. ends[w] - 1."""

    starts: np.ndarray
    """[n_windows] int64: the first row of each window."""
    ends: np.ndarray
    """[n_windows] int64: one past the last row of each window."""

    def __len__(self) -> int:
        return len(self.starts)

    def of_rows(self, rows: np.ndarray) -> np.ndarray:
        """The window holding each row, −1 for a row in no window."""
        w = np.searchsorted(self.starts, rows, side="right") - 1
        inside = (w >= 0) & (rows < self.ends[np.clip(w, 0, None)])
        return np.where(inside, w, -1)

    def levels(self, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """[n_windows] max activation of a feature in each window (0: it fires on none of
        its rows), from the feature's firings (rows, values > 0)."""
        level = np.zeros(len(self), dtype=np.float32)
        w = self.of_rows(rows)
        keep = w >= 0
        np.maximum.at(level, w[keep], values[keep])
        return level

    def activations(self, w: int, rows: np.ndarray, values: np.ndarray) -> np.ndarray:
        """[length of w] the feature's activation on each token of window w."""
        begin, end = int(self.starts[w]), int(self.ends[w])
        out = np.zeros(end - begin, dtype=np.float32)
        lo, hi = np.searchsorted(rows, [begin, end])
        out[rows[lo:hi] - begin] = values[lo:hi]
        return out


def window_index(doc_ids: np.ndarray, positions: np.ndarray, length: int, *, min_length: int | None = None):
    """Windows of ``length`` rows over a store's rows, never crossing a context (the
    position does not grow by one) or a document (the document id changes). A segment's
    last piece is kept when it has at least ``min_length`` rows (default: length // 2)."""
    if length < 2:
        raise ValueError(f"windows need at least 2 tokens, got {length}.")
    min_length = max(1, length // 2 if min_length is None else min_length)
    n = len(positions)
    breaks = np.ones(n, dtype=bool)
    if n:
        breaks[1:] = (positions[1:] != positions[:-1] + 1) | (doc_ids[1:] != doc_ids[:-1])
    seg_starts = np.flatnonzero(breaks)
    seg_ends = np.append(seg_starts[1:], n)
    starts, ends = [], []
    for begin, end in zip(seg_starts.tolist(), seg_ends.tolist()):
        piece = np.arange(begin, end, length)
        piece_end = np.minimum(piece + length, end)
        keep = piece_end - piece >= min_length
        starts.append(piece[keep])
        ends.append(piece_end[keep])
    if not starts:
        return WindowIndex(np.zeros(0, dtype=np.int64), np.zeros(0, dtype=np.int64))
    return WindowIndex(np.concatenate(starts).astype(np.int64), np.concatenate(ends).astype(np.int64))


@dataclass
class FeatureSplit:
    """Window indices for one feature; train, test and negatives are pairwise disjoint."""

    train: list[int]
    """Shown to the explainer: the top windows first, then the quantile samples."""
    train_quantile: list[int]
    """0 for a top window, q = 1 … n_quantiles for a quantile sample (1 the strongest)."""
    test: list[int]
    """Held-out activating windows for the scorers."""
    test_quantile: list[int]
    negatives: list[int]
    """Windows where the feature fires on no token."""


def split_windows(
    level: np.ndarray,
    *,
    n_top: int,
    n_quantiles: int,
    n_train_per_quantile: int,
    n_test: int,
    n_negatives: int,
    seed: int,
) -> FeatureSplit:
    """The samples of the module docstring, from each window's level (max activation)."""
    rng = np.random.default_rng(seed)
    active = np.flatnonzero(level > 0)
    active = active[np.argsort(-level[active], kind="stable")]  # strongest first, ties in corpus order
    top, rest = active[:n_top], active[n_top:]
    heads, tails = [], []
    for q, piece in enumerate(np.array_split(rest, n_quantiles), start=1):
        piece = rng.permutation(piece)
        take = min(n_train_per_quantile, len(piece) // 2)  # the scorers keep at least half of each slice
        heads.append([(int(w), q) for w in piece[:take]])
        tails.append([(int(w), q) for w in piece[take:]])
    train = [(int(w), 0) for w in top] + [pair for head in heads for pair in head]
    test = _round_robin(tails, n_test)
    inactive = np.flatnonzero(level == 0)
    negatives = rng.choice(inactive, size=min(n_negatives, len(inactive)), replace=False) if len(inactive) else []
    return FeatureSplit(
        train=[w for w, _ in train],
        train_quantile=[q for _, q in train],
        test=[w for w, _ in test],
        test_quantile=[q for _, q in test],
        negatives=sorted(int(w) for w in negatives),
    )


def _round_robin(pools: list[list[tuple[int, int]]], n: int) -> list[tuple[int, int]]:
    """Up to n items, one from each pool in turn, so every quantile is represented."""
    out: list[tuple[int, int]] = []
    depth = 0
    while len(out) < n and any(depth < len(p) for p in pools):
        out.extend(p[depth] for p in pools if depth < len(p))
        depth += 1
    return out[:n]
