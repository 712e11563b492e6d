"""The `optim` config section: named levels, ordered (regex, level) rules, clipping, weight-decay mask."""

import math
import numbers

import ml_collections

KINDS = ("adamw", "muon", "m3", "deep_momentum")
SCHEDULES = ("cosine", "linear", "constant")
M3_MODES = ("paper", "ema")
DEEP_MOMENTUM_VARIANTS = ("delta", "mlp")
DEEP_MOMENTUM_OBJECTIVES = ("dot", "l2")
MUON_SCALINGS = ("rms", "spectral", "none")
MU_DTYPES = ("float32", "bfloat16")

# The range of every numeric level key that has one (every numeric value must also be finite): (test, wording).
_POSITIVE = (lambda v: v > 0, "> 0")
_NON_NEGATIVE = (lambda v: v >= 0, ">= 0")
_BETA = (lambda v: 0 <= v < 1, "in [0, 1)")
_UNIT = (lambda v: 0 <= v <= 1, "in [0, 1]")
LEVEL_RANGES = {
    "lr": _POSITIVE,  # a negative lr ascends the loss; 0 trains nothing (no config freezes a level this way)
    "warmup_steps": _NON_NEGATIVE,
    "decay_steps": (lambda v: v == -1 or v >= 0, "-1 (until total_steps) or >= 0"),
    "end_lr_ratio": _NON_NEGATIVE,
    "weight_decay": _NON_NEGATIVE,
    "b1": _BETA,
    "b2": _BETA,
    "eps": _POSITIVE,  # eps = 0: 0/0 = NaN wherever a gradient entry is 0
    "period_tokens": _NON_NEGATIVE,
    "ns_steps": _NON_NEGATIVE,
    "ns_eps": _POSITIVE,
    "muon_momentum": _BETA,
    # paper mode: weights of plain sums (1 is a literal sum); ema mode: decays
    "m3_beta1": _UNIT,
    "m3_beta2": _UNIT,
    "m3_beta3": _UNIT,
    "m3_alpha": _NON_NEGATIVE,
    "m3_period": (lambda v: v >= 1, ">= 1"),
    "m3_eps": _POSITIVE,
    "dm_alpha": _UNIT,
    "dm_lr": _POSITIVE,
    "dm_delta_lr": _NON_NEGATIVE,
    "dm_hidden": (lambda v: v >= 1, ">= 1"),
    "dm_init_scale": _NON_NEGATIVE,
}
SECTION_RANGES = {"clip_norm": _NON_NEGATIVE, "weight_decay_min_ndim": _NON_NEGATIVE}  # clip_norm 0: no clipping


def check_ranges(prefix: str, node, ranges) -> None:
    """ValueError naming `prefix + key` and its value for a non-finite number in `node` (tuples element-wise) or a
    value outside its entry of `ranges`."""
    for key, value in node.items():
        numbers_in = value if isinstance(value, (tuple, list)) else (value,)
        numeric = [v for v in numbers_in if isinstance(v, numbers.Real) and not isinstance(v, bool)]
        if not all(math.isfinite(v) for v in numeric):
            raise ValueError(f"{prefix}{key} = {value!r}; must be finite")
        if key in ranges and numeric and not ranges[key][0](value):
            raise ValueError(f"{prefix}{key} = {value!r}; must be {ranges[key][1]}")


# Muon-literature quintic (Keller Jordan). HOPE_SPEC §8 makes the NS variant and step count configuration.
QUINTIC_COEFFS = (3.4445, -4.7750, 2.0315)


# Level keys that no longer exist: (the value every config had by default, what replaced them), so an old config
# that sets one fails with a reason, while a checkpoint that merely recorded the old default still resumes.
REMOVED_LEVEL_KEYS = {
    "ns_stacked": (
        False,
        "Muon and M3 now orthogonalise every weight as the matrix its logical axis names declare "
        "(hope_jax/optim/matrix_layout.py); delete the key",
    ),
}


def reject_removed_keys(name: str, keys) -> None:
    for key in keys:
        if key in REMOVED_LEVEL_KEYS:
            raise KeyError(f"optim.levels.{name}.{key} was removed: {REMOVED_LEVEL_KEYS[key][1]}")


def without_removed_defaults(flat: dict) -> dict:
    """A flattened config (as checkpoints store it) without the removed level keys that hold their old default: the
    run they describe is what the current code runs. A removed key at another value is kept, so it is named."""

    def removed_default(dotted: str, value) -> bool:
        parts = dotted.split(".")
        removed = REMOVED_LEVEL_KEYS.get(parts[-1])
        return len(parts) == 4 and parts[:2] == ["optim", "levels"] and removed is not None and value == removed[0]

    return {k: v for k, v in flat.items() if not removed_default(k, v)}


