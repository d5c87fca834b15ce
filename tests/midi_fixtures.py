"""MIDI files for the tests, built in memory with mido (or byte by byte where mido would
tidy up what the test needs broken), plus a reference reader on top of mido.

Nothing here touches the real corpus: every fixture is made from a few lines of code.
"""

from __future__ import annotations

import bisect
import io
import math
import random
import struct
from fractions import Fraction
from pathlib import Path

import mido

from bangercli.midi.score import Grid, Note, normalize

TPB = 480  # ticks per beat of the fixtures unless a test says otherwise
DRUMS = 9  # zero-based drum channel

# Independent of bangercli.midi.instruments on purpose: the GM families (program // 8) of each
# category, so a wrong range in the package cannot hide behind the same table here.
FAMILY_TO_CATEGORY = (0, 1, 2, 3, 4, 5, 5, 6, 7, 7, 8, 9, 9, 10, 10, 10)


def category_of_program(program: int) -> int:
    return FAMILY_TO_CATEGORY[program // 8]


# --- building files with mido ------------------------------------------------------------


def note(channel: int, pitch: int, start: int, length: int, velocity: int = 100) -> list:
    """A note as two timed events (absolute ticks). A zero-length note stays zero-length:
    its note-off sorts after its note-on at the same tick."""
    on = mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)
    off = mido.Message("note_off", channel=channel, note=pitch, velocity=0)
    return [(start, 1, on), (start + length, 0 if length else 2, off)]


def program(channel: int, value: int, tick: int = 0) -> list:
    return [(tick, -1, mido.Message("program_change", channel=channel, program=value))]


def tempo(bpm: float, tick: int = 0) -> list:
    return [(tick, -2, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm)))]


def track(*event_lists: list, name: str | None = None) -> mido.MidiTrack:
    """A track from lists of (absolute tick, priority, message); ties go by priority
    (tempo, program, note-off, note-on, then the note-off of a zero-length note)."""
    events = sorted(
        (event for events in event_lists for event in events), key=lambda e: (e[0], e[1])
    )
    result = mido.MidiTrack()
    if name:
        result.append(mido.MetaMessage("track_name", name=name, time=0))
    now = 0
    for tick, _, message in events:
        result.append(message.copy(time=tick - now))
        now = tick
    result.append(mido.MetaMessage("end_of_track", time=0))
    return result


def midi_file(*tracks: mido.MidiTrack, type: int = 1, ticks_per_beat: int = TPB) -> mido.MidiFile:
    midi = mido.MidiFile(type=type, ticks_per_beat=ticks_per_beat)
    midi.tracks.extend(tracks)
    return midi


def to_bytes(midi: mido.MidiFile) -> bytes:
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def save(midi: mido.MidiFile | bytes, path: Path) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(midi if isinstance(midi, bytes) else to_bytes(midi))
    return path


