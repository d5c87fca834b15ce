"""Faults: `kill -9` at random moments, a full disk, a read-only folder.

Whenever `banger preprocess` or `banger train` is killed, nothing under a final name is
half-written: the data directory is absent, the complete previous one or the complete new
one, and every checkpoint loads. What a user does next (the same command, with --force when
the error says so, or `banger train --resume`) ends with exactly the output of a run that was
never killed, and a killed training run loses at most one save interval. A full disk or a
read-only folder is one `error:` line naming the file, never a traceback; the files that were
there stay intact and no temporary file is left behind.

Kill moments come from seeded generators; the kill loops that start processes are marked
slow (CI runs them; the default suite stays under a minute).
Only what needs a real process runs in one (a process start costs seconds of imports): the
runs that are killed, and `banger preprocess` on a full disk; the command a user finishes
a killed training run with runs in this process.
A full disk is the kernel's own refusal (a file size limit, `ulimit -f`, in a subprocess or
in this process) or an ENOSPC raised in-process; a read-only folder is chmod 0o555 where
that binds (not as root) and an in-process EROFS everywhere, so that CI (root) exercises it
too.
"""

from __future__ import annotations

import builtins
import errno
import io
import json
import os
import random
import resource
import shutil
import signal
import subprocess
import sys
import time
from collections import Counter
from contextlib import contextmanager
from pathlib import Path

import pytest
import torch

from bangercli.model.checkpoint import (
    load_training_state, read_checkpoint, save_checkpoint, save_training_state,
)
from bangercli.errors import BangerError
from bangercli.atomic_files import WriteError, atomic_write, remove_stale_parts
from bangercli.generation.generate import generate
from bangercli.generation.request import Request
from bangercli.api import Banger
from bangercli.model.network import PRESETS, build_model, model_config
from bangercli.generation.save import save_pieces
from bangercli.data.preprocess import preprocess
from bangercli.midi.tokenizer import Tokenizer, TokenizerConfig
from bangercli.training.config import TrainConfig
from bangercli.training.train import Trainer, train
from cli_runner import run_cli
from midi_fixtures import band, midi_file, save, tempo, to_bytes, track

BANGER = [sys.executable, "-m", "bangercli"]
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}  # the same arithmetic as the in-process runs
SONGS = 600  # files of the synthetic collection: preprocess takes about a second on them
TRAIN = dict(max_steps=24, batch_size=4, lr=1e-3, warmup_steps=5, val_every=12, val_windows=8,
             save_every=3, log_every=1, device="cpu")
# a fresh `banger train` run with log_every=1 (no CLI flag): metrics.jsonl then shows the
# step reached. Resumed runs keep that setting and go through the real CLI.
FRESH_TRAIN = """
import json, sys
from bangercli.model.network import model_config
from bangercli.training.config import TrainConfig
from bangercli.training.train import train
train(sys.argv[1], sys.argv[2], model_config=model_config("tiny", seq_len=32),
      config=TrainConfig(**json.loads(sys.argv[3])), force=True)
"""


# --- shared helpers ----------------------------------------------------------------------


def tree_bytes(directory: Path) -> dict[str, bytes]:
    return {p.name: p.read_bytes() for p in sorted(directory.iterdir())}


def listing(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir())


def dead_pid() -> int:
    """The id of a process that has exited (ids are not reused this quickly)."""
    process = subprocess.Popen(["true"])
    process.wait()
    return process.pid


def assert_one_error_line(stderr: str, *fragments: str) -> None:
    assert "Traceback" not in stderr, stderr
    assert stderr.startswith("error: ") and stderr.count("\n") == 1, stderr
    for fragment in fragments:
        assert fragment in stderr, (fragment, stderr)


def file_size_limit(limit: int):
    """For `preexec_fn`: writes past `limit` bytes fail with EFBIG, as on a full disk."""

    def apply() -> None:
        signal.signal(signal.SIGXFSZ, signal.SIG_IGN)  # else the kernel kills the process
        resource.setrlimit(resource.RLIMIT_FSIZE, (limit, resource.RLIM_INFINITY))

    return apply


