"""Token- and word-level perplexity of text files, long documents streamed through the model with the state carried.

    python -m eval.perplexity --workdir=runs/pilot --files=../shared/data/tinyshakespeare.txt --segment_len=2048

Each file is one document: its tokens, preceded by <eos> (the separator the training stream puts before every
document, so the first token is scored too), go through the model in segments of --segment_len tokens with the state
carried from one segment to the next — a recurrent model uses the whole prefix, however far beyond its training length.

- token level: ppl = exp(total NLL / tokens scored); bits per byte = total NLL / (UTF-8 bytes · ln 2);
- word level (lm-evaluation-harness's word_perplexity): exp(total NLL / whitespace words of the text);
- loss against token position, averaged over the files in --num_bins equal bins, written to the JSON and plotted
  (PNG) with the training length marked; the mean loss before and after the training length is reported too.

--max_tokens cuts every file to its first N tokens (words and bytes are then counted on the decoded prefix).

Text outside the run's tokenizer's vocabulary becomes <unk> tokens, which make a perplexity easy and meaningless: each
file's share of tokens equal to the tokenizer's unknown id is recorded (`unknown_token_fraction`; 0 for a
byte-fallback SentencePiece model, which has none) and a warning names every file where it exceeds 1 in 100.
A full-attention model keeps a KV cache as long as the document, so give it --max_tokens on long files.
"""

from __future__ import annotations

import dataclasses
import logging
import math
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import flags

from eval import common, plots
from eval.results import plot_title, results_stem, write_results

COMMAND = "perplexity"
UNKNOWN_WARN_FRACTION = 0.01  # more <unk> tokens than this share of a file's tokens: a warning


@dataclasses.dataclass
class PerplexityArgs:
    files: list[str]
    segment_len: int = 0  # 0: the run's training sequence length
    max_tokens: int = 0  # per file; 0: all
    num_bins: int = 32

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("--files must name at least one text file")
        if self.segment_len < 0 or self.max_tokens < 0 or self.num_bins < 1:
            raise ValueError("segment_len and max_tokens must be ≥ 0 and num_bins ≥ 1")


def token_losses(run: common.Run, ids: Sequence[int], segment_len: int) -> np.ndarray:
    """float64[len(ids)]: −log p(ids[t] | <eos>, ids[:t]), streamed in segments with the state carried."""
    tokens = np.array([[run.tokenizer.eos_id, *ids]], np.int32)
    logprobs, _ = common.next_token_logprobs(run, tokens, segment_len=segment_len)
    return -logprobs[0].astype(np.float64)


def unknown_tokens(tokenizer, ids: Sequence[int]) -> int | None:
    """How many of `ids` are the tokenizer's unknown id (None: a tokenizer without one)."""
    unk_id = getattr(tokenizer, "unk_id", None)
    if unk_id is None or unk_id < 0:  # sentencepiece reports -1 for a model without <unk>
        return None
    return int(np.count_nonzero(np.asarray(ids) == unk_id))


def warn_if_unknown(path: pathlib.Path, unknown: int | None, tokens: int) -> None:
    if unknown is not None and unknown > UNKNOWN_WARN_FRACTION * tokens:
        logging.warning(
            "perplexity: %.1f%% of the %d tokens of %s are <unk>: the text is out of the vocabulary of the run's "
            "tokenizer, so its perplexity says little about the model",
            100.0 * unknown / tokens,
            tokens,
            path,
        )


def summarize(nll_sum: float, tokens: int, words: int, num_bytes: int, unknown: int | None = None) -> dict:
    return {
        "tokens": tokens,
        "unknown_tokens": unknown,
        "unknown_token_fraction": None if unknown is None else unknown / tokens,
        "words": words,
        "bytes": num_bytes,
        "nll": nll_sum,
        "token_loss": nll_sum / tokens,
        "token_perplexity": math.exp(nll_sum / tokens),
        "word_perplexity": math.exp(nll_sum / words) if words else None,
        "bits_per_byte": nll_sum / (num_bytes * math.log(2)) if num_bytes else None,
    }


