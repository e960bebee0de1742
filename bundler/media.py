"""`bundle copy`: put bundles or part sets on removable media, and prove the copy.

A USB stick is where bundles get damaged: a FAT32 stick silently cannot hold a file of 4 GiB or
more, cheap flash returns other bytes than it was given, a stick pulled early keeps a truncated
file under its final name, and `cp` says nothing of any of it. So, per file:

1. Before anything is written, the whole request is checked against the destination: its file
   system (from /proc/self/mountinfo: FAT12/16/32 hold files of at most 4 GiB - 1 bytes) and its
   free space (statvfs). A file that cannot fit is refused (exit 23) with the `bundle split`
   command that makes parts that do.
2. The file is written under a temporary name (``.NAME.copy-partial``) in the destination, in
   blocks, hashed as it is read. Every few blocks the partial file is synced and the blocks'
   SHA-256s are appended to a journal (``.NAME.copy-journal``) and synced: a block is in the
   journal only once it is on the medium. An interrupted copy (Ctrl-C, SIGKILL, a pulled stick)
   resumes from the last block that re-verifies: on the next run each journalled block is read
   again from the source and from the partial copy and compared with the journal.
3. The partial file is synced, the directory synced, the file renamed to its final name (never
   replacing one), the directory synced again; then its page cache is dropped (where the OS
   allows) and the copy is read back from the medium and compared with the source's SHA-256.
   A copy that reads back wrong is removed.

Parts are checked against their index on the way (size, SHA-256), so a part that is already bad
on the CI host never leaves it; `copy` does not judge signatures (that is `verify`'s job on the
closed host, where the trust is).
"""

from __future__ import annotations

import hashlib
import json
import os
import re
import signal
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from runtime_stub.verify import PartsError, part_index_for

from .errors import InputError, MediaError, OutputError
from .fsutil import fsync_dir, rename_noreplace, write_all
from .parts import FAT32_MAX_FILE, _read_full, read_back_sha256, read_index_unverified

MOUNTINFO_ENV = "BUNDLE_MOUNTINFO"  # test seam: read this file instead of /proc/self/mountinfo (docs/testing.md)
STOP_ENV = "BUNDLE_COPY_TEST_STOP"  # test hook: SIGSTOP self after this many journal checkpoints
COPY_BLOCK = 4 << 20  # one journalled block
CHECKPOINT_BLOCKS = 16  # sync and journal every 64 MiB: a resume repeats at most that much
JOURNAL_FORMAT = "trt-bundler-copy-journal/1"
# File systems whose files hold at most 4 GiB - 1 bytes: the kernel's FAT drivers and FUSE ones.
FAT_TYPES = frozenset({"vfat", "msdos", "fat", "umsdos", "fuse.fusefat", "fuse.vfat", "fuse.msdos"})


@dataclass(frozen=True)
class FsInfo:
    """What the destination can hold."""

    fstype: str  # from mountinfo, "unknown" without one
    mountpoint: str
    max_file: Optional[int]  # the largest file it holds; None: no limit we know of
    free: Optional[int]  # bytes free to this user; None when the file system does not say


@dataclass(frozen=True)
class CopyItem:
    src: Path
    dest: Path
    size: int
    sha256: Optional[str]  # what it must hash to (a part: from its index); None: the source as read
    what: str  # "bundle", "part 2 of 3", "part index"


@dataclass(frozen=True)
class CopiedFile:
    dest: Path
    size: int
    sha256: str
    resumed_at: int  # bytes kept from an interrupted copy (0: copied from the start)
    already: bool  # it was there already, identical (read back and compared)


@dataclass(frozen=True)
class CopyResult:
    fs: FsInfo
    files: Tuple[CopiedFile, ...]


def _unescape(field: str) -> str:
    return re.sub(r"\\([0-7]{3})", lambda m: chr(int(m.group(1), 8)), field)


def filesystem_of(path: Path) -> FsInfo:
    """The file system ``path`` lies on: its type from the mount table (the mount whose mount
    point is the longest prefix of the real path; the last one of equal length, which shadows
    the others), its free space from statvfs. ``BUNDLE_MOUNTINFO`` names another file to read as
    the mount table: the tests' way to put a path "on FAT" where nothing can be mounted."""
    real = os.path.realpath(path)
    source = os.environ.get(MOUNTINFO_ENV) or "/proc/self/mountinfo"
    best, fstype = "", "unknown"
    try:
        with open(source, encoding="utf-8", errors="replace") as f:
            lines = f.read().splitlines()
    except OSError:
        lines = []
    for line in lines:
        fields = line.split(" ")
        if "-" not in fields[5:] or len(fields) < 7:
            continue
        sep = fields.index("-", 5)
        if len(fields) <= sep + 1:
            continue
        mp = _unescape(fields[4])
        inside = real == mp or real.startswith(mp.rstrip("/") + "/")
        if inside and len(mp) >= len(best):
            best, fstype = mp, fields[sep + 1]
    free: Optional[int] = None
    try:
        st = os.statvfs(path)
        if st.f_blocks:  # 0 blocks: the file system does not report its size (FUSE fusefat)
            free = st.f_bavail * st.f_frsize
    except OSError:
        pass
    max_file = FAT32_MAX_FILE if fstype.lower() in FAT_TYPES else None
    return FsInfo(fstype, best or "/", max_file, free)


