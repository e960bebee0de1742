"""Hostile tar files built header by header, on top of real bundles (issue 13's campaign).

`tarfile` tidies what it writes (it moves long names into PAX records, refuses some fields, never
writes a GNU long name after a PAX header), so the campaign writes the bytes itself: a ustar
header is 512 bytes with a checksum, a PAX header is a header plus records, and a bundle is a list
of such chunks. `Bundle` reads a real sealed bundle into (path, bytes, mode) members; `resign`
rewrites its manifest, `SHA256SUMS` and signature with a key the test trusts, so that a hostile
member can be *signed into* an otherwise valid bundle and only the reader's own rules can stop it.

Used by tests/test_campaign_*.py and benchmarks/exhaustion.py; no pytest here. Nothing in this
file is part of the product: it makes inputs, the product judges them.
"""

from __future__ import annotations

import hashlib
import json
import os
import tarfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterable, List, Optional, Tuple, Union

BLOCK = 512
RECORD = 20 * BLOCK

Bytes = Union[bytes, str]


def _b(value: Bytes) -> bytes:
    return value if isinstance(value, bytes) else value.encode("utf-8", "surrogateescape")


def pad(n: int) -> bytes:
    """Zero padding after ``n`` bytes of member data."""
    return b"\0" * ((-n) % BLOCK)


def checksum(block: bytearray) -> None:
    """Write the ustar checksum of ``block`` into bytes 148-155 (six octal digits, NUL, space)."""
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


def header(name: Bytes, size: int = 0, typeflag: bytes = b"0", *, mode: int = 0o644, linkname: Bytes = b"",
           prefix: Bytes = b"", size_field: Optional[bytes] = None, magic: bytes = b"ustar\x0000") -> bytes:
    """One 512-byte ustar header, written field by field: nothing is checked or rewritten, so a
    name may hold '..', a link target may sit on any type, the prefix may be absolute."""
    blk = bytearray(BLOCK)
    raw = _b(name)
    blk[0:len(raw[:100])] = raw[:100]
    blk[100:108] = b"%07o\0" % mode
    blk[108:116] = b"0000000\0"
    blk[116:124] = b"0000000\0"
    blk[124:136] = size_field if size_field is not None else (b"%011o\0" % size if size < 8 ** 11 else b"00000000000\0")
    blk[136:148] = b"14540404000\0"  # 1700000000
    blk[156:157] = typeflag
    link = _b(linkname)
    blk[157:157 + len(link[:100])] = link[:100]
    blk[257:265] = magic
    pre = _b(prefix)
    blk[345:345 + len(pre[:155])] = pre[:155]
    checksum(blk)
    return bytes(blk)


def pax_records(pairs: Iterable[Tuple[Bytes, Bytes]]) -> bytes:
    """``LEN key=value\\n`` records, each LEN counting its whole record."""
    out = bytearray()
    for k, v in pairs:
        body = b" " + _b(k) + b"=" + _b(v) + b"\n"
        n = len(body) + 1
        while len(str(n)) + len(body) != n:
            n = len(str(n)) + len(body)
        out += str(n).encode() + body
    return bytes(out)


def extended(data: bytes, typeflag: bytes = b"x", name: Bytes = b"././@PaxHeader") -> bytes:
    """A PAX (or global, or GNU long-name) header with its data and padding."""
    return header(name, len(data), typeflag, mode=0) + data + pad(len(data))


def pax(pairs: Iterable[Tuple[Bytes, Bytes]], typeflag: bytes = b"x") -> bytes:
    return extended(pax_records(pairs), typeflag)


def gnu_long(name: Bytes, typeflag: bytes = b"L") -> bytes:
    """A GNU long name (``L``) or long link name (``K``) header: the name, NUL-terminated, as data."""
    return extended(_b(name) + b"\0", typeflag, name=b"././@LongLink")


