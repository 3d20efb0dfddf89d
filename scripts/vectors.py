#!/usr/bin/env python3
"""Independent encoder of vmstream test vectors, written from docs/format.md alone.

The reference implementation writes the committed sample stream, the bad vectors in
testdata/bad/ and the CLI golden files itself, so a misreading of the spec there is
invisible to its own tests. This script is a second encoder: it knows nothing but
docs/format.md (and RFC 8878 / the LZ4 block format for compressed page batches,
written here by hand: zstd raw and RLE blocks, LZ4 literals and matches), and uses the
Python standard library only.

    scripts/vectors.py OUTDIR [--controls DIR]

writes into OUTDIR every vector, a manifest.json and a README.md:

* good-*.vms: valid streams, and in the manifest what a reader must find in them
  (records, devices and their values in the JSON form of section 5.4, RAM blocks, the
  final content of every page);
* bad-*.vms: streams that break exactly one rule of the spec, and in the manifest the
  error kind of section 9 a reader must report (malformed, unsupported or limit
  exceeded) and the rule.

With --controls, DIR receives for every bad vector its control: the same stream built
without the violation, which must read cleanly (so a bad vector is refused for its
one violation, not for a slip elsewhere). crates/vmstream-cli/tests/independent.rs
runs this script, checks that OUTDIR equals testdata/independent/ byte for byte, and
runs the vmstream command on every vector and control.
"""

import json
import math
import os
import struct
import sys

# ---------------------------------------------------------------------------
# CRC32C (Castagnoli, reflected, polynomial 0x82F63B78), section 1

def _crc_table():
    table = []
    for i in range(256):
        c = i
        for _ in range(8):
            c = (c >> 1) ^ 0x82F63B78 if c & 1 else c >> 1
        table.append(c)
    return table


_CRC_TABLE = _crc_table()


def crc32c(data):
    crc = 0xFFFFFFFF
    table = _CRC_TABLE
    for b in data:
        crc = table[(crc ^ b) & 0xFF] ^ (crc >> 8)
    return crc ^ 0xFFFFFFFF


assert crc32c(b"123456789") == 0xE3069283, "CRC32C check value"

# ---------------------------------------------------------------------------
# Primitive encodings, section 1 "Conventions"


def u8(n):
    return struct.pack("<B", n)


def u16(n):
    return struct.pack("<H", n)


def u32(n):
    return struct.pack("<I", n)


def u64(n):
    return struct.pack("<Q", n)


def varint(n):
    assert 0 <= n < 1 << 64
    out = bytearray()
    while True:
        b = n & 0x7F
        n >>= 7
        if n:
            out.append(b | 0x80)
        else:
            out.append(b)
            return bytes(out)


def string(s):
    b = s.encode("utf-8") if isinstance(s, str) else s
    return varint(len(b)) + b


def ceil8(n):
    return (n + 7) & ~7


# ---------------------------------------------------------------------------
# Constants, sections 2, 2.1, 3, 4

MAGIC = b"\x89VMS\r\n\x1a\n"

INFO, NAMES, SCHEMA, DEVICE, RAM_BLOCKS, PAGES, EPOCH, INDEX, END = (
    0x0001, 0x0002, 0x0003, 0x0004, 0x0005, 0x0006, 0x0007, 0x0008, 0x00FF)
KIND_NAMES = {INFO: "info", NAMES: "names", SCHEMA: "schema", DEVICE: "device",
              RAM_BLOCKS: "ram-blocks", PAGES: "pages", EPOCH: "epoch",
              INDEX: "index", END: "end"}
OPTIONAL = 0x0001  # record flag bit 0

REQ_ZSTD, REQ_LZ4 = 1 << 0, 1 << 1
OPT_INDEX, OPT_QEMU = 1 << 0, 1 << 1
REQUIRED_NAMES = {REQ_ZSTD: "zstd", REQ_LZ4: "lz4"}
OPTIONAL_NAMES = {OPT_INDEX: "index", OPT_QEMU: "qemu-framing"}

ARCH_X86_64, ARCH_AARCH64 = 1, 2
KIND_LIVE, KIND_SNAPSHOT = 1, 2

COMP_NONE, COMP_ZSTD, COMP_LZ4 = 0, 1, 2
ZERO_PAGE, DATA_PAGE = 1, 2

KIB, MIB = 1 << 10, 1 << 20

WRITER = "vectors.py 1"

# ---------------------------------------------------------------------------
# Values, section 5. A value is a pair (type name, payload); floats carry their bits.

TAGS = {"bool": 0x01, "u8": 0x02, "u16": 0x03, "u32": 0x04, "u64": 0x05, "i8": 0x06,
        "i16": 0x07, "i32": 0x08, "i64": 0x09, "f32": 0x0A, "f64": 0x0B,
        "bytes": 0x0C, "string": 0x0D, "seq": 0x0E, "struct": 0x0F, "none": 0x10,
        "some": 0x11, "enum": 0x12, "unit": 0x13, "map": 0x14}
FIXED = {"u8": "<B", "u16": "<H", "u32": "<I", "u64": "<Q", "i8": "<b", "i16": "<h",
         "i32": "<i", "i64": "<q", "f32": "<I", "f64": "<Q"}


def V(t, p=None):
    return (t, p)


def Struct(*fields):
    return ("struct", list(fields))


def Seq(*items):
    return ("seq", list(items))


def Enum(variant, payload=("unit", None)):
    return ("enum", (variant, payload))


def Map(*pairs):
    return ("map", list(pairs))


def Str(s):
    return ("string", s)


UNIT = ("unit", None)
NONE = ("none", None)


def Some(v):
    return ("some", v)


def encode_value(v, name_id):
    t, p = v
    out = bytearray(u8(TAGS[t]))
    if t == "bool":
        out += u8(1 if p else 0)
    elif t in FIXED:
        out += struct.pack(FIXED[t], p)
    elif t == "bytes":
        out += varint(len(p)) + p
    elif t == "string":
        out += string(p)
    elif t == "seq":
        out += varint(len(p))
        for item in p:
            out += encode_value(item, name_id)
    elif t == "struct":
        out += varint(len(p))
        for name, item in p:
            out += varint(name_id(name)) + encode_value(item, name_id)
    elif t in ("none", "unit"):
        pass
    elif t == "some":
        out += encode_value(p, name_id)
    elif t == "enum":
        variant, payload = p
        out += varint(name_id(variant)) + encode_value(payload, name_id)
    elif t == "map":
        out += varint(len(p))
        for k, item in p:
            out += encode_value(k, name_id) + encode_value(item, name_id)
    else:
        raise ValueError(t)
    return bytes(out)


def value_json(v):
    """The JSON form of section 5.4."""
    t, p = v
    if t in ("f32", "f64"):
        fmt, width = ("<f", 8) if t == "f32" else ("<d", 16)
        x = struct.unpack(fmt, struct.pack(FIXED[t], p))[0]
        if math.isfinite(x):
            return {t: x}
        return {t: "0x%0*x" % (width, p)}
    if t == "bytes":
        return {t: p.hex()}
    if t == "seq":
        return {t: [value_json(i) for i in p]}
    if t == "struct":
        return {t: {name: value_json(i) for name, i in p}}
    if t in ("none", "unit"):
        return {t: None}
    if t == "some":
        return {t: value_json(p)}
    if t == "enum":
        return {t: {p[0]: value_json(p[1])}}
    if t == "map":
        return {t: [[value_json(k), value_json(i)] for k, i in p]}
    return {t: p}


def f32(x):
    return ("f32", struct.unpack("<I", struct.pack("<f", x))[0])


def f64(x):
    return ("f64", struct.unpack("<Q", struct.pack("<d", x))[0])


# ---------------------------------------------------------------------------
# Page contents. A page is `prefix` followed by `repeat` repeated (cut at the page
# size): compact to describe in the manifest, and compressible by hand.

