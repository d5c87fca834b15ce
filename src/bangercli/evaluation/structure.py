"""Structure measures of a piece: does it repeat itself, keep its key and its material, and
keep its parts playing? docs/metrics.md gives each definition.

Every function takes notes on the grid (see midi/score.py) and returns a share in [0, 1] (or
notes per bar), NaN where the measure is undefined for the piece (e.g. no melodic note). A
bar is `steps_per_bar` steps long; bar b holds the notes with b * steps_per_bar <= start <
(b + 1) * steps_per_bar. Two onset patterns (the set of positions where a part's notes start
in a bar) are "the same" within a Hamming distance of steps_per_bar / 16 (2 of 32 positions):
one ghost note or moved hi-hat does not make a bar new.
"""

from __future__ import annotations

import math
from collections import Counter

import numpy as np

from ..midi.instruments import DRUMS
from ..midi.score import Note
from .metrics import MAJOR, MINOR

PROMPT_BARS = 4  # the from-scratch "opening" and the continuation prompt, in bars
END_BARS = 4  # the end of a piece, where silent parts are looked for
MIN_SILENCE_BARS = 8  # a piece shorter than this has no end distinct from its opening


def tolerance(steps_per_bar: int) -> int:
    """Largest Hamming distance between onset patterns that still counts as a repeat."""
    return steps_per_bar // 16


def _share(hits: int, total: int) -> float:
    return hits / total if total else math.nan


