"""The config schema: every key any part of hope_jax reads, with its default (configs/base.py is this; tier files in
configs/ override a few keys).

Each sub-system owns its section (model, optim, data); this module composes them with the training-loop sections. It
lives in the library so that checkpoints and eval can rebuild a run's config without importing the configs/ package.
The config is locked by hope_jax.main, so a misspelt override (``--config.train.num_stpes=5``) fails and names the key.
"""

import ml_collections

from data_pipeline.config import default_data_config
from hope_jax.models.config import default_model_config
from hope_jax.optim import default_optim_config


def default_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.model = default_model_config()
    config.optim = default_optim_config()
    config.data = default_data_config()

    config.train = ml_collections.ConfigDict(
        {
            "seed": 0,
            "seq_len": 512,
            "global_batch_size": 32,
            "num_steps": 1000,
            # Micro-batches per step: gradients of global_batch_size // grad_accum_steps sequences are summed.
            "grad_accum_steps": 1,
            # 'halt': stop the run at a non-finite step (loss, gradient, update or parameters; nothing non-finite is
            # ever saved); 'skip': drop that update, and stop once more than max_consecutive_skips are dropped in a row.
            "nonfinite": "halt",
            "max_consecutive_skips": 10,
            # jax default matmul precision: 'default' | 'high' | 'highest'.
            "matmul_precision": "default",
            "log_every_steps": 10,
        }
    )
    config.checkpoint = ml_collections.ConfigDict(
        {
            "enabled": True,
            "every_steps": 200,
            "max_to_keep": 3,
            "async_save": True,
            # Where checkpoints go; empty: <workdir>/checkpoints. A local path, or a gs:// / s3:// URL that orbax
            # (tensorstore) writes directly; metrics and logs stay in the (local) workdir. See launch/README.md.
            "directory": "",
        }
    )
    config.logging = ml_collections.ConfigDict(
        {
            # TensorBoard event files through clu (imports tensorflow once, CPU only).
            "tensorboard": True,
            # Peak FLOP/s of one device for MFU; 0: look the device kind up in hope_jax.train.metrics (GPUs only).
            "peak_flops_per_device": 0.0,
            # 'clu': the JSON-lines file (+ TensorBoard above). 'wandb': the same plus a Weights & Biases run
            # (pip install wandb; hope_jax/train/metrics.py).
            "backend": "clu",
            "wandb_project": "hope_jax",
            "wandb_run_name": "",  # empty: the workdir's name
            # '' (the WANDB_MODE environment variable if set, else 'online') | 'online' | 'offline' (written under
            # <workdir>/wandb, sync later with `wandb sync`) | 'disabled'. An explicit value beats WANDB_MODE. A failed
            # online init falls back to offline with one warning; the run itself never fails for W&B.
            "wandb_mode": "",
        }
    )
    config.mesh = ml_collections.ConfigDict(
        {
            # Sizes of the ('data', 'fsdp', 'tensor') mesh axes; one of them may be -1 (all remaining devices).
            "data": -1,
            "fsdp": 1,
            "tensor": 1,
            # Overrides of hope_jax.sharding.LOGICAL_AXIS_RULES: a tuple of (logical_axis, mesh_axes) pairs.
            "rules": (),
        }
    )
    config.eval = ml_collections.ConfigDict(
        {
            # Held-out evaluation every N steps (0: only at the end of training).
            "every_steps": 200,
            "num_batches": 4,
        }
    )
    return config
