#!/usr/bin/env bash
# Every GPU benchmark of the project in one go, for a session that has one GPU for a few minutes:
#
#   bash launch/gpu_bench.sh OUT_DIR [seconds per step, default 300]
#   STEPS="kernels train" bash launch/gpu_bench.sh OUT_DIR 240       # a subset, in this order (a 15-minute slot)
#
# Steps (default: all, in this order):
#   kernels: the Pallas memory kernels (model.memory.kernel=pallas) against the XLA path on this GPU: Triton compile,
#     differences, fwd and fwd+bwd times (python -m hope_jax.kernels.check; hope_jax/kernels/README.md);
#   attention: xla vs cuDNN flash attention (model.attention_impl), numerics against float32 and fwd+bwd time;
#   train: seq 2048 and 8192 (32,768 tokens/step): Transformer++ (xla attention), Transformer++ with cuDNN attention
#     ('flash'), HOPE and HOPE on the Pallas kernels ('hope_pallas'), parameter-matched (configs/bench_gpu.py). The steps are first compiled by parallel
#     processes (`bench train --compile_only`, one per HOPE row) into jax's persistent compilation cache, so the
#     timed runs that follow find them compiled (compiling is mostly one core's work, so the rows compile side by
#     side);
#   generate: tokens/s and memory per generated token, HOPE's recurrent state vs the Transformer++'s KV cache;
#   profile_hope: one profiled HOPE train step (top kernels by time).
# Each step runs under its own time limit, writes OUT_DIR/<step>.json and appends its output to OUT_DIR/bench.log,
# so a step that runs out of time or fails leaves the others' results. The card, driver and versions go first.
# XLA_FLAGS defaults to cuBLAS for every GEMM, as launch/profiles/*.env set it for training: generating Triton GEMM
# kernels for HOPE's hundreds of small GEMMs took its step's compile past 150 s on an H200 (19 s without them, and
# Transformer++ steps as fast; BUILD_NOTES "Benchmarks"). Set XLA_FLAGS to time with other flags.
set -u
out=${1:?usage: bash launch/gpu_bench.sh OUT_DIR [seconds per step]}
limit=${2:-300}
steps=${STEPS:-kernels attention train generate profile_hope}
python=${PYTHON:-python3}
mkdir -p "$out"
log="$out/bench.log"
export PYTHONUNBUFFERED=1
export XLA_FLAGS=${XLA_FLAGS:---xla_gpu_enable_triton_gemm=false}
export JAX_COMPILATION_CACHE_DIR=${JAX_COMPILATION_CACHE_DIR:-/tmp/hope_jax_compile_cache}
export JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS=0 JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES=0

step() {  # step NAME SECONDS ARGS... : one bench subcommand under its own limit
  local name=$1 seconds=$2
  shift 2
  echo "== $name ($(date -u +%H:%M:%S), limit ${seconds}s): python -m hope_jax.bench $*" | tee -a "$log"
  timeout "$seconds" "$python" -m hope_jax.bench "$@" --json="$out/$name.json" >>"$log" 2>&1
  echo "== $name rc $? ($(date -u +%H:%M:%S))" | tee -a "$log"
}

precompile() {  # precompile ARGS... : one `bench train --compile_only` per HOPE row and one for the rest, at once
  local dir pids=() seq
  dir=$(mktemp -d)
  echo "== precompile ($(date -u +%H:%M:%S), limit ${limit}s, cache $JAX_COMPILATION_CACHE_DIR)" | tee -a "$log"
  for seq in 2048 8192; do
    for only in hope hope_pallas transformer,flash; do
      # No preallocation: these processes share the GPU, and compiling allocates nothing large.
      XLA_PYTHON_CLIENT_PREALLOCATE=false timeout "$limit" "$python" -m hope_jax.bench "$@" --seq_lens=$seq \
        --only=$only --compile_only >"$dir/$seq-$only.log" 2>&1 &
      pids+=($!)
    done
  done
  wait "${pids[@]}"
  grep -h "^# compiled" "$dir"/*.log | tee -a "$log"
  tail -n 3 "$dir"/*.log >>"$log"
  echo "== precompile done ($(date -u +%H:%M:%S))" | tee -a "$log"
}

{
  nvidia-smi --query-gpu=name,driver_version,memory.total --format=csv,noheader || true
  "$python" -c "import jax, flax, optax; print('jax', jax.__version__, 'flax', flax.__version__, 'optax', optax.__version__, jax.devices())"
  echo "XLA_FLAGS=$XLA_FLAGS"
} 2>&1 | tee -a "$log"

train=(train --config=configs/bench_gpu.py --variants=transformer,flash=transformer,hope,hope_pallas=hope
  --match_params=hope --set=flash:model.attention_impl=cudnn --set=hope_pallas:model.memory.kernel=pallas
  --tokens_per_step=32768 --devices=1 --warmup=2 --steps=3 --repeats=3)
for name in $steps; do
  case $name in
    kernels)
      echo "== kernels ($(date -u +%H:%M:%S), limit ${limit}s): python -m hope_jax.kernels.check" | tee -a "$log"
      timeout "$limit" "$python" -m hope_jax.kernels.check --kinds joint,memory --chunks 16 \
        --dot-dtypes bfloat16,float32 >>"$log" 2>&1
      echo "== kernels rc $? ($(date -u +%H:%M:%S))" | tee -a "$log" ;;
    attention) step attention 60 attention --impls=xla,cudnn --seq_lens=2048,8192 --tokens=32768 --heads=12 --head_dim=64 ;;
    train)
      precompile "${train[@]}"
      step train_2048 "$limit" "${train[@]}" --seq_lens=2048
      step train_8192 "$limit" "${train[@]}" --seq_lens=8192 ;;
    generate) step generate "$limit" generate --config=configs/bench_gpu.py --variants=transformer,hope \
      --contexts=2048,8192 --new_tokens=64 --batch=1 --repeats=3 ;;
    # The trace itself stays in /tmp; the top kernels by time go to the log.
    profile_hope) step profile_hope "$limit" train --config=configs/bench_gpu.py --variants=hope --seq_lens=2048 \
      --tokens_per_step=32768 --devices=1 --warmup=1 --steps=1 --repeats=1 --profile=/tmp/hope_jax_gpu_trace ;;
    *) echo "unknown step $name (kernels, attention, train, generate, profile_hope)" | tee -a "$log"; exit 2 ;;
  esac
done
grep -h "^|" "$log"
