"""The `banger` command line: a thin layer over the library.

Only this module prints or exits. Results go to stdout, progress and messages to stderr.
torch is imported inside the commands that need it, so `banger --help` stays instant.
"""

from __future__ import annotations

import json
import math
import os
import sys
from contextlib import contextmanager
from pathlib import Path
from typing import List

import typer
from rich.console import Console

from . import __version__
from .errors import BangerError, UsageError

try:  # typer 0.2x carries its own copy of click
    from typer._click import exceptions as click_errors
except ImportError:  # older typer runs on click itself
    from click import exceptions as click_errors

app = typer.Typer(
    name="banger",
    help="Write multitrack music as MIDI with a transformer.",
    no_args_is_help=True,
    add_completion=False,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
stderr = Console(stderr=True, highlight=False)


def _version(value: bool) -> None:
    if value:
        print(f"banger {__version__}")
        raise typer.Exit()


@app.callback()
def _root(
    version: bool = typer.Option(
        False, "--version", callback=_version, is_eager=True, help="Show the version and exit."
    ),
) -> None:
    """Write multitrack music as MIDI with a transformer."""


@app.command()
def instruments(
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the 12 instrument categories and the General MIDI programs in each."""
    from .instruments import INSTRUMENTS

    rows = [
        {
            "name": inst.name,
            "programs": "channel 10" if inst.is_drums else f"{inst.programs.start}-{inst.programs.stop - 1}",
            "default_program": None if inst.is_drums else inst.default_program,
            "aliases": list(inst.aliases),
        }
        for inst in INSTRUMENTS
    ]
    if as_json:
        print(json.dumps(rows, indent=2))
        return
    for row in rows:
        default = "" if row["default_program"] is None else f"default {row['default_program']}"
        print(f"{row['name']:<10} {row['programs']:<11} {default:<12} {', '.join(row['aliases'])}".rstrip())


@app.command()
def preprocess(
    sources: List[Path] = typer.Argument(..., help="MIDI files or folders (searched recursively)."),
    out: Path = typer.Option(..., "--out", "-o", help="Data directory to create."),
    workers: int = typer.Option(0, "--workers", "-j", help="Worker processes (0 = all cores)."),
    val_fraction: float = typer.Option(0.1, help="Share of files in the validation split, 0..1."),
    max_notes: int = typer.Option(30_000, help="Skip files with more notes."),
    max_minutes: float = typer.Option(20.0, help="Skip files longer than this."),
    min_notes: int = typer.Option(8, help="Skip files with fewer notes."),
    require_instruments: bool = typer.Option(
        True, help="Skip files with no program change and no drums."
    ),
    lead_margin: float = typer.Option(
        0.0, help="Skip files whose two biggest melodic parts differ by at most this share."
    ),
    keep_drums_only: bool = typer.Option(True, help="Keep files that contain only drums."),
    trim_silence: bool = typer.Option(True, help="Drop empty bars before the first note."),
    force: bool = typer.Option(False, "--force", help="Replace an existing data directory."),
    as_json: bool = typer.Option(False, "--json", help="Print the manifest as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or summary."),
) -> None:
    """Filter, normalize and tokenize a MIDI collection into a training set."""
    from .preprocess import PreprocessOptions
    from .preprocess import preprocess as run

    if not 0 <= workers <= MAX_WORKERS:
        raise UsageError(f"--workers must be between 0 and {MAX_WORKERS}, got {workers}")
    check_finite(val_fraction=val_fraction, max_minutes=max_minutes, lead_margin=lead_margin)
    check_output_folder(out)
    options = PreprocessOptions(
        val_fraction=val_fraction,
        max_notes=max_notes,
        max_minutes=max_minutes,
        min_notes=min_notes,
        require_instruments=require_instruments,
        lead_margin=lead_margin,
        keep_drums_only=keep_drums_only,
        trim_silence=trim_silence,
    )
    with _progress(quiet, "preprocessing") as update, removed_if_failed(out):
        report = run(sources, out, options=options, workers=workers or None, force=force,
                     progress=update)
    if not quiet:
        _print_preprocess_summary(report)
    print(json.dumps(report.manifest, indent=2) if as_json else str(report.out))


MAX_WORKERS = 256  # a typo like -j 10000 must not fork ten thousand processes


def check_finite(**values: float | None) -> None:
    """Refuse nan and inf for float options: they pass `x > 0` checks and then hang or crash."""
    for name, value in values.items():
        if value is not None and not math.isfinite(value):
            raise UsageError(f"--{name.replace('_', '-')} must be a finite number, got {value}")


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


def _print_preprocess_summary(report) -> None:
    from rich.table import Table

    table = Table(title=f"banger preprocess → {report.out}", show_header=True)
    table.add_column("")
    table.add_column("files", justify="right")
    table.add_column("notes", justify="right")
    table.add_column("tokens", justify="right")
    for split, stats in report.manifest["splits"].items():
        table.add_row(f"kept: {split}", f"{stats['pieces']:,}", f"{stats['notes']:,}",
                      f"{stats['tokens']:,}")
    for reason, count in report.skipped.most_common():
        table.add_row(f"skipped: {reason}", f"{count:,}", "", "")
    rate = report.found / report.seconds if report.seconds else 0.0
    table.caption = f"{report.found:,} files in {report.seconds:.1f} s ({rate:,.0f} files/s)"
    stderr.print(table)


class _progress:
    """A rich progress bar on stderr, off when stderr is not a terminal or with --quiet."""

    def __init__(self, quiet: bool, label: str) -> None:
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


def _register_model_commands() -> None:
    """`train` and `evaluate` live in cli_train.py; fall back to stubs until it exists."""
    try:
        from . import cli_train  # noqa: F401  (registers its commands on `app`)
    except ImportError:

        @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
        def train(ctx: typer.Context) -> None:
            """Train a model on a data directory (not implemented yet)."""
            raise BangerError("`banger train` is not implemented yet")

        @app.command(context_settings={"allow_extra_args": True, "ignore_unknown_options": True})
        def evaluate(ctx: typer.Context) -> None:
            """Evaluate a model on a data directory (not implemented yet)."""
            raise BangerError("`banger evaluate` is not implemented yet")


_register_model_commands()
from . import cli_generate  # noqa: E402,F401  (registers `generate` on `app`)


def main() -> None:
    """Console entry point: a BangerError or a command line click cannot parse becomes one
    `error:` line on stderr and an exit code; anything else keeps its traceback (a bug)."""
    try:
        code = app(prog_name="banger", standalone_mode=False)  # also under `python -m`
    except BangerError as err:
        _fail(err.message, err.hint, err.exit_code)
    except click_errors.ClickException as err:
        if isinstance(err, getattr(click_errors, "NoArgsIsHelpError", ())):  # plain `banger`
            err.show()  # the help, as click shows it
            sys.exit(err.exit_code)
        _fail(_click_message(err), _click_hint(err), err.exit_code)
    except typer.Abort:
        _fail("aborted", None, 1)
    except KeyboardInterrupt:
        _fail("interrupted", None, 130)
    except BrokenPipeError:  # `banger instruments | head -1`: the reader left, not an error
        os.dup2(os.open(os.devnull, os.O_WRONLY), sys.stdout.fileno())
        sys.exit(1)
    sys.exit(code if isinstance(code, int) else 0)  # typer.Exit(n) comes back as n


def _fail(message: str, hint: str | None, exit_code: int) -> None:
    """Print ``error: MESSAGE (hint: HINT)`` as exactly one line on stderr and exit."""
    line = f"error: {message}" + (f" (hint: {hint})" if hint else "")
    print(" ".join(line.splitlines()), file=sys.stderr)  # a path or OS message may hold one
    sys.exit(exit_code)


def _click_message(err: click_errors.ClickException) -> str:
    """click's message in the house form: "Missing option '--out'." -> "missing option '--out'"."""
    message = " ".join(err.format_message().splitlines()).rstrip(".")
    return message[:1].lower() + message[1:]


def _click_hint(err: click_errors.ClickException) -> str | None:
    ctx = getattr(err, "ctx", None)
    return f"see `{ctx.command_path} --help`" if ctx is not None else None
