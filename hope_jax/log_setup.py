"""Logging of the command-line entry points (training in hope_jax/main.py, the eval/ commands): one readable stream.

Our own modules log through the root logger (`logging.info`) or absl's (`absl.logging.info`, eval/grid.py); both
reach stdout at INFO. Third-party libraries log at WARNING and above only: orbax alone writes dozens of INFO lines per
checkpoint restore, and it logs through absl's logger, so absl's logger passes INFO records only when they come from
this repository's own files.
"""

from __future__ import annotations

import logging
import pathlib
import sys

NOISY_LOGGERS = ("absl", "orbax", "jax._src", "tensorflow", "grain")
LOG_FORMAT = "%(asctime)s %(levelname)s %(message)s"

_REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent
_OWN_DIRS = tuple(str(_REPO_ROOT / name) + "/" for name in ("hope_jax", "eval", "data_pipeline", "configs", "launch"))


class _OwnInfoOnly(logging.Filter):
    """On absl's logger: warnings and errors from anywhere, lower levels only from this repository's packages."""

    def filter(self, record: logging.LogRecord) -> bool:
        return record.levelno >= logging.WARNING or record.pathname.startswith(_OWN_DIRS)


_FILTER = _OwnInfoOnly()


def quiet_third_party() -> None:
    """Third-party loggers at WARNING; absl's logger passes INFO from our own files only. Leaves handlers alone (safe
    inside pytest or a notebook)."""
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
