"""Generation: a musician's request in, pieces (notes, ids, MIDI) out. Writes no files.

The header (drums flag, instruments with the lead first) conditions the model; the masks
of `sampling.Grammar` enforce the request (the loop itself is in decoding.py). Variants are
generated in batches of at most `MAX_BATCH` rows (one seeded generator runs through them),
so memory does not grow with `--variants` and a slow row holds up only its own batch.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Callable

import mido
import numpy as np

from ..errors import UsageError
from ..midi.instruments import DRUMS, INSTRUMENTS, instrument_named
from ..midi.merge import Cut, PromptFile, merge
from ..midi.midifile import midi_bytes, write_midi
from ..midi.score import DEFAULT_BPM, Note, instrument_counts
from ..midi.tokenizer import Tokenizer, lead_order
from .accompany import new_notes, plan_play_along
from .band import WINDOW_BARS, Region
from .decoding import Plan, decode_rows
from .request import Request, prompt_name

# Most rows decoded together. The KV cache and the re-window prefill grow with the batch
# (about 8.5 MB a row at peak for the default model), and a batch runs until its slowest row
# ends: -n 64 in one batch peaked at 1.1 GB, in batches of 16 at 546 MB (docs/benchmarks.md).
MAX_BATCH = 16


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
    warnings: tuple[str, ...] = ()  # what was changed of the request or the prompt, and why

    @property
    def seconds(self) -> float:
        return self.bars * 4 * 60.0 / self.bpm


def generate(banger, request: Request, *, progress: Callable[[int, int], None] | None = None,
             finished: Callable[[int, Piece], None] | None = None) -> list[Piece]:
    """Generate `request.variants` pieces with the loaded model `banger`. `finished(n,
    piece)` is told of each piece (n counts from 0, in the order returned) as soon as it is
    complete, while the others are still being written: a caller can start on its preview."""
    plan, bpm, prompt = _plan(banger.tokenizer, request)
    # one stream for the whole request: the same seed draws the same numbers on any machine
    generator = np.random.Generator(np.random.PCG64(request.seed))
    batches = range(0, request.variants, MAX_BATCH)
    pieces: dict[int, Piece] = {}

    def ended(first: int, row: int, ids: list[int]) -> None:
        pieces[first + row] = _piece(banger.tokenizer, ids, plan, bpm, request, prompt)
        if finished:
            finished(first + row, pieces[first + row])

    for number, first in enumerate(batches):
        report = progress and (lambda done, total, number=number:  # one bar over all batches
                               progress(number * total + done, len(batches) * total))
        decode_rows(banger, plan, batch=min(MAX_BATCH, request.variants - first),
                    generator=generator, progress=report,
                    ended=lambda row, ids, first=first: ended(first, row, ids))
    return [pieces[n] for n in range(request.variants)]


@dataclass
class _Prompt:
    """What the output needs of a prompt: its own file, which notes stay, its bars."""

    file: PromptFile
    cut: Cut
    bars: int  # the prompt's bars that are kept, in its own meter
    kept_notes: int  # notes (kept, on the grid) at the start of every row: the prefix's
    warnings: tuple[str, ...]


def _plan(tokenizer: Tokenizer, request: Request) -> tuple[Plan, float, _Prompt | None]:
    """The header, the kept prompt and the length the loop must honour, the tempo, and what
    the output keeps of the prompt."""
    steps_per_bar = tokenizer.config.steps_per_bar
    instruments = [instrument_named(name).index for name in request.instruments]
    instruments = [i for i in dict.fromkeys(instruments) if i != DRUMS.index]
    drums = request.drums
    if DRUMS.index in {instrument_named(n).index for n in request.instruments} and drums is None:
        drums = True
    header_plan = Plan(prefix=[], instruments=instruments, drums=drums, only=request.only,
                       start=0, limit=None if request.tokens else request.bars * steps_per_bar,
                       tokens=request.tokens, sampling=request.sampling, steer=request.steer,
                       echo=request.echo)
    if request.prompt is None:
        return replace(header_plan, prefix=_header(tokenizer, drums=drums, instruments=instruments)), \
            request.bpm or DEFAULT_BPM, None

    data = midi_bytes(request.prompt)
    score = tokenizer.read(data)
    if not score.notes:
        raise UsageError(f"{prompt_name(request.prompt)} has no notes",
                         hint="give a MIDI file with notes")
    file = PromptFile(data, tokenizer.grid)
    warnings = []
    if not file.usable:
        warnings.append(f"the prompt's own events cannot be copied: {file.problem}; it is "
                        "kept as banger hears it (1/32 grid, one program per instrument, "
                        "one tempo)")
    starts = file.bar_starts(max(n.start for n in score.notes) + 1)
    keep = len(starts) - 1
    if request.prompt_bars and request.prompt_bars > keep:
        warnings.append(f"--prompt-bars {request.prompt_bars}: the prompt has {keep} "
                        f"bar{'s' if keep != 1 else ''}; all of it is kept")
    keep = min(request.prompt_bars or keep, keep)
    start = starts[keep]
    kept = [n for n in score.notes if n.start < start]
    bpm = request.bpm or score.bpm
    if request.plays_along:
        along = plan_play_along(tokenizer, request, kept, bar_starts=starts[:keep + 1])
        plan = replace(header_plan, prefix=along.prefix, instruments=along.instruments,
                       drums=along.drums, only=False, limit=along.limit, along=along.accompaniment,
                       keep_playing=along.regions)
        rewritten = along.accompaniment.new_parts if request.rewrite else ()
        span = along.accompaniment.spans[0]
        cut = Cut(until=start, instruments=frozenset(rewritten), start=span.start, stop=span.stop)
        prefix_notes = along.prefix_notes
    else:
        # the band is what the kept bars play, or, when they are silent (a prompt that
        # starts with empty bars), what the whole prompt plays
        counts = instrument_counts(kept or score.notes)
        if not instruments:
            instruments = [i for i in lead_order(counts) if i != DRUMS.index]
        if drums is None:
            drums = counts[DRUMS.index] > 0
        left_out = {n.instrument for n in kept} - set(instruments) - {DRUMS.index} \
            if request.only else set()
        if drums is False:
            left_out |= {n.instrument for n in kept} & {DRUMS.index}
        if left_out:
            flag = "--only" if left_out - {DRUMS.index} else "--no-drums"
            names = ", ".join(f"{INSTRUMENTS[i].name} ({counts[i]} notes)"
                              for i in sorted(left_out))
            warnings.append(f"{flag}: the prompt's {names} left out")
            kept = [n for n in kept if n.instrument not in left_out]
        cut = Cut(until=start, instruments=frozenset(left_out), start=0, stop=start)
        prompt_ids = tokenizer.encode_notes(kept, end=False)[len(tokenizer.header(kept)):]
        plan = replace(header_plan, prefix=_header(tokenizer, drums=drums, instruments=instruments) + prompt_ids,
                       instruments=instruments, drums=drums, start=start,
                       limit=None if request.tokens else start + request.bars * steps_per_bar,
                       keep_playing=_band_plays_on(request, kept, instruments, drums=drums,
                                                   start=start, steps_per_bar=steps_per_bar))
        prefix_notes = len(kept)
    if file.usable and plan.limit and plan.limit > start and file.meter_at(start) != (4, 4):
        numerator, denominator = file.meter_at(start)
        warnings.append(f"the prompt is in {numerator}/{denominator}; banger continues in 4/4 "
                        f"from bar {keep + 1}")
    return plan, bpm, _Prompt(file=file, cut=cut, bars=keep, kept_notes=prefix_notes,
                              warnings=tuple(warnings))


def _band_plays_on(request: Request, kept: list[Note], instruments: list[int], *,
                   drums: bool, start: int, steps_per_bar: int) -> tuple[Region, ...]:
    """After a prompt, the parts playing in its last four bars (and the requested ones) keep
    playing in every four bars of the continuation, unless --let-rest."""
    if request.let_rest:
        return ()
    recent = {n.instrument for n in kept if n.start >= start - WINDOW_BARS * steps_per_bar}
    parts = set(instruments) | (recent - {DRUMS.index})
    if request.only:
        parts &= set(instruments)
    if drums and (DRUMS.index in recent or request.drums):
        parts.add(DRUMS.index)
    stop = start + request.bars * steps_per_bar if request.bars else 1 << 40
    return (Region(start, stop, tuple(sorted(parts))),)


def _header(tokenizer: Tokenizer, *, drums: bool | None, instruments: list[int]) -> list[int]:
    header = [Tokenizer.START]
    if drums is not None:
        header.append(Tokenizer.DRUMS_ON if drums else Tokenizer.DRUMS_OFF)
    return header + [tokenizer.instrument_token(i) for i in instruments]


def _piece(tokenizer: Tokenizer, row: list[int], plan: Plan, bpm: float, request: Request,
           prompt: _Prompt | None) -> Piece:
    score = tokenizer.decode_score(row)
    notes = score.notes
    steps_per_bar = tokenizer.config.steps_per_bar
    limit = plan.limit
    if limit is None:  # --tokens: end on the bar line after the last onset
        last = max((n.start for n in notes), default=0)
        limit = (last // steps_per_bar + 1) * steps_per_bar
    notes = [n._replace(duration=min(n.duration, limit - n.start)) for n in notes if n.start < limit]
    counts = instrument_counts(notes)
    header_instruments = list(score.header.instruments)
    order = list(dict.fromkeys(header_instruments + lead_order(counts)))
    bars = limit // steps_per_bar
    warnings: tuple[str, ...] = ()
    if prompt is None or not prompt.file.usable:
        midi = write_midi(notes, order=order, grid=tokenizer.grid, bpm=bpm, length=limit)
    else:
        new = new_notes(tokenizer, row, kept=prompt.kept_notes, along=plan.along, limit=limit)
        said: list[str] = []
        midi = merge(prompt.file, prompt.cut, new, order=order, end=limit, bpm=request.bpm,
                     continued=not request.add, warnings=said)
        bars = prompt.bars + max(limit - prompt.cut.until, 0) // steps_per_bar
    if prompt is not None:
        warnings = prompt.warnings + tuple(said if prompt.file.usable else ())
    present = [INSTRUMENTS[i].name for i in order if counts[i] and i != DRUMS.index]
    return Piece(ids=row, notes=notes, instruments=present, drums=counts[DRUMS.index] > 0,
                 bars=bars, bpm=bpm, seed=request.seed, midi=midi, warnings=warnings)
