"""hope_jax: Nested Learning (HOPE, self-modifying Titans, Continuum Memory System) and its baselines in JAX/Flax NNX."""

from hope_jax import log_setup as _log_setup

# Before jax loads: jax's own import sets TF_CPP_MIN_LOG_LEVEL=1 if unset, which would pre-empt ours (log_setup.py).
_log_setup.quiet_tensorflow()

from flax import nnx as _nnx  # noqa: E402

# Parameters carry logical axis names only (DESIGN D1); hope_jax.sharding maps them to mesh axes in one table.
# Eager sharding would bind parameters to a mesh at construction time, so it is switched off for the package.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