def kill_group(process: subprocess.Popen) -> None:
    """kill -9 the process, then check that its workers (same session) exit on their own."""
    process.kill()
    process.communicate()
    for _ in range(200):
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return
        time.sleep(0.01)
    os.killpg(process.pid, signal.SIGKILL)  # clean up before failing
    pytest.fail("worker processes outlived the killed `banger preprocess`")


def refuse_writes(monkeypatch, folder: Path, code: int = errno.EROFS) -> None:
    """Make every write, create, rename or delete under `folder` fail with `code`, as a
    read-only mount does (chmod does not stop root). Reads are untouched."""
    root = str(folder.resolve())

    def inside(path) -> bool:
        try:
            path = os.path.abspath(os.fspath(path))
        except TypeError:  # a file descriptor
            return False
        return path == root or path.startswith(root + os.sep)

    def refuse(path) -> None:
        raise OSError(code, os.strerror(code), os.fspath(path))

    real_open, real_os_open = builtins.open, os.open

    def open_file(file, mode="r", *args, **kwargs):
        if any(flag in mode for flag in "wax+") and inside(file):
            refuse(file)
        return real_open(file, mode, *args, **kwargs)

    def os_open(path, flags, *args, **kwargs):
        writes = os.O_WRONLY | os.O_RDWR | os.O_CREAT | os.O_APPEND | os.O_TRUNC
        if flags & writes and inside(path):
            refuse(path)
        return real_os_open(path, flags, *args, **kwargs)

    def guarded(real):
        def call(*paths, **kwargs):
            for path in paths[:2]:
                if inside(path):
                    refuse(path)
            return real(*paths, **kwargs)
        return call

    monkeypatch.setattr(builtins, "open", open_file)
    monkeypatch.setattr(io, "open", open_file)
    monkeypatch.setattr(os, "open", os_open)
    for name in ("mkdir", "rmdir", "unlink", "remove", "rename", "replace", "link", "chmod"):
        monkeypatch.setattr(os, name, guarded(getattr(os, name)))


def chmod_binds(probe: Path) -> bool:
    """Whether a folder without write permission stops this process (not root's)."""
    probe.mkdir()
    probe.chmod(0o555)
    try:
        (probe / "file").touch()
    except PermissionError:
        return True
    finally:
        probe.chmod(0o755)
        shutil.rmtree(probe)
    return False


@pytest.fixture(params=["chmod", "simulated"])
def read_only(request, monkeypatch, tmp_path):
    """A function that makes a folder read-only: chmod 0o555 (skipped as root, whom it does
    not stop) or an in-process EROFS (runs everywhere)."""
    chmodded: list[Path] = []
    if request.param == "chmod" and not chmod_binds(tmp_path / "probe"):
        pytest.skip("chmod does not stop root; the simulated variant covers this")

    def make(folder: Path) -> None:
        if request.param == "chmod":
            folder.chmod(0o555)
            chmodded.append(folder)
        else:
            refuse_writes(monkeypatch, folder)

    yield make
    for folder in chmodded:
        folder.chmod(0o755)


# --- preprocess ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def collection(tmp_path_factory) -> Path:
    """SONGS distinct MIDI files in 16 folders: 8 songs, each copy renamed inside (its
    conductor track's name), so every file has its own content hash."""
    root = tmp_path_factory.mktemp("collection")
    bases = [to_bytes(midi_file(track(tempo(100 + seed), name="conductor-00000"),
                                *band(seed, bars=16).tracks[1:])) for seed in range(8)]
    for i in range(SONGS):
        data = bases[i % 8].replace(b"conductor-00000", f"conductor-{i:05d}".encode())
        save(data, root / f"{i % 16:02d}" / f"song{i:04d}.mid")
    return root


@pytest.fixture(scope="module")
def reference_data(collection, tmp_path_factory) -> tuple[Path, float]:
    """The data directory of one uninterrupted `banger preprocess`, and its wall time."""
    out = tmp_path_factory.mktemp("reference") / "data"
    started = time.perf_counter()
    subprocess.run(BANGER + ["preprocess", str(collection), "--out", str(out), "-j", "1", "-q"],
                   check=True, capture_output=True, env=ENV)
    return out, time.perf_counter() - started


