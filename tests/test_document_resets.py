"""Document resets (model.reset_at_token; memory/document_resets.py): every in-context state of HOPE restarts at a
document start, so a document never reads its predecessor, and the model still streams in pieces."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hope_jax  # noqa: F401  (switches off eager sharding)
from hope_jax.layers.conv import causal_depthwise_conv
from hope_jax.memory.document_resets import seen_start, update_mask
from hope_jax.models import apply_overrides, build_model, default_model_config, functional

RESET = 1
BASE = dict(name="hope", vocab_size=64, d_model=16, n_layers=2, n_heads=2, mlp_hidden=32, max_seq_len=32,
            reset_at_token=RESET)  # fmt: skip
CMS_HIDDEN = {"hidden": (32, 32, 32)}
VARIANTS = {
    # joint memories (equal chunk sizes) and two `local` CMS levels
    "joint_local": {"memory": {"chunk_size": 4, "aux_chunk_size": 4},
                    "cms": {"periods": (4, 8, 0), "objectives": ("local", "local", "frozen"), **CMS_HIDDEN}},
    # generators and M_memory on different chunks, inside one driver period of 8
    "unequal_local": {"memory": {"chunk_size": 8, "aux_chunk_size": 4},
                      "cms": {"periods": (4, 8, 0), "objectives": ("local", "local", "frozen"), **CMS_HIDDEN}},
    # the lm driver (G = 4, a level of period 8), the memories on chunks of 4
    "lm": {"memory": {"chunk_size": 4, "aux_chunk_size": 4}, "n_layers": 1,
           "cms": {"periods": (4, 8, 0), "objectives": ("lm", "lm", "frozen"), "inner_lr": 0.5, **CMS_HIDDEN}},
}  # fmt: skip
LENGTH = 24


def make_model(variant: str, **overrides):
    cfg = apply_overrides(default_model_config(), {**BASE, **VARIANTS[variant], **overrides})
    return build_model(cfg, rngs=nnx.Rngs(0))


def random_tokens(seed: int, shape) -> np.ndarray:
    """Tokens without the reset token."""
    tokens = np.array(jax.random.randint(jax.random.key(seed), shape, 2, 64, jnp.int32))
    assert not np.any(tokens == RESET)
    return tokens


@pytest.fixture(scope="module", params=list(VARIANTS))
def variant(request):
    model = make_model(request.param)
    apply, _, params = functional(model)
    step = jax.jit(apply)
    return request.param, model, step, params


def test_masks_of_a_chunk():
    starts = jnp.asarray([[0, 0, 1, 0, 1, 0], [0, 0, 0, 0, 0, 0]], bool)
    np.testing.assert_array_equal(seen_start(starts), [[0, 0, 1, 1, 1, 1], [0] * 6])
    np.testing.assert_array_equal(update_mask(starts), [[0, 0, 0, 0, 1, 1], [1] * 6])


def test_conv_reads_nothing_of_an_earlier_document_and_streams():
    x = jax.random.normal(jax.random.key(0), (2, 9, 3))
    kernel = jax.random.normal(jax.random.key(1), (4, 3))
    starts = jnp.zeros((2, 9), bool).at[0, 5].set(True).at[1, 1].set(True).at[1, 2].set(True)
    prefix = jnp.zeros((2, 3, 3))
    whole, _ = causal_depthwise_conv(x, kernel, prefix, starts)
    changed, _ = causal_depthwise_conv(x.at[0, :5].add(1.0).at[1, :2].add(1.0), kernel, prefix, starts)
    np.testing.assert_array_equal(whole[0, 5:], changed[0, 5:])
    np.testing.assert_array_equal(whole[1, 2:], changed[1, 2:])
    # Sequence 0's document from position 5 reads as if it were a fresh sequence.
    fresh, _ = causal_depthwise_conv(x[:1, 5:], kernel, prefix[:1])
    np.testing.assert_allclose(whole[0, 5:], fresh[0], rtol=1e-6, atol=1e-6)
    state, parts = prefix, []
    for lo, hi in ((0, 2), (2, 6), (6, 7), (7, 9)):
        y, state = causal_depthwise_conv(x[:, lo:hi], kernel, state, starts[:, lo:hi])
        parts.append(y)
    np.testing.assert_allclose(jnp.concatenate(parts, axis=1), whole, rtol=1e-6, atol=1e-6)


@pytest.mark.parametrize("start", [6, 13])  # mid-chunk for every period; 13 also leaves a partial last chunk
def test_a_document_never_reads_its_predecessor(variant, start):
    """Changing every token before a document start changes no logit at or after it."""
    _, _, step, params = variant
    logits_of = lambda tokens: step(params, tokens)[0]
    tokens = random_tokens(0, (2, LENGTH))
    tokens[:, start] = RESET
    other = tokens.copy()
    other[:, :start] = random_tokens(1, (2, start))
    a, b = logits_of(jnp.asarray(tokens)), logits_of(jnp.asarray(other))
    np.testing.assert_array_equal(np.asarray(a[:, start:]), np.asarray(b[:, start:]))
    assert not np.allclose(np.asarray(a[:, : start - 1]), np.asarray(b[:, : start - 1]))


def test_a_document_on_a_chunk_boundary_reads_as_a_fresh_sequence(variant):
    """A start at a multiple of every period (8): the document's logits are those of the document alone."""
    _, _, step, params = variant
    logits_of = lambda tokens: step(params, tokens)[0]
    tokens = random_tokens(2, (2, LENGTH))
    tokens[:, 8] = RESET
    alone = logits_of(jnp.asarray(tokens[:, 8:]))
    np.testing.assert_allclose(np.asarray(logits_of(jnp.asarray(tokens))[:, 8:]), np.asarray(alone), atol=2e-5)


