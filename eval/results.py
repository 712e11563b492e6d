"""The results file of an evaluation command (DESIGN D12): <output_dir>/<run>/<command>-<UTC timestamp>.json with
the arguments, the run's config hash and checkpoint step, the code version and the results; plots share its stem."""

from __future__ import annotations

import dataclasses
import datetime
import json
import pathlib
import subprocess
from typing import TYPE_CHECKING, Any

import numpy as np

if TYPE_CHECKING:
    from eval.common import Run

REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def code_version() -> str:
    """The git commit of the working tree (with '+dirty' when it has local changes), or 'unknown' outside git."""
    try:
        commit = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=REPO_ROOT, capture_output=True, text=True, check=True
        ).stdout.strip()
        dirty = subprocess.run(
            ["git", "status", "--porcelain", "--untracked-files=no"],
            cwd=REPO_ROOT,
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        return "unknown"
    return commit + ("+dirty" if dirty else "")


def results_stem(
    run: Run, command: str, *, output_dir: str = "eval", now: datetime.datetime | None = None
) -> pathlib.Path:
    """<output_dir>/<run>/<command>-<UTC timestamp>: the results file without its suffix (plots share the stem). The
    folder is created: plots are written before the results file."""
    now = now or datetime.datetime.now(datetime.UTC)
    stem = pathlib.Path(output_dir) / run.name / f"{command}-{now.strftime('%Y%m%dT%H%M%S%fZ')}"
    stem.parent.mkdir(parents=True, exist_ok=True)
    return stem


def plot_title(run: Run, what: str) -> str:
    """The title of a plot of one run's results: "<what> — <run name>[ step N]"."""
    return f"{what} — {run.name}" + (f" step {run.step}" if run.step is not None else "")


def write_results(
    run: Run,
    command: str,
    args: Any,
    results: dict,
    *,
    output_dir: str = "eval",
    plots: dict[str, str] | None = None,
    stem: pathlib.Path | None = None,
    record_args: dict | None = None,
    summary: dict | None = None,
) -> pathlib.Path:
    """Write the results JSON (arguments, config hash, checkpoint step, code version, results) and return its path.

    `args`: a dict or the command's arguments dataclass; `record_args` (workdir, step) are recorded with them.
    `summary`: figures derived from the results (zero-shot: the papers' average), recorded beside them.
    """
    stem = stem or results_stem(run, command, output_dir=output_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    if dataclasses.is_dataclass(args):
        args = dataclasses.asdict(args)
    record = {
        "command": command,
        "run": run.name,
        "args": {**args, **(record_args or {})},
        "config_hash": run.config_hash,
        "model": run.config.model.name,
        "checkpoint_step": run.step,
        "code_version": code_version(),
        "created_utc": datetime.datetime.now(datetime.UTC).isoformat(),
        "results": results,
        "plots": dict(plots or {}),
    }
    if summary is not None:
        record["summary"] = summary
    path = stem.with_suffix(".json")
    path.write_text(json.dumps(record, indent=2, sort_keys=True, default=_jsonable))
    return path


def _jsonable(value):
    if isinstance(value, np.generic):
        return value.item()
    if isinstance(value, np.ndarray):
        return value.tolist()
    raise TypeError(f"cannot write {type(value).__name__} to the results JSON")