def check_preprocess_state(folder: Path, out: Path, expected: dict[str, bytes],
                           process: subprocess.Popen) -> str:
    """After a kill: `out` is absent or complete, and nothing but staging lies beside it.
    Returns what the kill left, in words."""
    staging = [name for name in listing(folder) if name != out.name]
    assert all(name.startswith((f".{out.name}.partial-", f".{out.name}.old-"))
               for name in staging), staging
    if out.exists():
        assert tree_bytes(out) == expected
    if process.returncode == 0:
        return "finished before the kill"
    left = "complete data" if out.exists() else "no data"
    return f"killed: {left}" + (", staging left" if staging else "")


def preprocess_killed_repeatedly(collection, reference_data, folder: Path, *, kills: int,
                                 seed: int) -> Counter:
    """`kills` runs into one --out, each killed at a seeded moment, then the rerun a user
    makes; returns what the kills left."""
    reference, seconds = reference_data
    expected = tree_bytes(reference)
    folder.mkdir(exist_ok=True)
    out, rng, outcomes = folder / "data", random.Random(seed), Counter()
    for attempt in range(kills):
        force = ["--force"] if out.exists() else []  # what the error message asks for
        command = BANGER + ["preprocess", str(collection), "--out", str(out),
                            "-j", str(1 + attempt % 2), "-q", *force]
        process = subprocess.Popen(command, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                                   env=ENV, start_new_session=True)
        time.sleep(rng.uniform(0.0, seconds))
        kill_group(process)
        outcomes[check_preprocess_state(folder, out, expected, process)] += 1
    command = BANGER + ["preprocess", str(collection), "--out", str(out), "-j", "2", "-q"]
    finished = out.exists()
    rerun = subprocess.run(command, capture_output=True, text=True, env=ENV)
    if finished:  # a killed run had finished: the plain rerun says what to do
        assert rerun.returncode == 1
        assert_one_error_line(rerun.stderr, "already exists", "--force")
        rerun = subprocess.run(command + ["--force"], capture_output=True, text=True, env=ENV)
    assert rerun.returncode == 0, rerun.stderr
    assert listing(folder) == ["data"]  # every staging directory was cleared away
    assert tree_bytes(out) == expected
    return outcomes


@pytest.mark.slow  # ~3 s of process starts; CI runs it (the default suite stays under a minute)
def test_preprocess_killed_at_random_moments_reruns_to_identical_output(
        collection, reference_data, tmp_path):
    """kill -9 at two seeded moments (one and two workers): never a partial data
    directory, no orphaned workers, and the rerun's output is byte-identical."""
    outcomes = preprocess_killed_repeatedly(collection, reference_data, tmp_path, kills=2,
                                            seed=1)
    print(f"preprocess, 2 kills: {dict(outcomes)}")


@pytest.mark.slow
def test_preprocess_killed_many_times(collection, reference_data, tmp_path):
    """Eight sequences of five kills, each sequence starting with no data directory."""
    outcomes = Counter()
    for sequence in range(8):
        outcomes += preprocess_killed_repeatedly(collection, reference_data,
                                                 tmp_path / str(sequence), kills=5,
                                                 seed=100 + sequence)
    print(f"preprocess, 40 kills: {dict(outcomes)}")


def test_a_data_set_moved_aside_by_a_killed_run_is_put_back(collection, reference_data,
                                                            tmp_path):
    """The one moment a --force run holds the old data directory aside (killed between two
    renames): the next run puts it back first, so it still asks for --force."""
    reference, _ = reference_data
    pid = dead_pid()
    shutil.copytree(reference, tmp_path / f".data.old-{pid}")
    (tmp_path / f".data.partial-{pid}").mkdir()
    with pytest.raises(BangerError, match="already exists") as caught:
        preprocess([collection], tmp_path / "data", workers=1)
    assert "--force" in caught.value.hint
    assert listing(tmp_path) == ["data"]
    assert tree_bytes(tmp_path / "data") == tree_bytes(reference)


