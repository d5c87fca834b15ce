"""`banger generate` from the outside: stdout carries one path (or one JSON object) per
piece, a bad option is one `error:` line and a non-zero exit with nothing written, files are
never overwritten without --force. Most runs call the console entry point in-process (a
process start costs seconds of imports); two real subprocesses check the whole path (marked
slow: the default run starts real `generate` processes in test_concurrency)."""

from __future__ import annotations

import json
import os
import struct
import subprocess
import sys
from pathlib import Path

import mido
import pytest

import bangercli.render.audio as audio_module
from bangercli.render.audio import AudioUnavailable
from bangercli.errors import BangerError
from bangercli.model.network import PRESETS
from cli_runner import run_cli
from midi_fixtures import band, save

CONFIG = PRESETS["tiny"]
JSON_KEYS = {"midi", "audio", "piano_roll", "seed", "instruments", "drums", "bars", "bpm", "notes",
             "seconds"}


@pytest.fixture
def out(tmp_path) -> Path:
    return tmp_path / "out"


@pytest.fixture
def cli(capsys, monkeypatch, checkpoint, out):
    """Run `banger generate --model <tiny> --out <out> --audio none ARGS` in-process through
    the console entry point; returns (exit code, stdout, stderr)."""
    monkeypatch.delenv("BANGER_SOUNDFONT", raising=False)

    def run(*args, audio: str = "none") -> tuple[int, str, str]:
        return run_cli(monkeypatch, capsys, "generate", "--model", checkpoint, "--out", out,
                       "--audio", audio, *args)

    return run


def files_in(folder: Path) -> list[str]:
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def assert_one_error_line(code: int, stdout: str, stderr: str, message: str) -> None:
    assert code != 0
    assert stdout == ""
    assert "Traceback" not in stderr
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), stderr
    assert message in lines[0]


def png_size(path: Path) -> tuple[int, int]:
    data = path.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and data[12:16] == b"IHDR"
    return struct.unpack(">II", data[16:24])


# --- results on stdout -------------------------------------------------------------------


def test_stdout_is_one_midi_path_per_line(cli, out):
    code, stdout, stderr = cli("--seed", 5, "--bars", 2, "-n", 3, "--name", "song-{seed}-{n}")
    assert code == 0 and stderr == ""
    assert stdout.splitlines() == [str(out / f"song-5-{n}.mid") for n in (1, 2, 3)]
    for line in stdout.splitlines():
        assert abs(mido.MidiFile(line).length - 4.0) < 1e-6  # 2 bars at 120 bpm
    assert files_in(out) == ["song-5-1.mid", "song-5-2.mid", "song-5-3.mid"]


def test_json_is_one_object_per_line_with_the_documented_keys(cli, out):
    code, stdout, _ = cli("--seed", 9, "--bars", 3, "--bpm", 150, "-n", 2, "--json",
                             "-i", "guitar", "--only", "--no-drums")
    assert code == 0
    records = [json.loads(line) for line in stdout.splitlines()]
    assert len(records) == 2
    for record in records:
        assert set(record) == JSON_KEYS
        assert Path(record["midi"]).is_file() and Path(record["midi"]).parent == out
        assert (record["seed"], record["bars"], record["bpm"]) == (9, 3, 150.0)
        assert record["seconds"] == 4.8
        assert record["audio"] is None and record["piano_roll"] is None
        assert record["drums"] is False and set(record["instruments"]) <= {"guitar"}
        note_ons = [m for track in mido.MidiFile(record["midi"]).tracks for m in track
                    if m.type == "note_on" and m.velocity > 0]
        assert record["notes"] == len(note_ons)


def test_the_same_seed_writes_the_same_bytes(cli):
    code, first, _ = cli("--seed", 4, "--bars", 4, "--name", "a-{n}")
    code2, second, _ = cli("--seed", 4, "--bars", 4, "--name", "b-{n}")
    assert code == code2 == 0
    assert Path(first.strip()).read_bytes() == Path(second.strip()).read_bytes()


def test_a_random_seed_is_reported(cli):
    code, stdout, _ = cli("--bars", 1, "--json")
    assert code == 0 and isinstance(json.loads(stdout)["seed"], int)


