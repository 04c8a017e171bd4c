#!/usr/bin/env bash
# llmser's main job, end to end, set-up included:
#   1. set up the environment (scripts/setup_env.sh),
#   2. make the synthetic demo corpus (skipped with --corpus DIR: any corpus in the MSP-Podcast layout),
#   3. the training-prior baseline on the test split, evaluated into a report.
#
#   bash scripts/demo.sh                       # demo corpus in ./demo_corpus, results in ./runs/demo
#   bash scripts/demo.sh --corpus /data/MSP-Podcast --out runs/msp
#   bash scripts/demo.sh --n 200 --seed 1      # a different/smaller demo corpus
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=""
OUT="runs/demo"
N=400
SEED=0
SPLIT="test"
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) CORPUS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --split) SPLIT="$2"; shift 2 ;;
    -h|--help) sed -n '2,10p' "$0"; exit 0 ;;
    *) echo "demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/setup_env.sh
VENV="${LLMSER_VENV:-.venv}"
LLMSER=("$VENV/bin/python" -m llmser)
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false

if [ -z "$CORPUS" ]; then
  CORPUS="demo_corpus"
  if [ -f "$CORPUS/demo_corpus.json" ] && grep -q "\"n\": $N," "$CORPUS/demo_corpus.json" \
     && grep -q "\"seed\": $SEED," "$CORPUS/demo_corpus.json"; then
    echo "== demo corpus: reusing $CORPUS (n=$N, seed=$SEED)"
  else
    echo "== demo corpus: generating $CORPUS (n=$N, seed=$SEED)"
    "${LLMSER[@]}" make-demo-corpus "$CORPUS" --n "$N" --seed "$SEED" --overwrite
  fi
fi

echo "== training-prior baseline (majority class, mean attributes) on split '$SPLIT'"
mkdir -p "$OUT/prior"
"${LLMSER[@]}" predict-prior --corpus "$CORPUS" --split "$SPLIT" --out "$OUT/prior/predictions.csv"
"${LLMSER[@]}" evaluate --predictions "$OUT/prior/predictions.csv" --corpus "$CORPUS" --split "$SPLIT" \
  --out "$OUT/prior" --submission
echo "== done: reports under $OUT"