def member(name: Bytes, data: bytes = b"", typeflag: bytes = b"0", *, mode: int = 0o644, linkname: Bytes = b"",
           pax_path: Optional[Bytes] = None, ustar_name: Optional[Bytes] = None) -> bytes:
    """A member with its data and padding. A name that does not fit the ustar field (or any
    ``pax_path``) goes into a PAX ``path`` record, as bundler writes it; ``ustar_name`` sets the
    header's own name field independently (what a reader that ignores PAX would see)."""
    raw, link = _b(name), _b(linkname)
    records = []  # type: List[Tuple[Bytes, Bytes]]
    if pax_path is not None or len(raw) > 100 or any(c > 0x7F for c in raw):
        records.append(("path", pax_path if pax_path is not None else raw))
    if len(link) > 100 or any(c > 0x7F for c in link):
        records.append(("linkpath", link))  # as tarfile writes a long link target
    chunks = pax(records) if records else b""
    if any(k == "path" for k, _ in records):
        shown = ustar_name if ustar_name is not None else _b(raw.decode("utf-8", "replace").encode("ascii", "replace"))[:100]
    else:
        shown = ustar_name if ustar_name is not None else raw
    size = len(data) if typeflag in (b"0", b"\0", b"7") else 0
    return chunks + header(shown, size, typeflag, mode=mode, linkname=link) + data + pad(size)


def end_of_archive(length: int) -> bytes:
    """Two zero blocks, then zeros up to the next 10240-byte record for an archive of ``length``."""
    tail = b"\0" * (2 * BLOCK)
    return tail + b"\0" * ((-(length + len(tail))) % RECORD)


def write_tar(path: Path, chunks: Iterable[Union[bytes, int]]) -> Path:
    """The chunks, then the end of the archive. An int chunk is a hole of that many zero bytes,
    left sparse on disk (``seek``), for members that declare huge sizes and really have them."""
    length = 0
    with open(path, "wb") as f:
        for c in chunks:
            if isinstance(c, int):
                f.seek(c, os.SEEK_CUR)
                length += c
            else:
                f.write(c)
                length += len(c)
        f.write(end_of_archive(length))
    return Path(path)


# -- real bundles, recombined ---------------------------------------------------------------------

@dataclass
class Bundle:
    """The members of a sealed bundle, in order, as (bundle-relative path, data, mode)."""

    root: str
    members: List[Tuple[str, bytes, int]] = field(default_factory=list)

    @classmethod
    def read(cls, path: Path) -> "Bundle":
        with tarfile.open(path) as tf:
            infos = tf.getmembers()
            root = infos[0].name.split("/", 1)[0]
            members = [(ti.name.split("/", 1)[1], tf.extractfile(ti).read(), ti.mode) for ti in infos]
        return cls(root, members)

    def rels(self) -> List[str]:
        return [r for r, _, _ in self.members]

    def data(self, rel: str) -> bytes:
        return next(d for r, d, _ in self.members if r == rel)

    def index(self, rel: str) -> int:
        return self.rels().index(rel)

    def signature_rel(self) -> str:
        return next(r for r in self.rels() if r.startswith("signatures/"))

    def chunks(self) -> List[Tuple[str, bytes]]:
        """(rel, tar bytes) per member, ready to be reordered, replaced or interleaved."""
        return [(r, member(f"{self.root}/{r}", d, mode=m)) for r, d, m in self.members]

    def write(self, path: Path, edit: Optional[Callable[[List[Tuple[str, bytes]]], List[Tuple[str, bytes]]]] = None) -> Path:
        parts = self.chunks()
        if edit is not None:
            parts = edit(parts)
        return write_tar(path, [c for _, c in parts])


def insert(parts: List[Tuple[str, bytes]], chunk: bytes, before: Optional[str] = None,
           after: Optional[str] = None) -> List[Tuple[str, bytes]]:
    """``chunk`` before or after the member ``before``/``after`` (default: at the end)."""
    rels = [r for r, _ in parts]
    at = rels.index(before) if before else rels.index(after) + 1 if after else len(parts)
    return parts[:at] + [("(hostile)", chunk)] + parts[at:]


