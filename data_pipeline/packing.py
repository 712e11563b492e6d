"""Packing documents (each ending in <eos>) into windows of seq_len + 1 tokens, in stream order,
checkpointably.

Windows are consecutive, non-overlapping slices of the concatenated document stream, so concatenating the
windows gives the stream back exactly (the round-trip test relies on it). The iterator state is small whatever
the document lengths: the parent's state from just before the current document plus the offset inside it;
restoring re-reads that one document. grain's ConcatThenSplitIterDataset is not used because it moves
already-full elements ahead of the buffer (the stream order changes) and checkpoints its token buffer.
"""

from __future__ import annotations

import grain
import numpy as np


class PackedWindows(grain.IterDataset):
    """Elements {'tokens': int32[window], 'mask': float32[window - 1], 'corpus': int32}.

    With `pad_final` the last partial window is padded with `pad_id` and its mask marks the targets that are
    real; without it the stream is expected to be infinite (training) and a partial tail is dropped.
    """

    def __init__(
        self, parent: grain.IterDataset, *, window: int, pad_id: int, pad_final: bool, corpus_id: int
    ) -> None:
        super().__init__(parent)
        self.window, self.pad_id, self.pad_final, self.corpus_id = window, pad_id, pad_final, corpus_id

    def __iter__(self) -> grain.DatasetIterator:
        return _PackedWindowsIterator(self._parent.__iter__(), self)

    def __str__(self) -> str:
        return f"PackedWindows(window={self.window}, corpus_id={self.corpus_id})"


class _PackedWindowsIterator(grain.DatasetIterator):
    def __init__(self, parent: grain.DatasetIterator, spec: PackedWindows) -> None:
        super().__init__(parent)
        self._spec = spec
        self._document: np.ndarray | None = None
        self._offset = 0
        self._state_before_document = None
        self._documents = 0  # documents started, for epoch accounting

    def _next_document(self) -> bool:
        state = self._parent.get_state()
        try:
            document = next(self._parent)
        except StopIteration:
            return False
        self._state_before_document, self._document, self._offset = state, np.asarray(document, np.int32), 0
        self._documents += 1
        return True

    def __next__(self) -> dict:
        window = self._spec.window
        pieces, needed = [], window
        while needed:
            exhausted = self._document is None or self._offset == len(self._document)
            if exhausted and not self._next_document():
                return self._final_window(pieces, window - needed)
            take = min(needed, len(self._document) - self._offset)
            pieces.append(self._document[self._offset : self._offset + take])
            self._offset += take
            needed -= take
        return self._element(np.concatenate(pieces), window)

    def _final_window(self, pieces: list[np.ndarray], length: int) -> dict:
        self._document = None
        if not self._spec.pad_final or length < 2:  # a lone token has no target
            raise StopIteration
        tokens = np.full(self._spec.window, self._spec.pad_id, np.int32)
        tokens[:length] = np.concatenate(pieces)
        return self._element(tokens, length)

    def _element(self, tokens: np.ndarray, length: int) -> dict:
        mask = (np.arange(self._spec.window - 1) < length - 1).astype(np.float32)
        return {"tokens": tokens, "mask": mask, "corpus": np.int32(self._spec.corpus_id)}

    def get_state(self) -> dict:
        in_document = self._document is not None
        return {
            "parent": self._state_before_document if in_document else self._parent.get_state(),
            "in_document": in_document,
            "offset": self._offset,
            "documents": self._documents,
            "corpus_id": self._spec.corpus_id,
        }

    def set_state(self, state: dict) -> None:
        self._parent.set_state(state["parent"])
        self._document = None
        if state["in_document"]:
            self._next_document()
            self._offset = state["offset"]
        self._documents = state["documents"]
