"""Muon and M3 read every weight as the matrix it is (DESIGN D7): which leaves of every registered model reach
Newton–Schulz and as which [stack, input features, output features] matrices, which fall back to AdamW, and that the
update of a per-head kernel is Newton–Schulz of the whole matrix (not of each head's slice)."""

import re

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from jax.sharding import PartitionSpec as P

import hope_jax  # noqa: F401  (switches off eager sharding)
from hope_jax.models import apply_overrides, default_model_config, known_models
from hope_jax.optim import (
    MatrixLayout,
    build_optimizer,
    default_optim_config,
    layout_from_axis_names,
    level_config,
    matrix_layouts,
    newton_schulz,
    path_string,
)
from hope_jax.optim.muon import MuonState
from hope_jax.train.state import create_train_state, model_spec
from hope_jax.train.trainer import build_trainer
from tests.model_variants import MODEL_VARIANTS
from tests.test_main_e2e import tiny_smoke_config

# tests/test_models.py's tiny base: d_model 32, 2 heads of 16, MLP hidden 64 (CMS hidden 32, memory hidden 16).
TINY = dict(vocab_size=128, d_model=32, n_layers=2, n_heads=2, mlp_hidden=64, max_seq_len=32)
LR, EPS, COEFFS = 0.1, 1e-8, (3.4445, -4.7750, 2.0315)

# Leaves that may take the AdamW fallback: embeddings and the LM head, norm scales, biases, per-head gate vectors
# and the CMS aggregation weights, depthwise conv taps, persistent tokens (learned vectors).
FALLBACK = re.compile(
    r"embed/(table|head)|.*norm.*/scale|.*/(eta|alpha)_[wb]|.*/gates/bias|.*/cms/agg|.*/conv/kernel"
    r"|.*/persistent(_k|_v)?"
)
# Every leaf that reaches Newton–Schulz, with its [stack, input features, output features] shape.
MATRICES = [
    (r".*/(wq|wk|wv)/kernel", (1, 32, 32)),  # [d, heads, head_dim]: one d x (heads*head_dim) matrix
    (r".*/(wo|attn_out|w_out)/kernel", (1, 32, 32)),  # [heads, head_dim, d]
    (r".*/w_gate/kernel", (1, 32, 32)),
    (r".*/combine/out/kernel", (1, 32, 32)),
    (r".*/(attn_qkv|write_qkv|qkv/proj|write/proj)/kernel", (3, 32, 32)),  # fused q, k, v: three matrices
    (r".*/query/proj/kernel", (1, 32, 32)),
    (r".*/mixer/w_in/kernel", (2, 32, 32)),  # the self-modifying mixer's two fused input streams
    (r".*/gates/proj/kernel", (3, 32, 2)),  # three gate kinds, one column per head
    (r".*/mlp/w_(gate|up)", (1, 32, 64)),
    (r".*/mlp/w_down", (1, 64, 32)),
    (r".*/cms/levels/\d+/w_(gate|up|down)", (1, 32, 32)),
    (r".*/(memories/\w+|weights)/w_(in|out)", (2, 16, 16)),  # per-head fast-weight initial states
    (r".*/weights/w", (2, 16, 16)),
]

VARIANTS = [
    pytest.param({**TINY, "name": name, **overrides}, id=f"{name}-{variant}")
    for name in known_models()
    for variant, overrides in MODEL_VARIANTS.get(name, {}).items()
]


def expected_matrix_shape(path: str):
    shapes = [shape for pattern, shape in MATRICES if re.fullmatch(pattern, path)]
    return shapes[0] if shapes else None


@pytest.mark.parametrize("overrides", VARIANTS)
def test_which_leaves_reach_newton_schulz(overrides):
    spec = model_spec(apply_overrides(default_model_config(), overrides))
    layouts = matrix_layouts(spec.abstract_params, spec.logical_specs)
    flat = jax.tree_util.tree_flatten_with_path(spec.abstract_params)[0]
    shapes = {path_string(path): leaf.shape for path, leaf in flat}
    orthogonalised = {
        path: jax.eval_shape(layout.to_matrices, jax.ShapeDtypeStruct(shapes[path], jnp.float32)).shape
        for path, layout in layouts.items()
        if layout is not None
    }
    fallbacks = sorted(path for path, layout in layouts.items() if layout is None)
    assert [path for path in fallbacks if not FALLBACK.fullmatch(path)] == [], "weights that fall back to AdamW"
    assert {path: shape for path, shape in orthogonalised.items() if shape != expected_matrix_shape(path)} == {}
    # The point of the layout: per-head projections are orthogonalised, not just the 2-D MLP kernels.
    assert any(len(shapes[path]) > 2 for path in orthogonalised)


