"""The tokenizer: the exact vocabulary, encoding rules, round trips, decoding of any id
sequence, config versioning, and the instrument table it rests on."""

from __future__ import annotations

import json
import random

import mido
import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from bangercli.errors import BangerError, UsageError
from bangercli.midi.instruments import (
    DRUM_CHANNEL,
    DRUMS,
    INSTRUMENTS,
    MELODIC,
    PROGRAM_TO_CATEGORY,
    category_of,
    instrument_named,
)
from bangercli.midi.midifile import channel_of
from bangercli.midi.score import Header, Note, normalize
from bangercli.midi.tokenizer import TOKENIZER_FORMAT, Tokenizer, TokenizerConfig
from conftest import corpus_files
from midi_fixtures import (
    DRUMS as DRUM_CH,
    END_OF_TRACK,
    band,
    category_of_program,
    merged,
    midi_file,
    mtrk,
    note,
    program,
    quantize,
    smf,
    to_bytes,
    track,
    velocity_level,
)

TOK = Tokenizer()
HEADER_KINDS = ("special", "instrument")

# --- the vocabulary ----------------------------------------------------------------------


def test_vocabulary_layout_is_the_documented_one():
    assert (TOK.PAD, TOK.START, TOK.END, TOK.DRUMS_OFF, TOK.DRUMS_ON) == (0, 1, 2, 3, 4)
    assert [TOK.instrument_token(i) for i in (0, 10)] == [5, 15]
    assert [TOK.time_token(s) for s in (0, 255)] == [16, 271]
    assert [TOK.durvel_token(1, 0), TOK.durvel_token(128, 7)] == [272, 1295]
    assert TOK.durvel_token(5, 3) == 272 + 4 * 8 + 3
    assert [TOK.note_token(0, 0), TOK.note_token(11, 127)] == [1296, 2831]
    assert TOK.note_token(3, 64) == 1296 + 3 * 128 + 64
    assert TOK.vocab_size == 2832


@pytest.mark.parametrize(
    "token, kind",
    [(-1, "invalid"), (0, "special"), (4, "special"), (5, "instrument"), (15, "instrument"),
     (16, "time"), (271, "time"), (272, "durvel"), (1295, "durvel"), (1296, "note"),
     (2831, "note"), (2832, "invalid"), (10**9, "invalid")],
)
def test_token_kinds_at_every_boundary(token, kind):
    assert TOK.kind(token) == kind


def test_describe_names_every_kind_of_token():
    ids = (0, 1, 2, 3, 4, 8, 16 + 12, 272 + 8 * 3 + 5, 1296 + 384 + 64, 2740, -3)
    names = [TOK.describe(t) for t in ids]
    assert names == [
        "PAD", "START", "END", "DRUMS_OFF", "DRUMS_ON", "INSTRUMENT(guitar)", "TIME(12)",
        "DURVEL(4,5)", "NOTE(guitar,64)", "NOTE(drums,36)", "INVALID(-3)",
    ]


def test_a_coarser_grid_changes_the_vocabulary_size():
    small = Tokenizer(TokenizerConfig(max_shift=63, max_duration=32, velocity_levels=4))
    assert small.time_offset == 16
    assert small.durvel_offset == 16 + 64
    assert small.note_offset == 16 + 64 + 32 * 4
    assert small.vocab_size == small.note_offset + 12 * 128


# --- encoding ----------------------------------------------------------------------------


