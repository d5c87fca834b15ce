"""Standard MIDI Files in and out: `read_score` makes a `Score` (score.py), `write_midi` a file.

Reading uses a small parser of our own instead of mido's: it only builds the events a score
needs (about 6x faster than `mido.MidiFile` on the corpus, see docs/benchmarks.md) and every
malformed byte becomes a `MidiReadError` with the reason, never an IndexError from deep inside
a parser. Time and memory are bounded by the file size and by MAX_EVENTS and MAX_TRACKS (a
16 MB file reads in seconds, within ~250 MB).
"""

from __future__ import annotations

import bisect
import io
import os
import stat
from collections import deque
from pathlib import Path
from typing import NamedTuple

import mido

from ..errors import MidiReadError
from .instruments import DRUM_CHANNEL, DRUMS, INSTRUMENTS, PROGRAM_TO_CATEGORY
from .score import DEFAULT_BPM, Grid, Note, Score, canonical_notes

MAX_FILE_BYTES = 16 * 1024 * 1024  # larger files are refused unread (Lakh's largest is ~1 MB)
MAX_QUARTERS = 1 << 17  # an onset later than this (18 hours at 120 bpm) means corrupt delta times
# Note-ons, program and tempo changes kept while parsing, per file. Each costs ~400 bytes until
# the score is built, so without a cap a 16 MB file of running-status note-ons (3 bytes each)
# takes over 1 GB. 2**19 fill a 1.5 MB file (~230 MB to read); the fullest file of the corpus
# has 11,234 notes, and `banger preprocess` skips more than 30,000 by default.
MAX_EVENTS = 1 << 19
# The header counts tracks in 16 bits. More MTrk chunks than that is no MIDI file, and 2 million
# empty ones (16 MB) would take seconds of per-track overhead to read.
MAX_TRACKS = 0xFFFF
OUTPUT_TICKS_PER_BEAT = 480


# --- reading -----------------------------------------------------------------------------


class _Track(NamedTuple):
    notes: list[tuple[int, int, int, int, int]]  # (on_tick, off_tick, channel, pitch, velocity)
    last_tick: int
    others: int = 0  # events other than sounding note-ons (what a copy of the file holds too)
    chunk: tuple[int, int] = (0, 0)  # where its MTrk chunk lies in the file's bytes


def read_score(source: str | os.PathLike | bytes | mido.MidiFile, grid: Grid) -> Score:
    """Read a MIDI file (path, raw bytes or `mido.MidiFile`) into a normalized `Score`."""
    data = midi_bytes(source)
    tracks, programs, tempos, ticks_per_beat = _parse(data)
    return _to_score(tracks, programs, tempos, ticks_per_beat, grid)


def parsed_tracks(data: bytes) -> list[_Track]:
    """The MTrk chunks of `data` as the reader sees them (notes, other events, where each
    chunk lies), for a writer that copies a file's own events (merge.py)."""
    return _parse(data)[0]


