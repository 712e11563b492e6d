#!/usr/bin/env bash
# The whole data pipeline on one local text file, then a short smoke training on its shards:
#   filter -> SentencePiece tokenizer -> tensorflow-text ArrayRecord shards + manifest -> hope_jax.main (smoke config).
#
#   data_pipeline/run_sample.sh [TEXT_FILE] [OUT_DIR] [VOCAB_SIZE]
#   e.g. data_pipeline/run_sample.sh ../shared/data/tinyshakespeare.txt runs/sample 2000
#
# Every stage prints its counts and seconds; OUT_DIR/stage_seconds.txt collects them. Set PYTHON to choose the interpreter
# and SMOKE_STEPS (default 20; 0 skips training).
set -euo pipefail
cd "$(dirname "$0")/.."
INPUT=${1:-../shared/data/tinyshakespeare.txt}
if [[ ! -f "$INPUT" ]]; then
  echo "error: run_sample.sh: no text file $INPUT (give any UTF-8 text file, e.g. a Project Gutenberg book:" \
    "bash data_pipeline/run_sample.sh FILE.txt runs/sample)" >&2
  exit 1
fi
INPUT=$(realpath "$INPUT")
OUT=${2:-runs/sample}
VOCAB=${3:-2000}
# Default interpreter: the active virtual environment, else the repository's .venv (the README's), else python3.
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then PYTHON="$VIRTUAL_ENV/bin/python"
  elif [[ -x .venv/bin/python ]]; then PYTHON="$PWD/.venv/bin/python"
  else PYTHON=python3; fi
fi
SMOKE_STEPS=${SMOKE_STEPS:-20}
export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
mkdir -p "$OUT"
OUT=$(realpath "$OUT")
: > "$OUT/stage_seconds.txt"

stage() {  # stage NAME COMMAND...: run, time, record
  local name=$1; shift
  local start=$(date +%s.%N)
  "$@"
  echo "$name $(echo "$(date +%s.%N) - $start" | bc)" | tee -a "$OUT/stage_seconds.txt"
}

cat > "$OUT/sample.yaml" <<YAML
name: sample
root: .
documents_per_shard: 2000
tokenizer: {model_type: unigram, vocab_size: $VOCAB, byte_fallback: true, max_sentences: 200000}
corpora:
  - {name: sample, weight: 1.0, inputs: [filtered/sample.jsonl]}
YAML

stage filter "$PYTHON" -m data_pipeline.filter "$INPUT" --output="$OUT/filtered/sample.jsonl" --corpus_name=sample \
  --min_chars=16 --min_words=3
stage train_tokenizer "$PYTHON" -m data_pipeline.train_tokenizer --mixture="$OUT/sample.yaml"
stage shard "$PYTHON" -m data_pipeline.shard --mixture="$OUT/sample.yaml"
stage loader "$PYTHON" -m hope_jax.bench.data --source=mixture --mixture="$OUT/sample.yaml" --seconds=5

if [[ "$SMOKE_STEPS" != 0 ]]; then
  stage smoke_train "$PYTHON" -m hope_jax.main --config=configs/smoke.py --workdir="$OUT/smoke" \
    --config.data.source=mixture --config.data.mixture="$OUT/sample.yaml" \
    --config.model.vocab_size="$VOCAB" --config.train.num_steps="$SMOKE_STEPS"
fi
echo "manifest: $OUT/data/mixtures/sample/sample.json"
