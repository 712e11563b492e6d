"""Fast-weight memory modules (one sequence, one head) and the closed-form per-token gradients of the inner loss.

Three kinds, told apart by the keys of the weight dict (row convention, `y = x @ W`):
- linear   {'w': [d_in, d_out]}                          y = x W
- mlp      {'w_in': [d_in, h], 'w_out': [h, d_out]}       y = x + σ(x W_in) W_out   (HOPE_SPEC E7; residual optional)
- swiglu   {'w_gate', 'w_up': [d_in, h], 'w_down': [h, d_out]}  y = (silu(x W_gate) ⊙ x W_up) W_down

Inner loss (all memories of this package): ℓ_t = ½‖f(k_t) − target_t‖² (the ½ form of HOPE_SPEC E3, so the
gradients below carry no factor 2 and θ / η mean the step on the ½-loss). Every per-token gradient is rank one per
weight matrix: ∂ℓ_t/∂W = X[t]ᵀ G[t] with X the layer's input and G the gradient at the layer's output (E8–E9).
"""

from collections.abc import Callable

import jax
import jax.numpy as jnp

from hope_jax.memory.chunking import mm

ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    "silu": jax.nn.silu,
    "gelu": lambda z: jax.nn.gelu(z, approximate=False),
    "gelu_tanh": lambda z: jax.nn.gelu(z, approximate=True),
    "relu": jax.nn.relu,
    "tanh": jnp.tanh,
}

LINEAR_KEYS = frozenset({"w"})
MLP_KEYS = frozenset({"w_in", "w_out"})
SWIGLU_KEYS = frozenset({"w_gate", "w_up", "w_down"})


def memory_kind(weights: dict) -> str:
    """'linear', 'mlp' or 'swiglu' from the weight dict's keys (clear error otherwise)."""
    keys = frozenset(weights)
    for kind, expected in (("linear", LINEAR_KEYS), ("mlp", MLP_KEYS), ("swiglu", SWIGLU_KEYS)):
        if keys == expected:
            return kind
    raise ValueError(
        f"fast-weight dict has keys {sorted(keys)}; expected one of {sorted(LINEAR_KEYS)}, {sorted(MLP_KEYS)}, "
        f"{sorted(SWIGLU_KEYS)}"
    )


def activation_fn(name: str) -> Callable[[jax.Array], jax.Array]:
    if name not in ACTIVATIONS:
        raise ValueError(f"unknown activation {name!r}; choose one of {sorted(ACTIVATIONS)}")
    return ACTIVATIONS[name]


def activation_with_derivative(name: str, z: jax.Array) -> tuple[jax.Array, jax.Array]:
    """σ(z) and σ'(z) elementwise, in one forward-mode pass."""
    return jax.jvp(activation_fn(name), (z,), (jnp.ones_like(z),))


def forward(weights: dict, x: jax.Array, *, residual: bool = True, activation: str = "silu") -> jax.Array:
    """Reads the memory: rows x [n, d_in] -> [n, d_out]."""
    kind = memory_kind(weights)
    if kind == "linear":
        return mm(x, weights["w"])
    if kind == "swiglu":
        hidden = jax.nn.silu(mm(x, weights["w_gate"])) * mm(x, weights["w_up"])
        return mm(hidden, weights["w_down"])
    out = mm(activation_fn(activation)(mm(x, weights["w_in"])), weights["w_out"])
    return x + out if residual else out


def grad_factors(
    weights: dict, keys: jax.Array, targets: jax.Array, *, residual: bool = True, activation: str = "silu"
) -> dict[str, tuple[jax.Array, jax.Array]]:
    """Per-token rank-one gradients of ½‖f(k_t) − target_t‖² at `weights`: {name: (X [n, d_in_W], G [n, d_out_W])}.

    ∂ℓ_t/∂weights[name] = outer(X[t], G[t]). X is the layer's input (the keys for the first layer, the hidden
    activations at `weights` for the second), G the error back-propagated to the layer's output.
    """
    factors = grad_factors_and_products(weights, keys, targets, residual=residual, activation=activation)
    return {name: (x, g) for name, (x, g, _) in factors.items()}


def grad_factors_and_products(
    weights: dict, keys: jax.Array, targets: jax.Array, *, residual: bool = True, activation: str = "silu"
) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
    """grad_factors plus each layer's product X @ weights[name] [n, d_out_W], which the forward pass computes anyway
    and DGD's transition needs again (dgd.py)."""
    kind = memory_kind(weights)
    if kind == "linear":
        product = mm(keys, weights["w"])
        return {"w": (keys, product - targets, product)}
    if kind == "swiglu":
        gate_pre = mm(keys, weights["w_gate"])
        up = mm(keys, weights["w_up"])
        gate, gate_slope = activation_with_derivative("silu", gate_pre)
        hidden = gate * up
        pred = mm(hidden, weights["w_down"])
        err = pred - targets
        err_hidden = mm(err, weights["w_down"].T)
        return {
            "w_gate": (keys, err_hidden * up * gate_slope, gate_pre),
            "w_up": (keys, err_hidden * gate, up),
            "w_down": (hidden, err, pred),
        }
    pre = mm(keys, weights["w_in"])
    hidden, slope = activation_with_derivative(activation, pre)
    pred = mm(hidden, weights["w_out"])
    err = (keys + pred if residual else pred) - targets
    return {"w_in": (keys, mm(err, weights["w_out"].T) * slope, pre), "w_out": (hidden, err, pred)}


def inner_loss(weights: dict, key: jax.Array, target: jax.Array, *, residual: bool = True, activation: str = "silu"):
    """½‖f(key) − target‖² for one token (the per-token references differentiate this with jax.grad)."""
    pred = forward(weights, key[None], residual=residual, activation=activation)[0]
    return 0.5 * jnp.sum((pred - target) ** 2)
