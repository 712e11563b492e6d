"""The in-chunk linear recurrence shared by every memory, solved without a token loop (HOPE_SPEC E11–E13, Appendix B).

One weight matrix W [d_in, d_out] (row convention), chunk tokens t = 0..C-1, known before the chunk is processed:
x_t (the layer's input), ĝ_t (the step: minus learning rate times the output-side inner gradient at the chunk-start
weights), a_t (retention), ε_t (momentum decay), β_t (DGD step; absent for Titans):

    momentum off:  W_t = (a_t I − β_t x_tᵀx_t) W_{t−1} + x_tᵀ ĝ_t
    momentum on:   S_t = ε_t S_{t−1} + x_tᵀ ĝ_t,   W_t = (a_t I − β_t x_tᵀx_t) W_{t−1} + S_t

Titans (E5–E6) is β = 0 with a = 1 − α_T, ε = η_T and ĝ = −θ·g; DGD (E28 + A5) is β = η' with retention α.
The decay and momentum products become C×C matrices (E12–E13) and the identity-plus-rank-one transitions one C×C
unit-lower-triangular solve (Appendix B.1/B.2, written here in row convention).
"""

import functools
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax import lax

from hope_jax.memory.chunking import current_precision, mm, segment_products, shift_rows_down

# Blocks up to this size are multiplied as broadcast products summed in one fused loop: as dot thunks, the 2×2 and
# 4×4 products of the first inversion levels cost more in dispatch than in arithmetic.
SMALL_BLOCK_PRODUCT = 4


def _block_mm(a: jax.Array, b: jax.Array) -> jax.Array:
    """Batched product of [n, p, q] and [n, q, r] blocks; tiny blocks as one fused multiply-and-sum."""
    if a.shape[-1] <= SMALL_BLOCK_PRODUCT:
        return jnp.sum(a[..., :, :, None] * b[..., None, :, :], axis=-2)
    return mm(a, b)


def _levelwise_inverse(a: jax.Array) -> jax.Array:
    """Inverse of a unit-lower-triangular [C, C] matrix by level-wise block inversion, log2(C) batched product steps.

    [[A11, 0], [A21, A22]]⁻¹ = [[X1, 0], [−X2 A21 X1, X2]] applied to all diagonal blocks of one size at once,
    starting from 1×1 blocks (= 1). Matmul-shaped, and as stable as the recursive triangular inverse. Only the
    strictly lower triangle of `a` is read. A size that is not a power of two is padded with an identity block, whose
    inverse is itself.
    """
    size = a.shape[-1]
    padded = 1 << max(size - 1, 0).bit_length()
    if padded != size:
        a = jnp.eye(padded, dtype=a.dtype).at[:size, :size].set(a)
    inverse = jnp.ones((padded, 1, 1), a.dtype)  # inverses of the 1×1 diagonal blocks
    block = 1
    while block < padded:
        n_pairs = padded // (2 * block)
        tiled = a.reshape(n_pairs, 2 * block, n_pairs, 2 * block)
        pairs = jnp.arange(n_pairs)
        lower_left = tiled[pairs, block:, pairs, :block]  # [n_pairs, block, block]
        upper, lower = inverse[0::2], inverse[1::2]
        # 1×1 diagonal blocks are 1: the corner is −A21 itself.
        corner = -lower_left if block == 1 else -_block_mm(_block_mm(lower, lower_left), upper)
        zeros = jnp.zeros_like(corner)
        inverse = jnp.concatenate(
            [jnp.concatenate([upper, zeros], axis=2), jnp.concatenate([corner, lower], axis=2)], axis=1
        )
        block *= 2
    return inverse[0, :size, :size]


def _strictly_lower(m: jax.Array) -> jax.Array:
    return jnp.tril(m, -1)


# Both functions below carry their own VJPs. Differentiating through the level-wise construction replays its
# gathers, concatenations and small products backwards; with the inverse Y = A⁻¹ at hand the gradients are two
# matmuls (a solve's backward is another solve with Aᵀ). Only A's strictly lower triangle is an input (the unit
# diagonal is implied), so its gradient is masked to that triangle. The inner precision current at the forward is a
# static argument, so that the backward, traced later, multiplies at the same precision (chunking.inner_precision).
def unit_lower_inverse(a: jax.Array) -> jax.Array:
    """Inverse of a unit-lower-triangular [C, C] matrix (_levelwise_inverse), with the VJP ∂A = −Yᵀ ∂Y Yᵀ."""
    return _unit_lower_inverse(a, current_precision())


@functools.partial(jax.custom_vjp, nondiff_argnums=(1,))
def _unit_lower_inverse(a: jax.Array, precision) -> jax.Array:
    return _levelwise_inverse(a)


def _inverse_fwd(a, precision):
    inverse = _levelwise_inverse(a)
    return inverse, inverse


def _inverse_bwd(precision, inverse, grad):
    return (_strictly_lower(-mm(mm(inverse.T, grad, precision), inverse.T, precision)),)


