"""Checkpoints: one self-describing, safe file per model, plus the optimizer state for resuming.

A checkpoint is a safetensors file (``.safetensors``): the weights, and JSON metadata with
the format version, the model config, the tokenizer config and training info (see
docs/checkpoint-format.md). Loading never unpickles anything, so a hostile file cannot run
code; it rebuilds model and tokenizer from the file alone. Every write goes to a temporary
file beside the target and is renamed over it, so a killed process never leaves half a file.
Reading weights for generation (`read_weights`) needs numpy only; writing, and reading them
as torch tensors (training), import torch.
"""

from __future__ import annotations

import io
import json
import os
import re
import struct
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .. import __version__
from ..atomic_files import atomic_write
from ..errors import BangerError
from .config import BUFFERS, MODEL_ARCHITECTURE, ModelConfig
from ..midi.tokenizer import TokenizerConfig

if TYPE_CHECKING:
    import torch
    from torch import nn

CHECKPOINT_FORMAT = "banger-checkpoint"
CHECKPOINT_VERSION = 1  # bump on any change to the layout below; old files are refused
SUFFIX = ".safetensors"
DTYPES = ("float32", "float16", "bfloat16")  # torch's names for the weights' types in a file


def bare_model(model: nn.Module) -> nn.Module:
    """The transformer inside DataParallel / DistributedDataParallel / torch.compile wrappers."""
    while True:
        inner = getattr(model, "module", None) or getattr(model, "_orig_mod", None)
        if inner is None:
            return model
        model = inner


def save_checkpoint(
    path: str | os.PathLike,
    model: nn.Module,
    *,
    config: ModelConfig,
    tokenizer_config: TokenizerConfig,
    info: dict | None = None,
    dtype: str = "float32",
) -> Path:
    """Write `model` with its configs and training `info` (JSON-able) to `path` atomically.
    `dtype="float16"` halves the file for shipping; loading upcasts to float32."""
    model = bare_model(model)
    buffers = {name for name, _ in model.named_buffers()}
    tensors = {name: tensor.detach() for name, tensor in model.state_dict().items()}
    return write_checkpoint(path, tensors, config=config, tokenizer_config=tokenizer_config,
                            info=info, dtype=dtype, keep=buffers)


def write_checkpoint(
    path: str | os.PathLike,
    tensors: dict[str, torch.Tensor],
    *,
    config: ModelConfig,
    tokenizer_config: TokenizerConfig,
    info: dict | None = None,
    dtype: str = "float32",
    keep: set[str] = frozenset(),
) -> Path:
    """Write named weights (floating ones cast to `dtype`, except those named in `keep`,
    the buffers) with their configs and training `info` to `path` atomically."""
    import torch
    from safetensors import SafetensorError
    from safetensors.torch import save_file

    if dtype not in DTYPES:
        raise BangerError(f"unknown dtype {dtype!r}", hint=f"choose one of: {', '.join(DTYPES)}")
    tensors = {
        name: (tensor.to(getattr(torch, dtype)) if tensor.is_floating_point() and name not in keep
               else tensor).contiguous().cpu()
        for name, tensor in tensors.items()
    }
    metadata = {
        "format": CHECKPOINT_FORMAT,
        "format_version": str(CHECKPOINT_VERSION),
        "architecture": MODEL_ARCHITECTURE,
        "banger_version": __version__,
        "dtype": dtype,
        "model_config": json.dumps(config.to_dict()),
        "tokenizer": json.dumps(tokenizer_config.to_dict()),
        "training": json.dumps(info or {}),
    }

    def write(temporary: Path) -> None:
        try:
            save_file(tensors, str(temporary), metadata=metadata)
        except SafetensorError as err:  # a full disk arrives as "I/O error: ... (os error 28)"
            found = re.search(r"\(os error (\d+)\)", str(err))
            if found is None:  # not the system refusing a write: a bug, keep its traceback
                raise
            code = int(found.group(1))
            raise OSError(code, os.strerror(code)) from None

    return atomic_write(path, write)


def read_checkpoint(path: str | os.PathLike) -> tuple[dict[str, torch.Tensor], dict]:
    """The tensors (torch, as stored) and parsed metadata of a checkpoint, or a BangerError
    saying what is wrong. Reads only safetensors (a JSON header and raw bytes): nothing is
    unpickled."""
    return _read(path, framework="pt")


def read_weights(path: str | os.PathLike) -> tuple[dict[str, np.ndarray], dict]:
    """What `read_checkpoint` reads, as numpy arrays with floating ones in float32 (the
    weights generation runs on), without importing torch."""
    tensors, meta = _read(path, framework="np")
    return {name: array.astype(np.float32, copy=False) if array.dtype.kind == "f" else array
            for name, array in tensors.items()}, meta


