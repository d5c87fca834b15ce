"""The model: a decoder-only transformer over banger tokens, and its configuration.

Built from x-transformers: `TransformerWrapper` around a causal `Decoder` with rotary
position embeddings (no absolute positions), so cached generation can run past the
training window. Attention goes through `F.scaled_dot_product_attention` (flash kernels
on CUDA). Importing this module imports torch: the CLI imports it inside commands only.
"""

from __future__ import annotations

from contextlib import nullcontext
from dataclasses import asdict, dataclass, fields, replace

import torch
from torch import nn
from torch.nn import functional as F

from .errors import BangerError, UsageError
from .tokenizer import Tokenizer

MODEL_ARCHITECTURE = "x-transformers-decoder-rotary"  # stored in checkpoints; bump on change


@dataclass(frozen=True)
class ModelConfig:
    vocab_size: int = 2832  # tokens the model reads and writes; must equal the tokenizer's
    seq_len: int = 512  # training window in tokens (rotary positions let generation go past it)
    dim: int = 512  # width of the residual stream
    depth: int = 12  # number of transformer blocks
    heads: int = 10  # attention heads per block
    dim_head: int = 64  # width of each head; heads * dim_head need not equal dim (10 * 64 = 640)
    ff_mult: int = 4  # feed-forward hidden width = ff_mult * dim
    dropout: float = 0.0  # dropout in attention and feed-forward layers while training
    flash: bool = True  # fused scaled-dot-product attention (flash kernels on CUDA)

    def validate(self) -> "ModelConfig":
        for name in ("vocab_size", "seq_len", "dim", "depth", "heads", "dim_head", "ff_mult"):
            if getattr(self, name) < 1:
                raise UsageError(f"model {name} must be >= 1, got {getattr(self, name)}")
        if not 0.0 <= self.dropout < 1.0:
            raise UsageError(f"model dropout must be in [0, 1), got {self.dropout}")
        return self

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        known = {f.name for f in fields(cls)}
        unknown = set(data) - known
        if unknown:
            raise BangerError(
                f"unknown model config fields {sorted(unknown)}",
                hint="this checkpoint was written by a newer banger; upgrade banger",
            )
        return cls(**data).validate()


# `seed` is the model `banger train` trains by default; `small` trains on a laptop CPU;
# `tiny` is for tests (a training step takes milliseconds).
PRESETS: dict[str, ModelConfig] = {
    "seed": ModelConfig(),
    "small": ModelConfig(seq_len=512, dim=256, depth=6, heads=4, dim_head=64),
    "tiny": ModelConfig(seq_len=128, dim=64, depth=2, heads=2, dim_head=32),
}


def model_config(preset: str = "seed", **overrides) -> ModelConfig:
    """A preset with some fields replaced; `None` overrides are ignored (unset CLI options)."""
    try:
        base = PRESETS[preset]
    except KeyError:
        raise UsageError(
            f"unknown preset {preset!r}", hint=f"choose one of: {', '.join(PRESETS)}"
        ) from None
    known = {f.name for f in fields(ModelConfig)}
    unknown = set(overrides) - known
    if unknown:
        raise UsageError(f"unknown model fields {sorted(unknown)}")
    return replace(base, **{k: v for k, v in overrides.items() if v is not None}).validate()


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised x-transformers `TransformerWrapper` for `config`."""
    from x_transformers import Decoder, TransformerWrapper

    return TransformerWrapper(
        num_tokens=config.vocab_size,
        max_seq_len=config.seq_len,
        use_abs_pos_emb=False,  # rotary only: no learned positions to run out of
        attn_layers=Decoder(
            dim=config.dim,
            depth=config.depth,
            heads=config.heads,
            attn_dim_head=config.dim_head,
            attn_flash=config.flash,
            attn_dropout=config.dropout,
            ff_mult=config.ff_mult,
            ff_dropout=config.dropout,
            rotary_pos_emb=True,
            # x-transformers rotates half of each head by default; keep at least 32 dims
            rotary_emb_dim=min(config.dim_head, max(32, config.dim_head // 2)),
        ),
    )


def count_parameters(model: nn.Module) -> int:
    return sum(p.numel() for p in model.parameters())


class NextTokenLoss(nn.Module):
    """Wraps the transformer so one forward returns ``[[sum of losses, correct, counted]]``.

    Returning three numbers instead of logits keeps DataParallel from gathering a
    (batch, seq, vocab) tensor on one GPU; PAD targets (id 0) are ignored.
    """

    def __init__(self, model: nn.Module) -> None:
        super().__init__()
        self.model = model

    def forward(self, inputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
        # bfloat16 autocast on CUDA is entered here, inside each DataParallel replica's thread:
        # DataParallel would otherwise re-enter autocast with its default dtype, float16.
        with torch.autocast("cuda", dtype=torch.bfloat16) if inputs.is_cuda else nullcontext():
            logits = self.model(inputs)
        flat_logits = logits.reshape(-1, logits.shape[-1]).float()
        flat_targets = targets.reshape(-1)
        loss = F.cross_entropy(
            flat_logits, flat_targets, ignore_index=Tokenizer.PAD, reduction="sum"
        )
        counted = flat_targets != Tokenizer.PAD
        correct = ((flat_logits.argmax(-1) == flat_targets) & counted).sum()
        return torch.stack([loss, correct.float(), counted.sum().float()]).unsqueeze(0)


class Banger:
    """A loaded model and its tokenizer: load once with `bangercli.load_model`, use many times."""

    def __init__(
        self,
        model: nn.Module,
        tokenizer: Tokenizer,
        config: ModelConfig,
        *,
        info: dict | None = None,
        path: str | None = None,
    ) -> None:
        self.model = model.eval()
        self.tokenizer = tokenizer
        self.config = config
        self.info = dict(info or {})  # training info: step, epoch, best validation loss, data hash
        self.path = path  # the checkpoint it came from, if any

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

    def generate(self, *, instruments=(), only: bool = False, drums: bool | None = None,
                 bars: int | None = 16, tokens: int | None = None, variants: int = 1,
                 seed: int = 0, bpm: float | None = None, prompt=None,
                 prompt_bars: int | None = None, temperature: float = 1.0, top_p: float = 0.95,
                 top_k: int = 0, steer: float = 3.0, progress=None) -> list:
        """Generate pieces in memory (see `bangercli.generate.Request` for the options);
        each `Piece` has `.notes`, `.midi` (a mido.MidiFile; `.midi.save(path)`), `.ids`."""
        from .generate import Request, generate
        from .sampling import Sampling

        if isinstance(instruments, str):
            instruments = (instruments,)
        request = Request(
            instruments=tuple(instruments), only=only, drums=drums,
            bars=None if tokens else bars, tokens=tokens, variants=variants, seed=seed, bpm=bpm,
            prompt=prompt, prompt_bars=prompt_bars, steer=steer,
            sampling=Sampling(temperature=temperature, top_p=top_p, top_k=top_k),
        )
        return generate(self, request, progress=progress)

    def __repr__(self) -> str:
        c = self.config
        return (
            f"Banger(dim={c.dim}, depth={c.depth}, heads={c.heads}, "
            f"parameters={self.num_parameters:,}, path={self.path!r})"
        )
