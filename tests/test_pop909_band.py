"""POP909 arranged as a band (data/pop909_band.py, data/band_parts.py), on tiny songs, beat and
chord annotations and Groove-style drum files built here; one test arranges real songs when
the corpus is at ../shared/midi."""

from __future__ import annotations

import hashlib
import io
from pathlib import Path

import mido
import pytest

from bangercli.data.band_parts import load_grooves, parse_chord, timed
from bangercli.data.pop909_band import BandOptions, SongSkipped, arrange_pop909, arrange_song
from bangercli.data.preprocess import split_of
from bangercli.errors import OutputExistsError

from conftest import CORPUS

TPB = 480
TEMPO = 500_000  # 0.5 s a quarter note: 960 ticks a second
PER_SECOND = TPB * 1e6 / TEMPO
CHORDS = ["C:maj", "A:min", "F:maj/3", "G:7"]  # one a bar, round and round
KICK_BEATS, SNARE_BEATS = (0, 2), (1, 3)
POP909_LICENSE = "MIT License\n\nCopyright (c) 2020 Music X Lab (test copy)\n"
GROOVE_LICENSE = "This work is licensed under the Creative Commons Attribution 4.0 (test copy)\n"


def split(data: bytes, fraction: float = 0.1) -> str:
    return split_of(hashlib.sha256(data).hexdigest(), fraction)


def in_split(make, wanted: str, fraction: float = 0.1) -> bytes:
    """The first of make(0), make(1), ... that `banger preprocess` puts in split `wanted`."""
    return next(data for salt in range(1000) if split(data := make(salt), fraction) == wanted)


def beat_seconds(bars: int, *, beats_per_bar: int = 4) -> list[float]:
    """Irregular beats (rubato): a quarter note lasts 0.45, 0.5, 0.55 or 0.6 s in turn."""
    times, now = [], 0.1
    for k in range(bars * beats_per_bar):
        times.append(round(now, 6))
        now += (0.45, 0.5, 0.55, 0.6)[k % 4]
    return times


def beat_text(times: list[float], *, beats_per_bar: int = 4) -> str:
    return "".join(f"{t} {float(k % 2 == 0)} {float(k % beats_per_bar == 0)}\n"
                   for k, t in enumerate(times))


def chord_text(times: list[float]) -> str:
    bars = [times[i:i + 4] for i in range(0, len(times), 4)]
    ends = [bar[0] for bar in bars[1:]] + [times[-1] + 0.5]
    return "".join(f"{bar[0]:.6f}\t{end:.6f}\t{CHORDS[i % 4]}\n"
                   for i, (bar, end) in enumerate(zip(bars, ends)))


def song_midi(times: list[float], *, salt: int = 0) -> bytes:
    """A POP909-like file: conductor track, MELODY, BRIDGE and PIANO (all program 0), a note
    on every beat (melody), every other beat (bridge) and a chord every bar (piano)."""
    midi = mido.MidiFile(type=1, ticks_per_beat=TPB)
    ticks = [round(t * PER_SECOND) for t in times]
    conductor = [(0, mido.MetaMessage("set_tempo", tempo=TEMPO)),
                 (0, mido.MetaMessage("time_signature", numerator=2, denominator=4)),
                 (0, mido.MetaMessage("text", text=f"salt {salt}"))]
    melody = [(t, 72 + k % 5, 90) for k, t in enumerate(ticks)]
    bridge = [(t, 64, 70) for t in ticks[::2]]
    piano = [(t, p, 60) for t in ticks[::4] for p in (48, 55, 60)]
    midi.tracks.append(build_track(conductor))
    parts = (("MELODY", melody), ("BRIDGE", bridge), ("PIANO", piano))
    for channel, (name, notes) in enumerate(parts):
        events = [(0, mido.MetaMessage("track_name", name=name)),
                  (0, mido.Message("program_change", channel=channel, program=0))]
        for tick, pitch, velocity in notes:
            on = mido.Message("note_on", channel=channel, note=pitch, velocity=velocity)
            events += [(tick, on), (tick + 200, on.copy(velocity=0))]
        midi.tracks.append(build_track(sorted(events, key=lambda e: e[0])))
    return to_bytes(midi)


