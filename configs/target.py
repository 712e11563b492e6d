"""Target tier (see configs/tiers.py for its hardware, model size, sequence length and batch).

    python -m hope_jax.main --config=configs/target.py --workdir=runs/target
    python -m hope_jax.main --config=configs/target.py:transformer --workdir=runs/target-transformer   # a baseline

The optional argument after ':' names the model: one of configs.tiers.MODELS (default hope).
"""

from configs import tiers


def get_config(model: str = "hope"):
    return tiers.tier_config("target", model)
