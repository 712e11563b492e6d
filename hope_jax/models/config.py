"""The `model` config section, its validation, and the named size presets (DESIGN D8).

`default_model_config()` holds every key a model reads. The `memory`, `cms` and `titans` sub-sections
configure the memory-based models (self-modifying Titans per DESIGN D5, the Continuum Memory System per
D6, the Titans baselines per HOPE_SPEC §2.7); the Transformer++ reads none of them.

A preset is a function returning overrides of this section; `model_preset(name)` applies one to the
defaults.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

import jax.numpy as jnp
import ml_collections

from hope_jax.memory.chunking import INNER_PRECISIONS, STEP_BOUNDS
from hope_jax.memory.self_modifying import MEMORY_TARGETS

COMPUTE_DTYPES = {"float32": jnp.float32, "bfloat16": jnp.bfloat16}
ATTENTION_IMPLS = ("xla", "cudnn", "auto")  # hope_jax/layers/attention.py
MEMORY_KERNELS = ("xla", "pallas", "auto")  # hope_jax/kernels/selfmod.py
# Models whose every in-context state restarts at model.reset_at_token (the attention models would also need
# document masks in attention and in the KV cache).
DOCUMENT_RESET_MODELS = ("hope",)


def default_model_config() -> ml_collections.ConfigDict:
    cfg = ml_collections.ConfigDict()
    cfg.name = "transformer"  # a name registered in hope_jax.models.registry
    cfg.vocab_size = 32000
    cfg.d_model = 512
    cfg.n_layers = 8
    cfg.n_heads = 8  # head_dim = d_model // n_heads
    cfg.mlp_hidden = 1536  # SwiGLU hidden size (layers.swiglu_hidden_size gives Llama's 8/3·d rule)
    cfg.tie_embeddings = False
    cfg.compute_dtype = "float32"  # 'float32' | 'bfloat16'; parameters are always float32
    cfg.norm_eps = 1e-6
    cfg.init_std = 0.02  # N(0, init_std²) for all kernels; residual-output kernels get init_std / √(2·n_layers)
    cfg.rope_theta = 10_000.0
    cfg.attention_window = 0  # 0: full causal attention; w > 0: each query sees itself and w−1 earlier tokens
    # Titans persistent memory (T §3.3): learned key/value slots every query sees (attention models, MAG, MAC); in the
    # LMM, learned tokens the memory reads and writes before the sequence (models/titans.py)
    cfg.n_persistent_tokens = 0
    # 'xla' (einsum + fp32 softmax, runs everywhere) | 'cudnn' (flash attention; bf16, NVIDIA GPUs; fails elsewhere)
    # | 'auto' (cuDNN where it can run, else xla with a warning). hope_jax/layers/attention.py
    cfg.attention_impl = "xla"
    cfg.conv_window = 4  # causal depthwise conv on q/k/v inputs of the memory models (DESIGN D5)
    cfg.max_seq_len = 2048  # longest context: size of a full-attention KV cache
    cfg.remat = "none"  # 'none' | 'full' | 'dots_saveable' | 'dots_with_no_batch_dims_saveable' | 'nothing_saveable'
    # Precision of the memories' inner-loop products (fast weights, chunk solves; memory/chunking.py): 'highest'
    # (exact float32, HOPE_SPEC Appendix B.3) | 'high' | 'default' (TF32-class on NVIDIA GPUs: an H200 HOPE step
    # −22%, BUILD_NOTES "Benchmarks"). Changes nothing on CPU.
    cfg.inner_precision = "highest"
    # Documents in a packed window: the token id at which every in-context state restarts (HOPE: the mixer's conv
    # window, its memories, every in-context CMS level), so that no document reads the previous one's memory; the
    # packer ends each document with <eos> = 1 (data_pipeline/packing.py), so 1 resets at the <eos> input, whose
    # prediction is the next document's first token. −1: the state runs through the whole window (documents read
    # their predecessors). memory/document_resets.py; BUILD_NOTES "Documents in packed windows" has the measured choice.
    cfg.reset_at_token = -1

    # Self-modifying Titans memories of HOPE (DESIGN D5, HOPE_SPEC §5); each A-Table 6 ablation is one switch.
    cfg.memory = ml_collections.ConfigDict()
    cfg.memory.chunk_size = 16  # main memory M_memory
    cfg.memory.aux_chunk_size = 16  # the k / v / q / η / α memories
    cfg.memory.hidden_factor = 1  # hidden width of the 2-layer residual memory MLPs, as a multiple of head_dim
    # M_memory's form: 2 = the residual MLP of E24 (the paper's choice for every memory); 1 = a matrix, HOPE_SPEC
    # §5.3's special case (E25/E26), the only form whose in-context recall we have seen train at CPU sizes
    # (BUILD_NOTES "In-context recall"). The generators M_k, M_v, M_q, M_η, M_α stay residual MLPs.
    cfg.memory.memory_depth = 2
    # M_memory's regression target: 'self' = E21's v̂ = M_memory(v); 'value' = v itself (HOPE_SPEC §5.1's shared
    # targets): the self-generated target is minimised by any map sending k and v to one point (BUILD_NOTES).
    cfg.memory.memory_target = "self"
    cfg.memory.activation = "silu"
    cfg.memory.dgd = True  # False: plain GD at the same step η' (ablation 'w/o DGD', with cms.dgd)
    cfg.memory.dgd_layers = "all"  # HOPE_SPEC A4: 'all' per-layer DGD | 'first' the x̂x̂ᵀ term on first layers only
    cfg.memory.gated_delta = False  # HOPE_SPEC A15: False = Eq. 88 as printed; True = gated-delta form
    cfg.memory.momentum = True  # ablation 'w/o momentum' (A5)
    cfg.memory.momentum_decay = 0.9  # ε of the inner momentum buffer (not given by the paper)
    cfg.memory.weight_decay = True  # ablation 'w/o weight decay' (α fixed to 1, no M_α)
    cfg.memory.adaptive_k = True  # ablation 'w/o adaptive k': k = static projection, no M_k
    cfg.memory.adaptive_v = True  # ablation 'w/o adaptive v'
    cfg.memory.adaptive_q = False  # HOPE_SPEC A2: q static by default; True adds M_q (the ablation table's base)
    cfg.memory.eta_max = 1.0  # η_t = eta_max · sigmoid(w_ηᵀ M_η(x_t) + b_η)
    # ℓ2-normalised values v_t (not in the paper, which is silent on it): with self-generated targets v̂ = M(v) a value
    # longer than the unit key makes every memory's inner map expansive and the fast weights blow up (notes in
    # memory/self_modifying.py SelfModConfig); False = E20 literally.
    cfg.memory.normalize_values = True
    # Each gradient term steps by η / (1 + C·η·h), h the token's curvature bound (memory/chunking.chunk_step_size): the
    # C gradients of a chunk, all taken at its start, then stay one stable mini-batch step. The fast weights of a HOPE
    # trained on real text overflowed within one chunk without it (BUILD_NOTES "Inner-step stability"). False: η'.
    cfg.memory.normalized_step = True
    # How that step bounds a chunk (the mixer's memories and the CMS in-context levels): 'chunk' divides by C·h, the
    # worst case of C aligned inputs, so one write corrects ≤ 1/C of its error; 'gram' by the chunk's own Gram matrix
    # (memory/chunking.gram_step_size: the same stability bound, a full step for orthogonal inputs).
    cfg.memory.step_bound = "chunk"
    # M_k / M_v / M_q start with a residual branch of W_out std kv_init_gain/√hidden, so that the keys and values they
    # generate differ from the first step (models/self_modifying.generator_out_std); 0: init_std like every memory.
    cfg.memory.kv_init_gain = 4.0
    cfg.memory.eta_bias_init = 0.0  # b_η at initialisation: η ≈ eta_max / 2
    cfg.memory.alpha_bias_init = 5.0  # α_t = sigmoid(w_αᵀ M_α(x_t) + b_α); 5 gives α ≈ 0.993 at initialisation (A3)
    cfg.memory.truncate_bptt = False  # DESIGN D4: stop-gradient on inner updates (memories and CMS levels)
    cfg.memory.remat_chunks = True  # recompute each chunk period in the backward pass (memories and CMS levels)
    # HOPE's inner-loop fit diagnostics (memory_loss_* of the mixer, cms_loss_* of the CMS levels; DESIGN D11) are
    # means over every n-th token of the piece (tokens 0, n, 2n, …); 1 = every token. Each fit reads the memory twice
    # over the whole piece, without gradient: at n = 1 they took ~5% of a HOPE train step on CPU (bench notes).
    cfg.memory.diagnostics_stride = 8
    # Which implementation runs the self-modifying mixer's memories (hope_jax/kernels/selfmod.py): 'xla' | 'pallas'
    # (M_memory's chunk scan as one Pallas Triton program per sequence and head, state on chip; interpret mode off a
    # GPU) | 'auto' (pallas on a GPU, xla elsewhere). 'pallas' needs power-of-two sizes ≥ 16 (errors name the key).
    cfg.memory.kernel = "xla"

    # Continuum Memory System (DESIGN D6): one entry per level, highest frequency first (the order is the chain's).
    cfg.cms = ml_collections.ConfigDict()
    cfg.cms.enabled = True  # ablation 'w/o CMS': a single plain SwiGLU of mlp_hidden units
    # The default objective is 'lm' (HOPE_SPEC A6's reading: each level steps on the LM loss of its finished chunk,
    # seen targets only; models/lm_ttt.py) at the papers' lowest CMS chunk, 512 (A8), and 4× that; BUILD_NOTES
    # "Continuum Memory System" has the measured choice. 'local' is our own reading, kept as an option.
    cfg.cms.periods = (512, 2048, 0)  # tokens per update; 0 only for 'frozen'
    cfg.cms.objectives = ("lm", "lm", "frozen")  # 'lm' | 'local' | 'outer' | 'frozen' (models/cms.py)
    cfg.cms.hidden = (1536, 1536, 1536)  # SwiGLU hidden units per level
    cfg.cms.inner_lr = 0.1  # in-context levels' step size ('lm' levels: unless lm_lrs; 0 = the plain MLP chain exactly)
    cfg.cms.inner_decay = 0.0  # in-context levels: retention 1 − inner_lr · inner_decay
    cfg.cms.dgd = True  # in-context levels: DGD (False: plain GD)
    cfg.cms.normalized_step = True  # 'local' levels: the curvature-normalised gradient step (memory.normalized_step)
    cfg.cms.lm_lrs = ()  # 'lm' levels' test-time-training step sizes, one per level; () = inner_lr for every level
    cfg.cms.lm_second_order = False  # 'lm' levels: differentiate through the inner gradient (default: stop-gradient)
    cfg.cms.variant = "sequential"  # 'nested' | 'sequential' | 'independent' (HOPE_SPEC §6.2)

    # Titans baselines (HOPE_SPEC §2.7; T5 ablations as switches: memory_depth 1, conv, momentum, weight_decay,
    # and n_persistent_tokens 0 for 'w/o persistent memory'). The MAG window is attention_window above.
    cfg.titans = ml_collections.ConfigDict()
    cfg.titans.chunk_size = 16
    cfg.titans.memory_depth = 2  # 1 = linear memory (ablation 'linear memory'); 2 = residual 2-layer MLP
    cfg.titans.hidden_factor = 1  # 2-layer memory hidden width, as a multiple of head_dim
    cfg.titans.conv = True  # ablation 'w/o convolution'
    cfg.titans.momentum = True  # ablation 'w/o momentum'
    cfg.titans.weight_decay = True  # ablation 'w/o weight decay' (forget gate α = 0)
    cfg.titans.theta_max = 1.0  # θ_t = theta_max · sigmoid(x w_θ + b_θ)
    # Each token's inner step θ_t / (1 + C·θ_t·‖x_t‖²) per weight matrix (memory/chunking.chunk_step_size): C gradients
    # taken at one chunk-start state are one mini-batch step, which diverges once C·θ exceeds ~2 on aligned keys
    # (every Titans model overflowed at initialisation). False: θ_t as T's E5 prints it.
    cfg.titans.normalized_step = True
    cfg.titans.theta_bias_init = 0.0
    cfg.titans.momentum_bias_init = 0.0  # η_t = sigmoid(x w_η + b_η)
    cfg.titans.forget_bias_init = -5.0  # α_t = sigmoid(x w_α + b_α) ≈ 0.007 at initialisation
    cfg.titans.segment_size = 512  # MAC segment length
    return cfg


def compute_dtype(model_cfg: ml_collections.ConfigDict) -> jnp.dtype:
    try:
        return COMPUTE_DTYPES[model_cfg.compute_dtype]
    except KeyError:
        raise ValueError(
            f"model.compute_dtype = {model_cfg.compute_dtype!r}; known: {', '.join(COMPUTE_DTYPES)}"
        ) from None


def head_dim(model_cfg: ml_collections.ConfigDict) -> int:
    return model_cfg.d_model // model_cfg.n_heads


def validate_model_config(model_cfg: ml_collections.ConfigDict) -> None:
    """Fail early, naming the key, on values no model can run with (DESIGN D13)."""
    compute_dtype(model_cfg)
    positive = ("vocab_size", "d_model", "n_layers", "n_heads", "mlp_hidden", "max_seq_len", "conv_window")
    for key in positive:
        if model_cfg[key] < 1:
            raise ValueError(f"model.{key} must be ≥ 1, got {model_cfg[key]}")
    for key in ("attention_window", "n_persistent_tokens"):
        if model_cfg[key] < 0:
            raise ValueError(f"model.{key} must be ≥ 0, got {model_cfg[key]}")
    if model_cfg.inner_precision not in INNER_PRECISIONS:
        raise ValueError(f"model.inner_precision = {model_cfg.inner_precision!r}; known: {', '.join(INNER_PRECISIONS)}")
    if model_cfg.memory.step_bound not in STEP_BOUNDS:
        raise ValueError(f"model.memory.step_bound = {model_cfg.memory.step_bound!r}; known: {', '.join(STEP_BOUNDS)}")
    if model_cfg.memory.memory_target not in MEMORY_TARGETS:
        raise ValueError(
            f"model.memory.memory_target = {model_cfg.memory.memory_target!r}; known: {', '.join(MEMORY_TARGETS)}"
        )
    if not -1 <= model_cfg.reset_at_token < model_cfg.vocab_size:
        raise ValueError(
            f"model.reset_at_token must be −1 (off) or a token id below model.vocab_size = {model_cfg.vocab_size}, "
            f"got {model_cfg.reset_at_token}"
        )
    if model_cfg.reset_at_token >= 0 and model_cfg.memory.kernel == "pallas":
        raise ValueError(
            f"model.reset_at_token = {model_cfg.reset_at_token} (document resets) runs on model.memory.kernel 'xla' "
            "(or 'auto', which then picks it); the Pallas kernel has no per-token update mask"
        )
    if model_cfg.reset_at_token >= 0 and model_cfg.name not in DOCUMENT_RESET_MODELS:
        raise ValueError(
            f"model.reset_at_token = {model_cfg.reset_at_token} (document resets) is implemented for model.name in "
            f"{DOCUMENT_RESET_MODELS}, not {model_cfg.name!r}; set model.reset_at_token = -1"
        )
    if model_cfg.memory.memory_depth not in (1, 2):
        depth = model_cfg.memory.memory_depth
        raise ValueError(f"model.memory.memory_depth must be 1 (matrix) or 2 (residual MLP), got {depth}")
    if model_cfg.memory.kernel not in MEMORY_KERNELS:
        raise ValueError(f"model.memory.kernel = {model_cfg.memory.kernel!r}; known: {', '.join(MEMORY_KERNELS)}")
    if model_cfg.memory.kernel == "pallas" and model_cfg.name == "hope" and model_cfg.d_model % model_cfg.n_heads == 0:
        from hope_jax.kernels import selfmod  # late: the kernels import the memories this module configures

        selfmod.check_supported(model_cfg.memory, head_dim(model_cfg))
    if model_cfg.memory.diagnostics_stride < 1:
        raise ValueError(f"model.memory.diagnostics_stride must be ≥ 1, got {model_cfg.memory.diagnostics_stride}")
    if model_cfg.d_model % model_cfg.n_heads:
        raise ValueError(f"model.d_model = {model_cfg.d_model} is not divisible by model.n_heads = {model_cfg.n_heads}")
    if head_dim(model_cfg) % 2:
        raise ValueError(f"rotary positions need an even head_dim; d_model / n_heads = {head_dim(model_cfg)}")
    if model_cfg.attention_impl not in ATTENTION_IMPLS:
        raise ValueError(f"model.attention_impl = {model_cfg.attention_impl!r}; known: {', '.join(ATTENTION_IMPLS)}")
    if model_cfg.attention_impl == "cudnn" and model_cfg.compute_dtype == "float32":
        raise ValueError(
            "model.attention_impl='cudnn' needs model.compute_dtype='bfloat16' (cuDNN flash attention takes bf16/fp16); "
            "use model.attention_impl='auto' to fall back to xla in float32"
        )


def apply_overrides(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any]) -> ml_collections.ConfigDict:
    """Copy of cfg with (possibly nested) overrides; a key cfg lacks is an error naming it."""
    cfg = ml_collections.ConfigDict(cfg.to_dict())
    _update(cfg, overrides, prefix="model")
    return cfg


def _update(cfg: ml_collections.ConfigDict, overrides: Mapping[str, Any], prefix: str) -> None:
    for key, value in overrides.items():
        if key not in cfg:
            raise KeyError(f"{prefix}.{key} is not a config key; known: {', '.join(sorted(cfg.keys()))}")
        if isinstance(value, Mapping):
            _update(cfg[key], value, f"{prefix}.{key}")
        else:
            cfg[key] = value


# Size presets. Vocabulary 32K (the papers' Llama-2 tokenizer), untied head (as Transformer++ is run).
# Every preset states the parameter count of its label; tests/test_model_sizes.py holds each within 10%.


@dataclass(frozen=True)
class Preset:
    label_params: int
    overrides: Callable[[], dict[str, Any]]


def transformer_160m() -> dict[str, Any]:
    return dict(name="transformer", vocab_size=32000, d_model=768, n_layers=16, n_heads=12, mlp_hidden=2048)


def transformer_760m() -> dict[str, Any]:
    return dict(name="transformer", vocab_size=32000, d_model=1536, n_layers=24, n_heads=24, mlp_hidden=4096)


def transformer_1_3b() -> dict[str, Any]:
    return dict(name="transformer", vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, mlp_hidden=5632)


# HOPE (DESIGN D8): head_dim 64 / 64 / 128 as the Transformer++ presets; CMS = two test-time-trained levels at the
# papers' lowest CMS chunk (512) and 4× it, then a frozen (outer-updated) level (HOPE_SPEC §7, A6, A8).
HOPE_CMS = {"periods": (512, 2048, 0), "objectives": ("lm", "lm", "frozen")}


def hope_160m() -> dict[str, Any]:
    return dict(
        name="hope", vocab_size=32000, d_model=768, n_layers=12, n_heads=12, cms={**HOPE_CMS, "hidden": (1024,) * 3}
    )


def hope_760m() -> dict[str, Any]:
    return dict(
        name="hope", vocab_size=32000, d_model=1536, n_layers=24, n_heads=24, cms={**HOPE_CMS, "hidden": (1280,) * 3}
    )


def hope_1_3b() -> dict[str, Any]:
    return dict(
        name="hope", vocab_size=32000, d_model=2048, n_layers=24, n_heads=16, cms={**HOPE_CMS, "hidden": (1536,) * 3}
    )


def hope_attention_preset(hope_preset: Callable[[], dict[str, Any]]) -> Callable[[], dict[str, Any]]:
    """HOPE-Attention at the HOPE shape: attention (4·d²) replaces the mixer (≈ 4·d² + memories), so sizes match."""
    return lambda: {**hope_preset(), "name": "hope_attention"}


# Titans baselines at the same widths, the SwiGLU width chosen to match the HOPE / Transformer++ counts.
def titans_preset(
    name: str, d_model: int, n_layers: int, n_heads: int, mlp_hidden: int
) -> Callable[[], dict[str, Any]]:
    return lambda: dict(
        name=name, vocab_size=32000, d_model=d_model, n_layers=n_layers, n_heads=n_heads, mlp_hidden=mlp_hidden,
        attention_window=512 if name == "titans_mag" else 0, n_persistent_tokens=16,
    )  # fmt: skip


TITANS_SHAPES = {  # size: (d_model, n_layers, n_heads, {model: mlp_hidden})
    "160m": (768, 12, 12, {"titans_lmm": 2560, "titans_mag": 2048, "titans_mac": 1792}),
    "760m": (1536, 24, 24, {"titans_lmm": 3456, "titans_mag": 1920, "titans_mac": 1408}),
    "1.3b": (2048, 24, 16, {"titans_lmm": 4480, "titans_mag": 2432, "titans_mac": 1792}),
}
LABELS = {"160m": 160_000_000, "760m": 760_000_000, "1.3b": 1_300_000_000}

PRESETS: dict[str, Preset] = {
    "transformer-160m": Preset(160_000_000, transformer_160m),
    "transformer-760m": Preset(760_000_000, transformer_760m),
    "transformer-1.3b": Preset(1_300_000_000, transformer_1_3b),
    "hope-160m": Preset(160_000_000, hope_160m),
    "hope-760m": Preset(760_000_000, hope_760m),
    "hope-1.3b": Preset(1_300_000_000, hope_1_3b),
    "hope_attention-160m": Preset(160_000_000, hope_attention_preset(hope_160m)),
    "hope_attention-760m": Preset(760_000_000, hope_attention_preset(hope_760m)),
    "hope_attention-1.3b": Preset(1_300_000_000, hope_attention_preset(hope_1_3b)),
    **{
        f"{model}-{size}": Preset(LABELS[size], titans_preset(model, d, layers, heads, hidden))
        for size, (d, layers, heads, hiddens) in TITANS_SHAPES.items()
        for model, hidden in hiddens.items()
    },
}


def model_preset(name: str) -> ml_collections.ConfigDict:
    """The default model section with a named preset applied."""
    if name not in PRESETS:
        raise KeyError(f"unknown model preset {name!r}; known: {', '.join(sorted(PRESETS))}")
    return apply_overrides(default_model_config(), PRESETS[name].overrides())
