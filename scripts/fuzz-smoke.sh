#!/usr/bin/env bash
# Short fuzzing run of every cargo-fuzz target in fuzz/, for CI.
#
#   scripts/fuzz-smoke.sh [SECONDS]    seconds of fuzzing per target (default 10)
#
# For each target (as listed by `cargo fuzz list`), in this order:
#   1. every saved input in fuzz/regressions/<target>/ is run once, so fixed
#      bugs stay fixed;
#   2. the target is fuzzed for SECONDS, starting from the committed seeds in
#      fuzz/seeds/<target>/ plus a scratch corpus in target/fuzz/corpus/<target>/
#      (kept between runs, never committed; the fuzzer writes only there).
# Crashing inputs land in fuzz/artifacts/<target>/ (git-ignored); the log of
# each run is in target/fuzz/logs/<target>.log.
#
# Environment:
#   VMSTREAM_FUZZ_TARGETS="a b"   run only these targets
#   VMSTREAM_FUZZ_SANITIZER=none  build without AddressSanitizer (default: address):
#                                 about 5x the executions, but no -malloc_limit_mb
#
# Needs only stable Rust: RUSTC_BOOTSTRAP=1 lets cargo-fuzz pass its -Z flags.
# Installs cargo-fuzz if it is missing.
set -euo pipefail
cd "$(dirname "$0")/.."

seconds=${1:-10}
if ! [[ $seconds =~ ^[0-9]+$ ]]; then
    echo "usage: $0 [SECONDS]" >&2
    exit 2
fi
sanitizer=${VMSTREAM_FUZZ_SANITIZER:-address}

export RUSTC_BOOTSTRAP=1
if ! cargo fuzz --version >/dev/null 2>&1; then
    echo "installing cargo-fuzz"
    cargo install cargo-fuzz --locked
fi

# Release build with debug assertions (integer overflow checks) on.
build=(--fuzz-dir fuzz --debug-assertions --sanitizer "$sanitizer")
if [[ $sanitizer != address ]]; then
    # Keep the default build's cache when trying another sanitizer.
    build+=(--target-dir "fuzz/target/sanitizer-$sanitizer")
fi
# A single allocation above 64 MiB is a failure: the targets read with Limits of
# 1 MiB per record and 16 MiB of decoded values.
limits=(-rss_limit_mb=2048 -malloc_limit_mb=64 -timeout=10)

if [[ -n ${VMSTREAM_FUZZ_TARGETS:-} ]]; then
    read -r -a targets <<<"$VMSTREAM_FUZZ_TARGETS"
else
    mapfile -t targets < <(cargo fuzz list --fuzz-dir fuzz)
fi
if [[ ${#targets[@]} -eq 0 ]]; then
    echo "no fuzz targets found" >&2
    exit 1
fi

start=$SECONDS
echo "building the fuzz targets (sanitizer: $sanitizer)"
cargo fuzz build "${build[@]}"
echo "built in $((SECONDS - start)) s"

mkdir -p target/fuzz/logs
failed=()
for t in "${targets[@]}"; do
    log=target/fuzz/logs/$t.log
    : >"$log"

    mapfile -t saved < <(find "fuzz/regressions/$t" -type f 2>/dev/null | sort)
    if [[ ${#saved[@]} -gt 0 ]]; then
        if cargo fuzz run "${build[@]}" "$t" "${saved[@]}" -- "${limits[@]}" >>"$log" 2>&1; then
            echo "$t: ${#saved[@]} regression inputs pass"
        else
            echo "$t: a regression input fails (log: $log)"
            grep -m1 -A3 -E "panicked at|ERROR: " "$log" || tail -n 20 "$log"
            failed+=("$t (regressions)")
            continue
        fi
    fi

    corpus=target/fuzz/corpus/$t
    mkdir -p "$corpus"
    seeds=()
    [[ -d fuzz/seeds/$t ]] && seeds=("fuzz/seeds/$t")
    t0=$SECONDS
    if cargo fuzz run "${build[@]}" "$t" "$corpus" "${seeds[@]}" -- \
        "${limits[@]}" -max_total_time="$seconds" -print_final_stats=1 >>"$log" 2>&1; then
        stats=$(grep -E '^#[0-9]+[[:space:]]+DONE' "$log" | tail -n1 | grep -oE 'cov: [0-9]+ ft: [0-9]+ corp: [^ ]+' || true)
        rate=$(grep -oE 'average_exec_per_sec: +[0-9]+' "$log" | grep -oE '[0-9]+$' || true)
        echo "$t: ok in $((SECONDS - t0)) s, ${rate:-?} execs/s, ${stats:-no stats}"
    else
        echo "$t: FAILED (log: $log)"
        grep -m1 -A3 -E "panicked at|ERROR: " "$log" || tail -n 20 "$log"
        grep -E "^(Failing input|[[:space:]]+fuzz/artifacts/)" "$log" || true
        failed+=("$t")
    fi
done

echo "fuzz smoke: $((SECONDS - start)) s in all"
if [[ ${#failed[@]} -gt 0 ]]; then
    echo "failed: ${failed[*]}" >&2
    exit 1
fi
