"""Which local GPUs this process may use (`python -m hope_jax.main --devices=1`), applied before JAX starts its backend.

The value is a comma-separated list of CUDA device ordinals, or 'all'. It has CUDA_VISIBLE_DEVICES semantics: the listed
GPUs become JAX's local devices 0, 1, ... in the order CUDA numbers them. It is passed to JAX as its
`jax_cuda_visible_devices` option rather than by setting CUDA_VISIBLE_DEVICES, because the environment variable only
counts if it is set before the CUDA driver initialises (anything imported earlier, e.g. TensorFlow, could have done
that); JAX reads its option when it creates the GPU client. If CUDA_VISIBLE_DEVICES is also set, the ordinals here
index the GPUs it left visible (CUDA renumbers them from 0). On a CPU-only backend the option has no effect.
"""

from __future__ import annotations

import logging

import jax

ALL = "all"


def parse_visible_devices(spec: str) -> tuple[int, ...] | None:
    """('1,3' -> (1, 3)); 'all' or '' -> None (every GPU). Rejects non-integers, negatives and repeats by name."""
    spec = spec.strip()
    if spec in ("", ALL):
        return None
    ordinals = []
    for part in spec.split(","):
        part = part.strip()
        if not part.isdigit():
            raise ValueError(
                f"--devices={spec!r}: {part!r} is not a GPU ordinal (use e.g. --devices=1 or 0,2, or 'all')"
            )
        ordinals.append(int(part))
    if len(set(ordinals)) != len(ordinals):
        raise ValueError(f"--devices={spec!r} names a GPU twice")
    return tuple(ordinals)


def apply_visible_devices(spec: str) -> tuple[int, ...] | None:
    """Restrict JAX's CUDA devices to `spec` (see module docstring); must run before the first jax.devices()."""
    ordinals = parse_visible_devices(spec)
    value = ALL if ordinals is None else ",".join(str(i) for i in ordinals)
    from jax._src import xla_bridge  # private, but the only way to tell whether the backend already exists

    if xla_bridge.backends_are_initialized() and jax.config.values["jax_cuda_visible_devices"] != value:
        raise RuntimeError(f"--devices={spec!r} came too late: JAX's backend is already initialised in this process")
    jax.config.update("jax_cuda_visible_devices", value)
    return ordinals


def describe_devices(ordinals: tuple[int, ...] | None) -> str:
    """The start-up line: what was asked for and what JAX sees."""
    asked = "all GPUs" if ordinals is None else "CUDA GPUs " + ",".join(map(str, ordinals))
    devices = jax.local_devices()
    kinds = sorted({d.device_kind for d in devices})
    return f"visible devices ({asked}, --devices): {len(devices)} local {jax.default_backend()} device(s), {kinds}"


def log_devices(ordinals: tuple[int, ...] | None) -> None:
    logging.info(describe_devices(ordinals))
