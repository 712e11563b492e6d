"""hope_jax: Nested Learning (HOPE, self-modifying Titans, Continuum Memory System) and its baselines in JAX/Flax NNX."""

from flax import nnx as _nnx

# Parameters carry logical axis names only (DESIGN D1); hope_jax.sharding maps them to mesh axes in one table.
# Eager sharding would bind parameters to a mesh at construction time, so it is switched off for the package.
_nnx.use_eager_sharding(False)

__version__ = "0.1.0"
