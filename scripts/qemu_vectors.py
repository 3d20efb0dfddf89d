#!/usr/bin/env python3
"""Writes QEMU migration streams whose target page size no QEMU this project runs
writes, from the QEMU stream reference alone (standard library only, no code shared
with the project):

  qemu_vectors.py OUTDIR

* 64k-pages.mig: target page size 64 KiB (configuration subsection
  `configuration/target-page-bits` = 16). No QEMU 7.2-10.x system target has 64 KiB
  target pages (TARGET_PAGE_BITS is 12 to 14 on all of them; 64 KiB *host* or guest
  MMU pages do not change it), so this stream is made here, the way QEMU would write
  it: a RAM block of 4 pages, pages 0 and 1 sent, page 1 sent again in a later round,
  pages 2 and 3 zero, one device with a vmdesc trailer.
* 8k-pages.mig: machine `clipper` (alpha, TARGET_PAGE_BITS 13), which sends no
  target-page-bits subsection (its page size is fixed): the page size, 8 KiB, comes
  from the vmdesc trailer's page_size (or from the architecture).

OUTDIR/manifest.json lists, per file, the page size and the final content of every
page (sha256, or "zero"); FILE.ram is the block's final memory image (page i at
i * page size), so a reader's extract can be compared with it byte for byte.
"""

import hashlib
import json
import os
import struct
import sys

EOS, ZERO, MEM_SIZE, PAGE, CONTINUE = 0x10, 0x02, 0x04, 0x08, 0x20


def be32(v):
    return struct.pack(">I", v)


def be64(v):
    return struct.pack(">Q", v)


def cstr(s):
    b = s.encode()
    return bytes([len(b)]) + b


def page_bytes(seed, size):
    """Deterministic, non-zero page contents."""
    out, i = bytearray(), 0
    while len(out) < size:
        out += hashlib.sha256(f"{seed}/{i}".encode()).digest()
        i += 1
    return bytes(out[:size])


def stream(machine, page_bits, page_size, block="test.ram", pages=4):
    s = bytearray(b"QEVM" + be32(3))
    # configuration: machine name, then the target page bits subsection if any
    s += b"\x07" + be32(len(machine)) + machine.encode()
    if page_bits is not None:
        s += b"\x05" + cstr("configuration/target-page-bits") + be32(1) + be32(page_bits)
    ram_id, dev_id = 2, 3
    footer = lambda sid: b"\x7e" + be32(sid)  # noqa: E731
    # RAM START: the block list
    s += b"\x01" + be32(ram_id) + cstr("ram") + be32(0) + be32(4)
    s += be64(pages * page_size | MEM_SIZE) + cstr(block) + be64(pages * page_size)
    s += be64(EOS) + footer(ram_id)
    final = {}
    # RAM PART 1: page 0 (names the block), page 1, page 2 zero (same block: CONTINUE)
    s += b"\x02" + be32(ram_id)
    p0, p1 = page_bytes("page0", page_size), page_bytes("page1-old", page_size)
    s += be64(0 * page_size | PAGE) + cstr(block) + p0
    s += be64(1 * page_size | PAGE | CONTINUE) + p1
    s += be64(2 * page_size | ZERO | CONTINUE) + b"\x00"
    s += be64(EOS) + footer(ram_id)
    # RAM PART 2: page 1 again, new contents (CONTINUE carries across sections)
    p1 = page_bytes("page1-new", page_size)
    s += b"\x02" + be32(ram_id)
    s += be64(1 * page_size | PAGE | CONTINUE) + p1
    s += be64(EOS) + footer(ram_id)
    # RAM END: page 3 zero
    s += b"\x03" + be32(ram_id)
    s += be64(3 * page_size | ZERO | CONTINUE) + b"\x00"
    s += be64(EOS) + footer(ram_id)
    final = {0: p0, 1: p1, 2: None, 3: None}
    # one device, described by the vmdesc
    s += b"\x04" + be32(dev_id) + cstr("dev") + be32(0) + be32(1) + be32(0xDEADBEEF) + footer(dev_id)
    s += b"\x00"
    desc = {"page_size": page_size, "devices": [
        {"name": "dev", "instance_id": 0, "vmsd_name": "dev", "version": 1,
         "fields": [{"name": "x", "type": "uint32", "size": 4}]}]}
    js = json.dumps(desc).encode()
    s += b"\x06" + be32(len(js)) + js
    pages_out = {str(i): ("zero" if d is None else hashlib.sha256(d).hexdigest()) for i, d in final.items()}
    image = b"".join(bytes(page_size) if final[i] is None else final[i] for i in range(pages))
    return bytes(s), image, {"page_size": page_size, "block": block, "machine": machine, "pages": pages_out}


def main():
    if len(sys.argv) != 2:
        print(__doc__, file=sys.stderr)
        return 2
    out = sys.argv[1]
    os.makedirs(out, exist_ok=True)
    manifest = {}
    for name, args in (("64k-pages.mig", ("virt-64k", 16, 1 << 16)),
                       ("8k-pages.mig", ("clipper", None, 1 << 13))):
        data, image, info = stream(*args)
        with open(os.path.join(out, name), "wb") as f:
            f.write(data)
        with open(os.path.join(out, name + ".ram"), "wb") as f:
            f.write(image)
        manifest[name] = info
    with open(os.path.join(out, "manifest.json"), "w") as f:
        json.dump(manifest, f, indent=1)
    return 0


if __name__ == "__main__":
    sys.exit(main())
