"""lm-evaluation-harness drives a hope_jax checkpoint: the model type `hope_jax` (DESIGN D12).

    python -m eval.lm_eval_adapter --model hope_jax --model_args workdir=runs/hope_760m[,step=N] \\
        --tasks piqa,hellaswag --batch_size 8 --output_path eval/lm_eval

takes exactly the arguments of the `lm_eval` command: it registers `hope_jax` and hands over to lm-eval's own command
line. (lm-eval finds its models through a fixed table; a model defined outside its package exists only once some code
has registered it, so the plain `lm_eval` executable cannot know `hope_jax`.) From Python, `register()` and then
`lm_eval.simple_evaluate(model="hope_jax", model_args="workdir=...", ...)`, or pass `HopeJaxLM(run=...)` itself.

lm-eval is optional (not in requirements.txt; tested with lm-eval 0.4.13) and is imported only when the adapter is
used: importing this module does not need it. The model side is `HarnessRequests`, which has no lm-eval dependency:
- loglikelihood: (context, continuation) text pairs, tokenized the way the harness tokenizes for causal models
  (eval.zeroshot.encode_pair), scored in batches through the stateful API;
- loglikelihood_rolling: a document's log-likelihood conditioned on <eos>, streamed through the model in segments
  of the run's training length with the state carried, so every token is conditioned on the whole document before it
  (the harness's sliding windows exist for models whose context is bounded; here the state carries the context);
- generate_until: greedy decoding through the stateful API (long prompts prefilled in segments), cut at the first stop
  string or <eos>; the prompt is never truncated. Sampling is refused.

The network: every built-in lm-eval task (piqa, hellaswag, arc_*, winogrande, social_iqa, boolq, lambada_openai and
the rest alike) loads its data with `datasets.load_dataset` from the Hugging Face Hub, so the first run of a task
needs the network; later runs read the local cache (~/.cache/huggingface/datasets, or $HF_HOME / $HF_DATASETS_CACHE).
For an offline machine, fill the cache where the network is, without a model:

    python -c "from lm_eval.tasks import TaskManager, get_task_dict; get_task_dict(['piqa', 'hellaswag'], TaskManager())"

then copy the cache over (same HF_HOME) and run with HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1, so that nothing is
fetched and a task that is not cached fails at once instead of waiting on the network. Without the harness,
`python -m eval.zeroshot` reads the same eight tasks from local JSONL files (its --download fetches them).
"""

from __future__ import annotations

import sys
from collections.abc import Sequence
from typing import Any

import numpy as np

MODEL_NAME = "hope_jax"
DEFAULT_MAX_GEN_TOKS = 256  # the harness's default for generate_until


