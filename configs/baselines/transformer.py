"""Baseline transformer at a tier's size, data and schedule (default pilot), matched in parameters to HOPE (DESIGN D8).

    python -m hope_jax.main --config=configs/baselines/transformer.py --workdir=runs/pilot-transformer
    python -m hope_jax.main --config=configs/baselines/transformer.py:mid --workdir=runs/mid-transformer
"""

from configs import tiers


def get_config(tier: str = "pilot"):
    return tiers.tier_config(tier, "transformer")
