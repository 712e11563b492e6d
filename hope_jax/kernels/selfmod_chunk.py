"""One chunk of M_memory's update as a pure function of values: the body of the Pallas kernels (selfmod_memory.py).

Written for Triton's tensor model: 2-D values only, no slicing of register tensors (every "row `last` of a matrix"
and every shift is a masked reduction or a one-hot product), products of at least 16 along each axis, and no
cumulative sums (their transpose, a reverse scan, has no Triton rule; the backward kernel differentiates this
function): a cumulative sum is a product with the lower-triangular ones matrix. The triangular solve is the doubling
product (I + P)(I + P²)(I + P⁴)… of the nilpotent P = −(strictly lower part): log2 C levels of C×C products.

It computes what the XLA path computes per chunk (memory/self_modifying.py `memory_chunk`: fast_mlp.forward_parts,
dgd.dgd_chunk_update, recurrence.chunk_coefficients / chunk_end_state), in float32 except the products of features
with weights, which take `dot_dtype` operands (bfloat16 for a bfloat16 model) with float32 accumulation.
"""

from __future__ import annotations

import functools
import math

import jax.numpy as jnp
from jax import lax

from hope_jax.memory import fast_mlp
from hope_jax.memory.self_modifying import SelfModConfig

F32 = jnp.float32


def dot(a, b, dtype, precision, dims=((1,), (0,))):
    """Float32-accumulated product of 2-D operands; dims are the contracted axes of (a, b). A `dtype` other than
    float32 rounds both operands to it and multiplies them as float32 at DEFAULT precision (TF32 on the GPU, which
    holds bfloat16 values exactly, so this is a bfloat16 product with float32 accumulation): a product of bfloat16
    operands into float32 transposes, in the backward kernel, into products of mixed types, which Triton rejects."""
    if jnp.dtype(dtype) != F32:
        a, b = (u.astype(dtype).astype(F32) for u in (a, b))
        precision = lax.Precision.DEFAULT
    return lax.dot_general(a, b, (dims, ((), ())), precision=precision, preferred_element_type=F32)


def chunk_update(cfg: SelfModConfig, dot_dtype, precision, weights, momenta, q, k, v, lr, log_alpha, last):
    """One chunk at the chunk-start (weights, momenta) (tuples of [a, b] matrices: (w_in, w_out), or (w,) for a
    matrix memory; momenta () without momentum): q, k, v [C, d], lr = η and log α [C, 1], `last` the index of the
    chunk's last real token (rows after it are padding and never reach the end state). Returns (end weights, end
    momenta, y [C, d])."""
    c = cfg.chunk_size_memory
    mom = cfg.use_momentum
    n_mats = len(weights)
    fdot = functools.partial(dot, dtype=F32, precision=precision)  # coefficients, Gram, solve
    wdot = functools.partial(dot, dtype=jnp.dtype(dot_dtype), precision=precision)  # features × weights
    act = fast_mlp.activation_fn(cfg.activation)

    rows = lax.broadcasted_iota(jnp.int32, (c, c), 0)
    cols = lax.broadcasted_iota(jnp.int32, (c, c), 1)
    row_index = lax.broadcasted_iota(jnp.int32, (c, 1), 0)
    eye = jnp.where(rows == cols, 1.0, 0.0).astype(F32)
    lower_incl = jnp.where(rows >= cols, 1.0, 0.0).astype(F32)  # (lower_incl @ a) = cumulative sums of a's rows
    shift = jnp.where(rows == cols + 1, 1.0, 0.0).astype(F32)  # (shift @ M)[t] = M[t − 1], row 0 zero

    def rsum(a):  # [C, n] -> [C, 1]
        return jnp.sum(a, axis=1, keepdims=True)

    def segment_products(log_col):  # chunking.segment_products on a [C, 1] column
        terms = jnp.where(rows > cols, jnp.broadcast_to(log_col, (c, c)), 0.0)
        return jnp.where(rows >= cols, jnp.exp(fdot(lower_incl, terms)), 0.0)

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

    # truncate_bptt (DESIGN D4): the data-dependent part of the update is stop-gradient'ed (recurrence.chunk_end_state)
    truncate = lax.stop_gradient if cfg.truncate_bptt else (lambda a: a)
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

    # Chunk coefficients (recurrence.chunk_coefficients), shared by every matrix.
    decay = segment_products(log_alpha)
    decay_from_start = jnp.exp(fdot(lower_incl, log_alpha))
    if mom:
        log_eps = math.log(cfg.momentum_decay) if cfg.momentum_decay > 0 else -jnp.inf
        log_m = jnp.full((c, 1), log_eps, F32)
        momentum_decay = segment_products(log_m)
        momentum_from_start = jnp.exp(fdot(lower_incl, log_m))
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
        new_w.append(carried + truncate(wdot(x_hat, write_rows, dims=((0,), (0,)))))
        if mom:
            momentum_step = pick_row(momentum_decay) * step
            new_s.append(pick(momentum_from_start) * s0 + truncate(wdot(x_hat, momentum_step, dims=((0,), (0,)))))
    return tuple(new_w), tuple(new_s), y
