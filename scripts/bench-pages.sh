#!/usr/bin/env bash
# Page-batch throughput vs memcpy, one core, one run. Prints medians and ratios.
# Usage: scripts/bench-pages.sh [MIB]   (default 1024 = 1 GiB of 4 KiB random pages)
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-1024}"
VMSTREAM_BENCH_MIB="$mib" taskset -c 0 cargo bench --locked -p vmstream --bench pages -- --noplot >&2
python3 - "$mib" <<'PY'
import json, sys
mib = int(sys.argv[1])
def median(name):
    with open(f"target/criterion/pages/{name}/new/estimates.json") as f:
        return json.load(f)["median"]["point_estimate"] / 1e9
m = median("memcpy")
print(f"{mib} MiB of 4 KiB random pages, medians:")
for name in ["memcpy", "crc32c", "write", "read", "write+read"]:
    t = median(name)
    print(f"  {name:<11} {t*1000:9.1f} ms  {mib/1024/t:6.2f} GiB/s  {m/t:5.2f}x memcpy")
PY
