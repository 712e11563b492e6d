"""eval/zeroshot.py and eval/tasks/zeroshot_tasks.py: lm-evaluation-harness prompts and scoring, checked by hand.

The unit tests feed known log-likelihoods through the scorer (no model); the end-to-end test scores every task's
fixture with a tiny trained model and checks one task against an independent per-request computation.
"""

import json
import math
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from eval import common, zeroshot
from eval.tasks import zeroshot_tasks
from eval.tasks.zeroshot_tasks import TASKS, MultipleChoiceDoc, TaskDataError, get_task, read_docs

FIXTURES = pathlib.Path(__file__).parent / "fixtures" / "zeroshot"
REPO_ROOT = pathlib.Path(__file__).resolve().parent.parent


def fixture_docs(name, limit=None):
    return read_docs(get_task(name), FIXTURES / f"{name}.jsonl", limit=limit)


def fake_loglikelihood(table):
    """A LoglikelihoodFn answering from a {(context, continuation): (ll, greedy)} table; unknown requests fail."""

    def loglikelihood(requests):
        return [table[request] for request in requests]

    return loglikelihood


def test_every_task_has_a_fixture_in_its_public_field_names():
    for name in TASKS:
        docs = fixture_docs(name)
        assert 2 <= len(docs) <= 3, name


def test_prompts_follow_the_harness_templates():
    piqa = fixture_docs("piqa")[0]
    assert piqa.requests == (
        ("Question: where does alice live ?\nAnswer:", " paris"),
        ("Question: where does alice live ?\nAnswer:", " alice lives in a small old city"),
    )
    assert piqa.choices == ("paris", "alice lives in a small old city") and piqa.gold == 1

    # HellaSwag: "<activity>: <ctx_a> <ctx_b.capitalize()>", '[title]' becomes '. ', other brackets and double spaces go.
    hellaswag = fixture_docs("hellaswag")[0]
    context = "Making tea: the baker calls the tired teacher. The teacher"
    assert [request[0] for request in hellaswag.requests] == [context] * 4
    assert hellaswag.choices == ("likes tea. and coffee.", "has a red fox.", "lives in paris.", "sees the king.")
    assert hellaswag.requests[0][1] == " likes tea. and coffee."
    assert fixture_docs("hellaswag")[1].gold == 3

    # WinoGrande partial scoring: the option completes the context, the rest of the sentence is the continuation.
    winogrande = fixture_docs("winogrande")[1]
    assert winogrande.requests == (
        ("bob has a dog but bob", " likes cats ."),
        ("bob has a dog but the dog", " likes cats ."),
    )
    assert winogrande.gold == 1

    arc_easy = fixture_docs("arc_easy")
    assert arc_easy[0].gold == 2 and arc_easy[1].gold == 1  # answerKey "C" of A-D; answerKey "2" of "1"-"3"
    assert arc_easy[1].requests[0] == ("Question: where does erin live ?\nAnswer:", " rome")

    siqa = fixture_docs("siqa")[0]
    assert siqa.requests[1] == ("Q: alice meets the tired doctor today . what does alice like ?\nA:", " the doctor")
    assert siqa.gold == 1  # label "2" is answerB

    boolq = fixture_docs("boolq")
    assert boolq[0].requests == tuple(
        (
            "alice lives in paris . alice likes tea .\nQuestion: does alice live in paris?\nAnswer:",
            answer,
        )
        for answer in (" no", " yes")
    )
    assert [doc.gold for doc in boolq] == [1, 0]  # answer true -> " yes", false -> " no"
    assert zeroshot_tasks.boolq_doc({"passage": "p", "question": "q", "label": 1}).gold == 1  # super_glue release

    lambada = fixture_docs("lambada")[1]
    assert (lambada.context, lambada.continuation) == ("bob likes tea . what does bob like ? bob likes", " tea")


