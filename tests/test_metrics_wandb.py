"""W&B logging never costs a training run: the mode follows WANDB_MODE unless the config names one, a missing package is
named before anything is built, and a failing init / log falls back (offline, then off) with one warning while the
JSON-lines file goes on. A fake `wandb` module stands in for the real one (which need not be installed)."""

import importlib.util
import json
import logging
import sys
import types

import pytest

from configs import base, smoke_transformer
from hope_jax.train.metrics import (
    WANDB_INIT_TIMEOUT_S,
    MetricsLogger,
    WandbMissingError,
    resolve_wandb_mode,
    validate_logging_config,
)


class CommError(Exception):
    """Like wandb.errors.CommError."""


class FakeRun:
    def __init__(self, fake, **kwargs):
        self.fake, self.init_kwargs, self.logged, self.config_updates, self.finished = fake, kwargs, [], [], False
        self.config = types.SimpleNamespace(update=self._update)

    def _update(self, values, allow_val_change):
        if self.fake.fail_update:
            raise CommError("config update failed")
        self.config_updates.append(values)

    def log(self, values, step):
        self.fake.log_calls += 1
        if self.fake.fail_log:
            raise CommError("log failed: connection reset")
        self.logged.append((step, dict(values)))

    def finish(self):
        if self.fake.fail_finish:
            raise CommError("finish failed")
        self.finished = True


class FakeSettings:
    def __init__(self, init_timeout=None):
        self.init_timeout = init_timeout


def make_fake_wandb(fail_modes=()):
    fake = types.ModuleType("wandb")
    fake.errors = types.SimpleNamespace(CommError=CommError)
    fake.Settings = FakeSettings
    fake.calls, fake.runs = [], []
    fake.fail_modes = set(fail_modes)
    fake.fail_log = fake.fail_update = fake.fail_finish = False
    fake.log_calls = 0

    def init(**kwargs):
        fake.calls.append(kwargs)
        if kwargs["mode"] in fake.fail_modes:
            raise CommError(
                f"Run initialization has timed out after {WANDB_INIT_TIMEOUT_S} sec (mode {kwargs['mode']})"
            )
        fake.runs.append(FakeRun(fake, **kwargs))
        return fake.runs[-1]

    fake.init = init
    return fake


@pytest.fixture(autouse=True)
def clean_env(monkeypatch):
    monkeypatch.delenv("WANDB_MODE", raising=False)
    monkeypatch.delenv("WANDB_INIT_TIMEOUT", raising=False)


@pytest.fixture
def fake_wandb(monkeypatch):
    fake = make_fake_wandb()
    monkeypatch.setitem(sys.modules, "wandb", fake)
    return fake


def wandb_config(**overrides):
    config = smoke_transformer.get_config()
    config.logging.tensorboard = False
    config.logging.update(dict(backend="wandb", wandb_project="proj"))
    config.logging.update(overrides)
    return config


def jsonl_steps(workdir):
    lines = (workdir / "metrics" / "metrics.jsonl").read_text().splitlines()
    return [record["step"] for record in map(json.loads, lines) if "loss" in record]


def warnings_of(caplog):
    return [record for record in caplog.records if record.levelno == logging.WARNING]


def test_default_mode_defers_to_wandb_mode_env(tmp_path, fake_wandb, monkeypatch):
    assert base.get_config().logging.wandb_mode == ""
    monkeypatch.setenv("WANDB_MODE", "offline")
    MetricsLogger.from_config(str(tmp_path), wandb_config()).close()
    (call,) = fake_wandb.calls
    assert call["mode"] == "offline"
    assert call["settings"].init_timeout == WANDB_INIT_TIMEOUT_S  # a bounded init


def test_explicit_config_mode_beats_env(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "offline")
    MetricsLogger.from_config(str(tmp_path), wandb_config(wandb_mode="disabled")).close()
    assert [call["mode"] for call in fake_wandb.calls] == ["disabled"]
    assert resolve_wandb_mode("online", {"WANDB_MODE": "offline"}) == "online"
    assert resolve_wandb_mode("", {}) == "online"
    assert resolve_wandb_mode("", {"WANDB_MODE": "dryrun"}) == "offline"  # wandb's aliases
    assert resolve_wandb_mode("", {"WANDB_MODE": "run"}) == "online"


