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
python3 - "$OUT" "$SEED" <<'PY'
import json, sys
out, seed = sys.argv[1], sys.argv[2]
print(f"Seed {seed}; f32: mlp {json.load(open(f'{out}/mlp-w8a8-minmax-wminmax-seed{seed}.json'))['baseline_accuracy']*100:.2f}%, "
      f"lenet5 {json.load(open(f'{out}/lenet5-w8a8-minmax-wminmax-seed{seed}.json'))['baseline_accuracy']*100:.2f}%")
print("| model | weights | activation calibrator | weight scales | bias correction | engine accuracy | drop vs f32 | engine = simulation |")
print("|---|---|---|---|---|---|---|---|")
for model in ["mlp", "lenet5"]:
    for bits in [8, 4]:
        for calib in ["minmax", "percentile:99.9", "percentile:99.99", "mse", "entropy"]:
            for wcal in ["minmax", "mse"]:
                for bc in ["", "-bc"] if bits == 4 else [""]:
                    r = json.load(open(f"{out}/{model}-w{bits}a8-{calib}-w{wcal}{bc}-seed{seed}.json"))
                    # Drop: f32 minus engine accuracy (negative = the quantized model scored higher).
                    drop = r["baseline_accuracy"] * 100 - r["test_accuracy"] * 100
                    n = r["engine_simulation_mismatches"]
                    same = "yes" if n == 0 else f"{n} differ"
                    print(f"| {model} | W{bits}A8 | {calib} | {wcal} | {'yes' if bc else 'no'} | "
                          f"{r['test_accuracy']*100:.2f}% | {drop:+.2f} pp | {same} |")
PY
