"""A prompt's own MIDI file, kept as it is, with new notes beside it.

banger hears a prompt on its grid (1/32 notes, 8 velocity levels, one category per program,
4/4). What it writes back is the prompt's own file: every kept note-on and note-off with its
exact tick and velocity, the programs, controllers, the tempo map and the time signatures,
byte for byte as events, and the new notes in tracks of their own. `PromptFile` reads the
meter (bars are counted in the prompt's own time signatures); `merge` writes the result.

The new notes sit on the prompt's beats: grid step s is tick s * ticks_per_beat / 8. A new part
of an instrument the prompt already plays uses the prompt's program for it (a continued part
also its channel); a new instrument gets a channel the prompt leaves free.
"""

from __future__ import annotations

import io
from bisect import bisect_right
from collections import deque
from dataclasses import dataclass
from math import gcd

import mido

from .instruments import DRUM_CHANNEL, DRUMS, INSTRUMENTS, category_of
from .midifile import MAX_EVENTS, channel_of, parsed_tracks
from .score import Grid, Note

# Copying a file's events is only attempted for what mido reads as plain metrical time.
_NOTE_EVENTS = ("note_on", "note_off")
# Events mido may build to copy a prompt (each takes ~300 bytes there, and as much again in
# the copy): the reader's own budget. A 16 MB file of controllers would otherwise take 40 s
# and 1.5 GB in mido alone; such a prompt is kept as banger hears it instead.
MAX_COPIED_EVENTS = MAX_EVENTS


@dataclass
class Cut:
    """Which of the prompt's notes are kept: those starting before `until` (grid steps),
    except those of `instruments` starting in [start, stop) (the bars of --rewrite)."""

    until: int
    instruments: frozenset[int] = frozenset()
    start: int = 0
    stop: int = 0

    def keeps(self, step: int, instrument: int) -> bool:
        if step >= self.until:
            return False
        return not (instrument in self.instruments and self.start <= step < self.stop)


class PromptFile:
    """The prompt as mido reads it, with its meter on banger's grid. `usable` is False when
    the events cannot be copied (mido refuses the bytes, SMPTE time, format 2): the output
    then holds the prompt as banger heard it, on the grid."""

    def __init__(self, data: bytes, grid: Grid) -> None:
        self.grid = grid
        self.midi, self.problem = None, ""
        tracks = parsed_tracks(data)
        events = sum(len(track.notes) + track.others for track in tracks)
        if events > MAX_COPIED_EVENTS:
            self.problem = f"it holds {events:,} events (more than {MAX_COPIED_EVENTS:,})"
        else:
            try:  # mido is shown the MTrk chunks the reader read, and only those
                self.midi = mido.MidiFile(file=io.BytesIO(_tracks_only(data, tracks)), clip=True)
            except Exception as err:  # any parse failure of a file our own reader accepted
                self.problem = f"mido cannot read it ({err or type(err).__name__})"
        if self.midi is not None:
            if self.midi.type == 2:
                self.problem = "it is a format 2 file (independent sequences)"
            elif not 0 < self.midi.ticks_per_beat < 0x8000:
                self.problem = "its time is in SMPTE frames, not beats"
            elif [_note_ons(track) for track in self.midi.tracks] != [len(t.notes) for t in tracks]:
                self.problem = "mido reads other notes in it than banger's reader"
        self.usable = not self.problem
        tpb = self.midi.ticks_per_beat if self.usable else 480
        # Coarser ticks than the grid (ticks_per_beat 1 to 7) would put new notes on the
        # beat and end some where they start (never switched off): every tick of the copy is
        # multiplied by `scale`, which keeps the prompt's times exact.
        steps = grid.steps_per_quarter
        self.scale = steps // gcd(tpb, steps) if tpb < steps else 1
        self.tpb = tpb * self.scale
        self.meters = self._meters() if self.usable else [(0, 4, 4)]

    def step(self, tick: int) -> int:
        """The grid step of a tick, rounded as the reader rounds onsets."""
        return (tick * 2 * self.grid.steps_per_quarter + self.tpb) // (2 * self.tpb)

    def tick(self, step: int) -> int:
        return round(step * self.tpb / self.grid.steps_per_quarter)

    def bar_starts(self, until: int) -> list[int]:
        """Grid steps where the prompt's bars start, from 0 up to the first at or after
        `until`, following its time signatures."""
        starts, tick, index = [0], 0, 0
        limit_tick = self.tick(until)
        while tick < limit_tick:
            while index + 1 < len(self.meters) and self.meters[index + 1][0] <= tick:
                index += 1
            _, numerator, denominator = self.meters[index]
            tick += numerator * self.tpb * 4 // denominator  # at least a step (see _meters)
            following = self.meters[index + 1][0] if index + 1 < len(self.meters) else None
            if following is not None and tick > following:  # a change in mid-bar starts a bar
                tick = following
            starts.append(self.step(tick))
        return starts

    def meter_at(self, step: int) -> tuple[int, int]:
        tick = self.tick(step)
        current = (4, 4)
        for at, numerator, denominator in self.meters:
            if at <= tick:
                current = (numerator, denominator)
        return current

    def _meters(self) -> list[tuple[int, int, int]]:
        """(tick, numerator, denominator) of each time signature; one whose bar is shorter
        than a grid step (0/4, 3/128, a denominator of 2**255) is corrupt and ignored: it
        would make billions of bars."""
        meters = {0: (4, 4)}
        for track in self.midi.tracks:
            tick = 0
            for message in track:
                tick += message.time
                if message.type == "time_signature" and message.numerator > 0 \
                        and message.numerator * 4 * self.grid.steps_per_quarter >= message.denominator:
                    meters[tick * self.scale] = (message.numerator, message.denominator)
        return [(tick, *meters[tick]) for tick in sorted(meters)]


