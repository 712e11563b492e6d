"""Preemption, as a real process: SIGTERM saves and exits 0; SIGKILL loses nothing beyond the last checkpoint, and the
resumed run is bitwise identical to an uninterrupted one."""

import json
import os
import signal
import subprocess
import sys
import time

import jax
import numpy as np

from hope_jax.train.loop import train
from tests.test_main_e2e import REPO, tiny_smoke_config

# The same settings as tiny_smoke_config(), as command-line overrides.
TINY_OVERRIDES = [
    "--config.train.seq_len=32",
    "--config.train.global_batch_size=8",
    "--config.train.log_every_steps=1",
    "--config.eval.every_steps=0",
    "--config.eval.num_batches=1",
    "--config.logging.tensorboard=False",
    "--config.mesh.data=2",
    "--config.mesh.fsdp=2",
    "--config.mesh.tensor=2",
]


def start_training(workdir, *extra, env=None):
    return subprocess.Popen(
        [
            sys.executable,
            "-m",
            "hope_jax.main",
            "--config=configs/smoke_transformer.py",
            f"--workdir={workdir}",
            *TINY_OVERRIDES,
            *extra,
        ],
        cwd=REPO,
        stdout=subprocess.PIPE,
        stderr=subprocess.STDOUT,
        text=True,
        env=env,
    )


def wait_for(predicate, process, timeout=240):
    deadline = time.time() + timeout
    while not predicate():
        if process.poll() is not None:
            raise AssertionError(f"training exited early:\n{process.stdout.read()}")
        if time.time() > deadline:
            process.kill()
            raise AssertionError("timed out waiting for the training process")
        time.sleep(0.2)


def logged_losses(workdir):
    path = os.path.join(workdir, "metrics", "metrics.jsonl")
    if not os.path.exists(path):
        return {}
    with open(path) as f:
        records = [json.loads(line) for line in f if line.strip()]
    return {r["step"]: r["loss"] for r in records if "loss" in r}


def checkpoint_steps(workdir):
    directory = os.path.join(workdir, "checkpoints")
    return sorted(int(name) for name in os.listdir(directory) if name.isdigit()) if os.path.isdir(directory) else []


def test_sigterm_saves_a_checkpoint_and_exits_zero(tmp_path):
    workdir = str(tmp_path)
    process = start_training(workdir, "--config.train.num_steps=100000", "--config.checkpoint.every_steps=0")
    wait_for(lambda: len(logged_losses(workdir)) >= 2, process)
    process.send_signal(signal.SIGTERM)
    output, _ = process.communicate(timeout=120)
    assert process.returncode == 0, output
    assert "stopped by SIGTERM at step" in output
    stopped_at = int(output.split("stopped by SIGTERM at step ")[1].split(";")[0])
    assert checkpoint_steps(workdir) == [stopped_at]
    config = tiny_smoke_config()
    config.train.num_steps = stopped_at + 1
    result = train(config, workdir)
    assert sorted(result.losses) == [stopped_at + 1]


def test_sigterm_during_start_up_exits_zero_before_the_first_step(tmp_path):
    workdir = str(tmp_path / "run")
    # An empty compilation cache: with the suite's shared cache (conftest.py) the earlier tests' compiles make start-up
    # take well under the 2 s below, and the signal would arrive after step 1.
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit_cache")}
    process = start_training(workdir, "--config.train.num_steps=100000", env=env)
    output_lines = []
    for line in process.stdout:  # main prints the devices just before it calls train(), which installs the handler
        output_lines.append(line)
        if line.startswith("devices: ["):
            break
    time.sleep(2.0)  # inside train() now: building the model or compiling (tens of seconds on this machine)
    process.send_signal(signal.SIGTERM)
    output = "".join(output_lines) + process.communicate(timeout=120)[0]
    assert process.returncode == 0, output
    assert "stopped by SIGTERM during start-up, before step 1; nothing saved" in output
    assert checkpoint_steps(workdir) == [] and logged_losses(workdir) == {}


def test_sigkill_then_resume_is_bitwise_identical(tmp_path):
    killed = str(tmp_path / "killed")
    process = start_training(
        killed,
        "--config.train.num_steps=100000",
        "--config.checkpoint.every_steps=2",
        "--config.checkpoint.async_save=False",
    )
    wait_for(lambda: 4 in checkpoint_steps(killed), process)
    process.kill()
    process.wait(timeout=60)
    losses_before_kill = logged_losses(killed)

    latest = max(checkpoint_steps(killed))  # the process may have run past step 4 before the kill landed

    config = tiny_smoke_config()
    config.train.num_steps = latest + 2
    config.checkpoint.every_steps = 2
    resumed = train(config, killed)
    straight = train(config, str(tmp_path / "straight"))

    assert sorted(resumed.losses) == [latest + 1, latest + 2]
    for step, loss in {**losses_before_kill, **resumed.losses}.items():
        if step <= latest + 2:
            assert loss == straight.losses[step], step
    for a, b in zip(jax.tree.leaves(straight.params), jax.tree.leaves(resumed.params), strict=True):
        np.testing.assert_array_equal(a, b)
