"""CMS levels with the `lm` objective: chunked test-time training on the language-model loss (DESIGN D6).

A level with objective 'lm' and period P keeps per-sequence fast weights in the model state (cms.py: {'lm_fast',
'lm_grad'}), constant within a chunk of P tokens. At the end of every chunk the level takes one inner step on the
LM loss of that chunk, evaluated at the chunk-start weights:

    ℓ_c(W) = (1 / n_pairs) Σ_{t, t+1 ∈ chunk c} −log p_W(x_{t+1} | x_{≤t}),      n_pairs = P − 1 per sequence
    W ← (1 − η·decay) W − η ∇_W ℓ_c(W)        (η = cms.lm_lrs[i] or cms.inner_lr, decay = cms.inner_decay)

Only predictions whose target lies inside the finished chunk count ("only targets already seen"), so the update
after a chunk uses only that chunk's tokens and the model stays causal: the model's own tokens are its targets, and
`__call__(tokens, state)` does the test-time training itself (no separate wrapper, and the train step, evaluation and
generation need nothing new). The retention is tied to the learning rate as for the `local` levels, so η = 0 leaves
the weights bit-identical and the level is exactly the plain MLP. There is no DGD transition: DGD's x̂x̂ᵀ term is the
preconditioner of a per-layer regression on that layer's inputs, which the LM loss is not.

Driver: the sequence is cut at multiples of G = gcd of the lm periods (absolute positions). For each G-chunk the whole
model runs from the state at the chunk start (every other layer's fast weights, caches and chunk carries; lm weights
constant), the chunk's summed in-chunk NLL is differentiated w.r.t. every lm level's weights, and each level adds the
gradient to its accumulator; a level whose period divides the chunk's end position steps and clears it. For P = G
this is exactly the gradient of the chunk's loss at the chunk-start weights. For P > G (several lm levels) the update
is the sum of its G-sub-chunks' gradients at its (constant) chunk-start weights, each taken with the state entering
the sub-chunk held fixed, and the P/G − 1 predictions that cross sub-chunk boundaries are not counted (n_pairs =
(P/G)(G − 1)): the exact gradient would differentiate through the faster levels' own inner steps.

Gradients through the inner step: first-order by default (the inner gradient is stop-gradient'ed, so the outer
gradient reaches the level's initial weights through the retention term and through every chunk's forward pass);
`cms.lm_second_order = True` differentiates through the inner gradient (a Hessian-vector product per chunk).

Pieces: the G-chunks are driven by driver.run_chunked, the whole model state being its fast state: the carried
state is {'position', 'inner': the model state at the last G boundary, 'pending': the ≤ G − 1 tokens since it,
'count'}, and a piece runs as [pending ; piece] from that boundary (driver.py's rule, one level up). Generation
re-runs up to G − 1 tokens through the model per step, and takes the inner gradient only when a token completes its
G-chunk (a fresh sequence's trailing T % G tokens likewise run without it: their update is dropped).
Cost in training: the inner gradient is one more backward pass through the model per chunk; every layer takes its
carried-state path, which for a layer of chunk size C runs ⌈(C − 1 + G)/C⌉ chunks per G tokens.

Document resets (`model.reset_at_token`, memory/document_resets.py): in a G-chunk with a document start, every lm
level restarts from its initial weights, which the chunk's tokens after the first start read and the inner gradient
is taken at; the tokens before it read the weights the chunk started with ('lm_carried' in the level state during
the chunk's forward pass), only predictions made at or after the chunk's last start count, and the accumulated
gradient of the level's earlier sub-chunks is dropped.

Diagnostics: the mean lm loss of the finished chunks at their chunk-start weights is sown as `lm_loss`; whatever the
layers sow per chunk is averaged over the chunks.
"""

from __future__ import annotations

import dataclasses
import functools
import math
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax import lax

from hope_jax.memory import driver
from hope_jax.memory.document_resets import update_mask, where_batch
from hope_jax.models.cms import lm_levels, nested_chain
from hope_jax.models.typed_config import ModelConfig


