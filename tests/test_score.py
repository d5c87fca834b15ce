"""The MIDI reader: what `read_score` makes of well-formed files of every shape, and that
broken bytes always end as a MidiReadError, quickly."""

from __future__ import annotations

import io
import random
import time

import mido
import pytest
from hypothesis import given
from hypothesis import strategies as st

from bangercli.errors import BangerError, MidiReadError
from bangercli.midi.midifile import read_score
from bangercli.midi.score import Grid, Note
from bangercli.midi.tokenizer import Tokenizer
from conftest import corpus_files
from midi_fixtures import (
    END_OF_TRACK,
    TPB,
    band,
    merged,
    midi_file,
    mtrk,
    note,
    note_ons_via_mido,
    notes_via_mido,
    program,
    save,
    smf,
    tempo,
    to_bytes,
    track,
    vlq,
)

GRID = Grid()
STEP = TPB // 8  # ticks per grid step in the fixtures


def read(midi) -> list[Note]:
    source = to_bytes(midi) if isinstance(midi, mido.MidiFile) else midi
    return read_score(source, GRID).notes


# --- well-formed files -------------------------------------------------------------------


def test_multitrack_type1_reads_every_part_with_its_category():
    midi = band(1)
    notes = read(midi)
    counts = {}
    for n in notes:
        counts[n.instrument] = counts.get(n.instrument, 0) + 1
    assert counts == {0: 32, 4: 8, 11: 16}  # piano melody, bass (program 33), drums
    assert notes == notes_via_mido(midi)
    bass = sorted(n for n in notes if n.instrument == 4)
    assert [n.start for n in bass] == [16 * i for i in range(8)]
    assert {n.duration for n in bass} == {16}


def test_type0_reads_the_same_notes_as_type1():
    midi = band(2)
    single = merged(midi)
    assert single.type == 0 and len(single.tracks) == 1
    assert sorted(read(single)) == sorted(read(midi))


def test_channel_10_is_drums_whatever_its_program():
    midi = midi_file(track(program(9, 33), note(9, 36, 0, STEP), note(9, 42, TPB, STEP)))
    assert [(n.instrument, n.pitch) for n in read(midi)] == [(11, 36), (11, 42)]


def test_tempo_changes_keep_the_first_bpm_and_give_seconds_from_the_tempo_map():
    midi = midi_file(
        track(tempo(120), tempo(60, tick=4 * TPB)),
        track(program(0, 0), note(0, 60, 0, TPB), note(0, 62, 7 * TPB, TPB)),
    )
    score = read_score(to_bytes(midi), GRID)
    assert score.bpm == 120.0
    assert score.seconds == pytest.approx(4 * 0.5 + 4 * 1.0)  # 4 beats at 120, 4 at 60
    assert [n.start for n in score.notes] == [0, 56]  # the grid counts beats, not seconds


def test_no_tempo_means_120_bpm():
    score = read_score(to_bytes(midi_file(track(note(0, 60, 0, TPB)))), GRID)
    assert score.bpm == 120.0
    assert score.seconds == pytest.approx(0.5)


def test_running_status_and_velocity_zero_note_offs():
    # One status byte for four events; velocity 0 switches notes off (written by hand,
    # so these are exactly the bytes read).
    body = (
        b"\x00\xc0\x18"  # program 24 (guitar) on channel 0
        b"\x00\x90\x3c\x64"  # note on C4
        b"\x00\x40\x50"  # running status: note on E4
        b"\x83\x60\x3c\x00"  # 480 ticks later: C4 velocity 0 = off
        b"\x00\x40\x00"  # E4 off
        + END_OF_TRACK
    )
    data = smf(mtrk(body), fmt=0)
    notes = read(data)
    assert notes == [Note(0, 8, 3, 60, 6), Note(0, 8, 3, 64, 4)]
    assert notes == notes_via_mido(mido.MidiFile(file=io.BytesIO(data)))


def test_running_status_survives_meta_events_but_not_sysex():
    on, marker, sysex = b"\x00\x90\x3c\x64", b"\x00\xff\x06\x01m", b"\x00\xf0\x02\x7e\xf7"
    off = b"\x60\x3c\x00"  # running status: C4 velocity 0
    assert read(smf(mtrk(on + marker + off + END_OF_TRACK))) == [NOTE_READ]
    with pytest.raises(MidiReadError, match="running status"):
        read(smf(mtrk(on + sysex + off + END_OF_TRACK)))


