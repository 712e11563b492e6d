"""Self-modifying Titans: every projection is a memory trained in context by DGD (HOPE_SPEC §5, E20–E28; DESIGN D5).

This is the inner loop the HOPE mixer runs (models/self_modifying.py calls `joint_sequence` or
`self_modifying_sequence` per sequence and head); self_modifying_reference (at the end) is its per-token reference.

Per head, memories □ ∈ {k, v, q (adaptive_q only), eta, alpha (weight decay only), memory}, each a 2-layer residual MLP
M(u) = u + σ(u W_in) W_out (E24); with memory_depth 1, M_memory is a matrix, M(u) = u W (§5.3, E25/E26). For token t
in chunk c (s(t) = last token of the previous chunk, A1):

    k_t = l2(M_k,s(t)(x_t))   v_t = M_v,s(t)(x_t)   q_t = l2(M_q,s(t)(x_t) or the static q_t)              (E20, E27)
    η_t = η_max·sigmoid(w_ηᵀ M_η,s(t)(x_t) + b_η)   α_t = sigmoid(w_αᵀ M_α,s(t)(x_t) + b_α)   (A3; α_t = 1 without decay)
    normalize_values: v_t = l2(M_v,s(t)(x_t)) (our addition; see SelfModConfig)
    v̂_□,t = M_□,s(t)(v_t)                                                                               (E21)
    memory_target 'value': v̂_memory,t = v_t (the shared target of §5.1's fully adaptive variant)
    y_t = M_memory,s(t)(q_t)                                                                            (E22, E27)
    every □: DGD step on ½‖M_□(k_t) − v̂_□,t‖² with lr η_t and retention α_t (dgd.py; E28 + A4/A5/A15)

A-Table 6's 'w/o adaptive k' ('w/o adaptive v') replaces k_t (v_t) by a static stream (a projection of the block
input) and M_k (M_v) does not exist. Two chunk sizes: `aux_chunk_size` for the generators, `chunk_size` for
M_memory. The memory's state never feeds the generators, so unequal sizes run as two chunked scans (generators
first, producing k, v, q, η, α for every token, then the memory) and need not divide each other; equal sizes run as
one scan over one stack of every memory (`joint_sequence`) when M_memory has the generators' form.
"""

import dataclasses
import functools

import jax
import jax.numpy as jnp
from jax import lax

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import l2_normalize
from hope_jax.memory.dgd import DGD_LAYER_CHOICES, DGDRule, chunk_start_snapshot, dgd_chunk_update, dgd_token_step
from hope_jax.memory.driver import scan_sequence

MEMORY_TARGETS = ("self", "value")


