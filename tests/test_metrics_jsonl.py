"""metrics.jsonl: strict JSON on every line (non-finite values as null) and each step once after a resume."""

import json
import math
import os
import pathlib

import numpy as np
import pytest

from configs import smoke_transformer
from hope_jax.train.metrics import JsonlWriter, MetricsLogger


def strict_records(path):
    """Every line parsed by a strict parser (NaN / Infinity refused), as a list of records."""
    refuse = lambda constant: (_ for _ in ()).throw(ValueError(constant))
    with open(path, encoding="utf-8") as file:
        lines = file.read().splitlines()
    return [json.loads(line, parse_constant=refuse) for line in lines]


def logger_config():
    config = smoke_transformer.get_config()
    config.logging.tensorboard = False
    return config


def killed_run(workdir, last_step):
    """A run that logged hparams, then steps 1..last_step (with an eval at step 2), and was killed."""
    logger = MetricsLogger.from_config(workdir, logger_config())
    logger.write_hparams({"config_hash": "abc", "num_params": 5})
    for step in range(1, last_step + 1):
        logger.write_scalars(step, {"loss": np.float32(5.0 - step), "nonfinite": 0.0})
        if step == 2:
            logger.write_scalars(step, {"eval_loss": 4.0})
    logger.close()
    return logger.jsonl_path


def test_non_finite_values_are_written_as_null(tmp_path):
    path = str(tmp_path / "metrics" / "metrics.jsonl")
    writer = JsonlWriter(path)
    writer.write_scalars(1, {"loss": np.float32(np.nan), "grad_norm": np.inf, "update": -np.inf, "nonfinite": 1.0})
    writer.write_scalars(2, {"loss": np.float32(2.5), "nonfinite": 0.0})
    writer.write_hparams({"lr": float("nan")})
    writer.close()
    first, second, hparams = strict_records(path)
    assert first["loss"] is None and first["grad_norm"] is None and first["update"] is None
    assert first["nonfinite"] == 1.0 and first["step"] == 1 and math.isfinite(first["time"])
    assert second["loss"] == 2.5
    assert hparams == {"hparams": {"lr": "nan"}}
    for record in (first, second, hparams):
        json.dumps(record, allow_nan=False)


def test_resume_keeps_exactly_the_steps_up_to_the_checkpoint_and_the_hparams(tmp_path):
    workdir = str(tmp_path)
    path = killed_run(workdir, last_step=6)
    with open(path, "a", encoding="utf-8") as file:
        file.write('{"step": 7, "loss": 1.')  # cut short by the kill
    logger = MetricsLogger.from_config(workdir, logger_config(), resumed_step=4)
    logger.write_hparams({"config_hash": "abc", "num_params": 5})
    for step in (5, 6, 7):
        logger.write_scalars(step, {"loss": np.float32(np.nan if step == 6 else 0.5), "nonfinite": float(step == 6)})
    logger.close()
    records = strict_records(path)
    assert [r for r in records if "hparams" in r] == [{"hparams": {"config_hash": "'abc'", "num_params": "5"}}] * 2
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3, 4, 5, 6, 7]  # each step once
    assert [r["step"] for r in records if "eval_loss" in r] == [2]
    by_step = {r["step"]: r for r in records if "loss" in r}
    assert by_step[4]["loss"] == 1.0 and by_step[5]["loss"] == 0.5  # steps <= 4 from the first run, then the new ones
    assert by_step[6]["loss"] is None and by_step[6]["nonfinite"] == 1.0
    assert sorted(os.listdir(tmp_path / "metrics")) == ["metrics.jsonl"]  # no temporary file left behind


def test_resume_rewrites_an_older_files_bare_nan_as_null(tmp_path):
    path = tmp_path / "metrics" / "metrics.jsonl"
    path.parent.mkdir()
    path.write_text('{"hparams": {"a": "1"}}\n{"step": 1, "loss": NaN}\n{"step": 2, "loss": Infinity}\n')
    MetricsLogger.from_config(str(tmp_path), logger_config(), resumed_step=1).close()
    assert strict_records(path) == [{"hparams": {"a": "1"}}, {"step": 1, "loss": None}]


def test_resume_without_a_file_starts_one(tmp_path):
    logger = MetricsLogger.from_config(str(tmp_path), logger_config(), resumed_step=3)
    logger.write_scalars(4, {"loss": 1.0})
    logger.close()
    assert [r["step"] for r in strict_records(logger.jsonl_path)] == [4]


def test_a_fresh_start_moves_an_earlier_file_aside(tmp_path):
    """No checkpoint to resume from: the new run logs steps 1, 2, ... again, so the earlier run's file is kept aside
    (metrics.jsonl.1, then .2) rather than appended to."""
    workdir = str(tmp_path)
    path = killed_run(workdir, last_step=3)
    killed_run(workdir, last_step=2)
    logger = MetricsLogger.from_config(workdir, logger_config())
    logger.write_scalars(1, {"loss": 9.0})
    logger.close()
    assert [r["step"] for r in strict_records(path)] == [1]
    assert [r["step"] for r in strict_records(path + ".1") if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in strict_records(path + ".2") if "loss" in r] == [1, 2]


def test_a_resumed_training_run_logs_each_step_once(tmp_path):
    """End to end (tests/test_resume.py's tiny runs): steps a killed run logged after its last checkpoint are gone."""
    from hope_jax.train.loop import train
    from tests.test_resume import config_with

    workdir = str(tmp_path)
    train(config_with(2), workdir)  # checkpoint at step 2
    path = os.path.join(workdir, "metrics", "metrics.jsonl")
    with open(path, "a", encoding="utf-8") as file:  # what a run killed after step 4 had logged past its checkpoint
        for step in (3, 4):
            file.write(json.dumps({"step": step, "time": 0.0, "loss": 99.0}) + "\n")
    train(config_with(3), workdir)
    records = strict_records(path)
    assert [r["step"] for r in records if "loss" in r] == [1, 2, 3]
    assert [r["step"] for r in records if "eval_loss" in r] == [2, 3]
    assert all(r["loss"] != 99.0 for r in records if "loss" in r)
    assert sum("hparams" in r for r in records) == 2


@pytest.mark.parametrize("resumed_step", [None, 0])
def test_only_process_zero_touches_the_file(tmp_path, monkeypatch, resumed_step):
    import jax

    path = killed_run(str(tmp_path), last_step=2)
    before = pathlib.Path(path).read_text(encoding="utf-8")
    monkeypatch.setattr(jax, "process_index", lambda: 1)
    logger = MetricsLogger.from_config(str(tmp_path), logger_config(), resumed_step=resumed_step)
    logger.write_scalars(1, {"loss": 1.0})
    logger.close()
    assert pathlib.Path(path).read_text(encoding="utf-8") == before and not os.path.exists(path + ".1")
