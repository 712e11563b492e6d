"""The GPU-path options, checked on CPU: attention implementations, optimiser-state dtype, matmul precision, device
choice, the W&B writer (a fake `wandb` module, no network) and checkpoint directories.

No GPU is needed: the cuDNN path is checked by handing its exact arguments to jax.nn.dot_product_attention's xla
implementation (same mask semantics), and by the clear error it raises where cuDNN cannot run.
"""

import logging
import os
import subprocess
import sys
import types

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx

from configs import smoke_transformer
from hope_jax.layers import attention as attention_mod
from hope_jax.layers.attention import Attention, AttentionImplError, attend, attention_mask, masked_attention
from hope_jax.models import apply_overrides, build_model, default_model_config
from hope_jax.optim import build_optimizer, default_optim_config
from hope_jax.train.checkpoint import checkpoint_directory
from hope_jax.train.metrics import MetricsLogger, validate_logging_config
from hope_jax.visible_devices import apply_visible_devices, parse_visible_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
RNG = np.random.default_rng(7)


def qkv(batch=2, queries=11, keys=11, heads=2, head_dim=8, dtype=jnp.float32):
    shape = lambda length: (batch, length, heads, head_dim)
    return tuple(jnp.asarray(RNG.normal(size=shape(n)), dtype) for n in (queries, keys, keys))


# --- attention: the arguments handed to cuDNN mean our mask ---------------------------------------------------------


@pytest.mark.parametrize("window", [0, 1, 3, 11, 40])
def test_fused_causal_window_arguments_equal_our_mask(window):
    q, k, v = qkv()
    positions = jnp.arange(11)
    ours = jax.jit(masked_attention)(q, k, v, attention_mask(positions, positions, window))
    fused = jax.jit(attention_mod.fused_attention, static_argnums=(4, 5))(q, k, v, None, window, "xla")
    np.testing.assert_allclose(fused, ours, rtol=1e-6, atol=1e-6)


def test_fused_explicit_masks_equal_ours():
    """Persistent prefix (every query sees it) and a KV cache with empty front slots (decoding mid-sequence)."""
    q, k, v = qkv(queries=3, keys=2 + 6 + 3)
    position, slots, window = 4, 6, 5
    k_pos = jnp.concatenate([position - slots + jnp.arange(slots), position + jnp.arange(3)])
    mask = attention_mask(position + jnp.arange(3), k_pos, window)
    mask = jnp.concatenate([jnp.ones((3, 2), bool), mask], axis=1)
    assert not bool(mask[:, 2:4].any())  # slots holding positions -2, -1 are empty
    fused = jax.jit(attention_mod.fused_attention, static_argnums=(4, 5))(q, k, v, mask, window, "xla")
    np.testing.assert_allclose(fused, jax.jit(masked_attention)(q, k, v, mask), atol=1e-6)


@pytest.fixture
def cudnn_as_xla(monkeypatch):
    """Pretend cuDNN can run, and let the 'cudnn' path call jax's xla implementation with the same arguments."""
    monkeypatch.setattr(attention_mod, "cudnn_unsupported_reason", lambda dtype, head_dim: None)
    monkeypatch.setattr(attention_mod, "FUSED_IMPLEMENTATION", "xla")


@pytest.mark.parametrize("window,n_persistent", [(4, 0), (3, 2)])
def test_attention_layer_cudnn_path_equals_xla_whole_and_pieces(cudnn_as_xla, window, n_persistent):
    layers = {
        impl: Attention(
            16,
            2,
            8,
            window=window,
            n_persistent=n_persistent,
            max_len=13,
            rope_theta=10_000.0,
            init_std=0.3,
            out_init_std=0.3,
            dtype=jnp.float32,
            rngs=nnx.Rngs(0),
            impl=impl,
        )
        for impl in ("xla", "cudnn")
    }
    x = jnp.asarray(RNG.normal(size=(2, 13, 16)), jnp.float32)

    def whole_and_pieces(layer, x):
        whole, _ = layer(x, jnp.zeros((), jnp.int32))
        cache, position, pieces = layer.init_cache(2), jnp.zeros((), jnp.int32), []
        for start, stop in [(0, 5), (5, 6), (6, 13)]:  # pieces and a one-token decode step with the cache
            y, cache = layer(x[:, start:stop], position, cache)
            position, pieces = position + (stop - start), pieces + [y]
        return whole, jnp.concatenate(pieces, axis=1)

    outputs = {impl: nnx.jit(whole_and_pieces)(layer, x) for impl, layer in layers.items()}
    for got, want in zip(outputs["cudnn"], outputs["xla"]):
        np.testing.assert_allclose(got, want, rtol=1e-5, atol=1e-6)


