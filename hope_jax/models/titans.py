"""Titans baselines (HOPE_SPEC §2.7, T §3–4): LMM and MAG here, MAC in models/titans_mac.py, on the chunk-parallel
memory of memory/titans.py.

Every block is x ← x + mixer(RMSNorm(x)); x ← x + SwiGLU(RMSNorm(x)). The mixers:
- LMM: the neural memory alone. q, k, v = per-head projections → causal depthwise conv (window 4) → SiLU, q and k
  ℓ2-normalised; per-head, per-token gates θ_t = θ_max·σ(x w_θ + b_θ) (inner lr), η_t = σ(x w_η + b_η) (momentum),
  α_t = σ(x w_α + b_α) (forget), η and α handed to the memory as log η = log_sigmoid(z_η), log(1 − α) =
  log_sigmoid(−z_α) (finite at any logit); y_t = M_t(q_t); output = W_out(RMSNorm_head(y) ⊙ SiLU(x W_gate)) (T §4.4).
  Persistent memory (T §3.3, x_new = P ‖ x): `n_persistent_tokens` learned tokens per layer in the mixer's input space,
  run through the whole mixer (projections, conv, gates, memory writes) before the sequence; their outputs are
  dropped. They are input-independent, so what they leave behind (M, momentum and conv window after the prefix) is a
  learned initial state; the parametrisation is the paper's, and T5's 'w/o persistent memory' ablates exactly it.
- MAG: sliding-window attention with the persistent slots (layers.Attention) ‖ the LMM memory on the same input;
  output = W_out(attn ⊙ σ(RMSNorm(memory))) (T §4.2's gate, σ on the memory branch only: GatedCombine).
T5 switches: titans.memory_depth 1 (linear memory), titans.conv, titans.momentum, titans.weight_decay,
n_persistent_tokens 0.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers import (
    Attention,
    CausalDepthwiseConv,
    Dense,
    RMSNorm,
    SwiGLU,
    normal_init,
)
from hope_jax.memory import driver, fast_mlp
from hope_jax.memory.chunking import l2_normalize
from hope_jax.memory.titans import titans_memory
from hope_jax.models import flops
from hope_jax.models.registry import register
from hope_jax.models.stack import BlockStackLM
from hope_jax.models.typed_config import ModelConfig
from hope_jax.sharding import constrain

GATES = ("theta", "log_eta", "log_keep")  # θ, log η, log(1 − α): the gates in the form titans_memory takes them


class MemoryWeights(nnx.Module):
    """Meta-learned M_0 per head: linear {'w'} or 2-layer residual {'w_in', 'w_out'} (T §3.1)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        heads, hd, depth = cfg.n_heads, cfg.head_dim, cfg.titans.memory_depth
        if depth not in (1, 2):
            raise ValueError(f"model.titans.memory_depth must be 1 (linear) or 2, got {depth}")
        hidden = cfg.titans.hidden_factor * hd
        if depth == 1:
            self.weights = nnx.Dict(
                w=nnx.Param(normal_init(rngs, (heads, hd, hd), hd**-0.5), out_sharding=("heads", "head_dim", "kv"))
            )
        else:
            self.weights = nnx.Dict(
                w_in=nnx.Param(
                    normal_init(rngs, (heads, hd, hidden), hd**-0.5),
                    out_sharding=("heads", "head_dim", "memory_hidden"),
                ),
                w_out=nnx.Param(
                    normal_init(rngs, (heads, hidden, hd), cfg.init_std),
                    out_sharding=("heads", "memory_hidden", "head_dim"),
                ),
            )

    def initial(self, batch_size: int, momentum: bool) -> dict:
        # Per-sequence fast weights [B, H, ...]: batch over the data-parallel axes, heads over 'tensor' (DESIGN D2).
        w = {
            name: constrain(
                jnp.broadcast_to(p[...], (batch_size, *p.shape)), ("batch", "heads") + (None,) * (p.ndim - 1)
            )
            for name, p in self.weights.items()
        }
        return {"w": w, "s": jax.tree.map(jnp.zeros_like, w)} if momentum else {"w": w}


