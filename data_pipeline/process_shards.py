"""Each process's slice of the training and validation streams in a multi-process run (hope_jax/distributed.py says
who the processes are).

The stream is cut into `data.num_shards` disjoint reading shards; process p of P reads shards [p·S/P, (p+1)·S/P) and
concatenates their batches row-wise, so the global batch depends on S and never on P.
"""

from __future__ import annotations

import grain
import jax
import numpy as np

from data_pipeline.loader import build_dataset, make_loader


def data_shards(config, process_count: int) -> int:
    """The number of reading shards of the stream: `data.num_shards`, or one per process when it is 0."""
    shards = int(config.data.num_shards) or process_count
    if shards % process_count:
        raise ValueError(
            f"data.num_shards={shards} is not divisible by the process count {process_count}: every process must own "
            "the same number of reading shards"
        )
    if config.train.global_batch_size % shards:
        raise ValueError(
            f"train.global_batch_size={config.train.global_batch_size} is not divisible by data.num_shards={shards}"
        )
    return shards


def process_loader(config, split: str, *, process_index: int | None = None, process_count: int | None = None):
    """This process's batches of a split: rows [p·B/P, (p+1)·B/P) of every global batch.

    The stream is cut into `data.num_shards` disjoint reading shards (shard s reads documents s, s + S, ... of each
    epoch's permutation and packs them on its own); process p owns shards [p·S/P, (p+1)·S/P) and concatenates their
    batches of B/S rows. The global batch therefore depends on S, never on the process count: a fixed S gives the same
    run on 1 process or on many. With S = P (the default) this is the loader's own per-process slice.
    """
    process_index = jax.process_index() if process_index is None else process_index
    process_count = jax.process_count() if process_count is None else process_count
    shards = data_shards(config, process_count)
    kwargs = dict(seq_len=config.train.seq_len, split=split)
    if shards == process_count:
        return make_loader(
            config.data,
            global_batch_size=config.train.global_batch_size,
            process_index=process_index,
            process_count=process_count,
            **kwargs,
        )
    per_process = shards // process_count
    owned = range(process_index * per_process, (process_index + 1) * per_process)
    datasets = [
        build_dataset(
            config.data,
            batch_size=config.train.global_batch_size // shards,
            process_index=shard,
            process_count=shards,
            **kwargs,
        )
        for shard in owned
    ]
    return iter(ConcatenatedBatches(datasets, padded=split != "train"))


class ConcatenatedBatches(grain.IterDataset):
    """Row-wise concatenation of several batch streams (dicts of arrays), checkpointable (state = each stream's).

    Training streams are infinite. Validation streams are finite and may end one batch apart; `padded` then stands in
    an all-padding batch (mask 0) for a finished stream until every stream has finished, so no row is lost.
    """

    def __init__(self, parents, *, padded: bool) -> None:
        super().__init__(list(parents))
        self.padded = padded

    def __iter__(self):
        return _ConcatenatedIterator([parent.__iter__() for parent in self._parents], self.padded)


class _ConcatenatedIterator(grain.DatasetIterator):
    def __init__(self, parents, padded: bool) -> None:
        super().__init__(parents)
        self._padded = padded
        self._finished = [False] * len(parents)
        self._template = None

    def __next__(self) -> dict:
        batches = []
        for i, parent in enumerate(self._parents):
            batch = None
            if not self._finished[i]:
                try:
                    batch = next(parent)
                except StopIteration:
                    if not self._padded:
                        raise
                    self._finished[i] = True
            if batch is not None and self._template is None:
                self._template = {k: np.zeros_like(v) for k, v in batch.items()}
            batches.append(batch)
        if all(self._finished) or self._template is None:
            raise StopIteration
        batches = [self._template if b is None else b for b in batches]
        return {key: np.concatenate([b[key] for b in batches]) for key in batches[0]}

    def get_state(self) -> dict:
        return {"shards": [parent.get_state() for parent in self._parents], "finished": list(self._finished)}

    def set_state(self, state: dict) -> None:
        for parent, parent_state in zip(self._parents, state["shards"], strict=True):
            parent.set_state(parent_state)
        self._finished = list(state["finished"])
