"""eval.zeroshot --download and eval/tasks/zeroshot_download.py, with fake `datasets` and `huggingface_hub` modules
(nothing touches the network): the files written are the ones the offline path reads, the source is recorded, and
missing files or failed downloads say what to do.

The model side is faked too (a Run-like object, a LoglikelihoodFn answering -1.0): these tests are about files, and
tests/test_eval_zeroshot.py scores the same fixtures with a real model.
"""

import json
import os
import pathlib
import subprocess
import sys
import types

import pytest

from eval import common, zeroshot
from eval.tasks import zeroshot_download
from eval.tasks.zeroshot_tasks import TASKS, TaskDataError, get_task, read_docs

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "zeroshot"

# What lm-evaluation-harness 0.4.13's task YAMLs load (dataset_path, dataset_name, and the split they evaluate).
HARNESS_DATASETS = {
    "piqa": ("baber/piqa", None, "validation"),
    "hellaswag": ("Rowan/hellaswag", None, "validation"),
    "winogrande": ("allenai/winogrande", "winogrande_xl", "validation"),
    "arc_easy": ("allenai/ai2_arc", "ARC-Easy", "test"),
    "arc_challenge": ("allenai/ai2_arc", "ARC-Challenge", "test"),
    "siqa": ("lighteval/siqa", None, "validation"),
    "boolq": ("aps/super_glue", "boolq", "validation"),
    "lambada": ("EleutherAI/lambada_openai", "default", "test"),
}
COMMIT = "0123456789abcdef0123456789abcdef01234567"


def fixture_rows(task_name):
    return [json.loads(line) for line in (FIXTURES / f"{task_name}.jsonl").read_text().splitlines() if line.strip()]


@pytest.fixture
def fake_hub(monkeypatch):
    """Fake `datasets` (rows: the test fixtures, found by the harness's dataset id and split) and `huggingface_hub`
    modules; returns the list of load_dataset calls."""
    by_dataset = {HARNESS_DATASETS[name]: fixture_rows(name) for name in TASKS}
    calls = []

    def load_dataset(path, name=None, *, split=None, revision=None, **kwargs):
        calls.append((path, name, split, revision))
        if (path, name, split) not in by_dataset:
            raise FileNotFoundError(f"Dataset '{path}' doesn't exist on the Hub")
        return [dict(row) for row in by_dataset[(path, name, split)]]

    fake_datasets = types.ModuleType("datasets")
    fake_datasets.__version__ = "0.0-fake"
    fake_datasets.load_dataset = load_dataset
    fake_hf = types.ModuleType("huggingface_hub")

    class HfApi:
        def dataset_info(self, repo_id, revision=None):
            return types.SimpleNamespace(sha=COMMIT)

    fake_hf.HfApi = HfApi
    monkeypatch.setitem(sys.modules, "datasets", fake_datasets)
    monkeypatch.setitem(sys.modules, "huggingface_hub", fake_hf)
    return calls


@pytest.fixture
def fake_model(monkeypatch):
    """No checkpoint is read: load_run_from_flags gives a stand-in Run, every request scores (-1.0, greedy)."""
    loads = []

    def load_run_from_flags(fv):
        loads.append(fv.workdir)
        return types.SimpleNamespace(
            name="fake", config_hash="h", config=types.SimpleNamespace(model=types.SimpleNamespace(name="fake")), step=1
        )

    monkeypatch.setattr(common, "load_run_from_flags", load_run_from_flags)
    monkeypatch.setattr(
        zeroshot, "model_loglikelihood_fn", lambda run, **kwargs: lambda requests: [(-1.0, True)] * len(requests)
    )
    return loads


def zeroshot_command(data_dir, output_dir, *extra):
    return common.run_command(
        zeroshot.define_flags,
        zeroshot.run_from_flags,
        ["zeroshot", "--workdir=runs/fake", f"--data_dir={data_dir}", f"--output_dir={output_dir}", *extra],
    )


def test_tasks_name_the_datasets_and_splits_the_harness_loads():
    for name, (path, config, split) in HARNESS_DATASETS.items():
        task = get_task(name)
        assert (task.dataset_path, task.dataset_name, task.public_split) == (path, config, split), name


def test_download_writes_every_task_file_in_the_format_the_evaluation_reads(tmp_path, fake_hub, fake_model):
    data_dir = tmp_path / "zeroshot"
    results, path = zeroshot_command(data_dir, tmp_path / "out", "--download")
    assert sorted(call[:3] for call in fake_hub) == sorted(HARNESS_DATASETS.values())
    assert {call[3] for call in fake_hub} == {COMMIT}  # the commit asked for is the commit loaded
    for name in TASKS:
        written = data_dir / f"{name}.jsonl"
        assert [json.loads(line) for line in written.read_text().splitlines()] == fixture_rows(name)
        assert read_docs(get_task(name), written) == read_docs(get_task(name), FIXTURES / f"{name}.jsonl")
        assert results[name]["n"] == len(fixture_rows(name))
    assert not list(data_dir.glob(".*.tmp"))  # temporaries renamed into place
    record = json.loads(path.read_text())
    assert record["args"]["download"] is True and fake_model == ["runs/fake"]
    source = record["args"]["task_files"]["winogrande"]["source"]
    assert source["dataset"] == "allenai/winogrande" and source["name"] == "winogrande_xl"
    assert source["split"] == "validation" and source["revision"] == COMMIT and source["records"] == 2
    assert source["sha256"] == record["args"]["task_files"]["winogrande"]["sha256"]

    # A second run finds the files: nothing is fetched again, with or without --download.
    fake_hub.clear()
    zeroshot_command(data_dir, tmp_path / "out", "--download", "--tasks=piqa")
    zeroshot_command(data_dir, tmp_path / "out", "--tasks=piqa")
    assert fake_hub == []


