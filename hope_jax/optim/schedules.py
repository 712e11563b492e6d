"""LR schedules in global optimiser steps: linear warmup from 0, then cosine, linear or constant."""

import math
from collections.abc import Callable

import jax.numpy as jnp


def make_schedule(
    kind: str,
    *,
    peak_lr: float,
    warmup_steps: int,
    decay_steps: int,
    end_lr_ratio: float,
    total_steps: int,
) -> Callable:
    """lr(step): step/warmup * peak during warmup; exactly peak at warmup end; exactly peak*end_lr_ratio at
    warmup + decay and constant after it. decay_steps = -1 decays until total_steps."""
    if warmup_steps < 0:
        raise ValueError(f"warmup_steps must be >= 0, got {warmup_steps}")
    if decay_steps == -1:
        decay_steps = total_steps - warmup_steps
    if kind != "constant" and decay_steps <= 0:
        raise ValueError(
            f"{kind} schedule needs decay steps > 0 after {warmup_steps} warmup steps (total_steps={total_steps})"
        )
    end_lr = peak_lr * end_lr_ratio

    def schedule(step):
        step = jnp.asarray(step, jnp.float32)
        warm = peak_lr * step / max(warmup_steps, 1)
        if kind == "constant":
            after = jnp.full_like(step, peak_lr)
        else:
            progress = jnp.clip((step - warmup_steps) / decay_steps, 0.0, 1.0)
            if kind == "cosine":
                after = end_lr + (peak_lr - end_lr) * 0.5 * (1.0 + jnp.cos(math.pi * progress))
            elif kind == "linear":
                after = peak_lr + (end_lr - peak_lr) * progress
            else:
                raise ValueError(f"unknown schedule {kind!r}")
        return jnp.where(step < warmup_steps, warm, after)

    return schedule


def every_k_schedule(schedule: Callable, period: int) -> Callable:
    """The schedule of a level that steps every `period` global steps, fed that level's own update count n.

    Its n-th update (0-based) is applied at global step (n+1)*period - 1, so warmup/decay stay in global
    steps."""
    if period == 1:
        return schedule
    return lambda count: schedule((jnp.asarray(count) + 1) * period - 1)
