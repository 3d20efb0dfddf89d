#!/usr/bin/env bash
# The whole test suite, exactly as CI runs it. Installs what it needs (QEMU
# included) on a fresh Debian machine with a Rust toolchain.
#
#   scripts/test.sh            everything
#   VMSTREAM_SKIP_QEMU=1 ...   skip the real-QEMU interop tests
#   VMSTREAM_FUZZ_SECONDS=N    fuzz smoke run length per target (default 5)
set -euo pipefail
cd "$(dirname "$0")/.."

step() { printf '\n=== %s\n' "$*"; }
start=$SECONDS

step "format"
cargo fmt --all --check

step "clippy"
cargo clippy --locked --workspace --all-targets -- -D warnings

step "build"
cargo build --locked --workspace --all-targets

step "tests"
cargo test --locked --workspace

step "docs"
RUSTDOCFLAGS="-D warnings" cargo doc --locked --no-deps --workspace --quiet

step "benchmarks compile and run once"
cargo bench --locked --workspace --no-run --quiet
VMSTREAM_BENCH_MIB=8 cargo bench --locked -p vmstream --bench pages -- --test

if [[ -x scripts/fuzz-smoke.sh ]]; then
    step "fuzz smoke"
    scripts/fuzz-smoke.sh "${VMSTREAM_FUZZ_SECONDS:-5}"
fi

if [[ "${VMSTREAM_SKIP_QEMU:-0}" != 1 ]]; then
    step "real QEMU interop (QEMU 7.2 and 10.0)"
    scripts/install-qemu.sh
    cargo build --locked --release -p vmstream-cli
    python3 scripts/qemu_interop.py
    python3 scripts/esp_compat.py target/release/vmstream
    python3 scripts/relay_test.py target/release/vmstream
fi

step "done in $((SECONDS - start)) s"
