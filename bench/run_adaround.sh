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
# The reports name the temporary float models by path; keep the committed ones free of this machine's paths.
sed -i "s#\"$MODELS/#\"MODELS/#" "$OUT"/*-seed"$SEED".json
python3 bench/summarize_seeds.py adaround "$OUT" --seed "$SEED"
