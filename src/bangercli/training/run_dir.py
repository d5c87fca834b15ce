"""The run directory: the files a run leaves there, when they may be replaced, and resuming.

A run directory holds ``last.safetensors``, ``last.optim.pt``, ``best.safetensors``,
``metrics.jsonl`` and ``curves.png`` (train.py writes them). An earlier run is never replaced
without --force, and --resume takes the run's own settings back from its last save.
"""

from __future__ import annotations

import os
from dataclasses import fields, replace
from pathlib import Path

from ..atomic_files import writing
from ..errors import OutputExistsError, UsageError
from ..model.checkpoint import read_checkpoint
from ..model.network import ModelConfig, model_config
from .config import TrainConfig

RUN_FILES = ("last.safetensors", "last.optim.pt", "best.safetensors", "metrics.jsonl", "curves.png",
             "last.optim.next.pt")


def resume_config(run_dir: str | os.PathLike, *, preset: str | None = None,
                  model_fields: dict | None = None, **overrides) -> TrainConfig:
    """The training config stored in RUN_DIR/last.safetensors, with non-None `overrides`.

    The model and its starting point come from the run. Model settings given again
    (`preset`, `model_fields`, `init`) must equal the run's, so re-running the very command
    that started a run with --resume appended works; a value that differs is refused, named."""
    check_resumable(Path(run_dir))
    _, meta = read_checkpoint(Path(run_dir) / "last.safetensors")
    stored = meta["training"].get("train_config", {})
    known = {f.name for f in fields(TrainConfig)}
    base = TrainConfig(**{k: v for k, v in stored.items() if k in known})
    run_model = ModelConfig.from_dict(meta["model_config"])
    given = {k: v for k, v in (model_fields or {}).items() if v is not None}
    wanted = model_config(preset, **given) if preset else replace(run_model, **given)
    compared = [f.name for f in fields(ModelConfig)
                if f.name != "vocab_size" and (preset or f.name in given)]
    changed = [f"--{name.replace('_', '-')} {getattr(wanted, name)} (the run's: "
               f"{getattr(run_model, name)})" for name in compared
               if getattr(wanted, name) != getattr(run_model, name)]
    init = overrides.pop("init", None)
    if init is not None and init != base.init:
        changed.append(f"--init {init} (the run's: {base.init or 'none'})")
    if changed:
        raise UsageError(f"--resume continues the run in {run_dir} as it was made: "
                         f"{', '.join(changed)} differ",
                         hint="drop those options, or start a new run with --force")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None})


def check_resumable(run_dir: Path) -> None:
    """A run can be resumed once its first complete save (last.safetensors) exists."""
    if (run_dir / "last.safetensors").exists():
        return
    leftovers = [name for name in RUN_FILES if (run_dir / name).exists()]
    raise UsageError(f"nothing to resume in {run_dir} (no last.safetensors)",
                     hint="start the run again with --force" if leftovers  # killed early
                     else "drop --resume to start a new run")


def check_run_dir(run_dir: Path, *, resume: bool, force: bool) -> None:
    """Refuse a file where the folder should be, an earlier run without --resume or --force,
    and --resume with nothing to resume."""
    if run_dir.exists() and not run_dir.is_dir():
        raise OutputExistsError(f"{run_dir} is a file", hint="choose another --out")
    from ..data.preprocess import is_data_set

    for folder in (run_dir, *run_dir.absolute().parents):
        if is_data_set(folder):  # `preprocess --force` replaces that folder, run and all
            raise UsageError(f"--out {run_dir} is inside the data set {folder}: the next "
                             "`banger preprocess --force` there would delete the run",
                             hint="choose another --out, e.g. runs/NAME")
    existing = [name for name in RUN_FILES[:3] if (run_dir / name).exists()]
    resumable = "last.safetensors" in existing
    if resume:
        check_resumable(run_dir)
    if existing and not resume and not force:
        raise OutputExistsError(
            f"{run_dir} already holds a training run ({', '.join(existing)})",
            hint="pass --resume to continue it or --force to start over" if resumable
            else "it has no last.safetensors to resume from: pass --force to start over",
        )


def clear_run_dir(run_dir: Path) -> None:
    """Make RUN_DIR and remove the files of an earlier run from it (--force)."""
    with writing(run_dir):
        run_dir.mkdir(parents=True, exist_ok=True)
        for name in RUN_FILES:
            (run_dir / name).unlink(missing_ok=True)
