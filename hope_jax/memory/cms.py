"""In-context CMS level with the `local` objective (DESIGN D6; HOPE_SPEC §6, E30).

A level is an MLP f_θ (2-layer {'w_in', 'w_out'}: σ(x W_in) W_out, or SwiGLU {'w_gate', 'w_up', 'w_down'}; the block
adds the residual) with period C. Tokens of chunk c read the chunk-start weights θ_s(t); at the end of the chunk
θ takes one chunk of DGD (dgd.py, per layer) on exactly that chunk's tokens with

    ℓ_t(θ) = ½‖f_θ(k_t) − f_θs(t)(v_t)‖²,

the target being a constant of the inner gradient. Retention is tied to the learning rate as in decoupled weight decay,
α = 1 − inner_lr·inner_decay, so inner_lr = 0 leaves θ untouched and the level is exactly the plain MLP.
"""

import functools

import jax
import jax.numpy as jnp
from jax import lax

from hope_jax.memory import fast_mlp
from hope_jax.memory.dgd import DGDRule, chunk_start_snapshot, dgd_chunk_update, dgd_token_step
from hope_jax.memory.driver import scan_sequence


def level_forward(weights: dict, x: jax.Array, activation: str = "silu") -> jax.Array:
    """The level's MLP on rows x [n, d] (no residual)."""
    return fast_mlp.forward(weights, x, residual=False, activation=activation)


def cms_local(
    weights: dict,
    x: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    inner_lr: jax.Array | float,
    inner_decay: jax.Array | float,
    period: int,
    activation: str = "silu",
    dgd: bool = True,
    normalized_step: bool = True,
    step_bound: str = "chunk",
    truncate_bptt: bool = False,
    remat_group: int = 1,
    accum_dtype=jnp.float32,
    update_mask: jax.Array | None = None,
) -> tuple[jax.Array, dict]:
    """One in-context CMS level over a batch; returns (y [B, T, d_out], end weights).

    weights: per-sequence level weights, leaves [B, ...] (2-layer or SwiGLU, see module docstring).
    x: [B, T, d] the level's input; k, v: [B, T, d] the block's keys and values (heads concatenated).
    inner_lr: inner learning rate η (scalar, may be a traced outer parameter); inner_decay: weight decay, retention
      1 − inner_lr·inner_decay.
    period: C in tokens (a trailing partial chunk updates at the end of the sequence; period ≥ T means the outputs
      never see an update). dgd=False gives plain GD with decay. normalized_step: dgd.dgd_chunk_update's
      curvature-normalised gradient step over the period (False: η' per token), bounded by `step_bound`.
    update_mask: [B, T] per-token weights in {0, 1} of the updates (None: every token); a 0 takes no step and no
      decay (document resets, memory/document_resets.py).
    """
    if x.ndim != 3 or k.shape[:2] != x.shape[:2] or v.shape != k.shape:
        raise ValueError(
            f"x, k, v must be [B, T, d] with equal B, T (k and v equal); got {x.shape}, {k.shape}, {v.shape}"
        )
    kind = fast_mlp.memory_kind(weights)
    if kind == "linear":
        raise ValueError("a CMS level is a 2-layer MLP {'w_in', 'w_out'} or SwiGLU {'w_gate', 'w_up', 'w_down'}")
    cast = functools.partial(_cast, dtype=accum_dtype)
    inner_lr, inner_decay = cast(inner_lr), cast(inner_decay)

    step = functools.partial(
        local_chunk, inner_lr=inner_lr, inner_decay=inner_decay, period=period, activation=activation, dgd=dgd,
        normalized_step=normalized_step, step_bound=step_bound, truncate_bptt=truncate_bptt,
    )  # fmt: skip
    one_sequence = lambda w, *xs: scan_sequence(step, w, xs, period, remat_group=remat_group)
    mask = jnp.ones(x.shape[:2], accum_dtype) if update_mask is None else update_mask
    w_end, y = jax.vmap(one_sequence)(*cast((weights, x, k, v, mask)))
    return y.astype(x.dtype), w_end


def local_chunk(w: dict, chunk: tuple, *, activation: str, **update_options) -> tuple[dict, jax.Array]:
    """The step of one sequence over one chunk (driver.py): w the level's weights at the chunk start, chunk (x, k, v,
    update mask) [C, ...]; returns (the weights at the chunk end, y [C, d_out]). The output, the target and the inner
    gradient's forward pass all read the chunk-start weights. update_options: _local_chunk_update's.
    cms_local_reference (below) is the same level token by token."""
    x_c, k_c, v_c, mask_c = chunk
    key_parts, target_parts, out_parts = fast_mlp.forward_parts_of_blocks(
        w, (k_c, v_c, x_c), residual=False, activation=activation
    )
    new_w = _local_chunk_update(
        w, k_c, target_parts["out"], key_parts, activation=activation, mask=mask_c, **update_options
    )
    return new_w, out_parts["out"]


def _cast(tree, dtype):
    return jax.tree.map(lambda a: jnp.asarray(a).astype(dtype), tree)


def _local_chunk_update(w, k_c, target, key_parts, *, inner_lr, inner_decay, period, activation, dgd, normalized_step,
                        step_bound, truncate_bptt, mask=None):  # fmt: skip
    """One sequence's end-of-chunk weights: one chunk of DGD regressing f(k_c) onto `target` (module docstring);
    mask [C] in {0, 1}: a 0 takes no step and no decay (None: every token)."""
    mask = jnp.ones(k_c.shape[:1], k_c.dtype) if mask is None else mask
    rule = DGDRule(residual=False, activation=activation, dgd=dgd, truncate_bptt=truncate_bptt,
                   normalized_step=normalized_step, step_bound=step_bound)  # fmt: skip
    w, _ = dgd_chunk_update(
        w, None, k_c, target, inner_lr * mask, 1.0 - inner_lr * inner_decay * mask, rule, key_parts=key_parts,
        chunk_size=period,
    )  # fmt: skip
    return w


