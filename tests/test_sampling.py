"""Sampling and the grammar masks: top-k, top-p and masks on made-up logits, then the
guarantees that matter to a musician, checked on an untrained model over many seeds (an
untrained model is the hardest case: it would break every rule if the masks let it)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.api import Banger
from bangercli.model.network import PRESETS, build_model
from bangercli.generation.sampling import (
    AFTER_DURVEL,
    AFTER_LONG_TIME,
    AFTER_TIME,
    EXPECT_TIME,
    HEADER,
    Grammar,
    Sampling,
    sample,
)
from bangercli.midi.tokenizer import Tokenizer

TOKENIZER = Tokenizer()
VOCAB = TOKENIZER.vocab_size


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(PRESETS["tiny"]), Tokenizer(), PRESETS["tiny"])


def random_logits(rows: int, *, seed: int) -> np.ndarray:
    return 3.0 * np.random.default_rng(seed).standard_normal((rows, VOCAB), dtype=np.float32)


def rng(seed: int) -> np.random.Generator:
    return np.random.Generator(np.random.PCG64(seed))


def test_top_k_1_is_argmax_among_allowed():
    logits = random_logits(64, seed=1)
    allowed = rng(2).random((64, VOCAB)) < 0.3
    expected = np.where(allowed, logits, -np.inf).argmax(axis=-1)
    generator = rng(3)
    for _ in range(5):
        chosen = sample(logits, allowed, Sampling(temperature=1.5, top_p=1.0, top_k=1), generator)
        assert np.array_equal(chosen, expected)


def test_top_k_keeps_the_k_likeliest_allowed_tokens():
    logits = np.log(np.float32([[0.05, 0.4, 0.1, 0.3, 0.15]]))
    allowed = np.array([[True, True, True, False, True]])
    generator = rng(4)
    seen = {int(sample(logits, allowed, Sampling(top_p=1.0, top_k=2), generator)[0])
            for _ in range(300)}
    assert seen == {1, 4}


def test_tiny_top_p_keeps_only_the_best_token():
    logits = random_logits(64, seed=4)
    allowed = np.ones((64, VOCAB), dtype=bool)
    generator = rng(5)
    for _ in range(5):
        chosen = sample(logits, allowed, Sampling(temperature=1.0, top_p=1e-6), generator)
        assert np.array_equal(chosen, logits.argmax(axis=-1))


def test_top_p_keeps_the_nucleus_and_nothing_else():
    """Probabilities 0.5, 0.3, 0.15, 0.05: top_p 0.75 keeps the first two (0.5 < 0.75 <= 0.8)."""
    logits = np.log(np.float32([[0.5, 0.3, 0.15, 0.05]]))
    allowed = np.ones(logits.shape, dtype=bool)
    generator = rng(6)
    seen = {int(sample(logits, allowed, Sampling(top_p=0.75), generator)[0]) for _ in range(300)}
    assert seen == {0, 1}
    seen = {int(sample(logits, allowed, Sampling(top_p=1.0), generator)[0]) for _ in range(300)}
    assert seen == {0, 1, 2, 3}


def test_untruncated_rows_sample_from_the_whole_distribution():
    """Rows flagged untruncated skip top-p (time tokens: the tail is the rests); the others
    keep only the nucleus, in the same call."""
    logits = np.log(np.float32([[0.5, 0.3, 0.15, 0.05]] * 2))
    allowed = np.ones(logits.shape, dtype=bool)
    flags = np.array([True, False])
    generator = rng(7)
    seen = [set(), set()]
    for _ in range(300):
        chosen = sample(logits, allowed, Sampling(top_p=0.75), generator, untruncated=flags)
        seen[0].add(int(chosen[0]))
        seen[1].add(int(chosen[1]))
    assert seen == [{0, 1, 2, 3}, {0, 1}]


def test_top_p_never_cuts_time_or_duration_only_pitch(banger, monkeypatch):
    """generate() asks for untruncated sampling exactly where a TIME or DURVEL token comes
    next: cutting the tail of those made pieces denser (fewer rests, shorter notes)."""
    import bangercli.generation.decoding as decoding_module

    seen = []

    def spy(logits, allowed, options, generator, *, untruncated=None, rows=None):
        kinds = {TOKENIZER.kind(t) for t in np.flatnonzero(allowed[0]).tolist()}
        seen.append((kinds, bool(untruncated[0])))
        return sample(logits, allowed, options, generator, untruncated=untruncated, rows=rows)

    monkeypatch.setattr(decoding_module, "sample", spy)
    generate(banger, Request(instruments=("piano",), drums=False, only=True, bars=None,
                             tokens=30, seed=1))
    assert seen and all(flag == (kinds <= {"time", "durvel"}) for kinds, flag in seen), seen
    assert any(flag for _, flag in seen) and not all(flag for _, flag in seen)


def test_masked_tokens_are_never_sampled():
    """Even when the masked-out tokens are by far the likeliest, at a high temperature."""
    logits = random_logits(32, seed=7)
    allowed = np.zeros((32, VOCAB), dtype=bool)
    allowed[:, 100:110] = True
    logits[:, :100] += 50.0
    generator = rng(8)
    for options in (Sampling(temperature=5.0, top_p=1.0), Sampling(), Sampling(top_k=20)):
        for _ in range(20):
            chosen = sample(logits, allowed, options, generator)
            assert allowed[np.arange(32), chosen].all()


def test_zero_temperature_is_greedy():
    logits = random_logits(8, seed=9)
    allowed = np.ones((8, VOCAB), dtype=bool)
    chosen = sample(logits, allowed, Sampling(temperature=0.0), rng(0))
    assert np.array_equal(chosen, logits.argmax(axis=-1))


def test_same_generator_seed_same_samples():
    logits = random_logits(16, seed=10)
    allowed = np.ones((16, VOCAB), dtype=bool)
    first = sample(logits, allowed, Sampling(), rng(11))
    again = sample(logits, allowed, Sampling(), rng(11))
    other = sample(logits, allowed, Sampling(), rng(12))
    assert np.array_equal(first, again)
    assert not np.array_equal(first, other)


def test_the_same_seed_writes_the_same_piece_with_any_number_of_blas_threads(banger):
    """One numpy generator per request, seeded with its seed: the tokens do not depend on how
    many threads the products run on (a prefill gets BLAS's threads back)."""
    from threadpoolctl import threadpool_limits

    request = Request(instruments=("guitar",), drums=True, bars=None, tokens=120, variants=3,
                      seed=5)
    pieces = []
    for threads in (1, 2):
        with threadpool_limits(threads, user_api="blas"):
            pieces.append([piece.ids for piece in generate(banger, request)])
    assert pieces[0] == pieces[1]
    assert len({tuple(ids) for ids in pieces[0]}) == 3


# --- the grammar -------------------------------------------------------------------------


def kinds_allowed(mask: np.ndarray) -> set[str]:
    return {TOKENIZER.kind(t) for t in np.flatnonzero(mask).tolist()}


def test_grammar_phases_allow_exactly_the_next_kinds():
    grammar = Grammar(TOKENIZER)
    assert kinds_allowed(grammar.masks[EXPECT_TIME]) == {"time"}
    assert kinds_allowed(grammar.masks[AFTER_LONG_TIME]) == {"time", "durvel"}
    assert kinds_allowed(grammar.masks[AFTER_TIME]) == {"durvel"}
    assert kinds_allowed(grammar.masks[AFTER_DURVEL]) == {"note"}
    assert kinds_allowed(grammar.masks[HEADER]) == {"instrument", "time"}
    assert int(grammar.masks[AFTER_DURVEL].sum()) == 12 * 128


def test_grammar_masks_follow_the_request():
    piano, bass = instrument_named("piano").index, instrument_named("bass").index
    grammar = Grammar(TOKENIZER, allowed_instruments={piano, bass}, drums=False)
    notes = np.flatnonzero(grammar.masks[AFTER_DURVEL]).tolist()
    assert {(t - TOKENIZER.note_offset) // 128 for t in notes} == {piano, bass}
    header = [t for t in np.flatnonzero(grammar.masks[HEADER]).tolist()
              if TOKENIZER.kind(t) == "instrument"]
    assert header == [TOKENIZER.instrument_token(piano), TOKENIZER.instrument_token(bass)]
    no_drums = Grammar(TOKENIZER, drums=False).masks[AFTER_DURVEL]
    assert not bool(no_drums[TOKENIZER.note_token(DRUMS.index, 0):][:128].any())
    assert int(no_drums.sum()) == 11 * 128


def test_advance_and_scan_agree_on_phase_and_time():
    grammar = Grammar(TOKENIZER)
    long, short = TOKENIZER.time_token(255), TOKENIZER.time_token(10)
    durvel, note = TOKENIZER.durvel_token(4, 3), TOKENIZER.note_token(0, 60)
    ids = [Tokenizer.START, Tokenizer.DRUMS_ON, long, long, short, durvel, note, short]
    phase, time = np.array([HEADER]), np.array([0])
    for i, token in enumerate(ids):
        phase, time = grammar.advance(phase, time, np.array([token]))
        assert grammar.scan(ids[: i + 1]) == (int(phase[0]), int(time[0]))
    assert grammar.scan(ids) == (AFTER_TIME, 255 + 255 + 10 + 10)
    assert grammar.scan(ids[:3]) == (AFTER_LONG_TIME, 255)


# --- the guarantees, on an untrained model -----------------------------------------------

SEEDS = range(20)


def decoded(banger: Banger, piece):
    score = banger.tokenizer.decode_score(piece.ids)
    assert score.invalid_tokens == 0, f"seed {piece.seed}: {score.invalid_tokens} invalid tokens"
    return score


def test_no_drums_means_no_drum_notes(banger):
    notes = 0
    for seed in SEEDS:
        for piece in generate(banger, Request(drums=False, bars=None, tokens=45, variants=2,
                                              seed=seed)):
            score = decoded(banger, piece)
            assert all(n.instrument != DRUMS.index for n in score.notes), f"seed {seed}"
            assert piece.ids[1] == Tokenizer.DRUMS_OFF and not piece.drums
            notes += len(score.notes)
    assert notes > 200  # the check saw plenty of notes


def test_only_means_only_the_listed_instruments(banger):
    allowed = {instrument_named("bass").index, instrument_named("strings").index, DRUMS.index}
    notes = 0
    for seed in SEEDS:
        request = Request(instruments=("bass", "strings"), only=True, drums=True, bars=None,
                          tokens=45, variants=2, seed=seed)
        for piece in generate(banger, request):
            score = decoded(banger, piece)
            assert {n.instrument for n in score.notes} <= allowed, f"seed {seed}"
            assert set(piece.instruments) <= {"bass", "strings"}
            notes += len(score.notes)
    assert notes > 200


def test_only_the_instruments_in_the_header_play(banger):
    """Without --only the model may add instruments, but as in training it lists them in the
    header first: every note belongs to the header's band (requested ones first, none listed
    twice), so no piece gets stray one-note parts on a dozen instruments."""
    guitar, drums = instrument_named("guitar").index, DRUMS.index
    added = 0
    for seed in SEEDS:
        for piece in generate(banger, Request(instruments=("guitar",), drums=True, bars=None,
                                              tokens=60, variants=6, seed=seed)):
            score = decoded(banger, piece)
            listed = list(score.header.instruments)
            assert listed[0] == guitar and len(listed) == len(set(listed)), listed
            assert {n.instrument for n in score.notes} <= set(listed) | {drums}, f"seed {seed}"
            added += len(listed) - 1
    # the untrained model did add instruments (about one piece in 30 does): the rule was
    # exercised
    assert added > 0


def test_no_note_is_played_twice_at_one_onset(banger):
    """Every NOTE token is a note of its own: the same instrument and pitch at the same onset
    again (which decoding would merge away) is masked, even for a model that would repeat
    itself there forever (this one: every NOTE logit but one pitch of each instrument very
    low, and TIME(0) very likely)."""
    tokenizer = banger.tokenizer

    class Stubborn:
        def __init__(self, inner):
            self.inner = inner

        def __getattr__(self, name):
            return getattr(self.inner, name)

        def _bias(self, logits):
            logits = logits.copy()
            logits[:, tokenizer.note_offset:] -= 20.0
            for instrument in range(12):
                logits[:, tokenizer.note_token(instrument, 60)] += 40.0
            logits[:, tokenizer.time_token(0)] += 20.0
            return logits

        def prefill(self, *args):
            return self._bias(self.inner.prefill(*args))

        def step(self, *args):
            return self._bias(self.inner.step(*args))

    real = banger.decoder
    banger._decoder = Stubborn(real)
    try:
        pieces = generate(banger, Request(instruments=("piano",), only=True, drums=False,
                                          bars=None, tokens=90, variants=2, seed=3))
    finally:
        banger._decoder = real
    for piece in pieces:
        score = decoded(banger, piece)
        note_tokens = sum(banger.tokenizer.kind(t) == "note" for t in piece.ids)
        assert note_tokens == len(score.notes) > 20  # no duplicate merged away
        assert len({(n.start, n.pitch) for n in score.notes}) == len(score.notes)


def test_the_model_choosing_everything_stays_grammatical(banger):
    """No instruments, drums unset: the model writes the header too, and still every
    sequence decodes without a single invalid token."""
    for seed in range(8):
        for piece in generate(banger, Request(bars=3, variants=2, seed=seed)):
            decoded(banger, piece)
            assert piece.ids[0] == Tokenizer.START
            assert piece.ids[1] in (Tokenizer.DRUMS_ON, Tokenizer.DRUMS_OFF)


@pytest.mark.parametrize("options", [Sampling(), Sampling(temperature=1.3, top_p=0.8),
                                     Sampling(temperature=0.0)])
def test_rows_that_do_not_draw_still_use_up_their_numbers(options):
    """`rows`: those rows draw what they would have drawn with every row drawing, the others
    get PAD, and the generator ends where it would have (the next draw is the same too)."""
    logits = random_logits(6, seed=3)
    allowed = np.ones((6, VOCAB), dtype=bool)
    allowed[:, :16] = False
    every, some = rng(11), rng(11)
    for _ in range(3):
        all_rows = sample(logits, allowed, options, every)
        drawn = sample(logits, allowed, options, some, rows=[1, 4, 5])
        assert drawn[[1, 4, 5]].tolist() == all_rows[[1, 4, 5]].tolist()
        assert drawn[[0, 2, 3]].tolist() == [Tokenizer.PAD] * 3
    assert every.random() == some.random()