def _human(n: int) -> str:
    for unit, shift in (("TiB", 40), ("GiB", 30), ("MiB", 20), ("KiB", 10)):
        if n >= 1 << shift:
            return f"{n / (1 << shift):.1f} {unit}"
    return f"{n} bytes"


def plan_copy(sources: Sequence[Path], dest_dir: Path) -> List[CopyItem]:
    """What copying ``sources`` into ``dest_dir`` means, file by file: a bundle is itself; a part
    index brings its whole part set (the parts first, the index last); a part brings itself and
    its index (a few KB, so every medium of a set spread over several says what the set is).
    Parts are checked against the index by size here, by SHA-256 while copying. Reads only
    the sources' metadata and the index; writes nothing."""
    items: Dict[str, CopyItem] = {}
    order: List[str] = []

    def add(item: CopyItem) -> None:
        prev = items.get(item.dest.name)
        if prev is not None:
            if Path(os.path.realpath(prev.src)) != Path(os.path.realpath(item.src)):
                raise InputError(f"{prev.src} and {item.src} would both be copied to {item.dest}")
            return
        items[item.dest.name] = item
        order.append(item.dest.name)

    tail: List[CopyItem] = []  # indexes go last
    for src in map(Path, sources):
        if src.is_dir():
            raise InputError(f"{src}: is a directory; copy takes bundle files, part indexes and parts")
        if not src.is_file():
            raise InputError(f"{src}: no such file")
        idx_path = part_index_for(src)
        if idx_path is None:
            add(CopyItem(src, Path(dest_dir) / src.name, src.stat().st_size, None, "bundle"))
            continue
        if not idx_path.is_file():
            raise PartsError(f"{src}: its part index {idx_path.name} is not beside it; copy needs it to check the part",
                             member=src.name)
        idx = read_index_unverified(idx_path)
        count = len(idx.doc.parts)
        wanted = idx.doc.parts if src == idx_path else [r for r in idx.doc.parts if r.name == src.name]
        if not wanted:
            raise PartsError(f"{src}: its index {idx_path.name} lists no part of that name", member=src.name)
        for rec in wanted:
            p = idx_path.parent / rec.name
            what = f"part {rec.number} of {count}"
            try:
                size = p.stat().st_size
            except OSError:
                raise PartsError(f"{what} ({rec.name}) is missing beside {idx_path.name}; nothing copied",
                                 member=rec.name) from None
            if size != rec.size:
                raise PartsError(f"{what} ({rec.name}) is {size} bytes, its index records {rec.size}; nothing copied",
                                 member=rec.name)
            add(CopyItem(p, Path(dest_dir) / rec.name, size, rec.sha256, what))
        tail.append(CopyItem(idx_path, Path(dest_dir) / idx_path.name, idx_path.stat().st_size, None, "part index"))
    for t in tail:
        add(t)
    return [items[n] for n in order]