def test_scores_equal_a_hand_computation_on_the_two_item_piqa_fixture():
    q1, q2 = "Question: where does alice live ?\nAnswer:", "Question: what does bob like ?\nAnswer:"
    table = {
        # Item 1 (gold: the long choice): raw log-likelihood prefers the short one (-2.0 > -6.2), but per character
        # the long one wins (-6.2 / 31 = -0.2 > -2.0 / 5 = -0.4): acc 0, acc_norm 1.
        (q1, " paris"): (-2.0, True),
        (q1, " alice lives in a small old city"): (-6.2, False),
        # Item 2 (gold: the short choice): both pick it (-1.0 > -30.0; -1/3 > -30/23): acc 1, acc_norm 1.
        (q2, " tea"): (-1.0, True),
        (q2, " bob likes the cold rain"): (-30.0, False),
    }
    summary = zeroshot.evaluate_task(get_task("piqa"), fixture_docs("piqa"), fake_loglikelihood(table))
    assert summary["n"] == 2
    assert summary["acc"] == 0.5 and summary["acc_norm"] == 1.0 and summary["acc_bytes"] == 1.0
    # The harness's standard error: sample standard deviation / sqrt(n) = (1 / sqrt 2) / sqrt 2.
    assert summary["acc_stderr"] == pytest.approx(0.5, abs=1e-12)
    assert summary["acc_norm_stderr"] == 0.0


def test_lambada_accuracy_is_greedy_match_and_perplexity_is_exp_of_minus_mean_loglikelihood():
    table = {
        ("alice lives in paris . where does alice live ? alice lives in", " paris"): (-1.0, True),
        ("bob likes tea . what does bob like ? bob likes", " tea"): (-3.0, False),
    }
    summary = zeroshot.evaluate_task(get_task("lambada"), fixture_docs("lambada"), fake_loglikelihood(table))
    assert summary["acc"] == 0.5
    assert summary["perplexity"] == pytest.approx(math.exp(2.0), rel=1e-12)
    assert set(summary) == {"n", "acc", "acc_stderr", "perplexity"}


def test_winogrande_reports_accuracy_of_the_shared_continuation():
    docs = fixture_docs("winogrande")
    table = {
        ("alice helps carol because alice", " likes the old man ."): (-4.0, False),
        ("alice helps carol because carol", " likes the old man ."): (-3.0, False),  # wrong option preferred
        ("bob has a dog but bob", " likes cats ."): (-5.0, False),
        ("bob has a dog but the dog", " likes cats ."): (-2.5, True),  # right option preferred
    }
    summary = zeroshot.evaluate_task(get_task("winogrande"), docs, fake_loglikelihood(table))
    assert set(summary) == {"n", "acc", "acc_stderr"} and summary["acc"] == 0.5


def test_acc_norm_divides_by_characters_and_acc_bytes_by_utf8_bytes():
    # "café" is 4 characters but 5 UTF-8 bytes, "cafes" 5 of each: dividing by characters and by bytes disagree.
    doc = MultipleChoiceDoc(requests=(("c", " café"), ("c", " cafes")), choices=("café", "cafes"), gold=0)
    scores = zeroshot.choice_metrics(doc, [-4.4, -5.4])  # per char -1.1 vs -1.08; per byte -0.88 vs -1.08
    assert scores == {"acc": 1.0, "acc_norm": 0.0, "acc_bytes": 1.0}
    tie = MultipleChoiceDoc(requests=(("c", " a"), ("c", " b")), choices=("a", "b"), gold=0)
    assert zeroshot.choice_metrics(tie, [-1.0, -1.0])["acc"] == 1.0  # ties go to the first choice, as np.argmax


def test_requests_reach_the_loglikelihood_function_in_one_call_and_come_back_in_order():
    docs = fixture_docs("arc_easy")
    calls = []

    def loglikelihood(requests):
        calls.append(list(requests))
        # The gold choice of each question gets the highest score only if results are regrouped in order.
        return [(-float(i), False) for i in range(len(requests))]

    summary = zeroshot.evaluate_task(get_task("arc_easy"), docs, loglikelihood)
    assert len(calls) == 1 and len(calls[0]) == 4 + 3
    assert summary["acc"] == 0.0  # the first choice of each question wins; neither gold is first
    reordered = [MultipleChoiceDoc(d.requests, d.choices, gold=0) for d in docs]
    assert zeroshot.evaluate_task(get_task("arc_easy"), reordered, loglikelihood)["acc"] == 1.0


class _MergingTokenizer:
    """Characters as tokens except that "ab" is one token: tokenize(context + continuation) is not the concatenation."""

    eos_id = 0

    def encode(self, text):
        ids, i = [], 0
        while i < len(text):
            if text.startswith("ab", i):
                ids.append(1000)
                i += 2
            else:
                ids.append(ord(text[i]))
                i += 1
        return ids


