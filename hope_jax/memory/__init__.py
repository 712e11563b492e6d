"""Chunk-parallel inner loops of the HOPE / Titans memories: pure jnp functions, no Flax (DESIGN D2–D6).

Conventions: batch and heads lead ([B, H, T, d]); fast weights are per-sequence state (leaves [B, H, ...], or [B, ...]
for CMS) in row convention, `y = x @ W` with `W[d_in, d_out]`; inner loss ½‖f(k) − target‖² everywhere; all inner
arithmetic in `accum_dtype` (float32 by default, also for bf16 inputs); outputs returned in the input dtype.
Chunk boundaries sit at multiples of the chunk size; a trailing partial chunk is a chunk of its own (its tokens read its
start state and the returned end state includes its update), so streaming pieces reproduce the whole sequence when the
piece lengths are multiples of the chunk sizes. `remat_group` = chunks per `jax.checkpoint` group (0 = off).

Each memory is one pure per-chunk step `step(state, chunk) -> (state, outputs)` on one sequence (and head):
titans.titans_chunk, cms.local_chunk, self_modifying.joint_chunk (equal chunk sizes) or generator_chunk then
memory_chunk. driver.py runs any step: `scan_sequence` over a whole sequence (the functions below), `run_chunked` over
a model's pieces with a carried state (pending tokens for streaming and decoding, document resets).

Fast-weight dicts (hope_jax.memory.fast_mlp): {'w': [dk, dv]} linear; {'w_in': [d, h], 'w_out': [h, d']} 2-layer
(`y = x + σ(x W_in) W_out` with residual); {'w_gate', 'w_up': [d, h], 'w_down': [h, d']} SwiGLU.

1. Titans neural memory (LMM / MAC / MAG; HOPE_SPEC E5–E13), reads M_t through the dual form:

   titans_memory(weights, q, k, v, theta, eta, alpha, surprise=None, *, log_eta=None, log_keep=None, chunk_size,
                 momentum=True, residual=True, activation='silu', truncate_bptt=False, remat_group=1,
                 accum_dtype=jnp.float32)
       -> (y [B,H,T,dv], end_weights, end_momentum | None)
   theta = inner lr, eta = momentum decay, alpha = forget gate (Titans naming), all [B, H, T]. Learned sigmoid gates
   go in log space instead (eta = alpha = None, log_eta = log_sigmoid(z_η), log_keep = log(1 − α) = log_sigmoid(−z_α)):
   finite value and gradient at any logit.
   MAC-style reads of the state *before* a segment: call `fast_mlp.forward` on the carried weights.

2. Self-modifying Titans (HOPE's mixer; E20–E28, DESIGN D5):

   SelfModConfig(chunk_size=16, aux_chunk_size=16, adaptive_q=False, dgd=True, dgd_layers='all',
                 momentum=True, momentum_decay=0.9, weight_decay=True, gated_delta=False, eta_max=1.0,
                 activation='silu', remat_group=1, truncate_bptt=False, accum_dtype='float32')
   init_self_modifying_state(initial_weights {□: {'w_in': [H,d,h], 'w_out': [H,h,d]}}, batch_size, cfg) -> state
   self_modifying_titans(x [B,H,T,d], q [B,H,T,d] | None, state, reduction, cfg)
       -> (y [B,H,T,d], new_state, keys [B,H,T,d], values [B,H,T,d])
   state = {'weights': {□: {...}}, 'momentum': {□: {...}} (with momentum)}, □ in updated_names(cfg);
   reduction = {'eta_w': [H,d], 'eta_b': [H], 'alpha_w': [H,d], 'alpha_b': [H]} (A3 outer parameters).

3. CMS `local` level (DESIGN D6):

   cms_local(weights, x [B,T,d], k [B,T,d], v [B,T,d], *, inner_lr, inner_decay, period, activation='silu', dgd=True,
             truncate_bptt=False, remat_group=1, accum_dtype=jnp.float32) -> (y [B,T,d], end_weights)
   retention = 1 − inner_lr·inner_decay, so inner_lr = 0 is the plain MLP (weights bit-identical).

Each memory's module ends with its per-token reference (titans_reference, self_modifying_reference,
cms_local_reference; tests and `python -m hope_jax.bench inner` only), with dgd.py's token-level DGD step: the token
recurrence written as directly as the equations, a `lax.scan` over tokens, explicit weight matrices updated one token
at a time, inner gradients from `jax.grad` of the inner loss at the chunk-start snapshot (refreshed at every multiple
of the chunk size), explicit (a I − β x̂ᵀx̂) transition matrices. They share nothing with the chunked steps beside them
except the memory forward pass (fast_mlp.forward / inner_loss). One driver (driver.py) runs every chunked step.
"""

from hope_jax.memory.cms import cms_local, level_forward
from hope_jax.memory.fast_mlp import forward as memory_forward
from hope_jax.memory.fast_mlp import memory_kind
from hope_jax.memory.self_modifying import (
    SelfModConfig,
    generator_names,
    init_self_modifying_state,
    self_modifying_titans,
    updated_names,
)
from hope_jax.memory.titans import titans_memory

__all__ = [
    "SelfModConfig",
    "cms_local",
    "generator_names",
    "init_self_modifying_state",
    "level_forward",
    "memory_forward",
    "memory_kind",
    "self_modifying_titans",
    "titans_memory",
    "updated_names",
]
