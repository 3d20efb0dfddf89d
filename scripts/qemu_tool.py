#!/usr/bin/env python3
"""Drives real QEMU over QMP to make and load migration streams.

  qemu_tool.py gen OUTDIR [--quick]
      Makes fixture streams with QEMU 7.2 and 10.0 and writes OUTDIR/manifest.json,
      a list of entries:
        {"file", "qemu": "7.2"|"10.0", "machine": exact -machine type, "memory_mb",
         "args": the extra QEMU arguments a matching destination needs,
         "blob": {"file", "addr", "sha256"} or null, "features": [...], "notes",
         "skipped": bool, "vmdesc_twin": same-config fixture that has a vmdesc, or null,
         "caps": migration capabilities a destination needs too (e.g. ["mapped-ram"]),
         "multifd_channels": N or null, "accel", "bytes", "seconds"}
      The args hold absolute paths into OUTDIR (blob, qcow2 images, multiboot kernel),
      so the fixtures are used where they were made.
      Prints one line per fixture (name, bytes, seconds). Exits 1 if a fixture could
      not be made (a missing QEMU only marks its fixtures skipped).

  qemu_tool.py load STREAM --qemu 7.2|10.0 --machine M --args-json JSON
                   [--memory-mb N] [--caps CAP,...] [--multifd-channels N] [--arch ARCH] --remigrate OUT
      Starts QEMU with that configuration and `-incoming defer`, loads STREAM
      (migrate-incoming exec:cat STREAM), then migrates the loaded, still paused
      guest out again to OUT. With --caps the capabilities are set on the
      destination first; with mapped-ram both migrations use file: URIs (QEMU
      needs a seekable file for it). Exits 0 on success; on failure prints QEMU's
      stderr and exits 1.

  qemu_tool.py load MAIN --channel MAIN.multifd0 --channel ... [--multifd-compression C]
                   --qemu ... --machine M --args-json JSON [--memory-mb N] --pmemsave OUT
      Loads a multifd channel set: multifd on with as many channels as given, then
      the main channel and each channel capture replayed at once, each on its own
      connection, over a unix socket into migrate-incoming; writes the loaded guest's
      memory from 1 MiB to OUT (pmemsave).

Multifd fixtures (manifest key "multifd": {"channels", "compression", "files",
"pmem"}) migrate over a unix socket served by a small capturer that accepts the main
channel and N channels and writes each to a file: the main channel to FILE, channel K
(the id in its MultiFDInit header) to FILE.multifdK; the source's memory from 1 MiB
after the migration (pmemsave) goes to FILE.pmem.

How a fixture is made: QEMU starts with -nodefaults -display none, a QMP socket,
`-m N`, `-machine TYPE,accel=kvm|tcg` and a random blob (deterministic per fixture)
loaded into guest RAM with `-device loader,...,force-raw=on`, paused (-S) unless the
guest is to run first; then QMP migrate to `exec:cat > FILE` (or `file:FILE`).

QEMU 7.2 is `qemu-system-x86_64` on PATH and 10.0 is target/qemu-10.0/qemu-system-x86_64
(scripts/install-qemu.sh makes both); QEMU_72 / QEMU_100 override them. The fixtures of
other architectures (entry key "arch": aarch64, arm, riscv64, ppc64, s390x) run QEMU 7.2's
`qemu-system-ARCH` on PATH, always with TCG; their blob "addr" is its offset in the main
RAM block ("block"; "gpa" is where the guest has it). KVM is used
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
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
QEMU = {
    "7.2": os.environ.get("QEMU_72", "qemu-system-x86_64"),
    "10.0": os.environ.get("QEMU_100", os.path.join(ROOT, "target", "qemu-10.0", "qemu-system-x86_64")),
}
BLOB_ADDR = 0x1000000            # 16 MiB: clear of SeaBIOS, qboot and the multiboot kernel
DIRTY_START, DIRTY_END = 0x2000000, 0x2400000   # what the dirtying guest rewrites
QEVM = b"QEVM\x00\x00\x00\x03"
MULTIFD_MAGIC = b"\x11\x22\x33\x44"
PMEM_START = 0x100000            # guest memory compared from 1 MiB up (below: VGA and ROM windows)


# Per architecture other than x86: where guest RAM starts, the offset in it of the blob.
ARCH_RAM = {"aarch64": 0x40000000, "arm": 0x40000000, "riscv64": 0x80000000, "ppc64": 0, "s390x": 0}
ARCH_BLOB = {"aarch64": BLOB_ADDR, "arm": BLOB_ADDR, "riscv64": BLOB_ADDR, "ppc64": 0x4000000, "s390x": BLOB_ADDR}
ARCH_RAM_BLOCK = {"aarch64": "mach-virt.ram", "arm": "mach-virt.ram", "riscv64": "riscv_virt_board.ram",
                  "ppc64": "ppc_spapr.ram", "s390x": "s390.ram"}


def binary(qemu, arch=None):
    """The QEMU program of version `qemu` for `arch` (None: x86_64)."""
    if arch in (None, "x86_64"):
        return QEMU[qemu]
    return os.environ.get(f"QEMU_72_{arch.upper()}", f"qemu-system-{arch}") if qemu == "7.2" else None


def accel(arch=None):
    if arch not in (None, "x86_64"):
        return "tcg"
    if os.environ.get("QEMU_ACCEL") in ("kvm", "tcg"):
        return os.environ["QEMU_ACCEL"]
    try:
        os.close(os.open("/dev/kvm", os.O_RDWR))
        return "kvm"
    except OSError:
        return "tcg"


_versions = {}


def qemu_version(qemu, arch=None):
    """The 'x.y.z' version of QEMU `qemu` ("7.2"/"10.0") for `arch`, or None if it does not run."""
    prog = binary(qemu, arch)
    if prog not in _versions:
        try:
            out = subprocess.run([prog, "--version"], capture_output=True, timeout=30).stdout.decode()
            _versions[prog] = out.split("version ", 1)[1].split()[0] if "version " in out else None
        except (OSError, TypeError, subprocess.TimeoutExpired):
            _versions[prog] = None
    return _versions[prog]


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


class Capturer:
    """Serves a unix socket a migration source connects to: accepts the main channel and
    `channels` multifd channels (told apart by their first bytes: QEVM or the MultiFDInit
    magic 0x11223344, the channel id in byte 24) and writes each connection to a file:
    the main channel to `path`, channel K to `path.multifdK`."""

    def __init__(self, sock_path, path, channels):
        self.path, self.channels, self.errors, self.files = path, channels, [], {}
        self.srv = socket.socket(socket.AF_UNIX)
        self.srv.bind(sock_path)
        self.srv.listen(channels + 1)
        self.srv.settimeout(120)
        self.threads = []
        self.acceptor = threading.Thread(target=self._accept, daemon=True)
        self.acceptor.start()

    def _accept(self):
        try:
            for _ in range(self.channels + 1):
                conn, _ = self.srv.accept()
                t = threading.Thread(target=self._drain, args=(conn,), daemon=True)
                t.start()
                self.threads.append(t)
        except Exception as err:  # noqa: BLE001 - reported by wait()
            self.errors.append(f"accept: {err}")

    def _drain(self, conn):
        try:
            conn.settimeout(240)
            data = bytearray()
            while True:
                b = conn.recv(1 << 20)
                if not b:
                    break
                data += b
            conn.close()
            if data.startswith(QEVM):
                name = self.path
            elif data.startswith(MULTIFD_MAGIC) and len(data) >= 64:
                name = f"{self.path}.multifd{data[24]}"
            else:
                raise RuntimeError(f"a connection starting with {bytes(data[:8]).hex()} is neither a main nor "
                                   f"a multifd channel")
            if name in self.files:
                raise RuntimeError(f"two connections are {name}")
            self.files[name] = len(data)
            with open(name, "wb") as f:
                f.write(data)
        except Exception as err:  # noqa: BLE001 - reported by wait()
            self.errors.append(str(err))

    def wait(self):
        self.acceptor.join(240)
        for t in self.threads:
            t.join(240)
        self.srv.close()
        if self.errors or len(self.files) != self.channels + 1:
            raise RuntimeError(f"capture of {self.channels} multifd channels got {sorted(self.files)}: "
                               f"{'; '.join(self.errors)}")


def multifd_setup(qmp, channels, compression):
    """Turns on multifd with `channels` channels and `compression` (none, zlib, zstd)."""
    qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "multifd", "state": True}])
    qmp.cmd("migrate-set-parameters", **{"multifd-channels": channels, "multifd-compression": compression})


def replay(sock_path, main, channels, timeout=60):
    """Connects to a listening migration destination and sends the main channel and
    then each multifd channel capture, each on its own connection, all at once."""
    errors = []

    def send(path):
        try:
            s = socket.socket(socket.AF_UNIX)
            s.connect(sock_path)
            with open(path, "rb") as f:
                s.sendall(f.read())
            s.close()
        except Exception as err:  # noqa: BLE001 - reported below
            errors.append(f"{path}: {err}")

    threads = [threading.Thread(target=send, args=(main,), daemon=True)]
    threads[0].start()
    time.sleep(0.2)  # the main channel first, as a source connects it
    for c in channels:
        threads.append(threading.Thread(target=send, args=(c,), daemon=True))
        threads[-1].start()
    return threads, errors


def start(qemu, machine, memory_mb, args, extra, sock, arch=None):
    """Starts QEMU `qemu` (for `arch`) and returns (process, Qmp). Its stderr: stderr_of(process)."""
    cmd = [binary(qemu, arch), "-nodefaults", "-display", "none", "-m", str(memory_mb),
           "-machine", f"{machine},accel={accel(arch)}", "-qmp", f"unix:{sock},server=on,wait=off"] + args + extra
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


def set_caps(qmp, caps, multifd_channels):
    """Turns migration capabilities on (and sets the multifd channel count)."""
    if caps:
        qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": c, "state": True} for c in caps])
    if multifd_channels:
        qmp.cmd("migrate-set-parameters", **{"multifd-channels": multifd_channels})


def make(outdir, spec, tmp):
    """Makes one fixture; returns its manifest entry."""
    name, qemu, machine, arch = spec["file"], spec["qemu"], spec["machine"], spec.get("arch")
    entry = {"file": name, "qemu": qemu, "machine": machine, "memory_mb": spec.get("memory_mb", 64),
             "args": [], "blob": None, "features": list(spec.get("features", [])), "notes": spec.get("notes", ""),
             "skipped": False, "vmdesc_twin": spec.get("vmdesc_twin"), "accel": accel(arch),
             "caps": list(spec.get("caps", [])), "multifd_channels": spec.get("multifd_channels")}
    if arch:
        entry["arch"] = arch
    version = qemu_version(qemu, arch)
    if not version or not version.startswith(qemu + "."):
        entry.update(skipped=True, notes=f"QEMU {qemu} is not available ({binary(qemu, arch)}: "
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
    offset = ARCH_BLOB.get(arch, BLOB_ADDR)
    gpa = ARCH_RAM.get(arch, 0) + offset
    args += ["-device", f"loader,file={blob},addr={gpa:#x},force-raw=on"]
    entry["blob"] = {"file": os.path.basename(blob), "addr": hex(offset), "gpa": hex(gpa),
                     "sha256": hashlib.sha256(data).hexdigest()}
    if arch:
        entry["blob"]["block"] = ARCH_RAM_BLOCK[arch]
    entry["args"] = args

    run_s = spec.get("run_s")
    path = os.path.join(outdir, name)
    if os.path.exists(path):
        os.unlink(path)
    sock = os.path.join(tmp, "gen.sock")
    if os.path.exists(sock):
        os.unlink(sock)
    proc, qmp = start(qemu, machine, entry["memory_mb"], args, [] if run_s else ["-S"], sock, arch)
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
            time.sleep(run_s if accel(arch) == "kvm" else 3 * run_s)
        if spec.get("stop_first") or arch:
            # saved like libvirt's save (and every guest of another architecture):
            # the guest ran, then is paused and migrated
            qmp.cmd("stop")
        set_caps(qmp, entry["caps"], entry["multifd_channels"])
        if "xbzrle" in entry["features"]:
            qmp.cmd("migrate-set-capabilities", capabilities=[{"capability": "xbzrle", "state": True}])
        if "multi-round" in entry["features"]:
            # Slow and strict at first so precopy keeps iterating while the guest dirties memory.
            qmp.cmd("migrate-set-parameters", **{"max-bandwidth": 32 << 20, "downtime-limit": 1})
        file_uri = "file-migration" in entry["features"] or "mapped-ram" in entry["caps"]
        uri = f"file:{path}" if file_uri else "exec:cat > " + shlex.quote(path)
        capturer = None
        mfd = spec.get("multifd")
        if mfd:
            multifd_setup(qmp, mfd["channels"], mfd["compression"])
            msock = os.path.join(tmp, "multifd.sock")
            if os.path.exists(msock):
                os.unlink(msock)
            for old in os.listdir(outdir):
                if old.startswith(name + ".multifd"):
                    os.unlink(os.path.join(outdir, old))
            capturer = Capturer(msock, path, mfd["channels"])
            uri = f"unix:{msock}"
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
        if capturer:
            capturer.wait()
            # The source stays paused with the memory it sent: the reference image.
            qmp.cmd("pmemsave", val=PMEM_START, size=(entry["memory_mb"] << 20) - PMEM_START,
                    filename=path + ".pmem")
            entry["multifd"] = dict(mfd, files=[os.path.basename(f) for f in sorted(capturer.files) if f != path],
                                    pmem={"file": name + ".pmem", "addr": hex(PMEM_START)})
    except Exception as err:
        stop(proc, qmp)
        raise RuntimeError(with_stderr(err, proc)) from None
    stop(proc, qmp)
    with open(path, "rb") as f:
        head = f.read(8)
    if head != QEVM:
        raise RuntimeError(f"{name} starts with {head.hex()}, not QEVM version 3")
    ram, xb = info.get("ram", {}), info.get("xbzrle-cache", {})
    stats = (f"QEMU {version}{' ' + arch if arch else ''}, {entry['accel']}; ram: {ram.get('normal', 0)} normal + "
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
    mfd = []
    for v in ("7.2", "10.0"):
        for n, comp in ((2, "none"), (3, "zstd"), (2, "zlib"), (3, "none")):
            suffix = "" if comp == "none" else f"-{comp}"
            mfd.append({"file": f"multifd{n}{suffix}-{v}.mig", "qemu": v, "machine": f"pc-q35-{v}",
                        "run_s": 0.5, "multifd": {"channels": n, "compression": comp},
                        "features": ["ran-guest", "multifd"] + ([comp] if comp != "none" else []),
                        "notes": f"multifd, {n} channels, compression {comp}, over a unix socket: the main "
                                 f"channel here, channel K in .multifdK; .pmem is the source's memory "
                                 f"from 1 MiB after the migration"})
        mfd.append({"file": f"multifd-rounds-{v}.mig", "qemu": v, "machine": f"pc-q35-{v}", "memory_mb": 128,
                    "dirtier": True, "run_s": 1.0, "multifd": {"channels": 2, "compression": "none"},
                    "features": ["ran-guest", "multifd", "multi-round"],
                    "notes": f"multifd, 2 channels, while a multiboot guest keeps incrementing a dword in every "
                             f"page of {DIRTY_START:#x}-{DIRTY_END:#x}: bandwidth limited until 6 dirty syncs, "
                             f"so pages are re-sent across sync rounds and channels"})
    if quick:
        return q + mapped_ram_fixtures()[:1] + [m for m in mfd if m["file"] == "multifd3-zstd-10.0.mig"]
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
    full += mfd + [
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
    return full + mapped_ram_fixtures()


def mapped_ram_fixtures():
    """QEMU 10.0 file: migrations with mapped-ram, alone and with multifd (whose
    channels write their pages into the same file): a guest that ran, then paused."""
    return [
        {"file": "mapped-ram-10.0.mig", "qemu": "10.0", "machine": "pc-q35-10.0", "memory_mb": 48,
         "run_s": 0.5, "stop_first": True, "caps": ["mapped-ram"],
         "features": ["ran-guest", "file-migration", "mapped-ram"],
         "notes": "guest ran ~0.5 s, paused, then migrated to file: with mapped-ram"},
        {"file": "mapped-ram-multifd-10.0.mig", "qemu": "10.0", "machine": "pc-q35-10.0", "memory_mb": 48,
         "devices": ["virtio"], "run_s": 0.5, "stop_first": True, "caps": ["mapped-ram", "multifd"],
         "multifd_channels": 3, "features": ["ran-guest", "file-migration", "mapped-ram", "multifd", "virtio"],
         "notes": "guest ran ~0.5 s, paused, then migrated to file: with mapped-ram and 3 multifd channels"},
    ]


ARM_ANALYZE = ("; analyze-migration.py stops at the configuration's target-page-bits subsection "
               "(\"Unknown section type: 5\")")


def arch_fixtures():
    """A QEMU 7.2 block migration (its `block` iterative sections), and paused guests of
    the other architectures QEMU 7.2 migrates (TCG), each after it ran its firmware
    (or, without firmware, its reset vector) for a moment."""
    return [
        {"file": "blockmig-7.2.mig", "qemu": "7.2", "machine": "pc-q35-7.2", "devices": ["block"], "caps": ["block"],
         "features": ["paused", "block", "block-migration", "analyze-migration-fails"],
         "notes": "block migration (capability block, QEMU <= 9.0): the 16 MiB virtio-blk disk travels in "
                  "`block` sections; analyze-migration.py reads no `block` section"},
        {"file": "aarch64-a57-7.2.mig", "qemu": "7.2", "arch": "aarch64", "machine": "virt-7.2", "memory_mb": 32,
         "args": ["-cpu", "cortex-a57"], "run_s": 0.2, "features": ["ran-guest", "arch", "analyze-migration-fails"],
         "notes": "aarch64 virt, cortex-a57, no firmware" + ARM_ANALYZE},
        {"file": "aarch64-max-7.2.mig", "qemu": "7.2", "arch": "aarch64", "machine": "virt-7.2", "memory_mb": 32,
         "args": ["-cpu", "max"], "run_s": 0.2, "features": ["ran-guest", "arch", "analyze-migration-fails"],
         "notes": "aarch64 virt, cpu max (SVE, pointer authentication)" + ARM_ANALYZE},
        {"file": "arm-7.2.mig", "qemu": "7.2", "arch": "arm", "machine": "virt-7.2", "memory_mb": 32,
         "run_s": 0.2, "features": ["ran-guest", "arch", "analyze-migration-fails"],
         "notes": "32-bit arm virt (cortex-a15), no firmware" + ARM_ANALYZE},
        {"file": "riscv64-7.2.mig", "qemu": "7.2", "arch": "riscv64", "machine": "virt", "memory_mb": 32,
         "run_s": 0.2, "features": ["ran-guest", "arch"], "notes": "riscv64 virt, OpenSBI"},
        {"file": "ppc64-7.2.mig", "qemu": "7.2", "arch": "ppc64", "machine": "pseries-7.2", "memory_mb": 256,
         "run_s": 0.2, "features": ["ran-guest", "arch", "spapr-htab"],
         "notes": "ppc64 pseries, SLOF (256 MiB: the smallest pseries RAM SLOF takes); spapr/htab sections"},
        {"file": "s390x-7.2.mig", "qemu": "7.2", "arch": "s390x", "machine": "s390-ccw-virtio-7.2", "memory_mb": 32,
         "args": ["-action", "panic=pause"], "run_s": 0.2,
         "features": ["ran-guest", "arch", "s390-storage-attributes", "analyze-migration-fails"],
         "notes": "s390x, s390-ccw BIOS until it finds no boot device (guest-panicked, paused); "
                  "s390-storage_attributes sections; analyze-migration.py fails on s390_css, whose vmdesc describes "
                  "its 256 channel subsystem pointers as empty structs"},
    ]


def gen(outdir, quick):
    outdir = os.path.abspath(outdir)
    os.makedirs(outdir, exist_ok=True)
    manifest, failed = [], 0
    t0 = time.monotonic()
    with tempfile.TemporaryDirectory(prefix="qemu-tool-") as tmp:
        for spec in fixtures(quick) + arch_fixtures():
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
    version = qemu_version(a.qemu, a.arch)
    if not version or not version.startswith(a.qemu + "."):
        print(f"qemu_tool load: QEMU {a.qemu} is not available ({binary(a.qemu, a.arch)})", file=sys.stderr)
        return 1
    with tempfile.TemporaryDirectory(prefix="qemu-tool-") as tmp:
        sock = os.path.join(tmp, "load.sock")
        try:
            proc, qmp = start(a.qemu, a.machine, a.memory_mb, json.loads(a.args_json),
                              ["-S", "-incoming", "defer"], sock, a.arch)
        except Exception as err:  # noqa: BLE001 - show QEMU's own words
            print(f"qemu_tool load: {err}", file=sys.stderr)
            return 1
        caps = [c for c in (a.caps or "").split(",") if c]
        mapped = "mapped-ram" in caps
        if a.channel:
            return load_channel_set(a, proc, qmp, tmp)
        try:
            set_caps(qmp, caps, a.multifd_channels)
            src = os.path.abspath(a.stream)
            qmp.cmd("migrate-incoming", uri=f"file:{src}" if mapped else "exec:cat " + shlex.quote(src))
            wait_incoming(qmp)
            out = os.path.abspath(a.remigrate)
            qmp.cmd("migrate", uri=f"file:{out}" if mapped else "exec:cat > " + shlex.quote(out))
            qmp.wait_migration()
        except Exception as err:  # noqa: BLE001 - show QEMU's own words
            stop(proc, qmp)
            print(f"qemu_tool load: {a.stream} into QEMU {a.qemu} {a.machine}: {with_stderr(err, proc)}",
                  file=sys.stderr)
            return 1
        stop(proc, qmp)
    return 0


def wait_incoming(qmp, timeout=240):
    """Waits until QEMU's incoming migration has completed; raises if it fails."""
    deadline = time.monotonic() + timeout
    while True:
        mig = qmp.cmd("query-migrate").get("status")
        if mig == "completed":
            return
        if mig == "failed" or time.monotonic() > deadline:
            raise RuntimeError(f"incoming migration {mig or 'did not start'}")
        time.sleep(0.02)


