"""Multi-process plumbing without starting processes: Slurm host lists and environments, settings resolution, per-process
reading shards, the Slurm launcher's dry run and the GPU flag profiles. (Real processes: test_distributed_multiprocess.py.)
"""

import json
import os
import re
import socket
import subprocess
import sys

import numpy as np
import pytest

from configs import smoke_transformer
from data_pipeline import process_shards
from data_pipeline.loader import make_loader
from data_pipeline.process_shards import process_loader
from hope_jax import distributed
from hope_jax.distributed import ProcessSettings, expand_hostlist, resolve_settings, settings_from_slurm

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
PROFILES = ("h100", "h200", "a100", "rtx6000ada")


@pytest.mark.parametrize(
    ("nodelist", "hosts"),
    [
        ("gpu01", ["gpu01"]),
        ("gpu[01-03]", ["gpu01", "gpu02", "gpu03"]),
        ("gpu[01-02,05],login3", ["gpu01", "gpu02", "gpu05", "login3"]),
        ("a-[7,9-10]-ib,b3", ["a-7-ib", "a-9-ib", "a-10-ib", "b3"]),
        ("node[098-101]", ["node098", "node099", "node100", "node101"]),
        ("r[1-2]n[01-02]", ["r1n01", "r1n02", "r2n01", "r2n02"]),
    ],
)
def test_expand_hostlist(nodelist, hosts):
    assert expand_hostlist(nodelist) == hosts


def slurm_job_env(job_id: str, nodelist: str, **extra: str) -> dict[str, str]:
    """What sbatch exports to a job (its id and nodes), plus `extra`; a job step adds the SLURM_STEP_* variables."""
    return {"SLURM_JOB_ID": job_id, "SLURM_JOB_NODELIST": nodelist, **extra}


def slurm_step_env(**extra: str) -> dict[str, str]:
    """Task 1 of a job step of 2 tasks, one on each of gpu01 and gpu02 (plus `extra`, which may override any of it)."""
    step = {
        "SLURM_STEP_NODELIST": "gpu[01-02]",
        "SLURM_STEP_NUM_NODES": "2",
        "SLURM_STEP_NUM_TASKS": "2",
        "SLURM_NTASKS": "2",
        "SLURM_PROCID": "1",
        "SLURM_LOCALID": "0",
    }
    return slurm_job_env("4242", "gpu[01-02]", **{**step, **extra})


def test_slurm_one_process_per_node_owns_all_local_gpus(monkeypatch):
    monkeypatch.setattr(distributed.shutil, "which", lambda name: None)  # no scontrol: the built-in parser
    settings = settings_from_slurm(slurm_step_env())
    # JAX's own detection would set local_device_ids=[SLURM_LOCALID] = [0]: one GPU per node.
    assert settings == ProcessSettings(
        num_processes=2, process_id=1, coordinator_address="gpu01:61586", local_device_ids=None, source="slurm"
    )


def test_slurm_prefers_the_exported_master_address_and_binds_one_gpu_per_task():
    env = slurm_step_env(
        SLURM_STEP_NUM_TASKS="16",
        SLURM_NTASKS="16",
        SLURM_PROCID="11",
        SLURM_LOCALID="3",
        MASTER_ADDR="gpu01-ib",
        MASTER_PORT="29500",
        CUDA_VISIBLE_DEVICES="0,1,2,3,4,5,6,7",
    )
    settings = settings_from_slurm(env)
    assert (settings.coordinator_address, settings.process_id, settings.local_device_ids) == (
        "gpu01-ib:29500",
        11,
        (3,),
    )
    # Slurm already bound the task to one GPU: JAX must not index it by the local rank.
    assert settings_from_slurm({**env, "CUDA_VISIBLE_DEVICES": "3"}).local_device_ids is None


def test_outside_a_job_step_is_one_process():
    batch_script = {k: v for k, v in slurm_step_env().items() if not k.startswith("SLURM_STEP_")}
    assert settings_from_slurm(batch_script) is None
    assert resolve_settings("auto", env=batch_script) == ProcessSettings()
    assert resolve_settings("auto", env={}) == ProcessSettings()
    assert resolve_settings("none", env=slurm_step_env()) == ProcessSettings()
    with pytest.raises(ValueError, match="not a Slurm job step"):
        resolve_settings("slurm", env=batch_script)


