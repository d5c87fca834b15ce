"""How well a part fits the band it plays with: the measures of `bench/accompany.py`.

A part (bass, drums, ...) is judged against the other parts over a span of bars, the same way
for the real part, the one banger adds and a trivial baseline, so the numbers say whether the
model beats simple rules (docs/metrics.md). All notes are on banger's grid.
"""

from __future__ import annotations

from ..midi.instruments import DRUMS
from ..midi.score import Note

KICKS = frozenset({35, 36})
SNARES = frozenset({37, 38, 39, 40})
CLOSED_HAT, KICK, SNARE = 42, 36, 38


def part_measures(part: list[Note], others: list[Note], *, steps_per_bar: int, bars: range
                  ) -> dict[str, float]:
    """density (notes a bar), silent (share of bars where the others play and the part does
    not), aligned (share of its onsets on an onset of the others), and for a melodic part
    chord_tones (share of its onsets whose pitch class sounds in the others' melodic notes),
    for drums kick_13 / snare_24 (share of kicks on beats 1 and 3, of snares on 2 and 4)."""
    beat = steps_per_bar // 4
    inside = [n for n in part if n.start // steps_per_bar in bars]
    others = [n for n in others if n.start // steps_per_bar in bars]
    busy = {n.start // steps_per_bar for n in others}
    heard = {n.start // steps_per_bar for n in inside}
    onsets = {n.start for n in others}
    measures = {
        "density": len(inside) / max(len(bars), 1),
        "silent": len(busy - heard) / len(busy) if busy else 0.0,
        "aligned": _share(sum(n.start in onsets for n in inside), len(inside)),
    }
    if inside and all(n.instrument == DRUMS.index for n in inside):
        kicks = [n for n in inside if n.pitch in KICKS]
        snares = [n for n in inside if n.pitch in SNARES]
        measures["kick_13"] = _share(sum(n.start % (2 * beat) == 0 for n in kicks), len(kicks))
        measures["snare_24"] = _share(sum(n.start % (2 * beat) == beat for n in snares),
                                      len(snares))
    else:
        melodic = [n for n in others if n.instrument != DRUMS.index]
        hits = sum(n.pitch % 12 in _sounding(melodic, n.start) for n in inside)
        measures["chord_tones"] = _share(hits, len(inside))
    return measures


def lowest_note_bass(others: list[Note], *, steps_per_bar: int, bars: range,
                     instrument: int) -> list[Note]:
    """The baseline bass: on every beat where the others sound, their lowest melodic note,
    moved down by octaves to at most E3 (52), one beat long."""
    beat = steps_per_bar // 4
    melodic = [n for n in others if n.instrument != DRUMS.index]
    bass = []
    for step in range(bars.start * steps_per_bar, bars.stop * steps_per_bar, beat):
        sounding = [n.pitch for n in melodic if n.start <= step < n.start + n.duration]
        if sounding:
            pitch = min(sounding)
            while pitch > 52:
                pitch -= 12
            bass.append(Note(step, beat, instrument, pitch, 5))
    return bass


def rock_beat(others: list[Note], *, steps_per_bar: int, bars: range) -> list[Note]:
    """The baseline drums: kick on 1 and 3, snare on 2 and 4, closed hi-hat on every eighth,
    in every bar where the others play."""
    beat = steps_per_bar // 4
    busy = {n.start // steps_per_bar for n in others}
    drums = []
    for bar in bars:
        if bar not in busy:
            continue
        start = bar * steps_per_bar
        for eighth in range(8):
            step = start + eighth * beat // 2
            drums.append(Note(step, 1, DRUMS.index, CLOSED_HAT, 4))
            if eighth in (0, 4):
                drums.append(Note(step, 1, DRUMS.index, KICK, 6))
            if eighth in (2, 6):
                drums.append(Note(step, 1, DRUMS.index, SNARE, 6))
    return drums


def _sounding(notes: list[Note], step: int) -> set[int]:
    return {n.pitch % 12 for n in notes if n.start <= step < n.start + n.duration}


def _share(hits: int, total: int) -> float:
    return hits / total if total else float("nan")
