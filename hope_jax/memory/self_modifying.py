"""Self-modifying Titans: every projection is a memory trained in context by DGD (HOPE_SPEC §5, E20–E28; DESIGN D5).

Per head, memories □ ∈ {k, v, q (adaptive_q only), eta, alpha (weight decay only), memory}, each a 2-layer residual MLP
M(u) = u + σ(u W_in) W_out (E24). For token t in chunk c (s(t) = last token of the previous chunk, A1):

    k_t = l2(M_k,s(t)(x_t))   v_t = M_v,s(t)(x_t)   q_t = l2(M_q,s(t)(x_t) or the static q_t)              (E20, E27)
    η_t = η_max·sigmoid(w_ηᵀ M_η,s(t)(x_t) + b_η)   α_t = sigmoid(w_αᵀ M_α,s(t)(x_t) + b_α)   (A3; α_t = 1 without decay)
    normalize_values: v_t = l2(M_v,s(t)(x_t)) (our addition; see SelfModConfig)
    v̂_□,t = M_□,s(t)(v_t)                                                                               (E21)
    y_t = M_memory,s(t)(q_t)                                                                            (E22, E27)
    every □: DGD step on ½‖M_□(k_t) − v̂_□,t‖² with lr η_t and retention α_t (dgd.py; E28 + A4/A5/A15)

Two chunk sizes: `chunk_size_other` for the generators (k, v, q, eta, alpha), `chunk_size_memory` for M_memory. The
memory's state never feeds the generators, so the sequence is processed in two chunked scans — generators first
(producing k, v, q, η, α for every token), then the memory — and the two sizes need not divide each other.
"""

import dataclasses

import jax
import jax.numpy as jnp

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import l2_normalize, scan_chunks
from hope_jax.memory.dgd import DGD_LAYER_CHOICES, dgd_chunk_update


@dataclasses.dataclass(frozen=True)
class SelfModConfig:
    """Static options of self_modifying_titans (hashable; every HOPE ablation row is one field)."""

    chunk_size_memory: int = 16
    chunk_size_other: int = 16
    adaptive_q: bool = False  # A2: q from a memory instead of the static W_q projection
    use_dgd: bool = True  # False: plain GD with decay ("w/o DGD")
    dgd_layers: str = "all"  # A4: 'all' = per-layer DGD (first reading); 'first' = x̂x̂ᵀ term on the first layer only
    use_momentum: bool = True  # A5
    momentum_decay: float = 0.9  # ε of the momentum buffer (not given by the paper)
    use_weight_decay: bool = True  # False: α_t = 1 and no M_alpha ("w/o weight decay")
    gated_delta_form: bool = False  # A15: False = Eq. 88 as printed; True = DGD-consistent gated-delta form
    eta_max: float = 1.0
    # ℓ2-normalise the values v_t (the paper does not say; keys and queries are normalised). The self-generated
    # target v̂ = M(v) makes the inner map expansive when ‖v‖ > ‖k‖ = 1 (linear case: eigenvalue 1 − η(1 − k·v) > 1
    # for k·v > 1), and the memories then grow without bound; unit values keep it ≤ 1. False = E20 literally.
    normalize_values: bool = False
    # Gradient terms step by η / (1 + C·η·h) (chunking.chunk_step_size): a chunk's C gradients at one state stay one
    # stable mini-batch step. False = η' for every token (E19 per token), which overshoots on aligned keys.
    normalize_step: bool = True
    step_bound: str = "chunk"  # dgd.dgd_chunk_update: 'chunk' (C·h) | 'gram' (the chunk's Gram matrix)
    activation: str = "silu"
    remat_group: int = 1  # chunks per jax.checkpoint group (0 = off)
    truncate_grad: bool = False  # DESIGN D4 speed switch (see recurrence.chunk_end_state)
    accum_dtype: str = "float32"

    def __post_init__(self):
        if self.chunk_size_memory < 1 or self.chunk_size_other < 1:
            raise ValueError(
                f"chunk sizes must be positive, got memory={self.chunk_size_memory} other={self.chunk_size_other}"
            )
        if self.dgd_layers not in DGD_LAYER_CHOICES:
            raise ValueError(f"dgd_layers must be one of {DGD_LAYER_CHOICES}, got {self.dgd_layers!r}")
        fast_mlp.activation_fn(self.activation)