def binned_losses(losses: Sequence[np.ndarray], num_bins: int) -> dict:
    """Mean loss per position bin over all documents: [0, max_len) cut into num_bins equal bins (fewer when short)."""
    longest = max(len(values) for values in losses)
    edges = np.unique(np.linspace(0, longest, min(num_bins, longest) + 1).round().astype(int))
    sums = np.zeros(len(edges) - 1)
    counts = np.zeros(len(edges) - 1, np.int64)
    for values in losses:
        bin_of = np.searchsorted(edges, np.arange(len(values)), side="right") - 1
        np.add.at(sums, bin_of, values)
        np.add.at(counts, bin_of, 1)
    return {
        "bin_start": edges[:-1].tolist(),
        "bin_end": edges[1:].tolist(),
        "mean_loss": (sums / np.maximum(counts, 1)).tolist(),
        "tokens": counts.tolist(),
    }


def run_perplexity(run: common.Run, args: PerplexityArgs, *, output_dir: str = "eval", record_args: dict | None = None):
    """Score every file; write the results JSON and the loss-by-position plot. Returns (results, path)."""
    train_len = int(run.config.train.seq_len)
    segment_len = args.segment_len or train_len
    per_file, all_losses = {}, []
    for name in args.files:
        path = pathlib.Path(name)
        if not path.is_file():
            raise FileNotFoundError(f"text file {path} does not exist")
        text = path.read_text(encoding="utf-8")
        ids = run.tokenizer.encode(text)
        if args.max_tokens and len(ids) > args.max_tokens:
            ids = ids[: args.max_tokens]
            text = run.tokenizer.decode(ids)
        if not ids:
            raise ValueError(f"text file {path} holds no tokens")
        logging.info("perplexity: %s, %d tokens in segments of %d", path, len(ids), segment_len)
        unknown = unknown_tokens(run.tokenizer, ids)
        warn_if_unknown(path, unknown, len(ids))
        losses = token_losses(run, ids, segment_len)
        all_losses.append(losses)
        per_file[str(path)] = summarize(
            float(losses.sum()), len(ids), len(text.split()), len(text.encode("utf-8")), unknown
        )
    unknown_counts = [summary["unknown_tokens"] for summary in per_file.values()]
    total = summarize(
        float(sum(values.sum() for values in all_losses)),
        sum(summary["tokens"] for summary in per_file.values()),
        sum(summary["words"] for summary in per_file.values()),
        sum(summary["bytes"] for summary in per_file.values()),
        None if None in unknown_counts else sum(unknown_counts),
    )
    within = np.concatenate([values[:train_len] for values in all_losses])
    beyond = np.concatenate([values[train_len:] for values in all_losses])
    total["loss_within_train_len"] = float(within.mean())
    total["loss_beyond_train_len"] = float(beyond.mean()) if beyond.size else None
    curve = binned_losses(all_losses, args.num_bins)
    results = {
        "total": total,
        "files": per_file,
        "segment_len": segment_len,
        "train_seq_len": train_len,
        "by_position": curve,
    }
    stem = results_stem(run, COMMAND, output_dir=output_dir)
    plot = plots.loss_by_position(
        pathlib.Path(f"{stem}-loss_by_position.png"),
        [*curve["bin_start"], curve["bin_end"][-1]],
        curve["mean_loss"],
        train_seq_len=train_len,
        title=plot_title(run, "loss by position"),
    )
    path = write_results(
        run, COMMAND, args, results, plots={"loss_by_position": str(plot)}, stem=stem, record_args=record_args
    )
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    common.define_common_flags(fv)
    flags.DEFINE_list("files", None, "Text files to score (each one document).", flag_values=fv)
    flags.DEFINE_integer(
        "segment_len", 0, "Tokens per segment (state carried); 0: the run's train.seq_len.", flag_values=fv
    )
    flags.DEFINE_integer("max_tokens", 0, "Score only the first N tokens of every file (0: all).", flag_values=fv)
    flags.DEFINE_integer("num_bins", 32, "Position bins of the loss-by-position curve.", flag_values=fv)


def run_from_flags(fv: flags.FlagValues):
    args = PerplexityArgs(
        files=list(fv.files or []), segment_len=fv.segment_len, max_tokens=fv.max_tokens, num_bins=fv.num_bins
    )
    return common.evaluate_from_flags(fv, run_perplexity, args)


def format_table(results: dict) -> str:
    lines = []
    for name, summary in {**results["files"], "total": results["total"]}.items():
        word = summary["word_perplexity"]
        unknown = summary.get("unknown_token_fraction")
        lines.append(
            f"{name}: {summary['tokens']} tokens, token ppl {summary['token_perplexity']:.3f}, "
            f"word ppl {word if word is None else f'{word:.3f}'}"
            + ("" if not unknown else f", {100.0 * unknown:.1f}% <unk>")
        )
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