def test_overlapping_notes_of_one_pitch_are_paired_first_in_first_out_then_cut():
    # on@0, on@2 beats, off@3 beats, off@4 beats: FIFO gives 0-3 and 2-4; the first is
    # then cut where the second starts, so no two notes overlap on one key.
    events = [
        (0, 1, mido.Message("note_on", note=60, velocity=100)),
        (2 * TPB, 1, mido.Message("note_on", note=60, velocity=50)),
        (3 * TPB, 0, mido.Message("note_off", note=60)),
        (4 * TPB, 0, mido.Message("note_off", note=60)),
    ]
    midi = midi_file(track(program(0, 0), events))
    assert read(midi) == [Note(0, 16, 0, 60, 6), Note(16, 16, 0, 60, 2)]


def test_same_onset_duplicates_keep_the_longest():
    midi = midi_file(track(program(0, 0), note(0, 60, 0, TPB), note(5, 60, 0, 2 * TPB)))
    # the same pitch on two channels at one onset: one note (channel 5 is piano too)
    assert read(midi) == [Note(0, 16, 0, 60, 6)]


def test_zero_length_notes_last_one_step():
    midi = midi_file(track(program(0, 0), note(0, 60, TPB, 0), note(0, 62, TPB, 1)))
    assert read(midi) == [Note(8, 1, 0, 60, 6), Note(8, 1, 0, 62, 6)]


def test_unclosed_notes_last_to_the_end_of_their_track():
    events = [
        (0, 1, mido.Message("note_on", note=60, velocity=100)),
        (4 * TPB, 0, mido.MetaMessage("marker", text="end")),
    ]
    assert read(midi_file(track(program(0, 0), events))) == [Note(0, 32, 0, 60, 6)]


def test_program_change_in_another_track_applies_to_its_channel():
    midi = midi_file(
        track(tempo(100), program(3, 26)),  # conductor track sets channel 4 to jazz guitar
        track(note(3, 64, 0, TPB), note(3, 67, TPB, TPB)),
    )
    assert {n.instrument for n in read(midi)} == {3}


def test_program_change_mid_piece_applies_from_its_tick_on():
    midi = midi_file(
        track(
            program(0, 0),
            program(0, 40, tick=4 * TPB),  # violin from beat 4 on
            note(0, 60, 0, TPB),
            note(0, 62, 3 * TPB, TPB),
            note(0, 64, 4 * TPB, TPB),  # at the tick of the change: already violin
            note(0, 65, 6 * TPB, TPB),
        )
    )
    assert [(n.pitch, n.instrument) for n in sorted(read(midi))] == [
        (60, 0), (62, 0), (64, 5), (65, 5)
    ]


def test_notes_before_the_first_program_change_take_that_program():
    midi = midi_file(track(note(0, 60, 0, TPB), program(0, 33, tick=TPB), note(0, 40, TPB, TPB)))
    score = read_score(to_bytes(midi), GRID)
    assert {n.instrument for n in score.notes} == {4}
    assert score.has_programs


def test_a_file_without_program_changes_is_piano_and_says_so():
    score = read_score(to_bytes(midi_file(track(note(2, 60, 0, TPB)))), GRID)
    assert [n.instrument for n in score.notes] == [0]
    assert not score.has_programs


@pytest.mark.parametrize(
    "tick, step", [(0, 0), (29, 0), (30, 1), (59, 1), (60, 1), (89, 1), (90, 2)]
)
def test_onsets_round_to_the_nearest_step_halves_up(tick, step):
    midi = midi_file(track(program(0, 0), note(0, 60, tick, TPB)))
    assert read(midi)[0].start == step


@pytest.mark.parametrize(
    "velocity, level",
    [(1, 0), (22, 0), (23, 1), (60, 3), (67, 3), (68, 4), (112, 6), (113, 7), (127, 7)],
)
def test_velocities_round_to_the_nearest_of_eight_levels(velocity, level):
    midi = midi_file(track(program(0, 0), note(0, 60, 0, TPB, velocity)))
    assert read(midi)[0].velocity == level
    assert GRID.velocity_of(level) == 15 * (level + 1)
    assert GRID.velocity_level(GRID.velocity_of(level)) == level


