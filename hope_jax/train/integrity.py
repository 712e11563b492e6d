"""Checkpoint integrity: a fingerprint of every array, the files a checkpoint must have, and what counts as damage.

Orbax checks neither the bytes it reads back nor, for most items, that they parse: a flipped bit in a data file of
`<step>/state` restored silently and a resumed run trained on the changed value. Every save therefore records, in its
`meta` item, one fingerprint per array of the train state (computed on the devices, so a sharded multi-process state
is never gathered) and a digest of the data iterator's state; a restore recomputes both and compares. The
fingerprint is Σ_i bits_i · (2i + 1) mod 2³² over the array's raw bits: an odd multiplier turns any single flipped
bit (a change of ±2^b, b < 32) into a different sum, so one flip is always caught, and a random corruption passes
with probability ~2⁻³².
"""

from __future__ import annotations

import contextlib
import gc
import hashlib
import json
import logging
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np

# Items of the composite checkpoint (train/checkpoint.py) and the JSON files orbax writes and reads back.
ITEMS = ("state", "data", "meta")
_JSON_NAMES = ("_CHECKPOINT_METADATA", "_METADATA", "metadata", "_sharding")


class CheckpointDamagedError(RuntimeError):
    """A checkpoint step that cannot be trusted: `step`, and `where` (a file or an array) and why."""

    def __init__(self, step: int, where: str, why: str):
        super().__init__(f"checkpoint step {step} is damaged: {where}: {why}")
        self.step, self.where, self.why = step, where, why


def _bits_u32(x: jax.Array) -> jax.Array:
    """The raw bits of `x` as uint32 words (64-bit values as two words; narrower ones zero-extended)."""
    if jnp.issubdtype(x.dtype, jax.dtypes.prng_key):
        x = jax.random.key_data(x)
    if x.dtype == jnp.bool_:
        return x.astype(jnp.uint32)
    size = jnp.dtype(x.dtype).itemsize
    if size == 8:
        return jax.lax.bitcast_convert_type(x, jnp.uint32)
    unsigned = {4: jnp.uint32, 2: jnp.uint16, 1: jnp.uint8}[size]
    return jax.lax.bitcast_convert_type(x, unsigned).astype(jnp.uint32)


def _fingerprint(x: jax.Array) -> jax.Array:
    bits = _bits_u32(jnp.asarray(x)).reshape(-1)
    odd = jnp.arange(bits.shape[0], dtype=jnp.uint32) * jnp.uint32(2) + jnp.uint32(1)
    return jnp.sum(bits * odd, dtype=jnp.uint32)  # uint32 arithmetic wraps: the sum is mod 2³², in any order


def _nonfinite_count(x: jax.Array) -> jax.Array:
    if not jnp.issubdtype(x.dtype, jnp.inexact):
        return jnp.zeros((), jnp.int32)
    return jnp.sum(~jnp.isfinite(x), dtype=jnp.int32)


@jax.jit
def _fingerprints_and_nonfinite(tree):
    return jax.tree.map(_fingerprint, tree), jax.tree.map(_nonfinite_count, tree)


def _path_names(tree, prefix: str) -> list[str]:
    return [prefix + jax.tree_util.keystr(path) for path, _ in jax.tree_util.tree_flatten_with_path(tree)[0]]


def state_fingerprints(state, prefix: str = "") -> tuple[dict[str, int], dict[str, int]]:
    """({array path: fingerprint}, {array path: number of non-finite values}) of a train state, on its devices.
    prefix: prepended to every path (".params" names a bare parameter tree as the train state's params)."""
    # Scalars are whole on every device that holds them, so each process reads its own copy (nothing is gathered).
    local = lambda x: np.asarray(x.addressable_shards[0].data) if isinstance(x, jax.Array) else np.asarray(x)
    fingerprints, nonfinite = jax.tree.map(local, _fingerprints_and_nonfinite(state))
    names = _path_names(state, prefix)
    as_ints = lambda tree: [int(v) for v in jax.tree.leaves(tree)]
    return dict(zip(names, as_ints(fingerprints), strict=True)), dict(zip(names, as_ints(nonfinite), strict=True))


def data_state_digest(data_iterator) -> str:
    """sha256 of this process's data iterator state, as the checkpoint's `data` item stores it."""
    state = data_iterator.get_state()
    payload = state if isinstance(state, bytes) else json.dumps(state, sort_keys=True, default=repr).encode()
    return hashlib.sha256(payload).hexdigest()


