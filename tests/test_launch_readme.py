"""Every command in launch/README.md runs as written, as far as a CPU can tell.

- ```bash smoke blocks: each command is run (in a temporary directory standing in for runs/) with tiny overrides appended;
  a re-run on the same workdir trains 2 more steps, so the resume example really resumes.
- ```bash check blocks (GPU tiers): each hope_jax.main command line is parsed exactly as hope_jax.main parses it (config
  file, overrides, --devices) and validated (config, mesh and batch against the devices it names or else 8, model
  settings, optimiser levels); `bash launch/slurm.sh --dry-run ...` is run; sbatch lines have the script checked and the
  hope_jax.main arguments they pass (--config, --workdir, everything after --) validated the same way.
- plain ```bash blocks (data pipeline, evaluation: they need data or a trained run): every `python -m` module exists.
"""

import importlib.util
import os
import re
import shlex
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from hope_jax.models.config import validate_model_config
from hope_jax.optim.config import resolve_level
from hope_jax.train.validate import validate_config
from hope_jax.visible_devices import parse_visible_devices

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
README = os.path.join(REPO, "launch", "README.md")
TINY = [
    "--config.model.d_model=32",
    "--config.model.n_heads=2",
    "--config.model.mlp_hidden=64",
    "--config.train.seq_len=32",
    "--config.train.global_batch_size=8",
    "--config.train.log_every_steps=1",
    "--config.checkpoint.every_steps=2",
    "--config.eval.every_steps=0",
    "--config.eval.num_batches=1",
    "--config.logging.tensorboard=False",
]
MAIN_FLAGS = ("--config", "--workdir", "--devices")


def readme_commands(tag: str) -> list[str]:
    """Commands of the ```bash <tag> blocks (tag '' = untagged), continuation lines joined, comments dropped."""
    with open(README, encoding="utf-8") as file:
        text = file.read()
    commands = []
    for block_tag, body in re.findall(r"^[ \t]*```bash([^\n]*)\n(.*?)^[ \t]*```", text, flags=re.M | re.S):
        if block_tag.strip() != tag:
            continue
        joined = re.sub(r"\\\n\s*", " ", "\n".join(line.strip() for line in body.splitlines()))
        commands += [line for line in joined.splitlines() if line and not line.startswith("#")]
    return commands


def split_env(command: str) -> tuple[dict[str, str], list[str]]:
    tokens = shlex.split(command)
    env = {}
    while tokens and re.fullmatch(r"[A-Z_]+=\S*", tokens[0]):
        key, value = tokens.pop(0).split("=", 1)
        env[key] = value
    return env, tokens


def parse_main_args(args: list[str]):
    """(config, workdir, devices) as hope_jax.main would parse them (its other flags are ignored here)."""
    argv = ["hope_jax.main", *(a for a in args if a.startswith(MAIN_FLAGS))]
    values = flags.FlagValues()
    # config_flags reads the config file's overrides from the argv it is given at definition time, as from sys.argv.
    config_flags.DEFINE_config_file("config", None, "config", flag_values=values, lock_config=True, sys_argv=argv)
    flags.DEFINE_string("workdir", None, "workdir", flag_values=values)
    flags.DEFINE_string("devices", "all", "devices", flag_values=values)
    values(argv)
    return values.config, values.workdir, values.devices


def check_main_command(args: list[str], env: dict[str, str]) -> None:
    config, workdir, devices = parse_main_args(args)
    assert workdir, f"no --workdir in {args}"
    ordinals = parse_visible_devices(devices) or parse_visible_devices(env.get("CUDA_VISIBLE_DEVICES", ""))
    validate_config(config, len(ordinals) if ordinals else 8)
    validate_model_config(config.model)
    for name in config.optim.levels:
        resolve_level(name, config.optim.levels[name])


def test_readme_has_every_kind_of_block():
    assert len(readme_commands("smoke")) >= 2
    assert len(readme_commands("check")) >= 10


def test_check_commands_parse_and_validate(monkeypatch):
    monkeypatch.chdir(REPO)
    # A documented W&B command needs the wandb package on the cluster, not here: only its config is checked.
    monkeypatch.setattr("hope_jax.train.metrics.wandb_available", lambda: True)
    for command in readme_commands("check"):
        env, tokens = split_env(command)
        if tokens[:3] == ["python", "-m", "hope_jax.main"]:
            check_main_command(tokens[3:], env)
        elif tokens[:2] == ["python", "launch/local.py"]:
            assert os.path.exists(tokens[1]) and "--" in tokens, command
            check_main_command(tokens[tokens.index("--") + 1 :], env)
        elif tokens[:3] == ["bash", "launch/slurm.sh", "--dry-run"]:
            done = subprocess.run(tokens, cwd=REPO, capture_output=True, text=True, timeout=120)
            assert done.returncode == 0, f"{command}\n{done.stdout}\n{done.stderr}"
        elif tokens[0] == "sbatch":
            script_args = tokens[tokens.index("launch/slurm.sh") + 1 :]
            assert os.path.exists("launch/slurm.sh"), command
            extra = script_args[script_args.index("--") + 1 :] if "--" in script_args else []
            own = script_args[: len(script_args) - len(extra) - (1 if extra else 0)]
            check_main_command([a for a in own if a.startswith(("--config=", "--workdir="))] + extra, env)
        else:
            pytest.fail(f"launch/README.md: no check for the command form {command!r}")


def test_plain_commands_name_existing_modules():
    modules = [shlex.split(c)[2] for c in readme_commands("") if shlex.split(c)[:2] == ["python", "-m"]]
    assert len(modules) >= 7
    for module in modules:
        assert importlib.util.find_spec(module) is not None, f"launch/README.md names a missing module {module}"


def test_smoke_commands_run_as_written(tmp_path):
    # One CPU device (the quickest compile) and a persistent compilation cache: the commands share their shapes, so only
    # the first one compiles the train step.
    env = {**os.environ, "JAX_PLATFORMS": "cpu", "PYTHONPATH": REPO, "JAX_COMPILATION_CACHE_DIR": str(tmp_path / "jit")}
    env.pop("XLA_FLAGS", None)
    runs_by_workdir: dict[str, int] = {}
    for command in readme_commands("smoke"):
        extra_env, tokens = split_env(command)
        assert tokens[:3] == ["python", "-m", "hope_jax.main"], command
        args = [re.sub(r"=runs/", f"={tmp_path}/runs/", arg) for arg in tokens[3:]]
        workdir = next(a for a in args if a.startswith("--workdir="))
        runs_by_workdir[workdir] = runs_by_workdir.get(workdir, 0) + 1
        steps = 2 * runs_by_workdir[workdir]  # each re-run of a workdir trains 2 more steps
        argv = [sys.executable, "-m", "hope_jax.main", *args, *TINY, f"--config.train.num_steps={steps}"]
        done = subprocess.run(
            argv, cwd=REPO, capture_output=True, text=True, timeout=300, env={**env, **extra_env}
        )  # fmt: skip
        assert done.returncode == 0, f"{command}\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
        assert f"finished at step {steps}" in done.stdout, done.stdout[-2000:]
        if steps > 2:
            assert f"resuming from step {steps - 2}" in done.stdout + done.stderr
        assert str(steps) in os.listdir(os.path.join(workdir.split("=", 1)[1], "checkpoints"))
