"""Loader throughput: tokens per second the data pipeline delivers, batches as the training loop receives
them.

    python -m hope_jax.bench data [--source=builtin|mixture] [--mixture=PATH] [--seq_len=128]
    [--batch_size=16]
        [--num_workers=0] [--seconds=10] [--train_tokens_per_s=X]

Defaults are the smoke configuration's shapes. With --train_tokens_per_s (a training run's measured
consumption) it also prints the ratio; the data pipeline must stay at least 20x ahead of the smoke model on
the same CPU (issue 6).
"""

from __future__ import annotations

import argparse
import json
import sys
import time

from data_pipeline.config import default_data_config
from data_pipeline.loader import make_loader


def measure(data_cfg, *, seq_len: int, batch_size: int, seconds: float, warmup_batches: int = 5) -> dict:
    loader = make_loader(data_cfg, seq_len=seq_len, global_batch_size=batch_size)
    for _ in range(warmup_batches):
        next(loader)
    tokens, batches = 0, 0
    start = time.perf_counter()
    while (elapsed := time.perf_counter() - start) < seconds:
        batch = next(loader)
        tokens += int(batch["mask"].size)
        batches += 1
    return {"tokens_per_s": tokens / elapsed, "batches": batches, "seconds": elapsed}


def main(argv: list[str] | None = None) -> dict:
    argv = sys.argv[1:] if argv is None else list(argv)
    if argv and argv[0] in ("data", __name__):  # dispatched as `python -m hope_jax.bench data ...`
        argv = argv[1:]
    parser = argparse.ArgumentParser(
        prog="python -m hope_jax.bench data",
        description=__doc__,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    parser.add_argument("--source", default="builtin", choices=("builtin", "mixture"))
    parser.add_argument("--mixture", default="", help="mixture manifest (YAML) for --source=mixture")
    parser.add_argument("--seq_len", type=int, default=128)
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--num_workers", type=int, default=0, help="grain mp_prefetch worker processes")
    parser.add_argument("--read_threads", type=int, default=0)
    parser.add_argument("--seconds", type=float, default=10.0)
    parser.add_argument("--train_tokens_per_s", type=float, default=0.0, help="measured training consumption")
    args = parser.parse_args(argv)
    data_cfg = default_data_config()
    data_cfg.source, data_cfg.mixture = args.source, args.mixture
    data_cfg.num_workers, data_cfg.read_threads = args.num_workers, args.read_threads
    result = measure(data_cfg, seq_len=args.seq_len, batch_size=args.batch_size, seconds=args.seconds)
    result.update(source=args.source, seq_len=args.seq_len, batch_size=args.batch_size, num_workers=args.num_workers)
    line = f"data loader ({args.source}, workers={args.num_workers}): {result['tokens_per_s']:,.0f} tokens/s"
    if args.train_tokens_per_s:
        result["ratio_to_training"] = result["tokens_per_s"] / args.train_tokens_per_s
        line += (
            f" = {result['ratio_to_training']:.1f}x the training consumption ({args.train_tokens_per_s:,.0f} tokens/s)"
        )
    print(line)
    print(json.dumps(result))
    return result


if __name__ == "__main__":
    main()
