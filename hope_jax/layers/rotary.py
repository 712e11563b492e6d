"""Rotary position embedding (RoPE) with absolute positions, so stateful pieces can start at any offset.

Half-split layout: feature i is paired with feature i + head_dim/2 (the GPT-NeoX / Llama convention).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp


def rotary_cos_sin(positions_t: jax.Array, head_dim: int, theta: float) -> tuple[jax.Array, jax.Array]:
    """cos and sin of position × frequency, float32[T, head_dim/2]."""
    if head_dim % 2:
        raise ValueError(f"rotary positions need an even head_dim, got {head_dim}")
    inv_freq = theta ** (-jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim)
    angles_tf = positions_t.astype(jnp.float32)[:, None] * inv_freq[None, :]
    return jnp.cos(angles_tf), jnp.sin(angles_tf)


def apply_rotary(x_bthd: jax.Array, positions_t: jax.Array, theta: float) -> jax.Array:
    """Rotate queries or keys x[B, T, H, head_dim] to absolute positions[T]; the result keeps x's dtype."""
    half = x_bthd.shape[-1] // 2
    cos_tf, sin_tf = rotary_cos_sin(positions_t, x_bthd.shape[-1], theta)
    cos, sin = cos_tf[None, :, None, :], sin_tf[None, :, None, :]
    x32 = x_bthd.astype(jnp.float32)
    x1, x2 = x32[..., :half], x32[..., half:]
    rotated = jnp.concatenate([x1 * cos - x2 * sin, x2 * cos + x1 * sin], axis=-1)
    return rotated.astype(x_bthd.dtype)
