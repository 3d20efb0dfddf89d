#!/usr/bin/env python3
"""File and pipe throughput of the vmstream CLI against copying, in one run.

  scripts/bench-files.py [--runs R] [--gib N] [--dir DIR]

Makes with real QEMU 7.2 (cached in DIR, default target/bench-files):
  * big.mig: a paused q35 guest whose RAM holds N GiB (default 1) of random bytes,
    and big.vms, the same stream converted to vmstream;
  * many.mig: a paused pc (i440fx) guest with many devices: SCSI (lsi53c895a with a
    disk, virtio-scsi), USB (UHCI, xHCI with tablet and keyboard), sound (intel-hda
    with hda-duplex, AC97), NICs (e1000, rtl8139, virtio-net), virtio (blk, rng,
    balloon, serial), IDE disk, VGA, serial, watchdog.
Then times, as medians of R runs (default 5), whole processes, wall clock:
  1. `vmstream convert big.mig OUT` against `cat big.mig > OUT`, OUT a new file in
     DIR (the same disk), removed after each run; ratio = cat's time / convert's.
  2. memcpy: one 1 GiB copy between two buffers already touched, with Python's
     bytearray slice assignment (CPython calls memcpy), in this process; then
     `verify`, `inspect` and `extract` of big.vms (in the page cache) and of big.mig;
     ratio = the command's bytes per second / memcpy's (`extract` writes the RAM to a
     new file, so its time is also set beside `cat file -> file`). Also `convert big.mig
     /dev/null`, which every command reading big.mig should keep up with.
  3. pipes: `cat big.mig | vmstream convert - - | cat >/dev/null` (QEMU -> vmstream)
     and `cat big.vms | vmstream convert - - --to qemu | cat >/dev/null`, in GB/s
     (goal >= 2 each way), beside `cat big.mig | cat | cat >/dev/null`, the same
     three processes with nothing to do but copy (the machine's limit for it).
  4. peak RSS (/usr/bin/time -f %M) of every vmstream run above; goal <= 64 MiB.
  5. `vmstream dump --json many.mig` against QEMU's `analyze-migration.py -d state`
     (scripts/fetch-analyze-migration.sh), ratio = its time / dump's (goal >= 30).
The machine is shared: the figures are as good as its load lets them be.
"""

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, os.path.join(ROOT, "scripts"))
import qemu_tool  # noqa: E402

TARGET = os.environ.get("CARGO_TARGET_DIR") or os.path.join(ROOT, "target")
VMSTREAM = os.path.join(TARGET, "release", "vmstream")
RSS = []


def run(cmd, rss=True, shell=False):
    """Runs cmd (stdout discarded); returns wall seconds. Records peak RSS (KiB)."""
    with tempfile.NamedTemporaryFile() as t:
        full = (["/usr/bin/time", "-f", "%M", "-o", t.name] + cmd) if rss and not shell else cmd
        t0 = time.perf_counter()
        p = subprocess.run(["bash", "-c", full] if shell else full, stdout=subprocess.DEVNULL,
                           stderr=subprocess.PIPE)
        took = time.perf_counter() - t0
        if p.returncode != 0:
            raise RuntimeError(f"{cmd} failed: {p.stderr.decode()[-2000:]}")
        if rss and not shell:
            RSS.append((int(open(t.name).read().split()[-1]), " ".join(os.path.basename(c) for c in cmd[:2])))
    return took


def pipe(src, args):
    """`cat src | vmstream convert - - ARGS | cat >/dev/null`: wall seconds; records
    vmstream's peak RSS."""
    with tempfile.NamedTemporaryFile() as t:
        conv = " ".join(f'"{x}"' for x in ["/usr/bin/time", "-f", "%M", "-o", t.name, VMSTREAM, "convert", "-", "-"]
                        + args)
        took = run(f'set -o pipefail; cat "{src}" | {conv} | cat >/dev/null', rss=False, shell=True)
        RSS.append((int(open(t.name).read().split()[-1]), "vmstream convert - - (pipe)"))
    return took


