"""Performance rewrites of the inner loops (bench, issue 9) against what they replace: same numbers, larger chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import PREFIX_SUM_MIN, segment_products
from hope_jax.memory.cms import cms_local, cms_local_reference
from hope_jax.memory.recurrence import (
    SOLVE_BLOCK,
    _levelwise_inverse,
    chunk_coefficients,
    chunk_end_state,
    chunk_end_state_in_blocks,
    unit_lower_inverse,
    unit_lower_solve,
)


def unit_lower(size, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    return np.tril(rng.normal(size=(size, size)) * scale / np.sqrt(size), -1) + np.eye(size)


@pytest.mark.parametrize("size", [16, 13])
def test_solve_and_inverse_vjps_are_the_autodiff_gradients(size):
    """unit_lower_solve (inverse path) and unit_lower_inverse carry hand-written VJPs; they must equal autodiff through
    the level-wise construction they replace, for the system, the right-hand side and everything upstream."""
    a = jnp.asarray(unit_lower(size, scale=2.0), jnp.float32)
    b = jnp.asarray(np.random.default_rng(3).normal(size=(size, 6)), jnp.float32)
    weights = jnp.asarray(np.random.default_rng(4).normal(size=(size, 6)), jnp.float32)
    loss = lambda solve: lambda a, b: jnp.sum(weights * jnp.sin(solve(jnp.tanh(a) + jnp.eye(size), b)))
    autodiff = jax.grad(loss(lambda a, b: _levelwise_inverse(a) @ b), argnums=(0, 1))(a, b)
    for solve in (unit_lower_solve, lambda a, b: unit_lower_inverse(a) @ b):
        got = jax.grad(loss(solve), argnums=(0, 1))(a, b)
        for g, expected in zip(got, autodiff, strict=True):
            assert float(jnp.max(jnp.abs(expected))) > 0.1
            np.testing.assert_allclose(g, expected, rtol=2e-5, atol=2e-5)


@pytest.mark.parametrize(("size", "block"), [(40, 16), (48, 16), (SOLVE_BLOCK + 36, SOLVE_BLOCK), (20, 64)])
def test_blocked_solve_is_the_triangular_solve(size, block):
    a = unit_lower(size)
    b = np.random.default_rng(1).normal(size=(size, 5))
    expected = scipy.linalg.solve_triangular(a, b, lower=True, unit_diagonal=True)
    got = unit_lower_solve(jnp.asarray(a, jnp.float32), jnp.asarray(b, jnp.float32), block=block)
    np.testing.assert_allclose(got, expected, rtol=1e-5, atol=1e-5)


def test_blocked_solve_gradients_match_the_inverse_path():
    a = jnp.asarray(unit_lower(40), jnp.float32)
    b = jnp.asarray(np.random.default_rng(2).normal(size=(40, 3)), jnp.float32)
    loss = lambda solve: lambda a, b: jnp.sum(jnp.sin(solve(a, b)))
    blocked = jax.grad(loss(lambda a, b: unit_lower_solve(a, b, block=16)), argnums=(0, 1))(a, b)
    full = jax.grad(loss(lambda a, b: unit_lower_inverse(a) @ b), argnums=(0, 1))(a, b)
    # Both read only the strictly lower triangle of a (unit diagonal assumed), so the gradients agree everywhere.
    for got, expected in zip(blocked, full, strict=True):
        np.testing.assert_allclose(got, expected, rtol=1e-4, atol=1e-5)


def test_cms_level_with_a_period_above_the_solve_block_matches_the_per_token_reference():
    """A CMS mid level (period ≫ SOLVE_BLOCK) runs its chunks in sub-chunks; the per-token reference never solves."""
    period, length, d, hidden = SOLVE_BLOCK + 36, 2 * SOLVE_BLOCK + 72 + 10, 4, 8
    rng = np.random.default_rng(3)
    normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    weights = {"w_gate": normal(1, d, hidden, scale=0.3), "w_up": normal(1, d, hidden, scale=0.3),
               "w_down": normal(1, hidden, d, scale=0.3)}  # fmt: skip
    x, k, v = normal(1, length, d), unit(normal(1, length, d)), normal(1, length, d)
    y, w_end = jax.jit(lambda *a: cms_local(*a, inner_lr=0.5, inner_decay=0.2, period=period))(weights, x, k, v)
    y_ref, w_ref = jax.jit(lambda *a: cms_local_reference(*a, inner_lr=0.5, inner_decay=0.2, period=period))(
        weights, x, k, v
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    for name in w_end:
        np.testing.assert_allclose(w_end[name], w_ref[name], rtol=1e-4, atol=1e-4)
        assert np.abs(w_end[name] - weights[name]).max() > 1e-3


def dgd_chunk_inputs(size, d_in=5, d_out=3, seed=4):
    """Per-token inputs of one DGD chunk: unit-norm x, steps, log retention / momentum, β ≤ ½ (the DGD bound at η ≤ 1)."""
    rng = np.random.default_rng(seed)
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    x = rng.normal(size=(size, d_in))
    return {
        "w0": f32(rng.normal(size=(d_in, d_out))),
        "s0": f32(rng.normal(size=(d_in, d_out)) * 0.1),
        "x": f32(x / np.linalg.norm(x, axis=-1, keepdims=True)),
        "step": f32(rng.normal(size=(size, d_out)) * 0.1),
        "log_retain": f32(np.log(rng.uniform(0.9, 1.0, size))),
        "log_momentum": f32(np.log(rng.uniform(0.5, 0.95, size))),
        "beta": f32(rng.uniform(0.0, 0.5, size)),
    }


@pytest.mark.parametrize("momentum", [True, False])
@pytest.mark.parametrize(("size", "block"), [(100, 16), (96, 32), (7, 16)])
def test_end_state_in_sub_chunks_is_the_one_chunk_end_state(size, block, momentum):
    """Sub-chunks (full ones scanned, a shorter tail) reach the same end state as one solve over the whole chunk."""
    c = dgd_chunk_inputs(size)
    log_momentum, s0 = (c["log_momentum"], c["s0"]) if momentum else (None, None)
    whole = chunk_end_state(
        c["w0"], s0, c["x"], c["step"], chunk_coefficients(c["log_retain"], log_momentum), beta=c["beta"]
    )
    blocked = chunk_end_state_in_blocks(
        c["w0"], s0, c["x"], c["step"], c["log_retain"], log_momentum, beta=c["beta"], block=block
    )
    for got, expected in zip(blocked, whole, strict=True):
        if expected is None:
            assert got is None
        else:
            np.testing.assert_allclose(got, expected, rtol=2e-5, atol=2e-5)
            assert np.abs(expected - c["w0"]).max() > 1e-2  # the chunk really moved the weights


def test_end_state_in_sub_chunks_has_the_one_chunk_gradients():
    c = dgd_chunk_inputs(40)
    args = (c["w0"], c["s0"], c["x"], c["step"], c["log_retain"], c["log_momentum"], c["beta"])

    def loss(end_state):
        return lambda *a: jnp.sum(jnp.sin(end_state(*a)[0]))

    whole = lambda w0, s0, x, step, lr, lm, beta: chunk_end_state(
        w0, s0, x, step, chunk_coefficients(lr, lm), beta=beta
    )
    blocked = lambda *a: chunk_end_state_in_blocks(*a[:6], beta=a[6], block=16)
    expected = jax.grad(loss(whole), argnums=range(7))(*args)
    got = jax.grad(loss(blocked), argnums=range(7))(*args)
    for g, e in zip(got, expected, strict=True):
        np.testing.assert_allclose(g, e, rtol=1e-4, atol=1e-5)


def test_segment_products_prefix_sum_path_is_the_cumulative_sum():
    """Above PREFIX_SUM_MIN the masked cumulative sum is a parallel prefix sum: same products as the direct one."""
    size = PREFIX_SUM_MIN + 37
    log_a = np.log(np.random.default_rng(5).uniform(0.5, 1.0, size))
    expected = np.tril(np.exp(np.cumsum(log_a)[:, None] - np.cumsum(log_a)[None, :]))
    np.testing.assert_allclose(segment_products(jnp.asarray(log_a, jnp.float32)), expected, rtol=1e-5, atol=1e-7)


@pytest.mark.parametrize("rows", [(4, 3, 5), (200, 100)], ids=["stacked", "above_max_rows"])
@pytest.mark.parametrize("kind", ["linear", "mlp", "swiglu"])
def test_one_pass_over_stacked_blocks_is_one_pass_per_block(kind, rows):
    """fast_mlp.forward_parts_of_blocks (the chunk updates' keys, values and inputs read in one pass; block by block
    above STACKED_ROWS_MAX rows) returns, block by block, every intermediate that forward_parts returns for it alone."""
    assert (sum(rows) > fast_mlp.STACKED_ROWS_MAX) == (len(rows) == 2)
    rng = np.random.default_rng(5)
    normal = lambda *shape: jnp.asarray(rng.normal(size=shape) * 0.5, jnp.float32)
    names = {"linear": ("w",), "mlp": ("w_in", "w_out"), "swiglu": ("w_gate", "w_up", "w_down")}[kind]
    weights = {name: normal(6, 6) for name in names}
    blocks = tuple(normal(n, 6) for n in rows)
    stacked = fast_mlp.forward_parts_of_blocks(weights, blocks, residual=True, activation="gelu")
    assert len(stacked) == len(blocks)
    for block, parts in zip(blocks, stacked, strict=True):
        alone = fast_mlp.forward_parts(weights, block, residual=True, activation="gelu")
        assert parts.keys() == alone.keys() and "out" in parts
        for name in alone:
            np.testing.assert_allclose(parts[name], alone[name], rtol=1e-6, atol=1e-6)
