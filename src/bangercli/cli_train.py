"""`banger train` and `banger evaluate`: thin commands over bangercli.train and .evaluate.

Registered on `bangercli.cli.app` when cli.py imports this module. torch is imported inside
the commands only, so `banger --help` stays instant.
"""

from __future__ import annotations

import json
from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from .cli import (
    app, check_finite, check_model_name, check_output_folder, removed_if_failed, stderr,
)
from .errors import UsageError


@app.command()
def train(
    data_dir: Path = typer.Argument(..., help="Data directory made by `banger preprocess`."),
    out: Path = typer.Option(..., "--out", "-o", help="Run directory for checkpoints and metrics."),
    preset: Optional[str] = typer.Option(None, help="Model size: seed (default), small or tiny."),
    epochs: Optional[float] = typer.Option(None, help="Passes over the training tokens [5]."),
    max_steps: Optional[int] = typer.Option(None, help="Stop after this many steps."),
    batch_size: Optional[int] = typer.Option(None, help="Windows per step, over all devices [64]."),
    lr: Optional[float] = typer.Option(None, help="Adam learning rate [2e-4]."),
    warmup_steps: Optional[int] = typer.Option(None, help="Linear learning-rate warm-up [100]."),
    val_every: Optional[int] = typer.Option(None, help="Steps between validations [300]."),
    val_windows: Optional[int] = typer.Option(None, help="Validation windows scored [256]."),
    save_every: Optional[int] = typer.Option(None, help="Steps between writes of last [1000]."),
    schedule: Optional[str] = typer.Option(
        None, help="Learning rate after warm-up: cosine (to 10%) or constant [cosine]."),
    transpose: Optional[bool] = typer.Option(
        None, "--transpose/--no-transpose", help="Random transposition of melodic notes [on]."
    ),
    revoice: Optional[float] = typer.Option(
        None, help="Share of windows re-voiced onto other instrument families [0]."),
    intro: Optional[float] = typer.Option(
        None, help="Share of windows that start at the piece's beginning [0]."),
    mix: Optional[str] = typer.Option(
        None, help="Sampling weights by source folder, e.g. freedoom=4,groove=0.5 [all 1]."),
    seed: Optional[int] = typer.Option(None, help="Seed of weights, windows, augmentation [0]."),
    device: Optional[str] = typer.Option(None, help="auto, cpu, cuda or cuda:N [auto]."),
    compile: Optional[bool] = typer.Option(
        None, "--compile/--no-compile", help="torch.compile the model [off]."
    ),
    seq_len: Optional[int] = typer.Option(None, help="Training window in tokens (model field)."),
    dim: Optional[int] = typer.Option(None, help="Model width (model field)."),
    depth: Optional[int] = typer.Option(None, help="Transformer blocks (model field)."),
    heads: Optional[int] = typer.Option(None, help="Attention heads (model field)."),
    dim_head: Optional[int] = typer.Option(None, help="Width of each head (model field)."),
    ff_mult: Optional[int] = typer.Option(None, help="Feed-forward width / dim (model field)."),
    dropout: Optional[float] = typer.Option(None, help="Dropout while training (model field)."),
    init: Optional[str] = typer.Option(
        None, help="Start from these weights (checkpoint or model name, e.g. default) with a "
        "fresh optimizer: fine-tuning. The model size comes from the checkpoint."),
    resume: bool = typer.Option(False, "--resume", help="Continue the run in --out."),
    force: bool = typer.Option(False, "--force", help="Replace a run already in --out."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or messages."),
) -> None:
    """Train a model on a data directory; prints the path of the best checkpoint."""
    from .model import model_config
    from .train import TrainConfig, resume_config
    from .train import train as run

    options = dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                   warmup_steps=warmup_steps, val_every=val_every, val_windows=val_windows,
                   save_every=save_every, transpose=transpose, seed=seed, device=device,
                   schedule=schedule, revoice=revoice, intro=intro, mix=mix, init=init,
                   compile=compile)
    fields = dict(seq_len=seq_len, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                  ff_mult=ff_mult, dropout=dropout)
    _check_train_options(out, options, fields, preset=preset, resume=resume, force=force)
    if resume:
        config, model = resume_config(out, **options), None
    else:
        config = replace(TrainConfig(), **{k: v for k, v in options.items() if v is not None})
        model = None if init else model_config(preset or "seed", **fields)
    if mix:  # before train() clears an old run away with --force (train.py checks it later)
        from .shards import Shards
        from .train import mix_weights

        mix_weights(Shards(data_dir, "train"), mix)
    with _TrainProgress(quiet) as progress, removed_if_failed(out):
        result = run(data_dir, out, model_config=model, config=config, resume=resume,
                     force=force, callback=progress)
    if result.rank != 0:
        return
    if not quiet:
        best = "n/a" if result.best_val_loss is None else f"{result.best_val_loss:.4f}"
        stderr.print(f"trained {result.step} steps ({result.epoch:.2f} epochs) in "
                     f"{result.seconds:.0f} s, {result.tokens_per_s:,.0f} tokens/s; "
                     f"best validation loss {best}", soft_wrap=True)
    print(result.best)


