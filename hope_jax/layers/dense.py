"""Bias-free dense layer over several input and output axes, with logical axis names on its kernel.

Parameters stay float32 (master weights); the matmul runs in the compute dtype given at construction.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def normal_init(rngs: nnx.Rngs, shape: tuple[int, ...], std: float) -> jax.Array:
    """float32 N(0, std²) initial value; works unchanged under nnx.eval_shape (no allocation there)."""
    return std * jax.random.normal(rngs.params(), shape, jnp.float32)


class Dense(nnx.Module):
    """y = x · W, contracting the last len(in_shape) axes of x with W's leading axes; no bias."""

    def __init__(
        self,
        in_shape: tuple[int, ...],
        out_shape: tuple[int, ...],
        axis_names: tuple[str | None, ...],
        *,
        init_std: float,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        if len(axis_names) != len(in_shape) + len(out_shape):
            raise ValueError(f"Dense: {len(axis_names)} axis names for kernel shape {in_shape + out_shape}")
        self.n_in = len(in_shape)
        self.dtype = dtype
        self.kernel = nnx.Param(normal_init(rngs, in_shape + out_shape, init_std), out_sharding=axis_names)

    def __call__(self, x: jax.Array) -> jax.Array:
        kernel = self.kernel[...].astype(self.dtype)
        return jnp.tensordot(x.astype(self.dtype), kernel, axes=self.n_in)
