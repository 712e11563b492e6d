"""What every evaluation command shares: a run loaded from its workdir, batched scoring and generation through the
stateful model API, common flags and the command entry point (`command_main`, `evaluate_from_flags`, `run_command`).
The results file every command writes (DESIGN D12) is eval/results.py's.

A run is evaluated with its own configuration: the checkpoint's metadata holds the flattened config it was trained
with, and `load_run` rebuilds the ConfigDict from the library's schema (hope_jax/config_schema.py) plus those values,
then restores only the model parameters (the optimiser state is never read).
"""

from __future__ import annotations

import dataclasses
import functools
import logging
import os
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import orbax.checkpoint as ocp
from absl import app, flags
from etils import epath
from flax import nnx

from data_pipeline.loader import load_tokenizer
from hope_jax import log_setup
from hope_jax.config_schema import default_config
from hope_jax.models.generate import generate
from hope_jax.models.registry import build_model
from hope_jax.optim.config import without_removed_defaults
from hope_jax.train import checkpoint, integrity
from hope_jax.train.state import model_spec


@dataclasses.dataclass
class Run:
    name: str  # basename of the workdir ('random' for untrained models)
    config: ml_collections.ConfigDict  # the configuration the run was trained with
    model: nnx.Module  # parameters restored
    tokenizer: Any  # encode(str) -> list[int], decode(ids) -> str, vocab_size, eos_id, pad_id
    step: int | None  # checkpoint step; None for an untrained model
    config_hash: str


class RunLoadError(ValueError):
    pass


def config_from_flat(flat: dict[str, Any], source: str) -> ml_collections.ConfigDict:
    """The config schema (hope_jax/config_schema.py) with every key of a flattened config (as the checkpoint metadata
    stores it) set to its value."""
    config = default_config()
    for dotted, value in without_removed_defaults(flat).items():
        *parents, leaf = dotted.split(".")
        node = config
        for part in parents:
            if part not in node:
                raise RunLoadError(f"{source}: config key {dotted!r} is unknown to this version of hope_jax")
            node = node[part]
        if leaf not in node:
            raise RunLoadError(f"{source}: config key {dotted!r} is unknown to this version of hope_jax")
        current = node[leaf]
        if isinstance(current, tuple) or (isinstance(value, list) and current is None):
            value = _as_tuple(value)
        node[leaf] = value
    return config


def _as_tuple(value):
    return tuple(_as_tuple(v) for v in value) if isinstance(value, list) else value


def load_run(workdir: str, step: int | None = None, *, checkpoint_dir: str = "") -> Run:
    """The model of a training run at `step` (default: the newest good checkpoint), with its config and tokenizer.

    Every restore is verified against the fingerprints saved with it (hope_jax/train/integrity.py). Without `step`, a
    damaged checkpoint is named, set aside under `<checkpoints>/damaged/` as a resume would, and the next older one is
    loaded; a damaged `step` asked for by name is an error."""
    try:
        directory = checkpoint_dir or checkpoint.run_checkpoint_directory(workdir)
    except ValueError as error:
        raise RunLoadError(str(error)) from None
    if not epath.Path(directory).exists():
        raise RunLoadError(f"no checkpoints in {directory}: is --workdir the directory a training run wrote?")
    manager = checkpoint.read_only_manager(directory)
    try:
        available = manager.all_steps()
        if not available:
            raise RunLoadError(f"no complete checkpoint in {directory}")
        if step is not None and step not in available:
            raise RunLoadError(f"no checkpoint for step {step} in {directory}; available: {sorted(available)}")
        damaged = []
        for candidate in [step] if step is not None else sorted(available, reverse=True):
            with integrity.quiet_failed_reads():
                try:
                    config, params = _restore_params(manager, directory, candidate)
                    failure = None
                except integrity.CheckpointDamagedError as error:
                    failure = str(error)
            if failure is None:
                step = candidate
                break
            if step is not None:
                raise RunLoadError(failure)
            aside = integrity.set_aside(directory, candidate)
            logging.warning("%s; set aside as %s, trying the next older checkpoint", failure, aside)
            damaged.append(failure)
        else:
            raise RunLoadError(f"no good checkpoint left in {directory}: {'; '.join(damaged)}")
    finally:
        manager.close()
    if damaged:
        logging.warning("loaded step %d, the newest good checkpoint", step)
    spec = model_spec(config.model)
    model = nnx.merge(spec.graphdef, params)
    return Run(
        name=os.path.basename(os.path.normpath(workdir)),
        config=config,
        model=model,
        tokenizer=load_tokenizer(config.data),
        step=int(step),
        config_hash=checkpoint.config_hash(config),
    )