def level_config(**overrides) -> ml_collections.ConfigDict:
    """One level's settings with every key at its default; `overrides` must name existing keys.

    Tier configs add levels with `cfg.optim.levels.<name> = level_config(kind=..., lr=...)` inside
    `cfg.unlocked()`.
    """
    level = ml_collections.ConfigDict(
        {
            "kind": "adamw",  # one of KINDS
            "lr": 3e-4,
            "schedule": "cosine",  # after warmup: one of SCHEDULES
            "warmup_steps": 0,  # global optimiser steps of linear warmup from 0
            "decay_steps": -1,  # global steps of the decay after warmup; -1: until total_steps
            "end_lr_ratio": 0.1,  # lr at the end of the decay, as a fraction of lr
            "weight_decay": 0.1,  # decoupled, multiplied by the scheduled lr (optax.adamw convention)
            "b1": 0.9,  # AdamW (and the AdamW fallback of muon / m3 for non-matrix parameters)
            "b2": 0.95,
            "eps": 1e-8,
            # dtype of Adam's first moment (adamw, and the Adam fallback of muon / m3): 'float32' | 'bfloat16'
            # (optax mu_dtype; halves that buffer). The second moment stays float32 (bf16 loses small squares).
            "mu_dtype": "float32",
            # this level steps every period_tokens tokens (optax.MultiSteps); 0: every step
            "period_tokens": 0,
            # Newton–Schulz (muon and m3): X <- a X + (b A + c A^2) X, A = X X^T, from X0 = G/||G||_F.
            "ns_steps": 5,
            "ns_coeffs": QUINTIC_COEFFS,
            "ns_eps": 1e-7,
            # Muon
            "muon_momentum": 0.95,
            "muon_nesterov": True,
            # one of MUON_SCALINGS; rms: 0.2*sqrt(max(m, n)) so AdamW's lr carries over
            "muon_scaling": "rms",
            # M3 (HOPE_SPEC Algorithm 1); period in optimiser steps of this level
            "m3_mode": "paper",  # 'paper': literal sums (A10); 'ema': exponential averages
            "m3_beta1": 0.9,
            "m3_beta2": 0.999,
            "m3_beta3": 0.9,
            "m3_alpha": 1.0,
            "m3_period": 8,
            "m3_eps": 1e-8,
            # Deep momentum (HOPE_SPEC E36–E39)
            "dm_variant": "delta",  # 'delta': E38 delta-rule momentum; 'mlp': E39 deep (MLP) momentum
            "dm_alpha": 0.9,  # retention alpha of the momentum memory
            "dm_lr": 1.0,  # inner learning rate eta of the momentum memory
            "dm_delta_lr": 0.5,  # step size of the delta decay term (A9); 0 recovers heavy-ball momentum
            "dm_objective": "l2",  # E39 inner objective: 'dot' (<m(u), u>) or 'l2' (||m(u) - u||^2)
            "dm_hidden": 8,  # E39 MLP hidden width
            "dm_init_scale": 1.0,  # E39 first-layer init scale; 0 makes the MLP inert (ordinary momentum)
            "dm_seed": 0,
        }
    )
    level.lock()  # before the overrides, so a misspelt key fails here
    reject_removed_keys("<level>", overrides)
    level.update(overrides)
    return level


def default_optim_config() -> ml_collections.ConfigDict:
    """The `optim` section: one AdamW level 'default' labelling every parameter, so any model trains."""
    cfg = ml_collections.ConfigDict()
    cfg.levels = ml_collections.ConfigDict({"default": level_config()})
    # Ordered (regex, level) pairs; the first regex that fully matches a parameter's path string wins.
    cfg.rules = [(".*", "default")]
    cfg.clip_norm = 1.0  # global-norm clipping of the whole gradient before the levels; 0 disables it
    # No weight decay on parameters with fewer than weight_decay_min_ndim dims or whose path fully matches a
    # pattern.
    cfg.weight_decay_min_ndim = 2
    cfg.weight_decay_exclude = [".*norm.*", ".*embed.*", ".*bias"]
    cfg.lock()
    return cfg


def resolve_level(name: str, level_cfg) -> ml_collections.ConfigDict:
    """A level's settings over the defaults, rejecting unknown keys and values by name."""
    resolved = level_config()
    reject_removed_keys(name, dict(level_cfg))
    for key, value in dict(level_cfg).items():
        if key not in resolved:
            raise KeyError(f"optim.levels.{name}: unknown key {key!r}; known keys: {sorted(resolved.keys())}")
        resolved[key] = value
    for key, allowed in (
        ("kind", KINDS),
        ("schedule", SCHEDULES),
        ("m3_mode", M3_MODES),
        ("dm_variant", DEEP_MOMENTUM_VARIANTS),
        ("dm_objective", DEEP_MOMENTUM_OBJECTIVES),
        ("muon_scaling", MUON_SCALINGS),
        ("mu_dtype", MU_DTYPES),
    ):
        if resolved[key] not in allowed:
            raise ValueError(f"optim.levels.{name}.{key} = {resolved[key]!r}; expected one of {allowed}")
    if len(tuple(resolved.ns_coeffs)) != 3:
        raise ValueError(f"optim.levels.{name}.ns_coeffs must be three numbers (a, b, c), got {resolved.ns_coeffs}")
    check_ranges(f"optim.levels.{name}.", resolved, LEVEL_RANGES)
    return resolved


def validate_optim_config(optim_cfg) -> None:
    """Every level resolved and range-checked, and the section's own numbers, before anything is built."""
    check_ranges("optim.", optim_cfg, SECTION_RANGES)
    for name in optim_cfg.levels:
        resolve_level(name, optim_cfg.levels[name])
