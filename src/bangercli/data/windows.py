"""Training and evaluation windows cut from tokenized pieces, with pitch augmentation.

Every window starts with its piece's header (START, drums flag, instrument tokens: the
tokens before the first TIME token), followed by a crop that begins on a note boundary
(a TIME token not preceded by another TIME token). Seeing the header in every window is
what makes instrument and drums control learnable. Short windows are padded with PAD (0).
numpy only: no torch here.
"""

from __future__ import annotations

from functools import lru_cache

import numpy as np

from .augment import TRANSPOSE_RANGE, revoice_windows, transpose_notes
from .shards import Shards
from ..midi.tokenizer import Tokenizer


class WindowSampler:
    """Random training windows of ``seq_len + 1`` tokens: a pure function of (seed, step, rank),
    so a resumed run sees exactly the batches the uninterrupted one would have seen."""

    def __init__(
        self,
        shards: Shards,
        tokenizer: Tokenizer,
        *,
        seq_len: int,
        seed: int,
        transpose: bool = True,
        revoice: float = 0.0,
        intro: float = 0.0,
        rank: int = 0,
        weights: np.ndarray | None = None,
    ) -> None:
        self.shards = shards
        self.tokenizer = tokenizer
        self.length = seq_len + 1  # inputs are window[:-1], targets window[1:]
        self.seed = seed
        self.transpose = transpose
        self.revoice = revoice
        self.intro = intro  # share of windows that start at the piece's first note
        self.rank = rank
        lengths = shards.lengths.astype(np.float64)
        # Pieces are drawn in proportion to their length (every token equally likely to be
        # seen), times an optional per-piece weight (the data mix).
        if weights is not None:
            lengths = lengths * weights
        self.cdf = np.cumsum(lengths) / lengths.sum()
        self._starts = lru_cache(maxsize=4096)(self._piece_starts)

    def _piece_starts(self, index: int) -> tuple[int, np.ndarray]:
        piece = np.asarray(self.shards[index])
        return self.tokenizer.header_length(piece), self.tokenizer.note_starts(piece)

    def batch(self, step: int, size: int) -> np.ndarray:
        """`size` windows for `step`, as an int64 array of shape (size, seq_len + 1)."""
        rng = np.random.default_rng([self.seed, step, self.rank])
        pieces = np.searchsorted(self.cdf, rng.random(size), side="right")
        pieces = np.minimum(pieces, len(self.cdf) - 1)
        windows = np.zeros((size, self.length), dtype=np.int64)
        for row, index in enumerate(pieces):
            window = self.window(int(index), rng)
            windows[row, : len(window)] = window
        if self.transpose:
            low, high = TRANSPOSE_RANGE
            transpose_notes(windows, rng.integers(low, high + 1, size=size), self.tokenizer)
        if self.revoice:
            revoice_windows(windows, rng, self.tokenizer, probability=self.revoice)
        return windows

    def window(self, index: int, rng: np.random.Generator) -> np.ndarray:
        piece = self.shards[index]
        header, starts = self._starts(index)
        if len(starts) == 0:
            return np.asarray(piece[: self.length])
        body = self.length - header
        # Crops that fit, plus the first one that runs off the end (so END is seen too).
        last = np.searchsorted(starts, len(piece) - body, side="right")
        start = int(starts[rng.integers(min(last + 1, len(starts)))])
        if self.intro and rng.random() < self.intro:
            # Generation starts right after the header, where real pieces start: intros are
            # sparser than the middles that uniform crops mostly show.
            start = int(starts[0])
        return np.concatenate((piece[:header], piece[start : start + body]))


def piece_windows(
    piece: np.ndarray, tokenizer: Tokenizer, length: int
) -> list[tuple[np.ndarray, int]]:
    """Non-overlapping windows covering a piece, each ``(tokens, skip)``: `tokens` is the header
    plus a crop starting on a note boundary, at most `length` long; the first `skip` targets
    (the repeated header) are not scored, so every token of the piece is scored exactly once."""
    piece = np.asarray(piece, dtype=np.int64)
    header = tokenizer.header_length(piece)
    starts = tokenizer.note_starts(piece)
    windows: list[tuple[np.ndarray, int]] = []
    position = 0  # the first window holds the header itself, scored once
    while position < len(piece):
        prefix = piece[:header] if position else piece[:0]
        end = min(position + length - len(prefix), len(piece))
        if end < len(piece):
            end = _aligned_end(starts, position, end)
        skip = len(prefix) - 1 if position else 0
        windows.append((np.concatenate((prefix, piece[position:end])), skip))
        position = end
    return windows


def _aligned_end(starts: np.ndarray, start: int, end: int) -> int:
    """The last note boundary in (start, end], or `end` when there is none."""
    k = np.searchsorted(starts, end, side="right") - 1
    return int(starts[k]) if k >= 0 and starts[k] > start else end
