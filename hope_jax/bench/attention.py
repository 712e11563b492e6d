"""`python -m hope_jax.bench attention`: the attention implementations (model.attention_impl) side by side.

    python -m hope_jax.bench attention --impls=xla,cudnn --seq_lens=2048,8192 --tokens=32768 --heads=12 \
        --head_dim=64 --dtype=bfloat16 --window=0 --json=bench_attention.json

Per sequence length T (batch = tokens / T) and implementation: forward + backward time of causal (optionally
windowed) self-attention through `hope_jax.layers.attention.attend` — the entry point every model uses — compiled
ahead of time, best of `--repeats`, and the compiled step's temporaries. Numerics: the output and the gradients
with respect to q, k, v are compared with a float32 evaluation of our own masked attention on the same inputs (max
absolute error), so a cuDNN row answers "is it the same function" and "how much faster" in one line.

An implementation that cannot run here (cuDNN off a GPU, in float32, or at an unsupported head size) gets a row
whose `error` says why instead of numbers; the command does not fail.
"""

from __future__ import annotations

import argparse
import json
import sys

import jax
import jax.numpy as jnp

from hope_jax.bench import _common as common
from hope_jax.layers.attention import AttentionImplError, attend

COLUMNS = (
    ("impl", "{impl}"),
    ("seq", "{seq_len}"),
    ("batch", "{batch}"),
    ("fwd+bwd ms", "{step_ms:.3f}"),
    ("fwd ms", "{forward_ms:.3f}"),
    ("vs ref", "{vs_reference:.2f}x"),
    ("max |Δ out|", "{max_err_out:.2e}"),
    ("max |Δ grad|", "{max_err_grad:.2e}"),
    ("temp", "{temp_mib:,.1f} MiB"),
    ("error", "{error}"),
)


def _inputs(batch: int, seq_len: int, heads: int, head_dim: int, dtype) -> tuple[jax.Array, ...]:
    keys = jax.random.split(jax.random.key(seq_len), 4)
    shape = (batch, seq_len, heads, head_dim)
    q, k, v, cotangent = (jax.random.normal(key, shape, jnp.float32).astype(dtype) for key in keys)
    return q, k, v, cotangent


def _forward_and_step(impl: str, window: int):
    """(forward (q, k, v) -> output, step (q, k, v, cotangent) -> (output, (dq, dk, dv))): one forward and its
    backward against a fixed cotangent, through the models' own entry point."""

    def forward(q, k, v):
        return attend(q, k, v, impl=impl, window=window)

    def step(q, k, v, cotangent):
        out, pullback = jax.vjp(forward, q, k, v)
        return out, pullback(cotangent)

    return forward, step


def _max_err(a, b) -> float:
    return float(jnp.max(jnp.abs(a.astype(jnp.float32) - b.astype(jnp.float32))))


def measure(impl: str, seq_len: int, batch: int, heads: int, head_dim: int, dtype, window: int, repeats: int) -> dict:
    row = {"impl": impl, "seq_len": seq_len, "batch": batch, "heads": heads, "head_dim": head_dim}
    row["dtype"], row["window"], row["error"] = jnp.dtype(dtype).name, window, ""
    q, k, v, cotangent = _inputs(batch, seq_len, heads, head_dim, dtype)
    forward, step = _forward_and_step(impl, window)
    try:
        compiled_step = jax.jit(step).lower(q, k, v, cotangent).compile()
        compiled_forward = jax.jit(forward).lower(q, k, v).compile()
        out, grads = compiled_step(q, k, v, cotangent)
    except (AttentionImplError, RuntimeError, NotImplementedError, ValueError) as error:  # cuDNN refusals
        row["error"] = f"{type(error).__name__}: {str(error).splitlines()[0][:160]}"
        return row
    # The reference: our own (xla) attention in float32 on the same, already rounded inputs.
    ref_out, ref_grads = jax.jit(_forward_and_step("xla", window)[1])(
        *(a.astype(jnp.float32) for a in (q, k, v, cotangent))
    )
    row["max_err_out"] = _max_err(out, ref_out)
    row["max_err_grad"] = max(_max_err(g, r) for g, r in zip(grads, ref_grads, strict=True))
    row["step_s"] = min(common.timed(lambda: compiled_step(q, k, v, cotangent)) for _ in range(repeats))
    row["forward_s"] = min(common.timed(lambda: compiled_forward(q, k, v)) for _ in range(repeats))
    row["memory"] = common.memory_analysis(compiled_step)
    return row


def finish_rows(rows: list[dict], reference: str) -> list[dict]:
    """Display fields and the speed ratio to the reference implementation at the same sequence length."""
    nan = float("nan")
    times = {(r["impl"], r["seq_len"]): r.get("step_s") for r in rows}
    for row in rows:
        ref = times.get((reference, row["seq_len"]))
        row["vs_reference"] = ref / row["step_s"] if ref and row.get("step_s") else nan
        row["step_ms"] = row.get("step_s", nan) * 1e3
        row["forward_ms"] = row.get("forward_s", nan) * 1e3
        row.setdefault("max_err_out", nan)
        row.setdefault("max_err_grad", nan)
        row["temp_mib"] = row.get("memory", {}).get("temp_bytes", nan) / 2**20
    return rows


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m hope_jax.bench attention",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--impls", default="xla,cudnn", help="comma-separated attention implementations")
    parser.add_argument("--seq_lens", default="1024,4096", help="comma-separated sequence lengths")
    parser.add_argument("--tokens", type=int, default=16384, help="batch = tokens / seq_len (at least 1)")
    parser.add_argument("--heads", type=int, default=12)
    parser.add_argument("--head_dim", type=int, default=64)
    parser.add_argument("--dtype", default="bfloat16", help="input dtype (cuDNN needs bfloat16 or float16)")
    parser.add_argument("--window", type=int, default=0, help="sliding window (0: full causal)")
    parser.add_argument("--repeats", type=int, default=5)
    parser.add_argument("--json", default="", help="write the rows (and run metadata) to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    impls = args.impls.split(",")
    info = {**common.device_description(), "command": "python -m hope_jax.bench attention " + " ".join(argv)}
    print(f"# bench attention: {info['device_kind']} ({info['platform']}), jax {info['jax']}", flush=True)
    rows = []
    for seq_len in (int(s) for s in args.seq_lens.split(",")):
        batch = max(1, args.tokens // seq_len)
        for impl in impls:
            rows.append(measure(impl, seq_len, batch, args.heads, args.head_dim, args.dtype, args.window, args.repeats))
            print(f"# measured {impl} seq {seq_len}: {rows[-1].get('step_s', rows[-1]['error'])}", flush=True)
    rows = finish_rows(rows, impls[0])
    print(common.markdown_table(COLUMNS, rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return rows