def test_cudnn_on_cpu_fails_naming_the_key_and_auto_falls_back(caplog):
    q, k, v = qkv(dtype=jnp.bfloat16)
    with pytest.raises(AttentionImplError, match=r"model.attention_impl='cudnn' cannot run here: the JAX backend is"):
        attend(q, k, v, impl="cudnn")
    attention_mod._reported.clear()
    with caplog.at_level(logging.WARNING):
        auto = attend(q, k, v, impl="auto", window=3)
    assert "model.attention_impl='auto': xla attention, because the JAX backend is 'cpu'" in caplog.text
    np.testing.assert_array_equal(auto, attend(q, k, v, impl="xla", window=3))
    with pytest.raises(AttentionImplError, match="known: xla, cudnn, auto"):
        attend(q, k, v, impl="flash")


def test_model_config_checks_and_cpu_model_behaviour():
    tiny = dict(vocab_size=64, d_model=32, n_layers=1, n_heads=2, mlp_hidden=64, max_seq_len=16)
    with pytest.raises(ValueError, match="model.attention_impl='cudnn' needs model.compute_dtype='bfloat16'"):
        build_model(apply_overrides(default_model_config(), {**tiny, "attention_impl": "cudnn"}), rngs=nnx.Rngs(0))
    tokens = jnp.asarray(RNG.integers(0, 64, size=(2, 8)), jnp.int32)
    logits = {}
    for impl in ("xla", "auto", "cudnn"):
        cfg = apply_overrides(default_model_config(), {**tiny, "attention_impl": impl, "compute_dtype": "bfloat16"})
        model = build_model(cfg, rngs=nnx.Rngs(0))
        forward = nnx.jit(lambda model, tokens: model(tokens)[0])
        if impl == "cudnn":
            with pytest.raises(AttentionImplError, match="model.attention_impl='cudnn' cannot run here"):
                forward(model, tokens)
        else:
            logits[impl] = forward(model, tokens)
    np.testing.assert_array_equal(logits["auto"], logits["xla"])


def test_cudnn_reason_on_gpu_like_backends(monkeypatch):
    """The static checks that run before cuDNN is asked: dtype and head_dim (as jax's own cuDNN checks)."""
    monkeypatch.setattr(attention_mod.jax, "default_backend", lambda: "gpu")
    device = types.SimpleNamespace(compute_capability="8.0")
    monkeypatch.setattr(attention_mod.jax, "devices", lambda: [device])
    assert "float32" in attention_mod.cudnn_unsupported_reason(jnp.float32, 64)
    assert attention_mod.cudnn_unsupported_reason(jnp.bfloat16, 128) is None
    assert "≤ 128" in attention_mod.cudnn_unsupported_reason(jnp.bfloat16, 256)
    device.compute_capability = "9.0"
    assert attention_mod.cudnn_unsupported_reason(jnp.bfloat16, 256) is None
    assert "multiple of 8" in attention_mod.cudnn_unsupported_reason(jnp.bfloat16, 36)


# --- precision: optimiser-state dtype ---------------------------------------------------------------------------------


