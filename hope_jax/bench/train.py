"""`python -m hope_jax.bench train`: steady-state train-step throughput, MFU and memory per variant and sequence length.

    python -m hope_jax.bench train --config=configs/bench_cpu.py --variants=transformer,hope \
        --seq_lens=1024,2048,4096,8192 --tokens_per_step=8192 --devices=1 --json=bench_train.json [--plot=plot.png]

The step measured is the one training runs: `hope_jax.train.trainer.build_trainer(config, devices)`'s jitted train
step, compiled ahead of time. Per (variant, sequence length): batch = tokens_per_step / seq_len sequences (tokens per
step fixed, so rows compare costs per token); compilation and `--warmup` steps are excluded; then `--repeats` rounds
of `--steps` steps, the variants of one sequence length interleaved round by round so that a load change on a shared
machine hits all of them alike (the best round is reported, the median too). Ratios to `--reference` are taken
within the run.

MFU = tokens/s × analytic training FLOPs per token (registry.flops_per_token) ÷ the FLOP/s of a large matmul measured
on the same device at the start of the same run. Memory: the compiled step's memory analysis (arguments + outputs +
temporaries − donated), and on GPU/TPU the allocator's peak.

A variant is a registered model name (`--variants=transformer,hope,titans_lmm`), applied as model.name on top of the
config, or `label=model` to run one model twice under two names (`--variants=transformer,flash=transformer
--set=flash:model.attention_impl=cudnn`); `--set=[variant:]key=value` overrides config keys for all variants or one;
`--match_params=hope` widens model.mlp_hidden of the SwiGLU models so that their parameter count matches that
variant's.
"""

from __future__ import annotations

import argparse
import json
import sys
import time

import jax
import numpy as np

from hope_jax.bench import _common as common
from hope_jax.models.registry import count_params, flops_per_token
from hope_jax.train.state import create_train_state
from hope_jax.train.trainer import build_trainer
from hope_jax.train.validate import validate_config

COLUMNS = (
    ("variant", "{variant}"),
    ("params", "{params_m:.2f}M"),
    ("seq", "{seq_len}"),
    ("batch", "{batch}"),
    ("step s (best/median)", "{step_s:.3f} / {step_median_s:.3f}"),
    ("tokens/s", "{tokens_per_s:,.0f}"),
    ("vs ref", "{vs_reference:.2f}x"),
    ("GFLOP/token", "{gflops_per_token:.3f}"),
    ("MFU", "{mfu:.1%}"),
    ("peak mem", "{peak_mib:,.0f} MiB"),
    ("compile s", "{compile_s:.1f}"),
)


def variant_configs(base, variants, overrides, match_params: str | None):
    """{variant: config} with model.name set, overrides applied and (optionally) parameter counts matched."""
    configs = {}
    for variant in variants:
        label, _, model_name = variant.rpartition("=")  # 'label=model' runs one model twice under two names
        label = label or model_name
        if label in configs:
            raise SystemExit(f"variant {label!r} appears twice in --variants; name one 'other_label={model_name}'")
        config = common.apply_overrides(base, [(None, "model.name", model_name)], label)
        configs[label] = common.apply_overrides(config, overrides, label)
    if match_params:
        if match_params not in configs:
            raise SystemExit(f"--match_params={match_params} is not one of the variants {variants}")
        target = count_params(configs[match_params].model)
        for variant, config in configs.items():
            if variant != match_params and config.model.name in common.MLP_WIDTH_MODELS:
                config.model.mlp_hidden = common.match_mlp_width(config.model, target)
    return configs


class StepRunner:
    """One compiled train step, its state and a fixed batch; `run(n)` times n steps."""

    def __init__(self, config, devices, seed: int = 0, *, compile_only: bool = False):
        validate_config(config, len(devices))
        jax.config.update("jax_default_matmul_precision", config.train.matmul_precision)
        self.trainer = build_trainer(config, devices)
        start = time.perf_counter()
        self.compiled = self.trainer.lower().compile()
        self.compile_s = time.perf_counter() - start  # tracing + lowering + XLA compilation
        self.memory = common.memory_analysis(self.compiled)
        if compile_only:  # e.g. to fill jax's persistent compilation cache for a later timed run
            return
        self.state = create_train_state(config.model, self.trainer.tx, self.trainer.layout, config.train.seed)
        batch, seq_len = self.trainer.batch_shape
        rng = np.random.default_rng(seed)
        window = rng.integers(0, config.model.vocab_size, size=(batch, seq_len + 1), dtype=np.int32)
        host = {"inputs": window[:, :-1], "targets": window[:, 1:], "mask": np.ones((batch, seq_len), np.float32)}
        self.batch = {k: jax.device_put(v, self.trainer.batch_sharding) for k, v in host.items()}
        self.metrics = None

    def run(self, steps: int) -> float:
        """Seconds per step over `steps` consecutive steps (dispatch overlaps; one block at the end)."""

        def steps_fn():
            for _ in range(steps):
                self.state, self.metrics = self.compiled(self.state, self.batch)
            return self.state

        return common.timed(steps_fn) / steps


