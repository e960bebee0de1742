"""The deterministic tar writer; the strict reader is the shared verification code's.

Why not `tarfile` alone: its extraction filters rewrite hostile names instead of rejecting them,
extract duplicated members (last one wins) and quietly drop setuid bits (see FACTS). A bundle
reader must refuse all of that and must hash while it reads, in one pass, in bounded memory: that
reader (`StrictTarReader`, with its `Limits` and the member-name rule `check_name`) lives in
runtime_stub/verify.py, the one implementation every verifier runs, and is re-exported here. The
writer uses `tarfile.TarInfo` to format headers (well-trodden code), checks each name with the
reader's own rule, and copies data itself so that hashing and copying are one pass.

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
import tarfile
from concurrent.futures import Future, ThreadPoolExecutor
from typing import BinaryIO, Callable, Deque, List, Optional, Tuple

from runtime_stub.verify import BLOCK, RECORD, Limits, Member, StrictTarReader  # noqa: F401 - re-exported
from runtime_stub.verify import check_name as check_member_name  # noqa: F401 - the reader's rule, for the writer

from .proc import signals_held

try:
    import fcntl
except ImportError:  # pragma: no cover - not POSIX: no O_DIRECT either
    fcntl = None  # type: ignore[assignment]

CHUNK = 4 << 20  # one read or write; the ring holds RING_DEPTH of them (12 MiB in all)
RING_DEPTH = 3  # 4 gave no measurable overlap on a disk-bound seal and 65 MiB peak RSS (target 64)
SMALL = 64 << 10  # updates below this are copied and hashed in batches, not handed to a thread
MAX_INFLIGHT = 8  # batches of small updates queued at most (bounded memory)


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
        with signals_held():  # never inside the executor's or a future's lock (bundler/proc.py)
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
            with signals_held():
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
        with signals_held():
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

def member_header(name: str, size: int, mode: int, mtime: int) -> bytes:
    """The header block(s) of one regular member, exactly as the format's writer profile says
    (docs/bundle-format.md section 2.1). Shared by `TarWriter` and countersigning, which adds a
    member to an existing bundle and must write it the way sealing would."""
    ti = tarfile.TarInfo(name)
    ti.size = size
    ti.mtime = int(mtime)
    ti.mode = mode
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    ti.type = tarfile.REGTYPE
    return ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "strict")


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
        return member_header(name, size, mode, self._mtime)

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
