#!/usr/bin/env python3
"""Real-QEMU interoperability tests for vmstream.

Generates QEMU migration streams with real QEMU 7.2 and 10.0 (scripts/qemu_tool.py),
then for every stream checks, as a user would run the `vmstream` command:

* QEMU -> vmstream -> QEMU is byte-identical, through files and through pipes;
* `verify`, `inspect --json` and `dump --json` work and agree with the stream's own
  description (device count), and the random blob loaded into guest RAM is found
  byte for byte by `extract`;
* `dump --json` shows every device and field QEMU's `analyze-migration.py -d state`
  shows, with the same values (RAM block sizes included), for every
  stream with a vmdesc; the script is $ANALYZE_MIGRATION or fetched from Debian's
  QEMU source by scripts/fetch-analyze-migration.sh, and not having it is a failure;
* the round-tripped stream and the `--compact` one load into real QEMU, and the
  guest memory QEMU then migrates out again equals what QEMU migrates out after
  loading the original;
* a QEMU 7.2 `pc-q35-7.2` stream passes through vmstream and loads into QEMU 10.0;
* multifd channel sets (QEMU 7.2 and 10.0; 2 and 3 channels; none, zlib, zstd): the
  main channel alone is named as such and `extract` refuses it; with `--channel` the
  set converts to one vmstream stream and back to the same N + 1 files, `extract`
  gives the memory the source had, and the re-created set, replayed over a unix
  socket, loads into QEMU (multifd on, same channel count) with that memory, and the
  set compacted with `--compact` is one plain stream QEMU loads with that memory;
* mapped-ram files (QEMU 10.0, alone and with multifd) do all of the above except the
  comparison with analyze-migration.py, which does not read them; their round trip
  through a file is as sparse as QEMU's, and they load back with `migrate-incoming
  file:` and the same capabilities.

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
FETCH = os.path.join(ROOT, "scripts", "fetch-analyze-migration.sh")

passed = 0
failed = 0
# Iterative sections other than RAM that analyze-migration.py lists among devices.
ITERATIVE = ("spapr/htab", "s390-storage_attributes")


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


def analyze_migration():
    """Path of QEMU's analyze-migration.py: $ANALYZE_MIGRATION, else fetched."""
    path = os.environ.get("ANALYZE_MIGRATION") or run([FETCH]).stdout.decode().strip()
    if not os.path.isfile(path):
        raise RuntimeError(f"{path} is not a file")
    return path


# analyze-migration.py's integer types (VMSDFieldInt: signed, VMSDFieldUInt: unsigned);
# every other leaf type it prints as the hex of the field's bytes.
SIGNED = {"int8", "int16", "int32", "int64", "int32 equal", "int32 le", "int64 equal", "uint8 equal", "uint16 equal"}
UNSIGNED = {"uint8", "uint16", "uint32", "uint32 equal", "uint64"}
INTS = {"u8", "u16", "u32", "u64", "i8", "i16", "i32", "i64"}


def by_name(fields):
    """A description's fields by name in first-seen order, arrays unfolded, as
    analyze-migration.py reads them: a name seen once is one value, else a list."""
    r = {}
    for f in fields:
        r.setdefault(f["name"], []).extend([f] * f.get("array_len", 1))
    return r


def elements(v, n):
    """The n values of vmstream's value v of a name seen n times."""
    if n == 1:
        return [v]
    if "seq" not in v or len(v["seq"]) != n:
        raise ValueError(f"vmstream has {json.dumps(v)[:200]}, not a sequence of {n}")
    return v["seq"]


def listed(p, n):
    """The n values of analyze-migration.py's value p of a name seen n times."""
    if n == 1:
        return [p]
    if not isinstance(p, list) or len(p) != n:
        raise ValueError(f"analyze-migration.py shows {json.dumps(p)[:200]}, not a list of {n}")
    return p


def wire(f, v):
    """The bytes QEMU sent for field description f, rebuilt from vmstream's value v."""
    (tag, x), = v.items()
    if tag == "struct":
        d = f.get("struct", f)  # a "tmp" field holds its fields itself
        if d.get("subsections"):
            raise ValueError("subsections inside a field analyze-migration.py shows as bytes")
        return b"".join(wire(g, e) for name, gs in by_name(d["fields"]).items()
                        for g, e in zip(gs, elements(x[name], len(gs))))
    if tag in INTS:
        return x.to_bytes(f["size"], "big", signed=x < 0)  # "int32 le" is "less or equal", big-endian too
    if tag == "bool":
        return bytes([x])
    if tag == "bytes":
        return bytes.fromhex(x)
    if tag == "unit":
        return b"0"  # nullptr marker
    raise ValueError(f"no wire form for {tag}")


