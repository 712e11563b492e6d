"""Multi-process runs: who the processes are, how they find each other and who writes.

One process per host owning all its GPUs (or one per GPU) joins JAX's multi-process runtime through
`jax.distributed.initialize`; every process then sees the global device list, builds the same mesh over all of them and
runs the same jitted step. Settings come from, in this order: explicit values (``--coordinator_address``,
``--num_processes``, ``--process_id`` on hope_jax.main, used by launch/local.py), a Slurm job step's environment
(``srun``; launch/slurm.sh), or nothing (one process). Nothing here touches a JAX backend before `initialize`.

Only process 0 writes logs and metrics (hope_jax.main lowers the other processes' log level; MetricsLogger is inactive
there). Checkpoints are written and read by all processes together (orbax's collective save/restore, each process
storing its own shards and its own data-iterator state). Each process reads only its shards of the training stream
(data_pipeline/process_shards.py).
"""

from __future__ import annotations

import dataclasses
import itertools
import logging
import os
import re
import shutil
import subprocess
from collections.abc import Mapping, Sequence

import jax

MODES = ("auto", "slurm", "explicit", "none")


@dataclasses.dataclass(frozen=True)
class ProcessSettings:
    """Where this process sits in the job. `source` says where the values came from: 'explicit', 'slurm', 'single'."""

    num_processes: int = 1
    process_id: int = 0
    coordinator_address: str | None = None
    local_device_ids: tuple[int, ...] | None = None  # None: every device this process can see
    source: str = "single"

    @property
    def multi_process(self) -> bool:
        return self.num_processes > 1


# ---------------------------------------------------------------------------------------------------------------------
# Slurm host lists.


def _split_top_level(text: str) -> list[str]:
    """Split on commas that are not inside brackets: 'a[1,2],b' -> ['a[1,2]', 'b']."""
    parts, depth, start = [], 0, 0
    for i, ch in enumerate(text):
        depth += ch == "["
        depth -= ch == "]"
        if ch == "," and depth == 0:
            parts.append(text[start:i])
            start = i + 1
    parts.append(text[start:])
    return [p for p in parts if p]


def _expand_range_list(ranges: str) -> list[str]:
    """'01-03,07' -> ['01', '02', '03', '07'] (zero padding follows the width of the range's first number)."""
    values = []
    for item in ranges.split(","):
        if "-" in item:
            low, high = item.split("-", 1)
            width = len(low)
            values.extend(str(n).zfill(width) for n in range(int(low), int(high) + 1))
        else:
            values.append(item)
    return values


def expand_hostlist(nodelist: str) -> list[str]:
    """Slurm's compressed host list in order: 'gpu[01-02,05],login3' -> ['gpu01', 'gpu02', 'gpu05', 'login3'].

    What `scontrol show hostnames` prints, for machines without Slurm (dry runs, tests). Several bracket groups in one
    name ('r[1-2]n[01-02]') expand as a product, the last group varying fastest.
    """
    hosts = []
    for item in _split_top_level(nodelist.strip()):
        pieces = re.split(r"(\[[^\]]*\])", item)
        choices = [_expand_range_list(p[1:-1]) if p.startswith("[") else [p] for p in pieces]
        hosts.extend("".join(combo) for combo in itertools.product(*choices))
    if not hosts:
        raise ValueError(f"empty Slurm node list {nodelist!r}")
    return hosts


