"""A lean key/value-cached decoder over the weights of banger's x-transformers model.

Generation on a laptop CPU is dominated by per-operation overhead, not arithmetic, so this
module re-expresses the model in as few, as large operations as it can: the layer norms'
gains are folded into the next projection, q, k and v come from one matmul, rotary
embeddings are one gather and two multiply-adds, attention is one fused call. The cache
is preallocated; sequences of different lengths are left-padded and their pad keys masked,
which (with rotary, i.e. relative, positions) is exactly equivalent to running them alone.
`tests/test_fastdecode.py` checks its logits against the x-transformers forward pass.
"""

from __future__ import annotations

import torch
from torch import nn
from torch.nn import functional as F

from .network import ModelConfig


class UnsupportedModel(Exception):
    """The weights do not have the layout this decoder was written for."""


class FastDecoder:
    """Holds fused weights and a KV cache; `prefill` then `step` give next-token logits."""

    def __init__(self, model: nn.Module, config: ModelConfig) -> None:
        state = {k: v.detach().float().cpu() for k, v in model.state_dict().items()}  # decodes on CPU
        # x-transformers' LayerNorm multiplies by (gamma + 1) when built with unit_offset
        for name, module in model.named_modules():
            if hasattr(module, "gamma") and getattr(module, "unit_offset", False):
                state[f"{name}.gamma"] = state[f"{name}.gamma"] + 1.0
        self.heads, self.dim_head, self.depth = config.heads, config.dim_head, config.depth
        inner = self.heads * self.dim_head
        try:
            self.embedding = state["token_emb.emb.weight"].contiguous()
            inv_freq = state["attn_layers.rotary_pos_emb.inv_freq"]
            self.layers = []
            for layer in range(config.depth):
                a, f = f"attn_layers.layers.{2 * layer}", f"attn_layers.layers.{2 * layer + 1}"
                gain = state[f"{a}.0.0.gamma"]
                qkv = torch.cat([state[f"{a}.1.to_{n}.weight"] for n in "qkv"], dim=0) * gain
                ff_gain = state[f"{f}.0.0.gamma"]
                self.layers.append((
                    qkv.t().contiguous(),
                    state[f"{a}.1.to_out.weight"].t().contiguous(),
                    (state[f"{f}.1.ff.0.0.weight"] * ff_gain).t().contiguous(),
                    state[f"{f}.1.ff.0.0.bias"],
                    state[f"{f}.1.ff.2.weight"].t().contiguous(),
                    state[f"{f}.1.ff.2.bias"],
                ))
            final_gain = state["attn_layers.final_norm.gamma"]
            self.to_logits = (state["to_logits.weight"] * final_gain).t().contiguous()
            expected = 1 + 10 * config.depth + 2 + 1
            if len(state) != expected or qkv.shape[0] != 3 * inner:
                raise UnsupportedModel(f"unexpected weights: {len(state)} tensors")
        except KeyError as missing:
            raise UnsupportedModel(f"missing weight {missing}") from None
        self.rot_dim = 2 * inv_freq.numel()
        self.inv_freq = inv_freq
        self.scale = self.dim_head ** -0.5
        # rotate_half on interleaved pairs (x0, x1) -> (-x1, x0) as one gather and a sign
        half = torch.arange(self.rot_dim).view(-1, 2)
        self.swap = torch.cat([half.flip(-1).reshape(-1), torch.arange(self.rot_dim, self.dim_head)])
        sign = torch.ones(self.dim_head)
        sign[0 : self.rot_dim : 2] = -1.0
        sign[self.rot_dim :] = 0.0
        self.sign = sign
        self.cache_k: list[torch.Tensor] = []
        self.cache_v: list[torch.Tensor] = []
        self.valid = torch.zeros(0, 0, dtype=torch.bool)
        self.length = 0

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and signed sin tables (len, dim_head); unrotated dims get cos 1, sin 0."""
        freqs = positions.float()[:, None] * self.inv_freq.repeat_interleave(2)[None, :]
        cos = torch.ones(len(positions), self.dim_head)
        sin = torch.zeros(len(positions), self.dim_head)
        cos[:, : self.rot_dim] = freqs.cos()
        sin[:, : self.rot_dim] = freqs.sin()
        return cos, sin * self.sign

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor, capacity: int) -> torch.Tensor:
        """Start sequences (batch, T) left-padded (`valid` False on pads); reserve room for
        `capacity` positions in all. Returns logits (batch, vocab) after the last position."""
        batch, length = ids.shape
        capacity = max(capacity, length)
        shape = (batch, self.heads, capacity, self.dim_head)
        self.cache_k = [torch.zeros(shape) for _ in range(self.depth)]
        self.cache_v = [torch.zeros(shape) for _ in range(self.depth)]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool)
        self.valid[:, :length] = valid
        self.length = 0
        # rotary tables for every position this cache can hold, computed once per prefill
        self.cos, self.sin = self._rotary(torch.arange(capacity))
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = causal[None] & valid[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool)[None]  # pad rows attend to themselves: no NaN
        return self._forward(ids, mask[:, None])

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence (batch,); returns logits (batch, vocab)."""
        if self.length >= self.valid.shape[1]:
            raise RuntimeError("KV cache is full; prefill with a larger capacity")
        self.valid[:, self.length] = True
        mask = self.valid[:, None, None, : self.length + 1]
        return self._forward(token[:, None], mask)

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        batch, length = ids.shape
        start, stop = self.length, self.length + length
        heads, dim_head = self.heads, self.dim_head
        cos, sin = self.cos[start:stop], self.sin[start:stop]
        x = F.embedding(ids, self.embedding)
        for i, (qkv_w, out_w, ff1_w, ff1_b, ff2_w, ff2_b) in enumerate(self.layers):
            h = F.layer_norm(x, x.shape[-1:])
            qkv = (h @ qkv_w).view(batch, length, 3 * heads, dim_head).transpose(1, 2)
            qk = qkv[:, : 2 * heads]
            qk = qk * cos + qk[..., self.swap] * sin
            q, k = qk[:, :heads], qk[:, heads:]
            self.cache_k[i][:, :, start:stop] = k
            self.cache_v[i][:, :, start:stop] = qkv[:, 2 * heads :]
            attended = F.scaled_dot_product_attention(
                q, self.cache_k[i][:, :, :stop], self.cache_v[i][:, :, :stop], attn_mask=mask,
                scale=self.scale,
            )
            x = x + attended.transpose(1, 2).reshape(batch, length, heads * dim_head) @ out_w
            h = F.layer_norm(x, x.shape[-1:])
            x = x + torch.addmm(ff2_b, F.gelu(torch.addmm(ff1_b, h.view(-1, h.shape[-1]), ff1_w)),
                                ff2_w).view_as(x)
        self.length = stop
        h = F.layer_norm(x[:, -1], x.shape[-1:])
        return h @ self.to_logits
