"""What every command shares: stderr, progress bars and checks about the command line and the
file system (the library checks everything else)."""

from __future__ import annotations

import os
from contextlib import contextmanager
from pathlib import Path

from rich.console import Console

from ..errors import UsageError

stderr = Console(stderr=True, highlight=False)


def check_output_folder(out: Path, flag: str = "--out") -> None:
    """Refuse an output folder that can never be made, before any work: a file, a file on
    its path, or a first existing folder that is not writable."""
    if any(ord(char) < 32 or ord(char) == 127 for char in str(out)):
        raise UsageError(f"{flag} {str(out)!r} holds a control character (newline, tab, ...)",
                         hint="paths are printed one per line on stdout: choose another name")
    try:
        str(out).encode("utf-8")
    except UnicodeEncodeError:  # bytes that are not UTF-8: stdout could not print the results
        raise UsageError(f"{flag} {str(out)!r} is not valid UTF-8",
                         hint="paths are printed on stdout: choose a UTF-8 name") from None
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is not a folder", hint=f"choose another {flag}")
    for folder in (out, *out.parents):
        if not folder.exists():
            if folder.is_symlink():  # mkdir would fail on it after all the work
                raise UsageError(f"{flag} {out}: {folder} is a symbolic link to "
                                 f"{os.readlink(folder)}, which does not exist",
                                 hint=f"make that folder first, or choose another {flag}")
            continue
        if not folder.is_dir():
            raise UsageError(f"{flag} {out}: {folder} is a file, not a folder",
                             hint=f"choose another {flag}")
        if not os.access(folder, os.W_OK | os.X_OK):
            raise UsageError(f"{flag} {out}: cannot write in {folder.absolute()}",
                             hint=f"choose another {flag}")
        return


def check_model_name(model: str) -> None:
    if not model.strip():
        raise UsageError("the model name is empty", hint="pass a checkpoint path or a model name")


@contextmanager
def stopped_cleanly_by_sigterm():
    """Inside the block, SIGTERM (`kill`, `timeout`) unwinds like an exception (exit code
    143) instead of ending the process on the spot, so that `finally` blocks run: a worker
    process is stopped, an output folder the command made is removed again. Outside the
    main thread (where Python cannot take signals) the block runs as it is."""
    import signal
    import sys
    import threading

    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def stop(number, frame):
        sys.exit(128 + signal.SIGTERM)

    previous = signal.signal(signal.SIGTERM, stop)
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)


@contextmanager
def removed_if_failed(out: Path):
    """A failing command leaves no trace: the folders it created on the way to `out` are
    removed again, while they are still empty."""
    created = [folder for folder in (out, *out.parents) if not folder.exists()]
    try:
        yield
    except BaseException:
        for folder in created:  # deepest first
            try:
                folder.rmdir()
            except FileNotFoundError:  # the command failed before making this one
                continue
            except OSError:  # not empty: the command wrote something, keep it
                break
        raise


class Progress:
    """A rich progress bar on stderr, off when stderr is not a terminal or with --quiet."""

    def __init__(self, label: str, *, quiet: bool) -> None:
        self.enabled = not quiet and stderr.is_terminal
        self.label = label

    def __enter__(self):
        if not self.enabled:
            return None
        from rich.progress import BarColumn, MofNCompleteColumn, Progress, TimeRemainingColumn

        self.bar = Progress(
            "[progress.description]{task.description}", BarColumn(), MofNCompleteColumn(),
            TimeRemainingColumn(), console=stderr, transient=True,
        )
        self.bar.start()
        self.task = self.bar.add_task(self.label, total=None)

        def update(done: int, total: int) -> None:
            self.bar.update(self.task, completed=done, total=total)

        return update

    def __exit__(self, *exc) -> None:
        if self.enabled:
            self.bar.stop()
