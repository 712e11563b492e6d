"""`python -m hope_jax.bench train`, `generate` and `attention` on tiny shapes: the rows they report, not their speed."""

import json

import pytest

from hope_jax.bench import __main__ as dispatcher
from hope_jax.bench import _common as common
from hope_jax.bench import attention as bench_attention
from hope_jax.bench import generate as bench_generate
from hope_jax.bench import train as bench_train

TINY = [
    "model.vocab_size=64",
    "model.d_model=32",
    "model.n_heads=2",
    "model.n_layers=1",
    "model.mlp_hidden=48",
    "model.max_seq_len=64",
    "model.memory.chunk_size=8",
    "model.memory.aux_chunk_size=8",
    "model.cms.periods=(4, 0)",  # one in-context level and one frozen: the cheapest HOPE to compile
    "model.cms.objectives=('local', 'frozen')",
    "model.cms.hidden=(16, 16)",
]
SETS = [f"--set={item}" for item in TINY]


@pytest.fixture(scope="module")
def train_rows(tmp_path_factory):
    out = tmp_path_factory.mktemp("bench")
    argv = [
        "--config=configs/smoke_transformer.py", "--variants=transformer,hope", "--seq_lens=16,32", "--tokens_per_step=64",
        "--devices=1", "--warmup=1", "--steps=1", "--repeats=2", "--match_params=hope", "--interleave=all",
        f"--json={out / 'train.json'}", f"--plot={out / 'train.png'}", f"--profile={out / 'trace'}", *SETS,
    ]  # fmt: skip
    rows = bench_train.main(argv)
    return rows, json.loads((out / "train.json").read_text()), out


def test_train_rows_cover_every_variant_and_length(train_rows):
    rows, written, out = train_rows
    assert [(r["variant"], r["seq_len"]) for r in rows] == [
        ("transformer", 16), ("hope", 16), ("transformer", 32), ("hope", 32)
    ]  # fmt: skip
    assert written["rows"] == json.loads(json.dumps(rows))
    assert written["info"]["devices"] == 1 and written["info"]["matmul_flops_per_s"] > 0
    assert (out / "train.png").stat().st_size > 0
    for row in rows:
        assert row["batch"] * row["seq_len"] == row["tokens_per_step"] == 64  # tokens per step fixed
        assert row["tokens_per_s"] > 0 and len(row["step_times_s"]) == 2
        assert row["tokens_per_s"] == pytest.approx(64 / min(row["step_times_s"]))
        assert row["mfu"] == pytest.approx(
            row["tokens_per_s"] * row["flops_per_token"]["total"] / row["matmul_flops_per_s"]
        )
        assert row["memory"]["peak_bytes"] > row["memory"]["temp_bytes"] > 0
        assert row["loss"] is not None and row["loss"] > 0
        top = row["profile"]["top_ops_ms_count"]
        assert top and all(ms >= 0 and count > 0 for _, ms, count in top)
        assert list((out / "trace" / f"{row['variant']}_{row['seq_len']}").rglob("*perfetto_trace.json.gz"))


def test_interleaving_groups_rows_by_length_or_all_together():
    """The fixture runs --interleave=all (rows come back in the table's order); the default groups by length."""
    by_length = bench_train.interleaved_groups(["t", "h"], [16, 32], "variants")
    assert by_length == [[("t", 16), ("h", 16)], [("t", 32), ("h", 32)]]
    assert bench_train.interleaved_groups(["t", "h"], [16, 32], "all") == [[("t", 16), ("h", 16), ("t", 32), ("h", 32)]]


def test_train_parameter_matching_and_reference_ratio(train_rows):
    rows, _, _ = train_rows
    hope, transformer = (next(r for r in rows if r["variant"] == v) for v in ("hope", "transformer"))
    # mlp_hidden moves in steps of 32 units, 3·d_model·32 parameters each
    assert abs(hope["params"] - transformer["params"]) <= 3 * 32 * 32 / 2
    assert transformer["vs_reference"] == 1.0
    assert hope["vs_reference"] == pytest.approx(hope["tokens_per_s"] / transformer["tokens_per_s"])
    assert hope["flops_per_token"]["inner"] > 0 == transformer["flops_per_token"]["inner"]