def test_encode_pair_splits_the_whole_encoding_like_the_harness():
    tokenizer = _MergingTokenizer()
    # Trailing whitespace of the context moves to the continuation.
    assert zeroshot.encode_pair(tokenizer, "x ", "y") == ([ord("x")], [ord(" "), ord("y")])
    # Continuation tokens are those of the whole text after the context's tokens.
    assert zeroshot.encode_pair(tokenizer, "xa", "bc") == ([ord("x"), ord("a")], [ord("c")])
    # An empty context becomes <eos>.
    assert zeroshot.encode_pair(tokenizer, "", " q") == ([0], [ord(" "), ord("q")])
    with pytest.raises(ValueError, match="adds no tokens"):
        zeroshot.encode_pair(tokenizer, "xa", "")


def test_task_files_with_wrong_fields_fail_with_the_line_and_the_expected_fields(tmp_path):
    bad = tmp_path / "piqa.jsonl"
    bad.write_text(
        json.dumps({"goal": "g", "sol1": "a", "sol2": "b", "label": 0}) + "\n" + json.dumps({"question": "q"})
    )
    with pytest.raises(
        TaskDataError, match=r"piqa.jsonl:2: piqa record lacks field 'goal'; expected fields goal, sol1"
    ):
        read_docs(get_task("piqa"), bad)
    assert len(read_docs(get_task("piqa"), bad, limit=1)) == 1  # --limit stops before the bad line
    arc = tmp_path / "arc.jsonl"
    arc.write_text(json.dumps({"question": "q", "choices": {"text": ["a"], "label": ["A"]}, "answerKey": "B"}))
    with pytest.raises(TaskDataError, match="arc.jsonl:1: bad arc_easy record"):
        read_docs(get_task("arc_easy"), arc)
    with pytest.raises(TaskDataError, match="no task file .*siqa.jsonl.*validation split"):
        read_docs(get_task("siqa"), tmp_path / "siqa.jsonl")
    with pytest.raises(ValueError, match="unknown zero-shot task 'mmlu'"):
        get_task("mmlu")


# Printed rows (acc columns ×100, in PAPER_AVERAGE_COLUMNS' order) and their printed Avg: HOPE 1.3B of NL Table 1
# (HOPE_SPEC N1) and Titans (MAC) 400M of Titans Table 1 (T1).
PAPER_ROWS = {
    "hope_1.3b": ([50.01, 73.29, 56.84, 60.19, 72.30, 41.24, 42.52, 61.46], 57.23),
    "titans_mac_400m": ([36.92, 66.39, 41.18, 52.80, 60.24, 29.69, 40.07, 61.93], 48.65),
}


@pytest.mark.parametrize("row", list(PAPER_ROWS))
def test_paper_average_reproduces_the_printed_avg_column(row):
    columns, printed = PAPER_ROWS[row]
    results = {}
    for (task, metric), value in zip(zeroshot.PAPER_AVERAGE_COLUMNS.items(), columns, strict=True):
        # every other metric far from the column's, so that averaging the wrong one shows
        results[task] = {"n": 10, "acc": 0.0, "acc_norm": 0.0, "acc_bytes": 0.0, "perplexity": 50.0}
        results[task][metric] = value / 100
    average = zeroshot.paper_average(results)
    assert average["missing"] == [] and set(average["columns"]) == set(TASKS)
    assert average["value"] * 100 == pytest.approx(printed, abs=0.005)  # the paper rounds to two decimals
    assert zeroshot.format_table(results).splitlines()[-1].split()[:2] == ["paper_avg", f"avg={average['value']:.4f}"]


def test_paper_average_is_not_computed_from_a_subset_of_the_tasks():
    results = {"piqa": {"n": 2, "acc": 1.0, "acc_norm": 1.0, "acc_bytes": 1.0}}
    average = zeroshot.paper_average(results)
    assert average["value"] is None and "piqa" not in average["missing"] and len(average["missing"]) == 7
    assert "not computed: missing lambada" in zeroshot.format_table(results)


