"""Does each test-time-trained CMS level learn in context? Its inner loss before and after every update, and how far
its weights move over a sequence.

    python -m eval.cms_fit --workdir=runs/pilot --files=../shared/data/tinyshakespeare.txt --num_sequences=32

For a run whose CMS has `lm` levels (models/lm_ttt.py, the default objective): the text files are tokenised with the
run's tokenizer (each file preceded by <eos>, as the training stream separates documents) and cut into windows of the
run's training length. Each window goes through the model G tokens at a time exactly as the model's own driver runs
it. At every update of a level (the end of each of its periods) its inner objective — the mean in-chunk NLL of the
period's tokens, each G-sub-chunk with the state that entered it, as the driver defines it — is evaluated at the
weights before the update and at the weights after it. Reported per level:

- `loss_before` / `loss_after`: that objective (nats per prediction) at the level's pre- and post-update weights,
  averaged over every update of every window and layer, and `improved`, the share of updates that lowered it;
- `relative_drift`: ‖W_end − W_0‖ / ‖W_0‖ over the window (Frobenius norm over the level's matrices, mean over
  layers): how far test-time training moves the level from its meta-learned initial weights.

A level whose weights drift while its loss does not fall is writing something it is not fitting. (`local` levels
report their own objective before and after every piece in training, as `inner/cms_loss_before` / `_after`.)
Writes <output_dir>/<run>/cms_fit-<timestamp>.json.
"""

from __future__ import annotations

import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from eval import common
from eval.results import results_stem, write_results
from hope_jax.models.lm_ttt import chunk_forward_and_step, get_fast, in_chunk_nll, set_fast

COMMAND = "cms_fit"


@dataclasses.dataclass
class CMSFitArgs:
    files: list[str]
    num_sequences: int = 16
    batch_size: int = 8

    def __post_init__(self) -> None:
        if not self.files:
            raise ValueError("--files must name at least one text file")
        if self.num_sequences < 1 or self.batch_size < 1:
            raise ValueError("num_sequences and batch_size must be ≥ 1")


def windows(run: common.Run, files: list[str], num_sequences: int) -> np.ndarray:
    """int32[N, seq_len]: consecutive windows of the files' token stream (each file preceded by <eos>)."""
    seq_len = run.config.train.seq_len
    stream = []
    for path in files:
        with open(path, encoding="utf-8") as f:
            stream += [run.tokenizer.eos_id, *run.tokenizer.encode(f.read())]
    available = len(stream) // seq_len
    if available < num_sequences:
        raise ValueError(
            f"{', '.join(files)}: {len(stream)} tokens make {available} windows of {seq_len}, not {num_sequences}"
        )
    return np.asarray(stream[: num_sequences * seq_len], np.int32).reshape(num_sequences, seq_len)


def _frobenius(tree) -> jax.Array:
    return jnp.sqrt(sum(jnp.sum(jnp.square(a.astype(jnp.float32))) for a in jax.tree.leaves(tree)))


