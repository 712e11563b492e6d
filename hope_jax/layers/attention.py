"""Multi-head softmax attention: causal or sliding-window, optional persistent-memory prefix, KV cache.

Every key carries an absolute position, so one mask rule serves training, pieces with a carried cache and
token-by-token generation: a query at position p sees keys at positions k with 0 ≤ k ≤ p and (windowed)
p − k < window, plus the persistent-memory slots (learned, input-independent keys/values, Sukhbaatar et al.
2019, as Titans §3.3 cites them), which every query sees and which carry no position.

The cache holds the keys/values of the last C tokens before the current piece (C = window − 1 when
windowed, all a window can need, else the maximum context length). Its slot j holds position
`position − C + j`; slots with negative positions are empty. The cache update is a static slice of
[cache ; new keys], so shapes never depend on the position.

Implementations (`model.attention_impl`): 'xla' is `masked_attention` (einsum + fp32 softmax, runs everywhere);
'cudnn' is cuDNN flash attention through `jax.nn.dot_product_attention(implementation='cudnn')` and fails with
`AttentionImplError` where cuDNN cannot run it; 'auto' takes cuDNN where it can run and xla elsewhere, logging
why once. Plain causal (windowed) self-attention over a piece uses cuDNN's own causal / sliding-window masks, so
the kernel skips masked blocks; a persistent-memory prefix or a KV cache (pieces, decoding) hands cuDNN the
explicit boolean mask instead (the causal diagonal is then offset, which cuDNN's top-left causal mask cannot say,
and empty cache slots sit at the front, which sequence lengths cannot say).
"""

from __future__ import annotations

import logging

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers.dense import Dense, normal_init
from hope_jax.layers.rotary import apply_rotary


def attention_mask(q_pos_t: jax.Array, k_pos_s: jax.Array, window: int) -> jax.Array:
    """bool[T, S]: causal, non-empty (position ≥ 0) and, if window > 0, within the sliding window."""
    q_pos, k_pos = q_pos_t[:, None], k_pos_s[None, :]
    visible = (k_pos >= 0) & (k_pos <= q_pos)
    if window > 0:
        visible &= q_pos - k_pos < window
    return visible


def masked_attention(q_bthd: jax.Array, k_bshd: jax.Array, v_bshd: jax.Array, mask_ts: jax.Array) -> jax.Array:
    """softmax(q kᵀ/√d + mask) v, float32 scores and softmax; every query row must see at least one key."""
    scale = q_bthd.shape[-1] ** -0.5
    scores_bhts = jnp.einsum("bthd,bshd->bhts", q_bthd, k_bshd, preferred_element_type=jnp.float32) * scale
    scores_bhts = jnp.where(mask_ts[None, None], scores_bhts, jnp.finfo(jnp.float32).min)
    probs_bhts = jax.nn.softmax(scores_bhts, axis=-1).astype(v_bshd.dtype)
    return jnp.einsum("bhts,bshd->bthd", probs_bhts, v_bshd)


ATTENTION_IMPLS = ("xla", "cudnn", "auto")
# What 'cudnn' hands to jax.nn.dot_product_attention; tests point it at 'xla' to check the argument translation on CPU.
FUSED_IMPLEMENTATION = "cudnn"
_reported: set[str] = set()


class AttentionImplError(ValueError):
    """model.attention_impl names an implementation that cannot run on this backend, dtype or shape."""


def cudnn_unsupported_reason(dtype: jnp.dtype, head_dim: int) -> str | None:
    """Why cuDNN flash attention cannot run these inputs here (None: it can, as far as can be told before compiling)."""
    backend = jax.default_backend()
    if backend != "gpu":
        return f"the JAX backend is {backend!r}; cuDNN flash attention needs an NVIDIA GPU"
    if jnp.dtype(dtype) not in (jnp.dtype(jnp.bfloat16), jnp.dtype(jnp.float16)):
        return f"cuDNN flash attention takes bfloat16 or float16 inputs, these are {jnp.dtype(dtype).name}"
    capability = getattr(jax.devices()[0], "compute_capability", "0")
    limit = 256 if float(capability) >= 9.0 else 128  # Hopper and later take head_dim up to 256
    if head_dim % 8 or head_dim > limit:
        return f"cuDNN flash attention needs head_dim a multiple of 8 and ≤ {limit} here, got {head_dim}"
    return None


def _report_once(level: int, message: str) -> None:
    if message not in _reported:
        _reported.add(message)
        logging.log(level, message)


