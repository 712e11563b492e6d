"""Per-token float64 numpy references written from HOPE_SPEC's equations, for tests/test_paper_equations.py.

Nothing here imports hope_jax: the point is a second reading of the papers that shares no code (and no convention)
with the library or with its per-token references. Matrices are in the papers' column convention, M(k) = M k with
M [d_out, d_in] (the library stores W = Mᵀ and reads x @ W); the tests transpose at the boundary.

The rules, one token t at a time, s(t) the last token of the previous chunk (E27/E28, A1: the chunk-start state):

    η'_t = η_t / (1 + η_t ‖k_t‖²)                                         (E19, Sherman–Morrison of E18)
    E26:  M_t = M_{t−1}(α_t I − η'_t k_t k_tᵀ) − λ_t (M_s(t) k_t − v̂_t) k_tᵀ
    A15:  M_t = M_{t−1}(α_t I − η'_t k_t k_tᵀ) + η'_t v̂_t k_tᵀ            (the gated-delta form)
    A5:   the written term goes through S_t = ε S_{t−1} + (term), M_t = M_{t−1}(α_t I − η'_t k_t k_tᵀ) + S_t

λ_t is E19's η'_t as printed, or the curvature-normalised step of BUILD_NOTES "Inner-step stability" (a documented
deviation): λ_t = η_t / (1 + C·η_t·h_t), C the configured chunk size and h_t = ‖a_t‖²·‖J_t‖²_F, a_t the matrix's
input and J_t the Jacobian from the matrix's output to the memory's output.
"""

import numpy as np

# The library's guard in every ℓ2 normalisation (hope_jax/memory/chunking.l2_normalize: u / sqrt(‖u‖² + 1e-6)), a
# floor of 1e-3 on the norm. It is not in the papers, but it is not negligible either: SiLU'd hidden vectors, the
# second layers' DGD inputs, reach ‖u‖² ≈ 2.6e-4 in test_paper_equations' HOPE inputs, where it shrinks ‖û‖² by 0.4%.
# With exact normalisation (0.0) the preset's end states miss the library by up to 3.2e-5 (outputs 2.3e-6); with
# the guard, by 1e-7 (BUILD_NOTES, "Memories and inner loops").
NORM_EPS = 1e-6


def unit(u: np.ndarray, eps: float = NORM_EPS) -> np.ndarray:
    """ℓ2-normalised vector (DESIGN D5: keys, queries, layer inputs of the DGD transition), with the library's guard."""
    return u / np.sqrt(u @ u + eps)


def sigmoid(z):
    return 1.0 / (1.0 + np.exp(-z))