@dataclasses.dataclass(frozen=True)
class SelfModConfig:
    """Static options of self-modifying Titans (hashable; every HOPE ablation row is one field)."""

    chunk_size: int = 16
    aux_chunk_size: int = 16
    memory_depth: int = 2  # M_memory: 2 = the residual MLP of E24; 1 = a matrix (HOPE_SPEC §5.3)
    # M_memory's regression target: 'self' = its own read of the value, v̂ = M_s(v) (E21); 'value' = v itself, the
    # shared target of the 'fully adaptive' variant (HOPE_SPEC §5.1, NL-A Eqs. 79–82). The generators keep E21.
    memory_target: str = "self"
    adaptive_q: bool = False  # A2: q from a memory instead of the static W_q projection
    adaptive_k: bool = True  # False: k is a static stream and M_k does not exist ("w/o adaptive k")
    adaptive_v: bool = True  # False: v is a static stream and M_v does not exist ("w/o adaptive v")
    dgd: bool = True  # False: plain GD with decay ("w/o DGD")
    dgd_layers: str = "all"  # A4: 'all' = per-layer DGD (first reading); 'first' = x̂x̂ᵀ term on the first layer only
    momentum: bool = True  # A5
    momentum_decay: float = 0.9  # ε of the momentum buffer (not given by the paper)
    weight_decay: bool = True  # False: α_t = 1 and no M_alpha ("w/o weight decay")
    gated_delta: bool = False  # A15: False = Eq. 88 as printed; True = DGD-consistent gated-delta form
    eta_max: float = 1.0
    # ℓ2-normalise the values v_t (the paper does not say; keys and queries are normalised). The self-generated
    # target v̂ = M(v) makes the inner map expansive when ‖v‖ > ‖k‖ = 1 (linear case: eigenvalue 1 − η(1 − k·v) > 1
    # for k·v > 1), and the memories then grow without bound; unit values keep it ≤ 1. False = E20 literally.
    normalize_values: bool = False
    # Gradient terms step by η / (1 + C·η·h) (chunking.chunk_step_size): a chunk's C gradients at one state stay one
    # stable mini-batch step. False = η' for every token (E19 per token), which overshoots on aligned keys.
    normalized_step: bool = True
    step_bound: str = "chunk"  # dgd.dgd_chunk_update: 'chunk' (C·h) | 'gram' (the chunk's Gram matrix)
    activation: str = "silu"
    remat_group: int = 1  # chunks per jax.checkpoint group (0 = off; the model rematerialises whole periods)
    truncate_bptt: bool = False  # DESIGN D4 speed switch (see recurrence.chunk_end_state)
    accum_dtype: str = "float32"

    def __post_init__(self):
        if self.chunk_size < 1 or self.aux_chunk_size < 1:
            raise ValueError(f"chunk sizes must be positive, got memory={self.chunk_size} other={self.aux_chunk_size}")
        if self.dgd_layers not in DGD_LAYER_CHOICES:
            raise ValueError(f"dgd_layers must be one of {DGD_LAYER_CHOICES}, got {self.dgd_layers!r}")
        if self.memory_target not in MEMORY_TARGETS:
            raise ValueError(f"memory_target must be one of {MEMORY_TARGETS}, got {self.memory_target!r}")
        if self.memory_depth not in (1, 2):
            raise ValueError(f"memory_depth must be 1 (matrix) or 2 (residual MLP), got {self.memory_depth}")
        fast_mlp.activation_fn(self.activation)

    def dgd_rule(self) -> DGDRule:
        """The DGD options every memory here learns by (residual MLPs or a matrix, dgd.py)."""
        return DGDRule(
            residual=True, activation=self.activation, dgd=self.dgd, dgd_layers=self.dgd_layers,
            gated_delta=self.gated_delta, momentum_decay=self.momentum_decay, truncate_bptt=self.truncate_bptt,
            normalized_step=self.normalized_step, step_bound=self.step_bound,
        )  # fmt: skip


def runs_jointly(cfg: SelfModConfig) -> bool:
    """Whether every memory updates on the same chunks and stacks with the others (joint_sequence): equal chunk sizes
    and an M_memory of the generators' form."""
    return cfg.aux_chunk_size == cfg.chunk_size and cfg.memory_depth == 2


def memory_form(name: str, cfg: SelfModConfig) -> str:
    """fast_mlp.memory_kind of memory `name`: 'linear' for a matrix M_memory, else 'mlp'."""
    return "linear" if name == "memory" and cfg.memory_depth == 1 else "mlp"


def generator_names(cfg: SelfModConfig) -> tuple[str, ...]:
    """Memories generating per-token quantities, in their stacking order (M_memory comes after them)."""
    names = ("k",) if cfg.adaptive_k else ()
    names += ("v",) if cfg.adaptive_v else ()
    names += ("q",) if cfg.adaptive_q else ()
    return names + ("eta",) + (("alpha",) if cfg.weight_decay else ())


def updated_names(cfg: SelfModConfig) -> tuple[str, ...]:
    """Every memory in the state."""
    return generator_names(cfg) + ("memory",)


def static_stream_names(cfg: SelfModConfig) -> tuple[str, ...]:
    """Input streams: 'x' feeds the memories; static 'q', 'k', 'v' replace the generators that are switched off."""
    return (
        ("x",)
        + (() if cfg.adaptive_q else ("q",))
        + (() if cfg.adaptive_k else ("k",))
        + (() if cfg.adaptive_v else ("v",))
    )


def init_self_modifying_state(initial_weights: dict, batch_size: int, cfg: SelfModConfig) -> dict:
    """Per-sequence state from the meta-learned initial weights {□: {'w_in': [H, d, h], 'w_out': [H, h, d]}}."""
    _check_names(initial_weights, cfg)
    weights = jax.tree.map(lambda a: jnp.broadcast_to(a, (batch_size, *a.shape)), initial_weights)
    state = {"weights": weights}
    if cfg.momentum:
        state["momentum"] = jax.tree.map(jnp.zeros_like, weights)
    return state


