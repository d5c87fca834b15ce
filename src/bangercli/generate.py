"""Generation: a musician's request in, pieces (notes, ids, MIDI) out. Writes no files.

The header (drums flag, instruments with the lead first) conditions the model; the masks
of `sampling.Grammar` enforce the request. Variants are generated in batches of at most
`MAX_BATCH` rows (one seeded generator runs through them), so memory does not grow with
`--variants` and a slow row holds up only its own batch. When the context reaches the
model's training window, it is rebuilt as the header plus the most recent notes, which is
exactly the shape of the windows the model was trained on.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field
from typing import Callable

import mido
import torch

from .errors import BangerError, UsageError
from .fastdecode import FastDecoder, UnsupportedModel
from .instruments import DRUMS, INSTRUMENTS, instrument_named
from .sampling import (
    AFTER_DURVEL,
    AFTER_LONG_TIME,
    AFTER_TIME,
    EXPECT_TIME,
    HEADER,
    Grammar,
    Sampling,
    Steering,
    sample,
)
from .score import DEFAULT_BPM, Note, write_midi
from .tokenizer import Tokenizer, lead_order


@dataclass(frozen=True)
class Request:
    instruments: tuple[str, ...] = ()  # category names, lead first; empty = the model chooses
    only: bool = False  # no notes of instruments other than `instruments` (and drums if on)
    drums: bool | None = None  # drums on/off; None = the model chooses
    bars: int | None = 16  # length in 4/4 bars after the prompt; the piece ends on the bar line
    tokens: int | None = None  # or: length in generated tokens (then `bars` is ignored)
    variants: int = 1  # pieces, generated MAX_BATCH at a time
    seed: int = 0  # same seed and options -> same pieces
    bpm: float | None = None  # tempo; None = the prompt's, or 120
    prompt: str | os.PathLike | None = None  # a MIDI file to continue
    prompt_bars: int | None = None  # bars of the prompt kept verbatim; None = all of it
    sampling: Sampling = field(default_factory=Sampling)
    steer: float = 3.0  # logit bonus for requested instruments that are missing or behind (0 = off)

    def validate(self) -> None:
        if self.bars is not None and self.bars < 1:
            raise UsageError(f"--bars must be at least 1, got {self.bars}")
        if self.tokens is not None and self.tokens < 1:
            raise UsageError(f"--tokens must be at least 1, got {self.tokens}")
        if self.bars is None and self.tokens is None:
            raise UsageError("give a length: --bars or --tokens")
        if self.variants < 1:
            raise UsageError(f"--variants must be at least 1, got {self.variants}")
        if not self.sampling.temperature > 0:
            raise UsageError(f"--temperature must be > 0, got {self.sampling.temperature}")
        if not math.isfinite(self.sampling.temperature):  # inf would sample forever
            raise UsageError(f"--temperature must be a finite number, got {self.sampling.temperature}")
        if not 0 < self.sampling.top_p <= 1:
            raise UsageError(f"--top-p must be in (0, 1], got {self.sampling.top_p}")
        if self.sampling.top_k < 0:
            raise UsageError(f"--top-k must be >= 0, got {self.sampling.top_k}")
        if self.bpm is not None and not 10 <= self.bpm <= 400:
            raise UsageError(f"--bpm must be between 10 and 400, got {self.bpm}")
        if self.prompt_bars is not None and self.prompt_bars < 1:
            raise UsageError(f"--prompt-bars must be at least 1, got {self.prompt_bars}")
        if self.only and not self.instruments:
            raise UsageError("--only needs at least one --instrument")
        for name in self.instruments:
            instrument_named(name)
        if self.only and self.drums is False and all(instrument_named(name).is_drums
                                                     for name in self.instruments):
            raise UsageError("--only drums with --no-drums leaves nothing to play")
        if not 0 <= self.steer <= 10:
            raise UsageError(f"--steer must be between 0 and 10, got {self.steer}")
        if not 0 <= self.seed < 2**63:
            raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {self.seed}")


@dataclass
class Piece:
    ids: list[int]  # the whole token sequence, header included
    notes: list[Note]
    instruments: list[str]  # melodic instruments present, lead first
    drums: bool  # whether the piece has drum notes
    bars: int  # length in bars, prompt included
    bpm: float
    seed: int
    midi: mido.MidiFile

    @property
    def seconds(self) -> float:
        return self.bars * 4 * 60.0 / self.bpm


def generate(banger, request: Request, *, progress: Callable[[int, int], None] | None = None
             ) -> list[Piece]:
    """Generate `request.variants` pieces with the loaded model `banger`."""
    request.validate()
    tokenizer: Tokenizer = banger.tokenizer
    steps_per_bar = tokenizer.config.steps_per_bar
    instruments = [instrument_named(name).index for name in request.instruments]
    instruments = [i for i in dict.fromkeys(instruments) if i != DRUMS.index]
    drums = request.drums
    if DRUMS.index in {instrument_named(n).index for n in request.instruments} and drums is None:
        drums = True

    prompt_ids: list[int] = []
    start = 0  # grid step where generation starts
    bpm = request.bpm
    if request.prompt is not None:
        score = tokenizer.read(request.prompt)
        if not score.notes:
            raise UsageError(f"the prompt {request.prompt} has no notes")
        last_bar = max(n.start for n in score.notes) // steps_per_bar + 1
        keep = min(request.prompt_bars or last_bar, last_bar)
        start = keep * steps_per_bar
        kept = [n for n in score.notes if n.start < start]
        counts = [0] * len(INSTRUMENTS)
        for note in kept:
            counts[note.instrument] += 1
        if not instruments:
            instruments = [i for i in lead_order(counts) if i != DRUMS.index]
        if drums is None:
            drums = counts[DRUMS.index] > 0
        if request.only:
            kept = [n for n in kept if n.instrument in instruments or
                    (drums and n.instrument == DRUMS.index)]
        if drums is False:
            kept = [n for n in kept if n.instrument != DRUMS.index]
        prompt_ids = tokenizer.encode_notes(kept, end=False)
        prompt_ids = prompt_ids[len(tokenizer.header(kept)):]
        bpm = bpm or score.bpm
    bpm = bpm or DEFAULT_BPM

    header = [Tokenizer.START]
    if drums is not None:
        header.append(Tokenizer.DRUMS_ON if drums else Tokenizer.DRUMS_OFF)
    header += [tokenizer.instrument_token(i) for i in instruments]
    limit = None if request.tokens else start + request.bars * steps_per_bar
    generator = torch.Generator().manual_seed(request.seed)
    batches = range(0, request.variants, MAX_BATCH)
    pieces = []
    for number, first in enumerate(batches):
        report = progress and (lambda done, total, number=number:  # one bar over all batches
                               progress(number * total + done, len(batches) * total))
        rows = _sample(banger, request, header + prompt_ids, drums=drums, instruments=instruments,
                       start=start, limit=limit, progress=report, generator=generator,
                       batch=min(MAX_BATCH, request.variants - first))
        pieces += [_piece(tokenizer, row, limit, bpm, request.seed) for row in rows]
    return pieces


# Most rows decoded together. The KV cache and the re-window prefill grow with the batch
# (about 8.5 MB a row at peak for the default model), and a batch runs until its slowest row
# ends: -n 64 in one batch peaked at 1.1 GB, in batches of 16 at 546 MB (docs/benchmarks.md).
MAX_BATCH = 16


def _sample(banger, request: Request, prefix: list[int], *, drums: bool | None,
            instruments: list[int], start: int, limit: int | None, progress,
            generator: torch.Generator, batch: int) -> list[list[int]]:
    tokenizer: Tokenizer = banger.tokenizer
    allowed = set(instruments) if request.only else None
    on = Grammar(tokenizer, allowed_instruments=allowed, drums=True)
    off = Grammar(tokenizer, allowed_instruments=allowed, drums=False)
    decoder = fast_decoder(banger)
    window = banger.config.seq_len

    rows = [list(prefix) for _ in range(batch)]
    if drums is None:  # the model picks the drums flag, then the instruments
        logits = decoder.prefill(torch.tensor(rows), torch.ones(batch, len(prefix), dtype=torch.bool),
                                 window)
        flags = torch.zeros_like(logits, dtype=torch.bool)
        flags[:, [Tokenizer.DRUMS_ON, Tokenizer.DRUMS_OFF]] = True
        first = sample(logits, flags, request.sampling, generator)
        for row, token in zip(rows, first.tolist()):
            row.append(token)
    drums_on = torch.tensor([row[1] == Tokenizer.DRUMS_ON for row in rows])[:, None]
    first_drums = bool(drums_on[0, 0])
    same_drums = bool((drums_on == first_drums).all())
    phase, time = on.scan(rows[0])
    if phase == HEADER and instruments and request.only:  # the header is complete
        phase = EXPECT_TIME
    # The band: the instruments in each row's header (the requested ones first, then those
    # the model adds while the header is open) and those of the prompt's notes. As in every
    # training piece, the header lists exactly the instruments that play: NOTE tokens of
    # other instruments are masked, and an instrument already listed is not listed again.
    band = torch.zeros(batch, len(INSTRUMENTS), dtype=torch.bool)
    band[:, DRUMS.index] = True  # drums are the drums flag's business (the grammar's masks)
    for token in rows[0]:
        kind = tokenizer.kind(token)
        if kind == "instrument":
            band[:, token - tokenizer.instrument_offset] = True
        elif kind == "note":
            band[:, (token - tokenizer.note_offset) // 128] = True
    phase, time = torch.full((batch,), phase), torch.full((batch,), time)
    done = torch.zeros(batch, dtype=torch.bool)
    budget = request.tokens if request.tokens else 1 << 30
    header_len = torch.tensor([_header_length(tokenizer, row) for row in rows])

    logits = _rewindow(decoder, rows, header_len, window, tokenizer)
    steering = Steering(tokenizer, instruments, strength=request.steer, batch=batch, prefix=prefix,
                        drums=drums)
    produced = 0
    chord = torch.zeros(batch, dtype=torch.long)  # notes so far at each row's current onset
    # NOTE tokens already played at each row's current onset: a second one would be the same
    # note again (decoding merges them), and a model repeating itself there piled up
    # thousands of them (seed 2 of -i guitar --drums: 2,213 NOTE tokens for 469 notes)
    notes = slice(tokenizer.note_offset, tokenizer.vocab_size)
    played = torch.zeros(batch, tokenizer.vocab_size - tokenizer.note_offset, dtype=torch.bool)
    while not bool(done.all()):
        if same_drums:  # one grammar for the whole batch: half the mask work
            mask = (on if first_drums else off).masks[phase]
        else:
            mask = torch.where(drums_on, on.masks[phase], off.masks[phase])
        if start > 0:
            mask = _no_time_before(mask, tokenizer, phase, time, start)
        if bool((chord >= MAX_CHORD).any()):  # time must move on, or --bars might never end
            mask = mask.clone()
            mask[chord >= MAX_CHORD, tokenizer.time_token(0)] = False
        mask = _in_band(mask, band, drums_on, tokenizer)
        mask[:, notes] &= ~played
        if not bool((mask.any(dim=1) | done).all()):  # would sample from nothing, forever
            raise BangerError("internal error: a sequence has no allowed next token",
                              hint="please report this with the command that caused it")
        # Top-k/top-p cut a distribution's tail. For TIME and DURVEL tokens the tail is the
        # rests and the long notes, and cutting it made pieces about twice as dense as the
        # model's own (docs/generation.md): only the NOTE choice is cut.
        timing = (phase == EXPECT_TIME) | (phase == AFTER_LONG_TIME) | (phase == AFTER_TIME)
        token = sample(steering.apply(logits, phase), mask, request.sampling, generator,
                       untruncated=timing)
        steering.update(token)
        listed = token - tokenizer.instrument_offset
        joins = (phase == HEADER) & (listed >= 0) & (listed < DRUMS.index)
        band[joins, listed[joins]] = True
        new_phase, new_time = on.advance(phase, time, token)
        chord = torch.where(new_time > time, 0, chord + (new_phase == EXPECT_TIME).long())
        played[new_time > time] = False
        is_note = token >= tokenizer.note_offset
        played[is_note, token[is_note] - tokenizer.note_offset] = True
        phase, time = new_phase, new_time
        for row, value, finished in zip(rows, token.tolist(), done.tolist()):
            if not finished:
                row.append(value)
        if limit is not None:
            done |= time >= limit
        produced += 1
        if produced >= budget:  # --tokens: stop, but never between a DURVEL and its NOTE
            done |= phase != AFTER_DURVEL
        if progress and produced % 32 == 0:
            progress(int(time.min().clamp(max=limit or 0)) if limit else produced, limit or budget)
        if decoder.length >= window:
            header_len = torch.tensor([_header_length(tokenizer, row) for row in rows])
            logits = _rewindow(decoder, rows, header_len, window, tokenizer)
        else:
            logits = decoder.step(token)
    return rows


MAX_CHORD = 64  # most notes at one onset; a model stuck on TIME(0) would otherwise loop forever


def fast_decoder(banger) -> FastDecoder:
    """The model's cached decoder, built once per loaded model."""
    decoder = getattr(banger, "_fast_decoder", None)
    if decoder is None:
        try:
            decoder = FastDecoder(banger.model, banger.config)
        except UnsupportedModel as err:
            raise BangerError(f"cannot generate with this checkpoint: {err}",
                              hint="it was not made by `banger train`") from None
        banger._fast_decoder = decoder
    return decoder


