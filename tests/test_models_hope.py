"""HOPE, HOPE-Attention and Titans: ablation switches, CMS semantics, the mixer against the per-token reference.

The generic properties (causality, isolation, pieces == whole, generation, initial loss, axis names) are in
tests/test_models.py, which covers every registered variant.
"""

import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

import hope_jax  # noqa: F401
from hope_jax.layers import swiglu
from hope_jax.memory import cms_local, fast_mlp
from hope_jax.memory.cms import cms_local_reference
from hope_jax.memory.self_modifying import init_self_modifying_state, self_modifying_reference
from hope_jax.models import apply_overrides, build_model, count_params, default_model_config, flops_per_token
from hope_jax.models.cms import CMS, level_param_regex, outer_level_periods, validate_cms_config
from hope_jax.models.config import validate_model_config
from hope_jax.models.self_modifying import SelfModifyingMixer
from hope_jax.models.typed_config import ModelConfig
from hope_jax.optim.labels import param_paths

BASE = dict(vocab_size=64, d_model=16, n_layers=1, n_heads=2, mlp_hidden=32, max_seq_len=16)
HOPE = dict(
    name="hope",
    memory={"chunk_size": 4, "aux_chunk_size": 4},
    cms={"periods": (4, 8, 0), "objectives": ("local", "local", "frozen"), "hidden": (16, 16, 16)},
)
TITANS = dict(name="titans_lmm", titans={"chunk_size": 4, "segment_size": 8})
SEQ = 12
TOKENS = jax.random.randint(jax.random.key(7), (2, SEQ), 0, BASE["vocab_size"], jnp.int32)


def make_cfg(*layers):
    cfg = default_model_config()
    for overrides in (BASE, *layers):
        cfg = apply_overrides(cfg, overrides)
    return cfg


def shapes_by_path(cfg) -> dict[str, tuple]:
    model = nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))
    params = nnx.state(model, nnx.Param)
    leaves = jax.tree_util.tree_flatten_with_path(params)[0]
    return dict(zip(param_paths(params), (leaf.shape for _, leaf in leaves), strict=True))


def logits(cfg) -> np.ndarray:
    model = build_model(cfg, rngs=nnx.Rngs(0))
    return np.asarray(nnx.jit(lambda m, t: m(t)[0])(model, TOKENS))


def param_diff(base_cfg, switched_cfg):
    base, switched = shapes_by_path(base_cfg), shapes_by_path(switched_cfg)
    removed = {p for p in base if p not in switched}
    added = {p for p in switched if p not in base}
    reshaped = {p for p in base.keys() & switched.keys() if base[p] != switched[p]}
    return removed, added, reshaped


# (switch overrides, params that must disappear, params that must appear, params whose shape must change)
HOPE_PARAM_SWITCHES = {
    "w/o weight decay": (
        {"memory": {"weight_decay": False}},
        {"blocks/0/mixer/memories/alpha/w_in", "blocks/0/mixer/memories/alpha/w_out",
         "blocks/0/mixer/alpha_w", "blocks/0/mixer/alpha_b"},
        set(), set(),
    ),
    "w/o adaptive k": (
        {"memory": {"adaptive_k": False}},
        {"blocks/0/mixer/memories/k/w_in", "blocks/0/mixer/memories/k/w_out"},
        set(), {"blocks/0/mixer/w_in/kernel", "blocks/0/mixer/conv/kernel"},
    ),
    "w/o adaptive v": (
        {"memory": {"adaptive_v": False}},
        {"blocks/0/mixer/memories/v/w_in", "blocks/0/mixer/memories/v/w_out"},
        set(), {"blocks/0/mixer/w_in/kernel", "blocks/0/mixer/conv/kernel"},
    ),
    "adaptive q (HOPE_SPEC A2)": (
        {"memory": {"adaptive_q": True}},
        set(), {"blocks/0/mixer/memories/q/w_in", "blocks/0/mixer/memories/q/w_out"},
        {"blocks/0/mixer/w_in/kernel", "blocks/0/mixer/conv/kernel"},
    ),
    "w/o CMS": (
        {"cms": {"enabled": False}},
        {f"blocks/0/channel/cms/levels/{i}/{name}" for i in range(3)
         for name in ("norm/scale", "w_gate", "w_up", "w_down")},
        {"blocks/0/channel/mlp_norm/scale", "blocks/0/channel/mlp/w_gate", "blocks/0/channel/mlp/w_up",
         "blocks/0/channel/mlp/w_down"},
        set(),
    ),
}  # fmt: skip