def _check_names(weights: dict, cfg: SelfModConfig):
    if set(weights) != set(updated_names(cfg)):
        raise ValueError(
            f"self-modifying state has memories {sorted(weights)}; config needs {sorted(updated_names(cfg))}"
        )
    for name, w in weights.items():
        if fast_mlp.memory_kind(w) != memory_form(name, cfg):
            expected = "a matrix {'w'}" if memory_form(name, cfg) == "linear" else "a 2-layer MLP {'w_in', 'w_out'}"
            raise ValueError(
                f"memory {name!r} must be {expected} (memory_depth {cfg.memory_depth}), got keys {sorted(w)}"
            )


# ---- one chunk: the per-token quantities, the read, the DGD step ----------------------------------------------------


def _update_stack(weights, momentum, keys, values, eta, log_alpha, cfg: SelfModConfig, chunk_size: int, onto_values):
    """One chunk of DGD on a stack of memories (leading axis), each regressing the keys onto its own output on the
    values (E21), or onto the values themselves where `onto_values` (one bool per memory of the stack) says so.
    Stacking the memories keeps the compiled program one memory wide."""

    def one_memory(w, s, onto_v):
        # The target M(v) and the inner gradient's forward pass M(k) read the same weights: one pass over both.
        key_parts, target_parts = fast_mlp.forward_parts_of_blocks(
            w, (keys, values), residual=True, activation=cfg.activation
        )
        targets = jnp.where(onto_v, values, target_parts["out"]) if any(onto_values) else target_parts["out"]
        return dgd_chunk_update(
            w, s if cfg.momentum else None, keys, targets, eta, None, cfg.dgd_rule(), log_retention=log_alpha,
            key_parts=key_parts, chunk_size=chunk_size,
        )  # fmt: skip

    new_w, new_s = jax.vmap(one_memory)(weights, momentum if cfg.momentum else weights, jnp.asarray(onto_values))
    return new_w, (new_s if cfg.momentum else {})


def _per_token(out, xs, reduction, index: dict, cfg: SelfModConfig):
    """(q, k, v, η, log α) from the generators' outputs `out` (leading axis: memories in `index` order) and the static
    streams (and an optional per-token 'update_mask' that zeroes η and log α). log α is computed in log space:
    log(sigmoid(z)) is log(0) = −inf once z ≲ −104 (an exploding M_α reached z = −302 in the smoke run) and its
    gradient in the decay products is then NaN; log_sigmoid stays finite."""
    keys = l2_normalize(out[index["k"]] if "k" in index else xs["k"])
    values = out[index["v"]] if "v" in index else xs["v"]
    values = l2_normalize(values) if cfg.normalize_values else values
    queries = l2_normalize(out[index["q"]] if "q" in index else xs["q"])
    eta = cfg.eta_max * jax.nn.sigmoid(out[index["eta"]] @ reduction["eta_w"] + reduction["eta_b"])
    if "alpha" in index:
        log_alpha = jax.nn.log_sigmoid(out[index["alpha"]] @ reduction["alpha_w"] + reduction["alpha_b"])
    else:
        log_alpha = jnp.zeros_like(eta)
    if "update_mask" in xs:  # document resets (memory/document_resets.py): a masked token takes no step, no decay
        eta, log_alpha = eta * xs["update_mask"], log_alpha * xs["update_mask"]
    return queries, keys, values, eta, log_alpha


def _generate(w, xs, reduction, index: dict, cfg: SelfModConfig):
    """Per-token (q, k, v, η, log α) of one chunk from the generators' chunk-start weights (stacked, leading axis)."""
    out = jax.vmap(lambda w_: fast_mlp.forward(w_, xs["x"], residual=True, activation=cfg.activation))(w)
    return _per_token(out, xs, reduction, index, cfg)


def _read_memory(w, queries, cfg: SelfModConfig):
    return fast_mlp.forward(jax.tree.map(lambda a: a[0], w), queries, residual=True, activation=cfg.activation)


def _generator_index(cfg: SelfModConfig) -> dict:
    return {name: i for i, name in enumerate(generator_names(cfg))}


# ---- the steps of one sequence and head over one chunk (driver.py) -------------------------------------------------