def groove_midi(hits: list[tuple[float, int, int]], *, salt: int = 0) -> bytes:
    """A Groove MIDI-like drum file: (beat, pitch, velocity) hits on channel 10."""
    events = [(0, mido.MetaMessage("set_tempo", tempo=600_000)),
              (0, mido.MetaMessage("text", text=f"salt {salt}"))]
    for beat, pitch, velocity in hits:
        tick = round(beat * TPB)
        events += [(tick, mido.Message("note_on", channel=9, note=pitch, velocity=velocity)),
                   (tick + 40, mido.Message("note_off", channel=9, note=pitch))]
    midi = mido.MidiFile(type=0, ticks_per_beat=TPB)
    midi.tracks.append(build_track(sorted(events, key=lambda e: e[0])))
    return to_bytes(midi)


def rock_beat(bars: int = 4) -> list[tuple[float, int, int]]:
    """Kick on 1 and 3, snare on 2 and 4, closed hi-hat (the kit's edge sound 22) on eighths."""
    hits = []
    for bar in range(bars):
        for k in range(8):
            beat = 4 * bar + k / 2
            hits.append((beat, 22, 70))
            if k % 2 == 0 and k // 2 in KICK_BEATS:
                hits.append((beat, 36, 100))
            if k % 2 == 0 and k // 2 in SNARE_BEATS:
                hits.append((beat, 38, 110))
    return hits


def build_track(events) -> mido.MidiTrack:
    track, last = mido.MidiTrack(), 0
    for tick, message in events:
        track.append(message.copy(time=tick - last))
        last = tick
    return track


def to_bytes(midi: mido.MidiFile) -> bytes:
    buffer = io.BytesIO()
    midi.save(file=buffer)
    return buffer.getvalue()


def notes_of(track) -> list[tuple[int, int, int, int]]:
    """(onset, channel, pitch, velocity) of a track's notes."""
    return [(t, m.channel, m.note, m.velocity) for t, m in timed(track)
            if m.type == "note_on" and m.velocity]


def tracks(data: bytes) -> dict[str, mido.MidiTrack]:
    midi = mido.MidiFile(file=io.BytesIO(data))
    return {track.name: track for track in midi.tracks}


@pytest.fixture
def corpus(tmp_path) -> Path:
    """A corpus folder like ../shared/midi: three training songs, one held-out song, one song in
    3/4, one with a broken beat file and one without annotations; a beat, a fill and a
    held-out beat in groove/."""
    root = tmp_path / "midi"
    (root / "pop909").mkdir(parents=True)
    (root / "pop909" / "LICENSE").write_text(POP909_LICENSE)
    times = beat_seconds(10)
    for number in range(1, 8):
        wanted = "validation" if number == 3 else "train"
        song = in_split(lambda s: song_midi(times, salt=number * 1000 + s), wanted)
        (root / "pop909" / f"{number:03d}.mid").write_bytes(song)
        if number == 7:
            continue  # no annotations
        notes = root / "pop909-annotations" / f"{number:03d}"
        notes.mkdir(parents=True)
        waltz = beat_text(beat_seconds(12, beats_per_bar=3), beats_per_bar=3)
        broken = beat_text(times).replace("0.0 0.0", "zero 0.0", 1)
        beats = {5: waltz, 6: broken}.get(number, beat_text(times))
        (notes / "beat_midi.txt").write_text(beats)
        (notes / "chord_midi.txt").write_text(chord_text(times))
    session = root / "groove" / "drummer1" / "session1"
    session.mkdir(parents=True)
    (root / "groove" / "LICENSE").write_text(GROOVE_LICENSE)
    (session / "1_rock_100_beat_4-4.mid").write_bytes(
        in_split(lambda s: groove_midi(rock_beat(), salt=s), "train"))
    held_out = [(beat, 43 if pitch == 38 else pitch, velocity)  # toms for the snare
                for beat, pitch, velocity in rock_beat()]
    (session / "2_rock_100_beat_4-4.mid").write_bytes(
        in_split(lambda s: groove_midi(held_out, salt=s), "validation"))
    fill = [(0, 38, 100), (1, 45, 100), (2, 47, 100), (3, 50, 100), (3.5, 50, 100)]
    (session / "3_rock_100_fill_4-4.mid").write_bytes(
        in_split(lambda s: groove_midi(fill, salt=s), "train"))
    return root


