"""eval/lm_eval_adapter.py, and eval/zeroshot.py against lm-evaluation-harness itself (skipped without lm_eval).

The harness's own task configurations (installed with lm_eval), pointed at our local JSONL fixtures, must build the
same requests and compute the same metrics as eval.zeroshot; the adapter must let the harness drive a checkpoint.
"""

import functools
import json
import os
import pathlib
import sys
import zlib

import numpy as np
import pytest

lm_eval = pytest.importorskip("lm_eval")

from lm_eval.api.instance import Instance  # noqa: E402
from lm_eval.api.model import LM  # noqa: E402
from lm_eval.tasks import TaskManager  # noqa: E402

from eval import common, lm_eval_adapter, zeroshot  # noqa: E402
from eval.tasks.zeroshot_tasks import TASKS, get_task, read_docs  # noqa: E402

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "zeroshot"
HARNESS_TASKS = pathlib.Path(lm_eval.__file__).parent / "tasks"
# Our task -> (the harness's YAML for it, the split it evaluates, the harness's metrics).
HARNESS_CONFIGS = {
    "piqa": ("piqa/piqa.yaml", "validation", ("acc", "acc_norm")),
    "hellaswag": ("hellaswag/hellaswag.yaml", "validation", ("acc", "acc_norm")),
    "winogrande": ("winogrande/default.yaml", "validation", ("acc",)),
    "arc_easy": ("arc/arc_easy.yaml", "test", ("acc", "acc_norm")),
    "arc_challenge": ("arc/arc_challenge.yaml", "test", ("acc", "acc_norm")),
    "siqa": ("siqa/siqa.yaml", "validation", ("acc",)),
    "boolq": ("super_glue/boolq/default.yaml", "validation", ("acc",)),
    "lambada": ("lambada/lambada_openai.yaml", "test", ("acc", "perplexity")),
}


@pytest.fixture(scope="module")
def harness_task_dir(tmp_path_factory):
    """One YAML per task that includes the harness's own config and only swaps the dataset for our local fixture."""
    os.environ.setdefault("HF_DATASETS_OFFLINE", "1")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    directory = tmp_path_factory.mktemp("harness_tasks")
    for name, (yaml_path, split, _) in HARNESS_CONFIGS.items():
        data = FIXTURES / f"{name}.jsonl"
        if name == "boolq":  # the harness reads super_glue's 0/1 `label`; the fixture is google/boolq's `answer`
            data = directory / "boolq_super_glue.jsonl"
            records = [json.loads(line) for line in (FIXTURES / "boolq.jsonl").read_text().splitlines()]
            data.write_text("".join(json.dumps({**r, "label": int(r["answer"])}) + "\n" for r in records))
        (directory / f"local_{name}.yaml").write_text(
            f"include: {HARNESS_TASKS / yaml_path}\n"
            f"task: local_{name}\n"
            "tag: []\n"
            "dataset_path: json\n"
            "dataset_name: null\n"
            "training_split: null\n"
            f"validation_split: {'validation' if split == 'validation' else 'null'}\n"
            f"test_split: {'test' if split == 'test' else 'null'}\n"
            f"dataset_kwargs:\n  cache_dir: {directory / 'hf_datasets_cache'}\n  data_files:\n    {split}: {data}\n"
        )
    return directory


@pytest.fixture(scope="module")
def task_manager(harness_task_dir):
    # include_defaults=False: only our directory is indexed, not lm-eval's thousands of built-in YAMLs (~10 s); the
    # included harness configs are still read from where lm-eval installed them.
    return TaskManager(include_path=str(harness_task_dir), include_defaults=False)


def fake_loglikelihood(context, continuation):
    """Deterministic, text-dependent numbers; the length term makes acc and acc_norm disagree on some questions."""
    code = zlib.crc32(f"{context}|{continuation}".encode())
    return -(code % 997) / 100.0 - 0.05 * len(continuation), code % 2 == 0


class FakeLM(LM):
    def loglikelihood(self, requests, disable_tqdm=False):
        return [fake_loglikelihood(*request.args) for request in requests]

    def loglikelihood_rolling(self, requests, disable_tqdm=False):
        raise NotImplementedError

    def generate_until(self, requests, disable_tqdm=False):
        raise NotImplementedError


def test_harness_task_configs_build_our_requests_and_metrics(task_manager):
    out = lm_eval.simple_evaluate(
        model=FakeLM(),
        tasks=[f"local_{name}" for name in HARNESS_CONFIGS],
        task_manager=task_manager,
        bootstrap_iters=0,  # no bootstrapped stderr: it forks worker processes, unsafe next to JAX's threads
        log_samples=True,
    )
    for name, (_, _, metrics) in HARNESS_CONFIGS.items():
        docs = read_docs(get_task(name), FIXTURES / f"{name}.jsonl")
        samples = sorted(out["samples"][f"local_{name}"], key=lambda sample: sample["doc_id"])
        assert [tuple(tuple(a) for a in sample["arguments"]) for sample in samples] == [
            zeroshot.doc_requests(doc) for doc in docs
        ], name
        ours = zeroshot.evaluate_task(get_task(name), docs, lambda rs: [fake_loglikelihood(*r) for r in rs])
        for metric in metrics:
            assert ours[metric] == pytest.approx(out["results"][f"local_{name}"][f"{metric},none"], rel=1e-12), (
                name,
                metric,
            )
    # The fake numbers do separate acc from acc_norm somewhere, so the comparison above covers both.
    assert any(
        out["results"][f"local_{n}"]["acc,none"] != out["results"][f"local_{n}"].get("acc_norm,none", -1) for n in TASKS
    )


