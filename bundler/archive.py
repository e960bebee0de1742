"""A deterministic tar writer and a strict, streaming tar reader.

Why not `tarfile` alone: its extraction filters rewrite hostile names instead of rejecting them,
extract duplicated members (last one wins) and quietly drop setuid bits (see FACTS). A bundle
reader must refuse all of that and must hash while it reads, in one pass, in bounded memory. So
the reader here parses POSIX ustar/PAX headers itself and accepts only regular files and
directories with plain names. The writer uses `tarfile.TarInfo` to format headers (well-trodden
code) and copies data itself so that hashing and copying are one pass.

Neither side trusts anything: the reader's caller decides what a member means.

Speed (docs/performance.md): every payload byte goes through two SHA-256 streams, the member's and
the whole archive's, and SHA-256 is the bottleneck. `AsyncSha256` runs each stream on its own
worker thread (hashlib releases the GIL on large buffers), so the two run on two cores while the
calling thread reads and writes. Data moves through a small ring of fixed buffers (`BufferRing`);
a buffer is refilled only after every hash it was handed to is done with it, which keeps memory
bounded by the ring whatever the file size. The buffers are page-aligned so that `DirectFile` can
write them with O_DIRECT: multi-GiB outputs go from the ring to the disk, not through the page
cache. None of this changes a byte that is read, written or checked.
"""

from __future__ import annotations

import collections
import errno
import hashlib
import mmap
import os
import re
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from dataclasses import dataclass
from typing import BinaryIO, Callable, Deque, List, Optional, Set, Tuple

from .errors import ArchiveError, LimitsError, MembersError, UnsafeMemberError

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no O_DIRECT either
    fcntl = None  # type: ignore[assignment]

BLOCK = 512
RECORD = 20 * BLOCK  # tar's default record size; archives are padded to a multiple of it
CHUNK = 4 << 20  # one read or write; the ring holds RING_DEPTH of them (16 MiB in all)
RING_DEPTH = 4
SMALL = 64 << 10  # updates below this are copied and hashed in batches, not handed to a thread
MAX_INFLIGHT = 8  # batches of small updates queued at most (bounded memory)
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


# -- hashing off the calling thread ----------------------------------------------------------------

class AsyncSha256:
    """A SHA-256 fed in order on its own worker thread, so that two digests use two cores.

    ``update(data)`` returns at once. Data of `SMALL` bytes or more is hashed in place later: the
    caller must leave it unchanged until the returned future is done (`BufferRing` does that);
    smaller data is copied and hashed in batches, and ``None`` is returned. `hexdigest` waits for
    everything and may be called any number of times; updating after it is an error. A digest that
    is dropped half-way (an exception) lets its thread end when it is garbage-collected.
    """

    def __init__(self) -> None:
        self._h = hashlib.sha256()
        self._pool: Optional[ThreadPoolExecutor] = None
        self._pending = bytearray()
        self._inflight: Deque[Future] = collections.deque()
        self._hex: Optional[str] = None

    def _submit(self, data) -> Future:  # noqa: ANN001 - bytes-like
        if self._pool is None:
            self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="sha256")
        fut = self._pool.submit(self._h.update, data)
        self._inflight.append(fut)
        while self._inflight and self._inflight[0].done():
            self._inflight.popleft().result()
        while len(self._inflight) > MAX_INFLIGHT:
            self._inflight.popleft().result()
        return fut

    def _flush(self) -> None:
        if self._pending:
            data, self._pending = bytes(self._pending), bytearray()
            if self._pool is None:
                self._h.update(data)  # nothing queued before it: hash here, no thread needed
            else:
                self._submit(data)

    def update(self, data) -> Optional[Future]:  # noqa: ANN001 - bytes-like
        if self._hex is not None:
            raise ValueError("update after hexdigest")
        if len(data) < SMALL:
            self._pending += data
            if len(self._pending) >= SMALL:
                self._flush()
            return None
        self._flush()
        return self._submit(data)

    def hexdigest(self) -> str:
        if self._hex is None:
            self._flush()
            while self._inflight:
                self._inflight.popleft().result()
            if self._pool is not None:
                self._pool.shutdown(wait=True)
                self._pool = None
            self._hex = self._h.hexdigest()
        return self._hex