_unit_lower_inverse.defvjp(_inverse_fwd, _inverse_bwd)


def _solve_by_inverse(a: jax.Array, b: jax.Array) -> jax.Array:
    return _solve_by_inverse_at(a, b, current_precision())


@functools.partial(jax.custom_vjp, nondiff_argnums=(2,))
def _solve_by_inverse_at(a: jax.Array, b: jax.Array, precision) -> jax.Array:
    return mm(_levelwise_inverse(a), b)


def _solve_fwd(a, b, precision):
    inverse = _levelwise_inverse(a)
    x = mm(inverse, b)
    return x, (inverse, x)


def _solve_bwd(precision, residuals, grad):
    inverse, x = residuals
    grad_b = mm(inverse.T, grad, precision)  # Aᵀ ∂b = ∂x
    return _strictly_lower(-mm(grad_b, x.T, precision)), grad_b


_solve_by_inverse_at.defvjp(_solve_fwd, _solve_bwd)


# Systems larger than this are solved blockwise (unit_lower_solve): the full inverse costs ~⅔C³, blocked forward
# substitution C·SOLVE_BLOCK² + C²·n. At C = 512 (a CMS mid level) the inverse was the largest single cost of a HOPE
# train step on CPU (bench notes).
SOLVE_BLOCK = 64


