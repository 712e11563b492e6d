"""The zero-shot tasks, prompted exactly as lm-evaluation-harness prompts them (DESIGN D12).

Each task reads one local JSONL file whose records carry the field names of the dataset's public release (the Hugging
Face dataset the harness loads; eval/tasks/zeroshot_download.py fetches it), and turns a record into text requests: a
context and a continuation whose summed log-likelihood the model scores. The templates, the target delimiter (" ")
between context and answer, the answer choices and the gold index follow the harness's task YAMLs (lm-eval 0.4.x), so
scores here are comparable with published harness numbers:

=============  ==================================  =======================================================  ===========
task           harness task / public split         context -> continuation(s)                               metrics
=============  ==================================  =======================================================  ===========
piqa           piqa / validation                   "Question: {goal}\\nAnswer:" -> " {sol1}", " {sol2}"      acc, norm
hellaswag      hellaswag / validation              "{activity_label}: {ctx_a} {ctx_b.capitalize()}"           acc, norm
                                                   (cleaned) -> " {ending}" x 4
winogrande     winogrande (winogrande_xl) / valid. "{sentence up to _}{option}" -> " {rest of sentence}"     acc
arc_easy       arc_easy / test                     "Question: {question}\\nAnswer:" -> " {choices.text[i]}"  acc, norm
arc_challenge  arc_challenge / test                same as arc_easy                                         acc, norm
siqa           social_iqa / validation             "Q: {context} {question}\\nA:" -> " {answerA..C}"         acc, norm
boolq          boolq (super_glue) / validation     "{passage}\\nQuestion: {question}?\\nAnswer:" -> " no"/" yes"  acc, norm
lambada        lambada_openai / test               text without its last word -> " {last word}"             acc, ppl
=============  ==================================  =======================================================  ===========

The files, the dataset (configuration) and split each holds, as the harness's YAMLs load them, and the fields every
record must have (other fields are ignored; `describe_task_files()` prints this from TASKS):

    piqa.jsonl           baber/piqa, validation                          goal, sol1, sol2, label
    hellaswag.jsonl      Rowan/hellaswag, validation                     activity_label, ctx_a, ctx_b, endings, label
    winogrande.jsonl     allenai/winogrande (winogrande_xl), validation  sentence, option1, option2, answer
    arc_easy.jsonl       allenai/ai2_arc (ARC-Easy), test                question, choices.text, choices.label, answerKey
    arc_challenge.jsonl  allenai/ai2_arc (ARC-Challenge), test           question, choices.text, choices.label, answerKey
    siqa.jsonl           lighteval/siqa, validation                      context, question, answerA, answerB, answerC, label
    boolq.jsonl          aps/super_glue (boolq), validation              passage, question, label (or answer)
    lambada.jsonl        EleutherAI/lambada_openai (default), test       text

WinoGrande uses the harness's partial scoring: the two options give two contexts, and the shared continuation (the
sentence after the blank) is scored under each. BoolQ takes the gold answer from `answer` (a bool, the google/boolq
release) or `label` (0/1, the super_glue release).

Only the harness's own metrics are computed: acc (argmax of summed log-likelihood), acc_norm (argmax of log-likelihood
divided by the choice's length in characters, the harness's `len(choice)`), acc_bytes (the same divided by its UTF-8
length), and for LAMBADA acc (every target token is the greedy choice) and perplexity (exp of minus the mean
log-likelihood of the target word over documents). The harness's default YAMLs report acc_norm only for piqa,
hellaswag and arc; it is computed here for every task whose choices are continuations because it costs nothing.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
import re
from collections.abc import Callable, Mapping
from typing import Any

TARGET_DELIMITER = " "


class TaskDataError(ValueError):
    """A task file that cannot be read as the task's public release."""


@dataclasses.dataclass(frozen=True)
class MultipleChoiceDoc:
    """One question: a (context, continuation) request per choice, the choice texts and the gold index."""

    requests: tuple[tuple[str, str], ...]
    choices: tuple[str, ...]  # the harness's doc_to_choice texts (their lengths normalise acc_norm / acc_bytes)
    gold: int


@dataclasses.dataclass(frozen=True)
class TargetDoc:
    """One cloze item: the context and the target continuation (LAMBADA)."""

    context: str
    continuation: str


Doc = MultipleChoiceDoc | TargetDoc


