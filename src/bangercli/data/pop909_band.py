"""POP909 played by a band: derived training data for band music (issue 10, docs/pop909-band.md).

Each POP909 song whose original file is in the training split of `banger preprocess` gets
drums from a Groove MIDI human performance (a pop/rock style near the song's tempo, from a
training-split Groove file) time-warped onto the song's annotated beats, a one-bar Groove
fill at the end of every 8-bar phrase, and a bass line from the chord annotations locked to
the kick (band_parts.py). The piano tracks are kept note for note; the melody moves to a
synth lead. Everything is deterministic: sorted file listings and one random generator per
song, seeded with its number, so the same inputs give byte-identical files.
"""

from __future__ import annotations

import bisect
import csv
import hashlib
import io
import math
import os
import random
import shutil
import statistics
import time
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable

import mido

from ..errors import DataError, OutputExistsError
from .band_parts import CRASH, CYMBALS, KICK, KICKS, Chord, Groove, MidiNote, TempoMap, \
    band_midi, bass_line, load_grooves, nearest, parse_chord, timed, warp
from .preprocess import PreprocessOptions, split_of

SOURCE = "pop909band"  # the output folder, and the source name data mixes and reports see
NOTICE = "NOTICE.md"
NOTICE_TITLE = "# pop909band: POP909 songs arranged for a band"
PARTS = ("melody", "piano", "bass", "drums")


@dataclass(frozen=True)
class BandOptions:
    val_fraction: float = PreprocessOptions().val_fraction  # preprocess's split: train files only
    melody_program: int = 81  # GM program of the MELODY track (81 saw lead; 0 keeps the piano)
    bass_program: int = 33  # GM program of the bass (33 electric bass, finger)
    tempo_choices: int = 5  # a song's groove: one of this many performances nearest its tempo
    min_groove_bars: int = 4  # shorter Groove performances are not looped as a song's beat
    min_backbeat: float = 0.6  # a beat performance needs this share of its snare on 2 and 4,
    min_kick_on_one: float = 0.15  # this share of its kick on 1,
    kicks_per_bar: tuple[float, float] = (1.0, 5.0)  # and this many kicks a bar: a pop groove
    phrase_bars: int = 8  # a Groove fill ends every phrase of this many bars (0: no fills)
    passing: float = 0.25  # share of the extra kick hits where the bass plays a fifth or octave
    max_irregular: float = 0.15  # skip a song when a larger share of its bars are not 4 beats
    align_bars: bool = True  # delay a song (under a bar): its first downbeat on a bar line
    training_only: bool = True  # vary the provenance text until a file hashes into training


class SongSkipped(DataError):
    """A song that cannot be arranged; `reason` is the short reason reports count."""

    def __init__(self, reason: str, detail: str = "") -> None:
        super().__init__(f"{reason}: {detail}" if detail else reason)
        self.reason = reason


@dataclass
class Arrangement:
    midi: bytes  # the Standard MIDI File
    groove: str  # the Groove MIDI performance of the beat (path in the groove folder)
    fills: list[str]  # the fill clips used, in order
    notes: dict[str, int]  # notes per part: melody, piano, bass, drums
    shift: int  # ticks the song was delayed to put its first downbeat on a bar line
    variant: int  # provenance-text variant that put the file in the training split


@dataclass
class BandReport:
    out: Path
    arranged: int = 0
    skipped: Counter = field(default_factory=Counter)  # reason -> songs
    skipped_songs: list[tuple[str, str]] = field(default_factory=list)  # (song, reason: detail)
    notes: Counter = field(default_factory=Counter)  # part -> notes over all songs
    grooves: int = 0  # training-split Groove performances that can be a song's beat
    fills: int = 0  # training-split one-bar fill clips
    seconds: float = 0.0


def read_beats(text: str, tempo: TempoMap, *, max_irregular: float):
    """(beat ticks, bars as (first beat index, beats), song bpm) of a beat_midi.txt: one line
    per quarter note, time in seconds, then two flags (the second marks a downbeat). The beat
    ticks run 8 beats past the last one, at its length, so a last bar can be warped onto."""
    seconds, down = [], []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                time_s, _, is_down = map(float, line.split()[:3])
            except ValueError:
                raise SongSkipped("bad annotations", f"beat_midi.txt line {number}") from None
            seconds.append(time_s)
            down.append(is_down == 1)
    if len(seconds) < 8 or not all(a < b for a, b in zip(seconds, seconds[1:])) \
            or not all(map(math.isfinite, seconds)):
        raise SongSkipped("bad annotations", "fewer than 8 beats, or beat times not increasing")
    firsts = [i for i, flag in enumerate(down) if flag]
    if len(firsts) < 2:
        raise SongSkipped("bad annotations", "fewer than 2 downbeats")
    lengths = [b - a for a, b in zip(firsts, firsts[1:])]
    irregular = sum(n != 4 for n in lengths)
    if Counter(lengths).most_common(1)[0][0] != 4 or irregular > max_irregular * len(lengths):
        raise SongSkipped("odd meter", f"{irregular} of {len(lengths)} bars are not 4 beats")
    bars = list(zip(firsts, lengths)) + [(firsts[-1], min(4, len(seconds) - firsts[-1]))]
    ticks = [tempo.tick_at(s) for s in seconds]
    ticks += [ticks[-1] + k * (ticks[-1] - ticks[-2]) for k in range(1, 9)]
    return ticks, bars, 60 / statistics.median(b - a for a, b in zip(seconds, seconds[1:]))


