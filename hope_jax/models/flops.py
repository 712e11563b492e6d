"""Analytic training FLOPs per token of the memory models (forward + backward = 3 × forward, 2 FLOPs a MAC).

dense: 6 × the matmul parameters a token passes through (projections, CMS / MLP levels at their current weights,
LM head). inner: the in-context learning on top of that — per fast-weight matrix W [d_in, d_out] trained on chunks
of C tokens, per token: the target read and the gradient factors at the chunk-start weights, the chunk-end update
and (DGD) the C×C Gram matrix, right-hand side and triangular solve, or (Titans dual form) the in-chunk reads:

    DGD:    3 × (2·6·d_in·d_out + 2·min(C, 64)·(d_in + d_out))   (longer chunks are solved in sub-chunks of 64)
    Titans: 3 × (2·5·d_in·d_out + 2·2·C·(d_in + d_out))

An approximation of what the code computes (elementwise work and the ℓ2 norms are left out).
"""

from __future__ import annotations

from hope_jax.layers import attention_flops_per_token
from hope_jax.memory.self_modifying import generator_names, static_stream_names
from hope_jax.models.typed_config import ModelConfig


def embedding_head(cfg: ModelConfig) -> float:
    """The LM head counts even when tied; the embedding gather does not."""
    return 6.0 * cfg.d_model * cfg.vocab_size


def dgd_matrix(d_in: int, d_out: int, chunk: int) -> float:
    # Chunks longer than SOLVE_BLOCK are solved as sub-chunks of SOLVE_BLOCK tokens (recurrence.
    # chunk_end_state_in_blocks), so the C-dependent term stops growing there.
    from hope_jax.memory.recurrence import SOLVE_BLOCK

    return 3.0 * (12.0 * d_in * d_out + 2.0 * min(chunk, SOLVE_BLOCK) * (d_in + d_out))


def titans_matrix(d_in: int, d_out: int, chunk: int) -> float:
    return 3.0 * (10.0 * d_in * d_out + 4.0 * chunk * (d_in + d_out))


def mlp_memory(d: int, hidden: int, chunk: int, matrix=dgd_matrix) -> float:
    """A 2-layer memory: W_in [d, hidden] and W_out [hidden, d]."""
    return matrix(d, hidden, chunk) + matrix(hidden, d, chunk)


def selfmod_dense(cfg: ModelConfig) -> float:
    d = cfg.d_model
    return 6.0 * d * d * (len(static_stream_names(cfg.memory)) + 2)  # input streams, gate, output


def selfmod_inner(cfg: ModelConfig) -> float:
    mem, hd = cfg.memory, cfg.head_dim
    hidden = mem.hidden_factor * hd
    generators = len(generator_names(mem)) * mlp_memory(hd, hidden, mem.aux_chunk_size)
    if mem.memory_depth == 1:
        memory = dgd_matrix(hd, hd, mem.chunk_size)
    else:
        memory = mlp_memory(hd, hidden, mem.chunk_size)
    return cfg.n_heads * (generators + memory)


def channel_dense(cfg: ModelConfig) -> float:
    d = cfg.d_model
    hidden = tuple(cfg.cms.hidden) if cfg.cms.enabled else (cfg.mlp_hidden,)
    return 6.0 * 3 * d * sum(hidden)


def cms_inner(cfg: ModelConfig) -> float:
    cms, d = cfg.cms, cfg.d_model
    if not cms.enabled:
        return 0.0
    total = 0.0
    for period, objective, hidden in zip(cms.periods, cms.objectives, cms.hidden, strict=True):
        if objective == "local":
            total += 2 * dgd_matrix(d, hidden, period) + dgd_matrix(hidden, d, period)
    return total


def titans(
    cfg: ModelConfig, *, mixer_matmul_params: float, attention: float = 0.0, memories: int = 1
) -> dict[str, float]:
    """mixer_matmul_params: per-layer matmul parameters of the mixer (a token passes through each once);
    attention: per-layer attention FLOPs per token; memories: Titans memories per layer."""
    t, hd = cfg.titans, cfg.head_dim
    per_layer = 6.0 * (3 * cfg.d_model * cfg.mlp_hidden + mixer_matmul_params)
    if t.memory_depth == 1:
        per_head = titans_matrix(hd, hd, t.chunk_size)
    else:
        per_head = mlp_memory(hd, t.hidden_factor * hd, t.chunk_size, titans_matrix)
    dense = embedding_head(cfg) + cfg.n_layers * per_layer
    inner = cfg.n_layers * memories * cfg.n_heads * per_head
    attention = cfg.n_layers * attention
    return {"dense": dense, "attention": attention, "inner": inner, "total": dense + attention + inner}


def titans_attention(cfg: ModelConfig, seq_len: int, window: int, keys_factor: int = 1) -> float:
    """Per-layer attention FLOPs per token of a Titans mixer: keys_factor × the (windowed) causal attention over
    seq_len tokens, plus the persistent tokens' share."""
    return keys_factor * attention_flops_per_token(seq_len, cfg.n_heads, cfg.head_dim, window, 0) + (
        attention_flops_per_token(1, cfg.n_heads, cfg.head_dim, 0, cfg.n_persistent_tokens)
        - attention_flops_per_token(1, cfg.n_heads, cfg.head_dim, 0, 0)
    )
