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


class Ops:
    """The chunk's constant masks and the Triton-friendly helpers every function below shares (C = chunk size)."""

    def __init__(self, cfg: SelfModConfig, dot_dtype, precision, last):
        c = self.c = cfg.chunk_size
        self.cfg, self.last = cfg, last
        self.fdot = functools.partial(dot, dtype=F32, precision=precision)  # coefficients, Gram, solve
        self.wdot = functools.partial(dot, dtype=jnp.dtype(dot_dtype), precision=precision)  # features × weights
        self.rows = lax.broadcasted_iota(jnp.int32, (c, c), 0)
        self.cols = lax.broadcasted_iota(jnp.int32, (c, c), 1)
        self.row_index = lax.broadcasted_iota(jnp.int32, (c, 1), 0)
        self.eye = jnp.where(self.rows == self.cols, 1.0, 0.0).astype(F32)
        self.lower_incl = jnp.where(self.rows >= self.cols, 1.0, 0.0).astype(F32)  # @ a: cumulative sums of a's rows
        self.shift = jnp.where(self.rows == self.cols + 1, 1.0, 0.0).astype(F32)  # (shift @ M)[t] = M[t − 1]
        # truncate_bptt (DESIGN D4): the data-dependent part of the update is stop-gradient'ed (chunk_end_state)
        self.truncate = lax.stop_gradient if cfg.truncate_bptt else (lambda a: a)

    @staticmethod
    def rsum(a):  # [C, n] -> [C, 1]
        return jnp.sum(a, axis=1, keepdims=True)

    def segment_products(self, log_col):  # chunking.segment_products on a [C, 1] column
        terms = jnp.where(self.rows > self.cols, jnp.broadcast_to(log_col, (self.c, self.c)), 0.0)
        return jnp.where(self.rows >= self.cols, jnp.exp(self.fdot(self.lower_incl, terms)), 0.0)

    def cumsum_col(self, col):  # [C, 1] cumulative sum as masked row sums (a product with N = 1 is no MMA tile)
        return self.rsum(jnp.where(self.rows >= self.cols, jnp.broadcast_to(col.T, (self.c, self.c)), 0.0))

    def shift_col_down(self, col, first):  # [C, 1]: row t = col[t − 1], row 0 = first
        moved = self.rsum(jnp.where(self.cols == self.rows - 1, jnp.broadcast_to(col.T, (self.c, self.c)), 0.0))
        return jnp.where(self.row_index == 0, first, moved)

    def solve(self, lower, rhs):
        """(I + lower)⁻¹ rhs for strictly lower-triangular `lower`: Σ_j (−lower)^j by doubling."""
        power = -lower
        inverse = self.eye + power
        for _ in range(1, max(1, math.ceil(math.log2(self.c)))):
            power = self.fdot(power, power)
            inverse = inverse + self.fdot(inverse, power)
        return self.fdot(inverse, rhs)

    def pick_row(self, m):  # row `last` of [C, C] m, as a column over i
        return self.rsum(jnp.where(self.cols == self.last, m.T, 0.0))

    def pick(self, col):  # col[last], a scalar
        return jnp.sum(jnp.where(self.row_index == self.last, col, 0.0))

    def l2(self, x):  # chunking.l2_normalize
        return x * lax.rsqrt(self.rsum(x * x) + 1e-6)

    def read(self, weights, x):
        """fast_mlp.forward: x + σ(x W_in) W_out for (w_in, w_out), x W for (w,)."""
        if len(weights) == 1:
            return self.wdot(x, weights[0])
        act = fast_mlp.activation_fn(self.cfg.activation)
        return x + self.wdot(act(self.wdot(x, weights[0])), weights[1])


def coefficients(ops: Ops, log_alpha) -> dict:
    """recurrence.chunk_coefficients from log α [C, 1], shared by every matrix of every memory in the chunk."""
    cfg = ops.cfg
    co = {"decay": ops.segment_products(log_alpha), "decay_from_start": jnp.exp(ops.cumsum_col(log_alpha))}
    if cfg.momentum:
        log_eps = math.log(cfg.momentum_decay) if cfg.momentum_decay > 0 else -jnp.inf
        log_m = jnp.full((ops.c, 1), log_eps, F32)
        co["momentum_decay"] = ops.segment_products(log_m)
        co["momentum_from_start"] = jnp.exp(ops.cumsum_col(log_m))
        co["write"] = ops.fdot(co["decay"], co["momentum_decay"])
        co["momentum_into_state"] = ops.rsum(co["decay"] * co["momentum_from_start"].T)
    else:
        co["write"] = co["decay"]
    co["write_last"] = ops.pick_row(co["write"])
    return co


