"""Re-voicing, data mix, learning-rate schedule and warm starts (--init)."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bangercli.data.augment import BASS, revoice_windows
from bangercli.errors import UsageError
from bangercli.midi.instruments import DRUMS, instrument_named
from bangercli.midi.score import Note
from bangercli.data.shards import Shards
from bangercli.midi.tokenizer import Tokenizer
from bangercli.data.augment import mix_weights, parse_mix
from bangercli.training.config import TrainConfig, learning_rate
from bangercli.training.train import train
from test_train import quick

PIANO, GUITAR, STRINGS = (instrument_named(n).index for n in ("piano", "guitar", "strings"))


def band_tokens(tokenizer: Tokenizer) -> np.ndarray:
    notes = []
    for bar in range(4):
        notes += [Note(bar * 32, 8, PIANO, 60, 4), Note(bar * 32, 8, PIANO, 64, 4),
                  Note(bar * 32, 8, PIANO, 67, 4), Note(bar * 32 + 8, 4, GUITAR, 72, 5),
                  Note(bar * 32 + 16, 4, GUITAR, 74, 5),
                  Note(bar * 32, 16, BASS, 36, 5), Note(bar * 32, 1, DRUMS.index, 36, 6)]
    return np.asarray(tokenizer.encode_notes(notes), dtype=np.int64)


def notes_by_instrument(tokenizer: Tokenizer, ids) -> dict[int, list[tuple]]:
    groups: dict[int, list[tuple]] = {}
    for note in tokenizer.decode_score(ids.tolist()).notes:
        groups.setdefault(note.instrument, []).append((note.start, note.duration, note.pitch,
                                                       note.velocity))
    return groups


def test_revoicing_moves_whole_parts_one_to_one_and_keeps_bass_and_drums():
    tokenizer = Tokenizer()
    original = band_tokens(tokenizer)
    before = notes_by_instrument(tokenizer, original)
    moved_any = False
    for seed in range(40):
        windows = np.stack([original.copy()])
        revoice_windows(windows, np.random.default_rng(seed), tokenizer, probability=1.0)
        after = notes_by_instrument(tokenizer, windows[0])
        assert after[BASS] == before[BASS] and after[DRUMS.index] == before[DRUMS.index]
        # the same parts, each under one category, no two merged
        assert sorted(map(sorted, after.values())) == sorted(map(sorted, before.values()))
        score = tokenizer.decode_score(windows[0].tolist())
        assert score.invalid_tokens == 0
        assert set(list(score.header.instruments)) == set(after) - {DRUMS.index}
        # still canonical (no two parts tie on note count here): re-encoding gives the same ids
        assert tokenizer.encode_notes(score.notes) == windows[0].tolist()
        moved_any |= set(after) != set(before)
    assert moved_any


def test_revoicing_probability_zero_changes_nothing():
    tokenizer = Tokenizer()
    windows = np.stack([band_tokens(tokenizer)] * 3)
    assert np.array_equal(revoice_windows(windows.copy(), np.random.default_rng(0), tokenizer,
                                          probability=0.0), windows)


def test_mix_weights_follow_source_folders(corpus):
    shards = Shards(corpus, "train")
    paths = [info["path"] for info in shards.pieces()]
    name = paths[0].split("/")[-1]
    weights = mix_weights(shards, f"{name}=5")
    assert weights[0] == 5 and (weights[1:] == 1).all()
    assert mix_weights(shards, "") is None
    assert parse_mix("freedoom=4, groove=0.5") == {"freedoom": 4.0, "groove": 0.5}
    for bad in ("freedoom", "freedoom=x", "=3", "freedoom=-1"):
        with pytest.raises(UsageError):
            parse_mix(bad)


def test_cosine_schedule_warms_up_then_decays_to_a_tenth():
    config = TrainConfig(lr=1e-3, warmup_steps=10, schedule="cosine")
    assert learning_rate(config, 0, 100) == pytest.approx(1e-4)
    assert learning_rate(config, 9, 100) == pytest.approx(1e-3)
    middle = learning_rate(config, 55, 100)
    assert middle == pytest.approx(1e-3 * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * 0.5))))
    assert learning_rate(config, 100, 100) == pytest.approx(1e-4)
    constant = TrainConfig(lr=1e-3, warmup_steps=10, schedule="constant")
    assert learning_rate(constant, 80, 100) == 1e-3
    with pytest.raises(UsageError):
        TrainConfig(schedule="linear").validate()


@pytest.mark.slow  # shares the ~4 s learned_run with test_train; CI runs it
def test_init_starts_from_a_checkpoint_with_a_fresh_optimizer(corpus, learned_run, tmp_path):
    first = learned_run.result  # 60 steps of the tiny model on corpus, shared with test_train
    events = []
    second = train(corpus, tmp_path / "b", config=quick(batch_size=8, max_steps=10, val_every=5,
                                                        save_every=10, init=str(first.last)),
                   callback=events.append)
    assert second.step == 10
    validations = [e["loss"] for e in events if e["event"] == "validation"]
    # it starts where the first run ended, not from scratch (about 7.9 nats)
    assert validations[0] < first.best_val_loss + 0.5
    with pytest.raises(Exception):
        train(corpus, tmp_path / "c", config=quick(max_steps=1, init=str(tmp_path / "nope.safetensors")))


def test_intro_windows_start_where_the_piece_starts(corpus):
    """--intro P: that share of windows is the piece's own beginning (header, then its first
    note), so the model learns how pieces open; the rest stay random crops."""
    from bangercli.data.windows import WindowSampler

    shards, tokenizer = Shards(corpus, "train"), Tokenizer()

    def openings(intro: float) -> int:
        sampler = WindowSampler(shards, tokenizer, seq_len=32, seed=0, transpose=False,
                                intro=intro)
        rng, count = np.random.default_rng(0), 0
        for _ in range(200):
            index = int(rng.integers(len(shards)))
            piece = np.asarray(shards[index], dtype=np.int64)
            window = sampler.window(index, rng)
            first = tokenizer.note_starts(piece)[0]
            assert tokenizer.header_length(piece) == first  # the body starts right after
            count += np.array_equal(window, piece[: len(window)])
        return count

    assert openings(1.0) == 200
    assert 60 <= openings(0.5) <= 140
    assert openings(0.0) < 40  # uniform crops: the opening only by chance
    with pytest.raises(UsageError):
        TrainConfig(intro=1.5).validate()


@pytest.mark.parametrize("bad", [dict(lr=math.nan), dict(lr=math.inf), dict(epochs=math.inf),
                                 dict(grad_clip=math.nan), dict(seed=-1), dict(seed=2**63)])
def test_the_library_refuses_what_the_command_line_refuses(bad):
    """TrainConfig checks its own values: Python callers get the same one-line errors."""
    with pytest.raises(UsageError):
        TrainConfig(**bad).validate()
