"""Text sampled from a trained run: greedy, or temperature with top-k / top-p, the prompt streamed through the state.

    python -m eval.sample --workdir=runs/smoke --prompt="the old cat" --max_new_tokens=32 --temperature=0.8 --top_p=0.9

Every prompt starts a document (the tokenizer's <eos> goes first, as in training), and all but its last token are
prefilled in segments of --segment_len tokens with the state carried (recurrent fast weights / KV cache), so a long
prompt never needs one giant forward pass; then one token per step from that state. --temperature=0 is greedy decoding
(the tokens of eval.common.greedy_generate). Sample s of prompt p draws from its own key, fold_in(seed, p, s): the same
seed gives the same text whatever --batch_size or --stream. --stream prints tokens as they are generated. With
--stop_at_eos (default) a continuation ends before its first <eos>. Writes <output_dir>/<run>/sample-<timestamp>.json.
"""

from __future__ import annotations

import dataclasses
import functools
import pathlib
import sys

import jax
import jax.numpy as jnp
import numpy as np
from absl import flags
from flax import nnx

from eval import common
from eval.results import write_results
from hope_jax.models.generate import decode, sample_token

COMMAND = "sample"
DECODE_CONTEXT = 16  # prompt tokens decoded with a continuation, so its first piece gets its leading space right

# Flag name -> (check, what it must be): the flag validators and SampleArgs both use them.
CHECKS = {
    "max_new_tokens": (lambda v: v >= 1, "must be ≥ 1"),
    "temperature": (lambda v: v >= 0, "must be ≥ 0 (0: greedy)"),
    "top_p": (lambda v: 0 < v <= 1, "must be in (0, 1] (1: no nucleus filter)"),
    "top_k": (lambda v: v >= 0, "must be ≥ 0 (0: no top-k filter)"),
    "num_samples": (lambda v: v >= 1, "must be ≥ 1"),
    "segment_len": (lambda v: v >= 0, "must be ≥ 0 (0: the run's train.seq_len)"),
    "batch_size": (lambda v: v >= 1, "must be ≥ 1"),
}


@dataclasses.dataclass(kw_only=True)
class SampleArgs:
    prompts: list[str]
    max_new_tokens: int = 64
    temperature: float = 0.0
    top_p: float = 1.0
    top_k: int = 0
    num_samples: int = 1
    seed: int = 0
    segment_len: int = 0
    batch_size: int = 8
    stream: bool = False
    stop_at_eos: bool = True

    def __post_init__(self):
        for name, (ok, must) in CHECKS.items():
            if not ok(getattr(self, name)):
                raise ValueError(f"--{name} {must}, got {getattr(self, name)}")
        if not self.prompts:
            raise ValueError("no prompt: give --prompt (repeatable) or --prompt_file")


@functools.partial(jax.jit, static_argnames=("graphdef", "temperature", "top_k", "top_p", "vocab_size"))
def _decode(graphdef, params, token_b, state, step_rngs_nb, *, temperature, top_k, top_p, vocab_size):
    """generate.decode with one key per row: (int32[B, N] tokens after token_b, final state), N = len(step_rngs_nb).

    Sampling never draws an id ≥ vocab_size (rows padding the embedding beyond the tokenizer); greedy is the plain
    argmax, as in greedy_generate."""

    def sample_rows(logits_bv, rngs_b):
        if temperature > 0:
            logits_bv = jnp.where(jnp.arange(logits_bv.shape[-1]) < vocab_size, logits_bv, -jnp.inf)

        def one(logits_v, rng):
            return sample_token(logits_v[None], rng, temperature=temperature, top_k=top_k, top_p=top_p)[0]

        return jax.vmap(one)(logits_bv, rngs_b)

    return decode(graphdef, params, token_b, state, step_rngs_nb, sample_rows)


def prefill(model: nnx.Module, prompt_bt: np.ndarray, *, max_new_tokens: int, segment_len: int):
    """(graphdef, params, state after all but the last prompt token), fed in segments of segment_len (0: one)."""
    graphdef, params = nnx.split(model)
    batch, prompt_len = prompt_bt.shape
    state = model.init_state(batch, max_len=prompt_len + max_new_tokens)
    segment_len = segment_len or max(prompt_len - 1, 1)
    for start in range(0, prompt_len - 1, segment_len):
        segment = jnp.asarray(prompt_bt[:, start : min(start + segment_len, prompt_len - 1)])
        state = common._segment_state(graphdef, params, segment, state)
    return graphdef, params, state


