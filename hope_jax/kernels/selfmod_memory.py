"""M_memory's chunk scan as one Pallas (Triton backend) program per (sequence, head), fast weights held on chip.

What it computes is exactly the XLA path's M_memory scan (memory/self_modifying.py `memory_chunk` over
chunking.scan_chunks, i.e. _read_memory + _update_stack -> dgd.dgd_chunk_update -> recurrence.chunk_end_state): for
every chunk of C tokens, at the chunk-start weights W_s,

    y = M(q)                                                    the read (E22)
    per weight matrix: x̂, the inner gradient factors, the normalised steps, the C×C decay / momentum coefficients,
    the DGD transition's unit-lower-triangular C×C system, and the end-of-chunk (W, S)          (dgd.py, recurrence.py)

with the per-token queries, keys, values, η and log α as inputs (the generators run before it; the memory's state
never feeds them). One program loops over all chunks of its sequence with (W, S) as the loop carry, so the state
never leaves the chip between chunks (GPU_KERNELS.md §2). State, coefficients, the Gram matrix and the solve are
float32; the products of features with weights run in `dot_dtype` (bfloat16 when the model computes in bfloat16)
with float32 accumulation.

Triton has no slicing of register tensors, so every "row `last` of a matrix" and every shift is a masked reduction
or a one-hot product, and the triangular solve is the doubling product (I + P)(I + P²)(I + P⁴)… = (I − L)⁻¹·… of
the nilpotent strictly-lower part (log2 C levels of C×C products), not a row loop.

A trailing partial chunk (T % C tokens) is a chunk of its own, as in scan_chunks: its rows are zero-padded and the
end state is read at its last real token (rows after it never reach that row of a lower-triangular matrix).

Backward: `memory_scan` is a jax.custom_vjp whose backward is jax.vjp of the XLA reference (`reference_scan`,
the model's own code), recomputed from the saved inputs. A Pallas backward kernel that recomputes within groups of
chunks from state checkpoints is not built yet (KERNEL_NOTES.md).
"""

from __future__ import annotations

import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
from jax import lax
from jax.experimental import pallas as pl
from jax.experimental.pallas import triton as pltriton

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import INNER_PRECISIONS, inner_precision, scan_chunks
from hope_jax.memory.self_modifying import SelfModConfig, _read_memory, _update_stack

F32 = jnp.float32


@dataclasses.dataclass(frozen=True)
class KernelSpec:
    """Static description of one kernel instance (hashable)."""

    cfg: SelfModConfig
    length: int  # real tokens T (the inputs are zero-padded to whole chunks)
    dot_dtype: str = "float32"  # operands of the feature × weight products
    precision: lax.Precision = lax.Precision.HIGHEST  # float32 products (chunking.current_precision)
    interpret: bool = False
    num_warps: int = 4


def _dot(a, b, dtype, precision, dims=((1,), (0,))):
    """Float32-accumulated product of 2-D operands cast to `dtype`; dims are the contracted axes of (a, b)."""
    prec = precision if jnp.dtype(dtype) == F32 else None
    return lax.dot_general(
        a.astype(dtype), b.astype(dtype), (dims, ((), ())), precision=prec, preferred_element_type=F32
    )