def resolve_attention_impl(requested: str, dtype: jnp.dtype, head_dim: int) -> str:
    """'xla' or 'cudnn' for `requested` ∈ ATTENTION_IMPLS; 'cudnn' where it cannot run raises AttentionImplError."""
    if requested not in ATTENTION_IMPLS:
        raise AttentionImplError(f"model.attention_impl = {requested!r}; known: {', '.join(ATTENTION_IMPLS)}")
    if requested == "xla":
        return "xla"
    reason = cudnn_unsupported_reason(dtype, head_dim)
    if reason is None:
        _report_once(logging.INFO, f"model.attention_impl={requested!r}: cuDNN flash attention")
        return "cudnn"
    if requested == "auto":
        _report_once(logging.WARNING, f"model.attention_impl='auto': xla attention, because {reason}")
        return "xla"
    raise AttentionImplError(
        f"model.attention_impl='cudnn' cannot run here: {reason}. Set model.attention_impl='xla' (runs everywhere) "
        "or 'auto' (cuDNN where it can run, xla elsewhere)."
    )


def fused_attention_args(mask_ts: jax.Array | None, window: int) -> dict:
    """Mask arguments of jax.nn.dot_product_attention equal to our mask rule.

    mask_ts None means plain causal self-attention over one piece (queries and keys at the same positions): cuDNN's
    causal mask, and for a window w the left window w − 1 (cuDNN: sliding_window_length = w, exclusive, i.e.
    q − k < w as in `attention_mask`). Otherwise the explicit mask, broadcast over batch and heads.
    """
    if mask_ts is not None:
        return {"mask": mask_ts[None, None]}
    return {"is_causal": True, "local_window_size": (window - 1, 0) if window > 0 else None}


def fused_attention(
    q_bthd: jax.Array, k_bshd: jax.Array, v_bshd: jax.Array, mask_ts: jax.Array | None, window: int, implementation: str
) -> jax.Array:
    return jax.nn.dot_product_attention(
        q_bthd, k_bshd, v_bshd, implementation=implementation, **fused_attention_args(mask_ts, window)
    )


def attend(
    q_bthd: jax.Array,
    k_bshd: jax.Array,
    v_bshd: jax.Array,
    *,
    impl: str,
    mask_ts: jax.Array | None = None,
    window: int = 0,
) -> jax.Array:
    """Attention by `impl` (model.attention_impl). mask_ts None: causal self-attention over this piece, windowed."""
    chosen = resolve_attention_impl(impl, q_bthd.dtype, q_bthd.shape[-1])
    if chosen == "cudnn":
        try:
            return fused_attention(q_bthd, k_bshd, v_bshd, mask_ts, window, FUSED_IMPLEMENTATION)
        except (RuntimeError, NotImplementedError) as error:  # jax checks cuDNN's presence and shapes while tracing
            if impl != "auto":
                raise AttentionImplError(f"model.attention_impl='cudnn' failed: {error}") from error
            _report_once(logging.WARNING, f"model.attention_impl='auto': xla attention, because cuDNN said: {error}")
    if mask_ts is None:
        positions = jnp.arange(q_bthd.shape[1], dtype=jnp.int32)
        mask_ts = attention_mask(positions, positions, window)
    return masked_attention(q_bthd, k_bshd, v_bshd, mask_ts)


def kv_cache_len(window: int, max_len: int) -> int:
    """Slots a cache needs: window − 1 for sliding-window attention, else the longest context."""
    return window - 1 if window > 0 else max_len