def nested_chunk_starts(
    carried: list[dict],
    periods: list[int],
    k: jax.Array,
    v: jax.Array,
    *,
    inner_lr: jax.Array | float,
    inner_decay: jax.Array | float,
    activation: str = "silu",
    dgd: bool = True,
    normalized_step: bool = True,
    step_bound: str = "chunk",
    truncate_bptt: bool = False,
    accum_dtype=jnp.float32,
) -> tuple[list[dict], dict]:
    """Nested CMS (HOPE_SPEC E31) over ONE chunk of the slowest level: the weights every level reads in each of its
    chunks, and the slowest level's end weights.

    carried: each level's weights (leaves [B, ...]) at this chunk's start, fastest level first; periods: their
    periods, strictly increasing, each dividing the next; the last is the chunk's length P = k.shape[1].
    k, v: [B, P, d] the block's keys and values. A level's weights change only through its own `local` update (the
    module docstring) and, whenever the next slower level updates, are replaced by that level's new weights (its
    initial state for the slower level's next chunk is the slower level's state: E31's meta-learned initial state).
    Inside this chunk that happens at the slower level's chunk boundaries; at the chunk's own end every level takes
    the slowest level's new weights, which the caller carries.

    Returns (starts, end): starts[i] has leaves [B, P / periods[i], ...], the weights level i reads in each of its
    chunks (the first is carried[i]); end is the slowest level's weights after its update.
    """
    if any(slow % fast or slow <= fast for fast, slow in zip(periods, periods[1:], strict=False)):
        raise ValueError(f"nested CMS periods {periods} must increase, each dividing the next")
    if k.shape[1] != periods[-1] or v.shape != k.shape:
        raise ValueError(
            f"k, v must be [B, {periods[-1]}, d] (one chunk of the slowest level); got {k.shape}, {v.shape}"
        )
    cast = functools.partial(_cast, dtype=accum_dtype)
    inner_lr, inner_decay, carried, k, v = cast((inner_lr, inner_decay, carried, k, v))
    options = dict(inner_lr=inner_lr, inner_decay=inner_decay, activation=activation, dgd=dgd, normalized_step=normalized_step,
                   step_bound=step_bound, truncate_bptt=truncate_bptt)  # fmt: skip

    def update(w, k_c, v_c, period):
        key_parts, target_parts = fast_mlp.forward_parts_of_blocks(w, (k_c, v_c), residual=False, activation=activation)
        return _local_chunk_update(w, k_c, target_parts["out"], key_parts, period=period, **options)

    def run_level(start, k_s, v_s, period):
        """One sequence, one chunk of the slower level: this level's weights at each of its chunks' starts."""
        chunks = lambda a: a.reshape(-1, period, a.shape[-1])

        def step(w, kv):
            return update(w, *kv, period), w

        _, starts = jax.lax.scan(step, start, (chunks(k_s), chunks(v_s)))
        return starts  # the update of the last chunk is dropped: the slower level's update replaces it

    slowest = jax.vmap(lambda w, k_s, v_s: update(w, k_s, v_s, periods[-1]))(carried[-1], k, v)
    starts = [None] * len(periods)
    starts[-1] = jax.tree.map(lambda a: a[:, None], carried[-1])
    for i in reversed(range(len(periods) - 1)):
        # Level i restarts, in each chunk of level i + 1 after the first, from the weights level i + 1 reads there.
        restart = jax.tree.map(lambda own, slower: slower.at[:, 0].set(own), carried[i], starts[i + 1])
        k_slower, v_slower = (a.reshape(a.shape[0], -1, periods[i + 1], a.shape[-1]) for a in (k, v))
        per_slower_chunk = jax.vmap(jax.vmap(functools.partial(run_level, period=periods[i])))
        level_starts = per_slower_chunk(restart, k_slower, v_slower)  # leaves [B, n_slower, P_slower / P_i, ...]
        starts[i] = jax.tree.map(lambda a: a.reshape(a.shape[0], -1, *a.shape[3:]), level_starts)
    return starts, slowest


# ---- per-token reference (a lax.scan over tokens; tests and `python -m hope_jax.bench inner`) ------------------------


def cms_local_reference(
    weights, x, k, v, *, inner_lr, inner_decay, period, activation="silu", dgd=True, normalized_step=True
):
    """Per-token CMS `local` level; same API as cms_local."""

    def one_sequence(w, x, k, v):
        def step(carry, inputs):
            w, snapshot = carry
            t, x_t, k_t, v_t = inputs
            snapshot = chunk_start_snapshot(t, period, w, snapshot)
            y_t = level_forward(snapshot, x_t[None], activation)[0]
            target = level_forward(snapshot, v_t[None], activation)[0]
            rule = DGDRule(residual=False, activation=activation, dgd=dgd, normalized_step=normalized_step)
            w, _ = dgd_token_step(
                w, None, snapshot, k_t, target, inner_lr, 1.0 - inner_lr * inner_decay, rule, chunk_size=period
            )
            return (w, snapshot), y_t

        (w, _), y = lax.scan(step, (w, w), (jnp.arange(x.shape[0]), x, k, v))
        return y, w

    return jax.vmap(one_sequence)(weights, x, k, v)
