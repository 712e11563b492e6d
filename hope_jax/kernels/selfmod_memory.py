"""The memories' chunk scan as Pallas (Triton backend) kernels, one program per (sequence, head), state held on chip.

What it computes is exactly the XLA path's M_memory scan (memory/self_modifying.py `memory_chunk` under
driver.scan_sequence: the read y = M(q) at the chunk-start weights, then the DGD update with decay and momentum) for
per-token queries, keys, values, η and log α made by the generators before it (the memory's state never feeds them).
The per-chunk math is selfmod_chunk.chunk_update.

Forward: one program loops over all chunks of its sequence with (W, S) as the loop carry, so the state never leaves
the chip between chunks (GPU_KERNELS.md §2); with `checkpoints` it also writes the start state of every
spec.checkpoint_group-th chunk.
Backward (`memory_scan`'s custom VJP, spec.backward = 'pallas'): one program per sequence loops over the chunks in
reverse with the state's cotangent as the carry; each chunk recomputes its start state from its group's checkpoint
(G − 1 chunk forwards at most; none with G = 1) and differentiates
chunk_update with jax.vjp inside the kernel (recomputing the chunk's forward), writing the cotangents of the chunk's
q, k, v, η, log α. spec.backward = 'xla' instead differentiates reference_scan, the model's own XLA code.

The same two kernels run the generators and M_memory together (spec.kind 'joint', selfmod_joint.py): the kernels
are generic in what one chunk computes (`chunk fn(state, params, tokens) -> (new state, outputs)`, params being
per-sequence constants such as the η / α reductions, whose cotangents the backward kernel accumulates).

A trailing partial chunk (T % C tokens) is a chunk of its own, as in driver.scan_sequence: its rows are zero-padded and
the end state is read at its last real token.
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
from hope_jax.memory.chunking import INNER_PRECISIONS, inner_precision
from hope_jax.memory.driver import scan_sequence
from hope_jax.memory.self_modifying import SelfModConfig, memory_chunk

BACKWARDS = ("pallas", "xla")
KINDS = ("memory", "joint")


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static description of one kernel instance (hashable)."""

    cfg: SelfModConfig
    length: int  # real tokens T (the inputs are zero-padded to whole chunks)
    dot_dtype: str = "float32"  # operands of the feature × weight products
    precision: lax.Precision = lax.Precision.HIGHEST  # float32 products (chunking.current_precision)
    interpret: bool = False
    num_warps: int = 4
    backward: str = "pallas"  # 'pallas': the backward kernel; 'xla': jax.vjp of reference_scan (kind 'memory')
    kind: str = "memory"  # 'memory': M_memory alone; 'joint': the generators and M_memory (selfmod_joint.py)
    # Chunks per state checkpoint of the backward: G = 1 stores every chunk's start state (N·(T/C)·state floats);
    # G > 1 stores 1/G of them and the backward re-runs up to G − 1 chunk forwards from the group's checkpoint.
    checkpoint_group: int = 1

    def __post_init__(self):
        if self.backward not in BACKWARDS:
            raise ValueError(f"backward must be one of {BACKWARDS}, got {self.backward!r}")
        if self.checkpoint_group < 1:
            raise ValueError(f"checkpoint_group must be ≥ 1, got {self.checkpoint_group}")
        if self.kind not in KINDS:
            raise ValueError(f"kind must be one of {KINDS}, got {self.kind!r}")


def _weight_names(cfg: SelfModConfig) -> tuple[str, ...]:
    return ("w",) if cfg.memory_depth == 1 else ("w_in", "w_out")


def _chunk_fn(spec: KernelSpec, last):
    """fn(state, params, tokens) -> (new state, outputs), all tuples of 2-D values, for one chunk."""
    if spec.kind == "joint":
        from hope_jax.kernels.selfmod_joint import joint_chunk  # late: selfmod_joint builds on this module

        return lambda state, params, tokens: joint_chunk(spec, state, params, tokens, last)
    n_w = len(_weight_names(spec.cfg))

    def memory_chunk(state, params, tokens):
        new_w, new_s, y = chunk_update(
            spec.cfg, spec.dot_dtype, spec.precision, state[:n_w], state[n_w:], *tokens, last
        )
        return new_w + new_s, (y,)

    return memory_chunk


def _div(index, n: int):
    """index // n for a non-negative int32 index (jnp's floor division adds sign fix-ups Triton's lowering rejects)."""
    return index if n == 1 else lax.div(index, jnp.int32(n))