def test_preprocess_on_a_full_disk_keeps_the_previous_data(collection, reference_data,
                                                           tmp_path):
    """A file size limit stops the writes part-way (EFBIG): one error line with the path,
    the previous data directory untouched, the staging directory removed."""
    reference, _ = reference_data
    out = tmp_path / "data"
    shutil.copytree(reference, out)
    result = subprocess.run(BANGER + ["preprocess", str(collection), "--out", str(out), "-j", "1",
                                      "-q", "--force"], capture_output=True, text=True, env=ENV,
                            preexec_fn=file_size_limit(20_000))
    assert result.returncode == 1 and result.stdout == ""
    assert_one_error_line(result.stderr, f"cannot write {out}", "File too large", "disk space")
    assert listing(tmp_path) == ["data"] and tree_bytes(out) == tree_bytes(reference)


def test_preprocess_into_a_read_only_folder(collection, reference_data, tmp_path, read_only,
                                            monkeypatch, capsys):
    """Replacing a data directory in a read-only folder: one error line, nothing changed."""
    reference, _ = reference_data
    shutil.copytree(reference, tmp_path / "data")
    read_only(tmp_path)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "preprocess", collection, "--out",
                                    tmp_path / "data", "-j", "1", "-q", "--force")
    assert code == 1 and stdout == ""
    assert_one_error_line(stderr, f"cannot write {tmp_path / 'data'}", "write to")
    assert listing(tmp_path) == ["data"] and tree_bytes(tmp_path / "data") == tree_bytes(reference)


# --- train ---------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def train_data(tmp_path_factory) -> Path:
    folder = tmp_path_factory.mktemp("train-data")
    for seed in range(12):
        save(band(seed, bars=8), folder / "midi" / f"song{seed:02d}.mid")
    return preprocess([folder / "midi"], folder / "data", workers=1).out


@pytest.fixture(scope="module")
def reference_run(train_data, tmp_path_factory) -> Path:
    """An uninterrupted run of TRAIN steps (in-process, one thread, as the subprocesses)."""
    run = tmp_path_factory.mktemp("reference-run") / "run"
    train(train_data, run, model_config=model_config("tiny", seq_len=32),
          config=TrainConfig(**TRAIN))
    return run


def checkpoint_step(run: Path) -> int:
    """The step of last.safetensors (0 when there is none); it and its optimizer state load."""
    if not (run / "last.safetensors").exists():
        return 0
    step = read_checkpoint(run / "last.safetensors")[1]["training"]["step"]
    states = [load_training_state(run / name)["step"]
              for name in ("last.optim.pt", "last.optim.next.pt") if (run / name).exists()]
    assert step in states, (step, states)
    return step


def steps_reached(run: Path) -> int:
    try:
        text = (run / "metrics.jsonl").read_text()
    except FileNotFoundError:  # not yet written, or a --force restart has just removed it
        return 0
    steps = [0]
    for line in text.splitlines():
        try:
            point = json.loads(line)
        except ValueError:  # a line being written as we read
            continue
        if point.get("split") == "train":
            steps.append(point["step"])
    return max(steps)


def assert_no_partial_run_file(run: Path) -> None:
    checkpoint_step(run)
    if (run / "best.safetensors").exists():
        read_checkpoint(run / "best.safetensors")
    if (run / "curves.png").exists():
        data = (run / "curves.png").read_bytes()
        assert data.startswith(b"\x89PNG") and data.endswith(b"IEND\xaeB`\x82")


def train_command(data: Path, run: Path) -> list[str]:
    """What a user runs after a kill: --resume when there is a last.safetensors, else the
    first command again (with --force, in case the kill left a file before the first save)."""
    if (run / "last.safetensors").exists():
        return BANGER + ["train", str(data), "--out", str(run), "--resume", "--quiet"]
    return [sys.executable, "-c", FRESH_TRAIN, str(data), str(run), json.dumps(TRAIN)]


def finish_in_process(train_data: Path, run: Path, monkeypatch, capsys) -> None:
    """What `train_command` runs, in this process (a process start costs seconds of imports;
    the kills before it are what needs real processes)."""
    if (run / "last.safetensors").exists():
        code, _, stderr = run_cli(monkeypatch, capsys, "train", train_data, "--out", run,
                                  "--resume", "--quiet")
        assert code == 0, stderr
    else:
        train(train_data, run, model_config=model_config("tiny", seq_len=32),
              config=TrainConfig(**TRAIN), force=True)


