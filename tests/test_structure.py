"""Structure measures on hand-made pieces with known answers, and their place in
`evaluate_music` (a tiny untrained model and a small corpus)."""

from __future__ import annotations

import math

import pytest
import torch

from bangercli.api import Banger
from bangercli.evaluation.samples import CONTINUED_PER_SAMPLE, evaluate_music
from bangercli.evaluation.structure import (
    bar_repetition, continuation_metrics, drumless_bars, key_keeping, lead_repetition,
    material_reuse, notes_per_bar_per_part, pitch_class_repetition, pitch_class_reuse,
    silent_parts, structure_metrics,
)
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.midi.score import Note
from bangercli.midi.tokenizer import Tokenizer
from bangercli.model.network import build_model, model_config
from test_train import make_corpus

BAR = 32
PIANO = instrument_named("piano").index
BASS = instrument_named("bass").index
GRID = dict(steps_per_bar=BAR)


def bar(number: int, onsets, pitches, *, instrument: int = PIANO) -> list[Note]:
    """Notes starting at `onsets` (positions in bar `number`), with the given pitches in turn."""
    return [Note(number * BAR + at, 4, instrument, pitches[k % len(pitches)], 4)
            for k, at in enumerate(onsets)]


def loop(bars: int, *, first: int = 0) -> list[Note]:
    """A 4-bar loop: a C major melody over a one-bar drum groove and bass."""
    melody = [(60, 64, 67, 72), (62, 65, 69, 74), (64, 67, 71, 76), (60, 64, 67, 72)]
    notes = []
    for b in range(first, first + bars):
        notes += bar(b, (0, 8, 16, 24), melody[b % 4])
        notes += bar(b, (0, 16), (36,), instrument=BASS)
        notes += bar(b, (0, 8, 16, 24), (36, 42, 38, 42), instrument=DRUMS.index)
    return notes


# Onset patterns at Hamming distance >= 4 from each other: no bar repeats another.
SCATTERED = [(0, 3), (5, 9, 14), (1, 20, 27), (6, 11, 30), (2, 17, 23, 29), (7, 12, 19, 31)]


def test_a_loop_repeats_every_bar_and_scattered_bars_repeat_none():
    assert bar_repetition(loop(8), **GRID) == 1.0
    scattered = [n for b, at in enumerate(SCATTERED) for n in bar(b, at, (60,))]
    assert bar_repetition(scattered, **GRID) == 0.0
    # within 2 of 32 positions (one onset added) still repeats, 3 does not
    near = bar(0, (0, 8, 16), (60,)) + bar(1, (0, 8, 16, 24), (60,))
    far = bar(0, (0, 8, 16), (60,)) + bar(1, (0, 8, 16, 4, 12, 20), (60,))
    assert bar_repetition(near, **GRID) == 1.0
    assert bar_repetition(far, **GRID) == 0.0
    assert math.isnan(bar_repetition(bar(0, (0,), (60,)), **GRID))  # nothing to repeat


def test_pitch_class_repetition_compares_melodic_pitch_class_sets():
    octave_up = bar(0, (0, 8), (60, 64)) + bar(1, (4, 12), (72, 76))  # {C, E} again
    assert pitch_class_repetition(octave_up, **GRID) == 1.0
    assert pitch_class_repetition(bar(0, (0,), (60,)) + bar(1, (0,), (61,)), **GRID) == 0.0
    drums = [n for b in (0, 1) for n in bar(b, (0,), (36,), instrument=DRUMS.index)]
    assert math.isnan(pitch_class_repetition(drums, **GRID))


def test_lead_repetition_wants_the_lead_note_for_note():
    # the 4-bar loop played twice: bars 4..7 repeat bars 0..3, and bar 3 repeats bar 0
    assert lead_repetition(loop(8), **GRID) == pytest.approx(5 / 7)
    moved = bar(0, (0, 8), (60, 64)) + bar(1, (0, 8), (64, 60))  # same notes, other order
    assert lead_repetition(moved, **GRID) == 0.0
    # the bass repeats but has fewer notes: the piano is the lead, and it does not repeat
    piano = bar(0, (0, 8, 16), (60,)) + bar(1, (0, 8, 16), (62,))
    bass = bar(0, (0,), (36,), instrument=BASS) + bar(1, (0,), (36,), instrument=BASS)
    assert lead_repetition(piano + bass, **GRID) == 0.0
    assert math.isnan(lead_repetition(bar(0, (0,), (36,), instrument=DRUMS.index), **GRID))


def test_key_keeping_drops_when_the_continuation_changes_key():
    c_major = [Note(4 * k, 4, PIANO, 60 + step, 4) for k, step in enumerate((0, 2, 4, 5, 7, 9, 11))]
    assert key_keeping(c_major, c_major) == 1.0
    f_sharp = [n._replace(pitch=n.pitch + 6) for n in c_major]
    assert key_keeping(c_major, f_sharp) == pytest.approx(2 / 7)  # B and E#(F) are in C major
    # a prompt of C, E, G fits C, F and G major alike: the continuation gets the tie's benefit
    triad = [Note(0, 4, PIANO, p, 4) for p in (60, 64, 67)]
    assert key_keeping(triad, [Note(0, 4, PIANO, 66, 4)]) == 1.0  # F#, in G major
    drums = [Note(0, 1, DRUMS.index, 36, 4)]
    assert math.isnan(key_keeping(drums, c_major))