class Gates(nnx.Module):
    """θ_t, η_t, α_t per head and token from a linear read of the input (HOPE_SPEC §2.3 recommended reading)."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        t = cfg.titans
        self.theta_max, self.momentum, self.weight_decay = t.theta_max, t.momentum, t.weight_decay
        self.proj = Dense(
            (cfg.d_model,), (3, cfg.n_heads), ("embed", None, "heads"), init_std=cfg.init_std, dtype=jnp.float32,
            rngs=rngs,
        )  # fmt: skip
        biases = jnp.array([t.theta_bias_init, t.momentum_bias_init, t.forget_bias_init], jnp.float32)
        self.bias = nnx.Param(jnp.broadcast_to(biases[:, None], (3, cfg.n_heads)), out_sharding=(None, "heads"))

    def __call__(self, x_btd: jax.Array) -> dict:
        """{'theta': θ, 'log_eta': log η, 'log_keep': log(1 − α)}, each [B, T, H]; η and α stay in log space
        (log_sigmoid of ±logit), so a saturated gate gives a finite value and gradient (log σ would be −inf)."""
        pre = self.proj(x_btd) + self.bias[...]
        zeros = jnp.zeros_like(pre[:, :, 0])
        gates = {
            "theta": self.theta_max * jax.nn.sigmoid(pre[:, :, 0]),
            "log_eta": jax.nn.log_sigmoid(pre[:, :, 1]) if self.momentum else zeros,  # unused without momentum
            "log_keep": jax.nn.log_sigmoid(-pre[:, :, 2]) if self.weight_decay else zeros,  # α = 0
        }
        return gates


def memory_call(fast: dict, tokens: dict, cfg: ModelConfig) -> tuple[dict, jax.Array]:
    """titans_memory on [B, T, H, ...] token streams {'q', 'k', 'v', *GATES}: (new fast, y [B, T, H, d])."""
    t = cfg.titans
    heads_first = {name: jnp.swapaxes(a, 1, 2).astype(jnp.float32) for name, a in tokens.items()}
    y, w_end, s_end = titans_memory(
        fast["w"], heads_first["q"], heads_first["k"], heads_first["v"], heads_first["theta"], None, None,
        fast.get("s"), log_eta=heads_first["log_eta"], log_keep=heads_first["log_keep"],
        chunk_size=t.chunk_size, momentum=t.momentum, residual=t.memory_depth == 2,
        truncate_bptt=cfg.memory.truncate_bptt, remat_group=0, normalized_step=t.normalized_step,
    )  # fmt: skip
    return ({"w": w_end, "s": s_end} if t.momentum else {"w": w_end}), jnp.swapaxes(y, 1, 2)


def memory_fit_bt(w: dict, k_bthd: jax.Array, v_bthd: jax.Array, residual: bool) -> jax.Array:
    """float32[B, T]: the memory's own loss ½‖M(k_t) − v_t‖² per token (mean over heads) at fast weights w [B, H, ...].
    Inner-loop diagnostics (DESIGN D11): no gradient flows through them."""
    read = jax.vmap(jax.vmap(lambda w, u: fast_mlp.forward(w, u, residual=residual)))
    heads_first = lambda a: jnp.swapaxes(jax.lax.stop_gradient(a), 1, 2).astype(jnp.float32)
    errors = read(jax.lax.stop_gradient(w), heads_first(k_bthd)) - heads_first(v_bthd)  # [B, H, T, d]
    return 0.5 * jnp.mean(jnp.sum(jnp.square(errors), axis=-1), axis=1)


class QKVStream(nnx.Module):
    """n per-head streams of x: projection → (conv) → SiLU; the first `n_normalised` ℓ2-normalised."""

    def __init__(self, cfg: ModelConfig, n_streams: int, n_normalised: int, *, rngs: nnx.Rngs):
        self.dtype = cfg.compute_dtype
        self.n, self.n_normalised = n_streams, n_normalised
        self.heads, self.hd = cfg.n_heads, cfg.head_dim
        self.proj = Dense(
            (cfg.d_model,), (n_streams, self.heads, self.hd), ("embed", None, "heads", "head_dim"),
            init_std=cfg.init_std, dtype=self.dtype, rngs=rngs,
        )  # fmt: skip
        self.conv = (
            CausalDepthwiseConv(
                n_streams * self.heads * self.hd, cfg.conv_window, channel_axis=None, dtype=self.dtype, rngs=rngs
            )
            if cfg.titans.conv
            else None
        )

    def init_state(self, batch_size: int):
        return {} if self.conv is None else self.conv.init_state(batch_size)

    def __call__(self, x_btd, state):
        batch, seq_len, _ = x_btd.shape
        out = self.proj(x_btd)
        new_state = {}
        if self.conv is not None:
            flat, new_state = self.conv(out.reshape(batch, seq_len, -1), None if state is None else state)
            out = flat.reshape(out.shape)
        out = jax.nn.silu(out)
        streams = [out[:, :, i] for i in range(self.n)]
        streams = [l2_normalize(s) if i < self.n_normalised else s for i, s in enumerate(streams)]
        return streams, new_state


class NeuralMemory(nnx.Module):
    """The LMM memory as a layer: returns raw per-head reads y [B, T, H, hd] and the new state."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.cfg = cfg
        self.dtype = cfg.compute_dtype
        self.qkv = QKVStream(cfg, 3, 2, rngs=rngs)
        self.gates = Gates(cfg, rngs=rngs)
        self.memory = MemoryWeights(cfg, rngs=rngs)

    def init_state(self, batch_size: int) -> dict:
        cfg = self.cfg
        hd = jax.ShapeDtypeStruct((cfg.n_heads, cfg.head_dim), self.dtype)
        gate = jax.ShapeDtypeStruct((cfg.n_heads,), jnp.float32)
        shapes = {"q": hd, "k": hd, "v": hd, **{g: gate for g in GATES}}
        fast = self.memory.initial(batch_size, cfg.titans.momentum)
        return {
            "conv": self.qkv.init_state(batch_size),
            "chunks": driver.init_carry(fast, shapes, cfg.titans.chunk_size, batch_size),
        }

    def __call__(self, x_btd, state, *, prefix_len: int = 0, diagnostics: bool = True):
        """prefix_len: the piece's first tokens are persistent tokens (LMMMixer), run like the others; their reads
        are dropped and the diagnostics measure the rest. diagnostics False: sow nothing (a state built outside the
        forward pass)."""
        (q, k, v), conv_state = self.qkv(x_btd, None if state is None else state["conv"])
        tokens = {"q": q, "k": k, "v": v, **self.gates(x_btd)}
        cfg = self.cfg
        start = self.memory.initial(x_btd.shape[0], cfg.titans.momentum) if state is None else state["chunks"]["fast"]
        y, carry = driver.run_chunked(
            lambda fast, chunk: memory_call(fast, chunk, cfg), tokens, cfg.titans.chunk_size,
            fast=start if state is None else None,
            carry=None if state is None else state["chunks"], remat_group=int(cfg.memory.remat_chunks),
        )  # fmt: skip
        if diagnostics:  # the memory's loss on this piece's keys and values at the weights before and after it
            residual, k, v = cfg.titans.memory_depth == 2, k[:, prefix_len:], v[:, prefix_len:]
            self.sow(nnx.Intermediate, "memory_loss_before", jnp.mean(memory_fit_bt(start["w"], k, v, residual)))
            after = memory_fit_bt(carry["fast"]["w"], k, v, residual)
            self.sow(nnx.Intermediate, "memory_loss_after", jnp.mean(after))
        return y[:, prefix_len:].astype(self.dtype), {"conv": conv_state, "chunks": carry}


