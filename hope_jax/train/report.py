"""What a training run tells its user: the per-step log line (step / total, loss, learning rate, tokens/s, MFU, ETA),
the compiled step's memory per device, and the resolved config written into the workdir."""

from __future__ import annotations

import json
import os
import tempfile
import time

from hope_jax.train.checkpoint import RESOLVED_CONFIG
from hope_jax.train.metrics import move_aside

GIB = 1 << 30


def format_duration(seconds: float) -> str:
    """'45s', '12m05s', '3h07m', '2d04h': two units at most, so a log line stays short."""
    seconds = max(int(round(seconds)), 0)
    days, rest = divmod(seconds, 86400)
    hours, rest = divmod(rest, 3600)
    minutes, secs = divmod(rest, 60)
    if days:
        return f"{days}d{hours:02d}h"
    if hours:
        return f"{hours}h{minutes:02d}m"
    if minutes:
        return f"{minutes}m{secs:02d}s"
    return f"{secs}s"


class StepClock:
    """Seconds per step and the time left, measured from the end of the run's first step (compilation and the first
    step's warm-up are not part of the rate; checkpoint and eval pauses are, since they recur)."""

    def __init__(self, first_step: int, last_step: int) -> None:
        self.last_step = last_step
        self._origin_step = first_step
        self._origin_time: float | None = None

    def tick(self, step: int, now: float | None = None) -> float | None:
        """Seconds left after `step`, or None until two steps have been seen."""
        now = time.time() if now is None else now
        if self._origin_time is None or step <= self._origin_step:
            self._origin_step, self._origin_time = step, now
            return None
        per_step = (now - self._origin_time) / (step - self._origin_step)
        return per_step * (self.last_step - step)


def step_line(step: int, last_step: int, scalars: dict, learning_rates: dict[str, float], eta_s: float | None) -> str:
    """One log line per logged step. The learning rate shown is the first level's (optim.levels order); every
    level's is in the metrics as lr/<level>."""
    parts = [f"step {step}/{last_step}", f"loss {scalars['loss']:.4f}"]
    if learning_rates:
        name, lr = next(iter(learning_rates.items()))
        parts.append(f"lr {lr:.3g}" + ("" if len(learning_rates) == 1 else f" ({name})"))
    parts.append(f"grad_norm {scalars['grad_norm']:.3f}")
    parts.append(f"{scalars['tokens_per_s']:,.0f} tokens/s")
    if "mfu" in scalars:
        parts.append(f"MFU {100 * scalars['mfu']:.1f}%")
    if eta_s is not None:
        parts.append(f"ETA {format_duration(eta_s)}")
    return ", ".join(parts)


def memory_per_device(compiled) -> dict[str, float] | None:
    """The compiled step's memory per device in GiB (arguments, outputs, temporaries, generated code, and their sum
    less aliased (donated) buffers), or None where the backend does not report it."""
    try:
        analysis = compiled.memory_analysis()
    except (NotImplementedError, RuntimeError):
        analysis = None
    if analysis is None:
        return None
    sizes = {
        "arguments": analysis.argument_size_in_bytes,
        "outputs": analysis.output_size_in_bytes,
        "temporaries": analysis.temp_size_in_bytes,
        "generated_code": analysis.generated_code_size_in_bytes,
    }
    total = sum(sizes.values()) - getattr(analysis, "alias_size_in_bytes", 0)
    return {**{k: v / GIB for k, v in sizes.items()}, "total": total / GIB}


def describe_memory(memory: dict[str, float] | None) -> str:
    if memory is None:
        return "compiled train step: no memory analysis on this backend"
    return (
        f"compiled train step memory per device: {memory['total']:.3f} GiB (arguments {memory['arguments']:.3f}, "
        f"outputs {memory['outputs']:.3f}, temporaries {memory['temporaries']:.3f}, generated code "
        f"{memory['generated_code']:.3f})"
    )


def resolved_config_json(config) -> str:
    return json.dumps(json.loads(config.to_json_best_effort()), indent=2, sort_keys=True) + "\n"


def save_resolved_config(config, workdir: str) -> str:
    """Write the run's resolved config to <workdir>/config.json (atomically). A different one from an earlier start of
    the same workdir is kept as config.json.1 (.2, ...): overrides can change between restarts."""
    path = os.path.join(workdir, RESOLVED_CONFIG)
    text = resolved_config_json(config)
    if os.path.exists(path):
        with open(path, encoding="utf-8") as file:
            if file.read() == text:
                return path
        move_aside(path)
    fd, temp_path = tempfile.mkstemp(prefix=".config.", suffix=".tmp", dir=workdir)
    with os.fdopen(fd, "w", encoding="utf-8") as file:
        file.write(text)
    os.replace(temp_path, path)
    return path
