#!/usr/bin/env bash
# Build the seed mixture (data/mixtures/seed_mixture.yaml) that configs/pilot.py, mid.py and target.py train on:
# stream each corpus from the Hugging Face Hub, filter it into data/filtered/<corpus>/part-0.jsonl, train the
# SentencePiece tokenizer on the mixture, then write the ArrayRecord shards and manifests.
#
#   bash data_pipeline/build_seed_mixture.sh            # needs the network and `pip install datasets`
#   DOCS=200000 bash data_pipeline/build_seed_mixture.sh   # documents kept per corpus (default 100000)
#   DRY_RUN=1 bash data_pipeline/build_seed_mixture.sh     # print the commands only
#
# Corpora (dataset id, config, text field): the web proxy HuggingFaceFW/fineweb (sample-10BT), Wikipedia
# wikimedia/wikipedia (20231101.en), C4 allenai/c4 (en), SlimPajama DKYoon/SlimPajama-6B, code
# codeparrot/codeparrot-clean (field `content`). Each is read in streaming mode, so only the kept documents are
# downloaded. A corpus already filtered (its part-0.jsonl exists) is not fetched again. PYTHON chooses the interpreter.
set -euo pipefail
cd "$(dirname "$0")/.."
if [[ -z "${PYTHON:-}" ]]; then
  if [[ -n "${VIRTUAL_ENV:-}" ]]; then PYTHON="$VIRTUAL_ENV/bin/python"
  elif [[ -x .venv/bin/python ]]; then PYTHON="$PWD/.venv/bin/python"
  else PYTHON=python3; fi
fi
DOCS=${DOCS:-100000}
MIXTURE=data/mixtures/seed_mixture.yaml
run() { echo "+ $*"; if [[ -z "${DRY_RUN:-}" ]]; then "$@"; fi; }

corpus() {  # corpus NAME DATASET CONFIG TEXT_FIELD
  local out="data/filtered/$1/part-0.jsonl"
  if [[ -s "$out" ]]; then echo "$1: $out exists, kept"; return; fi
  local config_flag=()
  [[ -n "$3" ]] && config_flag=(--hf_config="$3")
  run "$PYTHON" -m data_pipeline.filter --hf_dataset="$2" "${config_flag[@]}" --text_field="$4" \
    --output="$out" --corpus_name="$1" --limit="$DOCS"
}

corpus fineweb HuggingFaceFW/fineweb sample-10BT text
corpus wiki wikimedia/wikipedia 20231101.en text
corpus c4 allenai/c4 en text
corpus slimpajama DKYoon/SlimPajama-6B "" text
corpus code codeparrot/codeparrot-clean "" content
run "$PYTHON" -m data_pipeline.train_tokenizer --mixture="$MIXTURE"
run "$PYTHON" -m data_pipeline.shard --mixture="$MIXTURE"
