"""HOPE's sequence mixer: self-modifying Titans per head (HOPE_SPEC §5, T §4.4; DESIGN D5).

    x ─ W_in ─► conv(4) ─► SiLU ─► streams: x_h (the memories' input), and the static q / k / v projections that the
                                  ablation switches ask for
    self-modifying Titans on x_h (generators k, v, q, η, α and M_memory, each a 2-layer residual MLP trained in
    context by DGD on its own targets) ─► y_h ─► per-head RMSNorm ⊙ SiLU(x W_gate) ─► W_out
Values are ℓ2-normalised like the keys (memory.normalize_values, our stabiliser: with self-generated targets a value
longer than the unit key makes the inner maps expansive), and α reaches the DGD solver as log α (log_sigmoid).

The inner loop is memory/self_modifying.py (per sequence and head: `joint_sequence` for equal chunk sizes, else
`self_modifying_sequence`, with the A-Table 6 switches 'w/o adaptive k/v'); this module owns the outer parameters
(projections, the meta-learned initial memories, the η/α reductions), the chunked carry across pieces and the
diagnostics.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.kernels import selfmod as selfmod_kernel
from hope_jax.layers import CausalDepthwiseConv, Dense, RMSNorm, normal_init
from hope_jax.memory import driver, fast_mlp
from hope_jax.memory.chunking import l2_normalize_scale
from hope_jax.memory.self_modifying import (
    generator_names,
    join_fast,
    joint_sequence,
    runs_jointly,
    self_modifying_sequence,
    static_stream_names,
)
from hope_jax.models.typed_config import MemoryConfig, ModelConfig
from hope_jax.sharding import constrain

# Generators whose outputs are the keys, values and queries every memory regresses on (E20).
KQV_GENERATORS = frozenset({"k", "v", "q"})


def generator_out_std(cfg: ModelConfig, name: str) -> float:
    """Initial std of M_name's W_out. M_k, M_v (and M_q) get memory.kv_init_gain / √hidden, a residual branch as long
    as its input: with W_out ~ init_std every memory starts at ≈ the identity, so k = l2(M_k(x)) and v = l2(M_v(x))
    nearly coincide (mean cos ≈ 0.9999), every self-generated target equals its prediction and the inner gradients
    vanish until the outer loop separates them (BUILD_NOTES "In-context learning from step 0"). The others (M_η, M_α,
    M_memory) start at ≈ the identity."""
    if name in KQV_GENERATORS and cfg.memory.kv_init_gain > 0:
        return cfg.memory.kv_init_gain / math.sqrt(cfg.memory.hidden_factor * cfg.head_dim)
    return cfg.init_std


def mixer_period(memory: MemoryConfig) -> int:
    """Both memories sit on a chunk boundary every lcm of the two chunk sizes tokens."""
    return math.lcm(memory.chunk_size, memory.aux_chunk_size)


class MemoryInit(nnx.Module):
    """Meta-learned initial weights of one per-head 2-layer residual memory, M(u) = u + σ(u W_in) W_out."""

    def __init__(self, n_heads: int, dim: int, hidden: int, *, out_std: float, rngs: nnx.Rngs):
        self.w_in = nnx.Param(
            normal_init(rngs, (n_heads, dim, hidden), dim**-0.5), out_sharding=("heads", "head_dim", "memory_hidden")
        )
        self.w_out = nnx.Param(
            normal_init(rngs, (n_heads, hidden, dim), out_std), out_sharding=("heads", "memory_hidden", "head_dim")
        )

    def value(self) -> dict:
        return {"w_in": self.w_in[...], "w_out": self.w_out[...]}


class MatrixMemoryInit(nnx.Module):
    """Meta-learned initial M_memory as a matrix per head, M(u) = u W (memory.memory_depth 1; HOPE_SPEC §5.3). W
    starts random with unit-scale rows (std 1/√dim), as the Titans linear memory: the read is a rotation-like map
    of the query, and its self-generated target W v differs from the prediction W k wherever k and v do."""

    def __init__(self, n_heads: int, dim: int, *, rngs: nnx.Rngs):
        self.w = nnx.Param(normal_init(rngs, (n_heads, dim, dim), dim**-0.5), out_sharding=("heads", "head_dim", "kv"))

    def value(self) -> dict:
        return {"w": self.w[...]}


class SelfModifyingMixer(nnx.Module):
    """Returns (output [B, T, d_model], new state, keys [B, T, d_model], values [B, T, d_model]) for a piece."""

    def __init__(self, cfg: ModelConfig, *, out_init_std: float, rngs: nnx.Rngs):
        mem = cfg.memory
        self.dtype = cfg.compute_dtype
        self.cfg = mem  # the inner loop's options (a MemoryConfig is a SelfModConfig)
        self.gens = generator_names(self.cfg)
        self.streams = static_stream_names(self.cfg)
        self.period = mixer_period(mem)
        # Equal chunk sizes and one memory form: every memory updates on the same chunks as one stack (joint_sequence).
        self.joint = runs_jointly(self.cfg)
        self.remat_chunks = mem.remat_chunks
        self.resets = cfg.reset_at_token >= 0  # document resets: the carry's pending slots hold start flags
        # model.memory.kernel: 'xla' | 'pallas' (hope_jax/kernels); document resets run on xla ('auto' picks it).
        self.kernel = "xla" if self.resets else selfmod_kernel.resolve(mem.kernel)
        if self.kernel == "pallas":
            selfmod_kernel.check_supported(mem, cfg.head_dim)
        self.diagnostics_stride = mem.diagnostics_stride
        d, heads, hd = cfg.d_model, cfg.n_heads, cfg.head_dim
        self.n_heads, self.head_dim = heads, hd
        proj = dict(init_std=cfg.init_std, dtype=self.dtype, rngs=rngs)
        self.w_in = Dense((d,), (len(self.streams), heads, hd), ("embed", None, "heads", "head_dim"), **proj)
        self.conv = CausalDepthwiseConv(
            len(self.streams) * heads * hd, cfg.conv_window, channel_axis=None, dtype=self.dtype, rngs=rngs
        )
        hidden = mem.hidden_factor * hd
        memories = {
            name: MemoryInit(heads, hd, hidden, out_std=generator_out_std(cfg, name), rngs=rngs) for name in self.gens
        }
        memories["memory"] = (
            MatrixMemoryInit(heads, hd, rngs=rngs)
            if mem.memory_depth == 1
            else MemoryInit(heads, hd, hidden, out_std=generator_out_std(cfg, "memory"), rngs=rngs)
        )
        self.memories = nnx.Dict(memories)
        self.eta_w = nnx.Param(normal_init(rngs, (heads, hd), cfg.init_std), out_sharding=("heads", "head_dim"))
        self.eta_b = nnx.Param(jnp.full((heads,), mem.eta_bias_init, jnp.float32), out_sharding=("heads",))
        if mem.weight_decay:
            self.alpha_w = nnx.Param(normal_init(rngs, (heads, hd), cfg.init_std), out_sharding=("heads", "head_dim"))
            self.alpha_b = nnx.Param(jnp.full((heads,), mem.alpha_bias_init, jnp.float32), out_sharding=("heads",))
        self.out_norm = RMSNorm(hd, eps=cfg.norm_eps, axis_name="head_dim", dtype=self.dtype)
        self.w_gate = Dense((d,), (heads, hd), ("embed", "heads", "head_dim"), **proj)
        self.w_out = Dense((heads, hd), (d,), ("heads", "head_dim", "embed"), **{**proj, "init_std": out_init_std})

    def initial_fast(self, batch_size: int) -> dict:
        """Meta-learned initial memories broadcast per sequence: leaves [B, H, n_memories, ...]; in join_fast's
        layout when the chunk sizes are equal, else {'gen', 'memory', 'gen_s', 'memory_s'}."""
        stack = lambda names: jax.tree.map(
            lambda *leaves: jnp.stack(leaves, axis=1), *[self.memories[n].value() for n in names]
        )
        fast = {"gen": stack(self.gens), "memory": stack(("memory",))}
        if self.cfg.momentum:
            fast.update(
                gen_s=jax.tree.map(jnp.zeros_like, fast["gen"]), memory_s=jax.tree.map(jnp.zeros_like, fast["memory"])
            )
        if self.joint:  # one stack through every chunk and every call (join_fast), no concatenate/split per chunk
            fast = join_fast(fast, axis=1)
        # Per-sequence fast weights [B, H, ...]: batch over the data-parallel axes, heads over 'tensor' (DESIGN D2).
        per_sequence = lambda a: constrain(
            jnp.broadcast_to(a, (batch_size, *a.shape)), ("batch", "heads") + (None,) * (a.ndim - 1)
        )
        return jax.tree.map(per_sequence, fast)

    def _memory_of(self, fast: dict) -> dict:
        """M_memory's weights [B, H, 1, ...] out of either layout of initial_fast."""
        return jax.tree.map(lambda a: a[:, :, len(self.gens) :], fast["w"]) if self.joint else fast["memory"]

    def token_shapes(self) -> dict:
        one = jax.ShapeDtypeStruct((self.n_heads, self.head_dim), self.dtype)
        return {name: one for name in self.streams}

    def init_state(self, batch_size: int) -> dict:
        return {
            "conv": self.conv.init_state(batch_size),
            "chunks": driver.init_carry(
                self.initial_fast(batch_size), self.token_shapes(), self.period, batch_size, starts=self.resets
            ),
        }

    def _sow_memory_fit(self, start_memory: dict, end_memory: dict, keys_bthd, values_bthd) -> None:
        """Inner-loop diagnostics (DESIGN D11): M_memory's own objective ½‖M(k) − M(v)‖² (E21's self-generated target)
        over this piece's keys and values (every model.memory.diagnostics_stride-th token), at the weights before the
        piece and after it. Diagnostics only: no gradient flows through them."""
        keys_bthd, values_bthd = (a[:, :: self.diagnostics_stride] for a in (keys_bthd, values_bthd))

        def fit(memory):  # leaves [B, H, 1, ...]
            weights = jax.tree.map(lambda a: jax.lax.stop_gradient(a[:, :, 0]), memory)
            per_head = jax.vmap(
                lambda w, k, v: (
                    fast_mlp.forward(w, k, residual=True, activation=self.cfg.activation)
                    - fast_mlp.forward(w, v, residual=True, activation=self.cfg.activation)
                ),
                in_axes=(0, 1, 1),
            )
            errors = jax.vmap(per_head)(weights, jax.lax.stop_gradient(keys_bthd), jax.lax.stop_gradient(values_bthd))
            return 0.5 * jnp.mean(jnp.sum(jnp.square(errors.astype(jnp.float32)), axis=-1))

        # cos(k_t, v_t) (both unit): near 1 the self-generated targets equal the predictions and nothing is written.
        cosine = jnp.sum(keys_bthd * values_bthd, axis=-1) * l2_normalize_scale(values_bthd)[..., 0]
        self.sow(nnx.Intermediate, "kv_cos", jnp.mean(jax.lax.stop_gradient(cosine).astype(jnp.float32)))
        self.sow(nnx.Intermediate, "memory_loss_before", fit(start_memory))
        self.sow(nnx.Intermediate, "memory_loss_after", fit(end_memory))

    def reduction(self) -> dict:
        out = {"eta_w": self.eta_w[...], "eta_b": self.eta_b[...]}
        if self.cfg.weight_decay:
            out.update(alpha_w=self.alpha_w[...], alpha_b=self.alpha_b[...])
        return out

    def __call__(self, x_btd: jax.Array, state: dict | None, starts_bt: jax.Array | None = None):
        """starts_bt: bool [B, T] document starts (model.reset_at_token): conv window and memories restart there."""
        batch, seq_len, _ = x_btd.shape
        heads = self.n_heads
        projected = self.w_in(x_btd).reshape(batch, seq_len, -1)
        conv_out, conv_state = self.conv(projected, None if state is None else state["conv"], starts_bt)
        streams = jax.nn.silu(conv_out).reshape(batch, seq_len, len(self.streams), self.n_heads, self.head_dim)
        streams = {name: streams[:, :, i] for i, name in enumerate(self.streams)}
        reduction = jax.tree.map(lambda a: a.astype(jnp.float32), self.reduction())
        sequence_fn = joint_sequence if self.joint else self_modifying_sequence
        per_head = jax.vmap(lambda s, f, r: sequence_fn(s, f, r, self.cfg), in_axes=(0, 0, 0))
        per_batch = jax.vmap(per_head, in_axes=(0, 0, None))
        if self.kernel == "pallas":  # the chunk scan as one Pallas program per (sequence, head), all periods at once
            per_batch = selfmod_kernel.batch_fn(
                self.cfg, joint=self.joint, dot_dtype=self.dtype, remat=self.remat_chunks
            )

        def chunk_fn(fast, chunk, update_mask=None):  # chunk leaves [B, P, H, d] -> per (batch, head) [P, d]
            if update_mask is not None:  # [B, P] -> one copy per head
                chunk = {**chunk, "update_mask": jnp.broadcast_to(update_mask[..., None], (*update_mask.shape, heads))}
            chunk = jax.tree.map(lambda a: jnp.swapaxes(a, 1, 2).astype(jnp.float32), chunk)
            (y, keys, values), new_fast = per_batch(chunk, fast, reduction)
            return new_fast, jax.tree.map(lambda a: jnp.swapaxes(a, 1, 2), (y, keys, values))

        (y, keys, values), carry = driver.run_chunked(
            chunk_fn, streams, self.period, fast=self.initial_fast(batch) if state is None else None,
            carry=None if state is None else state["chunks"], remat_group=int(self.remat_chunks),
            whole_periods_at_once=self.kernel == "pallas",
            # Joint: every memory reads its chunk-start weights; unequal chunk sizes update inside the period (lcm),
            # so a token's output depends on the period's earlier tokens.
            outputs_from_chunk_start=self.joint,
            starts=starts_bt, initial=None if starts_bt is None else self.initial_fast(batch),
        )  # fmt: skip
        start_fast = self.initial_fast(batch) if state is None else state["chunks"]["fast"]
        self._sow_memory_fit(self._memory_of(start_fast), self._memory_of(carry["fast"]), keys, values)
        gate = jax.nn.silu(self.w_gate(x_btd))
        out = self.w_out(self.out_norm(y.astype(self.dtype)) * gate)
        flat = lambda a: a.reshape(batch, seq_len, -1).astype(self.dtype)
        return out, {"conv": conv_state, "chunks": carry}, flat(keys), flat(values)