def median(f, runs, before=None):
    ts = []
    for _ in range(runs):
        if before:
            before()
        ts.append(f())
    return statistics.median(ts)


def make_stream(path, machine, memory_mb, args, tmp):
    sock = os.path.join(tmp, "bench.sock")
    proc, qmp = qemu_tool.start("7.2", machine, memory_mb, args, ["-S"], sock)
    try:
        qmp.cmd("migrate", uri=f"exec:cat > {path}.part")
        qmp.wait_migration(timeout=900)
    finally:
        qemu_tool.stop(proc, qmp)
    os.rename(path + ".part", path)


def many_device_args(work):
    disk = os.path.join(work, "many-scsi.qcow2")
    ide = os.path.join(work, "many-ide.qcow2")
    blk = os.path.join(work, "many-blk.qcow2")
    for d in (disk, ide, blk):
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", d, "16M"], check=True)
    nd = qemu_tool.user_netdev("7.2")
    return ["-smp", "2", "-audiodev", "none,id=snd0",
            "-device", "lsi53c895a,id=scsi0",
            "-drive", f"file={disk},if=none,id=sd0,format=qcow2", "-device", "scsi-hd,drive=sd0,bus=scsi0.0",
            "-device", "virtio-scsi-pci",
            "-device", "piix3-usb-uhci", "-device", "qemu-xhci,id=xhci",
            "-device", "usb-tablet,bus=xhci.0", "-device", "usb-kbd,bus=xhci.0",
            "-device", "intel-hda", "-device", "hda-duplex,audiodev=snd0", "-device", "AC97,audiodev=snd0",
            "-netdev", nd.format(id="n0"), "-device", "e1000,netdev=n0",
            "-netdev", nd.format(id="n1"), "-device", "rtl8139,netdev=n1",
            "-netdev", nd.format(id="n2"), "-device", "virtio-net-pci,netdev=n2",
            "-drive", f"file={blk},if=none,id=b0,format=qcow2", "-device", "virtio-blk-pci,drive=b0",
            "-drive", f"file={ide},if=none,id=d1,format=qcow2", "-device", "ide-hd,drive=d1",
            "-device", "virtio-rng-pci", "-device", "virtio-balloon-pci", "-device", "virtio-serial-pci",
            "-device", "VGA", "-chardev", "null,id=c0", "-device", "isa-serial,chardev=c0",
            "-device", "i6300esb"]