def _restore_params(manager, directory: str, step: int):
    """(config, verified params) of one checkpoint step; CheckpointDamagedError names what is damaged."""
    step_dir = f"{directory}/{step}"
    integrity.check_files(step, step_dir)
    try:
        meta_args = ocp.args.Composite(**{checkpoint.META_ITEM: ocp.args.JsonRestore()})
        meta = manager.restore(step, args=meta_args)[checkpoint.META_ITEM]
        flat_config = meta["config"]
    except Exception as error:  # noqa: BLE001 - any failure to read the item is damage to it
        raise integrity.CheckpointDamagedError(step, f"{step_dir}/meta", integrity.describe(error)) from None
    config = config_from_flat(flat_config, step_dir)
    spec = model_spec(config.model)
    # Only the parameters are read (partial restore): the optimiser state stays on disk. orbax 0.12.8's
    # StandardRestore(strict=False) refuses a tree missing whole subtrees (opt_state, rng, step), PyTreeRestore
    # with partial_restore does not; the saved format is the same.
    item = {"params": spec.abstract_params}
    device = jax.sharding.SingleDeviceSharding(jax.devices()[0])
    restore_args = jax.tree.map(
        lambda leaf: ocp.ArrayRestoreArgs(sharding=device, global_shape=leaf.shape, dtype=leaf.dtype), item
    )
    try:
        restored = manager.restore(
            step,
            args=ocp.args.Composite(
                **{checkpoint.STATE_ITEM: ocp.args.PyTreeRestore(item, restore_args=restore_args, partial_restore=True)}
            ),
        )[checkpoint.STATE_ITEM]
    except Exception as error:  # noqa: BLE001
        raise integrity.CheckpointDamagedError(step, f"{step_dir}/state", integrity.describe(error)) from None
    if "fingerprints" in meta:
        integrity.verify_state(step, restored["params"], meta["fingerprints"], prefix=".params")
    return config, restored["params"]


def random_run(config: ml_collections.ConfigDict, *, seed: int = 0, name: str = "random") -> Run:
    """An untrained model of `config` (tests and smoke checks of the evaluation commands)."""
    return Run(
        name=name,
        config=config,
        model=build_model(config.model, rngs=nnx.Rngs(seed)),
        tokenizer=load_tokenizer(config.data),
        step=None,
        config_hash=checkpoint.config_hash(config),
    )


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _segment_logprobs(graphdef, params, tokens_bt, next_bt, state):
    """log p(next | tokens so far) for every position of one segment, the argmax, and the state after it."""
    logits_btv, state = nnx.merge(graphdef, params)(tokens_bt, state)
    logprobs_btv = jax.nn.log_softmax(logits_btv.astype(jnp.float32), axis=-1)
    picked_bt = jnp.take_along_axis(logprobs_btv, next_bt[..., None], axis=-1)[..., 0]
    return picked_bt, jnp.argmax(logprobs_btv, axis=-1), state


def _model_of(run_or_model) -> nnx.Module:
    return run_or_model.model if isinstance(run_or_model, Run) else run_or_model


def next_token_scores(
    run_or_model, tokens_bt, *, segment_len: int | None = None, state=None
) -> tuple[np.ndarray, np.ndarray, Any]:
    """(logprobs float32[B, T-1], argmax int32[B, T-1], final state): logprobs[b, t] = log p(tokens[b, t+1] | tokens[b, :t+1]).

    The sequence is streamed through the model in segments of `segment_len` tokens with the state carried, so a model
    with recurrent or cached state uses the whole prefix however long the document is (None: one segment).
    """
    model = _model_of(run_or_model)
    tokens_bt = np.asarray(tokens_bt, np.int32)
    batch, length = tokens_bt.shape
    if length < 2:
        raise ValueError(f"scoring needs at least 2 tokens per row, got shape {tokens_bt.shape}")
    inputs_bt, next_bt = tokens_bt[:, :-1], tokens_bt[:, 1:]
    segment_len = segment_len or inputs_bt.shape[1]
    graphdef, params = nnx.split(model)
    if state is None:
        state = model.init_state(batch, max_len=inputs_bt.shape[1])
    logprobs, argmaxes = [], []
    for start in range(0, inputs_bt.shape[1], segment_len):
        stop = start + segment_len
        picked, argmax, state = _segment_logprobs(
            graphdef, params, jnp.asarray(inputs_bt[:, start:stop]), jnp.asarray(next_bt[:, start:stop]), state
        )
        logprobs.append(np.asarray(picked))
        argmaxes.append(np.asarray(argmax))
    return np.concatenate(logprobs, axis=1), np.concatenate(argmaxes, axis=1), state


def next_token_logprobs(run_or_model, tokens_bt, *, segment_len: int | None = None, state=None):
    """(logprobs float32[B, T-1], final state); see `next_token_scores`."""
    logprobs, _, state = next_token_scores(run_or_model, tokens_bt, segment_len=segment_len, state=state)
    return logprobs, state


