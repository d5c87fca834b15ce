"""The band parts that pop909_band.py adds to a song: drums and bass.

Drums are human Groove MIDI performances cut into bars and time-warped, bar by bar, onto a
song's annotated beats: a hit at a fraction of a performance beat lands at the same fraction
of the song's beat, so the drummer's feel (pushed and laid-back hits) survives any tempo
curve. The bass plays the chord annotations and locks to the kick: one note on every kick
hit, chord change and downbeat. Times are MIDI ticks of the song (floats until written).
"""

from __future__ import annotations

import bisect
import hashlib
import io
import math
import random
import re
import statistics
from dataclasses import dataclass
from pathlib import Path
from typing import NamedTuple

import mido

from .preprocess import split_of

# Groove MIDI styles that suit pop songs (the eval session's "soul-groove3" counts as "soul").
POP_STYLES = ("pop", "pop-soft", "rock", "rock-indie", "rock-folk", "rock-halftime", "soul",
              "soul-motown", "funk-rock", "country")
GROOVE_NAME = re.compile(r"\d+_([a-z-]+?)(?:-groove\d+)?_(\d+)_(beat|fill)_4-4\.midi?")
GM_DRUMS = {22: 42, 26: 46, 58: 43}  # the kit's hi-hat edge and tom rim sounds -> General MIDI
KICKS = frozenset((35, 36))
SNARES = frozenset((37, 38, 40))  # snare, rim and cross-stick
CYMBALS = frozenset((49, 52, 55, 57))
CRASH, KICK = 49, 36
EARLY = 0.125  # beats: a hit this much before a bar line belongs to that bar (a pushed "one")
GHOST = 40  # kicks softer than this are ghost notes: the bass does not follow them

PITCH_CLASSES = {"C": 0, "D": 2, "E": 4, "F": 5, "G": 7, "A": 9, "B": 11}
QUALITIES = {  # chord tones (semitones above the root) of the POP909 chord labels
    "maj": (0, 4, 7), "min": (0, 3, 7), "sus2": (0, 2, 7), "sus4": (0, 5, 7), "7": (0, 4, 7, 10),
    "maj7": (0, 4, 7, 11), "min7": (0, 3, 7, 10), "maj6": (0, 4, 7, 9), "min6": (0, 3, 7, 9),
    "dim": (0, 3, 6), "dim7": (0, 3, 6, 9), "hdim7": (0, 3, 6, 10), "aug": (0, 4, 8),
    "minmaj7": (0, 3, 7, 11), "sus4(b7)": (0, 5, 7, 10),
}
DEGREES = {"1": 0, "b2": 1, "2": 2, "#2": 3, "b3": 3, "3": 4, "4": 5, "#4": 6, "b5": 6, "5": 7,
           "#5": 8, "b6": 8, "6": 9, "bb7": 9, "b7": 10, "7": 11}
LOWEST_BASS = 28  # E1, the open low string: chord roots sit in E1..D#2


class MidiNote(NamedTuple):
    tick: float  # onset in ticks of the song
    length: float  # in ticks
    pitch: int
    velocity: int


class Chord(NamedTuple):
    start: float  # ticks
    end: float
    root: int  # pitch class
    tones: tuple[int, ...]  # pitch classes of the chord
    bass: int  # pitch class the bass plays: the root, or the slash chord's bass


def parse_chord(label: str) -> tuple[int, tuple[int, ...], int] | None:
    """(root, chord tones, bass) as pitch classes of a POP909 label such as `G:maj/3`; None for
    `N` (no chord). An unknown quality keeps only the root; an unknown root raises ValueError."""
    if label == "N":
        return None
    name, _, rest = label.partition(":")
    quality, _, inversion = (rest or "maj").partition("/")
    if not name or name[0] not in PITCH_CLASSES or set(name[1:]) - {"#", "b"}:
        raise ValueError(f"chord {label!r}")
    root = (PITCH_CLASSES[name[0]] + name.count("#") - name.count("b")) % 12
    tones = tuple((root + step) % 12 for step in QUALITIES.get(quality, (0,)))
    if inversion and inversion not in DEGREES:
        raise ValueError(f"chord {label!r}")
    return root, tones, (root + DEGREES.get(inversion, 0)) % 12


