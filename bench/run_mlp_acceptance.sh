#!/usr/bin/env bash
# Issue-2 acceptance: the reference MLP on full Fashion-MNIST, 3 seeds, every demo recipe; then the timing
# comparison with PyTorch (run one after the other, never concurrently). Usage:
#   bench/run_mlp_acceptance.sh [PEERS_VENV]   (or $PEERS_VENV; default bench/peers/.venv; see
#   bench/peers/requirements.txt)
set -euo pipefail
cd "$(dirname "$0")/.."
# Absolute, because the peer runs from bench/peers.
VENV=$(realpath -m "${1:-${PEERS_VENV:-bench/peers/.venv}}")
OUT=bench/results
mkdir -p "$OUT"
cargo build --release -q -p lowbit-cli
LOWBIT="${CARGO_TARGET_DIR:-target}/release/lowbit"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores"
for seed in 1 2 3; do
  "$LOWBIT" demo --quiet --data fashion-mnist --seed "$seed" --report "$OUT/mlp-demo-seed$seed.json" | tail -n 12
done
python3 bench/summarize_mlp.py "$OUT"/mlp-demo-seed{1,2,3}.json
# Timing: lowbit f32 and QAT W4A8 training, then PyTorch f32, same data, model, batch and epochs.
"$LOWBIT" train --quiet --data fashion-mnist --seed 1 --report "$OUT/mlp-f32-time.json" > /dev/null
"$LOWBIT" train --quiet --data fashion-mnist --seed 1 --weight-bits 4 --per-channel --no-baseline \
  --report "$OUT/mlp-qat-w4a8-time.json" > /dev/null
(cd bench/peers && "$VENV/bin/python" pytorch_mlp.py --seeds 1 > "../../$OUT/mlp-pytorch-time.json")
python3 bench/summarize_mlp.py --timing "$OUT/mlp-f32-time.json" "$OUT/mlp-qat-w4a8-time.json" \
  "$OUT/mlp-pytorch-time.json"