def arrange(corpus: Path, number: int, **changes):
    read = (corpus / "pop909-annotations" / f"{number:03d}").joinpath
    return arrange_song((corpus / "pop909" / f"{number:03d}.mid").read_bytes(),
                        read("beat_midi.txt").read_text(), read("chord_midi.txt").read_text(),
                        number=number, grooves=load_grooves(corpus / "groove"),
                        options=BandOptions(**changes))


def test_only_training_grooves_are_drawn_from(corpus):
    grooves = {g.path: g for g in load_grooves(corpus / "groove")}
    assert set(grooves) == {"drummer1/session1/1_rock_100_beat_4-4.mid",
                            "drummer1/session1/3_rock_100_fill_4-4.mid"}
    beat = grooves["drummer1/session1/1_rock_100_beat_4-4.mid"]
    assert (beat.bars, beat.backbeat, beat.style, beat.fill) == (4, 1.0, "rock", False)
    assert {hit.pitch for hit in beat.hits} == {36, 38, 42}  # 22 mapped to the GM closed hi-hat
    for path in (corpus / "groove").rglob("*.mid"):
        drawn = path.relative_to(corpus / "groove").as_posix() in grooves
        assert drawn == (split(path.read_bytes()) == "train")


def test_held_out_songs_are_not_arranged_and_outputs_are_training_files(corpus):
    with pytest.raises(SongSkipped) as caught:
        arrange(corpus, 3)
    assert caught.value.reason == "validation split"
    for number in (1, 2, 4):
        assert split(arrange(corpus, number).midi) == "train"  # not even by chance in validation
    fraction = 0.5  # another split: the songs it holds out are refused
    for number in (1, 2, 4):
        original = (corpus / "pop909" / f"{number:03d}.mid").read_bytes()
        if split(original, fraction) == "validation":
            with pytest.raises(SongSkipped):
                arrange(corpus, number, val_fraction=fraction)
        else:
            assert split(arrange(corpus, number, val_fraction=fraction).midi, fraction) == "train"


def test_an_output_that_would_land_in_validation_gets_another_provenance_text(corpus):
    times, grooves = beat_seconds(10), load_grooves(corpus / "groove")
    half = {"val_fraction": 0.5}  # more files held out: a clash comes soon

    def arranged(song: bytes, **changes):
        return arrange_song(song, beat_text(times), chord_text(times), number=1, grooves=grooves,
                            options=BandOptions(**half, **changes))

    def notes(data: bytes) -> dict:
        return {name: notes_of(track) for name, track in tracks(data).items()}

    songs = (song for s in range(200) if split(song := song_midi(times, salt=s), 0.5) == "train")
    song, plain = next((song, plain) for song in songs
                       if split((plain := arranged(song, training_only=False)).midi, 0.5)
                       == "validation")
    kept = arranged(song)
    assert kept.variant >= 1 and split(kept.midi, 0.5) == "train"
    assert notes(kept.midi) == notes(plain.midi)


