"""Newton–Schulz orthogonalisation (HOPE_SPEC §8, NL-A Eqs.42–44; quintic variant from Muon literature)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def newton_schulz(g_mn: jax.Array, *, steps: int, coeffs: Sequence[float], eps: float = 1e-7) -> jax.Array:
    """Approximate polar factor: X0 = G/||G||_F, then `steps` times X <- a X + (b A + c A^2) X, A = X X^T.

    (a, b, c) = (1.5, -0.5, 0) is the cubic iteration, which converges to U V^T; the default quintic pushes
    singular values into roughly [0.7, 1.2] in 5 steps. Runs in float32 on the wide orientation (rows <= cols)
    for a small A."""
    if g_mn.ndim != 2:
        raise ValueError(f"newton_schulz needs a matrix, got shape {g_mn.shape}")
    a, b, c = (float(v) for v in coeffs)
    x = g_mn.astype(jnp.float32)
    transposed = x.shape[0] > x.shape[1]
    if transposed:
        x = x.T
    x = x / (jnp.linalg.norm(x) + eps)
    for _ in range(steps):
        a_mm = x @ x.T
        x = a * x + (b * a_mm + c * (a_mm @ a_mm)) @ x
    if transposed:
        x = x.T
    return x.astype(g_mn.dtype)


def orthogonalise(g: jax.Array, *, steps: int, coeffs: Sequence[float], eps: float = 1e-7) -> jax.Array:
    """Newton–Schulz on a matrix, or on each trailing matrix of a stack (ndim > 2: leading dims are
    layers/heads)."""
    fn = lambda m: newton_schulz(m, steps=steps, coeffs=coeffs, eps=eps)
    if g.ndim == 2:
        return fn(g)
    if g.ndim < 2:
        raise ValueError(f"cannot orthogonalise a {g.ndim}-D array of shape {g.shape}")
    flat = g.reshape((-1, *g.shape[-2:]))
    return jax.vmap(fn)(flat).reshape(g.shape)


def is_matrix(leaf, stacked: bool) -> bool:
    """Which leaves the orthogonalising kinds handle (others take the AdamW fallback): 2-D, or >=2-D when
    stacked."""
    return jnp.ndim(leaf) == 2 or (stacked and jnp.ndim(leaf) > 2)
