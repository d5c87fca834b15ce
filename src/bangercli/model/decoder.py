"""A lean key/value-cached decoder, built straight from the weights of a banger checkpoint.

Generation on a laptop CPU is dominated by per-operation overhead, not arithmetic (the
default model has 2.9M weights), so this module re-expresses the network in as few, as large
operations as it can:

- the layer norms' gains are folded into the next projection, the attention scale into q;
- q, k, v and the rotary-rotated halves of q and k come from one matrix product (rotating
  an interleaved pair is a fixed signed permutation, so it folds into the weights too);
- the cache is preallocated; sequences of different lengths are left-padded and their pad
  keys masked, which (rotary positions are relative) equals running each alone;
- `prefill` runs in torch (one pass over many positions); `step`, one position per row, runs
  in numpy on views of the same cache: a numpy call costs about a microsecond, a torch call
  several, and a step is some fifty of them.

It needs no x-transformers: `FastDecoder(weights, config)` takes the checkpoint's tensors by
name, so `banger generate` never imports it. `tests/test_fastdecode.py` checks its logits
against the x-transformers forward pass, step by step.
"""

from __future__ import annotations

import threading
from contextlib import contextmanager

import numpy as np
import torch
from threadpoolctl import threadpool_limits
from torch.nn import functional as F

from .network import ModelConfig, weight_shapes

EPSILON = 1e-5  # torch.nn.LayerNorm's default, as x-transformers uses it


class UnsupportedModel(Exception):
    """The weights do not have the layout this decoder was written for."""


_thread = threading.local()  # per thread: torch threads for a prefill (torch's count is per thread)


@contextmanager
def one_thread():
    """Run torch and numpy's BLAS on one thread each inside the block. A decoding step is
    ~50 small operations: split across threads they cost more in hand-offs than they save,
    and BLAS threads spinning beside torch's made generation 6x slower on 2 cores (2.5x with
    one core busy elsewhere; docs/benchmarks.md). A prefill (large products over many
    positions, torch only) gets back the threads torch had before. torch's thread count
    belongs to the calling thread; the BLAS limit is set and restored around the block
    (generating in several threads at once is not what it was tuned for)."""
    before = torch.get_num_threads()
    outer = getattr(_thread, "prefill_threads", 0)
    torch.set_num_threads(1)
    _thread.prefill_threads = outer or before
    try:
        with threadpool_limits(1, user_api="blas"):
            yield
    finally:
        _thread.prefill_threads = outer
        torch.set_num_threads(before)


@contextmanager
def _prefill_threading():
    threads = torch.get_num_threads()
    wanted = getattr(_thread, "prefill_threads", 0) or threads
    if wanted != threads:
        torch.set_num_threads(wanted)
    try:
        yield
    finally:
        if wanted != threads:
            torch.set_num_threads(threads)


