"""Test set-up: 8 fake CPU devices so that sharding is really exercised.

XLA_FLAGS must be set before jax is imported anywhere, which is why this happens at the top of conftest.
"""

import os

os.environ["XLA_FLAGS"] = (os.environ.get("XLA_FLAGS", "") + " --xla_force_host_platform_device_count=8").strip()
os.environ.setdefault("JAX_PLATFORMS", "cpu")
# TensorFlow (pulled in by clu's TensorBoard writer) must never grab an accelerator or spam the log.
os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
os.environ.setdefault("CUDA_VISIBLE_DEVICES", "")

import jax  # noqa: E402

jax.config.update("jax_default_matmul_precision", "highest")
