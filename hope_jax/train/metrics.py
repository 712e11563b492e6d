"""Metric writers (DESIGN D11): clu's TensorBoard + logging writers, and a JSON-lines file flushed at every write so that
a crash loses nothing; optionally a Weights & Biases run (`logging.backend='wandb'`). Only process 0 writes.

The JSON-lines file is always written. TensorBoard follows `logging.tensorboard`. With `logging.backend='wandb'` the same
scalars also go to W&B: project `logging.wandb_project`, run name `logging.wandb_run_name` (empty: the workdir's name).
The `wandb` package is imported only then (it is not in requirements.txt: `pip install wandb`); whether it is installed
is checked by validate_logging_config, which training calls before the model is built. The run id is kept in
<workdir>/metrics/wandb_run_id, so a resumed training run continues the same W&B run.

W&B mode (resolve_wandb_mode): an explicit `logging.wandb_mode` ('online' | 'offline' | 'disabled') wins; the default ''
defers to the WANDB_MODE environment variable (online, offline, disabled, or wandb's aliases dryrun = offline and
run = online; any other value is an error naming the variable), and without it the mode is 'online'. 'offline' writes
under <workdir>/wandb for a later `wandb sync`.

The logger never costs a training run: wandb.init gets a bounded timeout (WANDB_INIT_TIMEOUT_S seconds, unless the
WANDB_INIT_TIMEOUT environment variable sets wandb's own). If an online init fails (no network: CommError, a timeout,
any other Exception), one warning says so and the run goes on with W&B offline under <workdir>/wandb; if that init fails
as well, one warning and W&B is off for the run. An exception from a later log / config update / finish gives one
warning and turns the W&B writer off for the rest of the run. The JSON-lines file and TensorBoard go on in every case.

Every line of the JSON-lines file is strict JSON (RFC 8259): a non-finite value (NaN, ±inf) is written as null; the
step's `nonfinite` metric says such a step happened. Each step appears once across restarts of the same workdir:
`MetricsLogger.from_config(..., resumed_step=S)` first cuts the file back to the records of steps <= S (the steps after
S are replayed and logged again); a fresh start moves an earlier file aside (see MetricsLogger.from_config).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
import os
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping

import jax
import numpy as np


def _hide_accelerators_from_tensorflow() -> None:
    # clu's summary writer imports tensorflow; without this TF would reserve GPU memory that JAX needs (DESIGN D9).
    import tensorflow as tf

    tf.config.set_visible_devices([], "GPU")


# Dense bf16 peak FLOP/s per device by jax device_kind (vendor datasheets, without sparsity). A kind not listed here
# reports no MFU unless logging.peak_flops_per_device gives the number.
PEAK_FLOPS_BY_DEVICE_KIND = {
    "NVIDIA H100 80GB HBM3": 989e12,
    "NVIDIA H100": 989e12,
    "NVIDIA H200": 989e12,
    "NVIDIA A100-SXM4-80GB": 312e12,
    "NVIDIA A100-SXM4-40GB": 312e12,
    "NVIDIA RTX 6000 Ada Generation": 364e12,
}


def peak_flops_per_device(configured: float) -> float | None:
    """The configured peak (if > 0), else the datasheet peak of this device kind, else None (MFU is not reported)."""
    if configured > 0:
        return configured
    return PEAK_FLOPS_BY_DEVICE_KIND.get(jax.devices()[0].device_kind)


def _scalar(value) -> float:
    return float(np.asarray(value))


def _json_line(record: Mapping[str, object]) -> str:
    """One strict-JSON line: non-finite floats (top level, as every record here is flat) become null."""
    finite = {k: None if isinstance(v, float) and not math.isfinite(v) else v for k, v in record.items()}
    return json.dumps(finite, allow_nan=False) + "\n"


def truncate_jsonl(path: str, last_step: int) -> None:
    """Rewrite `path` atomically (temp file in the same directory, then os.replace) keeping only the records without a
    "step" (the {"hparams": ...} lines) and those with step <= last_step. A line that does not parse (one cut short by
    a kill) is dropped; older files' bare NaN / Infinity are rewritten as null."""
    if not os.path.exists(path):
        return
    kept = []
    with open(path, encoding="utf-8") as file:
        for line in file:
            try:
                record = json.loads(line)
            except json.JSONDecodeError:
                continue
            if isinstance(record, dict) and ("step" not in record or record["step"] <= last_step):
                kept.append(_json_line(record))
    directory = os.path.dirname(path)
    fd, temp_path = tempfile.mkstemp(prefix=".metrics.", suffix=".tmp", dir=directory)
    try:
        with os.fdopen(fd, "w", encoding="utf-8") as file:
            file.writelines(kept)
            file.flush()
            os.fsync(file.fileno())
        os.replace(temp_path, path)
    except BaseException:
        if os.path.exists(temp_path):
            os.remove(temp_path)
        raise