def _kernel(*refs, spec: KernelSpec, n_chunks: int, n_mats: int):
    cfg = spec.cfg
    c = cfg.chunk_size_memory
    mom = cfg.use_momentum
    n_in = 5 + n_mats * (2 if mom else 1)
    q_ref, k_ref, v_ref, eta_ref, la_ref = refs[:5]
    w_refs = refs[5 : 5 + n_mats]
    s_refs = refs[5 + n_mats : n_in] if mom else ()
    y_ref = refs[n_in]
    w_out_refs = refs[n_in + 1 : n_in + 1 + n_mats]
    s_out_refs = refs[n_in + 1 + n_mats :] if mom else ()

    fdot = functools.partial(_dot, dtype=F32, precision=spec.precision)  # coefficients, Gram, solve
    wdot = functools.partial(_dot, dtype=jnp.dtype(spec.dot_dtype), precision=spec.precision)  # features × weights
    act = fast_mlp.activation_fn(cfg.activation)

    rows = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    row_index = lax.broadcasted_iota(jnp.int32, (c, 1), 0)
    eye = jnp.where(rows == cols, 1.0, 0.0).astype(F32)
    shift = jnp.where(rows == cols + 1, 1.0, 0.0).astype(F32)  # (shift @ M)[t] = M[t − 1], row 0 zero

    def rsum(a):  # [C, n] -> [C, 1]
        return jnp.sum(a, axis=1, keepdims=True)

    def segment_products(log_col):  # chunking.segment_products on a [C, 1] column
        terms = jnp.where(rows > cols, jnp.broadcast_to(log_col, (c, c)), 0.0)
        return jnp.where(rows >= cols, jnp.exp(jnp.cumsum(terms, axis=0)), 0.0)

    def shift_col_down(col, first):  # [C, 1]: row t = col[t − 1], row 0 = first
        moved = rsum(jnp.where(cols == rows - 1, jnp.broadcast_to(col.T, (c, c)), 0.0))
        return jnp.where(row_index == 0, first, moved)

    def solve(lower, rhs):
        """(I + lower)⁻¹ rhs for strictly lower-triangular `lower`: Σ_j (−lower)^j by doubling."""
        power = -lower
        inverse = eye + power
        for _ in range(1, max(1, math.ceil(math.log2(c)))):
            power = fdot(power, power)
            inverse = inverse + fdot(inverse, power)
        return fdot(inverse, rhs)

    def chunk(index, state):
        weights, momenta = state
        rows_here = pl.ds(index * c, c)
        q, k, v = (r[rows_here, :].astype(F32) for r in (q_ref, k_ref, v_ref))
        lr = eta_ref[rows_here, :].astype(F32)  # [C, 1]
        log_alpha = la_ref[rows_here, :].astype(F32)
        last = jnp.minimum(spec.length - index * c, c) - 1  # the chunk's last real token
        pick_row = lambda m: rsum(jnp.where(cols == last, m.T, 0.0))  # row `last` of [C, C] m, as a column over i
        pick = lambda col: jnp.sum(jnp.where(row_index == last, col, 0.0))  # col[last], a scalar

        # The read and the inner gradient's factors at the chunk-start weights (fast_mlp.forward_parts / grad_factors).
        if n_mats == 2:
            w_in, w_out = weights
            y = q + wdot(act(wdot(q, w_in)), w_out)
            pre = wdot(k, w_in)
            hidden, slope = fast_mlp.activation_with_derivative(cfg.activation, pre)
            product = wdot(hidden, w_out)
            target = v if cfg.memory_target == "value" else v + wdot(act(wdot(v, w_in)), w_out)
            err = k + product - target
            out_rows = jnp.sum(w_out * w_out, axis=1, keepdims=True).T  # [1, h] ‖row j of W_out‖²
            mats = (
                (
                    k,
                    wdot(err, w_out, dims=((1,), (1,))) * slope,
                    pre,
                    True,
                    rsum(k * k) * rsum(slope * slope * out_rows),
                ),
                (hidden, err, product, False, rsum(hidden * hidden)),
            )
        else:
            (w,) = weights
            y = wdot(q, w)
            out = wdot(k, w)
            err = out - (v if cfg.memory_target == "value" else wdot(v, w))
            mats = ((k, err, out, True, rsum(k * k)),)
        y_ref[rows_here, :] = y.astype(y_ref.dtype)

        # Chunk coefficients (recurrence.chunk_coefficients), shared by every matrix.
        decay = segment_products(log_alpha)
        decay_from_start = jnp.exp(jnp.cumsum(log_alpha, axis=0))
        if mom:
            log_eps = math.log(cfg.momentum_decay) if cfg.momentum_decay > 0 else -jnp.inf
            log_m = jnp.full((c, 1), log_eps, F32)
            momentum_decay = segment_products(log_m)
            momentum_from_start = jnp.exp(jnp.cumsum(log_m, axis=0))
            write = fdot(decay, momentum_decay)
            momentum_into_state = rsum(decay * momentum_from_start.T)
        else:
            write = decay
        write_last = pick_row(write)

        new_w, new_s = [], []
        for i, (x, g_out, x_w, first, curvature) in enumerate(mats):
            w0 = weights[i]
            s0 = momenta[i] if mom else None
            inv_norm = lax.rsqrt(rsum(x * x) + 1e-6)
            x_hat = x * inv_norm
            transition_lr = lr / (1.0 + lr * rsum(x_hat * x_hat))
            g = g_out / inv_norm
            if cfg.gated_delta:
                step = -transition_lr * (g - wdot(x_hat, w0))
            elif cfg.normalize_step and cfg.step_bound == "gram":
                gram_rows = rsum(jnp.abs(fdot(x, x, dims=((1,), (1,)))))
                step = -(lr / (1.0 + lr * (curvature / (rsum(x * x) + 1e-12)) * gram_rows)) * g
            elif cfg.normalize_step:
                step = -(lr / (1.0 + c * lr * curvature)) * g
            else:
                step = -transition_lr * g

            carried = pick(decay_from_start) * w0
            if mom:
                carried = carried + pick(momentum_into_state) * s0
            write_rows = write_last * step
            if cfg.use_dgd and (cfg.dgd_layers == "all" or first):
                beta = transition_lr
                gram = fdot(x_hat, x_hat, dims=((1,), (1,)))
                system = beta * (gram * fdot(shift, decay))
                rhs = shift_col_down(decay_from_start, 1.0) * (x_w * inv_norm)
                rhs = rhs + fdot(gram * fdot(shift, write), step)
                if mom:
                    rhs = rhs + shift_col_down(momentum_into_state, 0.0) * wdot(x_hat, s0)
                write_rows = write_rows + pick_row(decay) * solve(system, -beta * rhs)
            new_w.append(carried + wdot(x_hat, write_rows, dims=((0,), (0,))))
            if mom:
                momentum_step = pick_row(momentum_decay) * step
                new_s.append(pick(momentum_from_start) * s0 + wdot(x_hat, momentum_step, dims=((0,), (0,))))
        return tuple(new_w), tuple(new_s)

    start = (tuple(r[...].astype(F32) for r in w_refs), tuple(r[...].astype(F32) for r in s_refs))
    weights, momenta = lax.fori_loop(0, n_chunks, chunk, start)
    for r, a in zip(w_out_refs, weights, strict=True):
        r[...] = a.astype(r.dtype)
    for r, a in zip(s_out_refs, momenta, strict=True):
        r[...] = a.astype(r.dtype)


