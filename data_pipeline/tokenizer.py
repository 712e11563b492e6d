"""SentencePiece models as the training loop and evaluation see them, and the SHA-256 that ties them to their
shards.

Special ids are fixed for every tokenizer the project trains (train_tokenizer.py), the same as the built-in
corpus's: <pad>=0, <eos>=1, <unk>=2, and no <bos> (documents are separated by <eos> only).
"""

from __future__ import annotations

import hashlib
from pathlib import Path

import sentencepiece as spm

from data_pipeline.errors import DataError

PAD_ID, EOS_ID, UNK_ID = 0, 1, 2


def sha256_of_file(path: str | Path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


class SentencePieceTokenizer:
    """encode/decode with the `sentencepiece` package (eval and generation), same interface as
    BuiltinTokenizer."""

    def __init__(self, model_path: str | Path) -> None:
        model_path = Path(model_path)
        if not model_path.is_file():
            raise DataError(f"tokenizer model {model_path} does not exist")
        self.model_path = model_path
        self.sha256 = sha256_of_file(model_path)
        try:
            self._processor = spm.SentencePieceProcessor(model_file=str(model_path))
        except (RuntimeError, OSError) as error:
            raise DataError(f"tokenizer model {model_path} is not a SentencePiece model: {error}") from error
        self.vocab_size = self._processor.vocab_size()
        self.pad_id = self._processor.pad_id()
        self.eos_id = self._processor.eos_id()
        self.unk_id = self._processor.unk_id()

    def encode(self, text: str) -> list[int]:
        return self._processor.encode(text)

    def decode(self, ids) -> str:
        return self._processor.decode([int(i) for i in ids if int(i) not in (self.pad_id, self.eos_id)])


def check_tokenizer_hash(model_path: str | Path, expected_sha256: str, manifest_path: str | Path) -> str:
    """The tokenizer must be the one the shards were written with; returns its hash."""
    actual = sha256_of_file(model_path)
    if actual != expected_sha256:
        raise DataError(
            f"tokenizer {model_path} has SHA-256 {actual} but the shards of manifest {manifest_path} were "
            f"written with a tokenizer of SHA-256 {expected_sha256}; refusing to load "
            "(re-shard, or point data.tokenizer at the right model)"
        )
    return actual


def check_vocab_fits(vocab_size: int, model_vocab_size: int, what: str) -> None:
    """Token ids >= the model's embedding rows would be silently clamped or crash on device: refuse before
    training."""
    if vocab_size > model_vocab_size:
        raise DataError(
            f"the vocabulary of {what} has {vocab_size} ids but model.vocab_size is {model_vocab_size}; "
            f"set model.vocab_size >= {vocab_size}"
        )
