"""Model registry: `config.model.name` → model class; parameter counts and training FLOPs per token.

A model file registers its class with `@register('name')`. The class must provide `__init__(cfg, *, rngs)` (cfg:
the models/typed_config.ModelConfig built here, once, from the ConfigDict), `init_state(batch_size, max_len=None)`,
`__call__(tokens_bt, state=None)` returning (float32 logits[B, T, V], new_state), and a static
`flops_per_token(cfg, seq_len)` returning dict(dense=, attention=, inner=, total=). Its tiny test configurations go
in tests/model_variants.py; tests/test_models.py runs every property test on every variant of every registered model.
Import the model's module in hope_jax/models/__init__.py, so registration happens on import.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any

import jax
import ml_collections
from flax import nnx

from hope_jax.models.typed_config import ModelConfig

REQUIRED_METHODS = ("init_state", "__call__", "flops_per_token")
FLOPS_KEYS = ("dense", "attention", "inner", "total")


_MODELS: dict[str, type] = {}


def register(name: str) -> Callable[[type], type]:
    """Class decorator adding a model under `name` (the value of config.model.name)."""

    def add(cls: type) -> type:
        if name in _MODELS:
            raise ValueError(f"model name {name!r} is already registered by {_MODELS[name].__qualname__}")
        missing = [method for method in REQUIRED_METHODS if not hasattr(cls, method)]
        if missing:
            raise TypeError(f"model {name!r} ({cls.__qualname__}) lacks {', '.join(missing)}")
        _MODELS[name] = cls
        return cls

    return add


def known_models() -> list[str]:
    return sorted(_MODELS)


def model_class(name: str) -> type:
    if name not in _MODELS:
        raise ValueError(f"unknown model name {name!r} (config model.name); known: {', '.join(known_models())}")
    return _MODELS[name]


def build_model(model_cfg: ml_collections.ConfigDict | ModelConfig, *, rngs: nnx.Rngs) -> nnx.Module:
    cfg = ModelConfig.from_config(model_cfg)
    return model_class(cfg.name)(cfg, rngs=rngs)


def abstract_model(model_cfg: ml_collections.ConfigDict | ModelConfig) -> nnx.Module:
    """The model with ShapeDtypeStructs in place of arrays (nnx.eval_shape): nothing is allocated."""
    cfg = ModelConfig.from_config(model_cfg)
    return nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0)))


def count_params(model_cfg: ml_collections.ConfigDict | ModelConfig) -> int:
    """Number of trainable parameters (nnx.Param leaves), computed without allocating them."""
    params = nnx.state(abstract_model(model_cfg), nnx.Param)
    return sum(leaf.size for leaf in jax.tree.leaves(params))


def flops_per_token(model_cfg: ml_collections.ConfigDict | ModelConfig, seq_len: int) -> dict[str, float]:
    """Training FLOPs per token (forward + backward): dense matmuls, attention scores, inner loops, total."""
    cfg = ModelConfig.from_config(model_cfg)
    flops = model_class(cfg.name).flops_per_token(cfg, seq_len)
    if set(flops) != set(FLOPS_KEYS):
        raise ValueError(f"{cfg.name}.flops_per_token returned keys {sorted(flops)}, expected {FLOPS_KEYS}")
    return flops


def functional(model: nnx.Module) -> tuple[Callable, nnx.GraphDef, nnx.State]:
    """(apply, graphdef, params) with pure apply(params, tokens_bt, state) -> (logits, new_state)."""
    graphdef, params = nnx.split(model)

    def apply(params: nnx.State, tokens_bt: jax.Array, state: Any = None) -> tuple[jax.Array, Any]:
        return nnx.merge(graphdef, params)(tokens_bt, state)

    return apply, graphdef, params