TITANS_PARAM_SWITCHES = {
    "linear memory": (
        {"titans": {"memory_depth": 1}},
        {"blocks/0/mixer/memory/memory/weights/w_in", "blocks/0/mixer/memory/memory/weights/w_out"},
        {"blocks/0/mixer/memory/memory/weights/w"},
        set(),
    ),
    "w/o convolution": ({"titans": {"conv": False}}, {"blocks/0/mixer/memory/qkv/conv/kernel"}, set(), set()),
}


@pytest.mark.parametrize("name", sorted(HOPE_PARAM_SWITCHES))
def test_hope_switch_changes_exactly_its_parameters(name):
    overrides, removed, added, reshaped = HOPE_PARAM_SWITCHES[name]
    assert param_diff(make_cfg(HOPE), make_cfg(HOPE, overrides)) == (removed, added, reshaped)


@pytest.mark.parametrize("name", sorted(TITANS_PARAM_SWITCHES))
def test_titans_switch_changes_exactly_its_parameters(name):
    overrides, removed, added, reshaped = TITANS_PARAM_SWITCHES[name]
    assert param_diff(make_cfg(TITANS), make_cfg(TITANS, overrides)) == (removed, added, reshaped)


@pytest.mark.parametrize("model", ["titans_lmm", "titans_mag", "titans_mac"])
def test_persistent_memory_switch(model):
    with_slots = make_cfg(TITANS, {"name": model, "n_persistent_tokens": 2, "attention_window": 4})
    removed, added, reshaped = param_diff(with_slots, make_cfg(with_slots.to_dict(), {"n_persistent_tokens": 0}))
    expected = (
        {"blocks/0/mixer/attn/persistent_k", "blocks/0/mixer/attn/persistent_v"}
        if model == "titans_mag"
        else {"blocks/0/mixer/persistent"}
    )
    assert (removed, added, reshaped) == (expected, set(), set())


# Switches that keep every parameter but change the inner update: outputs must change.
OUTPUT_SWITCHES = {
    "hope w/o DGD": (HOPE, {"memory": {"dgd": False}}),
    "hope w/o momentum": (HOPE, {"memory": {"momentum": False}}),
    "hope literal values": (HOPE, {"memory": {"normalize_values": False}}),
    "titans w/o momentum": (TITANS, {"titans": {"momentum": False}}),
    "titans w/o weight decay": (TITANS, {"titans": {"weight_decay": False, "forget_bias_init": 0.0}}),
}


@pytest.fixture(scope="module")
def base_logits():
    return {id(base): logits(make_cfg(base)) for base in (HOPE, TITANS)}


@pytest.mark.parametrize("name", sorted(OUTPUT_SWITCHES))
def test_output_switch_keeps_parameters_and_changes_outputs(name, base_logits):
    base, overrides = OUTPUT_SWITCHES[name]
    base_cfg, switched_cfg = make_cfg(base), make_cfg(base, overrides)
    if "weight_decay" in str(overrides):  # the forget-gate bias differs: compare with the same bias
        base_cfg = make_cfg(base, {"titans": {"forget_bias_init": 0.0}})
        reference = logits(base_cfg)
    else:
        reference = base_logits[id(base)]
    assert param_diff(base_cfg, switched_cfg) == (set(), set(), set())
    switched = logits(switched_cfg)
    if name.startswith("hope"):  # HOPE reads chunk-start memories: the first chunk (4 tokens) sees no update
        np.testing.assert_allclose(switched[:, :4], reference[:, :4], atol=1e-5)
    assert np.abs(switched[:, 4:] - reference[:, 4:]).max() > 1e-4


CMS_ONE_LEVEL = {"periods": (4,), "objectives": ("local",), "hidden": (16,), "inner_lr": 0.5}
ATTENTION = {"name": "hope_attention"}


@pytest.fixture(scope="module")
def cms_logits():
    frozen = {"cms": {"periods": (0,), "objectives": ("frozen",), "hidden": (16,)}}
    return {
        "frozen": logits(make_cfg(ATTENTION, frozen)),
        "outer": logits(make_cfg(ATTENTION, {"cms": {**frozen["cms"], "periods": (32,), "objectives": ("outer",)}})),
        "lr0": logits(make_cfg(ATTENTION, {"cms": {**CMS_ONE_LEVEL, "inner_lr": 0.0}})),
        "local": logits(make_cfg(ATTENTION, {"cms": CMS_ONE_LEVEL})),
    }


