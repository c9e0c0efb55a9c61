#!/usr/bin/env bash
# Issue 11: resnet:20 / mobilenet peers (PyTorch, Brevitas, ONNX Runtime), one program after another (never two
# timed jobs at once: the machine has 2 cores), output tee'd to bench/results/resnet-peers-YYYY-MM-DD<letter>.txt
# (the first free letter). Usage:
#   bench/run_resnet_peers.sh [speed|accuracy|lowbit-accuracy|all] [PEERS_VENV]
# (venv: the second argument, $PEERS_VENV, or bench/peers/.venv; see bench/peers/requirements.txt).
#   speed     ROUNDS (default 3) rounds of: lowbit's own commands (the hook below), then bench/peers/resnet_speed.py
#             (ORT f32 / int8 QDQ, PyTorch f32 / x86 int8 at batch 64 and 1 on 3x32x32, PyTorch f32 training steps
#             at batch 128 on 1x28x28, peak RSS of each in a fresh process). Minutes.
#   accuracy  lowbit's recipes (lowbit_accuracy below), then bench/peers/resnet_train.py (resnet20 option A seeds 1-3, option B and mobilenet seed 1, 8 epochs)
#             and bench/peers/resnet_quant.py (PTQ rows; Brevitas W4A4 / W2A2 QAT for resnet20). Hours.
#   lowbit-accuracy  only lowbit's recipes (no venv needed); SEEDS=1 makes it one seed (about an hour quiet).
# Environment: DATA (MNIST-format directory, default /usr/share/datasets/fashion-mnist), MODELS (where trained
# peer models go, default a temporary directory; they are not committed), SEEDS (default 1,2,3), EPOCHS (default 8),
# THREADS (default 2), SECONDS_PER_CASE (timed window, default 1), REPEATS (windows per case, default 5),
# CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
source bench/lib.sh
MODE="${1:-speed}"
case "$MODE" in speed | accuracy | lowbit-accuracy | all) ;; *)
  echo "usage: $0 [speed|accuracy|lowbit-accuracy|all] [PEERS_VENV]" >&2
  exit 2
  ;;
esac
VENV=$(realpath -m "${2:-${PEERS_VENV:-bench/peers/.venv}}")
PY="$VENV/bin/python"
[[ "$MODE" == lowbit-accuracy ]] || require_python "$PY"
# Absolute, because the peers run from bench/peers.
DATA=$(realpath -m "${DATA:-/usr/share/datasets/fashion-mnist}")
MODELS=$(realpath -m "${MODELS:-$(mktemp -d)}")
SEEDS="${SEEDS:-1,2,3}"
EPOCHS="${EPOCHS:-8}"
THREADS="${THREADS:-2}"
SECS="${SECONDS_PER_CASE:-1}"
REPEATS="${REPEATS:-5}"
ROUNDS="${ROUNDS:-3}"
TARGET="${CARGO_TARGET_DIR:-target}"
OUT=bench/results
mkdir -p "$OUT" "$MODELS"
LOG=$(next_log "$OUT/resnet-peers")
exec > >(tee "$LOG") 2>&1
machine_line
flags=$(grep -m1 '^flags' /proc/cpuinfo)
echo "# cpu flags: $(for f in avx2 fma avx512f avx512_vnni avx_vnni; do [[ " $flags " == *" $f "* ]] && printf '%s ' "$f"; done)"
echo "# mode $MODE, $THREADS threads, peers: $("$PY" -c 'import torch, onnxruntime, brevitas; print("torch", torch.__version__, "onnxruntime", onnxruntime.__version__, "brevitas", brevitas.__version__)' 2> /dev/null)"
peers() { (cd bench/peers && "$PY" "$@"); }

# Peak RSS of a command (GNU time's maximum resident set size), printed after its output.
peak_rss() {
  if [[ -x /usr/bin/time ]]; then
    /usr/bin/time -f "peak RSS: %M KiB ($*)" "$@"
  else
    "$@"
    echo "peak RSS: unavailable (no /usr/bin/time)"
  fi
}

lowbit_speed() {
  # lowbit's side of the speed rows, run right before the peers in every round so the ratios come from one run.
  cargo build --release -q -p lowbit-cli
  cargo build --release -q -p lowbit --example make_resnet_lbq --example train_step_timing
  local lowbit="$TARGET/release/lowbit"
  local model="$MODELS/resnet20-32x32x3-w8a8.lbq"
  # resnet:20 option A for 3x32x32, W8A8 per-channel PTQ (calibrated on the builtin sample, centred and
  # repeated over channels); weights do not change the speed.
  [[ -e "$model" ]] || "$TARGET/release/examples/make_resnet_lbq" "$model" > /dev/null
  # The engine alone first (the process holds only the engine, as each peer's does; `bench` times 5 windows of
  # SECONDS_PER_CASE x REPEATS / 5 s, the peers' REPEATS windows of SECONDS_PER_CASE with the defaults), then
  # beside lowbit's own f32 path (alternating windows, for the f32 row).
  echo "## lowbit bench --engine-only resnet:20 3x32x32 W8A8, RAYON_NUM_THREADS=$THREADS"
  RAYON_NUM_THREADS="$THREADS" peak_rss "$lowbit" bench "$model" --batch 64,1 --engine-only \
    --seconds "$(awk "BEGIN { print $SECS * $REPEATS }")"
  echo "## lowbit bench resnet:20 3x32x32 W8A8 (int = integer engine), RAYON_NUM_THREADS=$THREADS"
  RAYON_NUM_THREADS="$THREADS" peak_rss "$lowbit" bench "$model" --batch 64,1 --seconds "$SECS"
  echo "## lowbit f32 training steps, resnet:20 1x28x28, batch 128, RAYON_NUM_THREADS=$THREADS"
  RAYON_NUM_THREADS="$THREADS" peak_rss "$TARGET/release/examples/train_step_timing" resnet:20 128 "$REPEATS" 3
}

