"""Echo: the piece's memory of what followed each point, mixed into the model's choice."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from bangercli.api import Banger
from bangercli.errors import UsageError
from bangercli.evaluation.structure import material_reuse
from bangercli.generation.echo import (BarMemory, Echo, PieceMemory, bar_probabilities,
                                      echo_probabilities)
from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.midi.tokenizer import Tokenizer
from bangercli.model.network import PRESETS, build_model
from test_generate import EagerDecoder

BAR = 32
GUITAR = instrument_named("guitar").index


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(PRESETS["tiny"]), Tokenizer(), PRESETS["tiny"])


def riff(tokenizer: Tokenizer, bars: int) -> list[int]:
    """START DRUMS_OFF INSTRUMENT(guitar), then one bar of four guitar notes, `bars` times."""
    ids = [Tokenizer.START, Tokenizer.DRUMS_OFF, tokenizer.instrument_token(GUITAR)]
    for bar in range(bars):
        for i, pitch in enumerate((40, 47, 52, 47)):
            shift = 0 if bar == i == 0 else 8
            ids += [tokenizer.time_token(shift), tokenizer.durvel_token(4, 5),
                    tokenizer.note_token(GUITAR, pitch)]
    return ids


def test_the_memory_knows_what_followed_the_same_point_of_the_bar(tokenizer):
    memory = PieceMemory(tokenizer, orders=(3,))
    ids = riff(tokenizer, 2)
    for token in ids:  # the header's tokens are not music: they are skipped
        memory.add(token)
    assert memory.time == 2 * BAR - 8  # the last onset: bar 2, beat 4
    # the second bar's last note: after it came, in bar 1, a TIME(8) into the next bar
    assert memory.next_counts() == ({tokenizer.time_token(8): 1}, 3)
    memory.add(tokenizer.time_token(8))  # (bar 1 began with no notes before it)
    assert memory.next_counts() == ({tokenizer.durvel_token(4, 5): 1}, 3)
    memory.add(tokenizer.durvel_token(4, 5))
    assert memory.next_counts() == ({tokenizer.note_token(GUITAR, 40): 1}, 3)
    # the same tokens at another place in the bar are another point
    memory.add(tokenizer.time_token(3))
    assert memory.next_counts() == (None, 0)
    # backing off: where the last two notes are new, the last note alone may be known
    backing = PieceMemory(tokenizer, orders=(6, 3))
    for token in looped_riff(tokenizer, 2):
        backing.add(token)
    assert backing.next_counts()[1] == 6
    backing.recent[0] = tokenizer.time_token(7)  # the note before the last was another
    counts, order = backing.next_counts()
    assert order == 3 and counts == {tokenizer.time_token(10): 1}
    # echo's own probabilities of a piece: NaN until a point is heard again, then exact
    p, matched = echo_probabilities(riff(tokenizer, 3), tokenizer, orders=(3,))
    assert np.isnan(p[:3]).all() and np.nanmin(p) == 1.0
    assert (~np.isnan(p)).sum() > 2 * 12 - 6 and set(matched[~np.isnan(p)]) == {3}


def test_the_mixture_only_reweights_allowed_tokens_of_rows_at_a_known_point(tokenizer):
    prefix = riff(tokenizer, 2) + [tokenizer.time_token(8)]
    echo = Echo(tokenizer, weight=0.5, batch=2, prefix=prefix, orders=(3,), trust_power=None)
    echo.memories[1].add(tokenizer.time_token(1))  # row 1 moves somewhere new
    logits = np.zeros((2, tokenizer.vocab_size), dtype=np.float32)
    allowed = np.zeros_like(logits, dtype=bool)
    allowed[:, tokenizer.durvel_offset:tokenizer.note_offset] = True
    mixed = echo.mix(logits, allowed)
    assert not logits.any()  # the caller's array is untouched
    assert (mixed[1] == 0).all()  # no memory of this point: the model alone
    assert (mixed[0][~allowed[0]] == 0).all()  # what the masks forbid is their business
    p = np.exp(mixed[0][allowed[0]].astype(np.float64))
    p /= p.sum()
    known = tokenizer.durvel_token(4, 5)
    # the TIME(8) was what the echo said: the row follows it, and w = 0.5 compounds to 0.75
    assert echo.memories[0].following and not echo.memories[1].following
    share = p[known - tokenizer.durvel_offset]
    assert share == pytest.approx(0.75 + 0.25 / allowed[0].sum(), rel=1e-5)
    assert np.delete(p, known - tokenizer.durvel_offset) == pytest.approx(0.25 / allowed[0].sum())
    # when what followed is not allowed now, the row keeps the model's logits
    allowed[0, known] = False
    assert (echo.mix(logits, allowed)[0] == 0).all()
    off = Echo(tokenizer, weight=0, batch=2, prefix=prefix)
    assert off.mix(logits, allowed) is logits and not off.memories and not off.bars


def test_the_bar_echo_guesses_what_the_piece_played_bars_ago_and_trusts_the_lags_that_hit(
        tokenizer):
    memory = BarMemory(tokenizer, lags=(1, 2))
    for token in looped_riff(tokenizer, 2):
        memory.add(token)
    assert memory.time == BAR + 22 and memory.expect == "time"
    # one bar ago, after the note at 22 came the next bar's downbeat: TIME(10); two bars ago
    # is before the piece began
    assert memory.guesses == [tokenizer.time_token(10), -1]
    # lag 1 guessed right each of bar 2's tokens after its first TIME (taken at time 22,
    # when one bar ago was before the piece): 17 hits from trust 0
    hit_every_time = 1 - 0.9 ** 17
    assert memory.trust == pytest.approx([hit_every_time, 0.0])
    votes, trust = memory.votes()
    assert votes == {tokenizer.time_token(10): 1.0} and trust == pytest.approx(hit_every_time)
    for token, kind in ((tokenizer.time_token(10), "durvel"),
                        (tokenizer.durvel_token(2, 5), "note")):
        memory.add(token)
        assert memory.expect == kind
    assert memory.guesses[0] == tokenizer.note_token(GUITAR, 40)
    # a lag that misses loses trust; two notes at one onset: the second is guessed too
    memory.add(tokenizer.note_token(GUITAR, 41))
    assert memory.trust[0] < hit_every_time
    # notes that began together line up by the chord order (the header's instruments, drums
    # last; high to low), not by count: bar 1 has guitar, bass and a kick on its downbeat,
    # bar 2 begins with the bass alone, so the kick is what comes next, not the bass again
    bass = instrument_named("bass").index
    chord = BarMemory(tokenizer, lags=(1,))
    downbeat = [(GUITAR, 52, 3), (bass, 40, 4), (DRUMS.index, 36, 6)]
    for token in [Tokenizer.START, Tokenizer.DRUMS_ON, tokenizer.instrument_token(GUITAR),
                  tokenizer.instrument_token(bass)]:
        chord.add(token)
    for instrument, pitch, length in downbeat:
        chord.add(tokenizer.time_token(0))
        chord.add(tokenizer.durvel_token(length, 5))
        chord.add(tokenizer.note_token(instrument, pitch))
    chord.add(tokenizer.time_token(BAR))
    assert chord.guesses == [tokenizer.durvel_token(3, 5)]  # the guitar's, first in order
    for token in (tokenizer.durvel_token(4, 5), tokenizer.note_token(bass, 40)):
        chord.add(token)
    assert chord.guesses == [tokenizer.time_token(0)]  # another note began there: shift 0
    chord.add(tokenizer.time_token(0))
    assert chord.guesses == [tokenizer.durvel_token(6, 5)]  # the kick's
    chord.add(tokenizer.durvel_token(6, 5))
    assert chord.guesses == [tokenizer.note_token(DRUMS.index, 36)]
    chord.add(tokenizer.note_token(DRUMS.index, 36))
    assert chord.guesses == [tokenizer.time_token(BAR)]  # nothing after the kick: next onset
    twin = chord.copy()
    twin.add(tokenizer.time_token(0))
    assert chord.expect == "time" and twin.expect == "durvel"  # copies are independent
    assert len(chord.groups[BAR]) == 2 and twin.guesses != chord.guesses
    # on a loop, the bar echo is sure from its first hit (bar 2's second token) on: a lag
    # that has never hit has no say
    p, trust = bar_probabilities(looped_riff(tokenizer, 3), tokenizer)
    assert (p[:20] == 0).all() and (p[20:] == 1).all() and trust[-1] > trust[20] > 0


def test_the_bar_echo_mixes_at_the_echos_weight_times_its_trust(tokenizer):
    prefix = looped_riff(tokenizer, 3)
    # points of 60 tokens are never heard twice in three bars: only the bar echo speaks
    echo = Echo(tokenizer, weight=0.5, batch=1, prefix=prefix, orders=(60,), trust_power=1)
    assert echo.memories[0].next_counts() == (None, 0)
    logits = np.zeros((1, tokenizer.vocab_size), dtype=np.float32)
    allowed = np.zeros_like(logits, dtype=bool)
    allowed[:, tokenizer.time_offset:tokenizer.durvel_offset] = True
    p = np.exp(echo.mix(logits, allowed)[0][allowed[0]].astype(np.float64))
    p /= p.sum()
    _, trust = echo.bars[0].votes()
    w = 0.5 * trust
    assert 0.4 < w < 0.5
    assert p[10] == pytest.approx(w + (1 - w) / allowed.sum(), rel=1e-5)  # TIME(10)
    assert np.delete(p, 10) == pytest.approx((1 - w) / allowed.sum(), rel=1e-5)
    cube = Echo(tokenizer, weight=0.5, batch=1, prefix=prefix, orders=(60,), trust_power=3)
    q = np.exp(cube.mix(logits, allowed)[0][allowed[0]].astype(np.float64))
    assert q[10] / q.sum() == pytest.approx(0.5 * trust ** 3 + (1 - 0.5 * trust ** 3)
                                            / allowed.sum(), rel=1e-5)


def looped_riff(tokenizer: Tokenizer, bars: int) -> list[int]:
    """A guitar riff of six notes in an uneven rhythm, the same every bar."""
    ids = [Tokenizer.START, Tokenizer.DRUMS_OFF, tokenizer.instrument_token(GUITAR)]
    last = 0
    for bar in range(bars):
        for onset, pitch in zip((0, 3, 8, 14, 20, 22), (40, 43, 47, 45, 52, 50)):
            now = bar * BAR + onset
            ids += [tokenizer.time_token(now - last), tokenizer.durvel_token(2, 5),
                    tokenizer.note_token(GUITAR, pitch)]
            last = now
    return ids


def test_echo_plays_the_riff_on_and_keeps_every_guarantee(banger, tmp_path, monkeypatch):
    """Against a model that knows the riff's tokens but not their order (it likes them all
    alike), greedy decoding with echo plays the riff on bar for bar, and without echo it
    does not; the masks still rule: --only and the exact length hold, and the same seed
    gives the same piece."""
    tokenizer = banger.tokenizer
    ids = looped_riff(tokenizer, 4)
    prompt = tmp_path / "riff.mid"
    tokenizer.to_midi(tokenizer.decode_score(ids)).save(prompt)
    bag = {t: 8.0 for t in ids if t >= tokenizer.time_offset}
    monkeypatch.setattr(banger, "_decoder", EagerDecoder(bag))
    prompt_notes = tokenizer.read(prompt).notes

    def reuse(echo: float) -> float:
        piece = generate(banger, Request(prompt=prompt, bars=4, seed=1, echo=echo, steer=0,
                                         temperature=1e-6, top_p=1.0))[0]
        new = [n for n in piece.notes if n.start >= 4 * BAR]
        assert {n.start % BAR for n in new} <= {0, 3, 8, 14, 20, 22} or echo == 0
        return material_reuse(prompt_notes, new, steps_per_bar=BAR)

    assert reuse(0.5) == 1.0 and reuse(0.0) < 0.5
    request = Request(prompt=prompt, instruments=("bass",), only=True, drums=False, bars=3,
                      seed=2, echo=0.9)
    first, again = generate(banger, request)[0], generate(banger, request)[0]
    assert first.ids == again.ids
    new = [n for n in first.notes if n.start >= 4 * BAR]
    assert new and {n.instrument for n in new} == {instrument_named("bass").index}
    assert all(n.instrument != DRUMS.index for n in first.notes)
    assert max(n.start + n.duration for n in first.notes) <= 7 * BAR


@pytest.mark.parametrize("value", [-0.1, 0.95, float("nan"), "a lot", True])
def test_a_bad_echo_is_refused(value):
    with pytest.raises(UsageError, match="--echo"):
        Request(echo=value)
