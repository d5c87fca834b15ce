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

import torch

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
        self.parts = torch.tensor(region.parts, dtype=torch.long)
        self.last = torch.full((batch, len(INSTRUMENTS)), -1, dtype=torch.long)  # last onset
        self.shifts = torch.arange(tokenizer.config.max_shift + 1)

    def restrict(self, mask: torch.Tensor, time: torch.Tensor, done: torch.Tensor
                 ) -> torch.Tensor:
        region = self.region
        active = ~done & (time < region.stop)
        if not bool(active.any()) or not len(self.parts):
            return mask
        before = time < region.start  # such a row may not jump over the first window either
        number = (time - region.start).clamp(min=0) // self.window
        opens = region.start + number * self.window
        closes = torch.clamp(opens + self.window, max=region.stop)
        missing = self.last[:, self.parts] < opens[:, None]  # (rows, parts)
        active &= missing.any(dim=1)
        if region.windows is not None:
            active &= torch.tensor([int(k) in region.windows for k in number])
        last_bar = active & ~before & (time >= closes - self.bar)
        stay = active  # no TIME past the end of a window that misses a part
        if not bool(stay.any()):
            return mask
        tokenizer = self.tokenizer
        narrowed = mask.clone()
        land = time[:, None] + self.shifts[None, :]
        times = slice(tokenizer.time_offset, tokenizer.durvel_offset)
        narrowed[:, times] &= ~(stay[:, None] & (land >= closes[:, None]))
        wanted = torch.zeros(len(time), len(INSTRUMENTS), dtype=torch.bool)
        wanted[:, self.parts] = missing
        notes = slice(tokenizer.note_offset, tokenizer.note_offset + 128 * len(INSTRUMENTS))
        narrowed[last_bar, notes] &= wanted[last_bar].repeat_interleave(128, dim=1)
        # a row the rule would leave with nothing (a kept note is due, the chord is full)
        # keeps its mask: the rule never breaks the grammar or a kept note
        stuck = ~narrowed.any(dim=1)
        narrowed[stuck] = mask[stuck]
        return narrowed

    def update(self, token: torch.Tensor, time: torch.Tensor, new: torch.Tensor) -> None:
        """Record the onset `time` of each row's new NOTE `token` (rows flagged in `new`)."""
        relative = token - self.tokenizer.note_offset
        is_note = new & (relative >= 0) & (token < self.tokenizer.vocab_size)
        if bool(is_note.any()):
            rows = torch.nonzero(is_note).squeeze(1)
            self.last[rows, relative[rows] // 128] = time[rows]