@pytest.mark.parametrize("kind", ["adamw", "muon"])
def test_mu_dtype_bfloat16_first_moment(kind):
    params = {"w": jnp.ones((4, 3)), "norm": jnp.ones((3,))}
    grads = jax.tree.map(lambda p: 0.1 * p, params)
    states = {}
    for mu_dtype in ("float32", "bfloat16"):
        cfg = default_optim_config()
        cfg.levels.default.kind = kind
        cfg.levels.default.mu_dtype = mu_dtype
        tx, _ = build_optimizer(cfg, params, tokens_per_step=1, total_steps=10)
        state = tx.init(params)
        updates, _ = tx.update(grads, state, params)
        states[mu_dtype] = (state, updates)
    adam_states = [s for s in jax.tree.leaves(states["bfloat16"][0], is_leaf=lambda s: hasattr(s, "mu"))]
    adam_states = [s for s in adam_states if isinstance(s, optax.ScaleByAdamState)]
    assert adam_states, "no Adam state found"
    for adam in adam_states:
        assert {leaf.dtype for leaf in jax.tree.leaves(adam.mu)} == {jnp.dtype(jnp.bfloat16)}
        assert {leaf.dtype for leaf in jax.tree.leaves(adam.nu)} == {jnp.dtype(jnp.float32)}
    for got, want in zip(jax.tree.leaves(states["bfloat16"][1]), jax.tree.leaves(states["float32"][1])):
        np.testing.assert_allclose(got, want, rtol=1e-2)
    cfg = default_optim_config()
    cfg.levels.default.mu_dtype = "float16"
    with pytest.raises(ValueError, match=r"optim.levels.default.mu_dtype = 'float16'"):
        build_optimizer(cfg, params, tokens_per_step=1, total_steps=10)


# --- device choice ----------------------------------------------------------------------------------------------------


def test_parse_visible_devices():
    assert parse_visible_devices("all") is None
    assert parse_visible_devices("") is None
    assert parse_visible_devices("1") == (1,)
    assert parse_visible_devices(" 2, 0 ") == (2, 0)
    for bad, message in [("1,x", "'x' is not a GPU ordinal"), ("-1", "is not a GPU ordinal"), ("1,1", "twice")]:
        with pytest.raises(ValueError, match=message):
            parse_visible_devices(bad)