def move_aside(path: str) -> str | None:
    """Rename an existing non-empty `path` to the first free `path.1`, `path.2`, ...; returns the new name."""
    if not os.path.exists(path) or os.path.getsize(path) == 0:
        return None
    index = 1
    while os.path.exists(f"{path}.{index}"):
        index += 1
    os.replace(path, f"{path}.{index}")
    return f"{path}.{index}"


class JsonlWriter:
    """One JSON object per write: {"step": s, "time": t, name: value, ...}, flushed immediately. Strict JSON: a
    non-finite value is written as null."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def write_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        record = {"step": int(step), "time": time.time()}
        record.update({k: _scalar(v) for k, v in scalars.items()})
        self._file.write(_json_line(record))
        self._file.flush()

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        self._file.write(_json_line({"hparams": {k: repr(v) for k, v in hparams.items()}}))
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


LOGGING_BACKENDS = ("clu", "wandb")
WANDB_MODES = ("online", "offline", "disabled")
# WANDB_MODE values wandb accepts, with its aliases resolved ('shared' is not used: only process 0 logs).
WANDB_ENV_MODES = {
    "online": "online",
    "offline": "offline",
    "disabled": "disabled",
    "dryrun": "offline",
    "run": "online",
}
# Seconds wandb.init may take before it gives up (wandb's own default is 90); WANDB_INIT_TIMEOUT, if set, wins.
WANDB_INIT_TIMEOUT_S = 60.0
WANDB_MISSING = "logging.backend='wandb' needs the wandb package: pip install wandb"


class WandbMissingError(ImportError, ValueError):
    """logging.backend='wandb' without the wandb package. A ValueError too, so that training's check_settings reports it
    as a one-line config error (ConfigError) before anything is built."""


def resolve_wandb_mode(configured: str, environ: Mapping[str, str] | None = None) -> str:
    """The W&B mode of a run: an explicit logging.wandb_mode wins; '' defers to WANDB_MODE (its aliases dryrun and run
    resolved), else 'online'. An unknown value of either raises ValueError naming it."""
    if configured:
        if configured not in WANDB_MODES:
            raise ValueError(
                f"logging.wandb_mode = {configured!r}; known: '' (WANDB_MODE, else online), {', '.join(WANDB_MODES)}"
            )
        return configured
    value = (os.environ if environ is None else environ).get("WANDB_MODE", "").strip()
    if not value:
        return "online"
    if value.lower() not in WANDB_ENV_MODES:
        raise ValueError(
            f"the environment variable WANDB_MODE = {value!r} (used because logging.wandb_mode is ''); known: "
            f"{', '.join(WANDB_ENV_MODES)}. Unset it or set logging.wandb_mode explicitly."
        )
    return WANDB_ENV_MODES[value.lower()]


def wandb_available() -> bool:
    """Whether `import wandb` can succeed, without importing it (a module already in sys.modules counts; None there
    means it is blocked)."""
    if "wandb" in sys.modules:
        return sys.modules["wandb"] is not None
    try:
        return importlib.util.find_spec("wandb") is not None
    except (ImportError, ValueError):
        return False


def validate_logging_config(logging_cfg) -> None:
    """Config errors first, then (backend 'wandb') the WANDB_MODE variable and the wandb package: called by
    validate_config before anything is built."""
    if logging_cfg.backend not in LOGGING_BACKENDS:
        raise ValueError(f"logging.backend = {logging_cfg.backend!r}; known: {', '.join(LOGGING_BACKENDS)}")
    if logging_cfg.wandb_mode and logging_cfg.wandb_mode not in WANDB_MODES:
        raise ValueError(
            f"logging.wandb_mode = {logging_cfg.wandb_mode!r}; known: '' (WANDB_MODE, else online), "
            f"{', '.join(WANDB_MODES)}"
        )
    if logging_cfg.backend == "wandb":
        if not logging_cfg.wandb_project:
            raise ValueError("logging.backend='wandb' needs logging.wandb_project (the W&B project name)")
        resolve_wandb_mode(logging_cfg.wandb_mode)
        if not wandb_available():
            raise WandbMissingError(WANDB_MISSING)


def _wandb_settings(wandb):
    """{'settings': wandb.Settings(init_timeout=...)} where this wandb has it and WANDB_INIT_TIMEOUT is not set, else {}."""
    if os.environ.get("WANDB_INIT_TIMEOUT") or not hasattr(wandb, "Settings"):
        return {}
    try:
        return {"settings": wandb.Settings(init_timeout=WANDB_INIT_TIMEOUT_S)}
    except Exception:  # an older wandb without init_timeout
        return {}


class WandbWriter:
    """Scalars and hyperparameters to one Weights & Biases run, resumed across restarts of the same workdir. Never
    raises after construction; see the module docstring for the fallbacks (online -> offline -> off)."""

    def __init__(self, workdir: str, *, project: str, run_name: str, mode: str, config: Mapping[str, object]) -> None:
        try:
            import wandb
        except ImportError as error:
            raise WandbMissingError(WANDB_MISSING) from error
        id_path = os.path.join(workdir, "metrics", "wandb_run_id")
        if os.path.exists(id_path):
            with open(id_path, encoding="utf-8") as file:
                run_id = file.read().strip()
        else:
            run_id = uuid.uuid4().hex[:12]
            os.makedirs(os.path.dirname(id_path), exist_ok=True)
            with open(id_path, "w", encoding="utf-8") as file:
                file.write(run_id + "\n")
        self.run_id = run_id
        self.mode = mode
        offline_dir = os.path.join(workdir, "wandb")
        init_kwargs = dict(
            project=project,
            name=run_name or os.path.basename(os.path.normpath(workdir)),
            id=run_id,
            resume="allow",
            dir=workdir,
            config=dict(config),
            **_wandb_settings(wandb),
        )
        self.run = None
        try:
            self.run = wandb.init(mode=mode, **init_kwargs)
        except Exception as error:
            if mode != "online":
                self._warn(f"wandb.init (mode={mode!r}) failed ({_describe(error)}); W&B is off for this run")
                return
            logging.warning(
                "wandb.init failed (%s); the run continues with W&B offline under %s (upload it later with "
                "`wandb sync %s`)",
                _describe(error),
                offline_dir,
                os.path.join(offline_dir, "offline-run-*"),
            )
            self.mode = "offline"
            try:
                self.run = wandb.init(mode="offline", **init_kwargs)
            except Exception as offline_error:
                self.run = None
                logging.warning(
                    "wandb.init (mode='offline') failed as well (%s); W&B is off for this run",
                    _describe(offline_error),
                )

    @staticmethod
    def _warn(message: str) -> None:
        logging.warning("%s", message)

    def _disable(self, action: str, error: Exception) -> None:
        self._warn(f"W&B {action} failed ({_describe(error)}); W&B is off for the rest of this run")
        self.run = None

    @property
    def active(self) -> bool:
        return self.run is not None

    def write_scalars(self, step: int, scalars: Mapping[str, float]) -> None:
        if self.run is None:
            return
        try:
            self.run.log(dict(scalars), step=int(step))
        except Exception as error:
            self._disable("log", error)

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        if self.run is None:
            return
        try:
            self.run.config.update(dict(hparams), allow_val_change=True)
        except Exception as error:
            self._disable("config.update", error)

    def close(self) -> None:
        run, self.run = self.run, None
        if run is None:  # never started, or turned off by a failure (not touched again: it may hang or raise)
            return
        try:
            run.finish()
        except Exception as error:
            self._warn(f"W&B finish failed ({_describe(error)})")


def _describe(error: BaseException) -> str:
    return f"{type(error).__name__}: {error}"


class MetricsLogger:
    """Fans scalars out to the JSON-lines file, (optionally) clu's TensorBoard writer and (optionally) W&B; no-op on
    processes other than 0."""

    def __init__(
        self,
        workdir: str,
        *,
        tensorboard: bool,
        wandb_settings: Mapping[str, object] | None = None,
        resumed_step: int | None = None,
    ) -> None:
        """wandb_settings: None (no W&B) or WandbWriter's keyword arguments (project, run_name, mode, config).
        resumed_step: see from_config."""
        self.active = jax.process_index() == 0
        self.jsonl_path = os.path.join(workdir, "metrics", "metrics.jsonl")
        self.clu_writer = None
        self.wandb_writer = None
        self.jsonl = None
        if self.active:
            if resumed_step is None:
                moved = move_aside(self.jsonl_path)
                if moved:
                    logging.warning("fresh start: the earlier %s is kept as %s", self.jsonl_path, moved)
            else:
                truncate_jsonl(self.jsonl_path, resumed_step)
            self.jsonl = JsonlWriter(self.jsonl_path)
        if self.active and tensorboard:
            _hide_accelerators_from_tensorflow()
            from clu import metric_writers

            self.clu_writer = metric_writers.create_default_writer(os.path.join(workdir, "metrics"), asynchronous=True)
        if self.active and wandb_settings is not None:
            self.wandb_writer = WandbWriter(workdir, **wandb_settings)

    @classmethod
    def from_config(cls, workdir: str, config, resumed_step: int | None = None) -> MetricsLogger:
        """resumed_step: the step of the checkpoint this run resumes from, or None for a fresh start.

        Resuming from step S first rewrites metrics.jsonl (atomically) to the records of steps <= S and the
        non-step ({"hparams": ...}) lines: the steps a killed run logged after S are replayed, and each step then
        appears once. A fresh start in a workdir that already holds a metrics.jsonl (checkpointing off, or a run killed
        before its first checkpoint) would log steps 1, 2, ... a second time, so the earlier file is renamed to
        metrics.jsonl.1 (.2, ... if taken) and a new one begun. TensorBoard and W&B are not rewritten (W&B ignores
        re-logged steps below its last one)."""
        logging_cfg = config.logging
        validate_logging_config(logging_cfg)
        wandb_settings = None
        if logging_cfg.backend == "wandb":
            from hope_jax.train.checkpoint import flatten_config

            wandb_settings = {
                "project": logging_cfg.wandb_project,
                "run_name": logging_cfg.wandb_run_name,
                "mode": resolve_wandb_mode(logging_cfg.wandb_mode),
                "config": flatten_config(config),
            }
        return cls(
            workdir, tensorboard=logging_cfg.tensorboard, wandb_settings=wandb_settings, resumed_step=resumed_step
        )

    def write_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        if not self.active:
            return
        values = {k: _scalar(v) for k, v in scalars.items()}
        self.jsonl.write_scalars(step, values)
        if self.clu_writer is not None:
            self.clu_writer.write_scalars(step, values)
        if self.wandb_writer is not None:
            self.wandb_writer.write_scalars(step, values)

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        if not self.active:
            return
        self.jsonl.write_hparams(hparams)
        if self.wandb_writer is not None:
            self.wandb_writer.write_hparams(hparams)

    def write_config(self, config) -> None:
        """The resolved config as text in TensorBoard (Text tab, step 0); the file copy is <workdir>/config.json."""
        if self.active and self.clu_writer is not None:
            self.clu_writer.write_texts(0, {"config": f"```\n{config}\n```"})

    def progress_writer(self):
        """The writer clu's ReportProgress reports steps/s to (None when TensorBoard is off)."""
        return self.clu_writer

    def close(self) -> None:
        if not self.active:
            return
        self.jsonl.close()
        if self.clu_writer is not None:
            self.clu_writer.flush()
            self.clu_writer.close()
        if self.wandb_writer is not None:
            self.wandb_writer.close()
