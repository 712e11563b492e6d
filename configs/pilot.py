"""Pilot tier (see configs/tiers.py for its hardware, model size, sequence length and batch).

    python -m hope_jax.main --config=configs/pilot.py --workdir=runs/pilot
    python -m hope_jax.main --config=configs/pilot.py:transformer --workdir=runs/pilot-transformer   # a baseline

The optional argument after ':' names the model: one of configs.tiers.MODELS (default hope).
"""

from configs import tiers


def get_config(model: str = "hope"):
    return tiers.tier_config("pilot", model)