def _in_band(mask: torch.Tensor, band: torch.Tensor, drums_on: torch.Tensor,
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


def _no_time_before(mask, tokenizer: Tokenizer, phase, time, start: int):
    """Right after a prompt, the first new note may not start inside the kept bars."""
    late = time < start
    if not bool(late.any()):
        return mask
    shifts = torch.arange(tokenizer.config.max_shift + 1)
    too_short = (time[:, None] + shifts[None, :] < start) & (shifts[None, :] < tokenizer.config.max_shift)
    mask = mask.clone()
    columns = slice(tokenizer.time_offset, tokenizer.time_offset + len(shifts))
    mask[:, columns] &= ~(too_short & late[:, None])
    durvel = slice(tokenizer.durvel_offset, tokenizer.note_offset)
    mask[:, durvel] &= ~late[:, None]
    return mask


def _header_length(tokenizer: Tokenizer, row: list[int]) -> int:
    for i, token in enumerate(row):
        if tokenizer.kind(token) not in ("special", "instrument"):
            return i
    return len(row)


def _rewindow(decoder, rows, header_len, window: int, tokenizer: Tokenizer) -> torch.Tensor:
    """Prefill the cache with each row's header plus its most recent notes (at most half a
    window of them, starting on a note boundary), left-padded to a common length."""
    contexts = []
    for row, head in zip(rows, header_len.tolist()):
        body = row[head:]
        room = max(window // 2 - head, 1)
        cut = max(len(body) - room, 0)
        while cut < len(body) and cut > 0 and not _note_starts_at(tokenizer, body, cut):
            cut += 1
        contexts.append(row[:head] + body[cut:])
    length = max(len(c) for c in contexts)
    ids = torch.zeros(len(rows), length, dtype=torch.long)
    valid = torch.zeros(len(rows), length, dtype=torch.bool)
    for i, context in enumerate(contexts):
        ids[i, length - len(context):] = torch.tensor(context)
        valid[i, length - len(context):] = True
    return decoder.prefill(ids, valid, window)


def _note_starts_at(tokenizer: Tokenizer, body: list[int], i: int) -> bool:
    return tokenizer.kind(body[i]) == "time" and (i == 0 or tokenizer.kind(body[i - 1]) != "time")


def _piece(tokenizer: Tokenizer, row: list[int], limit: int | None, bpm: float, seed: int
           ) -> Piece:
    score = tokenizer.decode_score(row)
    notes = score.notes
    steps_per_bar = tokenizer.config.steps_per_bar
    if limit is None:  # --tokens: end on the bar line after the last onset
        last = max((n.start for n in notes), default=0)
        limit = (last // steps_per_bar + 1) * steps_per_bar
    notes = [n._replace(duration=min(n.duration, limit - n.start)) for n in notes if n.start < limit]
    counts = [0] * len(INSTRUMENTS)
    for note in notes:
        counts[note.instrument] += 1
    header_instruments = score.header.get("instruments") or []
    order = list(dict.fromkeys(header_instruments + lead_order(counts)))
    midi = write_midi(notes, order=order, grid=tokenizer.grid, bpm=bpm, length=limit)
    present = [INSTRUMENTS[i].name for i in order if counts[i] and i != DRUMS.index]
    return Piece(ids=row, notes=notes, instruments=present, drums=counts[DRUMS.index] > 0,
                 bars=limit // steps_per_bar, bpm=bpm, seed=seed, midi=midi)
