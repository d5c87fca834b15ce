"""The sampling loop: one batch of rows from a prefix to the requested length.

Each step is four named moves over a `Batch` (the loop's state): `allowed` (the masks that
make the request a guarantee), `draw` (steering, then one token per row), `advance` (grammar
phase, onset time, band, the chord rule) and `next_logits` (one cached decoder step, or a
re-window when the context is full). When the context reaches the model's training window
it is rebuilt as the header plus the most recent notes, which is exactly the shape of the
windows the model was trained on.
"""

from __future__ import annotations

from dataclasses import dataclass

import torch

from ..midi.instruments import DRUMS, INSTRUMENTS
from ..midi.tokenizer import Tokenizer
from ..model.decoder import one_thread
from .accompany import Accompaniment
from .band import KeepPlaying, Region
from .forcing import Forcing
from .sampling import (
    AFTER_DURVEL, AFTER_LONG_TIME, AFTER_TIME, EXPECT_TIME, HEADER, Grammar, Sampling, Steering,
    sample,
)

# When the context is full the window slides by a quarter of its length, but by at least
# MIN_SLIDE tokens: most of what the model heard stays in view, and the prefill each slide
# costs (of the kept tokens) comes at most once per MIN_SLIDE generated tokens. A 2,048-token
# window keeps 1,536 tokens; a 512-token window keeps 256 (sliding by a quarter there made
# 16 bars of guitar and drums 5-13% slower for about half a bar more context).
MIN_SLIDE = 256


