#!/usr/bin/env bash
# Issue-13 mixed precision against uniform allocations, PTQ and QAT, on one float model per seed (LeNet-5 by the
# issue-3 recipe: 5 epochs, batch 64, Adam 1e-3, full Fashion-MNIST). For activations at 8 and at 4 bits:
#   - `lowbit mixed --budget-bits B` (B = 2.5 and 3.0) chooses the weight bits per layer over the measured
#     one-layer costs, writes the allocation (a config file), PTQs it and measures it beside every uniform PTQ;
#   - QAT: the same allocation fine-tuned from the float model (LSQ, per-channel, QAT_EPOCHS epochs, Adam
#     QAT_LR with a cosine schedule), against uniform LSQ QAT at every weight width with the same recipe.
# Every accuracy is the integer engine's on the 10,000 test images; `mixed` chooses on training images the
# calibration does not use (MIXED_EXTRA="--measure-on test" chooses on the test images, as runs before 7e43a3d did).
# Output: bench/results/mixed/, a table on stdout (all seeds: python3 bench/summarize_seeds.py mixed).
# Usage: bench/run_mixed.sh [SEED] (default 1). Environment: MODEL (a float model to use instead of training one),
# NAME (prefix of the output files when MODEL is given, e.g. resnet20), QAT_EPOCHS (default 2), QAT_LR (default
# 2e-4), QAT_BATCH (default 64), QAT_EXTRA (more `train` options of every QAT run), MIXED_EXTRA (more `mixed`
# options), UNIFORM (uniform QAT weight widths, default "2 3 4 8"), DATA (default fashion-mnist),
# ACTS (activation widths in the order to run, default "8 4"), QAT_COST (gn: the QAT rows fine-tune the allocation
# `mixed --cost gn` chooses, options GN_EXTRA, instead of the measured one; reports `gn-mixed-*`, `qat-gn-mixed-*`),
# CARGO_TARGET_DIR, LOWBIT (a lowbit binary to run instead of building one); a report that exists already is
# kept (FRESH=1 reruns everything). ResNet-20 as in
# BENCHMARKS: MODEL=resnet20-seed1.f32 NAME=resnet20 QAT_BATCH=128 QAT_LR=1e-4
# QAT_EXTRA="--bn-fold running --lsq-init mse --add-bits 8" MIXED_EXTRA="--add-bits 8 --samples 2000 --refine 2"
# UNIFORM="2".
set -euo pipefail
cd "$(dirname "$0")/.."
SEED=${1:-1}
DATA=${DATA:-fashion-mnist}
EPOCHS=${QAT_EPOCHS:-2}
LR=${QAT_LR:-2e-4}
UNIFORM=${UNIFORM:-2 3 4 8}
read -ra QEXTRA <<< "${QAT_EXTRA:-}"
read -ra MEXTRA <<< "${MIXED_EXTRA:-}"
read -ra GEXTRA <<< "${GN_EXTRA:-}"
P=${NAME:+$NAME-}
OUT=bench/results/mixed
mkdir -p "$OUT"
if [[ -z "${LOWBIT:-}" ]]; then
  cargo build --release -q -p lowbit-cli
  LOWBIT="${CARGO_TARGET_DIR:-target}/release/lowbit"
fi
fresh() { [[ -n "${FRESH:-}" || ! -e "$1" ]]; }
if [[ -n "${MODEL:-}" ]]; then
  F32=$MODEL
else
  F32="$OUT/lenet5-seed$SEED.f32"
  fresh "$F32" && "$LOWBIT" train -q --data "$DATA" --model lenet5 --epochs 5 --batch-size 64 --seed "$SEED" \
    --no-baseline --out "$F32" > /dev/null
fi
qat=(--method qat --quantizer lsq --per-channel --epochs "$EPOCHS" --lr "$LR" --schedule cosine
  --batch-size "${QAT_BATCH:-64}" --seed "$SEED" "${QEXTRA[@]}")