def train_killed_repeatedly(train_data, reference_run, run: Path, monkeypatch, capsys, *,
                            kills: int, seed: int) -> list[tuple[int, int, int]]:
    """Up to `kills` runs, each killed at a seeded step plus up to 80 ms (inside a save as
    often as not), then the run a user finishes with; returns (step reached, checkpoint
    step, .part files left) after each kill."""
    rng, save_every, total = random.Random(seed), TRAIN["save_every"], TRAIN["max_steps"]
    records = []
    for left in range(kills, 0, -1):
        reached = steps_reached(run)
        if reached >= total:  # the last kill came after the run had finished
            break
        target = reached + rng.randint(1, max(1, (total - reached) // left))
        process = subprocess.Popen(train_command(train_data, run), stdout=subprocess.PIPE,
                                   stderr=subprocess.PIPE, env=ENV)
        while process.poll() is None and steps_reached(run) < target:
            time.sleep(0.005)
        time.sleep(rng.uniform(0.0, 0.08))
        process.kill()
        _, stderr = process.communicate()
        assert process.returncode in (0, -signal.SIGKILL), stderr.decode()
        assert_no_partial_run_file(run)
        parts = [name for name in listing(run) if name.endswith(".part")]
        records.append((steps_reached(run), checkpoint_step(run), len(parts)))
        assert records[-1][0] - records[-1][1] <= save_every, "lost more than one save interval"
    finish_in_process(train_data, run, monkeypatch, capsys)
    expected = read_checkpoint(reference_run / "last.safetensors")[0]
    weights = read_checkpoint(run / "last.safetensors")[0]
    assert weights.keys() == expected.keys()
    for name in expected:
        assert torch.allclose(weights[name], expected[name], atol=1e-6, rtol=0), name
    points = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines()]
    assert [p["step"] for p in points if p["split"] == "train"] == list(range(1, total + 1))
    assert not [name for name in listing(run) if name.endswith(".part")]  # cleaned on resume
    return records


@pytest.mark.slow  # ~4 s of process starts; CI runs it
def test_train_killed_at_a_random_moment_resumes_to_the_same_weights(train_data, reference_run,
                                                                     tmp_path, monkeypatch,
                                                                     capsys):
    """kill -9 at a seeded moment: last.safetensors loads, at most one save interval is
    lost, and --resume ends with the weights of the uninterrupted run."""
    records = train_killed_repeatedly(train_data, reference_run, tmp_path / "run", monkeypatch,
                                      capsys, kills=1, seed=3)
    print(f"train, 1 kill: (reached, saved, .part) {records}")


@pytest.mark.slow
def test_train_killed_many_times(train_data, reference_run, tmp_path, monkeypatch, capsys):
    """Three runs, each killed up to eight times on its way to the end."""
    records = []
    for sequence in range(3):
        records += train_killed_repeatedly(train_data, reference_run, tmp_path / str(sequence),
                                           monkeypatch, capsys, kills=8, seed=200 + sequence)
    print(f"train, {len(records)} kills: (reached, saved, .part) {records}")


class Killed(BaseException):
    """Stands in for SIGKILL in-process: nothing after it runs, no handler catches it."""


def test_a_kill_inside_a_save_loses_at_most_that_save(train_data, reference_run, tmp_path,
                                                      monkeypatch):
    """The two moments random kills rarely hit, one after the other: killed between the
    optimizer state and the weights of the step-6 save (resumes from step 3), then between
    the weights and the optimizer state's rename of the step-9 save (resumes from step 9);
    the run still ends with the uninterrupted run's weights."""
    import bangercli.training.train as train_module

    run, config = tmp_path / "run", TrainConfig(**TRAIN)
    real_save, real_commit = train_module.save_checkpoint, Trainer._commit_optimizer_state

    def weights_die_at_6(path, *args, **kwargs):
        if Path(path).name == "last.safetensors" and kwargs["info"]["step"] == 6:
            raise Killed
        return real_save(path, *args, **kwargs)

    def rename_dies_at_9(self):
        if self.info["step"] == 9:
            raise Killed
        return real_commit(self)

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(train_module, "save_checkpoint", weights_die_at_6)
        train(train_data, run, model_config=model_config("tiny", seq_len=32), config=config)
    assert checkpoint_step(run) == 3 and steps_reached(run) == 6
    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(Trainer, "_commit_optimizer_state", rename_dies_at_9)
        train(train_data, run, config=config, resume=True)
    assert checkpoint_step(run) == 9
    train(train_data, run, config=config, resume=True)
    expected = read_checkpoint(reference_run / "last.safetensors")[0]
    for name, tensor in read_checkpoint(run / "last.safetensors")[0].items():
        assert torch.allclose(tensor, expected[name], atol=1e-6, rtol=0), name


def test_two_kills_in_a_row_inside_saves_keep_a_resumable_pair(train_data, reference_run,
                                                                 tmp_path, monkeypatch):
    """Killed after the weights of the step-3 save but before its optimizer state's rename,
    resumed, then killed before the weights of the step-6 save: the step-6 state must not
    have replaced the step-3 one that last.safetensors still needs (the run resumed from
    last.optim.next.pt gives it its real name first). Seen in CI with random kills."""
    import bangercli.training.train as train_module

    run, config = tmp_path / "run", TrainConfig(**TRAIN)
    real_save, real_commit = train_module.save_checkpoint, Trainer._commit_optimizer_state

    def rename_dies_at_3(self):
        if self.info["step"] == 3:
            raise Killed
        return real_commit(self)

    def weights_die_at_6(path, *args, **kwargs):
        if Path(path).name == "last.safetensors" and kwargs["info"]["step"] == 6:
            raise Killed
        return real_save(path, *args, **kwargs)

    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(Trainer, "_commit_optimizer_state", rename_dies_at_3)
        train(train_data, run, model_config=model_config("tiny", seq_len=32), config=config)
    assert checkpoint_step(run) == 3 and (run / "last.optim.next.pt").exists()
    with monkeypatch.context() as patch, pytest.raises(Killed):
        patch.setattr(train_module, "save_checkpoint", weights_die_at_6)
        train(train_data, run, config=config, resume=True)
    assert checkpoint_step(run) == 3  # its optimizer state survived the step-6 write
    train(train_data, run, config=config, resume=True)
    expected = read_checkpoint(reference_run / "last.safetensors")[0]
    for name, tensor in read_checkpoint(run / "last.safetensors")[0].items():
        assert torch.allclose(tensor, expected[name], atol=1e-6, rtol=0), name


def test_a_run_killed_before_its_first_save_asks_for_force(train_data, tmp_path):
    """Only an optimizer state or a best.safetensors, no last.safetensors: --resume and a
    plain rerun both say what works (--force), instead of sending the user in a circle."""
    run = tmp_path / "run"
    run.mkdir()
    torch.save({"step": 3, "optimizer": {}}, run / "last.optim.next.pt")
    shutil.copy(train_data / "manifest.json", run / "best.safetensors")  # any file will do
    with pytest.raises(BangerError, match="nothing to resume") as caught:
        train(train_data, run, config=TrainConfig(**TRAIN), resume=True)
    assert caught.value.hint == "start the run again with --force"
    with pytest.raises(BangerError, match="already holds a training run") as caught:
        train(train_data, run, model_config=model_config("tiny", seq_len=32),
              config=TrainConfig(**TRAIN))
    assert "--force" in caught.value.hint and "--resume" not in caught.value.hint


def test_train_on_a_full_disk_keeps_the_last_checkpoint(train_data, reference_run, tmp_path,
                                                        monkeypatch, capsys):
    """--resume under a file size limit smaller than a checkpoint (set in this process, a
    process start costs seconds): the next save (step 27, its optimizer state) fails with one
    error line that says how to go on, and every earlier file is untouched."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = tree_bytes(run)
    with disk_full_beyond(1_000_000):
        code, stdout, stderr = run_cli(monkeypatch, capsys, "train", train_data, "--out", run,
                                       "--resume", "--quiet",
                                       "--max-steps", TRAIN["max_steps"] + 6)
    assert code == 1 and stdout == ""
    assert_one_error_line(stderr, f"cannot write {run / 'last.optim.next.pt'}:",
                          "File too large", "disk space", "--resume")
    after = tree_bytes(run)
    assert sorted(after) == sorted(before)  # no temporary file left
    for name in ("last.safetensors", "last.optim.pt", "best.safetensors"):
        assert after[name] == before[name], name


def test_train_into_a_read_only_folder(train_data, reference_run, tmp_path, read_only):
    """--resume in a read-only run directory: a clear error before any step, nothing changed."""
    run = tmp_path / "run"
    shutil.copytree(reference_run, run)
    before = tree_bytes(run)
    read_only(run)
    longer = TrainConfig(**{**TRAIN, "max_steps": TRAIN["max_steps"] + 3})
    with pytest.raises(WriteError, match=f"cannot write {run}/metrics.jsonl") as caught:
        train(train_data, run, config=longer, resume=True)
    assert "write to" in caught.value.hint
    assert tree_bytes(run) == before


def test_a_metrics_line_cut_short_by_a_full_disk_is_dropped(reference_run, tmp_path):
    """A full disk can cut an appended metrics line short; --resume drops it (not a crash)."""
    from bangercli.training.log import MetricsLog, write_curves

    metrics = tmp_path / "metrics.jsonl"
    lines = (reference_run / "metrics.jsonl").read_text().splitlines()
    metrics.write_text("\n".join(lines[:5]) + "\n" + lines[5][:20])
    MetricsLog(metrics, enabled=True).truncate_after(3)
    assert metrics.read_text().splitlines() == lines[:3]
    metrics.write_text(lines[0] + "\n" + lines[1][:20])
    assert write_curves(metrics, tmp_path / "curves.png")


# --- generate ------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def model_file(tmp_path_factory) -> Path:
    torch.manual_seed(0)
    config = PRESETS["tiny"]
    return save_checkpoint(tmp_path_factory.mktemp("model") / "tiny.safetensors",
                           build_model(config), config=config, tokenizer_config=TokenizerConfig())


@pytest.fixture(scope="module")
def pieces():
    torch.manual_seed(0)
    banger = Banger(build_model(PRESETS["tiny"]), Tokenizer(), PRESETS["tiny"])
    return generate(banger, Request(instruments=("piano",), bars=2, variants=2, seed=5))


def test_generate_on_a_full_disk(model_file, tmp_path, monkeypatch, capsys):
    """The disk fills up half-way through a MIDI file: one error line naming it, the
    files that were there intact, no partial file under a final name, no .part file."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.mid").write_bytes(b"a file from an earlier run")
    real_write_bytes = Path.write_bytes

    def half_then_full(self, data):
        real_write_bytes(self, data[: len(data) // 2])
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))

    monkeypatch.setattr(Path, "write_bytes", half_then_full)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "generate", "--model", model_file,
                                    "--out", out, "--audio", "none", "--bars", "2", "--seed", "5",
                                    "-n", "2", "--quiet")
    assert code == 1 and stdout == ""
    assert_one_error_line(stderr, f"cannot write {out}/", "No space left on device", "disk space")
    assert listing(out) == ["earlier.mid"]
    assert (out / "earlier.mid").read_bytes() == b"a file from an earlier run"


