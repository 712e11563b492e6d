"""Mixture manifests (YAML, written by people) and corpus manifests (JSON, written by shard.py).

A mixture manifest names the corpora of a training mixture, their sampling weights (in tokens: the loader
mixes packed windows), where their filtered documents are and where their shards and manifests go. Relative
paths are resolved
against `root`, which is itself relative to the manifest's directory (default: the directory itself)::

    name: sample
    root: .
    tokenizer: {model_type: unigram, vocab_size: 8000, byte_fallback: true, max_sentences: 1000000}
    documents_per_shard: 10000
    corpora:
      - {name: web, weight: 0.7, inputs: [filtered/web/*.jsonl]}
      - {name: wiki, weight: 0.3, inputs: [filtered/wiki.jsonl], text_field: text}

Defaults: tokenizer model `artifacts/tokenizer/<name>/spm.model`, shards `data/shards/<name>/<corpus>/`,
corpus manifests `data/mixtures/<name>/<corpus>.json`. A corpus manifest is the audit trail of its shards:
documents, tokens, shard files, tokenizer hash, source files and their filter settings, seed.
"""

from __future__ import annotations

import dataclasses
import json
from pathlib import Path

import yaml

from data_pipeline.errors import DataError

CORPUS_MANIFEST_FORMAT = "hope_jax.corpus_manifest.v1"
_TOKENIZER_DEFAULTS = {
    "model_type": "unigram",
    "vocab_size": 32000,
    "byte_fallback": True,
    "max_sentences": 1_000_000,
}
_MIXTURE_KEYS = {
    "name",
    "root",
    "tokenizer",
    "documents_per_shard",
    "shards_dir",
    "manifests_dir",
    "seed",
    "corpora",
}
_CORPUS_KEYS = {"name", "weight", "inputs", "text_field"}


@dataclasses.dataclass(frozen=True)
class TokenizerSpec:
    model_path: Path
    model_type: str
    vocab_size: int
    byte_fallback: bool
    max_sentences: int


@dataclasses.dataclass(frozen=True)
class CorpusSpec:
    name: str
    weight: float
    inputs: tuple[str, ...]  # glob patterns of filtered JSONL files (absolute)
    text_field: str
    shard_dir: Path
    manifest_path: Path


@dataclasses.dataclass(frozen=True)
class MixtureSpec:
    name: str
    path: Path
    root: Path
    tokenizer: TokenizerSpec
    documents_per_shard: int
    seed: int
    corpora: tuple[CorpusSpec, ...]


def _unknown_keys(found, allowed, where: str) -> None:
    unknown = sorted(set(found) - allowed)
    if unknown:
        raise DataError(f"{where}: unknown keys {unknown}; allowed keys are {sorted(allowed)}")


def load_mixture(path: str | Path) -> MixtureSpec:
    path = Path(path)
    if not path.is_file():
        raise DataError(f"mixture manifest {path} does not exist")
    try:
        raw = yaml.safe_load(path.read_text())
    except yaml.YAMLError as error:
        raise DataError(f"mixture manifest {path} is not valid YAML: {error}") from error
    if not isinstance(raw, dict) or "name" not in raw or not raw.get("corpora"):
        raise DataError(f"mixture manifest {path} needs a `name` and a non-empty `corpora` list")
    _unknown_keys(raw, _MIXTURE_KEYS, f"mixture manifest {path}")
    name = str(raw["name"])
    root = (path.parent / raw.get("root", ".")).resolve()
    tokenizer_raw = dict(raw.get("tokenizer") or {})
    _unknown_keys(tokenizer_raw, set(_TOKENIZER_DEFAULTS) | {"model"}, f"mixture manifest {path}, tokenizer")
    tokenizer = TokenizerSpec(
        model_path=root / tokenizer_raw.pop("model", f"artifacts/tokenizer/{name}/spm.model"),
        **{key: tokenizer_raw.get(key, default) for key, default in _TOKENIZER_DEFAULTS.items()},
    )
    shards_dir = root / raw.get("shards_dir", f"data/shards/{name}")
    manifests_dir = root / raw.get("manifests_dir", f"data/mixtures/{name}")
    corpora = []
    for entry in raw["corpora"]:
        _unknown_keys(entry, _CORPUS_KEYS, f"mixture manifest {path}, corpus {entry.get('name')!r}")
        corpus_name = str(entry["name"])
        weight = float(entry.get("weight", 1.0))
        if weight <= 0:
            raise DataError(
                f"mixture manifest {path}: corpus {corpus_name!r} has weight {weight}; weights must be > 0"
            )
        inputs = entry.get("inputs", [])
        inputs = [inputs] if isinstance(inputs, str) else list(inputs)
        corpora.append(
            CorpusSpec(
                name=corpus_name,
                weight=weight,
                inputs=tuple(str(root / pattern) for pattern in inputs),
                text_field=str(entry.get("text_field", "text")),
                shard_dir=shards_dir / corpus_name,
                manifest_path=manifests_dir / f"{corpus_name}.json",
            )
        )
    names = [corpus.name for corpus in corpora]
    if len(set(names)) != len(names):
        raise DataError(f"mixture manifest {path}: corpus names repeat: {names}")
    return MixtureSpec(
        name=name,
        path=path,
        root=root,
        tokenizer=tokenizer,
        documents_per_shard=int(raw.get("documents_per_shard", 10000)),
        seed=int(raw.get("seed", 0)),
        corpora=tuple(corpora),
    )


def write_corpus_manifest(path: Path, manifest: dict) -> None:
    """Atomic write: a crash never leaves a half manifest that would pass for a finished corpus."""
    path.parent.mkdir(parents=True, exist_ok=True)
    temporary = path.with_suffix(path.suffix + ".tmp")
    temporary.write_text(json.dumps({"format": CORPUS_MANIFEST_FORMAT, **manifest}, indent=2) + "\n")
    temporary.replace(path)


def read_corpus_manifest(path: str | Path) -> dict:
    path = Path(path)
    if not path.is_file():
        raise DataError(
            f"corpus manifest {path} does not exist; run `python -m data_pipeline.shard` for its mixture"
        )
    try:
        manifest = json.loads(path.read_text())
    except json.JSONDecodeError as error:
        raise DataError(f"corpus manifest {path} is not valid JSON: {error}") from error
    if manifest.get("format") != CORPUS_MANIFEST_FORMAT:
        raise DataError(
            f"corpus manifest {path} has format {manifest.get('format')!r}, expected {CORPUS_MANIFEST_FORMAT}"
        )
    if not manifest.get("shards"):
        raise DataError(f"corpus manifest {path} lists no shards (an empty corpus cannot be trained on)")
    return manifest
