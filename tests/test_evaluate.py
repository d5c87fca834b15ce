"""Evaluation: windows that score every token once, totals that match a direct computation."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
import torch
from torch.nn import functional as F
from typer.testing import CliRunner

from bangercli.api import load_model
from bangercli.model.checkpoint import save_checkpoint
from bangercli.errors import BangerError
from bangercli.evaluation.evaluate import evaluate
from bangercli.model.network import build_model, model_config
from bangercli.data.shards import Shards
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig
from bangercli.data.windows import piece_windows
from test_train import make_corpus


@pytest.fixture(scope="module")
def corpus(tmp_path_factory):
    return make_corpus(tmp_path_factory.mktemp("corpus"), pieces=10)


def checkpoint(path, *, seq_len: int):
    torch.manual_seed(0)
    config = model_config("tiny", seq_len=seq_len)
    save_checkpoint(path, build_model(config), config=config, tokenizer_config=TokenizerConfig())
    return path


def test_windows_score_every_token_once_and_start_with_the_header(corpus):
    tokenizer = Tokenizer()
    for piece in (np.asarray(p, dtype=np.int64) for p in Shards(corpus, "train")):
        header = tokenizer.header_length(piece)
        starts = set(tokenizer.note_starts(piece).tolist())
        windows = piece_windows(piece, tokenizer, 40)
        assert sum(len(tokens) - 1 - skip for tokens, skip in windows) == len(piece) - 1
        scored = np.concatenate([tokens[1 + skip :] for tokens, skip in windows])
        assert np.array_equal(scored, piece[1:])  # in order, no gaps, no overlaps
        position = 0
        for tokens, skip in windows:
            assert len(tokens) <= 40 and np.array_equal(tokens[:header], piece[:header])
            if position:
                assert skip == header - 1 and position in starts  # crops begin on note boundaries
            position += len(tokens) - (header if position else 0)


def test_totals_match_a_direct_computation(corpus, tmp_path):
    # A window longer than any piece: one window per piece, so the model sees whole pieces.
    banger = load_model(checkpoint(tmp_path / "m.safetensors", seq_len=4096))
    result = evaluate(banger, corpus, split="validation", batch_size=2)
    shards = Shards(corpus, "validation")
    nats, correct, count = 0.0, 0, 0
    for piece in shards:
        ids = torch.as_tensor(np.asarray(piece, dtype=np.int64))
        logits = banger.logits(ids[:-1])
        nats += F.cross_entropy(logits, ids[1:], reduction="sum").item()
        correct += int((logits.argmax(-1) == ids[1:]).sum())
        count += len(ids) - 1
    report = result.to_dict()
    assert report["tokens"] == count and report["pieces"] == len(shards)
    assert report["loss"] == pytest.approx(nats / count, rel=1e-5)
    assert report["accuracy"] == pytest.approx(correct / count)
    assert report["notes"] == shards.manifest["splits"]["validation"]["notes"]
    assert report["bits_per_note"] == pytest.approx(nats / report["notes"] / math.log(2), rel=1e-5)
    fields = [report[name]["tokens"] for name in ("time", "durvel", "note")]
    assert report["note"]["tokens"] == report["notes"] and sum(fields) < count
    assert report["note"]["perplexity"] == pytest.approx(math.exp(report["note"]["loss"]))


def test_short_windows_still_score_every_token(corpus, tmp_path):
    banger = load_model(checkpoint(tmp_path / "m.safetensors", seq_len=32))
    result = evaluate(banger, corpus, split="train", max_pieces=3, batch_size=8)
    lengths = Shards(corpus, "train").lengths[:3]
    assert result.tokens == int((lengths - 1).sum()) and result.pieces == 3
    assert math.isfinite(result.loss) and 0 <= result.accuracy <= 1


def test_tokenizer_mismatch_is_refused(tmp_path):
    other = make_corpus(tmp_path / "other", pieces=4, config=TokenizerConfig(steps_per_quarter=4))
    banger = load_model(checkpoint(tmp_path / "m.safetensors", seq_len=32))
    with pytest.raises(BangerError, match="tokenizer differs .*steps_per_quarter"):
        evaluate(banger, other, split="train")


def test_cli_evaluate_json(corpus, tmp_path):
    from bangercli.cli.app import app

    path = checkpoint(tmp_path / "m.safetensors", seq_len=32)
    result = CliRunner().invoke(app, ["evaluate", str(path), str(corpus), "--json", "--quiet",
                                      "--device", "cpu", "--max-pieces", "2"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) >= {"loss", "accuracy", "time", "durvel", "note", "bits_per_note",
                           "tokens", "pieces"}
    assert set(report["note"]) == {"loss", "accuracy", "perplexity", "tokens"}
    assert report["pieces"] == 2
