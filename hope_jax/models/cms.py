"""Continuum Memory System: a chain of SwiGLU levels with periods in tokens (DESIGN D6, HOPE_SPEC §6).

Level i lives under the parameter path `.../cms/levels/<i>/` (its pre-norm scale and w_gate / w_up / w_down), so
optimiser rules can give it its own level (`level_param_regex`). Kinds, from `cms.periods` / `cms.objectives`:
- in-context (`objectives[i] == 'local'`, period P > 0): the parameters are the meta-learned initial fast weights,
  broadcast per sequence; after every P tokens the fast weights take one chunk of DGD (memory/cms.py `cms_local`)
  regressing the block's keys onto the level's own pre-update output on the block's values; tokens inside a chunk
  read the chunk-start weights. With inner_lr 0 the level is exactly the plain MLP.
- outer (`'outer'`, P > 0): a plain MLP for the model; P is the period (in tokens) of its optimiser level
  (`outer_level_periods` lists them for tier configs; DESIGN D6, optax.MultiSteps in hope_jax/optim).
- frozen in context (`'frozen'`, P = 0): a plain MLP updated every optimiser step (the Transformer FFN).
- test-time trained (`'lm'`, P ≥ 2): per-sequence fast weights held in the state ({'lm_fast', 'lm_grad'}), constant
  within a call; the model-level driver (models/lm_ttt.py) steps them on the LM loss of each finished chunk. Here the
  level is the plain MLP on the carried weights.
Variants (HOPE_SPEC §6.2): 'sequential' x ← x + f_i(norm_i(x)) in order; 'nested' the same chain, and each
in-context level returns to its initial weights whenever the next slower in-context level updates (E31: its
context ends); 'independent' x ← x + Σ_i a_i f_i(norm_i(x)) on the same input, a_i learned (init 1).
In-context levels sow `cms_loss_before` / `cms_loss_after` (their own objective over the piece at the weights before
and after it) as inner-loop diagnostics; `lm` levels' losses are sown by the driver.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from hope_jax.layers import RMSNorm, normal_init, swiglu
from hope_jax.memory import driver
from hope_jax.memory.cms import cms_local, level_forward, nested_chunk_starts
from hope_jax.memory.document_resets import seen_start, where_batch, where_tokens
from hope_jax.models.typed_config import CMSConfig, ModelConfig
from hope_jax.sharding import constrain

IN_CONTEXT_OBJECTIVES = ("local",)  # updated inside the forward pass (memory/driver.py)
LM_OBJECTIVE = "lm"  # updated between chunks by models/lm_ttt.py
OBJECTIVES = (*IN_CONTEXT_OBJECTIVES, LM_OBJECTIVE, "outer", "frozen")
VARIANTS = ("sequential", "nested", "independent")


def validate_cms_config(cms_cfg: CMSConfig) -> None:
    """The CMS levels' consistency (a CMSConfig, or the model.cms ConfigDict), naming the keys."""
    periods, objectives = tuple(cms_cfg.periods), tuple(cms_cfg.objectives)
    if not periods or len(periods) != len(objectives):
        raise ValueError(f"model.cms.periods {periods} and model.cms.objectives {objectives} need one entry per level")
    if cms_cfg.variant not in VARIANTS:
        raise ValueError(f"model.cms.variant = {cms_cfg.variant!r}; known: {', '.join(VARIANTS)}")
    for i, (period, objective) in enumerate(zip(periods, objectives, strict=True)):
        if objective not in OBJECTIVES:
            raise ValueError(f"model.cms.objectives[{i}] = {objective!r}; known: {', '.join(OBJECTIVES)}")
        if (period == 0) != (objective == "frozen"):
            raise ValueError(
                f"model.cms level {i}: period {period} with objective {objective!r}; period 0 is exactly "
                "the 'frozen' (plain MLP) level"
            )
        if period < 0:
            raise ValueError(f"model.cms.periods[{i}] must be ≥ 0, got {period}")
        if objective == LM_OBJECTIVE and period < 2:
            raise ValueError(
                f"model.cms level {i}: an 'lm' level needs a period ≥ 2 (a chunk of one token has no seen target), "
                f"got {period}"
            )
    lm_lrs = tuple(cms_cfg.lm_lrs)
    if lm_lrs and len(lm_lrs) != len(periods):
        raise ValueError(f"model.cms.lm_lrs {lm_lrs} needs one entry per level ({len(periods)}) or none (inner_lr)")
    if any(lr < 0 for lr in lm_lrs):
        raise ValueError(f"model.cms.lm_lrs {lm_lrs} must be ≥ 0")
    if len(periods) != len(tuple(cms_cfg.hidden)):
        raise ValueError(f"model.cms.hidden {tuple(cms_cfg.hidden)} needs one entry per level ({len(periods)})")
    if cms_cfg.variant == "nested":
        _validate_nested(cms_cfg)


