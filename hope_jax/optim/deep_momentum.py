"""Momentum as a memory of gradients (HOPE_SPEC E36–E39), in the convention W <- W - lr * m_{i+1}(u_i).

E38 delta-rule momentum, per parameter tensor read as a matrix G (a 1-D tensor as a column):
    m_{i+1} = (α I − β ĝ ĝᵀ) m_i + η g_i,      ĝ = G / ||G||_F
The decay carries its own step size β (A9); ĝĝᵀ acts on the first axis, i.e. on flax's input dimension for
[in, out] kernels, where g = x δᵀ, so the momentum forgets along the current input direction as DGD does. β =
0 is heavy-ball momentum m <- α m + η g (E36 with the sign folded into the outer step).

E39 deep momentum: the memory is m(u) = b + r · f_φ(u / r), r = rms(u) + 1e-12, with b a per-coordinate table
(the shape of the parameter) and f_φ(z) = w2 · tanh(w1 z + c1) a width-h MLP shared by all coordinates of the
tensor. One GD step with retention on the inner objective L²(m; u) — 'dot': −<m(u), u>, 'l2': ½||m(u) − u||² —
    b <- α b − η ∂L²/∂b (per coordinate),   φ <- α φ − η ∇_φ mean_j L²_j (in units of r),
then the update is m_{i+1}(u_i). With w1 = c1 = w2 = 0 (dm_init_scale = 0) the MLP stays zero and the dot
objective gives b <- α b + η u: ordinary momentum."""

from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax


class DeltaMomentumState(NamedTuple):
    momentum: optax.Updates


class DeepMomentumState(NamedTuple):
    table: optax.Updates  # b, per coordinate
    w1: optax.Updates  # [h] per parameter tensor
    c1: optax.Updates
    w2: optax.Updates


def _as_matrix(x: jax.Array) -> jax.Array:
    return x.reshape(-1, 1) if x.ndim <= 1 else x.reshape(x.shape[0], -1)


def delta_decay(m: jax.Array, g: jax.Array, *, alpha: float, beta: float) -> jax.Array:
    """(α I − β ĝ ĝᵀ) m for one tensor, with the cheaper association of ĝ ĝᵀ m."""
    m_ab, g_ab = _as_matrix(m), _as_matrix(g)
    g_hat = g_ab / (jnp.linalg.norm(g_ab) + 1e-12)
    rows, cols = g_hat.shape
    projected = g_hat @ (g_hat.T @ m_ab) if cols <= rows else (g_hat @ g_hat.T) @ m_ab
    return (alpha * m_ab - beta * projected).reshape(m.shape)


def scale_by_delta_momentum(*, alpha: float, lr: float, delta_lr: float) -> optax.GradientTransformation:
    def init_fn(params):
        return DeltaMomentumState(momentum=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params))

    def update_fn(updates, state, params=None):
        del params

        def step(m, g):
            return delta_decay(m, g.astype(jnp.float32), alpha=alpha, beta=delta_lr) + lr * g.astype(jnp.float32)

        momentum = jax.tree.map(step, state.momentum, updates)
        directions = jax.tree.map(lambda m, g: m.astype(g.dtype), momentum, updates)
        return directions, DeltaMomentumState(momentum=momentum)

    return optax.GradientTransformation(init_fn, update_fn)


def _mlp(phi, z):
    w1, c1, w2 = phi
    return jnp.tanh(z[..., None] * w1 + c1) @ w2


def _shared_loss(phi, table_over_r, z, objective):
    out = table_over_r + _mlp(phi, z)
    if objective == "dot":
        return -jnp.mean(out * z)
    return 0.5 * jnp.mean(jnp.square(out - z))


def scale_by_deep_momentum(
    *, alpha: float, lr: float, objective: str, hidden: int, init_scale: float, seed: int
) -> optax.GradientTransformation:
    if objective not in ("dot", "l2"):
        raise ValueError(f"unknown deep momentum objective {objective!r}")

    def init_fn(params):
        leaves, treedef = jax.tree.flatten(params)
        keys = [jax.random.fold_in(jax.random.key(seed), i) for i in range(len(leaves))]
        w1 = [init_scale * jax.random.normal(k, (hidden,), jnp.float32) for k in keys]
        zero_h = [jnp.zeros((hidden,), jnp.float32) for _ in leaves]
        return DeepMomentumState(
            table=jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), params),
            w1=jax.tree.unflatten(treedef, w1),
            c1=jax.tree.unflatten(treedef, zero_h),
            w2=jax.tree.unflatten(treedef, list(zero_h)),
        )

    def leaf_step(b, w1, c1, w2, g):
        u = g.astype(jnp.float32)
        r = jnp.sqrt(jnp.mean(jnp.square(u))) + 1e-12
        z = u / r
        phi = (w1, c1, w2)
        memory_out = b + r * _mlp(phi, z)
        grad_b = -u if objective == "dot" else memory_out - u
        grad_phi = jax.grad(_shared_loss)(phi, b / r, z, objective)
        new_b = alpha * b - lr * grad_b
        new_phi = tuple(alpha * p - lr * dp for p, dp in zip(phi, grad_phi))
        direction = new_b + r * _mlp(new_phi, z)
        return direction.astype(g.dtype), new_b, *new_phi

    def update_fn(updates, state, params=None):
        del params
        results = jax.tree.map(leaf_step, state.table, state.w1, state.c1, state.w2, updates)
        treedef = jax.tree.structure(updates)
        unzipped = [jax.tree.unflatten(treedef, [r[i] for r in treedef.flatten_up_to(results)]) for i in range(5)]
        directions, table, w1, c1, w2 = unzipped
        return directions, DeepMomentumState(table=table, w1=w1, c1=c1, w2=w2)

    return optax.GradientTransformation(init_fn, update_fn)
