"""End to end: the training entry point on the smoke config with tiny overrides (a "has a pulse" test)."""

import json
import math
import os
import subprocess
import sys

import pytest

from configs import smoke_transformer
from hope_jax.train.loop import train

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def tiny_smoke_config():
    config = smoke_transformer.get_config()
    config.train.num_steps = 2
    config.train.seq_len = 32
    config.train.global_batch_size = 8
    config.train.log_every_steps = 1
    config.checkpoint.every_steps = 1
    config.eval.every_steps = 0
    config.eval.num_batches = 1
    config.logging.tensorboard = False
    config.mesh.data = 2
    config.mesh.fsdp = 2
    config.mesh.tensor = 2
    return config


def test_two_steps_write_checkpoint_and_metrics(tmp_path):
    config = tiny_smoke_config()
    config.logging.peak_flops_per_device = 1e12
    result = train(config, str(tmp_path))
    assert result.final_step == 2
    assert sorted(result.losses) == [1, 2]
    assert all(math.isfinite(loss) for loss in result.losses.values())
    assert math.isfinite(result.eval_loss)
    assert sorted(os.listdir(tmp_path / "checkpoints")) == ["1", "2"]
    records = [json.loads(line) for line in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()]
    steps = [r["step"] for r in records if "loss" in r]
    assert steps == [1, 2]
    assert all(math.isfinite(r["loss"]) for r in records if "loss" in r)
    train_records = [r for r in records if "loss" in r]
    for record in train_records:
        assert record["tokens_per_s"] > 0
        # MFU = achieved model FLOP/s over 8 devices x the configured 1 TFLOP/s peak.
        assert record["mfu"] == pytest.approx(record["model_tflops_per_s"] / 8)
    # Step 1 runs at the first warmup learning rate, 0; step 2 moves the parameters.
    assert [r["update_norm/default"] > 0 for r in train_records] == [False, True]


def test_misspelt_override_names_the_key(tmp_path):
    completed = subprocess.run(
        [
            sys.executable,
            "-m",
            "hope_jax.main",
            "--config=configs/smoke_transformer.py",
            f"--workdir={tmp_path}",
            "--config.train.num_stpes=3",
        ],
        cwd=REPO,
        capture_output=True,
        text=True,
        timeout=300,
        env={**os.environ, "JAX_PLATFORMS": "cpu"},
    )
    assert completed.returncode == 1
    # README: a bad key ends in one `error: ...` line naming it (with ml_collections' suggestion), not a traceback.
    assert completed.stderr.strip().splitlines()[-1] == (
        'error: unknown config key --config.train.num_stpes (Did you mean "num_steps" instead of "num_stpes"?)'
    )
    assert "Traceback" not in completed.stderr
    assert not (tmp_path / "checkpoints").exists()


@pytest.mark.parametrize(
    ("override", "message"),
    [
        ({"global_batch_size": 6}, "not divisible by the 8 data-parallel shards"),
        ({"nonfinite": "ignore"}, "train.nonfinite must be"),
        ({"seq_len": 40}, r"train.seq_len=40 is not divisible by model\..*chunk_size=16"),
        ({"model.vocab_size": 100}, "has 182 ids but model.vocab_size is 100"),
    ],
)
def test_bad_shapes_fail_before_anything_is_written(tmp_path, override, message):
    config = tiny_smoke_config()
    config.mesh.data, config.mesh.fsdp, config.mesh.tensor = -1, 1, 1
    for key, value in override.items():
        section, _, name = key.rpartition(".")
        config[section or "train"][name] = value
    with pytest.raises(ValueError, match=message):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
