"""Properties every registered model variant must have.

Parametrised over the registry, so new models are covered as soon as they register: causality, per-sample
isolation, pieces-with-state == whole, generation with state == recomputing from scratch, initial loss
≈ ln(vocab), logical axis names on every parameter.
"""

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hope_jax  # noqa: F401  (switches off eager sharding)
from hope_jax.models import (
    apply_overrides,
    build_model,
    default_model_config,
    functional,
    generate,
    known_models,
)
from hope_jax.models.generate import filter_logits, sample_token
from tests.model_variants import MODEL_VARIANTS

LOGICAL_AXES = {
    "vocab",
    "embed",
    "mlp",
    "heads",
    "head_dim",
    "kv",
    "memory_hidden",
    "conv_window",
    "layers",
    None,
}
TINY = dict(vocab_size=128, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=32)
BATCH, SEQ = 2, 24
# Split points: multiples of 8 (chunk boundaries of the memory models' tiny test configs) and points off them,
# including a one-token piece.
SPLITS_ON_BOUNDARIES = (8, 16)
SPLITS_OFF_BOUNDARIES = (5, 13, 14, 19)

VARIANTS = [
    pytest.param((name, overrides), id=f"{name}-{variant}")
    for name in known_models()
    for variant, overrides in MODEL_VARIANTS.get(name, {}).items()
]


def test_every_registered_model_has_variants():
    """A registered model must have tiny configurations in tests/model_variants.py, or no property test runs on it."""
    assert set(known_models()) - set(MODEL_VARIANTS) == set(), "add them to tests/model_variants.py"
    assert set(MODEL_VARIANTS) - set(known_models()) == set(), "variants of models that are not registered"


def tolerance(cfg) -> float:
    return 1e-5 if cfg.compute_dtype == "float32" else 3e-2


@pytest.fixture(scope="module", params=VARIANTS)
def variant(request):
    name, overrides = request.param
    cfg = apply_overrides(default_model_config(), {**TINY, "name": name, **overrides})
    model = build_model(cfg, rngs=nnx.Rngs(0))
    apply, _, params = functional(model)
    apply = jax.jit(apply)
    tokens = jax.random.randint(jax.random.key(1), (BATCH, SEQ), 0, cfg.vocab_size, jnp.int32)
    whole_logits, _ = apply(params, tokens)
    return dict(cfg=cfg, model=model, apply=apply, params=params, tokens=tokens, whole=whole_logits)


def test_logits_shape_and_dtype(variant):
    assert variant["whole"].shape == (BATCH, SEQ, variant["cfg"].vocab_size)
    assert variant["whole"].dtype == jnp.float32
    assert np.isfinite(np.asarray(variant["whole"])).all()


def test_causality(variant):
    t = 10
    tokens = variant["tokens"]
    perturbed = tokens.at[:, t].set((tokens[:, t] + 1) % variant["cfg"].vocab_size)
    logits, _ = variant["apply"](variant["params"], perturbed)
    before = np.abs(np.asarray(logits[:, :t] - variant["whole"][:, :t])).max()
    at_t = np.abs(np.asarray(logits[:, t] - variant["whole"][:, t])).max()
    assert before <= tolerance(variant["cfg"]) * 0.1, before
    assert at_t > 1e-3, "perturbing token t must change the logits at t"


def test_per_sample_isolation(variant):
    tokens = variant["tokens"]
    other = tokens.at[1].set((tokens[1] * 7 + 3) % variant["cfg"].vocab_size)
    logits, _ = variant["apply"](variant["params"], other)
    np.testing.assert_allclose(logits[0], variant["whole"][0], atol=tolerance(variant["cfg"]) * 0.1, rtol=0)
    swapped, _ = variant["apply"](variant["params"], tokens[::-1])
    np.testing.assert_allclose(swapped[::-1], variant["whole"], atol=tolerance(variant["cfg"]), rtol=0)


@pytest.mark.parametrize("splits", [SPLITS_ON_BOUNDARIES, SPLITS_OFF_BOUNDARIES], ids=["on_chunks", "off_chunks"])
def test_pieces_with_state_equal_whole(variant, splits):
    state = variant["model"].init_state(BATCH)
    pieces = []
    for start, stop in zip((0, *splits), (*splits, SEQ)):
        logits, state = variant["apply"](variant["params"], variant["tokens"][:, start:stop], state)
        pieces.append(logits)
    np.testing.assert_allclose(
        jnp.concatenate(pieces, axis=1), variant["whole"], atol=tolerance(variant["cfg"]), rtol=0
    )