class Attention(nnx.Module):
    """Pre-projected multi-head attention with rotary positions (no biases: Transformer++)."""

    def __init__(
        self,
        d_model: int,
        n_heads: int,
        head_dim: int,
        *,
        window: int,
        n_persistent: int,
        max_len: int,
        rope_theta: float,
        init_std: float,
        out_init_std: float,
        dtype: jnp.dtype,
        rngs: nnx.Rngs,
        impl: str = "xla",
    ):
        if window < 0 or n_persistent < 0:
            raise ValueError(f"attention window ({window}) and persistent tokens ({n_persistent}) must be ≥ 0")
        self.n_heads, self.head_dim = n_heads, head_dim
        self.window, self.max_len, self.rope_theta, self.dtype = window, max_len, rope_theta, dtype
        self.impl = impl
        proj = dict(init_std=init_std, dtype=dtype, rngs=rngs)
        self.wq = Dense((d_model,), (n_heads, head_dim), ("embed", "heads", "head_dim"), **proj)
        self.wk = Dense((d_model,), (n_heads, head_dim), ("embed", "heads", "head_dim"), **proj)
        self.wv = Dense((d_model,), (n_heads, head_dim), ("embed", "heads", "head_dim"), **proj)
        self.wo = Dense(
            (n_heads, head_dim), (d_model,), ("heads", "head_dim", "embed"),
            init_std=out_init_std, dtype=dtype, rngs=rngs,
        )  # fmt: skip
        # The scale of projected keys/values at initialisation: unit-rms inputs times N(0, init_std²).
        std, names = init_std * d_model**0.5, (None, "heads", "head_dim")
        persistent = lambda: nnx.Param(normal_init(rngs, (n_persistent, n_heads, head_dim), std), out_sharding=names)
        self.persistent_k = persistent() if n_persistent else None
        self.persistent_v = persistent() if n_persistent else None

    def init_cache(self, batch_size: int, max_len: int | None = None) -> dict[str, jax.Array]:
        slots = kv_cache_len(self.window, self.max_len if max_len is None else max_len)
        empty = jnp.zeros((batch_size, slots, self.n_heads, self.head_dim), self.dtype)
        return {"k": empty, "v": empty}

    def __call__(
        self, x_btd: jax.Array, position: jax.Array, cache: dict[str, jax.Array] | None = None
    ) -> tuple[jax.Array, dict[str, jax.Array]]:
        """Attend a piece x starting at absolute `position`, after the tokens held in `cache` (None: none).

        Returns the output and the cache after this piece (with cache=None, one of the default size).
        """
        batch, seq_len, _ = x_btd.shape
        pos_t = position + jnp.arange(seq_len, dtype=jnp.int32)
        q = apply_rotary(self.wq(x_btd), pos_t, self.rope_theta)
        k = apply_rotary(self.wk(x_btd), pos_t, self.rope_theta)
        v = self.wv(x_btd)
        if cache is None:
            keys, values, mask_ts = k, v, None  # plain causal self-attention over the piece
            cache = self.init_cache(batch)
        else:
            slots = cache["k"].shape[1]
            keys = jnp.concatenate([cache["k"].astype(k.dtype), k], axis=1)
            values = jnp.concatenate([cache["v"].astype(v.dtype), v], axis=1)
            k_pos = jnp.concatenate([position - slots + jnp.arange(slots, dtype=jnp.int32), pos_t])
            mask_ts = attention_mask(pos_t, k_pos, self.window)
        if self.persistent_k is not None:
            n_persistent = self.persistent_k.shape[0]
            prefix_shape = (batch, n_persistent, self.n_heads, self.head_dim)
            keys = jnp.concatenate([jnp.broadcast_to(self.persistent_k[...].astype(k.dtype), prefix_shape), keys], 1)
            values = jnp.concatenate(
                [jnp.broadcast_to(self.persistent_v[...].astype(v.dtype), prefix_shape), values], 1
            )
            if mask_ts is None:
                mask_ts = attention_mask(pos_t, pos_t, self.window)
            mask_ts = jnp.concatenate([jnp.ones((seq_len, n_persistent), bool), mask_ts], axis=1)
        attended = attend(q, keys, values, impl=self.impl, mask_ts=mask_ts, window=self.window)
        y_btd = self.wo(attended)
        return y_btd, self._advance_cache(cache, k, v)

    @staticmethod
    def _advance_cache(cache: dict[str, jax.Array], k: jax.Array, v: jax.Array) -> dict[str, jax.Array]:
        """The last C tokens of [cache ; this piece]."""
        slots = cache["k"].shape[1]
        if slots == 0:
            return cache
        return {
            name: jnp.concatenate([cache[name], new.astype(cache[name].dtype)], axis=1)[:, -slots:]
            for name, new in (("k", k), ("v", v))
        }


def mean_visible_keys(seq_len: int, window: int, n_persistent: int) -> float:
    """Keys a query sees, averaged over positions 0..seq_len−1 of a causal (windowed) sequence."""
    if window > 0:
        full = min(window, seq_len)
        visible = full * (full + 1) / 2 + (seq_len - full) * window
    else:
        visible = seq_len * (seq_len + 1) / 2
    return visible / seq_len + n_persistent


def attention_flops_per_token(seq_len: int, n_heads: int, head_dim: int, window: int, n_persistent: int) -> float:
    """Training FLOPs per token of one layer's score and value matmuls: 3 × 2 matmuls × 2 × keys·H·d.

    Counts only the keys the causal mask lets through (model FLOPs), not the masked half xla computes.
    """
    return 12.0 * n_heads * head_dim * mean_visible_keys(seq_len, window, n_persistent)
