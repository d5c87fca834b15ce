"""The model's configuration and the weights it implies, without torch.

`ModelConfig` travels in every checkpoint; `weight_shapes` names every tensor of the network
`build_model(config)` would build (model/network.py), so a checkpoint is checked, and the
cached decoder built, without importing torch or x-transformers.
"""

from __future__ import annotations

import math
from dataclasses import asdict, dataclass, fields, replace

from ..errors import BangerError, UsageError

MODEL_ARCHITECTURE = "x-transformers-decoder-rotary"  # stored in checkpoints; bump on change
BUFFERS = ("attn_layers.rotary_pos_emb.inv_freq",)  # computed, not learned: kept float32 in files


# Ceilings on each size field: far above anything trained, low enough that a typo or a
# tampered checkpoint cannot ask for a model that fills the memory.
LIMITS = {"vocab_size": 1 << 20, "seq_len": 1 << 20, "dim": 16_384, "depth": 1_024,
          "heads": 1_024, "dim_head": 1_024, "ff_mult": 64}


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
        for name, ceiling in LIMITS.items():
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool):
                raise UsageError(f"model {name} must be a whole number, got {value!r}")
            if value < 1:
                raise UsageError(f"model {name} must be >= 1, got {value}")
            if value > ceiling:
                raise UsageError(f"model {name} must be at most {ceiling}, got {value}")
        if (not isinstance(self.dropout, (int, float)) or isinstance(self.dropout, bool)
                or not 0.0 <= self.dropout < 1.0):
            raise UsageError(f"model dropout must be in [0, 1), got {self.dropout!r}")
        if not isinstance(self.flash, bool):
            raise UsageError(f"model flash must be true or false, got {self.flash!r}")
        return self

    def weight_count(self) -> int:
        """The number of weights this config implies (embeddings, attention, feed-forward,
        norms), computed without building anything."""
        inner = self.heads * self.dim_head
        attention = 4 * self.dim * inner + self.dim
        hidden = self.ff_mult * self.dim
        feed_forward = 2 * self.dim * hidden + hidden + self.dim + self.dim
        return 2 * self.vocab_size * self.dim + self.depth * (attention + feed_forward) + self.dim

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        if not isinstance(data, dict):
            raise BangerError(f"the model config is not a JSON object: {data!r:.60}")
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


def rotary_dims(config: ModelConfig) -> int:
    """How many dims of each head are rotated (x-transformers rotates half by default; at
    least 32 are kept)."""
    return min(config.dim_head, max(32, config.dim_head // 2))


def weight_shapes(config: ModelConfig) -> dict[str, tuple[int, ...]]:
    """The name and shape of every tensor `build_model(config)` holds, without building it
    (or importing x-transformers): what a checkpoint must contain. The tests compare it with
    a built model's state dict for every preset."""
    dim, inner, hidden = config.dim, config.heads * config.dim_head, config.ff_mult * config.dim
    shapes = {"token_emb.emb.weight": (config.vocab_size, dim),
              "attn_layers.rotary_pos_emb.inv_freq": (rotary_dims(config) // 2,)}
    for layer in range(config.depth):
        a, f = f"attn_layers.layers.{2 * layer}", f"attn_layers.layers.{2 * layer + 1}"
        shapes.update({f"{a}.0.0.gamma": (dim,), f"{a}.1.to_q.weight": (inner, dim),
                       f"{a}.1.to_k.weight": (inner, dim), f"{a}.1.to_v.weight": (inner, dim),
                       f"{a}.1.to_out.weight": (dim, inner), f"{f}.0.0.gamma": (dim,),
                       f"{f}.1.ff.0.0.weight": (hidden, dim), f"{f}.1.ff.0.0.bias": (hidden,),
                       f"{f}.1.ff.2.weight": (dim, hidden), f"{f}.1.ff.2.bias": (dim,)})
    shapes["attn_layers.final_norm.gamma"] = (dim,)
    shapes["to_logits.weight"] = (config.vocab_size, dim)
    return shapes


def check_weights(config: ModelConfig, shapes: dict[str, tuple[int, ...]]) -> None:
    """Refuse, before anything is allocated, weights whose names or shapes are not the ones
    `config` implies (a tampered or mislabelled checkpoint): first by size (so that a config
    asking for a million layers is refused without listing them), then name by name."""
    held = sum(math.prod(shape) for shape in shapes.values())
    implied = config.weight_count()
    if implied > 2 * held + 1_000_000:
        raise BangerError(f"the model config implies {implied:,} weights but the file holds "
                          f"{held:,}: it does not describe these weights")
    expected = weight_shapes(config)
    missing = sorted(set(expected) - set(shapes))
    unexpected = sorted(set(shapes) - set(expected))
    if missing or unexpected:
        name = (missing or unexpected)[0]
        what = "is missing" if missing else "is not part of the model"
        raise BangerError(f"weights do not match the model config ({name} {what}; "
                          f"{len(missing)} missing, {len(unexpected)} unexpected)")
    for name, shape in expected.items():
        if tuple(shapes[name]) != shape:
            raise BangerError(f"weights do not match the model config ({name} has shape "
                              f"{list(shapes[name])}, the config implies {list(shape)})")