def measure_batch(model: nnx.Module, tokens_bt: np.ndarray) -> list[dict]:
    """Per lm level (in spec order): sums of the objective before / after each update, update counts, improvements
    and the relative drift per sequence, for one batch of windows."""
    spec = model.ttt
    if spec.reset_at_token >= 0:
        raise ValueError(
            f"eval.cms_fit follows each lm level through whole windows and does not model document resets; this "
            f"run's model.reset_at_token = {spec.reset_at_token} restarts the levels at every document"
        )
    g = spec.granularity
    graphdef, variables = nnx.split(model)
    forward = type(model).plain_forward

    @jax.jit
    def step(inner, chunk):
        _, new_inner, nll_b, _ = chunk_forward_and_step(graphdef, variables, forward, inner, chunk, spec)
        return new_inner, nll_b

    @functools.partial(jax.jit, static_argnums=3)
    def nll_with(inner, chunk, level_fast, k):  # level k's weights (every layer) replaced, the rest as entered
        fast = [
            [level_fast[layer] if j == k else w for j, w in enumerate(row)]
            for layer, row in enumerate(get_fast(inner, spec))
        ]
        logits, _ = forward(nnx.merge(graphdef, variables), chunk, set_fast(inner, spec, fast))
        return in_chunk_nll(logits, chunk)

    inner = model.init_state(tokens_bt.shape[0])["inner"]
    initial = get_fast(inner, spec)
    stats = [{"before": 0.0, "after": 0.0, "pairs": 0, "updates": 0, "improved": 0} for _ in spec.levels]
    since_step = [[] for _ in spec.levels]  # per level: (entering state, chunk, NLL at it) since its last update
    for start in range(0, tokens_bt.shape[1] - g + 1, g):
        chunk = jnp.asarray(tokens_bt[:, start : start + g])
        new_inner, nll_b = step(inner, chunk)
        for k, (_, period, _) in enumerate(spec.levels):
            since_step[k].append((inner, chunk, nll_b))
            if (start + g) % period:
                continue
            new_fast = [row[k] for row in get_fast(new_inner, spec)]
            before = sum(np.asarray(nll) for _, _, nll in since_step[k])
            after = sum(np.asarray(nll_with(entered, c, new_fast, k)) for entered, c, _ in since_step[k])
            stats[k]["before"] += float(before.sum())
            stats[k]["after"] += float(after.sum())
            stats[k]["pairs"] += len(since_step[k]) * (g - 1) * tokens_bt.shape[0]
            stats[k]["updates"] += tokens_bt.shape[0]
            stats[k]["improved"] += int((after < before).sum())
            since_step[k] = []
        inner = new_inner
    end = get_fast(inner, spec)
    for k, level_stats in enumerate(stats):
        per_sequence = jax.vmap(lambda w_end, w_0: _frobenius(jax.tree.map(jnp.subtract, w_end, w_0)) / _frobenius(w_0))
        drift = np.mean([np.asarray(per_sequence(end[layer][k], initial[layer][k])) for layer in range(len(end))], 0)
        level_stats["drift"] = drift.tolist()
    return stats


def summarize(model: nnx.Module, batches: list[list[dict]]) -> dict:
    levels = []
    for k, (index, period, lr) in enumerate(model.ttt.levels):
        total = {key: sum(b[k][key] for b in batches) for key in ("before", "after", "pairs", "updates", "improved")}
        drift = [d for b in batches for d in b[k]["drift"]]
        levels.append({
            "level": index, "period": period, "inner_lr": lr, "updates": total["updates"],
            "loss_before": total["before"] / max(total["pairs"], 1), "loss_after": total["after"] / max(total["pairs"], 1),
            "improved": total["improved"] / max(total["updates"], 1), "relative_drift": float(np.mean(drift)),
        })  # fmt: skip
    return {"granularity": model.ttt.granularity, "levels": levels}


def run_cms_fit(run: common.Run, args: CMSFitArgs, *, output_dir: str = "eval", record_args: dict | None = None):
    if getattr(run.model, "ttt", None) is None:
        raise ValueError(
            f"run {run.name} has no 'lm' CMS level (model.cms.objectives = {tuple(run.config.model.cms.objectives)}); "
            "'local' levels report inner/cms_loss_before and _after in the training metrics"
        )
    tokens = windows(run, args.files, args.num_sequences)
    batches = [
        measure_batch(run.model, tokens[i : i + args.batch_size]) for i in range(0, len(tokens), args.batch_size)
    ]
    results = summarize(run.model, batches)
    results["num_sequences"], results["seq_len"] = len(tokens), tokens.shape[1]
    stem = results_stem(run, COMMAND, output_dir=output_dir)
    return results, write_results(run, COMMAND, args, results, stem=stem, record_args=record_args)


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    common.define_common_flags(flag_values)
    fv = flag_values
    flags.DEFINE_list("files", [], "Text files whose windows are measured.", flag_values=fv)
    flags.DEFINE_integer("num_sequences", 16, "Windows of the run's training length to measure.", flag_values=fv)


def run_from_flags(fv: flags.FlagValues):
    args = CMSFitArgs(files=fv.files, num_sequences=fv.num_sequences, batch_size=fv.batch_size)
    return common.evaluate_from_flags(fv, run_cms_fit, args)


def format_table(results: dict) -> str:
    lines = ["level  period  inner_lr  updates  loss_before  loss_after  improved  relative_drift"]
    for entry in results["levels"]:
        lines.append(
            f"{entry['level']:>5} {entry['period']:>7} {entry['inner_lr']:>9g} {entry['updates']:>8} "
            f"{entry['loss_before']:>12.4f} {entry['loss_after']:>11.4f} {entry['improved']:>9.3f} "
            f"{entry['relative_drift']:>15.4f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
