"""The front door: `load_model` once, then `Banger.generate` as often as you like.

    from bangercli import load_model
    banger = load_model("default")
    for piece in banger.generate(instruments=["guitar"], drums=True, bars=16, seed=1):
        piece.midi.save(f"guitar-{piece.seed}.mid")

Everything a script, the command line or the web page does goes through here: the options
of `Banger.generate` are the fields of `generation.Request` (validated there, once), and
writing files is `generation.save.save_pieces`. Loading a model and generating need numpy
only; torch (and x-transformers) are imported when something asks for the network:
`Banger.model`, `logits`, `to`, `device`, scoring.
"""

from __future__ import annotations

import math
import os
import sys
from pathlib import Path
from typing import TYPE_CHECKING

import numpy as np

from .errors import BangerError, UsageError
from .generation.generate import Piece, generate
from .generation.request import Request
from .midi.tokenizer import Tokenizer, TokenizerConfig
from .model.checkpoint import SUFFIX, read_weights
from .model.config import BUFFERS, ModelConfig, check_weights
from .model.decoder import FastDecoder, UnsupportedModel
from .paths import package_models_dir, user_models_dir

if TYPE_CHECKING:
    import torch
    from torch import nn

__all__ = ["Banger", "Piece", "Request", "load_model"]


def build_model(config: ModelConfig) -> nn.Module:
    """The x-transformers network for `config` (imports torch and x-transformers)."""
    from .model.network import build_model as build

    return build(config)


class Banger:
    """A loaded model and its tokenizer: load once with `load_model`, use many times.

    Generation runs `decoder`, a lean cached decoder in numpy built straight from the
    checkpoint's arrays on the CPU (model/decoder.py): it needs neither torch nor
    x-transformers. `model` is the x-transformers network (scoring, `logits`, evaluation),
    built from the same arrays the first time it is asked for.
    """

    def __init__(self, model: nn.Module | None, tokenizer: Tokenizer, config: ModelConfig, *,
                 weights: dict[str, np.ndarray] | None = None, info: dict | None = None,
                 path: str | None = None, device: str | torch.device = "cpu") -> None:
        if model is None and weights is None:
            raise TypeError("Banger needs a model or its weights")
        self._model = model.eval() if model is not None else None
        self._weights = weights
        self._device = device  # where `model` is built: "cpu" needs no torch to say so
        self.tokenizer = tokenizer
        self.config = config
        self.info = dict(info or {})  # training info: step, epoch, best validation loss, data hash
        self.path = path  # the checkpoint it came from, if any
        self._decoder: FastDecoder | None = None

    @property
    def model(self) -> nn.Module:
        """The x-transformers network (float32, eval mode), built on first use."""
        if self._model is None:
            import torch

            model = build_model(self.config)
            model.load_state_dict({name: torch.from_numpy(np.asarray(array))
                                   for name, array in self._weights.items()}, strict=True)
            self._model = model.to(self.device).eval()
            self._weights = None  # the network holds them now (one copy in memory)
        return self._model

    @property
    def decoder(self) -> FastDecoder:
        """The cached decoder generation runs (built once, from the weights as they are then)."""
        if self._decoder is None:
            try:
                if self._model is not None:
                    self._decoder = FastDecoder.from_model(self._model, self.config)
                else:
                    self._decoder = FastDecoder(self._weights, self.config)
            except UnsupportedModel as err:
                raise BangerError(f"cannot generate with this checkpoint: {err}",
                                  hint="it was not made by `banger train`") from None
        return self._decoder

    @property
    def device(self) -> torch.device:
        """Where `model` lives (or will be built): a torch.device (imports torch)."""
        import torch

        if self._model is None:
            return torch.device(self._device)
        return next(self._model.parameters()).device

    @property
    def num_parameters(self) -> int:
        if self._model is not None:
            return sum(p.numel() for p in self._model.parameters())
        return sum(math.prod(np.shape(array)) for name, array in self._weights.items()
                   if name not in BUFFERS)

    def to(self, device: str | torch.device) -> "Banger":
        import torch

        self._device = torch.device(device)
        if self._model is not None:
            self._model.to(self._device)
        return self

    def logits(self, ids) -> torch.Tensor:
        """Next-token logits (float32, on CPU) for a sequence or a batch of sequences of ids."""
        import torch

        with torch.inference_mode():
            inputs = torch.as_tensor(ids, dtype=torch.long, device=self.device)
            squeeze = inputs.dim() == 1
            if squeeze:
                inputs = inputs.unsqueeze(0)
            logits = self.model(inputs).float().cpu()
        return logits[0] if squeeze else logits

    def generate(self, request: Request | None = None, *, progress=None, finished=None,
                 **options) -> list[Piece]:
        """Generate pieces in memory: pass a `Request`, or its fields as keyword arguments
        (instruments, only, drums, bars, tokens, variants, seed, bpm, prompt, prompt_bars,
        temperature, top_p, top_k, steer, echo). Each `Piece` has `.notes`, `.ids` and `.midi`
        (a mido.MidiFile: `.midi.save(path)`). A bad option raises `UsageError`.
        `finished(n, piece)` is called for each piece as soon as it is complete."""
        if request is None:
            request = Request(**options)
        elif options:
            raise TypeError("pass either a Request or keyword options, not both")
        return generate(self, request, progress=progress, finished=finished)

    def __repr__(self) -> str:
        c = self.config
        return (f"Banger(dim={c.dim}, depth={c.depth}, heads={c.heads}, "
                f"parameters={self.num_parameters:,}, path={self.path!r})")


