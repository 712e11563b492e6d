"""Newton–Schulz orthogonalisation (HOPE_SPEC §8, NL-A Eqs.42–44; quintic variant from Muon literature)."""

from collections.abc import Sequence

import jax
import jax.numpy as jnp


def newton_schulz(g_mn: jax.Array, *, steps: int, coeffs: Sequence[float], eps: float = 1e-7) -> jax.Array:
    """Approximate polar factor: X0 = G/||G||_F, then `steps` times X <- a X + (b A + c A^2) X, A = X X^T.

    (a, b, c) = (1.5, -0.5, 0) is the cubic iteration, which converges to U V^T; the default quintic pushes
    singular values into roughly [0.7, 1.2] in 5 steps. Runs in float32 on the wide orientation (rows <= cols)
    for a small A. Stacks of matrices go through `matrix_layout.orthogonalise`, which knows which axes they are."""
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
