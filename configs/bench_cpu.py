"""Benchmark pair for a CPU: HOPE and Transformer++ at the same width and depth, parameter-matched.

    python -m hope_jax.bench train --config=configs/bench_cpu.py --variants=transformer,hope --match_params=hope \
        --seq_lens=1024,2048,4096,8192 --tokens_per_step=8192 --devices=1

d_model 64, 2 layers, 1 head of 64 (the presets' head_dim), vocabulary 1024 so that the blocks, not the LM head,
carry the cost. HOPE keeps its preset structure (HOPE_SPEC §7, DESIGN D8): memories with chunk 16, CMS levels with
periods lm 512 / lm 2048 / frozen, each level as wide as the transformer's matched SwiGLU share (`--match_params=hope` sets the
transformer's mlp_hidden). The model is tiny because one 8192-token step of a 10M-parameter HOPE is ~1.6 TFLOP
(registry.flops_per_token), minutes on a shared 2-core CPU (~35-50 GFLOP/s matmul peak, a fraction of it under load);
d_model 128 × 4 layers measured 60 s per HOPE step and 154 s to compile. The ratios are what this tier measures.
Compute in float32 (bfloat16 matmuls are emulated on CPUs).
"""

from configs import base


def get_config():
    config = base.get_config()
    model = config.model
    model.name = "hope"
    model.vocab_size = 1024
    model.d_model = 64
    model.n_layers = 2
    model.n_heads = 1
    model.mlp_hidden = 192
    model.max_seq_len = 8192
    model.compute_dtype = "float32"
    model.cms.hidden = (64, 64, 64)
    model.memory.eta_max = 0.05  # a small inner step keeps the random-token benchmark finite; speed does not depend on it

    config.train.seq_len = 1024
    config.train.global_batch_size = 8
    config.train.num_steps = 1000
    config.checkpoint.enabled = False
    config.logging.tensorboard = False
    return config
