"""`banger evaluate --samples N`: generate pieces per condition, measure them beside real ones.

For each condition (a generation request), N pieces are generated and checked: did they
decode, did they obey the request (instruments present, lead with most melodic notes, drums
on/off, --only), and what are their musical metrics.

The yardstick is matched: real validation pieces (their first bars) beside pieces generated
from the same headers (the same instruments, lead first, and drums flag). Comparing band
requests with a validation set of piano and drum takes would mostly measure the difference
between the requests, not the model.

Structure (structure.py) is measured twice: on the same pieces (repetition, drumless bars,
parts falling silent), and in a continuation experiment: the first 4 bars of real pieces are
given as a prompt, the model continues them for 8 bars, and its continuation is measured
against the prompt beside the real piece's own next 8 bars.
"""

from __future__ import annotations

import math
import os
from dataclasses import dataclass, field

from ..generation.generate import generate
from ..generation.request import MAX_VARIANTS, Request
from ..midi.instruments import DRUMS, INSTRUMENTS, instrument_named
from ..midi.score import Header, Note, Score
from .metrics import adherence, mean_metrics, piece_metrics
from .structure import PROMPT_BARS, continuation_metrics, structure_metrics
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
CONTINUED_PER_SAMPLE = 2  # --samples N continues up to 2N real prompts
CONTINUED_BARS = 8  # bars generated after each 4-bar prompt
CONTINUED_SEED = 2000  # continuation k uses seed --seed + 2000 + k


@dataclass
class MusicEvaluation:
    conditions: dict[str, dict] = field(default_factory=dict)  # name -> rates and metric means
    real: dict = field(default_factory=dict)  # metric means of the matched real pieces
    generated: dict = field(default_factory=dict)  # ... and of pieces generated from their headers
    requested: dict = field(default_factory=dict)  # metric means over the conditions' pieces
    matched_pieces: int = 0  # real pieces in the matched comparison
    structure: dict = field(default_factory=dict)  # "real", "generated", "requested" -> means
    continuation: dict = field(default_factory=dict)  # "real", "generated" -> means; "pieces"

    def to_json(self) -> dict:
        def clean(value):
            if isinstance(value, float) and math.isnan(value):
                return None
            if isinstance(value, dict):
                return {k: clean(v) for k, v in value.items()}
            return value

        return clean({"conditions": self.conditions, "requested": self.requested,
                      "matched_pieces": self.matched_pieces, "real": self.real,
                      "generated": self.generated, "relative_to_real": self.relative(),
                      "structure": self.structure, "continuation": self.continuation})

    def relative(self) -> dict:
        """Generated mean / real mean for each metric (1.0 = like the real data)."""
        return {k: (v / self.real[k] if self.real.get(k) not in (None, 0) and not
                    math.isnan(self.real[k]) else math.nan) for k, v in self.generated.items()}


def decoded_pieces(data_dir: str | os.PathLike, *, split: str, tokenizer,
                   max_pieces: int | None = None) -> list[tuple[Header, list[Note]]]:
    """(header, notes) of each piece of the split (of the first `max_pieces`)."""
    shards = Shards(data_dir, split)
    count = len(shards) if max_pieces is None else min(len(shards), max_pieces)
    scores = (tokenizer.decode_score(shards[i].tolist()) for i in range(count))
    return [(score.header, score.notes) for score in scores]


def first_bars(pieces: list[tuple[Header, list[Note]]], *, bars: int, steps_per_bar: int
               ) -> list[tuple[Header, list[Note]]]:
    """(header, notes of the first `bars` bars) of each piece with a note in its bar `bars`
    or later (a 2-bar drum fill would otherwise count 6 empty bars)."""
    limit = bars * steps_per_bar
    found = []
    for header, notes in pieces:
        if notes and max(n.start for n in notes) >= limit - steps_per_bar:
            kept = [n for n in notes if n.start < limit]
            if kept:
                found.append((header, kept))
    return found


