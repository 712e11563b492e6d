"""model.memory.kernel='pallas': the self-modifying memories' chunk scan as Pallas (Triton backend) kernels, run here in
interpret mode: M_memory alone (memory level), and every memory in one kernel (the mixer with equal chunk sizes).

The kernels must equal the XLA path (the model's own code) in outputs, end state and gradients of an outer loss, at
float32 tolerance: chunk sizes 16 and 64, head dims 64 and 128, partial last chunks, every switch M_memory's update
reads, and, through the mixer, the generator ablations (adaptive q, no weight decay) and streaming. The Triton lowering
itself (every primitive has a Triton rule) is checked by exporting the kernel for CUDA, which needs no GPU.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from hope_jax.kernels import selfmod
from hope_jax.kernels.selfmod_joint import joint_batch
from hope_jax.kernels.selfmod_memory import KernelSpec, memory_scan, reference_scan
from hope_jax.memory.self_modifying import SelfModConfig, generator_names, static_stream_names
from hope_jax.models import apply_overrides, default_model_config
from hope_jax.models.config import validate_model_config
from hope_jax.models.self_modifying import SelfModifyingMixer
from hope_jax.models.typed_config import ModelConfig

TOL = dict(rtol=1e-5, atol=1e-5)  # float32


def inputs(cfg: SelfModConfig, *, n: int, length: int, dim: int, seed: int = 0, decay: bool = True):
    """Per-token (q, k, v, η, log α) as the generators make them (unit q, k, v; η in (0, 1)) and a random state."""
    keys = jax.random.split(jax.random.key(seed), 8)
    unit = lambda key: jax.random.normal(key, (n, length, dim)) / jnp.sqrt(dim) * 1.0
    l2 = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    eta = jax.nn.sigmoid(jax.random.normal(keys[3], (n, length)))
    log_alpha = jax.nn.log_sigmoid(4.0 + jax.random.normal(keys[4], (n, length)))
    per_token = (l2(unit(keys[0])), l2(unit(keys[1])), l2(unit(keys[2])), eta, log_alpha if decay else 0 * eta)
    if cfg.memory_depth == 1:
        weights = {"w": jax.random.normal(keys[5], (n, dim, dim)) / jnp.sqrt(dim)}
    else:
        weights = {
            "w_in": jax.random.normal(keys[5], (n, dim, dim)) / jnp.sqrt(dim),
            "w_out": jax.random.normal(keys[6], (n, dim, dim)) * 0.5 / jnp.sqrt(dim),
        }
    momentum = {}
    if cfg.momentum:
        momentum = jax.tree.map(lambda a: 0.1 * jax.random.normal(keys[7], a.shape), weights)
    return per_token, weights, momentum


def assert_trees_close(actual, expected, **tol):
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        np.testing.assert_allclose(np.asarray(a), np.asarray(b), **(tol or TOL))


def assert_gradients_close(actual, expected):
    """Float32 tolerance relative to each gradient's scale: 1e-5·max|g| + 1e-5·|g|. The kernel's forward differs from
    XLA's by float32 rounding (its sums run in another order: ~1e-6 on outputs of ~6, a few ulps), the outer loss turns
    that into its cotangents, and one gradient entry sums tens of such terms; an entry near zero then carries an
    absolute error of ~1e-5 of the array's scale (measured 1.8e-5 on an array of max 2.7), which an elementwise
    relative tolerance cannot express."""
    for a, b in zip(jax.tree.leaves(actual), jax.tree.leaves(expected), strict=True):
        b = np.asarray(b)
        np.testing.assert_allclose(np.asarray(a), b, rtol=1e-5, atol=1e-5 * float(np.max(np.abs(b))))


# ---- the memory scan against the XLA reference --------------------------------------------------------------------

SHAPES = {"chunk16_dim64": (16, 64, 40), "chunk64_dim128": (64, 128, 80)}  # (C, d, T): T % C ≠ 0, a partial chunk


@pytest.fixture(scope="module", params=sorted(SHAPES))
def shaped(request):
    chunk, dim, length = SHAPES[request.param]
    cfg = SelfModConfig(chunk_size=chunk, aux_chunk_size=chunk)
    args = inputs(cfg, n=2, length=length, dim=dim)
    spec = KernelSpec(cfg, length=length, interpret=True)
    return cfg, spec, args


def test_outputs_and_end_state_match_xla(shaped):
    cfg, spec, args = shaped
    assert_trees_close(
        jax.jit(lambda *a: memory_scan(spec, *a))(*args), jax.jit(lambda *a: reference_scan(cfg, *a))(*args)
    )


def outer_grad(scan):
    """Gradients of an outer loss of the outputs and the end state, with respect to every input and the start state."""

    def loss(per_token, weights, momentum):
        y, w_end, s_end = scan(per_token, weights, momentum)
        return jnp.sum(jnp.sin(y)) + sum(jnp.sum(jnp.cos(a)) for a in jax.tree.leaves((w_end, s_end)))

    return jax.jit(jax.grad(loss, argnums=(0, 1, 2)))


# Every switch M_memory's own update reads (the generator switches are tested through the mixer below); no weight
# decay reaches M_memory as log α = 0.
ABLATIONS = {  # each switch in one case; combined where they touch different parts of the update
    "no_momentum_matrix_memory_value_target_truncated": dict(
        momentum=False, memory_depth=1, memory_target="value", truncate_bptt=True
    ),
    "no_dgd_no_weight_decay_plain_step": dict(dgd=False, normalized_step=False),
    "dgd_first_layer_gram_bound": dict(dgd_layers="first", step_bound="gram", momentum_decay=0.5),
    "gated_delta": dict(gated_delta=True),
}


@pytest.mark.parametrize("name", sorted(ABLATIONS))
def test_switches_match_xla(name):
    cfg = SelfModConfig(chunk_size=16, **ABLATIONS[name])
    args = inputs(cfg, n=1, length=24, dim=16, decay="no_weight_decay" not in name)
    # checkpoint_group 2: the backward kernel replays chunk 0 from the group's checkpoint to get chunk 1's state
    spec = KernelSpec(cfg, length=24, interpret=True, checkpoint_group=2)
    assert_trees_close(memory_scan(spec, *args), jax.jit(lambda *a: reference_scan(cfg, *a))(*args))
    if not cfg.momentum:  # a one-matrix state, truncate_bptt and a partial last chunk in the backward kernel
        kernel = outer_grad(lambda *a: memory_scan(spec, *a))(*args)
        assert_gradients_close(kernel, outer_grad(lambda *a: reference_scan(cfg, *a))(*args))


def test_bfloat16_products_stay_near_the_float32_path():
    """dot_dtype bfloat16 (model.compute_dtype bfloat16): feature × weight products in bf16, state, coefficients and
    the solve in float32. Not the float32 path, so compared at bfloat16's resolution (8 bits of mantissa)."""
    cfg = SelfModConfig(chunk_size=16)
    args = inputs(cfg, n=1, length=32, dim=16)
    bf16 = memory_scan(KernelSpec(cfg, length=32, dot_dtype="bfloat16", interpret=True), *args)
    assert_trees_close(bf16, jax.jit(lambda *a: reference_scan(cfg, *a))(*args), rtol=3e-2, atol=3e-2)