def test_cms_inner_lr_zero_is_the_plain_mlp_chain(cms_logits):
    np.testing.assert_array_equal(cms_logits["lr0"], cms_logits["frozen"])
    np.testing.assert_array_equal(cms_logits["outer"], cms_logits["frozen"])


def test_cms_level_changes_exactly_at_its_period(cms_logits):
    np.testing.assert_allclose(cms_logits["local"][:, :4], cms_logits["frozen"][:, :4], atol=1e-6)
    assert np.abs(cms_logits["local"][:, 4:] - cms_logits["frozen"][:, 4:]).min(axis=-1).max() > 0
    assert (np.abs(cms_logits["local"][:, 4:] - cms_logits["frozen"][:, 4:]).max(axis=-1) > 1e-5).all()


def nested_cms_reference(cms: CMS, x, keys, values) -> np.ndarray:
    """E31 written as a loop over the fastest period: every level reads its chunk-start weights; at a multiple of a
    level's period it takes its own update (memory.cms_local on that chunk); whenever a slower level has just
    updated, the next faster level takes over the slower one's weights (its initial state for the slower chunk)."""
    periods = cms.periods
    kw = dict(inner_lr=cms.inner_lr, inner_decay=cms.inner_decay, dgd=cms.dgd, remat_group=0)
    state = [cms.initial_fast(i, x.shape[0]) for i in range(len(periods))]
    out = []
    for start in range(0, x.shape[1], periods[0]):
        rows = slice(start, start + periods[0])
        h = x[:, rows]
        for i, level in enumerate(cms.levels):
            read = jax.vmap(lambda w, u: swiglu(u, w["w_gate"], w["w_up"], w["w_down"]))(state[i], level.norm(h))
            h = h + read
        out.append(h)
        end = start + periods[0]
        for i in range(len(periods)):  # own updates first, each on exactly its finished chunk
            if end % periods[i] == 0:
                chunk = slice(end - periods[i], end)
                k, v = keys[:, chunk], values[:, chunk]
                _, state[i] = cms_local(state[i], k, k, v, period=periods[i], **kw)
        for i in reversed(range(len(periods) - 1)):  # then the hand-over, slowest to fastest
            if end % periods[i + 1] == 0:
                state[i] = state[i + 1]
    return jnp.concatenate(out, axis=1)


def test_nested_cms_hands_the_slower_levels_weights_to_the_faster_level():
    """E31: the faster level's initial state, at each update of the slower level, is the slower level's state.
    Three levels (2, 4, 8) over 16 tokens (two slow chunks), whole and in pieces, against the loop above."""
    cms_cfg = {"periods": (2, 4, 8), "objectives": ("local",) * 3, "hidden": (8,) * 3, "inner_lr": 0.5}
    cfg = make_cfg({"d_model": 8, "cms": {**cms_cfg, "variant": "nested"}})
    cms = CMS(ModelConfig.from_config(cfg), out_init_std=0.02, rngs=nnx.Rngs(0))
    x = jax.random.normal(jax.random.key(3), (2, 16, 8), jnp.float32)
    keys, values = jnp.tanh(x), jnp.sin(2.0 * x)
    expected = jax.jit(lambda *inputs: nested_cms_reference(cms, *inputs))(x, keys, values)
    run = nnx.jit(lambda module, *inputs: module(*inputs))
    whole, _ = run(cms, x, keys, values, None)
    np.testing.assert_allclose(whole, expected, atol=2e-6, rtol=1e-5)
    first, state = run(cms, x[:, :11], keys[:, :11], values[:, :11], None)
    rest, _ = run(cms, x[:, 11:], keys[:, 11:], values[:, 11:], state)
    np.testing.assert_allclose(jnp.concatenate([first, rest], axis=1), expected, atol=2e-6, rtol=1e-5)
    # The hand-over matters: the sequential chain (each level keeps its own weights) differs after the first
    # update of the period-4 level, not before.
    sequential = CMS(
        ModelConfig.from_config(make_cfg({"d_model": 8, "cms": cms_cfg})), out_init_std=0.02, rngs=nnx.Rngs(0)
    )
    plain, _ = run(sequential, x, keys, values, None)
    np.testing.assert_allclose(plain[:, :4], whole[:, :4], atol=1e-6)
    assert np.abs(np.asarray(plain[:, 4:] - whole[:, 4:])).max() > 1e-4


