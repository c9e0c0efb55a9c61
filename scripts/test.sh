#!/usr/bin/env bash
# lowbit's test command: installs what the tests need (the Debian Fashion-MNIST package), runs every test, then
# checks that the docs build without warnings and that every crate packages.
set -euo pipefail
cd "$(dirname "$0")/.."
if [ ! -e /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ]; then
  echo "installing dataset-fashion-mnist (needed by the full-data tests)" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq dataset-fashion-mnist
fi
cargo test --workspace --release
# The public API documents without a warning (broken or private intra-doc links, ambiguous names).
RUSTDOCFLAGS="-D warnings" cargo doc --no-deps --workspace --quiet
# Every crate packages and its package builds on its own, as `cargo publish` would: only files inside the crate's
# directory ship, and the workspace crates resolve from each other's packages. Offline: the tests above fetched
# every dependency. About 15 s with a warm target directory; a cold one adds a dev-profile build of the
# dependencies (1.5 min of CPU).
cargo package --workspace --locked --offline --allow-dirty --quiet
