"""Musical metrics with answers worked out by hand, the adherence checks, and
`banger evaluate --samples`: conditions, and real pieces beside pieces from their headers."""

from __future__ import annotations

import math

import pytest
import torch

from bangercli.api import load_model
from bangercli.model.checkpoint import save_checkpoint
from bangercli.evaluation.samples import (
    MATCHED_PER_SAMPLE, evaluate_music, header_request, prompt_request, real_pieces, spread,
)
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.evaluation.metrics import (
    adherence, empty_beat_rate, groove_consistency, mean_metrics, note_density,
    pitch_class_entropy, polyphony, scale_consistency,
)
from bangercli.model.network import build_model, model_config
from bangercli.midi.score import Header, Note
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig
from test_train import make_corpus

PIANO = instrument_named("piano").index
GUITAR = instrument_named("guitar").index
BASS = instrument_named("bass").index
BAR = 32  # grid steps per 4/4 bar
BEAT = 8


def melody(pitches, *, step: int = BEAT, instrument: int = PIANO) -> list[Note]:
    return [Note(i * step, step, instrument, p, 4) for i, p in enumerate(pitches)]


# --- pitch ---------------------------------------------------------------------------------


def test_pitch_class_entropy_counts_pitch_classes_of_melodic_notes():
    assert pitch_class_entropy(melody([60, 72, 48])) == 0.0  # one pitch class, three octaves
    assert pitch_class_entropy(melody([60, 64, 67])) == pytest.approx(math.log2(3))
    assert pitch_class_entropy(melody(range(60, 72))) == pytest.approx(math.log2(12))
    drums = [Note(0, 1, DRUMS.index, pitch, 4) for pitch in (36, 38, 42)]
    assert pitch_class_entropy(melody([60]) + drums) == 0.0  # drum "pitches" are not notes
    assert math.isnan(pitch_class_entropy(drums))


def test_scale_consistency_is_the_best_fitting_major_or_minor_scale():
    c_major = [60, 62, 64, 65, 67, 69, 71]
    assert scale_consistency(melody(c_major)) == 1.0
    # F sharp fits G major, which lacks F: 7 of the 8 notes fit the best scale
    assert scale_consistency(melody(c_major + [66])) == pytest.approx(7 / 8)
    # A harmonic minor: G sharp with F, B and C fits no major or natural minor scale
    assert scale_consistency(melody([57, 59, 60, 62, 64, 65, 68])) == pytest.approx(6 / 7)
    assert scale_consistency(melody([60, 61, 62, 63])) < 1.0


def test_polyphony_averages_sounding_notes_where_any_sound():
    chord = [Note(0, 4, PIANO, p, 4) for p in (60, 64, 67)]
    single = [Note(4, 4, PIANO, 72, 4)]
    assert polyphony(chord + single) == pytest.approx((3 * 4 + 1 * 4) / 8)
    # a gap of silence does not count
    assert polyphony([Note(0, 4, PIANO, 60, 4), Note(100, 4, PIANO, 62, 4)]) == 1.0


# --- rhythm --------------------------------------------------------------------------------


def test_groove_consistency_compares_onset_patterns_of_consecutive_bars():
    beat = [Note(bar * BAR + s, 1, DRUMS.index, 36, 4) for bar in range(4) for s in (0, 8, 16, 24)]
    assert groove_consistency(beat, steps_per_bar=BAR) == 1.0
    changed = beat + [Note(BAR + 4, 1, DRUMS.index, 38, 4)]  # bar 2 has one extra onset
    # that onset differs from bar 1 and from bar 3: 2 of 3 transitions, 1 of 32 positions
    assert groove_consistency(changed, steps_per_bar=BAR) == pytest.approx(1 - (2 / 32) / 3)
    assert math.isnan(groove_consistency(beat[:4], steps_per_bar=BAR))  # one bar: undefined


def test_empty_beats_and_density_count_over_the_requested_length():
    notes = [Note(0, 4, PIANO, 60, 4), Note(2, 4, PIANO, 64, 4), Note(2 * BEAT, 4, PIANO, 67, 4)]
    # 2 bars = 8 beats, onsets in beats 0 and 2 only
    assert empty_beat_rate(notes, steps_per_beat=BEAT, beats=8) == pytest.approx(6 / 8)
    assert note_density(notes, steps_per_bar=BAR, bars=2) == 1.5
    assert note_density(notes, steps_per_bar=BAR) == 3.0  # length from the last onset: 1 bar


