"""`banger train`: fit a model to a data directory, with exact resume and atomic checkpoints.

A run directory holds ``last.safetensors`` (written every `save_every` steps and on Ctrl-C),
``last.optim.pt`` (optimizer state for --resume), ``best.safetensors`` (written when the
validation loss improves), ``metrics.jsonl`` and ``curves.png``. Every file is written whole
or not at all, and the optimizer state of a save is written before the weights and given its
name after them (see `Trainer._save_last`): a run killed at any moment resumes from its last
complete save. Batches are a pure function of (seed, step), so a resumed run continues
exactly where the interrupted one stopped.
Runs on one CPU or GPU, on all visible GPUs with DataParallel, or under `torchrun` with
DistributedDataParallel (only rank 0 writes files). The settings are `TrainConfig` (config.py);
when a run directory may be replaced or resumed is run_dir.py.
"""

from __future__ import annotations

import gc
import math
import os
import time
from dataclasses import asdict, dataclass, replace
from pathlib import Path
from typing import Callable

import numpy as np
import torch

from ..atomic_files import WriteError, remove_stale_parts, writing
from ..data.augment import mix_weights
from ..data.shards import Shards, manifest_hash
from ..data.windows import WindowSampler, piece_windows
from ..errors import BangerError, DataError, UsageError
from ..evaluation.evaluate import field_table, score_windows
from ..midi.tokenizer import Tokenizer, TokenizerConfig
from ..model.checkpoint import (
    check_tokenizer, load_training_state, read_checkpoint, save_checkpoint, save_training_state,
)
from ..model.network import ModelConfig, NextTokenLoss, build_model, count_parameters
from .config import TrainConfig, learning_rate
from .devices import StopOnCtrlC, check_fits, setup_runtime, wrap_model
from .log import MetricsLog, write_curves
from .run_dir import check_run_dir, clear_run_dir


@dataclass
class TrainResult:
    run_dir: Path
    step: int  # steps completed
    epoch: float
    best_val_loss: float | None
    last: Path  # last.safetensors
    best: Path  # best.safetensors
    tokens_per_s: float  # mean training throughput of this session
    seconds: float
    rank: int = 0  # the process in a torchrun job; only rank 0 reports


class TrainingInterrupted(BangerError):
    """Ctrl-C: `last` was saved, the run can be resumed."""

    exit_code = 130


def train(
    data_dir: str | os.PathLike,
    run_dir: str | os.PathLike,
    *,
    model_config: ModelConfig | None = None,
    config: TrainConfig = TrainConfig(),
    resume: bool = False,
    force: bool = False,
    callback: Callable[[dict], None] | None = None,
) -> TrainResult:
    """Train on DATA_DIR (made by `banger preprocess`), writing checkpoints to RUN_DIR.
    `callback` receives every event as a dict: start, train, validation, checkpoint."""
    try:
        trainer = Trainer(Path(data_dir), Path(run_dir), model_config or ModelConfig(),
                          config.validate(), resume=resume, force=force, callback=callback)
        try:
            return trainer.run()
        finally:
            trainer.close()
    except WriteError as err:  # full disk, read-only folder: say how to go on afterwards
        if (Path(run_dir) / "last.safetensors").exists():
            err.hint = f"{err.hint}, then continue the run with --resume"
        raise


CURVES_EVERY_SECONDS = 60  # curves.png is redrawn at a validation at most this often


