"""The masks of playing along: the prompt's notes forced at their onsets, new notes in between.

At every step of the loop (decoding.py), for each row:

- choosing a TIME, it may land exactly on the next kept onset, or earlier on a step where new
  notes are allowed (or pass over a step with a TIME of the longest shift); never beyond it;
- on a kept onset the kept notes are written token by token (TIME(0), DURVEL, NOTE), and a new
  note may come between them only where the tokenizer's chord order puts it: a new bass goes
  after the lead's notes and before the drums, as in every training piece;
- a new note is a NOTE of an instrument allowed in its span, within the instrument's pitch
  range, at most a few per part at one onset.

So every kept note is written at its onset with its duration, velocity and pitch, and nothing
is written outside the spans. The model hears the past of the prompt, not its future, and its
TIME choice says when the next note of *any* part starts: a landing before the next kept onset
commits the row to a new part's note, so such landings are weighed by the model's own odds that
a note is a new part's (`bias`).
"""

from __future__ import annotations

import torch

from ..midi.instruments import INSTRUMENTS
from ..midi.tokenizer import Tokenizer
from .accompany import Accompaniment
from .sampling import AFTER_DURVEL, AFTER_LONG_TIME, AFTER_TIME, EXPECT_TIME

# Where a new part's notes may lie: the 0.5th to 99.5th percentile of each category's pitches
# in the training corpus. Made to play where it meant another part, the model otherwise
# reached for pitches no bass plays (MIDI 0-20).
PITCH_RANGES = {"piano": (36, 89), "chromatic": (44, 104), "organ": (41, 92),
                "guitar": (35, 82), "bass": (21, 66), "strings": (25, 98), "brass": (29, 86),
                "woodwinds": (43, 93), "lead": (26, 96), "pad": (35, 94), "ethnic": (28, 93),
                "drums": (22, 81)}
# Most new notes of one part at one onset: a bass plays one note at a time, drums hit a few
# pieces at once, other parts play chords. Without a limit a model made to play bass where it
# meant a drum kept adding bass notes at that onset (43 notes on 3 onsets).
CHORD_LIMITS = {"bass": 1, "drums": 3}
CHORD_LIMIT = 4
SHARE_PRIOR = 0.3  # a new part's share of the notes before the model has said anything
SHARE_RATE = 0.1  # weight of each NOTE distribution in the running mean of that share
LAST = 1 << 20  # the chord-order rank after every instrument


