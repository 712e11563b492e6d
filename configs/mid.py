"""Mid tier (see configs/tiers.py for its hardware, model size, sequence length and batch).

    python -m hope_jax.main --config=configs/mid.py --workdir=runs/mid
    python -m hope_jax.main --config=configs/mid.py:transformer --workdir=runs/mid-transformer   # a baseline

The optional argument after ':' names the model: one of configs.tiers.MODELS (default hope).
"""

from configs import tiers


def get_config(model: str = "hope"):
    return tiers.tier_config("mid", model)