class Trainer:
    """One training session; `run()` is the loop, read top to bottom."""

    def __init__(self, data_dir, run_dir, model_config, config, *, resume, force, callback):
        self.data_dir, self.run_dir, self.config = data_dir, run_dir, config
        self.callback = callback or (lambda event: None)
        self.train_data = _nonempty(Shards(data_dir, "train"), data_dir)
        self.val_data = Shards(data_dir, "validation")
        self.data_hash = manifest_hash(data_dir)
        self.runtime = setup_runtime(config.device)
        self._check_run_dir(resume=resume, force=force)
        self.info: dict = {"step": 0, "best_val_loss": None, "tokens_seen": 0, "seconds": 0.0}
        tokenizer_config = TokenizerConfig.from_dict(self.train_data.manifest["tokenizer"])
        initial = None
        if resume:
            self.model, model_config = self._load_last(tokenizer_config)
        elif config.init:  # fine-tune: the model (and its size) comes from the checkpoint
            from ..api import load_model  # the front door's loader (and its model lookup)

            initial = load_model(config.init)
            check_tokenizer(initial.tokenizer.config.to_dict(), tokenizer_config.to_dict(),
                            where=f"--init {config.init}")
            model_config = initial.config
        else:
            model_config = replace(model_config, vocab_size=Tokenizer(tokenizer_config).vocab_size)
        self.model_config, self.tokenizer = model_config.validate(), Tokenizer(tokenizer_config)
        self._check_batch()
        check_fits(self.model_config.weight_count(), self.runtime.device)
        weights = mix_weights(self.train_data, config.mix)
        if not resume:  # every check passed: only now clear an old run away (--force)
            self._clear_run_dir()
            torch.manual_seed(config.seed)
            self.model = initial.model.train() if initial else build_model(model_config)
        self.model.to(self.runtime.device)
        self.loss_module = wrap_model(NextTokenLoss(self.model), self.runtime,
                                      compile=config.compile)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=config.lr)
        if resume:
            self._load_optimizer()
        self.sampler = WindowSampler(self.train_data, self.tokenizer, seq_len=model_config.seq_len,
                                     seed=config.seed, transpose=config.transpose,
                                     revoice=config.revoice, intro=config.intro,
                                     rank=self.runtime.rank,
                                     weights=weights)
        self.val_windows = self._validation_windows()
        self.log = MetricsLog(run_dir / "metrics.jsonl", enabled=self.runtime.main)
        self.stop_requested = False
        self.curves_drawn = time.monotonic()

    # --- setup -------------------------------------------------------------------------

    def _check_run_dir(self, *, resume: bool, force: bool) -> None:
        check_run_dir(self.run_dir, resume=resume, force=force)
        if self.runtime.main and self.run_dir.is_dir():
            remove_stale_parts(self.run_dir)  # temporary files of a killed run

    def _clear_run_dir(self) -> None:
        if self.runtime.main:
            clear_run_dir(self.run_dir)
        self.runtime.barrier()

    def _load_last(self, tokenizer_config: TokenizerConfig):
        tensors, meta = read_checkpoint(self.run_dir / "last.safetensors")
        check_tokenizer(meta["tokenizer"], tokenizer_config.to_dict(), where=str(self.data_dir))
        if meta["training"].get("data_manifest_hash") != self.data_hash:
            raise BangerError(
                f"{self.run_dir} was trained on other data than {self.data_dir}",
                hint="resume with the same DATA_DIR, or start a new run with --force",
            )
        self.info.update(meta["training"])
        config = ModelConfig.from_dict(meta["model_config"])
        model = build_model(config)
        model.load_state_dict({k: v.float() if v.is_floating_point() else v
                               for k, v in tensors.items()})
        return model, config

    def _load_optimizer(self) -> None:
        """The optimizer state saved with last.safetensors: last.optim.pt, or the newer
        last.optim.next.pt when the run was killed after the weights but before its rename."""
        found = []
        for name in ("last.optim.pt", "last.optim.next.pt"):
            if (self.run_dir / name).exists():
                state = load_training_state(self.run_dir / name)
                if state.get("step") == self.info["step"]:
                    self.optimizer.load_state_dict(state["optimizer"])
                    # Give a state found under its temporary name its real name now: the next
                    # save writes last.optim.next.pt again, and a kill before that save's
                    # weights land would otherwise leave last.safetensors with no state.
                    self.runtime.barrier()  # every process has read it before it moves
                    if name == "last.optim.next.pt" and self.runtime.main:
                        self._commit_optimizer_state()
                    return
                found.append(f"{name} is from step {state.get('step')}")
        raise BangerError(
            f"{self.run_dir}: no optimizer state for step {self.info['step']} of "
            f"last.safetensors ({', '.join(found) or 'last.optim.pt is missing'})",
            hint="start again with --force")

    def _check_batch(self) -> None:
        c, world = self.config, self.runtime.world
        if c.batch_size % world:
            raise UsageError(f"--batch-size {c.batch_size} is not a multiple of {world} processes")
        tokens = int(self.train_data.lengths.sum())
        needed = c.batch_size * self.model_config.seq_len
        if tokens < needed:
            raise DataError(
                f"one batch ({c.batch_size} windows of {self.model_config.seq_len} tokens = "
                f"{needed:,} tokens) is larger than the training data ({tokens:,} tokens)",
                hint="lower --batch-size or --seq-len, or preprocess more MIDI files",
            )
        self.steps_per_epoch = tokens // needed
        # Epochs count data, not steps: a run resumed with another --batch-size goes on from
        # the epoch it reached, and its remaining steps are counted at the new batch size.
        start = self.first_step = int(self.info["step"])
        self.start_epoch = float(self.info.get("epoch", start / self.steps_per_epoch))
        remaining = max(0, math.ceil(round((c.epochs - self.start_epoch) * self.steps_per_epoch, 6)))
        total = start + remaining
        self.total_steps = min(total, c.max_steps) if c.max_steps else total

    def epoch_at(self, step: int) -> float:
        """Passes over the training data made after `step` steps."""
        return self.start_epoch + (step - self.first_step) / self.steps_per_epoch

    def _validation_windows(self) -> list[tuple[np.ndarray, int]]:
        """A fixed subset of validation windows from pieces in a seeded order, split over ranks."""
        windows: list[tuple[np.ndarray, int]] = []
        order = np.random.default_rng(0).permutation(len(self.val_data))
        for index in order:
            windows += piece_windows(np.asarray(self.val_data[int(index)]), self.tokenizer,
                                     self.model_config.seq_len + 1)
            if len(windows) >= self.config.val_windows:
                break
        return windows[: self.config.val_windows][self.runtime.rank :: self.runtime.world]

    # --- the loop ----------------------------------------------------------------------

    def close(self) -> None:
        """Free the model, its DistributedDataParallel wrapper and the optimizer before the
        process group goes: a wrapper collected at interpreter exit, after the group, took
        gloo's threads down with it and aborted the process ("terminate called without an
        active exception", about 1 run in 15 on 2 CPU cores)."""
        self.loss_module = self.model = self.optimizer = None
        if self.runtime.world > 1:  # a full collection costs ~0.1 s: only where it matters
            gc.collect()
        self.runtime.close()

    def run(self) -> TrainResult:
        c, start = self.config, int(self.info["step"])
        self.log.truncate_after(start)
        if len(self.val_data) == 0:
            self._emit("note", message=f"{self.data_dir} has no validation pieces: nothing to "
                       "judge checkpoints by, so best.safetensors is the last checkpoint "
                       "(preprocess with a larger --val-fraction to validate)")
        run_batch = self.info.get("train_config", {}).get("batch_size")
        if start and run_batch and run_batch != c.batch_size:
            self._emit("note", message=f"--batch-size {c.batch_size} (the run used {run_batch}): "
                       f"the run goes on from epoch {self.start_epoch:.2f}, "
                       f"{self.total_steps - start} more steps of {c.batch_size} windows")
        self._emit("start", step=start, total_steps=self.total_steps,
                   steps_per_epoch=self.steps_per_epoch, parameters=count_parameters(self.model),
                   device=self.runtime.describe(), model=self.model_config.to_dict())
        stats = torch.zeros(3, device=self.runtime.device)
        began = window_start = time.perf_counter()
        window_steps = 0
        with StopOnCtrlC(self):
            for step in range(start, self.total_steps):
                stats += self._step(step)
                done, window_steps = step + 1, window_steps + 1
                if done % c.log_every == 0 or done == self.total_steps:
                    now = time.perf_counter()
                    self._log_train(done, stats, window_steps, now - window_start)
                    stats.zero_()
                    window_start, window_steps = now, 0
                if done % c.val_every == 0 or done == self.total_steps:
                    self._validate(done)
                    window_start = time.perf_counter()  # tokens/s counts training time only
                if done % c.save_every == 0 or done == self.total_steps:
                    self._save_last(done)
                    window_start = time.perf_counter()
                if self.runtime.any(self.stop_requested):
                    self._save_last(done)
                    if self.runtime.main:
                        write_curves(self.log.path, self.run_dir / "curves.png")
                    raise TrainingInterrupted(
                        f"interrupted at step {done}; saved {self.run_dir / 'last.safetensors'}",
                        hint="continue with `banger train ... --resume`",
                    )
        seconds = time.perf_counter() - began
        if self.runtime.main and not write_curves(self.log.path, self.run_dir / "curves.png"):
            self._emit("note", message="no curves.png: matplotlib is not installed "
                       "(pip install 'banger[plot]')")
        tokens = (self.total_steps - start) * c.batch_size * self.model_config.seq_len
        self.runtime.barrier()  # no process leaves while rank 0 still writes the last files
        return TrainResult(self.run_dir, self.total_steps, self.epoch_at(self.total_steps),
                           self.info["best_val_loss"], self.run_dir / "last.safetensors",
                           self.run_dir / "best.safetensors", tokens / max(seconds, 1e-9), seconds,
                           rank=self.runtime.rank)

    def _step(self, step: int) -> torch.Tensor:
        """One optimizer step; returns the detached [loss sum, correct, counted] of the batch."""
        c, device = self.config, self.runtime.device
        rows = c.batch_size // self.runtime.world
        batch = torch.from_numpy(self.sampler.batch(step, rows)).to(device, non_blocking=True)
        torch.manual_seed(c.seed * 1_000_003 + step)  # dropout masks depend on the step only
        for group in self.optimizer.param_groups:
            group["lr"] = learning_rate(c, step, self.total_steps)
        try:
            out = self.loss_module(batch[:, :-1], batch[:, 1:]).sum(0)  # autocasts on CUDA
            loss = out[0] / out[2].clamp(min=1)
            loss.backward()
            if c.grad_clip:
                torch.nn.utils.clip_grad_norm_(self.model.parameters(), c.grad_clip)
            self.optimizer.step()
            self.optimizer.zero_grad(set_to_none=True)
        except (torch.OutOfMemoryError, MemoryError) as err:
            raise BangerError(
                f"out of memory at step {step + 1} on {self.runtime.describe()} "
                f"({type(err).__name__})",
                hint="lower --batch-size or --seq-len, or pick a smaller --preset",
            ) from None
        return out.detach().float()

    def _log_train(self, done: int, stats: torch.Tensor, steps: int, seconds: float) -> None:
        stats = self.runtime.sum(stats)
        loss_sum, correct, counted = stats.tolist()
        tokens = steps * self.config.batch_size * self.model_config.seq_len
        self.info["tokens_seen"] = int(self.info.get("tokens_seen", 0)) + tokens
        self.info["seconds"] = float(self.info.get("seconds", 0.0)) + seconds
        self._emit("train", step=done, loss=loss_sum / max(counted, 1),
                   accuracy=correct / max(counted, 1), tokens_per_s=tokens / max(seconds, 1e-9),
                   lr=self.optimizer.param_groups[0]["lr"])

    def _validate(self, done: int) -> None:
        if len(self.val_data) == 0:
            return
        self.model.eval()
        totals = score_windows(self.model, self.val_windows, field_table(self.tokenizer),
                               batch_size=self.config.batch_size // self.runtime.world or 1,
                               device=self.runtime.device)
        self.model.train()
        totals = self.runtime.sum(torch.from_numpy(totals)).numpy()
        loss = float(totals[0].sum() / max(totals[2].sum(), 1))
        self._emit("validation", step=done, loss=loss,
                   accuracy=float(totals[1].sum() / max(totals[2].sum(), 1)))
        best = self.info.get("best_val_loss")
        if best is None or loss < best:
            self.info["best_val_loss"] = loss
            self._save("best.safetensors", done, val_loss=loss)
        if self.runtime.main and time.monotonic() - self.curves_drawn >= CURVES_EVERY_SECONDS:
            write_curves(self.log.path, self.run_dir / "curves.png")  # (and at the end)
            self.curves_drawn = time.monotonic()

    # --- files -------------------------------------------------------------------------

    def _save(self, name: str, done: int, **extra) -> None:
        self.info.update(step=done, epoch=self.epoch_at(done), **extra)
        if self.runtime.main:
            info = {**self.info, "data_manifest_hash": self.data_hash,
                    "data_dir": str(self.data_dir), "train_config": asdict(self.config),
                    "world_size": self.runtime.world}
            path = save_checkpoint(self.run_dir / name, self.model, config=self.model_config,
                                   tokenizer_config=self.tokenizer.config, info=info)
            self._emit("checkpoint", step=done, path=str(path))

    def _save_last(self, done: int) -> None:
        """Optimizer state under a temporary name, then the weights, then the state's real
        name. Killed before the weights land, the previous pair stays; killed after, resume
        finds the state under its temporary name. No kill loses more than this save."""
        if self.runtime.main:
            save_training_state(self.run_dir / "last.optim.next.pt",
                                {"step": done, "optimizer": self.optimizer.state_dict()})
        self._save("last.safetensors", done)
        if self.runtime.main:
            self._commit_optimizer_state()
        if len(self.val_data) == 0 and self.runtime.main:  # nothing to validate on: best = last
            save_checkpoint(self.run_dir / "best.safetensors", self.model, config=self.model_config,
                            tokenizer_config=self.tokenizer.config, info=self.info)

    def _commit_optimizer_state(self) -> None:
        with writing(self.run_dir / "last.optim.pt"):
            os.replace(self.run_dir / "last.optim.next.pt", self.run_dir / "last.optim.pt")

    def _emit(self, event: str, **values) -> None:
        if event in ("train", "validation"):
            values["epoch"] = self.epoch_at(values["step"])
            self.log.write({"split": "train" if event == "train" else "validation", **values})
        if self.runtime.main:
            self.callback({"event": event, **values})


def _nonempty(shards: Shards, data_dir) -> Shards:
    if len(shards) == 0 or int(shards.lengths.sum()) == 0:
        raise DataError(f"the train split of {data_dir} is empty",
                        hint="preprocess more MIDI files, or a lower --val-fraction")
    return shards
