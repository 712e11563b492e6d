"""grain loaders: documents -> shuffle by seed -> per-process slice -> packed windows of seq_len + 1 ->
mixture -> batches.

Sources are the built-in corpus (data.source='builtin') or the ArrayRecord corpora of a mixture manifest
(data.source='mixture'). Each corpus is shuffled per epoch (grain reseeds the shuffle at every repeat), sliced
across processes (process p reads positions p, p + P, ... of each epoch's permutation: disjoint, covering),
packed into windows with <eos> between documents, and the corpora are mixed by weight with IterDataset.mix: a
document is never repeated before its corpus's epoch is spent. Validation is one deterministic pass over each
corpus's held-out documents, the last window and batch padded with mask 0.

The iterator returned by :func:`make_loader` is a grain ``DatasetIterator``: ``get_state()`` / ``set_state()``
make it part of every checkpoint, so a resumed run sees exactly the batches an uninterrupted run would have
seen (DESIGN D10).
"""

from __future__ import annotations

from pathlib import Path

import grain
import numpy as np
from absl import flags

from data_pipeline import sources
from data_pipeline.builtin_corpus import PAD_ID as BUILTIN_PAD_ID
from data_pipeline.builtin_corpus import BuiltinCorpus, BuiltinTokenizer
from data_pipeline.errors import DataError
from data_pipeline.mixture import load_mixture, read_corpus_manifest
from data_pipeline.packing import PackedWindows
from data_pipeline.tokenizer import SentencePieceTokenizer, check_tokenizer_hash, check_vocab_fits

SPLITS = ("train", "validation")
SOURCES = ("builtin", "mixture")


class Corpus:
    """One named document source of a split, with its sampling weight and the ids the packer needs."""

    def __init__(self, name: str, documents, weight: float, pad_id: int) -> None:
        self.name, self.documents, self.weight, self.pad_id = name, documents, weight, pad_id


def _builtin_corpora(data_cfg, split: str) -> list[Corpus]:
    builtin = data_cfg.builtin
    shape = {key: builtin[key] for key in ("max_fillers", "ask_all_facts", "min_people", "max_people")}
    # Validation documents come from a disjoint index range of the same generator, so they never occur in
    # training.
    if split == "train":
        documents = BuiltinCorpus(builtin.seed, builtin.num_documents, **shape)
    else:
        documents = BuiltinCorpus(
            builtin.seed, builtin.num_validation_documents, first_index=builtin.num_documents, **shape
        )
    return [Corpus("builtin", documents, 1.0, BUILTIN_PAD_ID)]


def _tokenizer_path(data_cfg, mixture) -> Path:
    return Path(data_cfg.tokenizer) if data_cfg.tokenizer else mixture.tokenizer.model_path


SEED_MIXTURE_BUILDER = "bash data_pipeline/build_seed_mixture.sh"


def build_commands(manifest: str) -> str:
    """The command that builds a mixture's tokenizer and shards: the seed mixture's own script (it also fetches and
    filters the corpora), else the two pipeline stages over the manifest's filtered JSONL inputs."""
    if Path(manifest).name == "seed_mixture.yaml":
        return f"{SEED_MIXTURE_BUILDER} (needs the network and `pip install datasets`)"
    return (
        f"python -m data_pipeline.train_tokenizer --mixture={manifest} && "
        f"python -m data_pipeline.shard --mixture={manifest}"
    )


def _require_built(data_cfg, mixture, *, shards: bool) -> Path:
    """The tokenizer path, once the tokenizer (and with `shards`, every corpus manifest) exists; otherwise a one-line
    DataError that says what is missing and the command that builds it (a fresh clone has no data)."""
    tokenizer_path = _tokenizer_path(data_cfg, mixture)
    missing = [] if tokenizer_path.is_file() else [f"no tokenizer {tokenizer_path}"]
    absent = [c.name for c in mixture.corpora if shards and not c.manifest_path.is_file()]
    if absent:
        missing.append(f"no shards of {', '.join(absent)}")
    if not missing:
        return tokenizer_path
    raise DataError(
        f"the data of mixture {data_cfg.mixture} is not built yet ({'; '.join(missing)}). Build it with: "
        f"{build_commands(data_cfg.mixture)}; or train on one local text file instead: bash data_pipeline/run_sample.sh "
        "FILE.txt runs/sample, then --config.data.mixture=runs/sample/sample.yaml --config.model.vocab_size=2000"
    )


