#!/usr/bin/env python3
"""Drives real QEMU over QMP to make and load migration streams.

  qemu_tool.py gen OUTDIR [--quick]     make fixture streams + OUTDIR/manifest.json
  qemu_tool.py load STREAM --qemu 7.2|10.0 --machine M --args-json JSON
                    [--memory-mb N] --remigrate OUT
                                        load STREAM into a fresh QEMU (-incoming defer,
                                        migrate-incoming exec:cat STREAM), then migrate
                                        the loaded guest out again to OUT

QEMU 7.2 is `qemu-system-x86_64` on PATH and 10.0 is target/qemu-10.0/qemu-system-x86_64
(scripts/install-qemu.sh makes both); QEMU_72 / QEMU_100 override them. KVM is used
when /dev/kvm can be opened, TCG otherwise.
"""

import argparse
import hashlib
import json
import os
import random
import shlex
import socket
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU = {
    "7.2": os.environ.get("QEMU_72", "qemu-system-x86_64"),
    "10.0": os.environ.get("QEMU_100", os.path.join(ROOT, "target", "qemu-10.0", "qemu-system-x86_64")),
}
BLOB_ADDR = 0x1000000


def accel():
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return "kvm"
    except OSError:
        return "tcg"


class Qmp:
    def __init__(self, path, proc):
        deadline = time.monotonic() + 20
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not start: {proc.stderr.read().decode(errors='replace')}")
                time.sleep(0.05)
        self.f = self.sock.makefile("rw")
        json.loads(self.f.readline())
        self.cmd("qmp_capabilities")

    def cmd(self, name, **args):
        self.f.write(json.dumps({"execute": name, "arguments": args}) + "\n")
        self.f.flush()
        while True:
            r = json.loads(self.f.readline())
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error'].get('desc')}")
            if "return" in r:
                return r["return"]

    def wait_migration(self, timeout=240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.cmd("query-migrate")
            if r.get("status") == "completed":
                return r
            if r.get("status") == "failed":
                raise RuntimeError(f"migration failed: {r.get('error-desc')}")
            time.sleep(0.05)
        raise RuntimeError("migration timed out")


def start(qemu, machine, memory_mb, args, extra, sock):
    cmd = [QEMU[qemu], "-nodefaults", "-display", "none", "-m", str(memory_mb),
           "-machine", f"{machine},accel={accel()}", "-qmp", f"unix:{sock},server=on,wait=off"] + args + extra
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    return proc, Qmp(sock, proc)


def stop(proc, qmp):
    try:
        qmp.cmd("quit")
    except Exception:  # noqa: BLE001 - QEMU may already be gone
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()


def make(outdir, spec, tmp):
    """Makes one fixture; returns its manifest entry."""
    name, qemu, machine = spec["file"], spec["qemu"], spec["machine"]
    entry = {"file": name, "qemu": qemu, "machine": machine, "memory_mb": spec.get("memory_mb", 64),
             "args": [], "blob": None, "features": list(spec.get("features", [])), "notes": spec.get("notes", ""),
             "skipped": False, "vmdesc_twin": spec.get("vmdesc_twin")}
    if subprocess.run([QEMU[qemu], "--version"], capture_output=True).returncode != 0:
        entry.update(skipped=True, notes=f"QEMU {qemu} is not installed (scripts/install-qemu.sh)")
        return entry
    args = list(spec.get("args", []))
    if spec.get("disk"):
        disk = os.path.join(outdir, name + ".qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
        args += ["-drive", f"file={disk},if=none,id=d0,format=qcow2", "-device", "virtio-blk-pci,drive=d0"]
    if spec.get("blob", True):
        rnd = random.Random(name)
        data = rnd.randbytes(spec.get("blob_kib", 256) << 10)
        blob = os.path.join(outdir, name + ".blob")
        with open(blob, "wb") as f:
            f.write(data)
        args += ["-device", f"loader,file={blob},addr={BLOB_ADDR:#x},force-raw=on"]
        entry["blob"] = {"file": os.path.basename(blob), "addr": hex(BLOB_ADDR),
                         "sha256": hashlib.sha256(data).hexdigest()}
    entry["args"] = args
    running = "ran-guest" in entry["features"]
    sock = os.path.join(tmp, name + ".sock")
    proc, qmp = start(qemu, machine, entry["memory_mb"], args, [] if running else ["-S"], sock)
    try:
        if running:
            time.sleep(1.0)
        if "xbzrle" in entry["features"]:
            qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])
        if "multi-round" in entry["features"]:
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 8 << 20, "downtime-limit": 1})
        path = os.path.join(outdir, name)
        uri = f"file:{path}" if "file-migration" in entry["features"] else "exec:cat > " + shlex.quote(path)
        qmp.cmd("migrate", uri=uri)
        if "multi-round" in entry["features"]:
            time.sleep(1.5)
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 300})
        info = qmp.wait_migration()
        ram = info.get("ram", {})
        entry["notes"] = (entry["notes"] + f" dirty-sync-count {ram.get('dirty-sync-count')},"
                          f" xbzrle pages {info.get('xbzrle-cache', {}).get('pages', 0)}").strip()
    finally:
        stop(proc, qmp)
    return entry