def _muon_or_m3(kind, **level_overrides):
    cfg = default_optim_config()
    with cfg.unlocked():
        cfg.levels.default = level_config(
            kind=kind, lr=LR, schedule="constant", weight_decay=0.0, eps=EPS, **level_overrides
        )
    cfg.clip_norm = 0.0
    return cfg


def first_update(cfg, grad, names):
    params = {"w": jnp.zeros_like(grad)}
    tx, _ = build_optimizer(cfg, params, tokens_per_step=1, total_steps=10, axis_names={"w": P(*names)})
    updates, _ = tx.update({"w": grad}, tx.init(params), params)
    return np.asarray(updates["w"])


def ns(matrix):
    return np.asarray(newton_schulz(jnp.asarray(matrix), steps=5, coeffs=COEFFS))


def _grad(shape, seed=0):
    return jnp.asarray(np.random.default_rng(seed).normal(size=shape), jnp.float32)


def _assert_differs(got, per_slice):
    """The alternative reading must give a visibly different update, so the equality checks can fail."""
    assert np.abs(got - per_slice).max() > 1e-2 * np.abs(got).max()


def test_per_head_kernels_are_one_matrix():
    d, heads, head_dim = 8, 2, 8
    grad_q = _grad((d, heads, head_dim))
    got = first_update(_muon_or_m3("muon"), grad_q, ("embed", "heads", "head_dim"))
    scale = -LR * 0.2 * np.sqrt(heads * head_dim)  # rms scaling 0.2 sqrt(max(m, n)); NS is scale-invariant
    want = scale * ns(grad_q.reshape(d, heads * head_dim)).reshape(d, heads, head_dim)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    per_head = np.stack([scale * ns(grad_q[:, h]) for h in range(heads)], axis=1)
    _assert_differs(got, per_head)

    grad_o = _grad((heads, head_dim, d), seed=1)
    got = first_update(_muon_or_m3("muon"), grad_o, ("heads", "head_dim", "embed"))
    want = scale * ns(grad_o.reshape(heads * head_dim, d)).reshape(heads, head_dim, d)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_stacks_are_orthogonalised_per_matrix():
    stack, d_in, d_out = 3, 4, 6
    grad = _grad((stack, d_in, d_out), seed=2)
    got = first_update(_muon_or_m3("muon"), grad, ("heads", "head_dim", "memory_hidden"))
    scale = -LR * 0.2 * np.sqrt(d_out)
    want = np.stack([scale * ns(grad[s]) for s in range(stack)])
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)
    _assert_differs(got, scale * ns(grad.reshape(stack * d_in, d_out)).reshape(grad.shape))

    # A fused [d, streams, heads, head_dim] projection: one d x (heads*head_dim) matrix per stream.
    fused = _grad((8, 3, 2, 4), seed=3)
    got = first_update(_muon_or_m3("muon"), fused, ("embed", None, "heads", "head_dim"))
    scale = -LR * 0.2 * np.sqrt(8)
    want = np.stack([scale * ns(fused[:, s].reshape(8, 8)).reshape(8, 2, 4) for s in range(3)], axis=1)
    np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_spectral_scaling_reads_fan_in_and_fan_out_from_the_layout():
    """sqrt(max(1, fan_out / fan_in)): 2 for the q projection [4 -> 2 x 8], 1 for the output projection back."""
    cfg = _muon_or_m3("muon", muon_scaling="spectral")
    grad_q, grad_o = _grad((4, 2, 8), seed=4), _grad((2, 8, 4), seed=5)
    got_q = first_update(cfg, grad_q, ("embed", "heads", "head_dim"))
    np.testing.assert_allclose(got_q, -LR * 2.0 * ns(grad_q.reshape(4, 16)).reshape(4, 2, 8), rtol=1e-5, atol=1e-6)
    got_o = first_update(cfg, grad_o, ("heads", "head_dim", "embed"))
    np.testing.assert_allclose(got_o, -LR * ns(grad_o.reshape(16, 4)).reshape(2, 8, 4), rtol=1e-5, atol=1e-6)


