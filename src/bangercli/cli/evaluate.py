"""`banger evaluate`: a thin command over bangercli.evaluation (torch is imported inside it only)."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Optional

import typer

from ..errors import UsageError
from .common import Progress, check_model_name, stderr


def evaluate(
    *,  # typer passes every argument and option by keyword
    model: str = typer.Argument(..., help="Checkpoint path or model name."),
    data_dir: Path = typer.Argument(..., help="Data directory made by `banger preprocess`."),
    split: str = typer.Option("validation", help="train or validation."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    max_pieces: Optional[int] = typer.Option(None, help="Score only the first N pieces."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    samples: int = typer.Option(0, help="Also generate N pieces per condition and measure "
                                "control adherence, musical metrics and structure (0 = off)."),
    bars: int = typer.Option(8, help="Length of the generated (and compared real) pieces; "
                             "structure measures read better over 16."),
    seed: int = typer.Option(0, help="Seed of the generated pieces."),
    echo: Optional[float] = typer.Option(None, "--echo", help="Echo of the generated pieces, as "
                                         "in `banger generate` (default: generate's)."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Score a model on a data split: loss, accuracy, per-field accuracy, bits per note;
    with --samples, also the adherence and musical metrics of generated pieces."""
    from ..api import load_model
    from ..evaluation.evaluate import evaluate as run
    from ..training.devices import pick_device
    from ..data.shards import SPLITS

    if batch_size < 1 or (max_pieces is not None and max_pieces < 1):
        raise UsageError("--batch-size and --max-pieces must be >= 1")
    if samples < 0 or bars < 1:
        raise UsageError("--samples must be >= 0 and --bars >= 1")
    from ..generation.request import MAX_BARS, MAX_VARIANTS

    for flag, value, ceiling in (("--samples", samples, MAX_VARIANTS), ("--bars", bars, MAX_BARS)):
        if value > ceiling:  # checked before the scoring, which may take minutes
            raise UsageError(f"{flag} must be at most {ceiling}, got {value}",
                             hint="a ceiling against runaway work: run several commands")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {seed}")
    if echo is not None:
        from ..generation.request import Request

        Request(echo=echo)  # checked before the scoring, which may take minutes
    if split not in SPLITS:
        raise UsageError(f"unknown --split {split!r}", hint=f"choose one of: {', '.join(SPLITS)}")
    check_model_name(model)
    banger = load_model(model, device=str(pick_device(device)))
    with Progress("evaluating", quiet=quiet) as update:
        result = run(banger, data_dir, split=split, batch_size=batch_size, max_pieces=max_pieces,
                     progress=update)
    report = result.to_dict()
    if not quiet:
        _print_evaluation(report, model)
    if samples:
        from ..evaluation.samples import evaluate_music

        with Progress("generating", quiet=quiet) as update:
            music = evaluate_music(banger, samples=samples, bars=bars, seed=seed,
                                   data_dir=data_dir, split=split, max_pieces=max_pieces,
                                   echo=echo, progress=update)
        report["music"] = music.to_json()
        if not quiet:
            _print_music(report["music"])
    if as_json:
        print(json.dumps(report, indent=2))


def _print_evaluation(report: dict, model: str) -> None:
    from rich.table import Table

    table = Table(title=f"banger evaluate {model} ({report['split']})")
    for column in ("targets", "loss", "accuracy", "perplexity", "tokens scored"):
        table.add_column(column, justify="left" if column == "targets" else "right")
    table.add_row("all", f"{report['loss']:.4f}", f"{report['accuracy']:.4f}",
                  f"{report['perplexity']:.2f}", f"{report['tokens']:,}")
    for name in ("time", "durvel", "note"):
        row = report[name]
        table.add_row(name, f"{row['loss']:.4f}", f"{row['accuracy']:.4f}",
                      f"{row['perplexity']:.2f}", f"{row['tokens']:,}")
    table.caption = (f"{report['bits_per_note']:.3f} bits per note over {report['notes']:,} notes "
                     f"in {report['pieces']:,} pieces")
    stderr.print(table)


def _print_music(music: dict) -> None:
    from rich.table import Table

    def cell(value, *, percent=False):
        if value is None:
            return "-"
        return f"{value:.0%}" if percent else f"{value:.3f}"

    checks = ("decodable", "instruments_present", "lead_most_notes", "drums", "only")
    adherence = Table(title="generated pieces: does the music obey the request?")
    adherence.add_column("condition")
    for column in checks:
        adherence.add_column(column.replace("_", " "), justify="right")
    for name, row in music["conditions"].items():
        adherence.add_row(name, *(cell(row.get(c), percent=True) for c in checks))
    stderr.print(adherence)
    metrics = Table(title=f"musical metrics (means): {music.get('matched_pieces', 0)} real "
                    "pieces and pieces generated from their headers")
    for column in ("metric", "generated", "real", "generated / real"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in music["generated"].items():
        metrics.add_row(name.replace("_", " "), cell(value), cell(music["real"].get(name)),
                        cell(music["relative_to_real"].get(name)))
    stderr.print(metrics)
    _print_structure(music, cell)


def _print_structure(music: dict, cell) -> None:
    from rich.table import Table

    from ..evaluation.samples import CONTINUED_BARS, PROMPT_BARS

    structure, continuation = music.get("structure", {}), music.get("continuation", {})
    if structure:
        table = Table(title="structure (means): real pieces, their generated twins, and the "
                      "requests' pieces")
        for column in ("measure", "generated", "real", "requested"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for name, value in structure["requested"].items():
            table.add_row(name.replace("_", " "), cell(structure.get("generated", {}).get(name)),
                          cell(structure.get("real", {}).get(name)), cell(value))
        stderr.print(table)
    if continuation:
        table = Table(title=f"continuing {continuation['pieces']} real {PROMPT_BARS}-bar "
                      f"openings: the model's {CONTINUED_BARS} bars and the real next ones")
        for column in ("measure", "generated", "real"):
            table.add_column(column, justify="left" if column == "measure" else "right")
        for name, value in continuation["generated"].items():
            table.add_row(name.replace("_", " "), cell(value),
                          cell(continuation["real"].get(name)))
        stderr.print(table)
