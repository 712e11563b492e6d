"""Muon's Newton–Schulz (near-orthogonal, matrices only); deep momentum (E38/E39) and its degenerate case."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hope_jax.optim import (
    build_optimizer,
    default_optim_config,
    level_config,
    newton_schulz,
    scale_by_deep_momentum,
    scale_by_delta_momentum,
)

EPS = 1e-8


@pytest.mark.parametrize("shape", [(8, 16), (16, 8)])
def test_quintic_newton_schulz_is_near_orthogonal(shape):
    g = np.random.default_rng(0).normal(size=shape).astype(np.float32)
    raw = np.linalg.svd(g / np.linalg.norm(g), compute_uv=False)
    assert raw.min() < 0.2  # the input is far from orthogonal, so the check below can fail
    sv = np.linalg.svd(
        np.asarray(newton_schulz(jnp.asarray(g), steps=5, coeffs=(3.4445, -4.7750, 2.0315))), compute_uv=False
    )
    assert sv.min() > 0.6 and sv.max() < 1.25, sv


def test_cubic_newton_schulz_converges_to_the_polar_factor():
    g = np.random.default_rng(1).normal(size=(6, 4))
    u, _, vt = np.linalg.svd(g, full_matrices=False)
    out = newton_schulz(jnp.asarray(g, jnp.float32), steps=40, coeffs=(1.5, -0.5, 0.0))
    np.testing.assert_allclose(out, u @ vt, atol=1e-5)


def _muon_config():
    cfg = default_optim_config()
    with cfg.unlocked():
        cfg.levels.default = level_config(
            kind="muon", lr=0.1, schedule="constant", weight_decay=0.0, b1=0.5, b2=0.75, eps=EPS
        )
    cfg.clip_norm = 0.0
    return cfg


def test_muon_orthogonalises_matrices_only():
    rng = np.random.default_rng(2)
    grads = {k: jnp.asarray(rng.normal(size=s), jnp.float32) for k, s in (("w", (4, 6)), ("b", (6,)))}
    params = {k: jnp.zeros_like(v) for k, v in grads.items()}
    tx, _ = build_optimizer(_muon_config(), params, tokens_per_step=1, total_steps=10)
    updates, _ = tx.update(grads, tx.init(params), params)
    ns = lambda m: np.asarray(newton_schulz(m, steps=5, coeffs=(3.4445, -4.7750, 2.0315)))
    # nesterov direction on the first step is (1 + momentum) g; NS is scale-invariant; rms scaling 0.2
    # sqrt(max dim)
    np.testing.assert_allclose(updates["w"], -0.1 * 0.2 * np.sqrt(6) * ns(grads["w"]), rtol=1e-5, atol=1e-6)
    adam_first_step = lambda g: -0.1 * g / (jnp.abs(g) + EPS)
    np.testing.assert_allclose(updates["b"], adam_first_step(grads["b"]), rtol=1e-6)


def test_muon_refuses_unnamed_arrays_of_more_than_two_dimensions():
    """Without axis names a 3-D leaf could be one matrix or a stack: refused by name, never silently given Adam."""
    params = {"w": jnp.zeros((4, 6)), "stack": jnp.zeros((2, 3, 5))}
    with pytest.raises(ValueError, match=r"stack: a parameter of more than two dimensions needs logical axis names"):
        build_optimizer(_muon_config(), params, tokens_per_step=1, total_steps=10)


def test_removed_ns_stacked_key_names_itself():
    cfg = _muon_config()
    with cfg.unlocked():
        cfg.levels.default.ns_stacked = True
    with pytest.raises(KeyError, match=r"optim.levels.default.ns_stacked was removed"):
        build_optimizer(cfg, {"w": jnp.zeros((4, 6))}, tokens_per_step=1, total_steps=10)
    with pytest.raises(KeyError, match=r"ns_stacked was removed"):
        level_config(kind="muon", ns_stacked=True)


def _apply_three_steps(tx, grads_seq):
    params = jnp.zeros_like(grads_seq[0])
    state, history = tx.init(params), []
    for g in grads_seq:
        updates, state = tx.update(g, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


GRADS = [jnp.asarray(g, jnp.float32) for g in np.random.default_rng(5).normal(size=(3, 3, 2))]


@pytest.mark.parametrize(
    "memory",
    [
        scale_by_delta_momentum(alpha=0.9, lr=1.0, delta_lr=0.0),
        scale_by_deep_momentum(alpha=0.9, lr=1.0, objective="dot", hidden=4, init_scale=0.0, seed=0),
    ],
    ids=["delta_beta0", "mlp_inert"],
)
def test_deep_momentum_degenerates_to_heavy_ball(memory):
    got = _apply_three_steps(optax.chain(memory, optax.scale(-0.05)), GRADS)
    want = _apply_three_steps(optax.sgd(0.05, momentum=0.9), GRADS)
    for step, (a, b) in enumerate(zip(got, want)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-7, err_msg=f"step {step + 1}")


def test_delta_momentum_forgets_along_the_gradient_by_hand():
    alpha, beta = 0.9, 0.5
    m = np.zeros((3, 2))
    expected = []
    for g in GRADS:
        g = np.asarray(g, np.float64)
        g_hat = g / np.linalg.norm(g)
        m = (alpha * np.eye(3) - beta * g_hat @ g_hat.T) @ m + g
        expected.append(m)
    tx = scale_by_delta_momentum(alpha=alpha, lr=1.0, delta_lr=beta)
    state = tx.init(GRADS[0])
    for step, g in enumerate(GRADS):
        direction, state = tx.update(g, state)
        np.testing.assert_allclose(direction, expected[step], rtol=1e-5, atol=1e-6, err_msg=f"step {step + 1}")
    assert not np.allclose(expected[-1], 0.9**2 * GRADS[0] + 0.9 * GRADS[1] + GRADS[2])  # differs from heavy ball


def test_deep_mlp_momentum_inner_step_lowers_its_l2_objective():
    tx = scale_by_deep_momentum(alpha=1.0, lr=0.1, objective="l2", hidden=4, init_scale=1.0, seed=0)
    state = tx.init(GRADS[0])
    for g in GRADS[:2]:
        _, state = tx.update(g, state)
    u = GRADS[2]
    r = float(jnp.sqrt(jnp.mean(u**2)))
    mlp = lambda s: jnp.tanh((u / r)[..., None] * s.w1 + s.c1) @ s.w2
    before = jnp.mean((state.table + r * mlp(state) - u) ** 2)
    direction, new_state = tx.update(u, state)
    after = jnp.mean((direction - u) ** 2)
    assert float(jnp.abs(new_state.w2).sum()) > 0  # the shared MLP is learning, not inert
    assert float(after) < float(before)
