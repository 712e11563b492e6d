"""Titans (LMM) ablations, one per row of the paper's Table 5 (HOPE_SPEC §9.1, T5), on a tier (default pilot).

    python -m hope_jax.main --config=configs/ablations/titans.py:linear_memory --workdir=runs/pilot-titans-linear

Rows: full, linear_memory, no_conv, no_momentum, no_weight_decay, no_persistent_memory (the last on MAC, which has it).
"""

from configs.ablations.common import ablation_config

ROWS = {
    "full": ("titans_lmm", {}),
    "linear_memory": ("titans_lmm", {"titans.memory_depth": 1}),
    "no_conv": ("titans_lmm", {"titans.conv": False}),
    "no_momentum": ("titans_lmm", {"titans.momentum": False}),
    "no_weight_decay": ("titans_lmm", {"titans.weight_decay": False}),
    "no_persistent_memory": ("titans_mac", {"n_persistent_tokens": 0}),
}


def get_config(arg: str = "full"):
    return ablation_config(ROWS, arg)