def joint_chunk(state: tuple, chunk: dict, reduction: dict, cfg: SelfModConfig):
    """Equal chunk sizes: state (w, s) = every memory stacked (join_fast layout, generators then M_memory), chunk the
    streams {'x', static ones, optional 'update_mask'} [C, ...]; returns (the state at the chunk end, (y, keys,
    values) [C, d]). With static queries every memory's chunk-start read is one stacked forward pass (the generators
    read x, M_memory the queries); with adaptive_q the queries come from M_q first."""
    w, s = state
    index = _generator_index(cfg)
    n_gens = len(index)
    if "q" in index:
        generators = jax.tree.map(lambda a: a[:n_gens], w)
        queries, keys, values, eta, log_alpha = _generate(generators, chunk, reduction, index, cfg)
        y = _read_memory(jax.tree.map(lambda a: a[n_gens:], w), queries, cfg)
    else:
        inputs = jnp.stack([chunk["x"]] * n_gens + [l2_normalize(chunk["q"])])
        out = jax.vmap(lambda w_, x_: fast_mlp.forward(w_, x_, residual=True, activation=cfg.activation))(w, inputs)
        queries, keys, values, eta, log_alpha = _per_token(out, chunk, reduction, index, cfg)
        y = out[n_gens]
    onto_values = (False,) * n_gens + (cfg.memory_target == "value",)
    new = _update_stack(w, s, keys, values, eta, log_alpha, cfg, cfg.chunk_size, onto_values)
    return new, (y, keys, values)


def generator_chunk(state: tuple, chunk: dict, reduction: dict, cfg: SelfModConfig):
    """Unequal chunk sizes, first pass: state (w, s) = the generators stacked, chunk the streams [aux_chunk_size, ...];
    returns (the state at the chunk end, the per-token (q, k, v, η, log α))."""
    w, s = state
    per_token = _generate(w, chunk, reduction, _generator_index(cfg), cfg)
    onto_values = (False,) * len(generator_names(cfg))
    return _update_stack(w, s, *per_token[1:], cfg, cfg.aux_chunk_size, onto_values), per_token


def memory_chunk(state: tuple, per_token: tuple, cfg: SelfModConfig):
    """Unequal chunk sizes, second pass: state (w, s) = M_memory (a stack of one), per_token (q, k, v, η, log α)
    [chunk_size, ...] from generator_chunk; returns (the state at the chunk end, y [C, d])."""
    w, s = state
    queries, keys, values, eta, log_alpha = per_token
    y = _read_memory(w, queries, cfg)
    onto_values = (cfg.memory_target == "value",)
    return _update_stack(w, s, keys, values, eta, log_alpha, cfg, cfg.chunk_size, onto_values), y


# ---- one sequence, one head ----------------------------------------------------------------------------------------


def join_fast(fast: dict, axis: int = 0) -> dict:
    """{'gen', 'memory', 'gen_s', 'memory_s'} -> {'w': generators then M_memory, 's': their momenta}, stacked along the
    memories' axis (0 for one sequence and head, 1 for the mixer's [H, n, ...] initial weights)."""
    cat = lambda a, b: jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=axis), a, b)
    joined = {"w": cat(fast["gen"], fast["memory"])}
    if "gen_s" in fast:
        joined["s"] = cat(fast["gen_s"], fast["memory_s"])
    return joined


def split_fast(joined: dict, n_gens: int) -> dict:
    """Inverse of join_fast along axis 0 (one sequence and head)."""
    part = lambda tree, sl: jax.tree.map(lambda a: a[sl], tree)
    fast = {"gen": part(joined["w"], slice(n_gens)), "memory": part(joined["w"], slice(n_gens, None))}
    if "s" in joined:
        fast.update(gen_s=part(joined["s"], slice(n_gens)), memory_s=part(joined["s"], slice(n_gens, None)))
    return fast


def joint_sequence(streams, joined, reduction, cfg: SelfModConfig):
    """Equal chunk sizes: the generators and M_memory update on the same chunks from the same (k, v, η, α), so one
    scan of joint_chunk carries all of them as one stack (join_fast layout) and they take their DGD step together.
    Returns ((y, keys, values) [T, d], new joined)."""
    step = functools.partial(joint_chunk, reduction=reduction, cfg=cfg)
    start = (joined["w"], joined.get("s", {}))
    (w, s), outputs = scan_sequence(step, start, streams, cfg.chunk_size, remat_group=cfg.remat_group)
    return outputs, ({"w": w, "s": s} if cfg.momentum else {"w": w})


