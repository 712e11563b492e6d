"""text -> filter -> SentencePiece -> tensorflow-text ArrayRecord shards -> grain loader -> text, and the
errors on the way.

One tiny mixture is built per module (SentencePiece vocabulary 320, tensorflow imported once by
data_pipeline.shard).
"""

import json
import shutil

import numpy as np
import pytest

from data_pipeline import filter as filter_cli
from data_pipeline import shard, train_tokenizer
from data_pipeline.config import default_data_config
from data_pipeline.errors import DataError
from data_pipeline.loader import load_tokenizer, make_loader
from data_pipeline.mixture import load_mixture

WORDS = [
    "the",
    "river",
    "runs",
    "past",
    "old",
    "stone",
    "walls",
    "while",
    "quiet",
    "birds",
    "sing",
    "of",
    "rain",
    "and",
    "distant",
    "hills",
]


def _raw_documents(count: int) -> list[str]:
    rng = np.random.default_rng(0)
    documents = []
    for i in range(count):
        lines = [" ".join(rng.choice(WORDS, size=rng.integers(4, 12))) for _ in range(rng.integers(1, 4))]
        documents.append(f"Doc {i}:\n" + "\n".join(lines) + (" café, naïve ✓" if i % 7 == 0 else ""))
    return documents


def _build(root):
    documents = _raw_documents(60)
    raw = root / "raw.txt"
    raw.write_text("\n\n".join(documents) + "\n")
    filter_cli.main(
        [
            str(raw),
            f"--output={root / 'filtered' / 'tiny.jsonl'}",
            "--min_chars=8",
            "--min_words=2",
            "--near_dedup=false",
        ]
    )
    (root / "tiny.yaml").write_text(
        "name: tiny\nroot: .\ndocuments_per_shard: 25\n"
        "tokenizer: {model_type: unigram, vocab_size: 320, byte_fallback: true, max_sentences: 1000}\n"
        "corpora:\n  - {name: tiny, weight: 1.0, inputs: [filtered/tiny.jsonl]}\n"
    )
    train_tokenizer.main([f"--mixture={root / 'tiny.yaml'}"])
    shard.main([f"--mixture={root / 'tiny.yaml'}", "--batch_size=16"])
    return documents


@pytest.fixture(scope="module")
def built(tmp_path_factory):
    root = tmp_path_factory.mktemp("pipeline")
    return root, _build(root)


def _config(root):
    cfg = default_data_config()
    cfg.source, cfg.mixture, cfg.validation_fraction = "mixture", str(root / "tiny.yaml"), 0.0
    return cfg


def _copy(built, tmp_path):
    root, _ = built
    copy = tmp_path / "copy"
    shutil.copytree(root, copy)
    return copy


def test_manifest_records_the_corpus(built):
    root, documents = built
    manifest = json.loads((root / "data/mixtures/tiny/tiny.json").read_text())
    assert manifest["documents"] == len(documents) == 60
    assert [s["documents"] for s in manifest["shards"]] == [25, 25, 10]
    assert manifest["tokens"] == sum(s["tokens"] for s in manifest["shards"])
    sha = (root / "artifacts/tokenizer/tiny/spm.model.sha256").read_text().split()[0]
    assert manifest["tokenizer"]["sha256"] == sha and manifest["tokenizer"]["eos_id"] == 1
    assert manifest["filter"][str(root / "filtered/tiny.jsonl")]["counts"]["kept"] == 60


def test_round_trip_text_to_batches_to_text(built):
    root, documents = built
    cfg = _config(root)
    tokenizer = load_tokenizer(cfg)
    manifest = json.loads((root / "data/mixtures/tiny/tiny.json").read_text())
    epoch_tokens = manifest["tokens"] + manifest["documents"]  # every document is followed by one <eos>
    loader = make_loader(cfg, seq_len=31, global_batch_size=4)
    windows = []
    while len(windows) * 32 < epoch_tokens:
        batch = next(loader)
        windows.extend(np.concatenate([batch["inputs"], batch["targets"][:, -1:]], axis=1))
    stream = np.concatenate(windows)[:epoch_tokens]
    assert stream[-1] == tokenizer.eos_id
    decoded = [
        tokenizer.decode(piece) for piece in np.split(stream, np.flatnonzero(stream == tokenizer.eos_id) + 1)[:-1]
    ]
    # The filter trims trailing whitespace and NFKC-normalises; these documents are already normal.
    assert sorted(decoded) == sorted(documents)


