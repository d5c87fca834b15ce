"""The command line around the commands: help without torch, version, the instrument list,
and errors turned into one `error:` line."""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap

import pytest
from typer.testing import CliRunner

from bangercli import __version__, paths
from bangercli.cli.app import app
from bangercli.midi.instruments import INSTRUMENTS

runner = CliRunner()


def banger(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "bangercli", *args], capture_output=True,
                          text=True, timeout=120)


@pytest.mark.parametrize(
    "args", [["--help"], ["preprocess", "--help"], ["train", "--help"], ["generate", "--help"]]
)
def test_help_does_not_import_torch(args):
    # In a fresh interpreter: this test process may have imported torch elsewhere.
    script = textwrap.dedent(f"""
        import sys
        from typer.testing import CliRunner
        from bangercli import cli
        result = CliRunner().invoke(cli.app, {args!r})
        assert result.exit_code == 0, result.output
        assert "Usage" in result.output, result.output
        heavy = sorted(m for m in ("torch", "x_transformers", "soundfile", "fluidsynth")
                       if m in sys.modules)
        assert not heavy, heavy
    """)
    done = subprocess.run([sys.executable, "-c", script], capture_output=True, text=True,
                          timeout=120)
    assert done.returncode == 0, done.stderr


def test_help_lists_the_commands():
    result = banger("--help")
    assert result.returncode == 0, result.stderr
    for command in ("preprocess", "instruments", "train", "generate"):
        assert command in result.stdout


def test_version():
    result = runner.invoke(app, ["--version"])
    assert result.exit_code == 0
    assert result.stdout == f"banger {__version__}\n"
    assert __version__ == "0.1.0"


def test_instruments_lists_the_twelve_categories():
    result = runner.invoke(app, ["instruments"])
    assert result.exit_code == 0
    lines = result.stdout.splitlines()
    assert len(lines) == 12
    assert [line.split()[0] for line in lines] == [inst.name for inst in INSTRUMENTS]
    assert lines[3].split() == ["guitar", "24-31", "default", "29"]
    assert lines[-1].split() == ["drums", "channel", "10", "drum,", "percussion,", "kit"]


def test_instruments_as_json():
    result = runner.invoke(app, ["instruments", "--json"])
    assert result.exit_code == 0
    rows = json.loads(result.stdout)
    assert [row["name"] for row in rows] == [inst.name for inst in INSTRUMENTS]
    assert rows[0] == {"name": "piano", "programs": "0-7", "default_program": 0,
                       "aliases": ["keys", "keyboard"]}
    assert rows[-1]["programs"] == "channel 10" and rows[-1]["default_program"] is None
    covered = []
    for row in rows[:-1]:
        low, high = map(int, row["programs"].split("-"))
        covered += range(low, high + 1)
    assert covered == list(range(128))


def test_a_banger_error_is_one_line_on_stderr_with_its_exit_code(tmp_path):
    result = banger("preprocess", str(tmp_path / "missing"), "--out", str(tmp_path / "data"))
    assert result.returncode == 2  # a UsageError
    assert result.stdout == ""
    assert result.stderr == f"error: no such file or directory: {tmp_path / 'missing'}\n"


def test_an_unknown_command_is_a_usage_error():
    result = runner.invoke(app, ["compose"])
    assert result.exit_code == 2


def test_the_per_user_directory_is_isolated(banger_home):
    assert paths.banger_home() == banger_home
    assert paths.user_models_dir() == banger_home / "models"
    assert not list(banger_home.iterdir())  # nothing from an earlier test
