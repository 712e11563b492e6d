"""In-context recall on a CPU (issue 17): HOPE's memory answers questions from facts stated earlier in the same
document. HOPE, its ablation without in-context learning, and a parameter-matched Transformer++ on the same tokens
(README "In-context recall" has the three numbers).

    python -m hope_jax.main --config=configs/recall.py --workdir=runs/recall
    python -m eval.recall --workdir=runs/recall
    python -m hope_jax.main --config=configs/recall.py:no_memory --workdir=runs/recall_no_memory
    python -m hope_jax.main --config=configs/recall.py:transformer --workdir=runs/recall_transformer

Hardware: any CPU (measured on 2 cores: README "In-context recall", BUILD_NOTES "In-context recall").

Data: the built-in corpus's dense one-person documents ("Ann lives in Paris . Ann likes tea . Ann has a red cat .
where does Ann live ? Ann lives in Paris . ..."): every fact is asked, and each answer is the only word of its kind
in the document, so answering it needs the document's facts and nothing else (no NAME to match).

Variants (`configs/recall.py:<variant>`):
- `hope` (default): one HOPE block, d 128, whose M_memory is a matrix on 4-token chunks (memory.memory_depth 1,
  HOPE_SPEC §5.3, the form with which a Titans LMM learns this task) regressing onto the values themselves
  (memory.memory_target 'value', §5.1's shared target): with E21's self-generated target M(v) the same model never
  read the facts (BUILD_NOTES "In-context recall").
- `no_memory`: the same model with every in-context learner off: the mixer's memories never write (memory.eta_max 0)
  and the CMS in-context level is its plain MLP (cms.inner_lr 0).
- `transformer`: a one-block Transformer++ with the MLP widened to HOPE's parameter count.
"""

from configs import smoke, smoke_transformer

VARIANTS = ("hope", "no_memory", "transformer")
# The Transformer++'s MLP width that matches the HOPE variant's parameter count (tests/test_configs.py checks it).
TRANSFORMER_MLP_HIDDEN = 612


def _recall_setup(config):
    builtin = config.data.builtin
    builtin.max_fillers = 0
    builtin.ask_all_facts = True
    builtin.min_people = builtin.max_people = 1
    config.model.n_layers = 1
    config.model.max_seq_len = 512
    config.train.seq_len = 256
    config.train.global_batch_size = 4
    config.train.num_steps = 2000
    config.train.log_every_steps = 100
    levels = config.optim.levels.default
    levels.lr = 3e-3
    levels.warmup_steps = 30
    levels.decay_steps = config.train.num_steps
    config.checkpoint.every_steps = 500
    config.checkpoint.max_to_keep = 4
    config.eval.every_steps = 500
    return config


def get_config(variant: str = "hope"):
    if variant not in VARIANTS:
        raise ValueError(f"configs/recall.py: unknown variant {variant!r}; choose one of {', '.join(VARIANTS)}")
    if variant == "transformer":
        config = _recall_setup(smoke_transformer.get_config())
        config.model.mlp_hidden = TRANSFORMER_MLP_HIDDEN
        return config
    config = _recall_setup(smoke.get_config())
    # The CMS its 0.725 recall was measured with (README): a 'local' in-context level at the memories' chunk size.
    config.model.cms.periods = (16, 0)
    config.model.cms.objectives = ("local", "frozen")
    config.model.memory.memory_depth = 1
    # M_memory on 4-token chunks (its reads see writes 4 tokens back, not 16): held-out loss 0.71 against 0.81 at
    # chunk 16 after 2,000 steps here; the generators keep 16.
    config.model.memory.chunk_size = 4
    config.model.memory.memory_target = "value"
    if variant == "no_memory":
        config.model.memory.eta_max = 0.0
        config.model.cms.inner_lr = 0.0
    return config
