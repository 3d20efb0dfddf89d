#!/usr/bin/env python3
"""Live-migration benchmark: vmstream guests against QEMU 7.2, in one run.

  scripts/bench-migrate.py [--gib N] [--runs R] [--rate PAGES_PER_S] [--kvm]

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

With --kvm the vmstream guests are real KVM guests (`vmstream guest --kvm`,
needs /dev/kvm), QEMU runs with KVM too, and the dirtying comparison runs the
same guest program in both: vmstream-kvm's (crates/vmstream-kvm/guest/guest.S),
booted in QEMU as a multiboot kernel, writing PAGES_PER_S pages a second on its
LAPIC timer ticks; both with downtime-limit 300 ms (goal: downtime <= the limit
and <= QEMU's).

Both sides are driven through the same QMP client (scripts/qemu_tool.py's):
vmstream guests answer QEMU's commands unchanged.
"""

import argparse
import os
import re
import socket
import struct
import statistics
import subprocess
import sys
import tempfile
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import qemu_tool  # noqa: E402

VMSTREAM = os.path.join(os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target"), "release", "vmstream")


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


def guest(tmp, name, gib, rate=0, incoming=False, kvm=False):
    sock = os.path.join(tmp, name + ".sock")
    cmd = [VMSTREAM, "guest", "--memory", f"{gib}G", "--dirty-rate", str(rate), "--qmp", f"unix:{sock}"]
    if kvm:
        cmd.append("--kvm")
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


def vmstream_run(tmp, gib, channels, rate=0, params=None, kvm=False):
    ps, qs = guest(tmp, "src", gib, rate, kvm=kvm)
    pd, qd = guest(tmp, "dst", gib, incoming=True, kvm=kvm)
    try:
        if kvm:
            # Running: the guest program ticks (and dirties) before we start.
            wait_counter(lambda: qs.cmd("x-query-guest")["counter"])
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


def wait_counter(read, timeout=120):
    """Waits until the guest program's tick counter runs (QEMU first boots
    SeaBIOS and the multiboot loader, whose data is where the counter goes)."""
    end = time.time() + timeout
    last = None
    while True:
        v = read()
        if last is not None and last < 1_000_000 and v > last and v >= 20:
            return
        last = v
        if time.time() > end:
            raise RuntimeError("the guest program does not run")
        time.sleep(0.1)


PROGRAM_RS = os.path.join(ROOT, "crates", "vmstream-kvm", "src", "program.rs")


def kvm_program_kernel(rate, first, pages):
    """vmstream-kvm's guest program as a flat multiboot kernel (a.out kludge)
    for QEMU, with the memory layout `vmstream guest --kvm` sets up for one
    vCPU: mailbox (page 0), GDT (0x1000), IDT (0x1800), program (0x2000),
    stack below 0x11000, and the vCPU's slice of `pages` pages from `first`.
    Loaded at 1 MiB; the prologue copies the low image to 0, masks the PICs,
    loads the GDT and IDT and jumps to the program with ESI = 0."""
    text = open(PROGRAM_RS).read()
    program = bytes(int(b, 16) for b in re.findall(r"0x([0-9a-f]{2}),", text.split("PROGRAM: &[u8] = &[")[1]))
    timer = int(re.search(r"TIMER: u32 = 0x([0-9a-f]+);", text).group(1), 16)
    start = int(re.search(r"START: u32 = 0x([0-9a-f]+);", text).group(1), 16)
    low = bytearray(0x3000)
    # Mailbox: pages per 10 ms tick, ticks per serial line, LAPIC count of a tick.
    struct.pack_into("<III", low, 0x04, -(-rate // 100), 10, 10_000_000)
    struct.pack_into("<II", low, 0x100, first, pages)              # vCPU 0's slice
    struct.pack_into("<3Q", low, 0x1000, 0, 0x00CF9B000000FFFF, 0x00CF93000000FFFF)  # GDT
    gate = (timer & 0xFFFF) | (0x08 << 16) | (0x8E00 << 32) | ((timer >> 16) << 48)
    struct.pack_into("<Q", low, 0x1800 + 0x20 * 8, gate)            # IDT: vector 0x20
    low[0x2000:0x2000 + len(program)] = program
    load = 0x100000
    magic, flags = 0x1BADB002, 0x00010000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         load, load, 0, 0, load + 0x20)
    code = (b"\xfa\xfc"                                   # 100020: cli; cld
            + b"\xb0\xff\xe6\x21\xe6\xa1"                   # mov al, 0xff; out 0x21, al; out 0xa1, al
            + b"\xbe" + struct.pack("<I", load + 0x1000)  # mov esi, low image
            + b"\x31\xff"                                 # xor edi, edi
            + b"\xb9" + struct.pack("<I", len(low))       # mov ecx, its length
            + b"\xf3\xa4"                                 # rep movsb
            + b"\x0f\x01\x15" + struct.pack("<I", load + 0x100)  # lgdt [gdtr]
            + b"\x0f\x01\x1d" + struct.pack("<I", load + 0x108)  # lidt [idtr]
            + b"\xea" + struct.pack("<IH", load + 0x4B, 0x08)     # jmp 0x08:10004b
            + b"\x66\xb8\x10\x00"                           # 10004b: mov ax, 0x10
            + b"\x8e\xd8\x8e\xc0\x8e\xd0\x8e\xe0\x8e\xe8"     # mov ds/es/ss/fs/gs, ax
            + b"\xbc" + struct.pack("<I", 0x11000)        # mov esp, 0x11000
            + b"\x31\xf6"                                 # xor esi, esi
            + b"\xb8" + struct.pack("<I", start)          # mov eax, START
            + b"\xff\xe0")                                # jmp eax
    assert len(code) == 0x47
    image = bytearray(0x1000)
    image[0:32] = header
    image[0x20:0x20 + len(code)] = code
    struct.pack_into("<HI", image, 0x100, 3 * 8 - 1, 0x1000)       # gdtr
    struct.pack_into("<HI", image, 0x108, 256 * 8 - 1, 0x1800)     # idtr
    return bytes(image + low)


def qemu_dirty_run(tmp, blob, gib, channels, rate, params):
    """QEMU 7.2 running vmstream-kvm's guest program at `rate` pages/s."""
    kernel = os.path.join(tmp, "program.mb")
    first = 0x2000000
    with open(kernel, "wb") as f:
        f.write(kvm_program_kernel(rate, first, (gib << 30) // 4096))
    mem = (gib << 10) + 512
    args = ["-device", f"loader,file={blob},addr={qemu_tool.BLOB_ADDR:#x},force-raw=on", "-kernel", kernel]
    ssock, dsock = os.path.join(tmp, "qs.sock"), os.path.join(tmp, "qd.sock")
    ps, qs = qemu_tool.start("7.2", "pc-q35-7.2", mem, args, [], ssock)
    pd, qd = qemu_tool.start("7.2", "pc-q35-7.2", mem, args, ["-incoming", "defer"], dsock)

    def counter():
        out = qs.cmd("human-monitor-command", **{"command-line": "xp /1wx 0x10c"})
        return int(out.split(":")[1].split()[0], 16)
    try:
        wait_counter(counter)
        return migrate(qs, qd, channels, params)
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
    ap.add_argument("--kvm", action="store_true", help="real KVM guests on both sides")
    a = ap.parse_args()
    subprocess.run(["cargo", "build", "--locked", "--release", "-q", "-p", "vmstream-cli"], cwd=ROOT, check=True)
    subprocess.run([os.path.join(ROOT, "scripts", "install-qemu.sh")], cwd=ROOT, check=True,
                   stdout=subprocess.DEVNULL)
    nbytes = a.gib << 30
    kind = "KVM guests (vmstream guest --kvm)" if a.kvm else "synthetic guests"
    print(f"{a.gib} GiB, {kind}, medians of {a.runs} runs, loopback TCP, accel {qemu_tool.accel()}, "
          f"{os.cpu_count()} cores")
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
            t, info = median(lambda: vmstream_run(tmp, a.gib, ch, kvm=a.kvm), a.runs)
            times[ch] = t
            print(f"  vmstream {ch} data channel{'s' if ch > 1 else ' '}  {t:7.3f} s  {nbytes / t / 1e9:5.2f} GB/s"
                  f"  downtime {info.get('downtime')} ms")
        print(f"  ratio vmstream x2 / QEMU multifd x2 throughput: {q / times[2]:.2f}x (goal >= 1.2x)")
        limit = 300
        params = {"downtime-limit": limit}
        runs = [vmstream_run(tmp, a.gib, 2, a.rate, params, kvm=a.kvm) for _ in range(a.runs)]
        t = statistics.median(r[0] for r in runs)
        down = statistics.median(r[1]["downtime"] for r in runs)
        info = runs[-1][1]
        print(f"  dirtying guest, {a.rate} pages/s, 2 channels: {t:.3f} s, "
              f"{info['ram']['dirty-sync-count']} rounds, downtime {down} ms "
              f"(limit {limit} ms), measured dirty rate {info['ram'].get('dirty-pages-rate')} pages/s")
        if a.kvm:
            qruns = [qemu_dirty_run(tmp, blob, a.gib, 2, a.rate, params) for _ in range(a.runs)]
            qt = statistics.median(r[0] for r in qruns)
            qdown = statistics.median(r[1]["downtime"] for r in qruns)
            qinfo = qruns[-1][1]
            print(f"  QEMU 7.2, same program, {a.rate} pages/s, multifd x2: {qt:.3f} s, "
                  f"{qinfo['ram']['dirty-sync-count']} rounds, downtime {qdown} ms (limit {limit} ms), "
                  f"measured dirty rate {qinfo['ram'].get('dirty-pages-rate')} pages/s")
            print(f"  dirtying: total time ratio QEMU / vmstream {qt / t:.2f}x; "
                  f"downtime vmstream {down} ms vs QEMU {qdown} ms "
                  f"(goal: <= {limit} ms and <= QEMU's)")


if __name__ == "__main__":
    main()
