"""The second reliability pass (docs/reliability.md): each test here failed before its fix.

Data loss from --force, hangs on odd file-system objects, tampered checkpoints that would
take all the memory. Files are made by the tests themselves."""

from __future__ import annotations

import csv
import errno
import io
import json
import os
import sys
from pathlib import Path

import pytest

from bangercli.data.preprocess import preprocess
from bangercli.errors import BangerError, OutputExistsError
from cli_runner import run_cli
from midi_fixtures import band, save

QUIET = dict(workers=1)


def test_preprocess_force_never_deletes_a_folder_banger_did_not_write(tmp_path, capsys,
                                                                      monkeypatch):
    save(band(0), tmp_path / "a.mid")
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "thesis.txt").write_text("four years of work")
    with pytest.raises(OutputExistsError, match="not a banger data set"):
        preprocess([tmp_path / "a.mid"], docs, force=True, **QUIET)
    assert (docs / "thesis.txt").read_text() == "four years of work"
    code, out, err = run_cli(monkeypatch, capsys, "preprocess", tmp_path / "a.mid",
                             "--out", docs, "--force", "--quiet")
    assert code != 0 and out == "" and err.count("\n") == 1 and "Traceback" not in err
    assert (docs / "thesis.txt").exists()


def test_preprocess_force_never_deletes_the_inputs_of_a_folder_inside_the_sources(tmp_path):
    source = tmp_path / "src"
    save(band(0), source / "a.mid")
    save(band(1), source / "inner" / "b.mid")
    with pytest.raises(OutputExistsError):
        preprocess([source], source / "inner", force=True, **QUIET)
    assert (source / "inner" / "b.mid").is_file()


def test_preprocess_force_replaces_a_data_set_it_wrote(tmp_path):
    save(band(0), tmp_path / "in" / "a.mid")
    save(band(1), tmp_path / "in" / "b.mid")
    out = tmp_path / "data"
    preprocess([tmp_path / "in"], out, **QUIET)
    (tmp_path / "in" / "b.mid").unlink()
    report = preprocess([tmp_path / "in"], out, force=True, **QUIET)
    assert report.found == 1 and (out / "manifest.json").is_file()


@pytest.mark.skipif(not hasattr(os, "mkfifo"), reason="no FIFOs on this system")
def test_a_fifo_named_like_midi_is_skipped_not_waited_on(tmp_path):
    source = tmp_path / "in"
    save(band(0), source / "a.mid")
    save(band(1), source / "b.mid")
    os.mkfifo(source / "x.mid")
    out = tmp_path / "data"
    report = preprocess([source], out, **QUIET)  # before the fix: blocked in open() forever
    assert report.found == 3 and sum(report.kept.values()) == 2
    with open(out / "skipped.csv", newline="", encoding="utf-8") as handle:
        rows = {row[0]: row[1] for row in csv.reader(handle)}
    assert rows[str(source / "x.mid")] == "unreadable: not a regular file"
    # named directly, too
    report = preprocess([source / "x.mid", source / "a.mid"], tmp_path / "d2", **QUIET)
    assert report.found == 2 and sum(report.kept.values()) == 1


def test_a_stale_partial_folder_of_a_killed_run_is_cleaned(tmp_path):
    save(band(0), tmp_path / "in" / "a.mid")
    stale = tmp_path / ".data.partial-999999999"  # no such process
    stale.mkdir()
    (stale / "train.tokens").write_bytes(b"half")
    preprocess([tmp_path / "in"], tmp_path / "data", **QUIET)
    assert not stale.exists()


# --- tampered checkpoints: refused before anything is built ---------------------------------


def _tampered(tmp_path, name: str, **model_config) -> Path:
    """The shipped model's weights under a model_config with some fields changed."""
    from safetensors import safe_open
    from safetensors.torch import save_file

    from bangercli.api import resolve_model

    with safe_open(str(resolve_model("default")), framework="pt") as handle:
        metadata = dict(handle.metadata())
        tensors = {key: handle.get_tensor(key) for key in handle.keys()}
    config = json.loads(metadata["model_config"])
    config.update(model_config)
    metadata["model_config"] = json.dumps(config)
    path = tmp_path / f"{name}.safetensors"
    save_file(tensors, str(path), metadata=metadata)
    return path


@pytest.mark.parametrize("name, change, message", [
    ("deep", dict(depth=1_000_000), "depth must be at most 1024"),
    ("deep-in-bounds", dict(depth=1_000), "implies"),
    ("heads", dict(heads=1_000_000), "heads must be at most"),
    ("wide", dict(dim=65_536), "dim must be at most"),
    ("wide-in-bounds", dict(dim=8_192), "implies"),
    ("text", dict(dim="192"), "dim must be a whole number"),
    ("float", dict(dim=192.5), "dim must be a whole number"),
    ("bool", dict(depth=True), "depth must be a whole number"),
    ("shape", dict(dim_head=32), "shape"),
    ("layers", dict(depth=6), "missing"),
])
def test_a_tampered_model_config_is_refused_before_building(tmp_path, monkeypatch, capsys, name,
                                                           change, message):
    import bangercli.api as api

    def never(config):
        raise AssertionError(f"build_model was called with {config}")

    path = _tampered(tmp_path, name, **change)
    monkeypatch.setattr(api, "build_model", never)
    with pytest.raises(BangerError, match=message):
        api.load_checkpoint(path)
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--model", path, "--out",
                             tmp_path / "out", "--bars", "1", "--audio", "none")
    assert code == 1 and out == "" and err.startswith("error: ") and err.count("\n") == 1, err
    assert message.split()[0] in err and not (tmp_path / "out").exists()


