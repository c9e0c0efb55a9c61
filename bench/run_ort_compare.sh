#!/usr/bin/env bash
# Issues 12 and 13: lowbit's PTQ against ONNX Runtime's quantize_static on the same ONNX float models, data and
# calibration images. One program after another, output tee'd to bench/results/ort-compare-YYYY-MM-DD<letter>.txt
# (the first free letter), JSON per run in bench/results/ort-compare/. Usage:
#   bench/run_ort_compare.sh [PEERS_VENV]
# (venv: the argument, $PEERS_VENV, or bench/peers/.venv; see bench/peers/requirements.txt).
# Steps:
#   1. PyTorch f32 models on full Fashion-MNIST, exported to ONNX (opset 17) in $MODELS: the 784-64-10 MLP and
#      LeNet-5 for seeds $SEEDS (bench/peers/ort_quantize.py train: Adam 1e-3, $EPOCHS epochs, batch 32 / 64) and
#      ResNet-20 option A for seed 1 (bench/peers/resnet_train.py: Adam, batch 128, one-cycle to 2e-3,
#      $RESNET_EPOCHS epochs, 3 by default to fit the shared machine; issue 11's recipe has 8).
#   2. Each model: `lowbit import`, then ORT's rows (bench/peers/ort_quantize.py ort: f32; quantize_static QDQ
#      per-channel with MinMax / Entropy / Percentile, int8 weights, uint8 and int8 activations; int4 weights with
#      uint8 activations) and lowbit's (`lowbit train --init MODEL.f32 --method ptq --per-channel`: W8A8 with each
#      activation calibrator and min-max / MSE weight scales; W4A8 nearest min-max; W4A8, W3A8, W2A8 AdaRound with
#      MSE weight scales and bias correction; W4A8 AdaRound without it), both calibrated on the same 2,000 training images (ort_quantize.py's
#      docstring: lowbit's every-30th-image pick mirrored in Python) with pixels / 255 on both sides.
#   3. With LSQ=1 (slow), ResNet-20 LSQ W4A4 QAT fine-tuning of the imported model for $QAT_EPOCHS (2) epochs.
#   4. The tables (bench/peers/ort_summary.py).
# A JSON result that exists already is kept, and so is a model in $MODELS (FRESH=1 reruns every row).
# Environment: DATA (MNIST-format directory, default /usr/share/datasets/fashion-mnist), MODELS (default a
# temporary directory), SEEDS (default 1,2,3), EPOCHS (5), RESNET_EPOCHS (3), THREADS (1: accuracy only, and a
# second spinning thread slows PyTorch badly on the loaded 2-core machine), RESNET=0 skips the ResNet, ORT=0 skips
# ORT's rows (lowbit's only), SEEDS=" " only the ResNet, LSQ=1,
# QAT_EPOCHS (2), QAT_LR (2e-4), CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
peers_setup "${1:-}"
MODELS=$(realpath -m "${MODELS:-$(mktemp -d)}")
SEEDS="${SEEDS:-1,2,3}"
EPOCHS="${EPOCHS:-5}"
RESNET_EPOCHS="${RESNET_EPOCHS:-3}"
THREADS="${THREADS:-1}"
QAT_EPOCHS="${QAT_EPOCHS:-2}"
QAT_LR="${QAT_LR:-2e-4}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT=bench/results/ort-compare
mkdir -p "$OUT" "$MODELS"
LOG=$(next_log "bench/results/ort-compare")
exec > >(tee "$LOG") 2>&1
machine_line
echo "# peers: $("$PY" -c 'import torch, onnx, onnxruntime; print("torch", torch.__version__, "onnx", onnx.__version__, "onnxruntime", onnxruntime.__version__)' 2> /dev/null)"
echo "# data $DATA, models in $MODELS, seeds $SEEDS, $EPOCHS epochs (ResNet-20: $RESNET_EPOCHS), $THREADS thread(s)"
peers() { (cd bench/peers && "$PY" "$@"); }
cargo build --release -q -p lowbit-cli
LOWBIT="$TARGET/release/lowbit"
fresh() { [[ -n "${FRESH:-}" || ! -s "$1" ]]; }