def shown(f, b):
    """analyze-migration.py's rendering of the bytes b of field description f."""
    t = f["type"]
    if t == "bool":
        return b[0] != 0
    if t == "nullptr":
        return "nullptr"
    if t in SIGNED or t in UNSIGNED:
        text = "0x%0*x" % (2 * f["size"], int.from_bytes(b, "big"))
        n = int.from_bytes(b, "big", signed=True)
        return f"{text} ({n})" if t in SIGNED and n < 0 else text
    return " ".join(f"{c:02x}" for c in b)


class StateDiff:
    """Compares analyze-migration.py's state with vmstream's, collecting differences."""

    def __init__(self):
        self.diffs, self.devices, self.fields = [], 0, 0

    def struct(self, py, desc, v, path):
        if "struct" not in v:
            self.diffs.append(f"{path}: vmstream has {next(iter(v))}, not fields")
            return
        x, fields = v["struct"], by_name(desc.get("fields", []))
        subs = {s["vmsd_name"]: s for s in desc.get("subsections", [])}
        for name, p in py.items():
            here = f"{path}.{name}"
            if name not in x:
                self.diffs.append(f"{here}: missing; analyze-migration.py shows {json.dumps(p)[:200]}")
            elif name in fields:
                gs = fields[name]
                try:
                    pairs = list(zip(gs, listed(p, len(gs)), elements(x[name], len(gs))))
                except ValueError as e:
                    self.diffs.append(f"{here}: {e}")
                    continue
                for i, (g, pe, ve) in enumerate(pairs):
                    self.field(pe, g, ve, here if len(gs) == 1 else f"{here}[{i}]")
            elif name in subs:
                self.struct(p, subs[name], x[name], here)
            else:
                self.diffs.append(f"{here}: not in the vmdesc")

    def field(self, py, f, v, path):
        if f["type"] == "struct":
            self.struct(py, f["struct"], v, path)
            return
        self.fields += 1
        try:
            want = shown(f, wire(f, v))
        except (ValueError, KeyError, OverflowError, TypeError) as e:
            self.diffs.append(f"{path}: vmstream's {json.dumps(v)[:200]} does not map: {e}")
            return
        if want != py:
            self.diffs.append(f"{path}: analyze-migration.py {json.dumps(py)[:200]}, vmstream "
                              f"{json.dumps(v)[:200]} (shown as {json.dumps(want)[:200]})")

    def streams(self, py_state, descs, dump):
        """analyze-migration.py's sections ("name (section id)") in stream order against
        vmstream's devices, the n-th of a name with the n-th of that name."""
        by_key = {(d["name"], d["instance_id"]): d for d in descs}  # the last wins, as there
        ours, seen = {}, {}
        for d in dump["devices"]:
            ours[(d["name"], seen.setdefault(d["name"], 0))] = d
            seen[d["name"]] += 1
        seen = {}
        for key, p in py_state.items():
            name = key.rsplit(" (", 1)[0]
            if name == "ram" and "section sizes" in p:
                sizes = {b["name"]: b["size"] for b in dump["ram_blocks"]}
                for block, size in p["section sizes"].items():
                    self.fields += 1
                    if block not in sizes or int(size, 16) != sizes[block]:
                        ours = f"{sizes[block]:#018x}" if block in sizes else "no such block"
                        self.diffs.append(f"{key}: RAM block {block}: analyze-migration.py {size}, "
                                          f"vmstream dump {ours}")
                continue
            if name in ITERATIVE:
                continue  # not a device: vmstream keeps its units as they came
            n = seen.setdefault(name, 0)
            seen[name] += 1
            d = ours.get((name, n))
            if d is None:
                self.diffs.append(f"{key}: device missing from vmstream's dump")
                continue
            self.devices += 1
            desc, value = by_key.get((name, d["instance_id"])), d["value"]
            if desc is None:
                self.diffs.append(f"{key}: vmstream's instance {d['instance_id']} is not in the vmdesc")
                continue
            if "vmsd_name" not in desc and "bytes" in value:
                # A legacy handler: QEMU describes its body as one buffer named "data";
                # vmstream keeps the body as bytes.
                value = {"struct": {"data": value}}
            self.struct(p, desc, value, key)


