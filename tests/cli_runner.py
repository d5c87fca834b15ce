"""Running `banger` in-process through its console entry point, as the shell would."""

from __future__ import annotations

import sys

from bangercli.cli.app import main


def run_cli(monkeypatch, capture, *args) -> tuple[int, str, str]:
    """`banger ARGS` through `main()`: (exit code, stdout, stderr). `capture` is pytest's
    capsys, or capfd to also see what C libraries write to the file descriptors."""
    monkeypatch.setattr(sys, "argv", ["banger", *map(str, args)])
    try:
        main()
        code = 0
    except SystemExit as exit_:
        code = exit_.code if isinstance(exit_.code, int) else int(exit_.code is not None)
    captured = capture.readouterr()
    return code, captured.out, captured.err