def test_a_small_piece_encodes_to_exactly_these_ids():
    notes = [
        Note(0, 8, 0, 60, 5),
        Note(0, 8, 0, 72, 5),
        Note(0, 16, 4, 36, 4),  # bass
        Note(0, 1, 11, 36, 7),  # kick
        Note(8, 8, 0, 64, 5),
        Note(608, 200, 0, 67, 3),  # 600 steps later; 200 steps are clipped to 128
    ]
    ids = TOK.encode_notes(notes)
    assert ids == [
        1, 4, 5, 9,  # START, DRUMS_ON, INSTRUMENT(piano) (lead: most notes), INSTRUMENT(bass)
        16, 333, 1368,  # TIME(0) DURVEL(8,5) NOTE(piano,72): highest pitch first
        16, 333, 1356,  # TIME(0) DURVEL(8,5) NOTE(piano,60)
        16, 396, 1844,  # TIME(0) DURVEL(16,4) NOTE(bass,36): then the next instrument
        16, 279, 2740,  # TIME(0) DURVEL(1,7) NOTE(drums,36): drums last
        24, 333, 1360,  # TIME(8) DURVEL(8,5) NOTE(piano,64)
        271, 271, 106, 1291, 1363,  # TIME(255) TIME(255) TIME(90) DURVEL(128,3) NOTE(piano,67)
        2,  # END
    ]
    assert TOK.describe(ids[-2]) == "NOTE(piano,67)"
    assert TOK.encode_notes(notes, end=False) == ids[:-1]


@pytest.mark.parametrize("gap, times", [(0, [0]), (254, [254]), (255, [255]), (256, [255, 1]),
                                        (510, [255, 255]), (511, [255, 255, 1])])
def test_long_gaps_are_several_time_tokens_that_add_up(gap, times):
    ids = TOK.encode_notes([Note(0, 1, 0, 62, 0), Note(gap, 1, 0, 60, 0)])
    second = ids.index(TOK.note_token(0, 62)) + 1
    assert ids[second:-3] == [TOK.time_token(t) for t in times]


def test_the_lead_is_the_melodic_part_with_most_notes_ties_to_the_lower_category():
    tie = [Note(i, 1, 3, 60, 0) for i in range(2)] + [Note(i, 1, 0, 60, 0) for i in range(2)]
    assert TOK.encode_notes(tie)[:4] == [1, 3, 5, 8]  # piano before guitar
    more_guitar = tie + [Note(9, 1, 3, 61, 0)]
    assert TOK.encode_notes(more_guitar)[:4] == [1, 3, 8, 5]
    # drums never lead, however many there are
    kit = [Note(i, 1, 11, 36, 0) for i in range(20)] + [Note(0, 1, 10, 60, 0)]
    ids = TOK.encode_notes(kit)
    assert ids[:3] == [1, 4, 15]
    assert ids[3:6] == [16, TOK.durvel_token(1, 0), TOK.note_token(10, 60)]  # ethnic before drums


def test_empty_and_drums_only_headers():
    assert TOK.encode_notes([]) == [1, 3, 2]
    assert TOK.encode_notes([Note(0, 1, 11, 42, 2)]) == [1, 4, 16, 274, TOK.note_token(11, 42), 2]


def test_duplicates_and_overlaps_are_normalized_before_encoding():
    notes = [Note(0, 4, 0, 60, 1), Note(0, 6, 0, 60, 2), Note(2, 4, 0, 60, 3)]
    assert TOK.decode_score(TOK.encode_notes(notes)).notes == [
        Note(0, 2, 0, 60, 2),  # the longer of the two at step 0, cut where the next starts
        Note(2, 4, 0, 60, 3),
    ]


def test_encode_accepts_a_path_bytes_a_midifile_or_a_score(tmp_path):
    midi = band(11)
    path = tmp_path / "band.mid"
    path.write_bytes(to_bytes(midi))
    ids = TOK.encode(path)
    assert TOK.encode(str(path)) == ids
    assert TOK.encode(path.read_bytes()) == ids
    assert TOK.encode(midi) == ids
    assert TOK.encode(TOK.read(path)) == ids
    assert ids[:4] == [1, 4, 5, 9]  # drums on, piano leads, then bass


# --- round trips -------------------------------------------------------------------------

notes_lists = st.lists(
    st.builds(
        Note,
        start=st.integers(0, 2000),
        duration=st.integers(0, 300),  # 0 and > 128 exercise the clipping
        instrument=st.integers(0, 11),
        pitch=st.integers(0, 127),
        velocity=st.integers(0, 7),
    ),
    max_size=60,
)


