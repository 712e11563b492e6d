"""Every config file loads, validates its shapes on a fake 8-device mesh, and lowers its train step ahead of time on
abstract inputs (nothing of the full-size model is allocated).

The lowering keeps every shape of the config (width, heads, vocabulary, sequence length, batch, mesh, dtypes, remat) but
one block: tracing 12-24 identical blocks on a 2-core CPU costs minutes and tests nothing more. The full depth's size is
checked against its label by tests/test_model_sizes.py (jax.eval_shape).
"""

import importlib
import pathlib

import jax
import pytest

from hope_jax.train.checkpoint import flatten_config
from hope_jax.train.trainer import build_trainer
from hope_jax.train.validate import validate_config

CONFIG_DIR = pathlib.Path(__file__).resolve().parent.parent / "configs"
HELPER_MODULES = {"base", "tiers", "common", "__init__"}
CONFIG_FILES = sorted(
    str(path.relative_to(CONFIG_DIR.parent).with_suffix("")).replace("/", ".")
    for path in CONFIG_DIR.rglob("*.py")
    if path.stem not in HELPER_MODULES
)


def load(module_name: str, arg: str | None = None):
    module = importlib.import_module(module_name)
    config = module.get_config() if arg is None else module.get_config(arg)
    config.lock()
    return config


def test_every_config_file_is_found():
    assert {"configs.smoke", "configs.pilot", "configs.mid", "configs.target"} <= set(CONFIG_FILES)
    assert any(name.startswith("configs.baselines.") for name in CONFIG_FILES)
    assert any(name.startswith("configs.ablations.") for name in CONFIG_FILES)


def validation_devices(config) -> int:
    """The test mesh's devices, or 1 for a one-device CPU config whose batch is smaller (configs/recall.py)."""
    return jax.device_count() if config.train.global_batch_size >= jax.device_count() else 1


@pytest.mark.parametrize("module_name", CONFIG_FILES)
def test_config_validates_and_lowers_its_train_step(module_name):
    config = load(module_name)
    if validation_devices(config) == 1:  # validated on the one device it runs on, then lowered on the 8-device
        validate_config(config, 1)  # mesh at one sequence per device
        with config.unlocked():
            config.train.global_batch_size = jax.device_count()
    validate_config(config, jax.device_count())
    with config.unlocked():
        config.model.n_layers = 1
    lowered = build_trainer(config).lower()
    assert "func" in lowered.as_text()[:20000]


@pytest.mark.parametrize("module_name", ["configs.ablations.hope", "configs.ablations.titans"])
def test_every_ablation_row_loads_and_validates(module_name):
    module = importlib.import_module(module_name)
    for row in module.ROWS:
        for tier in ("pilot", "mid", "target"):
            validate_config(load(module_name, f"{row},{tier}"), jax.device_count())


def test_unknown_rows_and_models_are_named():
    with pytest.raises(ValueError, match="unknown ablation row 'no_dgdd'"):
        load("configs.ablations.hope", "no_dgdd")
    with pytest.raises(ValueError, match="unknown model 'mamba'"):
        load("configs.pilot", "mamba")


def test_recall_variants_change_one_thing_each():
    """configs/recall.py: the ablation switches off exactly the in-context learners (mixer writes, CMS inner lr); the
    Transformer++ sees the same data and schedule with HOPE's parameter count (±1%)."""
    from hope_jax.models.registry import count_params

    hope, no_memory, transformer = (load("configs.recall", v) for v in ("hope", "no_memory", "transformer"))
    changed = {key for key, value in flatten_config(no_memory).items() if flatten_config(hope)[key] != value}
    assert changed == {"model.memory.eta_max", "model.cms.inner_lr"}
    assert no_memory.model.memory.eta_max == 0 and no_memory.model.cms.inner_lr == 0
    assert transformer.model.name == "transformer" and hope.model.name == "hope"
    assert transformer.data.to_dict() == hope.data.to_dict() and transformer.train.to_dict() == hope.train.to_dict()
    assert transformer.optim.to_dict() == hope.optim.to_dict()
    assert abs(count_params(transformer.model) / count_params(hope.model) - 1) < 0.01
    with pytest.raises(ValueError, match="unknown variant 'mamba'"):
        load("configs.recall", "mamba")