def read_chords(text: str, tempo: TempoMap) -> list[Chord]:
    """The chords of a chord_midi.txt (start, end in seconds, label), "N" left out."""
    chords = []
    for number, line in enumerate(text.splitlines(), 1):
        if line.strip():
            try:
                start, end, label = line.split()[:3]
                parsed = parse_chord(label)
                start, end = float(start), float(end)
                if not math.isfinite(start) or not math.isfinite(end):
                    raise ValueError(line)
            except ValueError:
                raise SongSkipped("bad annotations", f"chord_midi.txt line {number}") from None
            start, end = tempo.tick_at(start), tempo.tick_at(end)
            if parsed and end > start:
                chords.append(Chord(start, end, *parsed))
    return sorted(chords)


def drum_part(beats, bars, onsets, *, groove: Groove, fills: list[Groove], phrase_start: int,
              bpm: float, rng: random.Random, options: BandOptions):
    """(drum notes, fill clips used, tick ranges where the band plays). The drums play the
    bars (from the first downbeat) where a note of the song starts before the bar's last beat
    (a pickup alone does not start the band), looping the groove's bars; the last bar of each
    phrase from `phrase_start` is a fill clip, followed by a crash; the song's last bar that
    plays gets one crash and kick on its downbeat, an ending."""
    early = (beats[1] - beats[0]) / 8
    playing = [bisect.bisect_left(onsets, beats[first] - early)
               < bisect.bisect_left(onsets, beats[first + max(n - 1, 1)] - early)
               for first, n in bars]
    last = max((j for j, plays in enumerate(playing) if plays), default=-1)
    notes, used, landings, counter = [], [], [], 0
    for j, (first, n) in enumerate(bars):
        if not playing[j]:
            continue
        if j == last:
            landings.append(beats[first])
            continue
        phrase = options.phrase_bars
        phrase_end = phrase and j >= phrase_start and (j - phrase_start) % phrase == phrase - 1
        if fills and phrase_end and n == 4 and j + 1 < len(bars) and playing[j + 1]:
            same = [f for f in fills if f.drummer == groove.drummer]
            clip = nearest(same or fills, bpm, rng, choices=3)
            notes += warp(clip.bar(0), beats, first)
            used.append(clip.path)
            landings.append(beats[bars[j + 1][0]])
            counter += 1
            continue
        for offset in range(0, n, 4):  # a 6-beat bar: one groove bar, then two beats of the next
            hits = groove.bar(counter % groove.bars, beats=min(4, n - offset))
            notes += warp(hits, beats, first + offset)
            counter += 1
    tolerance = early
    for tick in landings:  # the crash and kick that land a fill, or end the song
        for sounds, pitch in ((CYMBALS, CRASH), (KICKS, KICK)):
            if not any(n.pitch in sounds and abs(n.tick - tick) <= tolerance for n in notes):
                notes.append(MidiNote(tick, beats[1] - beats[0], pitch, 110))
    ranges = []
    for j, (first, n) in enumerate(bars):
        if playing[j]:
            lo, hi = beats[first], beats[first + n]
            if ranges and ranges[-1][1] >= lo:
                ranges[-1] = (ranges[-1][0], hi)
            else:
                ranges.append((lo, hi))
    return sorted(notes), used, ranges


