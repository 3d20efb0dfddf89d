#!/usr/bin/env python3
"""Real-QEMU interoperability tests for vmstream.

Generates QEMU migration streams with real QEMU 7.2 and 10.0 (scripts/qemu_tool.py),
then for every stream checks, as a user would run the `vmstream` command:

* QEMU -> vmstream -> QEMU is byte-identical, through files and through pipes;
* `verify`, `inspect --json` and `dump --json` work and agree with the stream's own
  description (device count), and the random blob loaded into guest RAM is found
  byte for byte by `extract`;
* the round-tripped stream and the `--compact` one load into real QEMU, and the
  guest memory QEMU then migrates out again equals what QEMU migrates out after
  loading the original;
* a QEMU 7.2 `pc-q35-7.2` stream passes through vmstream and loads into QEMU 10.0.

Prints one line per check and a closing "N passed, N failed" line; exits 1 on failure.

Usage: scripts/qemu_interop.py [--quick] [--fixtures DIR] [--vmstream PATH]
"""

import argparse
import hashlib
import json
import os
import subprocess
import sys
import tempfile
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TOOL = os.path.join(ROOT, "scripts", "qemu_tool.py")

passed = 0
failed = 0


def check(name, fn):
    global passed, failed
    t = time.monotonic()
    try:
        fn()
    except Exception as e:  # noqa: BLE001 - report every failure and go on
        failed += 1
        print(f"FAIL {name}: {e}", flush=True)
        return False
    passed += 1
    print(f"ok   {name} ({time.monotonic() - t:.1f} s)", flush=True)
    return True


def run(cmd, **kw):
    r = subprocess.run(cmd, capture_output=True, **kw)
    if r.returncode != 0:
        err = r.stderr.decode(errors="replace").strip()
        raise RuntimeError(f"{' '.join(map(str, cmd))} exited {r.returncode}: {err[-2000:]}")
    return r


def sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def same_file(a, b):
    if os.path.getsize(a) != os.path.getsize(b) or sha256(a) != sha256(b):
        raise RuntimeError(f"{a} and {b} differ ({os.path.getsize(a)} vs {os.path.getsize(b)} bytes)")