def silu_and_slope(z: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    s = sigmoid(z)
    return z * s, s + z * s * (1.0 - s)


def dgd_write(m, s, layer_input, out_grad, eta, alpha, *, momentum, step_size, chunk, gain=1.0, gated_target=None):
    """One token of per-layer DGD (E19/E23 with A4/A5) on one matrix m [out, in]; returns (m, s).

    layer_input: the matrix's input a_t at the chunk-start weights; out_grad: ∂ℓ/∂(m a) at the chunk-start weights, so
    the inner gradient is out_grad a_tᵀ; gain: ‖J_t‖²_F for the normalised step. The transition sees â = a/‖a‖
    (DESIGN D5), so η' = η/(1 + η‖â‖²) = η/(1 + η). step_size: 'printed' (λ = η') or 'normalized'.
    gated_target: A15's written term η' v̂ âᵀ with this v̂, in place of the gradient term."""
    a_hat = unit(layer_input)
    eta_prime = eta / (1.0 + eta * (a_hat @ a_hat))
    transition = alpha * np.eye(m.shape[1]) - eta_prime * np.outer(a_hat, a_hat)
    if gated_target is not None:
        write = eta_prime * np.outer(gated_target, a_hat)
    elif step_size == "printed":
        write = -eta_prime * np.outer(out_grad, layer_input)
    else:
        write = -eta / (1.0 + chunk * eta * (layer_input @ layer_input) * gain) * np.outer(out_grad, layer_input)
    if momentum is None:
        return m @ transition + write, s
    s = momentum * s + write
    return m @ transition + s, s


def linear_dgd(m0, s0, keys, values, queries, eta, alpha, *, chunk, momentum=None, step_size="printed",
               gated_delta=False, self_target=True, start_every=None):  # fmt: skip
    """A linear memory trained by DGD, token by token: E26 (or A15 with gated_delta), reads y_t = M_s(t) q_t (E27).

    m0 [d_out, d_in], s0 (momentum buffer; ignored without momentum); keys [T, d_in] unit rows; values [T, d_v];
    targets v̂_t = M_s(t) v_t (E21, self_target) or v_t. start_every: tokens between chunk-start states, `chunk`
    unless a mutation test moves s(t) alone (1: s(t) = t − 1 with C unchanged in λ). Returns (y [T, d_out], M_T, S_T)."""
    m, s = m0.astype(np.float64), s0.astype(np.float64)
    ys = []
    for t in range(keys.shape[0]):
        if t % (start_every or chunk) == 0:
            m_start = m.copy()  # s(t): the state at the end of the previous chunk
        k, v = keys[t], values[t]
        ys.append(m_start @ queries[t])
        target = m_start @ v if self_target else v
        m, s = dgd_write(
            m, s, k, m_start @ k - target, eta[t], alpha[t], momentum=momentum, step_size=step_size, chunk=chunk,
            gated_target=target if gated_delta else None,
        )  # fmt: skip
    return np.stack(ys), m, s


class ResidualMemory:
    """E24's memory M(u) = u + W₁ σ(W₂ u) (W₂ [h, d], W₁ [d, h]) or, with w2 None, the matrix M(u) = W₁ u (§5.3)."""

    def __init__(self, w1, w2=None):
        self.w1, self.w2 = w1, w2

    def __call__(self, u):
        if self.w2 is None:
            return self.w1 @ u
        return u + self.w1 @ silu_and_slope(self.w2 @ u)[0]

    def copy(self):
        return ResidualMemory(self.w1.copy(), None if self.w2 is None else self.w2.copy())


def memory_dgd_step(mem, mom, start, key, target, eta, alpha, *, momentum, step_size, chunk):
    """E23/E28 on every matrix of one memory, per layer (A4 'all'): gradients of ½‖M_s(k) − v̂‖² at the chunk-start
    memory `start`; W₂ (first layer) reads k, W₁ reads σ(W₂,s k). mom: matching momentum memory or None."""
    kw = dict(momentum=momentum, step_size=step_size, chunk=chunk)
    new_mom = mom.copy() if mom is not None else None
    if start.w2 is None:
        err = start(key) - target
        s1 = None if mom is None else mom.w1
        w1, s1 = dgd_write(mem.w1, s1, key, err, eta, alpha, **kw)
        if new_mom is not None:
            new_mom.w1 = s1
        return ResidualMemory(w1), new_mom
    z = start.w2 @ key
    hidden, slope = silu_and_slope(z)
    err = key + start.w1 @ hidden - target  # E8–E9 with the ½ loss and the residual
    grad_z = (start.w1.T @ err) * slope
    first_gain = np.sum(slope**2 * np.sum(start.w1**2, axis=0))  # ‖W₁ diag(σ'(z))‖²_F
    s1 = None if mom is None else mom.w1
    s2 = None if mom is None else mom.w2
    w1, s1 = dgd_write(mem.w1, s1, hidden, err, eta, alpha, **kw)
    w2, s2 = dgd_write(mem.w2, s2, key, grad_z, eta, alpha, gain=first_gain, **kw)
    if new_mom is not None:
        new_mom.w1, new_mom.w2 = s1, s2
    return ResidualMemory(w1, w2), new_mom


def self_modifying_titans(x, q, memories, momenta, reduction, *, chunk, aux_chunk, eta_max, momentum,
                          step_size="normalized", normalize_values=True, weight_decay=True, start_every=None):  # fmt: skip
    """One sequence and head of self-modifying Titans (E20–E28 with A1–A5), token by token.

    x, q [T, d]; memories {'k', 'v', 'eta', 'alpha', 'memory'}: ResidualMemory; momenta: the same or None;
    reduction: A3's {'eta_w' [d], 'eta_b', 'alpha_w' [d], 'alpha_b'}. M_memory's chunk is `chunk`, the generators'
    `aux_chunk`. Mutation tests: weight_decay=False reads α_t = 1; start_every=1 moves every s(t) to t − 1 and keeps
    the chunk sizes in λ. Returns (y, keys, values, memories, momenta)."""
    gens = [name for name in ("k", "v", "eta", "alpha") if name in memories]
    mems = {name: m.copy() for name, m in memories.items()}
    moms = None if momenta is None else {name: m.copy() for name, m in momenta.items()}
    ys, ks, vs, start = [], [], [], {}
    for t in range(x.shape[0]):
        for name in mems:
            if t % (start_every or (chunk if name == "memory" else aux_chunk)) == 0:
                start[name] = mems[name].copy()
        out = {name: start[name](x[t]) for name in gens}  # E20/E27: generated from the chunk-start generators
        k = unit(out["k"])
        v = unit(out["v"]) if normalize_values else out["v"]
        eta = eta_max * sigmoid(reduction["eta_w"] @ out["eta"] + reduction["eta_b"])  # A3
        alpha = sigmoid(reduction["alpha_w"] @ out["alpha"] + reduction["alpha_b"]) if weight_decay else 1.0
        ys.append(start["memory"](unit(q[t])))  # E22/E27 with a static, ℓ2-normalised q (A2)
        ks.append(k)
        vs.append(v)
        for name in mems:
            target = start[name](v)  # E21: the memory's own read of v at s(t), a constant of the gradient
            mems[name], mom = memory_dgd_step(
                mems[name], None if moms is None else moms[name], start[name], k, target, eta, alpha,
                momentum=momentum, step_size=step_size, chunk=chunk if name == "memory" else aux_chunk,
            )  # fmt: skip
            if moms is not None:
                moms[name] = mom
    return np.stack(ys), np.stack(ks), np.stack(vs), mems, moms