def fixtures(quick):
    devices = ["-device", "virtio-net-pci", "-device", "qemu-xhci", "-device", "usb-tablet",
               "-device", "virtio-rng-pci", "-device", "virtio-balloon-pci", "-device", "e1000"]
    quick_set = [
        {"file": "q35-7.2.mig", "qemu": "7.2", "machine": "pc-q35-7.2", "features": ["ran-guest"]},
        {"file": "i440fx-10.0.mig", "qemu": "10.0", "machine": "pc-i440fx-10.0", "args": devices},
        {"file": "i440fx-2.2-twin.mig", "qemu": "7.2", "machine": "pc-i440fx-2.2,suppress-vmdesc=off"},
        {"file": "i440fx-2.2.mig", "qemu": "7.2", "machine": "pc-i440fx-2.2", "features": ["no-vmdesc"],
         "vmdesc_twin": "i440fx-2.2-twin.mig", "notes": "no configuration, no footers, no vmdesc"},
    ]
    if quick:
        return quick_set
    return quick_set + [
        {"file": "i440fx-7.2-rich.mig", "qemu": "7.2", "machine": "pc-i440fx-7.2", "args": devices, "disk": True,
         "features": ["many-devices", "block"]},
        {"file": "microvm-7.2.mig", "qemu": "7.2", "machine": "microvm", "args": ["-device", "virtio-rng-device"],
         "memory_mb": 64},
        {"file": "xbzrle-7.2.mig", "qemu": "7.2", "machine": "pc-q35-7.2", "memory_mb": 128, "blob_kib": 4096,
         "features": ["ran-guest", "xbzrle", "multi-round"]},
        {"file": "i440fx-2.3-7.2.mig", "qemu": "7.2", "machine": "pc-i440fx-2.3",
         "notes": "no configuration, no footers"},
        {"file": "q35-10.0.mig", "qemu": "10.0", "machine": "pc-q35-10.0", "args": devices, "disk": True,
         "features": ["ran-guest", "many-devices", "block"]},
        {"file": "file-10.0.mig", "qemu": "10.0", "machine": "pc-q35-10.0", "features": ["file-migration"]},
        {"file": "xbzrle-10.0.mig", "qemu": "10.0", "machine": "pc-i440fx-10.0", "memory_mb": 128, "blob_kib": 4096,
         "features": ["ran-guest", "xbzrle", "multi-round"]},
        {"file": "microvm-10.0.mig", "qemu": "10.0", "machine": "microvm", "args": ["-device", "virtio-rng-device"],
         "memory_mb": 64},
    ]


def gen(outdir, quick):
    os.makedirs(outdir, exist_ok=True)
    manifest = []
    with tempfile.TemporaryDirectory(prefix="qemu-tool-") as tmp:
        for spec in fixtures(quick):
            t = time.monotonic()
            try:
                e = make(outdir, spec, tmp)
            except Exception as err:  # noqa: BLE001 - record and go on
                e = {"file": spec["file"], "qemu": spec["qemu"], "machine": spec["machine"], "skipped": True,
                     "notes": f"generation failed: {err}"}
                print(f"FAIL {spec['file']}: {err}", flush=True)
            size = os.path.getsize(os.path.join(outdir, e["file"])) if not e.get("skipped") else 0
            print(f"{e['file']:24} QEMU {e['qemu']:5} {e['machine']:34} {size:>10} bytes "
                  f"{time.monotonic() - t:5.1f} s {'(skipped: ' + e['notes'] + ')' if e.get('skipped') else ''}",
                  flush=True)
            manifest.append(e)
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


def load(a):
    with tempfile.TemporaryDirectory(prefix="qemu-tool-") as tmp:
        sock = os.path.join(tmp, "load.sock")
        proc, qmp = start(a.qemu, a.machine, a.memory_mb, json.loads(a.args_json), ["-S", "-incoming", "defer"], sock)
        try:
            qmp.cmd("migrate-incoming", uri="exec:cat " + shlex.quote(os.path.abspath(a.stream)))
            deadline = time.monotonic() + 240
            while True:
                st = qmp.cmd("query-status")["status"]
                mig = qmp.cmd("query-migrate").get("status")
                if st != "inmigrate" and mig in (None, "completed"):
                    break
                if mig == "failed" or proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"load failed (status {st}, migration {mig})")
                time.sleep(0.05)
            qmp.cmd("migrate", uri="exec:cat > " + shlex.quote(os.path.abspath(a.remigrate)))
            qmp.wait_migration()
        except Exception as err:  # noqa: BLE001 - show QEMU's own words
            stop(proc, qmp)
            print(f"qemu_tool load: {err}\n{proc.stderr.read().decode(errors='replace')}", file=sys.stderr)
            return 1
        stop(proc, qmp)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen")
    g.add_argument("outdir")
    g.add_argument("--quick", action="store_true")
    ld = sub.add_parser("load")
    ld.add_argument("stream")
    ld.add_argument("--qemu", choices=sorted(QEMU), required=True)
    ld.add_argument("--machine", required=True)
    ld.add_argument("--args-json", default="[]")
    ld.add_argument("--memory-mb", type=int, default=64)
    ld.add_argument("--remigrate", required=True)
    a = ap.parse_args()
    return gen(a.outdir, a.quick) if a.cmd == "gen" else load(a)


if __name__ == "__main__":
    sys.exit(main())
