"""Run N cooperating hope_jax processes on this machine, talking to a local coordinator: multi-host code without a cluster.

    python launch/local.py --num_processes=2 --devices_per_process=4 -- \\
        --config=configs/smoke.py --workdir=runs/local2 --config.train.num_steps=20

Everything after ``--`` goes to ``python -m hope_jax.main`` unchanged; the launcher adds ``--coordinator_address``,
``--num_processes`` and ``--process_id``. On the CPU (default) each process gets `devices_per_process` fake devices
(XLA_FLAGS=--xla_force_host_platform_device_count) and JAX's gloo collectives connect them, so one mesh spans all
N x devices_per_process devices exactly as it would span hosts. With ``--platform=gpu`` process i gets the i-th group of
`devices_per_process` local GPUs (``--devices`` of hope_jax.main).

Output lines are prefixed with ``[process i]``. SIGTERM / SIGINT are forwarded to every process (a preemption: each saves
the same step and exits 0). If a process fails the others are stopped. Exit status: the first non-zero one, else 0.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("localhost", 0))
        return s.getsockname()[1]


def process_command(main_args: list[str], *, process_id: int, num_processes: int, port: int) -> list[str]:
    return [
        sys.executable,
        "-m",
        "hope_jax.main",
        *main_args,
        f"--coordinator_address=localhost:{port}",
        f"--num_processes={num_processes}",
        f"--process_id={process_id}",
    ]


def process_env(base: dict[str, str], *, platform: str, devices_per_process: int) -> dict[str, str]:
    """A process's environment: its own device count (CPU) and the repository on the path."""
    env = dict(base)
    env["PYTHONPATH"] = os.pathsep.join(p for p in (REPO, base.get("PYTHONPATH", "")) if p)
    if platform == "cpu":
        # Replaces any device-count flag inherited from the caller (pytest itself runs with 8 devices).
        kept = [f for f in base.get("XLA_FLAGS", "").split() if not f.startswith("--xla_force_host_platform_device")]
        env["XLA_FLAGS"] = " ".join([*kept, f"--xla_force_host_platform_device_count={devices_per_process}"])
        env["JAX_PLATFORMS"] = "cpu"
        # JAX's CPU collectives across processes (also the jax 0.10 default; explicit so a changed default cannot
        # silently turn the run into independent processes).
        env["JAX_CPU_COLLECTIVES_IMPLEMENTATION"] = "gloo"
    return env


def gpu_devices_flag(process_id: int, devices_per_process: int) -> str:
    first = process_id * devices_per_process
    return "--devices=" + ",".join(str(first + i) for i in range(devices_per_process))


def _pump(stream, prefix: str) -> None:
    for line in stream:
        sys.stdout.write(f"{prefix}{line}")
        sys.stdout.flush()


def launch(
    main_args: list[str], *, num_processes: int, devices_per_process: int, platform: str = "cpu", port: int = 0
) -> int:
    port = port or free_port()
    processes, pumps = [], []
    for process_id in range(num_processes):
        command = process_command(main_args, process_id=process_id, num_processes=num_processes, port=port)
        if platform == "gpu":
            command.append(gpu_devices_flag(process_id, devices_per_process))
        env = process_env(os.environ, platform=platform, devices_per_process=devices_per_process)
        process = subprocess.Popen(
            command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.STDOUT, text=True, bufsize=1
        )
        pump = threading.Thread(target=_pump, args=(process.stdout, f"[process {process_id}] "), daemon=True)
        pump.start()
        processes.append(process)
        pumps.append(pump)

    def forward(signum, frame):
        for process in processes:
            if process.poll() is None:
                process.send_signal(signum)

    previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
    try:
        status = 0
        remaining = list(processes)
        while remaining:
            for process in list(remaining):
                try:
                    code = process.wait(timeout=0.2)
                except subprocess.TimeoutExpired:
                    continue
                remaining.remove(process)
                if code != 0 and status == 0:
                    status = code
                    # The others would wait for the failed one at the next collective until their timeout.
                    for other in remaining:
                        other.terminate()
        for pump in pumps:
            pump.join(timeout=10)
        return status
    finally:
        for sig, handler in previous.items():
            signal.signal(sig, handler)


def main(argv: list[str] | None = None) -> int:
    argv = sys.argv[1:] if argv is None else argv
    if "--" in argv:
        split = argv.index("--")
        own, main_args = argv[:split], argv[split + 1 :]
    else:
        own, main_args = argv, []
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--num_processes", type=int, default=2)
    parser.add_argument("--devices_per_process", type=int, default=4)
    parser.add_argument("--platform", choices=("cpu", "gpu"), default="cpu")
    parser.add_argument("--port", type=int, default=0, help="coordinator port (0: a free one)")
    args = parser.parse_args(own)
    if not main_args:
        parser.error("give hope_jax.main's arguments after '--' (at least --config and --workdir)")
    return launch(
        main_args,
        num_processes=args.num_processes,
        devices_per_process=args.devices_per_process,
        platform=args.platform,
        port=args.port,
    )


if __name__ == "__main__":
    sys.exit(main())
