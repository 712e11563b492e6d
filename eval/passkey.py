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
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging

from eval import common, haystack, plots, scoring

COMMAND = "passkey"
TASK_DESCRIPTION = (
    "There is an important info hidden inside a lot of irrelevant text. Find it and memorize them. "
    "I will quiz you about the important information there.\n"
)
INFORMATION_LINE = "The pass key is {passkey}. Remember it. {passkey} is the pass key."
QUESTION = "\nWhat is the pass key? The pass key is"


@dataclasses.dataclass
class PasskeyArgs:
    lengths: list[int]
    depths: list[float]  # percent
    num_samples: int = 10
    max_new_tokens: int = 10
    seed: int = 0
    segment_len: int = 4096
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples and max_new_tokens must be positive")
        haystack.require_distinct("lengths", self.lengths)
        haystack.require_distinct("depths", self.depths)


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
    records = []
    for length in args.lengths:
        items = build_prompts(run.tokenizer, length=length, args=args)
        logging.info("passkey: length %d, %d prompts of %d tokens", length, len(items), len(items[0]["ids"]))
        outputs = common.greedy_generate(
            run,
            [item["ids"] for item in items],
            args.max_new_tokens,
            batch_size=args.batch_size,
            segment_len=args.segment_len,
        )
        for item, generated in zip(items, outputs, strict=True):
            prediction = scoring.decode_generated(run.tokenizer, generated)
            record = {key: value for key, value in item.items() if key != "ids"}
            record["prediction"] = prediction
            record["score"] = float(scoring.passkey_match(prediction, item["passkey"]))
            records.append(record)
    rows, columns, grid = scoring.cell_means(records, "depth", "length")
    results = {
        "accuracy": float(np.mean([record["score"] for record in records])),
        "by_length": scoring.mean_by(records, "length"),
        "by_depth": scoring.mean_by(records, "depth"),
        "grid": {"depths": rows, "lengths": columns, "scores": grid},
        "samples": records,
    }
    stem = common.results_stem(run, COMMAND, output_dir=output_dir)
    stem.parent.mkdir(parents=True, exist_ok=True)
    heatmap = plots.depth_length_heatmap(
        pathlib.Path(f"{stem}-heatmap.png"),
        rows,
        columns,
        grid,
        title=f"passkey — {run.name}" + (f" step {run.step}" if run.step is not None else ""),
    )
    all_args = {**dataclasses.asdict(args), **(record_args or {})}
    path = common.write_results(
        run, COMMAND, all_args, results, output_dir=output_dir, plots={"heatmap": str(heatmap)}, stem=stem
    )
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    common.define_common_flags(fv)
    flags.DEFINE_list(
        "lengths", ["1K", "2K", "4K", "8K", "16K", "32K"], "Lengths in tokens (K = 1024).", flag_values=fv
    )
    flags.DEFINE_list("depths", ["0", "25", "50", "75", "100"], "Passkey depths in percent.", flag_values=fv)
    flags.DEFINE_integer("num_samples", 10, "Samples per (length, depth) cell.", flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 10, "Greedy tokens generated (counted in the length).", flag_values=fv)
    flags.DEFINE_integer("segment_len", 4096, "Prompts are prefilled in segments of this many tokens.", flag_values=fv)


def run_from_flags(fv: flags.FlagValues):
    args = PasskeyArgs(
        lengths=haystack.parse_lengths(fv.lengths),
        depths=haystack.parse_depths(fv.depths),
        num_samples=fv.num_samples,
        max_new_tokens=fv.max_new_tokens,
        seed=fv.seed,
        segment_len=fv.segment_len,
        batch_size=fv.batch_size,
    )
    run = common.load_run_from_flags(fv)
    return run_passkey(run, args, output_dir=fv.output_dir, record_args={"workdir": fv.workdir, "step": fv.step})


def main(argv: Sequence[str]) -> None:
    if len(argv) > 1:
        raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
    results, path = run_from_flags(flags.FLAGS)
    print("length  accuracy")
    for length, accuracy in results["by_length"].items():
        print(f"{length:>6}  {accuracy:.3f}")
    print(f"all     {results['accuracy']:.3f}")
    print(f"wrote {path}")


if __name__ == "__main__":
    define_flags()
    app.run(main)
