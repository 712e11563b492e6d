"""Per-level chains: periods (MultiSteps), learning rates, schedules, weight-decay mask, global clipping."""

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from hope_jax.optim import build_optimizer, default_optim_config, level_config, make_schedule
from hope_jax.optim.schedules import every_k_schedule

EPS = 1e-8


def _config(levels: dict, rules, clip_norm=0.0):
    cfg = default_optim_config()
    with cfg.unlocked():
        cfg.levels = {name: level_config(**settings) for name, settings in levels.items()}
        cfg.rules = rules
    cfg.clip_norm = clip_norm
    return cfg


def _run(tx, params, grads_seq):
    state = tx.init(params)
    history = []
    for grads in grads_seq:
        updates, state = tx.update(grads, state, params)
        params = optax.apply_updates(params, updates)
        history.append(params)
    return history


# b1, b2 exact in binary so the float32 optimiser and the float64 reference differ only by round-off
ADAM = dict(kind="adamw", schedule="constant", weight_decay=0.0, b1=0.5, b2=0.75, eps=EPS)


def test_period_k_level_changes_only_every_kth_step_by_the_mean_gradient():
    tokens_per_step, k = 16, 3
    cfg = _config(
        {"slow": dict(ADAM, lr=0.1, period_tokens=k * tokens_per_step), "fast": dict(ADAM, lr=0.01)},
        [("slow", "slow"), ("fast", "fast")],
    )
    params = {"slow": jnp.array([1.0, -2.0]), "fast": jnp.array([0.5])}
    tx, _ = build_optimizer(cfg, params, tokens_per_step=tokens_per_step, total_steps=100)
    rng = np.random.default_rng(0)
    g_slow = rng.normal(size=(2 * k, 2)).astype(np.float32)
    grads_seq = [{"slow": jnp.asarray(g), "fast": jnp.array([1.0])} for g in g_slow]
    history = _run(tx, params, grads_seq)

    # Adam by hand on the two window means (bias-corrected first and second moments).
    mean_1, mean_2 = g_slow[:k].mean(0), g_slow[k:].mean(0)
    m1, v1 = 0.5 * mean_1, 0.25 * mean_1**2
    step_1 = (m1 / 0.5) / (np.sqrt(v1 / 0.25) + EPS)
    m2, v2 = 0.5 * m1 + 0.5 * mean_2, 0.75 * v1 + 0.25 * mean_2**2
    step_2 = (m2 / (1 - 0.5**2)) / (np.sqrt(v2 / (1 - 0.75**2)) + EPS)
    expected_slow = [
        [1.0, -2.0],
        [1.0, -2.0],
        np.array([1.0, -2.0]) - 0.1 * step_1,
        np.array([1.0, -2.0]) - 0.1 * step_1,
        np.array([1.0, -2.0]) - 0.1 * step_1,
        np.array([1.0, -2.0]) - 0.1 * step_1 - 0.1 * step_2,
    ]
    for step, (params_t, want) in enumerate(zip(history, expected_slow)):
        np.testing.assert_allclose(params_t["slow"], want, rtol=1e-6, atol=1e-7, err_msg=f"step {step + 1}")
        # the period-1 level moves every step (constant gradient: Adam's step is exactly lr)
        np.testing.assert_allclose(params_t["fast"], 0.5 - 0.01 * (step + 1), rtol=1e-5)


def test_each_level_uses_its_own_learning_rate_and_clipping_is_global():
    cfg = _config(
        {
            "a": dict(ADAM, lr=0.1),
            "b": dict(ADAM, lr=0.001),
            "heavy": dict(kind="deep_momentum", lr=0.5, schedule="constant", weight_decay=0.0, dm_delta_lr=0.0),
        },
        [(r"blocks/a/.*", "a"), (r"blocks/b/.*", "b"), (".*", "heavy")],
        clip_norm=1.0,
    )
    params = {"blocks": {"a": {"w": jnp.zeros((2, 2))}, "b": {"w": jnp.zeros((2, 2))}}, "h": jnp.zeros(2)}
    tx, labels = build_optimizer(cfg, params, tokens_per_step=1, total_steps=10)
    assert labels["h"] == "heavy" and labels["blocks"]["b"]["w"] == "b"
    grads = {
        "blocks": {"a": {"w": jnp.full((2, 2), 3.0)}, "b": {"w": jnp.full((2, 2), -3.0)}},
        "h": jnp.array([3.0, 4.0]),
    }
    (new,) = _run(tx, params, [grads])
    np.testing.assert_allclose(new["blocks"]["a"]["w"], -0.1, rtol=1e-6)  # Adam's first step is lr * sign(g)
    np.testing.assert_allclose(new["blocks"]["b"]["w"], 0.001, rtol=1e-6)
    # heavy ball sees the globally clipped gradient: total norm sqrt(4*9 + 4*9 + 25) = sqrt(97)
    np.testing.assert_allclose(new["h"], -0.5 * np.array([3.0, 4.0]) / np.sqrt(97.0), rtol=1e-6)


def test_weight_decay_mask_skips_vectors_norms_and_embeddings():
    cfg = _config({"default": dict(ADAM, lr=0.1, weight_decay=0.5)}, [(".*", "default")])
    params = {
        "embed": {"embedding": jnp.ones((3, 2))},
        "mlp": {"kernel": jnp.ones((2, 2)), "bias": jnp.ones((2,))},
        "final_norm": {"scale": jnp.ones((2,))},
        "mixer": {"gate": jnp.ones((2,))},
    }
    tx, _ = build_optimizer(cfg, params, tokens_per_step=1, total_steps=10)
    zero_grads = {k: {n: jnp.zeros_like(v) for n, v in d.items()} for k, d in params.items()}
    (new,) = _run(tx, params, [zero_grads])
    np.testing.assert_allclose(new["mlp"]["kernel"], 1.0 - 0.1 * 0.5, rtol=1e-6)
    for group, name in (("embed", "embedding"), ("mlp", "bias"), ("final_norm", "scale"), ("mixer", "gate")):
        np.testing.assert_array_equal(new[group][name], params[group][name])


@pytest.mark.parametrize("kind", ["cosine", "linear", "constant"])
def test_schedules_hit_exact_values(kind):
    schedule = make_schedule(kind, peak_lr=2.0, warmup_steps=10, decay_steps=30, end_lr_ratio=0.1, total_steps=100)
    assert float(schedule(0)) == 0.0
    assert float(schedule(5)) == pytest.approx(1.0)
    assert float(schedule(10)) == pytest.approx(2.0)
    end = {"cosine": 0.2, "linear": 0.2, "constant": 2.0}[kind]
    assert float(schedule(40)) == pytest.approx(end, rel=1e-6)
    assert float(schedule(90)) == pytest.approx(end, rel=1e-6)
    if kind != "constant":
        assert float(schedule(25)) == pytest.approx(1.1, rel=1e-6)  # both are at the midpoint half way
    until_end = make_schedule(kind, peak_lr=2.0, warmup_steps=10, decay_steps=-1, end_lr_ratio=0.0, total_steps=50)
    assert float(until_end(50)) == pytest.approx(0.0 if kind != "constant" else 2.0, abs=1e-6)
    # a level stepping every 4 steps reads the schedule at the global step that completes its window
    assert float(every_k_schedule(schedule, 4)(2)) == float(schedule(11))