lowbit_accuracy() {
  # lowbit's recipes beside the peers' (same data, seeds, epochs): f32 resnet:20 (28x28x1 as the data has it,
  # Adam, batch 128, one-cycle to 2e-3), then from each f32 model PTQ W8A8 per-channel, LSQ W4A4 QAT for 3 epochs
  # and LSQ W2A2 (first and last layer 8-bit) for 5; mobilenet f32 and PTQ W8A8 per-channel for seed 1.
  # Both QAT rows fold the batch norms with running statistics, start the LSQ steps at their least-squared-error
  # values and keep the values that only feed a residual Add at 8 bits (--add-bits 8, as the Brevitas peer's
  # add operands). Fine-tuning rates (cosine): QAT_LR (W4A4, default 1e-4) and W2A2_LR (default 5e-4).
  # Reports: bench/results/resnet-lowbit-*.json.
  cargo build --release -q -p lowbit-cli
  local lowbit="$TARGET/release/lowbit" qat_lr="${QAT_LR:-1e-4}" w2a2_lr="${W2A2_LR:-5e-4}"
  local train=("$lowbit" train --quiet --data "$DATA" --batch-size 128)
  for seed in ${SEEDS//,/ }; do
    local f32="$MODELS/lowbit-resnet20-seed$seed.f32" tag="$OUT/resnet-lowbit-resnet20"
    echo "## lowbit resnet:20 seed $seed: f32, PTQ W8A8, LSQ W4A4 (3 epochs), LSQ W2A2 first/last 8-bit (5 epochs)"
    "${train[@]}" --model resnet:20 --epochs "$EPOCHS" --lr 2e-3 --schedule onecycle --seed "$seed" --out "$f32" \
      --report "$tag-f32-seed$seed.json"
    "${train[@]}" --init "$f32" --method ptq --weight-bits 8 --act-bits 8 --per-channel --seed "$seed" \
      --report "$tag-ptq-w8a8-seed$seed.json"
    "${train[@]}" --init "$f32" --quantizer lsq --weight-bits 4 --act-bits 4 --add-bits 8 --per-channel --epochs 3 \
      --lr "$qat_lr" --schedule cosine --bn-fold running --lsq-init mse --seed "$seed" \
      --report "$tag-lsq-w4a4-seed$seed.json"
    "${train[@]}" --init "$f32" --quantizer lsq --weight-bits 2 --act-bits 2 --per-channel --epochs 5 \
      --first-last-8bit --add-bits 8 --lr "$w2a2_lr" --schedule cosine --bn-fold running --lsq-init mse --seed "$seed" \
      --report "$tag-lsq-w2a2-seed$seed.json"
  done
  local mf32="$MODELS/lowbit-mobilenet-seed1.f32"
  echo "## lowbit mobilenet seed 1: f32, PTQ W8A8 per-channel"
  "${train[@]}" --model mobilenet --epochs "$EPOCHS" --lr 2e-3 --schedule onecycle --seed 1 --out "$mf32" \
    --report "$OUT/resnet-lowbit-mobilenet-f32-seed1.json"
  "${train[@]}" --init "$mf32" --method ptq --weight-bits 8 --act-bits 8 --per-channel --seed 1 \
    --report "$OUT/resnet-lowbit-mobilenet-ptq-w8a8-seed1.json"
}

if [[ "$MODE" == speed || "$MODE" == all ]]; then
  for round in $(seq 1 "$ROUNDS"); do
    echo "## round $round of $ROUNDS"
    lowbit_speed
    echo "## peers: bench/peers/resnet_speed.py --threads $THREADS --batches 64,1 (resnet20 option A, 3x32x32, PyTorch init seed 0)"
    peers resnet_speed.py --threads "$THREADS" --batches 64,1 --seconds "$SECS" --repeats "$REPEATS"
  done
fi

if [[ "$MODE" == lowbit-accuracy ]]; then
  lowbit_accuracy
fi

if [[ "$MODE" == accuracy || "$MODE" == all ]]; then
  lowbit_accuracy
  echo "## peers: f32 training, bench/peers/resnet_train.py --epochs $EPOCHS --threads $THREADS (models in $MODELS)"
  peers resnet_train.py --data "$DATA" --model resnet20 --seeds "$SEEDS" --epochs "$EPOCHS" --threads "$THREADS" \
    --out "$MODELS"
  peers resnet_train.py --data "$DATA" --model resnet20b,mobilenet --seeds 1 --epochs "$EPOCHS" \
    --threads "$THREADS" --out "$MODELS"
  echo "## peers: quantization rows, bench/peers/resnet_quant.py"
  for seed in ${SEEDS//,/ }; do
    peers resnet_quant.py --data "$DATA" --model resnet20 --weights "$MODELS/resnet20-seed$seed.pt" --seed "$seed" \
      --threads "$THREADS"
  done
  peers resnet_quant.py --data "$DATA" --model mobilenet --weights "$MODELS/mobilenet-seed1.pt" --seed 1 \
    --threads "$THREADS" --rows ptq-x86,ptq-x86-u8,ptq-ort
fi
echo "# done $(date -u +%Y-%m-%dT%H:%MZ), load average $(cut -d' ' -f1-3 /proc/loadavg); full output in $LOG"
