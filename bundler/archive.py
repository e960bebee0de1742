"""A deterministic tar writer and a strict, streaming tar reader.

Why not `tarfile` alone: its extraction filters rewrite hostile names instead of rejecting them,
extract duplicated members (last one wins) and quietly drop setuid bits (see FACTS). A bundle
reader must refuse all of that and must hash while it reads, in one pass, in bounded memory. So
the reader here parses POSIX ustar/PAX headers itself and accepts only regular files and
directories with plain names. The writer uses `tarfile.TarInfo` to format headers (well-trodden
code) and copies data itself so that hashing and copying are one pass.

Neither side trusts anything: the reader's caller decides what a member means.
"""

from __future__ import annotations

import hashlib
import re
import tarfile
from dataclasses import dataclass
from typing import BinaryIO, Callable, Optional, Set

from .errors import ArchiveError, LimitsError, MembersError, UnsafeMemberError

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default record size; archives are padded to a multiple of it
CHUNK = 1 << 20
ALLOWED_PAX_KEYS = frozenset({"path", "size", "mtime"})


@dataclass(frozen=True)
class Limits:
    """Upper bounds the reader enforces before reading data, so a hostile archive cannot make us
    allocate or loop without bound."""

    max_members: int = 10_000
    max_member_size: int = 1 << 40  # 1 TiB: engines are big, but not that big
    max_total_size: int = 4 << 40
    max_name_bytes: int = 1024
    max_pax_header: int = 64 << 10
    max_trailing_zeros: int = RECORD


# -- writer -----------------------------------------------------------------------------------

class TarWriter:
    """Writes a deterministic POSIX (PAX) tar: fixed uid/gid/owner, caller-chosen mtime and modes.

    ``out`` receives every byte; pass a hashing wrapper to get the archive digest in the same pass.
    """

    def __init__(self, out: BinaryIO, mtime: int) -> None:
        self._out = out
        self._mtime = int(mtime)
        self._written = 0

    def _header(self, name: str, size: int, mode: int) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.size = size
        ti.mtime = self._mtime
        ti.mode = mode
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")

    def _write(self, data) -> None:  # noqa: ANN001 - bytes-like
        self._out.write(data)
        self._written += len(data)

    def _pad(self, size: int) -> None:
        rem = size % BLOCK
        if rem:
            self._write(b"\0" * (BLOCK - rem))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        self._write(self._header(name, len(data), mode))
        self._write(data)
        self._pad(len(data))

    def add_stream(
        self,
        name: str,
        src: BinaryIO,
        size: int,
        mode: int = 0o644,
        on_chunk: Optional[Callable[[memoryview], None]] = None,
    ) -> None:
        """Copy exactly ``size`` bytes from ``src``; ``on_chunk`` sees each chunk (for hashing)."""
        self._write(self._header(name, size, mode))
        buf = bytearray(min(CHUNK, max(size, 1)))
        view = memoryview(buf)
        left = size
        while left:
            n = src.readinto(view[: min(left, len(buf))])  # type: ignore[attr-defined]
            if not n:
                raise OSError(f"{name}: source ended {left} bytes early (changed while sealing?)")
            chunk = view[:n]
            if on_chunk is not None:
                on_chunk(chunk)
            self._write(chunk)
            left -= n
        if src.read(1):
            raise OSError(f"{name}: source grew while sealing")
        self._pad(size)

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))
        rem = self._written % RECORD
        if rem:
            self._write(b"\0" * (RECORD - rem))


# -- reader -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    name: str  # as stored, without a trailing '/'
    size: int
    mode: int
    is_dir: bool
    offset: int  # of its header, for messages


class _CountingReader:
    """Reads from the file and feeds every byte to the whole-archive hash (one pass)."""

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.pos = 0
        self.sha256 = hashlib.sha256()

    def readinto(self, view: memoryview) -> int:
        got = 0
        while got < len(view):
            n = self._f.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        if got:
            self.sha256.update(view[:got])
            self.pos += got
        return got

    def read_exact(self, n: int, what: str) -> bytes:
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        if got != n:
            raise ArchiveError(f"truncated archive: {what} ends at byte {self.pos}")
        return bytes(buf)


_OCTAL_RE = re.compile(rb"^ *([0-7]*)[ \0]*$")
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)$")


def _octal(field: bytes, what: str, offset: int) -> int:
    """A ustar numeric field: octal digits, optionally space-led and NUL/space-terminated. Nothing
    else (no '0o' prefix, no sign, no base-256): two parsers must never read different numbers."""
    if field and field[0] & 0x80:
        raise ArchiveError(f"header at byte {offset}: base-256 {what} is not allowed (use PAX)")
    m = _OCTAL_RE.match(field)
    if not m:
        raise ArchiveError(f"header at byte {offset}: {what} field is not octal")
    return int(m.group(1), 8) if m.group(1) else 0