def _check_train_options(out: Path, options: dict, fields: dict, *, preset: str | None,
                         resume: bool, force: bool) -> None:
    """Refuse contradictory or impossible options before any work."""
    check_finite(**{k: options.get(k) for k in ("epochs", "lr", "revoice", "intro")},
                 dropout=fields["dropout"])
    seed = options["seed"]
    if seed is not None and not 0 <= seed < 2**32:
        raise UsageError(f"--seed must be between 0 and 2**32 - 1, got {seed}")
    check_output_folder(out)
    if resume and force:
        raise UsageError("--resume and --force contradict each other")
    if resume and options["init"]:
        raise UsageError("--resume and --init contradict each other",
                         hint="--resume continues the run in --out with its own weights")
    if resume or options["init"]:
        given = [f"--{k.replace('_', '-')}" for k, v in {**fields, "preset": preset}.items()
                 if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} cannot be given with --resume or --init",
                             hint="the model comes from the checkpoint")
    if resume and not (out / "last.safetensors").exists():
        leftovers = [name for name in ("last.optim.pt", "last.optim.next.pt", "best.safetensors")
                     if (out / name).exists()]  # a run killed before its first full save
        raise UsageError(f"nothing to resume in {out} (no last.safetensors)",
                         hint="start the run again with --force" if leftovers
                         else "drop --resume to start a new run")


