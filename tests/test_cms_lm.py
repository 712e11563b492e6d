"""CMS `lm` objective (models/lm_ttt.py) and the inner-loop diagnostics of Titans / CMS levels.

The generic model properties of an lm model (causality, isolation, pieces == whole at and off chunk boundaries,
generation) run in tests/test_models.py on the 'hope_attention-lm' variant (lm levels of periods 4 and 8).
"""

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

import hope_jax  # noqa: F401  (switches off eager sharding)
from hope_jax.models import apply_overrides, build_model, default_model_config, functional
from hope_jax.models.stack import BlockStackLM
from hope_jax.train.state import TrainState, init_params, model_spec
from hope_jax.train.step import make_train_step, model_loss_sums

BASE = dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16)
TOKENS = jax.random.randint(jax.random.key(1), (2, 8), 0, 64, jnp.int32)


def make_cfg(**overrides):
    return apply_overrides(default_model_config(), {**BASE, **overrides})


def plain_forward(graphdef, params, tokens, inner):
    """The model without test-time training: one stateful pass with every lm level's weights held constant."""
    return BlockStackLM.__call__(nnx.merge(graphdef, params), tokens, inner)


def in_chunk_nll_sum(logits, tokens):
    log_probs = jax.nn.log_softmax(logits[:, :-1].astype(jnp.float32), axis=-1)
    return -jnp.sum(jnp.take_along_axis(log_probs, tokens[:, 1:, None], axis=-1))


def with_lm_weights(inner, weights_by_level):
    """A copy of a one-layer state with CMS level i's lm weights replaced by weights_by_level[i]."""
    cms = list(inner["layers"][0]["cms"])
    for i, weights in weights_by_level.items():
        cms[i] = {**cms[i], "lm_fast": weights}
    return {**inner, "layers": [{**inner["layers"][0], "cms": cms}]}


def test_inner_step_is_sgd_on_the_chunk_loss_with_two_periods():
    """Levels of periods 4 and 8 (lrs 0.5, 0.3, decay 0.1) over 8 tokens, rebuilt by hand with jax.grad: level 0
    steps after tokens 4 and 8 on its chunk's mean in-chunk NLL at its chunk-start weights; level 1 steps once,
    after token 8, on the sum of both sub-chunks' gradients at its initial weights over 2·3 predictions."""
    cfg = make_cfg(
        name="hope_attention",
        init_std=0.2,
        cms={"periods": (4, 8, 0), "objectives": ("lm", "lm", "frozen"), "hidden": (16, 16, 16),
             "lm_lrs": (0.5, 0.3, 0.0), "inner_decay": 0.1},
    )  # fmt: skip
    model = build_model(cfg, rngs=nnx.Rngs(0))
    apply, graphdef, params = functional(model)
    logits, state = jax.jit(apply)(params, TOKENS)

    @jax.jit
    def chunk_grads(weights, inner, chunk):
        def loss(weights):
            logits, new_inner = plain_forward(graphdef, params, chunk, with_lm_weights(inner, weights))
            return in_chunk_nll_sum(logits, chunk), (logits, new_inner)

        return jax.grad(loss, has_aux=True)(weights)

    inner0 = model.init_state(2)["inner"]
    initial = {i: inner0["layers"][0]["cms"][i]["lm_fast"] for i in (0, 1)}
    sgd = lambda w, g, lr, n: jax.tree.map(lambda w, g: (1 - lr * 0.1) * w - lr * g / n, w, g)
    grads_a, (logits_a, inner1) = chunk_grads(initial, inner0, TOKENS[:, :4])
    after_a = {0: sgd(initial[0], grads_a[0], 0.5, 3), 1: initial[1]}
    grads_b, (logits_b, _) = chunk_grads(after_a, with_lm_weights(inner1, after_a), TOKENS[:, 4:])
    expected = {
        0: sgd(after_a[0], grads_b[0], 0.5, 3),
        1: sgd(initial[1], jax.tree.map(jnp.add, grads_a[1], grads_b[1]), 0.3, 6),
    }
    got = {i: state["inner"]["layers"][0]["cms"][i] for i in (0, 1)}
    for i in (0, 1):
        assert not np.allclose(got[i]["lm_fast"]["w_down"], initial[i]["w_down"], atol=1e-4), "level must move"
        jax.tree.map(
            lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-6), got[i]["lm_fast"], expected[i]
        )
        jax.tree.map(lambda a: np.testing.assert_array_equal(a, 0.0), got[i]["lm_grad"])  # both just stepped
    np.testing.assert_allclose(logits, jnp.concatenate([logits_a, logits_b], axis=1), rtol=1e-5, atol=1e-5)
    assert int(state["count"]) == 0 and int(state["position"]) == 8


