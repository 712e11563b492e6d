"""M_memory's chunk scan as Pallas (Triton backend) kernels, one program per (sequence, head), state held on chip.

What it computes is exactly the XLA path's M_memory scan (memory/self_modifying.py `memory_chunk` over
chunking.scan_chunks: the read y = M(q) at the chunk-start weights, then the DGD update with decay and momentum) for
per-token queries, keys, values, η and log α made by the generators before it (the memory's state never feeds them).
The per-chunk math is selfmod_chunk.chunk_update.

Forward: one program loops over all chunks of its sequence with (W, S) as the loop carry, so the state never leaves
the chip between chunks (GPU_KERNELS.md §2); with `checkpoints` it also writes every chunk's start state.
Backward (`memory_scan`'s custom VJP, spec.backward = 'pallas'): one program per sequence loops over the chunks in
reverse with the state's cotangent as the carry; each chunk reloads its checkpointed start state and differentiates
chunk_update with jax.vjp inside the kernel (recomputing the chunk's forward), writing the cotangents of the chunk's
q, k, v, η, log α. spec.backward = 'xla' instead differentiates reference_scan, the model's own XLA code.

A trailing partial chunk (T % C tokens) is a chunk of its own, as in scan_chunks: its rows are zero-padded and the
end state is read at its last real token.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from hope_jax.kernels.selfmod_chunk import F32, chunk_update
from hope_jax.memory.chunking import INNER_PRECISIONS, inner_precision, scan_chunks
from hope_jax.memory.self_modifying import SelfModConfig, _read_memory, _update_stack

BACKWARDS = ("pallas", "xla")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static description of one kernel instance (hashable)."""

    cfg: SelfModConfig
    length: int  # real tokens T (the inputs are zero-padded to whole chunks)
    dot_dtype: str = "float32"  # operands of the feature × weight products
    precision: lax.Precision = lax.Precision.HIGHEST  # float32 products (chunking.current_precision)
    interpret: bool = False
    num_warps: int = 4
    backward: str = "pallas"  # 'pallas': the backward kernel; 'xla': jax.vjp of reference_scan

    def __post_init__(self):
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")


def _weight_names(cfg: SelfModConfig) -> tuple[str, ...]:
    return ("w",) if cfg.memory_depth == 1 else ("w_in", "w_out")


def _chunk_fn(spec: KernelSpec, last):
    return lambda w, s, *xs: chunk_update(spec.cfg, spec.dot_dtype, spec.precision, w, s, *xs, last)


def _load_chunk(token_refs, rows):
    return tuple(r[rows, :].astype(F32) for r in token_refs)


def _forward_kernel(*refs, spec: KernelSpec, n_chunks: int, n_state: int, checkpoints: bool):
    c = spec.cfg.chunk_size_memory
    n_w = len(_weight_names(spec.cfg))
    token_refs, state_refs = refs[:5], refs[5 : 5 + n_state]
    y_ref, end_refs = refs[5 + n_state], refs[6 + n_state : 6 + 2 * n_state]
    ckpt_refs = refs[6 + 2 * n_state :] if checkpoints else ()

    def chunk(index, state):
        if checkpoints:
            for r, a in zip(ckpt_refs, state, strict=True):
                r[pl.ds(index * a.shape[0], a.shape[0]), :] = a
        rows = pl.ds(index * c, c)
        last = jnp.minimum(spec.length - index * c, c) - 1  # the chunk's last real token
        new_w, new_s, y = _chunk_fn(spec, last)(state[:n_w], state[n_w:], *_load_chunk(token_refs, rows))
        y_ref[rows, :] = y.astype(y_ref.dtype)
        return new_w + new_s

    state = lax.fori_loop(0, n_chunks, chunk, tuple(r[...].astype(F32) for r in state_refs))
    for r, a in zip(end_refs, state, strict=True):
        r[...] = a.astype(r.dtype)


