"""Tokenise a mixture's documents with tensorflow-text into ArrayRecord shards and one manifest per corpus.

    python -m data_pipeline.shard --mixture=data/mixtures/sample.yaml [--corpus=NAME ...] [--batch_size=256]

One record per document: its token ids (no <eos>; the loader appends it) as little-endian uint16 when the
vocabulary fits, else int32, as the manifest's `dtype` says. Shard i of a corpus holds its documents [i * D,
(i + 1) * D) with D the manifest's documents_per_shard, written to a temporary name and renamed when complete,
with a sidecar JSON of its counts: a rerun skips every finished shard (resumable), and refuses to continue
shards written with another tokenizer. This is the only module of the project that imports tensorflow (DESIGN
D9).
"""

from __future__ import annotations

import argparse
import itertools
import json
import os
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import numpy as np

from data_pipeline import progress, readers
from data_pipeline.errors import DataError
from data_pipeline.mixture import CorpusSpec, MixtureSpec, load_mixture, write_corpus_manifest
from data_pipeline.tokenizer import EOS_ID, PAD_ID, sha256_of_file

WRITER_OPTIONS = "group_size:1"  # one record per chunk: cheapest random access for grain's shuffled reads


def token_dtype(vocab_size: int) -> np.dtype:
    return np.dtype("<u2") if vocab_size <= 1 << 16 else np.dtype("<i4")


def shard_name(corpus: str, index: int) -> str:
    return f"{corpus}-{index:05d}.array_record"


class TfTextTokenizer:
    """Batched SentencePiece tokenisation through tensorflow-text (graph ops, releases the GIL, many docs per
    call)."""

    def __init__(self, model_path: Path) -> None:
        os.environ.setdefault("TF_CPP_MIN_LOG_LEVEL", "3")
        import tensorflow as tf
        import tensorflow_text as tf_text

        tf.config.set_visible_devices(
            [], "GPU"
        )  # tokenising never needs, and must never take, accelerator memory
        self._tf = tf
        self._tokenizer = tf_text.SentencepieceTokenizer(model=model_path.read_bytes(), out_type=tf.int32)
        self.vocab_size = int(self._tokenizer.vocab_size().numpy())

    def tokenize(self, texts: list[str]) -> list[np.ndarray]:
        ragged = self._tokenizer.tokenize(self._tf.constant(texts))
        flat = ragged.flat_values.numpy()
        splits = ragged.row_splits.numpy()
        return [flat[start:end] for start, end in itertools.pairwise(splits)]


def _batches(documents: Iterator[str], size: int) -> Iterator[list[str]]:
    while batch := list(itertools.islice(documents, size)):
        yield batch


def _write_shard(path: Path, token_lists: list[np.ndarray], dtype: np.dtype) -> None:
    from array_record.python.array_record_module import ArrayRecordWriter

    temporary = path.with_name(path.name + ".tmp")
    writer = ArrayRecordWriter(str(temporary), WRITER_OPTIONS)
    for tokens in token_lists:
        writer.write(tokens.astype(dtype).tobytes())
    writer.close()
    temporary.replace(path)


def _filter_provenance(files: list[str]) -> dict:
    """The filter settings and counts of every input, from the stats file data_pipeline.filter wrote next to
    it."""
    provenance = {}
    for file in files:
        stats_path = Path(file + ".stats.json")
        provenance[file] = json.loads(stats_path.read_text()) if stats_path.is_file() else None
    return provenance