def generator_names(cfg: SelfModConfig) -> tuple[str, ...]:
    """Memories that generate the per-token quantities (all updated with the generator chunk size)."""
    return ("k", "v") + (("q",) if cfg.adaptive_q else ()) + ("eta",) + (("alpha",) if cfg.use_weight_decay else ())


def updated_names(cfg: SelfModConfig) -> tuple[str, ...]:
    """Every memory in the state."""
    return generator_names(cfg) + ("memory",)


def init_self_modifying_state(initial_weights: dict, batch_size: int, cfg: SelfModConfig) -> dict:
    """Per-sequence state from the meta-learned initial weights {□: {'w_in': [H, d, h], 'w_out': [H, h, d]}}."""
    _check_names(initial_weights, cfg)
    weights = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch_size, *a.shape)), initial_weights)
    state = {"weights": weights}
    if cfg.use_momentum:
        state["momentum"] = jax.tree.map(jnp.zeros_like, weights)
    return state


def _check_names(weights: dict, cfg: SelfModConfig):
    if set(weights) != set(updated_names(cfg)):
        raise ValueError(
            f"self-modifying state has memories {sorted(weights)}; config needs {sorted(updated_names(cfg))}"
        )
    for name, w in weights.items():
        if fast_mlp.memory_kind(w) != "mlp":
            raise ValueError(f"memory {name!r} must be a 2-layer MLP {{'w_in', 'w_out'}}, got keys {sorted(w)}")


def _stack(trees: list) -> dict:
    return jax.tree.map(lambda *leaves: jnp.stack(leaves), *trees)


def _unstack(stacked: dict, names: tuple[str, ...]) -> dict:
    return {name: jax.tree.map(lambda a, i=i: a[i], stacked) for i, name in enumerate(names)}


def _update_memories(weights, momentum, keys, values, eta, log_alpha, cfg, chunk_size: int):
    """DGD over one chunk on a stack of memories (leading axis), each regressing the keys onto its own output on the
    values (E21). Stacking the memories keeps the compiled program one memory wide."""

    def one_memory(w, s):
        target = fast_mlp.forward(w, values, residual=True, activation=cfg.activation)
        return dgd_chunk_update(
            w,
            s if cfg.use_momentum else None,
            keys,
            target,
            eta,
            None,
            log_retention=log_alpha,
            residual=True,
            activation=cfg.activation,
            use_dgd=cfg.use_dgd,
            dgd_layers=cfg.dgd_layers,
            gated_delta=cfg.gated_delta_form,
            momentum_decay=cfg.momentum_decay,
            truncate_grad=cfg.truncate_grad,
            normalize_step=cfg.normalize_step,
            chunk_size=chunk_size,
            step_bound=cfg.step_bound,
        )

    new_w, new_s = jax.vmap(one_memory)(weights, momentum if cfg.use_momentum else weights)
    return new_w, (new_s if cfg.use_momentum else {})


