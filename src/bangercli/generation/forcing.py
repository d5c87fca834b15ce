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

import numpy as np

from ..midi.instruments import INSTRUMENTS
from ..midi.tokenizer import Tokenizer
from .accompany import Accompaniment
from .sampling import AFTER_DURVEL, AFTER_LONG_TIME, AFTER_TIME, EXPECT_TIME, softmax

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
    """The masks of one batch that keep the prompt's notes and confine the new ones, and the
    model's odds that a note is a new part's (`bias`); numpy arrays throughout."""

    def __init__(self, accompaniment: Accompaniment, tokenizer: Tokenizer, *, batch: int,
                 limit: int) -> None:
        self.tokenizer = tokenizer
        self.count = len(accompaniment.onsets)
        rank = {instrument: r for r, instrument in enumerate(accompaniment.order)}
        kept_ranks = [rank.get((n - tokenizer.note_offset) // 128, LAST)
                      for n in accompaniment.notes]
        # one sentinel after the last kept note: the end of the piece
        self.onsets = np.array(accompaniment.onsets + (limit,), dtype=np.int64)
        self.durvels = np.array(accompaniment.durvels + (-1,), dtype=np.int64)
        self.notes = np.array(accompaniment.notes + (-1,), dtype=np.int64)
        self.kept_rank = np.array(kept_ranks + [LAST], dtype=np.int64)
        self.next = np.zeros(batch, dtype=np.int64)  # each row's next kept note
        # a new part's rank in the chord order; a second voice of a kept part comes after it
        self.new_rank = np.full(len(INSTRUMENTS), LAST + 1, dtype=np.int64)
        for instrument in accompaniment.new_parts:
            second = instrument in accompaniment.second_voices
            self.new_rank[instrument] = LAST if second else rank.get(instrument, LAST)
        self.max_shift = tokenizer.config.max_shift
        self.shifts = np.arange(self.max_shift + 1)
        self.spans = accompaniment.spans
        self.span_parts = []  # per span: the instruments allowed for new notes
        for span in self.spans:
            parts = np.zeros(len(INSTRUMENTS), dtype=bool)
            parts[sorted(span.instruments)] = True
            self.span_parts.append(parts)
        self.notes_slice = slice(tokenizer.note_offset,
                                 tokenizer.note_offset + 128 * len(INSTRUMENTS))
        pitches = np.zeros((len(INSTRUMENTS), 128), dtype=bool)
        for index, instrument in enumerate(INSTRUMENTS):
            low, high = PITCH_RANGES[instrument.name]
            pitches[index, low:high + 1] = True
        self.pitches = pitches
        self.limits = np.array([CHORD_LIMITS.get(i.name, CHORD_LIMIT) for i in INSTRUMENTS])
        # new notes of each part at each row's current onset (valid while time == onset_time)
        self.at_onset = np.zeros((batch, len(INSTRUMENTS)), dtype=np.int64)
        self.onset_time = np.full(batch, -1, dtype=np.int64)
        self.durvel = np.full(batch, -1, dtype=np.int64)  # each row's last DURVEL
        # the model's running belief that a note is one of the new parts' (see `bias`)
        self.share = np.full(batch, SHARE_PRIOR, dtype=np.float32)
        new_columns = np.zeros((len(INSTRUMENTS), 128), dtype=bool)
        new_columns[list(accompaniment.new_parts)] = True
        self.new_columns = new_columns.reshape(-1)

    def restrict(self, mask: np.ndarray, phase: np.ndarray, time: np.ndarray,
                 done: np.ndarray) -> np.ndarray:
        """`mask` (rows, vocab) narrowed to what keeps the prompt and the spans (a copy)."""
        tokenizer = self.tokenizer
        mask = mask.copy()
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
        mask[:, tokenizer.time_offset] &= parts.any(axis=1) | at_kept
        # DURVEL: where a new note may start (and a kept note's own, below)
        mask[:, tokenizer.durvel_offset:tokenizer.note_offset] &= parts.any(axis=1)[:, None]
        # NOTE: the parts allowed now, in their pitch ranges
        mask[:, self.notes_slice] &= (parts[:, :, None] & self.pitches[None]).reshape(len(time),
                                                                                      -1)
        rows = np.arange(len(time))
        kept_rows = at_kept & ~done
        timing = kept_rows & (phase == EXPECT_TIME)
        if timing.any():
            mask[timing] = False
            mask[timing, tokenizer.time_token(0)] = True
        choosing = kept_rows & ((phase == AFTER_TIME) | (phase == AFTER_LONG_TIME))
        if choosing.any():
            mask[choosing, tokenizer.time_offset:tokenizer.durvel_offset] = False
            mask[rows[choosing], self.durvels[self.next][choosing]] = True
        naming = (kept_rows & (phase == AFTER_DURVEL)
                  & (self.durvel == self.durvels[self.next]))
        if naming.any():
            mask[rows[naming], self.notes[self.next][naming]] = True
        return mask

    def bias(self, logits: np.ndarray, phase: np.ndarray, time: np.ndarray) -> np.ndarray:
        """Weigh each free landing by the model's odds that a note is a new part's (a running
        mean over its NOTE distributions), not by the odds of any note at all."""
        choosing = phase == AFTER_DURVEL
        if choosing.any():
            probs = softmax(np.asarray(logits[:, self.notes_slice], dtype=np.float32))
            seen = probs[:, self.new_columns].sum(axis=-1)
            self.share = np.where(choosing, (1 - SHARE_RATE) * self.share + SHARE_RATE * seen,
                                  self.share).astype(np.float32)
        timing = (phase == EXPECT_TIME) | (phase == AFTER_LONG_TIME)
        if not timing.any():
            return logits
        due = self.onsets[self.next]
        land = time[:, None] + self.shifts[None, :]
        free = self._free(land) & ((land < due[:, None]) | (self.next >= self.count)[:, None])
        landing = free & timing[:, None]
        penalty = np.log(np.maximum(self.share, np.float32(1e-4)))[:, None] * landing
        logits = np.array(logits, dtype=np.float32)
        tokenizer = self.tokenizer
        logits[:, tokenizer.time_offset:tokenizer.durvel_offset] += penalty
        return logits

    def kept(self, token: np.ndarray, phase: np.ndarray, time: np.ndarray) -> np.ndarray:
        """(rows,): `token` is the next kept note (call before `advance`)."""
        left = self.next < self.count
        return (left & (phase == AFTER_DURVEL) & (time == self.onsets[self.next])
                & (token == self.notes[self.next]) & (self.durvel == self.durvels[self.next]))

    def advance(self, kept: np.ndarray, token: np.ndarray, phase: np.ndarray,
                time: np.ndarray) -> None:
        """After `token` (kept notes flagged in `kept`) at `phase` and onset `time`."""
        self.next += kept
        self.durvel = np.where((phase == AFTER_TIME) | (phase == AFTER_LONG_TIME), token,
                               self.durvel)
        new = (phase == AFTER_DURVEL) & ~kept
        if new.any():
            moved = new & (self.onset_time != time)
            self.at_onset[moved] = 0
            self.onset_time = np.where(new, time, self.onset_time)
            rows = np.flatnonzero(new)
            instrument = (token[rows] - self.tokenizer.note_offset) // 128
            self.at_onset[rows, instrument] += 1

    def _parts(self, time: np.ndarray) -> np.ndarray:
        """(rows, instruments): the parts whose new notes may start at `time`, short of the
        ones that have played their fill at this onset."""
        parts = np.zeros((len(time), len(INSTRUMENTS)), dtype=bool)
        for span, allowed in zip(self.spans, self.span_parts):
            inside = (time >= span.start) & (time < span.stop)
            parts |= inside[:, None] & allowed[None, :]
        full = (self.at_onset >= self.limits) & (self.onset_time == time)[:, None]
        return parts & ~full

    def _free(self, steps: np.ndarray) -> np.ndarray:
        free = np.zeros(steps.shape, dtype=bool)
        for span in self.spans:
            free |= (steps >= span.start) & (steps < span.stop)
        return free
