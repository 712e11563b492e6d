"""Smoke tier: a tiny HOPE (self-modifying Titans + CMS) on the built-in corpus, on a CPU, in about three minutes
(80 steps).

    python -m hope_jax.main --config=configs/smoke.py --workdir=runs/smoke

Hardware: any CPU (2 cores are enough). Overrides: ``--config.train.num_steps=20`` and so on. The same shape as a
Transformer++ baseline: configs/smoke_transformer.py.

What differs from the HOPE presets, for a 2-core CPU budget only: the CMS is one test-time-trained ('lm') level of
period 32 and a frozen level, each 256 wide (the presets' period-512 level is longer than the 128-token sequences and
would never update; 32 keeps the presets' four updates per training sequence). The outer gradient goes through every
inner update (full BPTT), so the generators M_k, M_v, M_η are meta-learned too.
"""

from configs import smoke_transformer


def get_config():
    config = smoke_transformer.get_config()
    model = config.model
    model.name = "hope"
    model.cms.periods = (32, 0)
    model.cms.objectives = ("lm", "frozen")
    model.cms.hidden = (256, 256)
    # ~1.4 s a step on 2 cores with full BPTT: 80 steps keep the run near three minutes; the loss halves by step 25.
    config.train.num_steps = 80
    config.optim.levels.default.warmup_steps = 10
    config.optim.levels.default.decay_steps = 80
    config.checkpoint.every_steps = 40
    config.eval.every_steps = 40
    return config