def check_member_name(name: str, limits: Limits, offset: int) -> None:
    """Reject, never rewrite: absolute paths, '..', '.', empty parts, backslashes, NULs."""
    if len(name.encode("utf-8")) > limits.max_name_bytes:
        raise LimitsError(f"member name longer than {limits.max_name_bytes} bytes at byte {offset}", member=name[:80])
    if "\0" in name:
        raise UnsafeMemberError(f"{name!r}: NUL in member name", member=name)
    if "\\" in name:
        raise UnsafeMemberError(f"{name}: backslash in member name", member=name)
    if name.startswith("/"):
        raise UnsafeMemberError(f"{name}: absolute member path", member=name)
    parts = name.split("/")
    for p in parts:
        if p == "..":
            raise UnsafeMemberError(f"{name}: '..' in member path", member=name)
        if p in ("", "."):
            raise UnsafeMemberError(f"{name}: empty or '.' component in member path", member=name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UnsafeMemberError(f"{name!r}: control character in member name", member=name)


class StrictTarReader:
    """Iterates members of a POSIX tar, refusing anything a bundle never contains.

    Use: ``while (m := r.next()) is not None: r.read_data(consume)``. Data not consumed by the
    caller is read (and hashed into the archive digest) when `next` is called.
    """

    def __init__(self, f: BinaryIO, limits: Limits = Limits()) -> None:
        self._r = _CountingReader(f)
        self.limits = limits
        self._left = 0  # data bytes of the current member not yet read
        self._pad = 0
        self._current: Optional[Member] = None
        self._names: Set[str] = set()
        self._folded: dict = {}
        self._count = 0
        self._total = 0
        self.finished = False
        self._buf = bytearray(CHUNK)

    @property
    def archive_sha256(self) -> str:
        return self._r.sha256.hexdigest()

    @property
    def position(self) -> int:
        return self._r.pos

    def read_data(self, consume: Optional[Callable[[memoryview], None]]) -> None:
        """Stream the current member's data to ``consume`` in chunks, then check its padding."""
        view = memoryview(self._buf)
        name = self._current.name if self._current else "?"
        while self._left:
            n = self._r.readinto(view[: min(self._left, len(self._buf))])
            if n == 0:
                raise ArchiveError(f"{name}: truncated archive ({self._left} bytes of data missing)", member=name)
            if consume is not None:
                consume(view[:n])
            self._left -= n
        if self._pad:
            pad = self._r.read_exact(self._pad, f"padding of {name}")
            self._pad = 0
            if pad.count(0) != len(pad):
                raise ArchiveError(f"{name}: non-zero bytes in the padding after its data", member=name)

    def next(self) -> Optional[Member]:
        if self.finished:
            return None
        if self._left or self._pad:
            self.read_data(None)
        pax: Optional[dict] = None
        while True:
            offset = self._r.pos
            block = self._r.read_exact(BLOCK, "a member header")
            if block.count(0) == BLOCK:
                if pax is not None:
                    raise ArchiveError(f"a PAX header with no member after it, at byte {offset}")
                self._finish(offset)
                return None
            hdr = self._parse_header(block, offset)
            typeflag, size = hdr["type"], hdr["size"]
            if typeflag == b"x":
                if pax is not None:
                    raise ArchiveError(f"two PAX headers in a row at byte {offset}")
                if size > self.limits.max_pax_header:
                    raise LimitsError(f"PAX header of {size} bytes at byte {offset} is over the limit")
                raw = self._r.read_exact(size, "a PAX header")
                padn = (-size) % BLOCK
                if padn:
                    if self._r.read_exact(padn, "PAX header padding").count(0) != padn:
                        raise ArchiveError(f"non-zero bytes in the padding of the PAX header at byte {offset}")
                pax = self._parse_pax(raw, offset)
                continue
            break
        name = hdr["name"]
        if pax is not None:
            if "path" in pax:
                name = pax["path"]
            if "size" in pax:
                if not _DECIMAL_RE.match(pax["size"]):
                    raise ArchiveError(f"PAX size at byte {offset} is not a plain decimal number")
                size = int(pax["size"])
            if "mtime" in pax and not re.match(r"^-?[0-9]+(\.[0-9]+)?$", pax["mtime"]):
                raise ArchiveError(f"PAX mtime at byte {offset} is not a number")
        if typeflag in (b"0", b"\0", b"7"):
            if typeflag == b"7":
                raise UnsafeMemberError(f"{name}: contiguous-file member type is not allowed", member=name)
            is_dir = False
        elif typeflag == b"5":
            is_dir = True
            name = name.rstrip("/")
            if size:
                raise ArchiveError(f"{name}: directory member with data", member=name)
        else:
            kinds = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device",
                     b"6": "FIFO", b"g": "global PAX header", b"L": "GNU long name", b"K": "GNU long link name",
                     b"S": "GNU sparse file"}
            kind = kinds.get(typeflag, f"member of type {typeflag!r}")
            raise UnsafeMemberError(f"{name}: {kind} is not allowed in a bundle", member=name)
        check_member_name(name, self.limits, offset)
        mode = hdr["mode"]
        if mode & 0o7000:
            raise UnsafeMemberError(f"{name}: setuid, setgid or sticky bit set (mode {mode:04o})", member=name)
        self._count += 1
        if self._count > self.limits.max_members:
            raise LimitsError(f"more than {self.limits.max_members} members", member=name)
        if size > self.limits.max_member_size:
            raise LimitsError(f"{name}: {size} bytes is over the per-member limit of {self.limits.max_member_size}", member=name)
        self._total += size
        if self._total > self.limits.max_total_size:
            raise LimitsError(f"archive content over the limit of {self.limits.max_total_size} bytes", member=name)
        if name in self._names:
            raise MembersError(f"{name}: duplicated member", member=name)
        folded = name.casefold()
        if folded in self._folded:
            raise UnsafeMemberError(f"{name}: collides with {self._folded[folded]} when case is ignored", member=name)
        self._names.add(name)
        self._folded[folded] = name
        self._left = size
        self._pad = (-size) % BLOCK
        self._current = Member(name, size, mode, is_dir, offset)
        return self._current

    def _parse_header(self, block: bytes, offset: int) -> dict:
        stored = _octal(block[148:156], "checksum", offset)
        computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
        if stored != computed:
            raise ArchiveError(f"bad header checksum at byte {offset} (not a tar, or damaged)")
        if block[257:265] != b"ustar\x0000":
            raise ArchiveError(f"header at byte {offset} is not POSIX ustar/PAX")
        try:
            name = block[0:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeMemberError(f"member name at byte {offset} is not UTF-8") from None
        if prefix:
            name = f"{prefix}/{name}"
        if block[157:257].strip(b"\0"):
            linkname = block[157:257].split(b"\0", 1)[0].decode("utf-8", "replace")
            if block[156:157] not in (b"1", b"2"):
                raise UnsafeMemberError(f"{name}: link target {linkname!r} on a non-link member", member=name)
        return {
            "name": name,
            "mode": _octal(block[100:108], "mode", offset),
            "size": _octal(block[124:136], "size", offset),
            "type": block[156:157],
        }

    def _parse_pax(self, raw: bytes, offset: int) -> dict:
        out = {}
        pos = 0
        while pos < len(raw):
            sp = raw.find(b" ", pos)
            if sp < 0:
                raise ArchiveError(f"malformed PAX record at byte {offset}")
            if not re.match(rb"^[1-9][0-9]*$", raw[pos:sp]):
                raise ArchiveError(f"malformed PAX record length at byte {offset}")
            length = int(raw[pos:sp])
            if length <= 0 or pos + length > len(raw):
                raise ArchiveError(f"malformed PAX record length at byte {offset}")
            record = raw[sp + 1 : pos + length]
            if not record.endswith(b"\n") or b"=" not in record:
                raise ArchiveError(f"malformed PAX record at byte {offset}")
            key_b, value_b = record[:-1].split(b"=", 1)
            try:
                key, value = key_b.decode("utf-8"), value_b.decode("utf-8")
            except UnicodeDecodeError:
                raise UnsafeMemberError(f"PAX record at byte {offset} is not UTF-8") from None
            if key not in ALLOWED_PAX_KEYS:
                raise UnsafeMemberError(f"PAX key {key!r} at byte {offset} is not allowed (only path, size, mtime)")
            if key in out:
                raise ArchiveError(f"PAX key {key!r} twice at byte {offset}")
            out[key] = value
            pos += length
        return out

    def _finish(self, offset: int) -> None:
        second = self._r.read_exact(BLOCK, "the end-of-archive marker")
        if second.count(0) != BLOCK:
            raise ArchiveError(f"a lone zero block at byte {offset}, then more data")
        tail = bytearray(self.limits.max_trailing_zeros + 1)
        n = self._r.readinto(memoryview(tail))
        if tail[:n].count(0) != n:
            raise ArchiveError(f"data after the end of the archive (at byte {offset + 2 * BLOCK})")
        if n > self.limits.max_trailing_zeros:
            raise ArchiveError(f"more than {self.limits.max_trailing_zeros} bytes after the end of the archive")
        self.finished = True