def _num_validation(data_cfg, num_documents: int, name: str) -> int:
    wanted = int(num_documents * data_cfg.validation_fraction)
    if data_cfg.validation_fraction > 0:
        wanted = max(1, wanted)
    wanted = min(wanted, data_cfg.validation_max_documents)
    if wanted >= num_documents:
        raise DataError(
            f"corpus {name!r} has {num_documents} documents: too few to hold out {wanted} for validation "
            f"(data.validation_fraction={data_cfg.validation_fraction})"
        )
    return wanted


def _mixture_corpora(data_cfg, split: str) -> list[Corpus]:
    if not data_cfg.mixture:
        raise DataError("data.source='mixture' needs data.mixture, the path of a mixture manifest")
    mixture = load_mixture(data_cfg.mixture)
    tokenizer_path = _require_built(data_cfg, mixture, shards=True)
    corpora = []
    for spec in mixture.corpora:
        manifest = read_corpus_manifest(spec.manifest_path)
        check_tokenizer_hash(tokenizer_path, manifest["tokenizer"]["sha256"], spec.manifest_path)
        documents = sources.ArrayRecordCorpus(manifest, spec.manifest_path)
        num_validation = _num_validation(data_cfg, len(documents), spec.name)
        corpora.append(
            Corpus(
                spec.name,
                sources.SplitSource(documents, num_validation, split),
                spec.weight,
                manifest["tokenizer"]["pad_id"],
            )
        )
    return corpora


def corpora_for(data_cfg, split: str) -> list[Corpus]:
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if data_cfg.source == "builtin":
        return _builtin_corpora(data_cfg, split)
    if data_cfg.source == "mixture":
        return _mixture_corpora(data_cfg, split)
    raise DataError(f"data.source={data_cfg.source!r} is not a known source; expected one of {SOURCES}")


def load_tokenizer(data_cfg):
    """The tokenizer of the configured data (encode/decode/vocab_size/eos_id/pad_id), for evaluation and
    generation."""
    if data_cfg.source == "builtin":
        return BuiltinTokenizer()
    if data_cfg.source != "mixture":
        raise DataError(f"data.source={data_cfg.source!r} is not a known source; expected one of {SOURCES}")
    if not data_cfg.mixture:
        raise DataError("data.source='mixture' needs data.mixture, the path of a mixture manifest")
    return SentencePieceTokenizer(_require_built(data_cfg, load_mixture(data_cfg.mixture), shards=False))


def check_vocab(data_cfg, model_vocab_size: int) -> None:
    """Refuse to train a model whose embedding has fewer rows than the data's vocabulary, or on data not built."""
    if data_cfg.source == "mixture" and data_cfg.mixture:
        _require_built(data_cfg, load_mixture(data_cfg.mixture), shards=True)
    tokenizer = load_tokenizer(data_cfg)
    what = "the built-in corpus" if data_cfg.source == "builtin" else f"tokenizer {tokenizer.model_path}"
    check_vocab_fits(tokenizer.vocab_size, model_vocab_size, what)


def _packed(
    corpus: Corpus,
    corpus_id: int,
    data_cfg,
    *,
    window: int,
    split: str,
    process_index: int,
    process_count: int,
) -> grain.IterDataset:
    documents = grain.MapDataset.source(corpus.documents)
    if len(documents) < process_count:
        raise DataError(
            f"corpus {corpus.name!r} ({split}) has {len(documents)} documents for {process_count} processes"
        )
    if split == "train":
        # Distinct, deterministic seeds per corpus; repeat() folds the epoch into them, so every epoch is a
        # new order.
        documents = documents.shuffle(seed=int(data_cfg.seed) * 1_000_003 + corpus_id)
    documents = documents[process_index::process_count]
    if split == "train":
        documents = documents.repeat(None)
    return PackedWindows(
        documents.to_iter_dataset(_read_options(data_cfg)),
        window=window,
        pad_id=corpus.pad_id,
        pad_final=split == "validation",
        corpus_id=corpus_id,
    )