def midi_bytes(source: str | os.PathLike | bytes | mido.MidiFile) -> bytes:
    if isinstance(source, (bytes, bytearray)):
        return bytes(source)
    if isinstance(source, mido.MidiFile):
        buffer = io.BytesIO()
        try:
            source.save(file=buffer)
        except Exception as err:  # mido validates on save; any failure means a broken object
            raise MidiReadError(f"cannot serialise the MidiFile: {err}") from None
        return buffer.getvalue()
    path = Path(source)
    try:  # opened without blocking, checked on the handle, read up to the limit: a FIFO
        # never blocks, /dev/zero never fills the memory, a growing file is cut at the limit
        handle = os.open(path, os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
        with os.fdopen(handle, "rb") as file:
            status = os.fstat(file.fileno())
            if stat.S_ISDIR(status.st_mode):
                raise MidiReadError(f"{path} is a directory, not a MIDI file")
            if not stat.S_ISREG(status.st_mode):
                raise MidiReadError(f"{path} is not a regular file (a FIFO, device or socket)")
            if status.st_size > MAX_FILE_BYTES:
                raise MidiReadError(f"file too large ({status.st_size} bytes > {MAX_FILE_BYTES})")
            return file.read(MAX_FILE_BYTES + 1)  # more than the limit: _parse refuses it
    except FileNotFoundError:
        raise MidiReadError(f"no such file: {path}") from None
    except IsADirectoryError:  # where a folder cannot be opened at all
        raise MidiReadError(f"{path} is a directory, not a MIDI file") from None
    except OSError as err:
        raise MidiReadError(f"cannot read {path}: {err.strerror or err}") from None


def _parse(data: bytes):
    """Parse SMF bytes into per-track note lists, program changes and tempo changes."""
    if len(data) > MAX_FILE_BYTES:
        raise MidiReadError(f"file too large ({len(data)} bytes > {MAX_FILE_BYTES})")
    if len(data) == 0:
        raise MidiReadError("empty file (0 bytes)")
    if data[:4] != b"MThd":
        if data[:4] == b"RIFF" and data[8:12] == b"RMID":
            raise MidiReadError("RIFF MIDI (.rmi) is not supported", hint="convert it to a standard .mid")
        raise MidiReadError("not a MIDI file (no MThd header)")
    if len(data) < 14:
        raise MidiReadError("truncated header")
    header_len = int.from_bytes(data[4:8], "big")
    if header_len < 6 or 8 + header_len > len(data):
        raise MidiReadError(f"bad header length {header_len}")
    fmt = int.from_bytes(data[8:10], "big")
    division = int.from_bytes(data[12:14], "big")
    if fmt > 2:
        raise MidiReadError(f"unknown MIDI format {fmt}")
    if division & 0x8000:  # SMPTE: frames per second x ticks per frame; read at 120 bpm
        fps = 256 - (division >> 8)
        ticks_per_beat = fps * (division & 0xFF) // 2
    else:
        ticks_per_beat = division
    if ticks_per_beat <= 0:
        raise MidiReadError("zero ticks per beat in the header")

    tracks: list[_Track] = []
    programs: list[tuple[int, int, int]] = []  # (tick, channel, program)
    tempos: list[tuple[int, int]] = []  # (tick, microseconds per beat)
    pos = 8 + header_len
    end = len(data)
    notes = 0  # note-ons of the tracks so far, for the MAX_EVENTS budget
    while pos + 8 <= end:
        kind = data[pos : pos + 4]
        length = int.from_bytes(data[pos + 4 : pos + 8], "big")
        body = pos + 8
        if body + length > end:
            raise MidiReadError(
                f"truncated: chunk {len(tracks) + 1} claims {length} bytes but {end - body} remain"
            )
        if kind == b"MTrk":
            if len(tracks) == MAX_TRACKS:
                raise MidiReadError(f"too many tracks: more than {MAX_TRACKS:,} MTrk chunks")
            budget = MAX_EVENTS - notes - len(programs) - len(tempos)
            track = _parse_track(data, body, body + length, programs, tempos, budget)
            tracks.append(track._replace(chunk=(pos, body + length)))
            notes += len(tracks[-1].notes)
        pos = body + length
    if not tracks:
        raise MidiReadError("no tracks in the file")
    return tracks, programs, tempos, ticks_per_beat


def _parse_track(
    data: bytes, pos: int, end: int, programs: list, tempos: list, budget: int
) -> _Track:
    """Walk one MTrk chunk; collect notes paired on (channel, pitch) first-in first-out.
    At most `budget` note-ons, program and tempo changes are kept (see MAX_EVENTS)."""
    tick = 0
    status = 0
    others = 0
    open_notes: dict[int, deque[tuple[int, int]]] = {}  # channel*128+pitch -> [(on_tick, velocity)]
    notes: list[tuple[int, int, int, int, int]] = []
    try:
        while pos < end:
            byte = data[pos]
            pos += 1
            if byte < 0x80:  # most delta times are one byte: no loop for them
                tick += byte
            else:
                delta = byte & 0x7F
                for _ in range(3):  # variable-length quantity: at most 4 bytes
                    byte = data[pos]
                    pos += 1
                    delta = (delta << 7) | (byte & 0x7F)
                    if byte < 0x80:
                        break
                else:
                    raise MidiReadError("corrupt track: delta time longer than 4 bytes")
                tick += delta
            byte = data[pos]
            if byte >= 0x80:
                pos += 1
                others += byte >= 0xF0  # channel messages are counted below
                if byte < 0xF0:
                    status = byte
                elif byte == 0xFF:  # meta event: type, length, data
                    meta = data[pos]
                    length, pos = _read_vlq(data, pos + 1, end)
                    if meta == 0x51 and length == 3:
                        budget -= 1
                        if budget < 0:
                            raise _too_many_events()
                        tempos.append((tick, int.from_bytes(data[pos : pos + 3], "big")))
                    pos += length
                    if meta == 0x2F:
                        break
                    continue
                elif byte in (0xF0, 0xF7):  # sysex: length, data; cancels running status
                    length, pos = _read_vlq(data, pos, end)
                    pos += length
                    status = 0
                    continue
                else:  # system common/real-time bytes have no place in a file; skip them
                    continue
            elif status == 0:
                raise MidiReadError("corrupt track: running status without a previous status byte")
            kind = status & 0xF0
            channel = status & 0x0F
            if kind in (0xC0, 0xD0):  # one data byte
                value = data[pos]
                pos += 1
                others += 1
                if value > 0x7F:
                    raise MidiReadError("corrupt track: data byte above 127")
                if kind == 0xC0:
                    budget -= 1
                    if budget < 0:
                        raise _too_many_events()
                    programs.append((tick, channel, value))
                continue
            first, second = data[pos], data[pos + 1]
            pos += 2
            if first > 0x7F or second > 0x7F:
                raise MidiReadError("corrupt track: data byte above 127")
            if kind == 0x90 and second > 0:
                budget -= 1
                if budget < 0:
                    raise _too_many_events()
                pending = open_notes.get(channel * 128 + first)
                if pending is None:  # not setdefault: that builds a deque for every note-on
                    open_notes[channel * 128 + first] = deque(((tick, second),))
                else:
                    pending.append((tick, second))
            else:
                others += 1
                if kind == 0x80 or kind == 0x90:
                    pending = open_notes.get(channel * 128 + first)
                    if pending:
                        on_tick, velocity = pending.popleft()
                        notes.append((on_tick, tick, channel, first, velocity))
    except IndexError:
        raise MidiReadError("truncated track: an event runs past the end of its chunk") from None
    if pos > end:
        raise MidiReadError("corrupt track: an event runs past the end of its chunk")
    for key, pending in open_notes.items():  # never switched off: they last to the track's end
        for on_tick, velocity in pending:
            notes.append((on_tick, tick, key >> 7, key & 0x7F, velocity))
    return _Track(notes, tick, others)


def _too_many_events() -> MidiReadError:
    return MidiReadError(
        f"too many events: more than {MAX_EVENTS:,} note-ons, program and tempo changes"
    )


def _read_vlq(data: bytes, pos: int, end: int) -> tuple[int, int]:
    value = 0
    for _ in range(4):
        if pos >= end:
            raise MidiReadError("truncated track: length runs past the end of its chunk")
        byte = data[pos]
        pos += 1
        value = (value << 7) | (byte & 0x7F)
        if byte < 0x80:
            if pos + value > end:
                raise MidiReadError(f"corrupt track: event claims {value} bytes past its chunk")
            return value, pos
    raise MidiReadError("corrupt track: length longer than 4 bytes")


def _to_score(tracks: list[_Track], programs, tempos, ticks_per_beat: int, grid: Grid) -> Score:
    programs.sort(key=lambda change: change[0])
    by_channel: dict[int, tuple[list[int], list[int]]] = {}
    for tick, channel, program in programs:
        ticks, values = by_channel.setdefault(channel, ([], []))
        ticks.append(tick)
        values.append(program)

    twice_scale = 2 * grid.steps_per_quarter
    twice_tpb = 2 * ticks_per_beat
    latest_onset = MAX_QUARTERS * ticks_per_beat
    level_of = [grid.velocity_level(velocity) for velocity in range(128)]
    bisect_right = bisect.bisect_right
    notes: list[tuple[int, int, int, int, int]] = []  # Note fields; `canonical_notes` makes Notes
    for track in tracks:
        for on_tick, off_tick, channel, pitch, velocity in track.notes:
            if on_tick > latest_onset:
                # Without this bound a few corrupt 4-byte delta times would make millions
                # of TIME tokens from a file of a hundred bytes.
                raise MidiReadError(
                    f"corrupt delta times: a note starts {on_tick // ticks_per_beat:,} "
                    f"quarter notes in (more than {MAX_QUARTERS:,})"
                )
            if channel == DRUM_CHANNEL:
                instrument = DRUMS.index
            else:
                changes = by_channel.get(channel)
                program = 0
                if changes:
                    # the program in force at the onset (a change at the same tick counts)
                    at = bisect_right(changes[0], on_tick) - 1
                    program = changes[1][max(at, 0)]
                instrument = PROGRAM_TO_CATEGORY[program]
            start = (on_tick * twice_scale + ticks_per_beat) // twice_tpb
            stop = (off_tick * twice_scale + ticks_per_beat) // twice_tpb
            notes.append((start, stop - start, instrument, pitch, level_of[velocity]))
    last_tick = max(track.last_tick for track in tracks)
    return Score(
        notes=canonical_notes(notes, grid.max_duration),
        bpm=_first_bpm(tempos),
        seconds=_seconds(last_tick, tempos, ticks_per_beat),
        has_programs=bool(programs),
    )


def _first_bpm(tempos: list[tuple[int, int]]) -> float:
    valid = [t for t in tempos if t[1] > 0]
    if not valid:
        return DEFAULT_BPM
    return round(60_000_000 / min(valid)[1], 3)


def _seconds(last_tick: int, tempos: list[tuple[int, int]], ticks_per_beat: int) -> float:
    seconds, tick, tempo = 0.0, 0, 500_000
    for change_tick, change_tempo in sorted(t for t in tempos if t[1] > 0):
        if change_tick >= last_tick:
            break
        seconds += (change_tick - tick) * tempo / ticks_per_beat / 1e6
        tick, tempo = change_tick, change_tempo
    return seconds + (last_tick - tick) * tempo / ticks_per_beat / 1e6


# --- writing -----------------------------------------------------------------------------


def channel_of(instrument: int) -> int:
    """Zero-based MIDI channel for a category: melodic 0..8 and 10..11, drums on 9."""
    if instrument == DRUMS.index:
        return DRUM_CHANNEL
    return instrument if instrument < DRUM_CHANNEL else instrument + 1


def write_midi(
    notes: list[Note], *, order: list[int], grid: Grid, bpm: float = DEFAULT_BPM,
    length: int | None = None,
) -> mido.MidiFile:
    """A type 1 file: a tempo track, then one named track per instrument in `order`.
    `length` (grid steps) places the end of the tempo track, e.g. exactly on a bar line."""
    ticks_per_step = OUTPUT_TICKS_PER_BEAT // grid.steps_per_quarter
    midi = mido.MidiFile(type=1, ticks_per_beat=OUTPUT_TICKS_PER_BEAT)
    conductor = mido.MidiTrack()
    conductor.append(mido.MetaMessage("track_name", name="banger", time=0))
    # clamped to what set_tempo can hold: the slowest file tempo, 0xFFFFFF, reads as 3.576 bpm,
    # which rounds to a tempo one step too large
    tempo = min(max(mido.bpm2tempo(bpm), 1), 0xFFFFFF)
    conductor.append(mido.MetaMessage("set_tempo", tempo=tempo, time=0))
    conductor.append(
        mido.MetaMessage("time_signature", numerator=4, denominator=4, time=0)
    )
    conductor.append(
        mido.MetaMessage("end_of_track", time=(length or 0) * ticks_per_step)
    )
    midi.tracks.append(conductor)
    by_instrument: dict[int, list[Note]] = {}
    for note in notes:
        by_instrument.setdefault(note.instrument, []).append(note)
    for instrument in order:
        if instrument not in by_instrument:
            continue
        channel = channel_of(instrument)
        category = INSTRUMENTS[instrument]
        events = []  # (tick, 0 = off before 1 = on at the same tick, pitch, velocity)
        for note in by_instrument[instrument]:
            events.append((note.start * ticks_per_step, 1, note.pitch, grid.velocity_of(note.velocity)))
            events.append(((note.start + note.duration) * ticks_per_step, 0, note.pitch, 0))
        events.sort()
        track = mido.MidiTrack()
        track.append(mido.MetaMessage("track_name", name=category.name, time=0))
        track.append(
            mido.Message("program_change", channel=channel, program=category.default_program, time=0)
        )
        now = 0
        for tick, is_on, pitch, velocity in events:
            kind = "note_on" if is_on else "note_off"
            track.append(
                mido.Message(kind, channel=channel, note=pitch, velocity=velocity, time=tick - now)
            )
            now = tick
        track.append(mido.MetaMessage("end_of_track", time=0))
        midi.tracks.append(track)
    return midi
