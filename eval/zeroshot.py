"""Zero-shot benchmarks scored as lm-evaluation-harness scores them (DESIGN D12).

    python -m eval.zeroshot --workdir=runs/hope_760m --data_dir=data/zeroshot --download \\
        --tasks=piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq,lambada [--limit=100] [--step=N]

Each task reads <data_dir>/<task>.jsonl, one JSON object per line: the split the harness evaluates, with the field
names of the Hugging Face dataset its task YAML loads. --download fetches every missing file first (the network and
the `datasets` package of requirements-eval.txt needed), as the harness would load it; offline, the same files are
read from --data_dir as they are, wherever they came from (`python -m eval.tasks.zeroshot_download --data_dir=DIR`
on a machine with the network writes them without a model). What each file holds and the fields every record needs
(other fields are ignored):

    task file            dataset (configuration), split                  fields
    piqa.jsonl           baber/piqa, validation                          goal, sol1, sol2, label
    hellaswag.jsonl      Rowan/hellaswag, validation                     activity_label, ctx_a, ctx_b, endings, label
    winogrande.jsonl     allenai/winogrande (winogrande_xl), validation  sentence, option1, option2, answer
    arc_easy.jsonl       allenai/ai2_arc (ARC-Easy), test                question, choices.text, choices.label, answerKey
    arc_challenge.jsonl  allenai/ai2_arc (ARC-Challenge), test           question, choices.text, choices.label, answerKey
    siqa.jsonl           lighteval/siqa, validation                      context, question, answerA, answerB, answerC, label
    boolq.jsonl          aps/super_glue (boolq), validation              passage, question, label (or answer)
    lambada.jsonl        EleutherAI/lambada_openai (default), test       text

(choices.text / choices.label: the lists inside a `choices` object; BoolQ's `answer` is the google/boolq release's
true/false.) Prompts, answer choices and metrics follow the harness (eval/tasks/zeroshot_tasks.py); the model is the
run's latest checkpoint (or --step) with the run's own config, and every request goes through the stateful API in
batches (eval/common.py). Results go to <output_dir>/<run>/zeroshot-<UTC timestamp>.json with the arguments, each
task file's SHA-256 and, for a downloaded one, its source (dataset, configuration, split, the dataset repository's
commit, from <task>.source.json beside it), config hash, checkpoint step and code version, and under
summary.paper_average the papers' Avg column (PAPER_AVERAGE_COLUMNS; also the table's last row).

Text becomes tokens as the harness's causal models do it: trailing whitespace of the context moves to the continuation,
the continuation's tokens are those of tokenize(context + continuation) after the context's tokens, and an empty context
is replaced by the tokenizer's <eos>. (The public PyTorch reproduction of HOPE scored these tasks without length
normalisation, so its numbers are comparable with nothing; acc_norm here is the harness's.)
"""

from __future__ import annotations

import logging
import math
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from eval import common
from eval.results import write_results
from eval.tasks import zeroshot_download
from eval.tasks.zeroshot_tasks import (
    TASKS,
    MultipleChoiceDoc,
    TargetDoc,
    Task,
    TaskDataError,
    get_task,
    missing_file_message,
    read_docs,
)

# (context, continuation) texts -> (summed log-likelihood of the continuation, whether it is the greedy decoding)
LoglikelihoodFn = Callable[[Sequence[tuple[str, str]]], list[tuple[float, bool]]]

# The papers' "Avg" column (HOPE_SPEC §9.1 T1 = Titans Table 1, §9.2 N1 = Nested Learning Table 1; T §5 App. B): the
# unweighted mean of eight accuracies, acc on LAMBADA, PIQA, WinoGrande, ARC-e, SIQA, BoolQ and acc_norm (the harness's
# length-normalised accuracy) on HellaSwag and ARC-c; the two perplexity columns are not in it. Recomputed from the
# printed columns it gives the printed Avg within rounding (0.01) on 49 of the 53 rows of T1 and N1; the other four are
# the source's slips HOPE_SPEC lists (TTT 760M in both tables, Gated DeltaNet-H2 and Titans (LMM) 400M in T1).
PAPER_AVERAGE_COLUMNS: dict[str, str] = {
    "lambada": "acc",
    "piqa": "acc",
    "hellaswag": "acc_norm",
    "winogrande": "acc",
    "arc_easy": "acc",
    "arc_challenge": "acc_norm",
    "siqa": "acc",
    "boolq": "acc",
}
PAPER_AVERAGE_ROW = "paper_avg"

# Requests are right-padded to a multiple of this many tokens so a benchmark compiles a handful of shapes rather than
# one per request length (padding after a causal model's last scored token does not change its scores).
DEFAULT_PAD_MULTIPLE = 64


