"""Playing along with the musician's MIDI: `--add` new parts beside a prompt, `--rewrite` bars.

Tokens are time-ordered, so the prompt's notes can be *forced* at their onsets while the model
writes new notes only in between (forcing.py has the masks). `plan_play_along` works out what
a request keeps: the prompt's notes still to come, in the tokenizer's order (by onset, then
lead first, drums last, then from the highest pitch down), the header, and where new notes may
start (spans of grid steps, each with the instruments allowed there). `new_notes` picks the
new notes out of a finished row.
"""

from __future__ import annotations

from collections import Counter
from dataclasses import dataclass

from ..errors import UsageError
from ..midi.instruments import DRUMS, instrument_named
from ..midi.score import Note, instrument_counts, normalize
from ..midi.tokenizer import Tokenizer, lead_order
from .band import WINDOW_BARS, Region
from .request import MAX_BARS


@dataclass(frozen=True)
class Span:
    """New notes of `instruments` may start at grid steps start <= t < stop."""

    start: int
    stop: int
    instruments: frozenset[int]


@dataclass(frozen=True)
class Accompaniment:
    onsets: tuple[int, ...]  # kept notes after the prefix: onset (grid steps) ...
    durvels: tuple[int, ...]  # ... DURVEL token ...
    notes: tuple[int, ...]  # ... and NOTE token, in the tokenizer's order
    spans: tuple[Span, ...]  # where new notes may start
    new_parts: tuple[int, ...]  # the instruments the new notes are for (drums included)
    order: tuple[int, ...]  # the band in chord order: header order, drums last
    second_voices: tuple[int, ...] = ()  # new parts the prompt already plays (--add)


@dataclass(frozen=True)
class PlayAlong:
    """What `_plan` needs from a play-along request."""

    prefix: list[int]  # header + the kept notes before the first span
    instruments: list[int]  # the header's melodic instruments
    drums: bool
    accompaniment: Accompaniment
    prefix_notes: int  # how many kept notes the prefix holds
    limit: int  # grid step where the piece ends
    regions: tuple[Region, ...]  # where the new parts must keep playing


