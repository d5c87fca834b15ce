"""`banger evaluate --samples N`: generate pieces per condition, measure them beside real ones.

For each condition (a generation request), N pieces are generated and checked: did they
decode, did they obey the request (instruments present, lead with most melodic notes, drums
on/off, --only), and what are their musical metrics. The same metrics over the first bars
of real validation pieces are the yardstick.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from .generate import Request, generate
from .instruments import instrument_named
from .metrics import adherence, mean_metrics, piece_metrics
from .shards import Shards

# Conditions a musician would ask for; the names are what the report shows.
DEFAULT_CONDITIONS: dict[str, dict] = {
    "guitar+drums": dict(instruments=("guitar",), drums=True),
    "piano solo": dict(instruments=("piano",), drums=False, only=True),
    "bass+guitar only, drums": dict(instruments=("bass", "guitar"), drums=True, only=True),
    "strings, no drums": dict(instruments=("strings",), drums=False),
    "synth lead+drums": dict(instruments=("lead",), drums=True),
    "model's choice": dict(),
}


@dataclass
class MusicEvaluation:
    conditions: dict[str, dict] = field(default_factory=dict)  # name -> rates and metric means
    real: dict = field(default_factory=dict)  # metric means of real validation pieces
    generated: dict = field(default_factory=dict)  # metric means over all generated pieces

    def to_json(self) -> dict:
        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean({"conditions": self.conditions, "real": self.real,
                      "generated": self.generated, "relative_to_real": self.relative()})

    def relative(self) -> dict:
        """Generated mean / real mean for each metric (1.0 = like the real data)."""
        return {k: (v / self.real[k] if self.real.get(k) not in (None, 0) and not
                    math.isnan(self.real[k]) else math.nan) for k, v in self.generated.items()}


def real_metrics(data_dir: str | os.PathLike, *, split: str, bars: int, tokenizer,
                 max_pieces: int | None = None) -> dict:
    """Metric means over the first `bars` bars of each real piece of the split that lasts at
    least that long (a 2-bar drum fill would otherwise count 6 empty bars)."""
    shards = Shards(data_dir, split)
    steps_per_bar = tokenizer.config.steps_per_bar
    limit = bars * steps_per_bar
    rows = []
    count = len(shards) if max_pieces is None else min(len(shards), max_pieces)
    for i in range(count):
        notes = tokenizer.decode_score(shards[i].tolist()).notes
        if not notes or max(n.start for n in notes) < limit - steps_per_bar:
            continue
        notes = [n for n in notes if n.start < limit]
        if notes:
            rows.append(piece_metrics(notes, steps_per_bar=steps_per_bar, bars=bars))
    return mean_metrics(rows)


def evaluate_music(banger, *, samples: int, bars: int = 8, seed: int = 0,
                   conditions: dict[str, dict] | None = None, data_dir=None,
                   split: str = "validation", max_pieces: int | None = None,
                   progress=None) -> MusicEvaluation:
    """Generate `samples` pieces per condition and measure them (and the real data)."""
    conditions = conditions or DEFAULT_CONDITIONS
    steps_per_bar = banger.tokenizer.config.steps_per_bar
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
            rows.append(piece_metrics(piece.notes, steps_per_bar=steps_per_bar, bars=bars))
            checks.append(adherence(piece.notes, instruments=wanted, drums=request.drums,
                                    only=request.only))
        rates = {k: v for k, v in mean_metrics(checks).items() if not math.isnan(v)}
        result.conditions[name] = {"decodable": decodable / len(pieces), **rates,
                                   **mean_metrics(rows)}
        all_rows += rows
        if progress:
            progress(number + 1, len(conditions))
    result.generated = mean_metrics(all_rows)
    if data_dir is not None:
        result.real = real_metrics(data_dir, split=split, bars=bars, tokenizer=banger.tokenizer,
                                   max_pieces=max_pieces)
    return result
