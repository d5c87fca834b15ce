"""Steering: requested instruments that are missing or behind the lead get a logit bonus."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.midi.instruments import instrument_named
from bangercli.api import Banger
from bangercli.model.network import PRESETS, build_model
from bangercli.generation.sampling import AFTER_DURVEL, EXPECT_TIME, Steering
from bangercli.midi.tokenizer import Tokenizer

GUITAR, BASS = instrument_named("guitar").index, instrument_named("bass").index


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(PRESETS["tiny"]), Tokenizer(), PRESETS["tiny"])


def test_bonus_goes_to_missing_instruments_and_a_lead_that_is_behind():
    tokenizer = Tokenizer()
    steering = Steering(tokenizer, [GUITAR, BASS], strength=2.0, batch=2, prefix=[])
    logits = np.zeros((2, tokenizer.vocab_size), dtype=np.float32)
    phase = np.array([AFTER_DURVEL, EXPECT_TIME])
    out = steering.apply(logits, phase)
    guitar = tokenizer.note_token(GUITAR, 60)
    bass = tokenizer.note_token(BASS, 40)
    assert out[0, guitar] == 4.0  # missing and (tied at zero) behind
    assert out[0, bass] == 0.0  # missing (+2), but level with a lead that is behind (-2)
    piano = tokenizer.note_token(instrument_named("piano").index, 60)
    drum = tokenizer.note_token(instrument_named("drums").index, 36)
    # unlisted melodic: level with a lead that is behind; drums are no rival of the lead
    assert out[0, piano] == -2.0 and out[0, drum] == 0.0
    assert np.abs(out[1]).sum() == 0 and not logits.any()  # untouched, and the caller's too
    # once the lead leads and everyone is present, no bonus
    for token in [guitar, guitar, bass]:
        steering.update(np.array([token, token]))
    out = steering.apply(logits, phase)
    assert out[0, guitar] == 0 and out[0, bass] == 0 and out[0, piano] == 0
    # the bass overtakes: the lead gets the bonus back and the bass the malus
    for token in [bass, bass]:
        steering.update(np.array([token, token]))
    out = steering.apply(logits, phase)
    assert out[0, guitar] == 2.0 and out[0, bass] == -2.0


def test_steering_makes_an_untrained_model_play_the_requested_lead(banger):
    def lead_rate(steer: float) -> float:
        pieces = [piece for seed in (5, 6, 7)
                  for piece in generate(banger, Request(instruments=("guitar", "bass"),
                                                        drums=False, tokens=150, variants=12,
                                                        seed=seed, steer=steer))]
        led = 0
        for piece in pieces:
            counts = [sum(n.instrument == i for n in piece.notes) for i in range(11)]
            led += counts[GUITAR] == max(counts) and counts[BASS] > 0
        return led / len(pieces)

    assert lead_rate(5.0) == 1.0
    assert lead_rate(0.0) < 0.75  # about half of 36 pieces without steering


def test_steer_out_of_range_is_a_usage_error():
    from bangercli.errors import UsageError

    with pytest.raises(UsageError):
        Request(steer=-1).validate()


def test_sampling_draws_from_the_softmax_of_the_allowed_tokens():
    from bangercli.generation.sampling import Sampling, sample

    logits = np.log(np.float32([[0.5, 0.3, 0.2, 1e-9]])).repeat(20000, axis=0)
    allowed = np.array([[True, True, True, False]]).repeat(20000, axis=0)
    tokens = sample(logits, allowed, Sampling(temperature=1.0, top_p=1.0),
                    np.random.default_rng(0))
    frequencies = np.bincount(tokens, minlength=4) / len(tokens)
    assert np.allclose(frequencies, [0.5, 0.3, 0.2, 0.0], atol=0.015)
