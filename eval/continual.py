"""Continual-learning evaluation at test time: a model reads an ordered list of segments and is scored on every
segment after each one (issue 7; DESIGN D6 for the `lm` mode).

    python -m eval.continual --workdir=runs/pilot --manifest=segments.json --mode=lm --lm_levels=2 --lm_lrs=0.01 \\
        --lm_period=64 [--carry_state=true] [--segment_len=0] [--max_tokens=0]

Manifest (JSON, or YAML for a .yaml / .yml file): {"segments": [{"name": ..., "train": [text files], "eval": [text
files]}, ...]} — at least two segments (issue 7 asks for ≥ 5), in the order they are read; relative paths are relative
to the manifest. Every text file is one document, preceded by <eos> as in training.

Protocol. The parameters never change; what learns is the per-sequence state (batch 1). For i = 0 … N−1 the model
streams segment i's train documents (the state carried from segment i−1, or fresh with --carry_state=false), then
every segment j's eval documents are scored from a copy of that state: A[i][j]. Scoring an eval document never
changes the state the next segment starts from. The baseline b[j] scores segment j from a fresh state.
Modes:
- none: nothing is read; every score starts from a fresh state and every 'lm' level has lr 0 (A[i][j] = b[j]).
- in_context: the in-context memories memorise (HOPE's self-modifying memories, 'local' CMS levels, Titans
  memories, attention caches); 'lm' levels the run trained with get lr 0.
- lm: in_context plus test-time training of the chosen CMS levels with the `lm` objective (models/lm_ttt.py) at the
  chosen learning rates; --lm_period sets their period (needed for a 'frozen' or 'outer' level, which has none).
  The parameters are the run's: an lm level has exactly the parameters of any other CMS level.

Score: the mean next-token loss (nats/token, lower is better) of the segment's eval documents (token-weighted), and
the top-1 next-token accuracy (higher is better) as a second matrix. Metrics (GEM, Lopez-Paz & Ranzato 2017; Chaudhry
et al. 2018), 0-based, N segments, s = −1 for a loss and +1 for an accuracy so that positive always means better:
- final_average = mean_j A[N−1][j]; diagonal_average = mean_i A[i][i] (each segment right after reading it);
- backward_transfer = 1/(N−1) Σ_{i<N−1} s·(A[N−1][i] − A[i][i]) — negative: the last state is worse on earlier
  segments than the state right after reading them;
- forgetting[j] = max_{l<N−1} s·A[l][j] − s·A[N−1][j] for j < N−1 (for a loss: A[N−1][j] − min_{l<N−1} A[l][j]);
  average_forgetting = its mean (≥ 0 means forgotten);
- forward_transfer = 1/(N−1) Σ_{i≥1} s·(A[i−1][i] − b[i]) — what earlier segments did for an unread one.
Plots: the loss matrix (heatmap) and each segment's loss after every step (curves), next to the results JSON.
An attention model keeps a KV cache as long as everything it reads; give it --max_tokens on long segments.
"""

from __future__ import annotations

import dataclasses
import json
import pathlib
from collections.abc import Sequence

import numpy as np
from absl import app, flags, logging
from flax import nnx

from eval import common, plots
from eval.results import results_stem, write_results
from hope_jax.models.config import apply_overrides
from hope_jax.models.registry import build_model

COMMAND = "continual"
MODES = ("none", "in_context", "lm")
CMS_MODELS = ("hope", "hope_attention")


@dataclasses.dataclass(frozen=True)
class Segment:
    name: str
    train: tuple[str, ...]
    eval: tuple[str, ...]


@dataclasses.dataclass
class ContinualArgs:
    manifest: str
    mode: str = "in_context"
    carry_state: bool = True
    lm_levels: list[int] = dataclasses.field(default_factory=list)
    lm_lrs: list[float] = dataclasses.field(default_factory=list)
    lm_period: int = 0  # 0: each chosen level keeps its own period
    segment_len: int = 0  # 0: the run's train.seq_len
    max_tokens: int = 0  # per document; 0: all

    def __post_init__(self) -> None:
        if self.mode not in MODES:
            raise ValueError(f"--mode={self.mode!r}; known: {', '.join(MODES)}")
        if self.mode == "lm" and (not self.lm_levels or len(self.lm_levels) != len(self.lm_lrs)):
            raise ValueError(f"--mode=lm needs --lm_levels and one --lm_lrs entry per level; got {self.lm_levels}, "
                             f"{self.lm_lrs}")  # fmt: skip
        if self.mode != "lm" and (self.lm_levels or self.lm_lrs):
            raise ValueError("--lm_levels / --lm_lrs apply only to --mode=lm")
        if self.lm_period < 0 or self.segment_len < 0 or self.max_tokens < 0:
            raise ValueError("lm_period, segment_len and max_tokens must be ≥ 0")


