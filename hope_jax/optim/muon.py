"""Muon: momentum, then Newton–Schulz orthogonalisation per weight matrix (HOPE_SPEC E40, σ = NS, m linear).

This transformation sees matrix leaves only; `builder.matrix_or_adamw` routes every other leaf to AdamW."""

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hope_jax.optim.newton_schulz import orthogonalise


class MuonState(NamedTuple):
    momentum: optax.Updates


def shape_scale(shape: Sequence[int], scaling: str) -> float:
    """Per-matrix factor on the orthogonalised update.

    'rms': 0.2*sqrt(max(m, n)) gives the update an RMS close to AdamW's, so AdamW learning rates carry over;
    'spectral': sqrt(max(1, fan_out/fan_in)) for flax's [in, out] kernels; 'none': 1.
    """
    rows, cols = shape[-2], shape[-1]
    if scaling == "rms":
        return 0.2 * math.sqrt(max(rows, cols))
    if scaling == "spectral":
        return math.sqrt(max(1.0, cols / rows))
    if scaling == "none":
        return 1.0
    raise ValueError(f"unknown muon scaling {scaling!r}")


def scale_by_muon(
    *,
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    ns_coeffs: Sequence[float],
    ns_eps: float,
    scaling: str,
) -> optax.GradientTransformation:
    def init_fn(params):
        return MuonState(momentum=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update_fn(updates, state, params=None):
        del params
        new_momentum = jax.tree.map(lambda mu, g: momentum * mu + g, state.momentum, updates)
        if nesterov:
            directions = jax.tree.map(lambda mu, g: g + momentum * mu, new_momentum, updates)
        else:
            directions = new_momentum

        def orthogonal_update(direction, g):
            ortho = orthogonalise(direction, steps=ns_steps, coeffs=ns_coeffs, eps=ns_eps)
            return (shape_scale(direction.shape, scaling) * ortho).astype(g.dtype)

        return jax.tree.map(orthogonal_update, directions, updates), MuonState(momentum=new_momentum)

    return optax.GradientTransformation(init_fn, update_fn)
