"""hope_jax/log_setup.py as the evaluation commands use it: our INFO lines pass, third-party INFO (orbax's, which
goes through absl's logger) does not; TensorFlow's C++ log level is set before anything imports TensorFlow."""

import logging
import os
import pathlib
import subprocess
import sys

import pytest

from eval import common
from hope_jax import log_setup

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def _absl_record(pathname, level=logging.INFO):
    return logging.LogRecord("absl", level, pathname, 1, "message", None, None)


def test_absl_logger_passes_our_info_and_only_warnings_of_third_parties():
    log_setup.quiet_third_party()
    absl_logger = logging.getLogger("absl")
    orbax_file = "/venv/lib/python3.11/site-packages/orbax/checkpoint/checkpoint_manager.py"
    assert not absl_logger.filter(_absl_record(orbax_file))
    assert absl_logger.filter(_absl_record(orbax_file, logging.WARNING))
    assert absl_logger.filter(_absl_record(str(REPO_ROOT / "eval" / "grid.py")))  # eval/grid.py logs through absl
    assert not absl_logger.filter(_absl_record(str(REPO_ROOT / ".venv" / "lib" / "orbax.py")))
    for noisy in ("orbax", "jax._src", "tensorflow", "grain"):
        assert logging.getLogger(noisy).getEffectiveLevel() == logging.WARNING
    log_setup.quiet_third_party()
    assert absl_logger.filters.count(log_setup._FILTER) == 1  # idempotent


def test_command_logging_prints_our_info_and_drops_orbax_info():
    code = """
import logging
from absl import logging as absl_logging
from hope_jax.log_setup import configure_logging
configure_logging()
logging.info("ours via root")
logging.getLogger("orbax").info("orbax chatter")
logging.getLogger("orbax").warning("orbax warning")
absl_logging.info("absl info from a file outside the repository")
"""
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=120
    )
    out = result.stdout + result.stderr
    assert "INFO ours via root" in result.stdout and "WARNING orbax warning" in result.stdout
    assert "orbax chatter" not in out and "absl info from a file outside" not in out


def test_run_command_holds_third_party_loggers_at_warning(monkeypatch):
    monkeypatch.setattr(logging.getLogger("orbax"), "level", logging.INFO)
    result = common.run_command(lambda fv: None, lambda fv: ({}, pathlib.Path("x")), ["cmd"])
    assert result == ({}, pathlib.Path("x"))
    assert logging.getLogger("orbax").level == logging.WARNING


def test_quiet_tensorflow_sets_the_level_unless_the_user_did(monkeypatch):
    monkeypatch.delenv("TF_CPP_MIN_LOG_LEVEL", raising=False)
    log_setup.quiet_third_party()  # what run_command calls; configure_logging calls it too
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == log_setup.TF_CPP_MIN_LOG_LEVEL == "2"
    monkeypatch.setenv("TF_CPP_MIN_LOG_LEVEL", "0")
    log_setup.quiet_third_party()
    log_setup.quiet_tensorflow()
    assert os.environ["TF_CPP_MIN_LOG_LEVEL"] == "0"


@pytest.mark.parametrize(
    ("first", "user_value", "expected"),
    [("hope_jax.main", None, "2"), ("eval.perplexity", None, "2"), ("eval.perplexity", "0", "0")],
)
def test_entry_points_set_the_level_before_jax_and_tensorflow_load(first, user_value, expected):
    """TF_CPP_MIN_LOG_LEVEL is read once, when TensorFlow's (and jax's XLA) C++ libraries load, and jax's import sets it
    to '1' if it is unset: importing an entry module (training's or an evaluation command's) must have set ours first,
    and kept a user's value. hope_jax/__init__.py and eval/__init__.py each set it."""
    code = f"""
import os, sys
import {first}
import hope_jax.main
from eval import continual, niah, passkey, perplexity, recall, sample, zeroshot
assert "jax" in sys.modules and "tensorflow" not in sys.modules
level = os.environ["TF_CPP_MIN_LOG_LEVEL"]
from hope_jax.log_setup import configure_logging
configure_logging()
import hope_jax.train.loop  # clu's metric writers import tensorflow
assert "tensorflow" in sys.modules and os.environ["TF_CPP_MIN_LOG_LEVEL"] == level
print("TF_CPP_MIN_LOG_LEVEL=" + level)
"""
    env = {key: value for key, value in os.environ.items() if key != "TF_CPP_MIN_LOG_LEVEL"}
    if user_value is not None:
        env["TF_CPP_MIN_LOG_LEVEL"] = user_value
    result = subprocess.run(
        [sys.executable, "-c", code], cwd=REPO_ROOT, env=env, capture_output=True, text=True, timeout=300
    )
    assert result.returncode == 0, result.stderr[-2000:]
    assert f"TF_CPP_MIN_LOG_LEVEL={expected}" in result.stdout
