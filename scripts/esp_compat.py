#!/usr/bin/env python3
"""The am53c974 (vmstate esp) break from QEMU 7.2 to 10.0, and its fix.

  esp_compat.py VMSTREAM_BINARY

QEMU 7.2 runs a pc-i440fx-7.2 guest (a looping multiboot kernel) with
-device am53c974 and a disk on it and saves its state. QEMU 10.0 with the same
machine type must fail to load that stream ("Missing section footer"); after
`vmstream transform --rules compat/qemu/esp-7.2-to-10.0.toml` it must load it,
and the guest must be `running` after `cont` (QMP query-status).
Exits 0 on success, 1 on failure; skips (exit 0 with a note) without both QEMUs.
"""

import os
import subprocess
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
import qemu_tool as qt  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
MACHINE = "pc-i440fx-7.2"


def load(tmp, args, stream):
    """Loads `stream` into QEMU 10.0; returns its status after cont, or raises."""
    proc, qmp = qt.start("10.0", MACHINE, 64, args, ["-incoming", "defer"], os.path.join(tmp, "dst.sock"))
    try:
        qmp.cmd("migrate-incoming", uri="exec:cat " + stream)
        deadline = time.monotonic() + 60
        while time.monotonic() < deadline:
            status = qmp.cmd("query-migrate").get("status")
            if status in ("completed", "failed"):
                break
            time.sleep(0.05)
        if status != "completed":
            raise RuntimeError(f"incoming migration {status}")
        qmp.cmd("cont")
        time.sleep(1)
        return qmp.cmd("query-status")["status"]
    except Exception as err:
        raise RuntimeError(qt.with_stderr(err, proc)) from None
    finally:
        qt.stop(proc, qmp)


def main():
    vmstream = sys.argv[1]
    for v in ("7.2", "10.0"):
        if not (qt.qemu_version(v) or "").startswith(v + "."):
            print(f"esp_compat: QEMU {v} not available; skipped")
            return 0
    with tempfile.TemporaryDirectory() as tmp:
        disk = os.path.join(tmp, "disk.qcow2")
        subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", disk, "16M"], check=True)
        kernel = os.path.join(tmp, "loop.mb")
        with open(kernel, "wb") as f:
            f.write(qt.dirtier_kernel())
        args = ["-device", "am53c974,id=scsi0",
                "-drive", f"file={disk},if=none,id=d0,format=qcow2",
                "-device", "scsi-hd,drive=d0,bus=scsi0.0", "-kernel", kernel]
        old = os.path.join(tmp, "esp-7.2.mig")
        new = os.path.join(tmp, "esp-10.0.mig")
        proc, qmp = qt.start("7.2", MACHINE, 64, args, [], os.path.join(tmp, "src.sock"))
        try:
            time.sleep(2)
            qmp.cmd("migrate", uri="exec:cat > " + old)
            qmp.wait_migration()
        finally:
            qt.stop(proc, qmp)
        try:
            load(tmp, args, old)
            print("esp_compat: FAIL: QEMU 10.0 loaded the 7.2 esp state untransformed; the break is gone?")
            return 1
        except RuntimeError as err:
            if "Missing section footer" not in str(err):
                print(f"esp_compat: FAIL: unexpected error loading the 7.2 stream: {err}")
                return 1
        rules = os.path.join(ROOT, "compat", "qemu", "esp-7.2-to-10.0.toml")
        r = subprocess.run([vmstream, "transform", "--rules", rules, old, new], capture_output=True, text=True)
        if r.returncode != 0 or "esp version 6 -> 7" not in r.stderr:
            print(f"esp_compat: FAIL: transform: {r.stderr.strip()}")
            return 1
        status = load(tmp, args, new)
        if status != "running":
            print(f"esp_compat: FAIL: the guest is {status} after loading in QEMU 10.0")
            return 1
        print("esp_compat: QEMU 10.0 loads the transformed 7.2 am53c974 state; the guest is running")
    return 0


if __name__ == "__main__":
    sys.exit(main())
