#!/usr/bin/env python3
"""Drives real QEMU over QMP to make and load migration streams.

  qemu_tool.py gen OUTDIR [--quick]
      Makes fixture streams with QEMU 7.2 and 10.0 and writes OUTDIR/manifest.json,
      a list of entries:
        {"file", "qemu": "7.2"|"10.0", "machine": exact -machine type, "memory_mb",
         "args": the extra QEMU arguments a matching destination needs,
         "blob": {"file", "addr", "sha256"} or null, "features": [...], "notes",
         "skipped": bool, "vmdesc_twin": same-config fixture that has a vmdesc, or null,
         "accel", "bytes", "seconds"}
      The args hold absolute paths into OUTDIR (blob, qcow2 images, multiboot kernel),
      so the fixtures are used where they were made.
      Prints one line per fixture (name, bytes, seconds). Exits 1 if a fixture could
      not be made (a missing QEMU only marks its fixtures skipped).

  qemu_tool.py load STREAM --qemu 7.2|10.0 --machine M --args-json JSON
                   [--memory-mb N] --remigrate OUT
      Starts QEMU with that configuration and `-incoming defer`, loads STREAM
      (migrate-incoming exec:cat STREAM), then migrates the loaded, still paused
      guest out again to OUT. Exits 0 on success; on failure prints QEMU's stderr
      and exits 1.

How a fixture is made: QEMU starts with -nodefaults -display none, a QMP socket,
`-m N`, `-machine TYPE,accel=kvm|tcg` and a random blob (deterministic per fixture)
loaded into guest RAM with `-device loader,...,force-raw=on`, paused (-S) unless the
guest is to run first; then QMP migrate to `exec:cat > FILE` (or `file:FILE`).

QEMU 7.2 is `qemu-system-x86_64` on PATH and 10.0 is target/qemu-10.0/qemu-system-x86_64
(scripts/install-qemu.sh makes both); QEMU_72 / QEMU_100 override them. KVM is used
when /dev/kvm can be opened, TCG otherwise; QEMU_ACCEL=kvm|tcg overrides that (streams
made with one load only with the same, as KVM adds devices such as kvmclock).
"""

import argparse
import hashlib
import json
import os
import random
import shlex
import socket
import struct
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU = {
    "7.2": os.environ.get("QEMU_72", "qemu-system-x86_64"),
    "10.0": os.environ.get("QEMU_100", os.path.join(ROOT, "target", "qemu-10.0", "qemu-system-x86_64")),
}
BLOB_ADDR = 0x1000000            # 16 MiB: clear of SeaBIOS, qboot and the multiboot kernel
DIRTY_START, DIRTY_END = 0x2000000, 0x2400000   # what the dirtying guest rewrites
QEVM = b"QEVM\x00\x00\x00\x03"


def accel():
    if os.environ.get("QEMU_ACCEL") in ("kvm", "tcg"):
        return os.environ["QEMU_ACCEL"]
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return "kvm"
    except OSError:
        return "tcg"


_versions = {}


def qemu_version(qemu):
    """The 'x.y.z' version of QEMU `qemu` ("7.2"/"10.0"), or None if it does not run."""
    if qemu not in _versions:
        try:
            out = subprocess.run([QEMU[qemu], "--version"], capture_output=True, timeout=30).stdout.decode()
            _versions[qemu] = out.split("version ", 1)[1].split()[0] if "version " in out else None
        except (OSError, subprocess.TimeoutExpired):
            _versions[qemu] = None
    return _versions[qemu]


def stderr_of(proc):
    f = getattr(proc, "errfile", None)
    if f is None:
        return ""
    f.seek(0)
    return f.read().decode(errors="replace")


def with_stderr(err, proc):
    """The error's text followed by QEMU's stderr (unless the text has it already)."""
    text, se = str(err), stderr_of(proc).strip()
    return f"{text}\n{se}" if se and se not in text else text


