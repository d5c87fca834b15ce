"""The network: a decoder-only transformer over banger tokens (x-transformers).

Built from x-transformers: `TransformerWrapper` around a causal `Decoder` with rotary
position embeddings (no absolute positions), so cached generation can run past the
training window. Attention goes through `F.scaled_dot_product_attention` (flash kernels
on CUDA). Importing this module imports torch: training, scoring and `Banger.model` use it;
generation does not (model/decoder.py). Its configuration is model/config.py (re-exported
here for the code that builds networks).
"""

from __future__ import annotations

from contextlib import nullcontext

import torch
from torch import nn
from torch.nn import functional as F

from ..midi.tokenizer import Tokenizer
from .config import (  # noqa: F401 (re-exported: the config of the network built here)
    BUFFERS, LIMITS, MODEL_ARCHITECTURE, PRESETS, ModelConfig, check_weights, model_config,
    rotary_dims, weight_shapes,
)


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
            rotary_emb_dim=rotary_dims(config),
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
