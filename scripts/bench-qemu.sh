#!/usr/bin/env bash
# QEMU stream conversion benchmark.
#
#   scripts/bench-qemu.sh [GIB]        (default 1)
#
# Makes a QEMU 7.2 stream of a paused guest whose RAM holds GIB GiB of random
# bytes, then times, in one run on this machine:
#   * QEMU -> vmstream and vmstream -> QEMU through stdin/stdout (`vmstream
#     convert - -`), with peak RSS, and checks the round trip is byte-identical;
#   * with ANALYZE_MIGRATION=path/to/analyze-migration.py set: its `-x` against
#     `vmstream extract` on the same stream, and its `-d state` against
#     `vmstream dump` on a stream with many devices, with the ratios.
# Each timing is the median of 3 runs.
set -euo pipefail
cd "$(dirname "$0")/.."
gib=${1:-1}
work=${BENCH_DIR:-target/bench-qemu}
mkdir -p "$work"
work=$(cd "$work" && pwd)
cargo build --locked --release -p vmstream-cli -q
vms=$PWD/target/release/vmstream
scripts/install-qemu.sh >/dev/null

big=$work/random-${gib}g.mig
if [[ ! -s $big ]]; then
    head -c $((gib << 30)) /dev/urandom >"$work/random.bin"
    python3 - "$work" "$gib" <<'PY'
import sys, os, json, subprocess, time, socket
sys.path.insert(0, "scripts")
import qemu_tool
work, gib = sys.argv[1], int(sys.argv[2])
sock = os.path.join(work, "bench.sock")
if os.path.exists(sock):
    os.unlink(sock)
proc, qmp = qemu_tool.start("7.2", "pc-q35-7.2", (gib << 10) + 512,
    ["-device", f"loader,file={work}/random.bin,addr=0x1000000,force-raw=on"], ["-S"], sock)
qmp.cmd("migrate", uri=f"exec:cat > {work}/random-{gib}g.mig")
qmp.wait_migration(timeout=600)
qemu_tool.stop(proc, qmp)
PY
    rm -f "$work/random.bin"
fi
many=$work/many-devices.mig
if [[ ! -s $many ]]; then
    python3 scripts/qemu_tool.py gen "$work/gen" >/dev/null
    cp "$work/gen/many-10.0.mig" "$many"
fi

median() { sort -n | sed -n 2p; }
# timed CMD...: prints "seconds max_rss_kib" of one run (wall time to the ms;
# /usr/bin/time's own is in hundredths)
timed() {
    local t0 t1
    t0=$(date +%s%N)
    /usr/bin/time -f '%M' -o "$work/time" "$@" >/dev/null 2>"$work/err" || { cat "$work/err" >&2; exit 1; }
    t1=$(date +%s%N)
    echo "$(( (t1 - t0) / 1000000 )) $(cat "$work/time")" | awk '{printf "%.3f %s\n", $1 / 1000, $2}'
}
run3() { for _ in 1 2 3; do timed "$@"; done; }

size=$(stat -c %s "$big")
echo "stream: $big ($size bytes)"
"$vms" convert "$big" "$work/big.vms"
to_vms=$(run3 sh -c "\"$vms\" convert - - <\"$big\"")
to_qemu=$(run3 sh -c "\"$vms\" convert - - --to qemu <\"$work/big.vms\"")
"$vms" convert - - --to qemu <"$work/big.vms" | cmp - "$big" && echo "round trip: byte-identical"
t1=$(echo "$to_vms" | awk '{print $1}' | median); r1=$(echo "$to_vms" | awk '{print $2}' | sort -n | tail -1)
t2=$(echo "$to_qemu" | awk '{print $1}' | median); r2=$(echo "$to_qemu" | awk '{print $2}' | sort -n | tail -1)
awk -v s="$size" -v t1="$t1" -v t2="$t2" -v r1="$r1" -v r2="$r2" 'BEGIN {
    printf "QEMU -> vmstream (pipe)  %6.2f s  %6.2f GB/s  peak RSS %5.1f MiB\n", t1, s / t1 / 1e9, r1 / 1024
    printf "vmstream -> QEMU (pipe)  %6.2f s  %6.2f GB/s  peak RSS %5.1f MiB\n", t2, s / t2 / 1e9, r2 / 1024 }'

if [[ -n ${ANALYZE_MIGRATION:-} ]]; then
    x=$(for _ in 1 2 3; do rm -rf "$work/x"; mkdir -p "$work/x"; (cd "$work/x" && timed python3 "$ANALYZE_MIGRATION" -x -f "$big"); done | awk '{print $1}' | median)
    ex=$(for _ in 1 2 3; do rm -rf "$work/ex"; timed "$vms" extract "$big" --out "$work/ex"; done | awk '{print $1}' | median)
    d=$(run3 python3 "$ANALYZE_MIGRATION" -d state -f "$many" | awk '{print $1}' | median)
    dv=$(run3 "$vms" dump "$many" | awk '{print $1}' | median)
    awk -v x="$x" -v ex="$ex" -v d="$d" -v dv="$dv" 'BEGIN {
        printf "extract: analyze-migration -x %6.2f s, vmstream extract %6.3f s: %5.1fx\n", x, ex, x / ex
        printf "dump:    analyze-migration -d state %6.3f s, vmstream dump %6.3f s: %5.1fx\n", d, dv, d / dv }'
fi
