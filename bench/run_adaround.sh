#!/usr/bin/env bash
# Issue-13 AdaRound comparison: PTQ of one trained float model per architecture on full Fashion-MNIST at W4A8,
# W3A8 and W2A8 (per-channel weights, min-max activation ranges), with weights rounded to nearest on the min-max
# grid, rounded to nearest on the MSE-clipped grid, the latter with bias correction, and rounded by AdaRound
# (default 1000 iterations per layer) on the MSE grid without and with bias correction (at 2 bits lowbit's weights are ternary: min-max means its threshold rule,
# there is no MSE clipping, and AdaRound rounds onto the ternary grid {-1, 0, 1} * alpha). Engine accuracy and
# the engine/simulation comparison come from each report. Usage: bench/run_adaround.sh [SEED] (default 1); a
# report that exists already is kept (FRESH=1 reruns everything). Float models: the issue-2 MLP recipe
# (mlp:784-64-10, 5 epochs, batch 32, Adam 1e-3) and the issue-3 LeNet recipe (lenet5, 5 epochs, batch 64).
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-1}
OUT=bench/results/adaround
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
  for bits in 4 3 2; do
    for rule in minmax mse bc adaround-only adaround; do
      [[ $bits == 2 && $rule == mse ]] && continue
      report="$OUT/$model-w${bits}a8-$rule-seed$SEED.json"
      [[ -z "${FRESH:-}" && -e "$report" ]] && continue
      case $rule in
        minmax) extra=() ;;
        mse) extra=() ;;
        bc) extra=(--bias-correction) ;;
        adaround-only) extra=(--adaround) ;;
        adaround) extra=(--adaround --bias-correction) ;;
      esac
      [[ $bits != 2 && $rule != minmax ]] && extra+=(--weight-calibration mse)
      start=$(date +%s.%N)
      "$LOWBIT" train -q --data fashion-mnist --init "$MODELS/$model.f32" --method ptq --per-channel \
        --weight-bits "$bits" --act-bits 8 "${extra[@]}" --seed "$SEED" --report "$report" > /dev/null
      echo "$model W${bits}A8 $rule: $(echo "$(date +%s.%N) - $start" | bc) s" >&2
    done
  done
done
python3 - "$OUT" "$SEED" <<'PY'
import json, sys
out, seed = sys.argv[1], sys.argv[2]
names = {"minmax": "nearest, min-max scales", "mse": "nearest, MSE scales",
         "bc": "nearest, MSE scales + bias correction", "adaround-only": "AdaRound, MSE scales",
         "adaround": "AdaRound, MSE scales + bias correction"}
ternary = {"minmax": "nearest, ternary (TWN threshold)", "bc": "nearest, ternary + bias correction",
           "adaround-only": "AdaRound on the ternary grid",
           "adaround": "AdaRound on the ternary grid + bias correction"}
print(f"Seed {seed} (one seed)")
print("| model | weights | rounding | engine accuracy | f32 | drop vs f32 | engine = simulation |")
print("|---|---|---|---|---|---|---|")
for model in ["mlp", "lenet5"]:
    for bits in [4, 3, 2]:
        for rule in ["minmax", "mse", "bc", "adaround-only", "adaround"]:
            if bits == 2 and rule == "mse":
                continue
            r = json.load(open(f"{out}/{model}-w{bits}a8-{rule}-seed{seed}.json"))
            # Drop: f32 minus engine accuracy (negative = the quantized model scored higher).
            drop = r["baseline_accuracy"] * 100 - r["test_accuracy"] * 100
            n = r["engine_simulation_mismatches"]
            same = "yes" if n == 0 else f"{n} differ"
            name = names[rule]
            if bits == 2:
                name = ternary[rule]
            print(f"| {model} | W{bits}A8 | {name} | {r['test_accuracy']*100:.2f}% | "
                  f"{r['baseline_accuracy']*100:.2f}% | {drop:+.2f} pp | {same} |")
PY