def test_piano_roll_writes_a_png(cli):
    code, stdout, _ = cli("--seed", 1, "--bars", 5, "--piano-roll", "--json")
    record = json.loads(stdout)
    assert code == 0 and Path(record["piano_roll"]).suffix == ".png"
    width, height = png_size(Path(record["piano_roll"]))
    assert width == 5 * 32 * 2 and height > 0


def test_tokens_and_a_prompt(cli, tmp_path):
    code, stdout, _ = cli("--seed", 2, "--tokens", 30, "--json")
    assert code == 0 and json.loads(stdout)["notes"] >= 9
    prompt = save(band(1, bars=4, bpm=100.0), tmp_path / "prompt.mid")
    code, stdout, _ = cli("--seed", 2, "--prompt", prompt, "--prompt-bars", 2, "--bars", 2,
                             "--json", "--name", "continued")
    record = json.loads(stdout)
    assert code == 0 and record["bars"] == 4 and record["bpm"] == 100.0
    assert record["notes"] >= 2 * (8 + 2 + 4)  # at least the kept melody, bass and drums


# --- options that cannot work ------------------------------------------------------------


@pytest.fixture
def corrupt_prompt(tmp_path) -> Path:
    path = tmp_path / "corrupt.mid"
    path.write_bytes(b"MThd\x00\x00\x00\x06\x00\x01\x00\x01\x01\xe0MTrk\x00\x00\x10\x00\x00\x90")
    return path


@pytest.mark.parametrize("args, message", [
    (["-i", "kazoo"], "unknown instrument 'kazoo'"),
    (["--bars", 0], "--bars must be at least 1"),
    (["--bars", -3], "--bars must be at least 1"),
    (["--tokens", 0], "--tokens must be at least 1"),
    (["--temperature", 0], "--temperature must be > 0"),
    (["--temperature", -1], "--temperature must be > 0"),
    (["--top-p", 0], "--top-p must be in (0, 1]"),
    (["--top-p", 1.5], "--top-p must be in (0, 1]"),
    (["--only"], "--only needs at least one --instrument"),
    (["--only", "-i", "drums", "--no-drums"], "leaves nothing to play"),
    (["--seed", 2**70], "--seed must be between 0 and"),
    (["--name", "{title}"], "unknown field"),
    (["--name", "sub/{n}"], "plain file name"),
    (["--name", "{n"], "bad --name template"),
    (["--prompt", "missing.mid"], "is not a file"),
    (["--prompt", "CORRUPT"], "truncated"),
    (["--model", "no/such/model.safetensors"], "no checkpoint file"),
    (["--model", "CORRUPT"], "not a readable banger checkpoint"),
    (["--prompt-bars", 0], "--prompt-bars must be at least 1"),
    (["--bpm", 5], "--bpm must be between 10 and 400"),
    (["--soundfont", "missing.sf2"], "soundfont missing.sf2 does not exist"),
    (["--out", "CORRUPT"], "is not a folder"),
], ids=lambda value: "" if isinstance(value, str) else " ".join(map(str, value)))
def test_bad_options_are_one_error_line_and_write_nothing(cli, out, corrupt_prompt, args,
                                                          message):
    args = [str(corrupt_prompt) if a == "CORRUPT" else a for a in args]
    assert_one_error_line(*cli("--seed", 1, "--bars", 1, *args), message)
    assert files_in(out) == []


def test_an_unknown_audio_format_is_refused(cli, out):
    assert_one_error_line(*cli("--bars", 1, audio="ogg"), "unknown --audio 'ogg'")
    assert files_in(out) == []


# --- never clobbering --------------------------------------------------------------------


def test_existing_files_need_force(cli, out):
    out.mkdir()
    (out / "song-2.mid").write_bytes(b"keep me")
    code, stdout, stderr = cli("--seed", 3, "--bars", 2, "-n", 2, "--name", "song-{n}")
    assert_one_error_line(code, stdout, stderr, "song-2.mid already exists")
    assert "--force" in stderr
    assert files_in(out) == ["song-2.mid"] and (out / "song-2.mid").read_bytes() == b"keep me"

    code, stdout, _ = cli("--seed", 3, "--bars", 2, "-n", 2, "--name", "song-{n}", "--force")
    assert code == 0 and len(stdout.splitlines()) == 2
    assert mido.MidiFile(out / "song-2.mid").length == pytest.approx(4.0)
    assert files_in(out) == ["song-1.mid", "song-2.mid"]  # no temporary files left