def self_modifying_sequence(streams, fast, reduction, cfg: SelfModConfig):
    """One sequence, one head. streams: {'x', and the static ones of static_stream_names}: [T, d]; fast: {'gen':
    stacked generators, 'memory': stacked (1) M_memory, 'gen_s'/'memory_s': momenta}. Returns ((y, keys, values)
    [T, d], new fast).

    When runs_jointly(cfg) this is joint_sequence on the joined stack (the mixer keeps its state in that layout);
    otherwise the generators scan over their chunks first (generator_chunk), then M_memory over its own
    (memory_chunk).
    """
    if runs_jointly(cfg):
        outputs, joined = joint_sequence(streams, join_fast(fast), reduction, cfg)
        return outputs, split_fast(joined, len(generator_names(cfg)))
    (gen_w, gen_s), per_token = generator_sequence(streams, fast["gen"], fast.get("gen_s", {}), reduction, cfg)
    memory_step = functools.partial(memory_chunk, cfg=cfg)
    start_memory = (fast["memory"], fast.get("memory_s", {}))
    (mem_w, mem_s), y = scan_sequence(memory_step, start_memory, per_token, cfg.chunk_size, remat_group=cfg.remat_group)
    new_fast = {"gen": gen_w, "memory": mem_w}
    if cfg.momentum:
        new_fast.update(gen_s=gen_s, memory_s=mem_s)
    return (y, per_token[1], per_token[2]), new_fast


def generator_sequence(streams, gen: dict, gen_s: dict, reduction, cfg: SelfModConfig):
    """The generators over one sequence and head (generator_chunk scanned over aux_chunk_size chunks): returns
    ((end weights, end momenta), per-token (q, k, v, η, log α))."""
    step = functools.partial(generator_chunk, reduction=reduction, cfg=cfg)
    return scan_sequence(step, (gen, gen_s), streams, cfg.aux_chunk_size, remat_group=cfg.remat_group)


# ---- a batch of heads, state by memory name --------------------------------------------------------------------------


def self_modifying_titans(
    x: jax.Array, q: jax.Array | None, state: dict, reduction: dict, cfg: SelfModConfig, *, k=None, v=None
) -> tuple[jax.Array, dict, jax.Array, jax.Array]:
    """Self-modifying Titans over a batch; returns (y [B,H,T,d], new state, keys [B,H,T,d], values [B,H,T,d]).

    x: [B, H, T, d] the block input already split into heads (after conv/projection).
    q: [B, H, T, d] static queries (x W_q) when cfg.adaptive_q is False; must be None when it is True.
    k, v: [B, H, T, d] static keys / values, given exactly when cfg.adaptive_k / cfg.adaptive_v is False.
    state: {'weights': {□: {'w_in': [B,H,d,h], 'w_out': [B,H,h,d]}, with memory_depth 1 'memory': {'w': [B,H,d,d]}},
      'momentum': same (only with momentum)}.
    reduction: outer parameters of A3, {'eta_w': [H, d], 'eta_b': [H], 'alpha_w': [H, d], 'alpha_b': [H]}
      (alpha_* only with weight_decay; set alpha_b large, e.g. 4-6, so that α ≈ 1 at initialisation).
    The returned keys are the ℓ2-normalised keys and the values the values every memory regressed on (CMS `local` uses
    them). T need not be a multiple of either chunk size (a trailing partial chunk is a chunk of its own).
    """
    if x.ndim != 4:
        raise ValueError(f"x must be [B, H, T, d], got shape {x.shape}")
    given = {"q": q, "k": k, "v": v}
    static = static_stream_names(cfg)[1:]
    for name, stream in given.items():
        switch = f"adaptive_{name}"
        if name not in static and stream is not None:
            raise ValueError(f"{switch}=True generates {name} from M_{name}: pass {name}=None")
        if name in static and (stream is None or stream.shape != x.shape):
            shape = None if stream is None else stream.shape
            raise ValueError(f"{switch}=False needs a static {name} with x's shape {x.shape}, got {shape}")
    _check_names(state["weights"], cfg)
    if cfg.momentum and "momentum" not in state:
        raise ValueError("momentum=True needs state['momentum'] (see init_self_modifying_state)")
    gens = generator_names(cfg)
    dtype = jnp.dtype(cfg.accum_dtype)
    cast = lambda tree: jax.tree.map(lambda a: a.astype(dtype), tree)
    stack = lambda tree, names: jax.tree.map(lambda *a: jnp.stack(a, axis=2), *[cast(tree[n]) for n in names])
    fast = {"gen": stack(state["weights"], gens), "memory": stack(state["weights"], ("memory",))}
    if cfg.momentum:
        fast.update(gen_s=stack(state["momentum"], gens), memory_s=stack(state["momentum"], ("memory",)))
    streams = {"x": cast(x), **{name: cast(given[name]) for name in static}}
    per_head = jax.vmap(lambda s, f, r: self_modifying_sequence(s, f, r, cfg))
    (y, keys, values), end = jax.vmap(per_head, in_axes=(0, 0, None))(streams, fast, cast(reduction))
    unstack = lambda tree, names: {n: jax.tree.map(lambda a, i=i: a[:, :, i], tree) for i, n in enumerate(names)}
    new_state = {"weights": {**unstack(end["gen"], gens), **unstack(end["memory"], ("memory",))}}
    if cfg.momentum:
        new_state["momentum"] = {**unstack(end["gen_s"], gens), **unstack(end["memory_s"], ("memory",))}
    return y.astype(x.dtype), new_state, keys.astype(x.dtype), values.astype(x.dtype)


