"""`bundle split` and `bundle join`: a bundle as numbered parts, for media smaller than it.

The journey is CI host -> removable media (FAT32 sticks hold files of at most 4 GiB - 1 bytes,
and are often smaller than the bundle) -> closed host. `split` cuts a verified bundle into parts
that are plain byte ranges of the tar (``cat`` of the parts in order is the bundle, byte for
byte) and writes a part index, signed like the bundle, that lists each part's size, SHA-256 and
two tar-header landmarks, and the whole bundle's digest. Everything that *judges* a part set
(the index's rules, its signature, which part is bad and why, streaming the parts through the
verifier) is the shared verification code's (runtime_stub/verify.py, docs/bundle-format.md
section 13); this module only writes parts and indexes and joins verified parts into a file.

Both ends read every byte once: `split` hashes the bundle while it copies it into parts (and
refuses if it is not the bundle it verified); `join` writes the bundle while the verifier
streams through the parts, so no part is read twice, wherever the parts lie.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
from dataclasses import asdict, dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple, Union

from cryptography.hazmat.primitives.asymmetric import ec

from runtime_stub.verify import (
    MAX_PARTS,
    PARTS_FORMAT,
    PARTS_PREDICATE_TYPE,
    STATEMENT_TYPE,
    HeaderMarks,
    PartBundleRecord,
    PartIndexDoc,
    PartRecord,
    TrustPolicy,
    VerifyReport,
    parse_part_index,
    parse_signature_file,
    part_file_name,
    part_index_for,
    part_index_name,
    read_bounded,
    split_id_for,
)
from runtime_stub.verify import MAX_PART_INDEX_SIZE, PartsError

from .archive import BLOCK, CHUNK, AsyncSha256, Limits
from .errors import ArchiveError, InputError, OutputError, error_for_code
from .fsutil import check_out_dir, fsync_dir, make_dirs, make_workfile, remove_made_dirs, remove_stale, removed_on_failure, write_all
from .signing import TrustedKey, key_id, sign_statement
from .verify import verify_bundle

FAT32_MAX_FILE = (4 << 30) - 1  # the largest file FAT32 holds
DEFAULT_MAX_PART_SIZE = FAT32_MAX_FILE  # parts are then 4 GiB - 512 bytes (whole 512-byte blocks)


@dataclass(frozen=True)
class SplitResult:
    index: Path
    parts: Tuple[Path, ...]
    split_id: str
    part_size: int
    sha256: str  # the whole bundle's
    content_digest: str
    key_id: str  # who signed the index


@dataclass(frozen=True)
class JoinResult:
    path: Optional[Path]  # the joined bundle; None when verification failed (see report)
    report: VerifyReport


def part_size_for(max_part_size: int, bundle_size: int) -> int:
    """The part size for ``--max-part-size``: rounded down to whole 512-byte tar blocks, so every
    part starts on a tar block (its header landmarks can be found, section 13.3). Refuses a size
    that would make more than `MAX_PARTS` parts, before anything is read."""
    size = max_part_size - max_part_size % BLOCK
    if size < BLOCK:
        raise InputError(f"--max-part-size {max_part_size}: a part holds whole 512-byte tar blocks; give at least 512")
    count = -(-bundle_size // size)
    if count > MAX_PARTS:
        need = -(-bundle_size // MAX_PARTS)
        need += -need % BLOCK
        raise InputError(f"--max-part-size {max_part_size} would cut this {bundle_size}-byte bundle into {count} parts; "
                         f"at most {MAX_PARTS} are allowed: give at least --max-part-size {need}")
    return size


def _read_full(f, n: int) -> bytes:  # noqa: ANN001 - a binary file
    """Exactly ``n`` bytes, or fewer only at the end of the file."""
    parts = []
    got = 0
    while got < n:
        chunk = f.read(n - got)
        if not chunk:
            break
        parts.append(chunk)
        got += len(chunk)
    return b"".join(parts)




def index_statement(subject: str, sha256: str, doc: PartIndexDoc) -> bytes:
    """The in-toto statement a part index signs (docs/bundle-format.md section 13.2): the whole
    bundle as its subject, the parts in the predicate. Its predicate type is not model-signing's,
    so an index can never pass for a bundle signature, nor a bundle signature for an index."""
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject, "digest": {"sha256": sha256}}],
        "predicateType": PARTS_PREDICATE_TYPE,
        "predicate": asdict(doc),
    }
    return json.dumps(statement, indent=2, ensure_ascii=True).encode("ascii")


def _created() -> str:
    from .seal import source_date_epoch  # SOURCE_DATE_EPOCH, as sealing reads it

    epoch = source_date_epoch()
    when = epoch if epoch is not None else int(_dt.datetime.now(_dt.timezone.utc).timestamp())
    return _dt.datetime.fromtimestamp(when, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def split_bundle(
    bundle: Path,
    key: ec.EllipticCurvePrivateKey,
    trusted: "Union[Dict[str, TrustedKey], TrustPolicy]",
    out_dir: Path,
    *,
    max_part_size: int = DEFAULT_MAX_PART_SIZE,
    limits: Limits = Limits(),
    progress: Optional[Callable[[int, int], None]] = None,
) -> SplitResult:
    """Verify ``bundle`` under ``trusted``, then cut it into parts of at most ``max_part_size``
    bytes in ``out_dir`` and sign their index with ``key``.

    Verified first, like `bundle sign`: a signed index vouches for the parts, and it must not
    vouch for a tar nobody checked. The bundle is then read once more, hashed while it is copied
    into the parts; if it is not the verified file, nothing is published. Parts appear under
    their final names only when all are complete and synced, the index last (a set with an
    index is complete); nothing is ever overwritten. Returns where everything went.
    """
    bundle, out_dir = Path(bundle), Path(out_dir)
    if bundle.is_dir():
        raise InputError(f"{bundle}: is a directory; split takes a bundle tar")
    if not bundle.is_file():
        raise InputError(f"{bundle}: no such bundle file")
    if part_index_for(bundle) is not None:
        raise InputError(f"{bundle}: is a part set already; split the bundle itself (bundle join makes it)")
    check_out_dir(out_dir, "the parts and their index")
    total = bundle.stat().st_size
    part_size = part_size_for(max_part_size, total)  # a bad size costs nothing
    report = verify_bundle(bundle, trusted, limits=limits)
    if not report.ok:
        assert report.error is not None
        raise error_for_code(report.exit_code, f"cannot split a bundle that fails verification: {report.error.message}",
                             report.error.member)
    assert report.root and report.sha256 and report.content_digest and report.name and report.version
    subject = f"{report.root}.bundle.tar"
    sid = split_id_for(report.sha256, part_size)
    count = -(-total // part_size)
    names = [part_file_name(subject, sid, k, count) for k in range(1, count + 1)]
    index_name = part_index_name(subject, sid)
    if (out_dir / index_name).exists() or (out_dir / index_name).is_symlink():
        raise OutputError(f"{out_dir / index_name}: already exists; this split of this bundle is there already "
                          "(parts and indexes are never overwritten)")
    try:
        made = make_dirs(out_dir)
    except OSError as e:
        raise OutputError(f"{e.filename or out_dir}: cannot create the directory ({e.strerror or e})") from None
    prefix = f".{subject}.{sid}.partial-"
    temps: List[Path] = []
    published: List[Path] = []
    try:
        remove_stale(out_dir, prefix)  # a killed split's half-written parts
        records = _write_parts(bundle, out_dir, prefix, names, part_size, total, report.sha256, temps, progress)
        doc = PartIndexDoc(PARTS_FORMAT, sid, _created(), part_size,
                           PartBundleRecord(report.name, report.version, total, report.content_digest), records)
        statement = index_statement(subject, report.sha256, doc)
        parse_part_index(statement, index_name)  # never sign what the verifier would refuse
        fd, tmp = make_workfile(out_dir, prefix)
        temps.append(tmp)
        try:
            os.fchmod(fd, 0o644)
            write_all(fd, sign_statement(statement, key))
            os.fsync(fd)
        finally:
            os.close(fd)
        fsync_dir(out_dir)
        from .seal import _publish  # link(2) or renameat2(NOREPLACE): never replaces a file

        for tmp, name, rec in zip(temps, names + [index_name], records + [None]):
            if rec is not None and _same_part(out_dir / name, rec):
                tmp.unlink()  # left by a split killed while publishing: the very same bytes, kept
                continue
            _publish(tmp, out_dir / name)
            published.append(out_dir / name)
        fsync_dir(out_dir)
    except OSError as e:
        _undo(temps, published, made)
        raise OutputError(f"{e.filename or out_dir}: cannot write ({e.strerror or e})") from None
    except BaseException:
        _undo(temps, published, made)
        raise
    return SplitResult(out_dir / index_name, tuple(out_dir / n for n in names), sid, part_size, report.sha256,
                       report.content_digest, key_id(key.public_key()))


def _same_part(path: Path, rec: PartRecord) -> bool:
    """Whether a part already under its final name holds exactly the bytes this split wrote for
    it (names are a function of the bundle and the part size, so a re-run after a split that was
    killed while publishing finds its parts there); anything else there is never overwritten."""
    if not (path.exists() or path.is_symlink()):
        return False
    if path.is_file() and not path.is_symlink() and path.stat().st_size == rec.size:
        if read_back_sha256(path) == rec.sha256:
            return True
    raise OutputError(f"{path}: already exists with other bytes; parts are never overwritten")


def _undo(temps: List[Path], published: List[Path], made: List[Path]) -> None:
    """A failed or interrupted split leaves nothing: no temporary file, no published part."""
    for p in temps + published:
        try:
            p.unlink()
        except OSError:
            pass
    remove_made_dirs(made)


def _write_parts(bundle: Path, out_dir: Path, prefix: str, names: List[str], part_size: int, total: int,
                 verified_sha256: str, temps: List[Path], progress: Optional[Callable[[int, int], None]]) -> List[PartRecord]:
    """Copy the bundle into one temporary file per part, hashing the whole file (on a second
    core) and each part, and finding each part's header landmarks; refuse if the file is not
    the one that was verified."""
    whole = AsyncSha256()
    records: List[PartRecord] = []
    done = 0
    with open(bundle, "rb", buffering=0) as f:
        for k, name in enumerate(names):
            size = min(part_size, total - k * part_size)
            fd, tmp = make_workfile(out_dir, prefix)
            temps.append(tmp)
            try:
                os.fchmod(fd, 0o644)
                part = AsyncSha256()
                marks = HeaderMarks()
                left = size
                while left:
                    chunk = _read_full(f, min(CHUNK, left))  # whole 512-byte blocks but at the very end
                    if not chunk:
                        raise ArchiveError(f"{bundle}: became shorter while it was being split")
                    whole.update(chunk)
                    part.update(chunk)
                    marks.feed(chunk, len(chunk))
                    write_all(fd, chunk)
                    left -= len(chunk)
                    done += len(chunk)
                    if progress is not None:
                        progress(done, total)
                os.fsync(fd)
            finally:
                os.close(fd)
            records.append(PartRecord(k + 1, name, k * part_size, size, part.hexdigest(), marks.first, marks.last))
        if f.read(1):
            raise ArchiveError(f"{bundle}: grew while it was being split")
    if whole.hexdigest() != verified_sha256:
        raise ArchiveError(f"{bundle}: changed while it was being split (SHA-256 differs from the verified one)")
    return records


def read_index_unverified(path: Path):  # noqa: ANN201 - runtime_stub.verify.PartIndex
    """A part index as written, with no signature check: what `bundle copy` uses to list and
    check the files it carries (it judges no trust; `verify` and `join` do)."""
    raw = read_bounded(Path(path), MAX_PART_INDEX_SIZE, PartsError, "part index")
    return parse_part_index(parse_signature_file(raw, str(path)).payload, str(path))


def join_parts(
    index: Path,
    trusted: "Union[Dict[str, TrustedKey], TrustPolicy]",
    out_dir: Path,
    *,
    limits: Limits = Limits(),
    allow_expired: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> JoinResult:
    """Join a verified part set into ``out_dir/NAME-VERSION.bundle.tar``.

    ``index`` is the part index or any part. The bundle is written while the verifier streams
    through the parts (each read once, wherever they lie: no second pass, no reflink needed),
    into a temporary file beside the destination; it appears under its final name only after
    every part and the whole bundle verified, the file was synced and read back (with its page
    cache dropped where the OS allows) with the verified SHA-256. A failed verification returns
    the report (``path`` None) and leaves nothing; an existing file is never overwritten.
    """
    index = Path(index)
    if index.is_dir() or part_index_for(index) is None:
        raise InputError(f"{index}: join takes a part index (NAME-VERSION.bundle.tar.ID.parts.json) or one of its parts")
    if not index.is_file():
        raise InputError(f"{index}: no such file")
    check_out_dir(Path(out_dir), "NAME-VERSION.bundle.tar")
    out_dir = Path(out_dir)
    idx_path = part_index_for(index)
    assert idx_path is not None
    try:
        subject = read_index_unverified(idx_path).subject  # only the name: verification reads it again
    except PartsError:
        subject = None  # the verifier says what is wrong with it
    final = out_dir / subject if subject else None
    if final is not None and (final.exists() or final.is_symlink()):
        raise OutputError(f"{final}: already exists; bundles are never overwritten")
    try:
        made = make_dirs(out_dir)
    except OSError as e:
        raise OutputError(f"{e.filename or out_dir}: cannot create the directory ({e.strerror or e})") from None
    prefix = f".{subject or 'bundle'}.partial-"
    try:
        remove_stale(out_dir, prefix)
        fd, tmp = make_workfile(out_dir, prefix)
    except OSError as e:
        remove_made_dirs(made)
        raise OutputError(f"{out_dir}: cannot write the bundle there ({e.strerror or e})") from None

    def write(view: memoryview) -> None:
        try:
            write_all(fd, view)
        except OSError as e:  # a disk-full here is about this host, not the parts: never a "read error"
            raise OutputError(f"{tmp}: cannot write ({e.strerror or e})") from None

    with removed_on_failure(tmp, made, out_dir):
        try:
            os.fchmod(fd, 0o644)
            report = verify_bundle(index, trusted, limits=limits, allow_expired=allow_expired, progress=progress,
                                   tee=write)
            if report.ok:
                os.fsync(fd)
        finally:
            os.close(fd)
        if not report.ok:
            tmp.unlink(missing_ok=True)
            remove_made_dirs(made)
            return JoinResult(None, report)
        assert report.parts is not None and report.sha256 is not None
        final = out_dir / report.parts.bundle
        if read_back_sha256(tmp) != report.sha256:
            raise OutputError(f"{tmp}: reads back different bytes than were written and verified; the disk is failing?")
        fsync_dir(out_dir)
        from .seal import _publish

        _publish(tmp, final)
        fsync_dir(out_dir)
    return JoinResult(final, report)


def read_back_sha256(path: Path, progress: Optional[Callable[[int], None]] = None) -> str:
    """SHA-256 of a file just written and synced, read back from the device: its page cache is
    dropped first (POSIX_FADV_DONTNEED, where the OS has it), so the bytes come from the medium,
    not from memory that still holds what was written."""
    import hashlib

    h = hashlib.sha256()
    fd = os.open(path, os.O_RDONLY)
    try:
        if hasattr(os, "posix_fadvise"):
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            except OSError:
                pass
        with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
            while True:
                chunk = f.read(CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                if progress is not None:
                    progress(len(chunk))
    finally:
        os.close(fd)
    return h.hexdigest()
