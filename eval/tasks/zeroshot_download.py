"""Task files of eval/zeroshot.py fetched from the Hugging Face Hub: the dataset and split each lm-evaluation-harness
task YAML loads (eval/tasks/zeroshot_tasks.py names them), written as the JSONL the offline path reads.

    python -m eval.tasks.zeroshot_download --data_dir=data/zeroshot [--tasks=piqa,boolq] [--force]

fetches the files without a model (on a machine with the network, for one without); `python -m eval.zeroshot
--download` does the same for missing files before it evaluates. Needs the `datasets` package (requirements-eval.txt).
Each <task>.jsonl gets a <task>.source.json beside it (dataset id, configuration, split, the dataset repository's
commit, the file's SHA-256), which the results file records.
"""

from __future__ import annotations

import datetime
import hashlib
import json
import os
import pathlib
import sys

from eval.tasks.zeroshot_tasks import TASKS, Task, TaskDataError, get_task

SOURCE_SUFFIX = ".source.json"  # <task>.source.json beside <task>.jsonl: where a downloaded file came from


class TaskDownloadError(TaskDataError):
    """A task file that could not be fetched (no network, no `datasets`, a release that changed its fields)."""


def source_file(path: str | pathlib.Path) -> pathlib.Path:
    path = pathlib.Path(path)
    return path.with_name(path.stem + SOURCE_SUFFIX)


def file_sha256(path: str | pathlib.Path) -> str:
    return hashlib.sha256(pathlib.Path(path).read_bytes()).hexdigest()


def recorded_source(path: str | pathlib.Path) -> dict | None:
    """The download record of a task file, or None when the file was not downloaded here or changed since."""
    sidecar = source_file(path)
    try:
        source = json.loads(sidecar.read_text(encoding="utf-8"))
    except (OSError, json.JSONDecodeError):
        return None
    return source if source.get("sha256") == file_sha256(path) else None


def _write_atomically(path: pathlib.Path, text: str) -> None:
    temporary = path.with_name(f".{path.name}.{os.getpid()}.tmp")
    try:
        temporary.write_text(text, encoding="utf-8")
        os.replace(temporary, path)
    finally:
        temporary.unlink(missing_ok=True)


def _by_hand(task: Task, path: pathlib.Path) -> str:
    name = "None" if task.dataset_name is None else repr(task.dataset_name)
    return (
        f"without the network here, supply {path} by hand: the {task.public_split} split of {task.dataset_id} as "
        f"JSONL with fields {', '.join(task.fields)}, e.g. written on a machine with the network by "
        f"`python -m eval.tasks.zeroshot_download --data_dir=DIR --tasks={task.name}` or by "
        f"datasets.load_dataset({task.dataset_path!r}, {name}, split={task.public_split!r}).to_json('{task.name}.jsonl')"
        f" and copied here; a Hugging Face cache copied from such a machine works with HF_DATASETS_OFFLINE=1"
    )


def _hub_commit(dataset_path: str, revision: str | None) -> str | None:
    """The commit of the dataset repository that `revision` (None: the default branch) names, None when offline."""
    try:
        import huggingface_hub

        return huggingface_hub.HfApi().dataset_info(dataset_path, revision=revision).sha
    except Exception:  # noqa: BLE001 - offline, or an old hub client: load_dataset then decides (its cache may do)
        return None


def download_task(task: Task, path: str | pathlib.Path, *, revision: str | None = None) -> dict:
    """Write the task's split, as the harness loads it, to `path` (JSONL, atomically) and its source beside it.

    Every record is checked against the task's prompt before the file appears. Returns the source record: dataset
    id, configuration, split, the dataset repository's commit (None when it could not be asked, e.g. offline with a
    local cache), the `datasets` version and the file's SHA-256."""
    path = pathlib.Path(path)
    where = f"{task.name}: downloading {task.public_split} split of {task.dataset_id}"
    try:
        import datasets
    except ImportError as error:
        raise TaskDownloadError(
            f"{where}: --download needs the `datasets` package (pip install -r requirements-eval.txt); "
            + _by_hand(task, path)
        ) from error
    commit = _hub_commit(task.dataset_path, revision)
    try:
        rows = datasets.load_dataset(
            task.dataset_path, task.dataset_name, split=task.public_split, revision=commit or revision
        )
        lines = [json.dumps(dict(row), ensure_ascii=False) for row in rows]
    except Exception as error:  # noqa: BLE001 - network, hub and cache errors have no common base class
        raise TaskDownloadError(f"{where} failed ({type(error).__name__}: {error}); " + _by_hand(task, path)) from error
    if not lines:
        raise TaskDownloadError(f"{where}: the split is empty")
    for index, line in enumerate(lines):
        try:
            task.build(json.loads(line))
        except (KeyError, ValueError, TypeError, AttributeError) as error:
            raise TaskDownloadError(
                f"{where}: record {index} does not fit the {task.name} prompt ({type(error).__name__}: {error}); "
                f"expected fields {', '.join(task.fields)}"
            ) from error
    text = "\n".join(lines) + "\n"
    source = {
        "dataset": task.dataset_path,
        "name": task.dataset_name,
        "split": task.public_split,
        "revision": commit or revision,
        "datasets_version": getattr(datasets, "__version__", None),
        "records": len(lines),
        "sha256": hashlib.sha256(text.encode("utf-8")).hexdigest(),
        "downloaded_utc": datetime.datetime.now(datetime.UTC).isoformat(),
    }
    path.parent.mkdir(parents=True, exist_ok=True)
    _write_atomically(source_file(path), json.dumps(source, indent=2) + "\n")  # first: a file never lacks its source
    _write_atomically(path, text)
    return source


def main(argv: list[str] | None = None) -> None:
    """`python -m eval.tasks.zeroshot_download --data_dir=DIR [--tasks=a,b] [--force]`: fetch task files only (no model),
    e.g. on a machine with the network, for an offline one."""
    import argparse

    parser = argparse.ArgumentParser(prog="python -m eval.tasks.zeroshot_download", description=main.__doc__)
    parser.add_argument("--data_dir", default="data/zeroshot")
    parser.add_argument("--tasks", default=",".join(TASKS), help=f"comma-separated, from: {', '.join(TASKS)}")
    parser.add_argument("--force", action="store_true", help="download again even where the file exists")
    args = parser.parse_args(argv)
    for task in [get_task(name) for name in args.tasks.split(",") if name]:
        path = pathlib.Path(args.data_dir) / f"{task.name}.jsonl"
        if path.is_file() and not args.force:
            print(f"{path}: present, kept (--force downloads again)")
            continue
        source = download_task(task, path)
        print(f"{path}: {source['records']} records of {task.dataset_id} {task.public_split} @ {source['revision']}")


if __name__ == "__main__":
    try:
        main()
    except ValueError as error:  # TaskDownloadError / TaskDataError, an unknown task: the message says what to do
        print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
        sys.exit(1)
