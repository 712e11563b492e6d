"""Exact checkpoints (DESIGN D10): one orbax composite of train state + grain iterator state + metadata, per step.

Orbax writes each step to a temporary directory and renames it when complete, so a crash mid-save never corrupts the last
good checkpoint. The metadata records the flattened config; a checkpoint whose run-defining keys differ from the current
config refuses to load and names the keys.
"""

from __future__ import annotations

import hashlib
import json
import logging
import os
import shutil

import grain
import jax
import orbax.checkpoint as ocp

from hope_jax.config_schema import default_config
from hope_jax.distributed import barrier
from hope_jax.optim.config import without_removed_defaults
from hope_jax.train import integrity
from hope_jax.train.state import StateLayout, TrainState

# Keys that may change between a run and its resumption without changing what is being trained.
RESUMABLE_PREFIXES = ("train.num_steps", "train.log_every_steps", "checkpoint.", "logging.", "eval.", "mesh.")


def flatten_config(config) -> dict[str, object]:
    flat: dict[str, object] = {}

    def visit(prefix: str, node) -> None:
        for key, value in sorted(node.items()):
            name = f"{prefix}{key}"
            if hasattr(value, "items"):
                visit(name + ".", value)
            else:
                flat[name] = list(value) if isinstance(value, tuple) else value

    visit("", config)
    return json.loads(json.dumps(flat, default=repr))


def run_defining(flat: dict[str, object]) -> dict[str, object]:
    return {k: v for k, v in flat.items() if not k.startswith(RESUMABLE_PREFIXES)}


def config_hash(config) -> str:
    payload = json.dumps(run_defining(flatten_config(config)), sort_keys=True).encode()
    return hashlib.sha256(payload).hexdigest()[:16]


def checkpoint_directory(checkpoint_cfg, workdir: str) -> str:
    """checkpoint.directory if set (a URL such as gs://bucket/run is passed to orbax untouched; a local path is made
    absolute), else <workdir>/checkpoints."""
    return _resolve_directory(checkpoint_cfg.directory, workdir)


def _resolve_directory(configured: str, workdir: str) -> str:
    if not configured:
        return os.path.join(os.path.abspath(workdir), "checkpoints")
    if "://" in configured:
        return configured
    return os.path.abspath(os.path.expanduser(configured))


# The resolved config a run writes into its workdir at start (train/report.save_resolved_config).
RESOLVED_CONFIG = "config.json"


def run_checkpoint_directory(workdir: str) -> str:
    """Where the run trained in `workdir` keeps its checkpoints: checkpoint_directory of the resolved config it wrote
    at start (<workdir>/config.json, train/report.py), else <workdir>/checkpoints. Eval finds a run's checkpoints
    through this, so a run with checkpoint.directory set elsewhere is evaluated from --workdir alone."""
    path = os.path.join(workdir, RESOLVED_CONFIG)
    configured = ""
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            try:
                configured = json.load(file).get("checkpoint", {}).get("directory", "") or ""
            except (json.JSONDecodeError, AttributeError) as error:
                raise ValueError(f"{path}: not the JSON config a training run writes ({error})") from None
    return _resolve_directory(configured, workdir)


# The items of one checkpoint step (train saves all three; eval reads meta and the params inside state).
STATE_ITEM, DATA_ITEM, META_ITEM = integrity.ITEMS


def read_only_manager(directory: str) -> ocp.CheckpointManager:
    """A manager that reads a run's checkpoints and never writes, creates or cleans anything (eval)."""
    return ocp.CheckpointManager(
        directory,
        options=ocp.CheckpointManagerOptions(create=False, read_only=True),
        item_handlers={STATE_ITEM: ocp.PyTreeCheckpointHandler(), META_ITEM: ocp.JsonCheckpointHandler()},
    )


class ConfigMismatchError(ValueError):
    pass


def _code_defaults() -> dict[str, object]:
    """Every config key at its default (hope_jax/config_schema.py), flattened."""
    return flatten_config(default_config())


