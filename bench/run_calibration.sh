#!/usr/bin/env bash
# Issue-13 calibrator comparison: PTQ of one trained float model per architecture on full Fashion-MNIST, W8A8 and
# W4A8 (per-channel weights), every activation calibrator with min-max and MSE weight scales, and at W4A8 each of
# those with bias correction too; engine accuracy in each report. Usage: bench/run_calibration.sh [SEED] (default
# 1); a report that exists already is kept (FRESH=1 reruns everything). The float models are the issue-2 MLP recipe
# (mlp:784-64-10, 5 epochs, batch 32, Adam 1e-3) and the issue-3 LeNet recipe (lenet5, 5 epochs, batch 64).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-1}
OUT=bench/results/calibration
mkdir -p "$OUT"
MODELS=$(mktemp -d)
trap 'rm -rf "$MODELS"' EXIT
cargo build --release -q -p lowbit-cli
LOWBIT="${CARGO_TARGET_DIR:-target}/release/lowbit"
"$LOWBIT" train -q --data fashion-mnist --model mlp:784-64-10 --epochs 5 --batch-size 32 --seed "$SEED" \
  --out "$MODELS/mlp.f32" > /dev/null
"$LOWBIT" train -q --data fashion-mnist --model lenet5 --epochs 5 --batch-size 64 --seed "$SEED" \
  --out "$MODELS/lenet5.f32" > /dev/null
for model in mlp lenet5; do
  for bits in 8 4; do
    for calib in minmax percentile:99.9 percentile:99.99 mse entropy; do
      for wcal in minmax mse; do
        for bc in "" "-bc"; do
          [[ $bits == 8 && -n $bc ]] && continue
          report="$OUT/$model-w${bits}a8-$calib-w$wcal$bc-seed$SEED.json"
          [[ -z "${FRESH:-}" && -e "$report" ]] && continue
          "$LOWBIT" train -q --data fashion-mnist --init "$MODELS/$model.f32" --method ptq --per-channel \
            --weight-bits "$bits" --act-bits 8 --calibration "$calib" --weight-calibration "$wcal" \
            ${bc:+--bias-correction} --report "$report" > /dev/null
        done
      done
    done
  done
done
# The reports name the temporary float models by path; keep the committed ones free of this machine's paths.
sed -i "s#\"$MODELS/#\"MODELS/#" "$OUT"/*-seed"$SEED".json
python3 bench/summarize_seeds.py calibration "$OUT" --seed "$SEED"
