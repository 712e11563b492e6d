"""Token embedding and LM head, tied (head = tableᵀ) or untied; logits always float32."""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers.dense import normal_init


class Embedder(nnx.Module):
    def __init__(self, vocab_size: int, d_model: int, *, tie: bool, init_std: float, dtype: jnp.dtype, rngs: nnx.Rngs):
        self.dtype = dtype
        self.table = nnx.Param(normal_init(rngs, (vocab_size, d_model), init_std), out_sharding=("vocab", "embed"))
        self.head = (
            None
            if tie
            else nnx.Param(normal_init(rngs, (d_model, vocab_size), init_std), out_sharding=("embed", "vocab"))
        )

    def encode(self, tokens_bt: jax.Array) -> jax.Array:
        return jnp.take(self.table[...], tokens_bt, axis=0).astype(self.dtype)

    def decode(self, x_btd: jax.Array) -> jax.Array:
        """float32 logits; the matmul runs in the compute dtype and accumulates in float32."""
        head_dv = self.table[...].T if self.head is None else self.head[...]
        return jnp.einsum(
            "btd,dv->btv",
            x_btd.astype(self.dtype),
            head_dv.astype(self.dtype),
            preferred_element_type=jnp.float32,
        )