@pytest.mark.parametrize(
    "cms_cfg, message",
    [
        ({"periods": (4, 6), "objectives": ("local", "local")}, "each dividing the next"),
        ({"periods": (4, 8), "objectives": ("local", "lm")}, "one objective"),
        ({"periods": (4, 8), "objectives": ("local", "local"), "hidden": (8, 16)}, "equal model.cms.hidden"),
    ],
)
def test_nested_cms_rejects_chains_that_cannot_hand_over(cms_cfg, message):
    cfg = make_cfg({"cms": {"hidden": (8, 8), **cms_cfg, "variant": "nested"}})
    with pytest.raises(ValueError, match=message):
        validate_cms_config(cfg.cms)


def test_cms_level_names_target_their_parameters():
    cfg = make_cfg(HOPE, {"cms": {"periods": (4, 64, 0), "objectives": ("local", "outer", "frozen")}})
    paths = shapes_by_path(cfg)
    level1 = [p for p in paths if re.fullmatch(level_param_regex(1), p)]
    assert sorted(level1) == sorted(
        f"blocks/0/channel/cms/levels/1/{n}" for n in ("norm/scale", "w_gate", "w_up", "w_down")
    )
    assert outer_level_periods(cfg) == {1: 64}


@pytest.mark.parametrize(
    "cms, message",
    [
        ({"periods": (4, 0), "objectives": ("local",)}, "one entry per level"),
        ({"periods": (4,), "objectives": ("frozen",), "hidden": (8,)}, "period 0 is exactly"),
        ({"periods": (0,), "objectives": ("local",), "hidden": (8,)}, "period 0 is exactly"),
        ({"periods": (4,), "objectives": ("ttt",), "hidden": (8,)}, "objectives\\[0\\] = 'ttt'"),
        ({"variant": "stacked"}, "model.cms.variant = 'stacked'"),
    ],
)
def test_bad_cms_config_is_named(cms, message):
    with pytest.raises(ValueError, match=message):
        build_model(make_cfg(HOPE, {"cms": cms}), rngs=nnx.Rngs(0))


MIXER_SWITCHES = {
    "unequal_chunks": {"chunk_size": 8, "aux_chunk_size": 4},
    "adaptive_q": {"chunk_size": 4, "aux_chunk_size": 4, "adaptive_q": True},
    "static_k_static_v": {"chunk_size": 4, "aux_chunk_size": 4, "adaptive_k": False, "adaptive_v": False},
    "static_v_unequal": {"chunk_size": 4, "aux_chunk_size": 8, "adaptive_v": False},
    # A matrix M_memory never stacks with the generators: two scans even at equal chunk sizes.
    "matrix_memory": {"chunk_size": 4, "aux_chunk_size": 4, "memory_depth": 1},
    # M_memory regressing onto v itself (HOPE_SPEC 5.1's shared target), in the joint stack and as a matrix
    "value_target_joint": {"chunk_size": 4, "aux_chunk_size": 4, "memory_target": "value"},
    "value_target_matrix": {"chunk_size": 4, "aux_chunk_size": 8, "memory_depth": 1, "memory_target": "value"},
}


@pytest.mark.parametrize("memory", list(MIXER_SWITCHES.values()), ids=list(MIXER_SWITCHES))
def test_mixer_runs_the_per_token_reference(memory):
    """What the HOPE mixer runs is the per-token reference (memory/self_modifying.self_modifying_reference) on the
    mixer's own streams and meta-learned initial memories: outputs, keys and values, for every A-Table 6 switch and
    both chunk layouts."""
    cfg = make_cfg(HOPE, {"memory": {**memory, "eta_max": 0.5}})
    mixer = SelfModifyingMixer(ModelConfig.from_config(cfg), out_init_std=0.3, rngs=nnx.Rngs(3))
    batch, length = 2, 12
    x_btd = jax.random.normal(jax.random.key(4), (batch, length, cfg.d_model))
    out, _, keys, values = mixer(x_btd, None)

    # the mixer's streams, built as its __call__ builds them, as [B, H, T, hd]
    conv_out, _ = mixer.conv(mixer.w_in(x_btd).reshape(batch, length, -1), None)
    streams = jax.nn.silu(conv_out).reshape(batch, length, len(mixer.streams), mixer.n_heads, mixer.head_dim)
    streams = {name: jnp.swapaxes(streams[:, :, i], 1, 2) for i, name in enumerate(mixer.streams)}
    initial = {name: memory_init.value() for name, memory_init in mixer.memories.items()}
    state = init_self_modifying_state(initial, batch, mixer.cfg)
    y_ref, end_state, keys_ref, values_ref = self_modifying_reference(
        streams["x"], streams.get("q"), state, mixer.reduction(), mixer.cfg, k=streams.get("k"), v=streams.get("v")
    )
    to_btd = lambda a: jnp.swapaxes(a, 1, 2).reshape(batch, length, -1)
    gate = jax.nn.silu(mixer.w_gate(x_btd))
    out_ref = mixer.w_out(mixer.out_norm(jnp.swapaxes(y_ref, 1, 2)) * gate)
    for name, weights in end_state["weights"].items():  # every memory wrote something, so the agreement covers it
        last = "w_out" if "w_out" in weights else "w"
        assert float(jnp.abs(weights[last] - state["weights"][name][last]).max()) > 1e-4, name
    for got, want in ((out, out_ref), (keys, to_btd(keys_ref)), (values, to_btd(values_ref))):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-5)


