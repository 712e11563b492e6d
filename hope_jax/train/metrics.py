"""Metric writers (DESIGN D11): clu's TensorBoard + logging writers, and a JSON-lines file flushed at every write so that
a crash loses nothing. Only process 0 writes."""

from __future__ import annotations

import json
import os
import time
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


class JsonlWriter:
    """One JSON object per write: {"step": s, "time": t, name: value, ...}, flushed immediately."""

    def __init__(self, path: str) -> None:
        os.makedirs(os.path.dirname(path), exist_ok=True)
        self.path = path
        self._file = open(path, "a", encoding="utf-8")  # noqa: SIM115 - held open for the run

    def write_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        record = {"step": int(step), "time": time.time()}
        record.update({k: _scalar(v) for k, v in scalars.items()})
        self._file.write(json.dumps(record) + "\n")
        self._file.flush()

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        self._file.write(json.dumps({"hparams": {k: repr(v) for k, v in hparams.items()}}) + "\n")
        self._file.flush()

    def flush(self) -> None:
        self._file.flush()

    def close(self) -> None:
        self._file.close()


class MetricsLogger:
    """Fans scalars out to the JSON-lines file and (optionally) clu's TensorBoard writer; no-op on processes other than 0."""

    def __init__(self, workdir: str, *, tensorboard: bool) -> None:
        self.active = jax.process_index() == 0
        self.jsonl_path = os.path.join(workdir, "metrics", "metrics.jsonl")
        self.clu_writer = None
        self.jsonl = JsonlWriter(self.jsonl_path) if self.active else None
        if self.active and tensorboard:
            _hide_accelerators_from_tensorflow()
            from clu import metric_writers

            self.clu_writer = metric_writers.create_default_writer(os.path.join(workdir, "metrics"), asynchronous=True)

    def write_scalars(self, step: int, scalars: Mapping[str, object]) -> None:
        if not self.active:
            return
        values = {k: _scalar(v) for k, v in scalars.items()}
        self.jsonl.write_scalars(step, values)
        if self.clu_writer is not None:
            self.clu_writer.write_scalars(step, values)

    def write_hparams(self, hparams: Mapping[str, object]) -> None:
        if not self.active:
            return
        self.jsonl.write_hparams(hparams)

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