def parts_by_bar(notes: list[Note], *, steps_per_bar: int) -> dict[int, dict[int, list[Note]]]:
    """instrument -> bar -> that part's notes starting in the bar, bars in ascending order."""
    parts: dict[int, dict[int, list[Note]]] = {}
    for note in sorted(notes, key=lambda n: n.start):
        bars = parts.setdefault(note.instrument, {})
        bars.setdefault(note.start // steps_per_bar, []).append(note)
    return parts


def _onsets(bar: list[Note], steps_per_bar: int) -> frozenset[int]:
    return frozenset(n.start % steps_per_bar for n in bar)


def _pitch_classes(bar: list[Note]) -> frozenset[int]:
    return frozenset(n.pitch % 12 for n in bar)


def _repeated(features: list, same) -> int:
    """How many features (after the first) are `same` as some earlier one."""
    return sum(any(same(f, earlier) for earlier in features[:i]) for i, f in enumerate(features)
               if i)


def _near(tol: int):
    return lambda a, b: len(a ^ b) <= tol  # Hamming distance of two onset sets


def bar_repetition(notes: list[Note], *, steps_per_bar: int) -> float:
    """Share of a part's bars (after its first bar with notes) whose onset pattern is within
    the tolerance of an earlier bar of the same part; pooled over parts."""
    same = _near(tolerance(steps_per_bar))
    repeats = candidates = 0
    for bars in parts_by_bar(notes, steps_per_bar=steps_per_bar).values():
        patterns = [_onsets(bar, steps_per_bar) for bar in bars.values()]
        repeats += _repeated(patterns, same)
        candidates += len(patterns) - 1
    return _share(repeats, candidates)


def pitch_class_repetition(notes: list[Note], *, steps_per_bar: int) -> float:
    """Like bar_repetition for melodic parts, a repeat being the same set of pitch classes."""
    repeats = candidates = 0
    for instrument, bars in parts_by_bar(notes, steps_per_bar=steps_per_bar).items():
        if instrument != DRUMS.index:
            sets = [_pitch_classes(bar) for bar in bars.values()]
            repeats += _repeated(sets, lambda a, b: a == b)
            candidates += len(sets) - 1
    return _share(repeats, candidates)


def lead_repetition(notes: list[Note], *, steps_per_bar: int) -> float:
    """Share of the lead's bars (after its first) that repeat an earlier lead bar note for note:
    the same (position in bar, pitch) pairs, as many times each. The lead is the melodic part
    with most notes (ties to the lower category, as in the tokenizer's header)."""
    counts = Counter(n.instrument for n in notes if n.instrument != DRUMS.index)
    if not counts:
        return math.nan
    lead = min(counts, key=lambda i: (-counts[i], i))
    bars = parts_by_bar([n for n in notes if n.instrument == lead],
                        steps_per_bar=steps_per_bar)[lead]
    contents = [sorted((n.start % steps_per_bar, n.pitch) for n in bar) for bar in bars.values()]
    return _share(_repeated(contents, lambda a, b: a == b), len(contents) - 1)


def key_keeping(prompt: list[Note], continuation: list[Note]) -> float:
    """Share of the continuation's melodic notes in the prompt's key: the major or minor scale
    (of 24) holding most of the prompt's melodic notes. When scales tie (a few notes fit
    several), the tied scale that holds most of the continuation counts."""
    def histogram(notes):
        return np.bincount([n.pitch % 12 for n in notes if n.instrument != DRUMS.index],
                           minlength=12)

    before, after = histogram(prompt), histogram(continuation)
    if not before.sum() or not after.sum():
        return math.nan
    scales = [[(tonic + step) % 12 for step in mode] for mode in (MAJOR, MINOR)
              for tonic in range(12)]
    fits = [before[scale].sum() for scale in scales]
    best = max(fits)
    kept = max(after[scale].sum() for scale, fit in zip(scales, fits) if fit == best)
    return float(kept / after.sum())


def material_reuse(prompt: list[Note], continuation: list[Note], *, steps_per_bar: int) -> float:
    """Share of the continuation's (part, bar) pairs with notes whose onset pattern is within
    the tolerance of some bar of the same part in the prompt."""
    same = _near(tolerance(steps_per_bar))
    before = {i: [_onsets(bar, steps_per_bar) for bar in bars.values()]
              for i, bars in parts_by_bar(prompt, steps_per_bar=steps_per_bar).items()}
    reused = total = 0
    for instrument, bars in parts_by_bar(continuation, steps_per_bar=steps_per_bar).items():
        for bar in bars.values():
            pattern = _onsets(bar, steps_per_bar)
            reused += any(same(pattern, old) for old in before.get(instrument, ()))
            total += 1
    return _share(reused, total)


def pitch_class_reuse(prompt: list[Note], continuation: list[Note], *,
                      steps_per_bar: int) -> float:
    """Like material_reuse for melodic parts, a reuse being a prompt bar's pitch-class set."""
    before = {i: {_pitch_classes(bar) for bar in bars.values()}
              for i, bars in parts_by_bar(prompt, steps_per_bar=steps_per_bar).items()}
    reused = total = 0
    for instrument, bars in parts_by_bar(continuation, steps_per_bar=steps_per_bar).items():
        if instrument != DRUMS.index:
            for bar in bars.values():
                reused += _pitch_classes(bar) in before.get(instrument, ())
                total += 1
    return _share(reused, total)


def drumless_bars(notes: list[Note], *, steps_per_bar: int, bars: range) -> float:
    """Share of the bars in `bars` (bar numbers) in which no drum note starts."""
    drummed = {n.start // steps_per_bar for n in notes if n.instrument == DRUMS.index}
    return _share(sum(bar not in drummed for bar in bars), len(bars))


def silent_parts(notes: list[Note], *, steps_per_bar: int, playing: range, end: range) -> float:
    """Of the parts with notes in the bars `playing`, the share with no note in the bars `end`."""
    def parts_in(bars: range) -> set[int]:
        return {n.instrument for n in notes if n.start // steps_per_bar in bars}

    watched = parts_in(playing)
    return _share(len(watched - parts_in(end)), len(watched))


def notes_per_bar_per_part(notes: list[Note], *, steps_per_bar: int) -> float:
    """Mean over parts of notes per bar, over the bars from the part's first to its last note."""
    rates = [sum(map(len, bars.values())) / (max(bars) - min(bars) + 1)
             for bars in parts_by_bar(notes, steps_per_bar=steps_per_bar).values()]
    return float(np.mean(rates)) if rates else math.nan


def structure_metrics(notes: list[Note], *, steps_per_bar: int, bars: int,
                      drums: bool | None) -> dict:
    """The structure measures of a piece generated (or taken) from scratch, `bars` bars long;
    `drums`: whether drums were asked for (drumless_bars is NaN unless they were)."""
    notes = [n for n in notes if n.start < bars * steps_per_bar]
    grid = dict(steps_per_bar=steps_per_bar)
    silent = math.nan
    if bars >= MIN_SILENCE_BARS:
        silent = silent_parts(notes, **grid, playing=range(PROMPT_BARS),
                              end=range(bars - END_BARS, bars))
    return {
        "bar_repetition": bar_repetition(notes, **grid),
        "pitch_class_repetition": pitch_class_repetition(notes, **grid),
        "lead_repetition": lead_repetition(notes, **grid),
        "drumless_bars": drumless_bars(notes, **grid, bars=range(bars)) if drums else math.nan,
        "silent_parts": silent,
        "notes_per_bar_per_part": notes_per_bar_per_part(notes, **grid),
    }


def continuation_metrics(prompt: list[Note], continuation: list[Note], *, steps_per_bar: int,
                         prompt_bars: int = PROMPT_BARS, bars: int) -> dict:
    """The measures of a continuation (bars prompt_bars .. prompt_bars + bars - 1 of the
    piece) against its prompt (bars 0 .. prompt_bars - 1)."""
    length = prompt_bars + bars
    continuation = [n for n in continuation
                    if prompt_bars * steps_per_bar <= n.start < length * steps_per_bar]
    grid = dict(steps_per_bar=steps_per_bar)
    had_drums = any(n.instrument == DRUMS.index for n in prompt)
    silent = math.nan
    if length >= MIN_SILENCE_BARS and bars >= END_BARS:
        silent = silent_parts(prompt + continuation, **grid,
                              playing=range(prompt_bars - 1, prompt_bars),
                              end=range(length - END_BARS, length))
    return {
        "key_keeping": key_keeping(prompt, continuation),
        "material_reuse": material_reuse(prompt, continuation, **grid),
        "pitch_class_reuse": pitch_class_reuse(prompt, continuation, **grid),
        "drumless_bars": (drumless_bars(continuation, **grid, bars=range(prompt_bars, length))
                          if had_drums else math.nan),
        "silent_parts": silent,
        "notes_per_bar_per_part": notes_per_bar_per_part(continuation, **grid),
    }
