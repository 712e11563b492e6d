"""Optimisation by levels (DESIGN D7).

Regex level labels; per-level optax chains (AdamW, Muon, M3, deep momentum) with their own schedules,
weight-decay masks and periods, combined with optax.partition. Muon and M3 read each weight as the matrix its
logical axis names declare (matrix_layout.py).
"""

from hope_jax.optim.builder import build_optimizer, period_in_steps
from hope_jax.optim.config import default_optim_config, level_config
from hope_jax.optim.deep_momentum import scale_by_deep_momentum, scale_by_delta_momentum
from hope_jax.optim.labels import level_update_norms, make_labeller, path_string
from hope_jax.optim.m3 import scale_by_m3
from hope_jax.optim.matrix_layout import MatrixLayout, layout_from_axis_names, matrix_layouts, orthogonalise
from hope_jax.optim.muon import scale_by_muon
from hope_jax.optim.newton_schulz import newton_schulz
from hope_jax.optim.schedules import make_schedule

__all__ = [
    "MatrixLayout",
    "build_optimizer",
    "default_optim_config",
    "level_config",
    "layout_from_axis_names",
    "level_update_norms",
    "make_labeller",
    "make_schedule",
    "matrix_layouts",
    "newton_schulz",
    "orthogonalise",
    "path_string",
    "period_in_steps",
    "scale_by_deep_momentum",
    "scale_by_delta_momentum",
    "scale_by_m3",
    "scale_by_muon",
]
