"""Train the SentencePiece tokenizer of a mixture from its filtered documents.

    python -m data_pipeline.train_tokenizer --mixture=data/mixtures/sample.yaml [--max_sentences=N]
    [--vocab_size=V]

Samples at most N lines (sentences), split between corpora in proportion to their weights, uniformly from each
corpus by reservoir sampling (one streaming pass; memory is the sample). Writes <model>.model, <model>.vocab
and <model>.model.sha256 (the hash every corpus manifest records). Special ids: <pad>=0, <eos>=1, <unk>=2, no
<bos>. Normalisation is identity (data_pipeline.filter already applied NFKC and whitespace rules) and "\\n" is
a piece of its own, so decode(encode(text)) == text for filtered text; byte fallback makes that hold for
characters never seen in training.
"""

from __future__ import annotations

import argparse
import io
import json
import random
import sys
import time

import sentencepiece as spm

from data_pipeline import progress, readers
from data_pipeline.mixture import MixtureSpec, load_mixture
from data_pipeline.tokenizer import EOS_ID, PAD_ID, UNK_ID, sha256_of_file


def sample_sentences(mixture: MixtureSpec, max_sentences: int, seed: int) -> list[str]:
    total_weight = sum(corpus.weight for corpus in mixture.corpora)
    rng = random.Random(seed)
    sample: list[str] = []
    for corpus in mixture.corpora:
        quota = max(1, round(max_sentences * corpus.weight / total_weight))
        reservoir: list[str] = []
        seen = 0
        paths = readers.expand_inputs(corpus.inputs)
        total = sum(readers.count_documents(path) for path in paths)
        documents = (
            document for path in paths for document in readers.read_documents(path, text_field=corpus.text_field)
        )
        bar = progress.bar(f"sample {corpus.name}", total=total)
        for document in documents:
            bar.update()
            for line in document.split("\n"):
                if not line:
                    continue
                seen += 1
                if len(reservoir) < quota:
                    reservoir.append(line)
                else:
                    slot = rng.randrange(seen)
                    if slot < quota:
                        reservoir[slot] = line
        bar.set_postfix(lines=seen, refresh=False)
        bar.close()
        sample.extend(reservoir)
    rng.shuffle(sample)
    return sample


def train(sentences: list[str], *, vocab_size: int, model_type: str, byte_fallback: bool, seed: int) -> bytes:
    model = io.BytesIO()
    spm.set_random_generator_seed(seed)
    spm.SentencePieceTrainer.train(
        sentence_iterator=iter(sentences),
        model_writer=model,
        vocab_size=vocab_size,
        model_type=model_type,
        byte_fallback=byte_fallback,
        character_coverage=0.9995 if byte_fallback else 1.0,
        pad_id=PAD_ID,
        eos_id=EOS_ID,
        unk_id=UNK_ID,
        bos_id=-1,
        normalization_rule_name="identity",
        remove_extra_whitespaces=False,
        user_defined_symbols=["\n"],
        split_digits=True,
        input_sentence_size=len(sentences),
        num_threads=2,
        minloglevel=2,
        # A small corpus may not support the requested size; SentencePiece then stops at what it supports.
        hard_vocab_limit=False,
    )
    return model.getvalue()


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(
        prog="python -m data_pipeline.train_tokenizer",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--mixture", required=True, help="mixture manifest (YAML)")
    parser.add_argument(
        "--max_sentences", type=int, default=None, help="default: the manifest's tokenizer.max_sentences"
    )
    parser.add_argument(
        "--vocab_size", type=int, default=None, help="default: the manifest's tokenizer.vocab_size"
    )
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(sys.argv[1:] if argv is None else argv)
    mixture = load_mixture(args.mixture)
    spec = mixture.tokenizer
    start = time.perf_counter()
    sentences = sample_sentences(mixture, args.max_sentences or spec.max_sentences, args.seed)
    model = train(
        sentences,
        vocab_size=args.vocab_size or spec.vocab_size,
        model_type=spec.model_type,
        byte_fallback=spec.byte_fallback,
        seed=args.seed,
    )
    spec.model_path.parent.mkdir(parents=True, exist_ok=True)
    spec.model_path.write_bytes(model)
    processor = spm.SentencePieceProcessor(model_proto=model)
    vocab_path = spec.model_path.with_suffix(".vocab")
    vocab_path.write_text(
        "".join(
            f"{processor.id_to_piece(i)!r}\t{processor.get_score(i)}\n" for i in range(processor.vocab_size())
        )
    )
    digest = sha256_of_file(spec.model_path)
    spec.model_path.with_name(spec.model_path.name + ".sha256").write_text(
        f"{digest}  {spec.model_path.name}\n"
    )
    report = {
        "model": str(spec.model_path),
        "sha256": digest,
        "vocab_size": processor.vocab_size(),
        "model_type": spec.model_type,
        "byte_fallback": spec.byte_fallback,
        "sentences": len(sentences),
        "special_ids": {"pad": PAD_ID, "eos": EOS_ID, "unk": UNK_ID, "bos": None},
        "seconds": round(time.perf_counter() - start, 3),
    }
    print(json.dumps(report))
    return report


if __name__ == "__main__":
    main()