def arrange_song(midi: bytes, beats: str, chords: str, *, number: int, grooves: list[Groove],
                 options: BandOptions = BandOptions()) -> Arrangement:
    """Arrange one POP909 song (its MIDI bytes and the text of its beat_midi.txt and
    chord_midi.txt) with drums drawn from `grooves` (see `load_grooves`). Raises SongSkipped."""
    if split_of(hashlib.sha256(midi).hexdigest(), options.val_fraction) != "train":
        raise SongSkipped("validation split", "the original is held out by `banger preprocess`")
    beat_grooves = [g for g in grooves if pop_groove(g, options)]
    if not beat_grooves:
        raise DataError("no Groove MIDI beat performance to draw drums from")
    try:
        song = mido.MidiFile(file=io.BytesIO(midi))
    except (OSError, ValueError, EOFError, KeyError, IndexError) as err:
        raise SongSkipped("unreadable", str(err)) from None
    tempo = TempoMap(song)
    beat_ticks, bars, bpm = read_beats(beats, tempo, max_irregular=options.max_irregular)
    chord_list = read_chords(chords, tempo)
    melody = next((t for t in song.tracks if t.name.strip().upper() == "MELODY"), None)
    onsets = sorted(t for track in song.tracks for t in note_onsets(track))
    if not onsets:
        raise SongSkipped("no notes")
    sung = note_onsets(melody) if melody else []
    tune = sung or onsets
    rng = random.Random(number)
    groove = nearest(beat_grooves, bpm, rng, choices=options.tempo_choices)
    starts = [beat_ticks[first] for first, _ in bars]
    entry = max(bisect.bisect_right(starts, tune[0]) - 1, 0)  # the bar the tune starts in ...
    if tune[0] - starts[entry] >= 2 * (beat_ticks[1] - beat_ticks[0]):
        entry += 1  # ... or the next one, after a pickup
    drums, used, ranges = drum_part(beat_ticks, bars, onsets, groove=groove, bpm=bpm, rng=rng,
                                    fills=[g for g in grooves if g.one_bar_fill],
                                    phrase_start=entry, options=options)
    bass = bass_line(chord_list, drums, starts, ranges, rng, beat=song.ticks_per_beat,
                     passing=options.passing)
    bar = 4 * song.ticks_per_beat
    shift = round(-starts[0] % bar) if options.align_bars else 0
    if bar - shift < song.ticks_per_beat / 16:  # the first downbeat already sits on a bar line
        shift = 0
    text = f"{SOURCE} {number:03d}: POP909 {number:03d}.mid, drums from Groove MIDI {groove.path}"
    data, variant = training_file(song, drums, bass, shift=shift, text=text, options=options)
    parts = {"melody": len(sung), "bass": len(bass), "drums": len(drums),
             "piano": sum(len(note_onsets(t)) for t in song.tracks if t is not melody)}
    return Arrangement(data, groove.path, used, parts, shift, variant)


def pop_groove(groove: Groove, options: BandOptions) -> bool:
    """Whether a performance can be a song's beat: long enough, a backbeat, a kick on one."""
    low, high = options.kicks_per_bar
    return (not groove.fill and groove.bars >= options.min_groove_bars
            and groove.backbeat >= options.min_backbeat
            and groove.kick_on_one >= options.min_kick_on_one
            and low <= groove.kicks_per_bar <= high)


def note_onsets(track) -> list[int]:
    return [tick for tick, m in timed(track) if m.type == "note_on" and m.velocity]


def training_file(song, drums, bass, *, shift: int, text: str, options: BandOptions):
    """(file bytes, variant): the file with the provenance text `text`, or `text (1)`, `text (2)`
    ..., the first whose content hash `banger preprocess` puts in the training split (with
    `training_only`): a band version of a training song would otherwise land in validation
    one time in ten and make the validation loss measure music seen in training."""
    for variant in range(200):
        data = band_midi(song, drums, bass, shift=shift,
                         text=text + (f" ({variant})" if variant else ""),
                         melody_program=options.melody_program, bass_program=options.bass_program)
        digest = hashlib.sha256(data).hexdigest()
        if not options.training_only or split_of(digest, options.val_fraction) == "train":
            return data, variant
    raise DataError(f"no variant of {text!r} hashes into the training split",
                    hint="is --val-fraction near 1?")


def arrange_pop909(corpus: str | os.PathLike, out: str | os.PathLike, *,
                   options: BandOptions = BandOptions(), force: bool = False,
                   progress: Callable[[int, int], None] | None = None) -> BandReport:
    """Arrange every song of `corpus`/pop909 (annotations in pop909-annotations/NNN/, drums
    from groove/) into `out`/pop909band/NNN.mid, with NOTICE.md (the licences) and
    arrangements.csv (what each file was made from). Songs that cannot be arranged are
    skipped and counted in the report. The folder is built aside and renamed into place."""
    corpus, out = Path(corpus), Path(out)
    started = time.perf_counter()
    licences = source_licences(corpus)
    target = out / SOURCE
    check_target(target, force=force)
    grooves = load_grooves(corpus / "groove", val_fraction=options.val_fraction)
    report = BandReport(out=target, grooves=sum(pop_groove(g, options) for g in grooves),
                        fills=sum(g.one_bar_fill for g in grooves))
    songs = sorted((corpus / "pop909").glob("*.mid"))
    staging = out / f".{SOURCE}.partial-{os.getpid()}"
    shutil.rmtree(staging, ignore_errors=True)
    staging.mkdir(parents=True)
    try:
        rows = []
        for done, path in enumerate(songs, 1):
            try:
                song = arrange_file(path, corpus / "pop909-annotations" / path.stem,
                                    grooves=grooves, options=options)
            except SongSkipped as err:
                report.skipped[err.reason] += 1
                report.skipped_songs.append((path.stem, str(err)))
            else:
                (staging / path.name).write_bytes(song.midi)
                report.arranged += 1
                report.notes.update(song.notes)
                rows.append([path.name, song.groove, " ".join(song.fills), song.shift,
                             song.variant, *(song.notes[part] for part in PARTS)])
            if progress:
                progress(done, len(songs))
        with open(staging / "arrangements.csv", "w", newline="", encoding="utf-8") as handle:
            writer = csv.writer(handle)
            writer.writerow(["file", "groove", "fills", "shift_ticks", "variant", *PARTS])
            writer.writerows(rows)
        text = notice(licences["pop909"], licences["groove"], options)
        (staging / NOTICE).write_text(text, encoding="utf-8")
        if target.exists():
            shutil.rmtree(target)
        os.replace(staging, target)
    finally:
        shutil.rmtree(staging, ignore_errors=True)
    report.seconds = time.perf_counter() - started
    return report


