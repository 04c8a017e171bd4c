#!/usr/bin/env bash
# llmser's main job, end to end, set-up included:
#   1. set up the environment (scripts/setup_env.sh),
#   2. make the synthetic demo corpus (skipped with --corpus DIR: any corpus in the MSP-Podcast layout),
#   3. the training-prior baseline and the classical ones (eGeMAPS / TF-IDF + linear models) on the test split,
#   4. the speech branch (Whisper tiny.en's pretrained encoder, frozen and cached; layer weights, pooling, heads),
#   5. the text branch on transcripts with SmolLM2-135M-Instruct: zero-shot prompt voting and LoRA + head
#      (the training engine); with --sft also LoRA instruction tuning (trl SFT) with prompt voting (+~10 min),
#   6. the SALMONN-style audio-LLM (Whisper tiny.en -> window-level Q-Former -> SmolLM2 + LoRA) from speech only;
#      its attributes come from a ridge readout of the cached frames, fitted in closed form first (penalty on dev,
#      predictions stretched to the targets' spread for CCC);
#      stage 1 trains the Q-Former and its speech heads alone on the cached frames (its best dev state is kept),
#      then the LLM trains; the stage-1 model is a best-step candidate too (--audio-inputs speech+transcript:
#      it also reads the words),
#   7. the fusion adapter (and its concatenation baseline) on the branches' cached outputs, the ensembles
#      (plurality vote, averaging, RandomForest stacking), and the whole system on raw audio: build-system --method
#      auto ships whichever candidate (a branch alone, an ensemble, a fusion adapter) scores best on dev out of fold,
#      then predict,
#   8. one table of every system's dev scores (what choices are made on; runs/demo/summary_dev.json) and one of
#      every system's test scores, the only place test is shown (runs/demo/summary.json and summary.png).
#
#   bash scripts/demo.sh                       # demo corpus in ./demo_corpus, results in ./runs/demo
#   bash scripts/demo.sh --corpus /data/MSP-Podcast --out runs/msp
#   bash scripts/demo.sh --n 200 --seed 1      # a different/smaller demo corpus
#   bash scripts/demo.sh --quick               # fewer training steps (a smoke run, not the reported one)
#   bash scripts/demo.sh --sft                 # also instruction-tune the text branch with trl (+~10 min)
#   bash scripts/demo.sh --audio-inputs speech+transcript   # the audio-LLM hears the voice and reads the words
#   bash scripts/demo.sh --drop-transcripts 0.3  # a copy of the corpus without 30% of the test transcripts: Whisper
#                                                # tiny.en makes them (cached, never written into the corpus)
#   bash scripts/demo.sh --split Test3         # a blind split: the demo corpus gets --blind files without labels;
#                                              # every stage writes its submission files, only dev is scored
#   bash scripts/demo.sh --seeds 3             # the training stages with seeds 0, 1, 2: mean ± std per system
#                                              # (a seed folder whose run finished with the same options is
#                                              # reused: an interrupted --seeds run resumes where it stopped)
set -euo pipefail
cd "$(dirname "$0")/.."

CORPUS=""
OUT="runs/demo"
N=400
SEED=0
SPLIT="test"
QUICK=0
SFT=0
AUDIO_INPUTS="speech"
DROP_TRANSCRIPTS=""
SEEDS=1
TRAIN_SEED=0
SUMMARY=1
ASR_INTERNAL=0
while [ $# -gt 0 ]; do
  case "$1" in
    --corpus) CORPUS="$2"; shift 2 ;;
    --out) OUT="$2"; shift 2 ;;
    --n) N="$2"; shift 2 ;;
    --seed) SEED="$2"; shift 2 ;;
    --split) SPLIT="$2"; shift 2 ;;
    --quick) QUICK=1; shift ;;
    --sft) SFT=1; shift ;;
    --audio-inputs) AUDIO_INPUTS="$2"; shift 2 ;;
    --drop-transcripts) DROP_TRANSCRIPTS="$2"; shift 2 ;;
    --seeds) SEEDS="$2"; shift 2 ;;
    --train-seed) TRAIN_SEED="$2"; shift 2 ;;   # internal: one seed of --seeds
    --no-summary) SUMMARY=0; shift ;;          # internal: --seeds writes one table over all seeds
    --asr-transcripts) ASR_INTERNAL=1; shift ;; # internal: the corpus is already the --drop-transcripts copy
    -h|--help) awk 'NR > 1 && !/^#/ {exit} NR > 1' "$0"; exit 0 ;;  # the header comment, whole
    *) echo "demo.sh: unknown option $1 (see --help)" >&2; exit 2 ;;
  esac
