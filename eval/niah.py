"""RULER needle-in-a-haystack evaluation: S-NIAH-1/2/3 and the multi-key / multi-value / multi-query variants.

    python -m eval.niah --workdir=runs/pilot --lengths=1K,2K,4K,8K,16K,32K --depths=0,25,50,75,100 --num_samples=10

Tasks, templates and scoring are RULER's (eval/ruler.py): greedy decoding of `--max_new_tokens` tokens after the answer
prefix, score = fraction of the expected values present in the output (1/0 for a single needle). A length L counts
tokens of the run's tokenizer: prompt (L − max_new_tokens tokens, exactly) plus the generated tokens, as RULER counts
input + tokens_to_generate. Sample i of a task uses the same keys and values in every (length, depth) cell (seeded by
--seed, task and i), so cells differ only in where the needles sit and how much haystack surrounds them.

Writes <output_dir>/<run>/niah-<timestamp>.json and one depth × length heatmap PNG per task next to it.
Numbers and uuids are outside the built-in word-level tokenizer's vocabulary (they become <unk>): runs with it work
but always score 0; meaningful numbers need a SentencePiece tokenizer (data.source='mixture').
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import flags

from eval import common, grid, haystack, ruler, scoring
from eval.results import plot_title, results_stem, write_results

COMMAND = "niah"


@dataclasses.dataclass(kw_only=True)
class NiahArgs(grid.GridArgs):
    tasks: list[str]
    max_new_tokens: int = 128  # RULER's tokens_to_generate for NIAH
    haystack_file: str | None = None

    def __post_init__(self) -> None:
        unknown = [name for name in self.tasks if name not in ruler.TASKS]
        if unknown:
            raise ValueError(f"unknown NIAH task(s) {unknown}; known: {', '.join(ruler.TASKS)}")
        haystack.require_distinct("tasks", self.tasks)
        super().__post_init__()


class Haystacks:
    """Unit token sources of one tokenizer: the repeated noise and the essay are shared by every sample."""

    def __init__(self, tokenizer, *, seed: int, essay_sentences: Sequence[str] | None) -> None:
        self.tokenizer = tokenizer
        self.repeat = haystack.UnitTokens(tokenizer.encode, lambda _: haystack.REPEAT_UNIT)
        essay_text = haystack.cycled(essay_sentences) if essay_sentences else haystack.generated_essay(seed)
        self.essay = haystack.UnitTokens(tokenizer.encode, essay_text)

    def units(self, task: ruler.NiahTask, sample: ruler.NiahSample, rng: np.random.Generator):
        if task.haystack == "repeat":
            return self.repeat
        if task.haystack == "essay":
            return self.essay
        return haystack.UnitTokens(self.tokenizer.encode, ruler.distractor_needles(task, sample, rng))


def _sample_rngs(seed: int, task_name: str, sample_index: int) -> tuple[np.random.Generator, np.random.Generator]:
    """(needles, distractor haystack) generators of sample i of a task: the same in every (length, depth) cell."""
    task_index = list(ruler.TASKS).index(task_name)
    return (
        np.random.default_rng([seed, task_index, sample_index, 0]),
        np.random.default_rng([seed, task_index, sample_index, 1]),
    )


def build_cell_prompts(
    task: ruler.NiahTask, haystacks: Haystacks, *, length: int, depths: Sequence[float], args: NiahArgs
) -> list[dict]:
    """Every prompt of one (task, length): depths × samples, each exactly length − max_new_tokens tokens."""
    tokenizer = haystacks.tokenizer
    prompt_len = length - args.max_new_tokens
    head = [tokenizer.eos_id] + tokenizer.encode(ruler.template_head(task))
    items = []
    for sample_index in range(args.num_samples):
        needle_rng, haystack_rng = _sample_rngs(args.seed, task.name, sample_index)
        sample = ruler.draw_sample(task, needle_rng)
        needles = [tokenizer.encode(needle) for needle in sample.needles]
        tail = tokenizer.encode(ruler.template_tail(task, sample.queries))
        units = haystacks.units(task, sample, haystack_rng)
        for depth in depths:
            try:
                built = haystack.build_prompt(
                    head=head, needles=needles, tail=tail, unit_tokens=units, length=prompt_len, depth=depth / 100
                )
            except ValueError as error:
                raise ValueError(
                    f"{task.name} at length {length} (max_new_tokens {args.max_new_tokens}): {error}"
                ) from error
            items.append(
                {
                    "task": task.name,
                    "length": length,
                    "depth": depth,
                    "sample": sample_index,
                    "ids": built.ids,
                    "answers": list(sample.answers),
                    "needle_position": built.needle_position,
                    "realised_depth": round(100 * built.depth, 2),
                }
            )
    return items


def run_niah(run: common.Run, args: NiahArgs, *, output_dir: str = "eval", record_args: dict | None = None):
    """Evaluate every task × length × depth × sample; write the results JSON and the heatmaps. Returns (results, path)."""
    haystack_sentences = haystack.file_sentences(args.haystack_file) if args.haystack_file else None
    haystacks = Haystacks(run.tokenizer, seed=args.seed, essay_sentences=haystack_sentences)

    def prompts_of_length(length: int) -> list[dict]:
        # Every prompt of one length has the same number of tokens: all tasks share batches and one compiled shape.
        return [
            item
            for name in args.tasks
            for item in build_cell_prompts(ruler.TASKS[name], haystacks, length=length, depths=args.depths, args=args)
        ]

    def ruler_score(prediction: str, item: dict) -> float:
        return scoring.string_match_all(prediction, item["answers"])

    records: dict[str, list[dict]] = {name: [] for name in args.tasks}
    for record in grid.answer_and_score(run, args, prompts_of_length, ruler_score, command=COMMAND):
        records[record["task"]].append(record)
    results = {
        "tasks": {name: grid.summary(records[name]) for name in args.tasks},
    }
    results["average"] = float(np.mean([summary["score"] for summary in results["tasks"].values()]))
    results["average_by_length"] = {
        length: float(np.mean([summary["by_length"][length] for summary in results["tasks"].values()]))
        for length in sorted(args.lengths)
    }
    stem = results_stem(run, COMMAND, output_dir=output_dir)
    plot_paths = {}
    for name, summary in results["tasks"].items():
        path = grid.heatmap(pathlib.Path(f"{stem}-{name}.png"), summary, title=plot_title(run, name))
        plot_paths[name] = str(path)
    path = write_results(run, COMMAND, args, results, plots=plot_paths, stem=stem, record_args=record_args)
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    grid.define_grid_flags(fv, max_new_tokens=128, needle="Needle", cell="(task, length, depth)")
    flags.DEFINE_list("tasks", list(ruler.TASKS), f"NIAH tasks, from: {', '.join(ruler.TASKS)}.", flag_values=fv)
    flags.DEFINE_string(
        "haystack_file", None, "Text file whose sentences replace the generated essay haystack.", flag_values=fv
    )


def run_from_flags(fv: flags.FlagValues):
    args = NiahArgs(tasks=list(fv.tasks), haystack_file=fv.haystack_file, **grid.grid_kwargs(fv))
    return common.evaluate_from_flags(fv, run_niah, args)


def format_table(results: dict) -> str:
    lengths = list(results["average_by_length"])
    lines = [f"{'task':<18}" + "".join(f"{length:>9}" for length in lengths) + f"{'all':>9}"]
    for name, summary in results["tasks"].items():
        lines.append(
            f"{name:<18}" + "".join(f"{summary['by_length'][n]:>9.3f}" for n in lengths) + f"{summary['score']:>9.3f}"
        )
    averages = results["average_by_length"]
    lines.append(f"{'average':<18}" + "".join(f"{averages[n]:>9.3f}" for n in lengths) + f"{results['average']:>9.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
