"""Transformer++ language model: pre-RMSNorm blocks of rotary attention and SwiGLU, no biases.

State (`init_state`) = {'position': int32 scalar (tokens seen), 'layers': one KV cache per layer}. With
state=None a sequence starts at position 0 with empty caches; the returned cache is dead code under jit
when the caller drops it, so training pays only for ordinary attention.
"""

from __future__ import annotations

import jax
from flax import nnx

from hope_jax.layers import Attention, RMSNorm, SwiGLU, attention_flops_per_token
from hope_jax.models.registry import register
from hope_jax.models.stack import BlockStackLM
from hope_jax.models.typed_config import ModelConfig


class TransformerBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        d_model, out_std = cfg.d_model, cfg.residual_out_std
        self.attn_norm = RMSNorm(d_model, eps=cfg.norm_eps, dtype=dtype)
        self.attn = Attention(
            d_model,
            cfg.n_heads,
            cfg.head_dim,
            window=cfg.attention_window,
            n_persistent=cfg.n_persistent_tokens,
            max_len=cfg.max_seq_len,
            rope_theta=cfg.rope_theta,
            init_std=cfg.init_std,
            out_init_std=out_std,
            dtype=dtype,
            rngs=rngs,
            impl=cfg.attention_impl,
        )
        self.mlp_norm = RMSNorm(d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = SwiGLU(
            d_model,
            cfg.mlp_hidden,
            init_std=cfg.init_std,
            out_init_std=out_std,
            dtype=dtype,
            rngs=rngs,
        )

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        """Empty KV cache: max_len (default model.max_seq_len) slots, or w−1 when windowed."""
        return self.attn.init_cache(batch_size, max_len)

    def __call__(
        self, x_btd: jax.Array, position: jax.Array, cache: dict[str, jax.Array] | None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        attn_out, new_cache = self.attn(self.attn_norm(x_btd), position, cache)
        x_btd = x_btd + attn_out
        return x_btd + self.mlp(self.mlp_norm(x_btd)), new_cache


@register("transformer")
class TransformerLM(BlockStackLM):
    """Embedding → Transformer++ blocks → final RMSNorm → fp32 logits (the frame of hope_jax.models.stack)."""

    block_class = TransformerBlock

    @staticmethod
    def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        """6 × matmul parameters (the head counts even when tied) + causal attention scores; no inner loop."""
        d, heads, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        per_layer = 4 * d * heads * hd + 3 * d * cfg.mlp_hidden
        dense = 6.0 * (cfg.n_layers * per_layer + d * cfg.vocab_size)
        attention = cfg.n_layers * attention_flops_per_token(
            seq_len, heads, hd, cfg.attention_window, cfg.n_persistent_tokens
        )
        return {"dense": dense, "attention": attention, "inner": 0.0, "total": dense + attention}