done

bash scripts/setup_env.sh
VENV="${LLMSER_VENV:-.venv}"
LLMSER=("$VENV/bin/python" -m llmser)
export HF_HUB_OFFLINE="${HF_HUB_OFFLINE:-1}" TOKENIZERS_PARALLELISM=false

if [ -z "$CORPUS" ]; then
  CORPUS="demo_corpus"
  BLIND=0  # --split Test3: the demo corpus gets a blind Test3 split (a fifth as many files, no labels)
  if [ "${SPLIT,,}" = test3 ]; then BLIND=$(( N / 5 > 16 ? N / 5 : 16 )); fi
  if [ -f "$CORPUS/demo_corpus.json" ] && grep -q "\"n\": $N," "$CORPUS/demo_corpus.json" \
     && grep -q "\"seed\": $SEED," "$CORPUS/demo_corpus.json" \
     && { grep -q "\"blind\": $BLIND," "$CORPUS/demo_corpus.json" || { [ "$BLIND" = 0 ] && ! grep -q '"blind": [1-9]' "$CORPUS/demo_corpus.json"; }; }; then
    echo "== demo corpus: reusing $CORPUS (n=$N, seed=$SEED, blind=$BLIND)"
  else
    echo "== demo corpus: generating $CORPUS (n=$N, seed=$SEED, blind=$BLIND)"
    "${LLMSER[@]}" make-demo-corpus "$CORPUS" --n "$N" --seed "$SEED" --blind "$BLIND" --overwrite
  fi
fi
# A split without labels (the challenge's Test3) is predicted and submitted, never scored: the test table is left out.
IS_BLIND=$("$VENV/bin/python" - "$CORPUS" "$SPLIT" <<'PY'
import sys
from llmser.data.msp_podcast import MSPPodcast
from llmser.evaluation.report import is_blind
corpus = MSPPodcast.from_folder(sys.argv[1])
print(int(is_blind(corpus.utterances(corpus.resolve_split(sys.argv[2]), task="all"))))
PY
)

# --drop-transcripts F: every reader of transcripts runs with missing_transcripts=asr on a copy of the corpus
# (audio hard-linked) from which a fraction F of the split's transcripts was removed.
ASR_FLAGS=() ASR_OVERRIDES=() TRANSCRIPTS_NOTE=""
if [ -n "$DROP_TRANSCRIPTS" ]; then
  echo "== transcripts: copying $CORPUS without $DROP_TRANSCRIPTS of the '$SPLIT' transcripts into $OUT/corpus_asr"
  rm -rf "$OUT/corpus_asr"; mkdir -p "$OUT"
  TRANSCRIPTS_NOTE=$("$VENV/bin/python" - "$CORPUS" "$OUT/corpus_asr" "$SPLIT" "$DROP_TRANSCRIPTS" "$SEED" <<'PY'
import os, random, shutil, sys
from pathlib import Path
from llmser.data.msp_podcast import MSPPodcast
src, dst, split, share, seed = sys.argv[1:]
shutil.copytree(src, dst, copy_function=os.link)  # hard links: no audio is duplicated, the source is untouched
corpus = MSPPodcast.from_folder(dst)
utts = corpus.utterances(corpus.resolve_split(split), task="all")
drop = random.Random(int(seed)).sample([u for u in utts if u.transcript], round(float(share) * len(utts)))
for u in drop:
    os.unlink(Path(dst) / "Transcripts" / f"{Path(u.file_name).stem}.txt")
print(f"{len(drop) / len(utts):.0%} of {split} ({len(drop)} of {len(utts)} files) by Whisper tiny.en")
PY
)
  CORPUS="$OUT/corpus_asr"
fi
if [ -n "$DROP_TRANSCRIPTS" ] || [ "$ASR_INTERNAL" = 1 ]; then
  ASR_FLAGS=(--missing-transcripts asr) ASR_OVERRIDES=(data.missing_transcripts=asr data.asr_model=smol)
fi

