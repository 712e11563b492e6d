"""HOPE and HOPE-Attention language models (HOPE_SPEC §7, DESIGN D5/D6).

HOPE block:            x ← x + SelfModTitans(RMSNorm(x));  x ← CMS(x; the mixer's keys and values)
HOPE-Attention block:  x ← x + Attention(RMSNorm(x));      x ← CMS(x; the attention's keys and values)
With `cms.enabled = False` (A-Table 6 'w/o CMS') the CMS is one plain pre-norm SwiGLU of `mlp_hidden` units.

HOPE-Attention's CMS (`local` levels) regresses the attention's per-head keys and values before rotary positions
(content, not position), each ℓ2-normalised per head like the HOPE mixer's, heads concatenated.
"""

from __future__ import annotations

import jax.numpy as jnp
from flax import nnx

from hope_jax.layers import Attention, RMSNorm, SwiGLU, attention_flops_per_token
from hope_jax.memory.chunking import l2_normalize
from hope_jax.models import flops
from hope_jax.models.cms import CMS
from hope_jax.models.lm_ttt import LMTestTimeTraining
from hope_jax.models.registry import register
from hope_jax.models.self_modifying import SelfModifyingMixer
from hope_jax.models.stack import BlockStackLM
from hope_jax.models.typed_config import ModelConfig


class ChannelMixer(nnx.Module):
    """The CMS chain, or (cms.enabled False) one plain pre-norm SwiGLU with a residual."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        out_std, dtype = cfg.residual_out_std, cfg.compute_dtype
        self.d_model = cfg.d_model
        if cfg.cms.enabled:
            self.cms, self.mlp_norm, self.mlp = CMS(cfg, out_init_std=out_std, rngs=rngs), None, None
        else:
            self.cms = None
            self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
            self.mlp = SwiGLU(
                cfg.d_model, cfg.mlp_hidden, init_std=cfg.init_std, out_init_std=out_std,
                dtype=dtype, rngs=rngs,
            )  # fmt: skip

    def init_state(self, batch_size: int):
        return [] if self.cms is None else self.cms.init_state(batch_size, self.d_model)

    def __call__(self, x_btd, keys_btd, values_btd, state, starts_bt=None):
        if self.cms is None:
            return x_btd + self.mlp(self.mlp_norm(x_btd)), []
        return self.cms(x_btd, keys_btd, values_btd, state, starts_bt)


class HopeBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.mixer_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=cfg.compute_dtype)
        self.mixer = SelfModifyingMixer(cfg, out_init_std=cfg.residual_out_std, rngs=rngs)
        self.channel = ChannelMixer(cfg, rngs=rngs)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict:
        return {"mixer": self.mixer.init_state(batch_size), "cms": self.channel.init_state(batch_size)}

    def __call__(self, x_btd, position, state, starts_bt=None):
        """starts_bt: bool [B, T] document starts (model.reset_at_token), None without resets."""
        mixer_state = None if state is None else state["mixer"]
        mixed, mixer_state, keys, values = self.mixer(self.mixer_norm(x_btd), mixer_state, starts_bt)
        x_btd = x_btd + mixed
        x_btd, cms_state = self.channel(x_btd, keys, values, None if state is None else state["cms"], starts_bt)
        return x_btd, {"mixer": mixer_state, "cms": cms_state}


class HopeAttentionBlock(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        self.attn_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.attn = Attention(
            cfg.d_model, cfg.n_heads, cfg.head_dim, window=cfg.attention_window,
            n_persistent=cfg.n_persistent_tokens, max_len=cfg.max_seq_len, rope_theta=cfg.rope_theta,
            init_std=cfg.init_std, out_init_std=cfg.residual_out_std, dtype=dtype, rngs=rngs,
            impl=cfg.attention_impl,
        )  # fmt: skip
        self.channel = ChannelMixer(cfg, rngs=rngs)

    def init_state(self, batch_size: int, max_len: int | None = None) -> dict:
        return {"attn": self.attn.init_cache(batch_size, max_len), "cms": self.channel.init_state(batch_size)}

    def __call__(self, x_btd, position, state):
        normed = self.attn_norm(x_btd)
        attended, cache = self.attn(normed, position, None if state is None else state["attn"])
        x_btd = x_btd + attended
        # The projections are recomputed here; under jit XLA's CSE shares them with the attention's. Unit vectors
        # per head, as the HOPE mixer hands its CMS (its keys are ℓ2-normalised, its values by memory.normalize_values).
        per_head_unit = lambda a: l2_normalize(a.astype(jnp.float32)).astype(a.dtype).reshape(*a.shape[:2], -1)
        keys, values = per_head_unit(self.attn.wk(normed)), per_head_unit(self.attn.wv(normed))
        x_btd, cms_state = self.channel(x_btd, keys, values, None if state is None else state["cms"])
        return x_btd, {"attn": cache, "cms": cms_state}


@register("hope")
class HopeLM(LMTestTimeTraining, BlockStackLM):
    block_class = HopeBlock

    @staticmethod
    def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        dense = flops.embedding_head(cfg) + cfg.n_layers * (flops.selfmod_dense(cfg) + flops.channel_dense(cfg))
        inner = cfg.n_layers * (flops.selfmod_inner(cfg) + flops.cms_inner(cfg))
        return {"dense": dense, "attention": 0.0, "inner": inner, "total": dense + inner}


@register("hope_attention")
class HopeAttentionLM(LMTestTimeTraining, BlockStackLM):
    block_class = HopeAttentionBlock

    @staticmethod
    def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        d = cfg.d_model
        dense = flops.embedding_head(cfg) + cfg.n_layers * (6.0 * 4 * d * d + flops.channel_dense(cfg))
        attention = cfg.n_layers * attention_flops_per_token(
            seq_len, cfg.n_heads, cfg.head_dim, cfg.attention_window,
            cfg.n_persistent_tokens,
        )  # fmt: skip
        inner = cfg.n_layers * flops.cms_inner(cfg)
        return {"dense": dense, "attention": attention, "inner": inner, "total": dense + attention + inner}
