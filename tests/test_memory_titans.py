"""Titans memory: chunk-parallel path against the per-token reference, closed forms, causality, gradients."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hope_jax.memory import fast_mlp
from hope_jax.memory.recurrence import chunk_coefficients, chunk_end_state
from hope_jax.memory.titans import titans_memory, titans_reference
from tests.gradcheck import assert_gradient_matches_finite_differences

B, H, T, D, HIDDEN = 2, 2, 20, 8, 12
TOL = dict(rtol=1e-5, atol=1e-5)


def make_inputs(seed=0, dtype=np.float32):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: (rng.normal(size=shape) * scale).astype(dtype)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    sigmoid = lambda a: 1.0 / (1.0 + np.exp(-a))
    return dict(
        linear={"w": normal(B, H, D, D, scale=0.3)},
        mlp={"w_in": normal(B, H, D, HIDDEN, scale=0.3), "w_out": normal(B, H, HIDDEN, D, scale=0.3)},
        q=unit(normal(B, H, T, D)),
        k=unit(normal(B, H, T, D)),
        v=normal(B, H, T, D),
        theta=(0.4 * sigmoid(normal(B, H, T))).astype(dtype),
        eta=sigmoid(normal(B, H, T) + 1.0).astype(dtype),
        alpha=sigmoid(normal(B, H, T) - 3.0).astype(dtype),
    )


def gates(inp):
    return inp["q"], inp["k"], inp["v"], inp["theta"], inp["eta"], inp["alpha"]


@functools.partial(jax.jit, static_argnames=("chunk_size", "remat_group", "normalized_step"))
def chunked_both(inp, chunk_size, remat_group=1, normalized_step=True):
    """Linear and 2-layer memories, momentum on, in one compiled program."""
    return {
        kind: titans_memory(
            inp[kind], *gates(inp), chunk_size=chunk_size, remat_group=remat_group, normalized_step=normalized_step
        )
        for kind in ("linear", "mlp")
    }


@jax.jit
def reference_both(inp, chunk_size):
    # chunk_size is traced here: the reference only uses it in `t % chunk_size`, so one compilation serves all.
    return {kind: titans_reference(inp[kind], *gates(inp), chunk_size=chunk_size) for kind in ("linear", "mlp")}


@pytest.fixture(scope="module")
def inputs():
    return make_inputs()


@pytest.mark.parametrize("chunk_size,remat_group", [(1, 1), (4, 2), (16, 1)])
def test_chunked_matches_per_token_reference(inputs, chunk_size, remat_group):
    # T = 20: a multiple of 1 and 4, not of 16 (the trailing 4 tokens form a chunk of their own);
    # remat_group=2 over 5 chunks exercises both a checkpointed group scan and a loose group.
    fast = chunked_both(inputs, chunk_size, remat_group)
    slow = reference_both(inputs, chunk_size)
    for kind in ("linear", "mlp"):
        y, w, s = fast[kind]
        y_ref, w_ref, s_ref = slow[kind]
        assert np.abs(y_ref).max() < 20.0  # the check is meaningful only while the dynamics stay bounded
        np.testing.assert_allclose(y, y_ref, **TOL)
        for name in w:
            np.testing.assert_allclose(w[name], w_ref[name], **TOL)
            np.testing.assert_allclose(s[name], s_ref[name], **TOL)


@pytest.mark.parametrize("normalized_step", [False, True], ids=["E5", "longhorn_step"])
def test_chunk_size_one_is_the_exact_token_recurrence(inputs, normalized_step):
    """E5–E6 token by token, written out in numpy (gradient at M_{t−1}), for the linear memory; with the normalised
    step, θ_t / (1 + θ_t‖k_t‖²) (Longhorn's δ, the chunk step at C = 1) in place of θ_t."""
    y, w_end, _ = chunked_both(inputs, 1, normalized_step=normalized_step)["linear"]
    for b, h in [(0, 0), (1, 1)]:
        w = inputs["linear"]["w"][b, h].astype(np.float64)
        s = np.zeros_like(w)
        q, k, v, theta, eta, alpha = (a[b, h].astype(np.float64) for a in gates(inputs))
        for t in range(T):
            grad = np.outer(k[t], k[t] @ w - v[t])
            step = theta[t] / (1.0 + theta[t] * k[t] @ k[t]) if normalized_step else theta[t]
            s = eta[t] * s - step * grad
            w = (1.0 - alpha[t]) * w + s
            np.testing.assert_allclose(y[b, h, t], q[t] @ w, **TOL)
        np.testing.assert_allclose(w_end["w"][b, h], w, **TOL)


def test_linear_memory_without_momentum_is_the_gated_delta_rule(inputs):
    """With η = 0 and chunk 1: M_t = ((1−α_t) I − θ_t k_t k_tᵀ) M_{t−1} + θ_t k_t v_tᵀ (row convention), y_t = q_t M_t."""
    run = jax.jit(
        lambda inp: titans_memory(inp["linear"], *gates(inp), chunk_size=1, momentum=False, normalized_step=False)
    )
    y, w_end, s_end = run(inputs)
    assert s_end is None
    q, k, v, theta, _, alpha = (a.astype(np.float64) for a in gates(inputs))
    for b in range(B):
        for h in range(H):
            m = inputs["linear"]["w"][b, h].astype(np.float64)
            for t in range(T):
                kt = k[b, h, t]
                m = ((1.0 - alpha[b, h, t]) * np.eye(D) - theta[b, h, t] * np.outer(kt, kt)) @ m + theta[
                    b, h, t
                ] * np.outer(kt, v[b, h, t])
                np.testing.assert_allclose(y[b, h, t], q[b, h, t] @ m, **TOL)
            np.testing.assert_allclose(w_end["w"][b, h], m, **TOL)


@pytest.mark.parametrize(
    "weights,residual",
    [
        ({"w": (5, 3)}, False),
        ({"w_in": (5, 7), "w_out": (7, 5)}, True),
        ({"w_in": (5, 7), "w_out": (7, 4)}, False),
        ({"w_gate": (5, 7), "w_up": (5, 7), "w_down": (7, 4)}, False),
    ],
    ids=["linear", "mlp_residual", "mlp", "swiglu"],
)
def test_closed_form_inner_gradients_match_autodiff(weights, residual):
    rng = np.random.default_rng(1)
    weights = {name: jnp.asarray(rng.normal(size=shape), jnp.float32) for name, shape in weights.items()}
    d_in = next(iter(weights.values())).shape[0]
    d_out = fast_mlp.forward(weights, jnp.zeros((1, d_in)), residual=residual).shape[-1]
    keys = jnp.asarray(rng.normal(size=(6, d_in)), jnp.float32)
    targets = jnp.asarray(rng.normal(size=(6, d_out)), jnp.float32)
    factors = fast_mlp.grad_factors(weights, keys, targets, residual=residual, activation="gelu")
    for t in range(keys.shape[0]):
        auto = jax.grad(fast_mlp.inner_loss)(weights, keys[t], targets[t], residual=residual, activation="gelu")
        for name, (x, g) in factors.items():
            np.testing.assert_allclose(np.outer(x[t], g[t]), auto[name], **TOL)


@pytest.mark.parametrize("momentum", [False, True])
def test_appendix_b_chunk_end_state_matches_token_loop(momentum):
    """The triangular-solve chunk-end state (DGD transition + decay + optional momentum) against the loop."""
    rng = np.random.default_rng(2)
    c, d_in, d_out = 16, 6, 5
    x = rng.normal(size=(c, d_in))
    x /= np.linalg.norm(x, axis=-1, keepdims=True)
    step = rng.normal(size=(c, d_out)) * 0.3
    retain = 1.0 / (1.0 + np.exp(-rng.normal(size=c) - 3.0))
    beta = rng.uniform(0.1, 0.9, size=c)
    eps = rng.uniform(0.5, 0.95, size=c)
    w0, s0 = rng.normal(size=(d_in, d_out)), rng.normal(size=(d_in, d_out))
    f32 = lambda a: jnp.asarray(a, jnp.float32)
    coeffs = chunk_coefficients(f32(np.log(retain)), f32(np.log(eps)) if momentum else None)
    w_end, s_end = chunk_end_state(f32(w0), f32(s0) if momentum else None, f32(x), f32(step), coeffs, f32(beta))
    w, s = w0.copy(), s0.copy()
    for t in range(c):
        transition = retain[t] * np.eye(d_in) - beta[t] * np.outer(x[t], x[t])
        if momentum:
            s = eps[t] * s + np.outer(x[t], step[t])
            w = transition @ w + s
        else:
            w = transition @ w + np.outer(x[t], step[t])
    np.testing.assert_allclose(w_end, w, **TOL)
    if momentum:
        np.testing.assert_allclose(s_end, s, **TOL)
    else:
        assert s_end is None


def test_causality(inputs):
    """Perturbing token t (its q, k, v and gates) changes no output before t."""
    t0 = 9
    base = chunked_both(inputs, 4)
    perturbed = dict(inputs)
    for name in ("q", "k", "v", "theta", "eta", "alpha"):
        arr = np.array(inputs[name])
        arr[:, :, t0] = arr[:, :, t0] * 0.5 + 0.1
        perturbed[name] = arr
    moved = chunked_both(perturbed, 4)
    for kind in ("linear", "mlp"):
        np.testing.assert_array_equal(moved[kind][0][:, :, :t0], base[kind][0][:, :, :t0])
        assert np.abs(moved[kind][0][:, :, t0:] - base[kind][0][:, :, t0:]).max() > 1e-3


def test_per_sample_isolation(inputs):
    """Element 0's outputs and end state do not depend on what else is in the batch."""
    other = make_inputs(seed=5)
    mixed = jax.tree.map(lambda a, o: np.concatenate([a[:1], o[1:]], axis=0), inputs, other)
    base, moved = chunked_both(inputs, 4), chunked_both(mixed, 4)
    for kind in ("linear", "mlp"):
        for a, b in zip(jax.tree.leaves(base[kind]), jax.tree.leaves(moved[kind])):
            np.testing.assert_array_equal(a[:1], b[:1])
            assert np.abs(a[1:] - b[1:]).max() > 1e-3


def test_outer_gradient_matches_finite_differences():
    """d/dε of an outer loss along a random direction in (M0, k, v, θ): autodiff vs central differences, float64."""
    with jax.enable_x64(True):
        inp = make_inputs(seed=3, dtype=np.float64)
        q, k, v, theta, eta, alpha = gates(inp)

        def loss(params):
            y, w_end, s_end = titans_memory(
                params["mlp"],
                q,
                params["k"],
                params["v"],
                params["theta"],
                eta,
                alpha,
                chunk_size=4,
                remat_group=2,
                accum_dtype=jnp.float64,
            )
            return jnp.sum(jnp.sin(y)) + jnp.sum(w_end["w_out"] ** 2) + jnp.sum(s_end["w_in"])

        params = {"mlp": inp["mlp"], "k": k, "v": v, "theta": theta}
        assert_gradient_matches_finite_differences(loss, params)


def test_log_gates_are_the_same_maths(inputs):
    """log_eta = log η, log_keep = log(1 − α) in place of eta / alpha: the same outputs and end state."""
    q, k, v, theta, eta, alpha = gates(inputs)
    by_prob = titans_memory(inputs["linear"], q, k, v, theta, eta, alpha, chunk_size=4)
    by_log = titans_memory(
        inputs["linear"], q, k, v, theta, None, None, log_eta=np.log(eta), log_keep=np.log1p(-alpha), chunk_size=4
    )
    for a, b in zip(jax.tree.leaves(by_prob), jax.tree.leaves(by_log)):
        np.testing.assert_allclose(a, b, rtol=1e-6, atol=1e-6)
    half = titans_memory(inputs["linear"], q.astype(jnp.bfloat16), k, v, theta, eta, alpha, chunk_size=4)
    assert half[0].dtype == jnp.bfloat16 and half[1]["w"].dtype == jnp.float32  # y in q's dtype, state in accum


def test_outer_gradient_is_finite_when_the_gates_saturate():
    """The model's gates (models.titans.Gates → memory_call) with logits at ±300: θ and η at 0 / 1, α at 0 / 1.

    σ(300) = 1 in float32, so log(1 − α) and log η taken of the sigmoids are −inf and the backward is NaN;
    log_sigmoid(∓z) keeps value and gradient finite.
    """
    from flax import nnx

    from hope_jax.models import titans as titans_model
    from hope_jax.models.config import default_model_config
    from hope_jax.models.typed_config import ModelConfig

    cfg = default_model_config()
    cfg.d_model, cfg.n_heads = 8, 2
    cfg.titans.chunk_size = 4
    typed = ModelConfig.from_config(cfg)
    layer = titans_model.Gates(typed, rngs=nnx.Rngs(0))
    graphdef, params = nnx.split(layer)
    rng = np.random.default_rng(0)
    unit = lambda a: a / np.linalg.norm(a, axis=-1, keepdims=True)
    batch, length, hd = 1, 8, typed.head_dim
    x = rng.normal(size=(batch, length, cfg.d_model)).astype(np.float32)
    q, k, v = (unit(rng.normal(size=(batch, length, typed.n_heads, hd))).astype(np.float32) for _ in range(3))
    w = {name: (0.3 * rng.normal(size=(batch, typed.n_heads, hd, hd))).astype(np.float32) for name in ("w_in", "w_out")}

    @jax.jit
    def loss_and_grads(params, fast, q, k, v, x):
        def loss(params, fast, q, k, v, x):
            tokens = {"q": q, "k": k, "v": v, **nnx.merge(graphdef, params)(x)}
            end, y = titans_model.memory_call(fast, tokens, typed)
            return jnp.sum(jnp.sin(y)) + sum(jnp.sum(a**2) for a in jax.tree.leaves(end))

        return jax.value_and_grad(loss, argnums=(0, 1, 2, 3, 4, 5))(params, fast, q, k, v, x)

    fast = {"w": w, "s": jax.tree.map(np.zeros_like, w)}
    for logits in [(300.0, 300.0, 300.0), (-300.0, -300.0, -300.0), (300.0, -300.0, 300.0), (-300.0, 300.0, -300.0)]:
        params["bias"] = nnx.Param(jnp.broadcast_to(jnp.asarray(logits)[:, None], (3, typed.n_heads)))
        value, grads = loss_and_grads(params, fast, q, k, v, x)
        assert np.isfinite(value), logits
        for path, g in jax.tree_util.tree_leaves_with_path(grads):
            assert np.all(np.isfinite(g)), (logits, jax.tree_util.keystr(path))


@pytest.mark.parametrize("memory_depth", [1, 2])
def test_model_layer_runs_the_per_token_reference(inputs, memory_depth):
    """What the Titans models run (models/titans.memory_call: memory/titans.titans_chunk under driver.run_chunked, fed
    in pieces that end inside chunks, gates in log space) is the per-token reference on the whole sequence."""
    from hope_jax.memory import driver
    from hope_jax.models import titans as titans_model
    from hope_jax.models.config import default_model_config
    from hope_jax.models.typed_config import ModelConfig

    cfg = default_model_config()
    cfg.d_model, cfg.n_heads = H * D, H
    cfg.titans.chunk_size, cfg.titans.memory_depth = 4, memory_depth
    typed = ModelConfig.from_config(cfg)
    weights = inputs["linear"] if memory_depth == 1 else inputs["mlp"]
    y_ref, w_ref, s_ref = titans_reference(weights, *gates(inputs), chunk_size=4, residual=memory_depth == 2)
    time_major = lambda a: jnp.swapaxes(a, 1, 2)  # [B, H, T, ...] -> [B, T, H, ...]
    tokens = {
        "q": inputs["q"], "k": inputs["k"], "v": inputs["v"], "theta": inputs["theta"],
        "log_eta": np.log(inputs["eta"]), "log_keep": np.log1p(-inputs["alpha"]),
    }  # fmt: skip
    tokens = {name: time_major(jnp.asarray(a)) for name, a in tokens.items()}
    step = lambda fast, chunk: titans_model.memory_call(fast, chunk, typed)
    fast = {"w": weights, "s": jax.tree.map(jnp.zeros_like, weights)}
    carry = driver.init_carry(fast, driver.token_shapes_of(tokens), 4, B)
    pieces = []
    for start, stop in ((0, 7), (7, 8), (8, 18), (18, T)):
        piece = {name: a[:, start:stop] for name, a in tokens.items()}
        y, carry = driver.run_chunked(step, piece, 4, fast=None, carry=carry)
        pieces.append(y)
    np.testing.assert_allclose(time_major(jnp.concatenate(pieces, axis=1)), y_ref, **TOL)
    # T = 20 ends on a chunk boundary: the carried state is the reference's end state
    assert int(carry["count"]) == 0
    for got, want in ((carry["fast"]["w"], w_ref), (carry["fast"]["s"], s_ref)):
        for a, b in zip(jax.tree.leaves(got), jax.tree.leaves(want), strict=True):
            np.testing.assert_allclose(a, b, **TOL)