@dataclasses.dataclass(frozen=True)
class TTTSpec:
    """The driver's plan, derived from the ModelConfig (cms.inner_decay and cms.lm_second_order keep their names)."""

    levels: tuple[tuple[int, int, float], ...]  # (CMS level index, period, inner lr)
    n_layers: int
    granularity: int  # G = gcd of the periods
    inner_decay: float
    lm_second_order: bool
    nested: bool  # cms.variant 'nested': a level takes the next slower level's weights whenever that one steps
    reset_at_token: int = -1  # document starts (−1: none)


def ttt_spec(cfg: ModelConfig) -> TTTSpec | None:
    """The lm test-time-training settings of a HOPE-family model; None when it has no 'lm' level."""
    if not cfg.cms.enabled:
        return None
    levels = lm_levels(cfg.cms)
    if not levels:
        return None
    return TTTSpec(
        levels=levels,
        n_layers=cfg.n_layers,
        granularity=math.gcd(*(period for _, period, _ in levels)),
        inner_decay=float(cfg.cms.inner_decay),
        lm_second_order=bool(cfg.cms.lm_second_order),
        nested=len(nested_chain(cfg.cms)) > 1,
        reset_at_token=int(cfg.reset_at_token),
    )


def in_chunk_nll(logits_bgv: jax.Array, tokens_bg: jax.Array, weights_bg: jax.Array | None = None) -> jax.Array:
    """float32[B]: summed NLL of the chunk's predictions whose targets are inside the chunk (G − 1 per sequence),
    each weighted by weights_bg[:, t] of the predicting token t where given."""
    logits = logits_bgv[:, :-1].astype(jnp.float32)
    target_logit = jnp.take_along_axis(logits, tokens_bg[:, 1:, None], axis=-1)[..., 0]
    nll = jax.nn.logsumexp(logits, axis=-1) - target_logit
    return jnp.sum(nll if weights_bg is None else nll * weights_bg[:, :-1], axis=-1)


def get_fast(inner: dict, spec: TTTSpec) -> list:
    """Every lm level's fast weights, [layer][level], from the model state (blocks keep the CMS state under 'cms')."""
    return [[inner["layers"][layer]["cms"][i]["lm_fast"] for i, _, _ in spec.levels] for layer in range(spec.n_layers)]


def _map_levels(inner: dict, spec: TTTSpec, fn) -> dict:
    """A copy of the state with level state s of (layer, level k) replaced by fn(layer, k, s)."""
    layers = []
    for layer, layer_state in enumerate(inner["layers"]):
        cms_states = list(layer_state["cms"])
        for k, (i, _, _) in enumerate(spec.levels):
            cms_states[i] = fn(layer, k, cms_states[i])
        layers.append({**layer_state, "cms": cms_states})
    return {**inner, "layers": layers}


def set_fast(inner: dict, spec: TTTSpec, fast: list) -> dict:
    return _map_levels(inner, spec, lambda layer, k, s: {**s, "lm_fast": fast[layer][k]})


