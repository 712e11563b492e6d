"""Fast-weight memory modules (one sequence, one head) and the closed-form per-token gradients of the inner loss.

Three kinds, told apart by the keys of the weight dict (row convention, `y = x @ W`):
- linear   {'w': [d_in, d_out]}                          y = x W
- mlp      {'w_in': [d_in, h], 'w_out': [h, d_out]}       y = x + σ(x W_in) W_out   (HOPE_SPEC E7; residual optional)
- swiglu   {'w_gate', 'w_up': [d_in, h], 'w_down': [h, d_out]}  y = (silu(x W_gate) ⊙ x W_up) W_down

Inner loss (all memories of this package): ℓ_t = ½‖f(k_t) − target_t‖² (the ½ form of HOPE_SPEC E3, so the
gradients below carry no factor 2 and θ / η mean the step on the ½-loss). Every per-token gradient is rank one per
weight matrix: ∂ℓ_t/∂W = X[t]ᵀ G[t] with X the layer's input and G the gradient at the layer's output (E8–E9).
"""

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import numpy as np

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


def forward_parts(weights: dict, x: jax.Array, *, residual: bool = True, activation: str = "silu") -> dict:
    """The memory's read of rows x [n, d_in] with every intermediate the inner gradient needs: {'out': [n, d_out]}
    plus, per kind, 'pre', 'hidden', 'slope', 'product' = hidden @ w_out (mlp) or 'gate_pre', 'up', 'gate',
    'gate_slope', 'hidden' (swiglu)."""
    kind = memory_kind(weights)
    if kind == "linear":
        return {"out": mm(x, weights["w"])}
    if kind == "swiglu":
        gate_pre = mm(x, weights["w_gate"])
        up = mm(x, weights["w_up"])
        gate, gate_slope = activation_with_derivative("silu", gate_pre)
        hidden = gate * up
        return {"gate_pre": gate_pre, "up": up, "gate": gate, "gate_slope": gate_slope, "hidden": hidden,
                "out": mm(hidden, weights["w_down"])}  # fmt: skip
    pre = mm(x, weights["w_in"])
    hidden, slope = activation_with_derivative(activation, pre)
    product = mm(hidden, weights["w_out"])
    return {
        "pre": pre,
        "hidden": hidden,
        "slope": slope,
        "product": product,
        "out": x + product if residual else product,
    }


# Above this many rows forward_parts_of_blocks reads block by block: the per-op cost it saves is small next to the
# arithmetic of long chunks (a CMS period of 512), and one pass would hold every block's intermediates at once (a
# decode step's update branch grew by 1.1 MiB at period 512).
STACKED_ROWS_MAX = 256


def forward_parts_of_blocks(
    weights: dict, blocks: Sequence[jax.Array], *, residual: bool = True, activation: str = "silu"
) -> list[dict]:
    """forward_parts of several row blocks [n_i, d_in] at the same weights, computed as ONE pass over their stacked
    rows and split back: one matmul per weight matrix instead of one per block (the chunk updates read the same
    weights on their keys, values and inputs; on small chunks the per-op cost, not the arithmetic, dominates).
    More than STACKED_ROWS_MAX rows in all: one pass per block, same results."""
    if sum(block.shape[0] for block in blocks) > STACKED_ROWS_MAX:
        return [forward_parts(weights, block, residual=residual, activation=activation) for block in blocks]
    parts = forward_parts(weights, jnp.concatenate(blocks, axis=0), residual=residual, activation=activation)
    offsets = np.cumsum([block.shape[0] for block in blocks])[:-1].tolist()
    split = {name: jnp.split(value, offsets, axis=0) for name, value in parts.items()}
    return [{name: pieces[i] for name, pieces in split.items()} for i in range(len(blocks))]


def forward(weights: dict, x: jax.Array, *, residual: bool = True, activation: str = "silu") -> jax.Array:
    """Reads the memory: rows x [n, d_in] -> [n, d_out]."""
    return forward_parts(weights, x, residual=residual, activation=activation)["out"]


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
    weights: dict,
    keys: jax.Array,
    targets: jax.Array,
    *,
    residual: bool = True,
    activation: str = "silu",
    key_parts: dict | None = None,
) -> dict[str, tuple[jax.Array, jax.Array, jax.Array]]:
    """grad_factors plus each layer's product X @ weights[name] [n, d_out_W], which the forward pass computes anyway
    and DGD's transition needs again (dgd.py). key_parts: forward_parts(weights, keys) when the caller has it."""
    kind = memory_kind(weights)
    parts = forward_parts(weights, keys, residual=residual, activation=activation) if key_parts is None else key_parts
    err = parts["out"] - targets
    if kind == "linear":
        return {"w": (keys, err, parts["out"])}
    if kind == "swiglu":
        err_hidden = mm(err, weights["w_down"].T)
        return {
            "w_gate": (keys, err_hidden * parts["up"] * parts["gate_slope"], parts["gate_pre"]),
            "w_up": (keys, err_hidden * parts["gate"], parts["up"]),
            "w_down": (parts["hidden"], err, parts["out"]),
        }
    return {
        "w_in": (keys, mm(err, weights["w_out"].T) * parts["slope"], parts["pre"]),
        "w_out": (parts["hidden"], err, parts["product"]),
    }


def curvature_bounds(weights: dict, keys: jax.Array, parts: dict) -> dict[str, jax.Array]:
    """{name: [n]} per-token bounds on the Gauss–Newton curvature of ½‖f(k_t) − target‖² in weights[name]:
    ‖x_t‖² · ‖J_t‖_F², x_t the matrix's input and J_t the Jacobian from its output to the memory's output (1 for a
    last layer; diag(σ'(z_t)) W_out for a first layer; the SwiGLU gates likewise through W_down). The chunked inner
    steps divide by them (chunking.chunk_step_size). parts: forward_parts(weights, keys)."""
    kind = memory_kind(weights)
    energy = lambda x: jnp.sum(x * x, axis=-1)
    if kind == "linear":
        return {"w": energy(keys)}
    if kind == "swiglu":
        down_rows = jnp.sum(jnp.square(weights["w_down"]), axis=-1)  # ‖row j of W_down‖²
        gain = lambda factor: mm(jnp.square(factor), down_rows[:, None])[:, 0]
        return {
            "w_gate": energy(keys) * gain(parts["up"] * parts["gate_slope"]),
            "w_up": energy(keys) * gain(parts["gate"]),
            "w_down": energy(parts["hidden"]),
        }
    out_rows = jnp.sum(jnp.square(weights["w_out"]), axis=-1)
    return {
        "w_in": energy(keys) * mm(jnp.square(parts["slope"]), out_rows[:, None])[:, 0],
        "w_out": energy(parts["hidden"]),
    }


def inner_loss(weights: dict, key: jax.Array, target: jax.Array, *, residual: bool = True, activation: str = "silu"):
    """½‖f(key) − target‖² for one token (the per-token references differentiate this with jax.grad)."""
    pred = forward(weights, key[None], residual=residual, activation=activation)[0]
    return 0.5 * jnp.sum((pred - target) ** 2)