def sample_tokens(
    model: nnx.Module,
    prompt_bt,
    keys_b: jax.Array,
    args: SampleArgs,
    *,
    vocab_size: int | None = None,
    on_token=None,
) -> np.ndarray:
    """int32[B, max_new_tokens] continuations of int32[B, P] prompts, row b drawing from keys_b[b] (and never an id
    ≥ vocab_size, default: any of the model's).

    `on_token(int32[B])` is called after every step (the step-at-a-time loop, one compiled step); without it the whole
    continuation is one `lax.scan`."""
    prompt_bt = np.asarray(prompt_bt, np.int32)
    graphdef, params, state = prefill(
        model, prompt_bt, max_new_tokens=args.max_new_tokens, segment_len=args.segment_len
    )
    step_rngs_nb = jax.vmap(lambda key: jax.random.split(key, args.max_new_tokens))(keys_b).T
    run_decode = functools.partial(
        _decode,
        graphdef,
        params,
        temperature=float(args.temperature),
        top_k=int(args.top_k),
        top_p=float(args.top_p),
        vocab_size=int(vocab_size or 2**31 - 1),
    )
    token_b = jnp.asarray(prompt_bt[:, -1])
    if on_token is None:
        return np.asarray(run_decode(token_b, state, step_rngs_nb)[0])
    steps = []
    for i in range(args.max_new_tokens):
        tokens_b1, state = run_decode(token_b, state, step_rngs_nb[i : i + 1])
        token_b = tokens_b1[:, 0]
        steps.append(np.asarray(token_b))
        if on_token(steps[-1]) is False:
            break
    return np.stack(steps, axis=1)


def continuation_text(tokenizer, prompt_ids, ids) -> str:
    """The text `ids` add after the prompt (decoded with the prompt's tail, so spacing is what the tokenizer makes)."""
    # Ids the tokenizer does not have (a padded embedding's, greedy only) decode as <unk>, as scoring.decode_generated.
    unknown = getattr(tokenizer, "unk_id", None)
    ids = [i for i in (int(i) if int(i) < tokenizer.vocab_size else unknown for i in ids) if i is not None]
    tail = list(prompt_ids[-DECODE_CONTEXT:])
    before, after = tokenizer.decode(tail), tokenizer.decode(tail + ids)
    return after[len(before) :] if after.startswith(before) else tokenizer.decode(ids)


def _cut_at_eos(ids: list[int], eos_id: int) -> list[int]:
    return ids[: ids.index(eos_id)] if eos_id in ids else ids


class _Printer:
    """Prints one continuation as it grows; stops (returns False) after <eos> when asked to."""

    def __init__(self, tokenizer, prompt_ids, args: SampleArgs, out):
        self.tokenizer, self.prompt_ids, self.args, self.out = tokenizer, prompt_ids, args, out
        self.ids: list[int] = []
        self.printed = ""

    def __call__(self, token_b) -> bool:
        token = int(token_b[0])
        if self.args.stop_at_eos and token == self.tokenizer.eos_id:
            return False
        self.ids.append(token)
        text = continuation_text(self.tokenizer, self.prompt_ids, self.ids)
        # Held back while the text ends in an incomplete character or an earlier piece changed.
        if not text.endswith("\ufffd") and text.startswith(self.printed):
            self.out.write(text[len(self.printed) :])
            self.out.flush()
            self.printed = text
        return True


