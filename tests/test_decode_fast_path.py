"""The one-token (decoding) path of driver.run_chunked, layer by layer.

Per layer: prefix fed fresh, then tokens one at a time (the fast path) == the rest fed as one piece with the carry
(the general path) == the whole sequence fed at once, in outputs and carried state, across chunk boundaries (and
the nested CMS reset). The declaration `outputs_from_chunk_start` is checked against each layer's behaviour: a layer
that declares it reads no earlier token of its chunk, one that does not (Titans dual form, MAC segments, the
self-modifying mixer with unequal chunk sizes) does. And the fast path is the one taken: a decode step of a long
period P builds no 2P buffer, and where the property is declared no P-sized array outside the chunk-completing
branch of its `lax.cond`.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hope_jax  # noqa: F401  (switches off eager sharding)
from hope_jax.models import apply_overrides, default_model_config
from hope_jax.models.cms import CMS
from hope_jax.models.self_modifying import SelfModifyingMixer
from hope_jax.models.titans import LMMMixer, NeuralMemory
from hope_jax.models.titans_mac import MACMixer
from hope_jax.models.typed_config import ModelConfig

BATCH, PREFIX, SEQ = 2, 3, 11  # tokens PREFIX..SEQ-1 decoded one by one: boundaries at 4 and 8 (and every 2)
TINY = dict(d_model=8, n_heads=1, conv_window=2)


def make_cfg(overrides: dict):
    return apply_overrides(default_model_config(), {**TINY, **overrides})


def cms_layer(variant: str, periods=(2, 4), out_init_std: float = 0.02):
    cms = {"periods": periods, "objectives": ("local",) * len(periods), "hidden": (6,) * len(periods)}
    cfg = make_cfg({"cms": {**cms, "inner_lr": 0.5, "variant": variant}})
    layer = CMS(ModelConfig.from_config(cfg), out_init_std=out_init_std, rngs=nnx.Rngs(0))

    def call(module, x, state, position):  # the block's keys and values: fixed functions of x here
        return module(x, jnp.tanh(x), jnp.sin(x), state)

    return layer, call, lambda m: m.init_state(BATCH, cfg.d_model)


def mixer_layer(chunk: int, aux_chunk: int, **memory):
    cfg = make_cfg({"memory": {"chunk_size": chunk, "aux_chunk_size": aux_chunk, **memory}})
    layer = SelfModifyingMixer(ModelConfig.from_config(cfg), out_init_std=0.02, rngs=nnx.Rngs(0))

    def call(module, x, state, position):  # outputs: the mixer's and the keys and values it hands to the CMS
        out, state, keys, values = module(x, state)
        return (out, keys, values), state

    return layer, call, lambda m: m.init_state(BATCH)


def titans_layer(kind, titans: dict, **overrides):
    cfg = make_cfg({"titans": {"theta_max": 0.5, **titans}, **overrides})
    layer = kind(ModelConfig.from_config(cfg), rngs=nnx.Rngs(0))
    if kind is NeuralMemory:
        return layer, lambda module, x, state, position: module(x, state), lambda m: m.init_state(BATCH)
    return layer, lambda module, x, state, position: module(x, position, state), lambda m: m.init_state(BATCH)


# name: (layer factory, declared outputs_from_chunk_start, probe offset). The probe: the output at that offset of
# the first chunk, with token 0 perturbed, is unchanged exactly when the layer declares the property. CMS probes
# offset 1, inside the first chunk of both of its levels (periods 2 and 4); the others probe P − 1 = 3 (the
# self-modifying mixer with chunk sizes 4 / 2 updates its generators at offset 2; the conv window is 2).
LAYERS = {
    "cms_sequential": (lambda: cms_layer("sequential"), True, 1),
    # Nested (E31): the period-2 level updates inside the period-4 unit, so offset 3 reads what token 0 wrote (levels
    # with O(1) output weights, so that this read stands out of the residual stream the CMS returns).
    "cms_nested": (lambda: cms_layer("nested", out_init_std=1.0), False, 3),
    "selfmod_equal_chunks": (lambda: mixer_layer(4, 4), True, 3),
    # (without momentum and M_α: a smaller compile; the full mixer is the equal-chunk case)
    "selfmod_unequal_chunks": (lambda: mixer_layer(4, 2, momentum=False, weight_decay=False), False, 3),
    "titans_lmm_dual_form": (lambda: titans_layer(NeuralMemory, {"chunk_size": 4}), False, 3),
    # The LMM's persistent tokens: its fresh state (init_state) is the memory after them, as the whole path has it.
    "titans_lmm_persistent": (
        lambda: titans_layer(LMMMixer, {"chunk_size": 4}, n_persistent_tokens=2),
        False,
        3,
    ),
    "titans_mac_segments": (
        lambda: titans_layer(MACMixer, {"chunk_size": 2, "segment_size": 4, "memory_depth": 1}, n_persistent_tokens=1),
        False,
        3,
    ),
}


def flat_outputs_at(outputs, offset: int) -> jax.Array:
    """[B, n]: every output of the layer at one offset, concatenated."""
    return jnp.concatenate([a[:, offset].reshape(a.shape[0], -1) for a in jax.tree.leaves(outputs)], axis=-1)


def run_layer(layer, call, probe: int) -> dict:
    """Under one jit: 'whole', 'general', 'decoded' = (outputs at PREFIX.., state after SEQ tokens), and 'probe' /
    'probe_perturbed' = the outputs at offset `probe` of a fresh sequence, without and with token 0 perturbed."""
    graphdef, params = nnx.split(layer)
    apply = lambda p, x, state, position: call(nnx.merge(graphdef, p), x, state, position)

    @jax.jit
    def run(params, x):
        zero = jnp.zeros((), jnp.int32)
        whole_out, whole_state = apply(params, x, None, zero)
        perturbed_out, _ = apply(params, x.at[:, 0].add(1.0), None, zero)  # same shapes: same rounding
        _, prefix_state = apply(params, x[:, :PREFIX], None, zero)
        general = apply(params, x[:, PREFIX:], prefix_state, jnp.asarray(PREFIX, jnp.int32))

        def step(state, xs):
            position, token = xs
            out, state = apply(params, token[:, None], state, position)
            return state, jax.tree.map(lambda a: a[:, 0], out)

        positions = jnp.arange(PREFIX, SEQ, dtype=jnp.int32)
        state, outs = jax.lax.scan(step, prefix_state, (positions, jnp.swapaxes(x[:, PREFIX:], 0, 1)))
        return {
            "whole": (jax.tree.map(lambda a: a[:, PREFIX:], whole_out), whole_state),
            "general": general,
            "decoded": (jax.tree.map(lambda a: jnp.swapaxes(a, 0, 1), outs), state),
            "probe": flat_outputs_at(whole_out, probe),
            "probe_perturbed": flat_outputs_at(perturbed_out, probe),
        }

    x = jax.random.normal(jax.random.key(1), (BATCH, SEQ, TINY["d_model"]), jnp.float32)
    return run(params, x)


@pytest.fixture(scope="module", params=list(LAYERS))
def layer_runs(request):
    factory, declared, probe = LAYERS[request.param]
    layer, call, _ = factory()
    return request.param, declared, run_layer(layer, call, probe)


def assert_trees_close(actual, expected, what):
    assert jax.tree.structure(actual) == jax.tree.structure(expected), what
    for (path, a), e in zip(jax.tree_util.tree_leaves_with_path(actual), jax.tree.leaves(expected), strict=True):
        where = f"{what} at {jax.tree_util.keystr(path)}"
        assert a.dtype == e.dtype and a.shape == e.shape, (where, a.shape, e.shape)
        if jnp.issubdtype(a.dtype, jnp.integer):
            np.testing.assert_array_equal(a, e, err_msg=where)
        else:
            np.testing.assert_allclose(a, e, atol=2e-6, rtol=1e-5, err_msg=where)


def test_decoded_outputs_and_state_equal_general_path_and_whole(layer_runs):
    name, _, runs = layer_runs
    assert_trees_close(runs["decoded"], runs["general"], f"{name}: one token at a time vs one piece")
    assert_trees_close(runs["decoded"], runs["whole"], f"{name}: one token at a time vs the whole sequence")


def test_declaration_matches_whether_a_token_reads_its_chunks_earlier_tokens(layer_runs):
    name, declared, runs = layer_runs
    change = np.abs(np.asarray(runs["probe_perturbed"] - runs["probe"])).max()
    if declared:
        assert change == 0.0, f"{name} declares outputs_from_chunk_start, yet reads its chunk's token 0"
    else:
        # Relative to the output's own scale: MAC's output at initialisation is ~6e-6 here (three small-init
        # projections in a row, none renormalised), and fp32 rounding is ~1e-7 of it.
        scale = np.abs(np.asarray(runs["probe"])).max()
        assert change > 1e-3 * scale, f"{name}: the output does not depend on its chunk's token 0; declare it"


def sub_jaxprs(eqn):
    for value in eqn.params.values():
        for item in value if isinstance(value, (tuple, list)) else (value,):
            if hasattr(item, "eqns"):
                yield item
            elif hasattr(item, "jaxpr") and hasattr(item.jaxpr, "eqns"):
                yield item.jaxpr


def shapes_outside_conds(jaxpr) -> tuple[list[tuple[int, ...]], list[tuple[int, ...]]]:
    """(shapes of every value computed outside any lax.cond branch, shapes of those computed inside one)."""
    outside, inside = [], []

    def walk(jaxpr, in_cond):
        for eqn in jaxpr.eqns:
            (inside if in_cond else outside).extend(
                tuple(v.aval.shape) for v in eqn.outvars if hasattr(v.aval, "shape")
            )
            for sub in sub_jaxprs(eqn):
                walk(sub, in_cond or eqn.primitive.name == "cond")

    walk(jaxpr, False)
    return outside, inside


LONG = 64  # a period no other dimension of these layers has


@pytest.mark.parametrize(
    "factory, declared",
    [
        (lambda: cms_layer("sequential", periods=(LONG,)), True),
        (lambda: mixer_layer(LONG, LONG), True),
        (lambda: titans_layer(NeuralMemory, {"chunk_size": LONG}), False),
    ],
    ids=["cms_level", "selfmod_mixer", "titans_lmm"],
)
def test_decode_step_builds_no_two_chunk_buffer(factory, declared):
    """The general path (the code before the fast path) scans a [B, 2P] buffer for every token. The fast path
    builds no such buffer; where outputs come from the chunk start it touches period-sized arrays only inside the
    branch that runs when the token completes its chunk, elsewhere (Titans dual form) it runs one P-token chunk."""
    layer, call, init_state = factory()
    graphdef, params = nnx.split(layer)
    token = jnp.ones((BATCH, 1, TINY["d_model"]), jnp.float32)
    step = lambda state: call(nnx.merge(graphdef, params), token, state, jnp.asarray(PREFIX, jnp.int32))
    outside, inside = shapes_outside_conds(jax.make_jaxpr(step)(init_state(layer)).jaxpr)
    # [B, 2P, ...]: batch, then time. (Inside the update branch the mixer's memories read their keys and values as
    # one stack of 2P rows, [B, H, 2P, d]: that is one chunk's tokens twice, not a two-chunk buffer.)
    assert [s for s in outside + inside if s[:2] == (BATCH, 2 * LONG)] == []
    assert any(LONG in s for s in inside), "the chunk update (over P tokens) runs inside a lax.cond"
    if declared:
        assert [s for s in outside if LONG in s] == []
