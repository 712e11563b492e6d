"""The library's DGD memories against per-token float64 numpy written from the paper's equations (tests/paper_equations.py),
not from the library's per-token references: the linear DGD memory (E19, E23/E26, A15, E27/E28) and the HOPE mixer's inner
loop as its presets run it (equal chunk sizes: one stacked scan, `joint_sequence`), plus the matrix M_memory path.

float64 references against the float32 library at rtol = atol = 1e-5 (the chunk solves are exact float32 at the
highest matmul precision, tests/conftest.py). Each comparison is paired with a mutation of the reference (α ≡ 1, or
reads and gradients at the previous token instead of the chunk start) that the library must miss by ≥ 100× the
tolerance, so a pass means the equations were checked, not that everything is close to everything.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from hope_jax.memory import fast_mlp
from hope_jax.memory.dgd import DGDRule, dgd_chunk_update
from hope_jax.memory.driver import scan_sequence
from hope_jax.memory.self_modifying import (
    generator_names,
    join_fast,
    joint_sequence,
    runs_jointly,
    self_modifying_sequence,
    split_fast,
    updated_names,
)
from hope_jax.models.config import default_model_config
from hope_jax.models.typed_config import ModelConfig
from tests import paper_equations as paper

TOL = dict(rtol=1e-5, atol=1e-5)
MUTATION_FACTOR = 100.0  # a mutated reference must miss by this many tolerances


def assert_mutation_is_caught(got, mutated):
    """The library must be far from a reference with one equation changed: the comparison can fail."""
    assert np.max(np.abs(np.asarray(got, np.float64) - mutated)) > MUTATION_FACTOR * TOL["atol"]


# ---- the linear DGD memory (E19, E26, A15; chunk-start gradients E27/E28) ------------------------------------------

T_LINEAR, D = 10, 8

LINEAR_CASES = {
    # chunk 1: gradients at the previous token, the exact token recurrence
    "chunk1": dict(chunk=1, momentum=None, step_size="printed", gated_delta=False, self_target=True),
    # chunk 4 over 10 tokens: a trailing 2-token chunk; momentum A5
    "chunk4_momentum": dict(chunk=4, momentum=0.9, step_size="printed", gated_delta=False, self_target=True),
    # BUILD_NOTES "Inner-step stability": λ = η / (1 + C·η·‖k‖²)
    "chunk4_normalized": dict(chunk=4, momentum=0.9, step_size="normalized", gated_delta=False, self_target=True),
    "chunk5_normalized_onto_values": dict(
        chunk=5, momentum=None, step_size="normalized", gated_delta=False, self_target=False
    ),
    # A15: M(αI − η'kkᵀ) + η'v̂kᵀ
    "chunk4_gated_delta": dict(chunk=4, momentum=0.9, step_size="printed", gated_delta=True, self_target=True),
    "chunk3_gated_delta_onto_values": dict(
        chunk=3, momentum=None, step_size="printed", gated_delta=True, self_target=False
    ),
}


def linear_inputs(seed=0):
    rng = np.random.default_rng(seed)
    keys = rng.normal(size=(T_LINEAR, D))
    return dict(
        m0=rng.normal(size=(D, D)) / np.sqrt(D),
        s0=rng.normal(size=(D, D)) * 0.1,
        keys=keys / np.linalg.norm(keys, axis=-1, keepdims=True),  # DESIGN D5: ℓ2-normalised keys
        values=rng.normal(size=(T_LINEAR, D)),
        queries=rng.normal(size=(T_LINEAR, D)),
        eta=rng.uniform(0.2, 0.9, size=T_LINEAR),
        alpha=rng.uniform(0.6, 0.95, size=T_LINEAR),
    )


@functools.partial(jax.jit, static_argnames=("chunk", "momentum", "step_size", "gated_delta", "self_target"))
def library_linear(m0, s0, keys, values, queries, eta, alpha, *, chunk, momentum, step_size, gated_delta, self_target):
    """The library's linear DGD memory: dgd_chunk_update on {'w': W = Mᵀ} chunk after chunk (driver.scan_sequence), reading
    q W_s and regressing onto v W_s (or v) at the chunk-start W_s, as self_modifying.py's matrix M_memory does."""

    def chunk_fn(carry, xs):
        w, s = carry
        k, v, q, lr, a = xs
        read = lambda u: fast_mlp.forward({"w": w}, u, residual=False)
        targets = read(v) if self_target else v
        rule = DGDRule(residual=False, gated_delta=gated_delta, momentum_decay=momentum or 0.0,
                       normalized_step=step_size == "normalized")  # fmt: skip
        new_w, new_s = dgd_chunk_update(
            {"w": w}, None if momentum is None else {"w": s}, k, targets, lr, None, rule, log_retention=jnp.log(a),
            chunk_size=chunk,
        )  # fmt: skip
        return (new_w["w"], s if new_s is None else new_s["w"]), read(q)

    f32 = lambda a: jnp.asarray(a, jnp.float32)
    start = (f32(m0).T, f32(s0).T)
    (w, s), y = scan_sequence(chunk_fn, start, tuple(map(f32, (keys, values, queries, eta, alpha))), chunk)
    return y, w.T, s.T