def check_grammar(tokenizer: Tokenizer, ids: list[int], notes: list[Note]) -> None:
    """START, DRUMS_*, instruments, then (TIME+ DURVEL NOTE)* END, times adding up to onsets."""
    assert ids[0] == tokenizer.START and ids[-1] == tokenizer.END
    has_drums = any(n.instrument == DRUMS.index for n in notes)
    assert ids[1] == (tokenizer.DRUMS_ON if has_drums else tokenizer.DRUMS_OFF)
    body = ids[2:-1]
    header = [t for t in body if tokenizer.kind(t) == "instrument"]
    assert body[: len(header)] == header
    assert {t - 5 for t in header} == {n.instrument for n in notes} - {DRUMS.index}
    time, i, onsets = 0, 0, []
    body = body[len(header):]
    while i < len(body):
        assert tokenizer.kind(body[i]) == "time"
        while tokenizer.kind(body[i]) == "time":
            time += body[i] - tokenizer.time_offset
            i += 1
        assert tokenizer.kind(body[i]) == "durvel" and tokenizer.kind(body[i + 1]) == "note"
        onsets.append(time)
        i += 2
    assert onsets == sorted(n.start for n in notes)


@given(notes=notes_lists)
def test_note_lists_round_trip_through_ids_and_midi(notes):
    expected = normalize(notes, TOK.grid)
    ids = TOK.encode_notes(notes)
    assert all(0 <= t < TOK.vocab_size for t in ids)
    check_grammar(TOK, ids, expected)
    decoded = TOK.decode_score(ids)
    assert decoded.invalid_tokens == 0
    assert decoded.notes == expected
    midi = TOK.decode(ids)
    assert sorted(TOK.read(midi).notes) == sorted(expected)
    assert TOK.encode(midi) == ids


@given(notes=notes_lists, seed=st.integers(0, 2**32 - 1))
def test_normalize_is_canonical_whatever_the_input_order(notes, seed):
    grid = TOK.grid
    once = normalize(notes, grid)
    shuffled = list(notes)
    random.Random(seed).shuffle(shuffled)
    assert normalize(shuffled, grid) == once
    assert normalize(once, grid) == once
    assert once == sorted(once, key=lambda n: (n.instrument, n.pitch, n.start))
    assert {(n.start, n.instrument, n.pitch) for n in once} == {
        (n.start, n.instrument, n.pitch) for n in notes
    }
    assert all(1 <= n.duration <= 128 for n in once)
    for a, b in zip(once, once[1:]):
        if (a.instrument, a.pitch) == (b.instrument, b.pitch):
            assert a.start + a.duration <= b.start


def test_encoding_leaves_the_callers_notes_alone():
    notes = [Note(8, 2, 0, 60, 1), Note(0, 500, 3, 40, 2), Note(0, 2, 0, 60, 1)]
    copy = list(notes)
    TOK.encode_notes(notes)
    assert notes == copy


@given(notes=notes_lists)
@settings(max_examples=25)
def test_round_trips_hold_on_other_grids(notes):
    tokenizer = Tokenizer(TokenizerConfig(steps_per_quarter=4, max_shift=31, max_duration=64,
                                          velocity_levels=4, velocity_step=30))
    notes = [n._replace(velocity=n.velocity % 4) for n in notes]
    ids = tokenizer.encode_notes(notes)
    check_grammar(tokenizer, ids, normalize(notes, tokenizer.grid))
    assert tokenizer.decode_score(ids).notes == normalize(notes, tokenizer.grid)
    assert tokenizer.encode(tokenizer.decode(ids)) == ids


note_events = st.lists(
    st.tuples(
        st.integers(0, 6000),  # onset tick
        st.integers(0, 3000),  # length in ticks
        st.integers(0, 15),  # channel (9 is drums)
        st.integers(0, 127),  # pitch
        st.integers(1, 127),  # velocity
    ),
    min_size=1,
    max_size=40,
)


