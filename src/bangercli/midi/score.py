"""Notes on a musical grid: what the tokenizer sees, and the one canonical form of a note list.

A `Score` holds notes with onsets and durations in grid steps (`steps_per_quarter` per quarter
note), an instrument category, a pitch and a velocity level. midifile.py reads and writes them
as Standard MIDI Files.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from functools import partial
from typing import NamedTuple

from .instruments import INSTRUMENTS

DEFAULT_BPM = 120.0


class Note(NamedTuple):
    start: int  # onset in grid steps from the start of the piece
    duration: int  # length in grid steps, >= 1
    instrument: int  # category index (see instruments.py); 11 is drums
    pitch: int  # MIDI pitch 0..127 (for drums: the GM drum sound)
    velocity: int  # velocity level 0..levels-1


def instrument_counts(notes) -> list[int]:
    """Notes per instrument category (a list indexed by category, drums last)."""
    counts = [0] * len(INSTRUMENTS)
    for note in notes:
        counts[note.instrument] += 1
    return counts


@dataclass(frozen=True)
class Header:
    """What a token sequence's header asks for (set by decoding)."""

    drums: bool | None = None  # the drums flag; None when the header has none
    instruments: tuple[int, ...] = ()  # melodic categories listed, lead first


@dataclass
class Score:
    notes: list[Note]
    bpm: float = DEFAULT_BPM  # the first tempo of the file
    seconds: float = 0.0  # length of the file in seconds, from its tempo map
    has_programs: bool = False  # whether any program change was present
    invalid_tokens: int = 0  # set by decoding: tokens that broke the grammar and were skipped
    header: Header = field(default_factory=Header)  # set by decoding

    def note_counts(self) -> dict[int, int]:
        """Notes per instrument category present."""
        return {i: count for i, count in enumerate(instrument_counts(self.notes)) if count}


@dataclass(frozen=True)
class Grid:
    steps_per_quarter: int = 8
    max_duration: int = 128
    velocity_step: int = 15
    velocity_levels: int = 8

    def velocity_level(self, velocity: int) -> int:
        level = (2 * velocity + self.velocity_step) // (2 * self.velocity_step) - 1
        return min(max(level, 0), self.velocity_levels - 1)

    def velocity_of(self, level: int) -> int:
        return min(127, self.velocity_step * (level + 1))


def normalize(notes: list[Note], grid: Grid) -> list[Note]:
    """The one canonical form of a note list; encoding and decoding both pass through it.

    Durations are clipped to 1..max_duration. Of notes sharing onset, instrument and pitch
    only one is kept (longest, then loudest). A note still sounding when the same pitch of
    the same instrument starts again is cut at the new onset, so no two notes overlap on one
    key and every written file reads back to exactly the same notes.
    """
    notes = list(notes)  # a new list (callers sort it in place), from any iterable
    if _is_canonical(notes, grid.max_duration):  # e.g. encoding a score just read: one scan
        return notes
    return canonical_notes(notes, grid.max_duration)


_note = partial(tuple.__new__, Note)  # Note from a 5-tuple, without Note()'s Python-level __new__


def canonical_notes(notes, max_duration: int) -> list[Note]:
    """`normalize` of any iterable of (start, duration, instrument, pitch, velocity) tuples."""
    best: dict[tuple[int, int, int], tuple] = {}
    for start, duration, instrument, pitch, velocity in notes:
        if start < 0 or not 0 <= pitch <= 127:
            continue
        if duration < 1:
            duration = 1
        if duration > max_duration:
            duration = max_duration
        key = (instrument, pitch, start)
        kept = best.get(key)
        if kept is None or duration > kept[1] or (duration == kept[1] and velocity > kept[4]):
            best[key] = (start, duration, instrument, pitch, velocity)
    ordered = [_note(best[key]) for key in sorted(best)]  # by (instrument, pitch, start)
    for i in range(len(ordered) - 1):
        note, following = ordered[i], ordered[i + 1]
        if (
            following.instrument == note.instrument
            and following.pitch == note.pitch
            and note.start + note.duration > following.start
        ):
            ordered[i] = note._replace(duration=following.start - note.start)
    return ordered


def _is_canonical(notes: list[Note], max_duration: int) -> bool:
    """Whether `normalize` would return these notes unchanged (sorted, clipped, no overlaps)."""
    last_instrument = last_pitch = -math.inf
    last_end = 0
    for note in notes:
        if type(note) is not Note:  # e.g. plain tuples: `canonical_notes` makes Notes of them
            return False
        start, duration, instrument, pitch, _ = note
        if start < 0 or not 0 <= pitch <= 127 or not 1 <= duration <= max_duration:
            return False
        if instrument == last_instrument and pitch == last_pitch:
            if start < last_end:  # also catches a repeated or earlier onset: duration >= 1
                return False
        elif instrument < last_instrument or (instrument == last_instrument and pitch < last_pitch):
            return False
        last_instrument, last_pitch, last_end = instrument, pitch, start + duration
    return True