@dataclasses.dataclass(frozen=True)
class Task:
    name: str
    harness_task: str  # the lm-evaluation-harness task it reproduces
    public_split: str  # the split of the public release that the harness evaluates
    fields: tuple[str, ...]  # the record fields it reads (the public release's names)
    build: Callable[[Mapping[str, Any]], Doc]
    metrics: tuple[str, ...]
    dataset_path: str  # the Hugging Face dataset the harness's task YAML loads (dataset_path) ...
    dataset_name: str | None  # ... and its configuration (dataset_name)

    @property
    def dataset_id(self) -> str:
        return self.dataset_path + (f" ({self.dataset_name})" if self.dataset_name else "")


def _answer_choices(context: str, choices: list[str], gold: int) -> MultipleChoiceDoc:
    if not 0 <= gold < len(choices):
        raise ValueError(f"gold index {gold} is outside the {len(choices)} choices")
    return MultipleChoiceDoc(
        requests=tuple((context, TARGET_DELIMITER + choice) for choice in choices), choices=tuple(choices), gold=gold
    )


def piqa_doc(record: Mapping[str, Any]) -> MultipleChoiceDoc:
    return _answer_choices(
        f"Question: {record['goal']}\nAnswer:", [record["sol1"], record["sol2"]], int(record["label"])
    )


def hellaswag_clean(text: str) -> str:
    """The harness's HellaSwag text clean-up: WikiHow '[title]' markers become sentence breaks, other brackets go."""
    text = text.strip()
    text = text.replace(" [title]", ". ")
    text = re.sub(r"\[.*?\]", "", text)
    return text.replace("  ", " ")


def hellaswag_doc(record: Mapping[str, Any]) -> MultipleChoiceDoc:
    # str.capitalize also lower-cases the rest of ctx_b: the harness does exactly this, so we do too.
    context = record["ctx_a"] + " " + record["ctx_b"].capitalize()
    query = hellaswag_clean(record["activity_label"] + ": " + context)
    return _answer_choices(query, [hellaswag_clean(ending) for ending in record["endings"]], int(record["label"]))


def winogrande_doc(record: Mapping[str, Any]) -> MultipleChoiceDoc:
    """Partial scoring: each option fills the blank of the context; the rest of the sentence is the continuation."""
    sentence = record["sentence"]
    blank = sentence.index("_")
    continuation = TARGET_DELIMITER + sentence[blank + 1 :].strip()
    contexts = [sentence[:blank] + record["option1"], sentence[:blank] + record["option2"]]
    gold = {"1": 0, "2": 1}[str(record["answer"])]
    return MultipleChoiceDoc(requests=tuple((c, continuation) for c in contexts), choices=tuple(contexts), gold=gold)


def arc_doc(record: Mapping[str, Any]) -> MultipleChoiceDoc:
    choices = record["choices"]
    return _answer_choices(
        f"Question: {record['question']}\nAnswer:",
        list(choices["text"]),
        list(choices["label"]).index(record["answerKey"]),
    )


def siqa_doc(record: Mapping[str, Any]) -> MultipleChoiceDoc:
    return _answer_choices(
        f"Q: {record['context']} {record['question']}\nA:",
        [record["answerA"], record["answerB"], record["answerC"]],
        int(record["label"]) - 1,
    )


def boolq_doc(record: Mapping[str, Any]) -> MultipleChoiceDoc:
    if "answer" in record:
        answer = record["answer"]
        if not isinstance(answer, bool):
            raise ValueError(f"'answer' must be true or false, got {answer!r}")
        gold = int(answer)
    else:
        gold = int(record["label"])
    return _answer_choices(f"{record['passage']}\nQuestion: {record['question']}?\nAnswer:", ["no", "yes"], gold)


def lambada_doc(record: Mapping[str, Any]) -> TargetDoc:
    # The harness splits on single spaces (not any whitespace), so do we.
    words = record["text"].split(" ")
    if len(words) < 2:
        raise ValueError("'text' needs at least two space-separated words")
    return TargetDoc(context=" ".join(words[:-1]), continuation=TARGET_DELIMITER + words[-1])


_CHOICE_METRICS = ("acc", "acc_norm", "acc_bytes")