# The systems of one run folder, as NAME=FILE pairs for llmser compare: test reports, or the dev scores that
# every choice is made on (a training run's metrics.json holds its best checkpoint's dev scores).
AUDIO="audio_${AUDIO_INPUTS//+transcript/_text}"
systems() {  # systems RUN_DIR test|dev
  local o="$1" role="$2"
  if [ "$role" = dev ]; then  # the ensembles and fusion: out of fold on all of dev (build-system --method auto)
    printf '%s\n' "classical_egemaps=$o/classical/egemaps/dev/report.json" "classical_tfidf=$o/classical/tfidf/dev/report.json" \
      "classical_late_fusion=$o/classical/late_fusion/dev/report.json" "wavlm=$o/wavlm/metrics.json" \
      "text_head=$o/text_head/metrics.json" "$AUDIO=$o/$AUDIO/metrics.json" \
      "fusion_concat=$o/selection/fusion_concat.json" "fusion=$o/selection/fusion.json" \
      "ensemble_plurality=$o/selection/plurality.json" "ensemble_average=$o/selection/average.json" \
      "ensemble_weighted_average=$o/selection/weighted_average.json" "ensemble_stacking=$o/selection/stacking.json" \
      "system_predict=$o/system/selection.json"
    return
  fi
  printf '%s\n' "prior=$o/prior/report.json" "classical_egemaps=$o/classical/egemaps/report.json" \
    "classical_tfidf=$o/classical/tfidf/report.json" "classical_late_fusion=$o/classical/late_fusion/report.json" \
    "wavlm=$o/wavlm/test/report.json" "text_zero_shot=$o/text_zero_shot/report.json" \
    "text_head_single=$o/text_head/test/single/report.json" "text_head_vote=$o/text_head/test/report.json" \
    "${AUDIO}_single=$o/$AUDIO/test/single/report.json" "${AUDIO}_vote=$o/$AUDIO/test/report.json" \
    "fusion_concat=$o/fusion_concat/test/report.json" "fusion=$o/fusion/test/report.json" \
    "ensemble_plurality=$o/ensemble/plurality/report.json" "ensemble_average=$o/ensemble/average/report.json" \
    "ensemble_stacking=$o/ensemble/stacking/report.json" "system_predict=$o/system_predictions/report.json"
  if [ "$SFT" = 1 ]; then echo "text_sft=$o/text_sft/test/report.json"; fi
}
summarise() {  # summarise RUN_DIR...: one row per system over the runs (mean ± std when there are several)
  local role args=()
  for role in dev test; do
    if [ "$role" = test ] && [ "$IS_BLIND" = 1 ]; then
      echo "== summary (test): split '$SPLIT' is blind (no labels): not scored; each system wrote its submission files" \
           "(task1_predictions.csv, task2_predictions.csv) beside its predictions; the dev table above is the only one"
      continue
    fi
    args=()
    while IFS='=' read -r name _; do
      local files=() o
      for o in "$@"; do files+=("$(systems "$o" "$role" | grep "^$name=" | cut -d= -f2-)"); done
      args+=("$name=$(IFS=,; echo "${files[*]}")")
    done < <(systems "$1" "$role")
    local suffix=""; [ "$role" = dev ] && suffix="_dev"
    echo "== summary ($role): $([ "$role" = dev ] && echo "dev split, where every choice is made" || echo "test split '$SPLIT', reported once")"
    "${LLMSER[@]}" compare "${args[@]}" --out "$OUT/summary$suffix.json" --title "llmser demo, $role$([ "$#" -gt 1 ] && echo ", $# seeds")"
  done
}

# What a finished run was made from (written last, as demo_done.txt): a --seeds run reuses a seed folder only when
# it matches, and the default run's folder can be copied in as seed0 (cp -al runs/demo runs/demo_seeds/seed0).
run_key() {  # run_key TRAIN_SEED
  local corpus_id
  corpus_id=$(cat "$CORPUS/demo_corpus.json" 2>/dev/null | tr -d ' \n' | cut -c1-200 || true)
  echo "seed=$1 corpus=$(basename "$CORPUS"):$corpus_id split=$SPLIT quick=$QUICK sft=$SFT audio=$AUDIO_INPUTS" \
       "asr=$([ -n "$DROP_TRANSCRIPTS" ] || [ "$ASR_INTERNAL" = 1 ] && echo yes || echo no) commit=$(git rev-parse --short HEAD 2>/dev/null || echo none)"
}

