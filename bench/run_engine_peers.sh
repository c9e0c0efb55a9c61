#!/usr/bin/env bash
# Issue-4 acceptance: integer-engine inference and GEMM throughput against peers measured in the same run,
# one program after another (never concurrently: the machine has 2 cores). Usage:
#   bench/run_engine_peers.sh [PEERS_VENV [TFLITE_VENV]]
# (or the environment's PEERS_VENV and TFLITE_VENV; defaults bench/peers/.venv and bench/peers/.venv-tflite; see
# bench/peers/requirements.txt and requirements-tflite.txt; without the TFLite venv that peer is skipped with a note).
# Environment: CARGO_TARGET_DIR (default target), LOWBIT_ISA (caps the kernel tier), SECONDS_PER_CASE (default 1),
# DATA (MNIST-format directory, default /usr/share/datasets/fashion-mnist).
set -euo pipefail
cd "$(dirname "$0")/.."
# Absolute, because the peers run from bench/peers.
VENV=$(realpath -m "${1:-${PEERS_VENV:-bench/peers/.venv}}")
TFLITE_VENV=$(realpath -m "${2:-${TFLITE_VENV:-bench/peers/.venv-tflite}}")
SECS="${SECONDS_PER_CASE:-1}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT=bench/results
mkdir -p "$OUT"
cargo build --release -q -p lowbit-cli
cargo build --release -q -p lowbit-runtime --example gemm_gops
cargo build --release -q -p lowbit --example f32_gemm_gops
LOWBIT="$TARGET/release/lowbit"
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg)"
flags=$(grep -m1 '^flags' /proc/cpuinfo)
echo "# cpu flags: $(for f in avx2 fma avx512f avx512_vnni avx_vnni; do [[ " $flags " == *" $f "* ]] && printf '%s ' "$f"; done)"
# The reference pipeline's W8A8 MLP (784-64-10, per-channel int8 weights, QAT, 5 epochs on the full data). Trained
# weights matter to the engine's speed: the exact vpmaddubsw path needs a safe pairing of each layer's activations
# (docs/KERNELS.md), which nearly uniform weights (a barely trained model) do not have; `lowbit bench` prints the
# path each layer took.
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
MODEL="$OUT/engine-bench-w8a8.lbq"
"$LOWBIT" train --quiet --data "$DATA" --epochs 5 --weight-bits 8 --act-bits 8 --per-channel \
  --no-baseline --seed 1 --out "$MODEL" > /dev/null
echo "## lowbit bench (f32 = lowbit's own float model, int = integer engine)"
"$LOWBIT" bench "$MODEL" --batch 1,256 --seconds "$SECS"
echo "## lowbit kernels (cargo run --release -p lowbit-runtime --example gemm_gops)"
"$TARGET/release/examples/gemm_gops"
echo "## onnxruntime f32 and int8 QDQ (bench/peers/ort_mlp.py, 2 intra-op threads)"
(cd bench/peers && "$VENV/bin/python" ort_mlp.py --threads 2 2> /dev/null)
echo "## tflite int8 (bench/peers/tflite_mlp.py, LiteRT interpreter, XNNPACK, 2 threads)"
if [[ -x "$TFLITE_VENV/bin/python" ]]; then
  (cd bench/peers && "$TFLITE_VENV/bin/python" tflite_mlp.py --threads 2 2> /dev/null)
else
  echo "skipped: no venv at $TFLITE_VENV (bench/peers/requirements-tflite.txt)"
fi
echo "## torch._int_mm, onnxruntime MatMulInteger and numpy f32 matmul, 1024^3 (bench/peers/torch_int_mm.py, 2 threads)"
(cd bench/peers && "$VENV/bin/python" torch_int_mm.py --threads 2 2> /dev/null)
echo "## lowbit f32 sgemm 1024^3 (cargo run --release -p lowbit --example f32_gemm_gops)"
"$TARGET/release/examples/f32_gemm_gops"
# The GEMM ratios compare programs timed minutes apart, which this machine's drift can move by 20% or more: three
# more rounds alternate lowbit's and the peers' 1024^3 GEMMs, so each ratio can also be taken within one round.
for round in 1 2 3; do
  echo "## 1024^3 round $round: lowbit int8 (gemm_gops --big), onnxruntime MatMulInteger + numpy f32 (torch_int_mm.py --no-torch), lowbit sgemm"
  "$TARGET/release/examples/gemm_gops" --big
  (cd bench/peers && "$VENV/bin/python" torch_int_mm.py --threads 2 --no-torch 2> /dev/null)
  "$TARGET/release/examples/f32_gemm_gops"
done