def _partial(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.copy-partial")


def _journal(dest: Path) -> Path:
    return dest.with_name(f".{dest.name}.copy-journal")


def check_room(items: Sequence[CopyItem], fs: FsInfo, dest_dir: Path) -> None:
    """Refuse, before anything is written, a request the destination cannot hold: a file over
    its file system's limit (FAT: 4 GiB - 1), or more bytes than it has free. Both messages give
    the `bundle split` that makes parts it can hold."""
    todo = [i for i in items if not i.dest.exists()]
    for i in todo:
        if fs.max_file is not None and i.size > fs.max_file:
            size = fs.max_file if fs.free is None else min(fs.max_file, fs.free)
            advice = (f"split it into parts that fit: bundle split {i.src} --key KEY --trust PUB --out DIR "
                      f"--max-part-size {size}" if i.what == "bundle" else
                      f"split the bundle again with a smaller part: bundle split BUNDLE ... --max-part-size {size}")
            raise MediaError(f"{dest_dir} is on a {fs.fstype} file system ({fs.mountpoint}), whose files hold at most "
                             f"{fs.max_file} bytes (4 GiB - 1); {i.src.name} is {i.size} bytes ({_human(i.size)}): "
                             f"{advice}. Nothing was written")
    if fs.free is None:
        return
    kept = sum(_partial(i.dest).stat().st_size for i in todo if _partial(i.dest).is_file())
    need = sum(i.size for i in todo) - kept
    if need > fs.free:
        largest = max(todo, key=lambda i: i.size)
        fit = fs.free - fs.free % (1 << 20)
        raise MediaError(f"{dest_dir}: {need} bytes ({_human(need)}) to copy, {fs.free} ({_human(fs.free)}) free on "
                         f"{fs.mountpoint}; free some space, or carry the bundle on several media: bundle split "
                         f"{largest.src if largest.what == 'bundle' else 'BUNDLE'} --key KEY --trust PUB --out DIR "
                         f"--max-part-size {max(fit, 1 << 20)}, then copy the parts to each medium in turn. "
                         "Nothing was written")


def copy_to_media(sources: Sequence[Path], dest_dir: Path,
                  progress: Optional[Callable[[int, int], None]] = None) -> CopyResult:
    """Copy bundles or part sets into ``dest_dir`` on removable media (see the module doc).

    Raises `MediaError` (23) before writing anything when the destination cannot hold the
    request, `PartsError` (19) for a part that does not match its index (nothing copied of
    it), `OutputError` (6) when a final name exists with other bytes, a write fails, or a copy
    reads back wrong. A file already there and identical is read back, compared and kept.
    """
    dest_dir = Path(dest_dir)
    if not dest_dir.is_dir():
        raise OutputError(f"{dest_dir}: not a directory; copy writes into an existing directory (a mounted medium)")
    items = plan_copy(sources, dest_dir)
    fs = filesystem_of(dest_dir)
    check_room(items, fs, dest_dir)
    total = sum(i.size for i in items) * 2  # written once, read back once
    done = [0]

    def tick(n: int) -> None:
        done[0] += n
        if progress is not None:
            progress(done[0], total)

    copied = []
    for item in items:
        copied.append(_copy_one(item, tick))
    return CopyResult(fs, tuple(copied))


def _read_journal(path: Path) -> Tuple[Optional[dict], List[str]]:
    """A journal's header and block digests, up to the first line that is not a whole entry (a
    run killed while appending leaves a torn last line: everything after it is ignored)."""
    try:
        with open(path, "rb") as f:
            data = f.read(1 << 24)
    except OSError:
        return None, []
    lines = data.split(b"\n")
    try:
        header = json.loads(lines[0].decode("ascii"))
    except (ValueError, UnicodeDecodeError):
        return None, []
    digests = []
    for raw in lines[1:-1]:  # the last piece is "" after a complete final line, or a torn line
        if not re.fullmatch(rb"[0-9a-f]{64}", raw):
            break
        digests.append(raw.decode("ascii"))
    return header if isinstance(header, dict) else None, digests


def _fdatasync(fd: int) -> None:
    (getattr(os, "fdatasync", None) or os.fsync)(fd)


class _Journal:
    """The resume journal of one copy: a header line (which source, which block size), then one
    SHA-256 per block that is durable on the medium."""

    def __init__(self, path: Path, header: dict, digests: List[str]) -> None:
        self.path = path
        tmp = path.with_name(path.name + ".new")
        with open(tmp, "wb") as f:
            f.write((json.dumps(header, sort_keys=True) + "\n").encode("ascii"))
            f.write(b"".join(d.encode("ascii") + b"\n" for d in digests))
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
        self._fd = os.open(path, os.O_WRONLY | os.O_APPEND)

    def append(self, digests: List[str]) -> None:
        if digests:
            os.write(self._fd, b"".join(d.encode("ascii") + b"\n" for d in digests))
            os.fsync(self._fd)

    def close(self) -> None:
        fd, self._fd = self._fd, -1
        if fd >= 0:
            os.close(fd)


def _resume_point(item: CopyItem, header: dict, fin, whole) -> Tuple[int, List[str]]:  # noqa: ANN001
    """How much of an interrupted copy stands: each journalled block is read again from the
    source and from the partial copy (its cache dropped, so from the medium) and must hash to
    the journal's digest in both. The first block that does not ends the prefix kept."""
    partial, journal = _partial(item.dest), _journal(item.dest)
    if not partial.is_file() or not journal.is_file():
        return 0, []
    found, digests = _read_journal(journal)
    if found != header:
        return 0, []
    kept: List[str] = []
    with open(partial, "rb", buffering=0) as fp:
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(fp.fileno(), 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
        for digest in digests:
            s, d = _read_full(fin, COPY_BLOCK), _read_full(fp, COPY_BLOCK)
            if len(s) != COPY_BLOCK or s != d or hashlib.sha256(s).hexdigest() != digest:
                break
            whole.update(s)
            kept.append(digest)
    fin.seek(len(kept) * COPY_BLOCK)
    return len(kept) * COPY_BLOCK, kept


def _copy_one(item: CopyItem, tick: Callable[[int], None]) -> CopiedFile:
    final, partial, journal_path = item.dest, _partial(item.dest), _journal(item.dest)
    if final.exists() or final.is_symlink():
        return _already_there(item, tick)
    st = item.src.stat()
    header = {"format": JOURNAL_FORMAT, "source": item.src.name, "size": st.st_size, "mtime_ns": st.st_mtime_ns,
              "block": COPY_BLOCK}
    whole = hashlib.sha256()
    stop_after = int(os.environ.get(STOP_ENV, "0") or 0)
    with open(item.src, "rb", buffering=0) as fin:
        start, kept = _resume_point(item, header, fin, whole)
        tick(start)
        try:
            if start == 0:
                for p in (partial, journal_path):
                    p.unlink(missing_ok=True)
            journal = _Journal(journal_path, header, kept)
            fd = os.open(partial, os.O_WRONLY | os.O_CREAT, 0o644)
        except OSError as e:
            raise OutputError(f"{final.parent}: cannot write there ({e.strerror or e})") from None
        pending: List[str] = []
        checkpoints = 0

        def checkpoint() -> None:
            """The blocks written so far are durable, then journalled: never the other way round."""
            nonlocal pending
            if pending:
                _fdatasync(fd)
                journal.append(pending)
                pending = []

        try:
            try:
                os.ftruncate(fd, start)
                os.lseek(fd, start, os.SEEK_SET)
                while True:
                    block = _read_full(fin, COPY_BLOCK)
                    if not block:
                        break
                    whole.update(block)
                    write_all(fd, block)
                    pending.append(hashlib.sha256(block).hexdigest())
                    tick(len(block))
                    if len(pending) >= CHECKPOINT_BLOCKS:
                        checkpoint()
                        checkpoints += 1
                        if stop_after and checkpoints == stop_after:
                            os.kill(os.getpid(), signal.SIGSTOP)  # the tests' moment to kill or interrupt
                if os.fstat(fin.fileno()).st_size != st.st_size:
                    raise InputError(f"{item.src}: changed size while it was being copied; nothing published")
                os.fsync(fd)
            except BaseException:
                try:  # a Ctrl-C: keep what is durable for the next run
                    checkpoint()
                except OSError:
                    pass
                raise
            finally:
                os.close(fd)
                journal.close()
        except OSError as e:
            raise OutputError(f"{partial}: cannot write ({e.strerror or e}); run the same copy again to resume") from None
    digest = whole.hexdigest()
    if item.sha256 is not None and digest != item.sha256:
        for p in (partial, journal_path):
            p.unlink(missing_ok=True)
        raise PartsError(f"{item.what} ({item.src}) does not match its part index (SHA-256 {digest[:16]}...); it is "
                         "damaged at the source: split the bundle again. Nothing of it was copied", member=item.src.name)
    try:
        fsync_dir(final.parent)
        rename_noreplace(partial, final)
        fsync_dir(final.parent)
        back = read_back_sha256(final, tick)
    except OSError as e:
        raise OutputError(f"{final}: cannot write ({e.strerror or e})") from None
    if back != digest:
        final.unlink(missing_ok=True)
        journal_path.unlink(missing_ok=True)
        raise OutputError(f"{final}: the copy reads back different bytes than the source ({back[:16]}... for "
                          f"{digest[:16]}...); removed. The medium is failing: use another one")
    journal_path.unlink(missing_ok=True)
    return CopiedFile(final, item.size, digest, start, False)


def _already_there(item: CopyItem, tick: Callable[[int], None]) -> CopiedFile:
    """A final name that exists: kept when it is the same file (read back and compared, so a
    re-run after a finished copy succeeds), refused otherwise (never overwritten)."""
    final = item.dest
    if not final.is_file() or final.stat().st_size != item.size:
        raise OutputError(f"{final}: already exists and is not the same file as {item.src}; not overwritten")
    want = item.sha256 or read_back_sha256(item.src)
    tick(item.size)
    if read_back_sha256(final, tick) != want:
        raise OutputError(f"{final}: already exists with other bytes than {item.src}; not overwritten")
    return CopiedFile(final, item.size, want, 0, True)
