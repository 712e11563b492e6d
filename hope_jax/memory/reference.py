"""Slow per-token references for the chunk-parallel inner loops (used only by tests and `bench inner`).

Each one is the token recurrence written as directly as the equations: `lax.scan` over tokens, explicit weight
matrices updated one token at a time, inner gradients from `jax.grad` of the inner loss at the chunk-start snapshot
(refreshed at every multiple of the chunk size), explicit (a I − β x̂ᵀx̂) transition matrices. Nothing is shared with
the fast path except the memory forward pass (fast_mlp.forward / inner_loss).
"""

import jax
import jax.numpy as jnp
from jax import lax

from hope_jax.memory import fast_mlp
from hope_jax.memory.cms import level_forward
from hope_jax.memory.self_modifying import SelfModConfig, generator_names, updated_names


def _refresh(t, chunk_size, current, snapshot):
    """The chunk-start snapshot: replaced by the current state when token t opens a chunk."""
    opens = (t % chunk_size) == 0
    return jax.tree.map(lambda c, s: jnp.where(opens, c, s), current, snapshot)


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
            snapshot = _refresh(t, chunk_size, w, snapshot)
            grad = jax.grad(loss)(snapshot, k_t, v_t)
            curvature = curvature_bounds(snapshot, k_t, residual=residual, activation=activation)
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


def curvature_bounds(snapshot: dict, key: jax.Array, *, residual: bool, activation: str) -> dict:
    """‖x‖²·‖J‖²_F per weight matrix at the snapshot, J the Jacobian (by autodiff) from the matrix's output to the
    memory's output; a last layer's J is the identity, whose spectral norm 1 is taken exactly."""
    kind = fast_mlp.memory_kind(snapshot)
    inputs = layer_inputs(snapshot, key, residual=residual, activation=activation)
    bounds = {name: jnp.sum(inputs[name] ** 2) for name in snapshot}
    gain = lambda read, at: jnp.sum(jnp.square(jax.jacobian(read)(at)))
    if kind == "mlp":
        act = fast_mlp.activation_fn(activation)
        read = lambda z: act(z) @ snapshot["w_out"] + (key if residual else 0.0)
        bounds["w_in"] = bounds["w_in"] * gain(read, key @ snapshot["w_in"])
    elif kind == "swiglu":
        gate_pre, up = key @ snapshot["w_gate"], key @ snapshot["w_up"]
        bounds["w_gate"] = bounds["w_gate"] * gain(lambda z: (jax.nn.silu(z) * up) @ snapshot["w_down"], gate_pre)
        bounds["w_up"] = bounds["w_up"] * gain(lambda u: (jax.nn.silu(gate_pre) * u) @ snapshot["w_down"], up)
    return bounds


def layer_inputs(snapshot: dict, key: jax.Array, *, residual: bool, activation: str) -> dict:
    """Each weight matrix's input for one token at the chunk-start weights (the vectors the DGD transition uses)."""
    kind = fast_mlp.memory_kind(snapshot)
    if kind == "linear":
        return {"w": key}
    if kind == "swiglu":
        hidden = jax.nn.silu(key @ snapshot["w_gate"]) * (key @ snapshot["w_up"])
        return {"w_gate": key, "w_up": key, "w_down": hidden}
    return {"w_in": key, "w_out": fast_mlp.activation_fn(activation)(key @ snapshot["w_in"])}


def dgd_token_step(
    w,
    s,
    snapshot,
    key,
    target,
    lr,
    retention,
    *,
    residual,
    activation,
    dgd,
    dgd_layers,
    gated_delta,
    momentum_decay,
    chunk_size,
    normalized_step=True,
):
    """One token of DGD on every weight matrix of a memory (E19, E28 with A4/A5/A15 options), explicitly.
    normalized_step: the gradient term steps by lr / (1 + C·lr·h), h = curvature_bounds (not with gated_delta)."""
    grad = jax.grad(fast_mlp.inner_loss)(snapshot, key, target, residual=residual, activation=activation)
    inputs = layer_inputs(snapshot, key, residual=residual, activation=activation)
    curvature = curvature_bounds(snapshot, key, residual=residual, activation=activation)
    first_layers = {"w", "w_in", "w_gate", "w_up"}
    new_w, new_s = {}, {}
    for name in w:
        x_hat = inputs[name] / jnp.sqrt(jnp.sum(inputs[name] ** 2) + 1e-6)
        g = grad[name]
        if gated_delta:
            g = g - jnp.outer(x_hat, x_hat @ snapshot[name])
        transition = retention * jnp.eye(x_hat.shape[0])
        beta = lr / (1.0 + lr * jnp.sum(x_hat**2))
        step_size = beta  # η' with or without DGD: 'w/o DGD' removes the transition term only
        if dgd and (dgd_layers == "all" or name in first_layers):
            transition = transition - beta * jnp.outer(x_hat, x_hat)
        if normalized_step and not gated_delta:
            step_size = lr / (1.0 + chunk_size * lr * curvature[name])
        if s is None:
            new_w[name] = transition @ w[name] - step_size * g
        else:
            new_s[name] = momentum_decay * s[name] - step_size * g
            new_w[name] = transition @ w[name] + new_s[name]
    return new_w, (new_s if s is not None else None)


