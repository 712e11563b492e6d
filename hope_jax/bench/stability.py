"""`python -m hope_jax.bench stability`: does every model train? Steps reached, first non-finite step, final losses.

    python -m hope_jax.bench stability --config=configs/stability.py --models=all \
        --data=builtin:128,builtin:256,mixture:runs/sample/sample.yaml:256 --lrs=1e-3,3e-3 --steps=300 \
        --match_params=hope --json=stability.json

Each row is one real training run through the trainer `python -m hope_jax.main` uses (`hope_jax.train.loop.train`,
checkpoints off), so what it reports is what a user would see: the model, the data, the peak learning rate
(`optim.levels.default.lr`, with the config's warmup and a cosine decay over `--steps`), how many steps ran, the
first step whose loss or gradient was non-finite (the run halts there, train.nonfinite='halt'), and the last
training loss and the held-out loss at the end.

--data entries: `builtin:SEQ` (the built-in corpus) or `mixture:MANIFEST.yaml:SEQ` (ArrayRecord shards made by
data_pipeline from any text file, e.g. `bash data_pipeline/run_sample.sh FILE OUT 2000`; the vocabulary size is
read from the manifest's tokenizer). --match_params=VARIANT widens model.mlp_hidden of the SwiGLU models so that
their parameter counts match that model's (as in `bench train`).
"""

from __future__ import annotations

import argparse
import json
import logging
import math
import os
import sys
import tempfile

import ml_collections

from hope_jax.bench import _common as common
from hope_jax.bench.train import variant_configs
from hope_jax.models.registry import count_params, known_models

COLUMNS = (
    ("model", "{model}"),
    ("params", "{params_m:.2f}M"),
    ("data", "{data}"),
    ("lr", "{lr:g}"),
    ("steps reached", "{steps_reached}"),
    ("first non-finite step", "{first_nonfinite}"),
    ("final train loss", "{train_loss:.4f}"),
    ("held-out loss", "{eval_loss:.4f}"),
)


def parse_data(spec: str) -> tuple[str, str, int]:
    """`builtin:SEQ` or `mixture:PATH:SEQ` -> (source, manifest path or '', seq_len)."""
    source, _, rest = spec.partition(":")
    if source == "builtin":
        path, seq = "", rest
    elif source == "mixture":
        path, _, seq = rest.rpartition(":")
        if not path:
            raise SystemExit(f"--data entry {spec!r}: expected mixture:MANIFEST.yaml:SEQ")
        if not os.path.exists(path):
            raise SystemExit(f"--data entry {spec!r}: no mixture manifest at {path}")
    else:
        raise SystemExit(f"--data entry {spec!r}: expected builtin:SEQ or mixture:MANIFEST.yaml:SEQ")
    if not seq.isdigit() or int(seq) < 1:
        raise SystemExit(f"--data entry {spec!r}: the sequence length {seq!r} is not a positive integer")
    return source, path, int(seq)


def data_label(source: str, path: str, seq_len: int) -> str:
    name = "builtin" if source == "builtin" else os.path.splitext(os.path.basename(path))[0]
    return f"{name}@{seq_len}"


def with_data(config: ml_collections.ConfigDict, source: str, path: str, seq_len: int) -> ml_collections.ConfigDict:
    """The config reading this data at this sequence length (the model's vocabulary follows a mixture's tokenizer)."""
    from data_pipeline.loader import load_tokenizer

    config = ml_collections.ConfigDict(config.to_dict())
    config.data.source = source
    config.data.mixture = path
    config.train.seq_len = seq_len
    config.model.max_seq_len = max(config.model.max_seq_len, seq_len)
    if source == "mixture":
        config.model.vocab_size = load_tokenizer(config.data).vocab_size
    return config


def with_schedule(config: ml_collections.ConfigDict, lr: float, steps: int) -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict(config.to_dict())
    config.optim.levels.default.lr = lr
    config.optim.levels.default.decay_steps = steps
    config.train.num_steps = steps
    config.train.nonfinite = "halt"
    config.checkpoint.enabled = False
    config.logging.tensorboard = False
    config.eval.every_steps = 0  # held-out loss once, at the end
    return config


