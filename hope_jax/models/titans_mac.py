"""Titans MAC, memory as context (HOPE_SPEC §2.7, T §4.1), on the building blocks of models/titans.py.

Segments of `titans.segment_size` tokens. Per segment: h = M_{before}(q) read with the state before the segment
(E14), q from x through the projection → conv → SiLU stream; attention of the segment's tokens over
[persistent slots ; h ; segment] (E15), where the token at offset t sees h_j and x_j only for j ≤ t (h_j is computed
from x_j, so seeing a later h_j would read the future); the memory is then written with the attention output y, and
o = W_out(y ⊙ σ(RMSNorm(M_t(y)))) reads it after each token's own write (E16, the dual form).

The write stream's q, k, v come from y with T §4.4's block details, as the LMM's from x: projection → causal depthwise
conv → SiLU, q and k ℓ2-normalised (titans.QKVStream; `titans.conv` switches both convs). y exists only inside its
segment, so the write conv's state (the last conv_window − 1 projections of y) travels with the memory's fast weights
in the chunk carry and is committed with them at a segment's end.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers import Dense, apply_rotary, attend, normal_init
from hope_jax.memory import driver, fast_mlp
from hope_jax.models import flops
from hope_jax.models.registry import register
from hope_jax.models.stack import BlockStackLM
from hope_jax.models.titans import (
    GatedCombine,
    Gates,
    MemoryWeights,
    QKVStream,
    TitansBlock,
    memory_call,
    memory_fit_bt,
)
from hope_jax.models.typed_config import ModelConfig


class MACMixer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg, self.dtype = cfg, cfg.compute_dtype
        d, heads, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        proj = dict(init_std=cfg.init_std, dtype=self.dtype, rngs=rngs)
        self.query = QKVStream(cfg, 1, 1, rngs=rngs)  # memory read query from x (E14)
        self.attn_qkv = Dense((d,), (3, heads, hd), ("embed", None, "heads", "head_dim"), **proj)
        self.attn_out = Dense((heads, hd), (d,), ("heads", "head_dim", "embed"), **proj)
        n_p = cfg.n_persistent_tokens
        std = cfg.init_std * d**0.5
        self.persistent = (
            nnx.Param(normal_init(rngs, (2, n_p, heads, hd), std), out_sharding=(None, None, "heads", "head_dim"))
            if n_p
            else None
        )
        self.write = QKVStream(cfg, 3, 2, rngs=rngs)  # the memory's write q, k, v from y (E16, T §4.4)
        self.gates = Gates(cfg, rngs=rngs)
        self.memory = MemoryWeights(cfg, rngs=rngs)
        self.combine = GatedCombine(cfg, rngs=rngs)

    def initial_fast(self, batch_size: int) -> dict:
        """The memory's meta-learned initial state and the write conv's empty window."""
        momentum = self.cfg.titans.momentum
        return {**self.memory.initial(batch_size, momentum), "write_conv": self.write.init_state(batch_size)}

    def init_state(self, batch_size, max_len=None):
        cfg = self.cfg
        shapes = {
            "x": jax.ShapeDtypeStruct((cfg.n_heads * cfg.head_dim,), self.dtype),
            "q": jax.ShapeDtypeStruct((cfg.n_heads, cfg.head_dim), self.dtype),
        }
        return {
            "conv": self.query.init_state(batch_size),
            "chunks": driver.init_carry(self.initial_fast(batch_size), shapes, cfg.titans.segment_size, batch_size),
        }

    def _segment(self, fast, chunk):
        """One segment [B, S, ...]: retrieve with the segment-start memory, attend, write, gate."""
        x, q = chunk["x"], chunk["q"]
        batch, seg = x.shape[:2]
        retrieve = jax.vmap(jax.vmap(lambda w, u: fast_mlp.forward(w, u, residual=self.cfg.titans.memory_depth == 2)))
        h = jnp.swapaxes(retrieve(fast["w"], jnp.swapaxes(q, 1, 2).astype(jnp.float32)), 1, 2)
        h = h.reshape(batch, seg, -1).astype(self.dtype)
        pos = jnp.arange(seg, dtype=jnp.int32)
        qx, kx, vx = (self.attn_qkv(x)[:, :, i] for i in range(3))
        _, kh, vh = (self.attn_qkv(h)[:, :, i] for i in range(3))
        rope = lambda a: apply_rotary(a, pos, self.cfg.rope_theta)
        keys, values = jnp.concatenate([rope(kh), rope(kx)], 1), jnp.concatenate([vh, vx], 1)
        causal = pos[:, None] >= pos[None, :]
        mask = jnp.concatenate([causal, causal], axis=1)
        if self.persistent is not None:
            n_p = self.persistent.shape[1]
            prefix = lambda i: jnp.broadcast_to(
                self.persistent[...][i].astype(self.dtype), (batch, *self.persistent.shape[1:])
            )
            keys, values = jnp.concatenate([prefix(0), keys], 1), jnp.concatenate([prefix(1), values], 1)
            mask = jnp.concatenate([jnp.ones((seg, n_p), bool), mask], axis=1)
        y = self.attn_out(attend(rope(qx), keys, values, impl=self.cfg.attention_impl, mask_ts=mask))
        (wq, wk, wv), write_conv = self.write(y, fast["write_conv"])
        tokens = {"q": wq, "k": wk, "v": wv, **self.gates(y)}
        new_fast, read = memory_call(fast, tokens, self.cfg)
        # Diagnostics per token: the memory's loss on the segment's writes before and after the segment.
        residual = self.cfg.titans.memory_depth == 2
        fit = {
            "before": memory_fit_bt(fast["w"], tokens["k"], tokens["v"], residual),
            "after": memory_fit_bt(new_fast["w"], tokens["k"], tokens["v"], residual),
        }
        new_fast["write_conv"] = write_conv
        return new_fast, (self.combine(y, read.reshape(y.shape).astype(self.dtype)), fit)

    def __call__(self, x_btd, position, state):
        (q,), conv_state = self.query(x_btd, None if state is None else state["conv"])
        (out, fit), carry = driver.run_chunked(
            self._segment, {"x": x_btd, "q": q}, self.cfg.titans.segment_size,
            fast=self.initial_fast(x_btd.shape[0]) if state is None else None,
            carry=None if state is None else state["chunks"], remat_group=int(self.cfg.memory.remat_chunks),
        )  # fmt: skip
        self.sow(nnx.Intermediate, "memory_loss_before", jnp.mean(fit["before"]))
        self.sow(nnx.Intermediate, "memory_loss_after", jnp.mean(fit["after"]))
        return out, {"conv": conv_state, "chunks": carry}


class MACBlock(TitansBlock):
    mixer_class = MACMixer


@register("titans_mac")
class TitansMAC(BlockStackLM):
    block_class = MACBlock

    @staticmethod
    def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        d, segment = cfg.d_model, min(cfg.titans.segment_size, seq_len)
        # query d², attention q + (k, v on x and on h) + out 6d², memory write q/k/v 3d², combine d²
        return flops.titans(
            cfg, mixer_matmul_params=11 * d * d + 3 * d * cfg.n_heads,
            attention=flops.titans_attention(cfg, segment, 0, keys_factor=2),
        )  # fmt: skip
