"""Chunked fast-weight layers fed in pieces: the state at the last chunk boundary plus the tokens since then.

Every in-context memory here (self-modifying Titans, CMS levels, Titans memories, MAC segments) updates its fast
weights only at chunk boundaries (multiples of its period P from the sequence start), and a token inside a chunk
reads the chunk-start weights (or, for the Titans dual form, weights built from the chunk-start state and the
chunk's own earlier tokens). A piece that ends inside a chunk therefore cannot commit that chunk's update. The
carried state is

    {'fast': fast weights at the last boundary, 'pending': the per-token inputs since it (P − 1 slots, slot j = chunk
     offset j), 'count': how many of those slots are filled (int32 scalar)}

and the next piece is processed as [pending ; piece], re-running the pending tokens from the boundary state and
discarding their outputs. Shapes never depend on `count` (it is traced: generation scans over it): the pending slots
and the piece are written into one zero-padded buffer of whole chunks at a dynamic offset, a scan over its chunks
keeps each chunk's update only if the chunk is complete (`jnp.where`), and the outputs are sliced back out. Padding
after the last real token influences only outputs and updates that are discarded (every layer here is causal).

A one-token piece (decoding) takes a fast path instead: the chunk update runs under `lax.cond` only when the token
completes the chunk (once per P tokens), and the token is written into its pending slot. Its output comes from the
token alone at the chunk-start weights, O(1) per token, where the caller declares `outputs_from_chunk_start` (the
token's output depends only on those weights and its own inputs: CMS levels, the self-modifying mixer with equal
chunk sizes); otherwise (the Titans dual form and MAC segments read the chunk's earlier tokens) from one P-token
chunk [pending ; token ; padding], O(P) per token, instead of the general path's two-chunk buffer.

Document resets (memory/document_resets.py): given per-token `starts` and the memory's initial state, `fn` is called
as fn(fast, chunk, update_mask) and each chunk runs through document_resets.chunk_with_resets; the starts ride in
the pending slots with the tokens, so pieces still equal the whole.

A fresh sequence (`carry=None`) is the training path: the piece starts on a boundary, so the chunking is static —
whole chunks are scanned unpadded and a trailing partial chunk is one shorter call whose update is dropped.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from jax import lax

from hope_jax.memory.document_resets import chunk_with_resets, where_batch

PyTree = Any
ChunkFn = Callable[[PyTree, PyTree], tuple[PyTree, PyTree]]


def init_carry(fast: PyTree, token_shapes: PyTree, period: int, batch_size: int, *, starts: bool = False) -> dict:
    """A fresh carry: `fast` (leaves [B, ...]) and empty pending slots for inputs shaped like `token_shapes`.

    token_shapes: pytree of jax.ShapeDtypeStruct for ONE token's inputs (no batch or time axis).
    starts: the layer runs with document resets (run_chunked's `starts`), so the slots hold each token's start flag.
    """
    if starts:
        token_shapes = {"in": token_shapes, "starts": jax.ShapeDtypeStruct((), jnp.bool_)}
    pending = jax.tree.map(lambda s: jnp.zeros((batch_size, period - 1, *s.shape), s.dtype), token_shapes)
    return {"fast": fast, "pending": pending, "count": jnp.zeros((), jnp.int32)}


def token_shapes_of(inputs: PyTree) -> PyTree:
    """Per-token ShapeDtypeStructs of [B, T, ...] inputs."""
    return jax.tree.map(lambda a: jax.ShapeDtypeStruct(a.shape[2:], a.dtype), inputs)


def _time_pad(a: jax.Array, length: int) -> jax.Array:
    return jnp.pad(a, [(0, 0), (0, length - a.shape[1])] + [(0, 0)] * (a.ndim - 2))


def _place(pending: jax.Array, piece: jax.Array, count: jax.Array, length: int) -> jax.Array:
    """The pending slots zero-padded to `length` tokens with the piece written from slot `count` on."""
    return lax.dynamic_update_slice_in_dim(_time_pad(pending.astype(piece.dtype), length), piece, count, axis=1)


def run_chunked(
    fn: ChunkFn,
    inputs: PyTree,
    period: int,
    *,
    fast: PyTree,
    carry: dict | None,
    remat: bool = False,
    outputs_from_chunk_start: bool = False,
    starts: jax.Array | None = None,
    initial: PyTree = None,
    with_aux: bool = False,
    whole_periods_at_once: bool = False,
) -> tuple:
    """Runs `fn(fast, chunk_inputs) -> (chunk_outputs, new_fast)` over whole chunks of P tokens.

    inputs: pytree of [B, T, ...] per-token inputs of this piece. fast: the initial fast weights, used when carry
    is None (a fresh sequence); otherwise carry['fast'] is used. Returns (outputs [B, T, ...], new carry).
    remat: each chunk's computation is recomputed in the backward pass (jax.checkpoint), so training keeps only
    the fast weights at chunk boundaries.
    outputs_from_chunk_start: the caller's declaration that fn's output for a token depends only on the chunk-start
    fast weights and that token's own inputs (not on the chunk's earlier tokens); lets a one-token piece be computed
    from the token alone (module docstring). Leave False when unsure: the result is then right either way.
    starts: bool [B, T] document starts of this piece (None: no resets); `initial` is then the state a document
    starts from (leaves [B, ...]), fn takes a third argument, the chunk's update mask (None: every token), and the
    carry must come from init_carry(..., starts=True).
    with_aux: fn returns (chunk_outputs, new_fast, aux) and the result is (outputs, new carry, aux stacked over the
    calls of fn [n_calls, ...], complete bool [n_calls]: whether that call's chunk was whole and committed).
    whole_periods_at_once: a fresh sequence's whole periods go to ONE call of fn (a fn that loops over the chunks
    itself, the Pallas kernels of hope_jax/kernels); the trailing partial period is a call of its own as always.
    """
    fn3 = fn if with_aux else (lambda f, c, *mask: (*fn(f, c, *mask), None))
    if starts is not None:
        fn3 = _resetting(fn3, initial)
        inputs = {"in": inputs, "starts": starts}
    length = jax.tree.leaves(inputs)[0].shape[1]
    if carry is None:
        result = _run_fresh(fn3, inputs, period, fast, remat, whole_periods_at_once)
    elif length == 1 and period > 1:
        resets_initial = None if starts is None else initial
        result = _run_token(fn3, inputs, period, carry, remat, outputs_from_chunk_start, resets_initial)
    else:
        result = _run_pieces(fn3, inputs, period, carry, remat)
    return result if with_aux else result[:2]


def _run_pieces(fn, inputs: PyTree, period: int, carry: dict, remat: bool):
    """The general carried path: [pending ; piece] zero-padded to whole chunks at a dynamic offset."""
    length = jax.tree.leaves(inputs)[0].shape[1]
    fast, pending, count = carry["fast"], carry["pending"], carry["count"]
    n_chunks = math.ceil((period - 1 + length) / period)
    padded_len = n_chunks * period + period  # room for the next pending slice at any boundary

    combined = jax.tree.map(lambda old, new: _place(old, new, count, padded_len), pending, inputs)
    chunks = jax.tree.map(lambda a: _split_chunks(a[:, : n_chunks * period], period), combined)
    filled = count + length

    def step(fast, xs):
        index, chunk = xs
        outputs, new_fast, aux = fn(fast, chunk)
        complete = (index + 1) * period <= filled
        new_fast = jax.tree.map(lambda new, old: jnp.where(complete, new, old), new_fast, fast)
        return new_fast, (outputs, aux, complete)

    if remat:
        step = jax.checkpoint(step, prevent_cse=False)  # scanned: see _run_fresh
    fast, (outputs, aux, complete) = lax.scan(step, fast, (jnp.arange(n_chunks), chunks))
    outputs = jax.tree.map(_merge_chunks, outputs)
    outputs = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, count, length, axis=1), outputs)
    boundary = (filled // period) * period
    new_pending = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, boundary, period - 1, axis=1), combined)
    new_carry = {"fast": fast, "pending": new_pending, "count": jnp.asarray(filled % period, jnp.int32)}
    return outputs, new_carry, aux, complete


def _resetting(fn, initial: PyTree):
    """fn(fast, chunk, update_mask) -> (outputs, new_fast, aux) over {'in': chunk, 'starts': [B, P]}
    (document_resets.py)."""

    def chunk_fn(fast, chunk):
        return chunk_with_resets(fn, chunk["starts"], initial, fast, chunk["in"])

    return chunk_fn


def _run_token(fn, inputs: PyTree, period: int, carry: dict, remat: bool, outputs_from_chunk_start: bool, initial):
    """A one-token piece with a carry (decoding): equal to the general path, with the chunk update computed only
    when this token completes the chunk (count + 1 == P) and no buffer longer than one chunk."""
    fast, pending, count = carry["fast"], carry["pending"], carry["count"]
    fn = jax.checkpoint(fn) if remat else fn
    completes = count + 1 == period
    read_fast = fast
    if initial is not None:
        # A start among the chunk's earlier tokens: this token reads the initial state (its own start flag is
        # handled by fn); the unfilled slots are zeros.
        read_fast = where_batch(jnp.any(pending["starts"], axis=1), initial, fast)

    def whole_chunk():  # [pending ; token ; zeros]: the token at offset `count`, every layer being causal
        return jax.tree.map(lambda old, new: _place(old, new, count, period), pending, inputs)

    if outputs_from_chunk_start:
        # Its update (of a one-token chunk) is unused and never computed under jit.
        outputs, _, aux = fn(read_fast, inputs)
        fast = lax.cond(completes, lambda: fn(fast, whole_chunk())[1], lambda: fast)
    else:

        def update_branch():
            return fn(fast, whole_chunk())

        def keep_branch():  # the same outputs; the unused update is dead code inside this branch
            outputs, _, aux = fn(fast, whole_chunk())
            return outputs, fast, aux

        chunk_outputs, fast, aux = lax.cond(completes, update_branch, keep_branch)
        outputs = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, count, 1, axis=1), chunk_outputs)

    def write(old, new):  # the general path's pending slots: the token at `count`, all zeros once the chunk is done
        written = lax.dynamic_update_slice_in_dim(old.astype(new.dtype), new, count, axis=1)
        return jnp.where(completes, jnp.zeros_like(written), written)

    new_pending = jax.tree.map(write, pending, inputs)
    new_count = jnp.where(completes, 0, count + 1).astype(jnp.int32)
    stacked = jax.tree.map(lambda a: a[None], aux)
    return outputs, {"fast": fast, "pending": new_pending, "count": new_count}, stacked, completes[None]


def _split_chunks(a: jax.Array, period: int) -> jax.Array:
    """[B, n·P, ...] -> [n, B, P, ...] (chunk-leading for lax.scan)."""
    return jnp.moveaxis(a.reshape(a.shape[0], a.shape[1] // period, period, *a.shape[2:]), 1, 0)


def _merge_chunks(a: jax.Array) -> jax.Array:
    """[n, B, P, ...] -> [B, n·P, ...]."""
    return jnp.moveaxis(a, 0, 1).reshape(a.shape[1], a.shape[0] * a.shape[2], *a.shape[3:])


def _run_fresh(fn, inputs: PyTree, period: int, fast: PyTree, remat: bool, whole_periods_at_once: bool = False):
    """carry=None (training): the piece starts on a boundary, so everything about the chunking is static.

    The whole chunks are scanned without padding; the trailing T % P tokens are one shorter call of `fn` whose update
    is dropped (an incomplete chunk never updates, and under jit the unused update is not computed at all). Equal to
    the padded general path (every layer is causal and a chunk's update never reaches its own outputs), without
    running a period of P ≫ T tokens on padding.
    """
    length = jax.tree.leaves(inputs)[0].shape[1]
    n_full, n_tail = divmod(length, period)
    whole_len = n_full * period
    pieces, auxes, complete = [], [], []
    if n_full and whole_periods_at_once:  # fn loops over the chunks itself (and rematerialises as it chooses)
        outputs, fast, aux = fn(fast, jax.tree.map(lambda a: a[:, :whole_len], inputs))
        pieces.append(outputs)
        auxes.append(jax.tree.map(lambda a: a[None], aux))
        complete.append(jnp.ones((1,), bool))
    elif n_full:

        def step(fast, chunk):
            outputs, new_fast, aux = fn(fast, chunk)
            return new_fast, (outputs, aux)

        if remat:
            # Inside lax.scan the CSE barriers of jax.checkpoint are unnecessary (the scan body cannot be merged with
            # its recomputation) and they hinder XLA's fusion; a single chunk is a plain call and keeps them.
            step = jax.checkpoint(step, prevent_cse=n_full == 1)
        whole = jax.tree.map(lambda a: _split_chunks(a[:, :whole_len], period), inputs)
        if n_full == 1:  # a plain call, so that an unused end state is not computed at all
            fast, (outputs, aux) = step(fast, jax.tree.map(lambda a: a[0], whole))
            outputs, aux = jax.tree.map(lambda a: a[None], (outputs, aux))
        else:
            fast, (outputs, aux) = lax.scan(step, fast, whole)
        pieces.append(jax.tree.map(_merge_chunks, outputs))
        auxes.append(aux)
        complete.append(jnp.ones((n_full,), bool))
    tail = jax.tree.map(lambda a: a[:, whole_len:], inputs)
    if n_tail:
        tail_fn = jax.checkpoint(fn) if remat else fn
        tail_outputs, _, tail_aux = tail_fn(fast, tail)
        pieces.append(tail_outputs)
        auxes.append(jax.tree.map(lambda a: a[None], tail_aux))
        complete.append(jnp.zeros((1,), bool))
    join = lambda parts, axis: jax.tree.map(lambda *p: jnp.concatenate(p, axis=axis), *parts)
    outputs = join(pieces, 1) if len(pieces) > 1 else pieces[0]
    aux = join(auxes, 0) if len(auxes) > 1 else auxes[0]
    new_pending = jax.tree.map(lambda a: _time_pad(a, period - 1), tail)
    new_carry = {"fast": fast, "pending": new_pending, "count": jnp.asarray(n_tail, jnp.int32)}
    return outputs, new_carry, aux, jnp.concatenate(complete)
