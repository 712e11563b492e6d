"""data_pipeline.filter: normalisation, length bounds, exact and near duplicates, language, limits, stats
file."""

import json
from collections import Counter

import numpy as np

from data_pipeline import filter as filter_cli
from data_pipeline.filter import FilterSettings, filter_documents
from data_pipeline.readers import read_documents
from data_pipeline.text_filters import MinHashDeduplicator, normalize_text


def test_normalize_text():
    raw = "  Caf\u0065\u0301  ﬁne\t tab\r\n\n\n\nline\u00a0two \x07\n"
    assert normalize_text(raw) == "Café fine tab\n\nline two"


def _words(seed: int, count: int) -> list[str]:
    rng = np.random.default_rng(seed)
    return [f"w{int(i)}" for i in rng.integers(0, 5000, size=count)]


def test_minhash_catches_near_duplicates_only():
    base = _words(0, 400)
    dedup = MinHashDeduplicator()
    assert not dedup.seen(" ".join(base))
    edited = base[:390] + _words(1, 10)  # about 95% of the shingles shared
    assert dedup.seen(" ".join(edited))
    assert not dedup.seen(" ".join(_words(2, 400)))  # unrelated text
    assert not dedup.seen(" ".join(base[:200] + _words(3, 200)))  # Jaccard ~0.33: kept


def test_filter_counts_every_reason():
    long_text = " ".join(_words(4, 100))
    documents = [
        "too short",
        long_text,
        long_text + "  ",  # an exact duplicate after normalisation
        " ".join(_words(4, 98) + ["x1", "x2"]),  # a near duplicate
        " ".join(_words(5, 100)),
        "x" * 50 + " y" * 10,  # not English by the stop-word share
        "the cat and the dog went to the river in the rain with all of their friends " * 3,
    ]
    counts = Counter()
    settings = FilterSettings(min_chars=20, min_words=5, language="en", min_english_score=0.0)
    kept = list(filter_documents(documents, settings, counts))
    assert counts["dropped_too_short"] == 1 and counts["dropped_exact_duplicate"] == 1
    assert counts["dropped_near_duplicate"] == 1 and counts["kept"] == len(kept) == 4
    counts = Counter()
    english = FilterSettings(min_chars=20, min_words=5, language="en", min_english_score=0.2)
    kept = list(filter_documents(documents, english, counts))
    # The language check runs before deduplication, so all five non-English documents count as language drops.
    assert kept == [documents[-1].strip()] and counts["dropped_language"] == 5


def test_cli_streams_jsonl_with_limit_from_environment(tmp_path, monkeypatch):
    source = tmp_path / "in.jsonl"
    source.write_text("".join(json.dumps({"body": " ".join(_words(10 + i, 30))}) + "\n" for i in range(6)))
    monkeypatch.setenv("WIKI_LIMIT", "4")
    stats = filter_cli.main(
        [str(source), f"--output={tmp_path / 'out.jsonl'}", "--corpus_name=wiki", "--text_field=body"]
    )
    lines = (tmp_path / "out.jsonl").read_text().splitlines()
    assert len(lines) == 4 and stats["counts"]["kept"] == 4 and stats["settings"]["limit"] == 4
    assert json.loads((tmp_path / "out.jsonl.stats.json").read_text())["counts"] == stats["counts"]
    assert [json.loads(line)["text"] for line in lines] == list(read_documents(str(source), text_field="body"))[:4]


def test_plain_text_splits_into_paragraphs(tmp_path):
    path = tmp_path / "play.txt"
    path.write_text("A:\nfirst speech\n\n\nB:\nsecond\nspeech\n")
    assert list(read_documents(str(path))) == ["A:\nfirst speech\n", "B:\nsecond\nspeech\n"]
    assert list(read_documents(str(path), text_split="line")) == [
        "A:",
        "first speech",
        "B:",
        "second",
        "speech",
    ]