def self_modifying_reference(x, q_static, state, reduction, cfg: SelfModConfig, *, k=None, v=None):
    """Per-token self-modifying Titans; same API as self_modifying_titans (k, v: the static streams of the
    'w/o adaptive k/v' switches)."""
    gens = generator_names(cfg)
    names = updated_names(cfg)
    dgd_kw = dict(
        residual=True,
        activation=cfg.activation,
        dgd=cfg.dgd,
        dgd_layers=cfg.dgd_layers,
        gated_delta=cfg.gated_delta,
        momentum_decay=cfg.momentum_decay,
        normalized_step=cfg.normalized_step,
    )
    fwd = lambda w, u: fast_mlp.forward(w, u[None], residual=True, activation=cfg.activation)[0]
    unit = lambda u: u / jnp.sqrt(jnp.sum(u**2) + 1e-6)

    def one_sequence(x, q_static, k_static, v_static, weights, momentum, reduction):
        def step(carry, inputs):
            w, s, snapshot = carry
            t, x_t, q_t, k_static_t, v_static_t = inputs
            snapshot = {
                name: _refresh(
                    t,
                    cfg.chunk_size if name == "memory" else cfg.aux_chunk_size,
                    w[name],
                    snapshot[name],
                )
                for name in names
            }
            out = {name: fwd(snapshot[name], x_t) for name in gens}
            k_t = unit(out["k"] if cfg.adaptive_k else k_static_t)
            v_t = out["v"] if cfg.adaptive_v else v_static_t
            v_t = unit(v_t) if cfg.normalize_values else v_t
            q_t = unit(out["q"] if cfg.adaptive_q else q_t)
            eta_t = cfg.eta_max * jax.nn.sigmoid(out["eta"] @ reduction["eta_w"] + reduction["eta_b"])
            alpha_t = (
                jax.nn.sigmoid(out["alpha"] @ reduction["alpha_w"] + reduction["alpha_b"])
                if cfg.weight_decay
                else jnp.ones(())
            )
            y_t = fwd(snapshot["memory"], q_t)
            new_w, new_s = {}, {}
            for name in names:
                onto_values = name == "memory" and cfg.memory_target == "value"
                target = v_t if onto_values else fwd(snapshot[name], v_t)
                new_w[name], new_s[name] = dgd_token_step(
                    w[name],
                    s[name] if s is not None else None,
                    snapshot[name],
                    k_t,
                    target,
                    eta_t,
                    alpha_t,
                    chunk_size=cfg.chunk_size if name == "memory" else cfg.aux_chunk_size,
                    **dgd_kw,
                )
            return (new_w, new_s if s is not None else None, snapshot), (y_t, k_t, v_t)

        steps = jnp.arange(x.shape[0])
        (w, s, _), (y, k, v) = lax.scan(step, (weights, momentum, weights), (steps, x, q_static, k_static, v_static))
        return y, w, s, k, v

    momentum = state.get("momentum") if cfg.momentum else None
    static = [jnp.zeros_like(x) if stream is None else stream for stream in (q_static, k, v)]
    per_head = jax.vmap(one_sequence, in_axes=(0, 0, 0, 0, 0, 0, 0))
    batched = jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0, 0, None))
    y, w, s, keys, values = batched(x, *static, state["weights"], momentum, reduction)
    new_state = {"weights": w, "momentum": s} if cfg.momentum else {"weights": w}
    return y, new_state, keys, values


def cms_local_reference(
    weights, x, k, v, *, inner_lr, inner_decay, period, activation="silu", dgd=True, normalized_step=True
):
    """Per-token CMS `local` level; same API as cms_local."""

    def one_sequence(w, x, k, v):
        def step(carry, inputs):
            w, snapshot = carry
            t, x_t, k_t, v_t = inputs
            snapshot = _refresh(t, period, w, snapshot)
            y_t = level_forward(snapshot, x_t[None], activation)[0]
            target = level_forward(snapshot, v_t[None], activation)[0]
            w, _ = dgd_token_step(
                w,
                None,
                snapshot,
                k_t,
                target,
                inner_lr,
                1.0 - inner_lr * inner_decay,
                residual=False,
                activation=activation,
                dgd=dgd,
                dgd_layers="all",
                gated_delta=False,
                momentum_decay=0.0,
                chunk_size=period,
                normalized_step=normalized_step,
            )
            return (w, snapshot), y_t

        (w, _), y = lax.scan(step, (w, w), (jnp.arange(x.shape[0]), x, k, v))
        return y, w

    return jax.vmap(one_sequence)(weights, x, k, v)
