#!/usr/bin/env bash
# Issue-14 figures for a library host: MLP batch-256 throughput with the engine's helper threads spinning between
# batches or parking (the library's default), against the batch handed to rayon (split_ab), and one shared Engine
# with 1 and 2 concurrent callers (concurrent_callers). Each example alternates its cases in short windows in one
# process, so compare ratios within a run. Usage:
#   bench/run_engine_embed.sh [ROUNDS]      (default 3)
# Environment: CARGO_TARGET_DIR (default target), DATA (MNIST-format directory, default
# /usr/share/datasets/fashion-mnist), MODEL (default bench/results/engine-bench-w8a8.lbq, trained here if missing,
# as bench/run_engine_peers.sh trains it).
set -euo pipefail
cd "$(dirname "$0")/.."
ROUNDS="${1:-3}"
TARGET="${CARGO_TARGET_DIR:-target}"
DATA="${DATA:-/usr/share/datasets/fashion-mnist}"
MODEL="${MODEL:-bench/results/engine-bench-w8a8.lbq}"
cargo build --release -q -p lowbit-cli
cargo build --release -q -p lowbit-runtime --example split_ab --example concurrent_callers
if [[ ! -e "$MODEL" ]]; then
  mkdir -p "$(dirname "$MODEL")"
  "$TARGET/release/lowbit" train --quiet --data "$DATA" --epochs 5 --weight-bits 8 --act-bits 8 --per-channel \
    --no-baseline --seed 1 --out "$MODEL" > /dev/null
fi
for round in $(seq 1 "$ROUNDS"); do
  echo "# round $round, $(date -u +%Y-%m-%dT%H:%MZ) $(grep -m1 'model name' /proc/cpuinfo | cut -d: -f2 | xargs)," \
    "$(nproc) cores, load average $(cut -d' ' -f1-3 /proc/loadavg)"
  echo "## cargo run --release -p lowbit-runtime --example split_ab -- $MODEL"
  "$TARGET/release/examples/split_ab" "$MODEL"
  echo "## cargo run --release -p lowbit-runtime --example concurrent_callers -- $MODEL"
  "$TARGET/release/examples/concurrent_callers" "$MODEL"
done