def aligned_buffer(size: int) -> memoryview:
    """A writable buffer that starts on a page boundary (anonymous mmap), as O_DIRECT needs."""
    return memoryview(mmap.mmap(-1, size))


class BufferRing:
    """`depth` reusable page-aligned buffers of `size` bytes, handed out in turn.

    `take` returns the next buffer once every future `hold` attached to it is done, so a buffer
    that a worker thread is still hashing is never overwritten.
    """

    def __init__(self, size: int = CHUNK, depth: int = RING_DEPTH) -> None:
        self.size = size
        self._bufs: List[Optional[memoryview]] = [None] * depth
        self._held: List[List[Future]] = [[] for _ in range(depth)]
        self._next = 0

    def take(self) -> Tuple[int, memoryview]:
        i = self._next
        self._next = (i + 1) % len(self._bufs)
        for fut in self._held[i]:
            fut.result()
        self._held[i].clear()
        buf = self._bufs[i]
        if buf is None:  # allocated on first use: a small file never costs the whole ring
            buf = self._bufs[i] = aligned_buffer(self.size)
        return i, buf

    def hold(self, slot: int, fut: Optional[Future]) -> None:
        if fut is not None:
            self._held[slot].append(fut)


# -- output files ---------------------------------------------------------------------------

DIRECT_ALIGN = 4096  # offsets and lengths of O_DIRECT writes: a multiple of any logical block size
_O_DIRECT = getattr(os, "O_DIRECT", 0)


class DirectFile:
    """Sequential writes to a new file, large aligned ones with O_DIRECT, the rest buffered.

    Why (docs/performance.md): a multi-GiB bundle or engine goes through the page cache only to be
    written back to disk later, and on the VMs we measured, filling fresh page-cache memory with
    large writes cost more CPU than hashing the same bytes. O_DIRECT writes go from our buffer
    to the disk: no page-cache copy, no dirty-page build-up, nothing left for fsync to wait for.

    ``write`` takes any bytes-like object. While the file position and length are multiples of
    `DIRECT_ALIGN` and the buffer is page-aligned (`aligned_buffer`, `BufferRing`), it goes
    straight to disk; the first write that is not (the tail of the file) turns O_DIRECT off and
    goes through the page cache, as does everything after it. Where the file system refuses
    O_DIRECT (EINVAL: tmpfs, some FUSE and network file systems), the file is simply written
    buffered, with identical content. Writes are synchronous: when ``write`` returns, the buffer
    may be reused. Errors are the OSErrors of os.write.
    """

    def __init__(self, fd: int, direct: bool = True) -> None:
        self.fd = fd
        self.pos = 0
        self._direct = False
        if direct and _O_DIRECT and fcntl is not None:
            try:
                flags = fcntl.fcntl(fd, fcntl.F_GETFL)
                fcntl.fcntl(fd, fcntl.F_SETFL, flags | _O_DIRECT)
                self._direct = True
            except OSError:
                pass

    @property
    def direct(self) -> bool:
        return self._direct

    def _buffered(self) -> None:
        if self._direct:
            self._direct = False
            flags = fcntl.fcntl(self.fd, fcntl.F_GETFL)
            fcntl.fcntl(self.fd, fcntl.F_SETFL, flags & ~_O_DIRECT)

    def _write_all(self, view: memoryview) -> None:
        while view:
            n = os.write(self.fd, view)
            self.pos += n
            view = view[n:]
            if view and self._direct:  # a short O_DIRECT write: the rest is unaligned now
                self._buffered()

    def write(self, data) -> int:  # noqa: ANN001 - bytes-like
        view = memoryview(data).cast("B")
        n = len(view)
        if self._direct and self.pos % DIRECT_ALIGN == 0:
            head = n - n % DIRECT_ALIGN
            if head:
                try:
                    self._write_all(view[:head])
                    view = view[head:]
                except OSError as e:
                    if e.errno != errno.EINVAL:
                        raise
                    self._buffered()  # refused (file system, alignment): buffered, same bytes
        if view:
            self._buffered()
            self._write_all(view)
        return n