def load_model(name_or_path: str | os.PathLike = "default", *, device: str = "cpu") -> Banger:
    """Load a model once (a checkpoint path or a model name) to use many times. `device` is
    "cpu" (default), "auto" (CUDA when present), "cuda" or "cuda:N"; generation itself
    always runs on the CPU's cached decoder, the device serves `logits` and scoring (any
    device but "cpu" is looked up in torch)."""
    torch = sys.modules.get("torch")  # a torch.device can only come from a loaded torch
    if not (isinstance(device, str) or torch is not None and isinstance(device, torch.device)):
        raise UsageError(f"device must be a string such as 'cpu' or 'cuda', got {device!r}")
    if isinstance(device, str) and device != "cpu":
        from .training.devices import pick_device

        device = pick_device(device)
    return load_checkpoint(resolve_model(name_or_path), device=device)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Banger:
    """Model weights (float32 numpy arrays; the network is built on `device` when first asked
    for) and tokenizer from one checkpoint file."""
    tensors, meta = read_weights(path)
    try:  # every size is checked against the file's tensors before anything is built
        config = ModelConfig.from_dict(meta["model_config"])
        tokenizer = Tokenizer(TokenizerConfig.from_dict(meta["tokenizer"]))
        if tokenizer.vocab_size != config.vocab_size:
            raise BangerError(f"model vocabulary ({config.vocab_size}) does not match its "
                              f"tokenizer ({tokenizer.vocab_size})")
        check_weights(config, {name: tuple(t.shape) for name, t in tensors.items()})
    except BangerError as err:  # UsageError included: the file is at fault, not the user
        raise BangerError(f"{path}: {err.message}",
                          hint="pass a .safetensors checkpoint written by `banger train`") from None
    return Banger(None, tokenizer, config, weights=tensors, info=meta["training"],
                  path=str(path), device=device)


def resolve_model(name_or_path: str | os.PathLike) -> Path:
    """A checkpoint path, or a model name looked up in the package and then the user directory."""
    candidate = Path(name_or_path).expanduser()
    if candidate.is_file():
        return candidate
    name = str(name_or_path)
    looks_like_path = os.sep in name or "/" in name or name.endswith(SUFFIX) or candidate.is_dir()
    if looks_like_path:
        raise BangerError(f"no checkpoint file at {name}", hint="pass a .safetensors file")
    for folder in (package_models_dir(), user_models_dir()):
        path = folder / f"{name}{SUFFIX}"
        if path.is_file():
            return path
    if name == "default":
        raise BangerError("the default model is missing from this installation",
                          hint="reinstall banger, or pass a checkpoint path with --model")
    raise BangerError(
        f"unknown model {name!r}",
        hint=f"pass a checkpoint path, or put {name}{SUFFIX} in {user_models_dir()}",
    )