def _backward_kernel(*refs, spec: KernelSpec, n_chunks: int, n_state: int):
    c = spec.cfg.chunk_size_memory
    n_w = len(_weight_names(spec.cfg))
    token_refs, ckpt_refs = refs[:5], refs[5 : 5 + n_state]
    dy_ref, d_end_refs = refs[5 + n_state], refs[6 + n_state : 6 + 2 * n_state]
    d_token_refs, d_start_refs = refs[6 + 2 * n_state : 11 + 2 * n_state], refs[11 + 2 * n_state :]

    def chunk(i, d_state):
        index = n_chunks - 1 - i
        rows = pl.ds(index * c, c)
        state = tuple(r[pl.ds(index * d.shape[0], d.shape[0]), :] for r, d in zip(ckpt_refs, d_state, strict=True))
        last = jnp.minimum(spec.length - index * c, c) - 1
        _, vjp = jax.vjp(_chunk_fn(spec, last), state[:n_w], state[n_w:], *_load_chunk(token_refs, rows))
        d_w, d_s, *d_tokens = vjp((d_state[:n_w], d_state[n_w:], dy_ref[rows, :].astype(F32)))
        for r, d in zip(d_token_refs, d_tokens, strict=True):
            r[rows, :] = d.astype(r.dtype)
        return tuple(d_w) + tuple(d_s)

    d_state = lax.fori_loop(0, n_chunks, chunk, tuple(r[...].astype(F32) for r in d_end_refs))
    for r, a in zip(d_start_refs, d_state, strict=True):
        r[...] = a.astype(r.dtype)


def _seq_spec(shape):
    return pl.BlockSpec((None, *shape[1:]), lambda n: (n,) + (0,) * (len(shape) - 1))


def _call(spec: KernelSpec, kernel, inputs: list, out_shape: list):
    return pl.pallas_call(
        kernel,
        grid=(inputs[0].shape[0],),
        in_specs=[_seq_spec(a.shape) for a in inputs],
        out_specs=[_seq_spec(s.shape) for s in out_shape],
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=spec.num_warps, num_stages=1),
        interpret=spec.interpret,
    )(*inputs)


def _pad_tokens(spec: KernelSpec, per_token: tuple) -> list:
    """(q, k, v [N, T, d], η, log α [N, T]) -> zero-padded to whole chunks, η and log α as [N, T', 1] columns."""
    c = spec.cfg.chunk_size_memory
    pad = -(-spec.length // c) * c - spec.length
    padded = [jnp.pad(a, [(0, 0), (0, pad), (0, 0)]) for a in per_token[:3]]
    return padded + [jnp.pad(a, [(0, 0), (0, pad)])[..., None] for a in per_token[3:]]


def _state_list(spec: KernelSpec, weights: dict, momentum: dict) -> list:
    names = _weight_names(spec.cfg)
    return [weights[n] for n in names] + ([momentum[n] for n in names] if spec.cfg.use_momentum else [])


def _state_dicts(spec: KernelSpec, state: list) -> tuple[dict, dict]:
    names = _weight_names(spec.cfg)
    weights = dict(zip(names, state[: len(names)], strict=True))
    return weights, (dict(zip(names, state[len(names) :], strict=True)) if spec.cfg.use_momentum else {})


def _forward(spec: KernelSpec, per_token: tuple, weights: dict, momentum: dict, checkpoints: bool = False):
    """per_token: (queries, keys, values [N, T, d], eta, log_alpha [N, T]); weights/momentum: {name: [N, a, b]}.
    Returns (y, end weights, end momentum) and, with `checkpoints`, every chunk's start state [N, n_chunks·a, b]."""
    tokens = _pad_tokens(spec, per_token)
    state = _state_list(spec, weights, momentum)
    n_seq, padded_len, dim = tokens[0].shape
    n_chunks = padded_len // spec.cfg.chunk_size_memory
    out_shape = [jax.ShapeDtypeStruct((n_seq, padded_len, dim), per_token[0].dtype)]
    out_shape += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in state]
    if checkpoints:
        out_shape += [jax.ShapeDtypeStruct((n_seq, n_chunks * a.shape[1], a.shape[2]), F32) for a in state]
    kernel = functools.partial(
        _forward_kernel, spec=spec, n_chunks=n_chunks, n_state=len(state), checkpoints=checkpoints
    )
    y, *rest = _call(spec, kernel, tokens + state, out_shape)
    outputs = (y[:, : spec.length], *_state_dicts(spec, rest[: len(state)]))
    return (outputs, rest[len(state) :]) if checkpoints else outputs