def test_explicit_settings_win_and_are_checked():
    settings = resolve_settings(
        "auto", coordinator_address="localhost:1234", num_processes=4, process_id=3, env=slurm_step_env()
    )
    assert settings == ProcessSettings(4, 3, "localhost:1234", None, "explicit")
    with pytest.raises(ValueError, match="need --num_processes, --process_id"):
        resolve_settings("explicit", coordinator_address="localhost:1234", env={})
    with pytest.raises(ValueError, match=r"--process_id=4 is not in \[0, --num_processes=4\)"):
        resolve_settings("explicit", coordinator_address="h:1", num_processes=4, process_id=4, env={})


def loader_config(num_shards: int):
    config = smoke_transformer.get_config()
    config.train.seq_len = 16
    config.train.global_batch_size = 8
    config.data.num_shards = num_shards
    config.data.builtin.num_validation_documents = 7
    return config


def test_reading_shards_make_batches_independent_of_the_process_count():
    config = loader_config(num_shards=2)
    one_process = process_loader(config, "train", process_index=0, process_count=1)
    two_processes = [process_loader(config, "train", process_index=p, process_count=2) for p in (0, 1)]
    for _ in range(3):
        global_batch = next(one_process)
        halves = [next(it) for it in two_processes]
        for key in ("inputs", "targets", "mask"):
            np.testing.assert_array_equal(global_batch[key], np.concatenate([h[key] for h in halves]))
    # One shard per process is the loader's own per-process slice (and its checkpoint format).
    own = make_loader(config.data, seq_len=16, global_batch_size=8, process_index=1, process_count=2)
    fresh = process_loader(config, "train", process_index=1, process_count=2)
    for _ in range(4):
        np.testing.assert_array_equal(next(own)["inputs"], next(fresh)["inputs"])


def test_sharded_iterator_state_round_trips_through_json():
    config = loader_config(num_shards=4)
    loader = process_loader(config, "train", process_index=0, process_count=2)  # shards 0 and 1
    next(loader)
    state = json.loads(json.dumps(loader.get_state()))
    expected = [next(loader)["inputs"] for _ in range(2)]
    resumed = process_loader(config, "train", process_index=0, process_count=2)
    resumed.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(next(resumed)["inputs"], want)


def test_validation_shards_pad_until_every_shard_is_done():
    config = loader_config(num_shards=2)
    batches = list(process_loader(config, "validation", process_index=0, process_count=1))
    per_shard = [list(process_loader(config, "validation", process_index=p, process_count=2)) for p in (0, 1)]
    assert len(batches) == max(len(b) for b in per_shard)
    real_tokens = sum(b["mask"].sum() for shard in per_shard for b in shard)
    assert sum(b["mask"].sum() for b in batches) == real_tokens > 0


def test_shard_count_must_divide_processes_and_batch():
    with pytest.raises(ValueError, match="data.num_shards=3 is not divisible by the process count 2"):
        process_shards.data_shards(loader_config(num_shards=3), 2)
    with pytest.raises(ValueError, match="global_batch_size=8 is not divisible by data.num_shards=16"):
        process_shards.data_shards(loader_config(num_shards=16), 2)


SLURM_SCRIPT = ("bash", "launch/slurm.sh")
BARE_PATH = "/usr/bin:/bin"  # no scontrol / nvidia-smi: the script's own fallbacks


def run_slurm_script(*args: str, env: dict[str, str] | None = None) -> subprocess.CompletedProcess:
    """launch/slurm.sh with only `env` in its environment (and BARE_PATH unless env sets PATH)."""
    return subprocess.run(
        [*SLURM_SCRIPT, *args],
        cwd=REPO,
        env={"PATH": BARE_PATH, **(env or {})},
        capture_output=True,
        text=True,
        timeout=60,
    )


def run_slurm_dry_run(*args: str, env: dict[str, str]) -> list[str]:
    completed = run_slurm_script("--dry-run", *args, env=env)
    assert completed.returncode == 0, completed.stderr
    return completed.stdout.splitlines()