def read_manifest(path: str | pathlib.Path) -> list[Segment]:
    """The segments of a JSON / YAML manifest, file paths resolved against the manifest's directory."""
    path = pathlib.Path(path)
    text = path.read_text(encoding="utf-8")
    if path.suffix in (".yaml", ".yml"):
        import yaml  # PyYAML: a dependency of flax

        data = yaml.safe_load(text)
    else:
        data = json.loads(text)
    entries = data.get("segments") if isinstance(data, dict) else None
    if not isinstance(entries, list) or len(entries) < 2:
        raise ValueError(f"{path}: needs {{'segments': [...]}} with at least two segments")
    resolve = lambda name: str(name if pathlib.Path(name).is_absolute() else path.parent / name)
    as_list = lambda value: [value] if isinstance(value, str) else list(value or [])
    segments = []
    for index, entry in enumerate(entries):
        train, evaluate = as_list(entry.get("train")), as_list(entry.get("eval"))
        if not train or not evaluate:
            raise ValueError(f"{path}: segment {index} needs 'train' and 'eval' text files")
        segment = Segment(
            str(entry.get("name", f"segment_{index}")), tuple(map(resolve, train)), tuple(map(resolve, evaluate))
        )
        for name in (*segment.train, *segment.eval):
            if not pathlib.Path(name).is_file():
                raise FileNotFoundError(f"{path}: segment {segment.name!r}: text file {name} does not exist")
        segments.append(segment)
    return segments


def continual_metrics(matrix, *, higher_is_better: bool, baseline=None) -> dict:
    """GEM / Chaudhry metrics of an N×N score matrix (row i: after reading segment i; column j: scored segment j)."""
    a = np.asarray(matrix, np.float64)
    n = a.shape[0]
    if a.shape != (n, n) or n < 2:
        raise ValueError(f"need a square matrix of at least 2 segments, got shape {a.shape}")
    s = 1.0 if higher_is_better else -1.0
    last = n - 1
    forgetting = [float(np.max(s * a[:last, j]) - s * a[last, j]) for j in range(last)]
    metrics = {
        "final_average": float(np.mean(a[last])),
        "diagonal_average": float(np.mean(np.diag(a))),
        "backward_transfer": float(np.mean([s * (a[last, i] - a[i, i]) for i in range(last)])),
        "forgetting": forgetting,
        "average_forgetting": float(np.mean(forgetting)),
    }
    if baseline is not None:
        b = np.asarray(baseline, np.float64)
        metrics["forward_transfer"] = float(np.mean([s * (a[i - 1, i] - b[i]) for i in range(1, n)]))
    return metrics


def continual_model(run: common.Run, args: ContinualArgs) -> nnx.Module:
    """The run's parameters in the model the mode asks for (lm levels switched on / their lr set to 0)."""
    model_cfg = run.config.model
    if model_cfg.name not in CMS_MODELS:
        if args.mode == "lm":
            raise ValueError(f"--mode=lm needs a model with CMS levels ({', '.join(CMS_MODELS)}), not {model_cfg.name}")
        return run.model
    cms = model_cfg.cms
    n_levels = len(cms.periods)
    objectives, periods, lrs = list(cms.objectives), list(cms.periods), [0.0] * n_levels
    for level, lr in zip(args.lm_levels, args.lm_lrs, strict=True):
        if not 0 <= level < n_levels:
            raise ValueError(f"--lm_levels: level {level} does not exist (the model has {n_levels} CMS levels)")
        objectives[level], lrs[level] = "lm", float(lr)
        periods[level] = args.lm_period or periods[level]
        if periods[level] == 0:
            raise ValueError(f"CMS level {level} is {cms.objectives[level]!r} with period 0: give --lm_period")
    cfg = apply_overrides(model_cfg, {"cms": {"objectives": tuple(objectives), "periods": tuple(periods),
                                              "lm_lrs": tuple(lrs)}})  # fmt: skip
    graphdef = nnx.split(nnx.eval_shape(lambda: build_model(cfg, rngs=nnx.Rngs(0))))[0]
    return nnx.merge(graphdef, nnx.state(run.model, nnx.Param))


