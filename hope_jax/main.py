"""Entry point: ``python -m hope_jax.main --config=configs/<tier>.py --workdir=DIR [--config.a.b=value ...]``.

The config file's ``get_config()`` is locked before overrides are applied, so a misspelt key fails and names itself.
Re-running with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import logging
import sys

from absl import app, flags
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumes if it has any).")
flags.mark_flags_as_required(["config", "workdir"])


def _configure_logging() -> None:
    from absl import logging as absl_logging

    absl_logging.set_verbosity(absl_logging.INFO)
    absl_logging.use_python_logging()
    logging.basicConfig(
        level=logging.INFO, format="%(asctime)s %(levelname)s %(message)s", stream=sys.stdout, force=True
    )
    # Third-party chatter (orbax's per-file messages, absl's duplicate handler) drowns the training log.
    for noisy in ("absl", "orbax", "jax._src", "tensorflow", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)


def main(argv) -> None:
    del argv
    _configure_logging()
    import jax

    from hope_jax.train.loop import train

    config = _CONFIG.value
    print("resolved config:\n" + str(config), flush=True)
    print(f"devices: {jax.devices()}", flush=True)
    result = train(config, _WORKDIR.value)
    if result.stopped_by_signal:
        print(
            f"stopped by SIGTERM at step {result.final_step}; checkpoint saved in {_WORKDIR.value}",
            flush=True,
        )
    else:
        print(f"finished at step {result.final_step}; eval loss {result.eval_loss}", flush=True)


if __name__ == "__main__":
    app.run(main)