def test_resharding_skips_finished_shards(built, tmp_path, capsys):
    root = _copy(built, tmp_path)
    shard_path = root / "data/shards/tiny/tiny/tiny-00001.array_record"
    before = shard_path.stat().st_mtime_ns
    (root / "data/shards/tiny/tiny/tiny-00002.array_record").unlink()
    capsys.readouterr()
    shard.main([f"--mixture={root / 'tiny.yaml'}"])
    assert shard_path.stat().st_mtime_ns == before
    assert (root / "data/shards/tiny/tiny/tiny-00002.array_record").is_file()
    # The progress bar (stderr) counts every document, skipped shards included, out of the corpus's total.
    last = capsys.readouterr().err.splitlines()[-1]
    assert last.startswith("shard tiny:") and "| 60/60 [" in last and "shards=3/3" in last


def test_tokenizer_sample_bar_counts_the_corpus_documents(built, capsys):
    root, documents = built
    capsys.readouterr()
    sentences = train_tokenizer.sample_sentences(load_mixture(root / "tiny.yaml"), max_sentences=1000, seed=0)
    last = capsys.readouterr().err.splitlines()[-1]
    lines = sum(1 for document in documents for line in document.split("\n") if line)
    assert len(sentences) == lines  # the quota exceeds the corpus: every line is sampled
    assert last.startswith("sample tiny:") and "| 60/60 [" in last and f"lines={lines}" in last


@pytest.mark.parametrize(
    ("damage", "message"),
    [
        ("missing", r"shard .*tiny-00001.array_record \(listed in .*tiny.json\) does not exist"),
        ("empty", r"shard .*tiny-00001.array_record \(listed in .*tiny.json\) is empty"),
        ("corrupt", r"shard .*tiny-00001.array_record is corrupt or not an ArrayRecord file"),
    ],
)
def test_damaged_shards_are_named(built, tmp_path, damage, message):
    root = _copy(built, tmp_path)
    path = root / "data/shards/tiny/tiny/tiny-00001.array_record"
    if damage == "missing":
        path.unlink()
    elif damage == "empty":
        path.write_bytes(b"")
    else:
        path.write_bytes(b"\x00garbage" * 100)
    with pytest.raises(DataError, match=message):
        make_loader(_config(root), seq_len=8, global_batch_size=2)


def test_tokenizer_with_another_hash_refuses_to_load(built, tmp_path):
    root = _copy(built, tmp_path)
    model = root / "artifacts/tokenizer/tiny/spm.model"
    model.write_bytes(model.read_bytes() + b"\x00")
    with pytest.raises(
        DataError,
        match=r"tokenizer .*spm.model has SHA-256 [0-9a-f]{64} but the shards of manifest "
        r".*tiny.json were written with a tokenizer of SHA-256",
    ):
        make_loader(_config(root), seq_len=8, global_batch_size=2)


def test_vocabulary_larger_than_the_model_refuses_to_train(built):
    root, _ = built
    vocab_size = json.loads((root / "data/mixtures/tiny/tiny.json").read_text())["tokenizer"]["vocab_size"]
    assert 300 < vocab_size <= 320  # SentencePiece stops below the requested 320 when the corpus supports no more
    with pytest.raises(DataError, match=rf"tokenizer .*spm.model has {vocab_size} ids but model.vocab_size is 256"):
        make_loader(_config(root), seq_len=8, global_batch_size=2, model_vocab_size=256)
    make_loader(_config(root), seq_len=8, global_batch_size=2, model_vocab_size=vocab_size)
