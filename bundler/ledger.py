"""The signing ledger: a local, append-only, hash-chained record of every seal and countersign.

Why: a signature proves which key signed, not that the signing went through the official
process. Anyone holding the release key (a copy on a laptop, a stolen backup) can sign a bundle
that verifies everywhere. The release machines therefore write one line per signing into a
ledger they keep, and each signature's statement records the ledger head its signing extended
(`predicate.ledger`). `bundle audit --ledger` then flags a valid signature the ledger does not
know (signed outside the process) and a ledger entry whose bundle is not where the releases are
kept. The ledger detects; it cannot prevent: a key holder can always sign without it.

The format and the chain rules are in docs/ledger.md and are checked by `check_ledger` in the
shared verification code (runtime_stub/verify.py), which this module's writer also runs before
every append: a broken ledger is never extended (exit 25). Writers take an exclusive `flock`
on the ledger file itself (the file is only ever appended to, never replaced, so the lock and
the data are one inode); readers take a shared one. Each entry is one `write(2)` of one line
with O_APPEND, then `fsync`. A ledger is created only by `bundle ledger init`: a mistyped path
or a missing mount must fail, not silently start a second ledger.
"""

from __future__ import annotations

import contextlib
import io
import os
import socket
import stat
import time
from pathlib import Path
from typing import Iterator, Optional

from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    LEDGER_FORMAT,
    LEDGER_GENESIS_PREV,
    LedgerCheck,
    LedgerEntry,
    LedgerError,
    LedgerHead,
    check_ledger,
    ledger_hash,
    ledger_line,
)

from . import __version__
from .errors import InputError, OutputError
from .fsutil import fsync_dir, write_all

LEDGER_ENV = "BUNDLE_LEDGER"
_TIME = "%Y-%m-%dT%H:%M:%SZ"


def ledger_path(flag: Optional[Path]) -> Optional[Path]:
    """The ledger a signing command writes to: ``--ledger``, else ``BUNDLE_LEDGER``, else none.

    There is no implicit default (such as a per-user file): a ledger nobody configured is not
    the official record an auditor checks, it would make every seal depend on a file nobody
    asked for, and it would break reproducible sealing (the head goes into the statement). The
    release environment sets ``BUNDLE_LEDGER``; `bundle audit` finds what was signed without it.
    """
    if flag is not None:
        return Path(flag)
    env = os.environ.get(LEDGER_ENV)
    return Path(env) if env else None


def _who() -> str:
    try:
        import pwd

        return pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        return str(os.getuid()) if hasattr(os, "getuid") else ""




def init_ledger(path: Path) -> LedgerHead:
    """Create a new ledger holding only its init entry (a random 128-bit id names the ledger
    in every later entry and in every statement that records one of its heads). Never
    replaces a file: an existing path is `OutputError` (exit 6)."""
    path = Path(path)
    entry = {"seq": 0, "prev": LEDGER_GENESIS_PREV, "time": time.strftime(_TIME, time.gmtime()), "event": "init",
             "ledger": os.urandom(16).hex(), "format": LEDGER_FORMAT, "host": socket.gethostname(), "user": _who(),
             "tool": f"trt-bundler {__version__}"}
    line = ledger_line(entry)
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    except FileExistsError:
        raise OutputError(f"{path}: already exists; a ledger is never replaced") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot create the ledger ({e.strerror or e})") from None
    try:
        try:
            write_all(fd, line)
            os.fchmod(fd, 0o644)  # readable by auditors whatever the umask; appended to by the release account
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        path.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"{path}: cannot write the ledger ({e.strerror or e})") from None
        raise
    fsync_dir(path.parent)
    return LedgerHead(entry["ledger"], 0, ledger_hash(line))


@contextlib.contextmanager
def _locked(path: Path, exclusive: bool) -> Iterator[int]:
    """The ledger's descriptor under a shared (readers) or exclusive (the appender) flock.
    Opened non-blocking first so a FIFO in its place cannot hang us, and refused unless it is a
    regular file. The kernel drops the lock when the descriptor closes, also on SIGKILL."""
    import fcntl

    flags = (os.O_RDWR | os.O_APPEND) if exclusive else os.O_RDONLY
    try:
        fd = os.open(path, flags | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{path}: no such ledger; create it once with `bundle ledger init {path}` (a ledger is never "
                         "created implicitly: a mistyped path must not start a second one)") from None
    except OSError as e:
        raise (OutputError if exclusive else InputError)(f"{path}: cannot open the ledger ({e.strerror or e})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: not a regular file; a ledger is a file made by `bundle ledger init`")
        os.set_blocking(fd, True)
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)  # a signal still interrupts the wait
        yield fd
    finally:
        os.close(fd)


