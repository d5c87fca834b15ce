"""The sampling loop, now numpy and Python only, gives exactly what the torch code it replaced
gave from the same numbers.

The references below are the torch implementations of earlier releases, kept here as they
were but for two things: the sort is stable (equal logits in vocabulary order, as numpy's is;
torch's default sort left their order open) and the draw takes its uniform numbers as an
argument, so the numpy draw (numpy's generator) and the reference see the same numbers."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bangercli.generation.sampling import (
    _KIND_IDS, AFTER_DURVEL, AFTER_LONG_TIME, AFTER_TIME, EXPECT_TIME, PHASES, Grammar,
    Sampling, Steering, sample, sample_logits,
)
from bangercli.midi.instruments import DRUMS, INSTRUMENTS
from bangercli.midi.tokenizer import Tokenizer

TOKENIZER = Tokenizer()
VOCAB = TOKENIZER.vocab_size


def reference_advance(grammar: Grammar, phase, time, token):
    kind = torch.from_numpy(grammar.kind)[token]
    is_time = kind == _KIND_IDS["time"]
    time = time + torch.where(is_time, torch.from_numpy(grammar.shift)[token], 0)
    phase = torch.where(is_time & (token == grammar.max_time_token), AFTER_LONG_TIME,
            torch.where(is_time, AFTER_TIME,
            torch.where(kind == _KIND_IDS["durvel"], AFTER_DURVEL,
            torch.where(kind == _KIND_IDS["note"], EXPECT_TIME, phase))))
    return phase, time


def reference_sample_logits(logits: torch.Tensor, options: Sampling) -> torch.Tensor:
    if options.top_k and options.top_k < logits.shape[-1]:
        kth = torch.topk(logits, options.top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if options.top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True, stable=True)
        probs = torch.softmax(sorted_logits, dim=-1)
        drop = (probs.cumsum(dim=-1) - probs) >= options.top_p
        logits = logits.masked_fill(torch.empty_like(drop).scatter_(-1, order, drop),
                                    float("-inf"))
    return logits


def reference_sample(logits, allowed, options, uniform, *, untruncated=None):
    logits = logits.float().masked_fill(~allowed, float("-inf"))
    if options.temperature <= 0:
        return logits.argmax(dim=-1)
    if options.temperature != 1.0:
        logits = logits / options.temperature
    if options.top_p < 1.0 or (0 < options.top_k < logits.shape[-1]):
        if untruncated is None or not bool(untruncated.any()):
            logits = reference_sample_logits(logits, options)
        elif not bool(untruncated.all()):
            cut = ~untruncated
            logits[cut] = reference_sample_logits(logits[cut], options)
    probs = torch.softmax(logits, dim=-1)
    cdf = probs.cumsum(dim=-1)
    u = uniform * cdf[:, -1:]
    token = torch.searchsorted(cdf, u, right=True).squeeze(1).clamp(max=probs.shape[-1] - 1)
    drawn = probs.gather(1, token[:, None]).squeeze(1) > 0
    return torch.where(drawn, token, probs.argmax(dim=-1))


def reference_bonus(steering: Steering, counts: torch.Tensor, logits, phase):
    choosing = phase == AFTER_DURVEL
    bonus = torch.zeros_like(counts)
    wanted = steering.wanted
    bonus[:, wanted] += steering.strength * (counts[:, wanted] == 0)
    if steering.instruments:
        lead = steering.instruments[0]
        others = torch.zeros(len(INSTRUMENTS), dtype=torch.bool)
        others[steering.others] = True
        behind = counts[:, lead] <= counts[:, others].max(dim=1).values
        bonus[:, lead] += steering.strength * behind
        ahead = (counts >= counts[:, lead : lead + 1]) & others
        bonus -= steering.strength * (ahead & behind[:, None])
    bonus *= choosing[:, None]
    start = TOKENIZER.note_offset
    logits = logits.clone()
    notes = logits[:, start : start + 128 * len(INSTRUMENTS)].view(len(logits), -1, 128)
    notes += bonus[:, :, None]
    return logits


def test_grammar_table_moves_as_the_chain_of_wheres():
    grammar = Grammar(TOKENIZER)
    tokens = np.tile(np.arange(VOCAB), PHASES)
    phases = np.repeat(np.arange(PHASES), VOCAB)
    times = np.random.default_rng(1).integers(0, 1000, len(tokens))
    phase, time = grammar.advance(phases, times, tokens)
    expected_phase, expected_time = reference_advance(
        grammar, *map(torch.from_numpy, (phases, times, tokens)))
    assert np.array_equal(phase, expected_phase) and np.array_equal(time, expected_time)


def random_case(seed: int, rows: int, kept: float):
    generator = torch.Generator().manual_seed(seed)
    logits = torch.randn(rows, VOCAB, generator=generator) * 3
    logits[:, :7] = logits[:, 7:14]  # some exact ties
    allowed = torch.rand(rows, VOCAB, generator=generator) < kept
    allowed[:, 0] = True
    return logits, allowed


@pytest.mark.parametrize("options", [
    Sampling(), Sampling(top_p=0.5), Sampling(top_k=40), Sampling(top_p=0.9, top_k=40),
])
def test_the_nucleus_is_the_same(options):
    for seed in range(10):
        logits, allowed = random_case(seed, rows=3, kept=0.1 + 0.08 * seed)
        masked = logits.masked_fill(~allowed, float("-inf"))
        expected = reference_sample_logits(masked, options)
        assert np.array_equal(sample_logits(masked.numpy(), options), expected.numpy())
        assert (expected.isfinite().sum(dim=-1) > 1).any()  # the cut kept more than one


@pytest.mark.parametrize("top_p", [0.1, 0.3, 0.5, 0.77, 0.95])
def test_the_nucleus_cuts_inside_ties_in_vocabulary_order(top_p):
    """Logits of a few levels only: the cut falls among equal logits, and the ones kept are
    the first in vocabulary order, as the stable sort of the reference keeps them."""
    cut_inside_ties = 0
    for seed in range(10):
        generator = torch.Generator().manual_seed(100 + seed)
        logits = torch.randint(0, 3, (4, VOCAB), generator=generator).float()
        allowed = torch.rand(4, VOCAB, generator=generator) < 0.02 * (seed + 1)
        masked = logits.masked_fill(~allowed, float("-inf"))
        expected = reference_sample_logits(masked, Sampling(top_p=top_p))
        assert np.array_equal(sample_logits(masked.numpy(), Sampling(top_p=top_p)),
                              expected.numpy())
        last = expected.masked_fill(expected.isinf(), float("inf")).min(dim=-1).values
        tied_out = (masked == last[:, None]) & expected.isinf()
        cut_inside_ties += int(tied_out.any(dim=-1).sum())
    assert cut_inside_ties >= 10  # the cases really cut inside a run of equal logits


@pytest.mark.parametrize("options", [
    Sampling(), Sampling(temperature=1.2, top_p=0.9, top_k=40), Sampling(top_p=1.0),
    Sampling(temperature=0.0), Sampling(temperature=0.7, top_p=0.3),
])
def test_the_same_tokens_are_drawn(options):
    """numpy's softmax, running sum and draw against torch's, given the same uniform numbers
    (those of the seeded numpy generator `sample` is given)."""
    drawn_tokens = set()
    for seed in range(20):
        rows = 1 + seed % 5
        logits, allowed = random_case(seed, rows=rows, kept=0.05 + 0.04 * seed)
        flags = torch.rand(rows, generator=torch.Generator().manual_seed(seed)) < 0.5
        for untruncated in (None, flags):
            uniform = np.random.default_rng(seed).random((rows, 1), dtype=np.float32)
            drawn = sample(logits.numpy(), allowed.numpy(), options, np.random.default_rng(seed),
                           untruncated=None if untruncated is None else untruncated.numpy())
            expected = reference_sample(logits, allowed, options, torch.from_numpy(uniform),
                                        untruncated=untruncated)
            assert np.array_equal(drawn, expected.numpy()), (seed, untruncated)
            drawn_tokens.update(drawn.tolist())
    assert len(drawn_tokens) > 20  # many different tokens: the comparison saw real draws


@pytest.mark.parametrize("instruments, drums", [([0, 4], True), ([3], False), ([], True),
                                                ([4, 0, 7], None),
                                                ([DRUMS.index, 2], True)])
def test_the_steering_bonus_is_the_same(instruments, drums):
    generator = torch.Generator().manual_seed(3)
    rows = 6
    steering = Steering(TOKENIZER, instruments, strength=1.7, batch=rows, prefix=[],
                        drums=drums)
    for _ in range(30):
        played = torch.randint(0, len(INSTRUMENTS), (rows,), generator=generator)
        pitch = torch.randint(0, 128, (rows,), generator=generator)
        steering.update((TOKENIZER.note_offset + 128 * played + pitch).numpy())
        phase = torch.randint(0, PHASES, (rows,), generator=generator)
        phase[0] = AFTER_DURVEL
        logits = torch.randn(rows, VOCAB, generator=generator)
        expected = reference_bonus(steering, torch.from_numpy(steering.counts).float(), logits,
                                   phase).numpy()
        assert np.array_equal(steering.apply(logits.numpy(), phase.numpy()), expected)
        assert np.array_equal(steering.apply(logits.numpy(), phase.tolist()), expected)