class _TrainProgress:
    """Callback for training events: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, quiet: bool) -> None:
        self.quiet = quiet
        self.bar = None

    def __enter__(self):
        if not self.quiet and stderr.is_terminal:
            from rich.progress import BarColumn, Progress, TimeRemainingColumn

            self.bar = Progress(
                "[progress.description]{task.description}", BarColumn(),
                "{task.completed}/{task.total} steps", "loss {task.fields[loss]}",
                "acc {task.fields[accuracy]}", "{task.fields[speed]} tok/s",
                TimeRemainingColumn(), console=stderr, transient=True,
            )
            self.bar.start()
            self.task = self.bar.add_task("training", total=None, loss="-", accuracy="-", speed="-")
        return self

    def __call__(self, event: dict) -> None:
        if self.quiet:
            return
        kind = event["event"]
        if kind == "note":
            stderr.print(f"note: {event['message']}", soft_wrap=True, markup=False)
        elif kind == "start":
            stderr.print(f"training {event['parameters']:,} parameters on {event['device']}, "
                         f"steps {event['step']}..{event['total_steps']} "
                         f"({event['steps_per_epoch']} per epoch)")
            if self.bar:
                self.bar.update(self.task, completed=event["step"], total=event["total_steps"])
        elif kind == "train" and self.bar:
            self.bar.update(self.task, completed=event["step"], loss=f"{event['loss']:.3f}",
                            accuracy=f"{event['accuracy']:.3f}",
                            speed=f"{event['tokens_per_s']:,.0f}")
        elif kind == "validation":
            stderr.print(f"step {event['step']}: validation loss {event['loss']:.4f}, "
                         f"accuracy {event['accuracy']:.4f}")

    def __exit__(self, *exc) -> None:
        if self.bar:
            self.bar.stop()


@app.command()
def evaluate(
    model: str = typer.Argument(..., help="Checkpoint path or model name."),
    data_dir: Path = typer.Argument(..., help="Data directory made by `banger preprocess`."),
    split: str = typer.Option("validation", help="train or validation."),
    batch_size: int = typer.Option(16, help="Windows per forward pass."),
    max_pieces: Optional[int] = typer.Option(None, help="Score only the first N pieces."),
    device: str = typer.Option("auto", help="auto, cpu, cuda or cuda:N."),
    samples: int = typer.Option(0, help="Also generate N pieces per condition and measure "
                                "control adherence and musical metrics (0 = off)."),
    bars: int = typer.Option(8, help="Length of the generated (and compared real) pieces."),
    seed: int = typer.Option(0, help="Seed of the generated pieces."),
    as_json: bool = typer.Option(False, "--json", help="Print the results as JSON on stdout."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bar or table."),
) -> None:
    """Score a model on a data split: loss, accuracy, per-field accuracy, bits per note;
    with --samples, also the adherence and musical metrics of generated pieces."""
    from .checkpoint import load_model
    from .cli import _progress
    from .evaluate import evaluate as run
    from .runtime import pick_device
    from .shards import SPLITS

    if batch_size < 1 or (max_pieces is not None and max_pieces < 1):
        raise UsageError("--batch-size and --max-pieces must be >= 1")
    if samples < 0 or bars < 1:
        raise UsageError("--samples must be >= 0 and --bars >= 1")
    if not 0 <= seed < 2**63:
        raise UsageError(f"--seed must be between 0 and 2**63 - 1, got {seed}")
    if split not in SPLITS:
        raise UsageError(f"unknown --split {split!r}", hint=f"choose one of: {', '.join(SPLITS)}")
    check_model_name(model)
    banger = load_model(model, device=str(pick_device(device)))
    with _progress(quiet, "evaluating") as update:
        result = run(banger, data_dir, split=split, batch_size=batch_size, max_pieces=max_pieces,
                     progress=update)
    report = result.to_dict()
    if not quiet:
        _print_evaluation(report, model)
    if samples:
        from .evaluate_music import evaluate_music

        with _progress(quiet, "generating") as update:
            music = evaluate_music(banger, samples=samples, bars=bars, seed=seed,
                                   data_dir=data_dir, split=split, max_pieces=max_pieces,
                                   progress=update)
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

    def cell(value, percent=False):
        if value is None:
            return "-"
        return f"{value:.0%}" if percent else f"{value:.3f}"

    checks = ("decodable", "instruments_present", "lead_most_notes", "drums", "only")
    adherence = Table(title="generated pieces: does the music obey the request?")
    adherence.add_column("condition")
    for column in checks:
        adherence.add_column(column.replace("_", " "), justify="right")
    for name, row in music["conditions"].items():
        adherence.add_row(name, *(cell(row.get(c), True) for c in checks))
    stderr.print(adherence)
    metrics = Table(title=f"musical metrics (means): {music.get('matched_pieces', 0)} real "
                    "pieces and pieces generated from their headers")
    for column in ("metric", "generated", "real", "generated / real"):
        metrics.add_column(column, justify="left" if column == "metric" else "right")
    for name, value in music["generated"].items():
        metrics.add_row(name.replace("_", " "), cell(value), cell(music["real"].get(name)),
                        cell(music["relative_to_real"].get(name)))
    stderr.print(metrics)