class HarnessRequests:
    """Answers lm-eval's three request types for one hope_jax run (plain Python values in and out)."""

    def __init__(self, run, *, batch_size: int = 8, max_gen_toks: int = DEFAULT_MAX_GEN_TOKS) -> None:
        if batch_size < 1:
            raise ValueError(f"batch_size must be at least 1, got {batch_size}")
        self.run = run
        self.batch_size = batch_size
        self.max_gen_toks = max_gen_toks

    def loglikelihood(self, pairs: Sequence[tuple[str, str]]) -> list[tuple[float, bool]]:
        from eval.zeroshot import model_loglikelihood_fn

        return model_loglikelihood_fn(self.run, batch_size=self.batch_size)(list(pairs))

    def loglikelihood_rolling(self, texts: Sequence[str]) -> list[float]:
        from eval import common

        tokenizer = self.run.tokenizer
        segment_len = self.run.config.train.seq_len
        documents = [[tokenizer.eos_id, *tokenizer.encode(text)] for text in texts]
        # Rows are right-padded to whole segments and batches filled to batch_size, so every document of a length
        # class shares one compiled segment shape; the padding comes after the last scored token.
        widths = [-(-len(tokens) // segment_len) * segment_len + 1 for tokens in documents]
        totals = [0.0] * len(documents)
        by_width: dict[int, list[int]] = {}
        for index, width in enumerate(widths):
            by_width.setdefault(width, []).append(index)
        for width, indices in sorted(by_width.items()):
            for start in range(0, len(indices), self.batch_size):
                batch = indices[start : start + self.batch_size]
                tokens_bt = np.full((self.batch_size, width), tokenizer.pad_id, np.int32)
                for row, index in enumerate(batch):
                    tokens_bt[row, : len(documents[index])] = documents[index]
                logprobs, _ = common.next_token_logprobs(self.run, tokens_bt, segment_len=segment_len)
                for row, index in enumerate(batch):
                    totals[index] = float(logprobs[row, : len(documents[index]) - 1].sum())
        return totals

    def generate_until(self, requests: Sequence[tuple[str, dict[str, Any]]]) -> list[str]:
        from eval import common

        tokenizer = self.run.tokenizer
        prompts, stops, budgets = [], [], []
        for context, gen_kwargs in requests:
            gen_kwargs = dict(gen_kwargs or {})
            if gen_kwargs.pop("do_sample", False) or float(gen_kwargs.pop("temperature", 0.0) or 0.0) > 0.0:
                raise ValueError(f"{MODEL_NAME} decodes greedily only; got generation arguments {gen_kwargs}")
            until = gen_kwargs.pop("until", None) or []
            stops.append([until] if isinstance(until, str) else list(until))
            budgets.append(int(gen_kwargs.pop("max_gen_toks", self.max_gen_toks)))
            prompts.append(list(tokenizer.encode(context)) or [tokenizer.eos_id])
        outputs: list[str] = [""] * len(requests)
        for budget in sorted(set(budgets)):
            indices = [i for i, b in enumerate(budgets) if b == budget]
            generated = common.greedy_generate(
                self.run,
                [prompts[i] for i in indices],
                budget,
                batch_size=self.batch_size,
                segment_len=self.run.config.train.seq_len,  # long prompts are prefilled in segments, state carried
            )
            for index, tokens in zip(indices, generated):
                if tokenizer.eos_id in tokens:
                    tokens = tokens[: tokens.index(tokenizer.eos_id)]
                outputs[index] = cut_at_stops(tokenizer.decode(tokens), stops[index])
        return outputs


def cut_at_stops(text: str, stops: Sequence[str]) -> str:
    """`text` up to (not including) the earliest occurrence of any stop string."""
    cut = len(text)
    for stop in stops:
        if stop:
            found = text.find(stop)
            if found != -1:
                cut = min(cut, found)
    return text[:cut]


def _build_lm_class():
    """The lm_eval.api.model.LM subclass; built on first use so that importing this module never imports lm_eval."""
    from lm_eval.api.model import LM

    class HopeJaxLM(LM):
        """lm-eval model `hope_jax`: model_args workdir=<run dir>[,step=N][,max_gen_toks=N]."""

        def __init__(
            self,
            workdir: str | None = None,
            step: int | str | None = None,
            batch_size: int | str = 8,
            max_gen_toks: int | str = DEFAULT_MAX_GEN_TOKS,
            run=None,
            **harness_kwargs,
        ) -> None:
            super().__init__()
            # The harness passes device / max_batch_size to every model; JAX places arrays itself.
            unknown = set(harness_kwargs) - {"device", "max_batch_size"}
            if unknown:
                raise TypeError(f"{MODEL_NAME}: unknown model arguments {sorted(unknown)}")
            if run is None:
                if not workdir:
                    raise ValueError(f"{MODEL_NAME} needs model_args workdir=<training run directory>")
                from eval import common

                run = common.load_run(str(workdir), None if step in (None, "") else int(step))
            if str(batch_size).startswith("auto"):
                raise ValueError(f"{MODEL_NAME} needs an integer batch_size, got {batch_size!r}")
            self.requests = HarnessRequests(run, batch_size=int(batch_size), max_gen_toks=int(max_gen_toks))

        @property
        def run(self):
            return self.requests.run

        def loglikelihood(self, requests, disable_tqdm: bool = False) -> list[tuple[float, bool]]:
            return self.requests.loglikelihood([request.args for request in requests])

        def loglikelihood_rolling(self, requests, disable_tqdm: bool = False) -> list[float]:
            return self.requests.loglikelihood_rolling([request.args[0] for request in requests])

        def generate_until(self, requests, disable_tqdm: bool = False) -> list[str]:
            return self.requests.generate_until([request.args for request in requests])

    HopeJaxLM.__qualname__ = "HopeJaxLM"  # found by name through the module's __getattr__ (pickle, registry)
    return HopeJaxLM


_LM_CLASS = None


def __getattr__(name: str):
    # `HopeJaxLM` is built on first access (PEP 562), which is also how lm-eval's registry resolves the lazy
    # "eval.lm_eval_adapter:HopeJaxLM" entry that register() leaves.
    global _LM_CLASS
    if name == "HopeJaxLM":
        if _LM_CLASS is None:
            _LM_CLASS = _build_lm_class()
        return _LM_CLASS
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def register() -> None:
    """Make `hope_jax` a model name lm-eval knows (idempotent)."""
    import lm_eval.models  # noqa: F401  (lm-eval fills its table of built-in models only into an empty registry)
    from lm_eval.api.registry import model_registry

    if MODEL_NAME not in model_registry:
        model_registry.register(MODEL_NAME, target="eval.lm_eval_adapter:HopeJaxLM")


def main(argv: Sequence[str] | None = None) -> None:
    """lm-eval's command line with `hope_jax` registered; argv as for `lm_eval` (default: this process's)."""
    try:
        from lm_eval.__main__ import cli_evaluate
    except ImportError as error:
        raise SystemExit(
            f"lm-eval is not installed (pip install -r requirements-eval.txt; tested with 0.4.13): {error}"
        ) from error
    register()
    if argv is not None:
        sys.argv = [sys.argv[0], *argv]
    cli_evaluate()


if __name__ == "__main__":
    main()
