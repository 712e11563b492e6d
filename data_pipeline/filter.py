"""Filter raw documents into JSONL: normalise, bound lengths, drop exact and near duplicates, optional
language filter.

    python -m data_pipeline.filter INPUT [INPUT ...] --output=filtered/web.jsonl [--corpus_name=web]
    [--limit=N] python -m data_pipeline.filter --hf_dataset=wikitext --hf_config=wikitext-103-raw-v1
    --output=...

INPUT: plain text (documents split by --text_split), .jsonl (field --text_field) or .parquet files; globs
allowed. The per-corpus document limit (the seed's RW_LIMIT / WIKI_LIMIT) is --limit, defaulting to the
environment variable <CORPUS_NAME>_LIMIT. Streams: memory grows only with the duplicate tables (16 bytes per
kept document for exact, 16 x 8 x 8 bytes per kept document for near duplicates). Writes OUTPUT and
OUTPUT.stats.json (counts and the settings used).
"""

from __future__ import annotations

import argparse
import dataclasses
import json
import os
import sys
import time
from collections import Counter
from collections.abc import Iterable, Iterator
from pathlib import Path

from data_pipeline import progress, readers, text_filters


@dataclasses.dataclass(frozen=True)
class FilterSettings:
    min_chars: int = 32
    max_chars: int = 1_000_000
    min_words: int = 5
    exact_dedup: bool = True
    near_dedup: bool = True
    near_dup_bands: int = 16
    near_dup_rows: int = 8
    language: str = ""  # "en" keeps documents whose share of English function words is >= min_english_score
    min_english_score: float = 0.1
    limit: int = 0  # kept documents; 0 = no limit
    seed: int = 0


def filter_documents(documents: Iterable[str], settings: FilterSettings, counts: Counter) -> Iterator[str]:
    """Yields kept, normalised documents; `counts` records why the others were dropped."""
    exact_seen: set[bytes] = set()
    near = (
        text_filters.MinHashDeduplicator(settings.near_dup_bands, settings.near_dup_rows, seed=settings.seed)
        if settings.near_dedup
        else None
    )
    for raw in documents:
        if settings.limit and counts["kept"] >= settings.limit:
            counts["stopped_at_limit"] = 1
            return
        counts["read"] += 1
        text = text_filters.normalize_text(raw)
        if len(text) < settings.min_chars or len(text.split()) < settings.min_words:
            counts["dropped_too_short"] += 1
            continue
        if len(text) > settings.max_chars:
            counts["dropped_too_long"] += 1
            continue
        if settings.language == "en" and text_filters.english_score(text) < settings.min_english_score:
            counts["dropped_language"] += 1
            continue
        if settings.exact_dedup:
            key = text_filters.exact_key(text)
            if key in exact_seen:
                counts["dropped_exact_duplicate"] += 1
                continue
            exact_seen.add(key)
        if near is not None and near.seen(text):
            counts["dropped_near_duplicate"] += 1
            continue
        counts["kept"] += 1
        counts["kept_chars"] += len(text)
        counts["kept_words"] += len(text.split())
        yield text


def _parse(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.filter",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("inputs", nargs="*", help="text / .jsonl / .parquet files or globs")
    parser.add_argument(
        "--hf_dataset", default="", help="a Hugging Face dataset name (needs network and `datasets`)"
    )
    parser.add_argument("--hf_config", default=None)
    parser.add_argument("--hf_split", default="train")
    parser.add_argument("--output", required=True, help="filtered JSONL file to write")
    parser.add_argument("--corpus_name", default="", help="names the <NAME>_LIMIT environment variable")
    parser.add_argument("--text_field", default="text")
    parser.add_argument("--text_split", default="blank_line", choices=readers.TEXT_SPLITS)
    parser.add_argument("--limit", type=int, default=None, help="keep at most this many documents")
    defaults = FilterSettings()
    for field in dataclasses.fields(FilterSettings):
        if field.name == "limit":
            continue
        if field.type == "bool":
            parser.add_argument(
                f"--{field.name}", type=lambda v: v.lower() in ("1", "true", "yes"), default=field.default
            )
        else:
            parser.add_argument(
                f"--{field.name}", type=type(getattr(defaults, field.name)), default=field.default
            )
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> dict:
    args = _parse(sys.argv[1:] if argv is None else argv)
    if not args.inputs and not args.hf_dataset:
        raise SystemExit("give input files or --hf_dataset")
    limit = args.limit
    if limit is None and args.corpus_name:
        limit = int(os.environ.get(f"{args.corpus_name.upper()}_LIMIT", "0"))
    settings = FilterSettings(
        **{f.name: getattr(args, f.name) for f in dataclasses.fields(FilterSettings) if f.name != "limit"},
        limit=limit or 0,
    )

    def documents() -> Iterator[str]:
        if args.hf_dataset:
            yield from readers.read_hf_dataset(
                args.hf_dataset, args.text_field, args.hf_split, args.hf_config
            )
        for path in readers.expand_inputs(args.inputs):
            yield from readers.read_documents(path, text_field=args.text_field, text_split=args.text_split)

    output = Path(args.output)
    output.parent.mkdir(parents=True, exist_ok=True)
    counts: Counter = Counter()
    start = time.perf_counter()
    # The bar counts the documents read. Its total (and so an ETA) is counted beforehand for input files; not for a
    # streamed dataset, nor under a limit (which may stop the run long before the end of its inputs).
    total = None
    if not args.hf_dataset and not settings.limit:
        total = sum(
            readers.count_documents(path, text_split=args.text_split) for path in readers.expand_inputs(args.inputs)
        )
    bar = progress.bar(f"filter {output.name}", total=total)

    def counted() -> Iterator[str]:
        for document in documents():
            bar.update()
            yield document

    temporary = output.with_suffix(output.suffix + ".tmp")
    with open(temporary, "w", encoding="utf-8") as handle:
        for text in filter_documents(counted(), settings, counts):
            handle.write(json.dumps({"text": text}, ensure_ascii=False) + "\n")
    temporary.replace(output)
    bar.set_postfix(kept=counts["kept"], refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    stats = {
        "output": str(output),
        "sources": args.inputs or [f"hf:{args.hf_dataset}"],
        "settings": dataclasses.asdict(settings),
        "counts": dict(counts),
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    Path(str(output) + ".stats.json").write_text(json.dumps(stats, indent=2) + "\n")
    print(json.dumps(stats["counts"]))
    return stats


if __name__ == "__main__":
    main()