def test_generate_into_a_read_only_folder(pieces, tmp_path, read_only):
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.mid").write_bytes(b"a file from an earlier run")
    read_only(out)
    with pytest.raises(WriteError, match=f"cannot write {out}/") as caught:
        save_pieces(pieces, out, audio=None, piano_roll=True)
    assert "write to" in caught.value.hint
    assert listing(out) == ["earlier.mid"]


# --- every writer, on a full disk ----------------------------------------------------------


@contextmanager
def disk_full_beyond(limit: int):
    """In this process, for the duration: writes past `limit` bytes fail with EFBIG."""
    ignored = signal.signal(signal.SIGXFSZ, signal.SIG_IGN)
    soft, hard = resource.getrlimit(resource.RLIMIT_FSIZE)
    resource.setrlimit(resource.RLIMIT_FSIZE, (limit, hard))
    try:
        yield
    finally:
        resource.setrlimit(resource.RLIMIT_FSIZE, (soft, hard))
        signal.signal(signal.SIGXFSZ, ignored)


def write_checkpoint(path: Path, pieces) -> None:
    save_checkpoint(path, build_model(PRESETS["tiny"]), config=PRESETS["tiny"],
                    tokenizer_config=TokenizerConfig())


def write_optimizer_state(path: Path, pieces) -> None:
    save_training_state(path, {"step": 3, "optimizer": {"state": {0: torch.zeros(100_000)}}})