class Page:
    def __init__(self, repeat, prefix=b""):
        assert repeat
        self.repeat, self.prefix = bytes(repeat), bytes(prefix)

    def data(self, size):
        body = self.repeat * ((size - len(self.prefix)) // len(self.repeat) + 1)
        return (self.prefix + body)[:size]

    def tail(self, size, n):
        return bytes(self.byte_at(j, size) for j in range(size - n, size))

    def byte_at(self, j, size):
        assert 0 <= j < size
        if j < len(self.prefix):
            return self.prefix[j]
        return self.repeat[(j - len(self.prefix)) % len(self.repeat)]

    def json(self):
        return {"prefix": self.prefix.hex(), "repeat": self.repeat.hex()}


def noise(seed, n):
    """Deterministic pseudo-random bytes (a linear congruential generator)."""
    x, out = seed & 0x7FFFFFFF, bytearray()
    for _ in range(n):
        x = (x * 1103515245 + 12345) & 0x7FFFFFFF
        out.append((x >> 16) & 0xFF)
    return bytes(out)


# ---------------------------------------------------------------------------
# zstd frames (RFC 8878) made of raw and RLE blocks only.

ZSTD_MAGIC = 0xFD2FB528
ZSTD_BLOCK_MAX = 128 * KIB


def page_segments(page, size):
    """A page as ("raw", bytes) / ("rle", byte, n) segments."""
    segs = []
    if page.prefix:
        segs.append(("raw", page.prefix[:size]))
    rest = size - len(page.prefix)
    if rest > 0:
        if len(page.repeat) == 1:
            segs.append(("rle", page.repeat[0], rest))
        else:
            segs.append(("raw", page.data(size)[len(page.prefix):]))
    return segs


def zstd_frame(segments, content_size=None):
    """One frame: single segment, 4-byte Frame_Content_Size, no checksum."""
    blocks = []  # (block type, regenerated size, content)
    for seg in segments:
        if seg[0] == "raw":
            data = seg[1]
            for i in range(0, len(data), ZSTD_BLOCK_MAX):
                chunk = data[i:i + ZSTD_BLOCK_MAX]
                blocks.append((0, len(chunk), chunk))
        else:
            _, byte, n = seg
            while n:
                k = min(n, ZSTD_BLOCK_MAX)
                blocks.append((1, k, u8(byte)))
                n -= k
    total = sum(b[1] for b in blocks)
    fcs = total if content_size is None else content_size
    # Frame_Header_Descriptor: FCS_Flag 2 (4 bytes), Single_Segment 1, no checksum,
    # no dictionary.
    out = bytearray(u32(ZSTD_MAGIC) + u8(0xA0) + u32(fcs))
    for i, (btype, size, content) in enumerate(blocks):
        last = 1 if i == len(blocks) - 1 else 0
        out += (last | btype << 1 | size << 3).to_bytes(3, "little") + content
    return bytes(out)


# ---------------------------------------------------------------------------
# LZ4 blocks (the LZ4 block format, no frame).

def _lz4_len(n):
    out = bytearray()
    n -= 15
    while n >= 255:
        out.append(255)
        n -= 255
    out.append(n)
    return bytes(out)


def lz4_sequence(literals, offset=None, match_len=None):
    ll = len(literals)
    token = min(ll, 15) << 4
    if match_len is not None:
        assert match_len >= 4 and 0 < offset < 1 << 16
        token |= min(match_len - 4, 15)
    out = bytearray(u8(token))
    if ll >= 15:
        out += _lz4_len(ll)
    out += literals
    if match_len is not None:
        out += u16(offset)
        if match_len - 4 >= 15:
            out += _lz4_len(match_len - 4)
    return bytes(out)


def lz4_literals(data):
    """The whole data area as one literal run: the simplest valid block."""
    return lz4_sequence(data)


def lz4_pages(pages, size):
    """Each page as literals (prefix plus one period) and one overlapping match that
    repeats the period; the block ends with 12 literals, as the format requires
    (last 5 bytes literals, last match starting 12 or more bytes before the end)."""
    out = bytearray()
    for i, page in enumerate(pages):
        period = len(page.repeat)
        lits = page.prefix + page.repeat
        assert len(lits) <= size
        match = size - len(lits)
        last = i == len(pages) - 1
        if last:
            match -= 12
        assert match >= 4
        out += lz4_sequence(lits, period, match)
        if last:
            out += lz4_sequence(page.tail(size, 12))
    return bytes(out)


# ---------------------------------------------------------------------------
# The stream writer, with what a reader must find tracked alongside.

class Block:
    def __init__(self, id, name, pages, page_size=None, flags=0, size=None):
        self.id, self.name, self.pages = id, name, pages
        self.page_size, self.flags, self.size = page_size, flags, size


class Stream:
    def __init__(self, page_size=4 * KIB, required=0, optional=0, major=1, minor=0,
                 arch=ARCH_X86_64, kind=KIND_SNAPSHOT, writer=WRITER, header_len=None,
                 magic=MAGIC, header_padding=None):
        self.page_size = page_size
        self.required, self.optional = required, optional
        self.minor = minor
        self.writer = writer
        self.buf = bytearray(header(page_size, required, optional, major, minor, arch,
                                    kind, writer, header_len, magic, header_padding))
        self.names = {}
        self.records = 0
        self.counts = {}
        self.index_entries = []
        self.index_offset = 0
        self.info = None
        self.devices = []
        self.blocks = {}  # id -> dict
        self.barriers = 0

    # framing, section 3
    def record(self, kind, body, flags=0):
        off = len(self.buf)
        self.buf += frame(kind, flags, body)
        self.records += 1
        name = KIND_NAMES.get(kind, "unknown")
        self.counts[name] = self.counts.get(name, 0) + 1
        return off

    def encode(self, value):
        """Encodes a value, first publishing (section 5.2) the names it needs."""
        new = []

        def name_id(name):
            if name in self.names:
                return self.names[name]
            self.names[name] = len(self.names)
            new.append(name)
            return self.names[name]

        body = encode_value(value, name_id)
        if new:
            self.names_record(len(self.names) - len(new), new)
        return body

    def names_record(self, first_id, names):
        body = varint(first_id) + varint(len(names)) + b"".join(string(n) for n in names)
        off = self.record(NAMES, body)
        self.index_entries.append((NAMES, off, 0xFFFFFFFF, first_id, len(names), ""))
        return off

    def info_record(self, value):
        body = self.encode(value)
        self.info = value_json(value)
        return self.record(INFO, body)

    def schema(self, type_name, version, description):
        body = self.encode(description)
        return self.record(SCHEMA, string(type_name) + u32(version) + body, OPTIONAL)

    def device(self, name, instance, type_name, version, value, flags=0):
        state = self.encode(value)
        off = self.record(DEVICE, string(name) + u32(instance) + string(type_name) +
                          u32(version) + state, flags)
        self.devices.append({"name": name, "instance_id": instance, "type": type_name,
                             "version": version, "value": value_json(value)})
        self.index_entries.append((DEVICE, off, 0xFFFFFFFF, 0, 0, name))
        return off

    def ram_blocks(self, blocks, flags=0):
        body = bytearray(varint(len(blocks)))
        for b in blocks:
            size = b.size if b.size is not None else b.pages * self.page_size
            ps = b.page_size if b.page_size is not None else self.page_size
            body += u32(b.id) + string(b.name) + u64(size) + u32(ps) + u32(b.flags)
            self.blocks[b.id] = {"id": b.id, "name": b.name, "size": size,
                                 "page_size": ps, "flags": b.flags,
                                 "final": {}, "sent_data": 0, "sent_zero": 0}
        off = self.record(RAM_BLOCKS, bytes(body), flags)
        self.index_entries.append((RAM_BLOCKS, off, 0xFFFFFFFF, 0, 0, ""))
        return off

    def pages(self, block, epoch, entries, compression=COMP_NONE, data_pad=None,
              lz4_mode="pages", mutate=None, flags=0):
        """entries: [(page index, Page or None for a zero page)]."""
        ps = self.page_size
        data_pages = [p for _, p in entries if p is not None]
        raw_len = len(data_pages) * ps
        if not data_pages:
            stored = b""  # no data pages: an empty data area, whatever the compression
        elif compression == COMP_NONE:
            stored = b"".join(p.data(ps) for p in data_pages)
        elif compression == COMP_ZSTD:
            stored = zstd_frame([s for p in data_pages for s in page_segments(p, ps)])
        elif compression == COMP_LZ4 and lz4_mode == "literals":
            stored = lz4_literals(b"".join(p.data(ps) for p in data_pages))
        else:
            stored = lz4_pages(data_pages, ps)
        off = len(self.buf)
        if data_pad is None:
            data_pad = 0
            if compression == COMP_NONE and data_pages:
                # the data area starts at a multiple of 64 (section 6.2)
                start = off + 8 + 24 + 8 * len(entries)
                data_pad = -start % 64
        fields = {"block": block, "epoch": epoch, "compression": compression,
                  "data_pad": data_pad, "reserved": 0, "count": len(entries),
                  "stored_len": len(stored), "raw_len": raw_len,
                  "entries": [(i << 8) | (ZERO_PAGE if p is None else DATA_PAGE)
                              for i, p in entries],
                  "pad": b"\0" * data_pad, "stored": stored}
        if mutate:
            mutate(fields)
        body = (u32(fields["block"]) + u32(fields["epoch"]) + u8(fields["compression"]) +
                u8(fields["data_pad"]) + u16(fields["reserved"]) + u32(fields["count"]) +
                u32(fields["stored_len"]) + u32(fields["raw_len"]) +
                b"".join(u64(e) for e in fields["entries"]) + fields["pad"] +
                fields["stored"])
        off = self.record(PAGES, body, flags)
        b = self.blocks.get(block)
        if b is not None:
            for i, p in entries:
                b["final"][i] = p
                if p is None:
                    b["sent_zero"] += 1
                else:
                    b["sent_data"] += 1
        self.index_entries.append((PAGES, off, block, entries[0][0], entries[-1][0], ""))
        return off

    def epoch(self, e):
        self.barriers += 1
        return self.record(EPOCH, u32(e))

    def unknown(self, kind, body, flags=OPTIONAL):
        return self.record(kind, body, flags)

    def index_list(self):
        """Section 7: the entries the index lists, one per record of the kinds the
        stream's version indexes (a 1.0 index lists device and pages records only)."""
        kinds = (DEVICE, PAGES) if self.minor == 0 else (NAMES, DEVICE, RAM_BLOCKS, PAGES)
        return [e for e in self.index_entries if e[0] in kinds]

    def index(self, entries=None, flags=OPTIONAL):
        """The index record (OPTIONAL, as the Flags column of section 4 says)."""
        if entries is None:
            entries = self.index_list()
        body = bytearray(varint(len(entries)))
        for kind, off, block, first, last, name in entries:
            body += u16(kind) + u64(off) + u32(block) + u64(first) + u64(last) + string(name)
        self.index_offset = len(self.buf)
        return self.record(INDEX, bytes(body), flags)

    def end(self, records=None, index_offset=None, flags=0):
        """Section 8: records counts every record before end, skipped ones and the
        index included; index_offset is where the index is, 0 without one."""
        if records is None:
            records = self.records
        if index_offset is None:
            index_offset = self.index_offset
        return self.record(END, u64(records) + u64(index_offset), flags)

    def bytes(self):
        return bytes(self.buf)

    def fix_crc(self, off):
        """Recomputes the CRC of the record at `off` after a patch."""
        body_len = struct.unpack_from("<I", self.buf, off + 4)[0]
        end = off + 8 + ceil8(body_len + 4) - 4
        self.buf[end:end + 4] = u32(crc32c(self.buf[off:end]))

    def expect(self):
        """What a reader must find: the manifest entry of a good vector."""
        blocks = []
        for b in self.blocks.values():
            n = b["size"] // self.page_size
            final = b["final"]
            data = sorted(i for i, p in final.items() if p is not None)
            blocks.append({
                "id": b["id"], "name": b["name"], "size": b["size"],
                "page_size": b["page_size"], "flags": b["flags"],
                "final": {"data": len(data), "zero": len(final) - len(data),
                          "unsent": n - len(final)},
                "sent": {"data": b["sent_data"], "zero": b["sent_zero"]},
                "data_pages": [[i, final[i].json()] for i in data]})
        return {
            "page_size": self.page_size, "writer": self.writer,
            "required_features": [n for bit, n in REQUIRED_NAMES.items()
                                  if self.required & bit],
            "optional_features": [n for bit, n in OPTIONAL_NAMES.items()
                                  if self.optional & bit],
            "records": dict(sorted(self.counts.items())), "total_records": self.records,
            "epoch_barriers": self.barriers, "info": self.info,
            "devices": self.devices, "ram_blocks": blocks}


def header(page_size=4 * KIB, required=0, optional=0, major=1, minor=0,
           arch=ARCH_X86_64, kind=KIND_SNAPSHOT, writer=WRITER, header_len=None,
           magic=MAGIC, padding=None):
    """Section 2."""
    w = writer.encode("utf-8") if isinstance(writer, str) else writer
    if header_len is None:
        header_len = ceil8(40 + len(w) + 4)
    h = bytearray(magic + u16(major) + u16(minor) + u32(header_len) + u64(required) +
                  u64(optional) + u32(page_size) + u16(arch) + u8(kind) + u8(len(w)) + w)
    pad = header_len - 4 - len(h)
    h += padding if padding is not None else b"\0" * pad
    return bytes(h + u32(crc32c(h)))


def frame(kind, flags, body):
    """Section 3: kind, flags, body_len, body, zero padding, CRC32C."""
    p = ceil8(len(body) + 4) - 4
    rec = u16(kind) + u16(flags) + u32(len(body)) + body + b"\0" * (p - len(body))
    return rec + u32(crc32c(rec))


# ---------------------------------------------------------------------------
# Good vectors

GOOD = []
BAD = []


def good(name, covers, args=()):
    def register(fn):
        entry = {"file": "good-%s.vms" % name, "covers": covers, "build": fn}
        if args:
            entry["args"] = list(args)
        GOOD.append(entry)
        return fn
    return register


def bad(name, kind, rule, args=(), message_any=(), pending=None):
    assert kind in ("malformed", "unsupported", "limit exceeded")

    def register(fn):
        entry = {"file": "bad-%s.vms" % name, "kind": kind, "rule": rule, "build": fn}
        if args:
            entry["args"] = list(args)
        if message_any:
            entry["message_any"] = list(message_any)
        if pending:
            entry["pending"] = pending
        BAD.append(entry)
        return fn
    return register


def uart_state():
    return Struct(
        ("ier", V("u8", 1)), ("lcr", V("u8", 3)), ("divisor", V("u16", 12)),
        ("fifo", Seq(V("u8", 0x41), V("u8", 0x42))), ("mtu", Some(V("u16", 1500))),
        ("mode", Enum("Loopback")),
        ("regs", Map((V("u8", 0), V("u32", 0xDEADBEEF)), (V("u8", 1), V("u32", 0)))),
        ("blob", V("bytes", b"\x00\xff")), ("label", Str("COM1")), ("flag", V("bool", True)),
        ("extra", V("u64", 5)))


def uart_schema():
    s = Str
    return Enum("struct", Struct(
        ("ier", s("u8")), ("lcr", s("u8")), ("divisor", s("u16")),
        ("fifo", Enum("seq", s("u8"))), ("mtu", Enum("option", s("u16"))),
        ("mode", Enum("enum", s("any"))), ("regs", Enum("map", Seq(s("u8"), s("u32")))),
        ("blob", s("bytes")), ("label", s("string")), ("flag", s("bool")),
        ("extra", s("any"))))


def every_tag_state():
    nested = V("u8", 9)
    for i in range(12):
        nested = Seq(nested) if i % 2 else Some(nested)
    return Struct(
        ("bool_false", V("bool", False)), ("flag", V("bool", True)),
        ("u8", V("u8", 255)), ("u16", V("u16", 0xFFFE)), ("u32", V("u32", 0xFFFFFFFD)),
        ("u64", V("u64", (1 << 64) - 1)),
        ("i8", V("i8", -128)), ("i16", V("i16", -32768)), ("i32", V("i32", -(1 << 31))),
        ("i64_min", V("i64", -(1 << 63))), ("i64_max", V("i64", (1 << 63) - 1)),
        ("f32", f32(1.5)), ("f32_tenth", f32(0.1)), ("f32_neg_zero", V("f32", 0x80000000)),
        ("f32_nan_payload", V("f32", 0x7FC00001)), ("f32_neg_inf", V("f32", 0xFF800000)),
        ("f64", f64(0.1)), ("f64_neg_zero", V("f64", 0x8000000000000000)),
        ("f64_nan_payload", V("f64", 0x7FF8000000000001)),
        ("f64_inf", V("f64", 0x7FF0000000000000)), ("f64_subnormal", V("f64", 1)),
        ("bytes_empty", V("bytes", b"")), ("bytes", V("bytes", b"\x00\xff\x7f\x80")),
        ("bytes_300", V("bytes", noise(3, 300))),
        ("string_empty", Str("")), ("string", Str("Gr\u00fc\u00dfe \u2713 \U0001d11e")),
        ("string_200", Str("x" * 200)),
        ("seq_empty", Seq()), ("seq", Seq(V("u8", 1), Str("two"), UNIT, NONE)),
        ("struct_empty", Struct()),
        ("struct", Struct(("inner", V("u16", 7)), ("gr\u00f6\u00dfe", V("i8", -1)))),
        ("none", NONE), ("some", Some(Some(V("u8", 0)))),
        ("enum_unit", Enum("Off")), ("enum_newtype", Enum("Speed", V("u32", 1000))),
        ("enum_tuple", Enum("Pair", Seq(V("u8", 1), V("u8", 2)))),
        ("enum_struct", Enum("Down", Struct(("reason", Str("cable"))))),
        ("unit", UNIT), ("map_empty", Map()),
        ("map", Map((Str("k"), V("i16", -1)),
                    (Struct(("inner", V("u16", 8))), Seq()),
                    (V("u64", 0), Enum("Off")))),
        ("nested", nested))


@good("minimal", "the smallest stream: a header and an end record")
def _():
    s = Stream()
    s.end()
    return s


@good("4k-all-records",
      "every record kind (info, names, schema, device, ram-blocks, pages, epoch, "
      "index, end, an unknown optional record), every value tag, zero and data pages, "
      "data_pad aligning the data area, a page replaced by a zero page, 4 KiB pages")
def _():
    s = Stream(optional=OPT_INDEX)
    s.info_record(Struct(("vmm", Str("independent-encoder 1")), ("vcpus", V("u32", 2)),
                         ("capabilities", Seq(Str("zero-pages"), Str("epochs")))))
    s.schema("uart-16550", 1, uart_schema())
    s.device("serial0", 0, "uart-16550", 1, uart_state())
    s.device("0000:00:02.0/e1000e", 3, "every-tag", 7, every_tag_state())
    s.unknown(0x0042, b"future optional")
    s.ram_blocks([Block(0, "ram-low", 16), Block(1, "rom", 4, flags=1)])
    s.pages(0, 0, [(0, Page(noise(1, 251))), (1, None), (2, Page(b"\x5a")),
                   (5, None), (15, Page(b"\x0f", prefix=b"last page"))])
    s.pages(1, 0, [(0, None), (1, Page(b"ROM!", prefix=b"\x55\xaa"))])
    s.epoch(0)
    s.pages(0, 1, [(2, None), (3, Page(b"\x01\x02\x03"))])
    s.epoch(1)
    s.index()
    s.end()
    return s


@good("4k-zstd", "zstd page batches (frames of raw and RLE blocks), 4 KiB pages")
def _():
    s = Stream(required=REQ_ZSTD, kind=KIND_LIVE)
    s.device("cpu0", 0, "cpu", 1, Struct(("pc", V("u64", 0xFFF0))))
    s.ram_blocks([Block(0, "ram", 8)])
    s.pages(0, 0, [(0, Page(b"\0", prefix=noise(4, 100))), (1, None), (2, Page(b"\x77")),
                   (3, Page(b"\x07", prefix=b"seven" * 30))], compression=COMP_ZSTD)
    s.epoch(0)
    s.pages(0, 1, [(0, Page(b"\x11")), (7, Page(b"\xee", prefix=b"end"))],
            compression=COMP_ZSTD)
    s.end()
    return s


@good("4k-lz4", "lz4 page batches (one block of literals only; one with overlapping "
      "matches), 4 KiB pages")
def _():
    s = Stream(required=REQ_LZ4, arch=ARCH_AARCH64)
    s.device("gic", 0, "gic-v3", 2, Struct(("ctlr", V("u32", 1))))
    s.ram_blocks([Block(4, "ram", 8)])
    s.pages(4, 0, [(1, Page(noise(5, 61))), (2, None)],
            compression=COMP_LZ4, lz4_mode="literals")
    s.pages(4, 0, [(3, Page(b"\xc3")), (4, Page(noise(6, 300), prefix=b"head")),
                   (5, Page(b"abc", prefix=b"x"))], compression=COMP_LZ4)
    s.end()
    return s


@good("64k-none", "64 KiB pages, an uncompressed data page with its data area aligned, "
      "an index")
def _():
    s = Stream(page_size=64 * KIB, optional=OPT_INDEX)
    s.device("rtc", 0, "mc146818", 3, Struct(("cmos", V("bytes", noise(7, 128)))))
    s.ram_blocks([Block(0, "ram", 4)])
    s.pages(0, 0, [(0, None), (2, Page(noise(8, 251)))])
    s.index()
    s.end()
    return s


@good("64k-zstd-lz4", "64 KiB pages with zstd, lz4 and uncompressed zero-only batches")
def _():
    s = Stream(page_size=64 * KIB, required=REQ_ZSTD | REQ_LZ4)
    s.ram_blocks([Block(0, "ram", 8)])
    s.pages(0, 0, [(0, Page(b"\x42", prefix=noise(9, 500))), (1, Page(b"\0"))],
            compression=COMP_ZSTD)
    s.pages(0, 0, [(2, Page(b"pattern-")), (3, Page(noise(10, 1000)))],
            compression=COMP_LZ4)
    s.pages(0, 0, [(4, None), (5, None)])
    s.epoch(0)
    s.end()
    return s


@good("2m", "2 MiB pages with zstd (RLE blocks across the 128 KiB block limit), lz4 "
      "(long matches) and an uncompressed zero-only batch; an index")
def _():
    s = Stream(page_size=2 * MIB, required=REQ_ZSTD | REQ_LZ4, optional=OPT_INDEX)
    s.ram_blocks([Block(0, "ram-huge", 4, page_size=2 * MIB)])
    s.pages(0, 0, [(0, Page(b"\x99", prefix=noise(11, 200))), (1, None)],
            compression=COMP_ZSTD)
    s.pages(0, 0, [(2, Page(b"2MiB", prefix=b"large page"))], compression=COMP_LZ4)
    s.pages(0, 0, [(3, None)])
    s.epoch(0)
    s.index()
    s.end()
    return s


@good("2m-one-page-over-limit", "a batch may always hold one page: a 2 MiB page whose "
      "raw_len is above the record size limit (1 MiB here; section 6.2)",
      args=["--max-record-mib", "1"])
def _():
    s = Stream(page_size=2 * MIB, required=REQ_ZSTD)
    s.ram_blocks([Block(0, "ram", 2)])
    s.pages(0, 0, [(1, Page(b"\x5a", prefix=b"one page"))], compression=COMP_ZSTD)
    s.end()
    return s


@good("data-pad-any", "readers accept any data_pad 0..=63 and assume no alignment; "
      "the smallest page size, 512")
def _():
    s = Stream(page_size=512)
    s.ram_blocks([Block(0, "ram", 8)])
    s.pages(0, 0, [(0, Page(b"\x01"))], data_pad=0)
    s.pages(0, 0, [(1, Page(b"\x02"))], data_pad=63)
    s.pages(0, 0, [(2, None), (3, Page(b"\x03"))], data_pad=17)
    s.end()
    return s


@good("data-pad-compressed-and-zero-only", "data_pad on compressed batches and on "
      "batches without data pages (writers put 0 there; readers accept any 0..=63)")
def _():
    s = Stream(required=REQ_ZSTD | REQ_LZ4)
    s.ram_blocks([Block(0, "ram", 4)])
    s.pages(0, 0, [(0, Page(b"\x01"))], compression=COMP_ZSTD, data_pad=5)
    s.pages(0, 0, [(1, Page(b"\x02", prefix=b"lz4"))], compression=COMP_LZ4, data_pad=63)
    s.pages(0, 0, [(2, None)], data_pad=9)
    s.end()
    return s


@good("page-size-1g", "the largest page size, 2^30")
def _():
    s = Stream(page_size=1 << 30)
    s.device("d", 0, "t", 1, Struct(("x", V("u8", 1))))
    s.end()
    return s


@good("stream-order", "later entries replace earlier ones in stream order (data by "
      "zero, zero by data); blocks defined in two ram-blocks records, block flags and "
      "block page size; an empty names record; names used again in later records; "
      "512-byte pages")
def _():
    s = Stream(page_size=512)
    s.ram_blocks([Block(0, "ram", 4)])
    s.pages(0, 0, [(0, Page(b"A")), (1, None), (2, Page(b"C"))])
    s.names_record(0, [])
    s.ram_blocks([Block(7, "shared", 2, page_size=2 * MIB, flags=3),
                  Block(3, "rom", 1, flags=1)])
    s.pages(7, 0, [(1, Page(b"s"))])
    s.pages(0, 1, [(0, None), (1, Page(b"B"))])
    s.device("a", 0, "t", 1, Struct(("x", V("u8", 1))))
    s.device("a", 1, "t", 1, Struct(("x", V("u8", 2))))
    s.epoch(1)
    s.pages(0, 2, [(2, Page(b"D"))])
    s.end()
    return s


@good("page-epochs-unordered", "page batches between barriers may come in any epoch "
      "order; the later entry wins (section 6.3, within one stream); 512-byte pages")
def _():
    s = Stream(page_size=512)
    s.ram_blocks([Block(0, "ram", 2)])
    s.pages(0, 5, [(0, Page(b"5"))])
    s.pages(0, 2, [(0, Page(b"2"))])
    s.epoch(5)
    s.pages(0, 9, [(1, Page(b"9"))])
    s.end()
    return s


@good("future-minor", "a later minor version (1.3) is read like 1.0; info is not a "
      "struct")
def _():
    s = Stream(minor=3)
    s.info_record(Seq(Str("info need not be a struct"), V("u8", 1)))
    s.device("d", 0, "t", 1, UNIT)
    s.end()
    return s


@good("unknown-optional-features", "unknown optional feature bits are ignored")
def _():
    s = Stream(optional=1 << 2 | 1 << 63)
    s.device("d", 0, "t", 1, V("u8", 0))
    s.end()
    return s


@good("reserved-arch-kind", "a 1.5 stream with arch and kind values this version "
      "reserves (section 10 lets minor versions add them)")
def _():
    s = Stream(minor=5, arch=99, kind=7)
    s.end()
    return s


@good("unknown-optional-records", "unknown optional records of any size are skipped, "
      "also before and between known ones")
def _():
    s = Stream()
    s.unknown(0x0009, b"")
    s.unknown(0x00FE, b"four")
    s.device("d", 0, "t", 1, Struct(("x", V("u8", 1))))
    s.unknown(0x7FFF, noise(12, 300))
    s.unknown(0xFFFF, b"\0" * 11)
    s.ram_blocks([Block(0, "ram", 1)])
    s.pages(0, 0, [(0, Page(b"\x10"))])
    s.end()
    return s


@good("header-longer-future-minor", "a later minor version (1.2) may make the header "
      "longer than ceil8(40 + writer_len + 4), with trailing fields of its own that a "
      "reader skips unread (section 2, rule 5)")
def _():
    s = Stream(minor=2, writer="w", header_len=64,
               header_padding=b"\0\0\0" + b"trailing fields!")
    s.device("d", 0, "t", 1, Struct(("x", V("u8", 1))))
    s.end()
    return s


@good("reserved-arch-kind-1.0", "arch and kind values this document does not define, "
      "in a 1.0 stream: readers accept them whatever version_minor says (section 2, "
      "rule 7)")
def _():
    s = Stream(minor=0, arch=0x1234, kind=0xFE)
    s.device("d", 0, "t", 1, V("u8", 1))
    s.end()
    return s


@good("known-kinds-any-optional-flag", "a reader reads records of the kinds it knows "
      "whatever their OPTIONAL bit (section 3): a schema and an index without it; a "
      "names, device, ram-blocks, pages, epoch and end record with it")
def _():
    s = Stream(minor=1, page_size=512, optional=OPT_INDEX)
    desc = s.encode(Str("u8"))
    s.record(SCHEMA, string("unused") + u32(1) + desc, 0)
    off = s.record(NAMES, varint(0) + varint(1) + string("x"), OPTIONAL)
    s.names["x"] = 0
    s.index_entries.append((NAMES, off, 0xFFFFFFFF, 0, 1, ""))
    s.device("d", 0, "t", 1, Struct(("x", V("u8", 1))), flags=OPTIONAL)
    s.ram_blocks([Block(0, "ram", 2)], flags=OPTIONAL)
    s.pages(0, 0, [(0, Page(b"o"))], flags=OPTIONAL)
    s.record(EPOCH, u32(0), OPTIONAL)
    s.barriers += 1
    s.index(flags=0)
    s.end(flags=OPTIONAL)
    return s


@good("compressed-batches-without-data", "a batch without data pages has an empty data "
      "area (stored_len 0) whatever its compression (section 6.2): zstd and lz4 batches "
      "of zero pages, and data_pad in them")
def _():
    s = Stream(page_size=512, required=REQ_ZSTD | REQ_LZ4)
    s.ram_blocks([Block(0, "ram", 4)])
    s.pages(0, 0, [(0, Page(b"\x01")), (1, Page(b"\x02"))], compression=COMP_ZSTD)
    s.pages(0, 0, [(0, None), (2, None)], compression=COMP_ZSTD)
    s.pages(0, 0, [(1, None), (3, None)], compression=COMP_LZ4, data_pad=7)
    s.end()
    return s


@good("feature-bits-unused", "feature bits may be set and not used (section 2.1): zstd "
      "and lz4 with uncompressed batches only, index with no index record (index_offset "
      "0)")
def _():
    s = Stream(page_size=512, required=REQ_ZSTD | REQ_LZ4, optional=OPT_INDEX)
    s.ram_blocks([Block(0, "ram", 2)])
    s.pages(0, 0, [(0, Page(b"u")), (1, None)])
    s.end()
    return s


@good("ram-block-edges", "RAM blocks (section 6.1): size 0, an empty name, a block page "
      "size below the header's (512 under 1024) and one of 2^30 with a size that is no "
      "multiple of it, both flags")
def _():
    s = Stream(page_size=1024, minor=1)
    s.ram_blocks([Block(0, "", 0, page_size=512), Block(1, "small-host-pages", 2,
                                                         page_size=512),
                  Block(2, "huge-host-pages", 3, page_size=1 << 30, flags=3)])
    s.pages(1, 0, [(1, None)])
    s.pages(2, 0, [(0, None), (2, Page(b"h"))])
    s.end()
    return s


@good("future-minor-block-flags", "a 1.2 stream's RAM block flags that this version "
      "does not define are ignored (section 6.1)")
def _():
    s = Stream(page_size=512, minor=2)
    s.ram_blocks([Block(0, "ram", 2, flags=1 | 1 << 7 | 1 << 31)])
    s.pages(0, 0, [(1, Page(b"f"))])
    s.end()
    return s


@good("index-1.1", "a 1.1 index lists the names, device, ram-blocks and pages records, "
      "one entry each in stream order; entries of kinds it does not know are ignored "
      "(section 7); end.records counts the skipped record and the index (section 8)")
def _():
    s = Stream(page_size=512, minor=1, optional=OPT_INDEX)
    s.info_record(Struct(("vmm", Str("x"))))
    s.device("cpu0", 0, "cpu", 1, Struct(("pc", V("u64", 7))))
    s.unknown(0x0042, b"skipped")
    s.ram_blocks([Block(3, "ram", 8)])
    s.pages(3, 0, [(0, Page(b"a")), (5, None)])
    s.epoch(0)
    s.pages(3, 1, [(2, None)])
    s.device("cpu0", 1, "cpu", 1, Struct(("pc", V("u64", 9))))
    entries = s.index_list()
    entries.insert(2, (0x0042, 0, 0, 1, 2, "an entry of a kind this version lacks"))
    entries.append((0x7777, 1 << 40, 5, 0, 0, ""))
    s.index(entries)
    s.end()
    return s


@good("index-1.0", "a 1.0 index lists device and pages records only (names and "
      "ram-blocks records, which 1.1 indexes, are not listed)")
def _():
    s = Stream(page_size=512, minor=0, optional=OPT_INDEX)
    s.device("d", 0, "t", 1, Struct(("x", V("u8", 1))))
    s.ram_blocks([Block(0, "ram", 2)])
    s.pages(0, 0, [(1, Page(b"z"))])
    s.index()
    s.end()
    return s


# ---------------------------------------------------------------------------
# Bad vectors. Each builder takes `bad`: True breaks the rule, False builds the
# control (the same stream keeping the rule).

def one_device(s, value=None):
    s.device("dev0", 0, "t", 1, value if value is not None else Struct(("x", V("u8", 1))))


# -- header, section 2

@bad("magic-crlf-to-lf", "malformed", "§2 rule 1: magic (CR-LF translated to LF)",
     message_any=["not a vmstream stream"])
def _(bad):
    s = Stream()
    s.end()
    b = s.bytes()
    return b[:4] + b[5:] if bad else b


@bad("magic-7-bit", "malformed", "§2 rule 1: magic (high bit stripped)",
     message_any=["not a vmstream stream"])
def _(bad):
    s = Stream(magic=b"\x09VMS\r\n\x1a\n" if bad else MAGIC)
    s.end()
    return s.bytes()


@bad("magic-lf-to-crlf", "malformed", "§2 rule 1: magic (LF translated to CR-LF)",
     message_any=["not a vmstream stream"])
def _(bad):
    s = Stream()
    s.end()
    b = s.bytes()
    return b[:7] + b"\r" + b[7:] if bad else b


@bad("version-major-2", "unsupported", "§2 rule 2: unknown version_major")
def _(bad):
    s = Stream(major=2 if bad else 1)
    s.end()
    return s.bytes()


@bad("version-major-0", "unsupported", "§2 rule 2: unknown version_major")
def _(bad):
    s = Stream(major=0 if bad else 1)
    s.end()
    return s.bytes()


@bad("header-crc", "malformed", "§2 rule 3: header CRC")
def _(bad):
    s = Stream()
    s.end()
    b = bytearray(s.bytes())
    if bad:
        b[ceil8(40 + len(WRITER) + 4) - 1] ^= 0x01
    return bytes(b)


@bad("header-padding", "malformed", "§2 rule 3: header padding is zero")
def _(bad):
    s = Stream(writer="w")  # header_len 48: padding bytes 41..44
    if bad:
        s.buf[:48] = header(writer="w", padding=b"\0\x01\0")
    s.end()
    return s.bytes()


@bad("header-len-unaligned", "malformed", "§2: header_len is a multiple of 8")
def _(bad):
    s = Stream(writer="w", header_len=52 if bad else None)
    s.end()
    return s.bytes()


@bad("header-len-not-writer", "malformed",
     "§2: header_len MUST equal ceil8(40 + writer_len + 4)")
def _(bad):
    s = Stream(writer="twelve chars", header_len=64 if bad else None)
    s.end()
    return s.bytes()


@bad("header-len-above-4096", "malformed", "§2: header_len is 48..=4096")
def _(bad):
    s = Stream(writer="w" * 255, header_len=4104 if bad else None)
    s.end()
    return s.bytes()


for _name, _ps in (("page-size-3000", 3000), ("page-size-256", 256),
                   ("page-size-2g", 1 << 31), ("page-size-0", 0)):
    def _make(ps):
        def build(bad):
            s = Stream(page_size=ps if bad else 4096)
            s.end()
            return s.bytes()
        return build
    bad(_name, "malformed", "§2: page_size is a power of two in 512..=2^30")(_make(_ps))


@bad("header-kind-0", "malformed", "§2: header kind 0 is invalid")
def _(bad):
    s = Stream(kind=0 if bad else KIND_SNAPSHOT)
    s.end()
    return s.bytes()


@bad("required-feature-2", "unsupported", "§2 rule 4: unknown required feature bit")
def _(bad):
    s = Stream(required=1 << 2 if bad else 0)
    s.end()
    return s.bytes()


@bad("required-feature-63", "unsupported", "§2 rule 4: unknown required feature bit")
def _(bad):
    s = Stream(required=REQ_ZSTD | (1 << 63 if bad else 0))
    s.end()
    return s.bytes()


@bad("header-truncated", "malformed", "§8: a stream that stops (in the header) is truncated")
def _(bad):
    s = Stream()
    s.end()
    return s.bytes()[:30] if bad else s.bytes()


@bad("header-only", "malformed", "§8: a stream that stops before end is truncated")
def _(bad):
    s = Stream()
    if bad:
        return s.bytes()
    s.end()
    return s.bytes()


# -- framing, section 3

@bad("record-kind-0", "malformed", "§3: record kind 0 is invalid")
def _(bad):
    s = Stream()
    s.record(0 if bad else 0x0033, b"zero", flags=0 if bad else OPTIONAL)
    s.end()
    return s.bytes()


@bad("record-reserved-flag", "unsupported", "§3: reserved flag bits set")
def _(bad):
    s = Stream()
    s.record(NAMES, varint(0) + varint(1) + string("a"), flags=0x0002 if bad else 0)
    s.end()
    return s.bytes()


@bad("optional-record-reserved-flag", "unsupported",
     "§3: reserved flag bits set (on an optional record)")
def _(bad):
    s = Stream()
    s.unknown(0x0042, b"x", flags=OPTIONAL | (0x8000 if bad else 0))
    s.end()
    return s.bytes()


@bad("record-crc", "malformed", "§3: record CRC32C")
def _(bad):
    s = Stream()
    one_device(s)
    b = bytearray(s.bytes())
    if bad:
        b[-1] ^= 0x80
    s.buf = b
    s.end()
    return s.bytes()


@bad("record-padding", "malformed", "§3: record padding is zero")
def _(bad):
    s = Stream()
    off = s.record(NAMES, varint(0) + varint(1) + string("abc"))  # body 6: 2 pad bytes
    if bad:
        s.buf[off + 8 + 6 + 1] = 0x20
        s.fix_crc(off)
    s.end()
    return s.bytes()


@bad("record-over-limit", "limit exceeded",
     "§3: body_len above the reader's limit (64 MiB) is refused before reading")
def _(bad):
    s = Stream()
    if bad:
        return s.bytes() + u16(DEVICE) + u16(0) + u32(0xFFFFFFF8) + b"\0" * 24
    s.end()
    return s.bytes()


@bad("record-over-configured-limit", "limit exceeded",
     "§3: body_len above the configured limit (1 MiB here) is refused before reading, "
     "even with the body cut short", args=["--max-record-mib", "1"])
def _(bad):
    s = Stream()
    if bad:
        return s.bytes() + u16(0x0042) + u16(OPTIONAL) + u32(2 * MIB) + b"\0" * 64
    s.unknown(0x0042, b"\0" * 1024)
    s.end()
    return s.bytes()


@bad("record-body-cut", "malformed", "§8: a record that stops short is truncated")
def _(bad):
    s = Stream()
    one_device(s)
    s.end()
    b = s.bytes()
    return b[:-32 - 5] if bad else b


@bad("record-trailing-bytes", "malformed",
     "§3: a body MUST be consumed exactly (a device state followed by a second value)")
def _(bad):
    s = Stream()
    state = s.encode(Struct(("x", V("u8", 1))))
    body = string("dev0") + u32(0) + string("t") + u32(1) + state
    s.record(DEVICE, body + (encode_value(V("u8", 2), None) if bad else b""))
    s.end()
    return s.bytes()


@bad("record-body-short", "malformed",
     "§3/§6.1: body too short for its fields (ram-blocks without its flags)")
def _(bad):
    s = Stream()
    body = varint(1) + u32(0) + string("ram") + u64(4096) + u32(4096) + u32(0)
    s.record(RAM_BLOCKS, body[:-4] if bad else body)
    s.end()
    return s.bytes()


@bad("unknown-mandatory-record", "unsupported",
     "§3: an unknown kind without OPTIONAL is refused, naming the kind",
     message_any=["0x7e57", "0x7E57", "32343"])
def _(bad):
    s = Stream()
    s.unknown(0x7E57, b"new", flags=0 if bad else OPTIONAL)
    s.end()
    return s.bytes()


@bad("unknown-optional-crc", "malformed",
     "§1/§3: every record is checksummed, skipped ones too")
def _(bad):
    s = Stream()
    off = s.unknown(0x0042, b"skip me")
    if bad:
        s.buf[off + 8] ^= 0x01
    s.end()
    return s.bytes()


@bad("unknown-optional-padding", "malformed", "§3: padding is zero, skipped records too")
def _(bad):
    s = Stream()
    off = s.unknown(0x0042, b"sk")  # body 2: 2 pad bytes
    if bad:
        s.buf[off + 8 + 2 + 1] = 0x01
        s.fix_crc(off)
    s.end()
    return s.bytes()


# -- values, section 5

def device_with_raw_state(s, state_bytes, names=("x",)):
    if names:
        s.names_record(len(s.names), list(names))
        for n in names:
            s.names[n] = len(s.names)
    body = string("dev0") + u32(0) + string("t") + u32(1) + state_bytes
    return s.record(DEVICE, body)


def raw_value_vector(name, rule, bad_bytes, good_bytes, kind="malformed", names=("x",),
                     args=(), pending=None):
    def build(bad):
        s = Stream()
        device_with_raw_state(s, bad_bytes if bad else good_bytes, names)
        s.end()
        return s.bytes()
    bad_ = bad(name, kind, rule, args=args, pending=pending)
    bad_(build)


raw_value_vector("value-tag-0", "§5.1: tag 0x00 is malformed", b"\x00", b"\x13")
raw_value_vector("value-tag-0x15", "§5.1: tags above 0x14 are malformed", b"\x15", b"\x14\x00")
raw_value_vector("bool-2", "§5.1: bool other than 0 or 1", b"\x01\x02", b"\x01\x01")
raw_value_vector("varint-not-shortest", "§1: varint in its shortest form (bytes length "
                 "0 written as 80 00)", b"\x0c\x80\x00", b"\x0c\x00")
raw_value_vector("varint-trailing-zero-group", "§1: varint in its shortest form (seq "
                 "count 1 written as 81 00)", b"\x0e\x81\x00\x13", b"\x0e\x01\x13")
raw_value_vector("varint-11-bytes", "§1: varint at most 10 bytes",
                 b"\x0e" + b"\xff" * 10 + b"\x01", b"\x0e\x00")
raw_value_vector("varint-10th-byte-2", "§1: the 10th varint byte is 0x00 or 0x01",
                 b"\x0e" + b"\xff" * 9 + b"\x02", b"\x0e\x00")
raw_value_vector("string-not-utf8", "§1: str is UTF-8", b"\x0d\x02\xc3\x28",
                 b"\x0d\x02\xc3\xa9")
raw_value_vector("string-surrogate", "§1: str is UTF-8 (an encoded surrogate)",
                 b"\x0d\x03\xed\xa0\x80", b"\x0d\x03\xe2\x9c\x93")
raw_value_vector("struct-duplicate-field", "§5.1: field names within a struct are "
                 "unique", b"\x0f\x02\x00\x13\x00\x13", b"\x0f\x02\x00\x13\x01\x13",
                 names=("x", "y"))
raw_value_vector("struct-unpublished-name", "§5.2: a value references only published "
                 "ids", b"\x0f\x01\x01\x13", b"\x0f\x01\x00\x13")
raw_value_vector("enum-unpublished-name", "§5.2: a value references only published ids",
                 b"\x12\x05\x13", b"\x12\x00\x13")
raw_value_vector("seq-count-beyond-body", "§5.3: declared counts beyond the bytes left",
                 b"\x0e\x90\x4e\x13\x13\x13", b"\x0e\x03\x13\x13\x13")
raw_value_vector("struct-count-beyond-body", "§5.3: declared counts beyond the bytes "
                 "left", b"\x0f\x40\x00\x13", b"\x0f\x01\x00\x13")
raw_value_vector("map-count-beyond-body", "§5.3: declared counts beyond the bytes left",
                 b"\x14\x7f\x13\x13", b"\x14\x01\x13\x13")
raw_value_vector("bytes-len-beyond-body", "§5.1/§3: a length beyond the record body",
                 b"\x0c\x20abc", b"\x0c\x03abc")
raw_value_vector("string-len-beyond-body", "§5.1/§3: a length beyond the record body",
                 b"\x0d\x90\x01abc", b"\x0d\x03abc")
raw_value_vector("value-cut", "§5.1: a value cut short by the end of the body (u64 "
                 "with 3 bytes)", b"\x05\x01\x02\x03", b"\x05" + u64(0x030201))
raw_value_vector("device-without-state", "§4.2: the device state value is missing",
                 b"", b"\x13")
raw_value_vector("nesting-129", "§5.3: nesting of seq/struct/some/enum/map beyond "
                 "max_depth (default 128; the control nests 128 deep)",
                 b"\x0e\x01" * 65 + b"\x11" * 64 + b"\x13",
                 b"\x0e\x01" * 64 + b"\x11" * 64 + b"\x13", kind="limit exceeded")
_long = "n" * 4096
raw_value_vector("alloc-by-name-uses", "§5.3: each use of an interned name is charged "
                 "to max_alloc (1 MiB here; 512 uses of a 4 KiB name)",
                 b"\x0e" + varint(512) + b"\x12\x00\x13" * 512,
                 b"\x0e" + varint(16) + b"\x12\x00\x13" * 16,
                 kind="limit exceeded", names=(_long,), args=["--max-alloc-mib", "1"])


# -- names, section 5.2

@bad("names-first-id-gap", "malformed", "§5.2: first_id equals the names published so far")
def _(bad):
    s = Stream()
    s.names_record(0, ["a"])
    s.names_record(2 if bad else 1, ["b"])
    s.end()
    return s.bytes()


@bad("names-repeated", "malformed", "§5.2: first_id detects a repeated names record")
def _(bad):
    s = Stream()
    s.names_record(0, ["a", "b"])
    if bad:
        s.names_record(0, ["a", "b"])
    else:
        s.names_record(2, ["c", "d"])  # a name is published once (section 5.2)
    s.end()
    return s.bytes()


@bad("names-not-utf8", "malformed", "§5.2/§1: names are str, UTF-8")
def _(bad):
    s = Stream()
    s.names_record(0, [b"\xff\xfe" if bad else b"ok"])
    s.end()
    return s.bytes()


@bad("names-count-beyond-body", "malformed", "§5.3/§3: a count beyond the record body")
def _(bad):
    s = Stream()
    s.record(NAMES, varint(0) + varint(100 if bad else 2) + string("a") + string("b"))
    s.end()
    return s.bytes()


# -- info and device, sections 4.1, 4.2

@bad("info-twice", "malformed", "§4.1: at most one info record")
def _(bad):
    s = Stream()
    s.info_record(Struct(("vmm", Str("a"))))
    if bad:
        s.info_record(Struct(("vmm", Str("b"))))
    one_device(s)
    s.end()
    return s.bytes()


@bad("info-after-device", "malformed", "§4.1: info comes before any device record")
def _(bad):
    s = Stream()
    if not bad:
        s.info_record(Struct(("vmm", Str("a"))))
    one_device(s)
    if bad:
        s.info_record(Struct(("vmm", Str("a"))))
    s.end()
    return s.bytes()


@bad("device-name-not-utf8", "malformed", "§4.2/§1: the device name is a str, UTF-8")
def _(bad):
    s = Stream()
    s.record(DEVICE, string(b"dev\xc0" if bad else b"dev0") + u32(0) + string("t") +
             u32(1) + b"\x13")
    s.end()
    return s.bytes()


@bad("device-fields-cut", "malformed", "§4.2: body too short for its fields")
def _(bad):
    s = Stream()
    body = string("dev0") + u32(0) + string("t") + u32(1) + b"\x13"
    s.record(DEVICE, body[:7] if bad else body)
    s.end()
    return s.bytes()


@bad("schema-trailing-bytes", "malformed",
     "§3/§4.3: a schema's description fills the body exactly")
def _(bad):
    s = Stream()
    desc = s.encode(Str("u8"))
    s.record(SCHEMA, string("t") + u32(1) + desc + (b"\x13" if bad else b""), OPTIONAL)
    s.device("dev0", 0, "t", 1, V("u8", 1))
    s.end()
    return s.bytes()


# -- RAM blocks, section 6.1

@bad("ram-block-duplicate-id", "malformed", "§6.1: block ids are unique in the stream")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "a", 1), Block(0 if bad else 1, "b", 1)])
    s.end()
    return s.bytes()