def nested_chain(cms_cfg: CMSConfig) -> tuple[int, ...]:
    """Indices of the levels a nested CMS nests (E31), fastest first: its in-context levels ('local' or 'lm');
    () for the other variants."""
    if cms_cfg.variant != "nested":
        return ()
    objectives = tuple(cms_cfg.objectives)
    return tuple(i for i, o in enumerate(objectives) if o in (*IN_CONTEXT_OBJECTIVES, LM_OBJECTIVE))


def _validate_nested(cms_cfg: CMSConfig) -> None:
    """A nested chain hands each level's weights to the next faster level, so its levels share one objective and
    one width, and each period divides the next (a slower update is always also a faster level's chunk end)."""
    chain = nested_chain(cms_cfg)
    periods, objectives, hidden = (tuple(getattr(cms_cfg, key)) for key in ("periods", "objectives", "hidden"))
    where = f"model.cms (variant 'nested', levels {list(chain)})"
    if len({objectives[i] for i in chain}) > 1:
        raise ValueError(f"{where}: the nested levels need one objective, got {[objectives[i] for i in chain]}")
    if len({hidden[i] for i in chain}) > 1:
        raise ValueError(f"{where}: the nested levels need equal model.cms.hidden, got {[hidden[i] for i in chain]}")
    chain_periods = [periods[i] for i in chain]
    if any(slow <= fast or slow % fast for fast, slow in zip(chain_periods, chain_periods[1:], strict=False)):
        raise ValueError(
            f"{where}: model.cms.periods {chain_periods} must increase along the chain, each dividing the next"
        )
    if chain and objectives[chain[0]] == "local":
        between = [i for i in range(chain[0], chain[-1] + 1) if objectives[i] == LM_OBJECTIVE]
        if between:
            raise ValueError(f"{where}: 'lm' levels {between} sit inside the nested 'local' chain")


def level_param_regex(index: int) -> str:
    """Regex (optim.rules syntax, full match) for every parameter of CMS level `index` in every block."""
    return rf".*cms/levels/{index}/.*"


def lm_levels(cms_cfg: CMSConfig) -> tuple[tuple[int, int, float], ...]:
    """(level index, period, inner learning rate) of every 'lm' level; lr from cms.lm_lrs, else cms.inner_lr."""
    lrs = tuple(cms_cfg.lm_lrs) or (cms_cfg.inner_lr,) * len(cms_cfg.periods)
    return tuple(
        (i, period, float(lrs[i]))
        for i, (period, objective) in enumerate(zip(cms_cfg.periods, cms_cfg.objectives, strict=True))
        if objective == LM_OBJECTIVE
    )


def outer_level_periods(cfg: ModelConfig) -> dict[int, int]:
    """{level index: period in tokens} of the outer levels, for building their optimiser levels (a ModelConfig, or
    the model ConfigDict)."""
    cms = cfg.cms
    return {i: p for i, (p, o) in enumerate(zip(cms.periods, cms.objectives, strict=True)) if o == "outer"}