def test_mean_metrics_ignores_undefined_values():
    rows = [{"a": 1.0, "b": math.nan}, {"a": 3.0, "b": 2.0}]
    assert mean_metrics(rows) == {"a": 2.0, "b": 2.0}
    assert math.isnan(mean_metrics([{"a": math.nan}])["a"])


# --- adherence -----------------------------------------------------------------------------


def test_adherence_checks_each_part_of_the_request():
    notes = (melody([60] * 5, instrument=GUITAR) + melody([40] * 3, instrument=BASS)
             + [Note(0, 1, DRUMS.index, 36, 4)])
    ok = adherence(notes, instruments=[GUITAR, BASS], drums=True, only=True)
    assert ok == {"instruments_present": True, "lead_most_notes": True, "drums": True,
                  "only": True}
    wrong = adherence(notes, instruments=[BASS, PIANO], drums=False, only=True)
    assert wrong == {"instruments_present": False, "lead_most_notes": False, "drums": False,
                     "only": False}
    free = adherence(notes, instruments=[], drums=None, only=False)
    assert free == {"instruments_present": None, "lead_most_notes": None, "drums": None,
                    "only": None}


# --- the evaluation ------------------------------------------------------------------------


def test_spread_picks_evenly_and_never_more_than_there_are():
    assert spread(list(range(10)), 3) == [1, 5, 8]
    assert spread(list(range(4)), 9) == [0, 1, 2, 3]
    assert spread([], 3) == []


def test_a_header_asks_for_its_instruments_lead_first_and_its_drums_flag():
    header = Header(drums=True, instruments=(GUITAR, DRUMS.index, BASS))
    assert header_request(header) == (("guitar", "drums", "bass"), True)
    assert header_request(Header(drums=False)) == ((), False)
    # a drum track alone asks for drums only, not for drums and whatever band the model adds
    assert header_request(Header(drums=True)) == (("drums",), True)


def test_a_prompt_is_continued_with_its_own_parts_not_the_whole_pieces():
    tokenizer = Tokenizer()
    prompt = ([Note(i, 4, BASS, 40, 5) for i in range(0, 32, 8)]
              + [Note(i, 4, PIANO, 60, 5) for i in range(0, 32, 4)]
              + [Note(0, 1, DRUMS.index, 36, 5)])
    assert prompt_request(tokenizer, prompt) == (("piano", "bass"), True)  # lead first
    assert prompt_request(tokenizer, prompt[:4]) == (("bass",), False)
    assert prompt_request(tokenizer, prompt[-1:]) == (("drums",), True)


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), pieces=16)


@pytest.fixture(scope="module")
def banger(tmp_path_factory):
    torch.manual_seed(0)
    config = model_config("tiny", seq_len=64)
    path = tmp_path_factory.mktemp("model") / "tiny.safetensors"
    save_checkpoint(path, build_model(config), config=config, tokenizer_config=TokenizerConfig())
    return load_model(path)


def test_music_evaluation_checks_conditions_and_matches_real_headers(banger, corpus):
    """An untrained model still obeys what the masks guarantee (decoding, drums, --only), and
    the yardstick pairs each real piece with a piece generated from its own header."""
    conditions = {"guitar+drums": dict(instruments=("guitar",), drums=True),
                  "bass only": dict(instruments=("bass",), drums=False, only=True)}
    real = real_pieces(corpus, split="validation", bars=2, tokenizer=Tokenizer())
    assert real and all(max(n.start for n in notes) < 2 * BAR for _, notes in real)
    result = evaluate_music(banger, samples=1, bars=2, conditions=conditions, data_dir=corpus)
    report = result.to_json()
    assert set(report["conditions"]) == set(conditions)
    assert all(row["decodable"] == 1.0 for row in report["conditions"].values())
    assert report["conditions"]["bass only"]["drums"] == 1.0  # --no-drums: masked
    assert report["conditions"]["bass only"]["only"] == 1.0
    assert result.matched_pieces == min(len(real), MATCHED_PER_SAMPLE)
    assert set(report["real"]) == set(report["generated"]) == set(report["relative_to_real"])
    assert report["real"]["note_density"] == pytest.approx(
        mean_metrics([{"d": len(notes) / 2} for _, notes in
                      spread(real, MATCHED_PER_SAMPLE)])["d"])
    again = evaluate_music(banger, samples=1, bars=2, conditions=conditions, data_dir=corpus)
    assert again.to_json() == report  # seeded: the same figures every run