def resign(bundle: Bundle, key_path: Path, *, extra_files: Optional[Dict[str, bytes]] = None,
           edit_manifest: Optional[Callable[[dict], None]] = None,
           edit_sums: Optional[Callable[[bytes], bytes]] = None, subject: Optional[str] = None,
           replace: Optional[Dict[str, bytes]] = None, raw_manifest: Optional[bytes] = None,
           raw_statement: Optional[bytes] = None) -> Bundle:
    """The bundle with its metadata re-signed by ``key_path`` (a trusted, unencrypted key).

    ``extra_files`` (bundle-relative path -> bytes) are added to the manifest's ``files`` and to
    the signed statement, so a hostile member under one of those names is *signed*; ``replace``
    swaps a member's bytes (its new digest is signed); ``edit_manifest`` and ``edit_sums`` change
    the documents before they are signed; ``raw_manifest`` and ``raw_statement`` replace them by
    bytes that need not be JSON at all. The caller places the hostile members in the tar.
    """
    from bundler.signing import load_private_key, make_statement, sign_statement

    replace = dict(replace or {})
    members = [(r, replace.pop(r, d), m) for r, d, m in bundle.members]
    assert not replace, f"no such members: {sorted(replace)}"
    manifest = json.loads(next(d for r, d, _ in members if r == "manifest.json"))
    by_path = {f["path"]: f for f in manifest["files"]}
    for r, d, _ in members:
        if r in by_path:
            by_path[r].update(size=len(d), sha256=hashlib.sha256(d).hexdigest())
    for e in manifest["engines"]:
        e.update(size=by_path[e["path"]]["size"], sha256=by_path[e["path"]]["sha256"])
    manifest["model"].update(size=by_path[manifest["model"]["path"]]["size"], sha256=by_path[manifest["model"]["path"]]["sha256"])
    for rel, data in (extra_files or {}).items():
        manifest["files"].append({"path": rel, "size": len(data), "sha256": hashlib.sha256(data).hexdigest()})
    if edit_manifest is not None:
        edit_manifest(manifest)
    manifest_bytes = raw_manifest if raw_manifest is not None else (json.dumps(manifest, sort_keys=True, indent=2) + "\n").encode()
    digests = {"manifest.json": hashlib.sha256(manifest_bytes).hexdigest()}
    digests.update({f["path"]: f["sha256"] for f in manifest["files"]})
    sums = "".join(f"{d}  {p}\n" for p, d in digests.items()).encode("utf-8")
    if edit_sums is not None:
        sums = edit_sums(sums)
    digests["SHA256SUMS"] = hashlib.sha256(sums).hexdigest()
    statement = raw_statement if raw_statement is not None else make_statement(subject or bundle.root, digests)
    sig = sign_statement(statement, load_private_key(Path(key_path), None))
    out = []
    for r, d, m in members:
        if r.startswith("signatures/"):
            d = sig
        elif r == "manifest.json":
            d = manifest_bytes
        elif r == "SHA256SUMS":
            d = sums
        out.append((r, d, m))
    return Bundle(bundle.root, out)


def tree_snapshot(top: Path) -> Dict[str, Tuple[str, int, int, float, str]]:
    """Every path below ``top`` (not followed) with its type, mode, size, mtime and, for files,
    SHA-256: what "nothing was written outside the destination" is checked against."""
    out = {}
    for dirpath, dirnames, filenames in os.walk(top):
        for name in dirnames + filenames:
            p = Path(dirpath) / name
            st = os.lstat(p)
            kind = "link" if os.path.islink(p) else "dir" if p.is_dir() else "file"
            digest = hashlib.sha256(p.read_bytes()).hexdigest() if kind == "file" else (os.readlink(p) if kind == "link" else "")
            out[str(p.relative_to(top))] = (kind, st.st_mode, st.st_size, st.st_mtime, digest)
    return out
