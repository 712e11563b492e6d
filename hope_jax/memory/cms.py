"""In-context CMS level with the `local` objective (DESIGN D6; HOPE_SPEC §6, E30).

A level is an MLP f_θ (2-layer {'w_in', 'w_out'}: σ(x W_in) W_out, or SwiGLU {'w_gate', 'w_up', 'w_down'}; the block
adds the residual) with period C. Tokens of chunk c read the chunk-start weights θ_s(t); at the end of the chunk
θ takes one chunk of DGD (dgd.py, per layer) on exactly that chunk's tokens with

    ℓ_t(θ) = ½‖f_θ(k_t) − f_θs(t)(v_t)‖²,

the target being a constant of the inner gradient. Retention is tied to the learning rate as in decoupled weight decay,
α = 1 − lr·decay, so lr = 0 leaves θ untouched and the level is exactly the plain MLP.
"""

import jax
import jax.numpy as jnp

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import scan_chunks
from hope_jax.memory.dgd import dgd_chunk_update


def level_forward(weights: dict, x: jax.Array, activation: str = "silu") -> jax.Array:
    """The level's MLP on rows x [n, d] (no residual)."""
    return fast_mlp.forward(weights, x, residual=False, activation=activation)


def cms_local(
    weights: dict,
    x: jax.Array,
    k: jax.Array,
    v: jax.Array,
    *,
    lr: jax.Array | float,
    decay: jax.Array | float,
    period: int,
    activation: str = "silu",
    use_dgd: bool = True,
    normalize_step: bool = True,
    step_bound: str = "chunk",
    truncate_bptt: bool = False,
    remat_group: int = 1,
    accum_dtype=jnp.float32,
) -> tuple[jax.Array, dict]:
    """One in-context CMS level over a batch; returns (y [B, T, d_out], end weights).

    weights: per-sequence level weights, leaves [B, ...] (2-layer or SwiGLU, see module docstring).
    x: [B, T, d] the level's input; k, v: [B, T, d] the block's keys and values (heads concatenated).
    lr: inner learning rate η (scalar, may be a traced outer parameter); decay: weight decay, retention 1 − lr·decay.
    period: C in tokens (a trailing partial chunk updates at the end of the sequence; period ≥ T means the outputs
      never see an update). use_dgd=False gives plain GD with decay. normalize_step: dgd.dgd_chunk_update's
      curvature-normalised gradient step over the period (False: η' per token), bounded by `step_bound`.
    """
    if x.ndim != 3 or k.shape[:2] != x.shape[:2] or v.shape != k.shape:
        raise ValueError(
            f"x, k, v must be [B, T, d] with equal B, T (k and v equal); got {x.shape}, {k.shape}, {v.shape}"
        )
    kind = fast_mlp.memory_kind(weights)
    if kind == "linear":
        raise ValueError("a CMS level is a 2-layer MLP {'w_in', 'w_out'} or SwiGLU {'w_gate', 'w_up', 'w_down'}")
    cast = lambda tree: jax.tree.map(lambda a: jnp.asarray(a).astype(accum_dtype), tree)
    lr, decay = cast(lr), cast(decay)

    def one_sequence(w, x, k, v):
        def chunk_fn(w, xs):
            x_c, k_c, v_c = xs
            # The output, the target and the inner gradient's forward pass all read the chunk-start weights.
            key_parts, target_parts, out_parts = fast_mlp.forward_parts_of_blocks(
                w, (k_c, v_c, x_c), residual=False, activation=activation
            )
            y, target = out_parts["out"], target_parts["out"]
            ones = jnp.ones(x_c.shape[:1], accum_dtype)
            w, _ = dgd_chunk_update(
                w,
                None,
                k_c,
                target,
                lr * ones,
                (1.0 - lr * decay) * ones,
                residual=False,
                activation=activation,
                use_dgd=use_dgd,
                truncate_bptt=truncate_bptt,
                key_parts=key_parts,
                normalize_step=normalize_step,
                chunk_size=period,
                step_bound=step_bound,
            )
            return w, y

        w_end, y = scan_chunks(chunk_fn, w, (x, k, v), period, remat_group)
        return y, w_end

    y, w_end = jax.vmap(one_sequence)(*cast((weights, x, k, v)))
    return y.astype(x.dtype), w_end
