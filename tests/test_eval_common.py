"""eval/common.py: a run reloaded from its workdir equals the trained model; scoring and streaming are exact. And
eval/results.py's results file records its provenance."""

import json
import pathlib
import shutil

import numpy as np
import pytest

from eval import common
from eval.results import write_results


@pytest.fixture(scope="module")
def hope_run(tiny_hope_run_workdir):
    return common.load_run(tiny_hope_run_workdir)


def test_load_run_restores_config_and_parameters(tiny_hope_run_workdir, hope_run):
    from hope_jax.train.loop import train  # noqa: F401  (the fixture trained with it)

    assert hope_run.step == 2
    assert hope_run.config.model.name == "hope"
    assert hope_run.config.model.cms.periods == (4, 0)
    assert hope_run.config.train.seq_len == 32
    assert hope_run.tokenizer.vocab_size <= hope_run.config.model.vocab_size
    with pytest.raises(common.RunLoadError, match="no checkpoint for step 7"):
        common.load_run(tiny_hope_run_workdir, step=7)


def test_load_run_names_a_missing_directory(tmp_path):
    with pytest.raises(common.RunLoadError, match=str(tmp_path / "checkpoints")):
        common.load_run(str(tmp_path))


def test_load_run_finds_checkpoints_where_the_run_config_put_them(tiny_hope_run_workdir, tmp_path):
    """A run trained with checkpoint.directory elsewhere is evaluated from --workdir alone: the directory comes from
    the resolved config the run wrote (<workdir>/config.json)."""
    elsewhere, workdir = tmp_path / "bucket" / "run", tmp_path / "workdir"
    shutil.copytree(pathlib.Path(tiny_hope_run_workdir) / "checkpoints", elsewhere)
    workdir.mkdir()
    config = json.loads((pathlib.Path(tiny_hope_run_workdir) / "config.json").read_text())
    config["checkpoint"]["directory"] = str(elsewhere)
    (workdir / "config.json").write_text(json.dumps(config))
    assert common.load_run(str(workdir)).step == 2
    (workdir / "config.json").write_text("{not json")
    with pytest.raises(common.RunLoadError, match="config.json: not the JSON config a training run writes"):
        common.load_run(str(workdir))


def test_streaming_in_segments_equals_one_pass(hope_run):
    tokens = np.random.default_rng(0).integers(3, 150, size=(2, 41))
    whole, argmax_whole, _ = common.next_token_scores(hope_run, tokens)
    streamed, argmax_streamed, _ = common.next_token_scores(hope_run, tokens, segment_len=20)  # not a chunk multiple
    assert whole.shape == (2, 40)
    np.testing.assert_allclose(streamed, whole, rtol=1e-5, atol=1e-5)
    np.testing.assert_array_equal(argmax_streamed, argmax_whole)


def test_loglikelihoods_equal_the_sum_of_token_logprobs(hope_run):
    rng = np.random.default_rng(1)
    context, continuation = rng.integers(3, 150, 30).tolist(), rng.integers(3, 150, 11).tolist()
    other = (rng.integers(3, 150, 25).tolist(), rng.integers(3, 150, 16).tolist())
    # Both 41 tokens: one batch of shape [2, 41], the one-pass shape of the streaming test, so no new compile.
    (total, greedy), (other_total, _) = common.loglikelihoods(hope_run, [(context, continuation), other])
    logprobs, argmax, _ = common.next_token_scores(hope_run, np.array([context + continuation, sum(other, [])]))
    assert total == pytest.approx(float(logprobs[0, 29:].sum()), rel=1e-6)
    assert greedy == bool(np.array_equal(argmax[0, 29:], continuation))
    assert other_total == pytest.approx(float(logprobs[1, 24:].sum()), rel=1e-6)
    with pytest.raises(ValueError, match="non-empty"):
        common.loglikelihoods(hope_run, [([], [5])])


def test_write_results_records_provenance(tmp_path, hope_run):
    path = write_results(hope_run, "unit", {"n": 1}, {"score": np.float32(0.5)}, output_dir=str(tmp_path))
    record = json.loads(path.read_text())
    assert path.parent == tmp_path / hope_run.name
    assert record["checkpoint_step"] == 2
    assert record["config_hash"] == hope_run.config_hash
    assert record["results"] == {"score": 0.5}
    assert record["args"] == {"n": 1}
    assert record["code_version"]