def _documents(run: common.Run, files: Sequence[str], max_tokens: int) -> list[list[int]]:
    out = []
    for name in files:
        ids = run.tokenizer.encode(pathlib.Path(name).read_text(encoding="utf-8"))
        ids = ids[:max_tokens] if max_tokens else ids
        if not ids:
            raise ValueError(f"text file {name} holds no tokens")
        out.append([run.tokenizer.eos_id, *ids])
    return out


def score_documents(model, documents: Sequence[Sequence[int]], state, segment_len: int) -> tuple[float, float, int]:
    """(mean loss, accuracy, tokens scored) of documents each scored from `state` (never modified)."""
    nll, correct, count = 0.0, 0, 0
    for tokens in documents:
        logprobs, argmax, _ = common.next_token_scores(model, np.array([tokens]), segment_len=segment_len, state=state)
        nll -= float(logprobs.sum())
        correct += int((argmax[0] == np.asarray(tokens[1:])).sum())
        count += len(tokens) - 1
    return nll / count, correct / count, count


def read_stream(model, documents: Sequence[Sequence[int]], state, segment_len: int, eos_id: int):
    """(mean loss while reading, the state after every token of the documents)."""
    stream = [token for tokens in documents for token in tokens]
    logprobs, _, state = common.next_token_scores(model, np.array([[*stream, eos_id]]), segment_len=segment_len,
                                                  state=state)  # fmt: skip
    return -float(logprobs.mean()), state


def evaluate_continual(run: common.Run, segments: Sequence[Segment], args: ContinualArgs) -> dict:
    model = continual_model(run, args)
    segment_len = args.segment_len or int(run.config.train.seq_len)
    streams = [_documents(run, s.train, args.max_tokens) for s in segments]
    evals = [_documents(run, s.eval, args.max_tokens) for s in segments]
    # A KV cache must hold everything one state reads: all streams, then the longest eval document.
    max_len = sum(len(t) for docs in streams for t in docs) + max(len(t) for docs in evals for t in docs) + 1
    fresh = lambda: model.init_state(1, max_len=max_len)
    baseline = [score_documents(model, docs, fresh(), segment_len) for docs in evals]
    n = len(segments)
    loss, accuracy, stream_loss = np.zeros((n, n)), np.zeros((n, n)), []
    state = fresh()
    for i, segment in enumerate(segments):
        if args.mode == "none":
            loss[i], accuracy[i] = [b[0] for b in baseline], [b[1] for b in baseline]
            continue
        state = state if args.carry_state else fresh()
        read_loss, state = read_stream(model, streams[i], state, segment_len, run.tokenizer.eos_id)
        stream_loss.append(read_loss)
        for j, docs in enumerate(evals):
            loss[i, j], accuracy[i, j], _ = score_documents(model, docs, state, segment_len)
        logging.info("continual: read %s (loss %.4f while reading); diagonal loss %.4f", segment.name, read_loss,
                     loss[i, i])  # fmt: skip
    return {
        "segments": [dataclasses.asdict(s) for s in segments],
        "segment_len": segment_len,
        "eval_tokens": [b[2] for b in baseline],
        "loss": {"matrix": loss.tolist(), "baseline": [b[0] for b in baseline], "stream_loss": stream_loss,
                 **continual_metrics(loss, higher_is_better=False, baseline=[b[0] for b in baseline])},
        "accuracy": {"matrix": accuracy.tolist(), "baseline": [b[1] for b in baseline],
                     **continual_metrics(accuracy, higher_is_better=True, baseline=[b[1] for b in baseline])},
    }  # fmt: skip


def plot_matrix(path: pathlib.Path, matrix, names: Sequence[str], *, title: str) -> pathlib.Path:
    figure, axes = plots.plt.subplots(figsize=(2.0 + 0.8 * len(names), 1.5 + 0.6 * len(names)))
    image = axes.imshow(np.asarray(matrix), cmap="viridis_r", aspect="auto")
    axes.set_xticks(range(len(names)), names, rotation=45, ha="right")
    axes.set_yticks(range(len(names)), [f"after {name}" for name in names])
    axes.set_xlabel("scored segment")
    axes.set_title(title, fontsize=10)
    for i, row in enumerate(matrix):
        for j, value in enumerate(row):
            axes.text(j, i, f"{value:.2f}", ha="center", va="center", fontsize=7, color="white")
    figure.colorbar(image, ax=axes, label="loss (nats/token)")
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plots.plt.close(figure)
    return path


