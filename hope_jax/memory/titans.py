"""Titans neural long-term memory, chunk-parallel (HOPE_SPEC §2.2–2.6, E5–E13).

    S_t = η_t S_{t−1} − θ'_t ∇ℓ(M_{t'}; k_t, v_t),   M_t = (1 − α_t) M_{t−1} + S_t,   y_t = M_t(q_t)

with ℓ = ½‖M(k) − v‖², gradients at the chunk-start state M_{t'} (mini-batch GD inside a chunk; chunk size 1 is the
exact token recurrence), θ'_t = θ_t / (1 + C·θ_t·h_t) per weight matrix, h_t its curvature bound
(chunking.chunk_step_size; `normalized_step=False` takes θ_t as E5 prints it), decay and momentum as C×C coefficient
matrices (E12–E13), and the outputs inside a chunk read M_t through the dual form (never materialising per-token
weights): every layer of the memory is read as γ_t·(u W_{t'}) + σ_t·(u S_{t'}) + Σ_{i≤t} c_{t,i} (u·x_i) ĝ_i.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import chunk_step_size, mm
from hope_jax.memory.dgd import chunk_start_snapshot, token_curvature_bounds
from hope_jax.memory.driver import scan_sequence
from hope_jax.memory.recurrence import ChunkCoefficients, chunk_coefficients, chunk_end_state


def read_through_chunk(
    inputs: jax.Array,
    w0: jax.Array,
    s0: jax.Array | None,
    x: jax.Array,
    step: jax.Array,
    coeffs: ChunkCoefficients,
) -> jax.Array:
    """Row t of `inputs` [C, d_in] read through W_t of the β = 0 recurrence (recurrence.py), without forming W_t."""
    out = coeffs.decay_from_start[:, None] * mm(inputs, w0)
    if s0 is not None:
        out = out + coeffs.momentum_into_state[:, None] * mm(inputs, s0)
    return out + mm(mm(inputs, x.T) * coeffs.write, step)


def _read_memory(weights, surprise, queries, factors, steps, coeffs, *, residual, activation):
    """y_t = M_t(q_t) for the whole chunk, layer by layer through the dual form."""

    def layer(name, inputs):
        return read_through_chunk(inputs, weights[name], surprise.get(name), factors[name][0], steps[name], coeffs)

    kind = fast_mlp.memory_kind(weights)
    if kind == "linear":
        return layer("w", queries)
    if kind == "swiglu":
        hidden = jax.nn.silu(layer("w_gate", queries)) * layer("w_up", queries)
        return layer("w_down", hidden)
    out = layer("w_out", fast_mlp.activation_fn(activation)(layer("w_in", queries)))
    return queries + out if residual else out


def titans_chunk(state: tuple, chunk: tuple, *, chunk_size, momentum, residual, activation, truncate_bptt,
                 normalized_step) -> tuple[tuple, jax.Array]:  # fmt: skip
    """The step of one sequence and head over one chunk (driver.py): state (weights, surprise) at the chunk start,
    chunk (q, k, v, θ, log η, log(1 − α)) [C, ...]; returns (the state at the chunk end, y [C, dv]). Module docstring
    for the maths; titans_reference (below) is the same recurrence token by token."""
    w, s = state
    q_c, k_c, v_c, theta_c, log_eta_c, log_keep_c = chunk
    coeffs = chunk_coefficients(log_keep_c, log_eta_c if momentum else None)
    parts = fast_mlp.forward_parts(w, k_c, residual=residual, activation=activation)
    factors = fast_mlp.grad_factors_and_products(w, k_c, v_c, residual=residual, activation=activation, key_parts=parts)
    if normalized_step:
        curvature = fast_mlp.curvature_bounds(w, k_c, parts)
        lrs = {name: chunk_step_size(theta_c, curvature[name], chunk_size) for name in factors}
    else:
        lrs = dict.fromkeys(factors, theta_c)
    steps = {name: -lrs[name][:, None] * g for name, (_, g, _) in factors.items()}
    y = _read_memory(w, s, q_c, factors, steps, coeffs, residual=residual, activation=activation)
    new_w, new_s = {}, {}
    for name, (x, _, _) in factors.items():
        new_w[name], s_end = chunk_end_state(w[name], s.get(name), x, steps[name], coeffs, truncate_bptt=truncate_bptt)
        if momentum:
            new_s[name] = s_end
    return (new_w, new_s), y


def titans_memory(
    weights: dict,
    q: jax.Array,
    k: jax.Array,
    v: jax.Array,
    theta: jax.Array,
    eta: jax.Array | None,
    alpha: jax.Array | None,
    surprise: dict | None = None,
    *,
    log_eta: jax.Array | None = None,
    log_keep: jax.Array | None = None,
    chunk_size: int,
    momentum: bool = True,
    residual: bool = True,
    activation: str = "silu",
    truncate_bptt: bool = False,
    remat_group: int = 1,
    normalized_step: bool = True,
    accum_dtype=jnp.float32,
) -> tuple[jax.Array, dict, dict | None]:
    """Titans memory over a batch of sequences; returns (y [B,H,T,dv], end weights, end momentum or None).

    weights: per-sequence fast weights, leaves [B, H, ...]: {'w': [dk, dv]} (linear) or {'w_in': [dk, h],
      'w_out': [h, dv]} (2-layer, `residual` adds the input, needs dk == dv) or a SwiGLU dict (fast_mlp.py).
    q, k: [B, H, T, dk]; v: [B, H, T, dv] (normalise q, k before calling if wanted — T §4.4 does).
    theta (inner lr ≥ 0), eta (momentum decay in (0, 1]), alpha (forget gate in [0, 1)): [B, H, T].
    log_eta = log η, log_keep = log(1 − α) [B, H, T]: the same gates in log space; give them *instead of* eta / alpha
      (pass None there) for learned sigmoid gates, as jax.nn.log_sigmoid(z_η) and jax.nn.log_sigmoid(−z_α). Only log η
      and log(1 − α) are used, so this is the same maths, but finite in value and gradient at any logit, where
      log(σ(z)) / log1p(−σ(z)) are −inf (NaN gradient) once σ saturates in float32 (σ(z) = 1 for z ≳ 17).
    surprise: the carried momentum buffer S (T's past surprise; same structure as weights); None = zeros. Ignored
      with momentum=False.
    chunk_size: gradients inside a chunk are taken at the chunk-start state; a trailing partial chunk is a chunk.
    truncate_bptt: outer gradients flow through the decay of the carried state and through the in-chunk reads,
      not through the end-of-chunk update (DESIGN D4 speed switch).
    normalized_step: each token's gradient on a weight matrix steps by θ_t / (1 + C·θ_t·h_t), h_t its curvature bound
      there (chunking.chunk_step_size: the chunk's summed step stays below the curvature bound); False: by θ_t (E5
      literally, which diverges once C·θ exceeds ~2 on aligned keys).
    remat_group: chunks per `jax.checkpoint` group (0 = no remat). accum_dtype: dtype of all inner arithmetic;
      y is returned in q's dtype, the state in accum_dtype.
    """
    if q.ndim != 4 or k.shape[:3] != q.shape[:3] or v.shape[:3] != q.shape[:3]:
        raise ValueError(f"q, k, v must be [B, H, T, d] with equal B, H, T; got {q.shape}, {k.shape}, {v.shape}")
    if (alpha is None) == (log_keep is None):
        raise ValueError("give exactly one of alpha and log_keep")
    if momentum and (eta is None) == (log_eta is None):
        raise ValueError("give exactly one of eta and log_eta")
    gates = (("theta", theta), ("eta", eta), ("alpha", alpha), ("log_eta", log_eta), ("log_keep", log_keep))
    for name, gate in gates:
        if gate is not None and gate.shape != q.shape[:3]:
            raise ValueError(f"{name} must have shape [B, H, T] = {q.shape[:3]}, got {gate.shape}")
    fast_mlp.memory_kind(weights)
    cast = lambda tree: jax.tree.map(lambda a: a.astype(accum_dtype), tree)
    weights = cast(weights)
    if momentum:
        surprise = cast(surprise) if surprise is not None else jax.tree.map(jnp.zeros_like, weights)
    else:
        surprise = {}
    step = functools.partial(
        titans_chunk, chunk_size=chunk_size, momentum=momentum, residual=residual, activation=activation,
        truncate_bptt=truncate_bptt, normalized_step=normalized_step,
    )  # fmt: skip
    per_sequence = lambda w, s, *xs: scan_sequence(step, (w, s), xs, chunk_size, remat_group=remat_group)
    batched = jax.vmap(jax.vmap(per_sequence))
    out_dtype = q.dtype
    q, k, v, theta = cast((q, k, v, theta))
    log_keep = jnp.log1p(-alpha.astype(accum_dtype)) if log_keep is None else log_keep.astype(accum_dtype)
    if not momentum:  # unused: never take log(η) here (log 0 would put NaN into the gradient)
        log_eta = jnp.zeros_like(theta)
    elif log_eta is None:
        log_eta = jnp.log(eta.astype(accum_dtype))
    else:
        log_eta = log_eta.astype(accum_dtype)
    (w_end, s_end), y = batched(weights, surprise, q, k, v, theta, log_eta, log_keep)
    return y.astype(out_dtype), w_end, (s_end if momentum else None)


# ---- per-token reference (a lax.scan over tokens; tests and `python -m hope_jax.bench inner`) ------------------------


def titans_reference(
    weights,
    q,
    k,
    v,
    theta,
    eta,
    alpha,
    surprise=None,
    *,
    chunk_size,
    momentum=True,
    residual=True,
    activation="silu",
    normalized_step=True,
):
    """Per-token Titans (E5–E6 with gradients at the chunk-start state, y_t = M_t(q_t)); same API as titans_memory.
    normalized_step: each weight matrix's step is θ_t / (1 + C·θ_t·h_t), h_t = ‖∂M(k_t)/∂W‖²_F at the chunk start."""
    loss = lambda w, key, val: fast_mlp.inner_loss(w, key, val, residual=residual, activation=activation)
    if surprise is None:
        surprise = jax.tree.map(jnp.zeros_like, weights)

    def one_sequence(w, s, q, k, v, theta, eta, alpha):
        def step(carry, inputs):
            w, s, snapshot = carry
            t, q_t, k_t, v_t, theta_t, eta_t, alpha_t = inputs
            snapshot = chunk_start_snapshot(t, chunk_size, w, snapshot)
            grad = jax.grad(loss)(snapshot, k_t, v_t)
            curvature = token_curvature_bounds(snapshot, k_t, residual=residual, activation=activation)
            step = {
                name: theta_t / (1.0 + chunk_size * theta_t * curvature[name]) if normalized_step else theta_t
                for name in grad
            }
            if momentum:
                s = {name: eta_t * s[name] - step[name] * grad[name] for name in grad}
                w = {name: (1.0 - alpha_t) * w[name] + s[name] for name in grad}
            else:
                w = {name: (1.0 - alpha_t) * w[name] - step[name] * grad[name] for name in grad}
            y_t = fast_mlp.forward(w, q_t[None], residual=residual, activation=activation)[0]
            return (w, s, snapshot), y_t

        steps = jnp.arange(q.shape[0])
        (w, s, _), y = lax.scan(step, (w, s, w), (steps, q, k, v, theta, eta, alpha))
        return y, w, s

    y, w, s = jax.vmap(jax.vmap(one_sequence))(weights, surprise, q, k, v, theta, eta, alpha)
    return y, w, (s if momentum else None)