def test_visible_devices_set_before_backend_and_refused_after():
    script = (
        "from hope_jax.visible_devices import apply_visible_devices, describe_devices\n"
        "ordinals = apply_visible_devices('1,0')\n"
        "import jax\n"
        "print(jax.config.values['jax_cuda_visible_devices'])\n"
        "print(describe_devices(ordinals))\n"
    )
    env = {**os.environ, "JAX_PLATFORMS": "cpu"}
    env.pop("XLA_FLAGS", None)
    done = subprocess.run(
        [sys.executable, "-c", script], cwd=REPO, capture_output=True, text=True, env=env, timeout=120
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.splitlines()[:2] == [
        "1,0",
        "visible devices (CUDA GPUs 1,0, --devices): 1 local cpu device(s), ['cpu']",
    ]
    jax.devices()  # this process's backend exists: a different choice now would be silently ignored, so it is refused
    with pytest.raises(RuntimeError, match="came too late"):
        apply_visible_devices("1")
    assert apply_visible_devices("all") is None  # the value in force: nothing to change


# --- W&B writer and checkpoint directories -----------------------------------------------------------------------------


class FakeRun:
    def __init__(self, **kwargs):
        self.init_kwargs, self.logged, self.config_updates, self.finished = kwargs, [], [], False
        self.config = types.SimpleNamespace(update=lambda values, allow_val_change: self.config_updates.append(values))

    def log(self, values, step):
        self.logged.append((step, dict(values)))

    def finish(self):
        self.finished = True


@pytest.fixture
def fake_wandb(monkeypatch):
    module = types.ModuleType("wandb")
    module.runs = []

    def init(**kwargs):
        module.runs.append(FakeRun(**kwargs))
        return module.runs[-1]

    module.init = init
    monkeypatch.setitem(sys.modules, "wandb", module)
    return module


def logging_config(**overrides):
    config = smoke_transformer.get_config()
    config.logging.tensorboard = False
    config.logging.update(overrides)
    return config


def test_wandb_writer_logs_and_resumes_the_same_run(tmp_path, fake_wandb):
    config = logging_config(backend="wandb", wandb_project="proj", wandb_mode="offline")
    for attempt in range(2):
        # The second attempt resumes from step 3, as the training loop would after a checkpoint at step 3.
        logger = MetricsLogger.from_config(str(tmp_path / "run7"), config, resumed_step=3 if attempt else None)
        logger.write_hparams({"num_params": 5})
        logger.write_scalars(3 + attempt, {"loss": np.float32(1.5), "tokens_per_s": 10})
        logger.close()
    first, second = fake_wandb.runs
    assert first.init_kwargs["project"] == "proj" and first.init_kwargs["mode"] == "offline"
    assert first.init_kwargs["name"] == "run7" and first.init_kwargs["resume"] == "allow"
    assert first.init_kwargs["config"]["model.d_model"] == 128  # the flattened run config
    assert second.init_kwargs["id"] == first.init_kwargs["id"]  # a restart continues the same W&B run
    assert first.logged == [(3, {"loss": 1.5, "tokens_per_s": 10.0})] and second.logged[0][0] == 4
    assert first.config_updates == [{"num_params": 5}] and first.finished
    lines = (tmp_path / "run7" / "metrics" / "metrics.jsonl").read_text().splitlines()
    assert sum('"loss"' in line for line in lines) == 2  # the JSON-lines file is written as well


def test_wandb_imported_only_when_selected(tmp_path, monkeypatch):
    monkeypatch.delitem(sys.modules, "wandb", raising=False)
    MetricsLogger.from_config(str(tmp_path), logging_config()).close()
    assert "wandb" not in sys.modules
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed
    with pytest.raises(ImportError, match="pip install wandb"):
        MetricsLogger.from_config(str(tmp_path), logging_config(backend="wandb"))
    for overrides, message in [
        ({"backend": "mlflow"}, "logging.backend = 'mlflow'"),
        ({"wandb_mode": "cloud"}, "logging.wandb_mode = 'cloud'"),
        ({"backend": "wandb", "wandb_project": ""}, "needs logging.wandb_project"),
    ]:
        with pytest.raises(ValueError, match=message):
            validate_logging_config(logging_config(**overrides).logging)


def test_checkpoint_directory_resolution(tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    cfg = smoke_transformer.get_config().checkpoint
    assert checkpoint_directory(cfg, "runs/a") == str(tmp_path / "runs" / "a" / "checkpoints")
    for url in ("gs://bucket/runs/a", "s3://bucket/runs/a"):
        cfg.directory = url
        assert checkpoint_directory(cfg, "runs/a") == url
    cfg.directory = "ckpt/a"
    assert checkpoint_directory(cfg, "runs/a") == str(tmp_path / "ckpt" / "a")


def test_tiny_run_with_wandb_checkpoint_directory_precision_and_auto_attention(tmp_path, fake_wandb):
    from hope_jax.train.loop import train

    config = smoke_transformer.get_config()
    config.model.update(dict(d_model=32, n_heads=2, mlp_hidden=64, attention_impl="auto"))
    config.train.update(dict(num_steps=2, seq_len=16, global_batch_size=8, log_every_steps=1, matmul_precision="high"))
    config.checkpoint.update(dict(every_steps=0, directory=str(tmp_path / "elsewhere")))
    config.eval.update(dict(every_steps=0, num_batches=0))
    config.logging.update(dict(tensorboard=False, backend="wandb", wandb_mode="offline"))
    try:
        result = train(config, str(tmp_path / "work"))
        assert jax.config.values["jax_default_matmul_precision"] == "high"
    finally:
        jax.config.update("jax_default_matmul_precision", "highest")  # conftest's setting for the other tests
    assert result.final_step == 2
    assert os.listdir(tmp_path / "elsewhere") == ["2"] and not (tmp_path / "work" / "checkpoints").exists()
    (run,) = fake_wandb.runs
    assert [step for step, values in run.logged if "loss" in values] == [1, 2]
    assert run.finished


def test_matmul_precision_is_validated():
    from hope_jax.train.validate import validate_config

    config = smoke_transformer.get_config()
    for precision in ("default", "high", "highest"):
        config.train.matmul_precision = precision
        validate_config(config, 8)
    config.train.matmul_precision = "tf32"
    with pytest.raises(ValueError, match="train.matmul_precision must be 'default', 'high' or 'highest', got 'tf32'"):
        validate_config(config, 8)
