"""Random-access document sources for grain: ArrayRecord corpora, a fixed train/validation split,
concatenation.

Every source returns a document as int32 token ids ending in <eos>, so the packer treats the built-in corpus
and sharded corpora alike.
"""

from __future__ import annotations

import bisect
from pathlib import Path

import grain
import numpy as np

from data_pipeline.errors import DataError

# The train/validation split is a fixed permutation of each corpus, independent of data.seed: changing the
# shuffle seed must never move documents between the splits. grain's shuffle cannot be used for it, because
# repeat() reseeds every upstream shuffle per epoch (that would leak validation documents into training in
# epoch 2).
SPLIT_SEED = 0x5EED
_SPLIT_ROUNDS = 4


class ArrayRecordCorpus:
    """The documents of one corpus manifest: shard files checked up front, each record decoded to tokens +
    <eos>."""

    def __init__(self, manifest: dict, manifest_path: Path) -> None:
        from array_record.python.array_record_module import ArrayRecordReader

        shard_dir = (manifest_path.parent / manifest["shard_dir"]).resolve()
        self.name = manifest["corpus"]
        self.paths = []
        for shard in manifest["shards"]:
            path = shard_dir / shard["file"]
            if not path.is_file():
                raise DataError(f"shard {path} (listed in {manifest_path}) does not exist")
            if path.stat().st_size == 0:
                raise DataError(f"shard {path} (listed in {manifest_path}) is empty")
            try:
                reader = ArrayRecordReader(str(path))
                num_records = reader.num_records()
                reader.close()
            except (
                Exception
            ) as error:  # array_record raises RuntimeError or ValueError depending on the damage
                raise DataError(f"shard {path} is corrupt or not an ArrayRecord file: {error}") from error
            if num_records != shard["documents"]:
                raise DataError(
                    f"shard {path} has {num_records} records but {manifest_path} says {shard['documents']}"
                )
            self.paths.append(str(path))
        self._ends = np.cumsum([shard["documents"] for shard in manifest["shards"]]).tolist()
        self._dtype = np.dtype(manifest["dtype"])
        self._eos = np.asarray([manifest["tokenizer"]["eos_id"]], np.int32)
        self._source = grain.sources.ArrayRecordDataSource(self.paths)

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> np.ndarray:
        try:
            record = self._source[index]
            tokens = np.frombuffer(record, dtype=self._dtype)
        except Exception as error:
            shard = self.paths[bisect.bisect_right(self._ends, index)]
            raise DataError(
                f"shard {shard}: cannot read document {index} of corpus {self.name!r}: {error}"
            ) from error
        return np.concatenate([tokens.astype(np.int32), self._eos])


class SplitSource:
    """The training or validation documents of `source`: a fixed pseudo-random `num_validation` of them are
    validation."""

    def __init__(self, source, num_validation: int, split: str) -> None:
        self._source = source
        self._total = len(source)
        self._offset = 0 if split == "validation" else num_validation
        self._length = num_validation if split == "validation" else self._total - num_validation

    def __len__(self) -> int:
        return self._length

    def __getitem__(self, index: int) -> np.ndarray:
        if not 0 <= index < self._length:
            raise IndexError(f"document {index} out of range [0, {self._length})")
        position = grain.experimental.index_shuffle(
            index=self._offset + int(index), max_index=self._total - 1, seed=SPLIT_SEED, rounds=_SPLIT_ROUNDS
        )
        return self._source[position]


class ConcatSource:
    """Sources one after another (validation reads every corpus's held-out documents in one pass)."""

    def __init__(self, sources) -> None:
        self._sources = list(sources)
        self._ends = np.cumsum([len(source) for source in self._sources]).tolist()

    def __len__(self) -> int:
        return self._ends[-1]

    def __getitem__(self, index: int) -> np.ndarray:
        which = bisect.bisect_right(self._ends, index)
        start = self._ends[which - 1] if which else 0
        return self._sources[which][index - start]
