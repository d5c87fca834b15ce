"""Where training runs: one CPU or GPU, DataParallel over all visible GPUs, or one process
of a `torchrun` job (DistributedDataParallel: gloo on CPU, nccl on CUDA)."""

from __future__ import annotations

import os
import signal
import threading
from dataclasses import dataclass

import torch
from torch import nn

from ..errors import UsageError


@dataclass
class Runtime:
    device: torch.device  # where this process keeps the model
    rank: int = 0  # this process in a torchrun job (0 otherwise)
    world: int = 1  # processes in the job
    gpus: int = 1  # GPUs that DataParallel spreads each batch over (1: no DataParallel)
    owns_group: bool = False  # whether we initialised the process group (and must destroy it)

    @property
    def main(self) -> bool:
        """Only the main process writes files and reports progress."""
        return self.rank == 0

    def describe(self) -> str:
        if self.world > 1:
            return f"{self.device.type} x {self.world} processes (DistributedDataParallel)"
        if self.gpus > 1:
            return f"cuda x {self.gpus} (DataParallel)"
        if self.device.type == "cuda":
            return f"{self.device} ({torch.cuda.get_device_name(self.device)})"
        return f"cpu ({torch.get_num_threads()} threads)"

    def sum(self, tensor: torch.Tensor) -> torch.Tensor:
        """The sum of `tensor` over all processes (itself when there is one)."""
        if self.world == 1:
            return tensor
        import torch.distributed as dist

        reduced = tensor.detach().to(self.device).clone()
        dist.all_reduce(reduced)
        return reduced.to(tensor.device)

    def any(self, flag: bool) -> bool:  # noqa: FBT001 (the flag is the data, not an option)
        """Whether `flag` is set in any process (so all of them stop at the same step)."""
        if self.world == 1:
            return flag
        return bool(self.sum(torch.tensor([float(flag)], device=self.device)).item() > 0)

    def barrier(self) -> None:
        if self.world > 1:
            import torch.distributed as dist

            dist.barrier()

    def close(self) -> None:
        if self.owns_group:
            import torch.distributed as dist

            dist.destroy_process_group()
            self.owns_group = False


def pick_device(device: str = "auto") -> torch.device:
    """One device from "auto" (CUDA when present), "cpu", "cuda" or "cuda:N"."""
    cuda = torch.cuda.is_available()
    if device != "auto" and device != "cpu" and not device.startswith("cuda"):
        raise UsageError(f"unknown device {device!r}", hint="use auto, cpu, cuda or cuda:N")
    if device.startswith("cuda") and not cuda:
        raise UsageError(f"--device {device}: no CUDA device is available", hint="use --device cpu")
    if device == "cpu" or not cuda:
        return torch.device("cpu")
    try:
        chosen = torch.device("cuda" if device == "auto" else device)
    except RuntimeError:
        raise UsageError(f"unknown device {device!r}",
                         hint="use auto, cpu, cuda or cuda:N") from None
    count = torch.cuda.device_count()
    if chosen.index is not None and chosen.index >= count:
        raise UsageError(f"--device {device}: this machine has {count} CUDA device(s)",
                         hint=f"use cuda:0 .. cuda:{count - 1}")
    return chosen


# Bytes a weight takes while training: float32 weights, gradients and Adam's two moments
# (activations come on top, so this is the least a model needs).
TRAINING_BYTES_PER_WEIGHT = 16


def check_fits(weights: int, device: torch.device) -> None:
    """Refuse a model whose training state alone is larger than the device's memory, before
    an old run is cleared (--force) or anything is built: a typo like --dim 16384 would
    otherwise end in an allocation traceback, or in the kernel's OOM killer."""
    needed = weights * TRAINING_BYTES_PER_WEIGHT
    try:
        if device.type == "cuda":
            total = torch.cuda.get_device_properties(device.index or 0).total_memory
        else:
            total = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    except (AttributeError, ValueError, OSError, RuntimeError):  # unknown: let it try
        return
    if needed > total:
        raise UsageError(f"a model of {weights:,} weights needs at least {needed / 2**30:,.1f} "
                         f"GiB to train (weights, gradients, Adam state), more than the "
                         f"{total / 2**30:,.1f} GiB of the {device.type.upper()} memory",
                         hint="choose a smaller --dim, --depth, --heads or --preset")


def setup_runtime(device: str = "auto") -> Runtime:
    """The runtime for `device` ("auto", "cpu", "cuda", "cuda:N"), joining a torchrun job
    when the environment says so (RANK, WORLD_SIZE, LOCAL_RANK)."""
    chosen = pick_device(device)
    if int(os.environ.get("WORLD_SIZE", "1")) > 1:
        return _distributed(use_cuda=chosen.type == "cuda")
    if chosen.type == "cpu":
        return Runtime(chosen)
    gpus = torch.cuda.device_count() if chosen.index is None else 1
    return Runtime(torch.device("cuda", chosen.index or 0), gpus=max(gpus, 1))


def _distributed(*, use_cuda: bool) -> Runtime:
    import torch.distributed as dist

    rank, world = int(os.environ["RANK"]), int(os.environ["WORLD_SIZE"])
    local = int(os.environ.get("LOCAL_RANK", rank))
    if use_cuda:
        torch.cuda.set_device(local)
        device = torch.device("cuda", local)
    else:
        device = torch.device("cpu")
    owns = not dist.is_initialized()
    if owns:
        dist.init_process_group("nccl" if use_cuda else "gloo")
    return Runtime(device, rank=rank, world=world, owns_group=owns)


def wrap_model(module: nn.Module, runtime: Runtime, *, compile: bool = False) -> nn.Module:
    """`module` compiled (optionally) and wrapped for DataParallel or DistributedDataParallel."""
    module = module.to(runtime.device)
    if compile:
        module = torch.compile(module)
    if runtime.world > 1:
        from torch.nn.parallel import DistributedDataParallel

        ids = [runtime.device.index] if runtime.device.type == "cuda" else None
        return DistributedDataParallel(module, device_ids=ids)
    if runtime.gpus > 1:
        return nn.DataParallel(module)
    return module


class StopOnCtrlC:
    """While training, Ctrl-C asks the loop to save and stop after the current step;
    a second Ctrl-C interrupts at once."""

    def __init__(self, trainer) -> None:  # anything with a `stop_requested` flag
        self.trainer = trainer
        self.active = threading.current_thread() is threading.main_thread()

    def __enter__(self):
        if self.active:
            self.previous = signal.signal(signal.SIGINT, self._handle)
        return self

    def _handle(self, signum, frame) -> None:
        if self.trainer.stop_requested:
            raise KeyboardInterrupt
        self.trainer.stop_requested = True

    def __exit__(self, *exc) -> None:
        if self.active:
            signal.signal(signal.SIGINT, self.previous)
