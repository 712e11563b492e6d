"""Shared pieces of the chunk-parallel inner loops: the inner precision, step-size bounds, in-chunk decay products.

Conventions used by every module of this package:
- one sequence and one head at a time ([T, d] rows); batch and heads are added with `jax.vmap` by the public functions;
- fast weights in row convention, `y = x @ W` with `W[d_in, d_out]`, so a chunk's tokens are the rows of a matrix;
- chunk boundaries at multiples of the chunk size; when T is not a multiple, the last, shorter chunk is processed as a
  chunk of its own (its tokens read its start state, and the returned end state includes its update: the end of the
  sequence acts as a chunk boundary).
"""

import contextlib
import contextvars
from collections.abc import Iterator

import jax
import jax.numpy as jnp
from jax import lax

# The C×C products and solves of the inner loops stay exact even where the model runs reduced-precision matmuls
# (HOPE_SPEC Appendix B.3): HIGHEST unless a model asks otherwise (model.inner_precision). On CPU this changes
# nothing; on a GPU, HIGHEST is true float32 on the CUDA cores, and an H200 HOPE step ran 22% faster at DEFAULT
# (BUILD_NOTES "GPU: NVIDIA H200").
HIGHEST = lax.Precision.HIGHEST
INNER_PRECISIONS = {"highest": lax.Precision.HIGHEST, "high": lax.Precision.HIGH, "default": lax.Precision.DEFAULT}

# Read while tracing, like jax.default_matmul_precision: the LM frame enters `inner_precision` around its forward, so
# every inner loop traced inside (scans, checkpoints, custom-VJP forwards) uses it, and the traced program records
# it. A custom VJP's backward is traced after the forward has returned, so it must take the precision as a static
# argument captured in its forward (recurrence.py).
_inner_precision: contextvars.ContextVar[lax.Precision] = contextvars.ContextVar("inner_precision", default=HIGHEST)


@contextlib.contextmanager
def inner_precision(name: str) -> Iterator[None]:
    """Within this block, `mm` multiplies at INNER_PRECISIONS[name] (model.inner_precision)."""
    token = _inner_precision.set(INNER_PRECISIONS[name])
    try:
        yield
    finally:
        _inner_precision.reset(token)


def current_precision() -> lax.Precision:
    return _inner_precision.get()


def mm(a: jax.Array, b: jax.Array, precision: lax.Precision | None = None) -> jax.Array:
    """Matrix product of the inner loops, at `precision` or else the current inner precision (HIGHEST by default)."""
    return jnp.matmul(a, b, precision=_inner_precision.get() if precision is None else precision)