def _batches_of_equal_length(lengths: Sequence[int], batch_size: int) -> list[list[int]]:
    """Indices grouped by length, in batches of at most batch_size: no padding ever enters a model's state."""
    by_length: dict[int, list[int]] = {}
    for index, length in enumerate(lengths):
        by_length.setdefault(length, []).append(index)
    return [
        indices[i : i + batch_size]
        for _, indices in sorted(by_length.items())
        for i in range(0, len(indices), batch_size)
    ]


def loglikelihoods(
    run: Run,
    requests: Sequence[tuple[Sequence[int], Sequence[int]]],
    *,
    batch_size: int = 8,
    pad_multiple: int = 0,
) -> list[tuple[float, bool]]:
    """(sum of log p(continuation | context), whether greedy decoding reproduces the continuation) per request.

    Contexts must be non-empty (begin documents with the tokenizer's <eos> where there is none). Requests of equal
    total length share a batch, so models without a padding mask see exactly their own tokens.

    pad_multiple > 0 instead right-pads every row to the next multiple of pad_multiple and every batch to batch_size
    rows, so one compiled shape serves many lengths (one jit per distinct shape otherwise: hundreds on a benchmark).
    Tokens after a row's end cannot change a causal model's predictions before it (every model here is causal; the
    padding reaches only the final state, which is dropped), so the scores are the same up to float rounding.
    """
    for i, (context, continuation) in enumerate(requests):
        if not context or not continuation:
            raise ValueError(f"request {i}: context and continuation must both be non-empty")
    results: list[tuple[float, bool] | None] = [None] * len(requests)
    lengths = [len(c) + len(x) for c, x in requests]
    widths = [-(-n // pad_multiple) * pad_multiple for n in lengths] if pad_multiple > 0 else lengths
    for indices in _batches_of_equal_length(widths, batch_size):
        rows = batch_size if pad_multiple > 0 else len(indices)
        tokens_bt = np.full((rows, widths[indices[0]]), run.tokenizer.pad_id, np.int32)
        for row, i in enumerate(indices):
            tokens_bt[row, : lengths[i]] = list(requests[i][0]) + list(requests[i][1])
        logprobs, argmax, _ = next_token_scores(run, tokens_bt)
        for row, i in enumerate(indices):
            context_len = len(requests[i][0])
            target = tokens_bt[row, context_len : lengths[i]]
            span = slice(context_len - 1, lengths[i] - 1)
            results[i] = (float(logprobs[row, span].sum()), bool(np.array_equal(argmax[row, span], target)))
    return results  # type: ignore[return-value]


@functools.partial(jax.jit, static_argnames=("graphdef",))
def _segment_state(graphdef, params, tokens_bt, state):
    """The state after one segment (the logits are dead code under jit, so never computed)."""
    return nnx.merge(graphdef, params)(tokens_bt, state)[1]


@functools.partial(jax.jit, static_argnames=("graphdef", "max_new_tokens"))
def _greedy_from_state(graphdef, params, last_b, state, *, max_new_tokens):
    """Feed each sequence's last prompt token, then greedy tokens, one step at a time from the prefilled state."""

    def step(carry, _):
        token_b, state = carry
        logits_btv, state = nnx.merge(graphdef, params)(token_b[:, None], state)
        next_b = jnp.argmax(logits_btv[:, -1], axis=-1).astype(jnp.int32)
        return (next_b, state), next_b

    _, tokens_nb = jax.lax.scan(step, (last_b, state), None, length=max_new_tokens)
    return tokens_nb.T


def _streamed_greedy(model: nnx.Module, prompt_bt: np.ndarray, max_new_tokens: int, segment_len: int) -> np.ndarray:
    """Greedy decoding after a prefill in segments of `segment_len` tokens with the state carried: a long prompt never
    goes through the model in one piece (memory per segment; constant state for the attention-free models)."""
    graphdef, params = nnx.split(model)
    batch, prompt_len = prompt_bt.shape
    state = model.init_state(batch, max_len=prompt_len + max_new_tokens)
    for start in range(0, prompt_len - 1, segment_len):
        stop = min(start + segment_len, prompt_len - 1)
        state = _segment_state(graphdef, params, jnp.asarray(prompt_bt[:, start:stop]), state)
    last_b = jnp.asarray(prompt_bt[:, -1])
    return np.asarray(_greedy_from_state(graphdef, params, last_b, state, max_new_tokens=max_new_tokens))


def greedy_generate(
    run: Run,
    prompts: Sequence[Sequence[int]],
    max_new_tokens: int,
    *,
    batch_size: int = 8,
    segment_len: int | None = None,
) -> list[list[int]]:
    """Greedy continuations of `max_new_tokens` tokens, prompts of equal length batched together.

    With `segment_len`, prompts longer than it are prefilled in segments with the state carried (same tokens out).
    """
    outputs: list[list[int] | None] = [None] * len(prompts)
    for indices in _batches_of_equal_length([len(p) for p in prompts], batch_size):
        prompt_bt = np.array([list(prompts[i]) for i in indices], np.int32)
        if segment_len and prompt_bt.shape[1] > segment_len:
            continuation = _streamed_greedy(run.model, prompt_bt, max_new_tokens, segment_len)
        else:
            continuation = np.asarray(generate(run.model, prompt_bt, max_new_tokens))
        for row, i in enumerate(indices):
            outputs[i] = continuation[row].tolist()
    return outputs  # type: ignore[return-value]


def define_common_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    """Flags every evaluation command takes (on `flag_values`: tests parse a command's flags in a FlagValues of their
    own, so several commands' flags can live in one process)."""
    fv = flag_values
    flags.DEFINE_string(
        "workdir", None, "Training run directory (its checkpoints/ are read).", required=True, flag_values=fv
    )
    flags.DEFINE_integer("step", None, "Checkpoint step to evaluate (default: the latest).", flag_values=fv)
    flags.DEFINE_string(
        "output_dir", "eval", "Results go to <output_dir>/<run name>/<command>-<timestamp>.json.", flag_values=fv
    )
    flags.DEFINE_string(
        "checkpoint_dir",
        "",
        "Where the run's checkpoints are (a path or a gs:// / s3:// URL); default: the checkpoint.directory of "
        "<workdir>/config.json, else <workdir>/checkpoints.",
        flag_values=fv,
    )
    flags.DEFINE_integer("batch_size", 8, "Sequences per forward pass.", flag_values=fv)
    flags.DEFINE_integer("seed", 0, "Seed of every random choice the evaluation makes.", flag_values=fv)


def load_run_from_flags(fv: flags.FlagValues) -> Run:
    """The run named by the common flags (--workdir, --step, --checkpoint_dir)."""
    return load_run(fv.workdir, fv.step, checkpoint_dir=fv.checkpoint_dir)


def evaluate_from_flags(fv: flags.FlagValues, evaluate: Callable[..., Any], *args, **kwargs):
    """`evaluate(run, *args, output_dir=--output_dir, record_args={workdir, step}, **kwargs)` on the run the common flags
    name: the shared part of every command's run_from_flags."""
    run = load_run_from_flags(fv)
    return evaluate(
        run, *args, output_dir=fv.output_dir, record_args={"workdir": fv.workdir, "step": fv.step}, **kwargs
    )


def command_main(
    define_flags: Callable[[flags.FlagValues], None],
    run_from_flags: Callable[[flags.FlagValues], tuple[dict, pathlib.Path]],
    format_results: Callable[[dict], str],
) -> None:
    """The `python -m eval.<command>` entry point: the command's flags on absl's global FlagValues, parsed by app.run;
    then run_from_flags, the results summary and the path of the results file printed.

    --help lists the key flags of the main module only; the common flags (and eval/grid.py's) are defined in other
    modules, so every flag define_flags adds is made a key flag of the main module.

    Logging is the training command's (hope_jax/log_setup.py): our INFO lines on stdout, third-party ones (orbax's
    dozens per checkpoint restore) from WARNING up only.
    """

    def main(argv: Sequence[str]) -> None:
        if len(argv) > 1:
            raise app.UsageError(f"unexpected arguments: {' '.join(argv[1:])}")
        log_setup.configure_logging()
        from eval.tasks.zeroshot_tasks import TaskDataError  # a task file missing or unreadable (and --download's)

        try:
            results, path = run_from_flags(flags.FLAGS)
        except (RunLoadError, TaskDataError) as error:
            # Bad input the message names (the workdir, a task file and how to get it); a traceback would bury it.
            print(f"error: {type(error).__name__}: {error}", file=sys.stderr, flush=True)
            sys.exit(1)
        print(format_results(results))
        print(f"wrote {path}")

    known = set(flags.FLAGS)
    define_flags(flags.FLAGS)
    for name in sorted(set(flags.FLAGS) - known):
        flags.FLAGS.register_key_flag_for_module(sys.argv[0], flags.FLAGS[name])
    app.run(main)


def run_command(
    define_flags: Callable[[flags.FlagValues], None],
    run_from_flags: Callable[[flags.FlagValues], tuple[dict, pathlib.Path]],
    argv: Sequence[str],
) -> tuple[dict, pathlib.Path]:
    """A command run in this process with a FlagValues of its own (argv[0] is the program name), as tests and notebooks
    run it: several commands' flags can live in one process. Returns run_from_flags's (results, path).

    Third-party loggers are held at WARNING as in `command_main`; the handlers (pytest's, a notebook's) stay as they are.
    """
    log_setup.quiet_third_party()
    fv = flags.FlagValues()
    define_flags(fv)
    fv(list(argv))
    return run_from_flags(fv)