def _read_options(data_cfg) -> grain.ReadOptions:
    # Reader threads overlap file I/O; for in-memory or generated documents they only contend for the GIL.
    threads = int(data_cfg.read_threads)
    return grain.ReadOptions(num_threads=threads, prefetch_buffer_size=int(data_cfg.read_prefetch) if threads else 0)


def _pad_batch(batch: dict, batch_size: int) -> dict:
    missing = batch_size - batch["tokens"].shape[0]
    if not missing:
        return batch
    return {
        key: np.concatenate([value, np.zeros((missing, *value.shape[1:]), value.dtype)]) for key, value in batch.items()
    }


def _to_example(batch: dict, with_corpus_ids: bool) -> dict:
    tokens = batch["tokens"]
    example = {"inputs": tokens[:, :-1], "targets": tokens[:, 1:], "mask": batch["mask"]}
    if with_corpus_ids:
        example["corpus"] = batch["corpus"]
    return example


def build_dataset(
    data_cfg,
    *,
    seq_len: int,
    batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    with_corpus_ids: bool = False,
) -> grain.IterDataset:
    """The loader's grain IterDataset of per-process batches (tests ask for the 'corpus' id of every row)."""
    corpora = corpora_for(data_cfg, split)
    if not 0 <= process_index < process_count:
        raise ValueError(f"process_index={process_index} is not in [0, {process_count})")
    if split == "validation" and len(corpora) > 1:
        # One pass over every corpus's held-out documents in turn (validation reports one loss over the
        # mixture).
        documents = sources.ConcatSource([corpus.documents for corpus in corpora])
        corpora = [Corpus("validation", documents, 1.0, corpora[0].pad_id)]
    packed = [
        _packed(
            corpus,
            corpus_id,
            data_cfg,
            window=seq_len + 1,
            split=split,
            process_index=process_index,
            process_count=process_count,
        )
        for corpus_id, corpus in enumerate(corpora)
    ]
    if split == "train":
        windows = packed[0] if len(packed) == 1 else grain.IterDataset.mix(packed, [c.weight for c in corpora])
        batches = windows.batch(batch_size, drop_remainder=True)
    else:
        # The final short batch is padded with mask-0 rows so that batch shapes never change.
        batches = packed[0].batch(batch_size, drop_remainder=False).map(lambda batch: _pad_batch(batch, batch_size))
    batches = batches.map(lambda batch: _to_example(batch, with_corpus_ids))
    if data_cfg.num_workers > 0:
        # grain's workers read absl flags; outside an absl app (tests, benchmarks) nothing has parsed them
        # yet.
        if not flags.FLAGS.is_parsed():
            flags.FLAGS.mark_as_parsed()
        batches = batches.mp_prefetch(
            grain.MultiprocessingOptions(
                num_workers=data_cfg.num_workers, per_worker_buffer_size=data_cfg.prefetch_buffer_size
            )
        )
    return batches


def make_loader(
    data_cfg,
    *,
    seq_len: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
    model_vocab_size: int | None = None,
) -> grain.DatasetIterator:
    """Iterator over batches {'inputs', 'targets', 'mask'} of shape [global_batch_size // process_count,
    seq_len]."""
    if global_batch_size % process_count:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} is not divisible by the process count {process_count}"
        )
    if model_vocab_size is not None:
        check_vocab(data_cfg, model_vocab_size)
    dataset = build_dataset(
        data_cfg,
        seq_len=seq_len,
        batch_size=global_batch_size // process_count,
        process_index=process_index,
        process_count=process_count,
        split=split,
    )
    return iter(dataset)