def test_m3_uses_the_same_matrices():
    """M3's first step (paper mode): -lr NS(β1 g) / (sqrt(β2 g²) + ε), NS over the whole d x (heads*head_dim)."""
    beta1, beta2 = 0.5, 0.75
    cfg = _muon_or_m3("m3", m3_beta1=beta1, m3_beta2=beta2, m3_eps=EPS)
    grad = _grad((8, 2, 8), seed=6)
    got = first_update(cfg, grad, ("embed", "heads", "head_dim"))
    g = np.asarray(grad)
    want = -LR * ns(beta1 * g.reshape(8, 16)).reshape(g.shape) / (np.sqrt(beta2 * g * g) + EPS)
    np.testing.assert_allclose(got, want, rtol=2e-5, atol=2e-6)


@pytest.mark.parametrize(
    ("names", "layout"),
    [
        (("embed", "mlp"), MatrixLayout(stack=(), inputs=(0,), outputs=(1,))),
        (("mlp", "embed"), MatrixLayout(stack=(), inputs=(0,), outputs=(1,))),
        (("heads", "head_dim", "embed"), MatrixLayout(stack=(), inputs=(0, 1), outputs=(2,))),
        (("embed", None, "heads", "head_dim"), MatrixLayout(stack=(1,), inputs=(0,), outputs=(2, 3))),
        (("heads", "head_dim", "kv"), MatrixLayout(stack=(0,), inputs=(1,), outputs=(2,))),
        (("layers", "embed", "mlp"), MatrixLayout(stack=(0,), inputs=(1,), outputs=(2,))),
        (("vocab", "embed"), None),
        (("embed", "vocab"), None),
        (("conv_window", None), None),
        (("heads", "head_dim"), None),
        ((None, "heads", "head_dim"), None),
        (("embed",), None),
    ],
)
def test_layout_from_axis_names(names, layout):
    assert layout_from_axis_names(names) == layout


def test_ambiguous_axis_names_are_refused_by_path():
    params = {"odd": jnp.zeros((2, 3, 4)), "ok": jnp.zeros((2, 3))}
    names = {"odd": P("mlp", "head_dim", "kv"), "ok": P("embed", "mlp")}
    with pytest.raises(ValueError, match=r"odd: logical axes \('mlp', 'head_dim', 'kv'\): cannot tell"):
        matrix_layouts(params, names)
    with pytest.raises(ValueError, match=r"odd: 2 logical axis names"):
        matrix_layouts(params, {"odd": P("embed", "mlp"), "ok": P("embed", "mlp")})


def test_trainer_orthogonalises_per_head_kernels_on_a_sharded_mesh():
    """build_trainer hands the model's axis names to the optimiser: the attention kernels carry Muon momentum, and a
    step on the 2 x 2 x 2 mesh (heads split over 'tensor') changes them by a finite amount."""
    config = tiny_smoke_config()
    config.model.n_layers = 1
    config.optim.levels.default.kind = "muon"
    config.optim.levels.default.warmup_steps = 0  # warmup starts at lr 0: the first step would move nothing
    trainer = build_trainer(config)
    is_muon = lambda node: isinstance(node, MuonState)
    [muon] = [s for s in jax.tree.leaves(trainer.layout.abstract.opt_state, is_leaf=is_muon) if is_muon(s)]
    attention = muon.momentum["blocks"][0]["attn"]
    assert {name: attention[name]["kernel"].ndim for name in ("wq", "wk", "wv", "wo")} == dict.fromkeys(
        ("wq", "wk", "wv", "wo"), 3
    )
    state = create_train_state(config.model, trainer.tx, trainer.layout, seed=0)
    before = jax.device_get(state.params["blocks"][0]["attn"])  # the step donates the state
    tokens = jnp.zeros(trainer.batch_shape, jnp.int32)
    batch = {"inputs": tokens, "targets": tokens + 1, "mask": jnp.ones(trainer.batch_shape, jnp.float32)}
    new_state, metrics = trainer.step(state, jax.device_put(batch, trainer.batch_sharding))
    assert np.isfinite(float(metrics["loss"]))
    moved = optax.tree.norm(jax.tree.map(jnp.subtract, jax.device_get(new_state.params["blocks"][0]["attn"]), before))
    assert np.isfinite(float(moved)) and float(moved) > 0