@given(
    events=note_events,
    programs=st.lists(st.integers(0, 127), min_size=16, max_size=16),
    ticks_per_beat=st.sampled_from([96, 120, 384, 480, 1000]),
    file_type=st.sampled_from([0, 1]),
)
def test_midi_files_keep_onset_pitch_category_and_velocity(events, programs, ticks_per_beat,
                                                            file_type):
    by_channel: dict[int, list] = {}
    for start, length, channel, pitch, velocity in events:
        by_channel.setdefault(channel, []).extend(note(channel, pitch, start, length, velocity))
    midi = midi_file(*(track(program(ch, programs[ch]), evs) for ch, evs in by_channel.items()),
                     ticks_per_beat=ticks_per_beat)
    if file_type == 0:
        midi = merged(midi)

    ids = TOK.encode(to_bytes(midi))
    decoded = TOK.decode(ids)
    assert TOK.encode(decoded) == ids  # encode -> decode -> encode is the identity

    # Every note survives with its onset (nearest step), pitch, category and velocity level;
    # notes that land on one key at one step become one note.
    expected: dict[tuple[int, int, int], list[int]] = {}
    for start, _, channel, pitch, velocity in events:
        category = 11 if channel == DRUM_CH else category_of_program(programs[channel])
        key = (quantize(start, ticks_per_beat), category, pitch)
        expected.setdefault(key, []).append(velocity_level(velocity))
    got = {(n.start, n.instrument, n.pitch): n.velocity for n in TOK.read(decoded).notes}
    assert set(got) == set(expected)
    for key, levels in expected.items():
        assert got[key] in levels
        if len(levels) == 1:
            assert got[key] == levels[0]


@pytest.mark.corpus
@pytest.mark.parametrize("count", [12, pytest.param(30, marks=pytest.mark.slow)])
def test_real_files_round_trip(corpus_dir, count):
    failures = []
    for path in corpus_files(8, seed=1)[:count]:
        score = TOK.read(path)
        ids = TOK.encode(score)
        decoded = TOK.decode(ids, bpm=score.bpm)
        if TOK.encode(decoded) != ids or TOK.read(decoded).notes != score.notes:
            failures.append(str(path.relative_to(corpus_dir)))
    assert not failures


# --- decoding anything -------------------------------------------------------------------


def note_ids(start_shift: int, duration: int, velocity: int, instrument: int, pitch: int):
    return [TOK.time_token(start_shift), TOK.durvel_token(duration, velocity),
            TOK.note_token(instrument, pitch)]


GOOD_NOTE = note_ids(0, 4, 3, 0, 60)


@pytest.mark.parametrize(
    "ids, notes, invalid",
    [
        ([], 0, 0),
        ([1, 3, *GOOD_NOTE, 2], 1, 0),
        (GOOD_NOTE, 1, 0),  # no header: still a note
        ([1, 3, 16, TOK.durvel_token(2, 1), 16, *GOOD_NOTE], 1, 1),  # DURVEL without NOTE
        ([1, 3, 16, TOK.note_token(0, 60), *GOOD_NOTE], 1, 1),  # NOTE without DURVEL
        ([1, 3, *GOOD_NOTE, 16, TOK.durvel_token(2, 1)], 1, 1),  # DURVEL at the very end
        ([1, 3, *GOOD_NOTE, 2, *note_ids(4, 1, 1, 3, 50)], 1, 0),  # END in the middle stops
        ([0, 1, 0, 3, *GOOD_NOTE, 0, 0], 1, 0),  # PAD anywhere is ignored
        ([1, 3, *GOOD_NOTE, 1, 4, 7, *note_ids(1, 1, 1, 3, 50)], 2, 3),  # header tokens late
        ([1, 3, -1, 2832, 99_999, *GOOD_NOTE], 1, 3),  # out of the vocabulary
        ([1, 3, None, "x", float("nan"), *GOOD_NOTE], 1, 3),  # not numbers at all
        # the DURVEL orphaned by 2832, 2832 itself, then a NOTE without DURVEL
        ([1, 3, 16, 16, TOK.durvel_token(1, 0), 2832, TOK.note_token(1, 70)], 0, 3),
    ],
)
def test_malformed_sequences_decode_and_count_invalid_tokens(ids, notes, invalid):
    score = TOK.decode_score(ids)
    assert (len(score.notes), score.invalid_tokens) == (notes, invalid)
    midi = TOK.decode(ids)
    assert isinstance(midi, mido.MidiFile) and midi.type == 1


