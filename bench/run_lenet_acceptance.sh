#!/usr/bin/env bash
# Issue-3 accuracy runs for lowbit: LeNet-5 on full Fashion-MNIST, 5 epochs, Adam 1e-3, batch 64, per seed, every
# recipe of the acceptance list (engine accuracy in each report). Usage: bench/run_lenet_acceptance.sh [SEEDS...]
set -euo pipefail
cd "$(dirname "$0")/.."
OUT=bench/results
mkdir -p "$OUT"
cargo build --release -q -p lowbit-cli
LOWBIT="${CARGO_TARGET_DIR:-target}/release/lowbit"
common=(--quiet --data fashion-mnist --model lenet5 --epochs 5 --batch-size 64 --no-baseline)
for seed in "${@:-1}"; do
  "$LOWBIT" train "${common[@]}" --seed "$seed" --report "$OUT/lenet-f32-seed$seed.json" > /dev/null
  "$LOWBIT" train "${common[@]}" --seed "$seed" --weight-bits 8 --act-bits 8 --per-channel \
    --report "$OUT/lenet-w8a8-seed$seed.json" > /dev/null
  "$LOWBIT" train "${common[@]}" --seed "$seed" --weight-bits 4 --act-bits 4 --quantizer lsq \
    --report "$OUT/lenet-lsq-w4a4-seed$seed.json" > /dev/null
  "$LOWBIT" train "${common[@]}" --seed "$seed" --weight-bits 2 --act-bits 2 --quantizer lsq \
    --report "$OUT/lenet-lsq-w2a2-seed$seed.json" > /dev/null
  "$LOWBIT" train "${common[@]}" --seed "$seed" --weight-bits 2 --act-bits 2 --per-channel \
    --report "$OUT/lenet-ste-w2a2-seed$seed.json" > /dev/null
  "$LOWBIT" train "${common[@]}" --seed "$seed" --weight-bits 1 --act-bits 8 \
    --report "$OUT/lenet-w1a8-seed$seed.json" > /dev/null
done
python3 - "$OUT" "${@:-1}" <<'PY'
import json, sys
out, seeds = sys.argv[1], sys.argv[2:]
for name in ["f32", "w8a8", "lsq-w4a4", "lsq-w2a2", "ste-w2a2", "w1a8"]:
    accs = [json.load(open(f"{out}/lenet-{name}-seed{s}.json"))["test_accuracy"] for s in seeds]
    print(f"| {name} | " + " | ".join(f"{a*100:.2f}%" for a in accs) + f" | {sum(accs)/len(accs)*100:.2f}% |")
PY
