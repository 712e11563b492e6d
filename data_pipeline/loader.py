"""grain loaders: documents -> shuffled -> per-process slice -> packed windows of seq_len + 1 -> batches.

The iterator returned by :func:`make_loader` is a grain ``DatasetIterator``: ``get_state()`` / ``set_state()`` make it part of
every checkpoint, so a resumed run sees exactly the batches an uninterrupted run would have seen (DESIGN D10).
"""

from __future__ import annotations

import grain
import numpy as np

from data_pipeline.builtin_corpus import BuiltinCorpus

SPLITS = ("train", "validation")


def _builtin_source(data_cfg, split: str) -> BuiltinCorpus:
    builtin = data_cfg.builtin
    # Validation documents come from a disjoint index range of the same generator, so they never occur in training.
    if split == "train":
        return BuiltinCorpus(builtin.seed, builtin.num_documents)
    return BuiltinCorpus(builtin.seed, builtin.num_validation_documents, first_index=builtin.num_documents)


def _to_example(window: dict) -> dict:
    tokens = window["tokens"]
    return {
        "inputs": tokens[:-1],
        "targets": tokens[1:],
        "mask": np.ones(tokens.shape[0] - 1, np.float32),
    }


def make_loader(
    data_cfg,
    *,
    seq_len: int,
    global_batch_size: int,
    process_index: int = 0,
    process_count: int = 1,
    split: str = "train",
) -> grain.DatasetIterator:
    """Iterator over batches {'inputs', 'targets', 'mask'} of shape [global_batch_size // process_count, seq_len]."""
    if split not in SPLITS:
        raise ValueError(f"split must be one of {SPLITS}, got {split!r}")
    if global_batch_size % process_count:
        raise ValueError(
            f"train.global_batch_size={global_batch_size} is not divisible by the process count {process_count}"
        )
    if data_cfg.source != "builtin":
        raise ValueError(f"data.source={data_cfg.source!r} is not a known source; expected 'builtin'")
    source = _builtin_source(data_cfg, split)
    dataset = grain.MapDataset.source(source)
    if split == "train":
        dataset = dataset.shuffle(seed=data_cfg.seed)
    dataset = dataset[process_index::process_count]
    # Training repeats epochs (a fresh shuffle per epoch); validation is one deterministic pass.
    if split == "train":
        dataset = dataset.repeat(None)
    iter_dataset = dataset.map(lambda doc: {"tokens": doc}).to_iter_dataset()
    packed = grain.experimental.ConcatThenSplitIterDataset(iter_dataset, length_struct={"tokens": seq_len + 1})
    batched = packed.map(_to_example).batch(global_batch_size // process_count, drop_remainder=True)
    return iter(batched)
