"""One chunk of Delta Gradient Descent on every weight matrix of a fast-weight memory (HOPE_SPEC E19, E23–E28).

Per weight matrix W (row convention) with layer input x_t (keys for a first layer, hidden activations at the
chunk-start weights for a second layer — DESIGN D5 / A4 first reading), x̂_t = x_t/‖x_t‖ and g_t the output-side
gradient of ½‖f(k_t) − target_t‖² at the chunk-start weights W_s, rescaled so that x̂_tᵀ g_t is the true gradient:

    DGD (default):  W_t = (a_t I − η'_t x̂_tᵀ x̂_t) W_{t−1} − λ_t x̂_tᵀ g_t,      η'_t = η_t / (1 + η_t ‖x̂_t‖²)
    without DGD:    W_t = a_t W_{t−1} − λ_t x̂_tᵀ g_t                              (plain GD with decay)
    gradient step:  λ_t = η_t / (1 + C·η_t·h_t), h_t the token's curvature bound in W (chunking.chunk_step_size:
                    the C gradients taken at W_s stay one stable mini-batch step); normalized_step=False: λ = η'
                    (E19 per token), with DGD or without: 'w/o DGD' drops the −η' x̂ᵀx̂ W term and nothing else
                    (a step of η would be 1.5× larger at η = 0.5 and confound the ablation)
    momentum (A5):  the step goes through S_t = ε S_{t−1} − (step) and W_t = (transition) W_{t−1} + S_t
    A15 flag:       g_t − x̂_t W_s in place of g_t (the gated-delta form: the −η' x̂ᵀx̂ W term appears once, not twice)
    A4 alternative: dgd_layers='first' keeps the x̂x̂ᵀ term on first layers only (a_t alone on the others).

Solved per chunk by recurrence.chunk_end_state (Appendix B), never token by token; chunks longer than SOLVE_BLOCK
(a CMS mid level, C = 512) as consecutive sub-chunks (recurrence.chunk_end_state_in_blocks), which is exact.
"""

import dataclasses
import math

import jax
import jax.numpy as jnp
import numpy as np

from hope_jax.memory import fast_mlp
from hope_jax.memory.chunking import STEP_BOUNDS, chunk_step_size, gram_step_size, l2_normalize_scale, mm
from hope_jax.memory.recurrence import SOLVE_BLOCK, chunk_coefficients, chunk_end_state, chunk_end_state_in_blocks

FIRST_LAYERS = frozenset({"w", "w_in", "w_gate", "w_up"})
DGD_LAYER_CHOICES = ("all", "first")


@dataclasses.dataclass(frozen=True)
class DGDRule:
    """How a memory's weight matrices learn inside a chunk (module docstring); static and hashable.

    residual / activation: the memory's form (fast_mlp.forward). dgd False: plain GD with decay ('w/o DGD').
    dgd_layers (A4): 'all' or 'first'. gated_delta: the A15 form. momentum_decay: ε of the momentum buffer (used when
    a momentum is given). truncate_bptt: recurrence.chunk_end_state's speed switch (DESIGN D4).
    normalized_step: the gradient term of each matrix steps by η_t / (1 + C·η_t·h_t), h_t its curvature bound
    (chunking.chunk_step_size); the DGD transition keeps η'_t. False: η'_t for both (E19 per token, which a chunk of
    C gradients at one state overshoots once C·η' exceeds ~2).
    step_bound: how the normalised step bounds the chunk: 'chunk' (C·h_t, the worst case of C aligned inputs) or
    'gram' (chunking.gram_step_size: the chunk's own Gram matrix; the reads here use the chunk-start weights).
    """

    residual: bool
    activation: str = "silu"
    dgd: bool = True
    dgd_layers: str = "all"
    gated_delta: bool = False
    momentum_decay: float = 0.9
    truncate_bptt: bool = False
    normalized_step: bool = True
    step_bound: str = "chunk"

    def __post_init__(self):
        if self.step_bound not in STEP_BOUNDS:
            raise ValueError(f"step_bound must be one of {STEP_BOUNDS}, got {self.step_bound!r}")
        if self.dgd_layers not in DGD_LAYER_CHOICES:
            raise ValueError(f"dgd_layers must be one of {DGD_LAYER_CHOICES}, got {self.dgd_layers!r}")


