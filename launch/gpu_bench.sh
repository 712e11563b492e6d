#!/usr/bin/env bash
# Every GPU benchmark of the project in one go, for a session that has one GPU for a few minutes:
#
#   bash launch/gpu_bench.sh OUT_DIR [seconds per step, default 300]
#
# 1. attention: xla vs cuDNN flash attention (model.attention_impl), numerics against float32 and fwd+bwd time;
# 2. train at seq 2048 and 8192 (32,768 tokens/step): Transformer++ (xla attention), Transformer++ with cuDNN
#    attention ('flash') and HOPE, parameter-matched (configs/bench_gpu.py);
# 3. generate: tokens/s and memory per generated token, HOPE's recurrent state vs the Transformer++'s KV cache;
# 4. one profiled HOPE train step (top kernels by time).
# Each step runs under its own time limit, writes OUT_DIR/<step>.json and appends its output to OUT_DIR/bench.log,
# so a step that runs out of time or fails leaves the others' results. The card, driver and versions go first.
# Measured on an H200 (BUILD_NOTES "Benchmarks", third session): attention and generate take ~25 s and ~100 s; the
# HOPE train step did not finish compiling within 150 s (2 layers) or ~180 s (1 layer), so give train steps 300+ s,
# and try XLA_FLAGS=--xla_gpu_autotune_level=0 (fewer GEMM autotuning runs) if compile time is the limit.
set -u
out=${1:?usage: bash launch/gpu_bench.sh OUT_DIR [seconds per step]}
limit=${2:-300}
python=${PYTHON:-python3}
mkdir -p "$out"
log="$out/bench.log"
export PYTHONUNBUFFERED=1

step() {  # step NAME SECONDS ARGS... : one bench subcommand under its own limit
  local name=$1 seconds=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${seconds}s): python -m hope_jax.bench $*" | tee -a "$log"
  timeout "$seconds" "$python" -m hope_jax.bench "$@" --json="$out/$name.json" >>"$log" 2>&1
  echo "== $name rc $? ($(date -u +%H:%M:%S))" | tee -a "$log"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
} 2>&1 | tee -a "$log"

step attention 60 attention --impls=xla,cudnn --seq_lens=2048,8192 --tokens=32768 --heads=12 --head_dim=64
train=(train --config=configs/bench_gpu.py --variants=transformer,flash=transformer,hope --match_params=hope
  --set=flash:model.attention_impl=cudnn --tokens_per_step=32768 --devices=1 --warmup=2 --steps=3 --repeats=3)
step train_2048 "$limit" "${train[@]}" --seq_lens=2048
step generate "$limit" generate --config=configs/bench_gpu.py --variants=transformer,hope --contexts=2048,8192 \
  --new_tokens=64 --batch=1 --repeats=3
step train_8192 "$limit" "${train[@]}" --seq_lens=8192
# One traced HOPE step (jax.profiler; the top kernels by time go to the log); the trace itself stays in /tmp.
step profile_hope "$limit" train --config=configs/bench_gpu.py --variants=hope --seq_lens=2048 --tokens_per_step=32768 \
  --devices=1 --warmup=1 --steps=1 --repeats=1 --profile=/tmp/hope_jax_gpu_trace
grep -h "^|" "$log"
