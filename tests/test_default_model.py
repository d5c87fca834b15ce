"""The model shipped inside the package: it loads by name and obeys the controls.

Marked slow (it loads the real weights and generates), but part of the CI command."""

from __future__ import annotations

import pytest

from bangercli import load_model
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.paths import package_models_dir

pytestmark = pytest.mark.slow


@pytest.fixture(scope="module")
def banger():
    if not (package_models_dir() / "default.safetensors").is_file():
        pytest.fail("the default model is not in the package (src/bangercli/weights/)")
    return load_model("default")


def test_the_default_model_is_small_enough_for_a_wheel():
    size = (package_models_dir() / "default.safetensors").stat().st_size
    assert size <= 20 * 1024 * 1024
    assert (package_models_dir() / "NOTICE.md").is_file()  # the corpus' license notices


@pytest.mark.parametrize("request_options", [
    dict(instruments=["guitar"], drums=True),
    dict(instruments=["piano"], drums=False, only=True),
    dict(instruments=["bass", "guitar"], drums=True, only=True),
    dict(instruments=["strings"], drums=False),
])
def test_the_default_model_obeys_the_controls(banger, request_options):
    pieces = banger.generate(bars=2, variants=2, seed=3, **request_options)
    assert len(pieces) == 2
    wanted = {instrument_named(name).index for name in request_options["instruments"]}
    for piece in pieces:
        assert banger.tokenizer.decode_score(piece.ids).invalid_tokens == 0
        assert piece.bars == 2
        assert all(note.start + note.duration <= 2 * 32 for note in piece.notes)
        present = {note.instrument for note in piece.notes}
        if request_options.get("drums") is False:
            assert DRUMS.index not in present
        if request_options.get("only"):
            assert present - {DRUMS.index} <= wanted
    # A trained model writes music, not silence: some notes in most pieces.
    assert sum(len(piece.notes) for piece in pieces) >= 8


def test_the_default_model_is_reproducible(banger):
    first = banger.generate(instruments=["guitar"], drums=True, bars=1, seed=11)
    second = banger.generate(instruments=["guitar"], drums=True, bars=1, seed=11)
    assert first[0].ids == second[0].ids
