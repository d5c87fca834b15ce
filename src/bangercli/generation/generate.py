"""Generation: a musician's request in, pieces (notes, ids, MIDI) out. Writes no files.

The header (drums flag, instruments with the lead first) conditions the model; the masks
of `sampling.Grammar` enforce the request (the loop itself is in decoding.py). Variants are
generated in batches of at most `MAX_BATCH` rows (one seeded generator runs through them),
so memory does not grow with `--variants` and a slow row holds up only its own batch.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import Callable

import mido
import torch

from ..errors import UsageError
from ..midi.instruments import DRUMS, INSTRUMENTS, instrument_named
from ..midi.midifile import write_midi
from ..midi.score import DEFAULT_BPM, Note, instrument_counts
from ..midi.tokenizer import Tokenizer, lead_order
from .decoding import Plan, decode_rows
from .request import Request

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

    @property
    def seconds(self) -> float:
        return self.bars * 4 * 60.0 / self.bpm


def generate(banger, request: Request, *, progress: Callable[[int, int], None] | None = None
             ) -> list[Piece]:
    """Generate `request.variants` pieces with the loaded model `banger`."""
    plan, bpm = _plan(banger.tokenizer, request)
    generator = torch.Generator().manual_seed(request.seed)
    batches = range(0, request.variants, MAX_BATCH)
    pieces = []
    for number, first in enumerate(batches):
        report = progress and (lambda done, total, number=number:  # one bar over all batches
                               progress(number * total + done, len(batches) * total))
        rows = decode_rows(banger, plan, batch=min(MAX_BATCH, request.variants - first),
                           generator=generator, progress=report)
        pieces += [_piece(banger.tokenizer, row, plan.limit, bpm, request.seed) for row in rows]
    return pieces


def _plan(tokenizer: Tokenizer, request: Request) -> tuple[Plan, float]:
    """The header, the kept prompt and the length the loop must honour, and the tempo."""
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
        # the band is what the kept bars play, or, when they are silent (a prompt that
        # starts with empty bars), what the whole prompt plays
        counts = instrument_counts(kept or score.notes)
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
    plan = Plan(prefix=header + prompt_ids, instruments=instruments, drums=drums,
                only=request.only, start=start, limit=limit, tokens=request.tokens,
                sampling=request.sampling, steer=request.steer)
    return plan, bpm


def _piece(tokenizer: Tokenizer, row: list[int], limit: int | None, bpm: float, seed: int
           ) -> Piece:
    score = tokenizer.decode_score(row)
    notes = score.notes
    steps_per_bar = tokenizer.config.steps_per_bar
    if limit is None:  # --tokens: end on the bar line after the last onset
        last = max((n.start for n in notes), default=0)
        limit = (last // steps_per_bar + 1) * steps_per_bar
    notes = [n._replace(duration=min(n.duration, limit - n.start)) for n in notes if n.start < limit]
    counts = instrument_counts(notes)
    header_instruments = list(score.header.instruments)
    order = list(dict.fromkeys(header_instruments + lead_order(counts)))
    midi = write_midi(notes, order=order, grid=tokenizer.grid, bpm=bpm, length=limit)
    present = [INSTRUMENTS[i].name for i in order if counts[i] and i != DRUMS.index]
    return Piece(ids=row, notes=notes, instruments=present, drums=counts[DRUMS.index] > 0,
                 bars=limit // steps_per_bar, bpm=bpm, seed=seed, midi=midi)