def real_pieces(data_dir: str | os.PathLike, *, split: str, bars: int, tokenizer,
                max_pieces: int | None = None) -> list[tuple[Header, list[Note]]]:
    """(header, notes of the first `bars` bars) of each real piece of the split that lasts
    at least that long (see first_bars)."""
    pieces = decoded_pieces(data_dir, split=split, tokenizer=tokenizer, max_pieces=max_pieces)
    return first_bars(pieces, bars=bars, steps_per_bar=tokenizer.config.steps_per_bar)


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


def prompt_request(tokenizer, prompt: list[Note]) -> tuple[tuple[str, ...], bool]:
    """The request of a musician continuing `prompt`: its own parts (lead first) with
    --only, drums when it has drums. The piece's header would also name the parts that enter
    after the prompt, and asking for them makes the model bring them in at once."""
    ids = tokenizer.header(prompt)
    names = tuple(INSTRUMENTS[t - tokenizer.instrument_offset].name for t in ids[2:])
    drums = ids[1] == tokenizer.DRUMS_ON
    return (names or ((DRUMS.name,) if drums else ())), drums


def evaluate_music(banger, *, samples: int, bars: int = 8, seed: int = 0,
                   conditions: dict[str, dict] | None = None, data_dir=None,
                   split: str = "validation", max_pieces: int | None = None,
                   echo: float | None = None, progress=None) -> MusicEvaluation:
    """Generate `samples` pieces per condition and check them; with `data_dir`, also compare
    up to 4 x `samples` real pieces of the split with pieces generated from their headers,
    and continue the 4-bar openings of up to 2 x `samples` real pieces. `echo` overrides
    the generation default (generation/echo.py) for every request."""
    extra = {} if echo is None else {"echo": echo}
    conditions = conditions or DEFAULT_CONDITIONS
    steps_per_bar = banger.tokenizer.config.steps_per_bar
    groups: dict[tuple, list] = {}  # header request -> real pieces' notes
    prompts: list[list[Note]] = []  # real pieces' first PROMPT_BARS + CONTINUED_BARS bars
    if data_dir is not None:
        pieces = decoded_pieces(data_dir, split=split, tokenizer=banger.tokenizer,
                                max_pieces=max_pieces)
        matched = spread(first_bars(pieces, bars=bars, steps_per_bar=steps_per_bar),
                         MATCHED_PER_SAMPLE * samples)
        for header, notes in matched:
            groups.setdefault(header_request(header), []).append(notes)
        prompts = spread(continuable(pieces, steps_per_bar=steps_per_bar),
                         CONTINUED_PER_SAMPLE * samples)
    total = len(conditions) + len(groups) + len(prompts)
    done = 0

    def step():
        nonlocal done
        done += 1
        if progress:
            progress(done, total)

    result = MusicEvaluation()
    _measure_conditions(banger, result, conditions, samples=samples, bars=bars, seed=seed,
                        step=step, extra=extra)
    if groups:
        _measure_matched(banger, result, groups, bars=bars, seed=seed, step=step, extra=extra)
    if prompts:
        _measure_continuations(banger, result, prompts, seed=seed, step=step, extra=extra)
    return result


def _measure_conditions(banger, result: MusicEvaluation, conditions: dict[str, dict], *,
                        samples: int, bars: int, seed: int, step,
                        extra: dict | None = None) -> None:
    steps_per_bar = banger.tokenizer.config.steps_per_bar
    all_rows, structures = [], []
    for number, (name, options) in enumerate(conditions.items()):
        request = Request(bars=bars, variants=samples, seed=seed + number, **{**(extra or {}), **options})
        pieces = generate(banger, request)
        wanted = [instrument_named(i).index for i in request.instruments]
        drums = request.drums or (DRUMS.index in wanted and request.drums is None)
        rows, checks, decodable = [], [], 0
        for piece in pieces:
            decoded = banger.tokenizer.decode_score(piece.ids)
            decodable += decoded.invalid_tokens == 0
            rows.append(piece_metrics(piece.notes, steps_per_bar=steps_per_bar, bars=bars))
            checks.append(adherence(piece.notes, instruments=wanted, drums=request.drums,
                                    only=request.only))
            structures.append(structure_metrics(piece.notes, steps_per_bar=steps_per_bar,
                                                bars=bars, drums=drums))
        rates = {k: v for k, v in mean_metrics(checks).items() if not math.isnan(v)}
        result.conditions[name] = {"decodable": decodable / len(pieces), **rates,
                                   **mean_metrics(rows)}
        all_rows += rows
        step()
    result.requested = mean_metrics(all_rows)
    result.structure["requested"] = mean_metrics(structures)