def test_compile_only_compiles_the_named_variants_and_runs_nothing(train_rows, tmp_path):
    """--only=transformer with --match_params=hope: the transformer is still matched to HOPE, which is not compiled
    (parallel processes of launch/gpu_bench.sh each compile one row this way into the persistent cache)."""
    full_run, _, _ = train_rows
    argv = [
        "--config=configs/smoke_transformer.py", "--variants=transformer,hope", "--match_params=hope", "--only=transformer",
        "--seq_lens=16", "--tokens_per_step=64", "--devices=1", "--compile_only", f"--json={tmp_path / 'c.json'}",
        *SETS,
    ]  # fmt: skip
    rows = bench_train.main(argv)
    assert [(r["variant"], r["seq_len"], r["batch"]) for r in rows] == [("transformer", 16, 4)]
    matched = next(r for r in full_run if r["variant"] == "transformer")
    assert rows[0]["params"] == matched["params"]
    assert rows[0]["compile_s"] > 0 and rows[0]["memory"]["temp_bytes"] > 0
    assert "tokens_per_s" not in rows[0] and "loss" not in rows[0]  # nothing ran
    assert json.loads((tmp_path / "c.json").read_text())["rows"] == json.loads(json.dumps(rows))
    with pytest.raises(SystemExit, match=r"--only names \['titans'\]"):
        bench_train.main([*argv[:3], "--only=titans", *argv[4:]])


@pytest.fixture(scope="module")
def generate_rows():
    argv = ["--config=configs/smoke_transformer.py", "--variants=transformer,hope", "--contexts=8,24", "--new_tokens=3",
            "--repeats=1", *SETS]  # fmt: skip
    return bench_generate.main(argv)


def test_generate_memory_per_token(generate_rows):
    by = {(r["variant"], r["context"]): r for r in generate_rows}
    assert all(r["tokens_per_s"] > 0 and r["new_tokens"] == 3 for r in generate_rows)
    # recurrent state: constant in the context length
    assert by["hope", 8]["state_bytes"] == by["hope", 24]["state_bytes"] > 0
    assert by["hope", 8]["memory_per_token_bytes"] == by["hope", 24]["memory_per_token_bytes"]
    # KV cache: (context + new) slots × 2 (k, v) × d_model floats per layer, one layer
    for context in (8, 24):
        cache = by["transformer", context]["state_bytes"] - 4  # minus the int32 position
        assert cache == (context + 3) * 2 * 32 * 4
    assert by["transformer", 24]["memory_per_token_bytes"] > by["transformer", 8]["memory_per_token_bytes"]


def test_dispatcher_lists_the_subcommands():
    assert {"train", "generate", "attention", "inner", "data"} <= set(dispatcher.available_subcommands())


def test_variant_labels_run_one_model_under_two_names():
    base = common.load_config("configs/smoke_transformer.py")
    overrides = common.parse_overrides(["flash:model.attention_impl=auto", "model.n_layers=1"])
    configs = bench_train.variant_configs(base, ["transformer", "flash=transformer"], overrides, None)
    assert list(configs) == ["transformer", "flash"]
    assert configs["flash"].model.name == configs["transformer"].model.name == "transformer"
    assert (configs["transformer"].model.attention_impl, configs["flash"].model.attention_impl) == ("xla", "auto")
    assert configs["flash"].model.n_layers == configs["transformer"].model.n_layers == 1
    with pytest.raises(SystemExit, match="'transformer' appears twice"):
        bench_train.variant_configs(base, ["transformer", "transformer"], [], None)


def test_attention_rows_compare_with_float32_and_report_refusals(tmp_path):
    """float32 xla attention is our masked attention (errors at float32 rounding); cuDNN off a GPU is a row with the
    reason, not a crash."""
    argv = ["--impls=xla,cudnn", "--seq_lens=16,32", "--tokens=64", "--heads=2", "--head_dim=8", "--dtype=float32",
            "--window=5", "--repeats=1", f"--json={tmp_path / 'attention.json'}"]  # fmt: skip
    rows = bench_attention.main(argv)
    written = json.loads((tmp_path / "attention.json").read_text())["rows"]
    assert [(r["impl"], r["seq_len"], r["batch"]) for r in written] == [
        ("xla", 16, 4), ("cudnn", 16, 4), ("xla", 32, 2), ("cudnn", 32, 2)
    ]  # fmt: skip
    for row in rows[0::2]:
        assert row["error"] == "" and row["max_err_out"] < 1e-5 and row["max_err_grad"] < 1e-5
        assert row["step_s"] > 0 and row["vs_reference"] == 1.0 and row["memory"]["temp_bytes"] > 0
    for row in rows[1::2]:
        assert "model.attention_impl='cudnn' cannot run here" in row["error"] and "step_s" not in row
