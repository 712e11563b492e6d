"""The one chunk driver: runs any memory's per-chunk step over a sequence, or over a sequence fed in pieces.

A step is a pure function `step(state, chunk) -> (state, outputs)`: the memory's state at a chunk boundary and the
chunk's per-token inputs in, the state at the next boundary and the chunk's per-token outputs out (memory/titans.py,
memory/cms.py, memory/self_modifying.py each define theirs beside the memory's per-token reference). Every
in-context memory here updates its fast weights only at chunk boundaries (multiples of its period P from the sequence
start); a token inside a chunk reads the chunk-start state (or, for the Titans dual form, a state built from it and
the chunk's own earlier tokens).

`scan_sequence` runs a step over one whole sequence: `lax.scan` over the chunks, every `remat_group` consecutive
chunks in one `jax.checkpoint` (backward keeps the state at group boundaries plus one group's intermediates; 0 = no
rematerialisation), and a trailing partial chunk (T % P tokens) as one shorter call whose update is kept: the end of
the sequence acts as a boundary (the memory library's convention, memory/__init__.py).

`run_chunked` is what the models call: batch-leading inputs [B, T, ...], a piece of a sequence that may not start or
end on a boundary. A piece that ends inside a chunk cannot commit that chunk's update, so the carried state is

    {'fast': the state at the last boundary, 'pending': the per-token inputs since it (P − 1 slots, slot j = chunk
     offset j), 'count': how many of those slots are filled (int32 scalar)}

and the next piece is processed as [pending ; piece], re-running the pending tokens from the boundary state and
discarding their outputs. Shapes never depend on `count` (it is traced: generation scans over it): the pending slots
and the piece are written into one zero-padded buffer of whole chunks at a dynamic offset, a scan over its chunks
keeps each chunk's update only if the chunk is complete (`jnp.where`), and the outputs are sliced back out. Padding
after the last real token influences only outputs and updates that are discarded (every layer here is causal).

A one-token piece (decoding) takes a fast path instead: the chunk update runs under `lax.cond` only when the token
completes the chunk (once per P tokens), and the token is written into its pending slot. Its output comes from the
token alone at the chunk-start state, O(1) per token, where the caller declares `outputs_from_chunk_start` (the
token's output depends only on that state and its own inputs: CMS levels, the self-modifying mixer with equal
chunk sizes); otherwise (the Titans dual form and MAC segments read the chunk's earlier tokens) from one P-token
chunk [pending ; token ; padding], O(P) per token, instead of the general path's two-chunk buffer.

Document resets (memory/document_resets.py): given per-token `starts` and the memory's initial state, the step is
called as step(state, chunk, update_mask) and each chunk runs through document_resets.chunk_with_resets; the starts
ride in the pending slots with the tokens, so pieces still equal the whole.

A fresh sequence (`carry=None`) is the training path: the piece starts on a boundary, so the chunking is static —
the same loop as scan_sequence, except that the trailing partial chunk's update is dropped (it stays pending).
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
Step = Callable[..., tuple]


def scan_sequence(
    step: Step, state: PyTree, inputs: PyTree, chunk_size: int, *, remat_group: int = 1, time_axis: int = 0
) -> tuple[PyTree, PyTree]:
    """`step(state, chunk) -> (state, outputs)` over a whole sequence; returns (end state, outputs).

    inputs: pytree whose leaves have time at `time_axis` (0: one sequence [T, ...]; batched steps take e.g. [B, H, T,
    ...] with time_axis 2), and the outputs come back in the same layout. The trailing partial chunk updates the state
    (module docstring)."""
    _check_options(chunk_size, remat_group)
    with_aux = lambda s, c: (*step(s, c), None)
    state, outputs, *_ = _run_fresh(with_aux, inputs, chunk_size, state, remat_group, time_axis, tail_updates=True)
    return state, outputs


def _check_options(chunk_size: int, remat_group: int) -> None:
    if chunk_size < 1:
        raise ValueError(f"chunk_size must be a positive integer, got {chunk_size}")
    if remat_group < 0:
        raise ValueError(f"remat_group must be >= 0 (0 = no rematerialisation), got {remat_group}")


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
    step: Step,
    inputs: PyTree,
    period: int,
    *,
    fast: PyTree,
    carry: dict | None,
    remat_group: int = 0,
    outputs_from_chunk_start: bool = False,
    starts: jax.Array | None = None,
    initial: PyTree = None,
    with_aux: bool = False,
    whole_periods_at_once: bool = False,
) -> tuple:
    """Runs `step(state, chunk_inputs) -> (new_state, chunk_outputs)` over whole chunks of P tokens of a piece.

    inputs: pytree of [B, T, ...] per-token inputs of this piece. fast: the initial state, used when carry is None (a
    fresh sequence); otherwise carry['fast'] is used. Returns (outputs [B, T, ...], new carry).
    remat_group: chunks per jax.checkpoint group (0 = none): training keeps only the states at group boundaries. A
    piece with a carry checkpoints every chunk when it is > 0.
    outputs_from_chunk_start: the caller's declaration that the step's output for a token depends only on the
    chunk-start state and that token's own inputs (not on the chunk's earlier tokens); lets a one-token piece be
    computed from the token alone (module docstring). Leave False when unsure: the result is then right either way.
    starts: bool [B, T] document starts of this piece (None: no resets); `initial` is then the state a document
    starts from (leaves [B, ...]), the step takes a third argument, the chunk's update mask (None: every token), and
    the carry must come from init_carry(..., starts=True).
    with_aux: the step returns (new_state, chunk_outputs, aux) and the result is (outputs, new carry, aux stacked over
    the calls of the step [n_calls, ...], complete bool [n_calls]: whether that call's chunk was whole and committed).
    whole_periods_at_once: a fresh sequence's whole periods go to ONE call of the step (a step that loops over the
    chunks itself, the Pallas kernels of hope_jax/kernels); the trailing partial period is a call of its own as always.
    """
    _check_options(period, remat_group)
    step3 = step if with_aux else (lambda s, c, *mask: (*step(s, c, *mask), None))
    if starts is not None:
        step3 = _resetting(step3, initial)
        inputs = {"in": inputs, "starts": starts}
    length = jax.tree.leaves(inputs)[0].shape[1]
    if carry is None:
        fast, outputs, aux, complete, tail = _run_fresh(
            step3, inputs, period, fast, remat_group, 1, tail_updates=False, whole_periods_at_once=whole_periods_at_once
        )
        new_pending = jax.tree.map(lambda a: _time_pad(a, period - 1), tail)
        count = jnp.asarray(jax.tree.leaves(tail)[0].shape[1], jnp.int32)
        result = outputs, {"fast": fast, "pending": new_pending, "count": count}, aux, complete
    elif length == 1 and period > 1:
        resets_initial = None if starts is None else initial
        result = _run_token(step3, inputs, period, carry, remat_group > 0, outputs_from_chunk_start, resets_initial)
    else:
        result = _run_pieces(step3, inputs, period, carry, remat_group > 0)
    return result if with_aux else result[:2]


def _run_pieces(step, inputs: PyTree, period: int, carry: dict, remat: bool):
    """The general carried path: [pending ; piece] zero-padded to whole chunks at a dynamic offset."""
    length = jax.tree.leaves(inputs)[0].shape[1]
    fast, pending, count = carry["fast"], carry["pending"], carry["count"]
    n_chunks = math.ceil((period - 1 + length) / period)
    padded_len = n_chunks * period + period  # room for the next pending slice at any boundary

    combined = jax.tree.map(lambda old, new: _place(old, new, count, padded_len), pending, inputs)
    chunks = jax.tree.map(lambda a: _split_chunks(a[:, : n_chunks * period], period, 1), combined)
    filled = count + length

    def body(fast, xs):
        index, chunk = xs
        new_fast, outputs, aux = step(fast, chunk)
        complete = (index + 1) * period <= filled
        new_fast = jax.tree.map(lambda new, old: jnp.where(complete, new, old), new_fast, fast)
        return new_fast, (outputs, aux, complete)

    if remat:
        body = jax.checkpoint(body, prevent_cse=False)  # scanned: see _scan_chunks
    fast, (outputs, aux, complete) = lax.scan(body, fast, (jnp.arange(n_chunks), chunks))
    outputs = jax.tree.map(lambda a: _merge_chunks(a, 1), outputs)
    outputs = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, count, length, axis=1), outputs)
    boundary = (filled // period) * period
    new_pending = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, boundary, period - 1, axis=1), combined)
    new_carry = {"fast": fast, "pending": new_pending, "count": jnp.asarray(filled % period, jnp.int32)}
    return outputs, new_carry, aux, complete


def _resetting(step, initial: PyTree):
    """step(state, chunk, update_mask) -> (new_state, outputs, aux) over {'in': chunk, 'starts': [B, P]}
    (document_resets.py)."""

    def chunk_step(state, chunk):
        return chunk_with_resets(step, chunk["starts"], initial, state, chunk["in"])

    return chunk_step


def _run_token(step, inputs: PyTree, period: int, carry: dict, remat: bool, outputs_from_chunk_start: bool, initial):
    """A one-token piece with a carry (decoding): equal to the general path, with the chunk update computed only
    when this token completes the chunk (count + 1 == P) and no buffer longer than one chunk."""
    fast, pending, count = carry["fast"], carry["pending"], carry["count"]
    step = jax.checkpoint(step) if remat else step
    completes = count + 1 == period
    read_fast = fast
    if initial is not None:
        # A start among the chunk's earlier tokens: this token reads the initial state (its own start flag is
        # handled by the step); the unfilled slots are zeros.
        read_fast = where_batch(jnp.any(pending["starts"], axis=1), initial, fast)

    def whole_chunk():  # [pending ; token ; zeros]: the token at offset `count`, every layer being causal
        return jax.tree.map(lambda old, new: _place(old, new, count, period), pending, inputs)

    if outputs_from_chunk_start:
        # Its update (of a one-token chunk) is unused and never computed under jit.
        _, outputs, aux = step(read_fast, inputs)
        fast = lax.cond(completes, lambda: step(fast, whole_chunk())[0], lambda: fast)
    else:

        def update_branch():
            return step(fast, whole_chunk())

        def keep_branch():  # the same outputs; the unused update is dead code inside this branch
            _, outputs, aux = step(fast, whole_chunk())
            return fast, outputs, aux

        fast, chunk_outputs, aux = lax.cond(completes, update_branch, keep_branch)
        outputs = jax.tree.map(lambda a: lax.dynamic_slice_in_dim(a, count, 1, axis=1), chunk_outputs)

    def write(old, new):  # the general path's pending slots: the token at `count`, all zeros once the chunk is done
        written = lax.dynamic_update_slice_in_dim(old.astype(new.dtype), new, count, axis=1)
        return jnp.where(completes, jnp.zeros_like(written), written)

    new_pending = jax.tree.map(write, pending, inputs)
    new_count = jnp.where(completes, 0, count + 1).astype(jnp.int32)
    stacked = jax.tree.map(lambda a: a[None], aux)
    return outputs, {"fast": fast, "pending": new_pending, "count": new_count}, stacked, completes[None]


def _split_chunks(a: jax.Array, period: int, axis: int) -> jax.Array:
    """[..., n·P (axis), ...] -> [n, ..., P, ...] (chunk-leading for lax.scan)."""
    shape = (*a.shape[:axis], a.shape[axis] // period, period, *a.shape[axis + 1 :])
    return jnp.moveaxis(a.reshape(shape), axis, 0)


def _merge_chunks(a: jax.Array, axis: int) -> jax.Array:
    """[n, ..., P, ...] -> [..., n·P (axis), ...]; inverse of _split_chunks."""
    a = jnp.moveaxis(a, 0, axis)
    return a.reshape(*a.shape[:axis], a.shape[axis] * a.shape[axis + 1], *a.shape[axis + 2 :])


def _time_slice(a: jax.Array, start: int, stop: int | None, axis: int) -> jax.Array:
    return a[(slice(None),) * axis + (slice(start, stop),)]


def _run_fresh(
    step, inputs, period: int, state, remat_group: int, axis: int, *, tail_updates: bool,
    whole_periods_at_once: bool = False,
):  # fmt: skip
    """A piece from a boundary (carry None): everything about the chunking is static. Returns (state, outputs, aux
    stacked over the calls, complete [n_calls], the trailing partial chunk's inputs).

    The whole chunks are scanned without padding (_scan_chunks); the trailing T % P tokens are one shorter call of
    the step whose update is kept with `tail_updates` and otherwise dropped (an incomplete chunk never updates, and
    under jit the unused update is not computed at all). Equal to the padded general path (every layer is causal and
    a chunk's update never reaches its own outputs), without running a period of P ≫ T tokens on padding.
    """
    length = jax.tree.leaves(inputs)[0].shape[axis]
    n_full, n_tail = divmod(length, period)
    whole_len = n_full * period
    pieces, auxes, complete = [], [], []
    if n_full and whole_periods_at_once:  # the step loops over the chunks itself (and rematerialises as it chooses)
        state, outputs, aux = step(state, jax.tree.map(lambda a: _time_slice(a, 0, whole_len, axis), inputs))
        pieces.append(outputs)
        auxes.append(jax.tree.map(lambda a: a[None], aux))
        complete.append(jnp.ones((1,), bool))
    elif n_full:
        chunks = jax.tree.map(lambda a: _split_chunks(_time_slice(a, 0, whole_len, axis), period, axis), inputs)
        state, (outputs, aux) = _scan_chunks(step, state, chunks, n_full, remat_group)
        pieces.append(jax.tree.map(lambda a: _merge_chunks(a, axis), outputs))
        auxes.append(aux)
        complete.append(jnp.ones((n_full,), bool))
    tail = jax.tree.map(lambda a: _time_slice(a, whole_len, None, axis), inputs)
    if n_tail:
        tail_step = jax.checkpoint(step) if remat_group else step
        tail_state, tail_outputs, tail_aux = tail_step(state, tail)
        state = tail_state if tail_updates else state
        pieces.append(tail_outputs)
        auxes.append(jax.tree.map(lambda a: a[None], tail_aux))
        complete.append(jnp.full((1,), tail_updates))
    join = lambda parts, ax: jax.tree.map(lambda *p: jnp.concatenate(p, axis=ax), *parts)
    outputs = join(pieces, axis) if len(pieces) > 1 else pieces[0]
    aux = join(auxes, 0) if len(auxes) > 1 else auxes[0]
    return state, outputs, aux, jnp.concatenate(complete), tail


def _scan_chunks(step, state, chunks, n_chunks: int, remat_group: int):
    """`step(state, chunk) -> (state, outputs, aux)` over chunk-leading `chunks` [n, ...]; returns (state, (outputs,
    aux)) stacked over the chunks. remat_group g > 0: every g consecutive chunks form one jax.checkpoint (a trailing
    n % g of them one more)."""

    def body(state, chunk):
        new_state, outputs, aux = step(state, chunk)
        return new_state, (outputs, aux)

    if remat_group == 1:
        # Inside lax.scan the CSE barriers of jax.checkpoint are unnecessary (the scan body cannot be merged with its
        # recomputation) and they hinder XLA's fusion; a single chunk is a plain call and keeps them.
        return _scan_or_call(jax.checkpoint(body, prevent_cse=n_chunks == 1), state, chunks)
    if remat_group == 0 or n_chunks == 1:
        body = body if remat_group == 0 else jax.checkpoint(body)
        return _scan_or_call(body, state, chunks)
    group = jax.checkpoint(lambda state, group_chunks: _scan_or_call(body, state, group_chunks))
    n_groups, n_loose = divmod(n_chunks, remat_group)
    parts = []
    if n_groups:
        grouped_len = n_groups * remat_group
        grouped = jax.tree.map(lambda a: a[:grouped_len].reshape(n_groups, remat_group, *a.shape[1:]), chunks)
        state, ys = _scan_or_call(group, state, grouped)
        parts.append(jax.tree.map(lambda a: a.reshape(grouped_len, *a.shape[2:]), ys))
    if n_loose:
        state, ys = group(state, jax.tree.map(lambda a: a[n_chunks - n_loose :], chunks))
        parts.append(ys)
    return state, (parts[0] if len(parts) == 1 else jax.tree.map(lambda *p: jnp.concatenate(p), *parts))


def _scan_or_call(body, state, xs):
    """lax.scan, except that a single step is a plain call: a length-1 loop would add a while loop (and its backward
    bookkeeping) for nothing, and a plain call lets XLA drop an unused end state."""
    if jax.tree.leaves(xs)[0].shape[0] != 1:
        return lax.scan(body, state, xs)
    state, ys = body(state, jax.tree.map(lambda a: a[0], xs))
    return state, jax.tree.map(lambda a: a[None], ys)
