"""Benchmark pair for one GPU: HOPE and Transformer++ at the 160M presets' width, 2 layers, bfloat16, parameter-matched.

    python -m hope_jax.bench train --config=configs/bench_gpu.py --variants=transformer,hope --match_params=hope \
        --seq_lens=2048,8192 --tokens_per_step=32768 --devices=1
    bash launch/gpu_bench.sh runs/gpu_bench          # every GPU benchmark of the project in one go

The layer is the hope-160m / transformer-160m presets' (d_model 768, 12 heads of 64, HOPE CMS levels 1024 wide with
periods lm 512 / lm 2048 / frozen, DESIGN D8), the vocabulary the tiers' 32,000. Two layers instead of twelve: the layers are
not scanned, so compile time grows with depth (a HOPE layer is hundreds of chunk-scan ops), and a GPU session's device
time is minutes; cost per token per layer, which the ratios compare, does not depend on depth. bfloat16 compute
(cuDNN attention needs it), float32 master weights.
"""

from configs import base
from hope_jax.models.config import model_preset


def get_config():
    config = base.get_config()
    config.model = model_preset("hope-160m")
    config.model.n_layers = 2
    config.model.max_seq_len = 8192
    config.model.compute_dtype = "bfloat16"

    config.train.seq_len = 2048
    config.train.global_batch_size = 16
    config.train.matmul_precision = "default"
    config.checkpoint.enabled = False
    config.logging.tensorboard = False
    return config
