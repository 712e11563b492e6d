"""Document resets inside a chunk: which tokens read the initial state, which tokens the chunk's update learns from.

A packed window holds several documents; with `model.reset_at_token` every in-context state restarts where a
document starts (`starts[b, t]`: token t of sequence b is a reset token). A chunked memory keeps its state
constant inside a chunk and updates it at the chunk's end from the chunk's tokens, so a start inside a chunk
splits the chunk in two. For a chunk with start state S, the memory's initial state S₀ and starts inside it:

    token t reads S₀ if a start lies at or before t inside the chunk ("seen"), else S;
    the chunk's update starts from S₀ and learns only from the tokens at or after the chunk's last start
    ("update mask"; the earlier tokens take no step and leave no decay), so the state leaving the chunk depends on
    the current document alone.

Where a chunk has no start, nothing changes (S, every token learns). Exact for every document that starts in one
chunk and goes on past it; a document that starts and ends inside one chunk reads S₀ only (its tokens are not the
chunk's last document, so they do not update the state that its own later tokens read). A document's tokens never
read anything of an earlier document: tests/test_document_resets.py checks that outputs after a start do not
change when the tokens before it do.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

PyTree = Any


def seen_start(starts_bt: jax.Array) -> jax.Array:
    """bool [B, T]: a start lies at or before t (within the given span)."""
    return jnp.cumsum(starts_bt.astype(jnp.int32), axis=1) > 0


def update_mask(starts_bt: jax.Array) -> jax.Array:
    """float32 [B, T]: 1 where no start lies after t within the span (t is in the span's last document), else 0."""
    after = jnp.cumsum(starts_bt[:, ::-1].astype(jnp.int32), axis=1)[:, ::-1] - starts_bt.astype(jnp.int32)
    return (after == 0).astype(jnp.float32)


def where_batch(flag_b: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Per sequence b, `on_true`'s leaves where flag_b[b] else `on_false`'s (leaves batch-leading)."""
    pick = lambda a, b: jnp.where(flag_b.reshape(flag_b.shape + (1,) * (a.ndim - 1)), a, b)
    return jax.tree.map(pick, on_true, on_false)


def where_tokens(flag_bt: jax.Array, on_true: PyTree, on_false: PyTree) -> PyTree:
    """Per token (b, t), `on_true`'s leaves where flag_bt else `on_false`'s (leaves [B, T, ...])."""
    pick = lambda a, b: jnp.where(flag_bt.reshape(flag_bt.shape + (1,) * (a.ndim - 2)), a, b)
    return jax.tree.map(pick, on_true, on_false)


def chunk_with_resets(step, chunk_starts_bt: jax.Array, initial: PyTree, state: PyTree, chunk: PyTree):
    """`step(state, chunk, update_mask) -> (new_state, outputs, aux)` over one chunk with document starts (module
    docstring); returns the same triple, aux from the call that updates.

    `initial`: the memory's initial state S₀ (leaves [B, ...]). The outputs of tokens before the chunk's first start
    come from a second, output-only call at the carried state (its update is unused and, under jit, not computed).
    """
    seen = seen_start(chunk_starts_bt)
    start_state = where_batch(seen[:, -1], initial, state)
    new_state, outputs, aux = step(start_state, chunk, update_mask(chunk_starts_bt))
    carried_outputs = step(state, chunk, None)[1]
    return new_state, where_tokens(seen, outputs, carried_outputs), aux
