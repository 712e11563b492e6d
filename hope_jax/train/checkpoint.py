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

import grain
import jax
import orbax.checkpoint as ocp

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
    configured = checkpoint_cfg.directory
    if not configured:
        return os.path.join(os.path.abspath(workdir), "checkpoints")
    if "://" in configured:
        return configured
    return os.path.abspath(os.path.expanduser(configured))


class ConfigMismatchError(ValueError):
    pass


def _code_defaults() -> dict[str, object]:
    """Every config key at its default (configs/base.py), flattened."""
    from configs import base  # the repository's config package; imported late, it imports hope_jax itself

    return flatten_config(base.get_config())


def check_compatible(saved_flat: dict, config, directory: str) -> None:
    """Refuse a checkpoint whose run-defining config differs from `config`, naming the keys.

    A key the checkpoint lacks (added to hope_jax after it was written) is accepted when its current value is the
    code's default: the default is what the older code did, so the run continues unchanged.
    """
    current = run_defining(flatten_config(config))
    saved = run_defining(saved_flat)
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


class Checkpointer:
    def __init__(self, directory: str, *, max_to_keep: int, async_save: bool) -> None:
        self.directory = directory
        self.manager = ocp.CheckpointManager(
            directory,
            options=ocp.CheckpointManagerOptions(
                max_to_keep=max_to_keep, enable_async_checkpointing=async_save, create=True
            ),
            item_handlers={
                "state": ocp.StandardCheckpointHandler(),
                "data": grain.checkpoint.CheckpointHandler(),
                "meta": ocp.JsonCheckpointHandler(),
            },
        )

    def latest_step(self) -> int | None:
        return self.manager.latest_step()

    def save(self, step: int, state: TrainState, data_iterator, config, *, force: bool = False) -> bool:
        meta = {"step": int(step), "config": flatten_config(config), "config_hash": config_hash(config)}
        saved = self.manager.save(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardSave(state),
                data=grain.checkpoint.CheckpointSave(data_iterator),
                meta=ocp.args.JsonSave(meta),
            ),
            force=force,
        )
        if saved:
            logging.info("checkpoint: saving step %d to %s", step, self.directory)
        return saved

    def restore(self, step: int, layout: StateLayout, data_iterator, config) -> TrainState:
        meta = self.manager.restore(step, args=ocp.args.Composite(meta=ocp.args.JsonRestore()))["meta"]
        check_compatible(meta["config"], config, self.directory)
        restored = self.manager.restore(
            step,
            args=ocp.args.Composite(
                state=ocp.args.StandardRestore(layout.abstract),
                data=grain.checkpoint.CheckpointRestore(data_iterator),
            ),
        )
        logging.info("checkpoint: restored step %d from %s", step, self.directory)
        return jax.tree.map(lambda x: x, restored["state"])

    def wait(self) -> None:
        self.manager.wait_until_finished()

    def close(self) -> None:
        self.manager.wait_until_finished()
        self.manager.close()