# -- writer -----------------------------------------------------------------------------------

class TarWriter:
    """Writes a deterministic POSIX (PAX) tar: fixed uid/gid/owner, caller-chosen mtime and modes.

    Bytes are staged in page-aligned `CHUNK` buffers and ``out.write`` receives whole buffers (the
    last one partial), synchronously: a `DirectFile` writes them with O_DIRECT, any file object
    works. Payload data is read straight into the staging buffer (one copy), and with
    ``digest=True`` the SHA-256 of everything written is computed on a worker thread in the same
    pass (`hexdigest`).
    """

    def __init__(self, out: BinaryIO, mtime: int, digest: bool = False) -> None:
        self._out = out
        self._mtime = int(mtime)
        self._written = 0
        self._sha256: Optional[AsyncSha256] = AsyncSha256() if digest else None
        self._ring = BufferRing()
        self._slot = -1
        self._buf: Optional[memoryview] = None  # the staging buffer being filled
        self._fill = 0

    def hexdigest(self) -> str:
        """SHA-256 of the archive written so far (call after `close`)."""
        if self._sha256 is None:
            raise ValueError("TarWriter made without digest=True")
        return self._sha256.hexdigest()

    def _header(self, name: str, size: int, mode: int) -> bytes:
        ti = tarfile.TarInfo(name)
        ti.size = size
        ti.mtime = self._mtime
        ti.mode = mode
        ti.uid = ti.gid = 0
        ti.uname = ti.gname = ""
        ti.type = tarfile.REGTYPE
        return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")

    def _space(self) -> memoryview:
        """The free part of the current staging buffer (never empty)."""
        if self._buf is None:
            self._slot, self._buf = self._ring.take()
            self._fill = 0
        return self._buf[self._fill :]

    def _commit(self, n: int) -> None:
        self._fill += n
        self._written += n
        assert self._buf is not None
        if self._fill == len(self._buf):
            self._flush()

    def _flush(self) -> None:
        if self._buf is not None:
            if self._fill:
                self._out.write(self._buf[: self._fill])
            self._buf = None  # the slot is reused once its hashes are done (BufferRing)

    def _write(self, data: bytes) -> None:
        """Append small or immutable data (headers, padding, in-memory members), hashed."""
        if self._sha256 is not None:
            self._sha256.update(data)  # bytes: safe to hash later, in place, on the worker
        view = memoryview(data)
        while view:
            space = self._space()
            k = min(len(space), len(view))
            space[:k] = view[:k]
            view = view[k:]
            self._commit(k)

    def _pad(self, size: int) -> None:
        rem = size % BLOCK
        if rem:
            self._write(b"\0" * (BLOCK - rem))

    def add_bytes(self, name: str, data: bytes, mode: int = 0o644) -> None:
        if not isinstance(data, bytes):
            data = bytes(data)  # may be hashed later, on another thread: must not change
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
        digest: Optional[AsyncSha256] = None,
    ) -> None:
        """Copy exactly ``size`` bytes from ``src``; ``on_chunk`` sees each chunk (synchronously)
        and ``digest``, when given, is fed the same bytes on its own thread."""
        self._write(self._header(name, size, mode))
        left = size
        while left:
            space = self._space()
            view = space[: min(left, len(space))]
            n = src.readinto(view)  # type: ignore[attr-defined]
            if not n:
                raise OSError(f"{name}: source ended {left} bytes early (changed while sealing?)")
            chunk = view[:n]
            if digest is not None:
                self._ring.hold(self._slot, digest.update(chunk))
            if self._sha256 is not None:
                self._ring.hold(self._slot, self._sha256.update(chunk))
            if on_chunk is not None:
                on_chunk(chunk)
            self._commit(n)
            left -= n
        if src.read(1):
            raise OSError(f"{name}: source grew while sealing")
        self._pad(size)

    def close(self) -> None:
        self._write(b"\0" * (2 * BLOCK))
        rem = self._written % RECORD
        if rem:
            self._write(b"\0" * (RECORD - rem))
        self._flush()