def row_config(configs, variant: str, seq_len: int, tokens_per_step: int, devices):
    """The variant's config at this sequence length, batch = tokens_per_step / seq_len (at least one per device)."""
    config = common.apply_overrides(configs[variant], [(None, "train.seq_len", seq_len)], variant)
    config.train.global_batch_size = max(tokens_per_step // seq_len, len(devices))
    return config


def compile_group(configs, keys, tokens_per_step, devices) -> list[dict]:
    """`--compile_only`: compiles each row's step and reports its compile time and memory analysis, runs nothing.
    With jax's persistent compilation cache on (JAX_COMPILATION_CACHE_DIR), rows compiled by parallel processes are
    cache hits for a later timed run (launch/gpu_bench.sh does this; a HOPE step takes ~20 s to compile on a GPU)."""
    rows = []
    for variant, seq_len in keys:
        runner = StepRunner(row_config(configs, variant, seq_len, tokens_per_step, devices), devices, compile_only=True)
        print(f"# compiled {variant} seq {seq_len}: {runner.compile_s:.1f} s", flush=True)
        batch, _ = runner.trainer.batch_shape
        rows.append({"variant": variant, "params": runner.trainer.num_params, "seq_len": seq_len, "batch": batch,
                     "compile_s": runner.compile_s, "memory": runner.memory})  # fmt: skip
    return rows


def measure_group(configs, keys, tokens_per_step, devices, *, warmup, steps, repeats, profile="") -> list[dict]:
    """Interleaved timing of the (variant, sequence length) rows in `keys`: every row is compiled and warmed up, then
    each of `repeats` rounds times every row once, so a load change on a shared machine hits all of them alike. One
    row dict per key. With `profile` (a directory) one more step of each row is traced there and its op kinds by
    time are added to the row."""
    runners = {}
    for variant, seq_len in keys:
        runners[variant, seq_len] = StepRunner(row_config(configs, variant, seq_len, tokens_per_step, devices), devices)
        print(f"# compiled {variant} seq {seq_len}: {runners[variant, seq_len].compile_s:.1f} s", flush=True)
        for _ in range(warmup):
            runners[variant, seq_len].run(1)
    times = {key: [] for key in runners}
    for _ in range(repeats):
        for key, runner in runners.items():
            times[key].append(runner.run(steps))
    rows = []
    for (variant, seq_len), runner in runners.items():
        summary = common.summarise(times[variant, seq_len])
        batch, _ = runner.trainer.batch_shape
        row = {
            "variant": variant,
            "model": configs[variant].model.name,
            "params": runner.trainer.num_params,
            "seq_len": seq_len,
            "batch": batch,
            "tokens_per_step": batch * seq_len,
            "step_s": summary["best_s"],
            "step_median_s": summary["median_s"],
            "step_times_s": times[variant, seq_len],
            "tokens_per_s": batch * seq_len / summary["best_s"],
            "flops_per_token": flops_per_token(configs[variant].model, seq_len),
            "compile_s": runner.compile_s,
            "memory": runner.memory,
            "loss": float(runner.metrics["loss"]) if runner.metrics and "loss" in runner.metrics else None,
        }
        if profile:
            trace_dir = f"{profile}/{variant}_{seq_len}"
            top = common.profile_step(lambda runner=runner: runner.run(1), trace_dir)
            row["profile"] = {"trace_dir": trace_dir, "top_ops_ms_count": top}
            print(
                f"# profile {variant} seq {seq_len} ({trace_dir}): " + ", ".join(f"{k} {ms:.0f} ms" for k, ms, _ in top)
            )
        print(f"# measured {variant} seq {seq_len}: {row['tokens_per_s']:,.0f} tokens/s", flush=True)
        rows.append(row)
    del runners
    return rows


def interleaved_groups(variants, seq_lens, interleave: str) -> list[list[tuple[str, int]]]:
    """The (variant, sequence length) rows timed together: per sequence length ('variants'; only one length's steps
    are alive at a time) or all at once ('all'; ratios ACROSS sequence lengths then share the same conditions too)."""
    if interleave == "variants":
        return [[(variant, seq_len) for variant in variants] for seq_len in seq_lens]
    return [[(variant, seq_len) for seq_len in seq_lens for variant in variants]]


def finish_rows(rows, matmul_peak: float, n_devices: int, reference: str | None) -> list[dict]:
    """Adds MFU, ratios to the reference variant at the same sequence length and display fields."""
    peak_device = common.device_peak_bytes()
    by_key = {(r["variant"], r["seq_len"]): r for r in rows}
    for row in rows:
        total = row["flops_per_token"]["total"]
        row["model_flops_per_s"] = row["tokens_per_s"] * total
        row["matmul_flops_per_s"] = matmul_peak
        row["mfu"] = row["model_flops_per_s"] / (matmul_peak * n_devices)
        ref = by_key.get((reference, row["seq_len"]))
        row["vs_reference"] = row["tokens_per_s"] / ref["tokens_per_s"] if ref else float("nan")
        row["params_m"] = row["params"] / 1e6
        row["gflops_per_token"] = total / 1e9
        row["peak_mib"] = row["memory"].get("peak_bytes", float("nan")) / 2**20
        row["device_peak_bytes_so_far"] = peak_device
    return rows


def plot(rows, path: str) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(6, 4))
    for variant in dict.fromkeys(r["variant"] for r in rows):
        points = sorted((r["seq_len"], r["tokens_per_s"]) for r in rows if r["variant"] == variant)
        ax.plot(*zip(*points, strict=True), marker="o", label=variant)
    ax.set_xscale("log", base=2)
    ax.set_xlabel("sequence length (tokens per step fixed)")
    ax.set_ylabel("train tokens/s")
    ax.set_title(f"train throughput, {common.device_description()['device_kind']}")
    ax.grid(True, alpha=0.3)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m hope_jax.bench train", description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("--config", required=True, help="config file, path[:arg] (as hope_jax.main --config)")
    parser.add_argument(
        "--variants", default="transformer,hope", help="comma-separated registered model names, or label=model"
    )
    parser.add_argument("--seq_lens", default="1024,2048", help="comma-separated sequence lengths")
    parser.add_argument("--tokens_per_step", type=int, default=8192, help="batch = tokens_per_step / seq_len")
    parser.add_argument("--devices", type=int, default=0, help="use the first N devices (0: all)")
    parser.add_argument("--set", action="append", default=[], help="[variant:]dotted.key=value (repeatable)")
    parser.add_argument("--match_params", default="", help="variant whose parameter count the SwiGLU models match")
    parser.add_argument(
        "--only", default="",
        help="comma-separated variants to compile and time (default: all); the others still define --match_params",
    )  # fmt: skip
    parser.add_argument("--reference", default="", help="variant the 'vs ref' ratios divide by (default: first)")
    parser.add_argument(
        "--interleave", choices=("variants", "all"), default="variants",
        help="time the variants of one sequence length together (default), or every row together (steadier ratios "
        "across sequence lengths; keeps every compiled step alive at once)",
    )  # fmt: skip
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps after compilation")
    parser.add_argument("--steps", type=int, default=2, help="steps per timed round")
    parser.add_argument("--repeats", type=int, default=3, help="timed rounds (interleaved across variants)")
    parser.add_argument("--json", default="", help="write the rows (and run metadata) to this JSON file")
    parser.add_argument("--plot", default="", help="write tokens/s against sequence length to this image")
    parser.add_argument("--profile", default="", help="trace one more step per row into DIR/<variant>_<seq> (perfetto)")
    parser.add_argument(
        "--compile_only", action="store_true",
        help="compile every row and report compile times only (fills jax's persistent compilation cache when "
        "JAX_COMPILATION_CACHE_DIR is set)",
    )  # fmt: skip
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    args = parse_args(sys.argv[1:] if argv is None else list(argv))
    configs = variant_configs(
        common.load_config(args.config), args.variants.split(","), common.parse_overrides(args.set),
        args.match_params or None,
    )  # fmt: skip
    variants = list(configs)
    if args.only:
        unknown = sorted(set(args.only.split(",")) - set(variants))
        if unknown:
            raise SystemExit(f"--only names {unknown}, which are not among the variants {variants}")
        variants = [v for v in variants if v in args.only.split(",")]
    seq_lens = [int(s) for s in args.seq_lens.split(",")]
    devices = jax.devices()[: args.devices] if args.devices else jax.devices()
    if args.compile_only:
        rows = [row for keys in interleaved_groups(variants, seq_lens, "all")
                for row in compile_group(configs, keys, args.tokens_per_step, devices)]  # fmt: skip
        if args.json:
            with open(args.json, "w", encoding="utf-8") as f:
                json.dump({"info": common.device_description(), "rows": rows}, f, indent=1)
        return rows
    matmul_peak = common.matmul_flops_per_s(configs[args.reference or variants[0]].model.compute_dtype)
    info = {
        **common.device_description(),
        "devices": len(devices),
        "matmul_flops_per_s": matmul_peak,
        "matmul_dtype": configs[args.reference or variants[0]].model.compute_dtype,
        "command": "python -m hope_jax.bench train " + " ".join(sys.argv[1:] if argv is None else argv),
    }
    print(
        f"# bench train: {info['device_kind']} x{len(devices)} ({info['platform']}), jax {info['jax']}; "
        f"measured matmul peak {matmul_peak / 1e9:,.1f} GFLOP/s; tokens/step {args.tokens_per_step}",
        flush=True,
    )
    rows = []
    for keys in interleaved_groups(variants, seq_lens, args.interleave):
        rows.extend(
            measure_group(
                configs,
                keys,
                args.tokens_per_step,
                devices,
                warmup=args.warmup,
                steps=args.steps,
                repeats=args.repeats,
                profile=args.profile,
            )  # fmt: skip
        )
    rows.sort(key=lambda row: (seq_lens.index(row["seq_len"]), variants.index(row["variant"])))
    rows = finish_rows(rows, matmul_peak, len(devices), args.reference or variants[0])
    print(common.markdown_table(COLUMNS, rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    if args.plot:
        plot(rows, args.plot)
    return rows