def _one_sequence(x, q_static, weights, momentum, reduction, *, cfg: SelfModConfig):
    gens = generator_names(cfg)
    index = {name: i for i, name in enumerate(gens)}

    def generator_chunk(carry, xs):
        w, s = carry
        x_c, q_c = xs
        out = jax.vmap(lambda w_: fast_mlp.forward(w_, x_c, residual=True, activation=cfg.activation))(w)
        keys, values = l2_normalize(out[index["k"]]), out[index["v"]]
        values = l2_normalize(values) if cfg.normalize_values else values
        queries = l2_normalize(out[index["q"]] if cfg.adaptive_q else q_c)
        eta = cfg.eta_max * jax.nn.sigmoid(out[index["eta"]] @ reduction["eta_w"] + reduction["eta_b"])
        if cfg.use_weight_decay:  # log α in log space: log(sigmoid(z)) would be log(0) = −inf for very negative z
            log_alpha = jax.nn.log_sigmoid(out[index["alpha"]] @ reduction["alpha_w"] + reduction["alpha_b"])
        else:
            log_alpha = jnp.zeros_like(eta)
        carry = _update_memories(w, s, keys, values, eta, log_alpha, cfg, cfg.chunk_size_other)
        return carry, (queries, keys, values, eta, log_alpha)

    def memory_chunk(carry, xs):
        w, s = carry
        queries, keys, values, eta, log_alpha = xs
        y = fast_mlp.forward(jax.tree.map(lambda a: a[0], w), queries, residual=True, activation=cfg.activation)
        return _update_memories(w, s, keys, values, eta, log_alpha, cfg, cfg.chunk_size_memory), y

    stacked = lambda tree, names: _stack([tree[name] for name in names]) if tree else {}
    (gen_w, gen_s), per_token = scan_chunks(
        generator_chunk,
        (stacked(weights, gens), stacked(momentum, gens)),
        (x, q_static),
        cfg.chunk_size_other,
        cfg.remat_group,
    )
    (mem_w, mem_s), y = scan_chunks(
        memory_chunk,
        (stacked(weights, ("memory",)), stacked(momentum, ("memory",))),
        per_token,
        cfg.chunk_size_memory,
        cfg.remat_group,
    )
    _, keys, values, _, _ = per_token
    new_w = {**_unstack(gen_w, gens), **_unstack(mem_w, ("memory",))}
    new_s = {**_unstack(gen_s, gens), **_unstack(mem_s, ("memory",))} if cfg.use_momentum else {}
    return y, new_w, new_s, keys, values


def self_modifying_titans(
    x: jax.Array, q: jax.Array | None, state: dict, reduction: dict, cfg: SelfModConfig
) -> tuple[jax.Array, dict, jax.Array, jax.Array]:
    """Self-modifying Titans over a batch; returns (y [B,H,T,d], new state, keys [B,H,T,d], values [B,H,T,d]).

    x: [B, H, T, d] the block input already split into heads (after conv/projection).
    q: [B, H, T, d] static queries (x W_q) when cfg.adaptive_q is False; must be None when it is True.
    state: {'weights': {□: {'w_in': [B,H,d,h], 'w_out': [B,H,h,d]}}, 'momentum': same (only with use_momentum)}.
    reduction: outer parameters of A3, {'eta_w': [H, d], 'eta_b': [H], 'alpha_w': [H, d], 'alpha_b': [H]}
      (alpha_* only with use_weight_decay; set alpha_b large, e.g. 4-6, so that α ≈ 1 at initialisation).
    The returned keys are the ℓ2-normalised generated keys and the values the generated values (CMS `local` uses
    them). T need not be a multiple of either chunk size (a trailing partial chunk is a chunk of its own).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, T, d], got shape {x.shape}")
    if cfg.adaptive_q and q is not None:
        raise ValueError("adaptive_q=True generates q from M_q: pass q=None")
    if not cfg.adaptive_q and (q is None or q.shape != x.shape):
        raise ValueError(
            f"adaptive_q=False needs static queries q with x's shape {x.shape}, got {None if q is None else q.shape}"
        )
    _check_names(state["weights"], cfg)
    if cfg.use_momentum and "momentum" not in state:
        raise ValueError("use_momentum=True needs state['momentum'] (see init_self_modifying_state)")
    dtype = jnp.dtype(cfg.accum_dtype)
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    momentum = cast(state["momentum"]) if cfg.use_momentum else {}
    q_in = cast(q) if q is not None else jnp.zeros(x.shape, dtype)
    per_head = jax.vmap(lambda *a: _one_sequence(*a, cfg=cfg))
    batched = jax.vmap(per_head, in_axes=(0, 0, 0, 0, None))
    y, w_end, s_end, keys, values = batched(cast(x), q_in, cast(state["weights"]), momentum, cast(reduction))
    new_state = {"weights": w_end}
    if cfg.use_momentum:
        new_state["momentum"] = s_end
    return y.astype(x.dtype), new_state, keys.astype(x.dtype), values.astype(x.dtype)