@pytest.mark.parametrize("name", list(LINEAR_CASES))
def test_linear_dgd_memory_matches_the_printed_equations(name):
    case, inputs = LINEAR_CASES[name], linear_inputs()
    y, m, s = library_linear(**inputs, **case)
    y_ref, m_ref, s_ref = paper.linear_dgd(**inputs, **case)
    assert np.abs(m_ref).max() < 10.0  # bounded dynamics: the tolerance means something
    np.testing.assert_allclose(y, y_ref, **TOL)
    np.testing.assert_allclose(m, m_ref, **TOL)
    if case["momentum"] is not None:
        np.testing.assert_allclose(s, s_ref, **TOL)
    assert_mutation_is_caught(m, paper.linear_dgd(**{**inputs, "alpha": np.ones(T_LINEAR)}, **case)[1])
    if case["chunk"] > 1:
        assert_mutation_is_caught(y, paper.linear_dgd(**inputs, **case, start_every=1)[0])


def test_normalized_step_is_the_printed_step_at_chunk_one_on_unit_keys():
    """At C = 1 with unit keys η/(1 + C·η·‖k‖²) is E19's η' (BUILD_NOTES "Inner-step stability"): both library modes
    agree there, and disagree at C = 4, where the curvature-normalised step is the documented deviation."""
    inputs = linear_inputs(seed=1)
    run = lambda chunk, step: library_linear(
        **inputs, chunk=chunk, momentum=0.9, step_size=step, gated_delta=False, self_target=True
    )[1]
    np.testing.assert_allclose(run(1, "normalized"), run(1, "printed"), **TOL)
    assert_mutation_is_caught(run(4, "normalized"), np.asarray(run(4, "printed"), np.float64))


# ---- the HOPE mixer's inner loop (E20–E28, A1–A5) ------------------------------------------------------------------

B, H, T_HOPE, CHUNK = 2, 2, 12, 4


def preset_config(**memory):
    """The HOPE preset's memory typed (models/config.py defaults) with small chunks; the fields the reference
    implements are checked so that a changed preset fails here rather than silently comparing something else."""
    model = default_model_config()
    model.d_model, model.n_heads = D * H, H
    model.memory.chunk_size = model.memory.aux_chunk_size = CHUNK
    model.memory.update(memory)
    cfg = ModelConfig.from_config(model).memory
    assert (cfg.dgd, cfg.dgd_layers, cfg.gated_delta, cfg.memory_target) == (True, "all", False, "self")
    assert (cfg.adaptive_q, cfg.adaptive_k, cfg.adaptive_v, cfg.weight_decay) == (False, True, True, True)
    assert (cfg.step_bound, cfg.activation) == ("chunk", "silu")
    return cfg


HOPE_CASES = {
    "preset": {},  # normalised values, curvature-normalised step, momentum 0.9, η_max 1: one joint scan
    # E19's η' on every gradient term; at η_max 1 a chunk of 4 such steps overshoots (the fast weights reach |W| 14
    # within 12 tokens: the reason for the normalised step), and float32 rounding grows with them
    "preset_printed_step": {"normalized_step": False, "eta_max": 0.25},
    "matrix_memory": {"memory_depth": 1},  # M_memory a matrix (E26): the two-scan path
    "unequal_chunks": {"aux_chunk_size": 2},  # generators every 2 tokens, M_memory every 4: two scans
}


def hope_inputs(cfg, seed=0):
    """Library-layout inputs [B, H, ...] (row convention) for every memory of `cfg`, momenta included."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale: rng.normal(size=shape) * scale
    memories = {}
    for name in updated_names(cfg):
        if name == "memory" and cfg.memory_depth == 1:
            memories[name] = {"w": normal(B, H, D, D, scale=D**-0.5)}
        else:  # W_in as MemoryInit; W_out large enough that every generator is far from the identity
            out_std = (4.0 if name in ("k", "v") else 1.0) / np.sqrt(D)
            memories[name] = {"w_in": normal(B, H, D, D, scale=D**-0.5), "w_out": normal(B, H, D, D, scale=out_std)}
    momenta = jax.tree.map(lambda a: rng.normal(size=a.shape) * 0.05, memories)
    reduction = {
        "eta_w": normal(H, D, scale=0.5),
        "eta_b": normal(H, scale=1.0),
        "alpha_w": normal(H, D, scale=0.5),
        "alpha_b": np.full(H, 1.0),  # α ≈ 0.73: a decay the comparison can see
    }
    streams = {"x": normal(B, H, T_HOPE, D, scale=1.0), "q": normal(B, H, T_HOPE, D, scale=1.0)}
    return streams, memories, momenta, reduction


def library_hope(cfg, streams, memories, momenta, reduction):
    """Per batch and head, as SelfModifyingMixer calls it: joint_sequence when runs_jointly(cfg) (the presets),
    else self_modifying_sequence. Returns (y, keys, values) [B, H, T, d] and the end state by memory name."""
    gens = generator_names(cfg)
    f32 = lambda tree: jax.tree.map(lambda a: jnp.asarray(a, jnp.float32), tree)
    stack = lambda tree, names: jax.tree.map(lambda *a: jnp.stack(a, axis=2), *[tree[n] for n in names])
    fast = {"gen": stack(memories, gens), "memory": stack(memories, ("memory",))}
    fast.update(gen_s=stack(momenta, gens), memory_s=stack(momenta, ("memory",)))

    def one(s, f, r):
        if runs_jointly(cfg):
            outputs, joined = joint_sequence(s, join_fast(f), r, cfg)
            return outputs, split_fast(joined, len(gens))
        return self_modifying_sequence(s, f, r, cfg)

    run = jax.jit(jax.vmap(jax.vmap(one), in_axes=(0, 0, None)))
    outputs, end = run(f32(streams), f32(fast), f32(reduction))
    unstack = lambda tree, names: {n: jax.tree.map(lambda a, i=i: a[:, :, i], tree) for i, n in enumerate(names)}
    weights = {**unstack(end["gen"], gens), **unstack(end["memory"], ("memory",))}
    moms = {**unstack(end["gen_s"], gens), **unstack(end["memory_s"], ("memory",))}
    return outputs, weights, moms


def to_paper(w: dict, b: int, h: int) -> paper.ResidualMemory:
    """Row-convention library weights of one sequence and head -> the papers' column convention."""
    if "w" in w:
        return paper.ResidualMemory(np.asarray(w["w"][b, h], np.float64).T)
    return paper.ResidualMemory(np.asarray(w["w_out"][b, h], np.float64).T, np.asarray(w["w_in"][b, h], np.float64).T)


