"""Scoring of generated answers (RULER's metric for NIAH, exact match for passkey) and aggregation over cells."""

from __future__ import annotations

import re
from collections.abc import Iterable, Sequence

_CONTROL = re.compile(r"[\x00-\x1f]")
_FIRST_INTEGER = re.compile(r"\d+")


def continuation_until_eos(ids: Sequence[int], eos_id: int) -> list[int]:
    """The generated ids before the first end-of-sequence token (generation runs a fixed number of steps)."""
    ids = [int(i) for i in ids]
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


def decode_generated(tokenizer, ids: Sequence[int]) -> str:
    """Text of a greedy continuation: cut at <eos>; ids the tokenizer does not know (a model's vocabulary may be padded
    beyond the tokenizer's) decode as <unk>, never as text that could match an answer."""
    kept = continuation_until_eos(ids, tokenizer.eos_id)
    unknown = getattr(tokenizer, "unk_id", None)
    kept = [i if i < tokenizer.vocab_size else unknown for i in kept]
    return tokenizer.decode([i for i in kept if i is not None])


def postprocess_prediction(text: str) -> str:
    """RULER's clean-up of a prediction: strip, control characters become newlines, strip again."""
    return _CONTROL.sub("\n", text.strip()).strip()


def string_match_all(prediction: str, references: Sequence[str]) -> float:
    """RULER's NIAH score of one sample: the fraction of expected values found in the prediction (case-insensitive
    substring). One value: 1 or 0 (exact match of the needle value); several (multi-value / multi-query): partial
    recall, e.g. 0.5 when two of four values appear."""
    if not references:
        raise ValueError("a sample needs at least one expected value")
    prediction = postprocess_prediction(prediction).lower()
    return sum(reference.lower() in prediction for reference in references) / len(references)


def passkey_match(prediction: str, passkey: str) -> bool:
    """Exact match of passkey retrieval: the first integer of the continuation is the passkey (so '57071.' and
    ' 57071 is the pass key' count, '570712' and '5707' do not)."""
    found = _FIRST_INTEGER.search(prediction)
    return found is not None and found.group() == passkey


def mean_by(records: Iterable[dict], key: str, value: str = "score") -> dict:
    """{record[key]: mean of record[value]} over the records, keys in sorted order."""
    groups: dict = {}
    for record in records:
        groups.setdefault(record[key], []).append(float(record[value]))
    return {group: sum(values) / len(values) for group, values in sorted(groups.items())}


def cell_means(records: Sequence[dict], row_key: str, column_key: str, value: str = "score"):
    """(rows, columns, means[row][column]) of the records grouped by two keys; cells without records are None."""
    rows = sorted({record[row_key] for record in records})
    columns = sorted({record[column_key] for record in records})
    sums = {(r, c): [] for r in rows for c in columns}
    for record in records:
        sums[(record[row_key], record[column_key])].append(float(record[value]))
    means = [[(sum(sums[(r, c)]) / len(sums[(r, c)])) if sums[(r, c)] else None for c in columns] for r in rows]
    return rows, columns, means