@bad("ram-block-duplicate-id-later", "malformed",
     "§6.1: block ids are unique in the stream (across ram-blocks records)")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(2, "a", 1)])
    s.ram_blocks([Block(2 if bad else 3, "b", 1)])
    s.end()
    return s.bytes()


@bad("ram-block-size-not-pages", "malformed",
     "§6.1: block size is a multiple of the header's page_size")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 0, size=4096 + 512 if bad else 8192)])
    s.end()
    return s.bytes()


@bad("ram-block-name-not-utf8", "malformed", "§6.1/§1: the block name is a str, UTF-8")
def _(bad):
    s = Stream()
    body = varint(1) + u32(0) + string(b"\xe2\x82" if bad else b"ok") + u64(4096) + \
        u32(4096) + u32(0)
    s.record(RAM_BLOCKS, body)
    s.end()
    return s.bytes()


@bad("ram-blocks-count-beyond-body", "malformed", "§5.3/§3: a count beyond the body")
def _(bad):
    s = Stream()
    body = varint(9 if bad else 1) + u32(0) + string("ram") + u64(4096) + u32(4096) + u32(0)
    s.record(RAM_BLOCKS, body)
    s.end()
    return s.bytes()


# -- page batches, section 6.2

BAD_PS = 512  # page batch rules do not depend on the page size: keep the files small