def dgd_chunk_update(
    weights: dict,
    momentum: dict | None,
    keys: jax.Array,
    targets: jax.Array,
    lr: jax.Array,
    retention: jax.Array | None,
    rule: DGDRule,
    *,
    log_retention: jax.Array | None = None,
    key_parts: dict | None = None,
    chunk_size: int | None = None,
) -> tuple[dict, dict | None]:
    """End-of-chunk (weights, momentum) after the chunk's tokens; keys [C, d_in], targets [C, d_out], lr/retention [C].

    `targets` are the (self-generated) regression values, constants of the inner gradient by construction.
    momentum None = momentum off. Give exactly one of `retention` and `log_retention`: a learned gate should come as
    its log computed in log space (e.g. jax.nn.log_sigmoid of the logit), because log(sigmoid(z)) underflows to
    log(0) = −inf for z ≲ −104 in float32 and its gradient 1/α is then inf × 0 = NaN in the decay products.
    key_parts: fast_mlp.forward_parts(weights, keys) when the caller computed it with other reads of the same weights.
    chunk_size: C of the normalised step (default the chunk's length: a partial chunk passes its memory's C).
    """
    residual, activation = rule.residual, rule.activation
    if (retention is None) == (log_retention is None):
        raise ValueError("give exactly one of retention and log_retention")
    if log_retention is None:
        log_retention = jnp.log(retention)
    if key_parts is None:
        key_parts = fast_mlp.forward_parts(weights, keys, residual=residual, activation=activation)
    factors = fast_mlp.grad_factors_and_products(
        weights, keys, targets, residual=residual, activation=activation, key_parts=key_parts
    )
    normalized_step, gated_delta = rule.normalized_step, rule.gated_delta
    curvature = fast_mlp.curvature_bounds(weights, keys, key_parts) if normalized_step and not gated_delta else None
    chunk_size = keys.shape[0] if chunk_size is None else chunk_size
    log_momentum = None
    if momentum is not None:
        log_momentum = jnp.full_like(lr, math.log(rule.momentum_decay) if rule.momentum_decay > 0 else -jnp.inf)
    # One solve per chunk up to SOLVE_BLOCK tokens (coefficients shared by every weight matrix); longer chunks run
    # the same recurrence in sub-chunks (each group computes its sub-chunks' coefficients).
    coeffs = chunk_coefficients(log_retention, log_momentum) if keys.shape[0] <= SOLVE_BLOCK else None
    new_weights, new_momentum = {}, {}
    for names in _shared_input_groups(factors):
        # Matrices reading the same input (SwiGLU's w_gate and w_up both read the keys) share x̂, the Gram matrix, the
        # transition and its triangular solve; the recurrence is column-separable, so they are solved as one matrix
        # [d_in, Σ d_out] (two solves instead of three per CMS level chunk).
        join = lambda parts: parts[0] if len(parts) == 1 else jnp.concatenate(parts, axis=-1)
        x = factors[names[0]][0]
        x_w = join([factors[name][2] for name in names])
        w0 = join([weights[name] for name in names])
        inv_norm = l2_normalize_scale(x)
        x_hat = x * inv_norm
        # DGD's transition and η' see the unit-norm input x̂; the gradient term x̂ᵀ(‖x‖ g) = xᵀ g is unchanged.
        # Without DGD the step stays η' (only the transition term goes), so the ablation changes DGD alone.
        transition_lr = lr / (1.0 + lr * jnp.sum(x_hat * x_hat, axis=-1))
        beta = transition_lr if rule.dgd and (rule.dgd_layers == "all" or names[0] in FIRST_LAYERS) else None

        steps = []
        for name in names:
            g = factors[name][1] / inv_norm
            if gated_delta:  # A15: the −η' x̂ᵀx̂ W term once (in the transition); what is left writes targets only,
                # and a write that does not read W_s cannot overshoot, so it keeps η'.
                steps.append(-transition_lr[:, None] * (g - mm(x_hat, weights[name])))
            else:
                step_lr = transition_lr
                if normalized_step and rule.step_bound == "gram":
                    step_lr = gram_step_size(lr, curvature[name], x)
                elif normalized_step:
                    step_lr = chunk_step_size(lr, curvature[name], chunk_size)
                steps.append(-step_lr[:, None] * g)
        step = join(steps)
        s0 = None if momentum is None else join([momentum[name] for name in names])
        if coeffs is None:
            w_end, s_end = chunk_end_state_in_blocks(
                w0, s0, x_hat, step, log_retention, log_momentum, beta=beta, truncate_bptt=rule.truncate_bptt
            )
        else:
            w_end, s_end = chunk_end_state(
                w0, s0, x_hat, step, coeffs, beta=beta, truncate_bptt=rule.truncate_bptt,
                x_w0=x_w * inv_norm,  # x̂ W_s = (x W_s)/‖x‖, already computed by the forward pass
            )  # fmt: skip
        offsets = np.cumsum([weights[name].shape[-1] for name in names])[:-1].tolist()
        new_weights.update(zip(names, jnp.split(w_end, offsets, axis=-1), strict=True))
        if momentum is not None:
            new_momentum.update(zip(names, jnp.split(s_end, offsets, axis=-1), strict=True))
    new_weights = {name: new_weights[name] for name in weights}
    if momentum is None:
        return new_weights, None
    return new_weights, {name: new_momentum[name] for name in weights}


