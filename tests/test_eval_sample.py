"""eval/sample.py: greedy equals greedy_generate, seeded sampling, top-p, segmented prefill, streaming, the command."""

import io
import json

import jax
import numpy as np
import pytest
from absl import flags

from data_pipeline.builtin_corpus import BuiltinTokenizer
from eval import common, sample

PROMPTS = ["the old cat sees the big dog .", "it was a cold day in"]


def args_of(**overrides) -> sample.SampleArgs:
    return sample.SampleArgs(**{"prompts": PROMPTS, "max_new_tokens": 6, "stop_at_eos": False, **overrides})


def ids_of(results) -> list[list[int]]:
    return [s["ids"] for s in results["samples"]]


def test_greedy_equals_greedy_generate(tiny_run, tmp_path):
    results, _ = sample.run_sample(tiny_run, args_of(segment_len=4), output_dir=str(tmp_path))
    expected = common.greedy_generate(tiny_run, [s["prompt_ids"] for s in results["samples"]], 6)
    assert ids_of(results) == expected
    # A vanishing nucleus keeps only the most likely token: greedy, whatever the temperature.
    nucleus, _ = sample.run_sample(tiny_run, args_of(temperature=1.5, top_p=1e-6), output_dir=str(tmp_path))
    assert ids_of(nucleus) == expected


def test_sampling_is_reproducible_per_seed_and_differs_across_seeds(tiny_run, tmp_path):
    def draw(temperature=2.0, **overrides):
        results, _ = sample.run_sample(
            tiny_run,
            args_of(temperature=temperature, num_samples=3, max_new_tokens=8, **overrides),
            output_dir=str(tmp_path),
        )
        return ids_of(results)

    first = draw(seed=1)
    assert draw(seed=1) == first
    assert draw(seed=1, batch_size=2) == first  # each sample draws from its own key, whatever the batching
    assert draw(seed=2) != first
    assert first[0] != first[1]  # samples of one prompt differ
    # The model's embedding is padded beyond the tokenizer's 192 ids: sampling never draws those rows.
    assert tiny_run.config.model.vocab_size > tiny_run.tokenizer.vocab_size
    assert max(max(row) for row in first + draw(seed=3, temperature=20.0)) < tiny_run.tokenizer.vocab_size


def test_segmented_prefill_gives_the_one_shot_tokens(tiny_run):
    prompt_bt = np.random.default_rng(0).integers(3, 150, size=(2, 23))
    keys = jax.random.split(jax.random.key(3), 2)
    for temperature in (0.0, 1.0):
        args = args_of(temperature=temperature, max_new_tokens=5)
        one_shot = sample.sample_tokens(tiny_run.model, prompt_bt, keys, args)
        for segment_len in (4, 7):
            segmented = sample.sample_tokens(
                tiny_run.model,
                prompt_bt,
                keys,
                args_of(temperature=temperature, max_new_tokens=5, segment_len=segment_len),
            )
            np.testing.assert_array_equal(segmented, one_shot, err_msg=f"segment_len {segment_len}")


def test_hope_state_streams_through_segments():
    """The recurrent state (fast weights, CMS) carried across prefill segments that are not chunk multiples."""
    from tests.conftest import _tiny_run_config

    run = common.random_run(_tiny_run_config("hope"))
    prompt_bt = np.random.default_rng(1).integers(3, 150, size=(1, 21))
    keys = jax.random.split(jax.random.key(0), 1)
    one_shot = sample.sample_tokens(run.model, prompt_bt, keys, args_of(max_new_tokens=4))
    segmented = sample.sample_tokens(run.model, prompt_bt, keys, args_of(max_new_tokens=4, segment_len=6))
    np.testing.assert_array_equal(segmented, one_shot)
    assert one_shot.tolist() == common.greedy_generate(run, prompt_bt.tolist(), 4)


def test_streaming_prints_the_tokens_the_scan_generates(tiny_run, tmp_path):
    args = args_of(temperature=1.0, num_samples=2, seed=5)
    out = io.StringIO()
    streamed_args = sample.SampleArgs(**{**vars(args), "stream": True})
    streamed, _ = sample.run_sample(tiny_run, streamed_args, output_dir=str(tmp_path), out=out)
    scanned, _ = sample.run_sample(tiny_run, args, output_dir=str(tmp_path))
    assert ids_of(streamed) == ids_of(scanned)
    printed = out.getvalue()
    for s in scanned["samples"]:
        assert s["prompt"] + s["text"] in printed
    assert sample.format_samples(streamed) == "4 sample(s) streamed above"


def test_command_end_to_end(tiny_run_workdir, tmp_path):
    prompt_file = tmp_path / "prompt.txt"
    prompt_file.write_text("where does the\nold cat live ?")
    results, path = common.run_command(
        sample.define_flags,
        sample.run_from_flags,
        [
            "sample",
            f"--workdir={tiny_run_workdir}",
            f"--output_dir={tmp_path}",
            "--prompt=the big dog",
            f"--prompt_file={prompt_file}",
            "--max_new_tokens=5",
            "--temperature=0.7",
            "--top_p=0.9",
            "--top_k=20",
            "--num_samples=2",
            "--segment_len=3",
            "--seed=4",
        ],
    )
    record = json.loads(path.read_text())
    assert record["command"] == "sample" and record["checkpoint_step"] == 2
    assert record["args"]["temperature"] == 0.7 and record["args"]["segment_len"] == 3
    assert record["args"]["prompts"] == ["the big dog", "where does the\nold cat live ?"]
    assert [(s["prompt_index"], s["sample"]) for s in record["results"]["samples"]] == [(0, 0), (0, 1), (1, 0), (1, 1)]
    for s in record["results"]["samples"]:
        assert len(s["ids"]) == 5 or s["stopped_at_eos"]
        assert s["prompt_ids"][0] == BuiltinTokenizer().eos_id
        assert s["text"] == sample.continuation_text(BuiltinTokenizer(), s["prompt_ids"], s["ids"])
    text = sample.format_samples(results)
    assert "=== prompt 1: where does the" in text and "--- sample 1:" in text


@pytest.mark.parametrize(
    "flag, value",
    [("temperature", "-0.5"), ("top_p", "0"), ("top_p", "1.5"), ("top_k", "-1"), ("max_new_tokens", "0")],
)
def test_bad_flags_are_named(flag, value, tmp_path):
    fv = flags.FlagValues()
    sample.define_flags(fv)
    with pytest.raises(flags.IllegalFlagValueError, match=f"--{flag}"):
        fv(["sample", f"--workdir={tmp_path}", "--prompt=x", f"--{flag}={value}"])
    with pytest.raises(ValueError, match=f"--{flag}"):
        args_of(**{flag: float(value) if flag in ("temperature", "top_p") else int(value)})


def test_no_prompt_is_an_error():
    with pytest.raises(ValueError, match="--prompt"):
        sample.SampleArgs(prompts=[])