def run_one(config: ml_collections.ConfigDict, workdir: str) -> dict:
    """Trains once; the steps reached, the first non-finite step (None if none) and the final losses."""
    from hope_jax.train.loop import NonFiniteLossError, train

    try:
        result = train(config, workdir)
    except NonFiniteLossError as error:
        return {
            "steps_reached": error.step - 1,
            "first_nonfinite": error.step,
            "train_loss": math.nan,
            "eval_loss": math.nan,
        }
    last = max(result.losses)
    return {
        "steps_reached": result.final_step,
        "first_nonfinite": None,
        "train_loss": result.losses[last],
        "eval_loss": math.nan if result.eval_loss is None else result.eval_loss,
    }


def main(argv: list[str] | None = None) -> list[dict]:
    parser = argparse.ArgumentParser(prog="python -m hope_jax.bench stability", description=__doc__.split("\n")[0])
    parser.add_argument("--config", default="configs/stability.py", help="config file, path[:arg]")
    parser.add_argument("--models", default="all", help="comma-separated registered models, or 'all'")
    parser.add_argument("--data", default="builtin:128,builtin:256", help="builtin:SEQ | mixture:MANIFEST:SEQ, ...")
    parser.add_argument("--lrs", default="1e-3,3e-3", help="comma-separated peak learning rates")
    parser.add_argument("--steps", type=int, default=300, help="training steps per run (the cosine decay's length)")
    parser.add_argument("--set", action="append", default=[], help="[model:]dotted.key=value (repeatable)")
    parser.add_argument(
        "--match_params", default="hope", help="model whose parameter count the SwiGLU models match ('' = none)"
    )
    parser.add_argument("--json", default="", help="write the rows to this JSON file")
    parser.add_argument("--workdir", default="", help="where the runs write their metrics (default: a temp dir)")
    args = parser.parse_args(argv)
    # The trainer's per-step lines (hope_jax.train.loop logs at INFO) show each run's progress; library chatter not.
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(message)s", stream=sys.stdout, force=True)
    for noisy in ("absl", "orbax", "jax._src", "tensorflow", "grain"):
        logging.getLogger(noisy).setLevel(logging.WARNING)

    models = known_models() if args.models == "all" else args.models.split(",")
    unknown = sorted(set(models) - set(known_models()))
    if unknown:
        raise SystemExit(f"--models: unknown {unknown}; registered: {known_models()}")
    data = [parse_data(spec) for spec in args.data.split(",")]
    lrs = [float(lr) for lr in args.lrs.split(",")]
    base = common.load_config(args.config)
    overrides = common.parse_overrides(args.set)
    root = args.workdir or tempfile.mkdtemp(prefix="hope_jax_stability_")
    rows = []
    for source, path, seq_len in data:
        with_source = with_data(base, source, path, seq_len)
        configs = variant_configs(with_source, models, overrides, None)
        if args.match_params:  # the reference model need not be one of the rows
            reference = variant_configs(with_source, [args.match_params], overrides, None)[args.match_params]
            target = count_params(reference.model)
            for config in configs.values():
                if config.model.name in common.MLP_WIDTH_MODELS:
                    config.model.mlp_hidden = common.match_mlp_width(config.model, target)
        for model, config in configs.items():
            for lr in lrs:
                label = data_label(source, path, seq_len)
                run_config = with_schedule(config, lr, args.steps)
                workdir = os.path.join(root, f"{model}_{label}_lr{lr:g}")
                row = {"model": model, "params_m": count_params(run_config.model) / 1e6, "data": label, "lr": lr}
                row.update(run_one(run_config, workdir))
                rows.append(row)
                print(json.dumps(row), flush=True)
    printable = [{**row, "first_nonfinite": row["first_nonfinite"] or "none"} for row in rows]
    print(common.markdown_table(COLUMNS, printable))
    if args.json:
        with open(args.json, "w") as f:
            json.dump({"steps": args.steps, "config": args.config, "rows": rows}, f, indent=2)
    return rows


if __name__ == "__main__":
    main(sys.argv[1:])