def _shared_input_groups(factors: dict) -> list[tuple[str, ...]]:
    """Weight names grouped by the layer input they read (the same array object) and by whether they are first
    layers (dgd_layers='first' treats the two kinds differently), in the factors' order."""
    groups: dict[tuple[int, bool], list[str]] = {}
    for name, (x, _, _) in factors.items():
        groups.setdefault((id(x), name in FIRST_LAYERS), []).append(name)
    return [tuple(names) for names in groups.values()]


# ---- per-token reference (token by token, explicit matrices and jax.grad; tests and `python -m hope_jax.bench inner`)


def chunk_start_snapshot(t, chunk_size, current, snapshot):
    """The chunk-start snapshot: replaced by the current state when token t opens a chunk."""
    opens = (t % chunk_size) == 0
    return jax.tree.map(lambda c, s: jnp.where(opens, c, s), current, snapshot)


def token_layer_inputs(snapshot: dict, key: jax.Array, *, residual: bool, activation: str) -> dict:
    """Each weight matrix's input for one token at the chunk-start weights (the vectors the DGD transition uses)."""
    kind = fast_mlp.memory_kind(snapshot)
    if kind == "linear":
        return {"w": key}
    if kind == "swiglu":
        hidden = jax.nn.silu(key @ snapshot["w_gate"]) * (key @ snapshot["w_up"])
        return {"w_gate": key, "w_up": key, "w_down": hidden}
    return {"w_in": key, "w_out": fast_mlp.activation_fn(activation)(key @ snapshot["w_in"])}


def token_curvature_bounds(snapshot: dict, key: jax.Array, *, residual: bool, activation: str) -> dict:
    """‖x‖²·‖J‖²_F per weight matrix at the snapshot, J the Jacobian (by autodiff) from the matrix's output to the
    memory's output; a last layer's J is the identity, whose spectral norm 1 is taken exactly."""
    kind = fast_mlp.memory_kind(snapshot)
    inputs = token_layer_inputs(snapshot, key, residual=residual, activation=activation)
    bounds = {name: jnp.sum(inputs[name] ** 2) for name in snapshot}
    gain = lambda read, at: jnp.sum(jnp.square(jax.jacobian(read)(at)))
    if kind == "mlp":
        act = fast_mlp.activation_fn(activation)
        read = lambda z: act(z) @ snapshot["w_out"] + (key if residual else 0.0)
        bounds["w_in"] = bounds["w_in"] * gain(read, key @ snapshot["w_in"])
    elif kind == "swiglu":
        gate_pre, up = key @ snapshot["w_gate"], key @ snapshot["w_up"]
        bounds["w_gate"] = bounds["w_gate"] * gain(lambda z: (jax.nn.silu(z) * up) @ snapshot["w_down"], gate_pre)
        bounds["w_up"] = bounds["w_up"] * gain(lambda u: (jax.nn.silu(gate_pre) * u) @ snapshot["w_down"], up)
    return bounds


def dgd_token_step(w, s, snapshot, key, target, lr, retention, rule: DGDRule, *, chunk_size: int):
    """One token of DGD on every weight matrix of a memory (E19, E28 with the rule's A4/A5/A15 options), explicitly;
    the normalised step is lr / (1 + C·lr·h), h = token_curvature_bounds (not with gated_delta). step_bound 'gram' has
    no per-token form (it reads the whole chunk): the reference takes 'chunk'."""
    residual, activation, gated_delta = rule.residual, rule.activation, rule.gated_delta
    grad = jax.grad(fast_mlp.inner_loss)(snapshot, key, target, residual=residual, activation=activation)
    inputs = token_layer_inputs(snapshot, key, residual=residual, activation=activation)
    curvature = token_curvature_bounds(snapshot, key, residual=residual, activation=activation)
    first_layers = {"w", "w_in", "w_gate", "w_up"}
    new_w, new_s = {}, {}
    for name in w:
        x_hat = inputs[name] / jnp.sqrt(jnp.sum(inputs[name] ** 2) + 1e-6)
        g = grad[name]
        if gated_delta:
            g = g - jnp.outer(x_hat, x_hat @ snapshot[name])
        transition = retention * jnp.eye(x_hat.shape[0])
        beta = lr / (1.0 + lr * jnp.sum(x_hat**2))
        step_size = beta  # η' with or without DGD: 'w/o DGD' removes the transition term only
        if rule.dgd and (rule.dgd_layers == "all" or name in first_layers):
            transition = transition - beta * jnp.outer(x_hat, x_hat)
        if rule.normalized_step and not gated_delta:
            step_size = lr / (1.0 + chunk_size * lr * curvature[name])
        if s is None:
            new_w[name] = transition @ w[name] - step_size * g
        else:
            new_s[name] = rule.momentum_decay * s[name] - step_size * g
            new_w[name] = transition @ w[name] + new_s[name]
    return new_w, (new_s if s is not None else None)
