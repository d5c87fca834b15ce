"""`banger train`: a thin command over bangercli.training (torch is imported inside it only)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path
from typing import Optional

import typer

from ..checks import check_finite, check_seed
from ..errors import UsageError
from .common import check_output_folder, removed_if_failed, stderr


def train(
    *,  # typer passes every argument and option by keyword
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
    from ..model.network import model_config
    from ..training.config import TrainConfig
    from ..training.run_dir import resume_config
    from ..training.train import train as run

    options = dict(epochs=epochs, max_steps=max_steps, batch_size=batch_size, lr=lr,
                   warmup_steps=warmup_steps, val_every=val_every, val_windows=val_windows,
                   save_every=save_every, transpose=transpose, seed=seed, device=device,
                   schedule=schedule, revoice=revoice, intro=intro, mix=mix, init=init,
                   compile=compile)
    fields = dict(seq_len=seq_len, dim=dim, depth=depth, heads=heads, dim_head=dim_head,
                  ff_mult=ff_mult, dropout=dropout)
    _check_train_options(out, options, fields, preset=preset, resume=resume, force=force)
    if resume:  # model options given again must match the run's (resume_config checks)
        config = resume_config(out, preset=preset, model_fields=fields, **options)
        model = None
    else:
        config = replace(TrainConfig(), **{k: v for k, v in options.items() if v is not None})
        model = None if init else model_config(preset or "seed", **fields)
    with _TrainProgress(quiet=quiet) as progress, removed_if_failed(out):
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
    if options["seed"] is not None:
        check_seed(options["seed"])
    check_output_folder(out)
    if resume and force:
        raise UsageError("--resume and --force contradict each other",
                         hint="--resume continues the run in --out, --force starts it over")
    if options["init"] and not resume:
        given = [f"--{k.replace('_', '-')}" for k, v in {**fields, "preset": preset}.items()
                 if v is not None]
        if given:
            raise UsageError(f"{', '.join(given)} cannot be given with --init",
                             hint="the model comes from the checkpoint")


class _TrainProgress:
    """Callback for training events: a rich bar on a terminal, plain lines otherwise."""

    def __init__(self, *, quiet: bool) -> None:
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
