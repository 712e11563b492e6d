"""grain loaders: packing, mixtures, per-process slices, epochs, validation, checkpointed iterator state,
errors.

Shards here are written directly with ArrayRecordWriter (token ids chosen by the test), so no tokenizer or
tensorflow is needed; test_data_pipeline.py covers the real text -> tokenizer -> shard path.
"""

import json

import numpy as np
import pytest
from array_record.python.array_record_module import ArrayRecordWriter

from data_pipeline.config import default_data_config
from data_pipeline.errors import DataError
from data_pipeline.loader import build_dataset, make_loader
from data_pipeline.mixture import write_corpus_manifest
from data_pipeline.tokenizer import sha256_of_file

EOS, PAD = 1, 0


def _documents(first_id: int, count: int, seed: int) -> list[np.ndarray]:
    """Document i starts with the unique id first_id + i, so every document can be recognised in the packed
    stream."""
    rng = np.random.default_rng(seed)
    return [
        np.concatenate([[first_id + i], rng.integers(3, 50, size=rng.integers(2, 30))]).astype(np.int32)
        for i in range(count)
    ]


def _write_corpus(root, name: str, documents: list[np.ndarray], tokenizer_path, per_shard: int = 40) -> None:
    shard_dir = root / "shards" / name
    shard_dir.mkdir(parents=True)
    shards = []
    for index, start in enumerate(range(0, len(documents), per_shard)):
        chunk = documents[start : start + per_shard]
        path = shard_dir / f"{name}-{index:05d}.array_record"
        writer = ArrayRecordWriter(str(path), "group_size:1")
        for tokens in chunk:
            writer.write(tokens.astype("<u2").tobytes())
        writer.close()
        shards.append({"file": path.name, "documents": len(chunk), "tokens": int(sum(map(len, chunk))), "bytes": 0})
    write_corpus_manifest(
        root / "manifests" / f"{name}.json",
        {
            "corpus": name,
            "shard_dir": f"../shards/{name}",
            "shards": shards,
            "dtype": "<u2",
            "tokenizer": {
                "sha256": sha256_of_file(tokenizer_path),
                "vocab_size": 5000,
                "eos_id": EOS,
                "pad_id": PAD,
            },
        },
    )


CORPORA = {"web": (1000, 120, 0.7), "wiki": (2000, 90, 0.3)}  # name: (first id, documents, weight)


@pytest.fixture(scope="module")
def mixture_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("mixture")
    tokenizer = root / "spm.model"
    tokenizer.write_bytes(b"stand-in tokenizer: only its hash is checked by the loader")
    for seed, (name, (first_id, count, _)) in enumerate(CORPORA.items()):
        _write_corpus(root, name, _documents(first_id, count, seed), tokenizer)
    corpora = "\n".join(f"  - {{name: {name}, weight: {w}}}" for name, (_, _, w) in CORPORA.items())
    (root / "mix.yaml").write_text(
        f"name: mix\nroot: .\nshards_dir: shards\nmanifests_dir: manifests\ntokenizer: {{model: spm.model}}\n"
        f"corpora:\n{corpora}\n"
    )
    return root


def _config(root, **overrides):
    cfg = default_data_config()
    cfg.source, cfg.mixture = "mixture", str(root / "mix.yaml")
    cfg.validation_fraction = 0.1
    for key, value in overrides.items():
        cfg[key] = value
    return cfg


def _stream(batches) -> np.ndarray:
    """The packed token stream back from batches: every row is a window (inputs + its last target)."""
    rows = [
        np.concatenate([inputs, targets[-1:]])
        for batch in batches
        for inputs, targets in zip(batch["inputs"], batch["targets"])
    ]
    return np.concatenate(rows)


def _document_ids(stream: np.ndarray) -> list[int]:
    ends = np.flatnonzero(stream == EOS)
    starts = np.concatenate([[0], ends[:-1] + 1])
    return [int(stream[s]) for s in starts]


def test_mixture_proportions_follow_weights(mixture_root):
    dataset = build_dataset(_config(mixture_root), seq_len=16, batch_size=10, with_corpus_ids=True)
    corpus_ids = np.concatenate([batch["corpus"] for _, batch in zip(range(100), dataset)])
    share_web = float(np.mean(corpus_ids == 0))
    # 1000 windows drawn with p = 0.7: a binomial standard deviation is 0.0145; grain's mix is tighter than
    # that.
    assert abs(share_web - 0.7) < 0.03, share_web


def test_batches_have_the_contract_shapes_and_shifted_targets(mixture_root):
    batch = next(make_loader(_config(mixture_root), seq_len=16, global_batch_size=4))
    assert {k: (v.shape, v.dtype) for k, v in batch.items()} == {
        "inputs": ((4, 16), np.int32),
        "targets": ((4, 16), np.int32),
        "mask": ((4, 16), np.float32),
    }
    np.testing.assert_array_equal(batch["inputs"][:, 1:], batch["targets"][:, :-1])
    assert batch["mask"].min() == 1.0


def _single_corpus_config(root, seed=0):
    cfg = _config(root, seed=seed, validation_fraction=0.0)
    return cfg


@pytest.fixture(scope="module")
def single_root(tmp_path_factory):
    root = tmp_path_factory.mktemp("single")
    tokenizer = root / "spm.model"
    tokenizer.write_bytes(b"another stand-in")
    documents = _documents(100, 50, seed=7)
    _write_corpus(root, "solo", documents, tokenizer, per_shard=16)
    (root / "mix.yaml").write_text(
        "name: solo\nroot: .\nshards_dir: shards\nmanifests_dir: manifests\ntokenizer: {model: spm.model}\n"
        "corpora:\n  - {name: solo}\n"
    )
    return root, documents


