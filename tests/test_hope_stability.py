"""HOPE's inner loop stays finite where the smoke run used to diverge (notes: /work/helpers/notes_hope_stability.md).

Two causes were measured in the smoke HOPE: (1) an M_α whose fast weights had grown gave a retention logit of −302, so
log(sigmoid(z)) = log(0) = −inf and the decay products' gradient was NaN; (2) that growth itself: self-generated
targets v̂ = M(v) with values longer than the unit keys make every memory's inner map expansive. The fixes are log-space
gates (log_sigmoid) and ℓ2-normalised values (`memory.normalize_values`).
"""

import dataclasses

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hope_jax  # noqa: F401
from hope_jax.memory.self_modifying import SelfModConfig, self_modifying_sequence
from hope_jax.models import apply_overrides, build_model, default_model_config

GENS = ("k", "v", "eta", "alpha")


def _memories(rng, n, dim, in_scale, out_scale):
    return {
        "w_in": jnp.asarray(rng.normal(size=(n, dim, dim)) * in_scale, jnp.float32),
        "w_out": jnp.asarray(rng.normal(size=(n, dim, dim)) * out_scale, jnp.float32),
    }


def test_gradient_is_finite_when_the_retention_gate_underflows():
    """α = sigmoid(−300) is 0 in float32: the old log(α) = −inf made every outer gradient NaN (HOPE mixer path)."""
    length, dim = 8, 4
    cfg = SelfModConfig(chunk_size=4, aux_chunk_size=4, eta_max=0.3, remat_group=0)
    rng = np.random.default_rng(0)
    weights = _memories(rng, len(GENS) + 1, dim, 0.3, 0.3)
    fast = {"gen": jax.tree.map(lambda a: a[:-1], weights), "memory": jax.tree.map(lambda a: a[-1:], weights)}
    fast.update(gen_s=jax.tree.map(jnp.zeros_like, fast["gen"]), memory_s=jax.tree.map(jnp.zeros_like, fast["memory"]))
    streams = {name: jnp.asarray(rng.normal(size=(length, dim)), jnp.float32) for name in ("x", "q")}
    reduction = {"eta_w": jnp.zeros(dim), "eta_b": jnp.zeros(()), "alpha_w": jnp.zeros(dim)}

    def loss(streams, fast, reduction, alpha_b):
        (y, _, _), end = self_modifying_sequence(streams, fast, {**reduction, "alpha_b": alpha_b}, cfg)
        return jnp.sum(y**2) + sum(jnp.sum(a**2) for a in jax.tree.leaves(end))

    # α = 0 (forget everything) and α = 1 − 1e-13 (keep everything), the two ends of the gate
    grads = jax.jit(jax.vmap(jax.grad(loss, argnums=(0, 1, 2, 3)), in_axes=(None, None, None, 0)))(
        streams, fast, reduction, jnp.array([-300.0, 30.0])
    )
    for leaf in jax.tree.leaves(grads):
        assert np.isfinite(np.asarray(leaf)).all()
    # at α = 0 the carried weights are wiped at every token, so nothing depends on the gate's exact value
    assert np.abs(np.asarray(grads[3][0])) < 1e-6


@pytest.fixture(scope="module")
def long_run():
    """One head of the HOPE mixer at η_max = 1 (the default) over 256 tokens of inputs with ‖x‖ ≈ 3."""
    dim, length = 16, 256
    rng = np.random.default_rng(1)
    x = jax.nn.silu(jnp.asarray(rng.normal(size=(length, dim)), jnp.float32))
    q = jax.nn.silu(jnp.asarray(rng.normal(size=(length, dim)), jnp.float32))
    weights = _memories(rng, len(GENS) + 1, dim, dim**-0.5, 0.02)
    fast = {
        "gen": jax.tree.map(lambda a: a[: len(GENS)], weights),
        "memory": jax.tree.map(lambda a: a[len(GENS) :], weights),
    }
    fast.update(gen_s=jax.tree.map(jnp.zeros_like, fast["gen"]), memory_s=jax.tree.map(jnp.zeros_like, fast["memory"]))
    reduction = {
        "eta_w": jnp.asarray(rng.normal(size=dim) * 0.02, jnp.float32),
        "eta_b": jnp.zeros(()),
        "alpha_w": jnp.asarray(rng.normal(size=dim) * 0.02, jnp.float32),
        "alpha_b": jnp.full((), 5.0),
    }
    base = SelfModConfig(chunk_size=16, aux_chunk_size=16, eta_max=1.0, remat_group=0)

    @jax.jit
    def run(normalized_fast, literal_fast):
        out = {}
        for name, cfg, start in (("normalized", dataclasses.replace(base, normalize_values=True), normalized_fast),
                                 ("literal", base, literal_fast)):  # fmt: skip
            _, end = self_modifying_sequence({"x": x, "q": q}, start, reduction, cfg)
            out[name] = jnp.max(jnp.abs(jnp.stack([jnp.max(jnp.abs(a)) for a in jax.tree.leaves(end)])))
        return out

    initial = max(float(jnp.max(jnp.abs(a))) for a in jax.tree.leaves(weights))
    return {name: float(value) for name, value in run(fast, fast).items()}, initial


def test_normalized_values_keep_the_fast_weights_bounded(long_run):
    largest, initial = long_run
    assert np.isfinite(largest["normalized"]) and largest["normalized"] <= 2.0 * initial


def test_literal_values_blow_up_at_the_default_step(long_run):
    """The cause, kept visible: without the normalisation the same run diverges (inf/NaN or huge weights)."""
    largest, initial = long_run
    assert not np.isfinite(largest["literal"]) or largest["literal"] > 100.0 * initial


def test_tiny_hope_trains_finite_at_default_inner_rates_and_a_high_learning_rate():
    """A tiny HOPE with the default memory / CMS inner rates (η_max = 1, CMS inner lr 0.1), Adam at lr 1e-2, 30 steps
    on a repeating token pattern: every loss and gradient finite and the loss falls."""
    cfg = apply_overrides(
        default_model_config(),
        dict(
            name="hope", vocab_size=16, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64,
            memory={"chunk_size": 8, "aux_chunk_size": 8},
            cms={"periods": (8, 0), "objectives": ("local", "frozen"), "hidden": (32, 32)},
        ),
    )  # fmt: skip
    model = build_model(cfg, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(model, nnx.Param)
    tx = optax.adam(1e-2)
    opt_state = tx.init(params)
    pattern = jnp.asarray(np.random.default_rng(2).integers(0, 16, size=(4, 9)), jnp.int32)
    tokens = jnp.tile(pattern, (1, 6))[:, :49]  # [4, 49]: period-9 sequences

    def loss_fn(p):
        logits, _ = nnx.merge(graphdef, p)(tokens[:, :-1])
        return optax.softmax_cross_entropy_with_integer_labels(logits, tokens[:, 1:]).mean()

    @jax.jit
    def step(p, s):
        loss, g = jax.value_and_grad(loss_fn)(p)
        updates, s = tx.update(g, s, p)
        return optax.apply_updates(p, updates), s, loss, optax.tree.norm(g)

    losses = []
    for i in range(30):
        params, opt_state, loss, grad_norm = step(params, opt_state)
        assert np.isfinite(float(loss)) and np.isfinite(float(grad_norm)), f"step {i}: loss {loss}, grad {grad_norm}"
        losses.append(float(loss))
    assert losses[-1] < 0.5 * losses[0], losses