def test_slurm_dry_run_prints_the_environment_and_srun_command():
    lines = run_slurm_dry_run(
        "--config=configs/mid.py",
        "--workdir=/shared/runs/mid",
        "--gpu=h100",
        "--",
        "--config.train.num_steps=10",
        env=slurm_job_env(
            "4242",
            "gpu[01-02]",
            SLURM_JOB_NUM_NODES="2",
            SLURM_GPUS_ON_NODE="8",
            SLURM_SUBMIT_DIR=REPO,  # sbatch runs a spool copy of the script: the repository is the submit directory
        ),
    )
    assert lines == [
        "# hope_jax on Slurm: job 4242, 2 node(s), 1 process(es) per node, gpu profile h100",
        f"cd {REPO}",
        "export MASTER_ADDR=gpu01",
        "export MASTER_PORT=61586",  # 4242 % 4096 + 61440, JAX's rule
        "export XLA_FLAGS='--xla_gpu_enable_latency_hiding_scheduler=true "
        "--xla_gpu_enable_highest_priority_async_stream=true --xla_gpu_all_gather_combine_threshold_bytes=134217728 "
        "--xla_gpu_reduce_scatter_combine_threshold_bytes=134217728 "
        "--xla_gpu_all_reduce_combine_threshold_bytes=134217728 --xla_gpu_enable_triton_gemm=false'",
        "export XLA_PYTHON_CLIENT_MEM_FRACTION=0.90",
        "export CUDA_DEVICE_MAX_CONNECTIONS=1",
        "export NCCL_DEBUG=WARN",
        "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 python -m hope_jax.main --config=configs/mid.py "
        "--workdir=/shared/runs/mid --distributed=slurm --config.train.num_steps=10",
    ]


def test_slurm_dry_run_one_process_per_gpu_and_user_settings_win():
    lines = run_slurm_dry_run(
        "--config=configs/target.py",
        "--workdir=/w",
        "--gpu=a100",
        "--per-gpu",
        "--port=29500",
        env=slurm_job_env(
            "7",
            "a-[7,9-10]-ib,b3",
            SLURM_NNODES="4",
            SLURM_GPUS_PER_NODE="a100:4",
            SLURM_CPUS_ON_NODE="32",
            XLA_FLAGS="--xla_dump_to=/tmp/dump",
            CUDA_DEVICE_MAX_CONNECTIONS="8",
        ),
    )
    assert "export MASTER_ADDR=a-7-ib" in lines and "export MASTER_PORT=29500" in lines
    assert "export CUDA_DEVICE_MAX_CONNECTIONS=8" in lines
    (xla,) = [line for line in lines if line.startswith("export XLA_FLAGS=")]
    assert xla.endswith("--xla_dump_to=/tmp/dump'")  # the user's flags last: XLA keeps the last occurrence
    assert lines[-1] == (
        "srun --nodes=4 --ntasks-per-node=4 --kill-on-bad-exit=1 --cpus-per-task=8 python -m hope_jax.main "
        "--config=configs/target.py "
        "--workdir=/w --distributed=slurm"
    )


def test_slurm_script_outside_an_allocation():
    missing = run_slurm_script("--workdir=/w", "--dry-run")
    assert missing.returncode == 2 and "--config=FILE (or a config as first argument) is required" in missing.stderr
    not_submitted = run_slurm_script("configs/target.py")
    assert not_submitted.returncode == 2 and "submit it with sbatch" in not_submitted.stderr
    # A dry run before submitting: the #SBATCH defaults (2 nodes) and the default workdir runs/<config name>.
    preview = run_slurm_script("--dry-run", "configs/pilot.py:transformer")
    assert preview.returncode == 0, preview.stderr
    assert preview.stdout.splitlines()[-1] == (
        "srun --nodes=2 --ntasks-per-node=1 --kill-on-bad-exit=1 python -m hope_jax.main "
        "--config=configs/pilot.py:transformer --workdir=runs/pilot --distributed=slurm"
    )


def profile_settings(name: str) -> dict[str, str]:
    settings: dict[str, str] = {}
    with open(os.path.join(REPO, "launch", "profiles", f"{name}.env")) as f:
        for line in f:
            line = line.strip()
            if not line or line.startswith("#"):
                continue
            key, plus, value = re.match(r"([A-Z_]+)(\+?)=(.*)", line).groups()
            settings[key] = f"{settings[key]} {value}" if plus and key in settings else value
    return settings


