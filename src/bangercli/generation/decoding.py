"""The sampling loop: one batch of rows from a prefix to the requested length.

Each step is four named moves over a `Batch` (the loop's state): `allowed` (the masks that
make the request a guarantee), `draw` (steering, then one token per row), `advance` (grammar
phase, onset time, band, the chord rule) and `next_logits` (one cached decoder step, or a
re-window when the context is full). When the context reaches the model's training window
it is rebuilt as the header plus the most recent notes, which is exactly the shape of the
windows the model was trained on.

Each row's phase, time and chord are plain Python numbers, the masks, logits and odds numpy
arrays: the loop makes dozens of calls a token, and a numpy call costs several times a Python
step (a torch call several times a numpy one). The random numbers come from one
`numpy.random.Generator` per request, seeded with its seed.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import numpy as np

from ..midi.instruments import DRUMS, INSTRUMENTS
from ..midi.tokenizer import Tokenizer
from ..model.decoder import column_ranges, one_thread
from .accompany import Accompaniment
from .band import KeepPlaying, Region
from .echo import Echo
from .forcing import Forcing
from .sampling import (
    AFTER_DURVEL, AFTER_LONG_TIME, AFTER_TIME, EXPECT_TIME, HEADER, PHASES, Grammar, Sampling,
    Steering, sample,
)

# When the context is full it is rebuilt with the header and the most recent KEPT_SHARE of
# the window (768 tokens of the shipped model's 2,048), and grows back to the full window.
# Keeping more did not help: past the first window, held-out pieces scored 2.846 bits a token
# keeping 1,536 (the rule before), 2.841 keeping 1,024, 2.837 keeping 768, and 768 was as good
# or better on every source (bench/window.py). Each step reads the cache of every position
# in view and each re-window prefills the kept tokens: 16 bars of guitar and drums took 0.81x
# the time per token of keeping 1,536. What repeats from further back is the echo's business
# (echo.py: its memory is the whole piece).
KEPT_SHARE = 3 / 8


def context_window(seq_len: int) -> int:
    """The most tokens generation lets the context hold before a re-window: the model's
    training window. Smaller ones predicted held-out music about as well (1,280 tokens
    keeping 640: 0.998x the bits; bench/window.py) and would be faster, but hold only about 5
    bars of a dense band: the context is what lets the model hear 8 bars back."""
    return seq_len


def kept_tokens(window: int) -> int:
    """How many tokens of a full `window` a re-window keeps (header included)."""
    return max(int(window * KEPT_SHARE), 1)


MAX_CHORD = 64  # most notes at one onset; a model stuck on TIME(0) would otherwise loop forever
# the phases that choose a TIME or a DURVEL: sampled untruncated (see Batch.draw)
TIMING = np.zeros(PHASES, dtype=bool)
TIMING[[EXPECT_TIME, AFTER_LONG_TIME, AFTER_TIME]] = True


@dataclass(frozen=True)
class Plan:
    """What one batch must honour, worked out from the request and the prompt."""

    prefix: list[int]  # header (+ the prompt's tokens)
    instruments: list[int]  # requested melodic instruments, lead first
    drums: bool | None  # the drums flag; None = the model writes it
    only: bool  # NOTE tokens only of `instruments` (and drums)
    start: int  # grid step where generation starts (after a kept prompt)
    limit: int | None  # grid step where generation ends (--bars), or None (--tokens)
    tokens: int | None  # --tokens budget
    sampling: Sampling
    steer: float
    echo: float = 0.0  # share of each choice that follows what the piece did before (echo.py)
    along: Accompaniment | None = None  # --add/--rewrite: the prompt's notes still to come
    keep_playing: tuple[Region, ...] = ()  # parts that play in every 4 bars (band.py)


def decode_rows(banger, plan: Plan, *, batch: int, generator: np.random.Generator,
                progress=None, ended: Callable[[int, list[int]], None] | None = None
                ) -> list[list[int]]:
    """`batch` token sequences that start with `plan.prefix` and end where the plan says.
    `ended(row, tokens)` is told of each row the moment it is complete (rows end apart)."""
    with one_thread():
        state = Batch(banger, plan, batch=batch, generator=generator)
        while not state.finished:
            token = state.draw(state.allowed())
            state.advance(token)
            if progress and state.produced % 32 == 0:
                progress(*state.progress())
            if ended and state.ended:
                for row in state.ended:
                    ended(row, state.rows[row])
            state.next_logits(token)
    return state.rows


class Batch:
    """The loop's state: rows, their grammar phase and onset time, band and chord bookkeeping,
    the steering counts and the decoder's cache."""

    def __init__(self, banger, plan: Plan, *, batch: int,
                 generator: np.random.Generator) -> None:
        tokenizer: Tokenizer = banger.tokenizer
        self.tokenizer, self.plan, self.generator = tokenizer, plan, generator
        allowed = set(plan.instruments) if plan.only else None
        self.on = Grammar(tokenizer, allowed_instruments=allowed, drums=True)
        self.off = Grammar(tokenizer, allowed_instruments=allowed, drums=False)
        # the grammars' tables: masks as arrays, moves and shifts as lists
        self.masks_on, self.masks_off = self.on.masks, self.off.masks
        self.moves, self.shift = self.on.moves.tolist(), self.on.shift.tolist()
        self.decoder = banger.decoder
        self.window = context_window(banger.config.seq_len)
        self.rows = [list(plan.prefix) for _ in range(batch)]
        if plan.drums is None:
            self._choose_drums()
        self.drums_on = np.array([[row[1] == Tokenizer.DRUMS_ON] for row in self.rows])
        self.first_drums = bool(self.drums_on[0, 0])
        self.same_drums = bool((self.drums_on == self.first_drums).all())
        phase, time = self.on.scan(self.rows[0])
        if phase == HEADER and (plan.instruments and plan.only or plan.along):  # header complete
            phase = EXPECT_TIME
        self.band = self._band_of(self.rows[0], batch)
        self.band_mask = in_band(self.band, self.drums_on, tokenizer)
        self.band_version = 0  # counts the band's changes: the column cache's key
        self.column_cache: dict[tuple, tuple] = {}
        self.columns = None  # (ranges, mask) of the logits the last step worked out
        # the rows still in the decoder's cache, in its order: a row that has ended leaves it
        # and draws nothing more (PAD), so -n 16 stops paying for it
        self.live = list(range(batch))
        self.header_open = phase == HEADER  # no row goes back to the header once it leaves it
        self.phase, self.time, self.done = [phase] * batch, [time] * batch, [False] * batch
        self.ended: list[int] = []  # the rows that were completed by the last advance
        self.budget = plan.tokens if plan.tokens else 1 << 30
        self.produced = 0
        self.logits = self._rewindow()
        self.forcing = plan.along and Forcing(plan.along, tokenizer, batch=batch,
                                              limit=plan.limit)
        self.rules = [KeepPlaying(region, tokenizer, batch=batch) for region in plan.keep_playing]
        # steering counts the new notes only: a prompt's notes do not make a part present
        wanted, drums = plan.instruments, plan.drums
        if plan.along:
            wanted = [i for i in plan.along.new_parts if i != DRUMS.index]
            drums = DRUMS.index in plan.along.new_parts
        self.steering = Steering(tokenizer, wanted, strength=plan.steer, batch=batch,
                                 prefix=[], drums=drums)
        self.echo = Echo(tokenizer, weight=plan.echo, batch=batch, prefix=self.rows[0])
        self.chord = [0] * batch  # notes so far at each row's onset
        # NOTE tokens already played at each row's current onset: a second one would be the
        # same note again (decoding merges them), and a model repeating itself there piled up
        # thousands of them (seed 2 of -i guitar --drums: 2,213 NOTE tokens for 469 notes)
        self.played: list[set[int]] = [set() for _ in range(batch)]

    @property
    def finished(self) -> bool:
        return all(self.done)

    @property
    def drawing(self) -> list[int] | None:
        """The rows that draw this step: None while every row does (the common case)."""
        return self.live if len(self.live) < len(self.rows) else None

    def progress(self) -> tuple[int, int]:
        limit = self.plan.limit
        if limit:
            return min(min(self.time), limit), limit
        return self.produced, self.budget

    # --- the four moves of a step ---------------------------------------------------------

    def allowed(self) -> np.ndarray:
        """(rows, vocab): the tokens each row may write next."""
        tokenizer, phase = self.tokenizer, self.phase
        if self.same_drums:  # one grammar for the whole batch
            mask = (self.masks_on if self.first_drums else self.masks_off)[phase]
        else:
            mask = np.where(self.drums_on, self.masks_on[phase], self.masks_off[phase])
        mask &= self.band_mask
        if self.plan.start > 0:
            no_time_before(mask, tokenizer, self.time, self.plan.start)
        for row, (notes, played) in enumerate(zip(self.chord, self.played)):
            if notes >= MAX_CHORD:  # time must move on, or --bars might never end
                mask[row, tokenizer.time_token(0)] = False
            for token in played:
                mask[row, token] = False
        allowed = mask
        if self.forcing:  # last: kept notes override every other rule
            allowed = self.forcing.restrict(allowed, *self._arrays("phase", "time", "done"))
        for rule in self.rules:  # after the kept notes: the rule yields to them
            allowed = rule.restrict(allowed, *self._arrays("time", "done"))
        if self.columns is not None and (allowed[self.live] & ~self.columns[1]).any():
            self.logits = self._all_rows(self.decoder.full_logits())  # not expected: a
            self.columns = None  # safety net
        has_token = allowed.any(axis=1).tolist()
        if not all(has or done for has, done in zip(has_token, self.done)):  # would sample
            raise RuntimeError("internal error: a sequence has no allowed next token")  # nothing
        return allowed

    def draw(self, allowed: np.ndarray) -> np.ndarray:
        """One token per row. Top-k/top-p cut a distribution's tail; for TIME and DURVEL
        tokens the tail is the rests and the long notes, and cutting it made pieces about
        twice as dense as the model's own (docs/generation.md): only the NOTE choice is cut."""
        # echo first: steering and the kept notes' bias act on the mixture, so that a
        # confident echo does not water down the request. Rows that have ended draw nothing
        # (PAD: never written) but use up their random numbers, as they did when they drew.
        logits = self.echo.mix(self.logits, allowed, self.drawing)
        logits = self.steering.apply(logits, self.phase)
        if self.forcing:
            logits = self.forcing.bias(logits, *self._arrays("phase", "time"))
        return sample(logits, allowed, self.plan.sampling, self.generator,
                      untruncated=TIMING[self.phase], rows=self.drawing)

    def advance(self, token: np.ndarray) -> None:
        """Write `token` into each unfinished row and move phase, time, band and chord on."""
        tokens = token.tolist()
        counted = tokens  # new notes count for steering and the band; kept ones do not
        if self.forcing:
            phases, times, done = self._arrays("phase", "time", "done")
            kept = self.forcing.kept(token, phases, times)
            self.forcing.advance(kept & ~done, token, phases, times)
            counted = np.where(kept, Tokenizer.PAD, tokens).tolist()
        self.steering.update(counted)
        self.echo.update(tokens, self.drawing)
        for rule in self.rules:
            times, done = self._arrays("time", "done")
            rule.update(np.array(counted), times, ~done)
        if self.header_open:
            self._join_band(tokens)
        self.produced += 1
        out_of_tokens = self.produced >= self.budget
        limit, note_offset = self.plan.limit, self.tokenizer.note_offset
        self.ended = []
        for row, value in enumerate(tokens):
            phase, time = self.moves[self.phase[row]][value], self.time[row] + self.shift[value]
            if time > self.time[row]:  # a new onset
                self.chord[row] = 0
                self.played[row].clear()
            else:
                self.chord[row] += phase == EXPECT_TIME
            if value >= note_offset:
                self.played[row].add(value)
            self.phase[row], self.time[row] = phase, time
            if not self.done[row]:
                self.rows[row].append(value)
                # --tokens: stop, but never between a DURVEL and its NOTE
                self.done[row] = ((limit is not None and time >= limit)
                                  or (out_of_tokens and phase != AFTER_DURVEL))
                if self.done[row]:
                    self.ended.append(row)
        self.header_open = self.header_open and HEADER in self.phase

    def next_logits(self, token: np.ndarray) -> None:
        live = [row for row in self.live if not self.done[row]]
        if not live:
            return
        if len(live) < len(self.live):  # rows have ended: the decoder forgets them
            self.decoder.keep([i for i, row in enumerate(self.live) if not self.done[row]])
            self.live = live
        if self.decoder.length >= self.window:
            self.logits, self.columns = self._all_rows(self._rewindow()), None
        else:
            self.columns = None if self.forcing else self._columns()
            self.logits = self._all_rows(self.decoder.step(
                token[live], None if self.columns is None else self.columns[0]))

    def _all_rows(self, logits: np.ndarray) -> np.ndarray:
        """(rows, vocab) from the logits of the live rows: zeros for the rows that ended."""
        if len(self.live) == len(self.rows):
            return logits
        full = np.zeros((len(self.rows), logits.shape[1]), dtype=np.float32)
        full[self.live] = logits
        return full

    def _columns(self) -> tuple[tuple[tuple[int, int], ...], np.ndarray]:
        """The vocabulary ranges the next draw of a live row can choose from (the grammar's
        phase and the band, before the narrower rules), and the same as a mask: the decoder
        works out only those logits (a TIME is one of 256 tokens of 2,832). Kept per live rows,
        phases and band."""
        phase = [self.phase[row] for row in self.live]
        key = (tuple(self.live), tuple(phase), self.band_version)
        found = self.column_cache.get(key)
        if found is None:
            mask = (self.masks_on[phase] | self.masks_off[phase]) & self.band_mask[self.live]
            used = mask.any(axis=0)
            found = (column_ranges(used), used)
            self.column_cache[key] = found
        return found

    # --- set-up ---------------------------------------------------------------------------

    def _choose_drums(self) -> None:
        """The model writes the drums flag first, then (in the loop) the instruments."""
        batch, length = len(self.rows), len(self.plan.prefix)
        logits = self.decoder.prefill(np.array(self.rows), np.ones((batch, length), dtype=bool),
                                      self.window)
        flags = np.zeros(logits.shape, dtype=bool)
        flags[:, [Tokenizer.DRUMS_ON, Tokenizer.DRUMS_OFF]] = True
        first = sample(logits, flags, self.plan.sampling, self.generator)
        for row, token in zip(self.rows, first.tolist()):
            row.append(token)

    def _arrays(self, *names: str) -> list[np.ndarray]:
        """The named state lists as arrays, for the forcing and band rules."""
        return [np.array(getattr(self, name)) for name in names]

    def _join_band(self, tokens: list[int]) -> None:
        """Rows still in the header that list an instrument add it to their band."""
        joined = False
        for row, token in enumerate(tokens):
            listed = token - self.tokenizer.instrument_offset
            if self.phase[row] == HEADER and 0 <= listed < DRUMS.index:
                self.band[row, listed] = True
                joined = True
        if joined:
            self.band_mask = in_band(self.band, self.drums_on, self.tokenizer)
            self.band_version += 1

    def _band_of(self, prefix: list[int], batch: int) -> np.ndarray:
        """The band: the instruments in each row's header (the requested ones first, then those
        the model adds while the header is open) and those of the prompt's notes. As in every
        training piece, the header lists exactly the instruments that play: NOTE tokens of
        other instruments are masked, and an instrument already listed is not listed again."""
        tokenizer = self.tokenizer
        band = np.zeros((batch, len(INSTRUMENTS)), dtype=bool)
        band[:, DRUMS.index] = True  # drums are the drums flag's business (the grammar's masks)
        for token in prefix:
            kind = tokenizer.kind(token)
            if kind == "instrument":
                band[:, token - tokenizer.instrument_offset] = True
            elif kind == "note":
                band[:, (token - tokenizer.note_offset) // 128] = True
        return band

    def _rewindow(self) -> np.ndarray:
        """Prefill the cache with each live row's header plus its most recent notes (at most
        kept_tokens(window) in all, starting on a note boundary), left-padded to a common
        length; their logits. The most recent notes stay in view; the echo remembers the
        rest of the piece."""
        tokenizer, window = self.tokenizer, self.window
        contexts = []
        for row in (self.rows[i] for i in self.live):
            head = tokenizer.header_length(row)
            body = row[head:]
            room = max(kept_tokens(window) - head, 1)
            cut = max(len(body) - room, 0)
            if cut > 0:
                later = [i for i in tokenizer.note_starts(body) if i >= cut]
                cut = later[0] if later else len(body)
            contexts.append(row[:head] + body[cut:])
        length = max(len(c) for c in contexts)
        ids = np.zeros((len(contexts), length), dtype=np.int64)
        valid = np.zeros((len(contexts), length), dtype=bool)
        for i, context in enumerate(contexts):
            ids[i, length - len(context):] = context
            valid[i, length - len(context):] = True
        return self.decoder.prefill(ids, valid, window)


def in_band(band: np.ndarray, drums_on: np.ndarray, tokenizer: Tokenizer) -> np.ndarray:
    """(rows, vocab): False on the NOTE tokens of instruments outside each row's band
    (rows, instruments), on header tokens of instruments already in it, and, while a row has
    nothing to play (no melodic instrument, drums off), on the TIME that would close its
    header. The band changes only in the header: the loop keeps this mask until it does."""
    mask = np.ones((len(band), tokenizer.vocab_size), dtype=bool)
    notes = slice(tokenizer.note_offset, tokenizer.note_offset + 128 * band.shape[1])
    mask[:, notes] = np.repeat(band, 128, axis=1)
    listed = slice(tokenizer.instrument_offset, tokenizer.instrument_offset + DRUMS.index)
    mask[:, listed] = ~band[:, :DRUMS.index]
    silent = ~band[:, :DRUMS.index].any(axis=1) & ~drums_on[:, 0]
    mask[silent, tokenizer.time_offset:tokenizer.durvel_offset] = False
    return mask


def no_time_before(mask: np.ndarray, tokenizer: Tokenizer, time: list[int],
                   start: int) -> None:
    """Right after a prompt, the first new note may not start inside the kept bars (`mask`
    is narrowed in place): a row before `start` may not write a DURVEL, nor a TIME that
    lands short of `start` (the longest shift stays: it moves on without starting a note)."""
    longest = tokenizer.config.max_shift
    for row, now in enumerate(time):
        if now < start:
            short = tokenizer.time_offset + min(start - now, longest)
            mask[row, tokenizer.time_offset:short] = False
            mask[row, tokenizer.durvel_offset:tokenizer.note_offset] = False