def test_the_same_inputs_give_the_same_bytes(corpus, tmp_path):
    first, second = arrange(corpus, 1), arrange(corpus, 1)
    assert first.midi == second.midi
    assert arrange(corpus, 2).midi != first.midi  # another seed, another song
    arrange_pop909(corpus, tmp_path / "a")
    arrange_pop909(corpus, tmp_path / "b")
    a, b = tmp_path / "a" / "pop909band", tmp_path / "b" / "pop909band"
    names = sorted(p.name for p in a.iterdir())
    assert names == sorted(p.name for p in b.iterdir())
    for name in names:
        assert (a / name).read_bytes() == (b / name).read_bytes()


def test_drums_are_warped_onto_the_annotated_beats(corpus):
    times = beat_seconds(10)
    beat_ticks = [t * PER_SECOND for t in times]
    drums = tracks(arrange(corpus, 1, align_bars=False, phrase_bars=0).midi)["DRUMS"]
    hits = notes_of(drums)
    assert {channel for _, channel, _, _ in hits} == {9}
    played = {(tick, pitch) for tick, _, pitch, _ in hits}
    for bar in range(9):  # the tenth bar is the ending: one crash and kick on its downbeat
        for beat in range(4):
            tick = round(beat_ticks[4 * bar + beat])
            assert (tick, 36 if beat in KICK_BEATS else 38) in played
            assert (tick, 42) in played
            half = round((beat_ticks[4 * bar + beat] + beat_ticks[4 * bar + beat + 1]) / 2)
            assert (half, 42) in played  # the off-beat eighth at the middle of a stretched beat
    assert sorted(p for t, p in played if t >= round(beat_ticks[36])) == [36, 49]
    assert len(hits) == 9 * (8 + 2 + 2) + 2


def test_bass_plays_chord_tones_on_the_kick(corpus):
    times = beat_seconds(10)
    result = arrange(corpus, 1, align_bars=False, phrase_bars=0)
    parts = tracks(result.midi)
    bass, kicks = notes_of(parts["BASS"]), {t for t, _, p, _ in notes_of(parts["DRUMS"]) if p == 36}
    assert len(bass) == result.notes["bass"] >= 2 * 9
    bar_ticks = [round(t * PER_SECOND) for t in times[::4]]
    for tick, channel, pitch, _ in bass:
        assert channel not in (0, 1, 2, 9) and 28 <= pitch < 52
        bar = max(i for i, start in enumerate(bar_ticks) if start <= tick)
        root, tones, low = parse_chord(CHORDS[bar % 4])
        assert pitch % 12 in tones
        if tick == bar_ticks[bar]:
            assert pitch % 12 == low  # the downbeat plays the chord's bass note (F:maj/3: A)
    on_kick = sum(tick in kicks for tick, *_ in bass)
    assert on_kick >= 0.9 * len(bass)
    assert all(any(tick == k for tick, *_ in bass) for k in kicks)  # every kick has its bass note


def test_the_piano_is_kept_note_for_note(corpus):
    original = tracks((corpus / "pop909" / "001.mid").read_bytes())
    result = arrange(corpus, 1)
    arranged = tracks(result.midi)
    assert result.shift > 0
    for name in ("MELODY", "BRIDGE", "PIANO"):
        moved = [(t + result.shift, *rest) for t, *rest in notes_of(original[name])]
        assert notes_of(arranged[name]) == moved
    programs = {t.name: m.program for t in arranged.values() for m in t
                if m.type == "program_change"}
    assert programs == {"MELODY": 81, "BRIDGE": 0, "PIANO": 0, "BASS": 33, "DRUMS": 0}
    first_downbeat = round(beat_seconds(10)[0] * PER_SECOND) + result.shift
    assert first_downbeat % (4 * TPB) == 0  # the song's bars are the grid's bars