def encode_pair(tokenizer, context: str, continuation: str) -> tuple[list[int], list[int]]:
    """Context and continuation token ids, split the way lm-evaluation-harness splits them for causal models."""
    trailing = len(context) - len(context.rstrip())
    if trailing:
        context, continuation = context[:-trailing], context[-trailing:] + continuation
    if not context:
        context_ids = [tokenizer.eos_id]
        continuation_ids = list(tokenizer.encode(continuation))
    else:
        context_ids = list(tokenizer.encode(context))
        continuation_ids = list(tokenizer.encode(context + continuation))[len(context_ids) :]
        if not context_ids:
            context_ids = [tokenizer.eos_id]
    if not continuation_ids:
        raise ValueError(f"continuation {continuation!r} adds no tokens to context {context[-80:]!r}")
    return context_ids, continuation_ids


def model_loglikelihood_fn(
    run: common.Run, *, batch_size: int = 8, pad_multiple: int = DEFAULT_PAD_MULTIPLE
) -> LoglikelihoodFn:
    """A LoglikelihoodFn scoring text requests with the run's model and tokenizer, batched through the stateful API."""

    def loglikelihood(requests: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        token_requests = [encode_pair(run.tokenizer, context, continuation) for context, continuation in requests]
        return common.loglikelihoods(run, token_requests, batch_size=batch_size, pad_multiple=pad_multiple)

    return loglikelihood


def choice_metrics(doc: MultipleChoiceDoc, loglikelihoods: Sequence[float]) -> dict[str, float]:
    """acc, acc_norm (divided by characters, the harness's len(choice)) and acc_bytes (by UTF-8 bytes) of one question.

    np.argmax breaks ties towards the first choice, as the harness does.
    """
    lls = np.asarray(loglikelihoods, np.float64)
    chars = np.array([len(choice) for choice in doc.choices], np.float64)
    utf8_bytes = np.array([len(choice.encode("utf-8")) for choice in doc.choices], np.float64)
    return {
        "acc": float(np.argmax(lls) == doc.gold),
        "acc_norm": float(np.argmax(lls / chars) == doc.gold),
        "acc_bytes": float(np.argmax(lls / utf8_bytes) == doc.gold),
    }


def mean_and_stderr(values: Sequence[float]) -> tuple[float, float | None]:
    """The mean and the harness's standard error of it (sample standard deviation / sqrt(n); None for one value)."""
    values = np.asarray(values, np.float64)
    stderr = float(values.std(ddof=1) / math.sqrt(len(values))) if len(values) > 1 else None
    return float(values.mean()), stderr


def doc_requests(doc: MultipleChoiceDoc | TargetDoc) -> tuple[tuple[str, str], ...]:
    return doc.requests if isinstance(doc, MultipleChoiceDoc) else ((doc.context, doc.continuation),)


def evaluate_task(task: Task, docs: Sequence[MultipleChoiceDoc | TargetDoc], loglikelihood: LoglikelihoodFn) -> dict:
    """The task's metrics over `docs`; every request of every document goes to `loglikelihood` in one call."""
    requests = [request for doc in docs for request in doc_requests(doc)]
    results = loglikelihood(requests)
    if len(results) != len(requests):
        raise ValueError(f"{task.name}: {len(requests)} requests gave {len(results)} results")
    per_metric: dict[str, list[float]] = {metric: [] for metric in task.metrics}
    target_loglikelihoods: list[float] = []
    start = 0
    for doc in docs:
        if isinstance(doc, MultipleChoiceDoc):
            lls = [ll for ll, _ in results[start : start + len(doc.requests)]]
            start += len(doc.requests)
            scores = choice_metrics(doc, lls)
            for metric in per_metric:
                per_metric[metric].append(scores[metric])
        else:
            ll, greedy = results[start]
            start += 1
            target_loglikelihoods.append(ll)
            per_metric["acc"].append(float(greedy))
    summary: dict[str, float | int | None] = {"n": len(docs)}
    for metric, values in per_metric.items():
        if metric == "perplexity":
            summary["perplexity"] = math.exp(-float(np.mean(target_loglikelihoods)))
        else:
            summary[metric], summary[f"{metric}_stderr"] = mean_and_stderr(values)
    return summary


def paper_average(results: dict) -> dict:
    """The papers' Avg column from per-task results (PAPER_AVERAGE_COLUMNS), as a fraction like the task metrics (the
    papers print it ×100): {'value', 'columns', 'missing'}. 'value' is None unless all eight tasks were evaluated: a
    mean over fewer tasks is not the papers' column and would be compared with it by mistake."""
    missing = [task for task in PAPER_AVERAGE_COLUMNS if task not in results]
    value = None
    if not missing:
        value = float(np.mean([results[task][metric] for task, metric in PAPER_AVERAGE_COLUMNS.items()]))
    return {"value": value, "columns": dict(PAPER_AVERAGE_COLUMNS), "missing": missing}


def task_file(data_dir: str, task_name: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / f"{task_name}.jsonl"


def prepare_task_files(task_names: Sequence[str], data_dir: str, *, download: bool = False) -> dict[str, dict]:
    """Make sure every task's file is in `data_dir` (fetched first when `download` and missing), before any model is
    loaded; returns {task: {path, sha256, source}} for the results file (source: the download record, or None).

    A missing file without `download` is an error naming every missing file, the fields it needs and --download."""
    tasks = [get_task(name) for name in task_names]  # unknown names fail before anything else
    missing = [task for task in tasks if not task_file(data_dir, task.name).is_file()]
    if missing and not download:
        raise TaskDataError("; ".join(missing_file_message(task, task_file(data_dir, task.name)) for task in missing))
    for task in missing:
        path = task_file(data_dir, task.name)
        logging.info("zeroshot: downloading %s (%s, %s) to %s", task.name, task.dataset_id, task.public_split, path)
        source = zeroshot_download.download_task(task, path)
        logging.info("zeroshot: %s: %d records @ %s", path, source["records"], source["revision"])
    files = {}
    for task in tasks:
        path = task_file(data_dir, task.name)
        files[task.name] = {
            "path": str(path),
            "sha256": zeroshot_download.file_sha256(path),
            "source": zeroshot_download.recorded_source(path),
        }
    return files


def run_zeroshot(
    run: common.Run,
    task_names: Sequence[str],
    data_dir: str,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    pad_multiple: int = DEFAULT_PAD_MULTIPLE,
    download: bool = False,
    output_dir: str = "eval",
    record_args: dict | None = None,
) -> tuple[dict, pathlib.Path]:
    """Evaluate `run` on the named tasks and write the results file; returns (results, path).

    download: fetch missing task files into data_dir first (prepare_task_files)."""
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    task_files = prepare_task_files(task_names, data_dir, download=download)  # unknown names fail before any scoring
    tasks = [get_task(name) for name in task_names]
    docs_by_task = {task.name: read_docs(task, task_file(data_dir, task.name), limit=limit) for task in tasks}
    loglikelihood = model_loglikelihood_fn(run, batch_size=batch_size, pad_multiple=pad_multiple)
    results = {task.name: evaluate_task(task, docs_by_task[task.name], loglikelihood) for task in tasks}
    args = dict(
        tasks=list(task_names),
        data_dir=str(data_dir),
        limit=limit,
        batch_size=batch_size,
        pad_multiple=pad_multiple,
        download=download,
        task_files=task_files,
    )
    summary = {"paper_average": paper_average(results)}
    path = write_results(
        run, "zeroshot", args, results, output_dir=output_dir, record_args=record_args, summary=summary
    )
    return results, path


def format_table(results: dict) -> str:
    lines = [f"{'task':<14} {'n':>6}  metrics"]
    for name, summary in results.items():
        metrics = "  ".join(
            f"{key}={value:.4f}" for key, value in summary.items() if key != "n" and not key.endswith("_stderr")
        )
        lines.append(f"{name:<14} {summary['n']:>6}  {metrics}")
    average = paper_average(results)
    if average["value"] is not None:
        lines.append(
            f"{PAPER_AVERAGE_ROW:<14} {'':>6}  avg={average['value']:.4f} "
            "(the papers' Avg: acc_norm on hellaswag, arc_challenge; acc on the other six)"
        )
    else:
        lines.append(f"{PAPER_AVERAGE_ROW:<14} {'':>6}  not computed: missing {', '.join(average['missing'])}")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    common.define_common_flags(fv)
    flags.DEFINE_list("tasks", list(TASKS), f"Tasks to evaluate, from: {', '.join(TASKS)}.", flag_values=fv)
    flags.DEFINE_string(
        "data_dir",
        "data/zeroshot",
        "Directory holding <task>.jsonl for every task, one JSON object per line (the split the harness evaluates, "
        "with its dataset's field names; the module docstring above lists the datasets), with these fields: "
        + "; ".join(f"{task.name}.jsonl: {', '.join(task.fields)}" for task in TASKS.values())
        + ".",
        flag_values=fv,
    )
    flags.DEFINE_bool(
        "download",
        False,
        "Fetch every missing <task>.jsonl into --data_dir first, from the Hugging Face Hub (needs the network and the "
        "`datasets` package, requirements-eval.txt); the dataset, split and commit are recorded with the results.",
        flag_values=fv,
    )
    flags.DEFINE_integer("limit", None, "Evaluate only the first N documents of every task.", flag_values=fv)
    flags.DEFINE_integer(
        "pad_multiple",
        DEFAULT_PAD_MULTIPLE,
        "Right-pad requests to a multiple of this many tokens (0: exact lengths, one compilation per length).",
        flag_values=fv,
    )


def run_from_flags(fv: flags.FlagValues) -> tuple[dict, pathlib.Path]:
    # Task files first: a missing one (or a failed download) is reported before the checkpoint is read.
    prepare_task_files(fv.tasks, fv.data_dir, download=fv.download)
    return common.evaluate_from_flags(
        fv,
        run_zeroshot,
        fv.tasks,
        fv.data_dir,
        limit=fv.limit,
        batch_size=fv.batch_size,
        pad_multiple=fv.pad_multiple,
        download=fv.download,
    )


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