def test_long_notes_are_clipped_to_128_steps():
    midi = midi_file(track(program(0, 0), note(0, 60, 0, 40 * TPB)))
    assert read(midi)[0].duration == 128


def test_smpte_division_is_read_at_120_bpm():
    # 25 frames/s x 40 ticks/frame = 1000 ticks/s = 500 ticks per beat at 120 bpm
    body = (b"\x00\x90\x3c\x64" + vlq(500) + b"\x80\x3c\x00"  # C4 for 500 ticks
            + vlq(500) + b"\x90\x3e\x64" + vlq(250) + b"\x80\x3e\x00"  # D4 for 250
            + END_OF_TRACK)
    notes = read(smf(mtrk(body), fmt=0, division=0xE728))
    assert [(n.start, n.duration, n.pitch) for n in notes] == [(0, 8, 60), (16, 4, 62)]


def test_the_same_score_from_a_path_bytes_or_a_midifile(tmp_path):
    midi = band(3)
    path = save(midi, tmp_path / "song.mid")
    from_path = read_score(path, GRID)
    assert read_score(str(path), GRID) == from_path
    assert read_score(path.read_bytes(), GRID) == from_path
    assert read_score(midi, GRID) == from_path


def test_other_tokenizer_grids_are_respected():
    midi = midi_file(track(program(0, 0), note(0, 60, TPB, TPB)))
    coarse = read_score(to_bytes(midi), Grid(steps_per_quarter=4)).notes
    assert coarse == [Note(4, 4, 0, 60, 6)]


# --- the parser agrees with mido ---------------------------------------------------------

FIXTURES = {
    "band": band(4),
    "band-type0": merged(band(5)),
    "no-drums": band(6, drums=False),
    "tempo-map": midi_file(
        track(tempo(90), tempo(140, tick=TPB)), track(program(2, 81), note(2, 70, 0, 3 * TPB))
    ),
    "overlaps-and-zero-lengths": midi_file(
        track(program(0, 0), note(0, 60, 0, 3 * TPB), note(0, 60, TPB, TPB), note(0, 60, TPB, 0),
              note(0, 62, 2 * TPB, 0), program(0, 30, tick=2 * TPB), note(0, 64, 2 * TPB, TPB))
    ),
    "running-status": smf(mtrk(b"\x00\xc1\x21\x00\x91\x28\x64\x10\x2b\x64\x60\x28\x00"
                               b"\x00\xff\x01\x01x\x10\x2b\x00" + END_OF_TRACK)),
}


@pytest.mark.parametrize("name", sorted(FIXTURES))
def test_parser_matches_mido_on_fixtures(name):
    fixture = FIXTURES[name]
    data = fixture if isinstance(fixture, bytes) else to_bytes(fixture)
    parsed = mido.MidiFile(file=io.BytesIO(data))
    notes = read(data)
    assert notes and sorted(notes) == sorted(notes_via_mido(parsed))
    assert len(notes) <= len(note_ons_via_mido(parsed))


note_events = st.lists(
    st.tuples(
        st.integers(0, 4000),  # onset tick
        st.integers(0, 2000),  # length in ticks (0: a zero-length note)
        st.integers(0, 15),  # channel
        st.integers(0, 127),  # pitch
        st.integers(1, 127),  # velocity
    ),
    max_size=40,
)


@given(
    events=note_events,
    programs=st.lists(st.integers(0, 127), min_size=16, max_size=16),
    ticks_per_beat=st.sampled_from([96, 100, 384, 480, 960]),
    file_type=st.sampled_from([0, 1]),
)
def test_parser_matches_mido_on_generated_files(events, programs, ticks_per_beat, file_type):
    by_channel: dict[int, list] = {}
    for start, length, channel, pitch, velocity in events:
        by_channel.setdefault(channel, []).extend(note(channel, pitch, start, length, velocity))
    tracks = [track(program(ch, programs[ch]), evs) for ch, evs in sorted(by_channel.items())]
    midi = midi_file(*tracks or [track()], ticks_per_beat=ticks_per_beat)
    if file_type == 0:
        midi = merged(midi)
    data = to_bytes(midi)
    assert sorted(read(data)) == sorted(notes_via_mido(midi))


