"""eval/perplexity.py: streaming with the carried state equals one pass, documents beyond the training length, word-level
perplexity, the loss-by-position curve, and the command end to end."""

import json
import math
import pathlib

import numpy as np
import pytest

from data_pipeline.builtin_corpus import generate_document
from eval import common, perplexity


@pytest.fixture(scope="module")
def text_files(tmp_path_factory):
    directory = tmp_path_factory.mktemp("texts")
    long_doc = directory / "long.txt"
    long_doc.write_text(" ".join(generate_document(7, i) for i in range(2))[:700])  # words of the built-in vocabulary
    short_doc = directory / "short.txt"
    short_doc.write_text("alice lives in paris . bob likes tea .")
    return [str(long_doc), str(short_doc)]


def test_streaming_with_carried_state_equals_one_pass_beyond_the_training_length(tiny_run, text_files):
    ids = tiny_run.tokenizer.encode(pathlib.Path(text_files[0]).read_text())
    assert len(ids) > 2 * tiny_run.config.train.seq_len  # the document is longer than the training windows
    one_pass = perplexity.token_losses(tiny_run, ids, segment_len=len(ids) + 1)
    streamed = perplexity.token_losses(tiny_run, ids, segment_len=16)  # the end-to-end test's shapes: compiled once
    assert one_pass.shape == (len(ids),)
    np.testing.assert_allclose(streamed, one_pass, rtol=1e-5, atol=1e-5)
    # Against the model called directly on <eos> + ids.
    logits, _ = tiny_run.model(np.array([[tiny_run.tokenizer.eos_id, *ids]], np.int32))
    logprobs = np.asarray(logits[0, :-1]) - np.log(
        np.exp(np.asarray(logits[0, :-1], np.float64)).sum(-1, keepdims=True)
    )
    np.testing.assert_allclose(one_pass, -logprobs[np.arange(len(ids)), ids], rtol=1e-4, atol=1e-4)


def test_summaries_and_bins():
    summary = perplexity.summarize(nll_sum=12.0, tokens=6, words=4, num_bytes=10)
    assert summary["token_perplexity"] == pytest.approx(math.exp(2.0))
    assert summary["word_perplexity"] == pytest.approx(math.exp(3.0))
    assert summary["bits_per_byte"] == pytest.approx(12.0 / (10 * math.log(2)))
    curve = perplexity.binned_losses([np.arange(8.0), np.array([10.0, 10.0])], num_bins=4)
    assert curve["bin_start"] == [0, 2, 4, 6] and curve["bin_end"] == [2, 4, 6, 8]
    assert curve["tokens"] == [4, 2, 2, 2]
    assert curve["mean_loss"] == [pytest.approx(21.0 / 4), 2.5, 4.5, 6.5]


def test_perplexity_command_end_to_end(tiny_run, tiny_run_workdir, text_files, tmp_path):
    results, path = common.run_command(
        perplexity.define_flags,
        perplexity.run_from_flags,
        [
            "perplexity",
            f"--workdir={tiny_run_workdir}",
            f"--output_dir={tmp_path}",
            f"--files={','.join(text_files)}",
            "--segment_len=16",
            "--num_bins=8",
        ],
    )
    record = json.loads(path.read_text())
    assert record["command"] == "perplexity" and record["checkpoint_step"] == 2
    texts = [pathlib.Path(name).read_text() for name in text_files]
    losses = [perplexity.token_losses(tiny_run, tiny_run.tokenizer.encode(text), 16) for text in texts]
    nll = sum(float(values.sum()) for values in losses)
    tokens = sum(len(values) for values in losses)
    words = sum(len(text.split()) for text in texts)
    total = results["total"]
    assert (total["tokens"], total["words"]) == (tokens, words)
    assert total["token_perplexity"] == pytest.approx(math.exp(nll / tokens), rel=1e-6)
    assert total["word_perplexity"] == pytest.approx(math.exp(nll / words), rel=1e-6)
    # A word-level tokenizer: one token per word, so both perplexities agree.
    assert total["word_perplexity"] == pytest.approx(total["token_perplexity"], rel=1e-9)
    assert total["loss_beyond_train_len"] is not None
    assert results["by_position"]["bin_end"][-1] == len(losses[0])
    assert sum(results["by_position"]["tokens"]) == tokens
    assert pathlib.Path(record["plots"]["loss_by_position"]).read_bytes()[:4] == b"\x89PNG"
    truncated, _ = perplexity.run_perplexity(
        tiny_run,
        perplexity.PerplexityArgs(files=text_files[:1], max_tokens=32, segment_len=16),
        output_dir=str(tmp_path),
    )
    assert truncated["total"]["tokens"] == 32 and truncated["total"]["words"] == 32
    assert truncated["total"]["loss_beyond_train_len"] is None  # 32 tokens = the training length
    with pytest.raises(FileNotFoundError, match="does not exist"):
        perplexity.run_perplexity(
            tiny_run, perplexity.PerplexityArgs(files=["/nonexistent.txt"]), output_dir=str(tmp_path)
        )


def test_unknown_tokens_are_counted_against_the_tokenizers_unknown_id():
    class Tokenizer:
        unk_id = 2

    assert perplexity.unknown_tokens(Tokenizer(), [5, 2, 7, 2]) == 2
    Tokenizer.unk_id = -1  # sentencepiece's answer for a model without <unk>
    assert perplexity.unknown_tokens(Tokenizer(), [5, 2]) is None
    assert perplexity.unknown_tokens(object(), [5, 2]) is None
    assert perplexity.summarize(1.0, tokens=4, words=4, num_bytes=8, unknown=1)["unknown_token_fraction"] == 0.25


def test_text_out_of_the_tokenizers_vocabulary_is_recorded_and_warned_about_once(
    tiny_run, text_files, tmp_path, caplog
):
    # Three words of twelve are outside the built-in vocabulary: 25% <unk>, far over the 1% threshold.
    foreign = tmp_path / "foreign.txt"
    foreign.write_text("alice lives in paris . zyzzyva bob likes tea . quux xylograph")
    args = perplexity.PerplexityArgs(files=[text_files[1], str(foreign)], segment_len=16, num_bins=4)
    with caplog.at_level("WARNING"):
        results, path = perplexity.run_perplexity(tiny_run, args, output_dir=str(tmp_path))
    warnings = [record.getMessage() for record in caplog.records if record.levelname == "WARNING"]
    assert len(warnings) == 1, warnings
    assert str(foreign) in warnings[0] and "25.0%" in warnings[0] and "out of the vocabulary" in warnings[0]
    assert results["files"][str(foreign)]["unknown_tokens"] == 3
    assert results["files"][str(foreign)]["unknown_token_fraction"] == pytest.approx(0.25)
    assert results["files"][text_files[1]]["unknown_token_fraction"] == 0.0  # in-vocabulary text: no warning
    assert results["total"]["unknown_tokens"] == 3
    record = json.loads(path.read_text())
    assert record["results"]["files"][str(foreign)]["unknown_token_fraction"] == pytest.approx(0.25)
    assert "25.0% <unk>" in perplexity.format_table(results)