def test_flops_report_inner_loop_separately():
    cfg = make_cfg(HOPE)
    flops = flops_per_token(cfg, seq_len=64)
    d, v = cfg.d_model, cfg.vocab_size
    streams = 2  # x and the static q
    assert flops["dense"] == 6 * (d * v + d * d * (streams + 2) + 3 * d * sum(cfg.cms.hidden))
    assert flops["inner"] > 0 and flops["attention"] == 0
    without_cms = flops_per_token(make_cfg(HOPE, {"cms": {"enabled": False}}), seq_len=64)
    assert without_cms["inner"] < flops["inner"]
    assert flops["total"] == flops["dense"] + flops["inner"]
    assert count_params(cfg) == sum(int(np.prod(s)) for s in shapes_by_path(cfg).values())


def test_fit_diagnostics_are_means_over_every_stride_th_token():
    """model.memory.diagnostics_stride: the mixer's memory_loss_before and the CMS levels' cms_loss_before are the
    fits over tokens 0, n, 2n, … of the piece at the weights before it (recomputed here from the returned keys and
    values); the stride changes the diagnostics only, never the outputs."""
    stride, batch = 3, 2
    x = jax.random.normal(jax.random.key(1), (batch, SEQ, BASE["d_model"]), jnp.float32)
    sown, outputs = {}, {}
    for n in (stride, 1):
        typed = ModelConfig.from_config(make_cfg(HOPE, {"memory": {"diagnostics_stride": n}}))
        mixer = SelfModifyingMixer(typed, out_init_std=0.02, rngs=nnx.Rngs(0))
        cms = CMS(typed, out_init_std=0.02, rngs=nnx.Rngs(0))
        y, _, keys, values = mixer(x, None)
        z, _ = cms(y, keys, values, None)
        outputs[n] = (y, z)
        sown[n] = {
            **nnx.to_pure_dict(nnx.pop(mixer, nnx.Intermediate)),
            **nnx.to_pure_dict(nnx.pop(cms, nnx.Intermediate)),
        }
    np.testing.assert_array_equal(outputs[stride][1], outputs[1][1])

    # The reference reads the last pass's (stride 1) weights, keys and values: the same as the stride-3 pass's (same
    # seed, and the stride changes no output — asserted above).
    heads = typed.n_heads
    per_head = lambda a: a[:, ::stride].reshape(batch, -1, heads, a.shape[-1] // heads)
    memory = mixer.memories["memory"].value()
    read = jax.vmap(lambda w, a: fast_mlp.forward(w, a, residual=True, activation=typed.memory.activation), (0, 1), 1)
    k, v = per_head(keys), per_head(values)
    mixer_fit = 0.5 * jnp.mean(
        jnp.sum(jnp.square(jax.vmap(read, (None, 0))(memory, k) - jax.vmap(read, (None, 0))(memory, v)), -1)
    )
    level = cms.levels[0].weights()
    mlp = lambda a: swiglu(a[:, ::stride], level["w_gate"], level["w_up"], level["w_down"])
    cms_fit = 0.5 * jnp.mean(jnp.sum(jnp.square(mlp(keys) - mlp(values)), -1))
    (got_mixer,) = sown[stride]["memory_loss_before"]
    got_cms = sown[stride]["cms_loss_before"][0]
    np.testing.assert_allclose(got_mixer, mixer_fit, rtol=1e-5)
    np.testing.assert_allclose(got_cms, cms_fit, rtol=1e-5)
    assert abs(float(sown[1]["memory_loss_before"][0]) - float(got_mixer)) > 1e-6 * float(got_mixer)


def test_bad_diagnostics_stride_is_named():
    with pytest.raises(ValueError, match="model.memory.diagnostics_stride must be ≥ 1, got 0"):
        validate_model_config(make_cfg(HOPE, {"memory": {"diagnostics_stride": 0}}))


def dot_precisions(jaxpr) -> list:
    """The precision of every dot_general in a jaxpr and in the jaxprs nested in its equations (scans, checkpoints,
    custom VJPs, pjit)."""
    found = []
    for eqn in jaxpr.eqns:
        if eqn.primitive.name == "dot_general":
            found.append(eqn.params["precision"])
        for value in eqn.params.values():
            for sub in value if isinstance(value, tuple | list) else (value,):
                if isinstance(sub, jax.extend.core.ClosedJaxpr):
                    found += dot_precisions(sub.jaxpr)
                elif isinstance(sub, jax.extend.core.Jaxpr):
                    found += dot_precisions(sub)
    return found


@pytest.mark.parametrize("layers", [(HOPE,), (TITANS,)], ids=["hope", "titans_lmm"])
def test_inner_precision_reaches_every_inner_product_forward_and_backward(layers):
    """model.inner_precision sets the inner loops' products, the backward's too: the custom VJPs of the chunk solves
    are traced after the forward has returned, outside the LM's `inner_precision` block."""
    highest = (jax.lax.Precision.HIGHEST, jax.lax.Precision.HIGHEST)

    def precisions(name):
        model = build_model(make_cfg(*layers, {"inner_precision": name}), rngs=nnx.Rngs(0))
        graphdef, params = nnx.split(model)
        loss = lambda p: jnp.mean(nnx.merge(graphdef, p)(TOKENS)[0])
        # The model's other products follow JAX's default, recorded here as HIGH: neither of the inner values.
        with jax.default_matmul_precision("tensorfloat32"):
            return dot_precisions(jax.make_jaxpr(jax.value_and_grad(loss))(params).jaxpr)

    exact, fast = precisions("highest"), precisions("default")
    assert len(exact) == len(fast) and exact.count(highest) > 20
    assert highest not in fast
    assert fast.count((jax.lax.Precision.DEFAULT, jax.lax.Precision.DEFAULT)) == exact.count(highest)


def test_bad_inner_precision_is_named():
    with pytest.raises(ValueError, match="model.inner_precision = 'tf32'; known: highest, high, default"):
        validate_model_config(make_cfg(HOPE, {"inner_precision": "tf32"}))


@pytest.mark.parametrize("split", [None, 5], ids=["whole", "pieces"])
def test_cms_levels_run_the_per_token_reference(split):
    """What the model's sequential CMS runs (memory/cms.local_chunk under driver.run_chunked, fed whole or in pieces
    that end inside a chunk) is the per-token reference (memory/cms_local_reference) level after level."""
    cfg = make_cfg(HOPE, {"cms": {"periods": (4, 8), "objectives": ("local", "local"), "hidden": (16, 16)}})
    cfg.cms.inner_lr = 0.5
    cms = CMS(ModelConfig.from_config(cfg), out_init_std=0.3, rngs=nnx.Rngs(5))
    batch, length, d = 2, 13, cfg.d_model
    x, keys, values = jax.random.normal(jax.random.key(6), (3, batch, length, d))
    if split is None:
        out, _ = cms(x, keys, values, None)
    else:
        first, state = cms(x[:, :split], keys[:, :split], values[:, :split], None)
        rest, _ = cms(x[:, split:], keys[:, split:], values[:, split:], state)
        out = jnp.concatenate([first, rest], axis=1)
    h = x
    for i, level in enumerate(cms.levels):
        y, end = cms_local_reference(
            cms.initial_fast(i, batch), level.norm(h), keys, values, inner_lr=cms.inner_lr,
            inner_decay=cms.inner_decay, period=cms.periods[i], dgd=cms.dgd, normalized_step=cms.normalized_step,
        )  # fmt: skip
        # the level learned something, so the agreement covers its updates
        assert float(jnp.abs(end["w_down"] - cms.initial_fast(i, batch)["w_down"]).max()) > 1e-4
        h = h + y
    np.testing.assert_allclose(out, h, rtol=1e-5, atol=1e-5)
