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
from collections import deque
from dataclasses import dataclass

import mido

from .instruments import DRUM_CHANNEL, DRUMS, INSTRUMENTS, category_of
from .midifile import channel_of
from .score import Grid, Note

# Copying a file's events is only attempted for what mido reads as plain metrical time.
_NOTE_EVENTS = ("note_on", "note_off")


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
        self.problem = ""
        try:
            self.midi = mido.MidiFile(file=io.BytesIO(data), clip=True)
        except Exception as err:  # any parse failure of a file our own reader accepted
            self.midi, self.problem = None, f"mido cannot read it ({err})"
        else:
            if self.midi.type == 2:
                self.problem = "it is a format 2 file (independent sequences)"
            elif not 0 < self.midi.ticks_per_beat < 0x8000:
                self.problem = "its time is in SMPTE frames, not beats"
        self.usable = not self.problem
        self.tpb = self.midi.ticks_per_beat if self.usable else 480
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
            tick += max(numerator * self.tpb * 4 // denominator, 1)
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
        meters = {0: (4, 4)}
        for track in self.midi.tracks:
            tick = 0
            for message in track:
                tick += message.time
                if message.type == "time_signature" and message.numerator > 0:
                    meters[tick] = (message.numerator, message.denominator)
        return [(tick, *meters[tick]) for tick in sorted(meters)]


def merge(prompt: PromptFile, cut: Cut, new_notes: list[Note], *, order: list[int],
          end: int, bpm: float | None = None, continued: bool = True) -> mido.MidiFile:
    """The prompt's kept events plus `new_notes` (grid) in new tracks, one per instrument in
    `order`. `end` (grid steps) places the end of every track; `bpm` replaces the tempo map;
    `continued`: a new part of an instrument the prompt plays continues on its channel (else
    it is a second voice on a channel of its own)."""
    midi = prompt.midi
    out = mido.MidiFile(type=1, ticks_per_beat=prompt.tpb)
    programs = _programs(midi)
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
        else:
            channel = free.pop(0) if free else channel_for.get(instrument, channel_of(instrument))
            events.append((0, mido.Message("program_change", channel=channel, program=program)))
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
        tick += message.time
        kind = message.type
        if kind == "end_of_track":
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
    return kept, used


def _programs(midi: mido.MidiFile) -> dict[int, list[tuple[int, int]]]:
    """{channel: [(tick, program), ...]} over all tracks, in time order."""
    programs: dict[int, list[tuple[int, int]]] = {}
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "program_change":
                programs.setdefault(message.channel, []).append((tick, message.program))
    for changes in programs.values():
        changes.sort(key=lambda change: change[0])
    return programs


def _program_at(programs, channel: int, tick: int) -> int:
    """The program in force at `tick` (before a channel's first change: that one, as the
    reader has it)."""
    changes = programs.get(channel)
    if not changes:
        return 0
    program = changes[0][1]
    for at, value in changes:
        if at > tick:
            break
        program = value
    return program


def _track(events: list[tuple[int, mido.Message]], end_tick: int) -> mido.MidiTrack:
    """A track of (absolute tick, message) with delta times, ended at `end_tick` or later."""
    track, now = mido.MidiTrack(), 0
    for tick, message in sorted(events, key=lambda e: e[0]):  # stable: same-tick order stays
        track.append(message.copy(time=tick - now))
        now = tick
    track.append(mido.MetaMessage("end_of_track", time=max(end_tick - now, 0)))
    return track