def test_zero_lr_equals_the_frozen_plain_mlp():
    """An lm level at lr 0 (next to a local level) == the same parameters with that level a plain MLP ('frozen'),
    although the lm model runs chunk by chunk through every layer's carried-state path; its weights stay
    bit-identical."""
    cms = {"periods": (4, 8, 0), "hidden": (16, 16, 16), "inner_lr": 0.0}
    lm_cfg = make_cfg(name="hope_attention", cms={**cms, "objectives": ("local", "lm", "frozen")})
    frozen_cfg = make_cfg(name="hope_attention", cms={**cms, "objectives": ("local", "frozen", "frozen"),
                                                      "periods": (4, 0, 0)})  # fmt: skip
    lm_model = build_model(lm_cfg, rngs=nnx.Rngs(0))
    frozen_model = build_model(frozen_cfg, rngs=nnx.Rngs(0))
    tokens = jax.random.randint(jax.random.key(2), (2, 12), 0, 64, jnp.int32)
    lm_logits, lm_state = nnx.jit(lambda m, t: m(t))(lm_model, tokens)
    frozen_logits, _ = nnx.jit(lambda m, t: m(t))(frozen_model, tokens)
    np.testing.assert_allclose(lm_logits, frozen_logits, rtol=0, atol=1e-6)
    initial = lm_model.blocks[0].channel.cms.levels[1].weights()
    final = lm_state["inner"]["layers"][0]["cms"][1]["lm_fast"]
    for name, weights in initial.items():
        np.testing.assert_array_equal(final[name], np.broadcast_to(weights[...], final[name].shape))


def test_second_order_gradient_matches_finite_differences_first_order_differs():
    """Outer gradient of the LM loss over two chunks, along a random direction in all parameters: the second-order
    (lm_second_order) gradient equals central differences; the first-order one (stop-gradient on the inner gradient,
    the default) differs from both, by much more than the tolerance. float32: h = 1e-3 leaves ~0.3% error."""

    def setup(second_order):
        cfg = make_cfg(
            name="hope_attention", init_std=0.2,
            cms={"periods": (4, 0), "objectives": ("lm", "frozen"), "hidden": (16, 16), "inner_lr": 1.0,
                 "lm_second_order": second_order},
        )  # fmt: skip
        graphdef, params = nnx.split(build_model(cfg, rngs=nnx.Rngs(0)), nnx.Param)
        params = nnx.to_pure_dict(params)

        def loss(p):
            logits, _ = nnx.merge(graphdef, p)(TOKENS)
            log_probs = jax.nn.log_softmax(logits[:, :-1], axis=-1)
            return -jnp.mean(jnp.take_along_axis(log_probs, TOKENS[:, 1:, None], axis=-1))

        return loss, params

    loss_first, params = setup(False)
    loss_second, _ = setup(True)
    rng = np.random.default_rng(0)
    direction = jax.tree.map(lambda a: jnp.asarray(rng.normal(size=a.shape), jnp.float32), params)
    along = lambda g: sum(float(jnp.sum(a * d)) for a, d in zip(jax.tree.leaves(g), jax.tree.leaves(direction)))
    first = along(jax.jit(jax.grad(loss_first))(params))
    value_and_grad_second = jax.jit(jax.value_and_grad(loss_second))  # one compile for the gradient and the FD values
    second = along(value_and_grad_second(params)[1])
    h = 1e-3
    shifted = lambda sign: jax.tree.map(lambda p, d: p + sign * h * d, params, direction)
    numeric = (float(value_and_grad_second(shifted(1.0))[0]) - float(value_and_grad_second(shifted(-1.0))[0])) / (2 * h)
    assert abs(second - numeric) < 0.01 * abs(numeric), (second, numeric)
    assert abs(first - numeric) > 0.2 * abs(numeric), (first, numeric)