def pages_vector(name, kind, rule, mutate=None, entries=None, compression=COMP_NONE,
                 required=0, page_size=BAD_PS, blocks=None, args=(), pending=None,
                 lz4_mode="pages"):
    def build(bad):
        s = Stream(page_size=page_size, required=required)
        s.ram_blocks(blocks or [Block(0, "ram", 8)])
        s.pages(0, 0, entries or [(1, None), (2, Page(b"\xab"))], compression=compression,
                mutate=mutate if bad else None, lz4_mode=lz4_mode)
        s.end()
        return s.bytes()
    bad(name, kind, rule, args=args, pending=pending)(build)


def setf(**kv):
    def m(f):
        f.update(kv)
    return m


pages_vector("pages-undefined-block", "malformed", "§6.2: block is a defined block id",
             setf(block=5))


@bad("pages-before-ram-blocks", "malformed",
     "§6.1: a block is defined before any page batch that refers to it")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 8)])
    if not bad:
        s.ram_blocks([Block(1, "later", 8)])
    s.pages(1, 0, [(0, None)])
    if bad:
        s.ram_blocks([Block(1, "later", 8)])
    s.end()
    return s.bytes()


pages_vector("pages-index-repeated", "malformed", "§6.2: strictly rising page indexes",
             setf(entries=[3 << 8 | 1, 3 << 8 | 2]), entries=[(3, None), (4, Page(b"\1"))])
