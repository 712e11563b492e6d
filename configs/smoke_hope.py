"""Smoke tier for HOPE: the smoke model's shape (configs/smoke.py) as a HOPE, on the built-in corpus, on a CPU.

    python -m hope_jax.main --config=configs/smoke_hope.py --workdir=runs/smoke_hope

The inner rates are the defaults (memory.eta_max 1.0, cms.inner_lr 0.1, ℓ2-normalised values): the run is stable with
them (notes: BUILD_NOTES.md, HOPE stability). What differs from the HOPE presets, for a 2-core CPU budget only:
- CMS = one in-context level at the memories' chunk size (16) and a frozen level, each 256 wide (the presets' third
  level, period 512, is longer than the 128-token smoke sequences: it would never update);
- memory.truncate_bptt (DESIGN D4 speed switch): the outer gradient does not go through the inner updates' data terms
  (the mixer's backward about 2× faster on this CPU; without it 300 steps take well over 3 minutes). Caveat: the
  generators M_k, M_v, M_η then receive no outer gradient at all (they act only through the truncated updates);
  M_α does, through the decay of the carried state.
"""

from configs import smoke


def get_config():
    config = smoke.get_config()
    model = config.model
    model.name = "hope"
    model.cms.periods = (16, 0)
    model.cms.objectives = ("local", "frozen")
    model.cms.hidden = (256, 256)
    model.memory.truncate_bptt = True
    return config
