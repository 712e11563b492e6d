"""Performance rewrites of the inner loops (bench, issue 9) against what they replace: same numbers, larger chunks."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import scipy.linalg

from hope_jax.memory import reference
from hope_jax.memory.cms import cms_local
from hope_jax.memory.recurrence import SOLVE_BLOCK, unit_lower_inverse, unit_lower_solve


def unit_lower(size, seed=0, scale=0.3):
    rng = np.random.default_rng(seed)
    return np.tril(rng.normal(size=(size, size)) * scale / np.sqrt(size), -1) + np.eye(size)


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
    """A CMS mid level (period ≫ SOLVE_BLOCK) takes the blocked path; the per-token reference never solves."""
    period, length, d, hidden = SOLVE_BLOCK + 36, 2 * SOLVE_BLOCK + 72 + 10, 4, 8
    rng = np.random.default_rng(3)
    normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    weights = {"w_gate": normal(1, d, hidden, scale=0.3), "w_up": normal(1, d, hidden, scale=0.3),
               "w_down": normal(1, hidden, d, scale=0.3)}  # fmt: skip
    x, k, v = normal(1, length, d), unit(normal(1, length, d)), normal(1, length, d)
    y, w_end = jax.jit(lambda *a: cms_local(*a, lr=0.5, decay=0.2, period=period))(weights, x, k, v)
    y_ref, w_ref = jax.jit(lambda *a: reference.cms_local_reference(*a, lr=0.5, decay=0.2, period=period))(
        weights, x, k, v
    )
    np.testing.assert_allclose(y, y_ref, rtol=1e-4, atol=1e-4)
    for name in w_end:
        np.testing.assert_allclose(w_end[name], w_ref[name], rtol=1e-4, atol=1e-4)
        assert np.abs(w_end[name] - weights[name]).max() > 1e-3
