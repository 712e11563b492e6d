"""`python -m hope_jax.kernels.check`: the Pallas memory kernels against the XLA path on this machine's device.

For each kernel (memory: M_memory alone against its XLA scan; joint: every memory, as the model runs them with equal
chunk sizes, against memory/self_modifying.joint_sequence), chunk size and product dtype: the largest output and
end-state differences (relative to the largest value), and the best-of-repeats time of forward and forward+backward
(gradient of a scalar outer loss) for the kernel and for the XLA scan, compile excluded. On a GPU the kernels are
compiled by Triton (the check GPU_KERNELS.md asks for before any model benchmark); elsewhere they run in interpret
mode, which checks numerics only (its times mean nothing).
"""

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from hope_jax.kernels.selfmod_joint import joint_batch
from hope_jax.kernels.selfmod_memory import KernelSpec, memory_scan, reference_scan
from hope_jax.memory.self_modifying import SelfModConfig, generator_names, joint_sequence, static_stream_names


def example_inputs(n: int, length: int, dim: int, seed: int = 0):
    """Per-token (unit q, k, v; η in (0, 1); log α near 0) and a random M_memory state, for n sequences."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    unit = lambda a: a / jnp.linalg.norm(a, axis=-1, keepdims=True)
    per_token = (
        unit(normal(n, length, dim)),
        unit(normal(n, length, dim)),
        unit(normal(n, length, dim)),
        jax.nn.sigmoid(normal(n, length)),
        jax.nn.log_sigmoid(4.0 + normal(n, length)),
    )
    weights = {"w_in": normal(n, dim, dim, scale=dim**-0.5), "w_out": normal(n, dim, dim, scale=0.5 * dim**-0.5)}
    momentum = jax.tree.map(jnp.zeros_like, weights)
    return per_token, weights, momentum


def joint_inputs(n: int, length: int, dim: int, cfg: SelfModConfig, seed: int = 0):
    """(streams {name: [n, 1, T, d]}, joined state {'w', 's'} [n, 1, memories, d, d], reduction {name: [1, ...]})."""
    rng = np.random.default_rng(seed)
    normal = lambda *shape, scale=1.0: jnp.asarray(rng.normal(size=shape) * scale, jnp.float32)
    streams = {name: jax.nn.silu(normal(n, 1, length, dim)) for name in static_stream_names(cfg)}
    m = len(generator_names(cfg)) + 1
    weights = {"w_in": normal(n, 1, m, dim, dim, scale=dim**-0.5), "w_out": normal(n, 1, m, dim, dim, scale=dim**-0.5)}
    reduction = {"eta_w": normal(1, dim, scale=0.02), "eta_b": jnp.zeros((1,)), "alpha_w": normal(1, dim, scale=0.02)}
    reduction["alpha_b"] = jnp.full((1,), 5.0)
    return streams, {"w": weights, "s": jax.tree.map(jnp.zeros_like, weights)}, reduction


def _joint_reference(cfg):
    per_head = jax.vmap(lambda s, f, r: joint_sequence(s, f, r, cfg))
    return jax.vmap(per_head, in_axes=(0, 0, None))


def _best_time(fn, args, repeats: int) -> float:
    compiled = jax.jit(fn).lower(*args).compile()
    jax.block_until_ready(compiled(*args))
    best = float("inf")
    for _ in range(repeats):
        start = time.perf_counter()
        jax.block_until_ready(compiled(*args))
        best = min(best, time.perf_counter() - start)
    return best


def _relative_max_difference(a, b) -> float:
    return max(
        float(jnp.max(jnp.abs(x - y)) / jnp.maximum(jnp.max(jnp.abs(y)), 1e-30))
        for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True)
    )


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(prog="python -m hope_jax.kernels.check", description=__doc__.splitlines()[0])
    parser.add_argument("--sequences", type=int, default=96, help="batch × heads (96: 8 sequences of 12 heads)")
    parser.add_argument("--d-head", type=int, default=64)
    parser.add_argument("--seq-len", type=int, default=2048)
    parser.add_argument("--chunks", default="16,64")
    parser.add_argument("--dot-dtypes", default="float32,bfloat16")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--kinds", default="memory,joint", help="memory: M_memory alone; joint: every memory")
    args = parser.parse_args(argv)
    interpret = jax.default_backend() != "gpu"
    device = jax.devices()[0]
    print(f"# {device.platform} {getattr(device, 'device_kind', '')}, jax {jax.__version__}, interpret={interpret}")
    print(f"# N={args.sequences} sequences x T={args.seq_len}, d_head={args.d_head}; times in ms (best of repeats)")
    print("| kernel | chunk | products | rel. max diff | kernel fwd | xla fwd | kernel fwd+bwd | xla fwd+bwd |")
    print("|---|---|---|---|---|---|---|---|")
    for kind in args.kinds.split(","):
        for chunk in (int(c) for c in args.chunks.split(",")):
            cfg = SelfModConfig(chunk_size=chunk, aux_chunk_size=chunk, normalize_values=True, remat_group=1)
            if kind == "joint":
                inputs = joint_inputs(args.sequences, args.seq_len, args.d_head, cfg)
                reference = lambda *a, cfg=cfg: _joint_reference(cfg)(*a)
            else:
                inputs = example_inputs(args.sequences, args.seq_len, args.d_head)
                reference = lambda *a, cfg=cfg: reference_scan(cfg, *a)
            for dot_dtype in args.dot_dtypes.split(","):
                spec = KernelSpec(cfg, length=args.seq_len, dot_dtype=dot_dtype, interpret=interpret, kind=kind)
                scan = joint_batch if kind == "joint" else memory_scan
                kernel = lambda *a, spec=spec, scan=scan: scan(spec, *a)
                diff = _relative_max_difference(jax.jit(kernel)(*inputs), jax.jit(reference)(*inputs))
                times = []
                for fn in (kernel, reference):
                    loss = lambda *a, fn=fn: jnp.sum(jnp.sin(jax.tree.leaves(fn(*a)[0])[0]))
                    fwd = _best_time(fn, inputs, args.repeats)
                    times.append((fwd, _best_time(jax.grad(loss, (0, 1)), inputs, args.repeats)))
                (k_fwd, k_bwd), (x_fwd, x_bwd) = times
                print(
                    f"| {kind} | {chunk} | {dot_dtype} | {diff:.1e} | {k_fwd * 1e3:.2f} | {x_fwd * 1e3:.2f} | "
                    f"{k_bwd * 1e3:.2f} | {x_bwd * 1e3:.2f} |",
                    flush=True,
                )


if __name__ == "__main__":
    main()
