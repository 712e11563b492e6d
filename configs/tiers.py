"""The hardware tiers of the scaling guide as data, so every tier file, baseline and ablation is a one-line get_config().

| tier   | model size | seq  | global batch (tokens) | hardware                                   | mesh              |
|--------|------------|------|-----------------------|--------------------------------------------|-------------------|
| pilot  | ~160M      | 2048 | 64 x 2048 = 131K      | 2 GPUs, one host                           | data = all        |
| mid    | ~760M      | 4096 | 64 x 4096 = 262K      | 4-8 GPUs or one H200                       | fsdp = all        |
| target | ~1.3B      | 8192 | 64 x 8192 = 524K      | two H200s or more, multi-host (Slurm)      | fsdp = all        |

The target's 0.5M-token batch is the papers' (HOPE_SPEC §9.1); AdamW with cosine decay and weight decay 0.1 as there, learning
rates scaled down with size. Data: the seed mixture's ArrayRecord shards (data/mixtures/seed_mixture.yaml), built with
data_pipeline (README there); CMS levels that are updated by the outer optimiser at a period get their own optimiser level.
"""

import ml_collections

from configs import base
from hope_jax.models.config import model_preset
from hope_jax.optim.config import level_config

TIERS = {
    "pilot": {"size": "160m", "seq_len": 2048, "batch": 64, "steps": 20_000, "lr": 1e-3, "mesh": (-1, 1, 1)},
    "mid": {"size": "760m", "seq_len": 4096, "batch": 64, "steps": 60_000, "lr": 6e-4, "mesh": (1, -1, 1)},
    "target": {"size": "1.3b", "seq_len": 8192, "batch": 64, "steps": 100_000, "lr": 4e-4, "mesh": (1, -1, 1)},
}
MODELS = ("hope", "hope_attention", "transformer", "titans_lmm", "titans_mac", "titans_mag")


def tier_config(tier: str, model: str) -> ml_collections.ConfigDict:
    if tier not in TIERS:
        raise ValueError(f"unknown tier {tier!r}; known: {', '.join(TIERS)}")
    if model not in MODELS:
        raise ValueError(f"unknown model {model!r} for tier {tier}; known: {', '.join(MODELS)}")
    settings = TIERS[tier]
    config = base.get_config()
    config.model = model_preset(f"{model}-{settings['size']}")
    config.model.compute_dtype = "bfloat16"
    config.model.max_seq_len = settings["seq_len"]
    config.model.remat = "dots_with_no_batch_dims_saveable"

    config.data.source = "mixture"
    config.data.mixture = "data/mixtures/seed_mixture.yaml"
    config.data.num_workers = 4

    config.train.seq_len = settings["seq_len"]
    config.train.global_batch_size = settings["batch"]
    config.train.num_steps = settings["steps"]
    config.train.matmul_precision = "default"
    config.train.log_every_steps = 50

    default_level = config.optim.levels.default
    default_level.lr = settings["lr"]
    default_level.warmup_steps = 1000
    default_level.end_lr_ratio = 0.1
    _outer_cms_levels(config)

    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = settings["mesh"]
    config.checkpoint.every_steps = 1000
    config.eval.every_steps = 1000
    config.eval.num_batches = 50
    return config


def _outer_cms_levels(config: ml_collections.ConfigDict) -> None:
    """CMS levels with objective 'outer' are updated by the outer optimiser every `period` tokens (DESIGN D6, D7)."""
    if config.model.name not in ("hope", "hope_attention") or not config.model.cms.enabled:
        return
    tokens_per_step = config.train.global_batch_size * config.train.seq_len
    rules = []
    for index, (period, objective) in enumerate(zip(config.model.cms.periods, config.model.cms.objectives)):
        if objective != "outer":
            continue
        # A period shorter than one step still updates once per step: the level is then simply the default level.
        period_tokens = max(period, tokens_per_step) // tokens_per_step * tokens_per_step
        name = f"cms_level_{index}"
        config.optim.levels[name] = level_config(**config.optim.levels.default.to_dict())
        config.optim.levels[name].period_tokens = period_tokens
        rules.append((f".*cms/levels/{index}/.*", name))
    config.optim.rules = rules + list(config.optim.rules)
