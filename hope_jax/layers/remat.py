"""Rematerialisation of one block by config name.

Built on jax.checkpoint over a pure function of the block's state rather than on nnx.remat: nnx.remat
writes the variables back after the call, which fails when the block's parameters come from an outer
trace (a model merged under jit and then called inside lax.scan, as generation does). Blocks must not
mutate their parameters; values they sow (nnx.Intermediate diagnostics) are handed back and written into
the block.
"""

from __future__ import annotations

from collections.abc import Callable

import jax
from flax import nnx

# 'full': keep only the block inputs, recompute everything in the backward pass. The others are
# jax.checkpoint_policies naming which intermediates to keep (matmul outputs, with or without batch dims).
REMAT_POLICIES: dict[str, Callable | None] = {
    "full": None,
    "dots_saveable": jax.checkpoint_policies.dots_saveable,
    "dots_with_no_batch_dims_saveable": jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    "nothing_saveable": jax.checkpoint_policies.nothing_saveable,
}


def maybe_remat(fn: Callable, policy_name: str) -> Callable:
    """fn(module, *args) itself for 'none', else its rematerialised version; unknown names fail."""
    if policy_name == "none":
        return fn
    if policy_name not in REMAT_POLICIES:
        known = ", ".join(["none", *REMAT_POLICIES])
        raise ValueError(f"model.remat = {policy_name!r} is not a remat policy; known: {known}")

    def rematerialised(module: nnx.Module, *args):
        graphdef, state = nnx.split(module)

        def pure(state, *args):
            inner = nnx.merge(graphdef, state)
            return fn(inner, *args), nnx.state(inner, nnx.Intermediate)

        out, sown = jax.checkpoint(pure, policy=REMAT_POLICIES[policy_name])(state, *args)
        if jax.tree.leaves(sown):
            nnx.update(module, sown)
        return out

    return rematerialised
