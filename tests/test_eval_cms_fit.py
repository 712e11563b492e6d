"""eval/cms_fit.py: an lm level's inner loss before and after each of its updates, and its weight drift, measured as
the model's own driver runs it; the command end to end on an untrained run."""

from __future__ import annotations

import json

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from eval import cms_fit, common
from hope_jax.config_schema import default_config

LEVELS = {"periods": (4, 8, 0), "objectives": ("lm", "lm", "frozen"), "hidden": (16, 16, 16)}


def lm_run(lm_lrs=(0.5, 0.3, 0.0), **cms) -> common.Run:
    config = default_config()
    config.model.update(name="hope_attention", d_model=16, n_layers=2, n_heads=2, max_seq_len=16, init_std=0.2)
    config.model.cms.update({**LEVELS, "lm_lrs": lm_lrs, **cms})
    config.train.seq_len = 16
    return common.random_run(config)


TOKENS = np.asarray(jax.random.randint(jax.random.key(2), (3, 16), 0, 192, jnp.int32))


@pytest.fixture(scope="module")
def stepped():
    run = lm_run()
    return run, cms_fit.summarize(run.model, [cms_fit.measure_batch(run.model, TOKENS)])


def test_small_inner_steps_lower_each_levels_own_chunk_loss(stepped):
    _, results = stepped
    fast, slow = results["levels"]
    # 16 tokens: the period-4 level updates 4 times per sequence, the period-8 level twice; 3 sequences.
    assert (fast["updates"], slow["updates"]) == (12, 6)
    for level in (fast, slow):
        assert level["loss_after"] < level["loss_before"]
        assert level["improved"] == 1.0
        assert level["relative_drift"] > 0.0


def test_before_is_the_drivers_own_lm_loss(stepped):
    """The period-4 level's loss before its updates covers every G-chunk once: the driver's sown lm_loss."""
    run, results = stepped
    from flax import nnx

    model = run.model
    nnx.pop(model, nnx.Intermediate)
    model(jnp.asarray(TOKENS))
    sown = nnx.to_pure_dict(nnx.pop(model, nnx.Intermediate))
    np.testing.assert_allclose(results["levels"][0]["loss_before"], float(sown["lm_loss"][0]), rtol=1e-5)


def test_a_level_at_inner_lr_zero_neither_moves_nor_changes_its_loss():
    run = lm_run(lm_lrs=(0.5, 0.0, 0.0))
    slow = cms_fit.summarize(run.model, [cms_fit.measure_batch(run.model, TOKENS)])["levels"][1]
    assert slow["relative_drift"] == 0.0
    assert slow["loss_after"] == slow["loss_before"]


def test_command_end_to_end_and_its_errors(tmp_path):
    text = tmp_path / "text.txt"
    text.write_text("alice lives in paris . " * 40)
    run = lm_run()
    results, path = cms_fit.run_cms_fit(
        run, cms_fit.CMSFitArgs(files=[str(text)], num_sequences=4, batch_size=3), output_dir=str(tmp_path)
    )
    assert json.loads(path.read_text())["results"]["levels"][0]["updates"] == 16
    assert "loss_before" in cms_fit.format_table(results)
    with pytest.raises(ValueError, match="windows of 16, not 400"):
        cms_fit.windows(run, [str(text)], 400)
    local = lm_run(objectives=("local", "local", "frozen"))
    with pytest.raises(ValueError, match="has no 'lm' CMS level"):
        cms_fit.run_cms_fit(local, cms_fit.CMSFitArgs(files=[str(text)]), output_dir=str(tmp_path))