def test_invalid_wandb_mode_env_is_named(fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_MODE", "cloud")
    with pytest.raises(ValueError, match="environment variable WANDB_MODE = 'cloud'"):
        validate_logging_config(wandb_config().logging)
    validate_logging_config(wandb_config(wandb_mode="offline").logging)  # an explicit mode does not read it
    validate_logging_config(wandb_config(backend="clu").logging)  # nor does a run without W&B
    with pytest.raises(ValueError, match="logging.wandb_mode = 'cloud'"):
        validate_logging_config(wandb_config(wandb_mode="cloud").logging)


def test_online_init_failure_falls_back_to_offline_with_one_warning(tmp_path, monkeypatch, caplog):
    fake = make_fake_wandb(fail_modes={"online"})
    monkeypatch.setitem(sys.modules, "wandb", fake)
    caplog.set_level(logging.WARNING)
    logger = MetricsLogger.from_config(str(tmp_path), wandb_config())
    logger.write_scalars(1, {"loss": 2.5})
    logger.close()
    assert [call["mode"] for call in fake.calls] == ["online", "offline"]
    assert fake.calls[0]["id"] == fake.calls[1]["id"]  # the same run, synced later
    (warning,) = warnings_of(caplog)
    message = warning.getMessage()
    assert "CommError" in message and "offline" in message and str(tmp_path / "wandb") in message
    assert "wandb sync" in message
    (run,) = fake.runs
    assert run.logged == [(1, {"loss": 2.5})] and run.finished
    assert jsonl_steps(tmp_path) == [1]


def test_offline_fallback_failure_turns_wandb_off(tmp_path, monkeypatch, caplog):
    fake = make_fake_wandb(fail_modes={"online", "offline"})
    monkeypatch.setitem(sys.modules, "wandb", fake)
    caplog.set_level(logging.WARNING)
    logger = MetricsLogger.from_config(str(tmp_path), wandb_config())
    logger.write_hparams({"num_params": 5})
    logger.write_scalars(1, {"loss": 2.5})
    logger.close()
    assert [call["mode"] for call in fake.calls] == ["online", "offline"]
    first, second = (record.getMessage() for record in warnings_of(caplog))  # one per failed init
    assert "continues with W&B offline" in first and "W&B is off for this run" in second
    assert logger.wandb_writer.run is None
    assert jsonl_steps(tmp_path) == [1]


def test_failing_explicit_offline_init_turns_wandb_off_with_one_warning(tmp_path, monkeypatch, caplog):
    fake = make_fake_wandb(fail_modes={"offline"})
    monkeypatch.setitem(sys.modules, "wandb", fake)
    caplog.set_level(logging.WARNING)
    logger = MetricsLogger.from_config(str(tmp_path), wandb_config(wandb_mode="offline"))
    logger.write_scalars(1, {"loss": 2.5})
    logger.close()
    assert [call["mode"] for call in fake.calls] == ["offline"]  # no fallback to online
    assert len(warnings_of(caplog)) == 1
    assert jsonl_steps(tmp_path) == [1]


def test_log_failure_warns_once_and_turns_the_writer_off(tmp_path, fake_wandb, caplog):
    caplog.set_level(logging.WARNING)
    logger = MetricsLogger.from_config(str(tmp_path), wandb_config(wandb_mode="online"))
    logger.write_scalars(1, {"loss": 2.5})
    fake_wandb.fail_log = True
    for step in (2, 3, 4):
        logger.write_scalars(step, {"loss": 2.0})  # never raises on the training side
    logger.close()
    (warning,) = warnings_of(caplog)
    assert "log failed" in warning.getMessage() and "off for the rest of this run" in warning.getMessage()
    assert fake_wandb.log_calls == 2  # not tried again after the failure
    (run,) = fake_wandb.runs
    assert run.logged == [(1, {"loss": 2.5})] and not run.finished  # a broken run is not touched again
    assert jsonl_steps(tmp_path) == [1, 2, 3, 4]


def test_config_update_and_finish_failures_do_not_raise(tmp_path, fake_wandb, caplog):
    caplog.set_level(logging.WARNING)
    fake_wandb.fail_update = True
    logger = MetricsLogger.from_config(str(tmp_path), wandb_config())
    logger.write_hparams({"num_params": 5})
    logger.write_scalars(1, {"loss": 2.5})
    logger.close()
    assert len(warnings_of(caplog)) == 1 and fake_wandb.log_calls == 0
    caplog.clear()
    fake_wandb.fail_update, fake_wandb.fail_finish = False, True
    logger = MetricsLogger.from_config(str(tmp_path / "second"), wandb_config())
    logger.write_scalars(1, {"loss": 2.5})
    logger.close()
    (warning,) = warnings_of(caplog)
    assert "finish failed" in warning.getMessage()


def test_init_timeout_setting_is_optional(tmp_path, fake_wandb, monkeypatch):
    monkeypatch.setenv("WANDB_INIT_TIMEOUT", "300")  # the user's own timeout: left to wandb
    MetricsLogger.from_config(str(tmp_path / "a"), wandb_config()).close()
    del fake_wandb.Settings  # an older wandb
    monkeypatch.delenv("WANDB_INIT_TIMEOUT")
    MetricsLogger.from_config(str(tmp_path / "b"), wandb_config()).close()

    def old_settings(**kwargs):
        raise TypeError("unexpected keyword argument 'init_timeout'")

    fake_wandb.Settings = old_settings
    MetricsLogger.from_config(str(tmp_path / "c"), wandb_config()).close()
    assert ["settings" in call for call in fake_wandb.calls] == [False, False, False]


def test_missing_package_is_named_by_validate_logging_config(monkeypatch):
    monkeypatch.setitem(sys.modules, "wandb", None)  # as if not installed (an import is blocked)
    with pytest.raises(ImportError, match=r"logging.backend='wandb' needs the wandb package: pip install wandb"):
        validate_logging_config(wandb_config().logging)
    validate_logging_config(wandb_config(backend="clu").logging)
    # Not imported yet: the check asks importlib without importing.
    monkeypatch.delitem(sys.modules, "wandb")
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: None)
    with pytest.raises(WandbMissingError):
        validate_logging_config(wandb_config().logging)
    monkeypatch.setattr(importlib.util, "find_spec", lambda name: object())
    validate_logging_config(wandb_config().logging)
    assert "wandb" not in sys.modules


def test_missing_package_stops_training_before_anything_is_built(tmp_path, monkeypatch):
    from hope_jax.train import loop
    from hope_jax.train.validate import validate_config

    monkeypatch.setitem(sys.modules, "wandb", None)
    config = wandb_config()
    with pytest.raises(ImportError, match="pip install wandb"):
        validate_config(config, 8)

    def no_build(*args, **kwargs):
        raise AssertionError("the model was built before the missing wandb package was reported")

    monkeypatch.setattr(loop, "build_trainer", no_build)
    with pytest.raises(loop.ConfigError, match="pip install wandb"):  # one line at the entry point
        loop.train(config, str(tmp_path / "work"))
    assert not (tmp_path / "work").exists()
