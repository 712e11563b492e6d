"""The training loop: build, restore or initialise, compile ahead of time, run, log, evaluate, checkpoint, stop cleanly."""

from __future__ import annotations

import dataclasses
import logging
import os
import signal
import time

import jax
import numpy as np
from clu import periodic_actions

from data_pipeline.loader import check_vocab
from data_pipeline.process_shards import process_loader
from hope_jax.distributed import StopAgreement, barrier, to_host
from hope_jax.models.registry import flops_per_token
from hope_jax.optim.builder import learning_rates
from hope_jax.train.checkpoint import Checkpointer, checkpoint_directory, config_hash
from hope_jax.train.metrics import MetricsLogger, peak_flops_per_device
from hope_jax.train.report import StepClock, describe_memory, memory_per_device, save_resolved_config, step_line
from hope_jax.train.state import create_train_state
from hope_jax.train.trainer import build_trainer
from hope_jax.train.validate import validate_config


class ConfigError(ValueError):
    """A setting that cannot work (shape, key, value, data not built), found before anything is built or written."""


class NonFiniteLossError(FloatingPointError):
    def __init__(self, message: str, step: int):
        super().__init__(message)
        self.step = step  # the step that stopped the run (the first non-finite one, or the last skip allowed)


@dataclasses.dataclass
class TrainResult:
    final_step: int
    losses: dict[int, float]  # step -> training loss, for every step run in this call
    eval_loss: float | None
    stopped_by_signal: bool
    params: object  # final parameters, on the host
    skipped_steps: list[int] = dataclasses.field(default_factory=list)  # non-finite steps dropped (nonfinite='skip')
    stopped_during_startup: bool = False  # SIGTERM before the first step: nothing was trained or saved


class _StopSignal:
    """Turns SIGTERM (Slurm preemption, `kill`) into a flag the loop checks between steps."""

    def __init__(self) -> None:
        self.received = False
        self._previous = None

    def __enter__(self):
        def handler(signum, frame):
            logging.warning("received signal %d: saving a checkpoint and exiting", signum)
            self.received = True

        try:
            self._previous = signal.signal(signal.SIGTERM, handler)
        except ValueError:  # not the main thread: nothing to install
            self._previous = None
        return self

    def __exit__(self, *exc) -> None:
        if self._previous is not None:
            signal.signal(signal.SIGTERM, self._previous)


def _device_batch(batch, sharding):
    return {k: jax.make_array_from_process_local_data(sharding, np.asarray(v)) for k, v in batch.items()}


def _loader(config, split: str):
    """This process's slice of a split, in batches of the configured shape (its reading shards: data.num_shards)."""
    return process_loader(config, split)


def evaluate(config, trainer, params) -> float:
    """Mean token loss over the first eval.num_batches batches of the validation split (the same batches every time)."""
    loader = _loader(config, "validation")
    nll_total, weight_total = 0.0, 0.0
    for _, batch in zip(range(config.eval.num_batches), loader):
        with jax.set_mesh(trainer.mesh):
            nll, weight = trainer.eval_step(params, _device_batch(batch, trainer.batch_sharding))
        nll_total += float(nll)
        weight_total += float(weight)
    if weight_total == 0:
        raise ValueError("the validation split yielded no batch: lower train.global_batch_size or train.seq_len")
    return nll_total / weight_total


def check_settings(config, *, data: bool = True) -> None:
    """Every check that needs no model: shapes, keys and values, and (with `data`) that the data exist and fit the
    vocabulary. Raises ConfigError, which the entry point prints as one line rather than a traceback."""
    try:
        validate_config(config, jax.device_count())
        if data:
            check_vocab(config.data, config.model.vocab_size)
    except ValueError as error:  # DataError included
        raise ConfigError(str(error)) from error


def train(config, workdir: str) -> TrainResult:
    # SIGTERM from the first line on: a preemption during start-up (build, restore, compile) stops the run cleanly
    # before its first step instead of killing it with -15.
    with _StopSignal() as stop:
        return _train(config, workdir, stop)