def multifd_checks(vms, e, src, base, tag, fixtures):
    """A multifd channel set: the main channel alone says where its pages are and
    extract refuses it; with its channels (given in reverse order) it converts to
    one vmstream stream and back to the same N + 1 files, extract gives the source's
    memory, and the re-created set loads into QEMU with that memory."""
    mfd = e["multifd"]
    chans = [os.path.join(fixtures, c) for c in mfd["files"]]
    chan_args = [a for c in reversed(chans) for a in ("--channel", c)]
    pmem = os.path.join(fixtures, mfd["pmem"]["file"])
    pmem_at = int(mfd["pmem"]["addr"], 16)
    setv, setback = base + ".set.vms", base + ".set.mig"

    def alone():
        out = run([vms, "inspect", src]).stdout.decode()
        if "multifd:" not in out:
            raise RuntimeError("inspect of the main channel alone does not mention multifd")
        r = subprocess.run([vms, "extract", src, "--out", base + ".alone"], capture_output=True)
        if r.returncode == 0 or b"--channel" not in r.stderr:
            raise RuntimeError(f"extract of the main channel alone exited {r.returncode}: {r.stderr[-300:]!r}")

    def round_trip():
        run([vms, "convert", src, setv] + chan_args)
        for old in (setback,) + tuple(f"{setback}.multifd{k}" for k in range(8)):
            if os.path.exists(old):
                os.unlink(old)
        run([vms, "convert", setv, setback, "--to", "qemu"])
        same_file(src, setback)
        for c in chans:
            k = c.rsplit(".multifd", 1)[1]
            same_file(c, f"{setback}.multifd{k}")
        made = sorted(f for f in os.listdir(os.path.dirname(setback))
                      if f.startswith(os.path.basename(setback) + ".multifd"))
        if len(made) != len(chans):
            raise RuntimeError(f"convert --to qemu wrote {made}, expected {len(chans)} channels")

    def memory(args, what):
        out = base + ".ram." + what
        if os.path.exists(out):
            subprocess.run(["rm", "-rf", out], check=True)
        run([vms, "extract"] + args + ["--out", out])
        with open(os.path.join(out, "pc.ram.bin"), "rb") as f:
            f.seek(pmem_at)
            got = f.read(os.path.getsize(pmem))
        with open(pmem, "rb") as f:
            if got != f.read():
                raise RuntimeError(f"pc.ram from {what} differs from the source's memory ({pmem})")

    def loaded():
        out = base + ".loaded.pmem"
        cmd = [sys.executable, TOOL, "load", setback, "--qemu", e["qemu"], "--machine", e["machine"],
               "--args-json", json.dumps(e["args"]), "--memory-mb", str(e["memory_mb"]),
               "--multifd-compression", mfd["compression"], "--pmemsave", out]
        for c in chans:
            cmd += ["--channel", f"{setback}.multifd{c.rsplit('.multifd', 1)[1]}"]
        run(cmd)
        same_file(pmem, out)

    def compacted():
        # one plain stream: QEMU loads it without multifd, with the source's memory
        plain, again = base + ".compact.mig", base + ".compact.again.mig"
        run([vms, "convert", src, plain, "--to", "qemu", "--compact"] + chan_args)
        if any(f.startswith(os.path.basename(plain) + ".multifd") for f in os.listdir(os.path.dirname(plain))):
            raise RuntimeError("the compacted channel set still has multifd channels")
        run([sys.executable, TOOL, "load", plain, "--qemu", e["qemu"], "--machine", e["machine"],
             "--args-json", json.dumps(e["args"]), "--memory-mb", str(e["memory_mb"]), "--remigrate", again])
        memory([again], "compact")

    n = f"{mfd['channels']} channels, {mfd['compression']}"
    check(f"{tag}: main channel alone: inspect names it, extract refuses", alone)
    if check(f"{tag}: channel set ({n}) -> one vmstream -> the same {len(chans) + 1} files", round_trip):
        check(f"{tag}: channel set memory (extract --channel) = the source's", lambda: memory([src] + chan_args, "set"))
        check(f"{tag}: converted channel set memory (extract) = the source's", lambda: memory([setv], "vms"))
        check(f"{tag}: re-created channel set loads into QEMU {e['qemu']} with the source's memory", loaded)
        check(f"{tag}: compacted channel set is one plain stream QEMU {e['qemu']} loads with that memory", compacted)


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
    analyze = []
    compared = {"streams": 0, "devices": 0, "fields": 0}
    check("analyze-migration.py ($ANALYZE_MIGRATION or scripts/fetch-analyze-migration.sh)",
          lambda: analyze.append(analyze_migration()))

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

        if e.get("multifd"):
            multifd_checks(vms, e, src, base, tag, fixtures)
            continue

        mapped = "mapped-ram" in e.get("caps", [])
        if mapped:
            def sparse():
                # holes stay holes: no more disk blocks than QEMU's own file (plus slack
                # for the file system's allocation granularity)
                have, want = (os.stat(p).st_blocks * 512 for p in (back, src))
                if have > want + (1 << 20) or have > os.path.getsize(src) // 4:
                    raise RuntimeError(f"{back} takes {have} bytes on disk, QEMU's file {want} "
                                       f"(apparent size {os.path.getsize(src)})")
                print(f"     {os.path.getsize(src)} bytes apparent; on disk: QEMU {want}, written back {have}, "
                      f"vmstream {os.path.getsize(vm)}")
            check(f"{tag}: written back as sparse as QEMU's file", sparse)

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
            arch = e.get("arch", "x86_64")
            if info.get("arch") != arch:
                raise RuntimeError(f"inspect shows arch {info.get('arch')!r}, the fixture is {arch}")
        check(f"{tag}: verify, inspect and dump", tools)

        if "analyze-migration-fails" in e.get("features", []):
            print(f"skip {tag}: analyze-migration.py cannot read it ({e.get('notes', '')})")
        elif not no_vmdesc and not mapped:
            def same_state():
                if not analyze:
                    raise RuntimeError("no analyze-migration.py to compare with (see above)")
                stream = src
                if "xbzrle" in e["features"]:
                    # analyze-migration.py reads no XBZRLE pages: give it the --compact
                    # stream, whose device sections are the original's.
                    stream = base + ".plain.mig"
                    run([vms, "convert", src, base + ".plain.vms", "--compact"])
                    run([vms, "convert", base + ".plain.vms", stream, "--to", "qemu"])
                py = json.loads(run([sys.executable, analyze[0], "-d", "state", "-f", stream]).stdout)
                dump = json.loads(run([vms, "dump", "--json", src]).stdout)
                diff = StateDiff()
                diff.streams(py, vmdesc_devices(src), dump)
                if diff.diffs:
                    raise RuntimeError(f"differences ({len(diff.diffs)}):\n     " + "\n     ".join(diff.diffs[:40]))
                for k, n in (("streams", 1), ("devices", diff.devices), ("fields", diff.fields)):
                    compared[k] += n
                print(f"     {diff.devices} devices, {diff.fields} fields")
            check(f"{tag}: dump shows what analyze-migration.py -d state shows", same_state)

        blob = e.get("blob")
        if blob:
            def blob_found():
                out = os.path.join(work, os.path.basename(e["file"]) + ".x")
                run([vms, "extract", src, "--out", out] + vmdesc_args)
                main = (blob["block"] + ".bin",) if blob.get("block") else ("pc.ram.bin", "microvm.ram.bin")
                ram = [n for n in os.listdir(out) if n in main] or \
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
            if e.get("arch"):
                cmd += ["--arch", e["arch"]]
            if e.get("memory_mb"):
                cmd += ["--memory-mb", str(e["memory_mb"])]
            if e.get("caps"):
                cmd += ["--caps", ",".join(e["caps"])]
            if e.get("multifd_channels"):
                cmd += ["--multifd-channels", str(e["multifd_channels"])]
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

        if e["qemu"] == "7.2" and e["machine"] == "pc-q35-7.2" and "block" not in e.get("caps", []):
            # (QEMU 10.0 has no block migration to load a `block` section with)
            check(f"{tag}: 7.2 stream through vmstream loads into QEMU 10.0",
                  lambda: load_and_compare(back, "10.0", "7.2 -> 10.0"))

    print("same state as analyze-migration.py: {streams} streams, {devices} devices, {fields} fields"
          .format(**compared))
    print(f"{passed} passed, {failed} failed")
    return 1 if failed else 0


if __name__ == "__main__":
    sys.exit(main())