def _measure_matched(banger, result: MusicEvaluation, groups: dict[tuple, list], *,
                     bars: int, seed: int, step, extra: dict | None = None) -> None:
    steps_per_bar = banger.tokenizer.config.steps_per_bar
    grid = dict(steps_per_bar=steps_per_bar, bars=bars)
    rows: dict[str, list] = {"real": [], "generated": []}
    structures: dict[str, list] = {"real": [], "generated": []}
    for number, ((names, drums), real) in enumerate(sorted(groups.items(), key=str)):
        generated = []
        for first in range(0, len(real), MAX_VARIANTS):  # a big group: several requests
            request = Request(instruments=names, drums=drums, only=bool(names), bars=bars,
                              variants=min(MAX_VARIANTS, len(real) - first),
                              seed=seed + MATCHED_SEED + number + first, **(extra or {}))
            generated += [piece.notes for piece in generate(banger, request)]
        for kind, pieces in (("real", real), ("generated", generated)):
            rows[kind] += [piece_metrics(notes, **grid) for notes in pieces]
            structures[kind] += [structure_metrics(notes, **grid, drums=drums)
                                 for notes in pieces]
        step()
    result.matched_pieces = len(rows["real"])
    result.real = mean_metrics(rows["real"])
    result.generated = mean_metrics(rows["generated"])
    result.structure.update({kind: mean_metrics(structures[kind]) for kind in structures})


def continuable(pieces: list[tuple[Header, list[Note]]], *, steps_per_bar: int
                ) -> list[tuple[Header, list[Note]]]:
    """(header, first PROMPT_BARS + CONTINUED_BARS bars) of the pieces that last that long
    and have a note in the prompt's last bar (else the continuation would start a bar early:
    a prompt ends after its last bar with notes)."""
    last_bar = range((PROMPT_BARS - 1) * steps_per_bar, PROMPT_BARS * steps_per_bar)
    return [(header, notes) for header, notes in
            first_bars(pieces, bars=PROMPT_BARS + CONTINUED_BARS, steps_per_bar=steps_per_bar)
            if any(n.start in last_bar for n in notes)]


def _measure_continuations(banger, result: MusicEvaluation,
                           prompts: list[tuple[Header, list[Note]]], *, seed: int, step,
                           extra: dict | None = None) -> None:
    """Each real opening continued by the model (with the opening's own parts: see
    prompt_request), beside the real piece's own next bars; both measured against the
    opening."""
    tokenizer = banger.tokenizer
    steps_per_bar = tokenizer.config.steps_per_bar
    split_at = PROMPT_BARS * steps_per_bar
    rows: dict[str, list] = {"real": [], "generated": []}
    for number, (header, notes) in enumerate(prompts):
        prompt = [n for n in notes if n.start < split_at]
        names, drums = prompt_request(tokenizer, prompt)
        request = Request(instruments=names, drums=drums, only=bool(names),
                          bars=CONTINUED_BARS, prompt=tokenizer.to_midi(Score(notes=prompt)),
                          prompt_bars=PROMPT_BARS, seed=seed + CONTINUED_SEED + number,
                          **(extra or {}))
        piece = generate(banger, request)[0]
        for kind, continued in (("real", notes), ("generated", piece.notes)):
            rows[kind].append(continuation_metrics(
                prompt, [n for n in continued if n.start >= split_at],
                steps_per_bar=steps_per_bar, prompt_bars=PROMPT_BARS, bars=CONTINUED_BARS))
        step()
    result.continuation = {kind: mean_metrics(rows[kind]) for kind in rows}
    result.continuation["pieces"] = len(prompts)
