"""What the needle evaluations (eval/niah.py, eval/passkey.py) share: a depth × length grid of prompts of exact
lengths, each answered by greedy generation and scored, and the grid's summary and heatmap.

A prompt item is a dict with the prompt's token "ids" plus whatever the command records about it ("length", "depth",
"sample", answers, ...); its record is the item without "ids", plus "prediction" and "score".
"""

from __future__ import annotations

import dataclasses
import pathlib
from collections.abc import Callable

import numpy as np
from absl import flags, logging

from eval import common, haystack, plots, scoring

DEFAULT_LENGTHS = ["1K", "2K", "4K", "8K", "16K", "32K"]
DEFAULT_DEPTHS = ["0", "25", "50", "75", "100"]


@dataclasses.dataclass(kw_only=True)
class GridArgs:
    lengths: list[int]
    depths: list[float]  # percent
    num_samples: int = 10
    max_new_tokens: int  # each command gives its default
    seed: int = 0
    segment_len: int = 4096
    batch_size: int = 8

    def __post_init__(self) -> None:
        if self.num_samples < 1 or self.max_new_tokens < 1:
            raise ValueError("num_samples and max_new_tokens must be positive")
        haystack.require_distinct("lengths", self.lengths)
        haystack.require_distinct("depths", self.depths)


def define_grid_flags(fv: flags.FlagValues, *, max_new_tokens: int, needle: str, cell: str) -> None:
    """The common flags and the grid's: lengths, depths, samples per cell, generated tokens, prefill segment."""
    common.define_common_flags(fv)
    flags.DEFINE_list("lengths", DEFAULT_LENGTHS, "Context lengths in tokens (K = 1024).", flag_values=fv)
    flags.DEFINE_list("depths", DEFAULT_DEPTHS, f"{needle} depths in percent of the haystack.", flag_values=fv)
    flags.DEFINE_integer("num_samples", 10, f"Samples per {cell} cell.", flag_values=fv)
    flags.DEFINE_integer(
        "max_new_tokens", max_new_tokens, "Greedy tokens generated per prompt (counted in the length).", flag_values=fv
    )
    flags.DEFINE_integer("segment_len", 4096, "Prompts are prefilled in segments of this many tokens.", flag_values=fv)


def grid_kwargs(fv: flags.FlagValues) -> dict:
    """The GridArgs fields from the flags of `define_grid_flags`."""
    return {
        "lengths": haystack.parse_lengths(fv.lengths),
        "depths": haystack.parse_depths(fv.depths),
        "num_samples": fv.num_samples,
        "max_new_tokens": fv.max_new_tokens,
        "seed": fv.seed,
        "segment_len": fv.segment_len,
        "batch_size": fv.batch_size,
    }


def answer_and_score(
    run: common.Run,
    args: GridArgs,
    prompts_of_length: Callable[[int], list[dict]],
    score: Callable[[str, dict], float],
    *,
    command: str,
) -> list[dict]:
    """The records of every prompt item of every length: greedy continuation of `max_new_tokens` tokens, decoded as
    RULER decodes it (cut at <eos>, unknown ids as <unk>) into "prediction", and `score(prediction, item)`.

    All prompts of one length have the same number of tokens, so they share batches and one compiled shape.
    """
    records = []
    for length in args.lengths:
        items = prompts_of_length(length)
        logging.info("%s: length %d, %d prompts of %d tokens", command, length, len(items), len(items[0]["ids"]))
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
            record["score"] = score(prediction, item)
            records.append(record)
    return records


def summary(records: list[dict], *, overall: str = "score") -> dict:
    """The mean score (under the key `overall`), by length, by depth, on the depth × length grid, and every record."""
    rows, columns, grid = scoring.cell_means(records, "depth", "length")
    return {
        overall: float(np.mean([record["score"] for record in records])),
        "by_length": scoring.mean_by(records, "length"),
        "by_depth": scoring.mean_by(records, "depth"),
        "grid": {"depths": rows, "lengths": columns, "scores": grid},
        "samples": records,
    }


def heatmap(path: pathlib.Path, grid_summary: dict, *, title: str) -> pathlib.Path:
    """The depth × length heatmap of a `summary`."""
    grid = grid_summary["grid"]
    return plots.depth_length_heatmap(path, grid["depths"], grid["lengths"], grid["scores"], title=title)