class GatedCombine(nnx.Module):
    """W_out(y ⊙ σ(RMSNorm(m))): the attention output y gated by the normalised memory branch m (MAG / MAC).

    The attention branch is not normalised: its output projection feeding an RMSNorm would be scale-invariant, so
    Adam's steps (≈ lr per element against weights of init_std) rotate it by ~lr/init_std a step, and MAG and MAC
    stalled at peak lr 3e-3 (BUILD_NOTES "Titans MAG / MAC: the attention branch keeps its scale"). T §4.2 passes both
    branches through σ after a norm; read literally, W(σ(RMSNorm(y)) ⊙ σ(RMSNorm(m))), it reached 4.233 held-out
    against 3.837 for this gate (MAG, 100 steps at 3e-3), so σ stays on the memory branch only, a recorded deviation."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, d = cfg.compute_dtype, cfg.d_model
        self.norm_gate = RMSNorm(d, eps=cfg.norm_eps, dtype=dtype)
        self.out = Dense((d,), (d,), ("embed", "embed"), init_std=cfg.residual_out_std, dtype=dtype, rngs=rngs)

    def __call__(self, attended_btd, memory_btd):
        return self.out(attended_btd * jax.nn.sigmoid(self.norm_gate(memory_btd)))


class LMMMixer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype, heads, hd = cfg.compute_dtype, cfg.n_heads, cfg.head_dim
        self.dtype = dtype
        proj = dict(init_std=cfg.init_std, dtype=dtype, rngs=rngs)
        self.memory = NeuralMemory(cfg, rngs=rngs)
        # Persistent tokens (T §3.3) live where the mixer's input does, after the block's RMSNorm: std 1 gives them
        # the scale of the normalised tokens they precede.
        n_p = cfg.n_persistent_tokens
        self.persistent = (
            nnx.Param(normal_init(rngs, (n_p, cfg.d_model), 1.0), out_sharding=(None, "embed")) if n_p else None
        )
        self.out_norm = RMSNorm(hd, eps=cfg.norm_eps, axis_name="head_dim", dtype=dtype)
        self.w_gate = Dense((cfg.d_model,), (heads, hd), ("embed", "heads", "head_dim"), **proj)
        self.w_out = Dense(
            (heads, hd), (cfg.d_model,), ("heads", "head_dim", "embed"), **{**proj, "init_std": cfg.residual_out_std}
        )

    def _prefix(self, batch_size: int) -> jax.Array:
        return jnp.broadcast_to(self.persistent[...].astype(self.dtype), (batch_size, *self.persistent.shape))

    def init_state(self, batch_size, max_len=None):
        """A fresh sequence's state: after the persistent tokens, as the training path's P ‖ x has it."""
        if self.persistent is None:
            return self.memory.init_state(batch_size)
        return self.memory(self._prefix(batch_size), None, diagnostics=False)[1]

    def __call__(self, x_btd, position, state):
        if state is None and self.persistent is not None:  # a fresh sequence: P ‖ x in one chunked pass
            n_p = self.persistent.shape[0]
            prefixed = jnp.concatenate([self._prefix(x_btd.shape[0]), x_btd], axis=1)
            y, new_state = self.memory(prefixed, None, prefix_len=n_p)
        else:
            y, new_state = self.memory(x_btd, state)
        return self.w_out(self.out_norm(y) * jax.nn.silu(self.w_gate(x_btd))), new_state


class MAGMixer(nnx.Module):
    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.attn = Attention(
            cfg.d_model, cfg.n_heads, cfg.head_dim, window=cfg.attention_window,
            n_persistent=cfg.n_persistent_tokens, max_len=cfg.max_seq_len, rope_theta=cfg.rope_theta,
            init_std=cfg.init_std, out_init_std=cfg.init_std, dtype=cfg.compute_dtype, rngs=rngs,
            impl=cfg.attention_impl,
        )  # fmt: skip
        self.memory = NeuralMemory(cfg, rngs=rngs)
        self.combine = GatedCombine(cfg, rngs=rngs)

    def init_state(self, batch_size, max_len=None):
        return {"attn": self.attn.init_cache(batch_size, max_len), "memory": self.memory.init_state(batch_size)}

    def __call__(self, x_btd, position, state):
        attended, cache = self.attn(x_btd, position, None if state is None else state["attn"])
        y, memory_state = self.memory(x_btd, None if state is None else state["memory"])
        out = self.combine(attended, y.reshape(x_btd.shape))
        return out, {"attn": cache, "memory": memory_state}


class TitansBlock(nnx.Module):
    mixer_class: type

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        dtype = cfg.compute_dtype
        self.mixer_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mixer = self.mixer_class(cfg, rngs=rngs)
        self.mlp_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=dtype)
        self.mlp = SwiGLU(
            cfg.d_model, cfg.mlp_hidden, init_std=cfg.init_std, out_init_std=cfg.residual_out_std, dtype=dtype,
            rngs=rngs,
        )  # fmt: skip

    def init_state(self, batch_size, max_len=None):
        return self.mixer.init_state(batch_size, max_len)

    def __call__(self, x_btd, position, state):
        mixed, new_state = self.mixer(self.mixer_norm(x_btd), position, state)
        x_btd = x_btd + mixed
        return x_btd + self.mlp(self.mlp_norm(x_btd)), new_state


class LMMBlock(TitansBlock):
    mixer_class = LMMMixer


class MAGBlock(TitansBlock):
    mixer_class = MAGMixer


@register("titans_lmm")
class TitansLMM(BlockStackLM):
    block_class = LMMBlock

    @staticmethod
    def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        d = cfg.d_model
        return flops.titans(cfg, mixer_matmul_params=5 * d * d + 3 * d * cfg.n_heads)


@register("titans_mag")
class TitansMAG(BlockStackLM):
    block_class = MAGBlock

    @staticmethod
    def flops_per_token(cfg: ModelConfig, seq_len: int) -> dict[str, float]:
        d = cfg.d_model
        return flops.titans(
            cfg, mixer_matmul_params=8 * d * d + 3 * d * cfg.n_heads,
            attention=flops.titans_attention(cfg, seq_len, cfg.attention_window),
        )  # fmt: skip
