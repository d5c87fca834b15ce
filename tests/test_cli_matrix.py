"""The bad-input matrix of the command line: every option of every command with values that
cannot work (wrong types, out of range, unknown names, missing files, folders where files
belong and the reverse, unwritable outputs, contradictions). Each row must end in exactly one
`error:` line on stderr, the exit code the row names (2 for usage errors), no traceback,
nothing on stdout and nothing written. One test per row; docs/reliability.md shows the table.

Rows run in-process through the console entry point `bangercli.cli.app.main` (a process start
costs seconds of imports); a few run again as real subprocesses to show that the in-process
result is what a user sees. Paths in the rows are relative to the test's own folder, where
it runs; CKPT, DATA and MIDI stand for a tiny checkpoint, a data directory made by
`banger preprocess` and its MIDI folder, built once for the module."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch

from bangercli.model.checkpoint import save_checkpoint
from bangercli.model.network import PRESETS, build_model
from bangercli.data.preprocess import PreprocessOptions, preprocess
from bangercli.midi.tokenizer import TokenizerConfig
from cli_runner import run_cli
from midi_fixtures import band, midi_file, save, track

# What each command's rows start with: every option valid, so only the row's values are wrong.
# Repeated options are fine: click keeps the last value.
BASE = {
    "banger": [],
    "instruments": [],
    "preprocess": ["MIDI", "--out", "out", "--quiet"],
    "train": ["DATA", "--out", "out", "--device", "cpu", "--quiet"],
    "evaluate": ["CKPT", "DATA", "--device", "cpu", "--quiet"],
    "generate": ["--model", "CKPT", "--out", "out", "--audio", "none", "--seed", "1", "--quiet"],
}
TINY = ["--preset", "tiny", "--seq-len", "32", "--batch-size", "2", "--max-steps", "1"]
NO_CUDA = pytest.mark.skipif(torch.cuda.is_available(), reason="this machine has CUDA")


def row(label: str, args: list[str], code: int, message: str, *, base: bool = True, marks=()):
    """One row: `label` is "command option value" (the test id and the table's columns);
    `args` follow the command's BASE arguments (or stand alone with base=False)."""
    command = label.split()[0]
    argv = ([] if command == "banger" else [command]) + (BASE[command] if base else []) + args
    return pytest.param(argv, code, message, id=label, marks=marks)


def flag_rows(command: str, *flags: str) -> list:
    """A switch given a value: `--force=yes`."""
    return [row(f"{command} {flag} =yes", [f"{flag}=yes"], 2,
                f"option '{flag}' does not take a value") for flag in flags]


NOT_INT = "Input should be a valid integer"
NOT_NUMBER = "Input should be a valid number"
HUGE = str(2**70)

ROWS = [
    # --- banger and banger instruments -------------------------------------------------
    row("banger --nope", ["--nope"], 2, "no such option: --nope (hint: see `banger --help`)"),
    row("banger COMMAND compose", ["compose"], 2, "no such command 'compose'"),
    row("banger --version =1", ["--version=1"], 2, "option '--version' does not take a value"),
    row("instruments ARGS extra", ["extra"], 2, "got unexpected extra argument(s) (extra)"),
    *flag_rows("instruments", "--json"),
    # --- banger preprocess -------------------------------------------------------------
    row("preprocess SOURCES (none)", ["--out", "out"], 2, "missing argument 'sources'",
        base=False),
    row("preprocess SOURCES missing", ["missing", "--out", "out"], 2,
        "no such file or directory: missing", base=False),
    row("preprocess SOURCES empty folder", ["dir", "--out", "out"], 1,
        "no .mid/.midi files found in dir", base=False),
    row("preprocess SOURCES garbage file", ["garbage", "--out", "out"], 1,
        "no file was kept out of 1 (1 unreadable)", base=False),
    row("preprocess --out (none)", ["MIDI"], 2, "missing option '--out' / '-o'", base=False),
    row("preprocess --out a file", ["--out", "file"], 2, "--out file is not a folder"),
    row("preprocess --out under a file", ["--out", "file/sub"], 2,
        "--out file/sub: file is a file, not a folder"),
    row("preprocess --out existing folder", ["--out", "run"], 1,
        "run already exists (hint: pass --force to replace it)"),
    row("preprocess --out the input folder --force", ["taken", "--out", "taken", "--force"], 2,
        "taken holds the input files", base=False),
    row("preprocess --out new/data (nothing kept)", ["garbage", "--out", "new/data"], 1,
        "no file was kept out of 1", base=False),
    row("preprocess --workers -1", ["--workers", "-1"], 2,
        "--workers must be between 0 and 256, got -1"),
    row("preprocess --workers 100000", ["-j", "100000"], 2,
        "--workers must be between 0 and 256, got 100000"),
    row("preprocess --workers x", ["--workers", "x"], 2,
        f"invalid value for '--workers' / '-j': {NOT_INT}"),
    row("preprocess --val-fraction 1.5", ["--val-fraction", "1.5"], 2,
        "--val-fraction must be in [0, 1], got 1.5"),
    row("preprocess --val-fraction -0.1", ["--val-fraction", "-0.1"], 2,
        "--val-fraction must be in [0, 1], got -0.1"),
    row("preprocess --val-fraction nan", ["--val-fraction", "nan"], 2,
        "--val-fraction must be a finite number, got nan"),
    row("preprocess --max-notes 0", ["--max-notes", "0"], 2,
        "--max-notes and --max-minutes must be positive"),
    row("preprocess --max-notes x", ["--max-notes", "x"], 2,
        f"invalid value for '--max-notes': {NOT_INT}"),
    row("preprocess --max-minutes 0", ["--max-minutes", "0"], 2,
        "--max-notes and --max-minutes must be positive"),
    row("preprocess --max-minutes nan", ["--max-minutes", "nan"], 2,
        "--max-minutes must be a finite number, got nan"),
    row("preprocess --min-notes -1", ["--min-notes", "-1"], 2, "--min-notes >= 0"),
    row("preprocess --min-notes 100000", ["--min-notes", "100000"], 1,
        "no file was kept out of 8 (8 too few notes)"),
    row("preprocess --lead-margin 1", ["--lead-margin", "1"], 2,
        "--lead-margin must be in [0, 1), got 1.0"),
    row("preprocess --lead-margin nan", ["--lead-margin", "nan"], 2,
        "--lead-margin must be a finite number, got nan"),
    *flag_rows("preprocess", "--require-instruments", "--no-keep-drums-only", "--trim-silence",
               "--force", "--json", "--quiet"),
    # --- banger train ------------------------------------------------------------------
    row("train DATA_DIR (none)", ["--out", "out"], 2, "missing argument 'data_dir'", base=False),
    row("train DATA_DIR missing", ["missing", "--out", "out"], 1,
        "data directory missing does not exist", base=False),
    row("train DATA_DIR a file", ["file", "--out", "out"], 1, "file is not a directory",
        base=False),
    row("train DATA_DIR empty folder", ["dir", "--out", "out"], 1,
        "dir was not made by `banger preprocess` (no manifest.json)", base=False),
    row("train DATA_DIR MIDI folder", ["MIDI", "--out", "out"], 1,
        "was not made by `banger preprocess` (no manifest.json)", base=False),
    row("train DATA_DIR garbage manifest", ["baddata", "--out", "out"], 1,
        "baddata/manifest.json is unreadable", base=False),
    row("train --out (none)", ["DATA"], 2, "missing option '--out' / '-o'", base=False),
    row("train --out a file", ["--out", "file"], 2, "--out file is not a folder"),
    row("train --out under a file", ["--out", "file/sub", *TINY], 2,
        "--out file/sub: file is a file, not a folder"),
    row("train --out a run without --force", ["--out", "run", *TINY], 1,
        "run already holds a training run (best.safetensors)"),
    row("train --preset huge", ["--preset", "huge"], 2,
        "unknown preset 'huge' (hint: choose one of: seed, small, tiny)"),
    row("train --epochs 0", ["--epochs", "0"], 2, "--epochs and --lr must be positive"),
    row("train --epochs x", ["--epochs", "x"], 2, f"invalid value for '--epochs': {NOT_NUMBER}"),
    row("train --epochs nan", ["--epochs", "nan", *TINY], 2,
        "--epochs must be a finite number, got nan"),
    row("train --epochs inf", ["--epochs", "inf", *TINY], 2,
        "--epochs must be a finite number, got inf"),
    row("train --max-steps 0", ["--max-steps", "0"], 2, "--max-steps must be >= 1, got 0"),
    row("train --max-steps x", ["--max-steps", "x"], 2,
        f"invalid value for '--max-steps': {NOT_INT}"),
    row("train --batch-size 0", ["--batch-size", "0"], 2, "--batch-size must be >= 1, got 0"),
    row("train --batch-size 100000", [*TINY, "--batch-size", "100000"], 1,
        "one batch (100000 windows of 32 tokens = 3,200,000 tokens) is larger than the "
        "training data"),
    row("train --lr 0", ["--lr", "0"], 2, "--epochs and --lr must be positive"),
    row("train --lr -1", ["--lr", "-1"], 2, "--epochs and --lr must be positive"),
    row("train --lr nan", ["--lr", "nan", *TINY], 2, "--lr must be a finite number, got nan"),
    row("train --lr inf", ["--lr", "inf", *TINY], 2, "--lr must be a finite number, got inf"),
    row("train --warmup-steps -1", ["--warmup-steps", "-1"], 2,
        "--warmup-steps and --grad-clip >= 0"),
    row("train --val-every 0", ["--val-every", "0"], 2, "--val-every must be >= 1, got 0"),
    row("train --val-windows 0", ["--val-windows", "0"], 2, "--val-windows must be >= 1, got 0"),
    row("train --save-every 0", ["--save-every", "0"], 2, "--save-every must be >= 1, got 0"),
    row("train --schedule x", ["--schedule", "x"], 2,
        "--schedule must be cosine or constant, got 'x'"),
    row("train --revoice 1.5", ["--revoice", "1.5"], 2, "--revoice must be in [0, 1], got 1.5"),
    row("train --revoice nan", ["--revoice", "nan"], 2,
        "--revoice must be a finite number, got nan"),
    row("train --intro 1.5", ["--intro", "1.5"], 2, "--intro must be in [0, 1], got 1.5"),
    row("train --intro nan", ["--intro", "nan"], 2, "--intro must be a finite number, got nan"),
    row("train --mix bad", ["--mix", "bad"], 2, "bad --mix entry 'bad' (hint: write NAME=WEIGHT"),
    row("train --mix a=-1", ["--mix", "a=-1"], 2, "bad --mix entry 'a=-1'"),
    row("train --mix =3", ["--mix", "=3"], 2, "bad --mix entry '=3'"),
    row("train --mix midi=0", ["--mix", "midi=0", *TINY], 2, "--mix gives every piece weight 0"),
    row("train --mix midi=0 --force (keeps the old run)",
        ["--out", "run", "--force", "--mix", "midi=0", *TINY], 2,
        "--mix gives every piece weight 0"),
    row("train --seed -1", ["--seed", "-1", *TINY], 2,
        "--seed must be between 0 and 2**63 - 1, got -1"),
    row(f"train --seed {HUGE}", ["--seed", HUGE, *TINY], 2, "--seed must be between 0 and 2**63"),
    row("train --seed x", ["--seed", "x"], 2, f"invalid value for '--seed': {NOT_INT}"),
    row("train --device tpu", ["--device", "tpu", *TINY], 2,
        "unknown device 'tpu' (hint: use auto, cpu, cuda or cuda:N)"),
    row("train --device cuda:99", ["--device", "cuda:99", *TINY], 2,
        "--device cuda:99: no CUDA device is available", marks=NO_CUDA),
    row("train --seq-len 0", ["--seq-len", "0"], 2, "model seq_len must be >= 1, got 0"),
    row("train --seq-len 100000", [*TINY, "--seq-len", "100000"], 1,
        "one batch (2 windows of 100000 tokens = 200,000 tokens) is larger than the training "
        "data"),
    row("train --dim 0", ["--dim", "0"], 2, "model dim must be >= 1, got 0"),
    row("train --dim x", ["--dim", "x"], 2, f"invalid value for '--dim': {NOT_INT}"),
    row("train --depth 0", ["--depth", "0"], 2, "model depth must be >= 1, got 0"),
    row("train --heads 0", ["--heads", "0"], 2, "model heads must be >= 1, got 0"),
    row("train --dim-head 0", ["--dim-head", "0"], 2, "model dim_head must be >= 1, got 0"),
    row("train --ff-mult 0", ["--ff-mult", "0"], 2, "model ff_mult must be >= 1, got 0"),
    row("train --dropout 1", ["--dropout", "1"], 2, "model dropout must be in [0, 1), got 1.0"),
    row("train --dropout nan", ["--dropout", "nan"], 2,
        "--dropout must be a finite number, got nan"),
    row("train --init missing file", ["--init", "missing.safetensors"], 1,
        "no checkpoint file at missing.safetensors"),
    row("train --init garbage file", ["--init", "garbage"], 1,
        "garbage is not a readable banger checkpoint"),
    row("train --init empty file", ["--init", "empty"], 1,
        "empty is not a readable banger checkpoint"),
    row("train --init a folder", ["--init", "dir"], 1, "no checkpoint file at dir"),
    row("train --init unknown name", ["--init", "nope"], 1, "unknown model 'nope'"),
    row("train --init with --preset", ["--init", "CKPT", "--preset", "tiny"], 2,
        "--preset cannot be given with --init"),
    row("train --resume without a run", ["--resume"], 2,
        "nothing to resume in out (no last.safetensors)"),
    row("train --resume of a run killed before its first save", ["--out", "run", "--resume"], 2,
        "nothing to resume in run (no last.safetensors) (hint: start the run again with --force)"),
    row("train --resume with --force", ["--resume", "--force"], 2,
        "--resume and --force contradict each other"),
    row("train --resume with --init", ["--resume", "--init", "CKPT"], 2,
        "nothing to resume in out (no last.safetensors)"),
    row("train --resume with --dim", ["--out", "run", "--resume", "--dim", "8"], 2,
        "nothing to resume in run (no last.safetensors)"),
    *flag_rows("train", "--transpose", "--no-compile", "--resume", "--force", "--quiet"),
    # --- banger evaluate ---------------------------------------------------------------
    row("evaluate MODEL (none)", [], 2, "missing argument 'model'", base=False),
    row("evaluate DATA_DIR (none)", ["CKPT"], 2, "missing argument 'data_dir'", base=False),
    row("evaluate MODEL missing file", ["missing.safetensors", "DATA"], 1,
        "no checkpoint file at missing.safetensors", base=False),
    row("evaluate MODEL garbage file", ["garbage", "DATA"], 1,
        "garbage is not a readable banger checkpoint", base=False),
    row("evaluate MODEL empty file", ["empty", "DATA"], 1,
        "empty is not a readable banger checkpoint", base=False),
    row("evaluate MODEL a folder", ["dir", "DATA"], 1, "no checkpoint file at dir", base=False),
    row("evaluate MODEL unknown name", ["nope", "DATA"], 1, "unknown model 'nope'", base=False),
    row("evaluate MODEL ''", ["", "DATA"], 2, "the model name is empty", base=False),
    row("evaluate DATA_DIR missing", ["CKPT", "missing"], 1,
        "data directory missing does not exist", base=False),
    row("evaluate DATA_DIR a file", ["CKPT", "file"], 1, "file is not a directory", base=False),
    row("evaluate DATA_DIR empty folder", ["CKPT", "dir"], 1,
        "dir was not made by `banger preprocess`", base=False),
    row("evaluate --split nope", ["--split", "nope"], 2,
        "unknown --split 'nope' (hint: choose one of: train, validation)"),
    row("evaluate --batch-size 0", ["--batch-size", "0"], 2,
        "--batch-size and --max-pieces must be >= 1"),
    row("evaluate --batch-size x", ["--batch-size", "x"], 2,
        f"invalid value for '--batch-size': {NOT_INT}"),
    row("evaluate --max-pieces 0", ["--max-pieces", "0"], 2,
        "--batch-size and --max-pieces must be >= 1"),
    row("evaluate --device tpu", ["--device", "tpu"], 2, "unknown device 'tpu'"),
    row("evaluate --device cuda:99", ["--device", "cuda:99"], 2,
        "--device cuda:99: no CUDA device is available", marks=NO_CUDA),
    row("evaluate --samples -1", ["--samples", "-1"], 2, "--samples must be >= 0"),
    row("evaluate --bars 0", ["--bars", "0"], 2, "--bars >= 1"),
    row("evaluate --seed -1", ["--seed", "-1"], 2, "--seed must be between 0 and 2**63 - 1"),
    row("evaluate --seed x", ["--seed", "x"], 2, f"invalid value for '--seed': {NOT_INT}"),
    *flag_rows("evaluate", "--json", "--quiet"),
    # --- banger generate ---------------------------------------------------------------
    row("generate --instrument kazoo", ["-i", "kazoo"], 2,
        "unknown instrument 'kazoo' (hint: choose one of: piano,"),
    row("generate --instrument ''", ["-i", ""], 2, "unknown instrument ''"),
    row("generate --only without -i", ["--only"], 2, "--only needs at least one --instrument"),
    row("generate --only -i drums --no-drums", ["--only", "-i", "drums", "--no-drums"], 2,
        "--only drums with --no-drums leaves nothing to play"),
    row("generate --bars x", ["--bars", "x"], 2, f"invalid value for '--bars': {NOT_INT}"),
    row("generate --bars 0", ["--bars", "0"], 2, "--bars must be at least 1, got 0"),
    row("generate --bars -1", ["--bars", "-1"], 2, "--bars must be at least 1, got -1"),
    row("generate --tokens 0", ["--tokens", "0"], 2, "--tokens must be at least 1, got 0"),
    row("generate --tokens x", ["--tokens", "x"], 2, f"invalid value for '--tokens': {NOT_INT}"),
    row("generate --tokens with --bars", ["--bars", "2", "--tokens", "30"], 2,
        "--bars and --tokens contradict each other"),
    row("generate --variants 0", ["-n", "0"], 2, "--variants must be at least 1, got 0"),
    row("generate --variants x", ["-n", "x"], 2,
        f"invalid value for '--variants' / '-n': {NOT_INT}"),
    row("generate --temperature 0", ["--temperature", "0"], 2,
        "--temperature must be > 0, got 0.0"),
    row("generate --temperature -1", ["--temperature", "-1"], 2,
        "--temperature must be > 0, got -1.0"),
    row("generate --temperature nan", ["--temperature", "nan"], 2,
        "--temperature must be a finite number, got nan"),
    row("generate --temperature inf", ["--temperature", "inf", "--bars", "1"], 2,
        "--temperature must be a finite number, got inf"),
    row("generate --top-p 0", ["--top-p", "0"], 2, "--top-p must be in (0, 1], got 0.0"),
    row("generate --top-p 1.5", ["--top-p", "1.5"], 2, "--top-p must be in (0, 1], got 1.5"),
    row("generate --top-p nan", ["--top-p", "nan"], 2, "--top-p must be a finite number, got nan"),
    row("generate --top-k -1", ["--top-k", "-1"], 2, "--top-k must be >= 0, got -1"),
    row("generate --top-k x", ["--top-k", "x"], 2, f"invalid value for '--top-k': {NOT_INT}"),
    row("generate --steer -1", ["--steer", "-1"], 2, "--steer must be between 0 and 10, got -1.0"),
    row("generate --steer 11", ["--steer", "11"], 2, "--steer must be between 0 and 10, got 11.0"),
    row("generate --steer nan", ["--steer", "nan"], 2, "--steer must be a finite number, got nan"),
    row("generate --echo 1", ["--echo", "1"], 2, "--echo must be between 0 and 0.9, got 1.0"),
    row("generate --echo -0.1", ["--echo", "-0.1"], 2, "--echo must be between 0 and 0.9, got -0.1"),
    row("generate --seed -1", ["--seed", "-1"], 2,
        "--seed must be between 0 and 2**63 - 1, got -1"),
    row(f"generate --seed {HUGE}", ["--seed", HUGE], 2, "--seed must be between 0 and 2**63 - 1"),
    row("generate --seed x", ["--seed", "x"], 2, f"invalid value for '--seed': {NOT_INT}"),
    row("generate --bpm 0", ["--bpm", "0"], 2, "--bpm must be between 10 and 400, got 0.0"),
    row("generate --bpm 1000", ["--bpm", "1000"], 2,
        "--bpm must be between 10 and 400, got 1000.0"),
    row("generate --bpm nan", ["--bpm", "nan"], 2, "--bpm must be a finite number, got nan"),
    row("generate --bpm x", ["--bpm", "x"], 2, f"invalid value for '--bpm': {NOT_NUMBER}"),
    row("generate --prompt missing file", ["--prompt", "missing.mid"], 2,
        "prompt missing.mid is not a file (hint: pass a .mid file to --prompt)"),
    row("generate --prompt a folder", ["--prompt", "dir"], 2, "prompt dir is not a file"),
    row("generate --prompt garbage file", ["--prompt", "garbage"], 1,
        "--prompt garbage: not a MIDI file (no MThd header)"),
    row("generate --prompt empty file", ["--prompt", "empty"], 1,
        "--prompt empty: empty file (0 bytes)"),
    row("generate --prompt header only", ["--prompt", "header.mid"], 1,
        "--prompt header.mid: no tracks in the file"),
    row("generate --prompt without notes", ["--prompt", "silent.mid"], 2,
        "the prompt silent.mid has no notes"),
    row("generate --prompt-bars 0", ["--prompt-bars", "0"], 2,
        "--prompt-bars must be at least 1, got 0"),
    row("generate --prompt-bars without --prompt", ["--prompt-bars", "2"], 2,
        "--prompt-bars needs a --prompt"),
    row("generate --model missing file", ["--model", "missing.safetensors"], 1,
        "no checkpoint file at missing.safetensors"),
    row("generate --model a folder", ["--model", "dir"], 1, "no checkpoint file at dir"),
    row("generate --model garbage file", ["--model", "garbage"], 1,
        "garbage is not a readable banger checkpoint"),
    row("generate --model empty file", ["--model", "empty"], 1,
        "empty is not a readable banger checkpoint"),
    row("generate --model unknown name", ["--model", "nope"], 1, "unknown model 'nope'"),
    row("generate --model ''", ["--model", ""], 2, "the model name is empty"),
    row("generate --out a file", ["--out", "file"], 2, "--out file is not a folder"),
    row("generate --out under a file", ["--out", "file/sub", "--bars", "1"], 2,
        "--out file/sub: file is a file, not a folder"),
    row("generate --out a taken name without --force",
        ["--out", "taken", "--name", "song", "--bars", "1"], 1,
        "taken/song.mid already exists (hint: pass --force"),
    row("generate --name {nope}", ["--name", "{nope}"], 2, "unknown field(s) ['nope'] in --name"),
    row("generate --name ../x", ["--name", "../x"], 2,
        "--name '../x' must be a plain file name without folders"),
    row("generate --name sub/{n}", ["--name", "sub/{n}"], 2, "must be a plain file name"),
    row("generate --name {n", ["--name", "{n"], 2, "bad --name template '{n'"),
    row("generate --name ''", ["--name", ""], 2, "must be a plain file name"),
    row("generate --name {lead:d}", ["--name", "{lead:d}"], 2,
        "bad --name template '{lead:d}': Unknown format code 'd'"),
    row("generate --name {n!z}", ["--name", "{n!z}"], 2,
        "bad --name template '{n!z}': Unknown conversion specifier z"),
    row("generate --name {n:>300}", ["--name", "{n:>300}"], 2,
        "makes file names longer than 255 bytes"),
    row("generate --name {n:>99999999999}", ["--name", "{n:>99999999999}"], 2,
        "a field width is too large"),
    row("generate --name fixed -n 2", ["--name", "fixed", "-n", "2", "--bars", "1"], 2,
        "--name 'fixed' gives several pieces the same name"),
    row("generate --audio ogg", ["--audio", "ogg"], 2,
        "unknown --audio 'ogg' (hint: choose one of: mp3, wav, flac, none)"),
    row("generate --audio ''", ["--audio", ""], 2, "unknown --audio ''"),
    row("generate --soundfont missing file", ["--soundfont", "missing.sf2"], 2,
        "soundfont missing.sf2 does not exist"),
    row("generate --soundfont a folder", ["--soundfont", "dir"], 2, "soundfont dir is not a file"),
    row("generate --soundfont garbage file", ["--soundfont", "garbage", "--audio", "wav"], 2,
        "soundfont garbage is not a .sf2/.sf3 file"),
    *flag_rows("generate", "--drums", "--piano-roll", "--force", "--json", "--quiet"),
]


# --- the world the rows run in -----------------------------------------------------------


@pytest.fixture(scope="module")
def shared(tmp_path_factory) -> dict[str, Path]:
    """CKPT (a tiny untrained model), MIDI (eight small songs) and DATA (made from them)."""
    root = tmp_path_factory.mktemp("matrix")
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    checkpoint = save_checkpoint(root / "tiny.safetensors", build_model(config), config=config,
                                 tokenizer_config=TokenizerConfig())
    for seed in range(8):
        save(band(seed), root / "midi" / f"song{seed}.mid")
    data = preprocess([root / "midi"], root / "data", options=PreprocessOptions(val_fraction=0.5),
                      workers=1).out
    return {"CKPT": checkpoint, "DATA": data, "MIDI": root / "midi"}


@pytest.fixture
def here(tmp_path, monkeypatch) -> Path:
    """The test's folder, made the working directory, with the files rows point at."""
    (tmp_path / "file").write_text("not a folder\n")
    (tmp_path / "dir").mkdir()
    (tmp_path / "garbage").write_bytes(b"\x00garbage\xff" * 50)
    (tmp_path / "empty").write_bytes(b"")
    (tmp_path / "header.mid").write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x00\x01\xe0")
    save(midi_file(track(name="silence")), tmp_path / "silent.mid")
    (tmp_path / "run").mkdir()  # looks like a training run: must survive every row
    (tmp_path / "run" / "best.safetensors").write_bytes(b"an old run")
    (tmp_path / "baddata").mkdir()
    (tmp_path / "baddata" / "manifest.json").write_text("{not json")
    save(band(99), tmp_path / "taken" / "song.mid")
    monkeypatch.chdir(tmp_path)
    monkeypatch.delenv("BANGER_SOUNDFONT", raising=False)
    return tmp_path


def snapshot(*folders: Path) -> dict:
    """Every file and folder under `folders`, with the size and bytes' age of each file."""
    found = {}
    for folder in folders:
        for path in sorted(folder.rglob("*")):
            stat = path.stat()
            found[path] = None if path.is_dir() else (stat.st_size, stat.st_mtime_ns)
    return found


def resolve(argv: list[str], shared: dict[str, Path]) -> list[str]:
    return [str(shared[arg]) if arg in shared else arg for arg in argv]


def run_in_process(argv: list[str], capfd, monkeypatch) -> tuple[int, str, str]:
    """`banger ARGV` through the console entry point; returns (exit code, stdout, stderr)."""
    return run_cli(monkeypatch, capfd, *argv)


def assert_one_error_line(code: int, stdout: str, stderr: str, expected_code: int,
                          message: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert stderr.count("\n") == 1 and stderr.startswith("error: "), stderr
    assert message in stderr, stderr
    assert stdout == ""
    assert code == expected_code, stderr


# --- the matrix --------------------------------------------------------------------------


@pytest.mark.parametrize("argv, code, message", ROWS)
def test_bad_input(argv, code, message, shared, here, banger_home, capfd, monkeypatch,
                   record_property):
    before = snapshot(here, *shared.values(), banger_home)
    result = run_in_process(resolve(argv, shared), capfd, monkeypatch)
    for name, value in zip(("exit_code", "stdout", "stderr"), result):
        record_property(name, value)  # for the table in docs/reliability.md (--junitxml)
    assert_one_error_line(*result, code, message)
    assert snapshot(here, *shared.values(), banger_home) == before  # nothing written


SUBPROCESS_ROWS = ["banger COMMAND compose", "generate --bars x", "generate --instrument kazoo",
                   "train --out under a file", "evaluate MODEL garbage file",
                   "preprocess --workers 100000"]
# rows whose process imports torch before it fails (seconds of CPU each) run with the slow
# tests; by default, test_concurrency (generate) and test_train (an error) start such processes
TORCH_ROWS = ["generate --instrument kazoo", "train --out under a file",
              "evaluate MODEL garbage file"]


@pytest.mark.parametrize("labels", [
    pytest.param([label for label in SUBPROCESS_ROWS if label not in TORCH_ROWS], id="quick"),
    pytest.param(TORCH_ROWS, id="torch", marks=pytest.mark.slow),
])
def test_real_processes_match_the_in_process_rows(labels, shared, here, capfd, monkeypatch):
    """Representative rows as real `python -m bangercli` processes, started together: the
    same exit code and the same single line (the program name aside), nothing written."""
    rows = {param.id: param.values for param in ROWS if param.id in labels}
    assert sorted(rows) == sorted(labels)
    env = dict(os.environ, OMP_NUM_THREADS="1")
    before = snapshot(here, *shared.values())
    processes = {label: subprocess.Popen(
        [sys.executable, "-m", "bangercli", *resolve(argv, shared)], stdout=subprocess.PIPE,
        stderr=subprocess.PIPE, text=True, env=env) for label, (argv, _, _) in rows.items()}
    try:
        finished = {label: (*process.communicate(timeout=120), process.returncode)
                    for label, process in processes.items()}
    finally:
        for process in processes.values():
            if process.poll() is None:
                process.kill()
    assert snapshot(here, *shared.values()) == before
    for label, (argv, code, message) in rows.items():
        real_out, real_err, real_code = finished[label]
        assert_one_error_line(real_code, real_out, real_err, code, message)
        assert (real_code, real_out, real_err) == run_in_process(resolve(argv, shared), capfd,
                                                                 monkeypatch), label


# --- what the fixes must not break -------------------------------------------------------


def test_train_init_fine_tunes_from_the_command_line(shared, here, capfd, monkeypatch):
    """--init used to demand a run to resume; it starts a new run from the checkpoint."""
    argv = ["train", "DATA", "--out", "tuned", "--init", "CKPT", "--batch-size", "2",
            "--max-steps", "1", "--device", "cpu", "--quiet"]
    code, stdout, stderr = run_in_process(resolve(argv, shared), capfd, monkeypatch)
    assert (code, stderr) == (0, "")
    assert stdout == f"{Path('tuned') / 'best.safetensors'}\n"
    assert (here / "tuned" / "last.safetensors").is_file()


def test_an_unwritable_output_folder_is_refused_before_any_work(shared, here, capfd,
                                                                 monkeypatch):
    """Where permissions apply (not for root), a folder without write access is refused."""
    real_access = os.access
    monkeypatch.setattr(os, "access", lambda path, mode, **kw: (
        False if Path(path).resolve() == here.resolve() else real_access(path, mode, **kw)))
    argv = ["generate", "--model", "CKPT", "--out", "new/out", "--audio", "none"]
    code, stdout, stderr = run_in_process(resolve(argv, shared), capfd, monkeypatch)
    assert_one_error_line(code, stdout, stderr, 2, f"--out new/out: cannot write in {here}")