def test_lm_config_is_validated():
    with pytest.raises(ValueError, match="'lm' level needs a period ≥ 2"):
        build_model(make_cfg(name="hope", cms={"periods": (1, 0), "objectives": ("lm", "frozen"), "hidden": (8, 8)}),
                    rngs=nnx.Rngs(0))  # fmt: skip
    with pytest.raises(ValueError, match="lm_lrs .* needs one entry per level"):
        cms = {"periods": (4, 0), "objectives": ("lm", "frozen"), "hidden": (8, 8), "lm_lrs": (0.1,)}
        build_model(make_cfg(name="hope", cms=cms), rngs=nnx.Rngs(0))


def _batch():
    tokens = jax.random.randint(jax.random.key(3), (2, 9), 0, 64, jnp.int32)
    return {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": jnp.ones((2, 8), jnp.float32)}


def _assert_inner_losses(metrics, expected):
    assert expected <= set(metrics), sorted(metrics)
    values = {name: float(metrics[name]) for name in expected}
    assert all(np.isfinite(v) and v > 0 for v in values.values()), values
    for before in (name for name in expected if name.endswith("_before")):
        assert values[before] != values[before.replace("_before", "_after")], values  # the write changed the fit


def test_cms_inner_losses_reach_train_step_metrics():
    """A train step of a model with a local and an lm CMS level (the lm driver inside the differentiated loss)
    reports what they sow as inner/<name>."""
    cfg = make_cfg(name="hope_attention", cms={"periods": (4, 4, 0), "objectives": ("local", "lm", "frozen"),
                                               "hidden": (16, 16, 16)})  # fmt: skip
    params, tx = init_params(cfg, jax.random.key(0)), optax.sgd(0.1)
    state = TrainState(step=jnp.zeros((), jnp.int32), params=params, opt_state=tx.init(params),
                       rng=jax.random.key_data(jax.random.key(0)))  # fmt: skip
    _, metrics = jax.jit(make_train_step(model_spec(cfg), tx))(state, _batch())
    _assert_inner_losses(metrics, {"inner/cms_loss_before", "inner/cms_loss_after", "inner/lm_loss"})
    assert 0.5 * np.log(64) < float(metrics["inner/lm_loss"]) < 2 * np.log(64)  # an LM loss of an untrained model


@pytest.mark.parametrize(
    "overrides",
    [dict(name="titans_mac", titans={"chunk_size": 4, "segment_size": 4}), dict(name="titans_lmm")],
    ids=["titans_mac", "titans_lmm"],
)
def test_titans_inner_losses_reach_the_metrics(overrides):
    """model_loss_sums is what the train step turns into inner/<name> metrics (forward only, to compile less)."""
    cfg = make_cfg(**{"titans": {"chunk_size": 4}, **overrides})
    params = init_params(cfg, jax.random.key(0))
    _, _, diagnostics = jax.jit(lambda p, b: model_loss_sums(model_spec(cfg), p, b))(params, _batch())
    _assert_inner_losses(diagnostics, {"inner/memory_loss_before", "inner/memory_loss_after"})


def test_nested_lm_levels_hand_the_slower_weights_to_the_faster_level():
    """E31 with lm levels (4, 8): after token 8 the period-8 level steps and the period-4 level takes its new weights
    (and clears its accumulator); after token 4 only the fast level has stepped, so the two still differ."""
    cms = {"periods": (4, 8, 0), "objectives": ("lm", "lm", "frozen"), "hidden": (16, 16, 16), "inner_lr": 0.5}
    cfg = make_cfg(name="hope_attention", init_std=0.2, cms={**cms, "variant": "nested"})
    model = build_model(cfg, rngs=nnx.Rngs(0))
    run = nnx.jit(lambda m, t: m(t)[1]["inner"]["layers"][0]["cms"])
    after_4, after_8 = run(model, TOKENS[:, :4]), run(model, TOKENS)
    assert np.abs(np.asarray(after_4[0]["lm_fast"]["w_down"] - after_4[1]["lm_fast"]["w_down"])).max() > 1e-4
    for name in ("w_gate", "w_up", "w_down"):
        # The same values up to one float32 rounding: XLA fuses the slow level's step into both of its consumers,
        # where it may contract the multiply-add differently.
        np.testing.assert_allclose(after_8[0]["lm_fast"][name], after_8[1]["lm_fast"][name], rtol=1e-6, atol=1e-8)
        np.testing.assert_array_equal(after_8[0]["lm_grad"][name], np.zeros_like(after_8[0]["lm_grad"][name]))
