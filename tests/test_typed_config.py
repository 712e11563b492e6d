"""The typed model config (models/typed_config.py): one field per config key, of the same name, built once."""

import dataclasses

import jax.numpy as jnp
import ml_collections
import pytest

from hope_jax.memory.self_modifying import SelfModConfig
from hope_jax.models import count_params, default_model_config, model_preset
from hope_jax.models.typed_config import ModelConfig

# Fields of the inner loop's options that are not config keys (the models set them; memory/self_modifying.py).
INNER_LOOP_ONLY = {"remat_group", "accum_dtype"}


def field_names(cls) -> set[str]:
    return {field.name for field in dataclasses.fields(cls)}


def test_every_config_key_is_a_field_of_the_same_name():
    cfg = default_model_config()
    typed = ModelConfig.from_config(cfg)
    assert field_names(ModelConfig) == set(cfg.keys())
    for section in ("memory", "cms", "titans"):
        assert field_names(type(getattr(typed, section))) - INNER_LOOP_ONLY == set(cfg[section].keys()), section
    # The memory section is the inner loop's options plus the model-level keys: the names the inner loop reads are
    # the config keys themselves.
    assert isinstance(typed.memory, SelfModConfig)
    assert field_names(SelfModConfig) - INNER_LOOP_ONLY <= set(cfg.memory.keys())


def test_values_are_converted_once_and_the_config_is_frozen_and_hashable():
    cfg = default_model_config()
    cfg.compute_dtype = "bfloat16"
    cfg.cms.periods, cfg.cms.hidden = [4, 8, 0], [8, 8, 8]
    typed = ModelConfig.from_config(cfg)
    assert typed.compute_dtype == jnp.bfloat16
    assert typed.cms.periods == (4, 8, 0) and typed.cms.hidden == (8, 8, 8)
    assert typed.memory.chunk_size == cfg.memory.chunk_size and typed.memory.remat_group == 0
    assert typed.head_dim == cfg.d_model // cfg.n_heads
    assert hash(typed) == hash(ModelConfig.from_config(cfg))
    assert ModelConfig.from_config(typed) is typed
    with pytest.raises(dataclasses.FrozenInstanceError):
        typed.d_model = 1


def test_validation_errors_name_the_config_key():
    cfg = default_model_config()
    cfg.memory.diagnostics_stride = 0
    with pytest.raises(ValueError, match=r"model\.memory\.diagnostics_stride"):
        ModelConfig.from_config(cfg)


def test_a_config_key_without_a_field_is_an_error_naming_it():
    cfg = default_model_config()
    cfg.titans.unknown_switch = True
    with pytest.raises(TypeError, match="unknown_switch"):
        ModelConfig.from_config(cfg)


def test_the_registry_takes_the_config_dict_or_the_typed_config():
    cfg = model_preset("hope-160m")
    assert count_params(cfg) == count_params(ModelConfig.from_config(ml_collections.ConfigDict(cfg.to_dict())))