def test_material_and_pitch_class_reuse_look_back_at_the_prompt():
    prompt, continued = loop(4), loop(8, first=4)
    assert material_reuse(prompt, continued, **GRID) == 1.0
    assert pitch_class_reuse(prompt, continued, **GRID) == 1.0
    new = [n for b, at in enumerate(SCATTERED[1:5]) for n in bar(4 + b, at, (61, 66))]
    assert material_reuse(prompt, new, **GRID) == 0.0
    assert pitch_class_reuse(prompt, new, **GRID) == 0.0
    # a part the prompt did not have reuses nothing, whatever it plays
    strings = [n._replace(instrument=instrument_named("strings").index) for n in continued
               if n.instrument == PIANO]
    assert material_reuse(prompt, strings, **GRID) == 0.0


def test_drumless_bars_silent_parts_and_notes_per_bar_per_part():
    notes = loop(8)
    no_drums_late = [n for n in notes if n.instrument != DRUMS.index or n.start < 4 * BAR]
    assert drumless_bars(no_drums_late, **GRID, bars=range(8)) == 0.5
    assert drumless_bars(notes, **GRID, bars=range(8)) == 0.0
    bass_stops = [n for n in notes if n.instrument != BASS or n.start < 4 * BAR]
    assert silent_parts(bass_stops, **GRID, playing=range(4),
                        end=range(4, 8)) == pytest.approx(1 / 3)
    only_bass = [n for n in bass_stops if n.instrument == BASS]
    assert silent_parts(only_bass, **GRID, playing=range(4), end=range(4, 8)) == 1.0
    # piano 4 notes a bar; bass 2 notes over bars 2..5 (0.5 a bar): mean 2.25
    sparse = bar(2, (0,), (36,), instrument=BASS) + bar(5, (0,), (36,), instrument=BASS)
    assert notes_per_bar_per_part(bar(0, (0, 8, 16, 24), (60,)) + sparse, **GRID) == 2.25


def test_structure_metrics_of_a_loop_and_what_they_leave_undefined():
    measures = structure_metrics(loop(8), **GRID, bars=8, drums=True)
    # pitch classes: the piano's bars 3..7 repeat (5 of 7), the bass's all 7
    assert measures == {"bar_repetition": 1.0, "pitch_class_repetition": pytest.approx(12 / 14),
                        "lead_repetition": pytest.approx(5 / 7), "drumless_bars": 0.0,
                        "silent_parts": 0.0, "notes_per_bar_per_part": pytest.approx(10 / 3)}
    short = structure_metrics(loop(4), **GRID, bars=4, drums=None)
    assert math.isnan(short["silent_parts"])  # no end distinct from the opening
    assert math.isnan(short["drumless_bars"])  # drums were not asked for


def test_continuation_metrics_of_a_loop_continued_and_of_a_part_that_stops():
    piece = loop(12)
    prompt = [n for n in piece if n.start < 4 * BAR]
    continued = [n for n in piece if n.start >= 4 * BAR]
    measures = continuation_metrics(prompt, continued, **GRID, bars=8)
    assert {k: measures[k] for k in ("key_keeping", "material_reuse", "pitch_class_reuse",
                                     "drumless_bars", "silent_parts")} == {
        "key_keeping": 1.0, "material_reuse": 1.0, "pitch_class_reuse": 1.0,
        "drumless_bars": 0.0, "silent_parts": 0.0}
    piano_stops = [n for n in continued if n.instrument != PIANO]
    assert continuation_metrics(prompt, piano_stops, **GRID, bars=8)["silent_parts"] == \
        pytest.approx(1 / 3)


def test_music_evaluation_reports_structure_beside_real_pieces(tmp_path):
    torch.manual_seed(0)
    config = model_config("tiny", seq_len=64)
    banger = Banger(build_model(config), Tokenizer(), config)
    corpus = make_corpus(tmp_path, pieces=8)  # 12-bar pieces: a 4-bar prompt and 8 more
    conditions = {"guitar+drums": dict(instruments=("guitar",), drums=True)}
    report = evaluate_music(banger, samples=1, bars=8, conditions=conditions,
                            data_dir=corpus).to_json()
    structure, continuation = report["structure"], report["continuation"]
    assert set(structure) == {"requested", "real", "generated"}
    assert 1 <= continuation["pieces"] <= CONTINUED_PER_SAMPLE
    assert set(continuation["real"]) == set(continuation["generated"]) >= {
        "key_keeping", "material_reuse", "pitch_class_reuse", "silent_parts"}
    # the corpus is arpeggio loops: its real continuations keep key and material exactly
    assert continuation["real"]["key_keeping"] == continuation["real"]["material_reuse"] == 1.0
    assert structure["real"]["bar_repetition"] == 1.0
    for group in (structure["requested"], structure["real"], structure["generated"],
                  continuation["real"], continuation["generated"]):
        for name, value in group.items():
            if value is not None and name != "notes_per_bar_per_part":
                assert 0.0 <= value <= 1.0, (name, value)
