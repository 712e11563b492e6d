"""Early, named failures for shapes that cannot work (DESIGN D13), before anything is compiled or allocated."""

from __future__ import annotations

import math

from hope_jax import sharding as shd
from hope_jax.optim.config import validate_optim_config
from hope_jax.train.metrics import validate_logging_config


def _chunk_like_keys(node, prefix: str = "model."):
    """(dotted key, value) for every positive integer model setting that the sequence length must be a multiple of."""
    for key, value in node.items():
        name = prefix + key
        if hasattr(value, "items"):
            yield from _chunk_like_keys(value, name + ".")
        elif key.endswith("chunk_size") and isinstance(value, int) and value > 0:
            yield name, value


def validate_config(config, num_devices: int) -> None:
    validate_logging_config(config.logging)
    validate_optim_config(config.optim)
    train = config.train
    if train.seq_len <= 0 or train.global_batch_size <= 0 or train.num_steps < 0:
        raise ValueError(
            "train.seq_len and train.global_batch_size must be positive and train.num_steps non-negative, got "
            f"{train.seq_len}, {train.global_batch_size}, {train.num_steps}"
        )
    for name, chunk in _chunk_like_keys(config.model):
        if train.seq_len % chunk:
            raise ValueError(f"train.seq_len={train.seq_len} is not divisible by {name}={chunk}")
    data, fsdp, _ = shd.resolve_mesh_shape(config.mesh, num_devices)
    rules = shd.axis_rules(config.mesh)
    batch_axes = rules["batch"]
    batch_axes = (batch_axes,) if isinstance(batch_axes, str) else tuple(batch_axes or ())
    sizes = {"data": data, "fsdp": fsdp, "tensor": num_devices // (data * fsdp)}
    batch_shards = math.prod(sizes[a] for a in batch_axes)
    per_step = train.global_batch_size // max(train.grad_accum_steps, 1)
    if train.grad_accum_steps < 1 or train.global_batch_size % train.grad_accum_steps:
        raise ValueError(
            f"train.global_batch_size={train.global_batch_size} is not divisible by "
            f"train.grad_accum_steps={train.grad_accum_steps}"
        )
    if per_step % batch_shards:
        raise ValueError(
            f"the micro-batch of {per_step} sequences (train.global_batch_size / train.grad_accum_steps) is not "
            f"divisible by the {batch_shards} data-parallel shards of the mesh {sizes}"
        )
    if train.nonfinite not in ("halt", "skip"):
        raise ValueError(f"train.nonfinite must be 'halt' or 'skip', got {train.nonfinite!r}")
    if train.max_consecutive_skips < 0:
        raise ValueError(f"train.max_consecutive_skips must be ≥ 0, got {train.max_consecutive_skips}")
    if train.matmul_precision not in ("default", "high", "highest"):
        raise ValueError(
            f"train.matmul_precision must be 'default', 'high' or 'highest', got {train.matmul_precision!r}"
        )
