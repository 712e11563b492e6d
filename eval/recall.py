"""In-context recall on the built-in corpus: are the answers read from the facts stated earlier in the document?

    python -m eval.recall --workdir=runs/recall --num_documents=256

Every built-in document states facts ("alice lives in paris .") and ends with questions about them ("where does alice
live ? alice lives in paris ."). The entities are drawn afresh for every document, so an answer word is predictable only
from the same document's earlier text. Each held-out document (<eos> first, as the training stream separates
documents) goes through the model in segments of the run's training length with the state carried; an answer word is
right when the argmax prediction at its position (teacher forcing: the true words before it) is that word.

Reported per kind (city, thing, colour, animal) and over all answer words: accuracy, chance (1 / the size of the kind's
word list, from which every answer is drawn uniformly), the mean log-probability of the answer, and the count. The
name repeated after each question ("? alice lives ...") is reported apart as a copy control: it is in the question
itself, five tokens back. `fact_dependence` (nats) is how much the answer's log-probability drops when the facts
before the first question state other words of the same kinds (fact_swapped_twin): 0 for a model that does not read
the facts, whatever its accuracy. Documents come from the run's held-out range of the generator (indices from
data.builtin.num_documents on, the validation documents first), never from its training documents.

Writes <output_dir>/<run>/recall-<timestamp>.json and a bar chart of accuracy against chance per kind next to it.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import flags

from data_pipeline.builtin_corpus import (
    ANSWER_KINDS,
    EOS_ID,
    VOCABULARY,
    BuiltinCorpus,
    answer_positions,
    copied_name_positions,
)
from eval import common, plots
from eval.results import plot_title, results_stem, write_results

COMMAND = "recall"
COPY_CONTROL = "name (copy)"


@dataclasses.dataclass
class RecallArgs:
    num_documents: int = 256
    first_document: int = -1  # generator index of the first document; -1: data.builtin.num_documents (held out)
    segment_len: int = 0  # 0: the run's training sequence length
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_documents < 1 or self.batch_size < 1 or self.segment_len < 0:
            raise ValueError("num_documents and batch_size must be ≥ 1, segment_len ≥ 0")


def held_out_documents(run: common.Run, args: RecallArgs) -> BuiltinCorpus:
    data = run.config.data
    if data.source != "builtin":
        raise ValueError(
            f"eval.recall scores the built-in corpus; run {run.name!r} was trained on data.source={data.source!r}"
        )
    first = data.builtin.num_documents if args.first_document < 0 else args.first_document
    if first < data.builtin.num_documents:
        raise ValueError(
            f"--first_document={first} is inside the run's training documents [0, {data.builtin.num_documents})"
        )
    return BuiltinCorpus(
        data.builtin.seed,
        args.num_documents,
        first_index=first,
        **{key: data.builtin[key] for key in ("max_fillers", "ask_all_facts", "min_people", "max_people")},
    )


def _answer_records(tokens: np.ndarray, argmax: np.ndarray, logprobs: np.ndarray) -> list[dict]:
    """One record per answer word (and per copied name) of one document; tokens = <eos> + document."""

    def record(kind: str, position: int) -> dict:
        # logprobs[t] scores tokens[t + 1]
        return {
            "kind": kind,
            "position": position,
            "correct": bool(argmax[position - 1] == tokens[position]),
            "logprob": float(logprobs[position - 1]),
        }

    records = [record(kind, position) for position, kind in answer_positions(tokens)]
    records += [record(COPY_CONTROL, position) for position in copied_name_positions(tokens)]
    return records


def _answer_word_ids() -> dict[int, int]:
    """Vocabulary id of each answer word -> id of the next word of its kind (a derangement within every kind)."""
    id_of = {word: i for i, word in enumerate(VOCABULARY)}
    return {id_of[w]: id_of[words[(i + 1) % len(words)]] for words in ANSWER_KINDS.values() for i, w in enumerate(words)}


_NEXT_OF_KIND = _answer_word_ids()


def fact_swapped_twin(tokens: np.ndarray) -> np.ndarray:
    """`tokens` with every answer-kind word before the first question replaced by another word of its kind: the same
    questions and answers after facts that now state something else. A model whose answers come from the facts
    scores the true answers lower on the twin; one that ignores them scores both the same."""
    twin = tokens.copy()
    questions = np.flatnonzero(tokens == VOCABULARY.index("?"))
    end = int(questions[0]) if questions.size else len(tokens)
    for position in range(end):
        twin[position] = _NEXT_OF_KIND.get(int(tokens[position]), int(tokens[position]))
    return twin


def _scores(run: common.Run, docs: list[np.ndarray], args: RecallArgs, segment_len: int, width: int):
    """(logprobs, argmax) per document, in right-padded batches of one width (one compiled shape: a causal model's
    predictions never see the padding after them)."""
    out = []
    for start in range(0, len(docs), args.batch_size):
        batch = docs[start : start + args.batch_size]
        tokens_bt = np.full((args.batch_size, width), run.tokenizer.pad_id, np.int32)
        for row, doc in enumerate(batch):
            tokens_bt[row, : len(doc)] = doc
        logprobs, argmax, _ = common.next_token_scores(run, tokens_bt, segment_len=segment_len)
        out.extend((logprobs[row], argmax[row]) for row in range(len(batch)))
    return out


def score_documents(run: common.Run, documents, args: RecallArgs) -> list[dict]:
    """Answer records of every document, each with `fact_dependence`: log p(answer) minus the same on the document's
    fact-swapped twin (nats; 0 for a model that does not read the facts)."""
    segment_len = args.segment_len or int(run.config.train.seq_len)
    docs = [np.concatenate([[EOS_ID], documents[i]]).astype(np.int32) for i in range(len(documents))]
    segments = -(-max(len(d) - 1 for d in docs) // segment_len)
    width = segments * segment_len + 1
    originals = _scores(run, docs, args, segment_len, width)
    twins = _scores(run, [fact_swapped_twin(d) for d in docs], args, segment_len, width)
    records = []
    for doc, (logprobs, argmax), (twin_logprobs, _) in zip(docs, originals, twins, strict=True):
        for record in _answer_records(doc, argmax, logprobs):
            record["fact_dependence"] = record["logprob"] - float(twin_logprobs[record["position"] - 1])
            records.append(record)
    return records


def _mean_or_none(values: list[float]) -> float | None:
    return float(np.mean(values)) if values else None


def summarize(records: list[dict]) -> dict:
    def stats(group: list[dict]) -> dict:
        return {
            "count": len(group),
            "accuracy": float(np.mean([r["correct"] for r in group])) if group else None,
            "mean_logprob": float(np.mean([r["logprob"] for r in group])) if group else None,
            "fact_dependence": _mean_or_none([r["fact_dependence"] for r in group if "fact_dependence" in r]),
        }

    answers = [r for r in records if r["kind"] in ANSWER_KINDS]
    by_kind = {}
    for kind, words in ANSWER_KINDS.items():
        by_kind[kind] = {**stats([r for r in answers if r["kind"] == kind]), "chance": 1.0 / len(words)}
    chance = float(np.mean([1.0 / len(ANSWER_KINDS[r["kind"]]) for r in answers])) if answers else None
    return {
        **stats(answers),
        "chance": chance,
        "by_kind": by_kind,
        "controls": {COPY_CONTROL: stats([r for r in records if r["kind"] == COPY_CONTROL])},
    }


def run_recall(run: common.Run, args: RecallArgs, *, output_dir: str = "eval", record_args: dict | None = None):
    """Score the held-out documents; write the results JSON and the bar chart. Returns (results, path)."""
    documents = held_out_documents(run, args)
    results = summarize(score_documents(run, documents, args))
    results["first_document"] = documents.first_index
    stem = results_stem(run, COMMAND, output_dir=output_dir)
    kinds = list(results["by_kind"])
    chart = plots.accuracy_against_chance(
        pathlib.Path(f"{stem}-by-kind.png"),
        kinds + ["all"],
        [results["by_kind"][k]["accuracy"] for k in kinds] + [results["accuracy"]],
        [results["by_kind"][k]["chance"] for k in kinds] + [results["chance"]],
        title=plot_title(run, "in-context recall"),
    )
    path = write_results(run, COMMAND, args, results, plots={"by_kind": str(chart)}, stem=stem, record_args=record_args)
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    common.define_common_flags(flag_values)
    fv = flag_values
    flags.DEFINE_integer("num_documents", 256, "Held-out documents to score.", flag_values=fv)
    flags.DEFINE_integer(
        "first_document",
        -1,
        "Generator index of the first document; -1: the run's first held-out index (data.builtin.num_documents).",
        flag_values=fv,
    )
    flags.DEFINE_integer(
        "segment_len", 0, "Tokens per forward pass, state carried; 0: the run's seq_len.", flag_values=fv
    )


def run_from_flags(fv: flags.FlagValues):
    args = RecallArgs(
        num_documents=fv.num_documents,
        first_document=fv.first_document,
        segment_len=fv.segment_len,
        batch_size=fv.batch_size,
    )
    return common.evaluate_from_flags(fv, run_recall, args)


def format_table(results: dict) -> str:
    def row(label: str, entry: dict, chance: float | None) -> str:
        accuracy = "-" if entry["accuracy"] is None else f"{entry['accuracy']:.3f}"
        chance_text = "" if chance is None else f"{chance:.3f}"
        dependence = "-" if entry["fact_dependence"] is None else f"{entry['fact_dependence']:.3f}"
        return f"{label:<12} {entry['count']:>6} {accuracy:>9} {chance_text:>7} {dependence:>16}"

    lines = ["kind         answers  accuracy  chance  fact_dependence"]
    lines += [row(kind, entry, entry["chance"]) for kind, entry in results["by_kind"].items()]
    lines.append(row("all", results, results["chance"]))
    lines += [row(label, entry, None) for label, entry in results["controls"].items()]
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
