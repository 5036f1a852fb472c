#!/usr/bin/env bash
# The accuracy table's task columns (issue 15): HumanEval pass@1 (greedy) and TruthfulQA MC1/MC2
# through the lm-eval adapter with the local task definitions (python/q35f/integrations/tasks),
# for every method of bench/results/accuracy.csv on the embedded SmolLM2-135M-Instruct.
# Writes bench/results/lm_eval/<method>/{humaneval,truthfulqa}/; then
# `q35f paper tasks` fills accuracy.csv's task columns from them.
#
#   bash bench/accuracy_tasks.sh                       # as run for the committed results
#   HUMANEVAL_LIMIT= bash bench/accuracy_tasks.sh      # all 164 HumanEval problems
#   PARTS=truthfulqa METHODS="int8" bash bench/accuracy_tasks.sh   # one part, some methods
#
# HumanEval executes model-written code (a sandboxed subprocess: timeout, rlimits, no sockets):
# HF_ALLOW_CODE_EVAL=1 and --confirm_run_unsafe_code below are that confirmation.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
MODELS=${MODELS:-models}
OUT=${OUT:-bench/results/lm_eval}
HUMANEVAL_LIMIT=${HUMANEVAL_LIMIT-20}
METHODS=${METHODS:-fp32 q35 int4 int8 int3 q35-best}
PARTS=${PARTS:-humaneval truthfulqa}
TRUTHFULQA_CSV=${TRUTHFULQA_CSV:-../shared/data/truthfulqa/TruthfulQA.csv}
TASKS=python/q35f/integrations/tasks
export OMP_NUM_THREADS=1 HF_DATASETS_OFFLINE=1 HF_HUB_OFFLINE=1
RUN="nice -n 15 $BIN/q35f-lm-eval run --model q35f --device cpu --include_path $TASKS"

quantize() {  # method -> q35f quantize options (the int baselines: round-to-nearest, as compare)
    case $1 in
        q35) echo "--bits q35" ;;  # the default recipe of plain `q35f quantize`
        q35-best) echo "--bits q35 --gptq --clip-search --pairing activation --calibration emma --calibration-tokens 8192" ;;
        *) echo "--bits $1 --round-to-nearest" ;;
    esac
}

model_args() {
    if [ "$1" = fp32 ]; then echo ""; else echo "--model_args pretrained=$MODELS/smol-$1"; fi
}

for m in $METHODS; do
    if [ "$m" != fp32 ] && [ ! -d "$MODELS/smol-$m" ]; then
        # shellcheck disable=SC2046
        nice -n 15 "$BIN/q35f" quantize --no-progress -o "$MODELS/smol-$m" $(quantize "$m")
    fi
done
limit=${HUMANEVAL_LIMIT:+--limit $HUMANEVAL_LIMIT}
for m in $METHODS; do
    case " $PARTS " in *" humaneval "*) ;; *) break ;; esac
    echo "$(date -u +%FT%TZ) humaneval $m"
    # shellcheck disable=SC2046,SC2086
    HF_ALLOW_CODE_EVAL=1 $RUN $(model_args "$m") --tasks q35f_humaneval $limit \
        --confirm_run_unsafe_code --log_samples --output_path "$OUT/$m/humaneval"
done
for m in $METHODS; do
    case " $PARTS " in *" truthfulqa "*) ;; *) break ;; esac
    echo "$(date -u +%FT%TZ) truthfulqa $m"
    # shellcheck disable=SC2046
    $RUN $(model_args "$m") --tasks q35f_truthfulqa_mc1,q35f_truthfulqa_mc2 \
        --metadata "{\"truthfulqa_csv\": \"$TRUTHFULQA_CSV\"}" --output_path "$OUT/$m/truthfulqa"
done
echo "$(date -u +%FT%TZ) done"