TASKS: dict[str, Task] = {
    task.name: task
    for task in (
        Task(
            "piqa",
            "piqa",
            "validation",
            ("goal", "sol1", "sol2", "label"),
            piqa_doc,
            _CHOICE_METRICS,
            dataset_path="baber/piqa",
            dataset_name=None,
        ),
        Task(
            "hellaswag",
            "hellaswag",
            "validation",
            ("activity_label", "ctx_a", "ctx_b", "endings", "label"),
            hellaswag_doc,
            _CHOICE_METRICS,
            dataset_path="Rowan/hellaswag",
            dataset_name=None,
        ),
        Task(
            "winogrande",
            "winogrande (winogrande_xl)",
            "validation",
            ("sentence", "option1", "option2", "answer"),
            winogrande_doc,
            ("acc",),
            dataset_path="allenai/winogrande",
            dataset_name="winogrande_xl",
        ),
        Task(
            "arc_easy",
            "arc_easy",
            "test",
            ("question", "choices.text", "choices.label", "answerKey"),
            arc_doc,
            _CHOICE_METRICS,
            dataset_path="allenai/ai2_arc",
            dataset_name="ARC-Easy",
        ),
        Task(
            "arc_challenge",
            "arc_challenge",
            "test",
            ("question", "choices.text", "choices.label", "answerKey"),
            arc_doc,
            _CHOICE_METRICS,
            dataset_path="allenai/ai2_arc",
            dataset_name="ARC-Challenge",
        ),
        Task(
            "siqa",
            "social_iqa",
            "validation",
            ("context", "question", "answerA", "answerB", "answerC", "label"),
            siqa_doc,
            _CHOICE_METRICS,
            dataset_path="lighteval/siqa",
            dataset_name=None,
        ),
        Task(
            "boolq",
            "boolq",
            "validation",
            ("passage", "question", "label (or answer)"),
            boolq_doc,
            _CHOICE_METRICS,
            dataset_path="aps/super_glue",
            dataset_name="boolq",
        ),
        Task(
            "lambada",
            "lambada_openai",
            "test",
            ("text",),
            lambada_doc,
            ("acc", "perplexity"),
            dataset_path="EleutherAI/lambada_openai",
            dataset_name="default",
        ),
    )
}


def missing_file_message(task: Task, path: str | pathlib.Path) -> str:
    """What a missing task file must hold and the two ways to get it (download, or written by hand)."""
    return (
        f"{task.name}: no task file {path}; it must hold the {task.public_split} split of {task.dataset_id} as "
        f"JSONL, one record per line with fields {', '.join(task.fields)}. Fetch it with eval.zeroshot --download "
        f"(network needed; or `python -m eval.tasks.zeroshot_download --data_dir={pathlib.Path(path).parent} "
        f"--tasks={task.name}` on a machine that has it, then copy the file), or write it by hand"
    )


def describe_task_files() -> str:
    """One line per task: its file, the dataset and split it holds, and the fields every record must have."""
    return "\n".join(
        f"{task.name + '.jsonl':<20} {task.dataset_id + ', ' + task.public_split:<48} {', '.join(task.fields)}"
        for task in TASKS.values()
    )


def get_task(name: str) -> Task:
    if name not in TASKS:
        raise ValueError(f"unknown zero-shot task {name!r}; known: {', '.join(TASKS)}")
    return TASKS[name]


def read_docs(task: Task, path: str | pathlib.Path, *, limit: int | None = None) -> list[Doc]:
    """The first `limit` records (all when None) of a JSONL file, as the task's documents.

    A record that lacks one of the public release's fields, or whose answer does not name one of its choices, stops
    the read with the file, line and expected fields named.
    """
    path = pathlib.Path(path)
    if not path.is_file():
        raise TaskDataError(missing_file_message(task, path))
    docs: list[Doc] = []
    with path.open(encoding="utf-8") as lines:
        for line_number, line in enumerate(lines, start=1):
            if limit is not None and len(docs) >= limit:
                break
            if not line.strip():
                continue
            where = f"{path}:{line_number}"
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise TaskDataError(f"{where}: not a JSON object: {error}") from error
            try:
                docs.append(task.build(record))
            except KeyError as error:
                raise TaskDataError(
                    f"{where}: {task.name} record lacks field {error}; expected fields {', '.join(task.fields)}"
                ) from error
            except (ValueError, TypeError, AttributeError) as error:
                raise TaskDataError(f"{where}: bad {task.name} record: {error}") from error
    if not docs:
        raise TaskDataError(f"{path}: no {task.name} records")
    return docs
