"""Zero-shot benchmarks scored as lm-evaluation-harness scores them (DESIGN D12).

    python -m eval.zeroshot --workdir=runs/hope_760m --data_dir=data/zeroshot \\
        --tasks=piqa,hellaswag,winogrande,arc_easy,arc_challenge,siqa,boolq,lambada [--limit=100] [--step=N]

Each task reads <data_dir>/<task>.jsonl: the split of the public release that the harness evaluates, one record per line
with the release's own field names (eval/tasks/zeroshot_tasks.py lists them), e.g. written with
`datasets.load_dataset("piqa", split="validation").to_json("data/zeroshot/piqa.jsonl")`. Prompts, answer choices and
metrics follow the harness; the model is the run's latest checkpoint (or --step) with the run's own config, and every
request goes through the stateful API in batches (eval/common.py). Results go to
<output_dir>/<run>/zeroshot-<UTC timestamp>.json with the arguments, the task files' SHA-256, config hash, checkpoint
step and code version.

Text becomes tokens as the harness's causal models do it: trailing whitespace of the context moves to the continuation,
the continuation's tokens are those of tokenize(context + continuation) after the context's tokens, and an empty context
is replaced by the tokenizer's <eos>. (The public PyTorch reproduction of HOPE scored these tasks without length
normalisation, so its numbers are comparable with nothing; acc_norm here is the harness's.)
"""

from __future__ import annotations

import hashlib
import math
import pathlib
from collections.abc import Callable, Sequence

import numpy as np
from absl import flags

from eval import common
from eval.tasks.zeroshot_tasks import TASKS, MultipleChoiceDoc, TargetDoc, Task, get_task, read_docs

# (context, continuation) texts -> (summed log-likelihood of the continuation, whether it is the greedy decoding)
LoglikelihoodFn = Callable[[Sequence[tuple[str, str]]], list[tuple[float, bool]]]

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


def task_file(data_dir: str, task_name: str) -> pathlib.Path:
    return pathlib.Path(data_dir) / f"{task_name}.jsonl"


def _sha256(path: pathlib.Path) -> str:
    return hashlib.sha256(path.read_bytes()).hexdigest()


def run_zeroshot(
    run: common.Run,
    task_names: Sequence[str],
    data_dir: str,
    *,
    limit: int | None = None,
    batch_size: int = 8,
    pad_multiple: int = DEFAULT_PAD_MULTIPLE,
    output_dir: str = "eval",
    record_args: dict | None = None,
) -> tuple[dict, pathlib.Path]:
    """Evaluate `run` on the named tasks and write the results file; returns (results, path)."""
    tasks = [get_task(name) for name in task_names]  # unknown names fail before any scoring
    if limit is not None and limit < 1:
        raise ValueError(f"--limit must be at least 1, got {limit}")
    docs_by_task = {task.name: read_docs(task, task_file(data_dir, task.name), limit=limit) for task in tasks}
    loglikelihood = model_loglikelihood_fn(run, batch_size=batch_size, pad_multiple=pad_multiple)
    results = {task.name: evaluate_task(task, docs_by_task[task.name], loglikelihood) for task in tasks}
    args = dict(
        tasks=list(task_names),
        data_dir=str(data_dir),
        limit=limit,
        batch_size=batch_size,
        pad_multiple=pad_multiple,
        task_files={
            name: {"path": str(task_file(data_dir, name)), "sha256": _sha256(task_file(data_dir, name))}
            for name in task_names
        },
    )
    path = common.write_results(run, "zeroshot", args, results, output_dir=output_dir, record_args=record_args)
    return results, path


def format_table(results: dict) -> str:
    lines = [f"{'task':<14} {'n':>6}  metrics"]
    for name, summary in results.items():
        metrics = "  ".join(
            f"{key}={value:.4f}" for key, value in summary.items() if key != "n" and not key.endswith("_stderr")
        )
        lines.append(f"{name:<14} {summary['n']:>6}  {metrics}")
    return "\n".join(lines)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    common.define_common_flags(fv)
    flags.DEFINE_list("tasks", list(TASKS), f"Tasks to evaluate, from: {', '.join(TASKS)}.", flag_values=fv)
    flags.DEFINE_string("data_dir", "data/zeroshot", "Directory holding <task>.jsonl for every task.", flag_values=fv)
    flags.DEFINE_integer("limit", None, "Evaluate only the first N documents of every task.", flag_values=fv)
    flags.DEFINE_integer(
        "pad_multiple",
        DEFAULT_PAD_MULTIPLE,
        "Right-pad requests to a multiple of this many tokens (0: exact lengths, one compilation per length).",
        flag_values=fv,
    )


def run_from_flags(fv: flags.FlagValues) -> tuple[dict, pathlib.Path]:
    return common.evaluate_from_flags(
        fv, run_zeroshot, fv.tasks, fv.data_dir, limit=fv.limit, batch_size=fv.batch_size, pad_multiple=fv.pad_multiple
    )


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