# --- audio -------------------------------------------------------------------------------


def test_without_a_soundfont_the_midi_is_written_with_one_warning(cli, out, monkeypatch):
    def no_soundfont(*args, **kwargs):
        raise AudioUnavailable("no General MIDI soundfont found", hint=audio_module.INSTALL_HINT)

    monkeypatch.setattr(audio_module, "find_soundfont", no_soundfont)
    code, stdout, stderr = cli("--seed", 1, "--bars", 1, "--synth", "fluidsynth", audio="mp3")
    assert code == 0
    assert [Path(line).name for line in stdout.splitlines()] == files_in(out)
    assert files_in(out) and all(name.endswith(".mid") for name in files_in(out))
    lines = stderr.splitlines()
    assert len(lines) == 1 and lines[0].startswith("warning: no audio preview"), stderr
    code, _, stderr = cli("--seed", 2, "--bars", 1, "--quiet", "--synth", "fluidsynth", audio="mp3")
    assert code == 0 and stderr == ""


def _fluidsynth_importable() -> bool:
    try:
        import fluidsynth  # noqa: F401
    except (ImportError, OSError):
        return False
    return True


def _soundfont() -> Path | None:
    try:
        return audio_module.find_soundfont() if _fluidsynth_importable() else None
    except BangerError:
        return None


SOUNDFONT = _soundfont()  # audio previews work here: FluidSynth and a soundfont were found


@pytest.mark.skipif(not _fluidsynth_importable(), reason="pyfluidsynth or libfluidsynth missing")
def test_a_missing_banger_soundfont_is_an_error(cli, out, monkeypatch, tmp_path):
    monkeypatch.setenv("BANGER_SOUNDFONT", str(tmp_path / "nope.sf2"))
    assert_one_error_line(*cli("--seed", 1, "--bars", 1, "--synth", "fluidsynth", audio="wav"),
                          "BANGER_SOUNDFONT")
    assert files_in(out) == []


# --- the real thing, in subprocesses -----------------------------------------------------


@pytest.mark.slow  # two process starts; test_concurrency races real `generate` processes by default
def test_subprocesses_end_to_end(checkpoint, tmp_path):
    """A successful run (JSON, piano roll, audio where possible) and a failing one, started
    together: exit codes, one line of error without a traceback, files where stdout says."""
    import soundfile

    env = dict(os.environ, BANGER_HOME=str(tmp_path / "home"), OMP_NUM_THREADS="1")
    env.pop("BANGER_SOUNDFONT", None)
    command = [sys.executable, "-m", "bangercli", "generate", "--model", str(checkpoint),
               "--seed", "6", "--bars", "2", "--bpm", "120"]
    good_out, bad_out = tmp_path / "good", tmp_path / "bad"
    audio = ["--audio", "wav", "--soundfont", str(SOUNDFONT)] if SOUNDFONT else ["--audio", "none"]
    runs = [
        subprocess.Popen(command + ["--out", str(good_out), "-n", "2", "--json", "--piano-roll",
                                    *audio, "-i", "piano", "--drums"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
        subprocess.Popen(command + ["--out", str(bad_out), "-i", "kazoo"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env),
    ]
    try:
        (good, good_err), (bad, bad_err) = [run.communicate(timeout=120) for run in runs]
    finally:
        for run in runs:
            if run.poll() is None:
                run.kill()

    assert runs[0].returncode == 0, good_err
    records = [json.loads(line) for line in good.splitlines()]
    assert len(records) == 2 and all(set(r) == JSON_KEYS for r in records)
    for record in records:
        assert Path(record["midi"]).is_file()
        assert png_size(Path(record["piano_roll"]))[0] == 2 * 32 * 2
        if SOUNDFONT:
            info = soundfile.info(record["audio"])
            assert info.duration == pytest.approx(2 * 2.0 + audio_module.TAIL_SECONDS, abs=1e-3)
    assert not [p for p in good_out.iterdir() if p.name.endswith(".part")]

    assert runs[1].returncode == 2 and bad == ""
    assert "Traceback" not in bad_err
    assert bad_err.splitlines() == [bad_err.strip()]
    assert bad_err.startswith("error: unknown instrument 'kazoo'")
    assert files_in(bad_out) == []
