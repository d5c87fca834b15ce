"""Training: windows and augmentation, learning a small corpus, exact resume, errors, DDP."""

from __future__ import annotations

import json
import math
import os
import signal
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from typer.testing import CliRunner

from bangercli.api import load_model
from bangercli.model.checkpoint import read_checkpoint
from bangercli.errors import BangerError, DataError, OutputExistsError, UsageError
from bangercli.midi.instruments import DRUMS
from bangercli.model.network import model_config
from bangercli.data.preprocess import PreprocessOptions, preprocess
from bangercli.midi.score import Note, Score
from bangercli.data.shards import Shards
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig
from bangercli.training.config import TrainConfig
from bangercli.training.train import TrainingInterrupted, train
from bangercli.data.augment import transpose_notes
from bangercli.data.windows import WindowSampler
from cli_runner import run_cli


def make_corpus(
    folder: Path, *, pieces: int = 16, config: TokenizerConfig = TokenizerConfig()
) -> Path:
    """A data directory of small, very regular pieces: arpeggios over a bass, half with drums."""
    tokenizer = Tokenizer(config)
    midi = folder / "midi"
    midi.mkdir(parents=True, exist_ok=True)
    for p in range(pieces):
        root = 48 + p % 12
        notes = [Note(4 * i, 4, 0, root + (0, 4, 7, 12)[i % 4], 5) for i in range(96)]
        notes += [Note(16 * i, 16, 4, root - 12 + p // 12, 4) for i in range(24)]
        if p % 2:
            notes += [Note(8 * i, 1, DRUMS.index, (36, 38)[i % 2], 6) for i in range(48)]
        tokenizer.to_midi(Score(notes=notes)).save(midi / f"piece{p:02d}.mid")
    options = PreprocessOptions(val_fraction=0.25, require_instruments=False)
    return preprocess([midi], folder / "data", options=options, config=config, workers=1).out


def tiny(**overrides):
    return model_config("tiny", **{"seq_len": 32, **overrides})


def quick(**overrides) -> TrainConfig:
    values = dict(batch_size=4, max_steps=6, epochs=1000, lr=3e-3, warmup_steps=2, val_every=3,
                  val_windows=8, save_every=3, log_every=1, transpose=False, device="cpu")
    return TrainConfig(**{**values, **overrides})


# --- windows ---------------------------------------------------------------------------


def test_every_window_is_header_then_a_crop_from_a_note_boundary(corpus):
    shards, tokenizer = Shards(corpus, "train"), Tokenizer()
    sampler = WindowSampler(shards, tokenizer, seq_len=48, seed=1, transpose=False)
    rng = np.random.default_rng(0)
    for _ in range(200):
        index = int(rng.integers(len(shards)))
        piece = np.asarray(shards[index], dtype=np.int64)
        window = sampler.window(index, rng)
        header = tokenizer.header_length(piece)
        assert len(window) <= 49 and np.array_equal(window[:header], piece[:header])
        crop = window[header:]
        starts = [s for s in tokenizer.note_starts(piece)
                  if np.array_equal(piece[s : s + len(crop)], crop)]
        assert starts, "the crop must begin on a note boundary of its piece"
        if len(window) < 49:  # a short window is the one that reaches the piece's END
            assert window[-1] == Tokenizer.END


def test_batches_are_a_pure_function_of_seed_step_and_rank(corpus):
    shards, tokenizer = Shards(corpus, "train"), Tokenizer()

    def sampler(seed=0, rank=0):
        return WindowSampler(shards, tokenizer, seq_len=32, seed=seed, rank=rank)

    assert np.array_equal(sampler().batch(5, 8), sampler().batch(5, 8))
    assert not np.array_equal(sampler().batch(5, 8), sampler().batch(6, 8))
    assert not np.array_equal(sampler().batch(5, 8), sampler(seed=1).batch(5, 8))
    assert not np.array_equal(sampler().batch(5, 8), sampler(rank=1).batch(5, 8))
    long = WindowSampler(shards, tokenizer, seq_len=4000, seed=0).batch(0, 2)
    assert (long[:, -1] == Tokenizer.PAD).all()  # pieces shorter than the window are padded


def test_transposition_moves_melodic_notes_only_and_stays_in_range():
    tokenizer = Tokenizer()
    notes = [(0, 0), (0, 127), (0, 3), (4, 60), (DRUMS.index, 36), (DRUMS.index, 127)]
    row = [Tokenizer.START, Tokenizer.DRUMS_ON, tokenizer.instrument_token(0),
           tokenizer.time_token(0), tokenizer.durvel_token(2, 3)]
    row += [tokenizer.note_token(i, p) for i, p in notes]
    windows = np.array([row, row, row], dtype=np.int64)
    transpose_notes(windows, np.array([0, 6, -5]), tokenizer)
    assert np.array_equal(windows[0], row) and np.array_equal(windows[:, :5], [row[:5]] * 3)
    pitches = [[(t - tokenizer.note_offset) % 128 for t in w[5:]] for w in windows]
    assert pitches[1] == [6, 121, 9, 66, 36, 127]  # 127 + 6 folds down an octave; drums stay
    assert pitches[2] == [7, 122, 10, 55, 36, 127]  # 0 - 5 folds up an octave


# --- training --------------------------------------------------------------------------


@pytest.mark.slow  # ~4 s of training, shared with test_augment; CI runs it
def test_tiny_model_learns_the_corpus_in_seconds(corpus, learned_run):
    """60 steps of the tiny model (conftest's learned_run, which test_augment shares)."""
    tokens = np.asarray(Shards(corpus, "train").tokens)
    counts = np.bincount(tokens)
    p = counts[counts > 0] / counts.sum()
    unigram = float(-(p * np.log(p)).sum())
    result, events, seconds = learned_run.result, learned_run.events, learned_run.seconds
    losses = [e["loss"] for e in events if e["event"] == "train"]
    assert losses[-1] < 0.4 * unigram, (losses, unigram)
    assert result.step == 60 and result.best_val_loss is not None
    print(f"tiny model: train loss {losses[0]:.2f} -> {losses[-1]:.2f} nats "
          f"(unigram {unigram:.2f}) in {seconds:.1f} s")
    run = learned_run.run
    points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert {p["split"] for p in points} == {"train", "validation"}
    keys = {"step", "epoch", "split", "loss", "accuracy", "tokens_per_s", "lr", "time"}
    assert set(points[0]) >= keys
    assert (run / "curves.png").read_bytes()[:4] == b"\x89PNG"
    info = load_model(run / "best.safetensors").info
    assert info["best_val_loss"] == result.best_val_loss and len(info["data_manifest_hash"]) == 16


def _weights(path: Path) -> dict:
    return read_checkpoint(path)[0]


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_resume_after_ctrl_c_reproduces_the_uninterrupted_run(corpus, tmp_path):
    config = quick(max_steps=8, val_every=2, save_every=4, transpose=True, lr=1e-3)
    train(corpus, tmp_path / "straight", model_config=tiny(dropout=0.1), config=config)

    def interrupt_at_step_3(event):
        if event["event"] == "train" and event["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does

    with pytest.raises(TrainingInterrupted) as caught:
        train(corpus, tmp_path / "broken", model_config=tiny(dropout=0.1), config=config,
              callback=interrupt_at_step_3)
    assert caught.value.exit_code == 130
    assert read_checkpoint(tmp_path / "broken" / "last.safetensors")[1]["training"]["step"] == 3
    train(corpus, tmp_path / "broken", config=config, resume=True)
    a = _weights(tmp_path / "straight" / "last.safetensors")
    b = _weights(tmp_path / "broken" / "last.safetensors")
    assert a.keys() == b.keys()
    for name in a:
        assert torch.allclose(a[name], b[name], atol=1e-6, rtol=0), name
    points = [json.loads(line) for line in (tmp_path / "broken" / "metrics.jsonl").open()]
    steps = [point["step"] for point in points if point["split"] == "train"]
    assert steps == list(range(1, 9))  # no step logged twice


def test_existing_run_is_refused_without_resume_or_force(corpus, tmp_path):
    train(corpus, tmp_path / "run", model_config=tiny(), config=quick(max_steps=2))
    with pytest.raises(OutputExistsError, match="already holds a training run"):
        train(corpus, tmp_path / "run", model_config=tiny(), config=quick(max_steps=2))
    result = train(corpus, tmp_path / "run", model_config=tiny(), config=quick(max_steps=3),
                   force=True)
    assert result.step == 3
    with pytest.raises(BangerError, match="nothing to resume"):
        train(corpus, tmp_path / "other", config=quick(), resume=True)


def test_bad_data_is_refused_before_any_file_is_written(corpus, tmp_path):
    run = tmp_path / "run"
    with pytest.raises(DataError, match="does not exist"):
        train(tmp_path / "missing", run, model_config=tiny(), config=quick())
    (tmp_path / "plain").mkdir()
    with pytest.raises(DataError, match="not made by `banger preprocess`"):
        train(tmp_path / "plain", run, model_config=tiny(), config=quick())
    with pytest.raises(DataError, match="larger than the training data"):
        train(corpus, run, model_config=tiny(seq_len=512), config=quick(batch_size=64))
    assert not run.exists() or not any(run.iterdir())


def test_resume_on_data_with_another_tokenizer_is_refused(corpus, tmp_path):
    train(corpus, tmp_path / "run", model_config=tiny(), config=quick(max_steps=2))
    other = make_corpus(tmp_path / "other", pieces=6, config=TokenizerConfig(steps_per_quarter=4))
    with pytest.raises(BangerError, match="tokenizer differs"):
        train(other, tmp_path / "run", config=quick(max_steps=4), resume=True)


def test_cli_train_prints_the_best_checkpoint(corpus, tmp_path):
    from bangercli.cli.app import app

    args = ["train", str(corpus), "--out", str(tmp_path / "run"), "--preset", "tiny",
            "--seq-len", "32", "--max-steps", "3", "--batch-size", "4", "--device", "cpu",
            "--quiet"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.strip() == str(tmp_path / "run" / "best.safetensors")
    resumed = CliRunner().invoke(app, args[:4] + ["--max-steps", "4", "--resume", "--quiet"])
    assert resumed.exit_code == 0, resumed.output
    assert load_model(tmp_path / "run" / "last.safetensors").info["step"] == 4


def test_the_command_that_started_a_run_resumes_it_with_resume_appended(corpus, tmp_path,
                                                                         monkeypatch, capsys):
    """`banger train ... --preset tiny --dim 48 --seq-len 32` stopped by Ctrl-C at step 3 (at
    its validation: the command logs no train step that early), then the very same command
    with --resume appended: it goes on from last.safetensors to the end, no step logged
    twice. With a differing --dim or --seq-len appended as well, --resume is refused in one
    line naming that option, and nothing is written."""
    import bangercli.cli.train as cli_train

    run = tmp_path / "run"
    command = ["train", corpus, "--out", run, "--preset", "tiny", "--dim", "48", "--seq-len", "32",
               "--max-steps", "6", "--batch-size", "4", "--val-every", "3", "--val-windows", "8",
               "--save-every", "6", "--device", "cpu", "--quiet"]
    real_progress = cli_train._TrainProgress.__call__

    def ctrl_c_at_step_3(self, event):
        if event["event"] == "validation" and event["step"] == 3:
            os.kill(os.getpid(), signal.SIGINT)  # what Ctrl-C does
        real_progress(self, event)

    with monkeypatch.context() as patch:
        patch.setattr(cli_train._TrainProgress, "__call__", ctrl_c_at_step_3)
        code, stdout, _ = run_cli(monkeypatch, capsys, *command)
    assert code == 130 and stdout == ""
    saved = (run / "last.safetensors").read_bytes()
    assert load_model(run / "last.safetensors").info["step"] == 3

    for flag, value, the_runs in (("--dim", "32", "48"), ("--seq-len", "64", "32")):
        code, stdout, stderr = run_cli(monkeypatch, capsys, *command, "--resume", flag, value)
        assert code == 2 and stdout == "", stderr
        assert stderr.startswith("error: --resume continues the run") and stderr.count("\n") == 1
        assert f"{flag} {value} (the run's: {the_runs}) differ" in stderr
    assert (run / "last.safetensors").read_bytes() == saved

    code, stdout, stderr = run_cli(monkeypatch, capsys, *command, "--resume")
    assert code == 0, stderr
    assert stdout == f"{run / 'best.safetensors'}\n"
    banger = load_model(run / "last.safetensors")
    assert banger.info["step"] == 6 and banger.config.dim == 48
    points = [json.loads(line) for line in (run / "metrics.jsonl").open()]
    assert [p["step"] for p in points if p["split"] == "validation"] == [3, 6]  # each once
    logged = [p["step"] for p in points if p["split"] == "train"]
    assert logged == sorted(set(logged)) and logged[-1] == 6


@pytest.mark.parametrize("process", [
    "this",  # through the console entry point, in this process
    pytest.param("its own", marks=pytest.mark.slow),  # `python -m bangercli`: seconds of imports
])
def test_cli_errors_are_one_line(tmp_path, monkeypatch, capsys, process):
    args = ["train", str(tmp_path / "nope"), "--out", str(tmp_path / "run")]
    if process == "its own":
        result = subprocess.run([sys.executable, "-m", "bangercli", *args], capture_output=True,
                                text=True)
        code, stderr = result.returncode, result.stderr
    else:
        code, _, stderr = run_cli(monkeypatch, capsys, *args)
    assert code == 1
    assert stderr.startswith("error: data directory") and stderr.count("\n") == 1


@pytest.mark.slow
def test_distributed_data_parallel_on_two_cpu_processes(corpus, tmp_path):
    run = tmp_path / "run"
    command = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
               "-m", "bangercli", "train", str(corpus), "--out", str(run), "--preset", "tiny",
               "--seq-len", "32", "--batch-size", "4", "--max-steps", "6", "--val-every", "3",
               "--save-every", "3", "--device", "cpu", "--quiet"]
    env = {**os.environ, "OMP_NUM_THREADS": "1"}
    result = subprocess.run(command, capture_output=True, text=True, timeout=120, env=env)
    assert result.returncode == 0, result.stderr[-3000:]
    assert result.stdout.strip() == str(run / "best.safetensors")  # only rank 0 prints
    info = load_model(run / "last.safetensors").info
    assert info["step"] == 6 and info["world_size"] == 2
    points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    steps = [p["step"] for p in points if p["split"] == "train"]
    assert steps == sorted(set(steps)) and steps[-1] == 6  # written once, by rank 0


# --- CUDA (skipped without a GPU) --------------------------------------------------------

needs_cuda = pytest.mark.skipif(not torch.cuda.is_available(), reason="needs a CUDA device")


@pytest.mark.gpu
@needs_cuda
def test_cuda_training_with_bf16_autocast(corpus, tmp_path):
    result = train(corpus, tmp_path / "run", model_config=tiny(),
                   config=quick(device="cuda:0", max_steps=20, batch_size=8))
    assert math.isfinite(result.best_val_loss)
    assert load_model(result.last, device="cuda").device.type == "cuda"


@pytest.mark.gpu
@needs_cuda
def test_data_parallel_over_all_visible_gpus(corpus, tmp_path):
    from bangercli.training.devices import setup_runtime

    runtime = setup_runtime("cuda")
    assert runtime.gpus == torch.cuda.device_count()
    result = train(corpus, tmp_path / "run", model_config=tiny(),
                   config=quick(device="cuda", max_steps=6, batch_size=8))
    assert result.step == 6


def test_out_of_memory_is_one_clear_error_and_writes_nothing(corpus, tmp_path, monkeypatch):
    from bangercli.model.network import NextTokenLoss

    def exhausted(self, inputs, targets):
        raise torch.OutOfMemoryError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(NextTokenLoss, "forward", exhausted)
    with pytest.raises(BangerError, match="out of memory at step 1") as caught:
        train(corpus, tmp_path / "run", model_config=tiny(), config=quick())
    assert "--batch-size" in caught.value.hint
    assert not list((tmp_path / "run").glob("*.safetensors"))


def test_a_cuda_index_the_machine_lacks_is_a_usage_error(monkeypatch):
    """--device cuda:N is checked against the GPUs there are, not found out at .to(device)."""
    from bangercli.training.devices import pick_device

    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 2)
    assert pick_device("cuda:1") == torch.device("cuda", 1)
    assert pick_device("cuda") == torch.device("cuda")
    with pytest.raises(UsageError, match="has 2 CUDA device"):
        pick_device("cuda:2")