@pytest.mark.corpus
@pytest.mark.parametrize("per_folder", [3, pytest.param(8, marks=pytest.mark.slow)])
def test_parser_matches_mido_on_real_files(corpus_dir, per_folder):
    mismatched = []
    for path in corpus_files(per_folder):
        midi = mido.MidiFile(path)
        notes = read_score(path, GRID).notes
        raw_ons = note_ons_via_mido(midi)
        if sorted(notes) != sorted(notes_via_mido(midi)) or len(notes) > len(raw_ons):
            mismatched.append(str(path.relative_to(corpus_dir)))
    assert not mismatched


# --- broken files ------------------------------------------------------------------------

GOOD = to_bytes(band(7, bars=1))
NOTE_BODY = b"\x00\x90\x3c\x64\x60\x80\x3c\x00"  # one note, no end-of-track ...
NOTE_READ = Note(0, 2, 0, 60, 6)  # ... read as: 96 ticks = 1.6 steps, velocity 100


def flipped(data: bytes, seed: int) -> bytes:
    rng = random.Random(seed)
    broken = bytearray(data)
    for _ in range(rng.randint(1, 8)):
        broken[rng.randrange(len(broken))] ^= 1 << rng.randrange(8)
    return bytes(broken)


CORRUPT = {
    "zero-byte": b"",
    "text": b"this is a text file, not music\n" * 4,
    "png": b"\x89PNG\r\n\x1a\n" + bytes(64),
    "riff-rmid": b"RIFF\x20\x00\x00\x00RMIDdata" + bytes(32),
    "header-only-4-bytes": b"MThd",
    "truncated-header": GOOD[:11],
    "header-length-too-small": b"MThd\x00\x00\x00\x02\x00\x00" + bytes(8),
    "header-length-huge": b"MThd\xff\xff\xff\xff" + GOOD[8:],
    "format-3": smf(mtrk(NOTE_BODY + END_OF_TRACK), fmt=3),
    "zero-ticks-per-beat": smf(mtrk(NOTE_BODY + END_OF_TRACK), division=0),
    "smpte-zero-ticks-per-frame": smf(mtrk(NOTE_BODY + END_OF_TRACK), division=0xE700),
    "no-tracks": smf(ntracks=1),
    "truncated-in-a-track": GOOD[: len(GOOD) - 20],
    "huge-chunk-length": smf(mtrk(NOTE_BODY + END_OF_TRACK, length=0xFFFFFFFF)),
    "chunk-length-one-too-many": smf(mtrk(NOTE_BODY + END_OF_TRACK, length=len(NOTE_BODY) + 5)),
    "event-past-chunk-end": smf(mtrk(b"\x00\x90\x3c")),
    "running-status-without-status": smf(mtrk(b"\x00\x3c\x64" + END_OF_TRACK)),
    "data-byte-above-127": smf(mtrk(b"\x00\x90\x3c\xe4" + END_OF_TRACK)),
    "program-above-127": smf(mtrk(b"\x00\xc0\x99" + END_OF_TRACK)),
    "delta-time-of-5-bytes": smf(mtrk(b"\x81\x81\x81\x81\x01\x90\x3c\x64" + END_OF_TRACK)),
    "meta-length-past-chunk": smf(mtrk(b"\x00\xff\x01\x7f" + b"abc")),
    "meta-length-of-5-bytes": smf(mtrk(b"\x00\xff\x01\x81\x81\x81\x81\x01")),
    "sysex-length-past-chunk": smf(mtrk(b"\x00\xf0\x8f\x7f\x01")),
    # 4-byte delta times in a 130-byte file: notes 18 hours apart. Unbounded, this
    # would encode to millions of TIME tokens.
    "huge-delta-times": smf(
        mtrk(b"".join(vlq(0x0FFFFFFF) + b"\x90\x3c\x64\x01\x80\x3c\x00" for _ in range(10))
             + END_OF_TRACK),
        division=1,
    ),
}


@pytest.mark.parametrize("name", sorted(CORRUPT))
def test_corrupt_bytes_raise_midi_read_error(name, tokenizer):
    started = time.perf_counter()
    with pytest.raises(MidiReadError) as caught:
        tokenizer.encode(CORRUPT[name])
    assert time.perf_counter() - started < 2.0
    assert isinstance(caught.value, BangerError)
    assert str(caught.value)  # a reason for skipped.csv


