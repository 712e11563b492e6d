"""The language-model frame shared by the memory models: embedding → blocks → final RMSNorm → fp32 logits.

A block is an nnx.Module with `init_state(batch_size, max_len)` and `__call__(x_btd, position, state)` returning
(x_btd, new_state); `state=None` is a fresh sequence. With `model.reset_at_token` ≥ 0 a block is also handed
`starts_bt` (bool [B, T], the tokens equal to it: document starts, memory/document_resets.py). The LM state is
{'position': int32 scalar, 'layers': [...]}.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers import Embedder, RMSNorm, maybe_remat
from hope_jax.memory.chunking import inner_precision
from hope_jax.models.typed_config import ModelConfig

LMState = dict[str, Any]


def _run_block(block, x_btd, position, state, starts_bt):
    if starts_bt is None:
        return block(x_btd, position, state)
    return block(x_btd, position, state, starts_bt)


class BlockStackLM(nnx.Module):
    """Subclasses set `block_class` (constructed as block_class(cfg, rngs=rngs))."""

    block_class: type

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        self.dtype = cfg.compute_dtype
        self.embed = Embedder(
            cfg.vocab_size, cfg.d_model, tie=cfg.tie_embeddings, init_std=cfg.init_std, dtype=self.dtype, rngs=rngs
        )
        self.blocks = nnx.List([self.block_class(cfg, rngs=rngs) for _ in range(cfg.n_layers)])
        self.final_norm = RMSNorm(cfg.d_model, eps=cfg.norm_eps, dtype=self.dtype)
        self.remat = cfg.remat
        maybe_remat(_run_block, self.remat)  # unknown policy names fail at construction
        self.inner_precision = cfg.inner_precision
        self.reset_at_token = cfg.reset_at_token  # −1: no document resets

    def init_state(self, batch_size: int, max_len: int | None = None) -> LMState:
        """Fresh per-sequence state: fast weights at their meta-learned initial values, empty caches. (Under the
        model's inner precision: a layer may build its state by running its memory, the LMM over its persistent
        tokens.)"""
        with inner_precision(self.inner_precision):
            layers = [block.init_state(batch_size, max_len) for block in self.blocks]
        return {"position": jnp.zeros((), jnp.int32), "layers": layers}

    def __call__(self, tokens_bt: jax.Array, state: LMState | None = None) -> tuple[jax.Array, LMState]:
        with inner_precision(self.inner_precision):  # every inner loop traced below (model.inner_precision)
            return self._forward(tokens_bt, state)

    def _forward(self, tokens_bt: jax.Array, state: LMState | None) -> tuple[jax.Array, LMState]:
        position = jnp.zeros((), jnp.int32) if state is None else state["position"]
        layer_states = [None] * len(self.blocks) if state is None else state["layers"]
        run_block = maybe_remat(_run_block, self.remat)
        # Document resets: every block's in-context state restarts at a reset token (blocks take the flags).
        starts_bt = tokens_bt == self.reset_at_token if self.reset_at_token >= 0 else None
        x_btd = self.embed.encode(tokens_bt)
        new_states = []
        for block, layer_state in zip(self.blocks, layer_states, strict=True):
            x_btd, new_state = run_block(block, x_btd, position, layer_state, starts_bt)
            new_states.append(new_state)
        logits_btv = self.embed.decode(self.final_norm(x_btd))
        return logits_btv, {"position": position + tokens_bt.shape[1], "layers": new_states}
