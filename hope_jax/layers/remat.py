"""Rematerialisation of one block by config name (nnx.remat = jax.checkpoint for NNX modules)."""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

# 'none': keep every activation. 'full': keep only the block inputs, recompute the rest in the backward pass.
# The others are jax.checkpoint_policies: which intermediates to keep (matmul outputs, with or without batch dims).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


def maybe_remat(fn: Callable, policy_name: str) -> Callable:
    """fn itself for 'none', else nnx.remat(fn) with the named policy; unknown names fail with the list."""
    if policy_name == "none":
        return fn
    if policy_name not in REMAT_POLICIES:
        known = ", ".join(["none", *REMAT_POLICIES])
        raise ValueError(f"model.remat = {policy_name!r} is not a remat policy; known: {known}")
    return nnx.remat(fn, policy=REMAT_POLICIES[policy_name])