pages_vector("pages-index-falling", "malformed", "§6.2: strictly rising page indexes",
             setf(entries=[5 << 8 | 1, 4 << 8 | 2]), entries=[(4, None), (5, Page(b"\1"))])
pages_vector("pages-index-beyond-block", "malformed",
             "§6.2: page indexes below the block's page count",
             setf(entries=[1 << 8 | 1, 8 << 8 | 2]), entries=[(1, None), (7, Page(b"\1"))])
pages_vector("pages-index-2m-beyond-block", "malformed",
             "§6.1/§6.2: page indexes count in header page_size units (a 2 MiB-page "
             "block of 2 pages has no page 2)",
             setf(entries=[2 << 8 | 1]), entries=[(1, None)], page_size=BAD_PS,
             blocks=[Block(0, "ram", 2, page_size=2 * MIB)])
pages_vector("pages-entry-kind-0", "malformed", "§6.2: entry kinds other than 1, 2",
             setf(entries=[1 << 8 | 0, 2 << 8 | 2]))
pages_vector("pages-entry-kind-3", "malformed", "§6.2: entry kinds other than 1, 2",
             setf(entries=[1 << 8 | 3, 2 << 8 | 2]))
pages_vector("pages-count-0", "malformed", "§6.2: count is 1..=65536",
             setf(count=0, entries=[], stored_len=0, raw_len=0, stored=b""),
             entries=[(1, None)])