def run_sample(
    run: common.Run, args: SampleArgs, *, output_dir: str = "eval", record_args: dict | None = None, out=None
):
    """Sample every prompt num_samples times; write the results JSON. Returns (results, path)."""
    out = out or sys.stdout
    tokenizer = run.tokenizer
    segment_len = args.segment_len or int(run.config.train.seq_len)
    args = dataclasses.replace(args, segment_len=segment_len)
    root = jax.random.key(args.seed)
    samples = []
    for p, prompt in enumerate(args.prompts):
        prompt_ids = [tokenizer.eos_id] + tokenizer.encode(prompt)
        keys = jax.vmap(lambda s, p=p: jax.random.fold_in(jax.random.fold_in(root, p), s))(jnp.arange(args.num_samples))
        if args.stream:
            out.write(f"=== prompt {p}: {prompt}\n")
            rows = []
            for s in range(args.num_samples):
                out.write(f"--- sample {s}:\n{prompt}")
                printer = _Printer(tokenizer, prompt_ids, args, out)
                rows.append(
                    sample_tokens(
                        run.model,
                        [prompt_ids],
                        keys[s : s + 1],
                        args,
                        vocab_size=tokenizer.vocab_size,
                        on_token=printer,
                    )[0]
                )
                out.write("\n")
        else:
            rows = [
                row
                for start in range(0, args.num_samples, args.batch_size)
                for row in sample_tokens(
                    run.model,
                    [prompt_ids] * len(keys[start : start + args.batch_size]),
                    keys[start : start + args.batch_size],
                    args,
                    vocab_size=tokenizer.vocab_size,
                )
            ]
        for s, row in enumerate(rows):
            ids = [int(t) for t in row]
            if args.stop_at_eos:
                ids = _cut_at_eos(ids, tokenizer.eos_id)
            samples.append(
                {
                    "prompt_index": p,
                    "sample": s,
                    "prompt": prompt,
                    "prompt_ids": prompt_ids,
                    "ids": ids,
                    "text": continuation_text(tokenizer, prompt_ids, ids),
                    "stopped_at_eos": len(ids) < args.max_new_tokens,
                }
            )
    results = {"samples": samples, "streamed": args.stream}
    path = write_results(run, COMMAND, args, results, output_dir=output_dir, record_args=record_args)
    return results, path


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
    fv = flag_values
    common.define_common_flags(fv)
    flags.DEFINE_multi_string("prompt", [], "A prompt (repeatable: each is sampled).", flag_values=fv)
    flags.DEFINE_multi_string("prompt_file", [], "A file whose whole text is one prompt (repeatable).", flag_values=fv)
    flags.DEFINE_integer("max_new_tokens", 64, "Tokens generated per sample.", flag_values=fv)
    flags.DEFINE_float("temperature", 0.0, "Softmax temperature; 0: greedy decoding.", flag_values=fv)
    flags.DEFINE_float("top_p", 1.0, "Nucleus sampling: the smallest set of tokens reaching this mass.", flag_values=fv)
    flags.DEFINE_integer("top_k", 0, "Sample among the k most likely tokens only (0: all).", flag_values=fv)
    flags.DEFINE_integer("num_samples", 1, "Samples per prompt.", flag_values=fv)
    flags.DEFINE_integer(
        "segment_len", 0, "The prompt is prefilled in segments of this many tokens; 0: train.seq_len.", flag_values=fv
    )
    flags.DEFINE_bool("stream", False, "Print tokens as they are generated (one step per call).", flag_values=fv)
    flags.DEFINE_bool("stop_at_eos", True, "A continuation ends before its first <eos>.", flag_values=fv)
    for name, (ok, must) in CHECKS.items():
        flags.register_validator(name, ok, message=f"--{name} {must}", flag_values=fv)


def run_from_flags(fv: flags.FlagValues):
    prompts = list(fv.prompt) + [pathlib.Path(f).read_text() for f in fv.prompt_file]
    names = ["max_new_tokens", "temperature", "top_p", "top_k", "num_samples", "seed", "segment_len", "batch_size"]
    args = SampleArgs(
        prompts=prompts, stream=fv.stream, stop_at_eos=fv.stop_at_eos, **{name: fv[name].value for name in names}
    )
    return common.evaluate_from_flags(fv, run_sample, args)


def format_samples(results: dict) -> str:
    if results["streamed"]:
        return f"{len(results['samples'])} sample(s) streamed above"
    lines, last_prompt = [], None
    for sample in results["samples"]:
        if sample["prompt_index"] != last_prompt:
            lines.append(f"=== prompt {sample['prompt_index']}: {sample['prompt']}")
            last_prompt = sample["prompt_index"]
        lines += [f"--- sample {sample['sample']}:", sample["prompt"] + sample["text"]]
    return "\n".join(lines)


if __name__ == "__main__":
    common.command_main(define_flags, run_from_flags, format_samples)
