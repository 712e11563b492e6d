"""HOPE ablations, one per row of the paper's A-Table 6 (HOPE_SPEC §9.3), on a tier (default pilot).

    python -m hope_jax.main --config=configs/ablations/hope.py:no_dgd --workdir=runs/pilot-hope-no_dgd
    python -m hope_jax.main --config=configs/ablations/hope.py:no_cms,mid --workdir=runs/mid-hope-no_cms

Rows: full, no_dgd, no_momentum, no_weight_decay, no_cms, no_adaptive_k, no_adaptive_v, adaptive_q.
('adaptive_q' turns q's memory on: the paper's full HOPE ablates "w/o adaptive q" from a model that has it, HOPE_SPEC A2.)
"""

from configs.ablations.common import ablation_config

ROWS = {
    "full": ("hope", {}),
    "no_dgd": ("hope", {"memory.dgd": False}),
    "no_momentum": ("hope", {"memory.momentum": False}),
    "no_weight_decay": ("hope", {"memory.weight_decay": False}),
    "no_cms": ("hope", {"cms.enabled": False}),
    "no_adaptive_k": ("hope", {"memory.adaptive_k": False}),
    "no_adaptive_v": ("hope", {"memory.adaptive_v": False}),
    "adaptive_q": ("hope", {"memory.adaptive_q": True}),
}


def get_config(arg: str = "full"):
    return ablation_config(ROWS, arg)