class Qmp:
    def __init__(self, path, proc, timeout=30):
        self.proc = proc
        deadline = time.monotonic() + timeout
        while True:
            try:
                self.sock = socket.socket(socket.AF_UNIX)
                self.sock.connect(path)
                break
            except OSError:
                self.sock.close()
                if proc.poll() is not None or time.monotonic() > deadline:
                    raise RuntimeError(f"QEMU did not start: {stderr_of(proc).strip()}")
                time.sleep(0.02)
        self.sock.settimeout(120)
        self.f = self.sock.makefile("rw")
        self.events = []
        self._read("QMP greeting")
        self.cmd("qmp_capabilities")

    def _read(self, what):
        try:
            line = self.f.readline()
        except OSError:
            line = ""
        if not line:
            try:
                status = self.proc.wait(timeout=10)
            except subprocess.TimeoutExpired:
                status = "still running"
            raise RuntimeError(f"{what}: QEMU closed the QMP connection (exit status {status}): "
                               f"{stderr_of(self.proc).strip()}")
        return json.loads(line)

    def cmd(self, name, **args):
        msg = {"execute": name}
        if args:
            msg["arguments"] = args
        try:
            self.f.write(json.dumps(msg) + "\n")
            self.f.flush()
        except OSError:
            pass  # QEMU is gone; _read says so with its stderr
        while True:
            r = self._read(name)
            if "error" in r:
                raise RuntimeError(f"{name}: {r['error'].get('desc')}")
            if "return" in r:
                return r["return"]
            self.events.append(r)

    def wait_migration(self, timeout=240):
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            r = self.cmd("query-migrate")
            if r.get("status") == "completed":
                return r
            if r.get("status") in ("failed", "cancelled"):
                raise RuntimeError(f"migration {r['status']}: {r.get('error-desc', '')}")
            if self.proc.poll() is not None:
                raise RuntimeError(f"QEMU exited (status {self.proc.returncode}) during migration")
            time.sleep(0.02)
        raise RuntimeError("migration timed out")


def start(qemu, machine, memory_mb, args, extra, sock):
    """Starts QEMU `qemu` and returns (process, Qmp). Its stderr: stderr_of(process)."""
    cmd = [QEMU[qemu], "-nodefaults", "-display", "none", "-m", str(memory_mb),
           "-machine", f"{machine},accel={accel()}", "-qmp", f"unix:{sock},server=on,wait=off"] + args + extra
    err = tempfile.TemporaryFile()
    proc = subprocess.Popen(cmd, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, stderr=err)
    proc.errfile = err
    try:
        return proc, Qmp(sock, proc)
    except Exception:
        if proc.poll() is None:
            proc.kill()
        proc.wait()
        raise


def stop(proc, qmp):
    try:
        qmp.cmd("quit")
    except Exception:  # noqa: BLE001 - QEMU may already be gone
        pass
    try:
        proc.wait(timeout=10)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait()


def dirtier_kernel():
    """A flat multiboot kernel (a.out kludge) that loops forever, incrementing one
    dword in every 4 KiB page of [DIRTY_START, DIRTY_END): a guest that keeps
    dirtying memory, so precopy needs several rounds and xbzrle has deltas to send."""
    load = 0x100000
    magic, flags = 0x1BADB002, 0x00010000
    header = struct.pack("<8I", magic, flags, (-(magic + flags)) & 0xFFFFFFFF,
                         load, load, 0, 0, load + 32)
    code = (b"\xbe" + struct.pack("<I", DIRTY_START)      # mov esi, DIRTY_START
            + b"\x89\xf0"                                # outer: mov eax, esi
            + b"\xff\x00"                                # inner: inc dword [eax]
            + b"\x05" + struct.pack("<I", 0x1000)        # add eax, 4096
            + b"\x3d" + struct.pack("<I", DIRTY_END)     # cmp eax, DIRTY_END
            + b"\x72\xf2"                                # jb inner
            + b"\xeb\xee")                               # jmp outer
    return header + code


_netdev_user = {}


