"""SwiGLU feed-forward block: down(silu(x·W_gate) ⊙ (x·W_up))."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers.dense import normal_init


def swiglu(x_btd: jax.Array, w_gate_dh: jax.Array, w_up_dh: jax.Array, w_down_hd: jax.Array) -> jax.Array:
    """Pure SwiGLU on given weights, so that fast-weight MLPs (CMS levels) share the maths with the module."""
    return (jax.nn.silu(x_btd @ w_gate_dh) * (x_btd @ w_up_dh)) @ w_down_hd


def swiglu_hidden_size(d_model: int, multiple_of: int = 256) -> int:
    """Llama's rule: 8/3 · d_model (the parameters of a 4·d two-matrix MLP), rounded up to a multiple."""
    hidden = int(8 * d_model / 3)
    return multiple_of * -(-hidden // multiple_of)


class SwiGLU(nnx.Module):
    def __init__(
        self,
        d_model: int,
        hidden: int,
        *,
        init_std: float,
        out_init_std: float,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
    ):
        self.dtype = dtype
        self.w_gate = nnx.Param(normal_init(rngs, (d_model, hidden), init_std), out_sharding=("embed", "mlp"))
        self.w_up = nnx.Param(normal_init(rngs, (d_model, hidden), init_std), out_sharding=("embed", "mlp"))
        self.w_down = nnx.Param(normal_init(rngs, (hidden, d_model), out_init_std), out_sharding=("mlp", "embed"))

    def __call__(self, x_btd: jax.Array) -> jax.Array:
        weights = (w[...].astype(self.dtype) for w in (self.w_gate, self.w_up, self.w_down))
        return swiglu(x_btd.astype(self.dtype), *weights)