def write_midi(path: Path, pieces) -> None:
    save_pieces(pieces[:1], path.parent, template=path.stem, audio=None, force=True)


def write_audio_preview(path: Path, pieces) -> None:
    import numpy as np

    import bangercli.render.audio as audio_module
    from bangercli.generation.save import _write_audio  # noqa: PLC2701 (the writer alone, no synthesizer)

    silence = np.zeros((44_100, 2), dtype=np.float32)
    with pytest.MonkeyPatch.context() as patch:  # no synthesizer needed: encode one second
        patch.setattr(audio_module, "render", lambda *args, **kwargs: silence)
        _write_audio(pieces[0], None, path, "wav", force=True)


@pytest.mark.parametrize("write, name", [
    (write_checkpoint, "last.safetensors"),  # safetensors (Rust) reports "(os error 27)"
    (write_optimizer_state, "last.optim.pt"),  # torch's own writer would hide the cause
    (write_midi, "song.mid"),
    (write_audio_preview, "song.wav"),  # libsndfile says only "system error"
])
def test_every_writer_reports_a_full_disk_and_keeps_the_old_file(pieces, tmp_path, write, name):
    """The kernel refuses the write part-way (a file size limit, in this process): a
    WriteError naming the file, the file that was there keeps its bytes, no .part left."""
    target = tmp_path / name
    target.write_bytes(b"the previous file")
    with disk_full_beyond(10), pytest.raises(WriteError, match=f"cannot write {target}"):
        write(target, pieces)
    assert listing(tmp_path) == [name] and target.read_bytes() == b"the previous file"


