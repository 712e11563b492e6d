"""M3 (HOPE_SPEC Algorithm 1) against a numpy hand computation written in the algorithm's own loops."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hope_jax.optim import build_optimizer, default_optim_config, level_config

F, LR, ALPHA, EPS = 2, 0.1, 0.5, 1e-8
B1, B2, B3 = 0.5, 0.75, 0.25
COEFFS = (3.4445, -4.7750, 2.0315)


def ns_numpy(g, steps=5):
    if not np.any(g):
        return np.zeros_like(g)  # NS of the empty k=0 window
    x = g.T if g.shape[0] > g.shape[1] else g
    x = x / (np.linalg.norm(x) + 1e-7)
    a, b, c = COEFFS
    for _ in range(steps):
        gram = x @ x.T
        x = a * x + (b * gram + c * gram @ gram) @ x
    return x.T if g.shape[0] > g.shape[1] else x


def m3_by_hand(theta, grads, mode):
    """Algorithm 1: outer loop over windows k, inner loop over steps t = kf+1 .. (k+1)f; returns theta after
    each step."""
    if mode == "paper":
        acc = lambda old, new, beta: old + beta * new
    else:
        acc = lambda old, new, beta: beta * old + (1 - beta) * new
    m1, m2, v = np.zeros_like(theta), np.zeros_like(theta), np.zeros_like(theta)
    history, t = [], 0
    for k in range(len(grads) // F):
        previous_window = grads[(k - 1) * F : k * F] if k > 0 else []
        m2 = acc(m2, np.sum(previous_window, axis=0) if k > 0 else np.zeros_like(theta), B3)
        o2 = ns_numpy(m2)
        for _ in range(F):
            g = grads[t]
            t += 1
            m1 = acc(m1, g, B1)
            v = acc(v, g * g, B2)
            o1 = ns_numpy(m1)
            v_hat = v if mode == "paper" else v / (1 - B2**t)
            theta = theta - LR * (o1 + ALPHA * o2) / (np.sqrt(v_hat) + EPS)
            history.append(theta)
    return history


def _m3_optimizer(params, mode):
    cfg = default_optim_config()
    with cfg.unlocked():
        cfg.levels.default = level_config(
            kind="m3",
            lr=LR,
            schedule="constant",
            weight_decay=0.0,
            b1=0.9,
            b2=0.999,
            eps=EPS,
            m3_mode=mode,
            m3_beta1=B1,
            m3_beta2=B2,
            m3_beta3=B3,
            m3_alpha=ALPHA,
            m3_period=F,
            m3_eps=EPS,
        )
    cfg.clip_norm = 0.0
    tx, _ = build_optimizer(cfg, params, tokens_per_step=1, total_steps=10)
    return tx


@pytest.mark.parametrize("mode", ["paper", "ema"])
def test_m3_matches_hand_computed_windows(mode):
    rng = np.random.default_rng(3)
    n_steps = 3 * F  # window 0 (O2 = 0), window 1 (O2 from window 0), window 2 (M2 accumulated over two windows)
    grads_w = rng.normal(size=(n_steps, 3, 4))
    grads_b = rng.normal(size=(n_steps, 4))
    theta_w = rng.normal(size=(3, 4))
    params = {"w": jnp.asarray(theta_w, jnp.float32), "b": jnp.zeros(4, jnp.float32)}
    tx = _m3_optimizer(params, mode)
    state = tx.init(params)
    expected = m3_by_hand(theta_w, list(grads_w), mode)
    adam = optax.adam(LR, b1=0.9, b2=0.999, eps=EPS)  # the 1-D bias takes the AdamW fallback
    bias, adam_state = jnp.zeros(4), adam.init(jnp.zeros(4))
    for t in range(n_steps):
        grads = {"w": jnp.asarray(grads_w[t], jnp.float32), "b": jnp.asarray(grads_b[t], jnp.float32)}
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        np.testing.assert_allclose(params["w"], expected[t], rtol=2e-5, atol=2e-5, err_msg=f"{mode} step {t + 1}")
        bias_update, adam_state = adam.update(grads["b"], adam_state)
        bias = optax.apply_updates(bias, bias_update)
        np.testing.assert_allclose(params["b"], bias, rtol=1e-6, atol=1e-7)


def test_slow_momentum_lags_one_window():
    """Window 0 moves by O1 alone: with alpha large, any leak of the current window into O2 would show at step
    1."""
    rng = np.random.default_rng(4)
    g = rng.normal(size=(3, 4))
    params = {"w": jnp.zeros((3, 4), jnp.float32)}
    tx = _m3_optimizer(params, "paper")
    updates, _ = tx.update({"w": jnp.asarray(g, jnp.float32)}, tx.init(params), params)
    want = -LR * ns_numpy(B1 * g) / (np.sqrt(B2 * g * g) + EPS)
    np.testing.assert_allclose(updates["w"], want, rtol=2e-5, atol=2e-6)
