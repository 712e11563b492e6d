"""Shared check: outer gradients through the inner loops agree with central finite differences (float64)."""

import jax
import numpy as np


def assert_gradient_matches_finite_differences(loss, params, *, rtol=1e-6, h=1e-6, seed=4):
    """d loss(params + s·direction)/ds at s = 0, by jax.grad and by central differences along one random direction.

    h = 1e-6 in float64: the O(h²) truncation and the round-off both stay well below rtol.
    """
    grad = jax.jit(jax.grad(loss))(params)
    assert all(np.all(np.isfinite(g)) for g in jax.tree.leaves(grad))
    rng = np.random.default_rng(seed)
    direction = jax.tree.map(lambda a: rng.normal(size=np.shape(a)), params)
    analytic = sum(np.sum(g * d) for g, d in zip(jax.tree.leaves(grad), jax.tree.leaves(direction), strict=True))
    loss_jit = jax.jit(loss)
    shifted = lambda sign: jax.tree.map(lambda p, d: p + sign * h * d, params, direction)
    numeric = (loss_jit(shifted(1.0)) - loss_jit(shifted(-1.0))) / (2 * h)
    np.testing.assert_allclose(analytic, numeric, rtol=rtol)
