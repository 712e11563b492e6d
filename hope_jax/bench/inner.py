"""`python -m hope_jax.bench inner`: tokens/s of the chunk-parallel inner loops vs their per-token references.

Forward, and forward+backward (gradient of a scalar outer loss with respect to the inputs and the initial fast
weights), at B=4, H=4, d_head=64, T=2048 by default, for the chunk sizes given. The per-token references are timed on
a shorter sequence (--ref-len) and reported as tokens/s: their cost per token does not depend on the length (one
scan step per token), so the rate carries over; the output says so. Compilation is excluded (AOT compile first, then
the best of --repeats timed runs).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hope_jax.memory.cms import cms_local, cms_local_reference
from hope_jax.memory.self_modifying import (
    SelfModConfig,
    init_self_modifying_state,
    self_modifying_reference,
    self_modifying_titans,
    updated_names,
)
from hope_jax.memory.titans import titans_memory, titans_reference

MEMORIES = ("titans", "self_modifying", "cms")


def _inputs(memory, batch, heads, d_head, hidden, length, seed=0):
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    if memory == "titans":
        weights = {
            "w_in": normal(batch, heads, d_head, hidden, scale=d_head**-0.5),
            "w_out": normal(batch, heads, hidden, d_head, scale=hidden**-0.5),
        }
        gate = lambda bias, scale: jax.nn.sigmoid(normal(batch, heads, length) + bias) * scale
        seq = lambda: normal(batch, heads, length, d_head)
        return dict(
            weights=weights,
            q=unit(seq()),
            k=unit(seq()),
            v=seq(),
            theta=gate(0.0, 0.2),
            eta=gate(2.0, 1.0),
            alpha=gate(-4.0, 1.0),
        )
    if memory == "self_modifying":
        cfg = SelfModConfig()
        initial = {
            name: {
                "w_in": normal(heads, d_head, hidden, scale=0.3 * d_head**-0.5),
                "w_out": normal(heads, hidden, d_head, scale=0.3 * hidden**-0.5),
            }
            for name in updated_names(cfg)
        }
        reduction = {
            "eta_w": normal(heads, d_head, scale=0.1),
            "eta_b": jnp.full((heads,), -2.0),
            "alpha_w": normal(heads, d_head, scale=0.1),
            "alpha_b": jnp.full((heads,), 5.0),
        }
        x = normal(batch, heads, length, d_head, scale=0.5)
        return dict(
            x=x,
            q=normal(batch, heads, length, d_head),
            state=init_self_modifying_state(initial, batch, cfg),
            reduction=reduction,
        )
    width = heads * d_head
    weights = {
        "w_in": normal(batch, width, hidden, scale=width**-0.5),
        "w_out": normal(batch, hidden, width, scale=hidden**-0.5),
    }
    return dict(
        weights=weights,
        x=normal(batch, length, width),
        k=unit(normal(batch, length, width)),
        v=normal(batch, length, width),
    )


def _forward(memory, chunk, slow):
    """inputs dict -> outputs y, for the chunked path or the per-token reference."""
    if memory == "titans":
        fn = titans_reference if slow else titans_memory
        return lambda a: fn(a["weights"], a["q"], a["k"], a["v"], a["theta"], a["eta"], a["alpha"], chunk_size=chunk)[0]
    if memory == "self_modifying":
        cfg = SelfModConfig(chunk_size=chunk, aux_chunk_size=chunk, eta_max=0.5)
        fn = self_modifying_reference if slow else self_modifying_titans
        return lambda a: fn(a["x"], a["q"], a["state"], a["reduction"], cfg)[0]
    fn = cms_local_reference if slow else cms_local
    return lambda a: fn(a["weights"], a["x"], a["k"], a["v"], inner_lr=0.1, inner_decay=0.1, period=chunk)[0]


def _best_time(compiled, args, repeats):
    jax.block_until_ready(compiled(args))  # warm-up
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(args))
        best = min(best, time.perf_counter() - start)
    return best


def _rates(memory, chunk, slow, args, batch, length, repeats):
    forward = _forward(memory, chunk, slow)
    outer_loss = lambda a: jnp.sum(jnp.sin(forward(a)))
    rates = []
    for fn in (forward, jax.grad(outer_loss)):
        compiled = jax.jit(fn).lower(args).compile()
        rates.append(batch * length / _best_time(compiled, args, repeats))
    return rates


def main(argv: list[str]) -> None:
    parser = argparse.ArgumentParser(prog="python -m hope_jax.bench inner", description=__doc__.splitlines()[0])
    parser.add_argument("--memories", default=",".join(MEMORIES), help=f"comma-separated subset of {MEMORIES}")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--heads", type=int, default=4)
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--hidden", type=int, default=64, help="memory hidden width (CMS: 2 x heads x d_head)")
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--ref-len", type=int, default=256, help="tokens the per-token reference is timed on")
    parser.add_argument("--chunks", default="16,64")
    parser.add_argument("--repeats", type=int, default=2)
    args = parser.parse_args(argv)
    memories = args.memories.split(",")
    unknown = set(memories) - set(MEMORIES)
    if unknown:
        raise SystemExit(f"unknown memories {sorted(unknown)}; choose from {MEMORIES}")
    chunks = [int(c) for c in args.chunks.split(",")]
    print(
        f"# bench inner: B={args.batch} H={args.heads} d_head={args.d_head} T={args.seq_len} fp32, "
        f"{jax.devices()[0].platform} x{jax.device_count()}, jax {jax.__version__}"
    )
    print(f"# per-token reference timed on T={args.ref_len} and reported as tokens/s (cost per token is constant)")
    print("# tokens/s = B*T / seconds (best of repeats, compile excluded); speedup = chunked / reference, fwd+bwd")
    print("| memory | chunk | chunked fwd | chunked fwd+bwd | reference fwd | reference fwd+bwd | speedup fwd+bwd |")
    print("|---|---|---|---|---|---|---|")
    for memory in memories:
        hidden = 2 * args.heads * args.d_head if memory == "cms" else args.hidden
        fast_args = _inputs(memory, args.batch, args.heads, args.d_head, hidden, args.seq_len)
        slow_args = _inputs(memory, args.batch, args.heads, args.d_head, hidden, args.ref_len)
        for chunk in chunks:
            fast = _rates(memory, chunk, False, fast_args, args.batch, args.seq_len, args.repeats)
            slow = _rates(memory, chunk, True, slow_args, args.batch, args.ref_len, 1)
            print(
                f"| {memory} | {chunk} | {fast[0]:,.0f} | {fast[1]:,.0f} | {slow[0]:,.0f} | {slow[1]:,.0f} | "
                f"{fast[1] / slow[1]:.1f}x |",
                flush=True,
            )