# --- the building block --------------------------------------------------------------------


def test_a_failed_atomic_write_leaves_the_old_file_and_no_temporary(tmp_path):
    """The writer dies half-way (ENOSPC): the old file keeps its bytes, the .part is gone."""
    target = tmp_path / "last.safetensors"
    target.write_bytes(b"old checkpoint")

    def half_then_full(temporary: Path) -> None:
        temporary.write_bytes(b"new che")
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    with pytest.raises(WriteError, match=f"cannot write {target}: No space left") as caught:
        atomic_write(target, half_then_full)
    assert "disk space" in caught.value.hint
    assert listing(tmp_path) == ["last.safetensors"] and target.read_bytes() == b"old checkpoint"


def test_stale_temporary_files_of_dead_processes_are_removed(tmp_path):
    """A .part file whose writer is dead goes; one of a live process (this one) stays."""
    stale = tmp_path / f".last.safetensors.{dead_pid()}.k2j4_x.part"
    live = tmp_path / f".song-1.mid.{os.getpid()}.a8f_1q.part"
    other = tmp_path / ".notes.part"  # not one of ours: no pid in its name
    for path in (stale, live, other):
        path.write_bytes(b"half")
    assert remove_stale_parts(tmp_path) == [stale]
    assert listing(tmp_path) == sorted([live.name, other.name])


def test_a_disk_that_fills_up_after_the_first_piece_leaves_no_piece(pieces, tmp_path,
                                                                    monkeypatch):
    """The first piece is written, the second finds the disk full: the run fails and takes
    back the first one too (stdout never named it), leaving only what was there before."""
    out = tmp_path / "out"
    out.mkdir()
    (out / "earlier.mid").write_bytes(b"a file from an earlier run")
    real_write_bytes = Path.write_bytes
    calls = []

    def full_the_second_time(self, data):
        calls.append(self)
        if len(calls) > 1:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC), str(self))
        return real_write_bytes(self, data)

    monkeypatch.setattr(Path, "write_bytes", full_the_second_time)
    with pytest.raises(WriteError, match="No space left"):
        save_pieces(pieces, out, template="take-{n}", audio=None)
    assert len(calls) == 2
    assert listing(out) == ["earlier.mid"]