def test_a_missing_file_without_download_names_the_file_its_fields_and_the_option(tmp_path, fake_model):
    (tmp_path / "piqa.jsonl").write_text((FIXTURES / "piqa.jsonl").read_text())
    with pytest.raises(TaskDataError) as error:
        zeroshot_command(tmp_path, tmp_path / "out", "--tasks=piqa,boolq,siqa")
    message = str(error.value)
    assert str(tmp_path / "boolq.jsonl") in message and str(tmp_path / "siqa.jsonl") in message
    assert "piqa.jsonl" not in message.replace("piqa.jsonl:", "")  # the present file is not reported
    assert "fields passage, question, label (or answer)" in message and "aps/super_glue (boolq)" in message
    assert "fields context, question, answerA, answerB, answerC, label" in message
    assert "--download" in message
    assert fake_model == []  # reported before any checkpoint is read


def test_a_failed_download_names_the_task_and_dataset_and_how_to_supply_the_file(tmp_path, fake_hub, monkeypatch):
    def offline(path, name=None, **kwargs):
        raise ConnectionError(f"Couldn't reach '{path}' on the Hub (LocalEntryNotFoundError)")

    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", offline)
    with pytest.raises(zeroshot_download.TaskDownloadError) as error:
        zeroshot.prepare_task_files(["hellaswag"], str(tmp_path), download=True)
    message = str(error.value)
    assert message.startswith("hellaswag: downloading validation split of Rowan/hellaswag failed (ConnectionError")
    assert f"supply {tmp_path / 'hellaswag.jsonl'} by hand" in message
    assert "fields activity_label, ctx_a, ctx_b, endings, label" in message and "HF_DATASETS_OFFLINE=1" in message
    assert list(tmp_path.iterdir()) == []  # nothing half-written


def test_download_without_the_datasets_package_says_what_to_install(tmp_path, monkeypatch):
    monkeypatch.setitem(sys.modules, "datasets", None)  # import datasets -> ImportError
    with pytest.raises(zeroshot_download.TaskDownloadError, match=r"lambada: .*requirements-eval.txt.*by hand"):
        zeroshot_download.download_task(get_task("lambada"), tmp_path / "lambada.jsonl")


def test_a_release_that_no_longer_fits_the_prompt_is_refused_before_the_file_appears(tmp_path, fake_hub, monkeypatch):
    monkeypatch.setattr(sys.modules["datasets"], "load_dataset", lambda *args, **kwargs: [{"question": "q"}])
    with pytest.raises(zeroshot_download.TaskDownloadError, match="record 0 does not fit the piqa prompt"):
        zeroshot_download.download_task(get_task("piqa"), tmp_path / "piqa.jsonl")
    assert list(tmp_path.iterdir()) == []


def test_the_source_is_recorded_only_while_the_file_is_the_downloaded_one(tmp_path, fake_hub):
    path = tmp_path / "boolq.jsonl"
    source = zeroshot_download.download_task(get_task("boolq"), path)
    assert zeroshot_download.recorded_source(path) == source
    path.write_text(path.read_text() + json.dumps({"passage": "p", "question": "q", "label": 0}) + "\n")
    assert zeroshot_download.recorded_source(path) is None  # edited by hand: no longer that release


def test_download_only_command_fetches_missing_files_and_keeps_present_ones(tmp_path, fake_hub, capsys):
    zeroshot_download.main([f"--data_dir={tmp_path}", "--tasks=piqa,lambada"])
    assert sorted(p.name for p in tmp_path.glob("*.jsonl")) == ["lambada.jsonl", "piqa.jsonl"]
    fake_hub.clear()
    zeroshot_download.main([f"--data_dir={tmp_path}", "--tasks=piqa"])
    assert fake_hub == [] and "present, kept" in capsys.readouterr().out


def test_help_lists_the_fields_of_every_task_file():
    doc_lines = {
        line.split()[0]: line
        for line in zeroshot.__doc__.splitlines()
        if line.split()[:1] and ".jsonl" in line.split()[0]
    }
    for task in TASKS.values():
        line = doc_lines[f"{task.name}.jsonl"]
        assert task.dataset_path in line and line.rstrip().endswith(", ".join(task.fields)), line
    fv = zeroshot.flags.FlagValues()
    zeroshot.define_flags(fv)
    for task in TASKS.values():
        assert f"{task.name}.jsonl: {', '.join(task.fields)}" in fv["data_dir"].help
    assert "network" in fv["download"].help


def test_download_only_command_ends_a_failure_in_one_error_line(tmp_path):
    """As a command (`python -m eval.tasks.zeroshot_download`) a failure is one `error:` line, not a traceback; an
    unknown task stands in for a failed download (TaskDownloadError is a ValueError as well), needing no network."""
    completed = subprocess.run(
        [sys.executable, "-m", "eval.tasks.zeroshot_download", f"--data_dir={tmp_path}", "--tasks=mmlu"],
        cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    assert completed.stderr.strip().splitlines()[-1].startswith("error: ValueError: unknown zero-shot task 'mmlu'")