@pytest.mark.parametrize("dot_dtype", ["float32", "bfloat16"])
def test_kernels_lower_to_triton_for_cuda(dot_dtype):
    """Exporting a gradient for CUDA runs the Pallas Triton lowering of the forward and backward kernels on this CPU:
    every primitive in them has a Triton rule (no slicing of register tensors, 2-D products of at least 16, operands
    of one type), with checkpoint groups of 1 and 2 chunks. Compiling the Triton IR to a GPU binary needs a GPU."""
    cfg = SelfModConfig(chunk_size=16)
    args = inputs(cfg, n=2, length=40, dim=64)
    spec = KernelSpec(cfg, length=40, dot_dtype=dot_dtype, checkpoint_group=1 if dot_dtype == "float32" else 2)
    exported = jax.export.export(
        jax.jit(jax.grad(lambda *a: jnp.sum(jnp.sin(memory_scan(spec, *a)[0])), argnums=(0, 1, 2))),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(*args)
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 2  # the forward and the backward kernel


def test_joint_kernels_lower_to_triton_for_cuda():
    """The same for the generators + M_memory kernels (adaptive q, weight decay: every generator)."""
    cfg = SelfModConfig(adaptive_q=True, normalize_values=True)
    batch, heads, length, dim = 1, 2, 40, 64
    n = len(generator_names(cfg)) + 1
    streams = {name: jnp.ones((batch, heads, length, dim)) for name in static_stream_names(cfg)}
    weights = {m: jnp.ones((batch, heads, n, dim, dim)) / dim for m in ("w_in", "w_out")}
    reduction = {name: jnp.ones((heads, dim)) for name in ("eta_w", "alpha_w")}
    reduction.update(eta_b=jnp.zeros((heads,)), alpha_b=jnp.zeros((heads,)))
    spec = KernelSpec(cfg, length, "bfloat16", kind="joint")
    loss = lambda *a: jnp.sum(joint_batch(spec, *a)[0][0])
    exported = jax.export.export(
        jax.jit(jax.grad(loss, argnums=(0, 1, 2))),
        platforms=["cuda"],
        disabled_checks=[jax.export.DisabledSafetyCheck.custom_call("__gpu$xla.gpu.triton")],
    )(streams, {"w": weights, "s": weights}, reduction)
    assert exported.mlir_module().count("__gpu$xla.gpu.triton") == 2


# ---- the switch and the mixer --------------------------------------------------------------------------------------


def mixer_cfg(kernel: str, **memory):
    overrides = dict(name="hope", d_model=32, n_heads=2, memory={"chunk_size": 16, "aux_chunk_size": 16, **memory})
    cfg = apply_overrides(default_model_config(), overrides)
    cfg.memory.kernel = kernel
    return cfg


def test_default_is_xla_and_auto_is_xla_off_a_gpu():
    assert default_model_config().memory.kernel == "xla"
    assert selfmod.resolve("auto") == ("pallas" if jax.default_backend() == "gpu" else "xla")


@pytest.mark.parametrize(
    ("memory", "message"),
    [
        ({"kernel": "cuda"}, "model.memory.kernel = 'cuda'; known: xla, pallas, auto"),
        (
            {"kernel": "pallas", "chunk_size": 8},
            "model.memory.kernel='pallas' does not support model.memory.chunk_size=8",
        ),
        ({"kernel": "pallas", "hidden_factor": 3}, "does not support model.memory.hidden_factor=3"),
        ({"kernel": "pallas", "activation": "gelu"}, "does not support model.memory.activation='gelu'"),
    ],
)
def test_unsupported_settings_name_the_key(memory, message):
    cfg = mixer_cfg("xla")
    cfg.memory.update(memory)
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        validate_model_config(cfg)


def test_head_dim_below_16_names_the_keys():
    cfg = mixer_cfg("pallas")
    cfg.n_heads = 4
    with pytest.raises(ValueError, match=r"head_dim = model.d_model / model.n_heads = 8"):
        validate_model_config(cfg)


def mixer_run(cfg, x, pieces=None, grad=False):
    """(outputs, end state[, parameter gradients of an outer loss]) of the mixer over x [B, T, d], in `pieces` (state
    carried from piece to piece) or whole."""
    model = SelfModifyingMixer(ModelConfig.from_config(cfg), out_init_std=0.02, rngs=nnx.Rngs(0))
    graph, params, rest = nnx.split(model, nnx.Param, ...)
    bounds = np.cumsum([0, *(pieces or [x.shape[1]])])

    def loss(params, x):
        mixer, state, outs = nnx.merge(graph, params, rest), None, []
        for start, stop in zip(bounds[:-1], bounds[1:], strict=True):
            out, state, _, _ = mixer(x[:, start:stop], state)
            outs.append(out)
        out = jnp.concatenate(outs, axis=1)
        end = state["chunks"]["fast"]
        return jnp.sum(out * out) + sum(jnp.sum(jnp.sin(a)) for a in jax.tree.leaves(end)), (out, state)

    if not grad:
        return jax.jit(loss)(params, x)[1]
    (_, (out, state)), grads = jax.jit(jax.value_and_grad(loss, has_aux=True))(params, x)
    return out, state, grads


X = jax.random.normal(jax.random.key(1), (1, 40, 32))  # two whole periods of 16 and a partial one


def test_mixer_outputs_state_and_gradients_match_xla():
    """Every parameter's gradient of an outer loss through the default mixer: the joint forward and backward kernels,
    including the η / α reductions' gradients (the backward kernel's partial last chunk: test_switches_match_xla)."""
    xla = mixer_run(mixer_cfg("xla"), X[:, :16], grad=True)
    pallas = mixer_run(mixer_cfg("pallas"), X[:, :16], grad=True)
    assert_trees_close(pallas[:2], xla[:2])
    assert_gradients_close(pallas[2], xla[2])


@pytest.mark.parametrize(
    "memory",
    [{"adaptive_q": True, "weight_decay": False}, {"aux_chunk_size": 8}],
    ids=["adaptive_q_no_weight_decay", "unequal_chunk_sizes"],
)
def test_generator_switches_match_xla(memory):
    """adaptive q (M_q makes the queries) and no weight decay (no M_α): the generators' switches in the joint kernel,
    with a partial period (the carried pending tokens); unequal chunk sizes: XLA generators + the M_memory kernel."""
    assert_trees_close(mixer_run(mixer_cfg("pallas", **memory), X), mixer_run(mixer_cfg("xla", **memory), X))


def test_streaming_matches_xla():
    """State carried across pieces (a piece ending inside a chunk, then one spanning the rest)."""
    pieces = [20, 20]
    assert_trees_close(mixer_run(mixer_cfg("pallas"), X, pieces), mixer_run(mixer_cfg("xla"), X, pieces))
