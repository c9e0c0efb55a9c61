#!/usr/bin/env bash
# Issue 11: resnet:20 / mobilenet peers (PyTorch, Brevitas, ONNX Runtime), one program after another (never two
# timed jobs at once: the machine has 2 cores), output tee'd to bench/results/resnet-peers-YYYY-MM-DD<letter>.txt
# (the first free letter). Usage:
#   bench/run_resnet_peers.sh [speed|accuracy|all] [PEERS_VENV]
# (venv: the second argument, $PEERS_VENV, or bench/peers/.venv; see bench/peers/requirements.txt).
#   speed     ROUNDS (default 3) rounds of: lowbit's own commands (the hook below), then bench/peers/resnet_speed.py
#             (ORT f32 / int8 QDQ, PyTorch f32 / x86 int8 at batch 64 and 1 on 3x32x32, PyTorch f32 training steps
#             at batch 128 on 1x28x28, peak RSS of each in a fresh process). Minutes.
#   accuracy  bench/peers/resnet_train.py (resnet20 option A seeds 1-3, option B and mobilenet seed 1, 8 epochs)
#             and bench/peers/resnet_quant.py (PTQ rows; Brevitas W4A4 / W2A2 QAT for resnet20). Hours.
# Environment: DATA (MNIST-format directory, default /usr/share/datasets/fashion-mnist), MODELS (where trained
# peer models go, default a temporary directory; they are not committed), SEEDS (default 1,2,3), EPOCHS (default 8),
# THREADS (default 2), SECONDS_PER_CASE (timed window, default 1), REPEATS (windows per case, default 5),
# CARGO_TARGET_DIR (default target).
set -euo pipefail
cd "$(dirname "$0")/.."
MODE="${1:-speed}"
case "$MODE" in speed | accuracy | all) ;; *) echo "usage: $0 [speed|accuracy|all] [PEERS_VENV]" >&2; exit 2 ;; esac
VENV=$(realpath -m "${2:-${PEERS_VENV:-bench/peers/.venv}}")
PY="$VENV/bin/python"
[[ -x "$PY" ]] || { echo "$0: no python at $PY (make the venv: see bench/peers/requirements.txt)" >&2; exit 1; }
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
for letter in {a..z}; do
  LOG="$OUT/resnet-peers-$(date -u +%F)$letter.txt"
  [[ -e "$LOG" ]] || break
done
exec > >(tee "$LOG") 2>&1
echo "# $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs), $(nproc) cores," \
  "load average $(cut -d' ' -f1-3 /proc/loadavg), git $(git rev-parse --short HEAD 2>/dev/null || echo '?')"
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
  # ---- lowbit hook (issue 11): the lead fills this in once the CLI can build and bench resnet:20 ----
  # The commands run here, in every round, right before the peers, so the ratios come from one run. A template
  # (flag names are placeholders until the CLI has them):
  #   cargo build --release -q -p lowbit-cli
  #   LOWBIT="$TARGET/release/lowbit"
  #   MODEL="$MODELS/resnet20-w8a8-32x32x3.lbq"
  #   [[ -e "$MODEL" ]] || "$LOWBIT" train --quiet --model resnet:20 --input 3x32x32 --epochs 0 \
  #     --weight-bits 8 --act-bits 8 --per-channel --method ptq --out "$MODEL"
  #   echo "## lowbit bench resnet:20 3x32x32 (int = integer engine), $THREADS threads"
  #   peak_rss "$LOWBIT" bench "$MODEL" --batch 64,1 --seconds "$SECS" --threads "$THREADS"
  #   echo "## lowbit f32 training throughput, resnet:20 1x28x28, batch 128"
  #   "$LOWBIT" train --quiet --data "$DATA" --model resnet:20 --epochs 1 --batch-size 128 --no-baseline \
  #     --report "$MODELS/lowbit-resnet20-epoch.json"
  echo "## lowbit: hook not filled in yet (bench/run_resnet_peers.sh, lowbit_speed)"
}

lowbit_accuracy() {
  # ---- lowbit hook (issue 11): the lowbit recipes beside the peers' (same data, seeds, epochs) ----
  #   "$LOWBIT" train --quiet --data "$DATA" --model resnet:20 --epochs "$EPOCHS" --batch-size 128 \
  #     --lr 2e-3 --schedule onecycle --seed S --report "$OUT/resnet20-f32-seedS.json"   (etc.)
  echo "## lowbit: hook not filled in yet (bench/run_resnet_peers.sh, lowbit_accuracy)"
}

if [[ "$MODE" == speed || "$MODE" == all ]]; then
  for round in $(seq 1 "$ROUNDS"); do
    echo "## round $round of $ROUNDS"
    lowbit_speed
    echo "## peers: bench/peers/resnet_speed.py --threads $THREADS --batches 64,1 (resnet20 option A, 3x32x32, PyTorch init seed 0)"
    peers resnet_speed.py --threads "$THREADS" --batches 64,1 --seconds "$SECS" --repeats "$REPEATS"
  done
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
