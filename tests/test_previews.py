"""Previews made while generation goes on: generate() tells of each piece the moment it is
complete, a worker process renders and encodes it meanwhile, and the files are the very
bytes a render in the calling process gives; a worker that fails or dies leaves the preview
to the caller, and `banger generate -n 2` gets the same files either way."""

from __future__ import annotations

import os
import signal
from concurrent.futures import Future, wait
from pathlib import Path

import pytest
import torch

import bangercli.generation.generate as generate_module
import bangercli.render.audio as audio_module
from bangercli.api import Banger
from bangercli.generation.generate import Piece, generate
from bangercli.generation.request import Request
from bangercli.generation.save import finished_piece, save_pieces, start_previews
from bangercli.midi.midifile import write_midi
from bangercli.midi.score import Grid, Note
from bangercli.midi.tokenizer import Tokenizer
from bangercli.model.network import PRESETS, build_model
from bangercli.render.previews import PreviewMaker
from cli_runner import run_cli

CONFIG = PRESETS["tiny"]


@pytest.fixture(scope="module")
def banger() -> Banger:
    torch.manual_seed(0)
    return Banger(build_model(CONFIG), Tokenizer(), CONFIG)


def piece(pitch: int, bars: int = 1) -> Piece:
    notes = [Note(step, 6, 0, pitch + step // 8, 5) for step in range(0, bars * 32, 8)]
    notes += [Note(step, 2, 11, 36 if step % 16 == 0 else 42, 6) for step in range(0, bars * 32, 4)]
    midi = write_midi(notes, order=[0, 11], grid=Grid(), bpm=120.0, length=bars * 32)
    return Piece(ids=[], notes=notes, instruments=["piano"], drums=True, bars=bars, bpm=120.0,
                 seed=0, midi=midi)


def files(folder: Path) -> dict[str, bytes]:
    return {path.name: path.read_bytes() for path in sorted(folder.iterdir())}


def no_render_here(monkeypatch) -> None:
    def refuse(*args, **kwargs):
        raise AssertionError("rendered in the calling process")

    monkeypatch.setattr(audio_module, "render", refuse)


# --- generate() tells of each piece as it ends ----------------------------------------------


def test_finished_hears_of_every_piece_as_it_ends_in_every_batch(banger, monkeypatch):
    monkeypatch.setattr(generate_module, "MAX_BATCH", 3)
    request = Request(instruments=("piano",), drums=True, bars=40, variants=5, seed=3)
    told: list[tuple[int, Piece]] = []
    pieces = generate(banger, request, finished=lambda n, piece: told.append((n, piece)))
    assert sorted(n for n, _ in told) == list(range(5))
    assert all(pieces[n] is piece for n, piece in told)
    assert [p.ids for p in pieces] == [p.ids for p in generate(banger, request)]
    # in each batch (variants 0-2, then 3-4) the shorter rows end first: told in that order
    for batch in ([n for n, _ in told if n < 3], [n for n, _ in told if n >= 3]):
        lengths = [len(pieces[n].ids) for n in batch]
        assert lengths == sorted(lengths)
    assert len({len(p.ids) for p in pieces[:3]}) > 1  # the order above says something


# --- the worker ----------------------------------------------------------------------------


@pytest.mark.parametrize("fmt", ["mp3", "wav"])
def test_the_workers_previews_are_the_bytes_rendered_here(tmp_path, monkeypatch, fmt):
    pieces = [piece(60), piece(67, bars=2)]
    here = save_pieces(pieces, tmp_path / "here", audio=fmt, template="take-{n}")
    with PreviewMaker(fmt) as previews:
        for n, each in enumerate(pieces):
            previews.submit(n, each.midi, each.seconds)
        wait(previews.made.values())  # all made there: none is left to render here
        with monkeypatch.context() as patch:
            no_render_here(patch)
            there = save_pieces(pieces, tmp_path / "there", audio=fmt, template="take-{n}",
                                previews=previews)
    assert [s.audio.name for s in there] == [f"take-1.{fmt}", f"take-2.{fmt}"]
    assert files(tmp_path / "there") == files(tmp_path / "here")
    assert [s.audio.name for s in here] == [s.audio.name for s in there]


def test_previews_the_worker_has_not_started_are_made_here_beside_it(tmp_path, monkeypatch):
    pieces = [piece(60 + 2 * n) for n in range(5)]
    expected = save_pieces(pieces, tmp_path / "expected", audio="wav", template="take-{n}")
    real, here = audio_module.render, []
    monkeypatch.setattr(audio_module, "render",
                        lambda midi, *args, **kwargs: (here.append(midi), real(midi, *args, **kwargs))[1])
    with PreviewMaker("wav") as previews:
        for n, each in enumerate(pieces):
            previews.submit(n, each.midi, each.seconds)
        saved = save_pieces(pieces, tmp_path / "saved", audio="wav", template="take-{n}",
                            previews=previews)
        assert previews.made == {}  # every preview was either taken back or collected
    # the worker starts one piece and holds at most one more (here: usually the last three)
    assert here == [each.midi for each in pieces][len(pieces) - len(here):]
    assert files(tmp_path / "saved") == files(tmp_path / "expected")
    assert [s.audio.name for s in saved] == [s.audio.name for s in expected]


def test_cancel_pending_takes_back_exactly_what_has_not_started():
    class Busy:  # a worker busy with piece 0 all along
        def submit(self, *args):
            future = Future()
            if not started:
                started.append(future.set_running_or_notify_cancel())
            return future

        def shutdown(self, **kwargs):
            pass

    started: list[bool] = []
    previews = PreviewMaker("wav")
    previews.pool = Busy()
    for n in range(3):
        previews.submit(n, piece(60).midi, 2.0)
    assert previews.cancel_pending() == [1, 2] and list(previews.made) == [0]
    assert previews.audio(1) is None and previews.audio(2) is None
    previews.close()


def test_a_worker_that_fails_or_dies_leaves_the_preview_to_the_caller(tmp_path):
    pieces = [piece(60), piece(64)]
    expected = save_pieces(pieces, tmp_path / "expected", audio="wav", template="take-{n}")
    with PreviewMaker("wav", soundfont=tmp_path / "no-such.sf2") as failing:
        for n, each in enumerate(pieces):
            failing.submit(n, each.midi, each.seconds)
        assert failing.audio(0) is None  # the worker's error stays there
        saved = save_pieces(pieces, tmp_path / "failed", audio="wav", template="take-{n}",
                            previews=failing)  # both rendered here
    assert files(tmp_path / "failed") == files(tmp_path / "expected")
    assert [s.audio.name for s in saved] == [s.audio.name for s in expected]

    with PreviewMaker("wav") as dying:
        dying.submit(0, pieces[0].midi, pieces[0].seconds)
        assert dying.audio(0) is not None  # the worker is up
        for pid in list(dying.pool._processes):  # noqa: SLF001 - kill it, as a crash would
            os.kill(pid, signal.SIGKILL)
        dying.submit(1, pieces[1].midi, pieces[1].seconds)
        assert dying.audio(1) is None
        dying.submit(1, pieces[1].midi, pieces[1].seconds)  # a broken pool takes no more work
        assert dying.audio(1) is None and dying.audio(7) is None


KILLED_PARENT = """
import os, sys
from bangercli.midi.midifile import write_midi
from bangercli.midi.score import Grid, Note
from bangercli.render.previews import PreviewMaker

midi = write_midi([Note(0, 8, 0, 60, 5)], order=[0], grid=Grid(), bpm=120.0, length=32)
previews = PreviewMaker("wav")
previews.submit(0, midi, 2.0)
assert previews.audio(0)
print(*previews.pool._processes, flush=True)
os._exit(0)  # as a kill would: no shutdown
"""


def running(pid: int) -> bool:
    """Whether process `pid` runs (a zombie waiting for its reaper does not)."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[0] != "Z"
    except (OSError, IndexError):
        return False


@pytest.mark.skipif(not Path("/proc/self/stat").exists(), reason="reads /proc (Linux)")
def test_a_worker_whose_parent_is_killed_goes_too():
    """The worker holds both ends of its task queue: without watching its parent it would
    wait there for ever once the parent is killed outright."""
    import subprocess
    import sys
    import time

    done = subprocess.run([sys.executable, "-c", KILLED_PARENT], capture_output=True, text=True,
                          timeout=60)
    assert done.returncode == 0, done.stderr
    worker = int(done.stdout.split()[0])
    deadline = time.monotonic() + 20
    while time.monotonic() < deadline and running(worker):
        time.sleep(0.05)
    assert not running(worker)


def test_previews_start_only_where_they_can_gain():
    assert start_previews(None, synth="builtin", soundfont=None, variants=4) is None
    assert start_previews("mp3", synth="builtin", soundfont=None, variants=1) is None
    assert start_previews("mp3", synth="fluidsynth", soundfont=None, variants=4) is None
    assert finished_piece(None) is None


# --- banger generate -n 2 ------------------------------------------------------------------


def test_generate_n_2_writes_the_files_a_render_here_writes(monkeypatch, capsys, checkpoint,
                                                           tmp_path, banger):
    from bangercli.api import load_checkpoint

    made: list[int] = []
    real = PreviewMaker.submit
    monkeypatch.setattr(PreviewMaker, "submit",
                        lambda self, n, *args: (made.append(n), real(self, n, *args)))
    code, stdout, stderr = run_cli(monkeypatch, capsys, "generate", "--model", checkpoint,
                                   "--out", tmp_path / "cli", "--seed", 3, "--bars", 2,
                                   "-i", "piano", "--drums", "-n", 2)
    assert code == 0 and stderr == "", stderr
    assert sorted(made) == [0, 1]  # both previews went to the worker
    request = Request(instruments=("piano",), drums=True, bars=2, variants=2, seed=3)
    pieces = load_checkpoint(checkpoint).generate(request)
    save_pieces(pieces, tmp_path / "here", audio="mp3")
    assert files(tmp_path / "cli") == files(tmp_path / "here")
    assert sorted(stdout.split()) == [str(tmp_path / "cli" / name)
                                      for name in files(tmp_path / "cli") if name.endswith(".mid")]


def test_sigterm_stops_generate_cleanly_and_its_worker_too(monkeypatch, capsys, checkpoint,
                                                         tmp_path):
    """`timeout` or `kill` while the worker makes a preview: exit code 143, no folder left
    behind, the worker stopped, and SIGTERM's handler as it was before."""
    workers: list[int] = []
    real = PreviewMaker.submit

    def submit_then_terminated(self, n, *args):
        real(self, n, *args)
        workers.extend(self.pool._processes)  # noqa: SLF001
        os.kill(os.getpid(), signal.SIGTERM)

    monkeypatch.setattr(PreviewMaker, "submit", submit_then_terminated)
    before = signal.getsignal(signal.SIGTERM)
    code, stdout, stderr = run_cli(monkeypatch, capsys, "generate", "--model", checkpoint,
                                   "--out", tmp_path / "new" / "out", "--seed", 3, "--bars", 2,
                                   "-i", "piano", "-n", 2)
    assert code == 143 and stdout == "" and stderr == ""
    assert not (tmp_path / "new").exists()
    assert workers and not any(running(pid) for pid in workers)
    assert signal.getsignal(signal.SIGTERM) == before


def test_outside_the_main_thread_sigterm_is_left_alone():
    import threading

    from bangercli.cli.common import stopped_cleanly_by_sigterm

    seen = []

    def inside() -> None:
        with stopped_cleanly_by_sigterm():
            seen.append(signal.getsignal(signal.SIGTERM))

    thread = threading.Thread(target=inside)
    thread.start()
    thread.join()
    assert seen == [signal.getsignal(signal.SIGTERM)]
