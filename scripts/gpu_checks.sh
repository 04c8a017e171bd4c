#!/usr/bin/env bash
# The GPU path checks of docs/gpu-checks.md, as one script for a machine with a CUDA GPU (run from the repo root
# after `bash scripts/setup_env.sh` with a CUDA torch, or in any env with llmser installed). Offline: the smol presets.
#   bash scripts/gpu_checks.sh            # ~5 minutes on one H100; writes runs/gpu_checks/*.log and summary lines
set -uo pipefail
cd "$(dirname "$0")/.."
PY="${PYTHON:-.venv/bin/python}"
OUT=runs/gpu_checks
mkdir -p "$OUT"
export HF_HUB_OFFLINE=1 TOKENIZERS_PARALLELISM=false
nvidia-smi --query-gpu=name,memory.total --format=csv | tee "$OUT/gpu.txt"
[ -d demo_corpus ] || "$PY" -m llmser make-demo-corpus demo_corpus --n 400 --seed 0 > "$OUT/corpus.log" 2>&1

check() {  # check NAME COMMAND...
  local name="$1"; shift
  local start=$SECONDS
  if "$@" > "$OUT/$name.log" 2>&1; then echo "PASS $name $((SECONDS - start))s"; else echo "FAIL $name (see $OUT/$name.log)"; fi
}
# bf16 LoRA + heads on the GPU (mixed_precision auto -> bf16)
check text_bf16 "$PY" -m llmser train adapters/text_smol.yaml train.max_steps=30 train.eval_every=30 \
  train.output_dir="$OUT/text_bf16" model.lora_top_layers=null
# QLoRA: 4-bit NF4 load, k-bit preparation, a training step, evaluation, more steps
check text_qlora "$PY" -m llmser train adapters/text_smol.yaml model.quantization=4bit train.max_steps=30 \
  train.eval_every=15 train.output_dir="$OUT/text_qlora"
# trl SFT in bf16
check text_sft_bf16 "$PY" -m llmser train adapters/text_smol_sft.yaml train.max_steps=30 train.output_dir="$OUT/text_sft"
# audio-LLM in bf16 and the prompt-voting benchmark
check audio_bf16 "$PY" -m llmser train adapters/audio_smol.yaml train.max_steps=30 train.eval_every=30 \
  train.output_dir="$OUT/audio_bf16"
check bench_voting "$PY" scripts/bench_prompt_voting.py --quick
check bench_scoring "$PY" scripts/bench_label_scoring.py --quick
# multi-GPU DDP when there is more than one GPU
NGPU=$(nvidia-smi -L | wc -l)
if [ "$NGPU" -gt 1 ]; then
  check ddp accelerate launch --config_file scripts/accelerate/multi_gpu.yaml --num_processes "$NGPU" -m llmser train \
    adapters/text_smol.yaml train.max_steps=20 train.output_dir="$OUT/ddp"
fi
grep -h "scoring_speedup\|unparseable\|voting_" "$OUT"/bench_*.log
