"""`python -m hope_jax.bench generate`: decoding tokens/s and memory per generated token at growing context.

    python -m hope_jax.bench generate --config=configs/bench_cpu.py --variants=transformer,hope \
        --contexts=256,1024,4096 --new_tokens=32 --batch=1 --json=bench_generate.json

Per (variant, context L): a random prompt of L tokens is prefilled (untimed), then `--new_tokens` tokens are decoded
greedily by `hope_jax.models.generate.decode` — the scan `generate()` runs — compiled ahead of time and timed alone
(best of `--repeats`). The state is what a decode step carries: recurrent models (HOPE, Titans) a constant-size set
of fast weights, attention models a KV cache of L + new_tokens slots.

Memory per generated token = bytes of the state carried into a decode step (the model's per-sequence state after
the prompt) + the temporaries of the compiled decode loop (XLA memory analysis: one step's working set and the loop's
carry buffers). Parameters are not included: they
do not depend on the context. A recurrent model's number must not change with L; a KV cache's grows linearly.
"""

from __future__ import annotations

import argparse
import functools
import json
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from hope_jax.bench import _common as common
from hope_jax.models.generate import decode, sample_token
from hope_jax.models.registry import build_model

COLUMNS = (
    ("variant", "{variant}"),
    ("context", "{context}"),
    ("new tokens", "{new_tokens}"),
    ("tokens/s", "{tokens_per_s:,.1f}"),
    ("state", "{state_kib:,.1f} KiB"),
    ("decode temporaries", "{step_temp_kib:,.1f} KiB"),
    ("memory / token", "{memory_per_token_kib:,.1f} KiB"),
)

GREEDY = functools.partial(sample_token, temperature=0.0)


@functools.partial(jax.jit, static_argnames=("graphdef", "max_len"))
def _prefill(graphdef, params, prompt_bt, *, max_len):
    model = nnx.merge(graphdef, params)
    logits_btv, state = model(prompt_bt, model.init_state(prompt_bt.shape[0], max_len=max_len))
    return GREEDY(logits_btv[:, -1], None), state


def _decoder(graphdef, params, token_b, state, n_tokens: int):
    """Ahead-of-time compiled decode of n_tokens tokens from (token_b, state)."""
    fn = jax.jit(lambda p, t, s, r: decode(graphdef, p, t, s, r, GREEDY))
    rngs = jax.random.split(jax.random.key(0), n_tokens)
    return fn.lower(params, token_b, state, rngs).compile(), rngs


def measure(model_cfg, context: int, new_tokens: int, batch: int, repeats: int, seed: int = 0) -> dict:
    model = build_model(model_cfg, rngs=nnx.Rngs(seed))
    graphdef, params = nnx.split(model)
    prompt = jnp.asarray(np.random.default_rng(seed).integers(0, model_cfg.vocab_size, (batch, context)), jnp.int32)
    token_b, state = _prefill(graphdef, params, prompt, max_len=context + new_tokens)
    decoder, rngs = _decoder(graphdef, params, token_b, state, new_tokens)
    jax.block_until_ready(decoder(params, token_b, state, rngs))  # warm-up
    best = min(common.timed(lambda: decoder(params, token_b, state, rngs)) for _ in range(repeats))
    state_bytes = common.tree_bytes(state)
    temp_bytes = common.memory_analysis(decoder).get("temp_bytes", 0)
    return {
        "model": model_cfg.name,
        "context": context,
        "new_tokens": new_tokens,
        "batch": batch,
        "decode_s": best,
        "tokens_per_s": batch * new_tokens / best,
        "state_bytes": state_bytes,
        "step_temp_bytes": temp_bytes,
        "memory_per_token_bytes": state_bytes + temp_bytes,
    }


def parse_args(argv):
    parser = argparse.ArgumentParser(
        prog="python -m hope_jax.bench generate",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--config", required=True, help="config file, path[:arg] (as hope_jax.main --config)")
    parser.add_argument("--variants", default="transformer,hope", help="comma-separated registered model names")
    parser.add_argument("--contexts", default="256,1024", help="comma-separated prompt lengths")
    parser.add_argument("--new_tokens", type=int, default=32)
    parser.add_argument("--batch", type=int, default=1)
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--set", action="append", default=[], help="[variant:]dotted.key=value (repeatable)")
    parser.add_argument("--json", default="", help="write the rows (and run metadata) to this JSON file")
    return parser.parse_args(argv)


def main(argv: list[str] | None = None) -> list[dict]:
    argv = sys.argv[1:] if argv is None else list(argv)
    args = parse_args(argv)
    base = common.load_config(args.config)
    overrides = common.parse_overrides(args.set)
    info = {**common.device_description(), "command": "python -m hope_jax.bench generate " + " ".join(argv)}
    print(
        f"# bench generate: {info['device_kind']} ({info['platform']}), jax {info['jax']}; greedy, batch {args.batch}"
    )
    rows = []
    for variant in args.variants.split(","):
        config = common.apply_overrides(base, [(None, "model.name", variant), *overrides], variant)
        for context in (int(c) for c in args.contexts.split(",")):
            row = {"variant": variant, **measure(config.model, context, args.new_tokens, args.batch, args.repeats)}
            row.update(
                state_kib=row["state_bytes"] / 1024,
                step_temp_kib=row["step_temp_bytes"] / 1024,
                memory_per_token_kib=row["memory_per_token_bytes"] / 1024,
            )
            rows.append(row)
            print(f"# measured {variant} context {context}: {row['tokens_per_s']:,.1f} tokens/s", flush=True)
    print(common.markdown_table(COLUMNS, rows))
    if args.json:
        with open(args.json, "w", encoding="utf-8") as f:
            json.dump({"info": info, "rows": rows}, f, indent=1)
    return rows