def user_netdev(qemu):
    """-netdev backend to use: `user` (slirp) where QEMU has it, else a hub port."""
    if qemu not in _netdev_user:
        out = subprocess.run([QEMU[qemu], "-netdev", "help"], capture_output=True).stdout.decode()
        _netdev_user[qemu] = "user" in out.split()
    return "user,id={id}" if _netdev_user[qemu] else "hubport,id={id},hubid=0"


def device_args(qemu, kind, outdir, name):
    """Extra arguments of one device group. Block groups create their qcow2 images."""
    if kind == "net":
        nd = user_netdev(qemu)
        return ["-netdev", nd.format(id="n0"), "-device", "virtio-net-pci,netdev=n0,mac=52:54:00:12:34:56",
                "-netdev", nd.format(id="n1"), "-device", "e1000,netdev=n1,mac=52:54:00:12:34:57"]
    if kind == "block":
        disk = os.path.join(outdir, name.replace(".mig", ".qcow2"))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
        return ["-drive", f"file={disk},if=none,id=d0,format=qcow2", "-device", "virtio-blk-pci,drive=d0"]
    if kind == "ide":
        disk = os.path.join(outdir, name.replace(".mig", "-ide.qcow2"))
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "8M"], check=True)
        return ["-drive", f"file={disk},if=none,id=d1,format=qcow2", "-device", "ide-hd,drive=d1"]
    if kind == "usb":
        return ["-device", "qemu-xhci,id=xhci", "-device", "usb-tablet,bus=xhci.0", "-device", "usb-kbd,bus=xhci.0"]
    if kind == "virtio":
        return ["-device", "virtio-rng-pci", "-device", "virtio-balloon-pci", "-device", "virtio-serial-pci",
                "-device", "virtio-scsi-pci"]
    if kind == "misc":
        return ["-smp", "2", "-device", "VGA", "-chardev", "null,id=c0", "-device", "isa-serial,chardev=c0",
                "-device", "i6300esb"]
    raise ValueError(kind)