def _forward_kernel(*refs, spec: KernelSpec, n_chunks: int, layout: tuple, checkpoints: bool):
    n_tok, n_par, n_state, n_out = layout
    c = spec.cfg.chunk_size
    refs = list(refs)
    take = lambda n: [refs.pop(0) for _ in range(n)]
    token_refs, param_refs, state_refs, out_refs, end_refs = (take(n) for n in (n_tok, n_par, n_state, n_out, n_state))
    ckpt_refs = refs
    params = tuple(r[...].astype(F32) for r in param_refs)

    group = spec.checkpoint_group

    def store_checkpoint(index, state):
        for r, a in zip(ckpt_refs, state, strict=True):
            r[pl.ds(_div(index, group) * a.shape[0], a.shape[0]), :] = a

    def chunk(index, state):
        if checkpoints and group == 1:
            store_checkpoint(index, state)
        elif checkpoints:
            pl.when(lax.rem(index, jnp.int32(group)) == 0)(lambda: store_checkpoint(index, state))
        rows = pl.ds(index * c, c)
        last = jnp.minimum(spec.length - index * c, c) - 1  # the chunk's last real token
        tokens = tuple(r[rows, :].astype(F32) for r in token_refs)
        new_state, outputs = _chunk_fn(spec, last)(state, params, tokens)
        for r, a in zip(out_refs, outputs, strict=True):
            r[rows, :] = a.astype(r.dtype)
        return tuple(new_state)

    state = lax.fori_loop(0, n_chunks, chunk, tuple(r[...].astype(F32) for r in state_refs))
    for r, a in zip(end_refs, state, strict=True):
        r[...] = a.astype(r.dtype)


def _backward_kernel(*refs, spec: KernelSpec, n_chunks: int, layout: tuple):
    n_tok, n_par, n_state, n_out = layout
    c = spec.cfg.chunk_size
    refs = list(refs)
    take = lambda n: [refs.pop(0) for _ in range(n)]
    token_refs, param_refs, ckpt_refs, d_out_refs, d_end_refs = (
        take(n) for n in (n_tok, n_par, n_state, n_out, n_state)
    )
    d_token_refs, d_param_refs, d_start_refs = take(n_tok), take(n_par), take(n_state)
    params = tuple(r[...].astype(F32) for r in param_refs)

    group = spec.checkpoint_group

    def chunk_inputs(index):
        rows = pl.ds(index * c, c)
        return rows, jnp.minimum(spec.length - index * c, c) - 1, tuple(r[rows, :].astype(F32) for r in token_refs)

    def replay(index, state):  # the forward of chunk `index` (a whole chunk: only the last one can be partial)
        _, last, tokens = chunk_inputs(index)
        return tuple(_chunk_fn(spec, last)(state, params, tokens)[0])

    def chunk(i, carry):
        d_state, d_params = carry
        index = n_chunks - 1 - i
        state = tuple(
            r[pl.ds(_div(index, group) * d.shape[0], d.shape[0]), :] for r, d in zip(ckpt_refs, d_state, strict=True)
        )
        if group > 1:  # from the group's checkpoint to this chunk's start
            state = lax.fori_loop(_div(index, group) * group, index, replay, state)
        rows, last, tokens = chunk_inputs(index)
        _, vjp = jax.vjp(_chunk_fn(spec, last), state, params, tokens)
        d_outputs = tuple(r[rows, :].astype(F32) for r in d_out_refs)
        d_prev, d_chunk_params, d_tokens = vjp((d_state, d_outputs))
        for r, d in zip(d_token_refs, d_tokens, strict=True):
            r[rows, :] = d.astype(r.dtype)
        return tuple(d_prev), tuple(a + b for a, b in zip(d_params, d_chunk_params, strict=True))

    start = (tuple(r[...].astype(F32) for r in d_end_refs), tuple(jnp.zeros_like(p) for p in params))
    d_state, d_params = lax.fori_loop(0, n_chunks, chunk, start)
    for r, a in zip(d_start_refs + d_param_refs, d_state + d_params, strict=True):
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


def _out_widths(spec: KernelSpec, dim: int) -> tuple[int, ...]:
    return (dim,) * (3 if spec.kind == "joint" else 1)  # joint: (y, keys, values); memory: (y,)


