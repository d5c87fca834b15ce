"""The settings of a training run (`TrainConfig`) and the learning-rate schedule they give."""

from __future__ import annotations

import math
from dataclasses import dataclass

from ..checks import check_seed
from ..data.augment import parse_mix
from ..errors import UsageError


@dataclass(frozen=True)
class TrainConfig:
    epochs: float = 5.0  # passes over the data; one epoch = train tokens / (batch * seq_len) steps
    max_steps: int | None = None  # stop after this many steps whatever `epochs` says
    batch_size: int = 64  # windows per step, summed over all devices and processes
    lr: float = 2e-4  # Adam learning rate
    warmup_steps: int = 100  # the learning rate ramps up linearly over these first steps
    grad_clip: float = 1.0  # largest gradient norm; 0 turns clipping off
    val_every: int = 300  # steps between validations
    val_windows: int = 256  # validation windows scored each time (a fixed subset of the split)
    save_every: int = 1000  # steps between writes of last.safetensors (best: whenever val improves)
    log_every: int = 10  # training steps averaged into one point of metrics.jsonl
    schedule: str = "cosine"  # learning rate after warm-up: "cosine" (down to 10%) or "constant"
    transpose: bool = True  # shift melodic notes by a random -5..+6 semitones per window
    revoice: float = 0.0  # share of windows whose melodic parts move to other instrument families
    intro: float = 0.0  # share of windows that start at the piece's beginning (not a random crop)
    mix: str = ""  # sampling weights by source path, e.g. "freedoom=4,groove=0.5" (default 1)
    init: str = ""  # start from these weights (checkpoint path or model name), fresh optimizer
    seed: int = 0  # seeds the initial weights, window sampling and augmentation
    device: str = "auto"  # "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"
    compile: bool = False  # torch.compile the model (slow start, faster steps on GPU)

    def validate(self) -> "TrainConfig":
        positive = ("batch_size", "val_every", "val_windows", "save_every", "log_every")
        for name in positive:
            if getattr(self, name) < 1:
                flag = "--" + name.replace("_", "-")
                raise UsageError(f"{flag} must be >= 1, got {getattr(self, name)}")
        if not all(math.isfinite(v) for v in (self.epochs, self.lr, self.grad_clip)):
            raise UsageError("--epochs, --lr and --grad-clip must be finite numbers")
        check_seed(self.seed)
        if self.epochs <= 0 or self.lr <= 0 or self.warmup_steps < 0 or self.grad_clip < 0:
            raise UsageError("--epochs and --lr must be positive, "
                             "--warmup-steps and --grad-clip >= 0")
        if self.schedule not in ("cosine", "constant"):
            raise UsageError(f"--schedule must be cosine or constant, got {self.schedule!r}")
        if not 0.0 <= self.revoice <= 1.0:
            raise UsageError(f"--revoice must be in [0, 1], got {self.revoice}")
        if not 0.0 <= self.intro <= 1.0:
            raise UsageError(f"--intro must be in [0, 1], got {self.intro}")
        parse_mix(self.mix)
        if self.max_steps is not None and self.max_steps < 1:
            raise UsageError(f"--max-steps must be >= 1, got {self.max_steps}")
        return self


def learning_rate(config: TrainConfig, step: int, total_steps: int) -> float:
    """Linear warm-up, then constant or a cosine decay to 10% at the last step."""
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    span = max(total_steps - config.warmup_steps, 1)
    progress = min(max(step - config.warmup_steps, 0) / span, 1.0)
    return config.lr * (0.1 + 0.9 * 0.5 * (1.0 + math.cos(math.pi * progress)))
