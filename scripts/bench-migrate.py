#!/usr/bin/env python3
"""Live-migration benchmark: vmstream guests against QEMU 7.2, in one run.

  scripts/bench-migrate.py [--gib N] [--runs R] [--rate PAGES_PER_S]

Over loopback TCP, whole processes, max-bandwidth unlimited:
  * an idle `vmstream guest` holding N GiB of random memory migrates to a second
    one with 1, 2 and 4 data channels (multifd on);
  * a QEMU 7.2 guest holding N GiB of random data (`-device loader`, paused)
    migrates to a second QEMU 7.2 with multifd and 2 channels;
  * a plain loopback TCP stream of the same bytes (the physical limit here);
  * a dirtying `vmstream guest` (PAGES_PER_S) with downtime-limit 300 ms:
    rounds, total time and downtime.
Prints each median (of R runs) and the ratio of vmstream with 2 channels to
QEMU's multifd x2 (goal: >= 1.2x QEMU's throughput).

Both sides are driven through the same QMP client (scripts/qemu_tool.py's):
vmstream guests answer QEMU's commands unchanged.
"""

import argparse
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import qemu_tool  # noqa: E402

VMSTREAM = os.path.join(ROOT, "target", "release", "vmstream")


def free_port():
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_socket(path, proc, timeout=60):
    end = time.time() + timeout
    while not os.path.exists(path):
        if proc.poll() is not None or time.time() > end:
            raise RuntimeError(f"{path} did not appear")
        time.sleep(0.02)


def guest(tmp, name, gib, rate=0, incoming=False):
    sock = os.path.join(tmp, name + ".sock")
    cmd = [VMSTREAM, "guest", "--memory", f"{gib}G", "--dirty-rate", str(rate), "--qmp", f"unix:{sock}"]
    if incoming:
        cmd.append("--incoming")
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL,
                            stderr=tempfile.TemporaryFile())
    wait_socket(sock, proc)
    return proc, qemu_tool.Qmp(sock, proc)


def migrate(src, dst, channels, params=None, poll=0.005):
    """Runs one migration src -> dst; returns (wall seconds, src query-migrate)."""
    port = free_port()
    caps = [{"capability": "multifd", "state": channels > 0}]
    for q in (src, dst):
        q.cmd("migrate-set-capabilities", capabilities=caps)
    p = {"max-bandwidth": 0, "multifd-channels": max(channels, 1)}
    p.update(params or {})
    src.cmd("migrate-set-parameters", **p)
    dst.cmd("migrate-set-parameters", **{"multifd-channels": max(channels, 1)})
    dst.cmd("migrate-incoming", uri=f"tcp:127.0.0.1:{port}")
    t = time.perf_counter()
    src.cmd("migrate", uri=f"tcp:127.0.0.1:{port}")
    while True:
        info = src.cmd("query-migrate")
        if info.get("status") in ("completed", "failed", "cancelled"):
            break
        time.sleep(poll)
    wall = time.perf_counter() - t
    if info["status"] != "completed":
        raise RuntimeError(f"migration {info['status']}: {info.get('error-desc')}")
    return wall, info


def vmstream_run(tmp, gib, channels, rate=0, params=None):
    ps, qs = guest(tmp, "src", gib, rate)
    pd, qd = guest(tmp, "dst", gib, incoming=True)
    try:
        return migrate(qs, qd, channels, params)
    finally:
        qemu_tool.stop(ps, qs)
        qemu_tool.stop(pd, qd)


def qemu_run(tmp, blob, gib, channels):
    mem = (gib << 10) + 512
    loader = ["-device", f"loader,file={blob},addr={qemu_tool.BLOB_ADDR:#x},force-raw=on"]
    ssock, dsock = os.path.join(tmp, "qs.sock"), os.path.join(tmp, "qd.sock")
    ps, qs = qemu_tool.start("7.2", "pc-q35-7.2", mem, loader, ["-S"], ssock)
    pd, qd = qemu_tool.start("7.2", "pc-q35-7.2", mem, loader, ["-incoming", "defer"], dsock)
    try:
        return migrate(qs, qd, channels)
    finally:
        qemu_tool.stop(ps, qs)
        qemu_tool.stop(pd, qd)


def loopback(nbytes):
    """Seconds to push nbytes through one loopback TCP connection (1 MiB writes)."""
    srv = socket.socket()
    srv.bind(("127.0.0.1", 0))
    srv.listen(1)
    got = [0]

    def sink():
        c, _ = srv.accept()
        while True:
            b = c.recv(1 << 20)
            if not b:
                break
            got[0] += len(b)
        c.close()

    th = threading.Thread(target=sink)
    th.start()
    buf = os.urandom(1 << 20)
    c = socket.create_connection(srv.getsockname())
    t = time.perf_counter()
    for _ in range(nbytes >> 20):
        c.sendall(buf)
    c.close()
    th.join()
    srv.close()
    return time.perf_counter() - t


def median(f, runs):
    results = [f() for _ in range(runs)]
    return statistics.median(r[0] for r in results), results[-1][1]


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--rate", type=int, default=20000, help="dirty rate of the dirtying guest")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--locked", "--release", "-q", "-p", "vmstream-cli"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts", "install-qemu.sh")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    nbytes = a.gib << 30
    print(f"{a.gib} GiB, medians of {a.runs} runs, loopback TCP, accel {qemu_tool.accel()}, {os.cpu_count()} cores")
    with tempfile.TemporaryDirectory() as tmp:
        blob = os.path.join(tmp, "random.bin")
        with open(blob, "wb") as f:
            for _ in range(a.gib << 10):
                f.write(os.urandom(1 << 20))
        lo = statistics.median(loopback(nbytes) for _ in range(a.runs))
        print(f"  plain loopback stream     {lo:7.3f} s  {nbytes / lo / 1e9:5.2f} GB/s")
        q, _ = median(lambda: qemu_run(tmp, blob, a.gib, 2), a.runs)
        print(f"  QEMU 7.2 multifd x2       {q:7.3f} s  {nbytes / q / 1e9:5.2f} GB/s")
        times = {}
        for ch in (1, 2, 4):
            t, info = median(lambda: vmstream_run(tmp, a.gib, ch), a.runs)
            times[ch] = t
            print(f"  vmstream {ch} data channel{'s' if ch > 1 else ' '}  {t:7.3f} s  {nbytes / t / 1e9:5.2f} GB/s"
                  f"  downtime {info.get('downtime')} ms")
        print(f"  ratio vmstream x2 / QEMU multifd x2 throughput: {q / times[2]:.2f}x (goal >= 1.2x)")
        limit = 300
        t, info = median(lambda: vmstream_run(tmp, a.gib, 2, a.rate, {"downtime-limit": limit}), a.runs)
        print(f"  dirtying guest, {a.rate} pages/s, 2 channels: {t:.3f} s, "
              f"{info['ram']['dirty-sync-count']} rounds, downtime {info.get('downtime')} ms "
              f"(limit {limit} ms)")


if __name__ == "__main__":
    main()