# -- reader -----------------------------------------------------------------------------------

@dataclass(frozen=True)
class Member:
    name: str  # as stored, without a trailing '/'
    size: int
    mode: int
    is_dir: bool
    offset: int  # of its header, for messages


class _CountingReader:
    """Reads from the file and feeds every byte to the whole-archive hash (one pass).

    `readinto` leaves hashing to the caller (`StrictTarReader.read_data` hands ring buffers to the
    archive digest itself); `read_small` and `read_exact` hash what they return.
    """

    def __init__(self, f: BinaryIO) -> None:
        self._f = f
        self.pos = 0
        self.sha256 = AsyncSha256()

    def readinto(self, view: memoryview) -> int:
        got = 0
        while got < len(view):
            n = self._f.readinto(view[got:])  # type: ignore[attr-defined]
            if not n:
                break
            got += n
        self.pos += got
        return got

    def read_small(self, n: int) -> bytes:
        """Up to ``n`` bytes (fewer only at the end of the file), hashed."""
        buf = bytearray(n)
        got = self.readinto(memoryview(buf))
        data = bytes(buf[:got]) if got != n else bytes(buf)
        if data:
            self.sha256.update(data)  # immutable: safe to hash later, in place
        return data

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read_small(n)
        if len(data) != n:
            raise ArchiveError(f"truncated archive: {what} ends at byte {self.pos}")
        return data


_OCTAL_RE = re.compile(rb"^ *([0-7]*)[ \0]*\Z")
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)\Z")


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
        self._ring = BufferRing()

    @property
    def archive_sha256(self) -> str:
        return self._r.sha256.hexdigest()

    @property
    def position(self) -> int:
        return self._r.pos

    def read_data(
        self, consume: Optional[Callable[[memoryview], None]], digest: Optional[AsyncSha256] = None
    ) -> None:
        """Stream the current member's data to ``consume`` in chunks, then check its padding.

        ``consume`` runs on this thread and must not keep the chunk (copy what it needs);
        ``digest``, when given, is fed the same bytes on its own thread.
        """
        name = self._current.name if self._current else "?"
        ring = self._ring
        while self._left:
            slot, view = ring.take()
            n = self._r.readinto(view[: min(self._left, ring.size)])
            if n == 0:
                raise ArchiveError(f"{name}: truncated archive ({self._left} bytes of data missing)", member=name)
            chunk = view[:n]
            ring.hold(slot, self._r.sha256.update(chunk))
            if digest is not None:
                ring.hold(slot, digest.update(chunk))
            if consume is not None:
                consume(chunk)
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
            if "mtime" in pax and not re.match(r"^-?[0-9]+(\.[0-9]+)?\Z", pax["mtime"]):
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
            if not re.match(rb"^[1-9][0-9]*\Z", raw[pos:sp]):
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
        tail = self._r.read_small(self.limits.max_trailing_zeros + 1)
        n = len(tail)
        if tail.count(0) != n:
            raise ArchiveError(f"data after the end of the archive (at byte {offset + 2 * BLOCK})")
        if n > self.limits.max_trailing_zeros:
            raise ArchiveError(f"more than {self.limits.max_trailing_zeros} bytes after the end of the archive")
        self.finished = True
