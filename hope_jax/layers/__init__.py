"""Shared layers: RMSNorm, rotary positions, SwiGLU, causal depthwise conv, embeddings, attention."""

from hope_jax.layers.attention import (
    ATTENTION_IMPLS,
    Attention,
    AttentionImplError,
    attend,
    attention_flops_per_token,
    attention_mask,
    kv_cache_len,
    masked_attention,
    mean_visible_keys,
)
from hope_jax.layers.conv import CausalDepthwiseConv, causal_depthwise_conv
from hope_jax.layers.dense import Dense, normal_init
from hope_jax.layers.embedding import Embedder
from hope_jax.layers.mlp import SwiGLU, swiglu, swiglu_hidden_size
from hope_jax.layers.norm import RMSNorm, rms_normalize
from hope_jax.layers.remat import REMAT_POLICIES, maybe_remat
from hope_jax.layers.rotary import apply_rotary, rotary_cos_sin

__all__ = [
    "ATTENTION_IMPLS",
    "REMAT_POLICIES",
    "Attention",
    "AttentionImplError",
    "attend",
    "CausalDepthwiseConv",
    "Dense",
    "Embedder",
    "RMSNorm",
    "SwiGLU",
    "apply_rotary",
    "attention_flops_per_token",
    "attention_mask",
    "causal_depthwise_conv",
    "kv_cache_len",
    "masked_attention",
    "maybe_remat",
    "mean_visible_keys",
    "normal_init",
    "rms_normalize",
    "rotary_cos_sin",
    "swiglu",
    "swiglu_hidden_size",
]
