"""Optimiser values no optimiser can run with are refused by validate_config, naming the dotted key and the value, and
every shipped config still validates."""

import importlib
import math
import re

import jax
import pytest

from configs import smoke_transformer
from hope_jax.optim.config import level_config
from hope_jax.train.validate import validate_config
from tests.test_configs import CONFIG_FILES, load, validation_devices

# (level key, a value it must refuse)
REFUSED_LEVEL_VALUES = [
    ("lr", -1e-3),  # gradient ascent
    ("lr", 0.0),
    ("lr", math.nan),
    ("lr", math.inf),
    ("warmup_steps", -1),
    ("decay_steps", -2),
    ("end_lr_ratio", -0.1),
    ("weight_decay", -0.1),
    ("b1", 1.0),
    ("b1", -0.1),
    ("b2", 1.5),
    ("eps", 0.0),  # Adam: 0/0 = NaN wherever a gradient entry is 0
    ("eps", -1e-8),
    ("eps", math.nan),
    ("period_tokens", -1),
    ("ns_steps", -1),
    ("ns_eps", 0.0),
    ("ns_coeffs", (3.4445, math.nan, 2.0315)),
    ("muon_momentum", 1.0),
    ("m3_beta1", 1.5),
    ("m3_beta2", -0.5),
    ("m3_beta3", 2.0),
    ("m3_alpha", -1.0),
    ("m3_period", 0),
    ("m3_eps", 0.0),
    ("dm_alpha", 1.5),
    ("dm_lr", -1.0),
    ("dm_delta_lr", -0.5),
    ("dm_hidden", 0),
    ("dm_init_scale", -1.0),
]


def small_config():
    config = smoke_transformer.get_config()
    config.lock()
    return config


def named(key: str, value) -> str:
    return re.escape(f"{key} = {value!r}")


@pytest.mark.parametrize(("key", "value"), REFUSED_LEVEL_VALUES)
def test_a_refused_level_value_names_the_key_and_value(key, value):
    config = small_config()
    config.optim.levels.default[key] = value
    with pytest.raises(ValueError, match=named(f"optim.levels.default.{key}", value)):
        validate_config(config, jax.device_count())


def test_a_level_other_than_default_is_named_too():
    config = small_config()
    with config.unlocked():
        config.optim.levels.slow = level_config(lr=1e-3, warmup_steps=-5)
    with pytest.raises(ValueError, match=named("optim.levels.slow.warmup_steps", -5)):
        validate_config(config, jax.device_count())


def test_a_partial_level_is_checked_over_the_defaults():
    """A level that sets only some keys (as tests/test_optim_levels.py builds them) is refused by the key it set."""
    config = small_config()
    with config.unlocked():
        config.optim.levels.fast = {"kind": "adamw", "eps": 0.0}
    with pytest.raises(ValueError, match=named("optim.levels.fast.eps", 0.0)):
        validate_config(config, jax.device_count())


@pytest.mark.parametrize(
    ("key", "value"), [("clip_norm", -1.0), ("clip_norm", math.inf), ("weight_decay_min_ndim", -1)]
)
def test_a_refused_section_value_names_the_key_and_value(key, value):
    config = small_config()
    config.optim[key] = value
    with pytest.raises(ValueError, match=named(f"optim.{key}", value)):
        validate_config(config, jax.device_count())


def test_boundary_values_that_mean_something_are_accepted():
    config = small_config()
    level = config.optim.levels.default
    # decay_steps -1: until total_steps; b1 0: no momentum; dm_delta_lr 0: heavy ball; m3 betas 1: plain sums.
    level.update(lr=1e-12, decay_steps=-1, b1=0.0, weight_decay=0.0, dm_delta_lr=0.0, dm_init_scale=0.0)
    level.update(m3_beta1=1.0, m3_beta3=1.0, ns_steps=0, warmup_steps=0, end_lr_ratio=0.0)
    config.optim.clip_norm = 0.0  # no clipping
    validate_config(config, jax.device_count())


def test_a_negative_learning_rate_stops_training_before_anything_is_built(tmp_path):
    from hope_jax.train.loop import train
    from tests.test_main_e2e import tiny_smoke_config

    config = tiny_smoke_config()
    config.optim.levels.default.lr = -1e-3
    with pytest.raises(ValueError, match=named("optim.levels.default.lr", -1e-3)):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()


@pytest.mark.parametrize("module_name", CONFIG_FILES)
def test_every_shipped_config_still_validates(module_name):
    config = load(module_name)
    validate_config(config, validation_devices(config))


@pytest.mark.parametrize("module_name", ["configs.ablations.hope", "configs.ablations.titans"])
def test_every_ablation_row_still_validates(module_name):
    for row in importlib.import_module(module_name).ROWS:
        validate_config(load(module_name, row), jax.device_count())


@pytest.mark.parametrize(
    ("key", "value", "message"),
    [
        ("memory_target", "values", "model.memory.memory_target = 'values'; known: self, value"),
        ("memory_depth", 3, "model.memory.memory_depth must be 1 .matrix. or 2 .residual MLP., got 3"),
    ],
)
def test_memory_form_errors_name_the_key(key, value, message):
    from hope_jax.models.config import validate_model_config

    model = smoke_transformer.get_config().model
    model.memory[key] = value
    with pytest.raises(ValueError, match=message):
        validate_model_config(model)