def test_decoded_header_is_reported():
    score = TOK.decode_score([1, 4, 8, 5, *GOOD_NOTE])
    assert score.header == Header(drums=True, instruments=(3, 0))
    assert TOK.decode_score(GOOD_NOTE).header == Header(drums=None, instruments=())


def test_an_instrument_named_twice_in_the_header_gets_one_track():
    midi = TOK.decode([1, 3, 5, 8, 5, *GOOD_NOTE, *note_ids(0, 2, 2, 3, 40)])
    assert [t.name for t in midi.tracks] == ["banger", "piano", "guitar"]


def decode_checks(ids) -> None:
    score = TOK.decode_score(ids)
    assert score.invalid_tokens >= 0
    midi = TOK.decode(ids, bpm=93.0)
    assert isinstance(midi, mido.MidiFile) and midi.type == 1
    tempos = [m.tempo for m in midi.tracks[0] if m.type == "set_tempo"]
    assert tempos == [mido.bpm2tempo(93.0)]
    instruments = {n.instrument for n in score.notes}
    assert len(midi.tracks) == 1 + len(instruments)
    for midi_track in midi.tracks[1:]:
        channels = {m.channel for m in midi_track if not m.is_meta}
        programs = [m.program for m in midi_track if m.type == "program_change"]
        assert len(channels) == 1 and len(programs) == 1
    assert sorted(TOK.read(midi).notes) == sorted(score.notes)


@given(st.lists(st.integers(-50, 3000), max_size=300))
def test_any_ints_decode_without_raising(ids):
    decode_checks(ids)


grammar_ish = st.lists(
    st.one_of(
        st.sampled_from([0, 1, 2, 3, 4, 5, 15]),
        st.integers(16, 271),
        st.integers(272, 1295),
        st.integers(1296, 2831),
        st.integers(-(2**70), 2**70),
    ),
    max_size=200,
)


@given(grammar_ish)
def test_near_grammatical_sequences_decode_without_raising(ids):
    decode_checks(ids)
    decode_checks(np.asarray([t for t in ids if -(2**62) < t < 2**62], dtype=np.int64))


def test_decoded_files_have_one_track_per_instrument_drums_on_channel_10():
    ids = TOK.encode(band(12))
    midi = TOK.decode(ids, bpm=100.0)
    assert midi.type == 1
    names = [next(m.name for m in t if m.type == "track_name") for t in midi.tracks]
    assert names == ["banger", "piano", "bass", "drums"]  # lead first, drums last
    assert [m.tempo for m in midi.tracks[0] if m.type == "set_tempo"] == [mido.bpm2tempo(100.0)]
    channel = {}
    program_of = {}
    for name, midi_track in zip(names[1:], midi.tracks[1:]):
        channel[name] = {m.channel for m in midi_track if not m.is_meta}
        program_of[name] = [m.program for m in midi_track if m.type == "program_change"]
    assert channel == {"piano": {0}, "bass": {4}, "drums": {DRUM_CHANNEL}}
    assert program_of == {"piano": [0], "bass": [33], "drums": [0]}


@pytest.mark.parametrize("tempo_value", [1, 500_000, 0xFFFFFF])
def test_any_tempo_a_file_holds_is_written_back(tempo_value):
    set_tempo = b"\x00\xff\x51\x03" + tempo_value.to_bytes(3, "big")
    one_note = b"\x00\xc0\x00\x00\x90\x3c\x64\x60\x80\x3c\x00" + END_OF_TRACK
    score = TOK.read(smf(mtrk(set_tempo + one_note)))
    midi = TOK.decode(TOK.encode(score), bpm=score.bpm)
    assert [m.tempo for m in midi.tracks[0] if m.type == "set_tempo"] == [tempo_value]