class Forcing:
    """The masks of one batch that keep the prompt's notes and confine the new ones."""

    def __init__(self, accompaniment: Accompaniment, tokenizer: Tokenizer, *, batch: int,
                 limit: int) -> None:
        self.tokenizer = tokenizer
        self.count = len(accompaniment.onsets)
        rank = {instrument: r for r, instrument in enumerate(accompaniment.order)}
        kept_ranks = [rank.get((n - tokenizer.note_offset) // 128, LAST)
                      for n in accompaniment.notes]
        # one sentinel after the last kept note: the end of the piece
        self.onsets = torch.tensor(accompaniment.onsets + (limit,))
        self.durvels = torch.tensor(accompaniment.durvels + (-1,))
        self.notes = torch.tensor(accompaniment.notes + (-1,))
        self.kept_rank = torch.tensor(kept_ranks + [LAST])
        self.next = torch.zeros(batch, dtype=torch.long)  # each row's next kept note
        # a new part's rank in the chord order; a second voice of a kept part comes after it
        self.new_rank = torch.full((len(INSTRUMENTS),), LAST + 1)
        for instrument in accompaniment.new_parts:
            second = instrument in accompaniment.second_voices
            self.new_rank[instrument] = LAST if second else rank.get(instrument, LAST)
        self.max_shift = tokenizer.config.max_shift
        self.shifts = torch.arange(self.max_shift + 1)
        self.spans = accompaniment.spans
        self.span_parts = []  # per span: the instruments allowed for new notes
        for span in self.spans:
            parts = torch.zeros(len(INSTRUMENTS), dtype=torch.bool)
            parts[sorted(span.instruments)] = True
            self.span_parts.append(parts)
        self.notes_slice = slice(tokenizer.note_offset,
                                 tokenizer.note_offset + 128 * len(INSTRUMENTS))
        pitches = torch.zeros(len(INSTRUMENTS), 128, dtype=torch.bool)
        for index, instrument in enumerate(INSTRUMENTS):
            low, high = PITCH_RANGES[instrument.name]
            pitches[index, low:high + 1] = True
        self.pitches = pitches
        self.limits = torch.tensor([CHORD_LIMITS.get(i.name, CHORD_LIMIT) for i in INSTRUMENTS])
        # new notes of each part at each row's current onset (valid while time == onset_time)
        self.at_onset = torch.zeros(batch, len(INSTRUMENTS), dtype=torch.long)
        self.onset_time = torch.full((batch,), -1, dtype=torch.long)
        self.durvel = torch.full((batch,), -1, dtype=torch.long)  # each row's last DURVEL
        # the model's running belief that a note is one of the new parts' (see `bias`)
        self.share = torch.full((batch,), SHARE_PRIOR)
        new_columns = torch.zeros(len(INSTRUMENTS), 128, dtype=torch.bool)
        new_columns[list(accompaniment.new_parts)] = True
        self.new_columns = new_columns.view(-1)

    def restrict(self, mask: torch.Tensor, phase: torch.Tensor, time: torch.Tensor,
                 done: torch.Tensor) -> torch.Tensor:
        """`mask` (rows, vocab) narrowed to what keeps the prompt and the spans."""
        tokenizer = self.tokenizer
        mask = mask.clone()
        due = self.onsets[self.next]  # (rows,) the next kept onset, or the end
        left = self.next < self.count  # kept notes still to write
        at_kept = left & (time == due)
        parts = self._parts(time)  # (rows, instruments) new notes allowed now
        # on a kept onset, only the new parts that come before the next kept note's part
        parts &= ~at_kept[:, None] | (self.new_rank[None, :] < self.kept_rank[self.next][:, None])
        # TIME: land on the next kept onset, or before it where new notes may start, or pass
        # over with the longest shift; after the last kept note, anywhere past the end too
        land = time[:, None] + self.shifts[None, :]
        ok = (land == due[:, None]) | ((land < due[:, None])
                                       & (self._free(land) | (self.shifts == self.max_shift)))
        ok |= (land > due[:, None]) & ~left[:, None]
        mask[:, tokenizer.time_offset:tokenizer.durvel_offset] &= ok
        # no TIME(0) once every part that may play here has played its fill at this onset
        mask[:, tokenizer.time_offset] &= parts.any(dim=1) | at_kept
        # DURVEL: where a new note may start (and a kept note's own, below)
        mask[:, tokenizer.durvel_offset:tokenizer.note_offset] &= parts.any(dim=1)[:, None]
        # NOTE: the parts allowed now, in their pitch ranges
        mask[:, self.notes_slice] &= (parts[:, :, None] & self.pitches[None]).view(len(time), -1)
        rows = torch.arange(len(time))
        kept_rows = at_kept & ~done
        timing = kept_rows & (phase == EXPECT_TIME)
        if bool(timing.any()):
            mask[timing] = False
            mask[timing, tokenizer.time_token(0)] = True
        choosing = kept_rows & ((phase == AFTER_TIME) | (phase == AFTER_LONG_TIME))
        if bool(choosing.any()):
            mask[choosing, tokenizer.time_offset:tokenizer.durvel_offset] = False
            mask[rows[choosing], self.durvels[self.next][choosing]] = True
        naming = kept_rows & (phase == AFTER_DURVEL) & (self.durvel == self.durvels[self.next])
        if bool(naming.any()):
            mask[rows[naming], self.notes[self.next][naming]] = True
        return mask

    def bias(self, logits: torch.Tensor, phase: torch.Tensor, time: torch.Tensor
             ) -> torch.Tensor:
        """Weigh each free landing by the model's odds that a note is a new part's (a running
        mean over its NOTE distributions), not by the odds of any note at all."""
        choosing = phase == AFTER_DURVEL
        if bool(choosing.any()):
            probs = torch.softmax(logits[:, self.notes_slice].float(), dim=-1)
            seen = probs[:, self.new_columns].sum(dim=-1)
            self.share = torch.where(choosing, (1 - SHARE_RATE) * self.share + SHARE_RATE * seen,
                                     self.share)
        timing = (phase == EXPECT_TIME) | (phase == AFTER_LONG_TIME)
        if not bool(timing.any()):
            return logits
        due = self.onsets[self.next]
        land = time[:, None] + self.shifts[None, :]
        free = self._free(land) & ((land < due[:, None]) | (self.next >= self.count)[:, None])
        penalty = torch.log(self.share.clamp(min=1e-4))[:, None] * (free & timing[:, None])
        logits = logits.clone()
        tokenizer = self.tokenizer
        logits[:, tokenizer.time_offset:tokenizer.durvel_offset] += penalty.to(logits.dtype)
        return logits

    def kept(self, token: torch.Tensor, phase: torch.Tensor, time: torch.Tensor) -> torch.Tensor:
        """(rows,): `token` is the next kept note (call before `advance`)."""
        left = self.next < self.count
        return (left & (phase == AFTER_DURVEL) & (time == self.onsets[self.next])
                & (token == self.notes[self.next]) & (self.durvel == self.durvels[self.next]))

    def advance(self, kept: torch.Tensor, token: torch.Tensor, phase: torch.Tensor,
                time: torch.Tensor) -> None:
        """After `token` (kept notes flagged in `kept`) at `phase` and onset `time`."""
        self.next += kept.long()
        self.durvel = torch.where((phase == AFTER_TIME) | (phase == AFTER_LONG_TIME), token,
                                  self.durvel)
        new = (phase == AFTER_DURVEL) & ~kept
        if bool(new.any()):
            moved = new & (self.onset_time != time)
            self.at_onset[moved] = 0
            self.onset_time = torch.where(new, time, self.onset_time)
            rows = torch.nonzero(new).squeeze(1)
            instrument = (token[rows] - self.tokenizer.note_offset) // 128
            self.at_onset[rows, instrument] += 1

    def _parts(self, time: torch.Tensor) -> torch.Tensor:
        """(rows, instruments): the parts whose new notes may start at `time`, short of the
        ones that have played their fill at this onset."""
        parts = torch.zeros(len(time), len(INSTRUMENTS), dtype=torch.bool)
        for span, allowed in zip(self.spans, self.span_parts):
            inside = (time >= span.start) & (time < span.stop)
            parts |= inside[:, None] & allowed[None, :]
        full = (self.at_onset >= self.limits) & (self.onset_time == time)[:, None]
        return parts & ~full

    def _free(self, steps: torch.Tensor) -> torch.Tensor:
        free = torch.zeros_like(steps, dtype=torch.bool)
        for span in self.spans:
            free |= (steps >= span.start) & (steps < span.stop)
        return free
