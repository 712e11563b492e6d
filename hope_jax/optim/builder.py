"""build_optimizer: global-norm clipping, then optax.partition of one chain per level (DESIGN D7).

A level's chain: kind (adamw | muon | m3 | deep_momentum) -> decoupled weight decay (masked) -> -lr(schedule),
wrapped in optax.MultiSteps when its period is k > 1 steps: the level then changes its parameters only every
k-th step, by the chain applied to the mean of the k clipped gradients."""

import jax
import jax.numpy as jnp
import optax

from hope_jax.optim.config import resolve_level
from hope_jax.optim.deep_momentum import scale_by_deep_momentum, scale_by_delta_momentum
from hope_jax.optim.labels import make_labeller, make_weight_decay_mask, param_paths, path_string
from hope_jax.optim.m3 import scale_by_m3
from hope_jax.optim.matrix_layout import matrix_layouts
from hope_jax.optim.muon import scale_by_muon
from hope_jax.optim.schedules import every_k_schedule, make_schedule


def period_in_steps(level_name: str, period_tokens: int, tokens_per_step: int) -> int:
    """A level's period in optimiser steps from its period in tokens; 0 tokens means every step."""
    if tokens_per_step <= 0:
        raise ValueError(f"tokens_per_step must be positive, got {tokens_per_step}")
    if period_tokens == 0:
        return 1
    if period_tokens < 0 or period_tokens % tokens_per_step:
        raise ValueError(
            f"optim.levels.{level_name}.period_tokens = {period_tokens} is not a positive multiple of "
            f"tokens_per_step = {tokens_per_step} (global batch x sequence length)"
        )
    return period_tokens // tokens_per_step


# The kinds that orthogonalise weight matrices (and send every other leaf to their AdamW fallback).
ORTHOGONALISING_KINDS = ("muon", "m3")


def matrix_or_adamw(matrix_tx: optax.GradientTransformation, level, layouts):
    """Send the leaves with a matrix layout to `matrix_tx` and every other leaf (embeddings, LM head, norms, biases,
    gate vectors, conv taps: layout None) to Adam. `layouts` maps path strings to layouts (matrix_layout.py)."""
    adam = scale_by_adam(level)
    route = lambda path, _: "adam" if layouts[path_string(path)] is None else "matrix"
    by_layout = lambda tree: jax.tree_util.tree_map_with_path(route, tree)
    return optax.partition({"matrix": matrix_tx, "adam": adam}, by_layout)


def scale_by_adam(level) -> optax.GradientTransformation:
    return optax.scale_by_adam(b1=level.b1, b2=level.b2, eps=level.eps, mu_dtype=jnp.dtype(level.mu_dtype))


def kind_transform(level, layouts) -> optax.GradientTransformation:
    """The level's preconditioner / momentum memory, producing a descent direction (before -lr). `layouts` (path
    string -> MatrixLayout or None) covers the level's parameters when its kind orthogonalises."""
    ns = dict(ns_steps=level.ns_steps, ns_coeffs=tuple(level.ns_coeffs), ns_eps=level.ns_eps)
    if level.kind == "adamw":
        return scale_by_adam(level)
    if level.kind == "muon":
        muon = scale_by_muon(
            layouts=layouts,
            momentum=level.muon_momentum,
            nesterov=level.muon_nesterov,
            scaling=level.muon_scaling,
            **ns,
        )
        return matrix_or_adamw(muon, level, layouts)
    if level.kind == "m3":
        m3 = scale_by_m3(
            layouts=layouts,
            mode=level.m3_mode,
            beta1=level.m3_beta1,
            beta2=level.m3_beta2,
            beta3=level.m3_beta3,
            alpha=level.m3_alpha,
            period=level.m3_period,
            eps=level.m3_eps,
            **ns,
        )
        return matrix_or_adamw(m3, level, layouts)
    if level.kind == "deep_momentum":
        if level.dm_variant == "delta":
            return scale_by_delta_momentum(alpha=level.dm_alpha, lr=level.dm_lr, delta_lr=level.dm_delta_lr)
        return scale_by_deep_momentum(
            alpha=level.dm_alpha,
            lr=level.dm_lr,
            objective=level.dm_objective,
            hidden=level.dm_hidden,
            init_scale=level.dm_init_scale,
            seed=level.dm_seed,
        )
    raise ValueError(f"unknown optimiser kind {level.kind!r}")


