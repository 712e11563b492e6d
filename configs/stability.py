"""Stability runs (`python -m hope_jax.bench stability`): the smoke shape at ordinary learning rates, every model.

    python -m hope_jax.bench stability --config=configs/stability.py --models=all \
        --data=mixture:runs/sample/sample.yaml:256 --lrs=1e-3,3e-3 --steps=300

d_model 128, 2 layers, 4 heads, batch 16, 30 warmup steps then a cosine decay over the run (the bench sets the
peak lr and the decay length); HOPE's CMS is one test-time-trained ('lm') level of
period 64 (a quarter of the 256-token sequences, as the presets' 512 of 2048) and a frozen level, 256 wide. Full BPTT
through every inner update (no memory.truncate_bptt). The bench matches the SwiGLU models' parameter counts to HOPE's.
"""

from configs import smoke


def get_config():
    config = smoke.get_config()
    config.model.name = "hope"
    config.model.cms.periods = (64, 0)
    config.train.log_every_steps = 50
    config.eval.num_batches = 4
    return config
