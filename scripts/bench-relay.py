#!/usr/bin/env python3
"""How much `vmstream relay` costs a QEMU live migration, and what channels buy.

  bench-relay.py [--gib N] [--runs R]

A QEMU 7.2 guest holding N GiB of random data (`-device loader`, paused)
migrates to a second QEMU 7.2, timed from `migrate` until the destination's
`query-migrate` says completed (so the relays' work is inside the time):
  (a) directly over one loopback TCP connection;
  (b) through `vmstream relay send` and `receive` over loopback, 1 data channel;
  (c) the same with 2 data channels;
beside one plain loopback TCP stream of the same bytes, in the same run.
The runs of (a), (b) and (c) take turns. Prints medians, the spread, the CPU time
the two QEMUs and the two relays took (from /proc) and how many cores that kept
busy, and the ratios (goals: b <= 1.15x a; c faster than a).
"""

import argparse
import os
import statistics
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qemu_tool  # noqa: E402
from importlib import import_module  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
VMSTREAM = os.path.join(ROOT, "target", "release", "vmstream")
bench_migrate = import_module("bench-migrate")


def cpu_seconds(pid):
    """CPU time (user + system) of a process so far, from /proc; 0 once it is gone."""
    try:
        with open(f"/proc/{pid}/stat") as f:
            fields = f.read().rsplit(")", 1)[1].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    except (OSError, IndexError, ValueError):
        return 0.0


def listening(port):
    """Whether a TCP socket listens on 127.0.0.1:port (from /proc/net/tcp)."""
    with open("/proc/net/tcp") as f:
        return any(line.split()[3] == "0A" and int(line.split()[1].split(":")[1], 16) == port
                   for line in list(f)[1:])


def run(tmp, blob, gib, channels):
    """Seconds for one migration; channels None = direct."""
    mem = (gib << 10) + 512
    loader = ["-device", f"loader,file={blob},addr={qemu_tool.BLOB_ADDR:#x},force-raw=on"]
    ssock, dsock = os.path.join(tmp, "qs.sock"), os.path.join(tmp, "qd.sock")
    src_mig, dst_mig = os.path.join(tmp, "src.mig"), os.path.join(tmp, "dst.mig")
    for p in (src_mig, dst_mig):
        if os.path.exists(p):
            os.unlink(p)
    port = bench_migrate.free_port()
    dst_uri = f"tcp:127.0.0.1:{port}" if channels is None else f"unix:{dst_mig}"
    ps, qs = qemu_tool.start("7.2", "pc-q35-7.2", mem, loader, ["-S"], ssock)
    pd, qd = qemu_tool.start("7.2", "pc-q35-7.2", mem, loader, ["-incoming", dst_uri], dsock)
    relays = []
    try:
        qs.cmd("migrate-set-parameters", **{"max-bandwidth": 0})
        if channels is None:
            uri = dst_uri
        else:
            rport = bench_migrate.free_port()
            relays.append(subprocess.Popen([VMSTREAM, "relay", "receive", "--listen", f"tcp:127.0.0.1:{rport}",
                                            "--to", dst_uri]))
            # the sending relay connects once QEMU has: the receiving one must listen by then
            deadline = time.monotonic() + 30
            while not listening(rport):
                if time.monotonic() > deadline:
                    raise RuntimeError("the receiving relay did not listen")
                time.sleep(0.005)
            relays.append(subprocess.Popen([VMSTREAM, "relay", "send", "--from", f"unix:{src_mig}",
                                            "--to", f"tcp:127.0.0.1:{rport}",
                                            "--data-channels", str(channels)]))
            deadline = time.monotonic() + 30
            while not os.path.exists(src_mig):
                if time.monotonic() > deadline:
                    raise RuntimeError("the sending relay did not listen")
                time.sleep(0.005)
            uri = f"unix:{src_mig}"
        procs = [ps, pd] + relays
        cpu0 = [cpu_seconds(p.pid) for p in procs]
        t = time.perf_counter()
        qs.cmd("migrate", uri=uri)
        while True:
            st = qd.cmd("query-migrate").get("status")
            if st == "completed":
                break
            if st == "failed" or qs.cmd("query-migrate").get("status") == "failed":
                raise RuntimeError("migration failed")
            time.sleep(0.005)
        took = time.perf_counter() - t
        # at the migration's end: the relays exit right after
        cpu = [cpu_seconds(p.pid) - c0 for p, c0 in zip(procs, cpu0)]
        for r in relays:
            if r.wait(timeout=60) != 0:
                raise RuntimeError("a relay failed")
        return took, sum(cpu[:2]), sum(cpu[2:])
    finally:
        for r in relays:
            if r.poll() is None:
                r.kill()
            r.wait()
        qemu_tool.stop(ps, qs)
        qemu_tool.stop(pd, qd)


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--locked", "--release", "-q", "-p", "vmstream-cli"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts", "install-qemu.sh")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    nbytes = a.gib << 30
    print(f"{a.gib} GiB of random guest memory, QEMU 7.2 -> QEMU 7.2, medians of {a.runs} runs, "
          f"loopback, accel {qemu_tool.accel()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "random.bin")
        with open(blob, "wb") as f:
            for _ in range(a.gib << 10):
                f.write(os.urandom(1 << 20))
        lo = statistics.median(bench_migrate.loopback(nbytes) for _ in range(a.runs))
        print(f"  plain loopback stream            {lo:7.3f} s")
        # interleaved (a, b, c, a, b, c, ...), so that the machine's drift
        # over the run weighs on each alike
        cases = (("(a) QEMU direct", None), ("(b) via relays, 1 data channel", 1),
                 ("(c) via relays, 2 data channels", 2))
        runs = {ch: [] for _, ch in cases}
        cpus = {ch: [] for _, ch in cases}
        for _ in range(a.runs):
            for _, ch in cases:
                took, qemu_cpu, relay_cpu = run(tmp, blob, a.gib, ch)
                runs[ch].append(took)
                cpus[ch].append((qemu_cpu, relay_cpu))
        times = {}
        for name, ch in cases:
            times[ch] = statistics.median(runs[ch])
            q = statistics.median(c[0] for c in cpus[ch])
            r = statistics.median(c[1] for c in cpus[ch])
            print(f"  {name:32} {times[ch]:7.3f} s  {nbytes / times[ch] / 1e9:5.2f} GB/s   "
                  f"(runs {min(runs[ch]):.3f} to {max(runs[ch]):.3f} s; CPU: QEMUs {q:.2f} s, relays {r:.2f} s, "
                  f"{(q + r) / times[ch]:.2f} of the {os.cpu_count()} cores busy)")
        print(f"  (b) / (a) time: {times[1] / times[None]:.2f}x (goal <= 1.15x)")
        print(f"  (c) / (a) time: {times[2] / times[None]:.2f}x (goal < 1.0x)")


if __name__ == "__main__":
    main()
