"""Baseline titans_lmm at a tier's size, data and schedule (default pilot), matched in parameters to HOPE (DESIGN D8).

    python -m hope_jax.main --config=configs/baselines/titans_lmm.py --workdir=runs/pilot-titans_lmm
    python -m hope_jax.main --config=configs/baselines/titans_lmm.py:mid --workdir=runs/mid-titans_lmm
"""

from configs import tiers


def get_config(tier: str = "pilot"):
    return tiers.tier_config(tier, "titans_lmm")