@pytest.mark.parametrize("splits", [(5, 11, 17), tuple(range(1, LENGTH))])
def test_pieces_with_resets_equal_whole(variant, splits):
    name, model, step, params = variant
    if len(splits) == LENGTH - 1 and name == "unequal_local":
        pytest.skip("token-by-token decoding is covered by the joint and lm variants")
    tokens = random_tokens(3, (2, LENGTH))
    tokens[0, [3, 10, 12]] = RESET
    tokens[1, [8, 9]] = RESET
    tokens = jnp.asarray(tokens)
    whole = step(params, tokens)[0]
    state, parts = model.init_state(2), []
    for lo, hi in zip((0, *splits), (*splits, LENGTH), strict=True):
        logits, state = step(params, tokens[:, lo:hi], state)
        parts.append(logits)
    np.testing.assert_allclose(np.asarray(jnp.concatenate(parts, axis=1)), np.asarray(whole), atol=2e-5, rtol=2e-5)


def test_without_a_reset_token_the_model_is_the_model_without_resets(variant):
    name, _, step, params = variant
    plain_apply, _, plain_params = functional(make_model(name, reset_at_token=-1))
    tokens = jnp.asarray(random_tokens(4, (2, LENGTH)))
    expected = jax.jit(plain_apply)(plain_params, tokens)[0]
    np.testing.assert_allclose(np.asarray(step(params, tokens)[0]), np.asarray(expected), atol=2e-6, rtol=2e-6)


def test_unsupported_combinations_name_the_keys():
    with pytest.raises(ValueError, match=r"model.reset_at_token = 1 .*transformer"):
        build_model(apply_overrides(default_model_config(), {**BASE, "name": "transformer"}), rngs=nnx.Rngs(0))
    with pytest.raises(ValueError, match=r"model.reset_at_token must be"):
        build_model(apply_overrides(default_model_config(), {**BASE, "reset_at_token": 64}), rngs=nnx.Rngs(0))
    nested = {**VARIANTS["joint_local"]["cms"], "variant": "nested"}
    with pytest.raises(ValueError, match=r"model.reset_at_token.*nested"):
        build_model(apply_overrides(default_model_config(), {**BASE, "cms": nested}), rngs=nnx.Rngs(0))