def _epoch_ids(cfg, epoch_tokens: int, epochs: int, process_index=0, process_count=1) -> list[int]:
    loader = make_loader(
        cfg,
        seq_len=8,
        global_batch_size=process_count,
        process_index=process_index,
        process_count=process_count,
    )
    batches = []
    while sum(b["inputs"].size + b["inputs"].shape[0] for b in batches) < epoch_tokens * epochs:
        batches.append(next(loader))
    return _document_ids(_stream(batches)[: epoch_tokens * epochs])


def test_no_document_repeats_before_its_epoch_is_spent(single_root):
    root, documents = single_root
    epoch_tokens = sum(len(d) + 1 for d in documents)
    ids = _epoch_ids(_single_corpus_config(root), epoch_tokens, epochs=2)
    first, second = ids[: len(documents)], ids[len(documents) :]
    assert sorted(first) == sorted(second) == list(range(100, 150))
    assert first != second  # every epoch is reshuffled


def test_process_slices_are_disjoint_and_cover_the_corpus(single_root):
    root, documents = single_root
    seen = []
    for process_index in range(3):
        # A process's epoch is its share (every third document of the epoch's permutation); reading the tokens
        # of the whole corpus is more than enough to see all of it, and its first `share` documents are that
        # epoch.
        ids_all = _epoch_ids(_single_corpus_config(root), sum(len(d) + 1 for d in documents), 1, process_index, 3)
        share = len(range(process_index, len(documents), 3))
        seen.append(ids_all[:share])
    assert sum(len(s) for s in seen) == len(documents)
    assert sorted(i for s in seen for i in s) == list(range(100, 150))


@pytest.mark.parametrize("source", ["builtin", "mixture"])
def test_restored_iterator_continues_with_the_same_batches(mixture_root, source):
    cfg = _config(mixture_root) if source == "mixture" else default_data_config()
    if source == "builtin":
        cfg.builtin.num_documents = 64
    loader = make_loader(cfg, seq_len=32, global_batch_size=4)
    for _ in range(7):
        next(loader)
    state = json.loads(json.dumps(loader.get_state()))  # checkpoints store it as JSON
    expected = [next(loader) for _ in range(5)]
    restored = make_loader(cfg, seq_len=32, global_batch_size=4)
    restored.set_state(state)
    for want, got in zip(expected, (next(restored) for _ in range(5))):
        for key in want:
            np.testing.assert_array_equal(want[key], got[key])


def test_validation_is_a_finite_padded_pass_disjoint_from_training(mixture_root):
    cfg = _config(mixture_root)
    batches = list(make_loader(cfg, seq_len=16, global_batch_size=4, split="validation"))
    again = list(make_loader(cfg, seq_len=16, global_batch_size=4, split="validation"))
    np.testing.assert_array_equal(_stream(batches), _stream(again))
    mask = np.concatenate([b["mask"] for b in batches])
    assert mask[-1].sum() < 16 and set(np.unique(mask)) <= {0.0, 1.0}
    stream = _stream(batches)
    valid_tokens = int(mask.sum()) + int((mask.sum(axis=1) > 0).sum())
    validation_ids = set(_document_ids(stream[:valid_tokens]))
    assert len(validation_ids) == 12 + 9  # 10% of 120 and of 90 documents
    train = build_dataset(cfg, seq_len=16, batch_size=10, with_corpus_ids=True)
    batches = [b for _, b in zip(range(300), train)]
    rows = np.concatenate([np.concatenate([b["inputs"], b["targets"][:, -1:]], axis=1) for b in batches])
    corpus = np.concatenate([b["corpus"] for b in batches])
    # Windows of one corpus, in order, are that corpus's packed stream.
    train_ids = {i for c in (0, 1) for i in _document_ids(rows[corpus == c].reshape(-1))}
    assert train_ids.isdisjoint(validation_ids)
    assert len(train_ids) == 120 + 90 - 21


def test_mp_prefetch_workers_deliver_restorable_batches(single_root):
    root, _ = single_root
    cfg = _config(root, validation_fraction=0.0, num_workers=2)
    loader = make_loader(cfg, seq_len=8, global_batch_size=2)
    next(loader)
    state = loader.get_state()
    expected = [next(loader) for _ in range(3)]
    restored = make_loader(cfg, seq_len=8, global_batch_size=2)
    restored.set_state(state)
    for want in expected:
        np.testing.assert_array_equal(want["inputs"], next(restored)["inputs"])


def test_errors_name_the_problem(mixture_root, tmp_path):
    cfg = default_data_config()
    cfg.source = "webdataset"
    with pytest.raises(DataError, match="data.source='webdataset' is not a known source"):
        make_loader(cfg, seq_len=8, global_batch_size=2)
    cfg.source, cfg.mixture = "mixture", str(tmp_path / "nope.yaml")
    with pytest.raises(DataError, match="nope.yaml does not exist"):
        make_loader(cfg, seq_len=8, global_batch_size=2)
    bad = tmp_path / "bad.yaml"
    bad.write_text("name: x\ncorpora:\n  - {name: a, wieght: 2}\n")
    cfg.mixture = str(bad)
    with pytest.raises(DataError, match=r"unknown keys \['wieght'\]"):
        make_loader(cfg, seq_len=8, global_batch_size=2)
    with pytest.raises(DataError, match="vocabulary of the built-in corpus has .* ids but model.vocab_size is 10"):
        make_loader(default_data_config(), seq_len=8, global_batch_size=2, model_vocab_size=10)