def shard_corpus(
    mixture: MixtureSpec,
    corpus: CorpusSpec,
    tokenizer: TfTextTokenizer,
    tokenizer_sha256: str,
    batch_size: int,
) -> dict:
    files = readers.expand_inputs(corpus.inputs)
    corpus.shard_dir.mkdir(parents=True, exist_ok=True)
    dtype = token_dtype(tokenizer.vocab_size)
    documents = (
        document for file in files for document in readers.read_documents(file, text_field=corpus.text_field)
    )
    shards = []
    start = time.perf_counter()
    total = sum(readers.count_documents(file) for file in files)
    bar = progress.bar(f"shard {corpus.name}", total=total)
    shard_count = -(-total // mixture.documents_per_shard)
    for index in itertools.count():
        shard_documents = list(itertools.islice(documents, mixture.documents_per_shard))
        if not shard_documents:
            break
        path = corpus.shard_dir / shard_name(corpus.name, index)
        sidecar = path.with_name(path.name + ".json")
        if path.is_file() and sidecar.is_file():
            record = json.loads(sidecar.read_text())
            if record["tokenizer_sha256"] != tokenizer_sha256:
                raise DataError(
                    f"shard {path} was written with tokenizer {record['tokenizer_sha256']}, "
                    f"not {tokenizer_sha256}; "
                    f"delete {corpus.shard_dir} to re-shard with the new tokenizer"
                )
            bar.update(len(shard_documents))
        else:
            token_lists = []
            for batch in _batches(iter(shard_documents), batch_size):
                token_lists.extend(tokenizer.tokenize(batch))
                bar.update(len(batch))
            _write_shard(path, token_lists, dtype)
            record = {
                "file": path.name,
                "documents": len(token_lists),
                "tokens": int(sum(len(tokens) for tokens in token_lists)),
                "bytes": path.stat().st_size,
                "tokenizer_sha256": tokenizer_sha256,
            }
            sidecar.write_text(json.dumps(record) + "\n")
        shards.append({key: record[key] for key in ("file", "documents", "tokens", "bytes")})
        bar.set_postfix(shards=f"{len(shards)}/{shard_count}", refresh=False)
    bar.close()
    seconds = time.perf_counter() - start
    if not shards:
        raise DataError(f"corpus {corpus.name!r}: its inputs {corpus.inputs} hold no documents")
    manifest = {
        "corpus": corpus.name,
        "mixture": mixture.name,
        "documents": sum(shard["documents"] for shard in shards),
        "tokens": sum(shard["tokens"] for shard in shards),
        "shard_dir": os.path.relpath(corpus.shard_dir, corpus.manifest_path.parent),
        "shards": shards,
        "dtype": dtype.str,
        "documents_per_shard": mixture.documents_per_shard,
        "tokenizer": {
            "path": os.path.relpath(mixture.tokenizer.model_path, corpus.manifest_path.parent),
            "sha256": tokenizer_sha256,
            "vocab_size": tokenizer.vocab_size,
            "eos_id": EOS_ID,
            "pad_id": PAD_ID,
        },
        "source": files,
        "filter": _filter_provenance(files),
        "seed": mixture.seed,
        "seconds": round(seconds, 3),
        "created": time.strftime("%Y-%m-%dT%H:%M:%S%z"),
    }
    write_corpus_manifest(corpus.manifest_path, manifest)
    return manifest


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.shard",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mixture", required=True, help="mixture manifest (YAML)")
    parser.add_argument("--corpus", action="append", default=[], help="only these corpora (repeatable)")
    parser.add_argument("--batch_size", type=int, default=256, help="documents per tensorflow-text call")
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    mixture = load_mixture(args.mixture)
    model_path = mixture.tokenizer.model_path
    if not model_path.is_file():
        raise DataError(
            f"tokenizer {model_path} does not exist; run `python -m data_pipeline.train_tokenizer` first"
        )
    tokenizer = TfTextTokenizer(model_path)
    tokenizer_sha256 = sha256_of_file(model_path)
    unknown = set(args.corpus) - {corpus.name for corpus in mixture.corpora}
    if unknown:
        raise DataError(f"--corpus {sorted(unknown)} not in mixture {mixture.path}")
    manifests = []
    for corpus in mixture.corpora:
        if args.corpus and corpus.name not in args.corpus:
            continue
        manifest = shard_corpus(mixture, corpus, tokenizer, tokenizer_sha256, args.batch_size)
        print(json.dumps({key: manifest[key] for key in ("corpus", "documents", "tokens", "seconds")}))
        manifests.append(manifest)
    return manifests


if __name__ == "__main__":
    main()