def slurm_hostnames(nodelist: str) -> list[str]:
    """`scontrol show hostnames` where Slurm is installed (it knows every syntax), else :func:`expand_hostlist`."""
    scontrol = shutil.which("scontrol")
    if scontrol:
        completed = subprocess.run(
            [scontrol, "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=60
        )
        return completed.stdout.split()
    return expand_hostlist(nodelist)


def slurm_port(job_id: int) -> int:
    """A port derived from the job id (JAX's own Slurm rule): jobs sharing a first node rarely collide."""
    return int(job_id) % 4096 + 61440


def _tasks_per_node(env: Mapping[str, str], num_processes: int) -> int:
    nodes = int(env.get("SLURM_STEP_NUM_NODES") or env.get("SLURM_NNODES") or 1)
    return max(1, num_processes // max(1, nodes))


def settings_from_slurm(env: Mapping[str, str]) -> ProcessSettings | None:
    """Settings of a task inside a Slurm job step (srun), or None outside one.

    The batch script itself (no srun) is not a step: it has no SLURM_STEP_NODELIST and runs as one process. The
    coordinator is MASTER_ADDR:MASTER_PORT when launch/slurm.sh exported them, else the step's first host and a port
    derived from the job id. With several tasks on a node (one per GPU) each task takes the GPU of its local rank, unless
    Slurm already restricted the task to a single GPU (CUDA_VISIBLE_DEVICES); with one task per node it owns them all.
    JAX's own Slurm detection would bind local rank 0 to GPU 0 alone in the one-per-node case, hence this function.
    """
    required = ("SLURM_JOB_ID", "SLURM_STEP_NODELIST", "SLURM_PROCID")
    if not all(env.get(key) for key in required):
        return None
    num_processes = int(env.get("SLURM_STEP_NUM_TASKS") or env.get("SLURM_NTASKS") or 1)
    process_id = int(env["SLURM_PROCID"])
    if num_processes <= 1:
        return ProcessSettings(source="slurm")
    if env.get("MASTER_ADDR"):
        host = env["MASTER_ADDR"]
    else:
        host = slurm_hostnames(env["SLURM_STEP_NODELIST"])[0]
    port = int(env.get("MASTER_PORT") or slurm_port(int(env["SLURM_JOB_ID"])))
    local_device_ids = None
    visible = [d for d in env.get("CUDA_VISIBLE_DEVICES", "").split(",") if d]
    if _tasks_per_node(env, num_processes) > 1 and len(visible) != 1:
        local_device_ids = (int(env.get("SLURM_LOCALID", "0")),)
    return ProcessSettings(
        num_processes=num_processes,
        process_id=process_id,
        coordinator_address=f"{host}:{port}",
        local_device_ids=local_device_ids,
        source="slurm",
    )


def resolve_settings(
    mode: str = "auto",
    *,
    coordinator_address: str = "",
    num_processes: int = 0,
    process_id: int = -1,
    local_device_ids: Sequence[int] | None = None,
    env: Mapping[str, str] | None = None,
) -> ProcessSettings:
    """The settings this process will initialise with.

    mode 'auto': explicit values when a coordinator address is given, else a Slurm step's environment, else one
    process. 'explicit' and 'slurm' insist on their source (and fail naming what is missing); 'none' is one process
    whatever the environment says.
    """
    if mode not in MODES:
        raise ValueError(f"distributed mode must be one of {MODES}, got {mode!r}")
    env = os.environ if env is None else env
    if mode == "none":
        return ProcessSettings()
    if mode == "explicit" or (mode == "auto" and coordinator_address):
        missing = [
            name
            for name, ok in (
                ("--coordinator_address", bool(coordinator_address)),
                ("--num_processes", num_processes > 0),
                ("--process_id", process_id >= 0),
            )
            if not ok
        ]
        if missing:
            raise ValueError(f"explicit multi-process settings need {', '.join(missing)}")
        if not process_id < num_processes:
            raise ValueError(f"--process_id={process_id} is not in [0, --num_processes={num_processes})")
        return ProcessSettings(
            num_processes=num_processes,
            process_id=process_id,
            coordinator_address=coordinator_address,
            local_device_ids=tuple(local_device_ids) if local_device_ids else None,
            source="explicit",
        )
    slurm = settings_from_slurm(env)
    if slurm is not None:
        return slurm
    if mode == "slurm":
        raise ValueError(
            "--distributed=slurm but this is not a Slurm job step: SLURM_JOB_ID, SLURM_STEP_NODELIST and SLURM_PROCID "
            "must be set (run under srun, e.g. through launch/slurm.sh)"
        )
    return ProcessSettings()


# ---------------------------------------------------------------------------------------------------------------------
# Joining, layout, who writes.


def initialize(settings: ProcessSettings, *, timeout_s: int = 300) -> None:
    """Join the multi-process runtime (a no-op for one process). Must run before anything touches a JAX backend."""
    if not settings.multi_process:
        return
    jax.distributed.initialize(
        coordinator_address=settings.coordinator_address,
        num_processes=settings.num_processes,
        process_id=settings.process_id,
        local_device_ids=list(settings.local_device_ids) if settings.local_device_ids else None,
        initialization_timeout=timeout_s,
        # Everything is resolved above. JAX's own detection would fill the unset local_device_ids from SLURM_LOCALID
        # and so leave a one-process-per-node job with a single GPU per node.
        cluster_detection_method="deactivate",
    )


def describe_layout() -> str:
    """One line: this process, the process count, local and global devices."""
    local = jax.local_devices()
    return (
        f"process {jax.process_index()} of {jax.process_count()}: {len(local)} local "
        f"{local[0].platform} device(s) (ids {[d.id for d in local]}, {local[0].device_kind}) of "
        f"{jax.device_count()} in total"
    )


def is_primary() -> bool:
    """True on the process that writes logs, metrics and other single-writer files."""
    return jax.process_index() == 0


def to_host(tree):
    """A pytree of (possibly cross-process sharded) arrays as numpy on every process; collective when multi-process."""
    if jax.process_count() == 1:
        return jax.device_get(tree)
    from jax.experimental import multihost_utils

    return multihost_utils.process_allgather(tree, tiled=True)


_barriers = itertools.count()


def barrier(name: str, timeout_s: int = 600) -> None:
    """Wait until every process gets here (a coordination-service barrier: host RPCs, no device work; a no-op for one
    process). Used before the first step: CPU (gloo) collectives give up when a peer is 30 s late to a new context,
    which uneven start-up (restore, compile) on a loaded machine can exceed."""
    if jax.process_count() == 1:
        return
    from jax._src import distributed  # see StopAgreement._client

    distributed.global_state.client.wait_at_barrier(f"hope_jax/{name}/{next(_barriers)}", timeout_s * 1000)


class StopAgreement:
    """Turns per-process stop requests (SIGTERM reaches each process at its own moment) into one decision: every
    process stops after the same step.

    A process that wants to stop publishes "stop after step s" (s = the step it is at) in the coordination service's
    key-value store before the step-s barrier; the first published value wins. After the barrier every process reads
    the key, so all of them see any value published before it, and a value published later names a later step, which
    no process has passed. Costs one barrier per step (host-side RPCs, no device work) in multi-process runs only.
    """

    _instances = itertools.count()

    def __init__(self, timeout_s: int = 600) -> None:
        self.multi_process = jax.process_count() > 1
        self.timeout_ms = timeout_s * 1000
        self.prefix = f"hope_jax/stop/{next(self._instances)}"
        self._published = False

    def _client(self):
        # The coordination service client has no public accessor; jax.experimental.multihost_utils and orbax reach
        # it the same way.
        from jax._src import distributed

        return distributed.global_state.client

    def should_stop(self, step: int, requested: bool) -> bool:
        if not self.multi_process:
            return requested
        client = self._client()
        if requested and not self._published:
            try:
                client.key_value_set(self.prefix, str(step))
            except Exception as error:  # ALREADY_EXISTS: another process asked first, its step stands
                if "ALREADY_EXISTS" not in str(error):
                    raise
            self._published = True
        client.wait_at_barrier(f"{self.prefix}/step{step}", self.timeout_ms)
        try:
            stop_after = int(client.key_value_try_get(self.prefix))
        except Exception as error:  # NOT_FOUND: nobody asked
            if "NOT_FOUND" not in str(error):
                raise
            return False
        return step >= stop_after


def configure_process_logging(primary: bool) -> None:
    """Processes other than 0 log warnings and errors only, so a job's log reads like one process's."""
    if not primary:
        logging.getLogger().setLevel(logging.WARNING)