def _backward(spec: KernelSpec, per_token: tuple, state: list, ckpts: list, cotangents):
    d_y, d_weights, d_momentum = cotangents
    tokens = _pad_tokens(spec, per_token)
    n_chunks = tokens[0].shape[1] // spec.cfg.chunk_size_memory
    d_y = jnp.pad(d_y, [(0, 0), (0, tokens[0].shape[1] - spec.length), (0, 0)])
    d_end = _state_list(spec, d_weights, d_momentum)
    out_shape = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in tokens + state]
    kernel = functools.partial(_backward_kernel, spec=spec, n_chunks=n_chunks, n_state=len(state))
    grads = _call(spec, kernel, tokens + ckpts + [d_y] + d_end, out_shape)
    d_tokens = [g[:, : spec.length] for g in grads[:3]] + [g[:, : spec.length, 0] for g in grads[3:5]]
    return (tuple(d_tokens), *_state_dicts(spec, grads[5:]))


def reference_scan(cfg: SelfModConfig, per_token: tuple, weights: dict, momentum: dict):
    """The XLA path's M_memory scan (self_modifying_sequence's memory_chunk) over a batch of sequences [N, ...]."""

    def one(per_token, w, s):
        def memory_chunk(carry, xs):
            w_, s_ = carry
            queries, keys, values, eta, log_alpha = xs
            y = _read_memory(w_, queries, cfg)
            onto_values = (cfg.memory_target == "value",)
            new = _update_stack(w_, s_, keys, values, eta, log_alpha, cfg, cfg.chunk_size_memory, onto_values)
            return new, y

        stack = lambda tree: jax.tree.map(lambda a: a[None], tree)  # a stack of one memory, as _update_stack takes
        (w_end, s_end), y = scan_chunks(memory_chunk, (stack(w), stack(s)), per_token, cfg.chunk_size_memory,
                                        cfg.remat_group)  # fmt: skip
        unstack = lambda tree: jax.tree.map(lambda a: a[0], tree)
        return y, unstack(w_end), unstack(s_end)

    return jax.vmap(one)(per_token, weights, momentum if cfg.use_momentum else {})


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def memory_scan(spec: KernelSpec, per_token: tuple, weights: dict, momentum: dict):
    """(y [N, T, d], end weights, end momentum ({} without momentum)) of M_memory over N sequences, by the Pallas
    kernel; gradients by the backward kernel (spec.backward 'pallas') or by reference_scan's VJP ('xla')."""
    return _forward(spec, per_token, weights, momentum)


def _memory_scan_fwd(spec, per_token, weights, momentum):
    if spec.backward == "xla":
        return _forward(spec, per_token, weights, momentum), (per_token, weights, momentum)
    outputs, ckpts = _forward(spec, per_token, weights, momentum, checkpoints=True)
    return outputs, (per_token, _state_list(spec, weights, momentum), ckpts)


def _memory_scan_bwd(spec, residuals, cotangents):
    if spec.backward == "pallas":
        return _backward(spec, *residuals, cotangents)
    name = next(k for k, v in INNER_PRECISIONS.items() if v == spec.precision)
    with inner_precision(name):
        _, vjp = jax.vjp(functools.partial(reference_scan, spec.cfg), *residuals)
        return vjp(cotangents)


memory_scan.defvjp(_memory_scan_fwd, _memory_scan_bwd)
