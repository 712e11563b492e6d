"""Titans ablations, one per row of the paper's Table 5 (HOPE_SPEC §9.1, T5), on a tier (default pilot).

    python -m hope_jax.main --config=configs/ablations/titans.py:linear_memory --workdir=runs/pilot-titans-linear

The base is the LMM, as in T5: the tier's titans_lmm, with its persistent tokens (models/titans.py). Rows: full,
linear_memory, no_conv, no_momentum, no_weight_decay, no_persistent_memory; each moves the count by under 0.5% (the
factor's own weights), so none needs a matching width. T5's '+Attn' rows are the tier's MAC and MAG
(`configs/<tier>.py:titans_mac`, `:titans_mag`), sized to the tier's label rather than to the LMM.
"""

from configs.ablations.common import Row, Table, ablation_config

TABLE = Table(
    model="titans_lmm",
    base={},
    rows={
        "full": Row(),
        "linear_memory": Row({"titans.memory_depth": 1}),
        "no_conv": Row({"titans.conv": False}),
        "no_momentum": Row({"titans.momentum": False}),
        "no_weight_decay": Row({"titans.weight_decay": False}),
        "no_persistent_memory": Row({"n_persistent_tokens": 0}),
    },
)
ROWS = TABLE.rows


def get_config(arg: str = "full"):
    return ablation_config(TABLE, arg)
