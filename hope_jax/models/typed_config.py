"""The model's typed, frozen configuration, built once from the `model` ConfigDict (models/config.py: the schema).

`ModelConfig.from_config(model_cfg)` validates the section (validate_model_config) and converts it once: the compute
dtype to its jnp dtype, sequences to tuples. Every field is named exactly as its config key (`model.memory.chunk_size`
is `cfg.memory.chunk_size`, and `chunk_size` in the memory functions it reaches), so one concept keeps one name from
the config key down to the innermost function. Module constructors take a ModelConfig (or the plain values they
need), never the ConfigDict; registry.build_model builds it. The classes are frozen and hashable: a module may hold
one as a static attribute.

The `memory` section's class is the inner loop's own options (memory/self_modifying.SelfModConfig) with the section's
model-level keys added, so the HOPE mixer hands it to the inner loop as it is.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import ml_collections

from hope_jax.memory.self_modifying import SelfModConfig
from hope_jax.models.config import COMPUTE_DTYPES, validate_model_config


@dataclasses.dataclass(frozen=True, kw_only=True)
class MemoryConfig(SelfModConfig):
    """`model.memory`: the self-modifying Titans options (inherited, the inner loop reads them) and the keys only the
    models read. remat_group and accum_dtype are not config keys: the models rematerialise whole chunk periods
    (`remat_chunks`, memory/driver.py) instead of the inner loop's groups, and accumulate in float32."""

    hidden_factor: int
    kv_init_gain: float
    eta_bias_init: float
    alpha_bias_init: float
    remat_chunks: bool
    diagnostics_stride: int
    kernel: str
    remat_group: int = 0


@dataclasses.dataclass(frozen=True)
class CMSConfig:
    """`model.cms` (models/cms.py; validated there, by validate_cms_config, when a model builds a CMS)."""

    enabled: bool
    periods: tuple[int, ...]
    objectives: tuple[str, ...]
    hidden: tuple[int, ...]
    inner_lr: float
    inner_decay: float
    dgd: bool
    normalized_step: bool
    lm_lrs: tuple[float, ...]
    lm_second_order: bool
    variant: str


@dataclasses.dataclass(frozen=True)
class TitansConfig:
    """`model.titans`: the Titans baselines (models/titans.py, models/titans_mac.py)."""

    chunk_size: int
    memory_depth: int
    hidden_factor: int
    conv: bool
    momentum: bool
    weight_decay: bool
    theta_max: float
    normalized_step: bool
    theta_bias_init: float
    momentum_bias_init: float
    forget_bias_init: float
    segment_size: int


@dataclasses.dataclass(frozen=True)
class ModelConfig:
    """The `model` section (models/config.default_model_config documents every key)."""

    name: str
    vocab_size: int
    d_model: int
    n_layers: int
    n_heads: int
    mlp_hidden: int
    tie_embeddings: bool
    compute_dtype: Any  # the jnp dtype of 'float32' | 'bfloat16'
    norm_eps: float
    init_std: float
    rope_theta: float
    attention_window: int
    n_persistent_tokens: int
    attention_impl: str
    conv_window: int
    max_seq_len: int
    remat: str
    inner_precision: str
    reset_at_token: int
    memory: MemoryConfig
    cms: CMSConfig
    titans: TitansConfig

    @classmethod
    def from_config(cls, model_cfg: ml_collections.ConfigDict | ModelConfig) -> ModelConfig:
        """The validated, typed `model` section (a ModelConfig is returned as it is). A config key without its field
        is a TypeError naming it: the schema and the typed config cannot drift apart."""
        if isinstance(model_cfg, ModelConfig):
            return model_cfg
        validate_model_config(model_cfg)
        values = model_cfg.to_dict()
        memory, cms, titans = (values.pop(section) for section in ("memory", "cms", "titans"))
        for key in ("periods", "objectives", "hidden", "lm_lrs"):
            cms[key] = tuple(cms[key])
        values["compute_dtype"] = COMPUTE_DTYPES[values["compute_dtype"]]
        return cls(**values, memory=MemoryConfig(**memory), cms=CMSConfig(**cms), titans=TitansConfig(**titans))

    @property
    def head_dim(self) -> int:
        return self.d_model // self.n_heads

    @property
    def residual_out_std(self) -> float:
        """GPT-2's scaled init for kernels writing into the residual stream: keeps its variance O(1) in depth."""
        return self.init_std / (2 * self.n_layers) ** 0.5
