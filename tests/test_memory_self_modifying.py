"""Self-modifying Titans (DGD memories): chunked WY/UT path against the per-token reference, causality, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hope_jax.memory.dgd import DGDRule, dgd_chunk_update
from hope_jax.memory.self_modifying import (
    SelfModConfig,
    init_self_modifying_state,
    self_modifying_reference,
    self_modifying_titans,
    updated_names,
)
from tests.gradcheck import assert_gradient_matches_finite_differences

B, H, T, D, HIDDEN = 2, 2, 20, 8, 12
TOL = dict(rtol=1e-5, atol=1e-5)

CONFIGS = {
    # generators chunk 4 (divides T), memory chunk 16 (does not: a trailing 4-token chunk)
    "default": SelfModConfig(aux_chunk_size=4, chunk_size=16, eta_max=0.3),
    # chunk 1 everywhere: the exact token recurrence
    "chunk1": SelfModConfig(aux_chunk_size=1, chunk_size=1, eta_max=0.3),
    # A15 gated-delta form, A4 alternative, no momentum, ℓ2-normalised values; generator chunk larger than the memory's
    "gated_first_nomom": SelfModConfig(
        aux_chunk_size=16,
        chunk_size=4,
        eta_max=0.3,
        normalize_values=True,
        gated_delta=True,
        dgd_layers="first",
        momentum=False,
    ),
    # w/o DGD, w/o weight decay, adaptive q; chunk sizes that do not divide each other
    "gd_nodecay_adaptiveq": SelfModConfig(
        aux_chunk_size=3,
        chunk_size=8,
        eta_max=0.05,
        dgd=False,
        weight_decay=False,
        adaptive_q=True,
    ),
    # A-Table 6 'w/o adaptive k' and 'w/o adaptive v': static streams, no M_k / M_v; equal chunk sizes (one joint scan)
    "static_kv_joint": SelfModConfig(aux_chunk_size=4, chunk_size=4, eta_max=0.3, adaptive_k=False, adaptive_v=False),
    # 'w/o adaptive k' with adaptive q and unequal chunk sizes (two scans)
    "static_k_adaptiveq": SelfModConfig(aux_chunk_size=4, chunk_size=8, eta_max=0.3, adaptive_k=False, adaptive_q=True),
}


def make_inputs(cfg, seed=0, dtype=np.float32, length=T):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: (rng.normal(size=shape) * scale).astype(dtype)
    initial = {
        name: {"w_in": normal(H, D, HIDDEN, scale=0.2), "w_out": normal(H, HIDDEN, D, scale=0.2)}
        for name in updated_names(cfg)
    }
    state = init_self_modifying_state(initial, B, cfg)
    # per-sequence perturbation so that batch elements start from different fast weights
    state = jax.tree.map(lambda a: a + normal(*a.shape, scale=0.02), state)
    reduction = {
        "eta_w": normal(H, D, scale=0.3),
        "eta_b": normal(H),
        "alpha_w": normal(H, D, scale=0.3),
        "alpha_b": np.full((H,), 3.0, dtype),
    }
    x = normal(B, H, length, D, scale=0.5)
    q = None if cfg.adaptive_q else normal(B, H, length, D)
    return x, q, state, reduction


def static_kv(cfg, seed=0, length=T):
    """The static k / v streams of the switches that are off (keyword arguments of self_modifying_titans)."""
    rng = np.random.default_rng(seed + 100)
    names = [name for name, on in (("k", cfg.adaptive_k), ("v", cfg.adaptive_v)) if not on]
    return {name: rng.normal(size=(B, H, length, D)).astype(np.float32) * 0.5 for name in names}


chunked = jax.jit(self_modifying_titans, static_argnums=4)
per_token = jax.jit(self_modifying_reference, static_argnums=4)


@functools.cache
def default_run():
    cfg = CONFIGS["default"]
    inputs = make_inputs(cfg)
    return inputs, chunked(*inputs, cfg)


@pytest.mark.parametrize("name", list(CONFIGS))
def test_chunked_matches_per_token_reference(name):
    cfg = CONFIGS[name]
    inputs = make_inputs(cfg)
    static = static_kv(cfg)
    y, state, keys, values = default_run()[1] if name == "default" else chunked(*inputs, cfg, **static)
    y_ref, state_ref, keys_ref, values_ref = per_token(*inputs, cfg, **static)
    assert np.abs(y_ref).max() < 20.0  # bounded dynamics: a tight tolerance means something
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(keys, keys_ref, **TOL)
    np.testing.assert_allclose(values, values_ref, **TOL)
    assert set(state) == ({"weights", "momentum"} if cfg.momentum else {"weights"})
    for got, want in zip(jax.tree.leaves(state), jax.tree.leaves(state_ref)):
        np.testing.assert_allclose(got, want, **TOL)
    # every memory really moved
    for name_, w in state["weights"].items():
        assert np.abs(w["w_in"] - inputs[2]["weights"][name_]["w_in"]).max() > 1e-4, name_


def test_causality_and_chunk_start_reads():
    """Perturbing x_t and q_t: outputs before t are unchanged, and so is every other output of t's memory chunk
    (reads at the chunk-start state); keys and values change only at t inside t's generator chunk."""
    cfg = CONFIGS["default"]  # generators chunk 4, memory chunk 16
    (x, q, state, reduction), (y, _, keys, values) = default_run()
    t0 = 5
    x2, q2 = np.array(x), np.array(q)
    x2[:, :, t0] += 0.3
    q2[:, :, t0] += 0.3
    y2, _, keys2, values2 = chunked(x2, q2, state, reduction, cfg)
    unchanged_y = [t for t in range(16) if t != t0]
    np.testing.assert_array_equal(y2[:, :, unchanged_y], y[:, :, unchanged_y])
    assert np.abs(y2[:, :, t0] - y[:, :, t0]).max() > 1e-3
    assert np.abs(y2[:, :, 16:] - y[:, :, 16:]).max() > 1e-5
    unchanged_kv = [t for t in range(8) if t != t0]
    for new, old in ((keys2, keys), (values2, values)):
        np.testing.assert_array_equal(new[:, :, unchanged_kv], old[:, :, unchanged_kv])
        assert np.abs(new[:, :, 8:] - old[:, :, 8:]).max() > 1e-5


