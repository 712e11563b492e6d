"""eval/continual.py: the metric conventions on hand-computed matrices, the manifest, and the command end to end on a
tiny random HOPE-Attention model with test-time training of its frozen CMS level."""

import json
import pathlib

import numpy as np
import pytest
from absl import flags

from configs import smoke_transformer
from data_pipeline.builtin_corpus import generate_document
from eval import common, continual


def test_metrics_of_an_accuracy_matrix_by_hand():
    accuracy = [[0.8, 0.1, 0.2], [0.6, 0.9, 0.3], [0.5, 0.7, 0.95]]
    m = continual.continual_metrics(accuracy, higher_is_better=True, baseline=[0.1, 0.05, 0.1])
    assert m["final_average"] == pytest.approx((0.5 + 0.7 + 0.95) / 3)
    assert m["diagonal_average"] == pytest.approx((0.8 + 0.9 + 0.95) / 3)
    assert m["backward_transfer"] == pytest.approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)  # −0.25: forgot
    assert m["forgetting"] == pytest.approx([0.8 - 0.5, 0.9 - 0.7])
    assert m["average_forgetting"] == pytest.approx(0.25)
    assert m["forward_transfer"] == pytest.approx(((0.1 - 0.05) + (0.3 - 0.1)) / 2)


def test_metrics_of_a_loss_matrix_keep_positive_meaning_better():
    loss = [[2.0, 5.0, 5.0], [2.5, 1.5, 5.0], [3.0, 1.8, 1.0]]
    m = continual.continual_metrics(loss, higher_is_better=False, baseline=[5.2, 5.1, 5.3])
    assert m["final_average"] == pytest.approx((3.0 + 1.8 + 1.0) / 3)
    # The final losses on segments 0 and 1 rose by 1.0 and 0.3 over the just-read ones: negative backward transfer.
    assert m["backward_transfer"] == pytest.approx(-(1.0 + 0.3) / 2)
    # forgetting[j] = final loss − best earlier loss (segment 1's best earlier loss is 1.5, not the unread 5.0).
    assert m["forgetting"] == pytest.approx([3.0 - 2.0, 1.8 - 1.5])
    assert m["average_forgetting"] == pytest.approx(0.65)
    assert m["forward_transfer"] == pytest.approx(((5.1 - 5.0) + (5.3 - 5.0)) / 2)  # lower than baseline: positive
    improved = continual.continual_metrics([[2.0, 5.0], [1.5, 1.0]], higher_is_better=False)
    assert improved["backward_transfer"] == pytest.approx(0.5) and improved["forgetting"] == pytest.approx([-0.5])
    with pytest.raises(ValueError, match="square matrix of at least 2"):
        continual.continual_metrics([[1.0]], higher_is_better=False)


def _write_segments(directory: pathlib.Path, n: int) -> list[dict]:
    """Segment i: a built-in document's first 31 words to read and another's first 15 to score (one token each)."""
    entries = []
    for i in range(n):
        train, evaluate = directory / f"train_{i}.txt", directory / f"eval_{i}.txt"
        train.write_text(" ".join(generate_document(11, 2 * i).split()[:31]))
        evaluate.write_text(" ".join(generate_document(11, 2 * i + 1).split()[:15]))
        entries.append({"name": f"s{i}", "train": train.name, "eval": [evaluate.name]})
    return entries


def test_manifest_json_yaml_and_errors(tmp_path):
    entries = _write_segments(tmp_path, 2)
    (tmp_path / "m.json").write_text(json.dumps({"segments": entries}))
    (tmp_path / "m.yaml").write_text(
        "segments:\n" + "".join(f"  - name: {e['name']}\n    train: {e['train']}\n    eval: [{e['eval'][0]}]\n"
                                for e in entries)
    )  # fmt: skip
    from_json, from_yaml = continual.read_manifest(tmp_path / "m.json"), continual.read_manifest(tmp_path / "m.yaml")
    assert from_json == from_yaml and [s.name for s in from_json] == ["s0", "s1"]
    assert from_json[1].train == (str(tmp_path / "train_1.txt"),)
    (tmp_path / "one.json").write_text(json.dumps({"segments": entries[:1]}))
    with pytest.raises(ValueError, match="at least two segments"):
        continual.read_manifest(tmp_path / "one.json")
    (tmp_path / "missing.json").write_text(json.dumps({"segments": [*entries, {"train": "x.txt", "eval": "y.txt"}]}))
    with pytest.raises(FileNotFoundError, match="segment 'segment_2'.*x.txt does not exist"):
        continual.read_manifest(tmp_path / "missing.json")
    with pytest.raises(ValueError, match="--mode=lm needs --lm_levels"):
        continual.ContinualArgs(manifest="m.json", mode="lm")


def test_flags_parse_into_args():
    fv = flags.FlagValues()
    continual.define_flags(fv)
    fv(["prog", "--workdir=w", "--manifest=m.json", "--mode=lm", "--lm_levels=1", "--lm_lrs=0.5", "--lm_period=4"])
    assert (fv.mode, fv.lm_levels, fv.lm_lrs, fv.lm_period, fv.carry_state) == ("lm", ["1"], ["0.5"], 4, True)


@pytest.fixture(scope="module")
def random_hope_attention_run():
    config = smoke_transformer.get_config()
    config.model.update(name="hope_attention", d_model=16, n_heads=2, n_layers=1, mlp_hidden=32, max_seq_len=64)
    config.model.cms.update(periods=(4, 0), objectives=("local", "frozen"), hidden=(16, 16))
    config.train.seq_len = 16
    return common.random_run(config, seed=0)


def test_continual_end_to_end_with_lm_test_time_training(random_hope_attention_run, tmp_path):
    manifest = tmp_path / "segments.json"
    manifest.write_text(json.dumps({"segments": _write_segments(tmp_path, 5)}))
    args = continual.ContinualArgs(manifest=str(manifest), mode="lm", lm_levels=[1], lm_lrs=[0.5], lm_period=4)
    results, path = continual.run_continual(random_hope_attention_run, args, output_dir=str(tmp_path / "out"))
    record = json.loads(path.read_text())
    assert record["command"] == "continual" and record["args"]["mode"] == "lm"
    for plot in record["plots"].values():
        assert pathlib.Path(plot).stat().st_size > 0
    loss = np.array(results["loss"]["matrix"])
    assert loss.shape == (5, 5) and np.isfinite(loss).all()
    assert results["eval_tokens"] == [15] * 5
    recomputed = continual.continual_metrics(loss, higher_is_better=False, baseline=results["loss"]["baseline"])
    assert results["loss"]["backward_transfer"] == pytest.approx(recomputed["backward_transfer"])
    assert results["loss"]["forgetting"] == pytest.approx(recomputed["forgetting"])
    # Reading a segment (and training the lm level on it) changes every later score: no row equals the baseline.
    assert (np.abs(loss - np.array(results["loss"]["baseline"])[None]).max(axis=1) > 1e-4).all()
    assert len(results["loss"]["stream_loss"]) == 5
    accuracy = np.array(results["accuracy"]["matrix"])
    assert ((accuracy >= 0) & (accuracy <= 1)).all()