def plan_play_along(tokenizer: Tokenizer, request, notes: list[Note], *, bar_starts: list[int]
                    ) -> PlayAlong:
    """The kept notes, header and spans of an `--add` or `--rewrite` request; `notes` are the
    prompt's kept notes, `bar_starts` the grid steps where its kept bars start, and the end."""
    steps_per_bar = tokenizer.config.steps_per_bar
    length = bar_starts[-1]
    bars = len(bar_starts) - 1 + request.bars
    if bars > MAX_BARS:  # every bar of the prompt is decoded, not just the new ones
        raise UsageError(f"playing along decodes every bar: {len(bar_starts) - 1} of the prompt "
                         f"and {request.bars} more are {bars}, more than {MAX_BARS}",
                         hint=f"keep fewer bars with --prompt-bars (at most {MAX_BARS})")
    prompt_counts = instrument_counts(notes)
    prompt_drums = prompt_counts[DRUMS.index] > 0
    if request.add:
        new_parts = [instrument_named(name).index for name in request.add]
        kept, span = notes, (0, length)
    else:
        first, last = request.rewrite
        bars = len(bar_starts) - 1
        if last > bars:
            raise UsageError(f"--rewrite {first}-{last} reaches past the prompt, which has "
                             f"{bars} bar{'s' if bars != 1 else ''}",
                             hint=f"choose bars between 1 and {bars}")
        span = (bar_starts[first - 1], bar_starts[last])
        if request.instruments:
            new_parts = [instrument_named(name).index for name in request.instruments]
        else:  # all that play there, or the whole band when those bars are silent
            inside = [n for n in notes if span[0] <= n.start < span[1]]
            new_parts = lead_order(instrument_counts(inside or notes))
        chosen = set(new_parts)
        kept = [n for n in notes if not (n.instrument in chosen and span[0] <= n.start < span[1])]
    new_parts = list(dict.fromkeys(new_parts))
    drums = prompt_drums or DRUMS.index in new_parts
    if request.drums is True and not drums:
        drums = True
        new_parts.append(DRUMS.index)
    if request.drums is False and drums:
        why = "the prompt has drums, which are kept" if prompt_drums else "drums are a new part"
        raise UsageError(f"--no-drums contradicts the request: {why}",
                         hint="drop --no-drums, or give a prompt without drums")

    band = [i for i in lead_order(prompt_counts) if i != DRUMS.index]
    band += [i for i in new_parts if i != DRUMS.index and i not in band]
    header = [Tokenizer.START, Tokenizer.DRUMS_ON if drums else Tokenizer.DRUMS_OFF]
    header += [tokenizer.instrument_token(i) for i in band]

    ids = tokenizer.encode_notes(kept, end=False)[len(tokenizer.header(kept)):]
    triples = _note_triples(tokenizer, ids)
    before = [t for t in triples if t[0] < span[0]]  # played as a prefix: nothing new there
    forced = triples[len(before):]
    prefix_ids = ids[: _tokens_through(tokenizer, ids, len(before))]

    limit = length + request.bars * steps_per_bar
    spans = [Span(span[0], span[1], frozenset(new_parts))]
    if limit > length:  # --bars N: the whole band continues after the prompt
        spans.append(Span(length, limit, frozenset(band + ([DRUMS.index] if drums else []))))
    window = WINDOW_BARS * steps_per_bar
    if request.add:  # the new parts play in every 4 bars where the prompt plays
        regions = [Region(0, length, tuple(new_parts), frozenset(n.start // window for n in notes))]
    else:
        regions = [Region(span[0], span[1], tuple(new_parts))]
    if limit > length:
        regions.append(Region(length, limit, tuple(sorted(spans[-1].instruments))))
    if request.let_rest:
        regions = []
    accompaniment = Accompaniment(
        onsets=tuple(t[0] for t in forced), durvels=tuple(t[1] for t in forced),
        notes=tuple(t[2] for t in forced), spans=tuple(spans), new_parts=tuple(new_parts),
        order=tuple(band + [DRUMS.index]),
        second_voices=tuple(i for i in new_parts if request.add and prompt_counts[i]))
    return PlayAlong(prefix=header + prefix_ids, instruments=band, drums=drums,
                     accompaniment=accompaniment, prefix_notes=len(before), limit=limit,
                     regions=tuple(regions))


def new_notes(tokenizer: Tokenizer, row: list[int], *, kept: int,
              along: Accompaniment | None, limit: int) -> list[Note]:
    """The notes of a generated `row` that are not the prompt's: after the `kept` notes of
    the prefix, all but the forced ones (the played-note rule means no new note can equal a
    kept one: same onset, same NOTE token)."""
    triples = _note_triples(tokenizer, row[tokenizer.header_length(row):])[kept:]
    if along is not None:
        forced = Counter(zip(along.onsets, along.durvels, along.notes))
        fresh = []
        for triple in triples:
            if forced[triple]:
                forced[triple] -= 1
            else:
                fresh.append(triple)
        triples = fresh
    levels = tokenizer.config.velocity_levels
    notes = []
    for start, durvel, note in triples:
        if start >= limit:
            continue
        duration, velocity = divmod(durvel - tokenizer.durvel_offset, levels)
        instrument, pitch = divmod(note - tokenizer.note_offset, 128)
        notes.append(Note(start, min(duration + 1, limit - start), instrument, pitch, velocity))
    return normalize(notes, tokenizer.grid)


def _note_triples(tokenizer: Tokenizer, ids: list[int]) -> list[tuple[int, int, int]]:
    """(onset, DURVEL, NOTE) of each note of a header-less token sequence."""
    triples, time, durvel = [], 0, 0
    for token in ids:
        kind = tokenizer.kind(token)
        if kind == "time":
            time += token - tokenizer.time_offset
        elif kind == "durvel":
            durvel = token
        elif kind == "note":
            triples.append((time, durvel, token))
    return triples


def _tokens_through(tokenizer: Tokenizer, ids: list[int], count: int) -> int:
    """How many tokens of `ids` the first `count` notes take."""
    if count == 0:
        return 0
    seen = 0
    for position, token in enumerate(ids):
        if tokenizer.kind(token) == "note":
            seen += 1
            if seen == count:
                return position + 1
    return len(ids)
