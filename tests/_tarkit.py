"""Byte-level tar surgery and re-signing, shared by the hostile-input campaign (issue 13).

Two levels, both working on bytes in memory (nothing is written until a test asks):

- `RawTar`: a bundle as the reader sees it, one `Record` per 512-byte header block with the data
  that follows it (a PAX extended header is a record of its own), plus the trailer (end marker
  and record padding). Any header field can be set to any bytes, with the checksum fixed or not;
  records can be reordered, duplicated, dropped and inserted; serialising gives the exact bytes.
- `Bundle`: a bundle as its writer sees it: a root, an ordered mapping of bundle-relative paths
  to bytes, and a signing step (`seal_bytes`) that recomputes SHA256SUMS and signs the statement
  with a real key, so that edits to the manifest or the statement reach the checks that come
  after the signature.

No part of this module interprets a header the way the verifier does: it only reads the size
field of the well-formed bundles it starts from (`RawTar.parse`), and writes what it is told.
"""

from __future__ import annotations

import base64
import hashlib
import json
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

BLOCK = 512
RECORD = 20 * BLOCK

# ustar header fields: (offset, width)
FIELDS: Dict[str, Tuple[int, int]] = {
    "name": (0, 100), "mode": (100, 8), "uid": (108, 8), "gid": (116, 8), "size": (124, 12),
    "mtime": (136, 12), "chksum": (148, 8), "typeflag": (156, 1), "linkname": (157, 100),
    "magic": (257, 6), "version": (263, 2), "uname": (265, 32), "gname": (297, 32),
    "devmajor": (329, 8), "devminor": (337, 8), "prefix": (345, 155),
}
# Fields the signature does not cover and the reader does not read (bundle-format.md 2.2 item 3):
# any bytes there, with the checksum fixed, leave a bundle acceptable.
UNREAD_FIELDS = ("uid", "gid", "mtime", "uname", "gname", "devmajor", "devminor")


def checksum(header: bytes) -> int:
    return sum(header[:148]) + 8 * 0x20 + sum(header[156:BLOCK])


def fix_checksum(header: bytes) -> bytes:
    h = bytearray(header)
    h[148:156] = b"%06o\0 " % checksum(bytes(h))
    return bytes(h)


def set_field(header: bytes, name: str, value: bytes, *, fix: bool = True) -> bytes:
    """``header`` with field ``name`` set to ``value``, NUL-padded or cut to the field's width."""
    off, width = FIELDS[name]
    h = bytearray(header)
    h[off:off + width] = value[:width].ljust(width, b"\0")
    out = bytes(h)
    return fix_checksum(out) if fix and name != "chksum" else out


def get_field(header: bytes, name: str) -> bytes:
    off, width = FIELDS[name]
    return header[off:off + width]


@dataclass
class Record:
    """One header block and the data it announces (without padding)."""

    header: bytes
    data: bytes = b""
    pad: Optional[bytes] = None  # None: zero padding to the next block boundary

    @property
    def typeflag(self) -> bytes:
        return self.header[156:157]

    @property
    def name(self) -> str:
        return self.header[:100].split(b"\0", 1)[0].decode("utf-8", "replace")

    def to_bytes(self) -> bytes:
        pad = self.pad if self.pad is not None else b"\0" * ((-len(self.data)) % BLOCK)
        return self.header + self.data + pad


@dataclass
class RawTar:
    records: List[Record]
    trailer: bytes = b"\0" * (2 * BLOCK)

    @classmethod
    def parse(cls, raw: bytes) -> "RawTar":
        """Split a WELL-FORMED tar (the bundles the campaign starts from) into records."""
        records = []
        pos = 0
        while pos + BLOCK <= len(raw):
            header = raw[pos:pos + BLOCK]
            if header.count(0) == BLOCK:
                return cls(records, raw[pos:])
            size = int(header[124:136].split(b"\0", 1)[0].strip() or b"0", 8)
            data = raw[pos + BLOCK:pos + BLOCK + size]
            records.append(Record(header, data))
            pos += BLOCK + size + (-size) % BLOCK
        raise ValueError("not a well-formed tar: no end marker")

    def to_bytes(self) -> bytes:
        return b"".join(r.to_bytes() for r in self.records) + self.trailer

    def member_indices(self) -> List[int]:
        """Indices of the records that describe members (not PAX extended headers)."""
        return [i for i, r in enumerate(self.records) if r.typeflag != b"x"]

    def header_offsets(self) -> List[int]:
        out, pos = [], 0
        for r in self.records:
            out.append(pos)
            pos += len(r.to_bytes())
        return out

    def end_offset(self) -> int:
        """Byte offset of the end-of-archive marker."""
        return sum(len(r.to_bytes()) for r in self.records)