pages_vector("pages-count-65537", "malformed", "§6.2: count is 1..=65536",
             setf(count=65537), entries=[(1, None)])
pages_vector("pages-data-pad-64", "malformed", "§6.2: data_pad is 0..=63",
             setf(data_pad=64, pad=b"\0" * 64))
pages_vector("pages-data-pad-not-zero", "malformed", "§6.2: pad bytes are zero",
             setf(data_pad=8, pad=b"\0\0\0\x01\0\0\0\0"))
pages_vector("pages-reserved-compression", "unsupported",
             "§6.2/§9: an unknown compression is unsupported", setf(compression=3),
             entries=[(1, None)])
pages_vector("pages-stored-not-raw", "malformed",
             "§6.2: with compression 0, stored_len equals raw_len",
             setf(stored_len=BAD_PS + 8, stored=Page(b"\xab").data(BAD_PS) + b"\0" * 8))
pages_vector("pages-raw-len-wrong", "malformed",
             "§6.2: raw_len = data entries x page_size",
             setf(raw_len=2 * BAD_PS, stored_len=2 * BAD_PS, stored=b"\xab" * 2 * BAD_PS))
pages_vector("pages-stored-beyond-body", "malformed",
             "§6.2/§3: stored_len beyond the record body",
             setf(stored_len=BAD_PS * 3, raw_len=BAD_PS * 3,
                  count=3, entries=[1 << 8 | 2, 2 << 8 | 2, 3 << 8 | 2]))
pages_vector("pages-entries-cut", "malformed", "§6.2/§3: count beyond the record body",
             setf(count=40, entries=[1 << 8 | 1]), entries=[(1, None)])
pages_vector("pages-zstd-short", "malformed",
             "§6.2: decompressing MUST give exactly raw_len bytes (zstd gives less)",
             setf(stored=zstd_frame([("rle", 0xab, BAD_PS - 1)]),
                  stored_len=len(zstd_frame([("rle", 0xab, BAD_PS - 1)]))),
             compression=COMP_ZSTD, required=REQ_ZSTD)
pages_vector("pages-zstd-long", "malformed",
             "§6.2: decompressing MUST give exactly raw_len bytes (zstd gives more)",
             setf(stored=zstd_frame([("rle", 0xab, BAD_PS + 1)]),
                  stored_len=len(zstd_frame([("rle", 0xab, BAD_PS + 1)]))),
             compression=COMP_ZSTD, required=REQ_ZSTD)
_zf = zstd_frame([("rle", 0xab, BAD_PS)])
pages_vector("pages-zstd-trailing-bytes", "malformed",
             "§6.2: the data area is one zstd frame (here followed by 4 more bytes)",
             setf(stored=_zf + b"\0\0\0\0", stored_len=len(_zf) + 4),
             compression=COMP_ZSTD, required=REQ_ZSTD)
pages_vector("pages-zstd-bad-magic", "malformed", "§6.2: the data area is one zstd frame",
             setf(stored=b"\x29" + _zf[1:]), compression=COMP_ZSTD, required=REQ_ZSTD)
pages_vector("pages-zstd-reserved-block", "malformed",
             "§6.2 / RFC 8878: block type 3 is reserved",
             setf(stored=_zf[:9] + bytes([_zf[9] | 0x06]) + _zf[10:]),
             compression=COMP_ZSTD, required=REQ_ZSTD)
pages_vector("pages-lz4-short", "malformed",
             "§6.2: decompressing MUST give exactly raw_len bytes (lz4 gives less)",
             setf(stored=lz4_literals(b"\xab" * (BAD_PS - 96)),
                  stored_len=len(lz4_literals(b"\xab" * (BAD_PS - 96)))),
             compression=COMP_LZ4, required=REQ_LZ4)
pages_vector("pages-lz4-long", "malformed",
             "§6.2: decompressing MUST give exactly raw_len bytes (lz4 gives more)",
             setf(stored=lz4_literals(b"\xab" * (BAD_PS + 4)),
                  stored_len=len(lz4_literals(b"\xab" * (BAD_PS + 4)))),
             compression=COMP_LZ4, required=REQ_LZ4)
_lz0 = lz4_sequence(b"\xab" * 4, 1, BAD_PS - 16) + lz4_sequence(b"\xab" * 12)
_lz_bad_off = lz4_sequence(b"\xab" * 4, 9, BAD_PS - 16) + lz4_sequence(b"\xab" * 12)
pages_vector("pages-lz4-offset-0", "malformed", "§6.2 / LZ4 block format: match offset 0",
             setf(stored=_lz0[:5] + b"\0\0" + _lz0[7:], stored_len=len(_lz0)),
             compression=COMP_LZ4, required=REQ_LZ4)
pages_vector("pages-lz4-offset-before-start", "malformed",
             "§6.2 / LZ4 block format: a match reaching before the block's output",
             setf(stored=_lz_bad_off, stored_len=len(_lz_bad_off)),
             compression=COMP_LZ4, required=REQ_LZ4)
pages_vector("pages-raw-len-over-limit", "limit exceeded",
             "§6.2: raw_len above max(record size limit, page_size) (1 MiB and 2 MiB "
             "here) is refused before decompressing",
             entries=[(0, Page(b"\x5a")), (1, Page(b"\x5b"))],
             page_size=2 * MIB, compression=COMP_ZSTD, required=REQ_ZSTD,
             blocks=[Block(0, "ram", 2)], args=["--max-record-mib", "1"], mutate=setf())
# The limit vector above differs from its control only in the limit the reader is
# given: the control is read with its "control_args" (the default limits).
BAD[-1]["control_args"] = []