def _tracks_only(data: bytes, tracks) -> bytes:
    """`data` with the header counting its MTrk chunks and nothing but them: mido reads as
    many tracks as the header says and stops at other chunks, the reader reads every MTrk."""
    header = b"MThd" + (6).to_bytes(4, "big") + data[8:10] + len(tracks).to_bytes(2, "big")
    return header + data[12:14] + b"".join(data[start:stop] for start, stop in
                                           (track.chunk for track in tracks))


def _note_ons(track: mido.MidiTrack) -> int:
    """Sounding note-ons up to the end of the track (as the reader counts them)."""
    count = 0
    for message in track:
        if message.type == "end_of_track":
            break
        count += message.type == "note_on" and message.velocity > 0
    return count


def merge(prompt: PromptFile, cut: Cut, new_notes: list[Note], *, order: list[int],
          end: int, bpm: float | None = None, continued: bool = True,
          warnings: list[str] | None = None) -> mido.MidiFile:
    """The prompt's kept events plus `new_notes` (grid) in new tracks, one per instrument in
    `order`. `end` (grid steps) places the end of every track; `bpm` replaces the tempo map;
    `continued`: a new part of an instrument the prompt plays continues on its channel (else
    it is a second voice on a channel of its own); `warnings` collects what had to give."""
    midi = prompt.midi
    out = mido.MidiFile(type=1, ticks_per_beat=prompt.tpb)
    programs = _programs(midi, prompt.scale)
    end_tick = prompt.tick(end)
    cut_tick = prompt.tick(cut.until)
    used_channels, first_program, channel_for = set(), {}, {}
    for number, track in enumerate(midi.tracks):
        kept, used = _kept_events(track, cut, cut_tick, programs, prompt, bpm)
        used_channels |= used.keys()
        for channel, instrument in used.items():
            channel_for.setdefault(instrument, channel)
            first_program.setdefault(instrument, _program_at(programs, channel, 0))
        if bpm is not None and number == 0:
            kept.insert(0, (0, mido.MetaMessage("set_tempo", tempo=mido.bpm2tempo(bpm))))
        if cut.until < end and number == 0 and prompt.meter_at(cut.until) != (4, 4):
            # banger writes 4/4: say so where its bars begin
            kept.append((cut_tick, mido.MetaMessage("time_signature", numerator=4,
                                                    denominator=4)))
        out.tracks.append(_track(kept, end_tick))
    if not out.tracks:
        out.tracks.append(_track([], end_tick))

    by_instrument: dict[int, list[Note]] = {}
    for note in new_notes:
        by_instrument.setdefault(note.instrument, []).append(note)
    free = [c for c in range(16) if c != DRUM_CHANNEL and c not in used_channels]
    for instrument in order:
        if instrument not in by_instrument:
            continue
        category = INSTRUMENTS[instrument]
        program = first_program.get(instrument, category.default_program)
        events = []
        if instrument == DRUMS.index:
            channel = DRUM_CHANNEL
        elif continued and instrument in channel_for:
            channel = channel_for[instrument]  # the prompt's channel already has the program
        elif free:
            channel = free.pop(0)
            events.append((0, mido.Message("program_change", channel=channel, program=program)))
        else:  # all 16 channels play the prompt: a program change would change one of its
            # parts, so the new part plays on a channel as it is (its own instrument's if any)
            channel = channel_for.get(instrument, channel_of(instrument))
            if warnings is not None:
                warnings.append(f"the prompt uses every MIDI channel: the new {category.name} "
                                f"part plays on channel {channel + 1} with its program")
        for note in by_instrument[instrument]:
            velocity = prompt.grid.velocity_of(note.velocity)
            events.append((prompt.tick(note.start), mido.Message(
                "note_on", channel=channel, note=note.pitch, velocity=velocity)))
            events.append((prompt.tick(note.start + note.duration), mido.Message(
                "note_off", channel=channel, note=note.pitch, velocity=0)))
        # offs before ons at one tick, as the grid writer does
        events.sort(key=lambda e: (e[0], e[1].type != "program_change", e[1].type == "note_on"))
        name = mido.MetaMessage("track_name", name=f"{category.name} (banger)")
        out.tracks.append(_track([(0, name), *events], end_tick))
    return out


