"""`banger instruments` and `banger preprocess`: the categories, and building a training set."""

from __future__ import annotations

import json
from pathlib import Path
from typing import List

import typer

from ..errors import UsageError
from ..checks import check_finite
from .common import Progress, check_output_folder, removed_if_failed, stderr

MAX_WORKERS = 256  # a typo like -j 10000 must not fork ten thousand processes


def instruments(
    *,  # typer passes every argument and option by keyword
    as_json: bool = typer.Option(False, "--json", help="Print JSON instead of a table."),
) -> None:
    """List the 12 instrument categories and the General MIDI programs in each."""
    from ..midi.instruments import INSTRUMENTS

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


def preprocess(
    *,  # typer passes every argument and option by keyword
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
    from ..data.preprocess import PreprocessOptions
    from ..data.preprocess import preprocess as run

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
    with Progress("preprocessing", quiet=quiet) as update, removed_if_failed(out):
        report = run(sources, out, options=options, workers=workers or None, force=force,
                     progress=update)
    if not quiet:
        _print_preprocess_summary(report)
    print(json.dumps(report.manifest, indent=2) if as_json else str(report.out))


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