def test_hope_jax_model_through_simple_evaluate_matches_eval_zeroshot(task_manager, tiny_run_workdir, tiny_run):
    lm_eval_adapter.register()
    out = lm_eval.simple_evaluate(
        model="hope_jax",
        model_args=f"workdir={tiny_run_workdir}",
        tasks=["local_piqa", "local_lambada"],
        batch_size=4,
        task_manager=task_manager,
        bootstrap_iters=0,  # no bootstrapped stderr: it forks worker processes, unsafe next to JAX's threads
    )
    loglikelihood = zeroshot.model_loglikelihood_fn(tiny_run, batch_size=4)
    for name in ("piqa", "lambada"):
        ours = zeroshot.evaluate_task(
            get_task(name), read_docs(get_task(name), FIXTURES / f"{name}.jsonl"), loglikelihood
        )
        for metric in HARNESS_CONFIGS[name][2]:
            assert ours[metric] == pytest.approx(out["results"][f"local_{name}"][f"{metric},none"], rel=1e-5)


def test_lm_eval_command_line_runs_hope_jax(harness_task_dir, tiny_run_workdir, tmp_path, monkeypatch):
    monkeypatch.setattr(sys, "argv", list(sys.argv))  # main() hands its arguments to lm-eval through sys.argv
    # As in the task_manager fixture, skip indexing lm-eval's built-in tasks; the command line is otherwise untouched.
    monkeypatch.setattr(lm_eval.tasks, "TaskManager", functools.partial(TaskManager, include_defaults=False))
    lm_eval_adapter.main(
        [
            "run",
            "--model=hope_jax",
            f"--model_args=workdir={tiny_run_workdir}",
            "--tasks=local_lambada",
            f"--include_path={harness_task_dir}",
            "--batch_size=4",
            "--limit=1",
            f"--output_path={tmp_path}",
        ]
    )
    (results_file,) = tmp_path.glob("**/results_*.json")
    results = json.loads(results_file.read_text())["results"]["local_lambada"]
    assert 0.0 <= results["acc,none"] <= 1.0 and results["perplexity,none"] > 1.0


def _instances(request_type, arguments):
    return [Instance(request_type, doc={}, arguments=args, idx=i) for i, args in enumerate(arguments)]


def test_loglikelihood_rolling_streams_the_whole_document(tiny_run):
    from data_pipeline.builtin_corpus import generate_document

    model = lm_eval_adapter.HopeJaxLM(run=tiny_run, batch_size=2)
    long_text = generate_document(0, 0)  # longer than the run's 32-token training length: several segments
    texts = [long_text, "alice likes tea ."]
    rolling = model.loglikelihood_rolling(_instances("loglikelihood_rolling", [(t,) for t in texts]))
    tokens = [tiny_run.tokenizer.eos_id, *tiny_run.tokenizer.encode(long_text)]
    assert len(tokens) > 2 * tiny_run.config.train.seq_len
    logprobs, _ = common.next_token_logprobs(tiny_run, np.array([tokens]))  # one unpadded pass over everything
    assert rolling[0] == pytest.approx(float(logprobs.sum()), rel=1e-5)
    assert rolling[1] < 0.0


def test_generate_until_is_greedy_and_stops_at_the_stop_string(tiny_run):
    model = lm_eval_adapter.HopeJaxLM(run=tiny_run, batch_size=2)
    prompt = "alice lives in paris . where does alice live ?"
    (free,) = model.generate_until(_instances("generate_until", [(prompt, {"until": [], "max_gen_toks": 5})]))
    expected = common.greedy_generate(tiny_run, [tiny_run.tokenizer.encode(prompt)], 5)[0]
    eos = tiny_run.tokenizer.eos_id
    assert free == tiny_run.tokenizer.decode(expected[: expected.index(eos)] if eos in expected else expected)
    words = free.split()
    assert words, "the tiny model generated only <eos>"
    stop = " " + words[-1]
    (stopped,) = model.generate_until(_instances("generate_until", [(prompt, {"until": [stop], "max_gen_toks": 5})]))
    assert stopped == free[: free.find(stop)] if stop in free else stopped == free
    with pytest.raises(ValueError, match="greedily only"):
        model.generate_until(_instances("generate_until", [(prompt, {"do_sample": True, "temperature": 0.7})]))


def test_cut_at_stops_cuts_at_the_earliest_stop():
    assert lm_eval_adapter.cut_at_stops("a. b\nc", ["\n", "."]) == "a"
    assert lm_eval_adapter.cut_at_stops("abc", ["x", ""]) == "abc"


def test_adapter_arguments_are_checked(tiny_run):
    with pytest.raises(ValueError, match="workdir"):
        lm_eval_adapter.HopeJaxLM()
    with pytest.raises(ValueError, match="integer batch_size"):
        lm_eval_adapter.HopeJaxLM(run=tiny_run, batch_size="auto")
    with pytest.raises(TypeError, match="unknown model arguments"):
        lm_eval_adapter.HopeJaxLM(run=tiny_run, temperature=1.0)