def test_fills_end_each_phrase(corpus):
    hits = notes_of(tracks(arrange(corpus, 1, align_bars=False).midi)["DRUMS"])
    bar_ticks = [round(t * PER_SECOND) for t in beat_seconds(10)[::4]]
    toms = {max(i for i, s in enumerate(bar_ticks) if s <= t)
            for t, _, p, _ in hits if p in (45, 47, 50)}
    assert toms == {7}  # the melody starts in bar 0: bars 0-7 are a phrase
    assert any(t == bar_ticks[8] and p == 49 for t, _, p, _ in hits)  # the crash that lands it


def test_a_run_skips_and_reports_what_it_cannot_arrange(corpus, tmp_path):
    report = arrange_pop909(corpus, tmp_path)
    assert report.arranged == 3
    assert dict(report.skipped) == {"validation split": 1, "odd meter": 1, "bad annotations": 1,
                                    "missing annotations": 1}
    assert [song for song, _ in report.skipped_songs] == ["003", "005", "006", "007"]
    folder = tmp_path / "pop909band"
    assert sorted(p.name for p in folder.glob("*.mid")) == ["001.mid", "002.mid", "004.mid"]
    notice = (folder / "NOTICE.md").read_text()
    assert POP909_LICENSE.strip().splitlines()[-1] in notice and GROOVE_LICENSE.strip() in notice
    assert "MIT" in notice and "CC-BY-4.0" in notice
    assert "drummer1/session1/1_rock_100_beat_4-4.mid" in (folder / "arrangements.csv").read_text()
    assert report.notes["drums"] > 0 and report.notes["bass"] > 0
    with pytest.raises(OutputExistsError):
        arrange_pop909(corpus, tmp_path)
    assert arrange_pop909(corpus, tmp_path, force=True).arranged == 3


@pytest.mark.parametrize("beats, chords", [
    ("0.1 1.0 1.0\nnan 0.0 0.0\n", None),  # a beat that is not a time
    (None, "0.1 2.0 C:maj\n2.0 4.0 H:min\n"),  # no such note name
    (None, "0.1 2.0 C:maj/x\n"),  # no such bass degree
    (None, "0.1 inf C:maj\n"),
    ("".join(f"{t} 1.0 {float(k % 8 == 0)}\n" for k, t in enumerate(beat_seconds(6))), None),  # 8/4
])
def test_bad_annotations_are_refused(corpus, beats, chords):
    times = beat_seconds(10)
    with pytest.raises(SongSkipped) as caught:
        arrange_song((corpus / "pop909" / "001.mid").read_bytes(), beats or beat_text(times),
                     chords or chord_text(times), number=1, grooves=load_grooves(corpus / "groove"))
    assert caught.value.reason in ("bad annotations", "odd meter")


@pytest.mark.corpus
def test_real_songs(tmp_path):
    if not (CORPUS / "pop909-annotations").is_dir() or not (CORPUS / "groove").is_dir():
        pytest.skip(f"the real corpus is not at {CORPUS}")
    # one drummer's soul and soft-pop takes (41 files): the whole groove folder takes seconds
    grooves = load_grooves(CORPUS / "groove" / "drummer7", styles=("soul", "pop-soft"))
    arranged = 0
    for number in (1, 2, 3):
        read = (CORPUS / "pop909-annotations" / f"{number:03d}").joinpath
        original = (CORPUS / "pop909" / f"{number:03d}.mid").read_bytes()
        if split(original) != "train":
            continue
        result = arrange_song(original, read("beat_midi.txt").read_text(),
                              read("chord_midi.txt").read_text(), number=number, grooves=grooves)
        parts = tracks(result.midi)
        assert set(parts) >= {"MELODY", "BRIDGE", "PIANO", "BASS", "DRUMS"}
        assert result.notes["drums"] > 200 and result.notes["bass"] > 50
        kicks = {t for t, _, p, _ in notes_of(parts["DRUMS"]) if p in (35, 36)}
        assert sum(t in kicks for t, *_ in notes_of(parts["BASS"])) >= 0.6 * result.notes["bass"]
        arranged += 1
    assert arranged >= 2