if [ "$SEEDS" -gt 1 ]; then  # each seed is a full run in its own folder; the corpus (and its ASR copy) is shared
  RUNS=()
  for ((s = 0; s < SEEDS; s++)); do
    echo "==== seed $s of $SEEDS"
    FLAGS=(--corpus "$CORPUS" --out "$OUT/seed$s" --split "$SPLIT" --audio-inputs "$AUDIO_INPUTS" --train-seed "$s"
           --no-summary)
    [ "$QUICK" = 1 ] && FLAGS+=(--quick)
    [ "$SFT" = 1 ] && FLAGS+=(--sft)
    [ -n "$DROP_TRANSCRIPTS" ] && FLAGS+=(--asr-transcripts)
    if [ -f "$OUT/seed$s/demo_done.txt" ] && [ "$(cat "$OUT/seed$s/demo_done.txt")" = "$(run_key "$s")" ]; then
      echo "== seed $s: reusing the finished run in $OUT/seed$s"
    else
      bash "$0" "${FLAGS[@]}"
    fi
    RUNS+=("$OUT/seed$s")
  done
  summarise "${RUNS[@]}"
  if [ -n "$TRANSCRIPTS_NOTE" ]; then echo "note: transcripts: $TRANSCRIPTS_NOTE (the rest as given)"; fi
  echo "== done: reports under $OUT/seed*"
  exit 0
fi

echo "== training-prior baseline (majority class, mean attributes) on split '$SPLIT'"
mkdir -p "$OUT/prior"
"${LLMSER[@]}" predict-prior --corpus "$CORPUS" --split "$SPLIT" --out "$OUT/prior/predictions.csv"
"${LLMSER[@]}" evaluate --predictions "$OUT/prior/predictions.csv" --corpus "$CORPUS" --split "$SPLIT" \
  --out "$OUT/prior" --submission

echo "== classical baselines: eGeMAPS and transcript TF-IDF, linear models chosen on dev, and their late fusion"
"${LLMSER[@]}" baseline classical --corpus "$CORPUS" --split "$SPLIT" --out "$OUT/classical" "${ASR_FLAGS[@]}"

# Each branch trains from its recipe; the overrides only point it at this corpus and output folder.
steps() { if [ "$QUICK" = 1 ]; then echo "train.max_steps=$2 train.eval_every=$2 train.save_every=$2"; else echo "train.max_steps=$1"; fi; }
train() {  # train NAME RECIPE FULL_STEPS QUICK_STEPS [overrides...]
  local name="$1" recipe="$2" full="$3" quick="$4"; shift 4
  local extra=() a
  for a in "$@"; do  # --quick sets the evaluation/checkpoint intervals itself (an override may be given once)
    if [ "$QUICK" = 1 ] && [[ "$a" == train.eval_every=* || "$a" == train.save_every=* ]]; then continue; fi
    extra+=("$a")
  done
  echo "== $name: llmser train $recipe"
  # shellcheck disable=SC2046
  "${LLMSER[@]}" train "$recipe" "data.corpus=$CORPUS" "data.test_split=$SPLIT" "train.output_dir=$OUT/$name" \
    "train.seed=$TRAIN_SEED" "${ASR_OVERRIDES[@]}" "${extra[@]}" $(steps "$full" "$quick")
}

train wavlm adapters/wavlm_smol.yaml 300 20

# Contextual calibration removes each variant's constant label bias (content-free prompts, no labels used);
# the rating prompts are skipped to keep the run short.
echo "== text_zero_shot: SmolLM2-135M-Instruct, no tuning, calibrated vote over five prompt variants"
"${LLMSER[@]}" predict-prompts --llm smol --corpus "$CORPUS" --split "$SPLIT" --calibrate --no-ratings \
  --out "$OUT/text_zero_shot/predictions.csv" "${ASR_FLAGS[@]}"

# The lower LLM layers' states are cached, so 200 steps (~6 epochs) fit the budget (adapters/text_smol.yaml).
train text_head adapters/text_smol.yaml 200 10 train.eval_every=50 train.save_every=50
SFT_REPORT=()
if [ "$SFT" = 1 ]; then
  train text_sft adapters/text_smol_sft.yaml 40 6
  SFT_REPORT=("text_sft=$OUT/text_sft/test/report.json")
fi
# The audio-LLM hears the voice (and with --audio-inputs speech+transcript reads the words; docs/audio_llm.md).
train "$AUDIO" adapters/audio_smol.yaml 30 4 "model.inputs=$AUDIO_INPUTS" train.eval_every=15 train.save_every=15