def _kept_events(track, cut: Cut, cut_tick: int, programs, prompt: PromptFile,
                 bpm: float | None):
    """(tick, message) of one track that stay, and {channel: instrument} of its kept notes."""
    kept, used = [], {}
    open_notes: dict[tuple[int, int], deque[bool]] = {}
    tick = 0
    for message in track:
        tick += message.time * prompt.scale
        kind = message.type
        if kind == "end_of_track":  # the reader reads no further either
            break
        if kind == "set_tempo" and message.tempo == 0:  # the reader ignores it: so does the copy
            continue
        if kind in _NOTE_EVENTS:
            key = (message.channel, message.note)
            if kind == "note_on" and message.velocity > 0:
                instrument = category_of(_program_at(programs, message.channel, tick),
                                         message.channel)
                keep = cut.keeps(prompt.step(tick), instrument)
                open_notes.setdefault(key, deque()).append(keep)
                if keep:
                    used[message.channel] = instrument
            else:  # a note-off belongs to the earliest open note-on of its key
                pending = open_notes.get(key)
                keep = pending.popleft() if pending else tick < cut_tick
            if keep:
                kept.append((tick, message))
        elif tick < cut_tick and not (bpm is not None and kind == "set_tempo"):
            kept.append((tick, message))
    for (channel, pitch), pending in open_notes.items():
        # a note never switched off lasts to the end of its track (as the reader hears it),
        # not on through the new bars
        kept += [(tick, mido.Message("note_off", channel=channel, note=pitch, velocity=0))
                 for keep in pending if keep]
    return kept, used


def _programs(midi: mido.MidiFile, scale: int) -> dict[int, list[tuple[int, int]]]:
    """{channel: [(tick, program), ...]} over all tracks, in time order."""
    programs: dict[int, list[tuple[int, int]]] = {}
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time * scale
            if message.type == "program_change":
                programs.setdefault(message.channel, []).append((tick, message.program))
    for changes in programs.values():
        changes.sort(key=lambda change: change[0])
    return programs


def _program_at(programs, channel: int, tick: int) -> int:
    """The program in force at `tick` (before a channel's first change: that one, as the
    reader has it). A binary search: a prompt may hold 100,000 program changes."""
    changes = programs.get(channel)
    if not changes:
        return 0
    at = bisect_right(changes, (tick, 1 << 8)) - 1  # a change at `tick` counts
    return changes[max(at, 0)][1]


def _track(events: list[tuple[int, mido.Message]], end_tick: int) -> mido.MidiTrack:
    """A track of (absolute tick, message) with delta times, ended at `end_tick` or later."""
    track, now = mido.MidiTrack(), 0
    for tick, message in sorted(events, key=lambda e: e[0]):  # stable: same-tick order stays
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(end_tick - now, 0)))
    return track