def make(outdir, spec, tmp):
    """Makes one fixture; returns its manifest entry."""
    name, qemu, machine = spec["file"], spec["qemu"], spec["machine"]
    entry = {"file": name, "qemu": qemu, "machine": machine, "memory_mb": spec.get("memory_mb", 64),
             "args": [], "blob": None, "features": list(spec.get("features", [])), "notes": spec.get("notes", ""),
             "skipped": False, "vmdesc_twin": spec.get("vmdesc_twin"), "accel": accel()}
    version = qemu_version(qemu)
    if not version or not version.startswith(qemu + "."):
        entry.update(skipped=True, notes=f"QEMU {qemu} is not available ({QEMU[qemu]}: "
                     f"{'version ' + version if version else 'does not run'}); see scripts/install-qemu.sh")
        return entry
    args = list(spec.get("args", []))
    for kind in spec.get("devices", []):
        args += device_args(qemu, kind, outdir, name)
    if spec.get("dirtier"):
        kernel = os.path.join(outdir, "dirtier.mb")
        with open(kernel, "wb") as f:
            f.write(dirtier_kernel())
        args += ["-kernel", kernel]
    seed = spec.get("seed", name)
    rnd = random.Random(seed)
    data = rnd.randbytes(rnd.choice([256, 512, 768, 1024]) << 10)
    blob = os.path.join(outdir, os.path.splitext(os.path.basename(seed))[0] + ".blob")
    with open(blob, "wb") as f:
        f.write(data)
    args += ["-device", f"loader,file={blob},addr={BLOB_ADDR:#x},force-raw=on"]
    entry["blob"] = {"file": os.path.basename(blob), "addr": hex(BLOB_ADDR), "sha256": hashlib.sha256(data).hexdigest()}
    entry["args"] = args

    run_s = spec.get("run_s")
    path = os.path.join(outdir, name)
    if os.path.exists(path):
        os.unlink(path)
    sock = os.path.join(tmp, "gen.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    proc, qmp = start(qemu, machine, entry["memory_mb"], args, [] if run_s else ["-S"], sock)
    try:
        if spec.get("dirtier"):
            # SeaBIOS takes a few seconds to reach the kernel; wait until it dirties.
            booted = time.monotonic()
            while "0x00000000" in qmp.cmd("human-monitor-command", **{"command-line": f"xp /1wx {DIRTY_START:#x}"}):
                if time.monotonic() - booted > 120:
                    raise RuntimeError("the dirtying guest did not start within 120 s")
                time.sleep(0.05)
            entry["notes"] += f" (it started dirtying {time.monotonic() - booted:.1f} s after QEMU did)"
        if run_s:
            time.sleep(run_s if accel() == "kvm" else 3 * run_s)
        if "xbzrle" in entry["features"]:
            qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])
        if "multi-round" in entry["features"]:
            # Slow and strict at first so precopy keeps iterating while the guest dirties memory.
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20, "downtime-limit": 1})
        uri = f"file:{path}" if "file-migration" in entry["features"] else "exec:cat > " + shlex.quote(path)
        qmp.cmd("migrate", uri=uri)
        if "multi-round" in entry["features"]:
            deadline = time.monotonic() + 20
            while time.monotonic() < deadline:
                r = qmp.cmd("query-migrate")
                if r.get("status") not in ("setup", "active") or r.get("ram", {}).get("dirty-sync-count", 0) >= 6:
                    break
                time.sleep(0.05)
            # Then let it converge: pause the guest so the last round drains.
            qmp.cmd("stop")
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 1 << 30, "downtime-limit": 300})
        info = qmp.wait_migration()
    except Exception as err:
        stop(proc, qmp)
        raise RuntimeError(with_stderr(err, proc)) from None
    stop(proc, qmp)
    with open(path, "rb") as f:
        head = f.read(8)
    if head != QEVM:
        raise RuntimeError(f"{name} starts with {head.hex()}, not QEVM version 3")
    ram, xb = info.get("ram", {}), info.get("xbzrle-cache", {})
    stats = (f"QEMU {version}, {entry['accel']}; ram: {ram.get('normal', 0)} normal + "
             f"{ram.get('duplicate', 0)} zero pages, dirty-sync-count {ram.get('dirty-sync-count')}")
    if "xbzrle" in entry["features"]:
        stats += (f"; xbzrle: {xb.get('pages', 0)} encoded pages, {xb.get('bytes', 0)} bytes, "
                  f"{xb.get('cache-miss', 0)} cache misses, {xb.get('overflow', 0)} overflows")
    entry["notes"] = f"{entry['notes']} [{stats}]".strip()
    return entry