class CMSLevel(nnx.Module):
    def __init__(self, d_model: int, hidden: int, *, init_std: float, out_init_std: float, eps: float, dtype, rngs):
        self.dtype = dtype
        self.norm = RMSNorm(d_model, eps=eps, dtype=dtype)
        self.w_gate = nnx.Param(normal_init(rngs, (d_model, hidden), init_std), out_sharding=("embed", "mlp"))
        self.w_up = nnx.Param(normal_init(rngs, (d_model, hidden), init_std), out_sharding=("embed", "mlp"))
        self.w_down = nnx.Param(normal_init(rngs, (hidden, d_model), out_init_std), out_sharding=("mlp", "embed"))

    def weights(self) -> dict:
        return {"w_gate": self.w_gate[...], "w_up": self.w_up[...], "w_down": self.w_down[...]}

    def plain(self, x_btd: jax.Array) -> jax.Array:
        weights = (w.astype(self.dtype) for w in self.weights().values())
        return swiglu(self.norm(x_btd), *weights)


class CMS(nnx.Module):
    """__call__(x, keys, values, state) -> (x with every level's residual added, new state)."""

    def __init__(self, cfg: ModelConfig, *, out_init_std: float, rngs: nnx.Rngs):
        cms = cfg.cms
        validate_cms_config(cms)
        self.dtype = cfg.compute_dtype
        self.periods, self.objectives = cms.periods, cms.objectives
        self.variant, self.inner_lr, self.inner_decay = cms.variant, cms.inner_lr, cms.inner_decay
        self.dgd, self.truncate_bptt = cms.dgd, cfg.memory.truncate_bptt
        self.normalized_step, self.step_bound = cms.normalized_step, cfg.memory.step_bound
        self.remat_chunks = cfg.memory.remat_chunks
        self.diagnostics_stride = cfg.memory.diagnostics_stride
        level = dict(init_std=cfg.init_std, out_init_std=out_init_std, eps=cfg.norm_eps, dtype=self.dtype, rngs=rngs)
        self.levels = nnx.List([CMSLevel(cfg.d_model, hidden, **level) for hidden in cms.hidden])
        chain = nested_chain(cms)
        # A nested chain of 'local' levels runs as one unit (_nested_unit); nested 'lm' levels are handed their
        # weights by the driver (models/lm_ttt.py).
        local_chain = chain if chain and self.objectives[chain[0]] in IN_CONTEXT_OBJECTIVES else ()
        self.nested = local_chain if len(local_chain) > 1 else ()
        self.resets = cfg.reset_at_token >= 0  # document resets (memory/document_resets.py)
        if self.resets and self.nested:
            raise ValueError(
                "model.reset_at_token ≥ 0 (document resets) is not implemented for a nested chain of 'local' levels "
                "(model.cms.variant = 'nested' with objective 'local'); use 'lm' levels or model.reset_at_token = -1"
            )
        self.agg = (
            nnx.Param(jnp.ones((len(self.periods),), jnp.float32), out_sharding=(None,))
            if self.variant == "independent"
            else None
        )

    def in_context(self, i: int) -> bool:
        return self.objectives[i] in IN_CONTEXT_OBJECTIVES

    def init_state(self, batch_size: int, d_model: int) -> list:
        token = jax.ShapeDtypeStruct((d_model,), self.dtype)

        def level_state(i):
            if self.nested and i == self.nested[0]:  # the whole nested unit's carry
                tokens = {"x": token, "k": token, "v": token}
                initial = [self.initial_fast(j, batch_size) for j in self.nested]
                return driver.init_carry(initial, tokens, self.periods[self.nested[-1]], batch_size)
            if i in self.nested:
                return {}
            if self.in_context(i):
                tokens = {"x": token, "k": token, "v": token}
                return driver.init_carry(
                    self.initial_fast(i, batch_size), tokens, self.periods[i], batch_size, starts=self.resets
                )
            if self.objectives[i] == LM_OBJECTIVE:
                # The driver (models/lm_ttt.py) steps lm_fast; lm_grad sums a level's gradients over its period.
                initial = self.initial_fast(i, batch_size)
                return {"lm_fast": initial, "lm_grad": jax.tree.map(jnp.zeros_like, initial)}
            return {}

        return [level_state(i) for i in range(len(self.levels))]

    def initial_fast(self, i: int, batch_size: int) -> dict:
        # Per-sequence fast weights: batch over the data-parallel axes (DESIGN D2).
        per_sequence = lambda a: constrain(jnp.broadcast_to(a, (batch_size, *a.shape)), ("batch",) + (None,) * a.ndim)
        return jax.tree.map(per_sequence, self.levels[i].weights())

    def _lm_level(self, i, x_btd, state, starts_bt):
        """An 'lm' level inside one call: the MLP on the carried per-sequence weights (the driver updates them).

        With document resets the call is one piece from a chunk boundary: a token after a start in the piece reads
        the reset weights `lm_fast` (the driver puts the level's initial weights there and differentiates them), a
        token before it the weights the chunk started with, `lm_carried` (given by the driver; else `lm_fast`, and
        the reset weights are the level's initial ones)."""
        level = self.levels[i]
        batch = x_btd.shape[0]
        if state is None:
            state = {"lm_fast": self.initial_fast(i, batch)}
            state["lm_grad"] = jax.tree.map(jnp.zeros_like, state["lm_fast"])
        per_sequence = jax.vmap(lambda x, g, u, d: swiglu(x, g, u, d))
        read = lambda fast: per_sequence(
            level.norm(x_btd), *(fast[name].astype(self.dtype) for name in ("w_gate", "w_up", "w_down"))
        )
        if starts_bt is None:
            return read(state["lm_fast"]), state
        seen = seen_start(starts_bt)
        if "lm_carried" in state:
            reset, carried = state["lm_fast"], state["lm_carried"]
        else:
            carried = state["lm_fast"]
            reset = where_batch(seen[:, -1], self.initial_fast(i, batch), carried)
        # A piece without a start reads `reset` everywhere (equal to the carried weights there, and differentiated).
        from_reset = seen | ~seen[:, -1:]
        return where_tokens(from_reset, read(reset), read(carried)), state

    def _sow_local_fit(self, i, keys, values, start_fast, end_fast) -> None:
        """Inner-loop diagnostics (DESIGN D11): the local objective ½‖f(k) − f(v)‖² (target at the same weights, as
        the HOPE mixer reports its memory) over this piece (every model.memory.diagnostics_stride-th token), at the weights
        before and after it; no gradient."""
        keys, values = (a[:, :: self.diagnostics_stride] for a in (keys, values))

        def fit(fast):
            weights = jax.tree.map(lambda a: jax.lax.stop_gradient(a).astype(jnp.float32), fast)
            mlp = jax.vmap(lambda w, x: swiglu(x, w["w_gate"], w["w_up"], w["w_down"]))
            k, v = (jax.lax.stop_gradient(a).astype(jnp.float32) for a in (keys, values))
            return 0.5 * jnp.mean(jnp.sum(jnp.square(mlp(weights, k) - mlp(weights, v)), axis=-1))

        self.sow(nnx.Intermediate, "cms_loss_before", fit(start_fast))
        self.sow(nnx.Intermediate, "cms_loss_after", fit(end_fast))

    def _level(self, i, x_btd, keys, values, state, starts_bt):
        level = self.levels[i]
        if self.objectives[i] == LM_OBJECTIVE:
            return self._lm_level(i, x_btd, state, starts_bt)
        if not self.in_context(i):
            return level.plain(x_btd), state
        period = self.periods[i]

        def chunk_fn(fast, chunk, update_mask=None):
            y, new_fast = cms_local(
                fast, chunk["x"], chunk["k"], chunk["v"], inner_lr=self.inner_lr, inner_decay=self.inner_decay,
                period=period, dgd=self.dgd, truncate_bptt=self.truncate_bptt, remat_group=0,
                normalized_step=self.normalized_step, step_bound=self.step_bound, update_mask=update_mask,
            )  # fmt: skip
            return new_fast, y

        batch = x_btd.shape[0]
        inputs = {"x": level.norm(x_btd), "k": keys, "v": values}
        y, carry = driver.run_chunked(
            chunk_fn, inputs, period, fast=self.initial_fast(i, batch) if state is None else None,
            carry=state, remat_group=int(self.remat_chunks), outputs_from_chunk_start=True,  # y_t = f_{θ_s(t)}(x_t)
            starts=starts_bt, initial=None if starts_bt is None else self.initial_fast(i, batch),
        )  # fmt: skip
        self._sow_local_fit(
            i, keys, values, self.initial_fast(i, batch) if state is None else state["fast"], carry["fast"]
        )
        return y.astype(self.dtype), carry

    def _nested_unit(self, x_btd, keys, values, state):
        """The nested chain's levels (and any plain level between them) over the piece, as one chunked layer of the
        slowest level's period: each chunk runs memory/cms.nested_chunk_starts for the weights every level reads,
        then the chain in order. A token reads weights its own chunk's earlier tokens wrote (the faster levels
        update inside the chunk), so outputs do not come from the chunk start alone."""
        chain, span = self.nested, range(self.nested[0], self.nested[-1] + 1)
        periods = [self.periods[i] for i in chain]

        def chunk_fn(fast, chunk):
            # A trailing partial chunk (its update is dropped) is read as a whole one: the padding comes after
            # every real token, so it reaches no real output.
            length = chunk["x"].shape[1]
            chunk = jax.tree.map(lambda a: jnp.pad(a, [(0, 0), (0, periods[-1] - length), (0, 0)]), chunk)
            starts, end = nested_chunk_starts(
                fast, periods, chunk["k"], chunk["v"], inner_lr=self.inner_lr, inner_decay=self.inner_decay,
                dgd=self.dgd, normalized_step=self.normalized_step, step_bound=self.step_bound,
                truncate_bptt=self.truncate_bptt,
            )  # fmt: skip
            x = chunk["x"]
            for i in span:
                if i not in chain:
                    x = x + self.levels[i].plain(x)
                    continue
                level_in = self.levels[i].norm(x)
                rows = level_in.reshape(x.shape[0], -1, self.periods[i], x.shape[-1]).astype(jnp.float32)
                read = jax.vmap(jax.vmap(level_forward))(starts[chain.index(i)], rows)
                x = x + read.reshape(x.shape).astype(level_in.dtype).astype(self.dtype)
            return [end] * len(chain), x[:, :length]

        batch = x_btd.shape[0]
        start_fast = [self.initial_fast(i, batch) for i in chain] if state is None else state["fast"]
        x_btd, carry = driver.run_chunked(
            chunk_fn, {"x": x_btd, "k": keys, "v": values}, periods[-1], fast=start_fast if state is None else None,
            carry=state, remat_group=int(self.remat_chunks),
        )  # fmt: skip
        for i, before, after in zip(chain, start_fast, carry["fast"], strict=True):
            self._sow_local_fit(i, keys, values, before, after)
        return x_btd, carry

    def __call__(self, x_btd, keys_btd, values_btd, state: list | None, starts_bt: jax.Array | None = None):
        """starts_bt: bool [B, T] document starts (model.reset_at_token): every in-context level restarts there."""
        states = [None] * len(self.levels) if state is None else state
        new_states, outputs = [], []
        for i in range(len(self.levels)):
            if i in self.nested:
                if i == self.nested[0]:
                    x_btd, unit_state = self._nested_unit(x_btd, keys_btd, values_btd, states[i])
                new_states.append(unit_state if i == self.nested[0] else {})
                continue
            if self.nested and self.nested[0] < i < self.nested[-1]:
                new_states.append({})  # a plain level inside the nested unit (applied there)
                continue
            # independent: x_btd is not updated inside the loop, so every level reads the block's input
            y, new_state = self._level(i, x_btd, keys_btd, values_btd, states[i], starts_bt)
            new_states.append(new_state if self.in_context(i) or self.objectives[i] == LM_OBJECTIVE else {})
            if self.variant == "independent":
                outputs.append(self.agg[i].astype(self.dtype) * y)
            else:
                x_btd = x_btd + y
        if self.variant == "independent":
            x_btd = x_btd + sum(outputs)
        return x_btd, new_states
