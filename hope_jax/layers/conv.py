"""Causal depthwise 1-D convolution with a carried state (the last window−1 inputs).

Feeding a sequence in pieces, each with the state returned by the previous piece, gives exactly the outputs of
feeding it whole; a fresh state is zeros, i.e. the sequence is left-padded with zeros.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx


def causal_depthwise_conv(
    x_btc: jax.Array, kernel_wc: jax.Array, prefix_bpc: jax.Array, starts_bt: jax.Array | None = None
) -> tuple[jax.Array, jax.Array]:
    """y_t = Σ_j kernel[j] ⊙ x_{t−(w−1)+j}; kernel[w−1] weighs the current token.

    prefix_bpc holds the w−1 inputs before x (zeros at a sequence start). Returns (y_btc, next prefix).
    starts_bt: bool [B, T] document starts (model.reset_at_token): a tap never reads an input of an earlier
    document, as if every document began with zeros; the returned prefix keeps only the last document's inputs.
    """
    window = kernel_wc.shape[0]
    if prefix_bpc.shape[1] != window - 1:
        raise ValueError(f"conv state holds {prefix_bpc.shape[1]} inputs, window {window} needs {window - 1}")
    seq_len = x_btc.shape[1]
    padded = jnp.concatenate([prefix_bpc.astype(x_btc.dtype), x_btc], axis=1)
    kernel = kernel_wc.astype(x_btc.dtype)
    if starts_bt is None:
        y_btc = sum(padded[:, j : j + seq_len] * kernel[j] for j in range(window))
        return y_btc, padded[:, seq_len:]
    # Document index of every padded position (the prefix belongs to the document the piece starts in).
    document = jnp.pad(jnp.cumsum(starts_bt.astype(jnp.int32), axis=1), [(0, 0), (window - 1, 0)])
    own = document[:, window - 1 :, None]
    y_btc = sum(
        jnp.where(document[:, j : j + seq_len, None] == own, padded[:, j : j + seq_len], 0) * kernel[j]
        for j in range(window)
    )
    prefix = jnp.where(document[:, seq_len:, None] == document[:, -1:, None], padded[:, seq_len:], 0)
    return y_btc, prefix


class CausalDepthwiseConv(nnx.Module):
    """Per-channel causal convolution (no bias), kernel initialised like PyTorch's Conv1d: U(±1/√window)."""

    def __init__(self, channels: int, window: int, *, channel_axis: str | None, dtype: jnp.dtype, rngs: nnx.Rngs):
        if window < 1:
            raise ValueError(f"conv window must be ≥ 1, got {window}")
        self.window = window
        self.channels = channels
        self.dtype = dtype
        bound = window**-0.5
        kernel = jax.random.uniform(rngs.params(), (window, channels), jnp.float32, -bound, bound)
        self.kernel = nnx.Param(kernel, out_sharding=("conv_window", channel_axis))

    def init_state(self, batch_size: int) -> jax.Array:
        return jnp.zeros((batch_size, self.window - 1, self.channels), self.dtype)

    def __call__(
        self, x_btc: jax.Array, state: jax.Array | None = None, starts_bt: jax.Array | None = None
    ) -> tuple[jax.Array, jax.Array]:
        if state is None:
            state = self.init_state(x_btc.shape[0])
        y_btc, new_state = causal_depthwise_conv(x_btc.astype(self.dtype), self.kernel[...], state, starts_bt)
        return y_btc, new_state