def fixtures(quick):
    """The fixture specs; quick is the small subset."""
    q = [
        {"file": "q35-7.2.mig", "qemu": "7.2", "machine": "pc-q35-7.2", "features": ["paused"],
         "notes": "plain q35: configuration section, footers, vmdesc"},
        {"file": "i440fx-10.0.mig", "qemu": "10.0", "machine": "pc-i440fx-10.0", "features": ["paused"],
         "notes": "plain i440fx"},
        {"file": "i440fx-2.2-7.2.mig", "qemu": "7.2", "machine": "pc-i440fx-2.2",
         "features": ["paused", "old-machine", "no-vmdesc"], "vmdesc_twin": "i440fx-2.2-vmdesc-7.2.mig",
         "notes": "machine types <= 2.2 send no vmdesc (and <= 2.3 no configuration section, no footers)"},
        {"file": "i440fx-2.2-vmdesc-7.2.mig", "qemu": "7.2", "machine": "pc-i440fx-2.2",
         "args": ["-machine", "suppress-vmdesc=off"], "seed": "i440fx-2.2-7.2.mig", "features": ["paused", "old-machine"],
         "notes": "twin of i440fx-2.2-7.2.mig (same machine, devices and RAM) that has a vmdesc"},
    ]
    if quick:
        return q
    full = []
    for v, pc, q35 in (("7.2", "pc-i440fx-7.2", "pc-q35-7.2"), ("10.0", "pc-i440fx-10.0", "pc-q35-10.0")):
        full += [
            {"file": f"q35-{v}.mig", "qemu": v, "machine": q35, "features": ["paused"], "notes": "plain q35"},
            {"file": f"i440fx-{v}.mig", "qemu": v, "machine": pc, "features": ["paused"], "notes": "plain i440fx"},
            {"file": f"microvm-{v}.mig", "qemu": v, "machine": "microvm", "args": ["-device", "virtio-rng-device"],
             "features": ["paused", "microvm"], "notes": "microvm (qboot firmware, virtio-mmio)"},
            {"file": f"net-{v}.mig", "qemu": v, "machine": q35, "devices": ["net"], "features": ["paused", "network"],
             "notes": "virtio-net-pci and e1000 on -netdev user (or hubport)"},
            {"file": f"block-{v}.mig", "qemu": v, "machine": q35, "devices": ["block"], "features": ["paused", "block"],
             "notes": "virtio-blk-pci on a qcow2 image in the fixture directory"},
            {"file": f"usb-{v}.mig", "qemu": v, "machine": pc, "devices": ["usb"], "features": ["paused", "usb"],
             "notes": "qemu-xhci with usb-tablet and usb-kbd"},
            {"file": f"virtio-{v}.mig", "qemu": v, "machine": q35, "devices": ["virtio"],
             "features": ["paused", "virtio"], "notes": "virtio-rng, -balloon, -serial, -scsi (PCI)"},
            {"file": f"many-{v}.mig", "qemu": v, "machine": pc, "memory_mb": 128,
             "devices": ["net", "block", "ide", "usb", "virtio", "misc"],
             "features": ["paused", "many-devices", "network", "block", "usb", "virtio"],
             "notes": "2 CPUs, NICs, virtio-blk + IDE disks, USB, virtio devices, VGA, serial, watchdog"},
            {"file": f"ran-{v}.mig", "qemu": v, "machine": q35, "devices": ["net"], "run_s": 1.0,
             "features": ["ran-guest", "network"], "notes": "guest ran in SeaBIOS for ~1 s, migrated live"},
            {"file": f"xbzrle-{v}.mig", "qemu": v, "machine": q35, "memory_mb": 128, "dirtier": True, "run_s": 1.0,
             "features": ["ran-guest", "xbzrle", "multi-round"],
             "notes": f"a multiboot guest keeps incrementing a dword in every page of "
                      f"{DIRTY_START:#x}-{DIRTY_END:#x}; xbzrle on, bandwidth limited to 32 MiB/s until 6 dirty "
                      f"syncs, then the guest is paused so the last round drains"},
        ]
    full += [
        q[2],
        q[3],
        {"file": "i440fx-2.3-7.2.mig", "qemu": "7.2", "machine": "pc-i440fx-2.3", "features": ["paused", "old-machine"],
         "notes": "no configuration section, no footers, but a vmdesc"},
        {"file": "i440fx-1.4-7.2.mig", "qemu": "7.2", "machine": "pc-i440fx-1.4", "features": ["paused", "old-machine"],
         "notes": "oldest machine type 7.2 has; no configuration section, no footers, but a vmdesc (only 2.2 "
                  "turns it off)"},
        {"file": "i440fx-2.4-10.0.mig", "qemu": "10.0", "machine": "pc-i440fx-2.4", "features": ["paused", "old-machine"],
         "notes": "oldest machine type 10.0 has (it sends a vmdesc)"},
        {"file": "nodesc-10.0.mig", "qemu": "10.0", "machine": "pc-i440fx-10.0",
         "args": ["-machine", "suppress-vmdesc=on"], "seed": "i440fx-10.0.mig", "features": ["paused", "no-vmdesc"],
         "vmdesc_twin": "i440fx-10.0.mig",
         "notes": "10.0 has no machine type that omits the vmdesc; suppress-vmdesc=on does"},
        {"file": "file-10.0.mig", "qemu": "10.0", "machine": "pc-q35-10.0", "devices": ["virtio"], "run_s": 0.5,
         "features": ["ran-guest", "virtio", "file-migration"], "notes": "migrated with a file: URI"},
    ]
    return full


