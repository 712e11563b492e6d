"""Baseline titans_mac at a tier's size, data and schedule (default pilot), matched in parameters to HOPE (DESIGN D8).

    python -m hope_jax.main --config=configs/baselines/titans_mac.py --workdir=runs/pilot-titans_mac
    python -m hope_jax.main --config=configs/baselines/titans_mac.py:mid --workdir=runs/mid-titans_mac
"""

from configs import tiers


def get_config(tier: str = "pilot"):
    return tiers.tier_config(tier, "titans_mac")