def _read(path: str | os.PathLike, *, framework: str) -> tuple[dict, dict]:
    from safetensors import SafetensorError, safe_open

    path = Path(path)
    hint = "pass a .safetensors checkpoint written by `banger train`"
    try:
        with safe_open(str(path), framework=framework, device="cpu") as handle:
            raw = handle.metadata() or {}
            names = list(handle.keys())
            # numpy has no bfloat16: those are read from the (validated) file below
            late = [name for name in names if framework == "np"
                    and handle.get_slice(name).get_dtype() == "BF16"]
            tensors = {name: handle.get_tensor(name) for name in names if name not in late}
        if late:
            tensors.update(_bfloat16_as_float32(path, late))
    except FileNotFoundError:
        raise BangerError(f"checkpoint {path} does not exist", hint=hint) from None
    except (SafetensorError, OSError, ValueError, RuntimeError) as err:
        raise BangerError(
            f"{path} is not a readable banger checkpoint "
            f"(truncated, corrupt or another format: {err})",
            hint=hint,
        ) from None
    if raw.get("format") != CHECKPOINT_FORMAT:
        raise BangerError(f"{path} is not a banger checkpoint (no banger metadata)", hint=hint)
    if raw.get("format_version") != str(CHECKPOINT_VERSION):
        raise BangerError(
            f"{path} has checkpoint format version {raw.get('format_version')!r}, "
            f"this banger reads version {CHECKPOINT_VERSION}",
            hint="use the banger version that wrote it, or upgrade banger",
        )
    if raw.get("architecture") != MODEL_ARCHITECTURE:
        raise BangerError(f"{path} holds an unknown architecture {raw.get('architecture')!r}")
    try:
        meta = {key: raw[key] for key in ("format", "format_version", "architecture", "dtype")}
        meta["banger_version"] = raw.get("banger_version")
        for key in ("model_config", "tokenizer", "training"):
            meta[key] = json.loads(raw[key])
    except (KeyError, ValueError) as err:
        raise BangerError(f"{path} has broken metadata ({err})", hint=hint) from None
    return tensors, meta


def _bfloat16_as_float32(path: Path, names: list[str]) -> dict[str, np.ndarray]:
    """bfloat16 tensors of a file safetensors has already validated, as float32 (a bfloat16
    is the top half of a float32)."""
    with open(path, "rb") as file:
        size = struct.unpack("<Q", file.read(8))[0]
        header = json.loads(file.read(size))
        arrays = {}
        for name in names:
            begin, end = header[name]["data_offsets"]
            file.seek(8 + size + begin)
            half = np.frombuffer(file.read(end - begin), dtype="<u2")
            arrays[name] = (half.astype(np.uint32) << 16).view(np.float32).reshape(
                header[name]["shape"])
    return arrays


def check_tokenizer(checkpoint_tokenizer: dict, data_tokenizer: dict, *, where: str) -> None:
    """Refuse a model whose tokenizer differs from the data's: its ids would mean other things."""
    if checkpoint_tokenizer != data_tokenizer:
        changed = sorted(
            key
            for key in set(checkpoint_tokenizer) | set(data_tokenizer)
            if checkpoint_tokenizer.get(key) != data_tokenizer.get(key)
        )
        raise BangerError(
            f"the model's tokenizer differs from the data's in {where} ({', '.join(changed)})",
            hint="re-run `banger preprocess` with this model's tokenizer, or use a matching model",
        )


def convert_checkpoint(source: str | os.PathLike, target: str | os.PathLike, *, dtype: str) -> Path:
    """Rewrite a checkpoint with weights in `dtype` (e.g. float16 for shipping)."""
    tensors, meta = read_checkpoint(source)
    return write_checkpoint(
        target, tensors, config=ModelConfig.from_dict(meta["model_config"]),
        tokenizer_config=TokenizerConfig.from_dict(meta["tokenizer"]), info=meta["training"],
        dtype=dtype, keep=set(BUFFERS),
    )


def save_training_state(path: str | os.PathLike, state: dict) -> Path:
    """Optimizer state and counters for --resume (tensors, numbers and strings only).
    Serialised in memory first: torch's own file writer reports a full disk without its cause."""
    import torch

    buffer = io.BytesIO()
    torch.save(state, buffer)
    return atomic_write(path, lambda temporary: temporary.write_bytes(buffer.getbuffer()))


def load_training_state(path: str | os.PathLike) -> dict:
    """Read what `save_training_state` wrote, with ``weights_only=True`` (no arbitrary objects)."""
    import torch

    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except FileNotFoundError:
        raise BangerError(
            f"{path} is missing: cannot resume", hint="start again with --force"
        ) from None
    except Exception as err:  # noqa: BLE001 - any unpickling refusal or corruption
        raise BangerError(f"{path} is unreadable ({type(err).__name__})",
                          hint="start again with --force") from None
