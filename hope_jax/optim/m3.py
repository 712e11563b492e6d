"""M3, Multi-scale Momentum Muon (HOPE_SPEC §8 Algorithm 1, NL-A §7.2), for matrix leaves.

Per step t (1-based) with slow period f, window k holding steps kf+1 .. (k+1)f:
  first step of window k:  M2 <- M2 + β3·S_{k-1};  O2 <- NS_T(M2);  S <- 0   (S_{-1} = 0: O2 = 0 in window 0)
  every step:              S <- S + g;  M1 <- M1 + β1 g;  V <- V + β2 g²;  O1 <- NS_T(M1)
                           direction = (O1 + α O2) / (sqrt(V) + ε)     (the lr and the sign come later)
S_{k-1} is the sum of exactly the f gradients of the previous window (the printed sum has f+1 terms, an
off-by-one, as in CMS). 'paper' mode is the literal algorithm: plain sums, no decay, V unbounded, no bias
correction (A10). 'ema' mode: M1 <- β1 M1 + (1-β1) g, V <- β2 V + (1-β2) g² bias-corrected by 1-β2^t,
M2 <- β3 M2 + (1-β3) S.
NS_T orthogonalises each leaf as the matrix (or stack of matrices) its `MatrixLayout` says it is, as Muon does.
"""

import functools
from collections.abc import Mapping, Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp
import optax

from hope_jax.optim.matrix_layout import MatrixLayout, map_with_layouts, orthogonalise
from hope_jax.optim.newton_schulz import newton_schulz


class M3State(NamedTuple):
    count: jax.Array  # steps taken so far
    fast_momentum: optax.Updates  # M1
    second_moment: optax.Updates  # V
    slow_momentum: optax.Updates  # M2
    slow_direction: optax.Updates  # O2, held fixed inside a window
    window_sum: optax.Updates  # S, the gradients summed over the current window


def scale_by_m3(
    *,
    layouts: Mapping[str, MatrixLayout],
    mode: str,
    beta1: float,
    beta2: float,
    beta3: float,
    alpha: float,
    period: int,
    eps: float,
    ns_steps: int,
    ns_coeffs: Sequence[float],
    ns_eps: float,
) -> optax.GradientTransformation:
    """`layouts` maps each leaf's path string (labels.path_string) to its matrix layout."""
    if mode not in ("paper", "ema"):
        raise ValueError(f"unknown m3 mode {mode!r}")
    ns_matrix = functools.partial(newton_schulz, steps=ns_steps, coeffs=ns_coeffs, eps=ns_eps)
    ns = lambda tree: map_with_layouts(lambda layout, x: orthogonalise(x, layout, ns_matrix), layouts, tree)
    zeros = lambda tree: jax.tree.map(lambda p: jnp.zeros_like(p, jnp.float32), tree)

    def accumulate(old, new, beta):
        return old + beta * new if mode == "paper" else beta * old + (1.0 - beta) * new

    def init_fn(params):
        return M3State(
            count=jnp.zeros([], jnp.int32),
            fast_momentum=zeros(params),
            second_moment=zeros(params),
            slow_momentum=zeros(params),
            slow_direction=zeros(params),
            window_sum=zeros(params),
        )

    def update_fn(updates, state, params=None):
        del params
        grads = jax.tree.map(lambda g: g.astype(jnp.float32), updates)

        def open_window(operand):
            slow_momentum, _, window_sum = operand
            new_slow = jax.tree.map(lambda m2, s: accumulate(m2, s, beta3), slow_momentum, window_sum)
            return new_slow, ns(new_slow), jax.tree.map(jnp.zeros_like, window_sum)

        # NS on M2 runs once per window, not every step.
        slow_momentum, slow_direction, window_sum = jax.lax.cond(
            state.count % period == 0,
            open_window,
            lambda operand: operand,
            (state.slow_momentum, state.slow_direction, state.window_sum),
        )
        window_sum = jax.tree.map(jnp.add, window_sum, grads)
        fast_momentum = jax.tree.map(lambda m1, g: accumulate(m1, g, beta1), state.fast_momentum, grads)
        second_moment = jax.tree.map(lambda v, g: accumulate(v, g * g, beta2), state.second_moment, grads)
        count = state.count + 1
        v_correction = 1.0 if mode == "paper" else 1.0 - beta2 ** count.astype(jnp.float32)

        def direction(o1, o2, v, g):
            return ((o1 + alpha * o2) / (jnp.sqrt(v / v_correction) + eps)).astype(g.dtype)

        directions = jax.tree.map(direction, ns(fast_momentum), slow_direction, second_moment, updates)
        new_state = M3State(count, fast_momentum, second_moment, slow_momentum, slow_direction, window_sum)
        return directions, new_state

    return optax.GradientTransformation(init_fn, update_fn)