def test_corrupt_files_on_disk_raise_midi_read_error(tmp_path, tokenizer):
    for name, data in CORRUPT.items():
        path = tmp_path / f"{name}.mid"
        path.write_bytes(data)
        with pytest.raises(MidiReadError):
            tokenizer.encode(path)


def test_missing_files_and_directories_raise_midi_read_error(tmp_path, tokenizer):
    with pytest.raises(MidiReadError, match="no such file"):
        tokenizer.encode(tmp_path / "missing.mid")
    with pytest.raises(MidiReadError, match="directory"):
        tokenizer.encode(tmp_path)


def test_files_over_the_size_limit_are_refused_unread(tmp_path, monkeypatch, tokenizer):
    import bangercli.midi.midifile

    path = save(band(8), tmp_path / "big.mid")
    monkeypatch.setattr(bangercli.midi.midifile, "MAX_FILE_BYTES", 100)
    with pytest.raises(MidiReadError, match="too large"):
        tokenizer.encode(path)
    with pytest.raises(MidiReadError, match="too large"):
        tokenizer.encode(path.read_bytes())


def chunk_bodies(data: bytes) -> list[range]:
    """Byte ranges of the chunk bodies of a well-formed file."""
    bodies, pos = [], 14
    while pos < len(data):
        length = int.from_bytes(data[pos + 4 : pos + 8], "big")
        bodies.append(range(pos + 8, pos + 8 + length))
        pos += 8 + length
    return bodies


def test_every_truncation_is_refused_unless_it_falls_between_chunks(tokenizer):
    bodies = chunk_bodies(GOOD)
    assert len(bodies) == 4
    for size in range(len(GOOD)):
        # no whole track left, or a track cut short
        broken = size < bodies[0].start or any(body.start <= size < body.stop for body in bodies)
        try:
            tokenizer.encode(GOOD[:size])
        except MidiReadError:
            assert broken, size
        else:
            # a cut between chunks leaves a shorter valid file (and < 8 stray bytes)
            assert not broken, size


@pytest.mark.parametrize("seed", range(40))
def test_bit_flips_are_either_read_or_refused(seed, tokenizer):
    data = flipped(GOOD, seed)
    started = time.perf_counter()
    try:
        ids = tokenizer.encode(data)
    except MidiReadError:
        return
    finally:
        assert time.perf_counter() - started < 2.0
    assert ids[0] == Tokenizer.START and ids[-1] == Tokenizer.END


@given(st.binary(max_size=200))
def test_random_bytes_after_a_valid_header_are_read_or_refused(tail):
    try:
        Tokenizer().encode(smf(mtrk(tail), fmt=0))
    except MidiReadError:
        pass


def test_a_header_claiming_thousands_of_tracks_reads_the_tracks_present():
    data = smf(mtrk(NOTE_BODY + END_OF_TRACK), ntracks=65535)
    assert read(data) == [NOTE_READ]


def test_thousands_of_tiny_tracks_read_quickly():
    tiny = [mtrk(b"\x00\x90" + bytes([36 + i % 60]) + b"\x64\x60\x80" + bytes([36 + i % 60])
                 + b"\x00" + END_OF_TRACK) for i in range(5000)]
    started = time.perf_counter()
    notes = read(smf(*tiny))
    assert time.perf_counter() - started < 2.0
    assert len(notes) == 60  # 5000 notes on 60 pitches at one onset, deduplicated
    assert len(read(smf(*[mtrk(b"")] * 5000, mtrk(NOTE_BODY)))) == 1


def test_unknown_chunks_are_skipped():
    data = smf(b"XFIH" + b"\x00\x00\x00\x03abc", mtrk(NOTE_BODY + END_OF_TRACK))
    assert read(data) == [NOTE_READ]


def test_a_broken_midifile_object_raises_midi_read_error(tokenizer):
    midi = midi_file(track(note(0, 60, 0, TPB)))
    midi.tracks[0][0].time = -5  # mido refuses to save a negative delta
    with pytest.raises(MidiReadError):
        tokenizer.encode(midi)