def reference_hope(cfg, streams, memories, momenta, reduction, **overrides):
    """paper.self_modifying_titans per batch and head; returns (y, keys, values) [B, H, T, d] and the end states
    as {name: [(w1, w2) per (b, h)]} in the papers' convention."""
    kw = dict(
        chunk=cfg.chunk_size, aux_chunk=cfg.aux_chunk_size, eta_max=cfg.eta_max,
        momentum=cfg.momentum_decay if cfg.momentum else None,
        step_size="normalized" if cfg.normalized_step else "printed", normalize_values=cfg.normalize_values,
    )  # fmt: skip
    kw.update(overrides)
    outputs, ends = [], {}
    for b in range(B):
        for h in range(H):
            red = {name: value[h] for name, value in reduction.items()}
            mems = {name: to_paper(w, b, h) for name, w in memories.items()}
            moms = {name: to_paper(w, b, h) for name, w in momenta.items()}
            x, q = (streams[name][b, h] for name in ("x", "q"))
            *out, mems, moms = paper.self_modifying_titans(x, q, mems, moms, red, **kw)
            outputs.append(out)
            for name in mems:
                ends.setdefault(name, []).append((mems[name], moms[name]))
    y, keys, values = (np.stack([o[i] for o in outputs]).reshape(B, H, T_HOPE, D) for i in range(3))
    return (y, keys, values), ends


def assert_end_states_match(weights, moms, ends):
    for name, per_sequence in ends.items():
        for i, (mem, mom) in enumerate(per_sequence):
            b, h = divmod(i, H)
            for got, want in ((to_paper(weights[name], b, h), mem), (to_paper(moms[name], b, h), mom)):
                np.testing.assert_allclose(got.w1, want.w1, **TOL, err_msg=f"{name} W1/W_out (b={b}, h={h})")
                if want.w2 is not None:
                    np.testing.assert_allclose(got.w2, want.w2, **TOL, err_msg=f"{name} W2/W_in (b={b}, h={h})")


@pytest.mark.parametrize("name", list(HOPE_CASES))
def test_hope_inner_loop_matches_the_equations_token_by_token(name):
    cfg = preset_config(**HOPE_CASES[name])
    assert runs_jointly(cfg) == (name.startswith("preset"))  # the presets take the stacked joint scan
    inputs = hope_inputs(cfg)
    (y, keys, values), weights, moms = library_hope(cfg, *inputs)
    (y_ref, keys_ref, values_ref), ends = reference_hope(cfg, *inputs)
    # bounded dynamics: the tolerance means something
    assert np.abs(y_ref).max() < 20.0 and max(np.abs(m.w1).max() for per in ends.values() for m, _ in per) < 5.0
    np.testing.assert_allclose(keys, keys_ref, **TOL)
    np.testing.assert_allclose(values, values_ref, **TOL)
    np.testing.assert_allclose(y, y_ref, **TOL)
    assert_end_states_match(weights, moms, ends)
    # every memory moved, so the comparison covers each one's update
    for mem_name, w in weights.items():
        start = inputs[1][mem_name]
        assert max(np.abs(np.asarray(w[k]) - start[k]).max() for k in w) > 1e-3, mem_name
    # the comparison can fail: α ≡ 1, or reads and gradients at the previous token (s(t) = t − 1)
    assert_mutation_is_caught(y, reference_hope(cfg, *inputs, weight_decay=False)[0][0])
    assert_mutation_is_caught(y, reference_hope(cfg, *inputs, start_every=1)[0][0])
