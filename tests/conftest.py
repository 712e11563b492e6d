"""Test set-up: 8 fake CPU devices so that sharding is really exercised.

XLA_FLAGS must be set before jax is imported anywhere, which is why this happens at the top of conftest.
"""

import atexit
import os
import shutil
import tempfile

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
# The suite is dominated by XLA:CPU compiles of tiny programs (tens of seconds each for HOPE train steps), and most of a
# CPU compile is LLVM optimising the generated code, which tiny shapes never pay back. Level 0 compiles the same HLO
# (same fusion, buffer assignment, memory analysis) about 2x faster; only the machine-code optimisation is skipped.
# Inherited by the subprocesses the tests start (launch/local.py keeps every flag but the device count).
if "--xla_backend_optimization_level" not in os.environ["XLA_FLAGS"]:
    os.environ["XLA_FLAGS"] += " --xla_backend_optimization_level=0"
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (pulled in by clu's TensorBoard writer) must never grab an accelerator or spam the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")
# One persistent compilation cache per test session for the subprocesses tests start: many of them build the same tiny
# train step again (resume, preemption, launch), and a cache hit costs milliseconds instead of the seconds (tens of
# seconds for HOPE) a CPU compile takes. Fresh per session, so nothing stale is ever read.
if "JAX_COMPILATION_CACHE_DIR" not in os.environ:
    os.environ["JAX_COMPILATION_CACHE_DIR"] = tempfile.mkdtemp(prefix="hope_jax_test_jit_")
    atexit.register(shutil.rmtree, os.environ["JAX_COMPILATION_CACHE_DIR"], ignore_errors=True)

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
# ...but not in this process: after ~790 tests, jaxlib 0.10.2 segfaulted in XLA:CPU's `executable.serialize()` while
# writing the cache entry of tests/test_training_stability.py's HOPE fixture (twice in a row, deterministic in the whole
# suite; that module alone, or after its neighbours, passes). The subprocesses keep the shared cache.
jax.config.update("jax_enable_compilation_cache", False)


import pytest  # noqa: E402


def _tiny_run_config(model_name: str):
    from tests.model_variants import TINY_CMS, TINY_MEMORY
    from tests.test_main_e2e import tiny_smoke_config

    config = tiny_smoke_config()
    # The evaluation fixtures read only the final checkpoint: no intermediate one, no evaluation pass, one data axis.
    config.checkpoint.every_steps = 0
    config.eval.num_batches = 0
    config.mesh.update(data=-1, fsdp=1, tensor=1)
    config.model.name = model_name
    config.model.d_model = 32
    config.model.n_heads = 2
    config.model.mlp_hidden = 64
    if model_name == "hope":
        # One in-context CMS level and a frozen one: the cheapest HOPE to compile that still carries every kind of state.
        config.model.memory.update(TINY_MEMORY)
        config.model.cms.update({**TINY_CMS, "periods": (4, 0), "objectives": ("local", "frozen"), "hidden": (32, 32)})
    return config


def _trained_tiny_run(tmp_path_factory, model_name: str) -> str:
    from hope_jax.train.loop import train

    workdir = tmp_path_factory.mktemp(f"tiny_{model_name}_run")
    train(_tiny_run_config(model_name), str(workdir))
    return str(workdir)


@pytest.fixture(scope="session")
def tiny_run_workdir(tmp_path_factory) -> str:
    """A workdir holding a 2-step training run of a tiny Transformer++ on the built-in corpus (vocab 192, seq 32)."""
    return _trained_tiny_run(tmp_path_factory, "transformer")


@pytest.fixture(scope="session")
def tiny_hope_run_workdir(tmp_path_factory) -> str:
    """The same for a tiny HOPE (chunk 8, CMS periods 4 / 0)."""
    return _trained_tiny_run(tmp_path_factory, "hope")


@pytest.fixture(scope="module")
def tiny_run(tiny_run_workdir):
    """The tiny Transformer++ run loaded for evaluation (eval.common.Run), once per test module."""
    from eval import common

    return common.load_run(tiny_run_workdir)
