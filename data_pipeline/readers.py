"""Streaming document readers: plain text, JSONL, Parquet, Hugging Face datasets. Each yields one document
string at a time."""

from __future__ import annotations

import glob
import json
from collections.abc import Iterator
from pathlib import Path

from data_pipeline.errors import DataError

TEXT_SPLITS = ("blank_line", "line", "file")


def expand_inputs(patterns) -> list[str]:
    """Glob patterns -> sorted existing files; a pattern that matches nothing is an error, not an empty
    corpus."""
    files: list[str] = []
    for pattern in patterns:
        matches = sorted(glob.glob(str(pattern)))
        if not matches:
            raise DataError(f"input pattern {pattern} matches no file")
        files.extend(matches)
    return files


def read_text(path: str, split: str) -> Iterator[str]:
    """A document per paragraph (blank-line separated), per line, or the whole file."""
    if split not in TEXT_SPLITS:
        raise DataError(f"text split {split!r} is not one of {TEXT_SPLITS}")
    with open(path, encoding="utf-8", errors="replace") as handle:
        if split == "file":
            yield handle.read()
            return
        paragraph: list[str] = []
        for line in handle:
            if split == "line":
                if line.strip():
                    yield line.rstrip("\n")
                continue
            if line.strip():
                paragraph.append(line)
            elif paragraph:
                yield "".join(paragraph)
                paragraph = []
        if paragraph:
            yield "".join(paragraph)


def read_jsonl(path: str, text_field: str) -> Iterator[str]:
    with open(path, encoding="utf-8") as handle:
        for line_number, line in enumerate(handle, 1):
            if not line.strip():
                continue
            try:
                record = json.loads(line)
            except json.JSONDecodeError as error:
                raise DataError(f"{path}:{line_number} is not valid JSON: {error}") from error
            if text_field not in record:
                raise DataError(
                    f"{path}:{line_number} has no field {text_field!r} (fields: {sorted(record)})"
                )
            yield str(record[text_field])


def read_parquet(path: str, text_field: str) -> Iterator[str]:
    try:
        import pyarrow.parquet as parquet  # optional: only Parquet inputs need it
    except ImportError as error:
        raise DataError(f"reading {path} needs pyarrow (pip install pyarrow)") from error
    for batch in parquet.ParquetFile(path).iter_batches(columns=[text_field], batch_size=1024):
        yield from (str(text) for text in batch.column(0).to_pylist())


def read_hf_dataset(
    name: str, text_field: str, split: str = "train", config: str | None = None
) -> Iterator[str]:
    try:
        import datasets  # optional: only network ingestion needs it
    except ImportError as error:
        raise DataError(
            f"reading the Hugging Face dataset {name} needs `datasets` (pip install datasets)"
        ) from error
    for record in datasets.load_dataset(name, config, split=split, streaming=True):
        yield str(record[text_field])


def count_documents(path: str, *, text_split: str = "blank_line") -> int:
    """How many documents read_documents(path) yields, without building them (a progress bar's total): one pass over
    the lines, or a Parquet file's row count from its footer."""
    suffix = Path(path).suffix.lower()
    if suffix == ".parquet":
        try:
            import pyarrow.parquet as parquet
        except ImportError as error:
            raise DataError(f"reading {path} needs pyarrow (pip install pyarrow)") from error
        return parquet.ParquetFile(path).metadata.num_rows
    jsonl = suffix in (".jsonl", ".json")
    if not jsonl and text_split not in TEXT_SPLITS:
        raise DataError(f"text split {text_split!r} is not one of {TEXT_SPLITS}")
    if not jsonl and text_split == "file":
        return 1
    # Opened as read_jsonl / read_text open it, so that the lines and the blank lines are the same ones.
    paragraphs = not jsonl and text_split == "blank_line"
    count, in_paragraph = 0, False
    with open(path, encoding="utf-8", errors="strict" if jsonl else "replace") as handle:
        for line in handle:
            blank = not line.strip()
            count += not blank and not (paragraphs and in_paragraph)
            in_paragraph = not blank
    return count


def read_documents(path: str, *, text_field: str = "text", text_split: str = "blank_line") -> Iterator[str]:
    """Dispatch on the file suffix: .jsonl/.json, .parquet, anything else is plain text."""
    suffix = Path(path).suffix.lower()
    if suffix in (".jsonl", ".json"):
        return read_jsonl(path, text_field)
    if suffix == ".parquet":
        return read_parquet(path, text_field)
    return read_text(path, text_split)