def test_greedy_generation_with_state_equals_recomputation(variant):
    """Greedy tokens from the stateful loop are the argmax of a from-scratch pass over prompt + tokens.

    By causality, the whole-sequence logits at position P−1+i are what recomputing from scratch after i
    generated tokens gives, so one forward pass checks every step.
    """
    prompt_len = 9
    generated = generate(variant["model"], variant["tokens"][:, :prompt_len], SEQ - prompt_len)
    assert generated.shape == (BATCH, SEQ - prompt_len) and generated.dtype == jnp.int32
    sequence = jnp.concatenate([variant["tokens"][:, :prompt_len], generated], axis=1)
    logits, _ = variant["apply"](variant["params"], sequence)
    step_logits = np.asarray(logits[:, prompt_len - 1 : -1])
    chosen = np.take_along_axis(step_logits, np.asarray(generated)[..., None], axis=-1)[..., 0]
    # Equal to the best logit (up to the dtype's rounding for exact ties between the two computations).
    assert (step_logits.max(-1) - chosen <= tolerance(variant["cfg"])).all()


def test_initial_loss_is_near_uniform(variant):
    targets = jnp.roll(variant["tokens"], -1, axis=1)
    log_probs = jax.nn.log_softmax(variant["whole"], axis=-1)
    loss = -float(jnp.mean(jnp.take_along_axis(log_probs, targets[..., None], axis=-1)))
    uniform = math.log(variant["cfg"].vocab_size)
    assert abs(loss - uniform) < 0.1 * uniform, (loss, uniform)


def test_every_param_has_logical_axis_names(variant):
    params = nnx.state(variant["model"], nnx.Param)
    for path, param in jax.tree.leaves_with_path(params, is_leaf=lambda x: isinstance(x, nnx.Param)):
        names = param.get_metadata().get("out_sharding")
        assert names is not None and len(names) == param[...].ndim, (path, names)
        assert set(names) <= LOGICAL_AXES, (path, names)
        assert param[...].dtype == jnp.float32, path


def test_unknown_model_name_lists_known_names():
    cfg = apply_overrides(default_model_config(), {**TINY, "name": "no_such_model"})
    with pytest.raises(ValueError, match="unknown model name 'no_such_model'.*known: .*transformer"):
        build_model(cfg, rngs=nnx.Rngs(0))


def test_unknown_config_key_is_named():
    with pytest.raises(KeyError, match="model.memory.no_such_key"):
        apply_overrides(default_model_config(), {"memory": {"no_such_key": 1}})


def test_remat_changes_neither_loss_nor_gradients():
    tokens = jax.random.randint(jax.random.key(2), (BATCH, 12), 0, TINY["vocab_size"], jnp.int32)

    def loss_and_grads(remat):
        cfg = apply_overrides(default_model_config(), {**TINY, "remat": remat})
        model = build_model(cfg, rngs=nnx.Rngs(0))
        loss_fn = lambda m: jnp.mean(jax.nn.logsumexp(m(tokens)[0], axis=-1))
        return nnx.jit(nnx.value_and_grad(loss_fn))(model)

    loss_plain, grads_plain = loss_and_grads("none")
    loss_remat, grads_remat = loss_and_grads("full")
    np.testing.assert_allclose(loss_remat, loss_plain, rtol=1e-6)
    jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7), grads_remat, grads_plain)
    with pytest.raises(ValueError, match="not a remat policy; known: none, full"):
        build_model(apply_overrides(default_model_config(), {**TINY, "remat": "sometimes"}), rngs=nnx.Rngs(0))


def test_filter_logits_top_k_and_top_p_exact():
    logits = jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]]))
    kept = lambda filtered: np.isfinite(np.asarray(filtered))[0].tolist()
    assert kept(filter_logits(logits, top_k=2)) == [False, True, False, True]
    assert kept(filter_logits(logits, top_p=0.5)) == [False, True, False, True]  # 0.4 < 0.5 → add 0.3
    assert kept(filter_logits(logits, top_p=0.4)) == [False, True, False, False]
    assert kept(filter_logits(logits, top_p=0.75)) == [False, True, True, True]
    assert kept(filter_logits(logits)) == [True, True, True, True]


def test_sampling_statistics_and_greedy_limits():
    logits = jnp.tile(jnp.log(jnp.array([[0.1, 0.4, 0.2, 0.3]])), (4000, 1))
    draws = np.asarray(sample_token(logits, jax.random.key(3), temperature=1.0))
    np.testing.assert_allclose(np.bincount(draws, minlength=4) / len(draws), [0.1, 0.4, 0.2, 0.3], atol=0.03)
    top1 = sample_token(logits, jax.random.key(4), temperature=1.0, top_k=1)
    assert (np.asarray(top1) == 1).all()
    top_p = np.asarray(sample_token(logits, jax.random.key(5), temperature=1.0, top_p=0.5))
    assert set(np.unique(top_p)) == {1, 3}
    assert (np.asarray(sample_token(logits, jax.random.key(6), temperature=0.0)) == 1).all()
