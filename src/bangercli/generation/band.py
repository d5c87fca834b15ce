"""Keeping the band playing: every part plays at least once in every four bars of new music.

After a prompt, a model tends to let parts drop: in 8 of 22 real prompts a part stopped right
after the prompt (docs/reliability.md), and an added part could stay silent for bars while the
riff plays. A `Region` names the parts that must keep playing over a stretch of grid steps;
in the last bar of each 4-bar window, while a part has not played in that window, the masks
keep the row inside the window (no TIME past its end) and let its next new note be only one of
the missing parts. The model still chooses when, which pitch, how long and how loud; a part
that played in a window is free until the next one.
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np

from ..midi.instruments import INSTRUMENTS
from ..midi.tokenizer import Tokenizer

WINDOW_BARS = 4


@dataclass(frozen=True)
class Region:
    """`parts` keep playing in [start, stop), in the windows listed in `windows` (window k
    covers start + k*window .. +window); None: in every window."""

    start: int
    stop: int
    parts: tuple[int, ...]
    windows: frozenset[int] | None = None


class KeepPlaying:
    """The masks of one region for one batch, and which parts played when."""

    def __init__(self, region: Region, tokenizer: Tokenizer, *, batch: int) -> None:
        self.region, self.tokenizer = region, tokenizer
        self.bar = tokenizer.config.steps_per_bar
        self.window = WINDOW_BARS * self.bar
        self.parts = np.array(region.parts, dtype=np.int64)
        self.last = np.full((batch, len(INSTRUMENTS)), -1, dtype=np.int64)  # last onset
        self.shifts = np.arange(tokenizer.config.max_shift + 1)

    def restrict(self, mask: np.ndarray, time: np.ndarray, done: np.ndarray) -> np.ndarray:
        """`mask` (rows, vocab), or a narrowed copy of it."""
        region = self.region
        active = ~done & (time < region.stop)
        if not active.any() or not len(self.parts):
            return mask
        before = time < region.start  # such a row may not jump over the first window either
        number = np.maximum(time - region.start, 0) // self.window
        opens = region.start + number * self.window
        closes = np.minimum(opens + self.window, region.stop)
        missing = self.last[:, self.parts] < opens[:, None]  # (rows, parts)
        active &= missing.any(axis=1)
        if region.windows is not None:
            active &= np.array([k in region.windows for k in number.tolist()], dtype=bool)
        last_bar = active & ~before & (time >= closes - self.bar)
        stay = active  # no TIME past the end of a window that misses a part
        if not stay.any():
            return mask
        tokenizer = self.tokenizer
        narrowed = mask.copy()
        land = time[:, None] + self.shifts[None, :]
        times = slice(tokenizer.time_offset, tokenizer.durvel_offset)
        narrowed[:, times] &= ~(stay[:, None] & (land >= closes[:, None]))
        wanted = np.zeros((len(time), len(INSTRUMENTS)), dtype=bool)
        wanted[:, self.parts] = missing
        notes = slice(tokenizer.note_offset, tokenizer.note_offset + 128 * len(INSTRUMENTS))
        narrowed[last_bar, notes] &= np.repeat(wanted[last_bar], 128, axis=1)
        # a row the rule would leave with nothing (a kept note is due, the chord is full)
        # keeps its mask: the rule never breaks the grammar or a kept note
        stuck = ~narrowed.any(axis=1)
        narrowed[stuck] = mask[stuck]
        return narrowed

    def update(self, token: np.ndarray, time: np.ndarray, new: np.ndarray) -> None:
        """Record the onset `time` of each row's new NOTE `token` (rows flagged in `new`)."""
        relative = token - self.tokenizer.note_offset
        is_note = new & (relative >= 0) & (token < self.tokenizer.vocab_size)
        if is_note.any():
            rows = np.flatnonzero(is_note)
            self.last[rows, relative[rows] // 128] = time[rows]