def plot_curves(path: pathlib.Path, matrix, baseline, names: Sequence[str], *, title: str) -> pathlib.Path:
    """Each segment's loss after every step (its own step marked), its fresh-state baseline dashed."""
    figure, axes = plots.plt.subplots(figsize=(7, 4))
    a = np.asarray(matrix)
    for j, name in enumerate(names):
        (line,) = axes.plot(range(len(names)), a[:, j], marker="o", markersize=3, label=name)
        axes.plot([j], [a[j, j]], marker="*", markersize=10, color=line.get_color())
        axes.axhline(baseline[j], color=line.get_color(), linestyle=":", linewidth=0.8)
    axes.set_xticks(range(len(names)), [f"after {name}" for name in names], rotation=30, ha="right")
    axes.set_ylabel("loss (nats/token)")
    axes.set_title(title, fontsize=10)
    axes.legend(fontsize=7)
    figure.tight_layout()
    figure.savefig(path, dpi=100)
    plots.plt.close(figure)
    return path


def run_continual(run: common.Run, args: ContinualArgs, *, output_dir: str = "eval", record_args: dict | None = None):
    """Evaluate, write the results JSON and both plots. Returns (results, path)."""
    segments = read_manifest(args.manifest)
    results = evaluate_continual(run, segments, args)
    stem = results_stem(run, COMMAND, output_dir=output_dir)
    names = [s.name for s in segments]
    title = f"continual ({args.mode}{', carried' if args.carry_state else ', reset'}) — {run.name}"
    written = {
        "loss_matrix": plot_matrix(pathlib.Path(f"{stem}-loss_matrix.png"), results["loss"]["matrix"], names,
                                   title=title),
        "loss_curves": plot_curves(pathlib.Path(f"{stem}-loss_curves.png"), results["loss"]["matrix"],
                                   results["loss"]["baseline"], names, title=title),
    }  # fmt: skip
    path = write_results(
        run, COMMAND, args, results, plots={k: str(v) for k, v in written.items()}, stem=stem, record_args=record_args
    )
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    common.define_common_flags(fv)
    flags.DEFINE_string("manifest", None, "JSON / YAML list of segments (train and eval text files).", flag_values=fv)
    flags.DEFINE_enum("mode", "in_context", list(MODES), "Test-time memorisation: none | in_context | lm.",
                      flag_values=fv)  # fmt: skip
    flags.DEFINE_boolean("carry_state", True, "Carry the state between segments (false: fresh for each).",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_list("lm_levels", [], "--mode=lm: CMS level indices to test-time train.", flag_values=fv)
    flags.DEFINE_list("lm_lrs", [], "--mode=lm: their inner learning rates, one per level.", flag_values=fv)
    flags.DEFINE_integer("lm_period", 0, "--mode=lm: their period in tokens (0: keep each level's).", flag_values=fv)
    flags.DEFINE_integer("segment_len", 0, "Tokens per forward pass (state carried); 0: train.seq_len.",
                         flag_values=fv)  # fmt: skip
    flags.DEFINE_integer("max_tokens", 0, "Read / score only the first N tokens of every document.", flag_values=fv)


def run_from_flags(fv: flags.FlagValues):
    if not fv.manifest:
        raise app.UsageError("--manifest is required")
    args = ContinualArgs(
        manifest=fv.manifest, mode=fv.mode, carry_state=fv.carry_state,
        lm_levels=[int(v) for v in fv.lm_levels], lm_lrs=[float(v) for v in fv.lm_lrs], lm_period=fv.lm_period,
        segment_len=fv.segment_len, max_tokens=fv.max_tokens,
    )  # fmt: skip
    return common.evaluate_from_flags(fv, run_continual, args)


def format_table(results: dict) -> str:
    lines = []
    for score in ("loss", "accuracy"):
        r = results[score]
        lines.append(
            f"{score}: final average {r['final_average']:.4f}, backward transfer {r['backward_transfer']:+.4f}, "
            f"average forgetting {r['average_forgetting']:+.4f}, forward transfer {r['forward_transfer']:+.4f}"
        )
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_table)
