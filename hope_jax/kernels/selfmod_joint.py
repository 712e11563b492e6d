"""The generators and M_memory in one Pallas kernel (spec.kind 'joint'): memory/self_modifying.joint_sequence.

When the chunk sizes are equal and M_memory is an MLP (runs_jointly), every memory updates on the same chunks from
the same per-token (k, v, η, α), which the generators make from their own chunk-start reads. Per chunk, at the
chunk-start weights of every memory:

    out_□ = M_□(x) for each generator □; k = l2(out_k or static k); v = out_v or static v (l2 with normalize_values);
    q = l2(out_q or static q); η = η_max·sigmoid(out_η·w_η + b_η); log α = log_sigmoid(out_α·w_α + b_α) (0 without
    weight decay); y = M_memory(q); then every memory's DGD step regressing k onto M_□(v) (M_memory onto v with
    memory_target 'value'), all sharing the chunk's decay and momentum coefficients.

The kernels (selfmod_memory.scan) hold every memory's state in the loop carry and the reductions (w_η, b_η, w_α, b_α)
as per-sequence parameters, whose gradients the backward kernel accumulates over the chunks.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp

from hope_jax.kernels.selfmod_chunk import F32, Ops, coefficients, update_memory
from hope_jax.kernels.selfmod_memory import KernelSpec, pad_tokens, scan
from hope_jax.memory.self_modifying import generator_names, static_stream_names

MATRICES = ("w_in", "w_out")


def joint_chunk(spec: KernelSpec, state, params, tokens, last):
    """One chunk of every memory. state: every memory's (w_in, w_out) in generator_names + ('memory',) order, then
    their momenta in the same order; params: (w_η, b_η[, w_α, b_α]) as [1, d] and [1, 1]; tokens: the streams of
    static_stream_names [C, d]. Returns (new state, (y, keys, values))."""
    cfg = spec.cfg
    ops = Ops(cfg, spec.dot_dtype, spec.precision, last)
    names = generator_names(cfg) + ("memory",)
    n = len(names)
    weights = [tuple(state[2 * i : 2 * i + 2]) for i in range(n)]
    momenta = [tuple(state[2 * n + 2 * i : 2 * n + 2 * i + 2]) if cfg.momentum else () for i in range(n)]
    xs = dict(zip(static_stream_names(cfg), tokens, strict=True))
    out = {name: ops.read(weights[i], xs["x"]) for i, name in enumerate(names[:-1])}
    keys = ops.l2(out["k"] if cfg.adaptive_k else xs["k"])
    values = out["v"] if cfg.adaptive_v else xs["v"]
    values = ops.l2(values) if cfg.normalize_values else values
    queries = ops.l2(out["q"] if cfg.adaptive_q else xs["q"])
    eta = cfg.eta_max * jax.nn.sigmoid(ops.rsum(out["eta"] * params[0]) + params[1])
    if cfg.weight_decay:
        log_alpha = jax.nn.log_sigmoid(ops.rsum(out["alpha"] * params[2]) + params[3])
    else:
        log_alpha = jnp.zeros_like(eta)
    y = ops.read(weights[-1], queries)
    co = coefficients(ops, log_alpha)
    new_w, new_s = [], []
    for i, name in enumerate(names):
        onto_values = name == "memory" and cfg.memory_target == "value"
        w, s = update_memory(ops, co, weights[i], momenta[i], keys, values, eta, onto_values)
        new_w += w
        new_s += s
    return tuple(new_w + new_s), (y, keys, values)


def joint_batch(spec: KernelSpec, streams: dict, fast: dict, reduction: dict):
    """The mixer's per-batch joint step on the kernel: streams {name: [B, H, T, d]}, fast in join_fast's layout
    ({'w': {'w_in', 'w_out': [B, H, n, ...]}, 's': same}), reduction {name: [H, ...]}. Returns ((y, keys, values)
    [B, H, T, d], new fast)."""
    cfg = spec.cfg
    batch, heads = streams["x"].shape[:2]
    flat = lambda a: a.reshape(batch * heads, *a.shape[2:])
    tokens = pad_tokens(spec, tuple(flat(streams[name].astype(F32)) for name in static_stream_names(cfg)))
    n = len(generator_names(cfg)) + 1
    parts = ("w", "s") if cfg.momentum else ("w",)
    state = tuple(flat(fast[part][m][:, :, i]) for part in parts for i in range(n) for m in MATRICES)
    per_head = lambda a: flat(jnp.broadcast_to(a.astype(F32), (batch, *a.shape)).reshape(batch, heads, 1, -1))
    names = ("eta_w", "eta_b") + (("alpha_w", "alpha_b") if cfg.weight_decay else ())
    params = tuple(per_head(reduction[name]) for name in names)
    outputs, end = scan(spec, tokens, params, state)
    y, keys, values = (a[:, : spec.length].reshape(batch, heads, spec.length, -1) for a in outputs)
    unflat = lambda a: a.reshape(batch, heads, *a.shape[1:])
    new = {}
    for j, part in enumerate(parts):
        mats = end[j * 2 * n : (j + 1) * 2 * n]
        new[part] = {m: jnp.stack([unflat(mats[2 * i + k]) for i in range(n)], axis=2) for k, m in enumerate(MATRICES)}
    return (y, keys, values), new
