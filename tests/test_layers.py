"""Shared layers against direct references: RMSNorm, rotary, SwiGLU, causal conv with state, attention."""

import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hope_jax  # noqa: F401
from hope_jax.layers import (
    Attention,
    CausalDepthwiseConv,
    Embedder,
    RMSNorm,
    SwiGLU,
    apply_rotary,
    mean_visible_keys,
    swiglu_hidden_size,
)

RNG = np.random.default_rng(0)


def test_rms_norm_matches_formula():
    x = RNG.normal(size=(2, 3, 8)).astype(np.float32) * 3.0
    norm = RMSNorm(8, eps=1e-6)
    norm.scale[...] = jnp.arange(1.0, 9.0)
    expected = x / np.sqrt((x**2).mean(-1, keepdims=True) + 1e-6) * np.arange(1.0, 9.0)
    np.testing.assert_allclose(norm(jnp.asarray(x)), expected, rtol=1e-5)


def test_rotary_scores_depend_only_on_relative_position():
    q = jnp.asarray(RNG.normal(size=(1, 1, 1, 16)), jnp.float32)
    k = jnp.asarray(RNG.normal(size=(1, 1, 1, 16)), jnp.float32)

    def score(q_pos, k_pos):
        rq = apply_rotary(q, jnp.array([q_pos]), 10_000.0)
        rk = apply_rotary(k, jnp.array([k_pos]), 10_000.0)
        return float(jnp.sum(rq * rk))

    assert score(7, 3) == pytest.approx(score(104, 100), rel=1e-4)
    assert score(7, 3) != pytest.approx(score(7, 4), rel=1e-2)
    np.testing.assert_allclose(apply_rotary(q, jnp.array([0]), 10_000.0), q)  # position 0: identity
    # Rotation preserves the norm; an offset piece equals the slice of the whole.
    x = jnp.asarray(RNG.normal(size=(2, 10, 3, 8)), jnp.float32)
    whole = apply_rotary(x, jnp.arange(10), 10_000.0)
    np.testing.assert_allclose(jnp.linalg.norm(whole, axis=-1), jnp.linalg.norm(x, axis=-1), rtol=1e-5)
    np.testing.assert_allclose(apply_rotary(x[:, 6:], jnp.arange(6, 10), 10_000.0), whole[:, 6:], rtol=1e-6)


def test_swiglu_matches_formula_and_hidden_rule():
    mlp = SwiGLU(4, 6, init_std=0.5, out_init_std=0.5, dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = RNG.normal(size=(2, 3, 4)).astype(np.float32)
    gate, up, down = (np.asarray(w[...]) for w in (mlp.w_gate, mlp.w_up, mlp.w_down))
    g = x @ gate
    expected = (g / (1 + np.exp(-g)) * (x @ up)) @ down
    np.testing.assert_allclose(mlp(jnp.asarray(x)), expected, rtol=1e-5, atol=1e-6)
    assert swiglu_hidden_size(768) == 2048 and swiglu_hidden_size(2048) == 5632


@pytest.mark.parametrize("window", [1, 4])
def test_causal_conv_reference_and_pieces(window):
    conv = CausalDepthwiseConv(5, window, channel_axis="embed", dtype=jnp.float32, rngs=nnx.Rngs(0))
    x = RNG.normal(size=(2, 11, 5)).astype(np.float32)
    kernel = np.asarray(conv.kernel[...])
    padded = np.concatenate([np.zeros((2, window - 1, 5), np.float32), x], axis=1)
    expected = np.stack([(padded[:, t : t + window] * kernel).sum(1) for t in range(11)], axis=1)
    whole, final_state = conv(jnp.asarray(x))
    np.testing.assert_allclose(whole, expected, rtol=1e-5, atol=1e-6)
    state, pieces = conv.init_state(2), []
    for start, stop in [(0, 2), (2, 3), (3, 9), (9, 11)]:  # pieces shorter and longer than the window
        y, state = conv(jnp.asarray(x[:, start:stop]), state)
        pieces.append(y)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), whole, rtol=1e-6, atol=1e-7)
    np.testing.assert_array_equal(state, final_state)
    np.testing.assert_array_equal(final_state, x[:, 11 - (window - 1) :])


