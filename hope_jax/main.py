"""Entry point: ``python -m hope_jax.main --config=configs/<tier>.py --workdir=DIR [--config.a.b=value ...]``.

The config file's ``get_config()`` is locked before overrides are applied, so a misspelt key fails and names itself.
Re-running with the same workdir resumes from its latest checkpoint.
"""

from __future__ import annotations

import logging
import re
import sys

from absl import app, flags
from ml_collections import config_flags

from hope_jax.log_setup import configure_logging as _configure_logging

_CONFIG = config_flags.DEFINE_config_file("config", None, "Path to a config file (configs/*.py).", lock_config=True)
_WORKDIR = flags.DEFINE_string("workdir", None, "Directory for checkpoints and metrics (resumes if it has any).")
_DEVICES = flags.DEFINE_string(
    "devices",
    "all",
    "Local GPUs this process may use: 'all' or CUDA ordinals such as '1' or '0,2' (CUDA_VISIBLE_DEVICES semantics; "
    "applied before JAX starts, see hope_jax/visible_devices.py).",
)
# Multi-process settings are flags, not config keys: they say where a run executes, not what it trains, so they stay
# out of the checkpointed config (a run may resume on another cluster), they differ per process (--process_id) while
# the config is the same for all, and they must be known before JAX starts. Under srun none is needed.
_DISTRIBUTED = flags.DEFINE_enum(
    "distributed",
    "auto",
    ["auto", "slurm", "explicit", "none"],
    "Multi-process initialisation: 'auto' = explicit flags if --coordinator_address is given, else a Slurm job step's "
    "environment, else one process; 'none' = one process whatever the environment says (hope_jax/distributed.py).",
)
_COORDINATOR = flags.DEFINE_string("coordinator_address", "", "host:port of process 0's coordinator (explicit mode).")
_NUM_PROCESSES = flags.DEFINE_integer("num_processes", 0, "Number of processes in the job (explicit mode).")
_PROCESS_ID = flags.DEFINE_integer("process_id", -1, "This process's index in [0, num_processes) (explicit mode).")
_INIT_TIMEOUT = flags.DEFINE_integer(
    "distributed_timeout_s", 300, "Seconds to wait for every process to join the coordinator."
)
_DRY_RUN = flags.DEFINE_bool(
    "dry_run",
    False,
    "Print the resolved config, parameter count and compiled memory per device, then exit without training or "
    "writing anything (--workdir is not needed).",
)
flags.mark_flags_as_required(["config"])
flags.register_validator(
    "workdir",
    lambda value: value is not None or flags.FLAGS.dry_run,
    message="--workdir is required (unless --dry_run)",
)


def _parse_flags(argv: list[str]) -> list[str]:
    """absl's flag parsing, except that a misspelt config key is one ``error:`` line naming it, not a traceback.

    ml_collections raises KeyError / AttributeError (with its "Did you mean" hint) for an override of a key the
    locked config does not have; absl's own errors (a bad value, a missing flag) keep absl's usage message.
    """
    try:
        return app.parse_flags_with_usage(argv)
    except (KeyError, AttributeError) as error:
        print(f"error: {_unknown_key_message(argv, error)}", file=sys.stderr, flush=True)
        sys.exit(1)


def _unknown_key_message(argv: list[str], error: Exception) -> str:
    text = str(error).replace("\\n", "\n").replace("\\'", "'")
    names = re.findall(r"'([A-Za-z0-9_]+)'", text)
    overrides = [arg.split("=", 1)[0] for arg in argv if arg.startswith("--config.")]
    key = next((o for o in overrides if names and names[0] in o.split(".")), " ".join(overrides))
    hint = re.search(r"Did you mean [^?]*\?", text)
    return f"unknown config key {key}" + (f" ({hint.group(0)})" if hint else "")


def main(argv) -> None:
    try:
        _main(argv)
    except _user_errors() as error:
        # Bad input or a run that cannot go on: the message names the key, file or step; a traceback would bury it.
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)


def _user_errors() -> tuple[type[Exception], ...]:
    from data_pipeline.errors import DataError
    from hope_jax.train.checkpoint import (
        CheckpointWriteError,
        ConfigMismatchError,
        NoGoodCheckpointError,
        NonFiniteStateError,
    )
    from hope_jax.train.loop import ConfigError, NonFiniteLossError

    return (
        ConfigError,
        DataError,
        ConfigMismatchError,
        NoGoodCheckpointError,
        CheckpointWriteError,
        NonFiniteStateError,
        NonFiniteLossError,
    )


def _main(argv) -> None:
    del argv
    _configure_logging()
    from hope_jax.visible_devices import apply_visible_devices, log_devices

    ordinals = apply_visible_devices(_DEVICES.value)  # before anything asks JAX for its devices
    import jax

    from hope_jax import distributed
    from hope_jax.train.loop import train

    settings = distributed.resolve_settings(
        _DISTRIBUTED.value,
        coordinator_address=_COORDINATOR.value,
        num_processes=_NUM_PROCESSES.value,
        process_id=_PROCESS_ID.value,
    )
    distributed.initialize(settings, timeout_s=_INIT_TIMEOUT.value)  # joins the other processes before JAX starts
    logging.warning("%s [%s]", distributed.describe_layout(), settings.source)  # every process, also non-primary
    distributed.configure_process_logging(distributed.is_primary())
    config = _CONFIG.value
    if distributed.is_primary():
        print("resolved config:\n" + str(config), flush=True)
        print(f"devices: {jax.devices()}", flush=True)
    log_devices(ordinals)
    if _DRY_RUN.value:
        from hope_jax.train.dry_run import describe, dry_run

        report = dry_run(config)
        if distributed.is_primary():
            print(describe(report), flush=True)
        return
    result = train(config, _WORKDIR.value)
    if result.stopped_during_startup:
        print(f"stopped by SIGTERM during start-up, before step {result.final_step + 1}; nothing saved", flush=True)
    elif result.stopped_by_signal:
        print(
            f"stopped by SIGTERM at step {result.final_step}; checkpoint saved in {_WORKDIR.value}",
            flush=True,
        )
    else:
        # No eval loss when nothing was left to train (a re-run of a finished workdir): not "eval loss None".
        loss = "" if result.eval_loss is None else f"; eval loss {result.eval_loss}"
        print(f"finished at step {result.final_step}{loss}", flush=True)


if __name__ == "__main__":
    app.run(main, flags_parser=_parse_flags)