def test_an_untampered_copy_still_loads(tmp_path):
    from bangercli.api import load_checkpoint

    banger = load_checkpoint(_tampered(tmp_path, "same"))
    assert banger.config.depth >= 1


# --- stdout and --name ------------------------------------------------------------------------


class _Unwritable(io.TextIOBase):
    """A stdout that refuses every write, like /dev/full or a pipe whose reader left."""

    def __init__(self, error: OSError) -> None:
        self.error = error

    def write(self, text: str) -> int:
        raise self.error


@pytest.mark.parametrize("error", [
    OSError(errno.ENOSPC, "No space left on device"),
    pytest.param(BrokenPipeError(errno.EPIPE, "Broken pipe"), marks=pytest.mark.slow),
])
def test_when_stdout_fails_the_files_are_taken_back(tmp_path, monkeypatch, capsys, error):
    out = tmp_path / "songs"
    (out / "mine").mkdir(parents=True)  # a folder that existed before: kept
    monkeypatch.setattr(sys, "stdout", _Unwritable(error))
    code, _, err = run_cli(monkeypatch, capsys, "generate", "-i", "guitar", "--bars", "1", "-n",
                           "2", "--audio", "none", "--out", out, "--seed", "1")
    assert code == 1 and err.startswith("error: cannot write the results to stdout"), err
    assert err.count("\n") == 1
    assert sorted(p.name for p in out.iterdir()) == ["mine"]


@pytest.mark.parametrize("name, message", [
    ("a\nb", "control character"), ("tab\there", "control character"),
    (".", "hidden"), ("..", "hidden"), (".secret-{n}", "hidden"),
])
def test_names_that_break_the_output_are_refused(tmp_path, monkeypatch, capsys, name, message):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--bars", "1", "--audio", "none",
                             "--out", tmp_path / "o", "--name", name)
    assert code == 2 and out == "" and message in err and err.count("\n") == 1, err
    assert not (tmp_path / "o").exists()


def test_a_name_ending_in_mid_names_the_midi_file(tmp_path, monkeypatch, capsys):
    code, out, err = run_cli(monkeypatch, capsys, "generate", "--bars", "1", "--audio", "wav",
                             "--out", tmp_path, "--name", "song.mid", "--seed", "1")
    assert code == 0, err
    assert out == f"{tmp_path / 'song.mid'}\n"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["song.mid", "song.wav"]


# --- ceilings on work -----------------------------------------------------------------------


@pytest.mark.parametrize("options, message", [
    (dict(variants=1_000_000_000), "--variants must be at most 64"),
    (dict(bars=100_000), "--bars must be at most 256"),
    (dict(tokens=10**9), "--tokens must be at most 65536"),
    (dict(prompt=b"MThd", prompt_bars=10**6), "--prompt-bars must be at most 4096"),
])
def test_runaway_work_is_refused_before_it_starts(options, message):
    from bangercli.errors import UsageError
    from bangercli.generation.request import Request

    with pytest.raises(UsageError, match=message):
        Request(**options)


# --- training ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def small_data(tmp_path_factory):
    from test_train import make_corpus

    return make_corpus(tmp_path_factory.mktemp("train"), pieces=8)


@pytest.mark.slow  # a real process or a whole run: about 1.5 s or more (CI runs it)
def test_resuming_with_another_batch_size_keeps_counting_epochs_forward(small_data, tmp_path):
    from bangercli.training.train import train
    from test_train import quick, tiny

    events = []
    first = train(small_data, tmp_path / "run", model_config=tiny(), config=quick(max_steps=4))
    resumed = train(small_data, tmp_path / "run", config=quick(max_steps=8, batch_size=2),
                    resume=True, callback=events.append)
    assert resumed.epoch > first.epoch  # before the fix: rescaled by the batch size, backwards
    # 4 steps of 4 windows, then 4 of 2: one and a half times the data (up to the rounding
    # of steps per epoch)
    assert resumed.epoch == pytest.approx(1.5 * first.epoch, rel=0.05)
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert any("--batch-size 2 (the run used 4)" in note for note in notes), notes


def test_training_without_validation_pieces_says_so(tmp_path):
    from bangercli.data.preprocess import PreprocessOptions, preprocess
    from bangercli.training.train import train
    from test_train import quick, tiny

    for seed in range(3):
        save(band(seed, bars=8), tmp_path / "midi" / f"{seed}.mid")
    data = preprocess([tmp_path / "midi"], tmp_path / "data", workers=1,
                      options=PreprocessOptions(val_fraction=0.0)).out
    events = []
    result = train(data, tmp_path / "run", model_config=tiny(), config=quick(max_steps=3),
                   callback=events.append)
    notes = [e["message"] for e in events if e["event"] == "note"]
    assert any("no validation pieces" in note for note in notes), notes
    assert result.best_val_loss is None and result.best.is_file()


# --- prompts ----------------------------------------------------------------------------------


def test_a_prompt_whose_kept_bars_are_silent_keeps_its_band(tmp_path):
    import mido

    from bangercli.api import load_model
    from midi_fixtures import TPB, midi_file, note, program, track

    late = [event for beat in range(16) for event in
            note(0, 60 + beat % 5, (16 + beat) * TPB, TPB // 2)]  # piano from bar 5
    drums = [event for beat in range(16) for event in note(9, 36, (16 + beat) * TPB, TPB // 4)]
    prompt = midi_file(track(program(0, 0), late), track(drums))
    assert isinstance(prompt, mido.MidiFile)
    pieces = load_model("default").generate(prompt=prompt, prompt_bars=2, bars=2, seed=3)
    assert pieces[0].drums and "piano" in pieces[0].instruments  # before: drums off, no piano
