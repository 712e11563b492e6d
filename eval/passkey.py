"""Classic passkey retrieval (Mohtashami & Jaggi 2023, "Landmark attention"; the format LongLoRA and others reuse).

    python -m eval.passkey --workdir=runs/pilot --lengths=1K,2K,4K,8K,16K,32K --depths=0,25,50,75,100 --num_samples=10

Prompt: the task description, the noise paragraph repeated ("The grass is green. ..."), the information line
"The pass key is 57071. Remember it. 57071 is the pass key." at the requested depth, more noise, and
"What is the pass key? The pass key is". Greedy decoding; exact match = the first integer of the continuation is the
passkey (a 5-digit number, drawn per sample from --seed). Lengths count tokens of the run's tokenizer: the prompt is
exactly length − max_new_tokens tokens. Sample i uses the same passkey in every (length, depth) cell.

Writes <output_dir>/<run>/passkey-<timestamp>.json and a depth × length accuracy heatmap PNG next to it. With the
built-in word-level tokenizer the digits are <unk> (runs, scores 0); use a SentencePiece run for meaningful numbers.
"""

from __future__ import annotations

import dataclasses
import pathlib

import numpy as np
from absl import flags

from eval import common, grid, haystack, scoring
from eval.results import plot_title, results_stem, write_results

COMMAND = "passkey"
TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there.\n"
)
INFORMATION_LINE = "The pass key is {passkey}. Remember it. {passkey} is the pass key."
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclasses.dataclass(kw_only=True)
class PasskeyArgs(grid.GridArgs):
    max_new_tokens: int = 10


def passkey_of(seed: int, sample_index: int) -> str:
    return str(int(np.random.default_rng([seed, 0x9A55, sample_index]).integers(10_000, 100_000)))


def build_prompts(tokenizer, *, length: int, args: PasskeyArgs) -> list[dict]:
    """Prompts of one length (depths × samples), each exactly length − max_new_tokens tokens."""
    head = [tokenizer.eos_id] + tokenizer.encode(TASK_DESCRIPTION)
    tail = tokenizer.encode(QUESTION)
    noise = haystack.UnitTokens(tokenizer.encode, lambda _: haystack.REPEAT_UNIT)
    items = []
    for sample_index in range(args.num_samples):
        passkey = passkey_of(args.seed, sample_index)
        needle = tokenizer.encode(INFORMATION_LINE.format(passkey=passkey))
        for depth in args.depths:
            try:
                built = haystack.build_prompt(
                    head=head,
                    needles=[needle],
                    tail=tail,
                    unit_tokens=noise,
                    length=length - args.max_new_tokens,
                    depth=depth / 100,
                )
            except ValueError as error:
                raise ValueError(
                    f"passkey at length {length} (max_new_tokens {args.max_new_tokens}): {error}"
                ) from error
            items.append(
                {
                    "length": length,
                    "depth": depth,
                    "sample": sample_index,
                    "ids": built.ids,
                    "passkey": passkey,
                    "needle_position": built.needle_position,
                    "realised_depth": round(100 * built.depth, 2),
                }
            )
    return items


def run_passkey(run: common.Run, args: PasskeyArgs, *, output_dir: str = "eval", record_args: dict | None = None):
    """Evaluate every length × depth × sample; write the results JSON and the heatmap. Returns (results, path)."""

    def prompts_of_length(length: int) -> list[dict]:
        return build_prompts(run.tokenizer, length=length, args=args)

    def exact_match(prediction: str, item: dict) -> float:
        return float(scoring.passkey_match(prediction, item["passkey"]))

    records = grid.answer_and_score(run, args, prompts_of_length, exact_match, command=COMMAND)
    results = grid.summary(records, overall="accuracy")
    stem = results_stem(run, COMMAND, output_dir=output_dir)
    heatmap = grid.heatmap(pathlib.Path(f"{stem}-heatmap.png"), results, title=plot_title(run, "passkey"))
    path = write_results(
        run, COMMAND, args, results, plots={"heatmap": str(heatmap)}, stem=stem, record_args=record_args
    )
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    grid.define_grid_flags(flag_values, max_new_tokens=10, needle="Passkey", cell="(length, depth)")


def run_from_flags(fv: flags.FlagValues):
    return common.evaluate_from_flags(fv, run_passkey, PasskeyArgs(**grid.grid_kwargs(fv)))


def format_table(results: dict) -> str:
    lines = ["length  accuracy"]
    lines += [f"{length:>6}  {accuracy:.3f}" for length, accuracy in results["by_length"].items()]
    lines.append(f"all     {results['accuracy']:.3f}")
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