def band(seed: int = 0, *, bars: int = 4, drums: bool = True, bpm: float = 100.0) -> mido.MidiFile:
    """A small type 1 song: tempo track, piano melody (lead), bass, optional drums.
    Different seeds give different pitches, hence different bytes."""
    rng = random.Random(seed)
    beat = TPB
    melody, bass, kit = [], [], []
    for b in range(bars * 4):
        melody += note(0, rng.randint(60, 84), b * beat, beat // 2, rng.randint(40, 120))
        melody += note(0, rng.randint(60, 84), b * beat + beat // 2, beat // 2, 90)
        if b % 2 == 0:
            bass += note(1, rng.randint(36, 48), b * beat, 2 * beat, 100)
        if drums:
            kit += note(DRUMS, 36 if b % 2 == 0 else 38, b * beat, beat // 4, 110)
    tracks = [
        track(tempo(bpm), name="conductor"),
        track(program(0, 0), melody, name="piano"),
        track(program(1, 33), bass, name="bass"),
    ]
    if drums:
        tracks.append(track(kit, name="drums"))
    return midi_file(*tracks)


def merged(midi: mido.MidiFile) -> mido.MidiFile:
    """The same music as a type 0 file (one track, all channels)."""
    single = mido.MidiFile(type=0, ticks_per_beat=midi.ticks_per_beat)
    single.tracks.append(mido.merge_tracks(midi.tracks))
    return single


# --- building files byte by byte ---------------------------------------------------------


def vlq(value: int) -> bytes:
    """A MIDI variable-length quantity."""
    out = [value & 0x7F]
    value >>= 7
    while value:
        out.append(0x80 | (value & 0x7F))
        value >>= 7
    return bytes(reversed(out))


END_OF_TRACK = b"\x00\xff\x2f\x00"


def mtrk(body: bytes, *, length: int | None = None) -> bytes:
    """A track chunk; `length` overrides the true body length (for corrupt files)."""
    return b"MTrk" + struct.pack(">I", len(body) if length is None else length) + body


def smf(*chunks: bytes, fmt: int = 1, ntracks: int | None = None, division: int = TPB) -> bytes:
    """A Standard MIDI File from raw chunks with a header we control field by field."""
    count = len(chunks) if ntracks is None else ntracks
    return b"MThd" + struct.pack(">IHHH", 6, fmt, count, division) + b"".join(chunks)


# --- a reference reader on top of mido ---------------------------------------------------


def quantize(tick: int, ticks_per_beat: int, steps_per_quarter: int = 8) -> int:
    """Nearest grid step, halves rounded up."""
    return math.floor(Fraction(tick * steps_per_quarter, ticks_per_beat) + Fraction(1, 2))


def velocity_level(velocity: int, levels: int = 8, step: int = 15) -> int:
    """The nearest of the velocities 15, 30, ..., 120, as a level 0..7."""
    return min(range(levels), key=lambda level: abs(step * (level + 1) - velocity))


def notes_via_mido(midi: mido.MidiFile, grid: Grid = Grid()) -> list[Note]:
    """What `read_score` should find, computed from mido's parse of the same file:
    note-ons paired with note-offs first-in first-out per track, channel and pitch, an
    unclosed note lasting to the end of its track, the program in force at the onset
    (the first program of the channel before any change), drums on channel 10."""
    changes: dict[int, list[tuple[int, int]]] = {}
    raw = []
    for midi_track in midi.tracks:
        tick = 0
        pending: dict[tuple[int, int], list[tuple[int, int]]] = {}
        for message in midi_track:
            tick += message.time
            if message.type == "program_change":
                changes.setdefault(message.channel, []).append((tick, message.program))
            elif message.type == "note_on" and message.velocity > 0:
                pending.setdefault((message.channel, message.note), []).append(
                    (tick, message.velocity)
                )
            elif message.type in ("note_on", "note_off"):
                waiting = pending.get((message.channel, message.note))
                if waiting:
                    on, velocity = waiting.pop(0)
                    raw.append((on, tick, message.channel, message.note, velocity))
        for (channel, pitch), waiting in pending.items():
            raw += [(on, tick, channel, pitch, velocity) for on, velocity in waiting]
    for values in changes.values():
        values.sort(key=lambda change: change[0])
    notes = []
    tpb = midi.ticks_per_beat
    for on, off, channel, pitch, velocity in raw:
        if channel == DRUMS:
            instrument = 11
        elif channel in changes:
            ticks = [t for t, _ in changes[channel]]
            at = max(bisect.bisect_right(ticks, on) - 1, 0)
            instrument = category_of_program(changes[channel][at][1])
        else:
            instrument = 0
        start = quantize(on, tpb, grid.steps_per_quarter)
        stop = quantize(off, tpb, grid.steps_per_quarter)
        notes.append(Note(start, stop - start, instrument, pitch, velocity_level(velocity)))
    return normalize(notes, grid)


def note_ons_via_mido(midi: mido.MidiFile) -> list[tuple[int, int]]:
    """(channel, pitch) of every sounding note-on, sorted: a count the parser must match."""
    return sorted(
        (message.channel, message.note)
        for midi_track in midi.tracks
        for message in midi_track
        if message.type == "note_on" and message.velocity > 0
    )
