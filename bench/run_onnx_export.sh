#!/usr/bin/env bash
# Issue 12, ONNX export: lowbit's exports run by ONNX Runtime on the full Fashion-MNIST test set (10,000 images),
# compared image by image with lowbit (the integer engine for .lbq models). Output tee'd to
# bench/results/onnx-export-YYYY-MM-DD<letter>.txt (the first free letter). Usage:
#   bench/run_onnx_export.sh [PEERS_VENV]
# (venv: the argument, $PEERS_VENV, or bench/peers/.venv; it needs onnxruntime, onnx and numpy, see
# bench/peers/requirements.txt).
# For MLP (mlp:784-64-10) and LeNet-5: the f32 model (trained here for EPOCHS epochs with seed 1, or taken from
# $MLP_F32 / $LENET_F32), PTQ W8A8 and W4A8 per-channel (min-max, 2,000 calibration samples), then for the f32
# model and each .lbq: `lowbit export` (for a .lbq also with --weight-type int8, run by ORT fused and with its
# graph optimisations off), `lowbit eval --predictions`, bench/peers/check_onnx_export.py.
# For ResNet and MobileNet: the trained float models $RESNET_F32 and $MOBILENET_F32 (skipped with a message when
# unset: this script trains only the small models), PTQ W8A8 per-channel (LARGE_WBITS="8 4" adds W4A8: the quantized
# evaluation of a ResNet-20 runs the scalar integer simulation over the test set, minutes per model), the same
# checks. lowbit's predictions are computed once per model (the .pred.txt beside it, reused while newer than it).
# Environment: DATA (MNIST-format directory, default /usr/share/datasets/fashion-mnist), MODELS (where models and
# exports go, default a temporary directory), EPOCHS (default 5), MLP_F32, LENET_F32 (trained float models to use
# instead of training), RESNET_F32, MOBILENET_F32, ROWS (which of mlp lenet5 resnet mobilenet to run, default
# all), LARGE_WBITS (default 8), THREADS (ORT threads, default 2), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
peers_setup "${1:-}"
MODELS=$(realpath -m "${MODELS:-$(mktemp -d)}")
EPOCHS="${EPOCHS:-5}"
ROWS="${ROWS:-mlp lenet5 resnet mobilenet}"
THREADS="${THREADS:-2}"
TARGET=$(realpath -m "${CARGO_TARGET_DIR:-target}")
OUT=bench/results
mkdir -p "$OUT" "$MODELS"
LOG=$(next_log "$OUT/onnx-export")
exec > >(tee "$LOG") 2>&1
machine_line
echo "# data $DATA, models $MODELS, $("$PY" -c 'import onnxruntime, onnx; print("onnxruntime", onnxruntime.__version__, "onnx", onnx.__version__)')"
cargo build --release -q -p lowbit-cli
LOWBIT="$TARGET/release/lowbit"

check() { # MODEL_FILE [EXPORT FLAGS...]: export, lowbit's predictions, ORT's comparison
  local model="$1" stem="${1%.*}"
  shift
  local onnx="$stem${1:+-${2:-}}.onnx"
  echo "## lowbit export $(basename "$model") $*"
  "$LOWBIT" export "$model" --onnx "$onnx" "$@"
  if [[ ! "$stem.pred.txt" -nt "$model" ]]; then
    "$LOWBIT" eval "$model" --data "$DATA" --predictions "$stem.pred.txt" > "$stem.eval.txt"
  fi
  head -1 "$stem.eval.txt"
  (cd bench/peers && "$PY" check_onnx_export.py "$onnx" --data "$DATA" --predictions "$stem.pred.txt" \
    --threads "$THREADS" --json "${onnx%.onnx}.ort.json")
}

for spec in mlp:784-64-10 lenet5 resnet mobilenet; do
  name=${spec%%:*}
  [[ " $ROWS " == *" $name "* ]] || continue
  case $name in
    mlp) given="${MLP_F32:-}" ;;
    lenet5) given="${LENET_F32:-}" ;;
    resnet) given="${RESNET_F32:-}" ;;
    mobilenet) given="${MOBILENET_F32:-}" ;;
  esac
  f32="$MODELS/$name.f32"
  if [[ -n "$given" ]]; then
    # cp -p keeps the model's time, so predictions computed earlier for the same model stay valid.
    [[ "$(realpath "$given")" == "$f32" ]] || cp -p "$given" "$f32"
    echo "## $spec: f32 model $(basename "$given")"
  elif [[ $name == resnet || $name == mobilenet ]]; then
    echo "## $spec: skipped (set ${name^^}_F32 to a trained float model)"
    continue
  elif [[ ! -e "$f32" ]]; then
    echo "## $spec: training f32, $EPOCHS epochs, seed 1"
    "$LOWBIT" train -q --data "$DATA" --model "$spec" --epochs "$EPOCHS" --seed 1 --out "$f32" | tail -1
  fi
  echo "## $spec f32"
  check "$f32"
  wbits_list="8 4"
  [[ $name == resnet || $name == mobilenet ]] && wbits_list="${LARGE_WBITS:-8}"
  for wbits in $wbits_list; do
    lbq="$MODELS/$name-w${wbits}a8.lbq"
    "$LOWBIT" train -q --data "$DATA" --init "$f32" --method ptq --per-channel --weight-bits "$wbits" \
      --act-bits 8 --seed 1 --out "$lbq" > /dev/null
    echo "## $spec PTQ W${wbits}A8 per-channel"
    check "$lbq"
    # int8 weights (symmetric, zero point 0): ONNX Runtime's AVX2 u8 x s8 kernels saturate (see the module doc
    # of lowbit::onnx::export); the ORT_DISABLE_ALL row runs the same file unfused, in float.
    check "$lbq" --weight-type int8
    (cd bench/peers && "$PY" check_onnx_export.py "${lbq%.lbq}-int8.onnx" --data "$DATA" \
      --predictions "${lbq%.lbq}.pred.txt" --threads "$THREADS" --no-optimization | sed -n 2,3p)
  done
done
