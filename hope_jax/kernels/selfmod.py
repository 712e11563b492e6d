"""model.memory.kernel: which implementation runs the self-modifying mixer's memories, and the 'pallas' dispatch.

'xla' is the XLA path (memory/self_modifying.py under driver.run_chunked), unchanged. 'pallas' runs the memories
as Pallas kernels, one program per (sequence, head) over all chunks of the piece: with equal chunk sizes (the
default) every memory, the generators (M_k, M_v, M_q, M_η, M_α) and M_memory, in one kernel (selfmod_joint.py);
with unequal ones the generators as one XLA chunked scan over the piece (their half of self_modifying_sequence), then
M_memory's kernel (selfmod_memory.py; the memory's state never feeds the generators, so this is the joint scan's
computation in another order). Equal to the XLA path to float32 rounding (tests/test_kernels_selfmod.py). 'auto' is
'pallas' on a GPU and 'xla' elsewhere. Off a GPU the kernels run in Pallas interpret mode (slow; for tests).

A fresh sequence (training, carry None) hands all its whole periods to ONE call (driver.run_chunked with
`whole_periods_at_once`), so the kernel loops over every chunk of the sequence; a piece with a carry (streaming,
decoding) is run period by period as on the XLA path. Document resets (model.reset_at_token) run on the XLA path.
"""

from __future__ import annotations

import dataclasses

import jax
import jax.numpy as jnp

from hope_jax.kernels.selfmod_joint import joint_batch
from hope_jax.kernels.selfmod_memory import KernelSpec, memory_scan
from hope_jax.memory.chunking import current_precision
from hope_jax.memory.self_modifying import SelfModConfig, generator_names, generator_sequence

KERNELS = ("xla", "pallas", "auto")
# Activations whose Pallas Triton lowering is checked (tests/test_kernels_selfmod.py exports the kernel for CUDA).
KERNEL_ACTIVATIONS = ("silu",)


def resolve(kernel: str) -> str:
    """'xla' or 'pallas' for a model.memory.kernel value; 'auto' is 'pallas' where JAX's default backend is a GPU."""
    if kernel not in KERNELS:
        raise ValueError(f"model.memory.kernel = {kernel!r}; known: {', '.join(KERNELS)}")
    if kernel == "auto":
        return "pallas" if jax.default_backend() == "gpu" else "xla"
    return kernel


def _power_of_two_at_least_16(n: int) -> bool:
    return n >= 16 and n & (n - 1) == 0


def check_supported(memory_cfg, head_dim: int) -> None:
    """ValueError naming the key for a model.memory setting the Pallas kernel cannot run. Triton's tiles need
    power-of-two sizes and matrix products of at least 16 along every axis."""
    hidden = memory_cfg.hidden_factor * head_dim
    problems = {
        "chunk_size": (memory_cfg.chunk_size, _power_of_two_at_least_16(memory_cfg.chunk_size), "a power of two ≥ 16"),
        "hidden_factor": (
            memory_cfg.hidden_factor,
            _power_of_two_at_least_16(hidden),
            "hidden_factor·head_dim a power of two ≥ 16",
        ),  # fmt: skip
        "activation": (
            memory_cfg.activation,
            memory_cfg.activation in KERNEL_ACTIVATIONS,
            f"one of {KERNEL_ACTIVATIONS}",
        ),  # fmt: skip
    }
    if not _power_of_two_at_least_16(head_dim):
        raise ValueError(
            f"model.memory.kernel='pallas' does not support head_dim = model.d_model / model.n_heads = {head_dim}: "
            "it must be a power of two ≥ 16"
        )
    for key, (value, ok, need) in problems.items():
        if not ok:
            raise ValueError(
                f"model.memory.kernel='pallas' does not support model.memory.{key}={value!r}: needs {need}"
            )


def batch_fn(
    cfg: SelfModConfig, *, joint: bool, dot_dtype, remat: bool, interpret: bool | None = None, fuse: bool = True
):
    """A drop-in for the mixer's per-batch sequence function: fn(streams {name: [B, H, T, d]}, fast (initial_fast's
    layout, leaves [B, H, n, ...]), reduction {name: [H, ...]}) -> ((y, keys, values) [B, H, T, d], new fast).

    joint (equal chunk sizes) and `fuse`: every memory in one kernel (selfmod_joint.py). Otherwise the generators run
    as an XLA chunk scan and M_memory on the kernel."""
    cfg = dataclasses.replace(cfg, remat_group=1 if remat else 0)
    n_gens = len(generator_names(cfg))
    interpret = jax.default_backend() != "gpu" if interpret is None else interpret

    def spec_for(length: int, kind: str) -> KernelSpec:
        dtype = jnp.dtype(dot_dtype).name
        return KernelSpec(cfg, length, dtype, current_precision(), interpret=interpret, kind=kind)

    def run(streams, fast_in, reduction):
        if joint and fuse:
            return joint_batch(spec_for(streams["x"].shape[2], "joint"), streams, fast_in, reduction)
        fast = fast_in
        if joint:
            part = lambda tree, sl: jax.tree.map(lambda a: a[:, :, sl], tree)
            fast = {"gen": part(fast_in["w"], slice(n_gens)), "memory": part(fast_in["w"], slice(n_gens, None))}
            if "s" in fast_in:
                fast.update(gen_s=part(fast_in["s"], slice(n_gens)), memory_s=part(fast_in["s"], slice(n_gens, None)))
        per_head = jax.vmap(lambda s, g, gs, r: generator_sequence(s, g, gs, r, cfg))
        (gen_w, gen_s), per_token = jax.vmap(per_head, in_axes=(0, 0, 0, None))(
            streams, fast["gen"], fast.get("gen_s", {}), reduction
        )
        batch, heads, length = per_token[0].shape[:3]
        flat = lambda a: a.reshape(batch * heads, *a.shape[2:])
        memory = lambda tree: jax.tree.map(lambda a: flat(a[:, :, 0]), tree)
        y, mem_w, mem_s = memory_scan(
            spec_for(length, "memory"),
            tuple(flat(a) for a in per_token),
            memory(fast["memory"]),
            memory(fast.get("memory_s", {})),
        )
        unflat = lambda tree: jax.tree.map(lambda a: a.reshape(batch, heads, 1, *a.shape[1:]), tree)
        new = {"gen": gen_w, "memory": unflat(mem_w)}
        if cfg.momentum:
            new.update(gen_s=gen_s, memory_s=unflat(mem_s))
        if joint:
            cat = lambda a, b: jax.tree.map(lambda u, v: jnp.concatenate([u, v], axis=2), a, b)
            new = {
                "w": cat(new["gen"], new["memory"]),
                **({"s": cat(gen_s, new["memory_s"])} if cfg.momentum else {}),
            }
        return (y.reshape(batch, heads, length, -1), per_token[1], per_token[2]), new

    return run