def update_memory(ops: Ops, co: dict, weights, momenta, k, v, lr, onto_values: bool):
    """dgd.dgd_chunk_update of one memory regressing keys k onto M(v) (or onto v where `onto_values`), at its
    chunk-start (weights, momenta); returns (end weights, end momenta) as tuples."""
    cfg, rsum, wdot, fdot = ops.cfg, ops.rsum, ops.wdot, ops.fdot
    mom = cfg.momentum
    # The inner gradient's factors at the chunk-start weights (fast_mlp.forward_parts / grad_factors_and_products).
    if len(weights) == 2:
        w_in, w_out = weights
        pre = wdot(k, w_in)
        hidden, slope = fast_mlp.activation_with_derivative(cfg.activation, pre)
        product = wdot(hidden, w_out)
        err = k + product - (v if onto_values else ops.read(weights, v))
        out_rows = jnp.sum(w_out * w_out, axis=1, keepdims=True).T  # [1, h] ‖row j of W_out‖²
        g_in = wdot(err, w_out, dims=((1,), (1,))) * slope
        mats = (
            (k, g_in, pre, True, rsum(k * k) * rsum(slope * slope * out_rows)),
            (hidden, err, product, False, rsum(hidden * hidden)),
        )
    else:
        out = wdot(k, weights[0])
        err = out - (v if onto_values else ops.read(weights, v))
        mats = ((k, err, out, True, rsum(k * k)),)

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
        elif cfg.normalized_step and cfg.step_bound == "gram":
            gram_rows = rsum(jnp.abs(fdot(x, x, dims=((1,), (1,)))))
            step = -(lr / (1.0 + lr * (curvature / (rsum(x * x) + 1e-12)) * gram_rows)) * g
        elif cfg.normalized_step:
            step = -(lr / (1.0 + ops.c * lr * curvature)) * g
        else:
            step = -transition_lr * g

        carried = ops.pick(co["decay_from_start"]) * w0
        if mom:
            carried = carried + ops.pick(co["momentum_into_state"]) * s0
        write_rows = co["write_last"] * step
        if cfg.dgd and (cfg.dgd_layers == "all" or first):
            beta = transition_lr
            gram = fdot(x_hat, x_hat, dims=((1,), (1,)))
            system = beta * (gram * fdot(ops.shift, co["decay"]))
            rhs = ops.shift_col_down(co["decay_from_start"], 1.0) * (x_w * inv_norm)
            rhs = rhs + fdot(gram * fdot(ops.shift, co["write"]), step)
            if mom:
                rhs = rhs + ops.shift_col_down(co["momentum_into_state"], 0.0) * wdot(x_hat, s0)
            write_rows = write_rows + ops.pick_row(co["decay"]) * ops.solve(system, -beta * rhs)
        new_w.append(carried + ops.truncate(wdot(x_hat, write_rows, dims=((0,), (0,)))))
        if mom:
            momentum_step = ops.pick_row(co["momentum_decay"]) * step
            s_end = ops.pick(co["momentum_from_start"]) * s0
            new_s.append(s_end + ops.truncate(wdot(x_hat, momentum_step, dims=((0,), (0,)))))
    return tuple(new_w), tuple(new_s)


def chunk_update(cfg: SelfModConfig, dot_dtype, precision, weights, momenta, q, k, v, lr, log_alpha, last):
    """One chunk of M_memory at the chunk-start (weights, momenta) (tuples of [a, b] matrices: (w_in, w_out), or
    (w,) for a matrix memory; momenta () without momentum): q, k, v [C, d], lr = η and log α [C, 1], `last` the index
    of the chunk's last real token (rows after it are padding and never reach the end state). Returns (end weights,
    end momenta, y [C, d])."""
    ops = Ops(cfg, dot_dtype, precision, last)
    y = ops.read(weights, q)
    co = coefficients(ops, log_alpha)
    return (*update_memory(ops, co, weights, momenta, k, v, lr, cfg.memory_target == "value"), y)