for a in ${ACTS:-8 4}; do
  for b in 2.5 3; do
    r="$OUT/${P}mixed-a$a-b$b-seed$SEED"
    fresh "$r.json" && "$LOWBIT" mixed -q "$F32" --data "$DATA" --budget-bits "$b" --act-bits "$a" \
      --out-config "$r.toml" --report "$r.json" "${MEXTRA[@]}" > /dev/null
    if [[ "${QAT_COST:-measured}" == gn ]]; then
      # QAT fine-tunes the allocation of the Gauss-Newton estimate (the float model's curvature; no layer measured).
      r="$OUT/${P}gn-mixed-a$a-b$b-seed$SEED"
      fresh "$r.json" && "$LOWBIT" mixed -q "$F32" --data "$DATA" --budget-bits "$b" --act-bits "$a" --cost gn \
        --out-config "$r.toml" --report "$r.json" "${GEXTRA[@]}" > /dev/null
      r2="$OUT/${P}qat-gn-mixed-a$a-b$b-seed$SEED.json"
    else
      r2="$OUT/${P}qat-mixed-a$a-b$b-seed$SEED.json"
    fi
    fresh "$r2" && "$LOWBIT" train -q --data "$DATA" --init "$F32" --config "$r.toml" "${qat[@]}" \
      --act-bits "$a" --report "$r2" > /dev/null
  done
  for w in $UNIFORM; do
    r="$OUT/${P}qat-uniform-w${w}a$a-seed$SEED.json"
    fresh "$r" && "$LOWBIT" train -q --data "$DATA" --init "$F32" "${qat[@]}" --weight-bits "$w" --act-bits "$a" \
      --report "$r" > /dev/null
  done
done
python3 - "$OUT" "$SEED" "$P" "$UNIFORM" "${QAT_COST:-measured}" <<'PY'
import json, sys
out, seed, prefix, widths = sys.argv[1], sys.argv[2], sys.argv[3], [int(w) for w in sys.argv[4].split()]
gn = sys.argv[5] == "gn"
load = lambda p: json.load(open(f"{out}/{prefix}{p}"))
pp = lambda x: f"{x * 100:.2f}%"
print(f"Seed {seed}. Engine accuracy on the test set; sizes are the .lbq model bytes.")
print("| A | budget | method | mixed bits | mixed | mixed bytes | best uniform <= size | uniform | mixed - uniform |")
print("|---|---|---|---|---|---|---|---|---|")
for a in [8, 4]:
    qat_uniform = {w: load(f"qat-uniform-w{w}a{a}-seed{seed}.json") for w in widths}
    for b in ["2.5", "3"]:
        m = load(f"mixed-a{a}-b{b}-seed{seed}.json")
        bits = ",".join(str(x) for x in m["allocation"]["bits"])
        size = m["report"]["model_bytes"]
        fits = [u for u in m["uniform"] if u["model_bytes"] <= size]
        best = max(fits, key=lambda u: u["accuracy"]) if fits else None
        row = f"| A{a} | {b} | PTQ | {bits} | {pp(m['measured_accuracy'])} | {size:,} | "
        row += (f"W{best['bits']} ({best['model_bytes']:,} B) | {pp(best['accuracy'])} | "
                f"{(m['measured_accuracy'] - best['accuracy']) * 100:+.2f} pp |") if best else "none | - | - |"
        print(row)
        q = load(f"qat-{'gn-' if gn else ''}mixed-a{a}-b{b}-seed{seed}.json")
        if gn:
            bits = ",".join(str(x) for x in load(f"gn-mixed-a{a}-b{b}-seed{seed}.json")["allocation"]["bits"])
        qsize = q["model_bytes"]
        qfits = [(w, r) for w, r in qat_uniform.items() if r["model_bytes"] <= qsize]
        row = f"| A{a} | {b} | QAT | {bits} | {pp(q['test_accuracy'])} | {qsize:,} | "
        if qfits:
            w, r = max(qfits, key=lambda x: x[1]["test_accuracy"])
            row += (f"W{w} ({r['model_bytes']:,} B) | {pp(r['test_accuracy'])} | "
                    f"{(q['test_accuracy'] - r['test_accuracy']) * 100:+.2f} pp |")
        else:
            row += "none | - | - |"
        print(row)
    print(f"| A{a} | f32 | | | {pp(m['float_accuracy'])} | | | | |")
    print(f"| A{a} | uniform QAT | | | " + ", ".join(
        f"W{w} {pp(r['test_accuracy'])} ({r['model_bytes']:,} B)" for w, r in qat_uniform.items()) + " | | | | |")
PY