def _weight_names(cfg: SelfModConfig) -> tuple[str, ...]:
    return ("w",) if cfg.memory_depth == 1 else ("w_in", "w_out")


def _forward(spec: KernelSpec, per_token: tuple, weights: dict, momentum: dict):
    """per_token: (queries, keys, values [N, T, d], eta, log_alpha [N, T]); weights/momentum: {name: [N, a, b]}."""
    cfg = spec.cfg
    c = cfg.chunk_size_memory
    names = _weight_names(cfg)
    n_seq, length, dim = per_token[0].shape
    n_chunks = -(-length // c)
    pad = n_chunks * c - length
    padded = [jnp.pad(a, [(0, 0), (0, pad), (0, 0)]) for a in per_token[:3]]
    padded += [jnp.pad(a, [(0, 0), (0, pad)])[..., None] for a in per_token[3:]]
    mats = [weights[n] for n in names] + ([momentum[n] for n in names] if cfg.use_momentum else [])

    def seq_spec(a):
        return pl.BlockSpec((None, *a.shape[1:]), lambda n: (n,) + (0,) * (a.ndim - 1))

    out_shape = [jax.ShapeDtypeStruct((n_seq, n_chunks * c, dim), per_token[0].dtype)]
    out_shape += [jax.ShapeDtypeStruct(a.shape, a.dtype) for a in mats]
    kernel = functools.partial(_kernel, spec=spec, n_chunks=n_chunks, n_mats=len(names))
    y, *state = pl.pallas_call(
        kernel,
        grid=(n_seq,),
        in_specs=[seq_spec(a) for a in padded + mats],
        out_specs=[seq_spec(s) for s in out_shape],
        out_shape=out_shape,
        compiler_params=pltriton.CompilerParams(num_warps=spec.num_warps, num_stages=1),
        interpret=spec.interpret,
    )(*padded, *mats)
    new_w = dict(zip(names, state[: len(names)], strict=True))
    new_s = dict(zip(names, state[len(names) :], strict=True)) if cfg.use_momentum else {}
    return y[:, :length], new_w, new_s


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
    """(y [N, T, d], end weights, end momentum ({} without momentum)) of M_memory over N sequences: the Pallas kernel
    forward; the backward differentiates reference_scan (the XLA path) at the same inputs."""
    return _forward(spec, per_token, weights, momentum)


def _memory_scan_fwd(spec, per_token, weights, momentum):
    return _forward(spec, per_token, weights, momentum), (per_token, weights, momentum)


def _memory_scan_bwd(spec, residuals, cotangents):
    name = next(k for k, v in INNER_PRECISIONS.items() if v == spec.precision)
    with inner_precision(name):
        _, vjp = jax.vjp(functools.partial(reference_scan, spec.cfg), *residuals)
        return vjp(cotangents)


memory_scan.defvjp(_memory_scan_fwd, _memory_scan_bwd)
