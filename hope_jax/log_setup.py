"""Logging of the command-line entry points (training in hope_jax/main.py, the eval/ commands): one readable stream.

Our own modules log through the root logger (`logging.info`) or absl's (`absl.logging.info`, eval/grid.py); both
reach stdout at INFO. Third-party libraries log at WARNING and above only: orbax alone writes dozens of INFO lines per
checkpoint restore, and it logs through absl's logger, so absl's logger passes INFO records only when they come from
this repository's own files.

TensorFlow's C++ logging (TensorFlow comes with clu's TensorBoard writer, which hope_jax.train.loop imports, and with
tensorflow-text) is set by TF_CPP_MIN_LOG_LEVEL, read once in each C++ library. jax reads the same variable for XLA's
C++ logging and sets it to '1' on import if it is unset, so quiet_tensorflow runs when the hope_jax package is imported
(hope_jax/__init__.py; eval/__init__.py sets the same value), before jax; the setup functions call it again.
'2' hides TensorFlow's and XLA's C++ INFO and WARNING lines and keeps errors; a value the user set is kept
(TF_CPP_MIN_LOG_LEVEL=0 shows everything). The few lines TensorFlow 2.21 prints while it loads, before absl's C++ log
is initialised, ignore the variable.
"""

from __future__ import annotations

import logging
import os
import pathlib
import sys

NOISY_LOGGERS = ("absl", "orbax", "jax._src", "tensorflow", "grain")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"
# TensorFlow's (and XLA's) C++ log level unless the user set TF_CPP_MIN_LOG_LEVEL: INFO and WARNING hidden, errors kept.
TF_CPP_MIN_LOG_LEVEL = "2"

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_OWN_DIRS = tuple(str(_REPO_ROOT / name) + "/" for name in ("hope_jax", "eval", "data_pipeline", "configs", "launch"))


class _OwnInfoOnly(logging.Filter):
    """On absl's logger: warnings and errors from anywhere, lower levels only from this repository's packages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(_OWN_DIRS)


_FILTER = _OwnInfoOnly()


def quiet_tensorflow() -> None:
    """TF_CPP_MIN_LOG_LEVEL = TF_CPP_MIN_LOG_LEVEL unless the environment already sets it (a user's value is kept).
    Takes effect only before jax and TensorFlow are imported (see the module docstring)."""
    os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", TF_CPP_MIN_LOG_LEVEL)


def quiet_third_party() -> None:
    """Third-party loggers at WARNING; absl's logger passes INFO from our own files only; TensorFlow's C++ logging at
    errors (quiet_tensorflow). Leaves handlers alone (safe inside pytest or a notebook)."""
    quiet_tensorflow()
    for noisy in NOISY_LOGGERS:
        if noisy != "absl":
            logging.getLogger(noisy).setLevel(logging.WARNING)
    absl_logger = logging.getLogger("absl")
    absl_logger.setLevel(logging.INFO)  # the filter, not the level, holds third-party records below WARNING back
    if _FILTER not in absl_logger.filters:
        absl_logger.addFilter(_FILTER)


def configure_logging() -> None:
    """INFO and above from our code to stdout as `<time> <LEVEL> <message>`; third-party chatter at WARNING.

    Replaces the root logger's handlers (absl's included, so no line is printed twice)."""
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.use_python_logging(quiet=True)  # no "Restoring pure python logging" line in absl's format
    logging.basicConfig(level=logging.INFO, format=LOG_FORMAT, stream=sys.stdout, force=True)
    quiet_third_party()