@bad("pages-one-page-body-over-bound", "limit exceeded",
     "§3/§6.2: a pages record body above max(record size limit, page_size + 95) (1 MiB "
     "and 2 MiB + 95 here) is refused before reading, even with the body cut short",
     args=["--max-record-mib", "1"])
def _(bad):
    s = Stream(page_size=2 * MIB, required=REQ_ZSTD)
    s.ram_blocks([Block(0, "ram", 2)])
    if bad:
        return s.bytes() + u16(PAGES) + u16(0) + u32(2 * MIB + 96) + b"\0" * 64
    s.pages(0, 0, [(0, Page(b"\x5a"))], compression=COMP_ZSTD)
    s.end()
    return s.bytes()




# -- epochs, section 6.3

@bad("epoch-body-8", "malformed", "§6.3: an epoch body is exactly 4 bytes")
def _(bad):
    s = Stream()
    s.record(EPOCH, u32(1) + (u32(0) if bad else b""))
    s.end()
    return s.bytes()


@bad("epoch-body-0", "malformed", "§6.3: an epoch body is exactly 4 bytes")
def _(bad):
    s = Stream()
    s.record(EPOCH, b"" if bad else u32(0))
    s.end()
    return s.bytes()


@bad("epoch-repeated", "malformed", "§6.3: barriers strictly increase")
def _(bad):
    s = Stream()
    s.epoch(3)
    s.epoch(3 if bad else 4)
    s.end()
    return s.bytes()


@bad("epoch-falling", "malformed", "§6.3: barriers strictly increase")
def _(bad):
    s = Stream()
    s.epoch(3)
    s.epoch(2 if bad else 7)
    s.end()
    return s.bytes()


@bad("pages-epoch-at-barrier", "malformed",
     "§6.3: after a barrier for E, batches have epoch above E")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 2)])
    s.epoch(4)
    s.pages(0, 4 if bad else 5, [(0, None)])
    s.end()
    return s.bytes()


@bad("pages-epoch-below-barrier", "malformed",
     "§6.3: after a barrier for E, batches have epoch above E")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 2)])
    s.epoch(4)
    s.pages(0, 1 if bad else 9, [(0, None)])
    s.end()
    return s.bytes()


# -- index and end, sections 7 and 8

@bad("end-count-high", "malformed", "§8: end.records counts the records before it")
def _(bad):
    s = Stream()
    one_device(s)
    s.end(records=s.records + 1 if bad else None)
    return s.bytes()


@bad("end-count-low", "malformed", "§8: end.records counts the records before it")
def _(bad):
    s = Stream()
    one_device(s)
    s.unknown(0x0042, b"counted too")
    s.end(records=s.records - 1 if bad else None)
    return s.bytes()


@bad("end-index-offset-at-end", "malformed", "§8: index_offset is below the end offset")
def _(bad):
    s = Stream(optional=OPT_INDEX)
    one_device(s)
    s.index()
    s.end(index_offset=len(s.buf) if bad else None)
    return s.bytes()


@bad("end-index-offset-beyond", "malformed", "§8: index_offset is below the end offset")
def _(bad):
    s = Stream(optional=OPT_INDEX)
    one_device(s)
    s.index()
    s.end(index_offset=1 << 40 if bad else None)
    return s.bytes()


@bad("end-body-24", "malformed", "§8: the end record is exactly 32 bytes framed")
def _(bad):
    s = Stream()
    s.record(END, u64(0) + u64(0) + (u64(0) if bad else b""))
    return s.bytes()


@bad("end-missing", "malformed", "§8: a stream that stops before end is truncated")
def _(bad):
    s = Stream()
    one_device(s)
    if not bad:
        s.end()
    return s.bytes()


@bad("end-cut", "malformed", "§8: a stream that stops inside end is truncated")
def _(bad):
    s = Stream()
    one_device(s)
    s.end()
    return s.bytes()[:-4] if bad else s.bytes()


@bad("bytes-after-end", "malformed", "§8: bytes after end (SHOULD be reported)")
def _(bad):
    s = Stream()
    s.end()
    return s.bytes() + (b"trailing" if bad else b"")


@bad("record-after-end", "malformed", "§8: end is the last record")
def _(bad):
    s = Stream()
    s.end()
    if bad:
        s.names_record(0, ["late"])
    return s.bytes()


@bad("pages-cut", "malformed", "§8: a stream that stops inside a page batch is truncated")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 4)])
    s.pages(0, 0, [(0, Page(b"\x33"))])
    b = s.bytes()
    if bad:
        return b[:-1000]
    s.end()
    return s.bytes()


# ---------------------------------------------------------------------------
# Rules format 1.1 states for 1.0 and 1.1 streams alike (section 10.1).

# -- header, section 2

@bad("header-len-longer-1.1", "malformed",
     "§2: in a 1.0 or 1.1 stream header_len equals ceil8(40 + writer_len + 4) (the "
     "control is the same header in a 1.2 stream, which may be longer)")
def _(bad):
    s = Stream(minor=1 if bad else 2, writer="w", header_len=64)
    s.end()
    return s.bytes()


def header_cut_writer(minor, header_len, writer):
    """A header whose header_len leaves less room than writer_len says: the writer
    string is cut where the CRC starts (the CRC itself is right)."""
    w = writer.encode("utf-8")
    h = (MAGIC + u16(1) + u16(minor) + u32(header_len) + u64(0) + u64(0) + u32(4096) +
         u16(ARCH_X86_64) + u8(KIND_SNAPSHOT) + u8(len(w)) + w)[:header_len - 4]
    return h + u32(crc32c(h))


@bad("header-len-short-future-minor", "malformed",
     "§2: header_len is at least ceil8(40 + writer_len + 4), also in a later minor "
     "version (a 1.2 header of 48 bytes for a 12-byte writer string)")
def _(bad):
    if bad:
        s = Stream(minor=2)
        s.buf = bytearray(header_cut_writer(2, 48, "twelve chars"))
    else:
        s = Stream(minor=2, writer="twelve chars", header_len=64)
    s.end()
    return s.bytes()


@bad("header-len-above-4096-future-minor", "malformed",
     "§2: header_len is at most 4096, also in a later minor version (the control is a "
     "1.2 header of exactly 4096 bytes)")
def _(bad):
    s = Stream(minor=2, writer="w", header_len=4104 if bad else 4096)
    s.end()
    return s.bytes()


@bad("header-writer-not-utf8", "malformed", "§2 rule 6: the writer string is UTF-8")
def _(bad):
    s = Stream(writer=b"vectors \xff" if bad else b"vectors !")
    s.end()
    return s.bytes()


# -- feature bits, section 2.1

def compression_vector(name, rule, entries, compression, bad_required, good_required):
    @bad(name, "malformed", rule)
    def _(bad):
        s = Stream(page_size=512, required=bad_required if bad else good_required)
        s.ram_blocks([Block(0, "ram", 4)])
        s.pages(0, 0, entries, compression=compression)
        s.end()
        return s.bytes()


compression_vector("pages-zstd-without-feature",
                   "§2.1/§6.2: compression 1 needs the required feature bit zstd",
                   [(0, Page(b"\x5a"))], COMP_ZSTD, 0, REQ_ZSTD)
compression_vector("pages-lz4-without-feature",
                   "§2.1/§6.2: compression 2 needs the required feature bit lz4 (the "
                   "stream has zstd only)", [(0, Page(b"\x5a"))], COMP_LZ4, REQ_ZSTD,
                   REQ_ZSTD | REQ_LZ4)
compression_vector("pages-zstd-without-feature-zero-only",
                   "§2.1/§6.2: compression 1 needs the bit zstd, also in a batch without "
                   "data pages", [(0, None), (1, None)], COMP_ZSTD, 0, REQ_ZSTD)


@bad("index-without-feature", "malformed",
     "§2.1: a stream with an index record has the optional bit index")
def _(bad):
    s = Stream(minor=1, optional=0 if bad else OPT_INDEX)
    one_device(s)
    s.index()
    s.end()
    return s.bytes()


@bad("qemu-record-without-framing", "malformed",
     "§2.1: records of kinds 0x0100-0x01ff only in a stream with the bit qemu-framing "
     "(the control has no such record)")
def _(bad):
    s = Stream()
    one_device(s)
    if bad:
        s.unknown(0x0105, b"")
    s.end()
    return s.bytes()


# -- schemas, section 4.3

def schema_vector(name, rule, bad_description, good_description):
    @bad(name, "malformed", rule)
    def _(bad):
        s = Stream()
        s.schema("t", 1, bad_description if bad else good_description)
        s.end()
        return s.bytes()


schema_vector("schema-unknown-type-name",
              "§4.3: a scalar description is a scalar type name or \"any\"",
              Str("nonsense"), Str("u64"))
schema_vector("schema-container-name-as-type",
              "§4.3: a scalar description is a scalar type name or \"any\" (\"option\" "
              "is a container)", Str("option"), Enum("option", Str("u8")))
schema_vector("schema-map-one-element",
              "§4.3: map holds a two-element seq [key, value]",
              Enum("map", Seq(Str("u8"))), Enum("map", Seq(Str("u8"), Str("any"))))
schema_vector("schema-enum-not-any", "§4.3: enum holds the string \"any\"",
              Enum("enum", Str("u8")), Enum("enum", Str("any")))
schema_vector("schema-struct-not-struct", "§4.3: struct holds a struct of descriptions",
              Enum("struct", Seq(Str("u8"))), Enum("struct", Struct(("a", Str("u8")))))
schema_vector("schema-unknown-container", "§4.3: the containers are struct, seq, "
              "option, map and enum", Enum("tuple", Seq(Str("u8"), Str("u8"))),
              Enum("seq", Str("u8")))
schema_vector("schema-not-a-description", "§4.3: a description is a string or an enum "
              "(here a u8)", V("u8", 1), Str("u8"))
schema_vector("schema-nested-bad", "§4.3: every member is a description (a seq of "
              "\"u128\" in a struct)",
              Enum("struct", Struct(("a", Str("bool")), ("b", Enum("seq", Str("u128"))))),
              Enum("struct", Struct(("a", Str("bool")), ("b", Enum("seq", Str("u64"))))))


# -- names, section 5.2

@bad("names-twice-in-record", "malformed",
     "§5.2: a name is published once (twice in one names record)")
def _(bad):
    s = Stream()
    s.names_record(0, ["a", "a" if bad else "b"])
    s.end()
    return s.bytes()


@bad("names-published-again", "malformed",
     "§5.2: a name is published once (again in a later names record)")
def _(bad):
    s = Stream()
    s.names_record(0, ["a", "b"])
    s.names_record(2, ["c", "b" if bad else "d"])
    s.end()
    return s.bytes()


# -- depth, section 5.3

def nest(levels, inner):
    """`levels` containers of every kind in turn (seq, struct, some, enum, map) around
    `inner`; interned name 0 names the struct field and the enum variant."""
    head = b""
    for i in range(levels):
        k = i % 5
        if k == 0:
            head += b"\x0e\x01"  # seq of 1
        elif k == 1:
            head += b"\x0f\x01\x00"  # struct of 1 field, name 0
        elif k == 2:
            head += b"\x11"  # some
        elif k == 3:
            head += b"\x12\x00"  # enum, variant name 0
        else:
            head += b"\x14\x01\x13"  # map of 1, key unit, then the value
    return head + inner


