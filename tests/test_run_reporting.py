"""What a run tells its user: the log line (step / total, lr, ETA), lr per level and eval_loss once in metrics.jsonl,
the resolved config in the workdir, --dry_run, and the data-not-built error that names the build command."""

import json

import pytest

from data_pipeline.errors import DataError
from data_pipeline.loader import check_vocab
from hope_jax.optim.builder import learning_rates
from hope_jax.train.dry_run import dry_run
from hope_jax.train.loop import ConfigError, train
from hope_jax.train.report import StepClock, format_duration, step_line
from tests.test_main_e2e import tiny_smoke_config


def test_step_line_and_clock():
    clock = StepClock(1, 11)
    assert clock.tick(1, now=100.0) is None
    assert clock.tick(3, now=104.0) == pytest.approx(2.0 * 8)  # 2 s per step, 8 steps left
    line = step_line(3, 11, {"loss": 1.5, "grad_norm": 0.25, "tokens_per_s": 1234.0, "mfu": 0.4}, {"default": 1e-3}, 16)
    assert line == "step 3/11, loss 1.5000, lr 0.001, grad_norm 0.250, 1,234 tokens/s, MFU 40.0%, ETA 16s"
    assert [format_duration(s) for s in (5, 65, 3700, 90000)] == ["5s", "1m05s", "1h01m", "1d01h"]


def test_run_logs_lr_per_level_eval_once_and_saves_config(tmp_path, caplog):
    config = tiny_smoke_config()
    config.train.num_steps = 3
    config.eval.every_steps = 3  # the last step's eval: written once, not twice
    with caplog.at_level("INFO"):
        result = train(config, str(tmp_path))
    records = [json.loads(line) for line in (tmp_path / "metrics" / "metrics.jsonl").read_text().splitlines()]
    steps = [r for r in records if "loss" in r]
    expected = [learning_rates(config.optim, r["step"], total_steps=3) for r in steps]
    assert [{k[3:]: v for k, v in r.items() if k.startswith("lr/")} for r in steps] == expected
    assert expected[0] == {"default": 0.0} and expected[1]["default"] > 0
    assert [r["step"] for r in records if "eval_loss" in r] == [3]
    assert result.eval_loss is not None
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 3
    assert any("step 2/3, loss" in m and "ETA" in m for m in caplog.messages)


def test_changed_config_keeps_the_earlier_file(tmp_path):
    from hope_jax.train.report import save_resolved_config

    config = tiny_smoke_config()
    save_resolved_config(config, str(tmp_path))
    config.train.num_steps = 7
    save_resolved_config(config, str(tmp_path))
    assert json.loads((tmp_path / "config.json").read_text())["train"]["num_steps"] == 7
    assert json.loads((tmp_path / "config.json.1").read_text())["train"]["num_steps"] == 2


def test_dry_run_reports_without_writing(tmp_path):
    config = tiny_smoke_config()
    report = dry_run(config)
    assert report["num_params"] > 0 and report["data"] == "ready"
    memory = report["memory_per_device_gib"]
    assert memory is None or memory["total"] > 0
    assert list(tmp_path.iterdir()) == []


def test_unbuilt_mixture_names_the_build_command(tmp_path):
    manifest = tmp_path / "seed_mixture.yaml"
    manifest.write_text("name: seed_mixture\nroot: .\ncorpora:\n  - {name: web, weight: 1.0, inputs: [f/*.jsonl]}\n")
    config = tiny_smoke_config()
    config.data.source, config.data.mixture = "mixture", str(manifest)
    with pytest.raises(
        DataError, match=r"not built yet \(no tokenizer .*; no shards of web\).*build_seed_mixture.sh"
    ) as info:
        check_vocab(config.data, config.model.vocab_size)
    assert "\n" not in str(info.value)  # README: one `error: ...` line, naming the build command
    with pytest.raises(ConfigError, match="not built yet"):
        train(config, str(tmp_path / "run"))
    assert not (tmp_path / "run").exists()