def _scan_forward(spec: KernelSpec, tokens: tuple, params: tuple, state: tuple, checkpoints: bool):
    n_seq, padded_len, dim = tokens[0].shape
    n_chunks = padded_len // spec.cfg.chunk_size
    widths = _out_widths(spec, dim)
    out_shape = [jax.ShapeDtypeStruct((n_seq, padded_len, w), tokens[0].dtype) for w in widths]
    out_shape += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in state]
    if checkpoints:
        n_ckpt = -(-n_chunks // spec.checkpoint_group)
        out_shape += [jax.ShapeDtypeStruct((n_seq, n_ckpt * a.shape[1], a.shape[2]), F32) for a in state]
    layout = (len(tokens), len(params), len(state), len(widths))
    kernel = functools.partial(_forward_kernel, spec=spec, n_chunks=n_chunks, layout=layout, checkpoints=checkpoints)
    results = _call(spec, kernel, [*tokens, *params, *state], out_shape)
    n_out = len(widths)
    outputs, end, ckpts = results[:n_out], results[n_out : n_out + len(state)], results[n_out + len(state) :]
    return (tuple(outputs), tuple(end)), tuple(ckpts)


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def scan(spec: KernelSpec, tokens: tuple, params: tuple, state: tuple):
    """(outputs, end state) of spec's chunk function over all chunks of N sequences: tokens [N, T', w] zero-padded to
    whole chunks, params and state [N, a, b]; one program per sequence. Gradients by the backward kernel."""
    return _scan_forward(spec, tokens, params, state, checkpoints=False)[0]


def _scan_fwd(spec, tokens, params, state):
    results, ckpts = _scan_forward(spec, tokens, params, state, checkpoints=True)
    return results, (tokens, params, state, ckpts)


def _scan_bwd(spec, residuals, cotangents):
    tokens, params, state, ckpts = residuals
    d_outputs, d_end = cotangents
    n_chunks = tokens[0].shape[1] // spec.cfg.chunk_size
    layout = (len(tokens), len(params), len(state), len(d_outputs))
    kernel = functools.partial(_backward_kernel, spec=spec, n_chunks=n_chunks, layout=layout)
    out_shape = [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in (*tokens, *params, *state)]
    grads = _call(spec, kernel, [*tokens, *params, *ckpts, *d_outputs, *d_end], out_shape)
    n_tok, n_par = len(tokens), len(params)
    return tuple(grads[:n_tok]), tuple(grads[n_tok : n_tok + n_par]), tuple(grads[n_tok + n_par :])


scan.defvjp(_scan_fwd, _scan_bwd)


def pad_tokens(spec: KernelSpec, tokens) -> tuple:
    """[N, T, w] (or [N, T]: a [N, T', 1] column) per-token arrays zero-padded to whole chunks."""
    c = spec.cfg.chunk_size
    pad = -(-spec.length // c) * c - spec.length
    column = lambda a: a[..., None] if a.ndim == 2 else a
    return tuple(jnp.pad(column(a), [(0, 0), (0, pad), (0, 0)]) for a in tokens)


def _state_list(spec: KernelSpec, weights: dict, momentum: dict) -> list:
    names = _weight_names(spec.cfg)
    return [weights[n] for n in names] + ([momentum[n] for n in names] if spec.cfg.momentum else [])


def _state_dicts(spec: KernelSpec, state) -> tuple[dict, dict]:
    names = _weight_names(spec.cfg)
    weights = dict(zip(names, state[: len(names)], strict=True))
    return weights, (dict(zip(names, state[len(names) :], strict=True)) if spec.cfg.momentum else {})


def reference_scan(cfg: SelfModConfig, per_token: tuple, weights: dict, momentum: dict):
    """The XLA path's M_memory scan (self_modifying_sequence's memory_chunk) over a batch of sequences [N, ...]."""

    step = functools.partial(memory_chunk, cfg=cfg)

    def one(per_token, w, s):
        stack = lambda tree: jax.tree.map(lambda a: a[None], tree)  # a stack of one memory, as memory_chunk takes
        start = (stack(w), stack(s))
        (w_end, s_end), y = scan_sequence(step, start, per_token, cfg.chunk_size, remat_group=cfg.remat_group)
        unstack = lambda tree: jax.tree.map(lambda a: a[0], tree)
        return y, unstack(w_end), unstack(s_end)

    return jax.vmap(one)(per_token, weights, momentum if cfg.momentum else {})


def memory_scan(spec: KernelSpec, per_token: tuple, weights: dict, momentum: dict):
    """(y [N, T, d], end weights, end momentum ({} without momentum)) of M_memory over N sequences from the per-token
    (queries, keys, values [N, T, d], eta, log_alpha [N, T]) and the start state {name: [N, a, b]}: the Pallas
    kernels, with gradients by the backward kernel (spec.backward 'pallas') or by reference_scan's VJP ('xla')."""
    if spec.backward == "xla":
        return _memory_scan_xla_backward(spec, per_token, weights, momentum)
    (y,), end = scan(spec, pad_tokens(spec, per_token), (), tuple(_state_list(spec, weights, momentum)))
    return (y[:, : spec.length], *_state_dicts(spec, end))


@functools.partial(jax.custom_vjp, nondiff_argnums=(0,))
def _memory_scan_xla_backward(spec, per_token, weights, momentum):
    (y,), end = _scan_forward(
        spec, pad_tokens(spec, per_token), (), tuple(_state_list(spec, weights, momentum)), False
    )[0]
    return (y[:, : spec.length], *_state_dicts(spec, end))


def _xla_fwd(spec, per_token, weights, momentum):
    return _memory_scan_xla_backward(spec, per_token, weights, momentum), (per_token, weights, momentum)


def _xla_bwd(spec, residuals, cotangents):
    name = next(k for k, v in INNER_PRECISIONS.items() if v == spec.precision)
    with inner_precision(name):
        _, vjp = jax.vjp(functools.partial(reference_scan, spec.cfg), *residuals)
        return vjp(cotangents)


_memory_scan_xla_backward.defvjp(_xla_fwd, _xla_bwd)