def test_importing_the_lm_eval_adapter_does_not_import_lm_eval():
    code = "import sys, eval.lm_eval_adapter; assert 'lm_eval' not in sys.modules and 'jax' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], cwd=REPO_ROOT, check=True)


def test_zeroshot_command_end_to_end_on_a_tiny_trained_model(tmp_path, tiny_run_workdir, tiny_run):
    results, path = common.run_command(
        zeroshot.define_flags,
        zeroshot.run_from_flags,
        [
            "zeroshot",
            f"--workdir={tiny_run_workdir}",
            f"--data_dir={FIXTURES}",
            f"--output_dir={tmp_path}",
            "--batch_size=4",
        ],
    )
    record = json.loads(path.read_text())
    assert path.parent == tmp_path / tiny_run.name and path.name.startswith("zeroshot-")
    assert record["checkpoint_step"] == tiny_run.step == 2 and record["config_hash"] == tiny_run.config_hash
    assert record["args"]["tasks"] == list(TASKS) and record["args"]["workdir"] == tiny_run_workdir
    assert len(record["args"]["task_files"]["piqa"]["sha256"]) == 64 and record["code_version"]
    assert record["results"] == json.loads(json.dumps(results))
    columns = zeroshot.PAPER_AVERAGE_COLUMNS
    expected_average = np.mean([results[task][metric] for task, metric in columns.items()])
    assert record["summary"]["paper_average"]["value"] == pytest.approx(expected_average, rel=1e-12)
    for name, summary in results.items():
        assert summary["n"] == len(fixture_docs(name))
        for metric in TASKS[name].metrics:
            value = summary[metric]
            assert (value > 1.0) if metric == "perplexity" else (0.0 <= value <= 1.0), (name, metric, value)

    # PIQA again by hand: the padded, batched log-likelihoods equal one unpadded forward per request, and the metrics
    # follow from them.
    docs = fixture_docs("piqa")
    requests = [request for doc in docs for request in doc.requests]
    batched = zeroshot.model_loglikelihood_fn(tiny_run, batch_size=4)(requests)
    context_ids, continuation_ids = zeroshot.encode_pair(tiny_run.tokenizer, *requests[0])
    logprobs, _ = common.next_token_logprobs(tiny_run, np.array([context_ids + continuation_ids]))
    assert batched[0][0] == pytest.approx(float(logprobs[0, len(context_ids) - 1 :].sum()), rel=1e-5)
    per_doc = [zeroshot.choice_metrics(doc, [ll for ll, _ in batched[2 * i : 2 * i + 2]]) for i, doc in enumerate(docs)]
    for metric in ("acc", "acc_norm", "acc_bytes"):
        assert results["piqa"][metric] == np.mean([scores[metric] for scores in per_doc])


def test_zeroshot_limit_reads_only_the_first_documents(tmp_path, tiny_run):
    results, path = zeroshot.run_zeroshot(
        tiny_run, ["lambada", "boolq"], str(FIXTURES), limit=1, batch_size=4, output_dir=str(tmp_path)
    )
    assert results["lambada"]["n"] == results["boolq"]["n"] == 1 and results["lambada"]["acc_stderr"] is None
    assert json.loads(path.read_text())["args"]["limit"] == 1
    with pytest.raises(ValueError, match="unknown zero-shot task 'mmlu'"):
        zeroshot.run_zeroshot(tiny_run, ["piqa", "mmlu"], str(FIXTURES), output_dir=str(tmp_path))


def test_command_without_task_files_is_one_error_line(tmp_path, tiny_run_workdir):
    """README: `python -m eval.zeroshot --workdir=W --data_dir=data/zeroshot` on a machine without the task files ends
    in one `error:` line naming the missing file, its fields and how to fetch it (not a traceback)."""
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "eval.zeroshot",
            f"--workdir={tiny_run_workdir}",
            f"--data_dir={tmp_path}",
            "--tasks=piqa",
            f"--output_dir={tmp_path / 'out'}",
        ],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert completed.returncode == 1 and "Traceback" not in completed.stderr
    last = completed.stderr.strip().splitlines()[-1]
    assert last.startswith(f"error: TaskDataError: piqa: no task file {tmp_path}/piqa.jsonl")
    assert "fields goal, sol1, sol2, label" in last and "--download" in last
    assert not (tmp_path / "out").exists()
