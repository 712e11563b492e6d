"""Language models and their registry. Importing this package registers every built-in model."""

from hope_jax.models import hope, titans, titans_mac, transformer  # noqa: F401  (register their models)
from hope_jax.models.config import PRESETS, apply_overrides, default_model_config, model_preset
from hope_jax.models.generate import generate, sample_token
from hope_jax.models.registry import (
    build_model,
    count_params,
    flops_per_token,
    functional,
    known_models,
    register,
)
from hope_jax.models.typed_config import ModelConfig

__all__ = [
    "PRESETS",
    "ModelConfig",
    "apply_overrides",
    "build_model",
    "count_params",
    "default_model_config",
    "flops_per_token",
    "functional",
    "generate",
    "known_models",
    "model_preset",
    "register",
    "sample_token",
]
