"""README: `bash data_pipeline/run_sample.sh FILE.txt runs/sample` uses the active virtual environment, else the
repository's .venv (the README's set-up), else python3; a missing text file is one `error:` line.

The script is run from a copy of the repository layout whose interpreters are stubs that log their arguments, so the
pipeline's stages are not run (tests/test_data_pipeline.py runs them)."""

import os
import shutil
import subprocess

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
STUB = '#!/bin/sh\necho "$0 $*" >> "$STUB_LOG"\n'


def _stub(path):
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(STUB)
    path.chmod(0o755)
    return path


def _run(tmp_path, args, *, virtual_env=None, repo_venv=False):
    repo = tmp_path / "repo"
    (repo / "data_pipeline").mkdir(parents=True, exist_ok=True)
    shutil.copy(os.path.join(REPO, "data_pipeline", "run_sample.sh"), repo / "data_pipeline" / "run_sample.sh")
    (repo / "book.txt").write_text("It was the best of times, it was the worst of times.\n")
    if repo_venv:
        _stub(repo / ".venv" / "bin" / "python")
    path_dir = tmp_path / "path"
    _stub(path_dir / "python3")
    env = {k: v for k, v in os.environ.items() if k not in ("VIRTUAL_ENV", "PYTHON")}
    env.update(STUB_LOG=str(tmp_path / "calls.log"), SMOKE_STEPS="0", PATH=f"{path_dir}:{env['PATH']}")
    if virtual_env is not None:
        _stub(virtual_env / "bin" / "python")
        env["VIRTUAL_ENV"] = str(virtual_env)
    completed = subprocess.run(
        ["bash", "data_pipeline/run_sample.sh", *args], cwd=repo, env=env, capture_output=True, text=True, timeout=60
    )
    log = tmp_path / "calls.log"
    calls = log.read_text().splitlines() if log.exists() else []
    return completed, calls


@pytest.mark.skipif(shutil.which("bc") is None, reason="run_sample.sh times its stages with bc")
@pytest.mark.parametrize("where", ["active", "repo_venv", "python3"])
def test_interpreter_is_the_active_venv_else_the_repo_venv_else_python3(tmp_path, where):
    active = tmp_path / "active_venv" if where == "active" else None
    completed, calls = _run(tmp_path, ["book.txt", "runs/sample"], virtual_env=active, repo_venv=where != "python3")
    assert completed.returncode == 0, completed.stderr
    expected = {
        "active": str(tmp_path / "active_venv" / "bin" / "python"),
        "repo_venv": str(tmp_path / "repo" / ".venv" / "bin" / "python"),
        "python3": str(tmp_path / "path" / "python3"),
    }[where]
    stages = ["data_pipeline.filter", "data_pipeline.train_tokenizer", "data_pipeline.shard", "hope_jax.bench.data"]
    assert [call.split()[0] for call in calls] == [expected] * len(stages)
    assert [call.split()[2] for call in calls] == stages
    assert calls[0].split()[3] == str(tmp_path / "repo" / "book.txt")


def test_missing_text_file_is_one_error_line(tmp_path):
    completed, calls = _run(tmp_path, ["../shared/data/tinyshakespeare.txt", "runs/sample"], repo_venv=True)
    assert completed.returncode == 1 and calls == []
    assert completed.stderr.strip().splitlines() == [
        "error: run_sample.sh: no text file ../shared/data/tinyshakespeare.txt (give any UTF-8 text file, e.g. a "
        "Project Gutenberg book: bash data_pipeline/run_sample.sh FILE.txt runs/sample)"
    ]
    assert not (tmp_path / "repo" / "runs").exists()
