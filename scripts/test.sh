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
# Cargo unpacks the packages it verifies against (lowbit-runtime, when verifying lowbit) into
# $CARGO_HOME/registry/src and never unpacks the same name and version again, so a second run would build against
# the first run's sources. A cargo home of our own under target/ (sharing the real one's index and downloaded
# crates) lets each run drop those copies without touching anything outside this checkout.
REAL_CARGO_HOME="${CARGO_HOME:-$HOME/.cargo}"
PKG_HOME="$PWD/target/package-home"
mkdir -p "$PKG_HOME/registry"
ln -sfn "$REAL_CARGO_HOME/registry/index" "$PKG_HOME/registry/index"
ln -sfn "$REAL_CARGO_HOME/registry/cache" "$PKG_HOME/registry/cache"
rm -rf "$PKG_HOME"/registry/src/-*
# Cargo also trusts its compiled copies of registry crates by name and version, so the verification builds get a
# target directory of their own in which our three crates are always rebuilt (their dependencies stay cached).
PKG_TARGET="$PWD/target/package-build"
rm -rf "$PKG_TARGET"/debug/.fingerprint/lowbit-* "$PKG_TARGET"/debug/deps/liblowbit*
CARGO_HOME="$PKG_HOME" CARGO_TARGET_DIR="$PKG_TARGET" \
  cargo package --workspace --locked --offline --allow-dirty --quiet