def vmdesc_devices(path):
    """Device entries of the stream's vmdesc trailer (exact tail search), or None."""
    with open(path, "rb") as f:
        data = f.read()
    end = len(data)
    for p in range(end - 6, max(end - (16 << 20), 0) - 1, -1):
        if data[p] == 0x06 and p + 5 < end and data[p + 5] == ord("{"):
            n = int.from_bytes(data[p + 1:p + 5], "big")
            if p + 5 + n == end:
                return json.loads(data[p + 5:end])["devices"]
    return None


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--quick", action="store_true", help="only the small fixture set")
    ap.add_argument("--fixtures", help="use existing fixtures (a directory with manifest.json)")
    ap.add_argument("--vmstream", default=os.path.join(ROOT, "target", "release", "vmstream"))
    args = ap.parse_args()
    vms = args.vmstream
    work = tempfile.mkdtemp(prefix="vmstream-interop-")
    fixtures = args.fixtures
    if not fixtures:
        fixtures = os.path.join(work, "fixtures")
        cmd = [sys.executable, TOOL, "gen", fixtures] + (["--quick"] if args.quick else [])
        print("generating fixtures:", " ".join(cmd), flush=True)
        subprocess.run(cmd, check=True)
    with open(os.path.join(fixtures, "manifest.json")) as f:
        manifest = json.load(f)
    entries = manifest if isinstance(manifest, list) else manifest.get("fixtures", manifest.get("entries", []))

    for e in entries:
        if e.get("skipped"):
            print(f"skip {e.get('file')}: {e.get('notes', '')}")
            continue
        src = os.path.join(fixtures, e["file"])
        tag = f"{e['file']} ({e['qemu']}, {e['machine']})"
        base = os.path.join(work, os.path.basename(e["file"]))
        vm, back = base + ".vms", base + ".back.mig"
        no_vmdesc = "no-vmdesc" in e.get("features", [])
        vmdesc_args = []
        if no_vmdesc and e.get("vmdesc_twin"):
            vmdesc_args = ["--vmdesc", os.path.join(fixtures, e["vmdesc_twin"])]

        def files():
            run([vms, "convert", src, vm] + vmdesc_args)
            run([vms, "convert", vm, back, "--to", "qemu"])
            same_file(src, back)
        if not check(f"{tag}: QEMU -> vmstream -> QEMU byte-identical (files)", files):
            continue

        def pipes():
            with open(src, "rb") as fin:
                p1 = subprocess.Popen([vms, "convert", "-", "-"] + vmdesc_args, stdin=fin, stdout=subprocess.PIPE)
                p2 = subprocess.Popen([vms, "convert", "-", "-", "--to", "qemu"], stdin=p1.stdout, stdout=subprocess.PIPE)
                p1.stdout.close()
                out = p2.communicate()[0]
                if p1.wait() or p2.returncode:
                    raise RuntimeError("pipe conversion failed")
            with open(src, "rb") as f:
                if f.read() != out:
                    raise RuntimeError("pipe round trip differs from the original")
        check(f"{tag}: byte-identical through pipes", pipes)

        def tools():
            run([vms, "verify", vm])
            run([vms, "verify", src] + vmdesc_args)
            info = json.loads(run([vms, "inspect", "--json", src] + vmdesc_args).stdout)
            dump = json.loads(run([vms, "dump", "--json", src] + vmdesc_args).stdout)
            want = vmdesc_devices(src)
            if want is not None and len(dump["devices"]) != len(want):
                raise RuntimeError(f"dump shows {len(dump['devices'])} devices, the vmdesc lists {len(want)}")
            if want is not None:
                names = [d["name"] for d in dump["devices"]]
                if names != [d["name"] for d in want]:
                    raise RuntimeError("device order differs from the vmdesc")
            if not info["ram_blocks"]:
                raise RuntimeError("no RAM blocks")
        check(f"{tag}: verify, inspect and dump", tools)

        blob = e.get("blob")
        if blob:
            def blob_found():
                out = os.path.join(work, os.path.basename(e["file"]) + ".x")
                run([vms, "extract", src, "--out", out] + vmdesc_args)
                ram = [n for n in os.listdir(out) if n in ("pc.ram.bin", "microvm.ram.bin")] or \
                    sorted(os.listdir(out), key=lambda n: -os.path.getsize(os.path.join(out, n)))[:1]
                with open(os.path.join(fixtures, blob["file"]), "rb") as f:
                    want = f.read()
                addr = int(str(blob["addr"]), 0)
                with open(os.path.join(out, ram[0]), "rb") as f:
                    f.seek(addr)
                    got = f.read(len(want))
                if got != want:
                    raise RuntimeError(f"blob not found at {addr:#x} of {ram[0]}")
            check(f"{tag}: extract finds the random blob byte for byte", blob_found)

        refs = {}

        def loaded(stream, qemu):
            """Guest memory as QEMU `qemu` has it after loading `stream` (re-migrated out)."""
            out = os.path.join(work, os.path.basename(stream) + f".{qemu}.remig")
            cmd = [sys.executable, TOOL, "load", stream, "--qemu", qemu, "--machine", e["machine"],
                   "--args-json", json.dumps(e.get("args", [])), "--remigrate", out]
            if e.get("memory_mb"):
                cmd += ["--memory-mb", str(e["memory_mb"])]
            run(cmd, timeout=300)
            return out

        def load_and_compare(stream, qemu, label):
            # The reference is QEMU's own load of the original: a guest that ran
            # has pages the destination itself rewrites on load (e.g. kvmclock's).
            if qemu not in refs:
                refs[qemu] = loaded(src, qemu)
            out = loaded(stream, qemu)
            d = json.loads(subprocess.run([vms, "diff", "--json", refs[qemu], out] + vmdesc_args,
                                          capture_output=True).stdout or b"{}")
            bad = [b for b in d.get("ram_blocks", []) if b.get("pages_differ")]
            if not d or bad:
                raise RuntimeError(f"{label}: guest memory differs after load: {bad or 'diff failed'}")

        check(f"{tag}: round-tripped stream loads into QEMU {e['qemu']} with identical memory",
              lambda: load_and_compare(back, e["qemu"], "round trip"))

        def compact():
            cvm, cmig = base + ".compact.vms", base + ".compact.mig"
            run([vms, "convert", src, cvm, "--compact"] + vmdesc_args)
            run([vms, "convert", cvm, cmig, "--to", "qemu"])
            load_and_compare(cmig, e["qemu"], "compact")
            print(f"     compact: {os.path.getsize(src)} -> {os.path.getsize(cmig)} bytes")
        check(f"{tag}: --compact stream loads with identical memory", compact)

        if e["qemu"] == "7.2" and e["machine"] == "pc-q35-7.2":
            check(f"{tag}: 7.2 stream through vmstream loads into QEMU 10.0",
                  lambda: load_and_compare(back, "10.0", "7.2 -> 10.0"))

    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
