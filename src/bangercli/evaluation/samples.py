"""`banger evaluate --samples N`: generate pieces per condition, measure them beside real ones.

For each condition (a generation request), N pieces are generated and checked: did they
decode, did they obey the request (instruments present, lead with most melodic notes, drums
on/off, --only), and what are their musical metrics.

The yardstick is matched: real validation pieces (their first bars) beside pieces generated
from the same headers (the same instruments, lead first, and drums flag). Comparing band
requests with a validation set of piano and drum takes would mostly measure the difference
between the requests, not the model.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..generation.generate import generate
from ..generation.request import Request
from ..midi.instruments import DRUMS, INSTRUMENTS, instrument_named
from ..midi.midifile import Header
from .metrics import adherence, mean_metrics, piece_metrics
from ..data.shards import Shards

# Conditions a musician would ask for; the names are what the report shows.
DEFAULT_CONDITIONS: dict[str, dict] = {
    "guitar+drums": dict(instruments=("guitar",), drums=True),
    "piano solo": dict(instruments=("piano",), drums=False, only=True),
    "bass+guitar only, drums": dict(instruments=("bass", "guitar"), drums=True, only=True),
    "strings, no drums": dict(instruments=("strings",), drums=False),
    "synth lead+drums": dict(instruments=("lead",), drums=True),
    "model's choice": dict(),
}


MATCHED_PER_SAMPLE = 4  # --samples N compares up to 4N real pieces with generated twins
MATCHED_SEED = 1000  # matched pieces use other seeds than the conditions


@dataclass
class MusicEvaluation:
    conditions: dict[str, dict] = field(default_factory=dict)  # name -> rates and metric means
    real: dict = field(default_factory=dict)  # metric means of the matched real pieces
    generated: dict = field(default_factory=dict)  # ... and of pieces generated from their headers
    requested: dict = field(default_factory=dict)  # metric means over the conditions' pieces
    matched_pieces: int = 0  # real pieces in the matched comparison

    def to_json(self) -> dict:
        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean({"conditions": self.conditions, "requested": self.requested,
                      "matched_pieces": self.matched_pieces, "real": self.real,
                      "generated": self.generated, "relative_to_real": self.relative()})

    def relative(self) -> dict:
        """Generated mean / real mean for each metric (1.0 = like the real data)."""
        return {k: (v / self.real[k] if self.real.get(k) not in (None, 0) and not
                    math.isnan(self.real[k]) else math.nan) for k, v in self.generated.items()}


def real_pieces(data_dir: str | os.PathLike, *, split: str, bars: int, tokenizer,
                max_pieces: int | None = None) -> list[tuple[dict, list]]:
    """(header, notes of the first `bars` bars) of each real piece of the split that lasts
    at least that long (a 2-bar drum fill would otherwise count 6 empty bars)."""
    shards = Shards(data_dir, split)
    steps_per_bar = tokenizer.config.steps_per_bar
    limit = bars * steps_per_bar
    found = []
    count = len(shards) if max_pieces is None else min(len(shards), max_pieces)
    for i in range(count):
        score = tokenizer.decode_score(shards[i].tolist())
        notes = score.notes
        if not notes or max(n.start for n in notes) < limit - steps_per_bar:
            continue
        notes = [n for n in notes if n.start < limit]
        if notes:
            found.append((score.header, notes))
    return found


def real_metrics(data_dir: str | os.PathLike, *, split: str, bars: int, tokenizer,
                 max_pieces: int | None = None) -> dict:
    """Metric means over the first `bars` bars of the split's real pieces (see real_pieces)."""
    steps_per_bar = tokenizer.config.steps_per_bar
    pieces = real_pieces(data_dir, split=split, bars=bars, tokenizer=tokenizer,
                         max_pieces=max_pieces)
    return mean_metrics([piece_metrics(notes, steps_per_bar=steps_per_bar, bars=bars)
                         for _, notes in pieces])


def spread(items: list, count: int) -> list:
    """`count` items evenly spaced over `items` (all of them when there are fewer)."""
    if count >= len(items):
        return list(items)
    return [items[(2 * k + 1) * len(items) // (2 * count)] for k in range(count)]


def header_request(header: Header) -> tuple[tuple[str, ...], bool | None]:
    """The request a real piece's header makes: its instruments, lead first, and its drums
    flag; asked with --only, since the header lists every instrument the piece has."""
    names = tuple(INSTRUMENTS[i].name for i in header.instruments
                  if 0 <= i < len(INSTRUMENTS))
    if not names and header.drums:  # a drum track alone: `-i drums --only`, or the
        names = (DRUMS.name,)              # model would be free to add a band to it
    return names, header.drums


def evaluate_music(banger, *, samples: int, bars: int = 8, seed: int = 0,
                   conditions: dict[str, dict] | None = None, data_dir=None,
                   split: str = "validation", max_pieces: int | None = None,
                   progress=None) -> MusicEvaluation:
    """Generate `samples` pieces per condition and check them; with `data_dir`, also compare
    up to 4 x `samples` real pieces of the split with pieces generated from their headers."""
    conditions = conditions or DEFAULT_CONDITIONS
    steps_per_bar = banger.tokenizer.config.steps_per_bar

    def metrics(notes):
        return piece_metrics(notes, steps_per_bar=steps_per_bar, bars=bars)

    groups: dict[tuple, list] = {}  # header request -> real pieces' notes
    if data_dir is not None:
        matched = spread(real_pieces(data_dir, split=split, bars=bars, tokenizer=banger.tokenizer,
                                     max_pieces=max_pieces), MATCHED_PER_SAMPLE * samples)
        for header, notes in matched:
            groups.setdefault(header_request(header), []).append(notes)
    total = len(conditions) + len(groups)
    result = MusicEvaluation()
    all_rows = []
    for number, (name, options) in enumerate(conditions.items()):
        request = Request(bars=bars, variants=samples, seed=seed + number, **options)
        pieces = generate(banger, request)
        wanted = [instrument_named(i).index for i in request.instruments]
        rows, checks, decodable = [], [], 0
        for piece in pieces:
            decoded = banger.tokenizer.decode_score(piece.ids)
            decodable += decoded.invalid_tokens == 0
            rows.append(metrics(piece.notes))
            checks.append(adherence(piece.notes, instruments=wanted, drums=request.drums,
                                    only=request.only))
        rates = {k: v for k, v in mean_metrics(checks).items() if not math.isnan(v)}
        result.conditions[name] = {"decodable": decodable / len(pieces), **rates,
                                   **mean_metrics(rows)}
        all_rows += rows
        if progress:
            progress(number + 1, total)
    result.requested = mean_metrics(all_rows)

    real_rows, generated_rows = [], []
    for number, ((names, drums), real) in enumerate(sorted(groups.items(), key=str)):
        request = Request(instruments=names, drums=drums, only=bool(names), bars=bars,
                          variants=len(real), seed=seed + MATCHED_SEED + number)
        generated_rows += [metrics(piece.notes) for piece in generate(banger, request)]
        real_rows += [metrics(notes) for notes in real]
        if progress:
            progress(len(conditions) + number + 1, total)
    if groups:
        result.matched_pieces = len(real_rows)
        result.real = mean_metrics(real_rows)
        result.generated = mean_metrics(generated_rows)
    return result
