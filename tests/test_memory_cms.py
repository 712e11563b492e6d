"""CMS `local` level: chunked DGD update against the per-token reference, lr = 0 is the plain MLP, causality."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hope_jax.memory.cms import cms_local, cms_local_reference, level_forward
from tests.gradcheck import assert_gradient_matches_finite_differences

B, T, D, HIDDEN = 2, 20, 8, 16
TOL = dict(rtol=1e-5, atol=1e-5)
KINDS = ("mlp", "swiglu")


def make_inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: (rng.normal(size=shape) * scale).astype(dtype)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    return dict(
        mlp={"w_in": normal(B, D, HIDDEN, scale=0.3), "w_out": normal(B, HIDDEN, D, scale=0.3)},
        swiglu={
            "w_gate": normal(B, D, HIDDEN, scale=0.3),
            "w_up": normal(B, D, HIDDEN, scale=0.3),
            "w_down": normal(B, HIDDEN, D, scale=0.3),
        },
        x=normal(B, T, D),
        k=unit(normal(B, T, D)),
        v=normal(B, T, D),
    )


@functools.partial(jax.jit, static_argnames="period")
def chunked_both(inp, lr, period):
    return {
        kind: cms_local(inp[kind], inp["x"], inp["k"], inp["v"], inner_lr=lr, inner_decay=0.2, period=period)
        for kind in KINDS
    }


@jax.jit
def reference_both(inp, lr, period):
    # period is traced: the reference only uses it in `t % period`, so one compilation serves every period
    return {
        kind: cms_local_reference(inp[kind], inp["x"], inp["k"], inp["v"], inner_lr=lr, inner_decay=0.2, period=period)
        for kind in KINDS
    }


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.mark.parametrize("period", [1, 4, 16])  # 16 does not divide T = 20
def test_chunked_matches_per_token_reference(inputs, period):
    fast = chunked_both(inputs, 0.5, period)
    slow = reference_both(inputs, 0.5, period)
    for kind in KINDS:
        y, w = fast[kind]
        y_ref, w_ref = slow[kind]
        assert np.abs(y_ref).max() < 20.0
        np.testing.assert_allclose(y, y_ref, **TOL)
        for name in w:
            np.testing.assert_allclose(w[name], w_ref[name], **TOL)
            assert np.abs(w[name] - inputs[kind][name]).max() > 1e-3  # the level really learned in context
        if period == 16:
            # Tokens of the first chunk read the initial weights: the level is the plain MLP there.
            plain = jax.vmap(level_forward)(inputs[kind], inputs["x"])
            np.testing.assert_array_equal(y[:, :16], plain[:, :16])
            assert np.abs(y[:, 16:] - plain[:, 16:]).max() > 1e-3


def test_zero_learning_rate_is_exactly_the_plain_mlp(inputs):
    """lr = 0: the fast weights stay bit-identical to the initial ones at every chunk boundary, so every chunk reads
    the plain MLP. The outputs are compared at float32 rounding only because XLA's vectorised activation code
    rounds the last ulp differently for a [4, d] chunk than for a [20, d] sequence (the weights themselves are
    checked bit for bit)."""
    out = chunked_both(inputs, 0.0, 4)
    for kind in KINDS:
        y, w = out[kind]
        for name in w:
            np.testing.assert_array_equal(w[name], inputs[kind][name])
        np.testing.assert_allclose(y, jax.vmap(level_forward)(inputs[kind], inputs["x"]), rtol=2e-7, atol=3e-7)


def test_causality_and_chunk_start_reads(inputs):
    """Perturbing token t (x, k, v): earlier outputs and the rest of t's chunk are unchanged."""
    t0 = 5
    base = chunked_both(inputs, 0.5, 4)
    moved_inputs = dict(inputs)
    for name in ("x", "k", "v"):
        arr = np.array(inputs[name])
        arr[:, t0] = arr[:, t0] * 0.5 + 0.1
        moved_inputs[name] = arr
    moved = chunked_both(moved_inputs, 0.5, 4)
    same = [t for t in range(8) if t != t0]
    for kind in KINDS:
        np.testing.assert_array_equal(moved[kind][0][:, same], base[kind][0][:, same])
        assert np.abs(moved[kind][0][:, 8:] - base[kind][0][:, 8:]).max() > 1e-4


def test_per_sample_isolation(inputs):
    other = make_inputs(seed=9)
    mixed = jax.tree.map(lambda a, o: np.concatenate([a[:1], o[1:]], axis=0), inputs, other)
    base, moved = chunked_both(inputs, 0.5, 4), chunked_both(mixed, 0.5, 4)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(moved)):
        np.testing.assert_array_equal(a[:1], b[:1])
        assert np.abs(a[1:] - b[1:]).max() > 1e-4


def test_outer_gradient_matches_finite_differences():
    """Directional derivative in (initial weights, x, k, v, lr): autodiff vs central differences, float64."""
    with jax.enable_x64(True):
        inp = make_inputs(seed=3, dtype=np.float64)
        params = {"w": inp["swiglu"], "x": inp["x"], "k": inp["k"], "v": inp["v"], "lr": np.float64(0.5)}

        def loss(p):
            y, w_end = cms_local(
                p["w"],
                p["x"],
                p["k"],
                p["v"],
                inner_lr=p["lr"],
                inner_decay=0.2,
                period=4,
                remat_group=2,
                accum_dtype=jnp.float64,
            )
            return jnp.sum(jnp.sin(y)) + jnp.sum(w_end["w_down"] ** 2)

        assert_gradient_matches_finite_differences(loss, params)


def test_linear_level_is_rejected(inputs):
    with pytest.raises(ValueError, match="CMS level is a 2-layer MLP"):
        cms_local(
            {"w": inputs["mlp"]["w_in"]}, inputs["x"], inputs["k"], inputs["v"], inner_lr=0.1, inner_decay=0.0, period=4
        )
