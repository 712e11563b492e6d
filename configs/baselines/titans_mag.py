"""Baseline titans_mag at a tier's size, data and schedule (default pilot), matched in parameters to HOPE (DESIGN D8).

    python -m hope_jax.main --config=configs/baselines/titans_mag.py --workdir=runs/pilot-titans_mag
    python -m hope_jax.main --config=configs/baselines/titans_mag.py:mid --workdir=runs/mid-titans_mag
"""

from configs import tiers


def get_config(tier: str = "pilot"):
    return tiers.tier_config(tier, "titans_mag")