def unit_lower_solve(a: jax.Array, b: jax.Array, block: int = SOLVE_BLOCK) -> jax.Array:
    """a⁻¹ b for unit-lower-triangular a [C, C] (strictly lower triangle read) and b [C, n], as matmuls only.

    C ≤ block: the full inverse (with the solve's own VJP). Larger: the diagonal blocks are inverted (batched) and
    the block rows solved by forward substitution, x_j = A_jj⁻¹ (b_j − A_j,<j x_<j) — the same solution, without
    the O(C³) inverse.
    """
    size = a.shape[-1]
    if size <= block:
        return _solve_by_inverse(a, b)
    n_blocks = -(-size // block)
    padded = n_blocks * block
    if padded != size:  # identity rows/columns: the padded unknowns are the (zero) padded right-hand side
        a = jnp.eye(padded, dtype=a.dtype).at[:size, :size].set(a)
        b = jnp.pad(b, [(0, padded - size), (0, 0)])
    tiles = a.reshape(n_blocks, block, n_blocks, block)
    blocks = jnp.arange(n_blocks)
    diagonal_inverses = jax.vmap(unit_lower_inverse)(tiles[blocks, :, blocks, :])
    solved = []
    for j in range(n_blocks):
        rows = slice(j * block, (j + 1) * block)
        rhs = b[rows]
        if j:
            rhs = rhs - mm(a[rows, : j * block], jnp.concatenate(solved, axis=0))
        solved.append(mm(diagonal_inverses[j], rhs))
    return jnp.concatenate(solved, axis=0)[:size]


class ChunkCoefficients(NamedTuple):
    """Decay/momentum coefficients of one chunk (all in the chunk's own token index)."""

    decay: jax.Array  # [C, C] Γ[t, j] = Π_{l=j+1..t} a_l (lower triangular, unit diagonal)
    decay_from_start: jax.Array  # [C] γ_t = Π_{l=0..t} a_l: how much of the chunk-start W survives to t
    write: (
        jax.Array
    )  # [C, C] c[t, i] = Σ_{j=i..t} Γ[t, j] E[j, i]: weight of token i's step in W_t (Γ without momentum)
    momentum_into_state: jax.Array  # [C] σ_t = Σ_{j≤t} Γ[t, j] Π_{l≤j} ε_l: weight of the chunk-start S in W_t
    momentum_decay: jax.Array | None  # [C, C] E[j, i] = Π_{l=i+1..j} ε_l (None without momentum)
    momentum_from_start: jax.Array | None  # [C] Π_{l=0..t} ε_l (None without momentum)


def chunk_coefficients(log_retain: jax.Array, log_momentum: jax.Array | None) -> ChunkCoefficients:
    """Coefficients from per-token log retention [C] and log momentum decay [C] (None = momentum off)."""
    decay = segment_products(log_retain)
    decay_from_start = jnp.exp(jnp.cumsum(log_retain))
    if log_momentum is None:
        return ChunkCoefficients(decay, decay_from_start, decay, jnp.zeros_like(decay_from_start), None, None)
    momentum_decay = segment_products(log_momentum)
    momentum_from_start = jnp.exp(jnp.cumsum(log_momentum))
    write = mm(decay, momentum_decay)
    momentum_into_state = mm(decay, momentum_from_start[:, None])[:, 0]
    return ChunkCoefficients(decay, decay_from_start, write, momentum_into_state, momentum_decay, momentum_from_start)


def chunk_end_state(
    w0: jax.Array,
    s0: jax.Array | None,
    x: jax.Array,
    step: jax.Array,
    coeffs: ChunkCoefficients,
    beta: jax.Array | None = None,
    truncate_bptt: bool = False,
    x_w0: jax.Array | None = None,
) -> tuple[jax.Array, jax.Array | None]:
    """End-of-chunk (W, S) of the recurrence in the module docstring.

    w0, s0: [d_in, d_out] chunk-start weights and momentum (s0 None iff momentum off); x: [C, d_in]; step: ĝ [C, d_out];
    beta: [C] DGD steps or None (no state-dependent transition). truncate_bptt: the data-dependent part of the
    update is stop-gradient'ed, so outer gradients reach the start state only through its decay (DESIGN D4 switch).
    x_w0: x @ w0 when the caller already has it (DGD only; computed here otherwise).
    """
    has_momentum = coeffs.momentum_decay is not None
    if has_momentum != (s0 is not None):
        raise ValueError("momentum state must be given exactly when the coefficients carry momentum")
    last = x.shape[0] - 1
    carried = coeffs.decay_from_start[last] * w0
    if has_momentum:
        carried = carried + coeffs.momentum_into_state[last] * s0
    write_rows = coeffs.write[last][:, None] * step  # token i's step as it appears in W_end
    if beta is not None:
        # Rows of `writes` are the transition's own rank-one writes u_t = −β_t x_t W_{t−1}; the triangular solve
        # replaces the token loop (Appendix B).
        gram = mm(x, x.T)
        decay_before = shift_rows_down(coeffs.decay)  # Γ'[t, i] = Π_{l=i+1..t−1} a_l for i < t
        system = jnp.eye(x.shape[0], dtype=x.dtype) + beta[:, None] * (gram * decay_before)
        # State before token t, seen through x_t: γ'_t x_t W0 + σ'_t x_t S0 + Σ_{i<t} (x_t·x_i)(Γ'[t,i] u_i + c[t−1,i] ĝ_i).
        start_decay_before = jnp.concatenate([jnp.ones_like(coeffs.decay_from_start[:1]), coeffs.decay_from_start[:-1]])
        x_w0 = mm(x, w0) if x_w0 is None else x_w0
        rhs = start_decay_before[:, None] * x_w0 + mm(gram * shift_rows_down(coeffs.write), step)
        if has_momentum:
            momentum_before = jnp.concatenate(
                [jnp.zeros_like(coeffs.momentum_into_state[:1]), coeffs.momentum_into_state[:-1]]
            )
            rhs = rhs + momentum_before[:, None] * mm(x, s0)
        writes = unit_lower_solve(system, -beta[:, None] * rhs)
        # xᵀA + xᵀB as xᵀ(A + B): one product with x instead of two.
        write_rows = write_rows + coeffs.decay[last][:, None] * writes
    update = mm(x.T, write_rows)
    w_end = carried + (lax.stop_gradient(update) if truncate_bptt else update)
    if not has_momentum:
        return w_end, None
    momentum_update = mm(x.T, coeffs.momentum_decay[last][:, None] * step)
    if truncate_bptt:
        momentum_update = lax.stop_gradient(momentum_update)
    return w_end, coeffs.momentum_from_start[last] * s0 + momentum_update


def chunk_end_state_in_blocks(
    w0: jax.Array,
    s0: jax.Array | None,
    x: jax.Array,
    step: jax.Array,
    log_retain: jax.Array,
    log_momentum: jax.Array | None,
    beta: jax.Array | None = None,
    truncate_bptt: bool = False,
    block: int = SOLVE_BLOCK,
) -> tuple[jax.Array, jax.Array | None]:
    """chunk_end_state for a chunk of any length C, as consecutive sub-chunks of at most `block` tokens.

    The recurrence is token-sequential and its per-token inputs (x, ĝ, a, ε, β) are all known before the chunk (the
    gradients are taken at the chunk-START weights), so running it sub-chunk after sub-chunk gives the same end state
    as one C-token solve. The cost is what changes: one C-token solve is O(C²·d) per matrix (Gram matrix, decay
    matrices, the triangular system), sub-chunks O(C·block·d) + O(C·d²/block) — at a CMS period of 512 with block 64
    about 4× fewer FLOPs, and none of the O(C³) terms of segment products or an inverse at C = 512.
    log_retain, log_momentum (None = momentum off), beta: [C] per token, as chunk_coefficients / chunk_end_state.
    """
    size = x.shape[0]
    per_token = {"x": x, "step": step, "log_retain": log_retain}
    per_token.update({k: v for k, v in (("log_momentum", log_momentum), ("beta", beta)) if v is not None})

    def sub_chunk(state, part):
        coeffs = chunk_coefficients(part["log_retain"], part.get("log_momentum"))
        return chunk_end_state(*state, part["x"], part["step"], coeffs, part.get("beta"), truncate_bptt), None

    state = (w0, s0)
    n_full = size // block
    if n_full:
        whole = jax.tree.map(lambda a: a[: n_full * block].reshape(n_full, block, *a.shape[1:]), per_token)
        state, _ = lax.scan(sub_chunk, state, whole)
    if size % block:
        state, _ = sub_chunk(state, jax.tree.map(lambda a: a[n_full * block :], per_token))
    return state