raw_value_vector("nesting-129-every-container", "§5.3: depth counts every container, "
                 "an empty one as 1: 128 containers of all five kinds around an empty "
                 "seq (the control: 127)", nest(128, b"\x0e\x00"), nest(127, b"\x0e\x00"),
                 kind="limit exceeded")


@bad("nesting-129-info", "limit exceeded",
     "§5.3: each value of a record is measured from its top (an info value of depth 129)")
def _(bad):
    s = Stream()
    s.names_record(0, ["x"])
    s.names["x"] = 0
    s.record(INFO, nest(129 if bad else 128, b"\x13"))
    s.end()
    return s.bytes()


# -- RAM blocks, section 6.1

for _name, _bps in (("ram-block-page-size-0", 0), ("ram-block-page-size-3000", 3000),
                    ("ram-block-page-size-256", 256),
                    ("ram-block-page-size-2g", 1 << 31)):
    def _make(bps):
        def build(bad):
            s = Stream()
            s.ram_blocks([Block(0, "ram", 2, page_size=bps if bad else 2 * MIB)])
            s.end()
            return s.bytes()
        return build
    bad(_name, "malformed",
        "§6.1: a block's page_size is a power of two in 512..=2^30")(_make(_bps))


@bad("ram-block-duplicate-name", "malformed", "§6.1: block names are unique in the stream")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 1), Block(1, "ram" if bad else "rom", 1)])
    s.end()
    return s.bytes()


@bad("ram-block-duplicate-name-later", "malformed",
     "§6.1: block names are unique in the stream (across ram-blocks records)")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "", 1)])
    s.ram_blocks([Block(1, "" if bad else "b", 1)])
    s.end()
    return s.bytes()


@bad("ram-block-reserved-flag", "malformed",
     "§6.1: reserved block flags are zero in a 1.0 stream")
def _(bad):
    s = Stream()
    s.ram_blocks([Block(0, "ram", 1, flags=4 if bad else 3)])
    s.end()
    return s.bytes()


@bad("ram-block-reserved-flag-1.1", "malformed",
     "§6.1: reserved block flags are zero in a 1.1 stream (the control is the same "
     "block in a 1.2 stream, whose readers ignore flags they do not know)")
def _(bad):
    s = Stream(minor=1 if bad else 2)
    s.ram_blocks([Block(0, "ram", 1, flags=1 << 31)])
    s.end()
    return s.bytes()


# -- page batches, section 6.2

pages_vector("pages-reserved-not-zero", "malformed", "§1/§6.2: the reserved bytes are zero",
             setf(reserved=0x0100))
pages_vector("pages-zstd-empty-frame-without-data", "malformed",
             "§6.2: a batch without data pages has an empty data area, not an empty zstd "
             "frame", setf(stored=zstd_frame([]), stored_len=len(zstd_frame([]))),
             entries=[(1, None), (2, None)], compression=COMP_ZSTD, required=REQ_ZSTD)
pages_vector("pages-lz4-empty-block-without-data", "malformed",
             "§6.2: a batch without data pages has an empty data area, not an empty LZ4 "
             "block", setf(stored=lz4_sequence(b""), stored_len=1),
             entries=[(1, None)], compression=COMP_LZ4, required=REQ_LZ4)


# -- index and end, sections 7 and 8

def indexed_stream(minor=1):
    s = Stream(page_size=512, minor=minor, optional=OPT_INDEX)
    s.device("dev0", 0, "t", 1, Struct(("x", V("u8", 1))))
    s.ram_blocks([Block(0, "ram", 8)])
    s.pages(0, 0, [(1, None), (3, None)])
    s.epoch_at = s.epoch(0)
    s.pages(0, 1, [(2, None), (6, None)])
    s.device("dev1", 0, "t", 1, Struct(("x", V("u8", 2))))
    return s


@bad("record-after-index", "malformed", "§7: only end follows the index")
def _(bad):
    s = indexed_stream()
    if bad:
        s.index()
        one_device(s)
    else:
        one_device(s)
        s.index()
    s.end()
    return s.bytes()


@bad("index-twice", "malformed", "§7: a stream has at most one index")
def _(bad):
    s = indexed_stream()
    if bad:
        s.index()
    s.index()
    s.end()
    return s.bytes()


@bad("end-index-offset-0-with-index", "malformed",
     "§8: index_offset is the index record's offset (here 0, with an index)")
def _(bad):
    s = indexed_stream()
    s.index()
    s.end(index_offset=0 if bad else None)
    return s.bytes()


@bad("end-index-offset-at-device", "malformed",
     "§8: index_offset is the index record's offset (here a device record's)")
def _(bad):
    s = indexed_stream()
    at = s.index_entries[0][1]
    s.index()
    s.end(index_offset=at if bad else None)
    return s.bytes()


@bad("end-index-offset-without-index", "malformed",
     "§8: index_offset is 0 in a stream without an index (here a device record's offset)")
def _(bad):
    s = indexed_stream()
    s.end(index_offset=s.index_entries[0][1] if bad else 0)
    return s.bytes()


@bad("end-count-without-index", "malformed",
     "§8: end.records counts the index record too")
def _(bad):
    s = indexed_stream()
    s.index()
    s.end(records=s.records - 1 if bad else None)
    return s.bytes()


def index_vector(name, rule, change, minor=1):
    @bad(name, "malformed", rule)
    def _(bad):
        s = indexed_stream(minor)
        entries = s.index_list()
        if bad:
            entries = change(s, entries)
        s.index(entries)
        s.end()
        return s.bytes()


def without(kind, nth=0):
    def change(s, entries):
        at = [i for i, e in enumerate(entries) if e[0] == kind][nth]
        return entries[:at] + entries[at + 1:]
    return change


def replace(kind, nth, **fields):
    names = ("kind", "offset", "block", "first", "last", "name")

    def change(s, entries):
        at = [i for i, e in enumerate(entries) if e[0] == kind][nth]
        e = dict(zip(names, entries[at]))
        e.update(fields)
        return entries[:at] + [tuple(e[n] for n in names)] + entries[at + 1:]
    return change


index_vector("index-missing-pages", "§7: the index lists every pages record",
             without(PAGES, 1))
index_vector("index-missing-names", "§7: a 1.1 index lists every names record",
             without(NAMES))
index_vector("index-missing-ram-blocks", "§7: a 1.1 index lists every ram-blocks record",
             without(RAM_BLOCKS))
index_vector("index-missing-device-1.0", "§7: a 1.0 index lists every device record",
             without(DEVICE, 1), minor=0)
index_vector("index-extra-entry", "§7: one entry per record (a device listed twice)",
             lambda s, e: e[:2] + [e[1]] + e[2:])
index_vector("index-out-of-order", "§7: entries in stream order",
             lambda s, e: [e[1], e[0]] + e[2:])
index_vector("index-pages-last-wrong", "§7: a pages entry gives its last page index",
             replace(PAGES, 0, last=2))
index_vector("index-pages-block-wrong", "§7: a pages entry gives its block",
             replace(PAGES, 1, block=1))
index_vector("index-device-name-wrong", "§7: a device entry gives its instance name",
             replace(DEVICE, 1, name="dev2"))
index_vector("index-device-block-not-none", "§7: a device entry has block 0xffffffff",
             replace(DEVICE, 0, block=0))
index_vector("index-names-count-wrong", "§7: a names entry gives its first_id and count",
             replace(NAMES, 0, last=2))
index_vector("index-ram-blocks-name-not-empty", "§7: a ram-blocks entry has an empty name",
             replace(RAM_BLOCKS, 0, name="ram"))
index_vector("index-entry-at-wrong-offset", "§7: an entry gives its record's offset (a "
             "pages entry pointing at the epoch record)",
             lambda s, e: replace(PAGES, 1, offset=s.epoch_at)(s, e))


# ---------------------------------------------------------------------------
# Output

README_HEAD = """\
# Independent vectors

Streams written from `docs/format.md` alone by `scripts/vectors.py`, an encoder that
shares no code with the reference implementation (Python standard library only; CRC32C,
zstd frames of raw/RLE blocks and LZ4 blocks written by hand). Regenerate with
`scripts/vectors.py testdata/independent`; `crates/vmstream-cli/tests/independent.rs`
checks that the committed files are exactly what the script makes, that the `vmstream`
command reads every good stream as `manifest.json` says (records, devices and values,
RAM blocks, page contents through `extract`), refuses every bad one with the error kind
shown, and reads the control of every bad one (the same stream keeping the rule) cleanly.

A vector marked *pending* breaks a rule the reference reader does not enforce yet; the
test reports it and does not fail.

## Good streams

| file | covers |
| --- | --- |
"""


def main(argv):
    if len(argv) not in (2, 4) or (len(argv) == 4 and argv[2] != "--controls"):
        sys.stderr.write("usage: vectors.py OUTDIR [--controls DIR]\n")
        return 2
    out = argv[1]
    controls = argv[3] if len(argv) == 4 else None
    os.makedirs(out, exist_ok=True)
    if controls:
        os.makedirs(controls, exist_ok=True)
    manifest = []
    readme = [README_HEAD]
    names = set()
    for g in GOOD:
        assert g["file"] not in names, g["file"]
        names.add(g["file"])
        s = g["build"]()
        write(os.path.join(out, g["file"]), s.bytes())
        entry = {"file": g["file"], "good": True, "covers": g["covers"]}
        if "args" in g:
            entry["args"] = g["args"]
        entry["expect"] = s.expect()
        manifest.append(entry)
        note = " (read with `%s`)" % " ".join(g["args"]) if "args" in g else ""
        readme.append("| `%s` | %s%s |\n" % (g["file"], g["covers"], note))
    readme.append("\n## Bad streams\n\n| file | kind | rule |\n| --- | --- | --- |\n")
    for b in BAD:
        assert b["file"] not in names, b["file"]
        names.add(b["file"])
        data = b["build"](True)
        control = b["build"](False)
        assert (data != control) != ("control_args" in b), b["file"]
        write(os.path.join(out, b["file"]), data)
        if controls:
            write(os.path.join(controls, b["file"]), control)
        entry = {"file": b["file"], "good": False, "kind": b["kind"], "rule": b["rule"]}
        for key in ("args", "control_args", "message_any", "pending"):
            if key in b:
                entry[key] = b[key]
        manifest.append(entry)
        note = " (pending: %s)" % b["pending"] if "pending" in b else ""
        readme.append("| `%s` | %s | %s%s |\n" % (b["file"], b["kind"], b["rule"], note))
    doc = {"spec": "docs/format.md, format 1.1", "vectors": manifest}
    text = '{"spec": %s, "vectors": [\n%s\n]}\n' % (
        json.dumps(doc["spec"]),
        ",\n".join(json.dumps(v, ensure_ascii=False) for v in doc["vectors"]))
    assert json.loads(text) == doc
    write(os.path.join(out, "manifest.json"), text.encode("utf-8"))
    write(os.path.join(out, "README.md"), "".join(readme).encode("utf-8"))
    return 0


def write(path, data):
    with open(path, "wb") as f:
        f.write(data)


if __name__ == "__main__":
    sys.exit(main(sys.argv))