def test_all_twelve_instruments_get_distinct_channels_when_decoded():
    notes = [Note(i, 2, i, 60, 3) for i in range(12)]
    midi = TOK.decode(TOK.encode_notes(notes))
    assert len(midi.tracks) == 13
    channels = [{m.channel for m in t if not m.is_meta} for t in midi.tracks[1:]]
    assert all(len(c) == 1 for c in channels)
    assert len(set.union(*channels)) == 12
    assert sorted(TOK.read(midi).notes) == sorted(notes)


# --- config ------------------------------------------------------------------------------


def test_config_round_trips_through_a_dict_and_json():
    config = TokenizerConfig(steps_per_quarter=4, max_shift=100)
    data = config.to_dict()
    assert data["version"] == TOKENIZER_FORMAT == 1
    assert TokenizerConfig.from_dict(data) == config
    assert TokenizerConfig.from_dict(json.loads(json.dumps(data))) == config
    assert TokenizerConfig.from_dict(TokenizerConfig().to_dict()) == TokenizerConfig()


@pytest.mark.parametrize(
    "change",
    [{"version": 2}, {"version": 0}, {"version": "1"}, {"version": None}, {"colour": "blue"}],
)
def test_config_of_another_format_is_refused(change):
    data = {**TokenizerConfig().to_dict(), **change}
    with pytest.raises(BangerError) as caught:
        TokenizerConfig.from_dict(data)
    assert "tokenizer format" in str(caught.value)
    assert caught.value.hint


def test_config_without_a_version_is_refused():
    data = TokenizerConfig().to_dict()
    del data["version"]
    with pytest.raises(BangerError):
        TokenizerConfig.from_dict(data)


# --- instruments -------------------------------------------------------------------------


def test_every_program_belongs_to_exactly_one_melodic_category():
    for program_number in range(128):
        owners = [inst.index for inst in MELODIC if program_number in inst.programs]
        assert owners == [PROGRAM_TO_CATEGORY[program_number]]
        assert owners == [category_of_program(program_number)]
        assert category_of(program_number, 0) == owners[0]
        assert category_of(program_number, DRUM_CHANNEL) == DRUMS.index


def test_the_twelve_categories():
    assert len(INSTRUMENTS) == 12 and len(MELODIC) == 11
    assert [inst.index for inst in INSTRUMENTS] == list(range(12))
    assert DRUMS.index == 11 and DRUMS.is_drums
    assert not any(inst.is_drums for inst in MELODIC)
    for inst in MELODIC:
        assert inst.default_program in inst.programs
    every_name = [name for inst in INSTRUMENTS for name in (inst.name, *inst.aliases)]
    assert len(every_name) == len(set(every_name))


def test_channels_of_the_categories_are_distinct_with_drums_on_channel_10():
    channels = [channel_of(i) for i in range(12)]
    assert channels[DRUMS.index] == 9
    assert len(set(channels)) == 12 and max(channels) < 16


@pytest.mark.parametrize(
    "name, index",
    [("piano", 0), ("Guitar", 3), (" BASS ", 4), ("Synth Lead", 8), ("synth_pad", 9),
     ("keys", 0), ("Choir", 5), ("drums", 11), ("Kit", 11), ("mallets", 1)],
)
def test_instruments_are_found_by_name_or_alias_in_any_case(name, index):
    assert instrument_named(name).index == index


def test_an_unknown_instrument_lists_the_valid_names():
    with pytest.raises(UsageError) as caught:
        instrument_named("kazoo")
    assert "kazoo" in str(caught.value)
    for inst in INSTRUMENTS:
        assert inst.name in caught.value.hint
    assert caught.value.exit_code == 2


def test_velocity_levels_span_15_to_120():
    grid = TOK.grid
    assert [grid.velocity_of(level) for level in range(8)] == [15, 30, 45, 60, 75, 90, 105, 120]
    for velocity in range(128):
        level = grid.velocity_level(velocity)
        assert level == velocity_level(velocity)
        assert abs(grid.velocity_of(level) - velocity) <= 7.5 or velocity < 15
    assert TOK.config.steps_per_bar == 32
