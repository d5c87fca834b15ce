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

from ..errors import BangerError, UsageError
from ..midi.tokenizer import Tokenizer

MODEL_ARCHITECTURE = "x-transformers-decoder-rotary"  # stored in checkpoints; bump on change
BUFFERS = ("attn_layers.rotary_pos_emb.inv_freq",)  # computed, not learned: kept float32 in files


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