def gen(outdir, quick):
    outdir = os.path.abspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    manifest, failed = [], 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qemu-tool-") as tmp:
        for spec in fixtures(quick):
            t = time.monotonic()
            try:
                e = make(outdir, spec, tmp)
            except Exception as err:  # noqa: BLE001 - record, report and go on
                failed += 1
                e = {"file": spec["file"], "qemu": spec["qemu"], "machine": spec["machine"], "memory_mb": 0,
                     "args": [], "blob": None, "features": spec.get("features", []), "skipped": True,
                     "vmdesc_twin": None, "notes": f"generation failed: {err}"}
                print(f"FAIL {spec['file']}: {err}", file=sys.stderr, flush=True)
            e["seconds"] = round(time.monotonic() - t, 2)
            e["bytes"] = 0 if e.get("skipped") else os.path.getsize(os.path.join(outdir, e["file"]))
            state = "skipped: " + e["notes"] if e.get("skipped") else ", ".join(e["features"])
            print(f"{e['file']:26} QEMU {e['qemu']:4} {e['machine']:15} {e['bytes']:>9} bytes "
                  f"{e['seconds']:5.1f} s  {state}", flush=True)
            manifest.append(e)
    with open(os.path.join(outdir, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    made = sum(1 for e in manifest if not e.get("skipped"))
    print(f"{made} of {len(manifest)} fixtures in {outdir} in {time.monotonic() - t0:.1f} s", flush=True)
    return 1 if failed else 0


def load(a):
    version = qemu_version(a.qemu)
    if not version or not version.startswith(a.qemu + "."):
        print(f"qemu_tool load: QEMU {a.qemu} is not available ({QEMU[a.qemu]})", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="qemu-tool-") as tmp:
        sock = os.path.join(tmp, "load.sock")
        try:
            proc, qmp = start(a.qemu, a.machine, a.memory_mb, json.loads(a.args_json),
                              ["-S", "-incoming", "defer"], sock)
        except Exception as err:  # noqa: BLE001 - show QEMU's own words
            print(f"qemu_tool load: {err}", file=sys.stderr)
            return 1
        try:
            qmp.cmd("migrate-incoming", uri="exec:cat " + shlex.quote(os.path.abspath(a.stream)))
            deadline = time.monotonic() + 240
            while True:
                mig = qmp.cmd("query-migrate").get("status")
                if mig == "completed":
                    break
                if mig == "failed" or time.monotonic() > deadline:
                    raise RuntimeError(f"incoming migration {mig or 'did not start'}")
                time.sleep(0.02)
            qmp.cmd("migrate", uri="exec:cat > " + shlex.quote(os.path.abspath(a.remigrate)))
            qmp.wait_migration()
        except Exception as err:  # noqa: BLE001 - show QEMU's own words
            stop(proc, qmp)
            print(f"qemu_tool load: {a.stream} into QEMU {a.qemu} {a.machine}: {with_stderr(err, proc)}",
                  file=sys.stderr)
            return 1
        stop(proc, qmp)
    return 0


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = ap.add_subparsers(dest="cmd", required=True)
    g = sub.add_parser("gen", help="make fixture streams and OUTDIR/manifest.json")
    g.add_argument("outdir")
    g.add_argument("--quick", action="store_true", help="only the small subset")
    ld = sub.add_parser("load", help="load a stream into QEMU and migrate it out again")
    ld.add_argument("stream")
    ld.add_argument("--qemu", choices=sorted(QEMU), required=True)
    ld.add_argument("--machine", required=True)
    ld.add_argument("--args-json", default="[]", help="JSON list of extra QEMU arguments (the manifest's args)")
    ld.add_argument("--memory-mb", type=int, default=64)
    ld.add_argument("--remigrate", required=True, help="where to write the stream QEMU migrates out")
    a = ap.parse_args()
    return gen(a.outdir, a.quick) if a.cmd == "gen" else load(a)


if __name__ == "__main__":
    sys.exit(main())