def l2_normalize(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """Rows scaled to unit ℓ2 norm (eps keeps all-zero rows finite)."""
    return x * l2_normalize_scale(x, eps)


def l2_normalize_scale(x: jax.Array, eps: float = 1e-6) -> jax.Array:
    """The [..., 1] factor 1/‖x‖ (eps as in l2_normalize) that l2_normalize multiplies the rows by."""
    return lax.rsqrt(jnp.sum(x * x, axis=-1, keepdims=True) + eps)


def chunk_step_size(lr: jax.Array, curvature: jax.Array, chunk_size: int) -> jax.Array:
    """[C] steps lr_t / (1 + C·lr_t·h_t) for the inner gradients of a chunk of `chunk_size` tokens, h_t [C] a bound
    on token t's curvature in the weight matrix (fast_mlp.curvature_bounds: ‖x_t‖² times the squared gain from the
    matrix's output to the memory's output).

    Inside a chunk every token's gradient is taken at the chunk-start weights and the C of them are summed: one
    mini-batch step on Σ_t lr_t ℓ_t, whose curvature reaches C·lr·h when the tokens are aligned (SiLU'd keys are:
    mean cosine ≈ 0.6). Gradient descent on it diverges once that exceeds 2 — 16 unit keys at lr 0.5 do — and the
    fast weights then grow geometrically from chunk to chunk (BUILD_NOTES "Inner-step stability"). With this step
    Σ_t step_t·h_t < Σ_t 1/C = 1 for any inputs, so the chunk's summed step stays below the curvature bound, token by
    token and causally (each step reads its own token only). At C = 1 on a unit input it is the Sherman–Morrison step
    of E19, η' = η / (1 + η‖x‖²) (Longhorn's δ for Titans)."""
    return lr / (1.0 + chunk_size * lr * curvature)


STEP_BOUNDS = ("chunk", "gram")


def gram_step_size(lr: jax.Array, curvature: jax.Array, x: jax.Array, eps: float = 1e-12) -> jax.Array:
    """[C] steps lr_t / (1 + lr_t·r_t), r_t = (h_t/‖x_t‖²)·Σ_j |x_t·x_j|: chunk_step_size with the chunk's Gram matrix
    in place of its worst case. x [C, d] the matrix's inputs, h_t their curvature bounds (curvature_bounds).

    The chunk's summed step has curvature ≤ λ_max(Σ_t s_t g_t x_t x_tᵀ), g_t = h_t/‖x_t‖² the output-side gain. That
    equals λ_max(D·X Xᵀ) with D = diag(s_t g_t) (similar matrices), which Gershgorin bounds by max_t s_t g_t Σ_j |x_t·x_j|
    < 1 for these steps: the same guarantee as chunk_step_size's C·h_t (which it never undercuts when the inputs are
    equally long), but a write among orthogonal inputs takes the full Sherman–Morrison step lr/(1 + lr·h) instead of
    ≤ 1/C of its error. Step t reads every input of its chunk, so it is causal only for memories whose reads use the
    chunk-start weights (the DGD memories of HOPE and the CMS), not for a read through the chunk (titans.py)."""
    # A token with lr 0 takes no step (a document reset's masked token): its row of D is zero and drops out of the
    # bound, so the other tokens' steps never depend on it.
    active = (lr > 0).astype(x.dtype)
    gram_row_sums = jnp.sum(jnp.abs(mm(x, x.T)) * active[None, :], axis=-1)
    gain = curvature / (jnp.sum(x * x, axis=-1) + eps)
    return lr / (1.0 + lr * gain * gram_row_sums)


# segment_products switches to a parallel prefix sum above this many tokens (see there).
PREFIX_SUM_MIN = 64


def segment_products(log_a: jax.Array) -> jax.Array:
    """[C] log factors -> [C, C] lower-triangular matrix P[t, i] = Π_{l=i+1..t} a_l (P[t, t] = 1, 0 above the diagonal).

    Built as a masked cumulative sum over a broadcast copy instead of as differences of one cumulative sum, so that
    no ratio of two tiny products is ever formed (HOPE_SPEC Appendix B.3). The cumulative sum is a parallel prefix
    sum (log2 C levels of adds): jnp.cumsum lowers to a reduce-window that XLA's CPU backend runs in O(C) per output
    entry, O(C³) for this [C, C] matrix — at a CMS period of 512 that was ~1.7 ms forward and ~2.8 ms backward per
    call, the largest cost of the period-512 level (bench notes). Small chunks keep jnp.cumsum.
    """
    c = log_a.shape[0]
    rows = jnp.arange(c)[:, None]  # l (summed) / t (result)
    cols = jnp.arange(c)[None, :]  # i
    terms = jnp.where(rows > cols, jnp.broadcast_to(log_a[:, None], (c, c)), 0.0)
    if c > PREFIX_SUM_MIN:
        sums = lax.associative_scan(jnp.add, terms, axis=0)
    else:  # at chunk sizes like 16 the reduce-window is one cheap op, the prefix sum ~30 small ones
        sums = jnp.cumsum(terms, axis=0)
    return jnp.where(rows >= cols, jnp.exp(sums), 0.0)


def shift_rows_down(m: jax.Array) -> jax.Array:
    """Row t of the result is row t-1 of m; row 0 is zero (the 'state before token t' index shift)."""
    return jnp.concatenate([jnp.zeros_like(m[:1]), m[:-1]], axis=0)