class Hit(NamedTuple):
    beat: float  # onset in quarter notes from the start of the performance
    length: float  # quarter notes
    pitch: int  # General MIDI drum sound
    velocity: int


@dataclass(frozen=True)
class Groove:
    """One Groove MIDI performance, as quarter notes from its first bar line."""

    path: str  # relative to the groove folder (provenance)
    drummer: str
    style: str
    bpm: int
    fill: bool  # a short fill clip rather than a beat
    hits: tuple[Hit, ...]  # by onset, on the performance's own grid (see `align`)
    backbeat: float = 0.0  # share of the snare's weight on beats 2 and 4 (0..1)
    kick_on_one: float = 0.0  # share of the kick's weight on beat 1

    @property
    def bars(self) -> int:
        """4/4 bars the performance plays (a bar counts when the hits reach its last beat)."""
        return max(int((self.hits[-1].beat + EARLY - 3) // 4) + 1, 0) if self.hits else 0

    def bar(self, index: int, *, beats: int = 4) -> list[Hit]:
        """The hits of bar `index` as (beat within the bar, ...), the first `beats` beats only;
        a hit just before the bar line counts as the bar's "one"."""
        starts = [hit.beat for hit in self.hits]
        first = 4 * index - EARLY
        lo, hi = bisect.bisect_left(starts, first), bisect.bisect_left(starts, first + beats)
        return [hit._replace(beat=hit.beat - 4 * index) for hit in self.hits[lo:hi]]

    @property
    def kicks_per_bar(self) -> float:
        """Kick hits (ghost notes aside) per bar: how busy the kick, and so the bass, is."""
        kicks = sum(hit.pitch in KICKS and hit.velocity >= GHOST for hit in self.hits)
        return kicks / max(self.bars, 1)

    @property
    def one_bar_fill(self) -> bool:
        """A fill clip that reads as one bar played from its bar line (many clips start or end
        mid-bar: those are not used)."""
        return (self.fill and bool(self.hits) and self.hits[0].beat < 0.1
                and 2.5 <= self.hits[-1].beat < 4 - EARLY)


def read_hits(data: bytes) -> tuple[Hit, ...]:
    """The drum hits of a Groove MIDI file, pitches mapped to General MIDI."""
    midi = mido.MidiFile(file=io.BytesIO(data))
    hits, sounding = [], {}
    for track in midi.tracks:
        tick = 0
        for message in track:
            tick += message.time
            if message.type == "note_on" and message.velocity:
                sounding[message.note] = (tick, message.velocity)
            elif message.type in ("note_on", "note_off") and message.note in sounding:
                start, velocity = sounding.pop(message.note)
                hits.append((start, tick - start, message.note, velocity))
    hits += [(start, 0, pitch, velocity) for pitch, (start, velocity) in sounding.items()]
    beat = midi.ticks_per_beat
    return tuple(sorted(
        Hit(start / beat, max(length / beat, 1 / 16), GM_DRUMS.get(pitch, pitch), velocity)
        for start, length, pitch, velocity in hits))


def sixteenths(hits, sounds: frozenset[int]) -> list[float]:
    """Velocity-weighted share of `sounds` on each sixteenth note of the bar."""
    weights = [0.0] * 16
    for hit in hits:
        if hit.pitch in sounds:
            weights[round(hit.beat * 4) % 16] += hit.velocity
    total = sum(weights) or 1.0
    return [w / total for w in weights]


def align(hits: tuple[Hit, ...], *, rotate: bool) -> tuple[tuple[Hit, ...], float, float]:
    """(hits, backbeat, kick on one): the hits moved by the median offset of all hits from the
    nearest sixteenth (a drummer playing ahead of or behind the click all along), and, when
    `rotate`, by the sixteenths that put most snare on 2 and 4 and kick on 1 and 3 (a
    recording need not start on a bar line). The human deviations around the grid stay."""
    if not hits:
        return hits, 0.0, 0.0
    offset = statistics.median(hit.beat * 4 - round(hit.beat * 4) for hit in hits) / 4
    hits = tuple(hit._replace(beat=hit.beat - offset) for hit in hits)
    snare, kick = sixteenths(hits, SNARES), sixteenths(hits, KICKS)

    def backbeat(r: int) -> float:
        return snare[(r + 4) % 16] + snare[(r + 12) % 16]

    best = max(range(16) if rotate else [0],
               key=lambda r: backbeat(r) + (kick[r] + kick[(r + 8) % 16]) / 2)
    if best:
        moved = (hit._replace(beat=hit.beat - best / 4) for hit in hits)
        hits = tuple(hit for hit in moved if hit.beat >= -EARLY)
    return hits, backbeat(best), kick[best]


def load_grooves(folder: str | Path, *, styles: tuple[str, ...] = POP_STYLES,
                 val_fraction: float = 0.1) -> list[Groove]:
    """The 4/4 performances of `styles` under `folder` whose file is in the training split of
    `banger preprocess` (by its content hash): drums from held-out files would leak them."""
    folder = Path(folder)
    grooves = []
    for path in sorted(folder.rglob("*.mid"), key=lambda p: p.relative_to(folder).as_posix()):
        match = GROOVE_NAME.fullmatch(path.name)
        if not match or match.group(1) not in styles or not path.is_file():
            continue
        data = path.read_bytes()
        if split_of(hashlib.sha256(data).hexdigest(), val_fraction) != "train":
            continue
        relative, fill = path.relative_to(folder), match.group(3) == "fill"
        hits, backbeat, kick_on_one = align(read_hits(data), rotate=not fill)
        grooves.append(Groove(relative.as_posix(), relative.parts[0], match.group(1),
                              int(match.group(2)), fill, hits, backbeat, kick_on_one))
    return grooves


def nearest(grooves: list[Groove], bpm: float, rng: random.Random, *, choices: int) -> Groove:
    """One of the `choices` grooves nearest `bpm` (on a log scale), drawn with `rng`."""
    ranked = sorted(grooves, key=lambda g: (abs(math.log(g.bpm / bpm)), g.path))
    return ranked[rng.randrange(min(choices, len(ranked)))]


def warp(hits: list[Hit], beats: list[float], first: int) -> list[MidiNote]:
    """Hits of one bar (beats from its bar line) placed on the song's beat ticks `beats`, the
    bar starting at beat index `first`: beat k + f lands at beats[first+k] + f * (that beat's
    length). `beats` must reach one beat past the last beat a hit falls in."""
    notes = []
    for hit in hits:
        k = max(int(math.floor(hit.beat)), 0)
        start, span = beats[first + k], beats[first + k + 1] - beats[first + k]
        notes.append(MidiNote(start + (hit.beat - k) * span, hit.length * span, hit.pitch,
                              hit.velocity))
    return notes


def bass_line(chords: list[Chord], kicks: list[MidiNote], downbeats: list[float],
              ranges: list[tuple[float, float]], rng: random.Random, *, beat: float,
              passing: float) -> list[MidiNote]:
    """The bass: a note at every chord change and downbeat (moved onto a kick hit within an
    eighth of a beat, so bass and kick sound together) and at every other kick hit, inside
    `ranges` (where the band plays) and where there is a chord. Anchors play the chord's bass
    note (the root, or a slash chord's bass); the other kick hits too, or with chance
    `passing` the fifth or the octave. A note lasts until the next, the chord's end or a bar."""
    onsets = bass_onsets(chords, kicks, downbeats, ranges, tolerance=beat / 8)
    ticks = sorted(onsets)
    notes = []
    for i, tick in enumerate(ticks):
        chord, anchor, velocity, stop = onsets[tick]
        pitch = LOWEST_BASS + (chord.bass - LOWEST_BASS) % 12
        if not anchor and rng.random() < passing:
            root = LOWEST_BASS + (chord.root - LOWEST_BASS) % 12
            fifth = (chord.root + 7) % 12 in chord.tones
            pitch = root + 7 if fifth and rng.random() < 0.5 else root + 12
        following = ticks[i + 1] if i + 1 < len(ticks) else math.inf
        end = min(following, chord.end, stop, tick + 4 * beat)
        length = max(min(end - tick - beat / 16, 0.9 * (end - tick)), beat / 8)
        notes.append(MidiNote(tick, length, pitch, velocity))
    return notes


def bass_onsets(chords: list[Chord], kicks: list[MidiNote], downbeats: list[float],
                ranges: list[tuple[float, float]], *, tolerance: float) -> dict[float, tuple]:
    """tick -> (chord, is an anchor, velocity, end of the band's range) of every bass note."""
    starts = [chord.start for chord in chords]

    def chord_at(tick: float) -> Chord | None:
        i = bisect.bisect_right(starts, tick) - 1
        return chords[i] if i >= 0 and tick < chords[i].end else None

    def range_end(tick: float) -> float | None:
        return next((hi for lo, hi in ranges if lo - tolerance <= tick < hi - tolerance), None)

    def change_near(tick: float) -> float:
        """The chord change within `tolerance` of `tick`, else `tick`: a downbeat and a change
        a hair apart (seconds from two annotation files) are one anchor."""
        i = bisect.bisect_left(starts, tick - tolerance)
        return starts[i] if i < len(starts) and starts[i] <= tick + tolerance else tick

    kicks = sorted(k for k in kicks if k.pitch in KICKS and k.velocity >= GHOST)
    kick_ticks = [k.tick for k in kicks]
    accents = {change_near(d) for d in downbeats}
    onsets, used = {}, set()
    for anchor in sorted(set(starts) | accents):
        chord, stop = chord_at(anchor), range_end(anchor)
        if chord is None or stop is None:
            continue
        i = bisect.bisect_left(kick_ticks, anchor - tolerance)
        near = [j for j in range(i, len(kicks)) if kick_ticks[j] <= anchor + tolerance]
        j = min((j for j in near if j not in used), key=lambda j: abs(kick_ticks[j] - anchor),
                default=None)
        used.add(j)
        tick = anchor if j is None else kick_ticks[j]
        onsets[tick] = (chord, True, 100 if anchor in accents else 92, stop)
        used.update(near)  # a second kick this close is a flam, not another bass note
    for j, kick in enumerate(kicks):
        chord, stop = chord_at(kick.tick), range_end(kick.tick)
        if j not in used and chord is not None and stop is not None:
            velocity = min(max(64 + kick.velocity // 4, 70), 100)
            onsets.setdefault(kick.tick, (chord, False, velocity, stop))
    ticks = sorted(onsets)
    for before, after in zip(ticks, ticks[1:]):  # two kicks a flam apart: one note
        if after - before < tolerance and before in onsets:
            del onsets[after if onsets[before][1] or not onsets[after][1] else before]
    return onsets


def timed(track):
    """(absolute tick, message) for each message of a track."""
    tick = 0
    for message in track:
        tick += message.time
        yield tick, message


class TempoMap:
    """Seconds -> ticks of a MIDI file (the annotations are in seconds of the file)."""

    def __init__(self, midi: mido.MidiFile) -> None:
        changes = sorted((tick, m.tempo) for track in midi.tracks for tick, m in timed(track)
                         if m.type == "set_tempo")
        if not changes or changes[0][0] > 0:
            changes.insert(0, (0, 500_000))
        self.per_beat = midi.ticks_per_beat
        self.ticks, self.tempos, self.seconds = [], [], []
        for tick, tempo in changes:
            self.seconds.append(self.at_tick(tick) if self.ticks else 0.0)
            self.ticks.append(tick)
            self.tempos.append(tempo)

    def at_tick(self, tick: float) -> float:
        i = bisect.bisect_right(self.ticks, tick) - 1
        return self.seconds[i] + (tick - self.ticks[i]) * self.tempos[i] / 1e6 / self.per_beat

    def tick_at(self, seconds: float) -> float:
        i = max(bisect.bisect_right(self.seconds, seconds) - 1, 0)
        return self.ticks[i] + (seconds - self.seconds[i]) * 1e6 * self.per_beat / self.tempos[i]


def band_midi(song: mido.MidiFile, drums: list[MidiNote], bass: list[MidiNote], *, shift: int,
              text: str, melody_program: int, bass_program: int) -> bytes:
    """The song's tracks (notes unchanged, delayed by `shift` ticks; the MELODY track's program
    set to the melody program; a 4/4 time signature) plus a bass and a drum track."""
    out = mido.MidiFile(type=1, ticks_per_beat=song.ticks_per_beat)
    channels = {m.channel for t in song.tracks for m in t if hasattr(m, "channel")}
    for index, track in enumerate(song.tracks):
        melody = track.name.strip().upper() == "MELODY"
        events = []
        for tick, message in timed(track):
            if message.type == "time_signature":
                continue
            if melody and message.type == "program_change":
                message = message.copy(program=melody_program)
            stays = tick == 0 and message.type != "note_on"  # tempo, name, program: at 0
            events.append((tick if stays else tick + shift, message))
        if index == 0:
            events[:0] = [(0, mido.MetaMessage("time_signature", numerator=4, denominator=4)),
                          (0, mido.MetaMessage("text", text=text))]
        out.tracks.append(_track(events))
    bass_channel = min(c for c in range(16) if c != 9 and c not in channels)
    out.tracks.append(_part(bass, channel=bass_channel, program=bass_program, name="BASS",
                            shift=shift))
    out.tracks.append(_part(drums, channel=9, program=0, name="DRUMS", shift=shift))
    buffer = io.BytesIO()
    out.save(file=buffer)
    return buffer.getvalue()


def _part(notes: list[MidiNote], *, channel: int, program: int, name: str,
          shift: int) -> mido.MidiTrack:
    """A track of `notes` (ticks rounded; a note is cut where the same pitch starts again)."""
    timeline, last_on = [], {}
    for note in sorted(notes, key=lambda n: (n.pitch, n.tick)):
        on = max(round(note.tick) + shift, 0)
        if last_on.get(note.pitch) == on:
            continue
        if note.pitch in last_on and timeline[-1][0] > on:  # the previous note of this pitch
            timeline[-1] = (on, 0, timeline[-1][2])
        last_on[note.pitch] = on
        timeline.append((on, 1, mido.Message("note_on", channel=channel, note=note.pitch,
                                             velocity=note.velocity)))
        off = max(round(note.tick + note.length) + shift, on + 1)
        timeline.append((off, 0, mido.Message("note_off", channel=channel, note=note.pitch)))
    timeline.sort(key=lambda e: (e[0], e[1], e[2].note))
    head = [(0, mido.MetaMessage("track_name", name=name)),
            (0, mido.Message("program_change", channel=channel, program=program))]
    return _track(head + [(tick, message) for tick, _, message in timeline])


def _track(events) -> mido.MidiTrack:
    track, last = mido.MidiTrack(), 0
    for tick, message in events:
        if message.type == "end_of_track":
            continue
        track.append(message.copy(time=tick - last))
        last = tick
    track.append(mido.MetaMessage("end_of_track", time=0))
    return track


__all__ = ["POP_STYLES", "Chord", "Groove", "Hit", "MidiNote", "TempoMap", "align", "band_midi",
           "bass_line", "load_grooves", "nearest", "parse_chord", "read_hits", "timed", "warp"]