# ---- per-token reference (a lax.scan over tokens; tests and `python -m hope_jax.bench inner`) ------------------------


def self_modifying_reference(x, q_static, state, reduction, cfg: SelfModConfig, *, k=None, v=None):
    """Per-token self-modifying Titans; same API as self_modifying_titans (k, v: the static streams of the
    'w/o adaptive k/v' switches)."""
    gens = generator_names(cfg)
    names = updated_names(cfg)
    fwd = lambda w, u: fast_mlp.forward(w, u[None], residual=True, activation=cfg.activation)[0]
    unit = lambda u: u / jnp.sqrt(jnp.sum(u**2) + 1e-6)

    def one_sequence(x, q_static, k_static, v_static, weights, momentum, reduction):
        def step(carry, inputs):
            w, s, snapshot = carry
            t, x_t, q_t, k_static_t, v_static_t = inputs
            snapshot = {
                name: chunk_start_snapshot(
                    t,
                    cfg.chunk_size if name == "memory" else cfg.aux_chunk_size,
                    w[name],
                    snapshot[name],
                )
                for name in names
            }
            out = {name: fwd(snapshot[name], x_t) for name in gens}
            k_t = unit(out["k"] if cfg.adaptive_k else k_static_t)
            v_t = out["v"] if cfg.adaptive_v else v_static_t
            v_t = unit(v_t) if cfg.normalize_values else v_t
            q_t = unit(out["q"] if cfg.adaptive_q else q_t)
            eta_t = cfg.eta_max * jax.nn.sigmoid(out["eta"] @ reduction["eta_w"] + reduction["eta_b"])
            alpha_t = (
                jax.nn.sigmoid(out["alpha"] @ reduction["alpha_w"] + reduction["alpha_b"])
                if cfg.weight_decay
                else jnp.ones(())
            )
            y_t = fwd(snapshot["memory"], q_t)
            new_w, new_s = {}, {}
            for name in names:
                onto_values = name == "memory" and cfg.memory_target == "value"
                target = v_t if onto_values else fwd(snapshot[name], v_t)
                new_w[name], new_s[name] = dgd_token_step(
                    w[name], s[name] if s is not None else None, snapshot[name], k_t, target, eta_t, alpha_t,
                    cfg.dgd_rule(), chunk_size=cfg.chunk_size if name == "memory" else cfg.aux_chunk_size,
                )  # fmt: skip
            return (new_w, new_s if s is not None else None, snapshot), (y_t, k_t, v_t)

        steps = jnp.arange(x.shape[0])
        (w, s, _), (y, k, v) = lax.scan(step, (weights, momentum, weights), (steps, x, q_static, k_static, v_static))
        return y, w, s, k, v

    momentum = state.get("momentum") if cfg.momentum else None
    static = [jnp.zeros_like(x) if stream is None else stream for stream in (q_static, k, v)]
    per_head = jax.vmap(one_sequence, in_axes=(0, 0, 0, 0, 0, 0, 0))
    batched = jax.vmap(per_head, in_axes=(0, 0, 0, 0, 0, 0, None))
    y, w, s, keys, values = batched(x, *static, state["weights"], momentum, reduction)
    new_state = {"weights": w, "momentum": s} if cfg.momentum else {"weights": w}
    return y, new_state, keys, values
