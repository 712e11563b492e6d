"""The top-level README.md's commands name things that exist: every `python -m` module, every script run with `bash` or
`python`, every repository file it points to, and every `--config=configs/...py[:args]` loads (config files take their
argument after the colon). Whether the commands then do what the README says is checked by the tests of each command
(tests/test_main_e2e.py, test_run_reporting.py, test_run_sample_script.py, test_eval_*.py, test_metrics_wandb.py) and
by running the README as written in a fresh clone (issue 21)."""

import importlib.util
import os
import re

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
with open(os.path.join(REPO, "README.md"), encoding="utf-8") as _file:
    TEXT = _file.read()


def _unique(items):
    return sorted(set(items))


MODULES = _unique(re.findall(r"python3? -m ([A-Za-z_][\w.]*)", TEXT))
SCRIPTS = _unique(re.findall(r"(?:bash|sbatch|python3?) ((?:launch|data_pipeline)/[\w./-]+\.(?:sh|py))", TEXT))
CONFIGS = _unique(re.findall(r"--config=(configs/[\w/]+\.py(?::[\w,]+)?)", TEXT))
FILES = _unique(
    path
    for path in re.findall(r"`((?:configs|data|hope_jax|eval|launch|data_pipeline|tests)/[\w./-]+\.\w+)`", TEXT)
    if "<" not in path
)


def test_readme_mentions_the_commands_it_documents():
    assert {"hope_jax.main", "eval.sample", "eval.zeroshot", "eval.tasks.zeroshot_download", "pytest"} <= set(MODULES)
    assert "data_pipeline/run_sample.sh" in SCRIPTS and "data_pipeline/build_seed_mixture.sh" in SCRIPTS
    assert "configs/pilot.py" in CONFIGS and "configs/smoke.py" in CONFIGS


@pytest.mark.parametrize("module", MODULES)
def test_python_m_module_exists(module):
    assert importlib.util.find_spec(module) is not None, f"README.md runs python -m {module}, which does not exist"


@pytest.mark.parametrize("path", SCRIPTS + FILES)
def test_named_file_exists(path):
    assert os.path.isfile(os.path.join(REPO, path)), f"README.md names {path}, which does not exist"


@pytest.mark.parametrize("spec", CONFIGS)
def test_config_loads(spec):
    path, _, arg = spec.partition(":")
    spec_ = importlib.util.spec_from_file_location("readme_config", os.path.join(REPO, path))
    module = importlib.util.module_from_spec(spec_)
    spec_.loader.exec_module(module)
    config = module.get_config(arg) if arg else module.get_config()
    assert "train" in config and "model" in config