def arrange_file(path: Path, annotations: Path, *, grooves: list[Groove],
                 options: BandOptions) -> Arrangement:
    """`arrange_song` of a song file and its annotation folder."""
    if not path.stem.isdigit():
        raise SongSkipped("not a POP909 song", path.name)
    try:
        beats, chords = ((annotations / name).read_text(encoding="utf-8")
                         for name in ("beat_midi.txt", "chord_midi.txt"))
    except (OSError, UnicodeDecodeError) as err:
        raise SongSkipped("missing annotations", str(err)) from None
    return arrange_song(path.read_bytes(), beats, chords, number=int(path.stem),
                        grooves=grooves, options=options)


def source_licences(corpus: Path) -> dict[str, str]:
    """The licence texts of pop909/ and groove/, which the output must carry."""
    for folder in ("pop909", "pop909-annotations", "groove"):
        if not (corpus / folder).is_dir():
            raise DataError(f"{corpus / folder} is missing",
                            hint="pass the corpus folder (../shared/midi)")
    try:
        return {folder: (corpus / folder / "LICENSE").read_text(encoding="utf-8")
                for folder in ("pop909", "groove")}
    except OSError as err:
        raise DataError(f"cannot read a licence: {err}",
                        hint="the output must carry the sources' licence texts") from None


def check_target(target: Path, *, force: bool) -> None:
    """Refuse to replace an output folder without `force`, or one this module did not write."""
    if target.exists() and any(target.iterdir()):
        if not force:
            raise OutputExistsError(f"{target} already exists", hint="pass --force to replace it")
        notice_file = target / NOTICE
        if not notice_file.is_file() or not notice_file.read_text("utf-8").startswith(NOTICE_TITLE):
            raise OutputExistsError(f"{target} holds files this script did not write",
                                    hint="--force replaces only its own output")


def notice(pop909_licence: str, groove_licence: str, options: BandOptions) -> str:
    """NOTICE.md of the output folder: the sources, their licences, what was changed."""
    def indent(text: str) -> str:
        return "\n".join(f"    {line}".rstrip() for line in text.strip().splitlines())

    return f"""{NOTICE_TITLE}

Derived MIDI files made by bangercli's `scripts/pop909_band.py` (docs/pop909-band.md) from two
openly licensed data sets. Anything made from these files (a data set, trained model weights)
must keep the notices below.

Changes: each POP909 song keeps its piano tracks note for note (the whole song delayed by less
than a bar so its first downbeat falls on a bar line) and its MELODY track plays on General
MIDI program {options.melody_program}; a bass line was written from the song's chord annotations;
the drums are Groove MIDI performances cut into bars, time-warped onto the song's annotated
beats and mapped to General MIDI drum sounds. arrangements.csv names the Groove files each
song uses, and each file's text event names its sources.

## POP909 — MIT

Source: https://github.com/music-x-lab/POP909-Dataset (commit d83e6edb), songs and annotations.
Wang, Z. et al. "POP909: A Pop-song Dataset for Music Arrangement Generation", ISMIR 2020.

{indent(pop909_licence)}

## Groove MIDI Dataset — CC-BY-4.0

Source: https://magenta.tensorflow.org/datasets/groove (copy in
https://github.com/zharry29/drums-with-llm, commit 476adbc9, `groove/`).
Gillick, J., Roberts, A., Engel, J., Eck, D., Bamman, D. "Learning to Groove with Inverse
Sequence Transformations", ICML 2019. The drum parts here are an adaptation of this material
(see Changes); no endorsement by the authors is implied.

{indent(groove_licence)}
"""


__all__ = ["Arrangement", "BandOptions", "BandReport", "SongSkipped", "arrange_pop909",
           "arrange_song"]