def level_schedule(level, *, total_steps: int):
    """lr(global step) of a resolved level: its warmup and decay are counted in global optimiser steps."""
    return make_schedule(
        level.schedule,
        peak_lr=level.lr,
        warmup_steps=level.warmup_steps,
        decay_steps=level.decay_steps,
        end_lr_ratio=level.end_lr_ratio,
        total_steps=total_steps,
    )


def learning_rates(optim_cfg, step: int, *, total_steps: int) -> dict[str, float]:
    """Each level's learning rate at global step `step` (1-based, as the loop counts): the rate its update at that
    step is scaled by, schedule(step - 1). A level with a period k > 1 applies it only on every k-th step."""
    return {
        name: float(level_schedule(resolve_level(name, level_cfg), total_steps=total_steps)(step - 1))
        for name, level_cfg in optim_cfg.levels.items()
    }


def level_transform(level, *, period: int, total_steps: int, decay_mask, layouts) -> optax.GradientTransformation:
    schedule = level_schedule(level, total_steps=total_steps)
    parts = [kind_transform(level, layouts)]
    if level.weight_decay > 0:
        parts.append(optax.add_decayed_weights(level.weight_decay, mask=decay_mask))
    parts.append(optax.scale_by_learning_rate(every_k_schedule(schedule, period)))
    chain = optax.chain(*parts)
    if period == 1:
        return chain
    return optax.MultiSteps(chain, every_k_schedule=period, use_grad_mean=True).gradient_transformation()


def build_optimizer(optim_cfg, params, *, tokens_per_step: int, total_steps: int, axis_names=None):
    """(optax.GradientTransformation, labels pytree) for `params` (pure arrays or an nnx.State of params).

    `axis_names` mirrors `params` with each parameter's logical axis names (ModelSpec.logical_specs); Muon and M3
    levels read from them which axes are a weight's input and output features (matrix_layout.py). Without them only
    2-D parameters are matrices.
    Labels are recomputed from key paths on every init/update, so the transformation accepts any wrapping of
    the same parameter paths; the returned labels pytree mirrors `params` and feeds `level_update_norms`.
    Raises on an unlabelled parameter (naming every one), a rule naming an undefined level, a period in
    tokens that is not a multiple of tokens_per_step, or a parameter of an orthogonalising level whose axis
    names do not say which are its input and output features."""
    labeller = make_labeller(optim_cfg.rules)
    labels = labeller(params)
    level_names = list(optim_cfg.levels.keys())
    unknown = sorted({lvl for _, lvl in optim_cfg.rules} - set(level_names))
    if unknown:
        raise ValueError(f"optim.rules name undefined level(s) {unknown}; defined levels: {level_names}")
    used = set(jax.tree.leaves(labels))
    if not used:
        raise ValueError(f"no parameters to optimise (paths: {param_paths(params)})")
    decay_mask = make_weight_decay_mask(optim_cfg.weight_decay_exclude, optim_cfg.weight_decay_min_ndim)
    levels = {name: resolve_level(name, optim_cfg.levels[name]) for name in level_names}
    label_by_path = dict(zip(param_paths(params), jax.tree.leaves(labels), strict=True))
    orthogonalised = {path for path, name in label_by_path.items() if levels[name].kind in ORTHOGONALISING_KINDS}
    layouts = matrix_layouts(params, axis_names, paths=orthogonalised)
    transforms = {}
    for name, level in levels.items():
        period = period_in_steps(name, level.period_tokens, tokens_per_step)
        transforms[name] = level_transform(
            level, period=period, total_steps=total_steps, decay_mask=decay_mask, layouts=layouts
        )
    tx = optax.partition(transforms, labeller)
    if optim_cfg.clip_norm > 0:
        tx = optax.chain(optax.clip_by_global_norm(optim_cfg.clip_norm), tx)
    return tx, labels
