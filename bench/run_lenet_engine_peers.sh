#!/usr/bin/env bash
# Integer-engine LeNet-5 inference against peers measured in the same run, one program after another (never
# concurrently: the machine has 2 cores). Usage:
#   bench/run_lenet_engine_peers.sh [PEERS_VENV]   (or $PEERS_VENV; default bench/peers/.venv; see
#   bench/peers/requirements.txt)
# Environment: CARGO_TARGET_DIR (default target), LOWBIT_ISA (caps the kernel tier), SECONDS_PER_CASE (default 2),
# DATA (MNIST-format directory for the peers, default /usr/share/datasets/fashion-mnist), EPOCHS (default 1: f32
# training before quantization, for lowbit and the peers alike), LIMIT (peers: first N training images, 0 = all).
set -euo pipefail
cd "$(dirname "$0")/.."
# Absolute, because the peers run from bench/peers.
VENV=$(realpath -m "${1:-${PEERS_VENV:-bench/peers/.venv}}")
SECS="${SECONDS_PER_CASE:-2}"
DATA=$(realpath -m "${DATA:-/usr/share/datasets/fashion-mnist}")
EPOCHS="${EPOCHS:-1}"
LIMIT="${LIMIT:-0}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT=bench/results
mkdir -p "$OUT"
cargo build --release -q -p lowbit-cli
LOWBIT="$TARGET/release/lowbit"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
echo "# cpu flags: $(for f in avx2 fma avx512f avx512_vnni avx_vnni; do [[ " $flags " == *" $f "* ]] && printf '%s ' "$f"; done)"
# W8A8 LeNet-5 (per-channel int8 weights, PTQ after f32 training). The engine's kernel paths depend on the trained
# weights (the vpmaddubsw paths need a safe pair order, docs/KERNELS.md); `lowbit bench` prints the path each layer
# took. The accuracy line shows the model is a real one.
MODEL="$OUT/engine-bench-lenet-w8a8.lbq"
"$LOWBIT" train --quiet --data "$DATA" --model lenet5 --epochs "$EPOCHS" --weight-bits 8 --act-bits 8 --per-channel \
  --method ptq --no-baseline --out "$MODEL" > /dev/null
echo "## lowbit eval (integer engine, test set)"
"$LOWBIT" eval "$MODEL" --data "$DATA" --quiet | sed -n 1,2p
echo "## lowbit bench (f32 = lowbit's own float LeNet with the dequantized weights, int = integer engine)"
"$LOWBIT" bench "$MODEL" --batch 1,256 --seconds "$SECS"
echo "## pytorch f32 / x86 int8 (FX PTQ) and onnxruntime f32 / int8 QDQ (bench/peers/torch_int8_lenet.py, 2 threads)"
(cd bench/peers && "$VENV/bin/python" torch_int8_lenet.py --data "$DATA" --epochs "$EPOCHS" --limit "$LIMIT" \
  --threads 2 --batches 1,256 --seconds "$SECS" 2> /dev/null)