class FastDecoder:
    """Holds fused weights and a KV cache; `prefill` then `step` give next-token logits.

    `weights` are the network's tensors by their x-transformers names (as a checkpoint holds
    them). x-transformers' layer norms multiply by gamma + 1 (`unit_offset`, its default and
    the one `build_model` uses); pass `unit_offset=False` for norms that multiply by gamma.
    """

    def __init__(self, weights: dict[str, torch.Tensor], config: ModelConfig, *,
                 unit_offset: bool = True) -> None:
        expected = weight_shapes(config)
        if set(weights) != set(expected):
            odd = sorted(set(weights) ^ set(expected))
            raise UnsupportedModel(f"unexpected weights ({len(odd)} names differ, e.g. {odd[0]})")
        for name, shape in expected.items():
            if tuple(weights[name].shape) != shape:
                raise UnsupportedModel(f"{name} has shape {list(weights[name].shape)}, "
                                       f"expected {list(shape)}")
        w = {name: tensor.detach().float().cpu() for name, tensor in weights.items()}
        offset = 1.0 if unit_offset else 0.0
        self.heads, self.dim_head, self.depth = config.heads, config.dim_head, config.depth
        inner = self.heads * self.dim_head
        inv_freq = w["attn_layers.rotary_pos_emb.inv_freq"]
        self.rot_dim = 2 * inv_freq.numel()
        self.inv_freq = inv_freq
        rotate = self._rotation()  # (dim_head, dim_head): x @ rotate = rotate_half(x)
        scale = self.dim_head ** -0.5
        self.embedding = w["token_emb.emb.weight"].contiguous()
        self.layers = []
        for layer in range(config.depth):
            a, f = f"attn_layers.layers.{2 * layer}", f"attn_layers.layers.{2 * layer + 1}"
            gain = w[f"{a}.0.0.gamma"] + offset
            q = w[f"{a}.1.to_q.weight"].t() * scale  # (dim, inner), the scale folded in
            k = w[f"{a}.1.to_k.weight"].t()
            v = w[f"{a}.1.to_v.weight"].t()
            turned = [(m.reshape(-1, self.heads, self.dim_head) @ rotate).reshape(-1, inner)
                      for m in (q, k)]
            # columns: q, k (2 * inner), v (inner), rotate_half(q), rotate_half(k) (2 * inner)
            qkv = torch.cat([q, k, v, *turned], dim=1) * gain[:, None]
            ff_gain = w[f"{f}.0.0.gamma"] + offset
            self.layers.append(tuple(t.contiguous() for t in (
                qkv,
                w[f"{a}.1.to_out.weight"].t(),
                w[f"{f}.1.ff.0.0.weight"].t() * ff_gain[:, None],
                w[f"{f}.1.ff.0.0.bias"],
                w[f"{f}.1.ff.2.weight"].t(),
                w[f"{f}.1.ff.2.bias"],
            )))
        final_gain = w["attn_layers.final_norm.gamma"] + offset
        self.to_logits = (w["to_logits.weight"].t() * final_gain[:, None]).contiguous()
        # numpy views of the same memory, for `step`
        self.np_embedding = self.embedding.numpy()
        self.np_layers = [tuple(t.numpy() for t in layer) for layer in self.layers]
        self.np_to_logits = self.to_logits.numpy()
        self.cache_k: list[torch.Tensor] = []
        self.cache_v: list[torch.Tensor] = []
        self.valid = torch.zeros(0, 0, dtype=torch.bool)
        self.length = 0

    @classmethod
    def from_model(cls, model: torch.nn.Module, config: ModelConfig) -> "FastDecoder":
        """From a built x-transformers model (its norms say whether they offset gamma)."""
        offsets = {bool(getattr(m, "unit_offset")) for m in model.modules()
                   if hasattr(m, "gamma") and hasattr(m, "unit_offset")}
        if len(offsets) > 1:
            raise UnsupportedModel("layer norms with and without unit offset")
        return cls(model.state_dict(), config, unit_offset=offsets.pop() if offsets else True)

    def _rotation(self) -> torch.Tensor:
        """rotate_half on interleaved pairs, (x0, x1) -> (-x1, x0), over the first rot_dim
        dims of a head (the rest are not rotated), as a matrix."""
        rotate = torch.zeros(self.dim_head, self.dim_head)
        for i in range(0, self.rot_dim, 2):
            rotate[i + 1, i] = -1.0  # out[i] = -x[i + 1]
            rotate[i, i + 1] = 1.0  # out[i + 1] = x[i]
        return rotate

    def _rotary(self, positions: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """cos and sin tables (len, 2 * heads * dim_head) for q and k of every head;
        unrotated dims get cos 1 and sin 0."""
        freqs = positions.float()[:, None] * self.inv_freq.repeat_interleave(2)[None, :]
        cos = torch.ones(len(positions), self.dim_head)
        sin = torch.zeros(len(positions), self.dim_head)
        cos[:, : self.rot_dim] = freqs.cos()
        sin[:, : self.rot_dim] = freqs.sin()
        return cos.repeat(1, 2 * self.heads), sin.repeat(1, 2 * self.heads)

    def prefill(self, ids: torch.Tensor, valid: torch.Tensor, capacity: int) -> torch.Tensor:
        """Start sequences (batch, T) left-padded (`valid` False on pads); reserve room for
        `capacity` positions in all. Returns logits (batch, vocab) after the last position."""
        batch, length = ids.shape
        capacity = max(capacity, length)
        shape = (batch, self.heads, capacity, self.dim_head)
        self.cache_k = [torch.zeros(shape) for _ in range(self.depth)]
        self.cache_v = [torch.zeros(shape) for _ in range(self.depth)]
        self.np_k = [k.numpy() for k in self.cache_k]
        self.np_v = [v.numpy() for v in self.cache_v]
        self.valid = torch.zeros(batch, capacity, dtype=torch.bool)
        self.valid[:, :length] = valid
        # additive mask for `step`: 0 where a key may be attended, -inf on pads
        self.np_bias = np.where(self.valid.numpy(), np.float32(0), np.float32(-np.inf))
        self.np_bias[:, length:] = 0.0  # every later position is a real token
        self.length = 0
        # rotary tables for every position this cache can hold, computed once per prefill
        self.cos, self.sin = self._rotary(torch.arange(capacity))
        self.np_cos, self.np_sin = self.cos.numpy(), self.sin.numpy()
        causal = torch.ones(length, length, dtype=torch.bool).tril()
        mask = causal[None] & valid[:, None, :]
        mask |= torch.eye(length, dtype=torch.bool)[None]  # pad rows attend to themselves: no NaN
        with _prefill_threading():
            return self._forward(ids, mask[:, None])

    @torch.inference_mode()
    def _forward(self, ids: torch.Tensor, mask: torch.Tensor) -> torch.Tensor:
        """Many positions at once, in torch (prefill)."""
        batch, length = ids.shape
        start, stop = self.length, self.length + length
        heads, dim_head, inner = self.heads, self.dim_head, self.heads * self.dim_head
        cos, sin = self.cos[start:stop], self.sin[start:stop]
        x = F.embedding(ids, self.embedding)
        for i, (qkv_w, out_w, ff1_w, ff1_b, ff2_w, ff2_b) in enumerate(self.layers):
            h = F.layer_norm(x, x.shape[-1:], eps=EPSILON)
            projected = h @ qkv_w
            qk = projected[..., : 2 * inner] * cos + projected[..., 3 * inner:] * sin
            q, k = (part.view(batch, length, heads, dim_head).transpose(1, 2)
                    for part in qk.split(inner, dim=-1))
            v = projected[..., 2 * inner: 3 * inner].view(batch, length, heads, dim_head)
            self.cache_k[i][:, :, start:stop] = k
            self.cache_v[i][:, :, start:stop] = v.transpose(1, 2)
            attended = F.scaled_dot_product_attention(
                q, self.cache_k[i][:, :, :stop], self.cache_v[i][:, :, :stop], attn_mask=mask,
                scale=1.0,  # folded into q
            )
            x = x + attended.transpose(1, 2).reshape(batch, length, inner) @ out_w
            h = F.layer_norm(x, x.shape[-1:], eps=EPSILON)
            x = x + torch.addmm(ff2_b, F.gelu(torch.addmm(ff1_b, h.view(-1, h.shape[-1]), ff1_w)),
                                ff2_w).view_as(x)
        self.length = stop
        h = F.layer_norm(x[:, -1], x.shape[-1:], eps=EPSILON)
        return h @ self.to_logits

    def step(self, token: torch.Tensor) -> torch.Tensor:
        """Feed one token per sequence (batch,); returns logits (batch, vocab), in numpy."""
        position = self.length
        if position >= self.valid.shape[1]:
            raise RuntimeError("KV cache is full; prefill with a larger capacity")
        self.valid[:, position] = True
        batch, heads, dim_head = len(token), self.heads, self.dim_head
        inner = heads * dim_head
        stop = position + 1
        cos, sin = self.np_cos[position], self.np_sin[position]
        bias = self.np_bias[:, None, :stop]
        x = self.np_embedding[token.numpy()]
        for i, (qkv_w, out_w, ff1_w, ff1_b, ff2_w, ff2_b) in enumerate(self.np_layers):
            projected = _layer_norm(x) @ qkv_w
            qk = projected[:, : 2 * inner] * cos + projected[:, 3 * inner:] * sin
            keys, values = self.np_k[i], self.np_v[i]
            keys[:, :, position] = qk[:, inner:].reshape(batch, heads, dim_head)
            values[:, :, position] = projected[:, 2 * inner: 3 * inner].reshape(batch, heads,
                                                                                  dim_head)
            q = qk[:, :inner].reshape(batch, heads, dim_head, 1)
            scores = (keys[:, :, :stop] @ q)[..., 0] + bias  # (batch, heads, stop)
            scores -= scores.max(axis=-1, keepdims=True)
            np.exp(scores, out=scores)
            scores /= scores.sum(axis=-1, keepdims=True)
            attended = (scores[:, :, None, :] @ values[:, :, :stop])[:, :, 0]
            x = x + attended.reshape(batch, inner) @ out_w
            hidden = _layer_norm(x) @ ff1_w
            hidden += ff1_b
            x = x + _gelu(hidden) @ ff2_w
            x += ff2_b
        self.length = stop
        return torch.from_numpy(_layer_norm(x) @ self.np_to_logits)


def _layer_norm(x: np.ndarray) -> np.ndarray:
    """Layer norm without gain (folded into the next projection); np.add.reduce, not
    np.mean, whose Python wrapper costs more than the sum on 192 numbers."""
    scale = np.float32(1.0 / x.shape[-1])
    centred = x - np.add.reduce(x, axis=-1, keepdims=True) * scale
    variance = np.add.reduce(centred * centred, axis=-1, keepdims=True) * scale
    centred /= np.sqrt(variance + np.float32(EPSILON))
    return centred


def _gelu(x: np.ndarray) -> np.ndarray:
    """The exact GELU of the trained network, x * (1 + erf(x / sqrt 2)) / 2, in place;
    numpy has no erf, so torch computes it in place on the same memory."""
    half = x * np.float32(0.5)
    x *= np.float32(0.5 ** 0.5)
    erf = torch.from_numpy(x)
    torch.erf(erf, out=erf)
    x += np.float32(1.0)
    x *= half
    return x