def load_channel_set(a, proc, qmp, tmp):
    """Loads a multifd channel set: multifd on with as many channels as given, the
    main channel and each channel capture replayed over a unix socket into
    migrate-incoming; then writes the loaded guest's memory from PMEM_START to
    a.pmemsave."""
    try:
        multifd_setup(qmp, len(a.channel), a.multifd_compression)
        sock = os.path.join(tmp, "incoming.sock")
        qmp.cmd("migrate-incoming", uri=f"unix:{sock}")
        threads, errors = replay(sock, os.path.abspath(a.stream), [os.path.abspath(c) for c in a.channel])
        wait_incoming(qmp)
        for t in threads:
            t.join(60)
        if errors:
            raise RuntimeError("; ".join(errors))
        if a.pmemsave:
            qmp.cmd("pmemsave", val=PMEM_START, size=(a.memory_mb << 20) - PMEM_START,
                    filename=os.path.abspath(a.pmemsave))
    except Exception as err:  # noqa: BLE001 - show QEMU's own words
        stop(proc, qmp)
        print(f"qemu_tool load: channel set {a.stream} into QEMU {a.qemu} {a.machine}: {with_stderr(err, proc)}",
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
    ld.add_argument("--remigrate", help="where to write the stream QEMU migrates out (not for channel sets)")
    ld.add_argument("--channel", action="append", default=[],
                    help="a multifd channel of STREAM (repeat for each): the set is replayed over a unix socket")
    ld.add_argument("--multifd-compression", default="none", help="with --channel: none, zlib or zstd")
    ld.add_argument("--pmemsave", help="with --channel: where to write the loaded guest's memory from 1 MiB")
    ld.add_argument("--caps", help="comma-separated migration capabilities to turn on (the manifest's caps)")
    ld.add_argument("--multifd-channels", type=int, help="multifd channel count (the manifest's multifd_channels)")
    ld.add_argument("--arch", help="guest architecture other than x86_64 (the manifest's arch)")
    a = ap.parse_args()
    if a.cmd == "load" and not a.channel and not a.remigrate:
        ap.error("load needs --remigrate (or --channel for a multifd channel set)")
    return gen(a.outdir, a.quick) if a.cmd == "gen" else load(a)


if __name__ == "__main__":
    sys.exit(main())
