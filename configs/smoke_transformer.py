"""Smoke tier, Transformer++ baseline: the smoke shape (configs/smoke.py trains it as HOPE) as a Transformer++.

    python -m hope_jax.main --config=configs/smoke_transformer.py --workdir=runs/smoke_transformer

Also the cheap base config of the tests (tiny model overrides on top of it).

Hardware: any CPU (2 cores are enough). Overrides: ``--config.train.num_steps=20`` and so on.
"""

from configs import base


def get_config():
    config = base.get_config()
    config.model.name = "transformer"
    config.model.vocab_size = 192
    config.model.d_model = 128
    config.model.n_layers = 2
    config.model.n_heads = 4
    config.model.mlp_hidden = 384
    config.model.compute_dtype = "float32"

    config.train.seq_len = 128
    config.train.global_batch_size = 16
    config.train.num_steps = 300
    config.train.log_every_steps = 25

    config.optim.levels.default.lr = 3e-3
    config.optim.levels.default.warmup_steps = 30
    config.optim.levels.default.decay_steps = 300

    config.checkpoint.every_steps = 100
    config.eval.every_steps = 100
    config.eval.num_batches = 2
    return config
