"""Pieces shared by `bench train` and `bench generate`: config files with overrides, parameter matching, the measured
matmul peak, compiled memory analysis, timing, tables.

Not a subcommand (the leading underscore keeps it out of the dispatcher's list).
"""

from __future__ import annotations

import ast
import importlib.util
import math
import statistics
import time
from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
import ml_collections

from hope_jax.models.registry import count_params

# Models whose parameter count grows with model.mlp_hidden (their channel mixer is one SwiGLU). HOPE's CMS levels
# have their own widths (model.cms.hidden), so HOPE is matched by the others, never adjusted.
MLP_WIDTH_MODELS = ("transformer", "titans_lmm", "titans_mag", "titans_mac")


def load_config(spec: str) -> ml_collections.ConfigDict:
    """`path/to/config.py[:arg]` -> the file's get_config() (or get_config(arg)), as hope_jax.main loads it."""
    path, _, arg = spec.partition(":")
    module_spec = importlib.util.spec_from_file_location("bench_config", path)
    if module_spec is None or module_spec.loader is None:
        raise SystemExit(f"cannot load config file {path!r}")
    module = importlib.util.module_from_spec(module_spec)
    module_spec.loader.exec_module(module)
    return module.get_config(arg) if arg else module.get_config()


def _literal(text: str):
    try:
        return ast.literal_eval(text)
    except (ValueError, SyntaxError):
        return text  # a bare string such as model.name=hope


def parse_overrides(items: Sequence[str]) -> list[tuple[str | None, str, object]]:
    """`[variant:]dotted.key=value` -> (variant or None for all, key, Python literal)."""
    parsed = []
    for item in items:
        target, eq, value = item.partition("=")
        if not eq:
            raise SystemExit(f"override {item!r} is not [variant:]key=value")
        variant, colon, key = target.partition(":")
        parsed.append((variant if colon else None, key if colon else target, _literal(value)))
    return parsed


def apply_overrides(config: ml_collections.ConfigDict, overrides, variant: str) -> ml_collections.ConfigDict:
    """A copy of config with the overrides for all variants and for this one (a wrong key fails, naming it)."""
    config = ml_collections.ConfigDict(config.to_dict())
    for target, key, value in overrides:
        if target not in (None, variant):
            continue
        *parents, leaf = key.split(".")
        node = config
        for part in parents:
            node = node[part]
        if leaf not in node:
            raise SystemExit(f"override key {key!r} is not in the config")
        node[leaf] = tuple(value) if isinstance(node[leaf], tuple) and isinstance(value, list) else value
    return config


def match_mlp_width(model_cfg: ml_collections.ConfigDict, target_params: int, multiple: int = 32) -> int:
    """The model.mlp_hidden (a multiple of `multiple`) whose parameter count is closest to target_params.

    The count is affine in mlp_hidden, so two evaluations (jax.eval_shape, nothing allocated) fix it."""

    def params_at(width: int) -> int:
        trial = ml_collections.ConfigDict(model_cfg.to_dict())
        trial.mlp_hidden = width
        return count_params(trial)

    low, high = multiple, 8 * multiple
    per_unit = (params_at(high) - params_at(low)) / (high - low)
    width = low + (target_params - params_at(low)) / per_unit
    return max(multiple, int(round(width / multiple)) * multiple)


def matmul_flops_per_s(dtype=jnp.float32, size: int | None = None, repeats: int = 5) -> float:
    """FLOP/s of one large square matmul on the default device (best of `repeats`, compile excluded): the measured
    peak that MFU is relative to, taken in the same run as the step it judges, in the models' compute dtype.
    size: 2048 on a CPU; 8192 on an accelerator, where a 2048² product is too short to reach the peak."""
    if size is None:
        size = 2048 if jax.devices()[0].platform == "cpu" else 8192
    a = jax.random.normal(jax.random.key(0), (size, size), dtype)
    b = jax.random.normal(jax.random.key(1), (size, size), dtype)
    matmul = jax.jit(jnp.matmul).lower(a, b).compile()
    jax.block_until_ready(matmul(a, b))
    best = min(timed(lambda: matmul(a, b)) for _ in range(repeats))
    return 2.0 * size**3 / best


def timed(fn: Callable[[], object]) -> float:
    start = time.perf_counter()
    jax.block_until_ready(fn())
    return time.perf_counter() - start


def memory_analysis(compiled) -> dict[str, int]:
    """Bytes from the compiled executable's memory analysis; peak = arguments + outputs + temporaries − aliased
    (donated) bytes. Empty where the backend reports nothing."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        analysis = None
    if analysis is None:
        return {}
    out = {
        "argument_bytes": int(analysis.argument_size_in_bytes),
        "output_bytes": int(analysis.output_size_in_bytes),
        "temp_bytes": int(analysis.temp_size_in_bytes),
        "alias_bytes": int(analysis.alias_size_in_bytes),
    }
    out["peak_bytes"] = out["argument_bytes"] + out["output_bytes"] + out["temp_bytes"] - out["alias_bytes"]
    return out


def device_peak_bytes() -> int | None:
    """Peak bytes in use on device 0 since start (GPU/TPU allocator statistics; None on CPU)."""
    stats = jax.devices()[0].memory_stats()
    return None if not stats else stats.get("peak_bytes_in_use")


def tree_bytes(tree) -> int:
    return sum(math.prod(leaf.shape) * leaf.dtype.itemsize for leaf in jax.tree.leaves(tree))


def summarise(times: Sequence[float]) -> dict[str, float]:
    return {"best_s": min(times), "median_s": statistics.median(times), "n": len(times)}


def device_description() -> dict[str, object]:
    device = jax.devices()[0]
    return {"platform": device.platform, "device_kind": device.device_kind, "jax": jax.__version__}


def profile_step(run_once: Callable[[], object], directory: str, top: int = 12) -> list[tuple[str, float, int]]:
    """Runs `run_once` under jax.profiler.trace (perfetto trace written to `directory`) and returns the `top` op kinds
    by summed duration: (kind, ms, count), kind = the thunk name without its numeric suffix (ynn_fusion, dot, copy…)."""
    import collections
    import glob
    import gzip
    import json
    import re

    with jax.profiler.trace(directory, create_perfetto_trace=True):
        run_once()
    path = sorted(glob.glob(f"{directory}/**/*perfetto_trace.json.gz", recursive=True))[-1]
    with gzip.open(path) as f:
        events = json.load(f)
    events = events["traceEvents"] if isinstance(events, dict) else events
    total, count = collections.Counter(), collections.Counter()
    for event in events:
        # Host-side wrappers ($python frames, executors, loops, runtime bookkeeping) are not ops; leaf ops are summed.
        name = event.get("name", "")
        if (
            event.get("ph") != "X"
            or name.startswith(("$", "ThunkExecutor", "while", "Pjit"))
            or "::" in name
            or " " in name
        ):
            continue
        kind = re.sub(r"\.\d+$", "", name)
        total[kind] += event.get("dur", 0) / 1e3
        count[kind] += 1
    return [(kind, ms, count[kind]) for kind, ms in total.most_common(top)]


def markdown_table(columns: Sequence[tuple[str, str]], rows: Sequence[dict]) -> str:
    """columns: (header, format spec applied to row[key]) as ('tokens/s', '{tokens_per_s:,.0f}')."""
    lines = ["| " + " | ".join(h for h, _ in columns) + " |", "|" + "---|" * len(columns)]
    lines += ["| " + " | ".join(fmt.format(**row) for _, fmt in columns) + " |" for row in rows]
    return "\n".join(lines)