# lowbit's PTQ rows for one imported model: NAME -> $OUT/lowbit-NAME-ROW.json (`name` and `ptq` are
# lowbit_rows' locals, which bash's dynamic scope shows to the two helpers).
w8a8() {
  local wcal=$1 calib r
  for calib in minmax percentile:99.99 mse entropy; do
    r="$OUT/lowbit-$name-w8a8-$calib-w$wcal.json"
    fresh "$r" || continue
    "${ptq[@]}" --weight-bits 8 --calibration "$calib" --weight-calibration "$wcal" --report "$r" > /dev/null
    echo "lowbit $name W8A8 act $calib weights $wcal: done"
  done
}
w4a8_nearest() {
  local r="$OUT/lowbit-$name-w4a8-nearest.json"
  if fresh "$r"; then
    "${ptq[@]}" --weight-bits 4 --report "$r" > /dev/null
    echo "lowbit $name W4A8 nearest min-max: done"
  fi
}
lowbit_rows() {
  local name=$1 f32="$MODELS/$1.f32" seed=$2
  local ptq=("$LOWBIT" train -q --data "$DATA" --init "$f32" --method ptq --per-channel --act-bits 8 --seed "$seed")
  # Order: on the slow ResNet the main rows (W8A8 with min-max weight scales, W4A8 AdaRound) come first.
  w8a8 minmax
  local r
  for bits in 4 3 2; do
    r="$OUT/lowbit-$name-w${bits}a8-adaround-bc.json"
    if fresh "$r"; then
      local extra=(--adaround --bias-correction)
      # At 2 bits lowbit's weights are ternary: no MSE clipping (the threshold rule), AdaRound on {-1, 0, 1} * alpha.
      [[ $bits != 2 ]] && extra+=(--weight-calibration mse)
      start=$(date +%s)
      "${ptq[@]}" --weight-bits "$bits" "${extra[@]}" --report "$r" > /dev/null
      echo "lowbit $name W${bits}A8 AdaRound + bias correction: done in $(($(date +%s) - start)) s"
    fi
    if [[ $bits == 4 ]]; then w4a8_nearest; fi
  done
  w8a8 mse
  r="$OUT/lowbit-$name-w4a8-adaround.json"
  if fresh "$r"; then
    start=$(date +%s)
    "${ptq[@]}" --weight-bits 4 --adaround --weight-calibration mse --report "$r" > /dev/null
    echo "lowbit $name W4A8 AdaRound (no bias correction): done in $(($(date +%s) - start)) s"
  fi
  # The paper's iteration count (Nagel et al. run 10,000 per layer; lowbit's default is 1,000).
  r="$OUT/lowbit-$name-w4a8-adaround10k.json"
  if fresh "$r"; then
    start=$(date +%s)
    "${ptq[@]}" --weight-bits 4 --adaround --adaround-iters 10000 --weight-calibration mse --report "$r" > /dev/null
    echo "lowbit $name W4A8 AdaRound 10,000 iterations: done in $(($(date +%s) - start)) s"
  fi
}

compare() {
  local name=$1 seed=$2 unfused=${3:-}
  "$LOWBIT" import "$MODELS/$name.onnx" --out "$MODELS/$name.f32"
  local o="$OUT/ort-$name.jsonl" rows=() row
  if fresh "$o"; then
    rows=(all)
  else
    # Rows added to ort_quantize.py since the file was written.
    for row in $(cd bench/peers && "$PY" -c 'import ort_quantize; print(" ".join(ort_quantize.ROWS))'); do
      grep -q "\"row\": \"$row\"" "$o" || rows+=("$row")
    done
  fi
  if ((${#rows[@]})) && [[ "${ORT:-1}" != 0 ]]; then
    # ORT's calibrators also print progress on stdout: keep the JSON lines.
    peers ort_quantize.py --data "$DATA" --threads "$THREADS" ort --onnx "$MODELS/$name.onnx" $unfused \
      --rows "$(IFS=,; echo "${rows[*]}")" 2> /dev/null | grep '^{' > "$o.tmp"
    [[ ${rows[0]} == all ]] && : > "$o"
    cat "$o.tmp" >> "$o"
    rm "$o.tmp"
  fi
  [[ -e "$o" ]] && echo "ORT $name: $(wc -l < "$o") rows"
  lowbit_rows "$name" "$seed"
}

for seed in ${SEEDS//,/ }; do
  for model in mlp lenet5; do
    [[ -s "$MODELS/$model-seed$seed.onnx" ]] ||
      peers ort_quantize.py --data "$DATA" --threads "$THREADS" train --model "$model" --seed "$seed" \
        --epochs "$EPOCHS" --out "$MODELS" 2> /dev/null | tee -a "$OUT/pytorch-train.jsonl"
    compare "$model-seed$seed" "$seed"
  done
done

if [[ "${RESNET:-1}" != 0 ]]; then
  [[ -s "$MODELS/resnet20-seed1.onnx" ]] ||
    peers resnet_train.py --data "$DATA" --model resnet20 --seeds 1 --epochs "$RESNET_EPOCHS" --threads "$THREADS" \
      --no-epoch-eval --out "$MODELS" 2> /dev/null | tee -a "$OUT/pytorch-train.jsonl"
  # The ResNet's ORT rows skip the second, unoptimised session (slow, and a simulation rather than ORT's kernels).
  compare resnet20-seed1 1 --no-unfused
  r="$OUT/lowbit-resnet20-seed1-lsq-w4a4.json"
  if [[ "${LSQ:-0}" == 1 ]] && fresh "$r"; then
    start=$(date +%s)
    "$LOWBIT" train -q --data "$DATA" --init "$MODELS/resnet20-seed1.f32" --quantizer lsq --weight-bits 4 \
      --act-bits 4 --per-channel --epochs "$QAT_EPOCHS" --batch-size 128 --lr "$QAT_LR" --schedule cosine \
      --seed 1 --report "$r" > /dev/null
    echo "lowbit resnet20-seed1 LSQ W4A4 QAT $QAT_EPOCHS epochs: done in $(($(date +%s) - start)) s"
  fi
fi
python3 bench/peers/ort_summary.py "$OUT"
echo "# done $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg); full output in $LOG"
