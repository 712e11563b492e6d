"""HOPE ablations, one per row of the paper's A-Table 6 (HOPE_SPEC §9.3), on a tier (default pilot).

    python -m hope_jax.main --config=configs/ablations/hope.py:no_dgd --workdir=runs/pilot-hope-no_dgd
    python -m hope_jax.main --config=configs/ablations/hope.py:no_cms,mid --workdir=runs/mid-hope-no_cms

The table's base is the paper's full HOPE, which adapts q (HOPE_SPEC A2: A-Table 6 ablates "w/o inner projection q"
from it): the tier's HOPE with `memory.adaptive_q` on. The tier presets keep the static q (A2's default reading).
Rows: full, no_dgd, no_momentum, no_weight_decay, no_cms, no_adaptive_k, no_adaptive_v, no_adaptive_q.
- no_dgd: plain GD in the mixer's memories and in the CMS's in-context levels, at the same step η' (memory/dgd.py).
- no_cms: one plain SwiGLU as wide as the CMS levels together (the same count up to two norm scales).
- no_adaptive_{k,v,q}: the static projection that replaces M_□ costs d² + conv − 2·hd·hidden·heads per layer (+3.5%
  at pilot); the CMS levels give back as many units (to a multiple of 32 per level), so the count stays within 0.4%.
"""

from configs.ablations.common import Row, Table, ablation_config


def static_stream_params(model) -> int:
    """Parameters per layer that one static q/k/v stream adds in place of its generator memory: its slice of the
    mixer's input projection (d × d) and of the conv (window × d), less M_□ (W_in and W_out per head)."""
    head_dim = model.d_model // model.n_heads
    generator = 2 * model.n_heads * head_dim * model.memory.hidden_factor * head_dim
    return model.d_model**2 + model.conv_window * model.d_model - generator


def cms_less_one_stream(model) -> tuple[int, ...]:
    """cms.hidden narrowed by the parameters of one static stream (3·d a unit and level: w_gate, w_up, w_down), the
    same cut on every level, rounded to a multiple of 32 units."""
    units = static_stream_params(model) / (3 * model.d_model * len(model.cms.hidden))
    cut = 32 * round(units / 32)
    return tuple(hidden - cut for hidden in model.cms.hidden)


def cms_total_hidden(model) -> int:
    return sum(model.cms.hidden)


TABLE = Table(
    model="hope",
    base={"memory.adaptive_q": True},
    rows={
        "full": Row(),
        "no_dgd": Row({"memory.dgd": False, "cms.dgd": False}),
        "no_momentum": Row({"memory.momentum": False}),
        "no_weight_decay": Row({"memory.weight_decay": False}),
        "no_cms": Row({"cms.enabled": False}, matching={"mlp_hidden": cms_total_hidden}),
        "no_adaptive_k": Row({"memory.adaptive_k": False}, matching={"cms.hidden": cms_less_one_stream}),
        "no_adaptive_v": Row({"memory.adaptive_v": False}, matching={"cms.hidden": cms_less_one_stream}),
        "no_adaptive_q": Row({"memory.adaptive_q": False}, matching={"cms.hidden": cms_less_one_stream}),
    },
)
ROWS = TABLE.rows


def get_config(arg: str = "full"):
    return ablation_config(TABLE, arg)
