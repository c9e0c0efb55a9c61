#!/usr/bin/env bash
# Runs lowbit-runtime's tests for aarch64 with the (unverified) NEON tier, on an x86_64 Debian 12 machine: a cross
# build with Debian's Rust, executed under qemu-aarch64 user-mode emulation. Also checks that the default aarch64
# build of the workspace (NEON not compiled) builds without warnings.
#
# Needs, from Debian's packages (installed when missing; root or sudo): qemu-user, gcc-aarch64-linux-gnu, and
# rustc-web + libstd-rust-web-dev:arm64 (Debian's rustc and its aarch64 standard library, same version; rustup
# cannot fetch targets on a machine without its download server). The test binaries are linked statically: under
# Debian 12's qemu 7.2 a dynamically linked aarch64 program hangs in its first pthread_create (seen with C and
# Rust alike), a static one runs.
#
# Usage: scripts/test-aarch64.sh [extra cargo test arguments, e.g. a test name filter]
# Environment: CARGO_TARGET_DIR (default target; the cross build goes to its aarch64-cross subdirectory).
set -euo pipefail
cd "$(dirname "$0")/.."
target=aarch64-unknown-linux-gnu
need=()
command -v qemu-aarch64 >/dev/null || need+=(qemu-user)
command -v aarch64-linux-gnu-gcc >/dev/null || need+=(gcc-aarch64-linux-gnu)
[ -d /usr/lib/rustlib/$target ] || need+=(rustc-web libstd-rust-web-dev:arm64)
if [ ${#need[@]} -gt 0 ]; then
  echo "installing ${need[*]} (Debian packages for the aarch64 cross build)" >&2
  SUDO=""
  if [ "$(id -u)" != "0" ]; then SUDO="sudo"; fi
  dpkg --print-foreign-architectures | grep -qx arm64 || $SUDO dpkg --add-architecture arm64
  $SUDO apt-get update -qq
  DEBIAN_FRONTEND=noninteractive $SUDO apt-get install -y -qq --no-remove "${need[@]}"
fi
# Debian's rustc (rustc-web), not rustup's: it matches the arm64 standard library in /usr/lib/rustlib.
export RUSTC=/usr/bin/rustc
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_LINKER=aarch64-linux-gnu-gcc
# Warnings are errors in the workspace's crates (cargo caps lints of dependencies).
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUSTFLAGS="-C target-feature=+crt-static -D warnings"
export CARGO_TARGET_AARCH64_UNKNOWN_LINUX_GNU_RUNNER=qemu-aarch64
target_dir="${CARGO_TARGET_DIR:-target}/aarch64-cross"
"$RUSTC" --version
qemu-aarch64 --version | head -1
# The default build (no unverified tier) of every crate, then the runtime's tests with the NEON tier.
cargo check --workspace --target $target --target-dir "$target_dir"
cargo test -p lowbit-runtime --features unverified-neon --target $target --target-dir "$target_dir" \
  --lib --test kernels_exact --test kernels_subbyte --test kernels_conv --test kernels_api --test engine_tests "$@"