# Fusion and stacking learn from dev outputs (the branches trained on train: their train outputs would be
# in-sample, docs/protocol.md), so only dev and test are collected.
echo "== branch outputs for fusion and ensembles (dev/$SPLIT)"
"${LLMSER[@]}" collect-outputs "$OUT/wavlm" --out "$OUT/outputs" --frames --corpus "$CORPUS" --splits "dev,$SPLIT"
"${LLMSER[@]}" collect-outputs "$OUT/text_head" --out "$OUT/outputs" --name text_llm --corpus "$CORPUS" --splits "dev,$SPLIT"
"${LLMSER[@]}" collect-outputs "$OUT/$AUDIO" --out "$OUT/outputs" --name audio_llm --corpus "$CORPUS" --splits "dev,$SPLIT"

# The recipe's batch of 32 needs 32 files in four fifths of dev; a small corpus (dev under 50 files) gets 8.
FUSION_BATCH=$("$VENV/bin/python" - "$CORPUS" <<'PY'
import sys
from llmser.data.msp_podcast import MSPPodcast, ReaderConfig
corpus = MSPPodcast.from_folder(sys.argv[1], ReaderConfig(labels_only=True))
print(32 if len(corpus.utterances(corpus.resolve_split("dev"))) >= 50 else 8)
PY
)
train fusion adapters/fusion_tiny.yaml 300 20 "model.outputs_dir=$OUT/outputs" "data.batch_size=$FUSION_BATCH" "model.streams=[audio_llm,text_llm,wavlm]"
train fusion_concat adapters/fusion_tiny.yaml 300 20 "model.outputs_dir=$OUT/outputs" "data.batch_size=$FUSION_BATCH" \
  "model.streams=[audio_llm,text_llm,wavlm]" model.mode=concat

echo "== ensembles of the branches (plurality, averaging, RandomForest stacking fitted on dev)"
"${LLMSER[@]}" ensemble ensembles/demo.yaml "members.wavlm.outputs=$OUT/outputs" \
  "members.text_llm.outputs=$OUT/outputs" "members.audio_llm.outputs=$OUT/outputs" "predict_split=$SPLIT" \
  --corpus "$CORPUS" --out "$OUT/ensemble"

# What ships is chosen on dev: each branch alone, plurality, average, weighted average, stacking and each fusion
# adapter, all scored on out-of-sample dev predictions with the same 5 speaker-disjoint folds (the fusion adapters
# are trained 5 more times, each on 4 folds); the card and llmser.json carry the table.
echo "== the whole system on raw audio: llmser build-system --method auto (chosen on dev) + llmser predict"
"${LLMSER[@]}" build-system --method auto --member "wavlm=$OUT/wavlm" --member "text_llm=$OUT/text_head" \
  --member "audio_llm=$OUT/$AUDIO" --fusion "fusion=$OUT/fusion" --fusion "fusion_concat=$OUT/fusion_concat" \
  --outputs "$OUT/outputs" --corpus "$CORPUS" --dev-split dev --out "$OUT/system"
"$VENV/bin/python" - "$OUT/system/selection.json" "$OUT/selection" <<'PY'
import json, sys
from pathlib import Path
selection = json.loads(Path(sys.argv[1]).read_text())
out = Path(sys.argv[2]); out.mkdir(parents=True, exist_ok=True)
for row in selection["candidates"]:  # one dev file per candidate, for llmser compare's dev table
    scores = {k: row[k] for k in ("macro_f1", "ccc_arousal", "ccc_valence", "ccc_dominance", "ccc_mean") if row.get(k) is not None}
    (out / f"{row['candidate']}.json").write_text(json.dumps({"dev": scores}))
PY
rm -rf "$OUT/system_predictions"  # a rebuilt system predicts afresh (predict resumes an existing CSV)
"${LLMSER[@]}" predict --model "$OUT/system" --corpus "$CORPUS" --split "$SPLIT" \
  --out "$OUT/system_predictions/predictions.csv" --submission
"${LLMSER[@]}" evaluate --predictions "$OUT/system_predictions/predictions.csv" --corpus "$CORPUS" \
  --split "$SPLIT" --out "$OUT/system_predictions" --submission

run_key "$TRAIN_SEED" > "$OUT/demo_done.txt"
if [ "$SUMMARY" = 1 ]; then summarise "$OUT"; fi
if [ -n "$TRANSCRIPTS_NOTE" ]; then echo "note: transcripts: $TRANSCRIPTS_NOTE (the rest as given)"; fi
echo "== done: reports under $OUT"
