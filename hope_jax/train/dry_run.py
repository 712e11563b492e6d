"""`python -m hope_jax.main ... --dry_run`: everything a run decides before its first step — the resolved config, the
parameter count, the compiled step's memory per device — without training or writing anything."""

from __future__ import annotations

import jax

from data_pipeline.errors import DataError
from hope_jax.models.registry import flops_per_token
from hope_jax.train.loop import ConfigError, check_settings
from hope_jax.train.report import describe_memory, memory_per_device
from hope_jax.train.trainer import build_trainer


def dry_run(config) -> dict:
    """Validate, build and compile the train step of `config`; returns what was found (the data need not exist yet:
    a missing build is reported in `data`, not raised)."""
    check_settings(config, data=False)
    try:
        check_settings(config)
        data = "ready"
    except ConfigError as error:
        if not isinstance(error.__cause__, DataError):
            raise
        data = str(error)
    jax.config.update("jax_default_matmul_precision", config.train.matmul_precision)
    trainer = build_trainer(config)
    memory = memory_per_device(trainer.lower().compile())
    return {
        "model": config.model.name,
        "num_params": trainer.num_params,
        "flops_per_token": flops_per_token(config.model, config.train.seq_len)["total"],
        "devices": f"{jax.device_count()} x {jax.devices()[0].platform}",
        "mesh": dict(trainer.mesh.shape),
        "tokens_per_step": config.train.global_batch_size * config.train.seq_len,
        "memory_per_device_gib": memory,
        "data": data,
    }


def describe(report: dict) -> str:
    return "\n".join(
        [
            f"model {report['model']}: {report['num_params']:,} parameters, "
            f"{report['flops_per_token'] / 1e9:.3f} GFLOP per token (train)",
            f"devices: {report['devices']}, mesh {report['mesh']}, {report['tokens_per_step']:,} tokens per step",
            describe_memory(report["memory_per_device_gib"]),
            f"data: {report['data']}",
        ]
    )
