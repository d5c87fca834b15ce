"""The front door: `load_model` once, then `Banger.generate` as often as you like.

    from bangercli import load_model
    banger = load_model("default")
    for piece in banger.generate(instruments=["guitar"], drums=True, bars=16, seed=1):
        piece.midi.save(f"guitar-{piece.seed}.mid")

Everything a script, the command line or the web page does goes through here: the options
of `Banger.generate` are the fields of `generation.Request` (validated there, once), and
writing files is `generation.save.save_pieces`. Importing this module imports torch.
"""

from __future__ import annotations

import os
from pathlib import Path

import torch
from torch import nn

from .errors import BangerError
from .generation.generate import Piece, generate
from .generation.request import Request
from .midi.tokenizer import Tokenizer, TokenizerConfig
from .model.checkpoint import SUFFIX, read_checkpoint
from .model.decoder import FastDecoder, UnsupportedModel
from .model.network import ModelConfig, build_model, check_weights, count_parameters
from .paths import package_models_dir, user_models_dir

__all__ = ["Banger", "Piece", "Request", "load_model"]


class Banger:
    """A loaded model and its tokenizer: load once with `load_model`, use many times.

    `model` is the x-transformers network (training, scoring, `logits`). Generation does not
    run it: it runs `decoder`, a lean cached copy of the same weights on the CPU (see
    model/decoder.py), built on first use and kept for every later call.
    """

    def __init__(self, model: nn.Module, tokenizer: Tokenizer, config: ModelConfig, *,
                 info: dict | None = None, path: str | None = None) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.info = dict(info or {})  # training info: step, epoch, best validation loss, data hash
        self.path = path  # the checkpoint it came from, if any
        self._decoder: FastDecoder | None = None

    @property
    def decoder(self) -> FastDecoder:
        """The cached decoder generation runs (built once, from the weights as they are then)."""
        if self._decoder is None:
            try:
                self._decoder = FastDecoder(self.model, self.config)
            except UnsupportedModel as err:
                raise BangerError(f"cannot generate with this checkpoint: {err}",
                                  hint="it was not made by `banger train`") from None
        return self._decoder

    @property
    def device(self) -> torch.device:
        return next(self.model.parameters()).device

    @property
    def num_parameters(self) -> int:
        return count_parameters(self.model)

    def to(self, device: str | torch.device) -> "Banger":
        self.model.to(device)
        return self

    @torch.inference_mode()
    def logits(self, ids) -> torch.Tensor:
        """Next-token logits (float32, on CPU) for a sequence or a batch of sequences of ids."""
        inputs = torch.as_tensor(ids, dtype=torch.long, device=self.device)
        squeeze = inputs.dim() == 1
        if squeeze:
            inputs = inputs.unsqueeze(0)
        logits = self.model(inputs).float().cpu()
        return logits[0] if squeeze else logits

    def generate(self, request: Request | None = None, *, progress=None, **options) -> list[Piece]:
        """Generate pieces in memory: pass a `Request`, or its fields as keyword arguments
        (instruments, only, drums, bars, tokens, variants, seed, bpm, prompt, prompt_bars,
        temperature, top_p, top_k, steer). Each `Piece` has `.notes`, `.ids` and `.midi`
        (a mido.MidiFile: `.midi.save(path)`). A bad option raises `UsageError`."""
        if request is None:
            request = Request(**options)
        elif options:
            raise TypeError("pass either a Request or keyword options, not both")
        return generate(self, request, progress=progress)

    def __repr__(self) -> str:
        c = self.config
        return (f"Banger(dim={c.dim}, depth={c.depth}, heads={c.heads}, "
                f"parameters={self.num_parameters:,}, path={self.path!r})")


def load_model(name_or_path: str | os.PathLike = "default", *, device: str = "cpu") -> Banger:
    """Load a model once (a checkpoint path or a model name) to use many times."""
    if device == "auto":
        device = "cuda" if torch.cuda.is_available() else "cpu"
    return load_checkpoint(resolve_model(name_or_path), device=device)


def load_checkpoint(path: str | os.PathLike, *, device: str | torch.device = "cpu") -> Banger:
    """Rebuild model (float32, eval mode, on `device`) and tokenizer from one checkpoint file."""
    tensors, meta = read_checkpoint(path)
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
    model = build_model(config)
    tensors = {k: v.float() if v.is_floating_point() else v for k, v in tensors.items()}
    try:
        model.load_state_dict(tensors, strict=True)
    except RuntimeError as err:
        first = str(err).splitlines()[0]
        raise BangerError(f"{path}: weights do not match the model config ({first})") from None
    return Banger(model.to(device), tokenizer, config, info=meta["training"], path=str(path))


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