def regular_records(name: str, data: bytes, mode: int = 0o644, mtime: int = 1700000000) -> List[Record]:
    """The record(s) of a regular member as the bundle writer makes them (a PAX header first
    when the name needs one)."""
    from bundler.archive import member_header

    blocks = member_header(name, len(data), mode, mtime)
    out = [Record(blocks[i:i + BLOCK]) for i in range(0, len(blocks), BLOCK)]
    # tobuf() puts the PAX data right after the x header: regroup header + data
    recs: List[Record] = []
    i = 0
    while i < len(out):
        h = out[i].header
        if h[156:157] == b"x":
            size = int(h[124:136].split(b"\0", 1)[0] or b"0", 8)
            nblocks = -(-size // BLOCK)
            pax = b"".join(o.header for o in out[i + 1:i + 1 + nblocks])[:size]
            recs.append(Record(h, pax))
            i += 1 + nblocks
        else:
            recs.append(Record(h))
            i += 1
    recs[-1].data = data
    return recs


def special_record(name: str, typeflag: bytes, linkname: str = "", mode: int = 0o644) -> Record:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mode, ti.mtime = typeflag, linkname, mode, 1700000000
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return Record(ti.tobuf(tarfile.USTAR_FORMAT, "utf-8", "surrogateescape"))


def pax_data(records: List[Tuple[bytes, bytes]]) -> bytes:
    """PAX records ``LEN key=value\\n`` with correct lengths."""
    out = b""
    for key, value in records:
        body = b" " + key + b"=" + value + b"\n"
        n = len(body) + 1
        while len(str(n).encode()) + len(body) != n:
            n = len(str(n).encode()) + len(body)
        out += str(n).encode() + body
    return out


def pax_record(data: bytes) -> Record:
    """A PAX extended header (typeflag ``x``) carrying ``data`` as its records."""
    h = bytearray(BLOCK)
    h[0:len(b"././@PaxHeader")] = b"././@PaxHeader"
    h[100:108] = b"0000644\0"
    h[108:116] = b"0000000\0"
    h[116:124] = b"0000000\0"
    h[124:136] = b"%011o\0" % len(data)
    h[136:148] = b"00000000000\0"
    h[156:157] = b"x"
    h[257:265] = b"ustar\x0000"
    return Record(fix_checksum(bytes(h)), data)


# -- the writer's view: files, re-signing -----------------------------------------------------------

@dataclass
class Bundle:
    """A bundle as ordered bundle-relative paths -> bytes (signatures included)."""

    root: str
    files: Dict[str, bytes] = field(default_factory=dict)
    modes: Dict[str, int] = field(default_factory=dict)

    @classmethod
    def read(cls, raw: bytes) -> "Bundle":
        tar = RawTar.parse(raw)
        b: Optional[Bundle] = None
        pax_path: Optional[str] = None
        for r in tar.records:
            if r.typeflag == b"x":
                for line in r.data.decode("utf-8").splitlines():
                    key, _, value = line.split(" ", 1)[1].partition("=")
                    if key == "path":
                        pax_path = value
                continue
            name = pax_path or r.name
            pax_path = None
            root, rel = name.split("/", 1)
            if b is None:
                b = cls(root)
            b.files[rel] = r.data
            b.modes[rel] = int(r.header[100:108].split(b"\0", 1)[0] or b"0", 8)
        assert b is not None
        return b

    @property
    def signature_paths(self) -> List[str]:
        return [p for p in self.files if p.startswith("signatures/")]

    def payload(self) -> Dict[str, bytes]:
        return {p: d for p, d in self.files.items() if not p.startswith("signatures/")}

    def digests(self) -> Dict[str, str]:
        return {p: hashlib.sha256(d).hexdigest() for p, d in self.payload().items()}

    def to_tar(self, order: Optional[List[str]] = None) -> bytes:
        recs: List[Record] = []
        for rel in order or list(self.files):
            recs += regular_records(f"{self.root}/{rel}", self.files[rel], self.modes.get(rel, 0o644))
        raw = RawTar(recs).to_bytes()
        return raw + b"\0" * ((-len(raw)) % RECORD)


def sums_for(digests: Dict[str, str]) -> bytes:
    """SHA256SUMS as the writer makes it: manifest.json first, then the rest in list order."""
    order = ["manifest.json"] + [p for p in digests if p not in ("manifest.json", "SHA256SUMS")]
    return "".join(f"{digests[p]}  {p}\n" for p in order).encode("utf-8")


def statement_for(subject: str, digests: Dict[str, str]) -> bytes:
    from bundler.signing import make_statement

    return make_statement(subject, digests)


def signature_file(statement: bytes, key: Any) -> bytes:
    from bundler.signing import sign_statement

    return sign_statement(statement, key)


def reseal(bundle: Bundle, key: Any, *, recompute_sums: bool = True, statement: Optional[bytes] = None,
           subject: Optional[str] = None) -> Bundle:
    """``bundle`` with SHA256SUMS recomputed (unless told not to), a statement over the current
    files (or the given statement bytes) and ONE signature file by ``key`` in place of the old
    ones, at the head of the file order."""
    files = {p: d for p, d in bundle.files.items() if not p.startswith("signatures/")}
    if recompute_sums:
        digests = {p: hashlib.sha256(d).hexdigest() for p, d in files.items() if p != "SHA256SUMS"}
        files["SHA256SUMS"] = sums_for(digests)
    digests = {p: hashlib.sha256(d).hexdigest() for p, d in files.items()}
    if statement is None:
        statement = statement_for(subject or bundle.root, digests)
    sig_rel = next(iter(bundle.signature_paths), "signatures/campaign.sig")
    out = Bundle(bundle.root, {sig_rel: signature_file(statement, key)}, dict(bundle.modes))
    out.files.update(files)
    return out


def envelope(sig_file: bytes) -> Tuple[dict, bytes, bytes]:
    """(document, payload, signature) of a signature file, read plainly (no verifier code)."""
    doc = json.loads(sig_file)
    env = doc["dsseEnvelope"]
    return doc, base64.b64decode(env["payload"]), base64.b64decode(env["signatures"][0]["sig"])


def tree(top: Path) -> Dict[str, bytes]:
    """Every regular file below ``top`` by relative path; fails on anything else (a symlink,
    a FIFO): an extraction must leave only plain files and directories."""
    out: Dict[str, bytes] = {}
    for p in sorted(top.rglob("*")):
        if p.is_symlink():
            raise AssertionError(f"{p}: a symlink in an extracted tree")
        if p.is_dir():
            continue
        if not p.is_file():
            raise AssertionError(f"{p}: not a regular file")
        out[p.relative_to(top).as_posix()] = p.read_bytes()
    return out