def check_compatible(saved_flat: dict, config, directory: str) -> None:
    """Refuse a checkpoint whose run-defining config differs from `config`, naming the keys.

    A key the checkpoint lacks (added to hope_jax after it was written) is accepted when its current value is the
    code's default: the default is what the older code did, so the run continues unchanged.
    """
    current = run_defining(flatten_config(config))
    saved = run_defining(without_removed_defaults(saved_flat))
    defaults = _code_defaults()
    absent = object()

    def differs(key: str) -> bool:
        now, then = current.get(key, absent), saved.get(key, absent)
        if then is absent and now is not absent and key in defaults and now == defaults[key]:
            return False
        return now != then

    differing = sorted(k for k in set(current) | set(saved) if differs(k))
    if differing:
        details = "; ".join(
            f"{k}: checkpoint={saved.get(k, '<absent>')!r} now={current.get(k, '<absent>')!r}" for k in differing
        )
        raise ConfigMismatchError(
            f"the checkpoint in {directory} was written by a different configuration ({details}). "
            "Use a new --workdir, or restore the original values."
        )


class NoGoodCheckpointError(RuntimeError):
    pass


class CheckpointWriteError(RuntimeError):
    pass


class Checkpointer:
    """The run's checkpoints: save with fingerprints, restore verified, fall back past damaged steps
    (train/integrity.py)."""

    def __init__(self, directory: str, *, max_to_keep: int, async_save: bool) -> None:
        self.directory = directory
        _check_writable(directory)
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep,
                enable_async_checkpointing=async_save,
                create=True,
                cleanup_tmp_directories=True,  # partial saves of a crashed run never block a resume
            ),
            item_handlers={
                STATE_ITEM: ocp.StandardCheckpointHandler(),
                DATA_ITEM: grain.checkpoint.CheckpointHandler(),
                META_ITEM: ocp.JsonCheckpointHandler(),
            },
        )

    def step_dir(self, step: int) -> str:
        return os.path.join(self.directory, str(step))

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator, config, *, force: bool = False) -> bool:
        fingerprints, nonfinite = integrity.state_fingerprints(state)
        bad = integrity.first_nonfinite(nonfinite)
        if bad is not None:
            raise NonFiniteStateError(f"refusing to save step {step}: non-finite values in {bad}")
        meta = {
            "step": int(step),
            "config": flatten_config(config),
            "config_hash": config_hash(config),
            "fingerprints": fingerprints,
            "data_sha256": integrity.data_state_digests(data_iterator),  # one per process
        }
        try:
            saved = self.manager.save(
                step,
                args=ocp.args.Composite(
                    **{
                        STATE_ITEM: ocp.args.StandardSave(state),
                        DATA_ITEM: grain.checkpoint.CheckpointSave(data_iterator),
                        META_ITEM: ocp.args.JsonSave(meta),
                    }
                ),
                force=force,
            )
        except Exception as error:  # noqa: BLE001 - orbax re-raises a failed async commit here, wrapped or not
            self._abandon(step, error)
        if saved:
            logging.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, layout: StateLayout, data_iterator, config) -> TrainState:
        """The verified state of `step` (the iterator restored in place). Raises CheckpointDamagedError naming the
        file or array, ConfigMismatchError for a checkpoint of another configuration."""
        integrity.check_files(step, self.step_dir(step))
        try:
            meta_args = ocp.args.Composite(**{META_ITEM: ocp.args.JsonRestore()})
            meta = self.manager.restore(step, args=meta_args)[META_ITEM]
            config_keys = meta["config"]
        except Exception as error:  # noqa: BLE001 - any failure to read the item is damage to it
            where = os.path.join(self.step_dir(step), META_ITEM)
            raise integrity.CheckpointDamagedError(step, where, integrity.describe(error)) from None
        check_compatible(config_keys, config, self.directory)
        items = {
            STATE_ITEM: ocp.args.StandardRestore(layout.abstract),
            DATA_ITEM: grain.checkpoint.CheckpointRestore(data_iterator),
        }
        restored = {}
        for name, args in items.items():  # one at a time, so that a failure names its item
            try:
                restored[name] = self.manager.restore(step, args=ocp.args.Composite(**{name: args}))[name]
            except Exception as error:  # noqa: BLE001
                where = os.path.join(self.step_dir(step), name)
                raise integrity.CheckpointDamagedError(step, where, integrity.describe(error)) from None
        state = jax.tree.map(lambda x: x, restored[STATE_ITEM])
        if "fingerprints" in meta:
            integrity.verify_state(step, state, meta["fingerprints"])
            if integrity.data_state_digest(data_iterator) != meta["data_sha256"][jax.process_index()]:
                where = os.path.join(self.step_dir(step), DATA_ITEM)
                raise integrity.CheckpointDamagedError(step, where, "the iterator state differs from the one saved")
        else:
            logging.warning("checkpoint step %d predates fingerprints: restored unverified", step)
        logging.info("checkpoint: restored step %d from %s", step, self.directory)
        return state

    def restore_newest_good(self, layout: StateLayout, data_iterator, config) -> tuple[int | None, TrainState | None]:
        """(step, state) of the newest checkpoint that restores and verifies, or (None, None) when there is none.

        A damaged step is named (file or array), set aside under `<directory>/damaged/` (never deleted) and the
        next older one is tried; every process restores the same step. Damage to every step raises
        NoGoodCheckpointError, so a run never silently starts over next to its damaged checkpoints.
        """
        damaged = []
        for step in sorted(self.manager.all_steps(), reverse=True):
            with integrity.quiet_failed_reads():
                try:
                    state, failure = self.restore(step, layout, data_iterator, config), None
                except integrity.CheckpointDamagedError as error:
                    state, failure = None, str(error)
            if integrity.all_agree(failure is None):
                if damaged:
                    logging.warning("checkpoint: resuming from step %d, the newest good checkpoint", step)
                return step, state
            message = failure or f"checkpoint step {step} is damaged on another process"
            aside = self._set_aside(step)
            logging.warning("%s; set aside as %s", message, aside)
            damaged.append(message)
        if damaged:
            raise NoGoodCheckpointError(
                f"no good checkpoint left in {self.directory} ({'; '.join(damaged)}); the damaged steps are in "
                f"{os.path.join(self.directory, integrity.DAMAGED_DIR)}. Use a new --workdir to start over."
            )
        return None, None

    def _set_aside(self, step: int) -> str:
        target = integrity.set_aside(self.directory, step)
        barrier(f"checkpoint_set_aside_{step}")
        self.manager.reload()
        return target

    def _abandon(self, step: int, error: Exception) -> None:
        """A save that cannot be written (permission, disk full): remove its partial directory, keep every earlier
        step, stop the run with one error naming the path (never wait on the other processes: they fail the same
        way, or stop at their next collective)."""
        if jax.process_index() == 0 and "://" not in self.directory and os.path.isdir(self.directory):
            for name in os.listdir(self.directory):
                if name.startswith(f"{step}.orbax-checkpoint-tmp"):
                    shutil.rmtree(os.path.join(self.directory, name), ignore_errors=True)
        raise CheckpointWriteError(
            f"cannot write checkpoint step {step} to {self.directory}: {integrity.describe(error)}; earlier checkpoints are kept"
        ) from None

    def wait(self) -> None:
        try:
            self.manager.wait_until_finished()
        except Exception as error:  # noqa: BLE001 - a failed async commit surfaces here
            self._abandon(self._newest_unfinished(), error)

    def _newest_unfinished(self) -> int:
        names = [n.split(".")[0] for n in os.listdir(self.directory) if ".orbax-checkpoint-tmp" in n]
        return max((int(n) for n in names if n.isdigit()), default=-1)

    def close(self) -> None:
        try:
            self.wait()
        finally:
            try:
                self.manager.close()
            except Exception as error:  # noqa: BLE001 - after a failed save: the failure is already being raised
                logging.debug("checkpoint manager close after a failed save: %s", error)


class NonFiniteStateError(RuntimeError):
    pass


def _check_writable(directory: str) -> None:
    """Fail at start, naming the path, when a local checkpoint directory cannot be written."""
    if "://" in directory or jax.process_index() != 0:
        return
    probe = os.path.join(directory, f".write-probe-{os.getpid()}")
    try:
        os.makedirs(directory, exist_ok=True)
        with open(probe, "w") as f:
            f.write("ok")
        os.remove(probe)
    except OSError as error:
        raise CheckpointWriteError(f"checkpoint.directory {directory} is not writable: {integrity.describe(error)}") from None
