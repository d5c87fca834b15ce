"""Musical metrics of a piece, for comparing generated pieces with real ones.

Definitions follow muspy (Dong et al., 2020) and Yang & Lerch (2020); docs/metrics.md gives
the formulas and the citations. Pitch metrics (pitch-class entropy, scale consistency,
polyphony) use melodic notes only; rhythm metrics (groove consistency, empty-beat rate,
note density) use all notes, drums included. Every function takes notes on the grid.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..midi.instruments import DRUMS
from ..midi.score import Note

MAJOR = (0, 2, 4, 5, 7, 9, 11)
MINOR = (0, 2, 3, 5, 7, 8, 10)


def _melodic(notes: list[Note]) -> list[Note]:
    return [n for n in notes if n.instrument != DRUMS.index]


def pitch_class_entropy(notes: list[Note]) -> float:
    """Entropy in bits of the pitch-class histogram (0 = one pitch class, log2 12 = uniform)."""
    counts = Counter(n.pitch % 12 for n in _melodic(notes))
    total = sum(counts.values())
    if not total:
        return math.nan
    return -sum(c / total * math.log2(c / total) for c in counts.values())


def scale_consistency(notes: list[Note]) -> float:
    """Largest share of notes that fit one major or minor scale (any of the 24)."""
    counts = np.bincount([n.pitch % 12 for n in _melodic(notes)], minlength=12)
    total = counts.sum()
    if not total:
        return math.nan
    best = 0
    for mode in (MAJOR, MINOR):
        for tonic in range(12):
            best = max(best, counts[[(tonic + step) % 12 for step in mode]].sum())
    return float(best / total)


def groove_consistency(notes: list[Note], *, steps_per_bar: int, bars: int | None = None) -> float:
    """1 - mean Hamming distance between the onset patterns of consecutive bars, per position."""
    if not notes:
        return math.nan
    bars = bars or max(n.start for n in notes) // steps_per_bar + 1
    if bars < 2:
        return math.nan
    pattern = np.zeros((bars, steps_per_bar), dtype=bool)
    for note in notes:
        bar, position = divmod(note.start, steps_per_bar)
        if bar < bars:
            pattern[bar, position] = True
    distances = (pattern[1:] != pattern[:-1]).sum(axis=1) / steps_per_bar
    return float(1.0 - distances.mean())


def empty_beat_rate(notes: list[Note], *, steps_per_beat: int, beats: int | None = None) -> float:
    """Share of beats (quarter notes) in which no note starts."""
    beats = beats or (max((n.start for n in notes), default=0) // steps_per_beat + 1)
    if beats < 1:
        return math.nan
    busy = {n.start // steps_per_beat for n in notes if n.start // steps_per_beat < beats}
    return 1.0 - len(busy) / beats


def polyphony(notes: list[Note]) -> float:
    """Mean number of melodic notes sounding together, over the steps where any sounds."""
    melodic = _melodic(notes)
    if not melodic:
        return math.nan
    end = max(n.start + n.duration for n in melodic)
    sounding = np.zeros(end + 1, dtype=np.int64)
    for note in melodic:
        sounding[note.start] += 1
        sounding[note.start + note.duration] -= 1
    active = np.cumsum(sounding)[:-1]
    active = active[active > 0]
    return float(active.mean()) if len(active) else math.nan


def note_density(notes: list[Note], *, steps_per_bar: int, bars: int | None = None) -> float:
    """Notes per bar."""
    bars = bars or (max((n.start for n in notes), default=0) // steps_per_bar + 1)
    return len(notes) / bars if bars else math.nan


def piece_metrics(notes: list[Note], *, steps_per_bar: int, bars: int | None = None) -> dict:
    """All musical metrics of one piece (NaN where a metric is undefined, e.g. no melody)."""
    steps_per_beat = steps_per_bar // 4
    return {
        "pitch_class_entropy": pitch_class_entropy(notes),
        "scale_consistency": scale_consistency(notes),
        "groove_consistency": groove_consistency(notes, steps_per_bar=steps_per_bar, bars=bars),
        "empty_beat_rate": empty_beat_rate(notes, steps_per_beat=steps_per_beat,
                                           beats=bars * 4 if bars else None),
        "polyphony": polyphony(notes),
        "note_density": note_density(notes, steps_per_bar=steps_per_bar, bars=bars),
    }


def adherence(notes: list[Note], *, instruments: list[int], drums: bool | None,
              only: bool) -> dict:
    """Did the piece obey the request? Each entry is True/False (None when not requested)."""
    counts = Counter(n.instrument for n in notes)
    melodic = {i: c for i, c in counts.items() if i != DRUMS.index}
    lead_ok = None
    if instruments:
        top = max(melodic.values(), default=0)
        lead_ok = melodic.get(instruments[0], 0) == top and top > 0
    return {
        "instruments_present": all(counts.get(i, 0) > 0 for i in instruments) if instruments else None,
        "lead_most_notes": lead_ok,
        "drums": None if drums is None else (counts.get(DRUMS.index, 0) > 0) == drums,
        "only": None if not only else set(melodic) <= set(instruments),
    }


def mean_metrics(rows: list[dict]) -> dict:
    """Mean of each metric over pieces, ignoring NaN (undefined) values."""
    keys = rows[0].keys() if rows else []
    means = {}
    for key in keys:
        values = [r[key] for r in rows if r[key] is not None and not
                  (isinstance(r[key], float) and math.isnan(r[key]))]
        means[key] = float(np.mean([float(v) for v in values])) if values else math.nan
    return means
