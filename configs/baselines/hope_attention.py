"""Baseline hope_attention at a tier's size, data and schedule (default pilot), matched in parameters to HOPE (DESIGN D8).

    python -m hope_jax.main --config=configs/baselines/hope_attention.py --workdir=runs/pilot-hope_attention
    python -m hope_jax.main --config=configs/baselines/hope_attention.py:mid --workdir=runs/mid-hope_attention
"""

from configs import tiers


def get_config(tier: str = "pilot"):
    return tiers.tier_config(tier, "hope_attention")