def inner_step(inner: dict, spec: TTTSpec, grads: list, end_position: jax.Array) -> dict:
    """Adds this G-chunk's gradients to each level's accumulator; a level whose period divides `end_position` (the
    absolute position after the chunk) takes W ← (1 − η·decay) W − η·acc / n_pairs and clears the accumulator."""

    def step(layer, k, state):
        _, period, lr = spec.levels[k]
        n_pairs = (period // spec.granularity) * (spec.granularity - 1)
        acc = jax.tree.map(jnp.add, state["lm_grad"], grads[layer][k])
        stepped = jax.tree.map(
            lambda w, g: (1.0 - lr * spec.inner_decay) * w - (lr / n_pairs) * g, state["lm_fast"], acc
        )
        now = end_position % period == 0
        return {
            "lm_fast": jax.tree.map(lambda new, old: jnp.where(now, new, old), stepped, state["lm_fast"]),
            "lm_grad": jax.tree.map(lambda a: jnp.where(now, jnp.zeros_like(a), a), acc),
        }

    stepped = _map_levels(inner, spec, step)
    return _hand_over(stepped, spec, end_position) if spec.nested else stepped


def _hand_over(inner: dict, spec: TTTSpec, end_position: jax.Array) -> dict:
    """Nested CMS (HOPE_SPEC E31): when a level steps, the next faster level's weights become its new weights (the
    slower level provides the faster one's initial state for its next chunk) and the faster level's accumulator is
    cleared. Slowest first, so a hand-over reaches every faster level in the same step."""
    for k in reversed(range(len(spec.levels) - 1)):
        now = end_position % spec.levels[k + 1][1] == 0
        take = functools.partial(_take_parent_weights, source=inner, spec=spec, child=k, now=now)
        inner = _map_levels(inner, spec, take)
    return inner


def _take_parent_weights(layer: int, k: int, state: dict, *, source: dict, spec: TTTSpec, child: int, now) -> dict:
    """Level `child` of one layer: the next slower level's weights in `source` where `now`, its own otherwise."""
    if k != child:
        return state
    parent = source["layers"][layer]["cms"][spec.levels[child + 1][0]]["lm_fast"]
    return {
        "lm_fast": jax.tree.map(lambda p, own: jnp.where(now, p, own), parent, state["lm_fast"]),
        "lm_grad": jax.tree.map(lambda a: jnp.where(now, jnp.zeros_like(a), a), state["lm_grad"]),
    }


def init_ttt_state(inner: dict, spec: TTTSpec, batch_size: int) -> dict:
    return {
        "position": inner["position"],
        "inner": inner,
        "pending": jnp.zeros((batch_size, spec.granularity - 1), jnp.int32),
        "count": jnp.zeros((), jnp.int32),
    }


def _reset_levels(inner: dict, spec: TTTSpec, chunk_bg: jax.Array, initial: list) -> tuple[dict, list, jax.Array]:
    """Document resets entering a G-chunk: (the state whose lm levels carry 'lm_carried' = their chunk-start weights
    and, in sequences with a start in the chunk, a cleared accumulator; each level's weights for the gradient — its
    initial ones where the chunk has a start; the per-token weights of the chunk's predictions)."""
    starts = chunk_bg == spec.reset_at_token
    restart = jnp.any(starts, axis=1)
    carried = get_fast(inner, spec)
    fast = [[where_batch(restart, w0, w) for w0, w in zip(i_row, c_row, strict=True)]
            for i_row, c_row in zip(initial, carried, strict=True)]  # fmt: skip

    def enter(layer, k, state):
        cleared = jax.tree.map(
            lambda a: jnp.where(restart.reshape((-1,) + (1,) * (a.ndim - 1)), 0.0, a), state["lm_grad"]
        )
        return {**state, "lm_grad": cleared, "lm_carried": carried[layer][k]}

    return _map_levels(inner, spec, enter), fast, update_mask(starts)


def chunk_forward_and_step(
    graphdef, variables, forward, inner: dict, chunk_bg: jax.Array, spec: TTTSpec, initial: list | None = None
):
    """One G-chunk from the model state `inner` at its start: (logits, the state after it with every lm level's
    accumulator and due step applied, float32[B] in-chunk NLL at the chunk-start weights, what the layers sowed).
    initial: every lm level's initial weights [layer][level] (LMTestTimeTraining.lm_initial_fast), needed with
    document resets (spec.reset_at_token ≥ 0)."""
    pair_weights, fast = None, get_fast(inner, spec)
    if spec.reset_at_token >= 0:
        inner, fast, pair_weights = _reset_levels(inner, spec, chunk_bg, initial)

    def chunk_loss(fast):
        module = nnx.merge(graphdef, variables)
        logits, new_inner = forward(module, chunk_bg, set_fast(inner, spec, fast))
        nll_b = in_chunk_nll(logits, chunk_bg, pair_weights)
        return jnp.sum(nll_b), (logits, new_inner, nll_b, nnx.state(module, nnx.Intermediate))

    (_, (logits, new_inner, nll_b, sown)), grads = jax.value_and_grad(chunk_loss, has_aux=True)(fast)
    if spec.reset_at_token >= 0:
        new_inner = _map_levels(new_inner, spec, lambda layer, k, s: {n: a for n, a in s.items() if n != "lm_carried"})
    if not spec.lm_second_order:
        grads = lax.stop_gradient(grads)
    new_inner = inner_step(new_inner, spec, grads, inner["position"] + chunk_bg.shape[1])
    return logits, new_inner, nll_b, sown


def run(model: nnx.Module, forward, tokens_bt: jax.Array, state: dict | None, spec: TTTSpec):
    """Test-time-trained forward pass: (logits [B, L, V], new state).

    forward(module, tokens_bt, inner_state) -> (logits, inner_state) is the model's plain stateful forward pass (lm
    weights constant); state None is a fresh sequence (model.init_state is used, so pieces == whole). The G-chunks
    are driven by driver.run_chunked with the whole model state as its fast state.
    """
    batch, length = tokens_bt.shape
    tokens_bt = tokens_bt.astype(jnp.int32)
    if state is None:
        state = model.init_state(batch)
        carry = None
    else:
        carry = {"fast": state["inner"], "pending": state["pending"], "count": state["count"]}
    initial = model.lm_initial_fast(batch) if spec.reset_at_token >= 0 else None
    nnx.pop(model, nnx.Intermediate)  # re-sown below, averaged over the chunks
    graphdef, variables = nnx.split(model)

    def chunk_fn(inner, chunk_bg):
        logits, new_inner, nll_b, sown = chunk_forward_and_step(
            graphdef, variables, forward, inner, chunk_bg, spec, initial
        )
        return new_inner, logits, (nll_b, sown)

    logits, carry, (nll_cb, sown), complete_c = driver.run_chunked(
        chunk_fn, tokens_bt, spec.granularity, fast=state["inner"], carry=carry, with_aux=True
    )
    # The lm loss of the finished chunks; the layers' diagnostics averaged over them (over every call when none
    # finished: a piece shorter than G).
    weight = complete_c.astype(jnp.float32)
    total = jnp.maximum(jnp.sum(weight), 1.0)
    mean_loss = jnp.sum(jnp.mean(nll_cb, axis=1) * weight) / (total * (spec.granularity - 1))
    sown_weight = jnp.where(jnp.any(complete_c), weight, jnp.ones_like(weight))
    sown = jax.tree.map(lambda a: jnp.tensordot(sown_weight, a, axes=1) / jnp.sum(sown_weight), sown)
    if jax.tree.leaves(sown):
        nnx.update(model, sown)
    model.sow(nnx.Intermediate, "lm_loss", lax.stop_gradient(mean_loss))
    new_state = {
        "position": state["position"] + length,
        "inner": carry["fast"],
        "pending": carry["pending"],
        "count": carry["count"],
    }
    return logits, new_state


class LMTestTimeTraining:
    """Mixin for a BlockStackLM whose blocks hold a CMS (HOPE, HOPE-Attention): with any 'lm' level, `__call__` runs
    the chunked test-time training above; otherwise the model is unchanged. Put it before BlockStackLM in the bases."""

    def __init__(self, cfg: ModelConfig, *, rngs: nnx.Rngs):
        super().__init__(cfg, rngs=rngs)
        self.ttt = ttt_spec(cfg)

    def init_state(self, batch_size: int, max_len: int | None = None) -> Any:
        inner = super().init_state(batch_size, max_len)
        return inner if self.ttt is None else init_ttt_state(inner, self.ttt, batch_size)

    def lm_initial_fast(self, batch_size: int) -> list:
        """Every lm level's initial (meta-learned) weights per sequence, [layer][level] as get_fast orders them."""
        return [[block.channel.cms.initial_fast(i, batch_size) for i, _, _ in self.ttt.levels] for block in self.blocks]

    def plain_forward(self, tokens_bt: jax.Array, inner: Any):
        """The model without test-time training: one stateful pass with every lm level's weights held constant."""
        return super().__call__(tokens_bt, inner)

    def __call__(self, tokens_bt: jax.Array, state: Any = None):
        if self.ttt is None:
            return super().__call__(tokens_bt, state)
        return run(self, type(self).plain_forward, tokens_bt, state, self.ttt)