def _train(config, workdir: str, stop: _StopSignal) -> TrainResult:
    check_settings(config)
    jax.config.update("jax_default_matmul_precision", config.train.matmul_precision)
    os.makedirs(workdir, exist_ok=True)

    # First, so that a checkpoint directory that cannot be written is named before anything is built.
    checkpointer = None
    if config.checkpoint.enabled:
        checkpointer = Checkpointer(
            checkpoint_directory(config.checkpoint, workdir),
            max_to_keep=config.checkpoint.max_to_keep,
            async_save=config.checkpoint.async_save,
        )

    trainer = build_trainer(config)
    logging.info(
        "devices: %d x %s (%d processes); mesh %s",
        jax.device_count(),
        jax.devices()[0].platform,
        jax.process_count(),
        dict(trainer.mesh.shape),
    )
    logging.info("model %s: %s parameters", config.model.name, f"{trainer.num_params:,}")

    data_iterator = _loader(config, "train")
    latest, state = None, None
    if checkpointer is not None:
        latest, state = checkpointer.restore_newest_good(trainer.layout, data_iterator, config)
    if latest is not None:
        logging.info("resuming from step %d", latest)
        if latest > config.train.num_steps:
            checkpointer.close()
            raise ValueError(
                f"train.num_steps={config.train.num_steps} is below the step of the checkpoint to resume from "
                f"({latest}, in {checkpointer.directory}): raise train.num_steps, or use a new --workdir"
            )
    else:
        state = create_train_state(config.model, trainer.tx, trainer.layout, config.train.seed)

    compile_start = time.time()
    compiled_step = trainer.lower().compile()
    logging.info("train step compiled in %.1f s", time.time() - compile_start)
    barrier("compiled")  # multi-process: every process starts step 1 together
    logging.info(describe_memory(memory_per_device(compiled_step)))

    metrics_logger = MetricsLogger.from_config(
        workdir, config, resumed_step=int(state.step) if latest is not None else None
    )
    metrics_logger.write_hparams({"config_hash": config_hash(config), "num_params": trainer.num_params})
    metrics_logger.write_config(config)
    if jax.process_index() == 0:
        logging.info("resolved config saved in %s", save_resolved_config(config, workdir))
    report_progress = periodic_actions.ReportProgress(
        num_train_steps=config.train.num_steps, writer=metrics_logger.progress_writer(), every_secs=30
    )
    flops = flops_per_token(config.model, config.train.seq_len)
    peak_flops = peak_flops_per_device(config.logging.peak_flops_per_device)
    start_step = int(state.step)
    losses: dict[int, float] = {}
    eval_loss, evaluated_at = None, None
    pending: tuple[int, dict] | None = None  # the previous step's metrics, read one step late so the device never idles
    window_start, window_tokens = time.time(), 0.0
    clock = StepClock(start_step + 1, config.train.num_steps)

    last_saved = start_step
    skipped: list[int] = []
    skips_in_a_row = 0

    def save(step: int, force: bool = False) -> None:
        nonlocal last_saved
        if checkpointer is not None and step != last_saved:
            checkpointer.save(step, state, data_iterator, config, force=force)
            last_saved = step

    def kept() -> str:
        if checkpointer is None:
            return "checkpoints are off"
        return f"the last checkpoint (step {last_saved}) is kept" if last_saved else "no checkpoint was saved yet"

    def absorb(step: int, metrics: dict) -> None:
        nonlocal window_start, window_tokens, skips_in_a_row
        host = jax.device_get(metrics)
        if host["nonfinite"]:
            values = ", ".join(f"{k}={float(host[k]):.4g}" for k in ("loss", "grad_norm", "update_norm"))
            if config.train.nonfinite == "halt":
                raise NonFiniteLossError(
                    f"non-finite step {step} ({values}; the update was not applied): the run stops here and {kept()}. "
                    "Set train.nonfinite='skip' to drop such updates instead.",
                    step,
                )
            skipped.append(step)
            skips_in_a_row += 1
            if skips_in_a_row > config.train.max_consecutive_skips:
                raise NonFiniteLossError(
                    f"{skips_in_a_row} non-finite steps in a row (steps {step - skips_in_a_row + 1}..{step}, the last "
                    f"with {values}) exceed train.max_consecutive_skips={config.train.max_consecutive_skips}: the run "
                    f"stops here and {kept()}",
                    step,
                )
        else:
            skips_in_a_row = 0
        losses[step] = float(host["loss"])
        window_tokens += float(host["tokens"])
        if step % config.train.log_every_steps == 0 or step in (start_step + 1, config.train.num_steps):
            elapsed = max(time.time() - window_start, 1e-9)
            tokens_per_s = window_tokens / elapsed
            scalars = {k: v for k, v in host.items() if k != "tokens"}
            scalars["tokens_per_s"] = tokens_per_s
            scalars["model_tflops_per_s"] = tokens_per_s * flops["total"] / 1e12
            if peak_flops is not None:
                scalars["mfu"] = tokens_per_s * flops["total"] / (peak_flops * jax.device_count())
            rates = learning_rates(config.optim, step, total_steps=config.train.num_steps)
            scalars.update({f"lr/{name}": lr for name, lr in rates.items()})
            metrics_logger.write_scalars(step, scalars)
            logging.info(step_line(step, config.train.num_steps, scalars, rates, clock.tick(step)))
            window_start, window_tokens = time.time(), 0.0
        else:
            clock.tick(step)

    agreement = StopAgreement()  # multi-process: every process stops after the same step
    stopped_at_start = stopped = agreement.should_stop(start_step, stop.received)
    last_step = start_step if stopped_at_start else config.train.num_steps
    try:
        for step in range(start_step + 1, last_step + 1):
            batch = _device_batch(next(data_iterator), trainer.batch_sharding)
            state, metrics = compiled_step(state, batch)
            if pending is not None:
                absorb(*pending)
            pending = (step, metrics)
            report_progress(step)
            if config.checkpoint.every_steps and step % config.checkpoint.every_steps == 0:
                absorb(*pending)  # never checkpoint a state whose loss was not checked
                pending = None
                save(step)
            if config.eval.every_steps and step % config.eval.every_steps == 0:
                eval_loss, evaluated_at = evaluate(config, trainer, state.params), step
                metrics_logger.write_scalars(step, {"eval_loss": eval_loss})
                logging.info("step %d: eval loss %.4f", step, eval_loss)
            if agreement.should_stop(step, stop.received):
                if pending is not None:
                    absorb(*pending)
                    pending = None
                save(step, force=True)
                stopped = True
                break
        if pending is not None:
            absorb(*pending)
        final_step = int(state.step)
        if not stopped and final_step > start_step:
            save(final_step, force=True)
            if config.eval.num_batches and evaluated_at != final_step:  # the last step's eval is written once
                eval_loss = evaluate(config, trainer, state.params)
                metrics_logger.write_scalars(final_step, {"eval_loss": eval_loss})
                logging.info("final eval loss %.4f", eval_loss)
    finally:
        if checkpointer is not None:
            checkpointer.close()
        metrics_logger.close()
    if stopped_at_start:
        logging.warning(
            "stopped by signal during start-up, before step %d: nothing to save; rerun to resume", last_step + 1
        )
    elif stopped:
        logging.warning("stopped by signal after step %d; the checkpoint is saved, rerun to resume", final_step)
    if skipped:
        logging.warning(
            "skipped %d non-finite step(s) of %d (train.nonfinite='skip'): %s",
            len(skipped), final_step - start_step, ", ".join(map(str, skipped[:20])) + (" …" if skipped[20:] else ""),
        )  # fmt: skip
    return TrainResult(
        final_step=final_step,
        losses=losses,
        eval_loss=eval_loss,
        stopped_by_signal=stopped,
        params=to_host(state.params),
        skipped_steps=skipped,
        stopped_during_startup=stopped_at_start,
    )
