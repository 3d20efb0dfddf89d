#!/usr/bin/env bash
# One device out of a file with MIB MiB of random RAM: `vmstream dump --device`
# on the file (seeking through its index) against the same command reading the
# whole stream through a pipe. Prints the medians of RUNS runs each and their ratio.
# Usage: scripts/bench-seek.sh [MIB] [RUNS]   (default 1024 = 1 GiB, 5 runs)
# The file is made once, in target/bench-seek/, with `vmstream encode`.
set -euo pipefail
cd "$(dirname "$0")/.."
mib="${1:-1024}"
runs="${2:-5}"
cargo build --locked --release -p vmstream-cli >&2
bin=target/release/vmstream
dir=target/bench-seek
file="$dir/vm-${mib}m.vms"
if [ ! -s "$file" ]; then
    src="$dir/src"
    rm -rf "$src"
    mkdir -p "$src"
    head -c "$((mib << 20))" /dev/urandom >"$src/pc.ram.bin"
    python3 - "$src" "$((mib << 20))" <<'PY'
import json, sys
src, size = sys.argv[1], int(sys.argv[2])
def dev(name, i):
    regs = {f"r{k}": {"u32": (i * 31 + k) & 0xffffffff} for k in range(16)}
    return {"name": name, "instance_id": 0, "type": "bench", "version": 1,
            "value": {"struct": {**regs, "fifo": {"bytes": "00" * 64}}}}
doc = {
    "vmstream_decode": 1,
    "header": {"writer": "bench-seek", "kind": "snapshot", "arch": "x86_64", "page_size": 4096},
    "info": None,
    "schemas": [],
    "ram_blocks": [{"id": 0, "name": "pc.ram", "size": size, "page_size": 4096,
                    "flags": 0, "file": "pc.ram.bin"}],
    "devices": [dev(n, i) for i, n in enumerate(["cpu0", "cpu1", "serial0", "net0", "blk0"])],
}
with open(f"{src}/stream.json", "w") as f:
    json.dump(doc, f)
PY
    # the writer puts RAM first, devices after it: a reader in a pipe reads it all
    "$bin" encode "$src" --out "$file"
    rm -rf "$src"
fi
python3 - "$bin" "$file" "$runs" "$mib" <<'PY'
import statistics, subprocess, sys, time
bin, file, runs, mib = sys.argv[1], sys.argv[2], int(sys.argv[3]), int(sys.argv[4])
seek = [bin, "dump", file, "--device", "net0"]
pipe = f"cat '{file}' | '{bin}' dump - --device net0"
a = subprocess.run(seek, check=True, capture_output=True).stdout
b = subprocess.run(pipe, shell=True, check=True, capture_output=True).stdout
assert a == b and b"device net0" in a, "the two paths disagree"
def median(run):
    times = []
    for _ in range(runs):
        t = time.perf_counter()
        run()
        times.append(time.perf_counter() - t)
    return statistics.median(times)
t_seek = median(lambda: subprocess.run(seek, check=True, stdout=subprocess.DEVNULL))
t_pipe = median(lambda: subprocess.run(pipe, shell=True, check=True, stdout=subprocess.DEVNULL))
print(f"dump --device net0 of a file with {mib} MiB of random RAM, median of {runs} runs:")
print(f"  seek through the index  {t_seek * 1000:9.1f} ms")
print(f"  whole stream via pipe   {t_pipe * 1000:9.1f} ms")
print(f"  ratio                   {t_pipe / t_seek:9.1f}x")
PY