def data_state_digests(data_iterator) -> list[str]:
    """Every process's data_state_digest, by process index (each process saves its own iterator state)."""
    digest = data_state_digest(data_iterator)
    if jax.process_count() == 1:
        return [digest]
    from jax.experimental import multihost_utils

    gathered = multihost_utils.process_allgather(np.frombuffer(bytes.fromhex(digest), np.uint8))
    return [bytes(row).hex() for row in np.asarray(gathered).reshape(jax.process_count(), -1)]


def verify_state(step: int, state, recorded: dict[str, int], prefix: str = "") -> None:
    """Raise CheckpointDamagedError naming the first array whose fingerprint differs from the one saved (a part of
    the state, e.g. its params, with `prefix` as in state_fingerprints)."""
    fingerprints, _ = state_fingerprints(state, prefix)
    for name, value in fingerprints.items():
        if name not in recorded:
            raise CheckpointDamagedError(step, f"array {name}", "absent from the fingerprints saved with it")
        if recorded[name] != value:
            raise CheckpointDamagedError(step, f"array {name}", "its values differ from those saved (fingerprint)")


def check_files(step: int, step_dir: str) -> None:
    """Raise CheckpointDamagedError naming the first missing item or unreadable JSON file of a local checkpoint
    step (a URL such as gs:// is left to orbax)."""
    if "://" in step_dir:
        return
    for item in ITEMS:
        if not os.path.isdir(os.path.join(step_dir, item)):
            raise CheckpointDamagedError(step, os.path.join(step_dir, item), "missing")
    for root, _, files in os.walk(step_dir):
        for name in sorted(files):
            if name in _JSON_NAMES or name.endswith(".json"):
                path = os.path.join(root, name)
                try:
                    with open(path, "rb") as f:
                        json.loads(f.read().decode("utf-8"))
                except (ValueError, UnicodeDecodeError) as error:
                    raise CheckpointDamagedError(step, path, f"not valid JSON ({type(error).__name__})") from None


DAMAGED_DIR = "damaged"


def set_aside(directory: str, step: int) -> str:
    """Move checkpoint `step` of a local `directory` to `<directory>/damaged/<step>` (never deleted; process 0 only,
    the others are told the path); returns where it went."""
    target = os.path.join(directory, DAMAGED_DIR, str(step))
    if jax.process_index() == 0 and "://" not in directory:
        os.makedirs(os.path.dirname(target), exist_ok=True)
        suffix = 1
        while os.path.exists(target):
            target, suffix = os.path.join(directory, DAMAGED_DIR, f"{step}.{suffix}"), suffix + 1
        os.rename(os.path.join(directory, str(step)), target)
    return target


def describe(error: BaseException) -> str:
    """One line: the innermost cause's type and the start of its message (orbax wraps tensorstore's error, which names
    the array and the file, in one that prints the whole TensorStore spec)."""
    while error.__cause__ is not None or error.__context__ is not None:
        error = error.__cause__ or error.__context__
    text = " ".join(str(error).split())
    return f"{type(error).__name__}: {text[:300]}"


@contextlib.contextmanager
def quiet_failed_reads():
    """Silence asyncio's 'exception was never retrieved' reports of the reads a failed restore abandons (dozens of
    tracebacks per damaged step): the failure itself is reported once, by the caller."""
    asyncio_logger = logging.getLogger("asyncio")
    level = asyncio_logger.level
    asyncio_logger.setLevel(logging.CRITICAL)
    try:
        yield
    finally:
        # The abandoned futures and coroutines report when collected (asyncio's logger, sys.unraisablehook): collect
        # them while both are quiet.
        unraisable_hook, sys.unraisablehook = sys.unraisablehook, lambda _: None
        try:
            gc.collect()
        finally:
            sys.unraisablehook = unraisable_hook
            asyncio_logger.setLevel(level)


def first_nonfinite(nonfinite: dict[str, int]) -> str | None:
    """'path (n values)' of the first array with non-finite values, else None."""
    bad = [(name, n) for name, n in nonfinite.items() if n]
    return None if not bad else f"{bad[0][0]} ({bad[0][1]} values)" + (f" and {len(bad) - 1} more" if bad[1:] else "")


def all_agree(ok: bool) -> bool:
    """True only when every process says ok (one process' damage is everyone's: they must restore the same step)."""
    if jax.process_count() == 1:
        return ok
    from jax.experimental import multihost_utils

    return bool(np.all(multihost_utils.process_allgather(np.asarray([ok], np.int32))))