def _check(fd: int, path: Path) -> LedgerCheck:
    os.lseek(fd, 0, os.SEEK_SET)
    reader = io.BufferedReader(io.FileIO(fd, "rb", closefd=False), buffer_size=1 << 20)
    try:
        return check_ledger(reader, str(path))
    except OSError as e:
        raise InputError(f"{path}: cannot read the ledger ({e.strerror or e})") from None


def read_ledger(path: Path) -> LedgerCheck:
    """Check a ledger's chain under a shared lock (appends wait; other readers do not)."""
    with _locked(Path(path), exclusive=False) as fd:
        return _check(fd, Path(path))


def verify_ledger(path: Path, head: Optional[str] = None) -> LedgerCheck:
    """`bundle ledger verify`: the chain must hold (`LedgerError`, exit 25, naming the first
    broken entry by number and line), and with ``head`` (an entry hash recorded earlier, e.g.
    in a signed audit report) the ledger must still contain that entry: a chain alone cannot
    show that entries were cut off its end, or that the whole file was rewritten."""
    chk = read_ledger(path)
    if not chk.ok:
        raise chk.error()
    if head is not None:
        want = head.strip().lower()
        if want not in chk.hashes:
            raise LedgerError(f"{path}: no entry has hash {head} (the head recorded earlier): entries were removed "
                              f"from its end, or the ledger was rewritten; its head now is entry {len(chk.hashes) - 1}")
    return chk


def head_for_signing(path: Path) -> LedgerHead:
    """The head a signing records in its statement: the last entry of a ledger whose chain
    holds. A broken ledger is never extended (exit 25): it needs a person, not another entry."""
    chk = read_ledger(path)
    if not chk.ok:
        raise chk.error()
    head = chk.head
    assert head is not None
    return head


def record_signing(path: Path, *, event: str, key_id: str, name: str, version: str, bundle_sha256: str,
                   content_digest: str, signature: str, signature_sha256: str, extends: LedgerHead,
                   expires: Optional[str]) -> LedgerHead:
    """Append one signing entry; return its position. Called once the signed tar is complete
    and synced, and before it is published: a bundle that appears was always recorded first
    (if publishing then fails, the entry names a signing whose bundle never appeared, which an
    audit reports as missing; the other order would let a bundle exist that the ledger does not
    know). Under the exclusive lock the whole chain is checked again, the entry goes after the
    current last one (``extends`` may be older than that when signings overlapped: both are
    recorded, docs/ledger.md), as one write, then fsync. A failed write is cut back off."""
    path = Path(path)
    with _locked(path, exclusive=True) as fd:
        chk = _check(fd, path)
        if not chk.ok:
            raise chk.error()
        if chk.id != extends.id or extends.seq >= len(chk.hashes) or chk.hashes[extends.seq] != extends.sha256:
            raise LedgerError(f"{path}: entry {extends.seq}, the head this signing recorded, is no longer in the "
                              "ledger (it was replaced or rewritten meanwhile)")
        entry = {
            "seq": len(chk.hashes), "prev": chk.hashes[-1], "time": time.strftime(_TIME, time.gmtime()),
            "event": event, "ledger": chk.id, "key_id": key_id, "name": name, "version": version,
            "bundle_sha256": bundle_sha256, "content_digest": content_digest, "signature": signature,
            "signature_sha256": signature_sha256,
            "extends": {"id": extends.id, "seq": extends.seq, "sha256": extends.sha256},
            "expires": expires, "host": socket.gethostname(), "user": _who(), "tool": f"trt-bundler {__version__}",
        }
        line = ledger_line(entry)
        size = os.fstat(fd).st_size
        try:
            write_all(fd, line)
            os.fsync(fd)
        except OSError as e:
            try:
                os.ftruncate(fd, size)  # never leave a torn line: the next append would refuse the ledger
            except OSError:
                pass
            raise OutputError(f"{path}: cannot append to the ledger ({e.strerror or e})") from None
        return LedgerHead(chk.id or "", entry["seq"], ledger_hash(line))