def kept_tokens(window: int) -> int:
    """How many tokens of a full `window` a re-window keeps (header included)."""
    return max(window - max(window // 4, MIN_SLIDE), 1)
MAX_CHORD = 64  # most notes at one onset; a model stuck on TIME(0) would otherwise loop forever


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
    along: Accompaniment | None = None  # --add/--rewrite: the prompt's notes still to come
    keep_playing: tuple[Region, ...] = ()  # parts that play in every 4 bars (band.py)


def decode_rows(banger, plan: Plan, *, batch: int, generator: torch.Generator,
                progress=None) -> list[list[int]]:
    """`batch` token sequences that start with `plan.prefix` and end where the plan says."""
    with one_thread():
        state = Batch(banger, plan, batch=batch, generator=generator)
        while not state.finished:
            token = state.draw(state.allowed())
            state.advance(token)
            if progress and state.produced % 32 == 0:
                progress(*state.progress())
            state.next_logits(token)
    return state.rows


class Batch:
    """The loop's state: rows, their grammar phase and onset time, band and chord bookkeeping,
    the steering counts and the decoder's cache."""

    def __init__(self, banger, plan: Plan, *, batch: int, generator: torch.Generator) -> None:
        tokenizer: Tokenizer = banger.tokenizer
        self.tokenizer, self.plan, self.generator = tokenizer, plan, generator
        allowed = set(plan.instruments) if plan.only else None
        self.on = Grammar(tokenizer, allowed_instruments=allowed, drums=True)
        self.off = Grammar(tokenizer, allowed_instruments=allowed, drums=False)
        self.decoder = banger.decoder
        self.window = banger.config.seq_len
        self.rows = [list(plan.prefix) for _ in range(batch)]
        if plan.drums is None:
            self._choose_drums()
        self.drums_on = torch.tensor([row[1] == Tokenizer.DRUMS_ON for row in self.rows])[:, None]
        self.first_drums = bool(self.drums_on[0, 0])
        self.same_drums = bool((self.drums_on == self.first_drums).all())
        phase, time = self.on.scan(self.rows[0])
        if phase == HEADER and (plan.instruments and plan.only or plan.along):  # header complete
            phase = EXPECT_TIME
        self.band = self._band_of(self.rows[0], batch)
        self.phase, self.time = torch.full((batch,), phase), torch.full((batch,), time)
        self.done = torch.zeros(batch, dtype=torch.bool)
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
        self.chord = torch.zeros(batch, dtype=torch.long)  # notes so far at each row's onset
        # NOTE tokens already played at each row's current onset: a second one would be the
        # same note again (decoding merges them), and a model repeating itself there piled up
        # thousands of them (seed 2 of -i guitar --drums: 2,213 NOTE tokens for 469 notes)
        self.notes = slice(tokenizer.note_offset, tokenizer.vocab_size)
        self.played = torch.zeros(batch, tokenizer.vocab_size - tokenizer.note_offset,
                                  dtype=torch.bool)

    @property
    def finished(self) -> bool:
        return bool(self.done.all())

    def progress(self) -> tuple[int, int]:
        limit = self.plan.limit
        if limit:
            return int(self.time.min().clamp(max=limit)), limit
        return self.produced, self.budget

    # --- the four moves of a step ---------------------------------------------------------

    def allowed(self) -> torch.Tensor:
        """(rows, vocab): the tokens each row may write next."""
        tokenizer, phase = self.tokenizer, self.phase
        if self.same_drums:  # one grammar for the whole batch: half the mask work
            mask = (self.on if self.first_drums else self.off).masks[phase]
        else:
            mask = torch.where(self.drums_on, self.on.masks[phase], self.off.masks[phase])
        if self.plan.start > 0:
            mask = no_time_before(mask, tokenizer, phase, self.time, self.plan.start)
        if bool((self.chord >= MAX_CHORD).any()):  # time must move on, or --bars might never end
            mask = mask.clone()
            mask[self.chord >= MAX_CHORD, tokenizer.time_token(0)] = False
        mask = in_band(mask, self.band, self.drums_on, tokenizer)
        mask[:, self.notes] &= ~self.played
        if self.forcing:  # last: kept notes override every other rule
            mask = self.forcing.restrict(mask, self.phase, self.time, self.done)
        for rule in self.rules:  # after the kept notes: the rule yields to them
            mask = rule.restrict(mask, self.time, self.done)
        if not bool((mask.any(dim=1) | self.done).all()):  # would sample from nothing, forever
            raise RuntimeError("internal error: a sequence has no allowed next token")
        return mask

    def draw(self, allowed: torch.Tensor) -> torch.Tensor:
        """One token per row. Top-k/top-p cut a distribution's tail; for TIME and DURVEL
        tokens the tail is the rests and the long notes, and cutting it made pieces about
        twice as dense as the model's own (docs/generation.md): only the NOTE choice is cut."""
        phase = self.phase
        timing = (phase == EXPECT_TIME) | (phase == AFTER_LONG_TIME) | (phase == AFTER_TIME)
        logits = self.steering.apply(self.logits, phase)
        if self.forcing:
            logits = self.forcing.bias(logits, phase, self.time)
        return sample(logits, allowed, self.plan.sampling, self.generator, untruncated=timing)

    def advance(self, token: torch.Tensor) -> None:
        """Write `token` into each unfinished row and move phase, time, band and chord on."""
        tokenizer = self.tokenizer
        counted = token  # new notes count for steering and the band; kept ones do not
        if self.forcing:
            kept = self.forcing.kept(token, self.phase, self.time)
            self.forcing.advance(kept & ~self.done, token, self.phase, self.time)
            counted = torch.where(kept, Tokenizer.PAD, token)
        self.steering.update(counted)
        for rule in self.rules:
            rule.update(counted, self.time, ~self.done)
        listed = token - tokenizer.instrument_offset
        joins = (self.phase == HEADER) & (listed >= 0) & (listed < DRUMS.index)
        self.band[joins, listed[joins]] = True
        new_phase, new_time = self.on.advance(self.phase, self.time, token)
        moved = new_time > self.time
        self.chord = torch.where(moved, 0, self.chord + (new_phase == EXPECT_TIME).long())
        self.played[moved] = False
        is_note = token >= tokenizer.note_offset
        self.played[is_note, token[is_note] - tokenizer.note_offset] = True
        self.phase, self.time = new_phase, new_time
        for row, value, finished in zip(self.rows, token.tolist(), self.done.tolist()):
            if not finished:
                row.append(value)
        if self.plan.limit is not None:
            self.done |= self.time >= self.plan.limit
        self.produced += 1
        if self.produced >= self.budget:  # --tokens: stop, but never between a DURVEL and its NOTE
            self.done |= self.phase != AFTER_DURVEL

    def next_logits(self, token: torch.Tensor) -> None:
        if self.decoder.length >= self.window:
            self.logits = self._rewindow()
        else:
            self.logits = self.decoder.step(token)

    # --- set-up ---------------------------------------------------------------------------

    def _choose_drums(self) -> None:
        """The model writes the drums flag first, then (in the loop) the instruments."""
        batch, length = len(self.rows), len(self.plan.prefix)
        logits = self.decoder.prefill(torch.tensor(self.rows),
                                      torch.ones(batch, length, dtype=torch.bool), self.window)
        flags = torch.zeros_like(logits, dtype=torch.bool)
        flags[:, [Tokenizer.DRUMS_ON, Tokenizer.DRUMS_OFF]] = True
        first = sample(logits, flags, self.plan.sampling, self.generator)
        for row, token in zip(self.rows, first.tolist()):
            row.append(token)

    def _band_of(self, prefix: list[int], batch: int) -> torch.Tensor:
        """The band: the instruments in each row's header (the requested ones first, then those
        the model adds while the header is open) and those of the prompt's notes. As in every
        training piece, the header lists exactly the instruments that play: NOTE tokens of
        other instruments are masked, and an instrument already listed is not listed again."""
        tokenizer = self.tokenizer
        band = torch.zeros(batch, len(INSTRUMENTS), dtype=torch.bool)
        band[:, DRUMS.index] = True  # drums are the drums flag's business (the grammar's masks)
        for token in prefix:
            kind = tokenizer.kind(token)
            if kind == "instrument":
                band[:, token - tokenizer.instrument_offset] = True
            elif kind == "note":
                band[:, (token - tokenizer.note_offset) // 128] = True
        return band

    def _rewindow(self) -> torch.Tensor:
        """Prefill the cache with each row's header plus its most recent notes (at most
        kept_tokens(window) in all, starting on a note boundary), left-padded to a common
        length. The window slides: most of what the model heard stays in view, so a riff
        from many bars ago can come back."""
        tokenizer, window = self.tokenizer, self.window
        contexts = []
        for row in self.rows:
            head = tokenizer.header_length(row)
            body = row[head:]
            room = max(kept_tokens(window) - head, 1)
            cut = max(len(body) - room, 0)
            if cut > 0:
                later = [i for i in tokenizer.note_starts(body) if i >= cut]
                cut = later[0] if later else len(body)
            contexts.append(row[:head] + body[cut:])
        length = max(len(c) for c in contexts)
        ids = torch.zeros(len(self.rows), length, dtype=torch.long)
        valid = torch.zeros(len(self.rows), length, dtype=torch.bool)
        for i, context in enumerate(contexts):
            ids[i, length - len(context):] = torch.tensor(context)
            valid[i, length - len(context):] = True
        return self.decoder.prefill(ids, valid, window)


def in_band(mask: torch.Tensor, band: torch.Tensor, drums_on: torch.Tensor,
            tokenizer: Tokenizer) -> torch.Tensor:
    """`mask` (rows, vocab) without the NOTE tokens of instruments outside each row's band
    (rows, instruments), without header tokens of instruments already in it, and, while a
    row has nothing to play (no melodic instrument, drums off), without the TIME that would
    close its header."""
    mask = mask.expand(len(band), -1).clone()
    notes = slice(tokenizer.note_offset, tokenizer.note_offset + 128 * band.shape[1])
    mask[:, notes] &= band.repeat_interleave(128, dim=1)
    listed = slice(tokenizer.instrument_offset, tokenizer.instrument_offset + DRUMS.index)
    mask[:, listed] &= ~band[:, :DRUMS.index]
    silent = ~band[:, :DRUMS.index].any(dim=1) & ~drums_on[:, 0]
    if bool(silent.any()):
        mask[silent, tokenizer.time_offset:tokenizer.durvel_offset] = False
    return mask


def no_time_before(mask, tokenizer: Tokenizer, phase, time, start: int):
    """Right after a prompt, the first new note may not start inside the kept bars."""
    late = time < start
    if not bool(late.any()):
        return mask
    shifts = torch.arange(tokenizer.config.max_shift + 1)
    too_short = ((time[:, None] + shifts[None, :] < start)
                 & (shifts[None, :] < tokenizer.config.max_shift))
    mask = mask.clone()
    columns = slice(tokenizer.time_offset, tokenizer.time_offset + len(shifts))
    mask[:, columns] &= ~(too_short & late[:, None])
    durvel = slice(tokenizer.durvel_offset, tokenizer.note_offset)
    mask[:, durvel] &= ~late[:, None]
    return mask