def test_embedder_tied_and_untied():
    tied = Embedder(10, 4, tie=True, init_std=1.0, dtype=jnp.bfloat16, rngs=nnx.Rngs(0))
    untied = Embedder(10, 4, tie=False, init_std=1.0, dtype=jnp.float32, rngs=nnx.Rngs(0))
    tokens = jnp.array([[1, 9, 3]])
    np.testing.assert_allclose(tied.encode(tokens).astype(jnp.float32), tied.table[...][tokens], rtol=1e-2)
    x = jnp.asarray(RNG.normal(size=(1, 3, 4)), jnp.float32)
    logits = tied.decode(x)
    assert logits.dtype == jnp.float32  # fp32 logits from a bf16 model
    np.testing.assert_allclose(logits, x @ tied.table[...].T, rtol=3e-2, atol=3e-2)
    np.testing.assert_allclose(untied.decode(x), x @ untied.head[...], rtol=1e-5)
    assert tied.head is None and untied.head.shape == (4, 10)


def naive_attention(layer: Attention, x: np.ndarray) -> np.ndarray:
    """Token-by-token reference: each query attends to the persistent slots and its visible past."""
    q = np.asarray(apply_rotary(layer.wq(x), jnp.arange(x.shape[1]), layer.rope_theta))
    k = np.asarray(apply_rotary(layer.wk(x), jnp.arange(x.shape[1]), layer.rope_theta))
    v = np.asarray(layer.wv(x))
    out = np.zeros_like(q)
    for t in range(x.shape[1]):
        first = 0 if layer.window == 0 else max(0, t - layer.window + 1)
        keys, values = k[:, first : t + 1], v[:, first : t + 1]
        if layer.persistent_k is not None:
            n_p = layer.persistent_k.shape[0]
            pk = np.broadcast_to(np.asarray(layer.persistent_k[...]), (x.shape[0], n_p, *q.shape[2:]))
            pv = np.broadcast_to(np.asarray(layer.persistent_v[...]), (x.shape[0], n_p, *q.shape[2:]))
            keys, values = np.concatenate([pk, keys], 1), np.concatenate([pv, values], 1)
        scores = np.einsum("bhd,bshd->bhs", q[:, t], keys) / np.sqrt(q.shape[-1])
        probs = np.exp(scores - scores.max(-1, keepdims=True))
        probs /= probs.sum(-1, keepdims=True)
        out[:, t] = np.einsum("bhs,bshd->bhd", probs, values)
    return np.asarray(layer.wo(jnp.asarray(out)))


@pytest.mark.parametrize("window,n_persistent", [(0, 0), (3, 0), (4, 2)])
def test_attention_matches_reference_and_cache_pieces(window, n_persistent):
    layer = Attention(
        16, 2, 8, window=window, n_persistent=n_persistent, max_len=13, rope_theta=10_000.0,
        init_std=0.3, out_init_std=0.3, dtype=jnp.float32, rngs=nnx.Rngs(0),
    )  # fmt: skip
    x = jnp.asarray(RNG.normal(size=(2, 13, 16)), jnp.float32)
    whole, _ = layer(x, jnp.zeros((), jnp.int32))
    np.testing.assert_allclose(whole, naive_attention(layer, x), rtol=1e-4, atol=1e-5)
    cache, position, pieces = layer.init_cache(2), jnp.zeros((), jnp.int32), []
    assert cache["k"].shape[1] == (window - 1 if window else 13)
    for start, stop in [(0, 5), (5, 6), (6, 13)]:
        y, cache = layer(x[:, start:stop], position, cache)
        position = position + (stop - start)
        pieces.append(y)
    np.testing.assert_allclose(jnp.concatenate(pieces, axis=1), whole, rtol=1e-5, atol=1e-6)


def test_mean_visible_keys():
    assert mean_visible_keys(4, 0, 0) == pytest.approx((1 + 2 + 3 + 4) / 4)
    assert mean_visible_keys(5, 2, 3) == pytest.approx((1 + 2 + 2 + 2 + 2) / 5 + 3)
