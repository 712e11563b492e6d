"""RMSNorm (pre-norm placement is decided by the blocks that use it)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def rms_normalize(x: jax.Array, eps: float) -> jax.Array:
    """x / rms(x) over the last axis, computed in float32 (bf16 sums of squares lose too much)."""
    x32 = x.astype(jnp.float32)
    return x32 * jax.lax.rsqrt(jnp.mean(jnp.square(x32), axis=-1, keepdims=True) + eps)


class RMSNorm(nnx.Module):
    """RMSNorm with a learned per-feature scale (initialised to 1) and no bias."""

    def __init__(self, dim: int, *, eps: float = 1e-6, axis_name: str | None = "embed", dtype=jnp.float32):
        self.eps = eps
        self.dtype = dtype
        self.scale = nnx.Param(jnp.ones((dim,), jnp.float32), out_sharding=(axis_name,))

    def __call__(self, x: jax.Array) -> jax.Array:
        return (rms_normalize(x, self.eps) * self.scale[...]).astype(self.dtype)