def memcpy_seconds(size, runs):
    src = bytearray(os.urandom(1 << 20)) * (size >> 20)
    dst = bytearray(len(src))
    dst[:] = src  # touch every page of both
    ts = []
    for _ in range(runs):
        t0 = time.perf_counter()
        dst[:] = src
        ts.append(time.perf_counter() - t0)
    del src, dst
    return statistics.median(ts)


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--runs", type=int, default=5)
    ap.add_argument("--gib", type=int, default=1)
    ap.add_argument("--dir", default=os.path.join(TARGET, "bench-files"))
    a = ap.parse_args()
    work = os.path.abspath(a.dir)
    os.makedirs(work, exist_ok=True)
    subprocess.run(["cargo", "build", "--locked", "--release", "-q", "-p", "vmstream-cli"], cwd=ROOT, check=True)
    big, vms, many = (os.path.join(work, n) for n in ("big.mig", "big.vms", "many.mig"))
    with tempfile.TemporaryDirectory(prefix="bench-files-") as tmp:
        if not os.path.exists(big):
            blob = os.path.join(work, "random.bin")
            with open(blob, "wb") as f:
                for _ in range(a.gib << 10):
                    f.write(os.urandom(1 << 20))
            make_stream(big, "pc-q35-7.2", (a.gib << 10) + 512,
                        ["-device", f"loader,file={blob},addr=0x1000000,force-raw=on"], tmp)
            os.unlink(blob)
        if not os.path.exists(many):
            make_stream(many, "pc-i440fx-7.2", 128, many_device_args(work), tmp)
    if not os.path.exists(vms):
        subprocess.run([VMSTREAM, "convert", big, vms + ".part"], check=True)
        os.rename(vms + ".part", vms)
    analyze = subprocess.run([os.path.join(ROOT, "scripts", "fetch-analyze-migration.sh")],
                             capture_output=True, text=True, check=True).stdout.strip()
    size, vsize = os.path.getsize(big), os.path.getsize(vms)
    n = a.runs
    warm = lambda: run(["cat", big, vms], rss=False)  # noqa: E731 - keep both in the page cache
    out = os.path.join(work, "out")
    rm = lambda: shutil.rmtree(out, ignore_errors=True) if os.path.isdir(out) else (  # noqa: E731
        os.unlink(out) if os.path.exists(out) else None)

    def fresh():
        rm()
        warm()

    print(f"streams: {big} ({size} bytes), {vms} ({vsize} bytes), {many} ({os.path.getsize(many)} bytes); "
          f"medians of {n} runs")
    # 1. convert file -> file against cat file -> file
    t_cat = median(lambda: run(["sh", "-c", f'cat "{big}" > "{out}"'], rss=False), n, fresh)
    t_conv = median(lambda: run([VMSTREAM, "convert", big, out]), n, fresh)
    rm()
    print(f"convert file->file   {t_conv:7.3f} s   cat file->file {t_cat:7.3f} s   "
          f"ratio {t_cat / t_conv:5.2f} (goal >= 0.8)")
    # 2. reading files in the page cache against memcpy
    t_mem = memcpy_seconds(1 << 30, n)
    mem_bps = (1 << 30) / t_mem
    print(f"memcpy (1 GiB, touched buffers, Python bytearray copy) {t_mem:7.3f} s = {mem_bps / 1e9:5.2f} GB/s")
    t_null = median(lambda: run([VMSTREAM, "convert", big, "/dev/null"]), n, warm)
    print(f"convert big.mig -> /dev/null {t_null:7.3f} s")
    for name, path, length in (("vmstream", vms, vsize), ("qemu", big, size)):
        for cmd in ("verify", "inspect", "extract"):
            args = [VMSTREAM, cmd, path] + (["--out", out] if cmd == "extract" else [])
            t = median(lambda: run(args), n, fresh)
            rm()
            extra = f"   vs convert -> /dev/null {t_null / t:5.2f}x" if name == "qemu" else ""
            if cmd == "extract":
                # it writes the guest's RAM into a new file: cat file -> file bounds it too
                extra += f"   vs cat file->file {t_cat / t:5.2f}x"
            print(f"{cmd:8} {name:8} file {t:7.3f} s  {length / t / 1e9:5.2f} GB/s  "
                  f"ratio to memcpy {length / t / mem_bps:5.2f} (goal >= 1.0){extra}")
    # 3. pipes, each way
    t_in = median(lambda: pipe(big, []), n, warm)
    t_out = median(lambda: pipe(vms, ["--to", "qemu"]), n, warm)
    t_cats = median(lambda: run(f'cat "{big}" | cat | cat >/dev/null', rss=False, shell=True), n, warm)
    print(f"pipe QEMU -> vmstream {size / t_in / 1e9:5.2f} GB/s, vmstream -> QEMU {size / t_out / 1e9:5.2f} GB/s "
          f"(goal >= 2 each way); the same pipeline with cat in the middle {size / t_cats / 1e9:5.2f} GB/s, "
          f"ratios {t_cats / t_in:4.2f} and {t_cats / t_out:4.2f}")
    # 5. dump --json against analyze-migration.py -d state
    t_dump = median(lambda: run([VMSTREAM, "dump", "--json", many]), n)
    t_an = median(lambda: run(["python3", analyze, "-d", "state", "-f", many], rss=False), n)
    print(f"dump --json {t_dump * 1e3:7.1f} ms   analyze-migration.py -d state {t_an * 1e3:7.1f} ms   "
          f"ratio {t_an / t_dump:5.1f} (goal >= 30)")
    # 4. peak RSS
    peak, what = max(RSS)
    print(f"peak RSS of every vmstream run above: {peak / 1024:5.1f} MiB ({what}) (goal <= 64)")


if __name__ == "__main__":
    main()
