"""Muon: momentum, then Newton–Schulz orthogonalisation per weight matrix (HOPE_SPEC E40, σ = NS, m linear).

This transformation sees matrix leaves only; `builder.matrix_or_adamw` routes every other leaf to AdamW. Each leaf is
orthogonalised as the matrix (or stack of matrices) its `MatrixLayout` says it is; the momentum keeps the leaf's shape,
so the optimiser state is laid out and sharded like the parameters."""

import functools
import math
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hope_jax.optim.matrix_layout import MatrixLayout, map_with_layouts, orthogonalise
from hope_jax.optim.newton_schulz import newton_schulz


class MuonState(NamedTuple):
    momentum: optax.Updates


def shape_scale(matrix_shape: tuple[int, int], scaling: str) -> float:
    """Per-matrix factor on the orthogonalised update of an (input features, output features) matrix.

    'rms': 0.2*sqrt(max(m, n)) gives the update an RMS close to AdamW's, so AdamW learning rates carry over;
    'spectral': sqrt(max(1, fan_out/fan_in)); 'none': 1.
    """
    fan_in, fan_out = matrix_shape
    if scaling == "rms":
        return 0.2 * math.sqrt(max(fan_in, fan_out))
    if scaling == "spectral":
        return math.sqrt(max(1.0, fan_out / fan_in))
    if scaling == "none":
        return 1.0
    raise ValueError(f"unknown muon scaling {scaling!r}")


def scale_by_muon(
    *,
    layouts: Mapping[str, MatrixLayout],
    momentum: float,
    nesterov: bool,
    ns_steps: int,
    ns_coeffs: Sequence[float],
    ns_eps: float,
    scaling: str,
) -> optax.GradientTransformation:
    """`layouts` maps each leaf's path string (labels.path_string) to its matrix layout."""
    ns = functools.partial(newton_schulz, steps=ns_steps, coeffs=ns_coeffs, eps=ns_eps)

    def init_fn(params):
        return MuonState(momentum=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update_fn(updates, state, params=None):
        del params
        new_momentum = jax.tree.map(lambda mu, g: momentum * mu + g, state.momentum, updates)
        if nesterov:
            directions = jax.tree.map(lambda mu, g: g + momentum * mu, new_momentum, updates)
        else:
            directions = new_momentum

        def orthogonal_update(layout, direction, g):
            scale = shape_scale(layout.matrix_shape(direction.shape), scaling)
            return (scale * orthogonalise(direction, layout, ns)).astype(g.dtype)

        return map_with_layouts(orthogonal_update, layouts, directions, updates), MuonState(momentum=new_momentum)

    return optax.GradientTransformation(init_fn, update_fn)
