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
    if out.exists() and not out.is_dir():
        raise UsageError(f"{flag} {out} is not a folder", hint=f"choose another {flag}")
    for folder in (out, *out.parents):
        if not folder.exists():
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