def test_every_profile_flag_is_known_to_the_installed_xla():
    flags = sorted({flag for name in PROFILES for flag in profile_settings(name)["XLA_FLAGS"].split()})
    assert len(flags) >= 5
    # XLA parses every flag (GPU ones too) at start-up and aborts naming an unknown one.
    completed = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.zeros(1).block_until_ready()"],
        env={**os.environ, "XLA_FLAGS": " ".join(flags), "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 0, completed.stderr[-2000:]
    # The check can fail: a misspelt flag aborts.
    misspelt = subprocess.run(
        [sys.executable, "-c", "import jax; jax.numpy.zeros(1)"],
        env={**os.environ, "XLA_FLAGS": "--xla_gpu_enable_latency_hiding_schedular=true", "JAX_PLATFORMS": "cpu"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert misspelt.returncode != 0 and "Unknown flag" in misspelt.stderr


def test_profiles_set_memory_fraction_and_overlap():
    for name in PROFILES:
        settings = profile_settings(name)
        assert settings["XLA_PYTHON_CLIENT_MEM_FRACTION"] == "0.90"
        assert "--xla_gpu_enable_latency_hiding_scheduler=true" in settings["XLA_FLAGS"].split()
        # HOPE's many small GEMMs compile for minutes as Triton kernels (BUILD_NOTES "Benchmarks").
        assert "--xla_gpu_enable_triton_gemm=false" in settings["XLA_FLAGS"].split()


STOP_AGREEMENT_SCRIPT = """
import sys
import jax
from hope_jax import distributed
process_id, port = int(sys.argv[1]), sys.argv[2]
distributed.initialize(distributed.resolve_settings(
    "explicit", coordinator_address=f"localhost:{port}", num_processes=2, process_id=process_id, env={}))
agreement = distributed.StopAgreement(timeout_s=120)
distributed.barrier("start", timeout_s=120)
for step in range(1, 100):
    # Process 1 is asked to stop at step 3 (a SIGTERM that reached it first); process 0 never is.
    if agreement.should_stop(step, requested=process_id == 1 and step >= 3):
        print(f"stopped after step {step}", flush=True)
        break
jax.distributed.shutdown()
"""


def test_every_process_stops_after_the_same_step():
    with socket.socket() as s:
        s.bind(("localhost", 0))
        port = str(s.getsockname()[1])
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "XLA_FLAGS": "", "PYTHONPATH": REPO}
    processes = [
        subprocess.Popen(
            [sys.executable, "-c", STOP_AGREEMENT_SCRIPT, str(p), port],
            cwd=REPO,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
        )
        for p in (0, 1)
    ]
    outputs = [p.communicate(timeout=180)[0] for p in processes]
    assert [p.returncode for p in processes] == [0, 0], outputs
    for output in outputs:
        assert "stopped after step 3" in output, output


FAKE_SRUN = """#!/usr/bin/env bash
# Stands in for srun: records its command line, then trains until SIGTERM, which it answers like hope_jax.main
# (checkpoint, exit 0).
echo "$@" > "$FAKE_LOG/srun_args"
trap 'echo term > "$FAKE_LOG/srun_signal"; exit 0' TERM
touch "$FAKE_LOG/srun_started"
for _ in $(seq 600); do sleep 0.1; done
exit 3
"""

FAKE_SCONTROL = """#!/usr/bin/env bash
if [[ "$1 $2" == "show hostnames" ]]; then echo node-a; echo node-b; exit 0; fi
echo "$@" >> "$FAKE_LOG/scontrol_calls"
"""


def test_slurm_time_limit_signal_checkpoints_then_requeues(tmp_path):
    import signal
    import time

    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    for name, text in (("srun", FAKE_SRUN), ("scontrol", FAKE_SCONTROL)):
        (bin_dir / name).write_text(text)
        (bin_dir / name).chmod(0o755)
    env = slurm_job_env(
        "99", "node-[a-b]", SLURM_JOB_NUM_NODES="2", PATH=f"{bin_dir}:{BARE_PATH}", FAKE_LOG=str(tmp_path)
    )
    job = subprocess.Popen(
        [*SLURM_SCRIPT, "configs/mid.py", "/w", "--gpu=none"],
        cwd=REPO,
        env=env,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
    )
    deadline = time.time() + 30
    while not (tmp_path / "srun_started").exists():
        assert time.time() < deadline and job.poll() is None, job.communicate()
        time.sleep(0.05)
    job.send_signal(signal.SIGUSR1)  # what --signal=B:USR1@300 delivers before the time limit
    stdout, stderr = job.communicate(timeout=30)
    assert job.returncode == 0, stderr
    assert "export MASTER_ADDR=node-a" in stdout  # scontrol's first host
    assert (tmp_path / "srun_signal").read_text().strip() == "term"
    assert (tmp_path / "scontrol_calls").read_text().split() == ["requeue", "99"]
    assert (tmp_path / "srun_args").read_text().split()[:3] == [
        "--nodes=2",
        "--ntasks-per-node=1",
        "--kill-on-bad-exit=1",
    ]
