#!/usr/bin/env bash
# Issue 12, ONNX import: every fixture of crates/lowbit/tests/fixtures/onnx on 10,000 images, ONNX Runtime f32
# against `lowbit import` + `lowbit eval --logits`, image by image (bench/peers/check_fixtures.py says how the
# images are made for each input shape). Output tee'd to bench/results/fixture-agreement-YYYY-MM-DD<letter>.txt
# (the first free letter). Usage:
#   bench/run_fixture_agreement.sh [PEERS_VENV]
# (venv: the argument, $PEERS_VENV, or bench/peers/.venv; it needs onnxruntime, onnx and numpy, see
# bench/peers/requirements.txt). Environment: DATA (MNIST-format Fashion-MNIST, default
# /usr/share/datasets/fashion-mnist), WORK (where the .npz data, imported models and logits go, default a temporary
# directory), THREADS (ORT threads, default 2), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
peers_setup "${1:-}"
WORK=$(realpath -m "${WORK:-$(mktemp -d)}")
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
OUT=bench/results
mkdir -p "$OUT" "$WORK"
LOG=$(next_log "$OUT/fixture-agreement")
exec > >(tee "$LOG") 2>&1
machine_line
echo "# data $DATA"
cargo build --release -q -p lowbit-cli
(cd bench/peers && "$PY" check_fixtures.py --lowbit "$TARGET/release/lowbit" --data "$DATA" --work "$WORK" \
  --threads "${THREADS:-2}" --json "$WORK/fixture-agreement.json")