def test_per_sample_isolation():
    cfg = CONFIGS["default"]
    (x, q, state, reduction), base = default_run()
    x_other, q_other, state_other, _ = make_inputs(cfg, seed=7)
    mix = lambda a, o: np.concatenate([np.asarray(a)[:1], np.asarray(o)[1:]], axis=0)
    moved = chunked(mix(x, x_other), mix(q, q_other), jax.tree.map(mix, state, state_other), reduction, cfg)
    for a, b in zip(jax.tree.leaves(base), jax.tree.leaves(moved)):
        np.testing.assert_array_equal(a[:1], b[:1])
        assert np.abs(a[1:] - b[1:]).max() > 1e-5


def test_outer_gradient_matches_finite_differences():
    """Directional derivative of an outer loss in (x, q, initial states, A3 reduction): autodiff vs central FD, float64."""
    cfg = SelfModConfig(aux_chunk_size=4, chunk_size=8, eta_max=0.3, remat_group=2, accum_dtype="float64")
    with jax.enable_x64(True):
        # 16 tokens: whole groups of whole chunks in both scans, so the backward program stays small to compile
        x, q, state, reduction = make_inputs(cfg, seed=3, dtype=np.float64, length=16)
        params = {"x": x, "q": q, "state": state, "reduction": reduction}

        def loss(p):
            y, new_state, keys, values = self_modifying_titans(p["x"], p["q"], p["state"], p["reduction"], cfg)
            return (
                jnp.sum(jnp.sin(y))
                + jnp.sum(keys * values)
                + jnp.sum(new_state["weights"]["k"]["w_out"] ** 2)
                + jnp.sum(new_state["momentum"]["memory"]["w_in"])
            )

        assert_gradient_matches_finite_differences(loss, params)


def test_bad_arguments_raise_clear_errors():
    cfg = CONFIGS["default"]
    x, q, state, reduction = make_inputs(cfg)
    with pytest.raises(ValueError, match="adaptive_q=False needs a static q"):
        self_modifying_titans(x, None, state, reduction, cfg)
    with pytest.raises(ValueError, match="adaptive_k=True generates k from M_k: pass k=None"):
        self_modifying_titans(x, q, state, reduction, cfg, k=x)
    static_k = SelfModConfig(adaptive_k=False)
    with pytest.raises(ValueError, match="adaptive_k=False needs a static k"):
        self_modifying_titans(x, q, state, reduction, static_k)
    with pytest.raises(ValueError, match="config needs"):
        self_modifying_titans(x, None, state, reduction, SelfModConfig(adaptive_q=True))
    with pytest.raises(ValueError, match="dgd_layers"):
        SelfModConfig(dgd_layers="second")
    with pytest.raises(ValueError, match="chunk sizes must be positive"):
        SelfModConfig(chunk_size=0)


@pytest.mark.parametrize("normalized_step", [True, False], ids=["normalized_step", "per_token_step"])
def test_without_dgd_only_the_transition_term_goes(normalized_step):
    """A-Table 6's 'w/o DGD' changes DGD alone: on one token, DGD − GD = −η' x̂ᵀ(x̂ W_0), so both take the same
    gradient step (η' also without DGD; a step of η would be 1.5× larger at η = 0.5)."""
    rng = np.random.default_rng(3)
    w0 = {"w": jnp.asarray(rng.normal(size=(4, 3)), jnp.float32)}
    key, target = (jnp.asarray(rng.normal(size=(1, n)), jnp.float32) for n in (4, 3))
    lr = jnp.full((1,), 0.5, jnp.float32)

    def update(dgd):
        rule = DGDRule(residual=False, dgd=dgd, normalized_step=normalized_step)
        return dgd_chunk_update(w0, None, key, target, lr, jnp.ones((1,)), rule)[0]["w"]

    x_hat = key / jnp.linalg.norm(key)
    eta_prime = 0.5 / (1 + 0.5)
    np.testing.assert_allclose(update(True) - update(False), -eta_prime * x_hat.T @ (x_hat @ w0["w"]), **TOL)
