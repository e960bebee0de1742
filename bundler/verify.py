"""`bundle verify` and `bundle extract`: the shared verification pipeline, plus extraction.

The pipeline itself (signature first, then every member hashed as it streams, then the manifest,
engine headers and SHA256SUMS; the order is in docs/bundle-format.md) is defined once, in
`runtime_stub/verify.py`, the standard-library file every bundle carries as `runtime/verify.py`.
The library runs that very code, and adds two things the stand-alone file does without:

- a faster signature check through `cryptography` (`signing.EcdsaChecker`: beyond a few
  signatures, where it pays for its import), cross-checked against
  the pure-Python one in the tests;
- extraction: a `Sink` that writes each verified byte into a private staging directory, which is
  moved into place only when every check has passed.
"""

from __future__ import annotations

import os
import shutil
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    MAX_MANIFEST_SIZE,
    MAX_SIGNATURE_SIZE,
    MAX_SIGNATURES,
    EngineReport,
    Failure,
    FileReport,
    GpuReport,
    HostReport,
    SignerReport,
    Sink,
    StateOptions,
    StateReport,
    TrustPolicy,
    VerifyReport,
    apply_host_state,
    host_report,
    installed_runtimes,
)
from runtime_stub.verify import verify_bundle as _verify_bundle

from .archive import CHUNK, DirectFile, Limits
from .errors import InputError, OutputError
from .fsutil import fsync_dir, make_dirs, make_workdir, remove_made_dirs, remove_stale, rename_noreplace
from .signing import EcdsaChecker, TrustedKey

DIRECT_MIN = CHUNK  # members that fill a whole reader chunk are written with O_DIRECT


class _ExtractSink(Sink):
    """Writes members under a fresh staging directory, with O_NOFOLLOW|O_EXCL at every step.

    Paths were already checked by the reader; walking by directory file descriptors means that
    even a racing local attacker cannot redirect a write through a symlink.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        # Leftovers of an extraction into the same place that was SIGKILLed are removed first.
        remove_stale(dest.parent, f".{dest.name}.staging-")
        self.staging = make_workdir(dest.parent, f".{dest.name}.staging-")
        try:
            self._root_fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        except BaseException:  # a signal or an error between mkdir and here: the caller has no sink to abort
            shutil.rmtree(self.staging, ignore_errors=True)
            raise
        self._fd: Optional[int] = None
        self._out: Optional[DirectFile] = None

    def _dir_fd(self, parts: List[str]) -> int:
        fd = os.dup(self._root_fd)
        for p in parts:
            try:
                os.mkdir(p, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    def _failed(self, rel: str, e: OSError) -> OutputError:
        # A write error is about this host (disk full, name too long for this filesystem), not
        # the bundle: OUTPUT, never the ARCHIVE "read error" that _run makes of a bare OSError.
        return OutputError(f"{self.dest}: cannot write {rel or '.'}: {e.strerror or e}")

    def mkdir(self, rel: str) -> None:
        if rel:
            try:
                os.close(self._dir_fd(rel.split("/")))
            except OSError as e:
                raise self._failed(rel, e) from None

    def begin(self, rel: str, mode: int) -> None:
        parts = rel.split("/")
        try:
            dfd = self._dir_fd(parts[:-1])
            try:
                perm = 0o755 if mode & 0o111 else 0o644
                self._fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, perm, dir_fd=dfd)
                os.fchmod(self._fd, perm)
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._failed(rel, e) from None

    def write(self, chunk: memoryview) -> None:
        assert self._fd is not None
        try:
            if self._out is None:
                # A member that arrives in whole reader chunks is big: write it with O_DIRECT
                # (docs/performance.md); small ones go through the page cache as before.
                self._out = DirectFile(self._fd, direct=len(chunk) >= DIRECT_MIN)
            self._out.write(chunk)
        except OSError as e:
            raise self._failed("a member", e) from None

    def end(self) -> None:
        """A member is complete: make its bytes durable (fsync) before the file is closed, so
        that the rename in `commit` can never publish a file whose data a power loss would lose
        (O_DIRECT writes skip the page cache, not the file's size and block map)."""
        if self._fd is not None:
            try:
                os.fsync(self._fd)
            except OSError as e:
                raise self._failed("a member", e) from None
        self._close()

    def _close(self) -> None:
        # Forget the number before closing it: a signal that lands right after close() must not
        # make abort() close it again (EBADF, or worse, another file that took the number).
        self._out = None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _close_root(self) -> None:
        fd, self._root_fd = self._root_fd, -1  # never close a number twice
        if fd >= 0:
            os.close(fd)

    def commit(self) -> None:
        """Publish the staging directory as DEST. Every file was synced by `end`; here every
        directory of the tree is synced (their entries), then the rename, then DEST's parent (the
        rename itself): after a power loss DEST is either absent or whole."""
        self.end()
        os.fchmod(self._root_fd, 0o755)  # mkdtemp made it 0700
        for sub, _dirs, _files in os.walk(self.staging):
            if sub != str(self.staging):
                fsync_dir(Path(sub))
        os.fsync(self._root_fd)
        self._close_root()
        rename_noreplace(self.staging, self.dest)
        fsync_dir(self.dest.parent)

    def abort(self) -> None:
        """Remove the staging directory. Runs while another error (or a signal) is on its way
        out, so nothing here may raise in its place."""
        for step in (self._close, self._close_root):
            try:
                step()
            except OSError:
                pass
        shutil.rmtree(self.staging, ignore_errors=True)



def verify_bundle(
    path: Path,
    trusted: "Union[Dict[str, TrustedKey], TrustPolicy]",
    *,
    limits: Limits = Limits(),
    require_host: bool = False,
    extract_to: Optional[Path] = None,
    progress: Optional[Callable[[int, int], None]] = None,
    allow_expired: bool = False,
    now: Optional[float] = None,
    state: Optional[StateOptions] = None,
    tee: Optional[Callable[[memoryview], None]] = None,
) -> VerifyReport:
    """Verify a bundle (a tar, an extracted directory, or a split bundle's part index or any
    of its parts) against trusted keys; optionally extract a tar or a part set into ``extract_to``.
    ``tee`` receives a part set's bytes as they stream (`bundler.parts.join`).

    With ``state``, a verified bundle is also checked against the host state (rollback,
    equal-version conflict, --max-age; a refusal is a failed report, exit 18) and, with
    ``state.record``, remembered there, under the state's lock, after ``extract_to`` was
    published: a refused bundle is never extracted, an extracted one is always recorded.

    Never raises for a bad bundle: the report carries the failure, its class and exit code.
    Raises `InputError`/`OutputError` for problems with the request itself (no such file,
    destination exists, the disk said no, an unreadable state file), which are not findings
    about the bundle.
    ``allow_expired`` accepts a signature past its signed expiry (``report.expired_accepted``);
    ``now`` (seconds since the epoch) replaces the host clock for that check.
    """
    path = Path(path)
    sink: Optional[_ExtractSink] = None
    made: List[Path] = []  # parents of DEST this extraction created (mkdir -p), removed if it fails
    if extract_to is not None and path.is_dir():
        raise InputError(f"{path}: is a directory already; extract takes a bundle tar (verify checks a directory)")
    if extract_to is not None and path.is_file():
        extract_to = Path(extract_to)
        if extract_to.exists() or extract_to.is_symlink():
            raise OutputError(f"{extract_to}: already exists; extraction never overwrites")
        try:
            made = make_dirs(extract_to.parent)
        except OSError as e:
            raise OutputError(f"{e.filename or extract_to.parent}: cannot create the directory ({e.strerror or e})") from None
        try:
            sink = _ExtractSink(extract_to)
        except OSError as e:
            remove_made_dirs(made)
            raise OutputError(f"{extract_to.parent}: cannot create a staging directory there ({e.strerror})") from None
        except BaseException:  # Ctrl-C/SIGTERM while the sink was being made: it cleaned up after itself
            remove_made_dirs(made)
            raise
    try:
        report = _verify_bundle(path, trusted, limits, require_host, sink=sink, progress=progress, ecdsa=EcdsaChecker(),
                                allow_expired=allow_expired, now=now, tee=tee)
        published = False

        def publish() -> None:
            nonlocal published
            if sink is not None:
                sink.commit()
                published = True

        if state is not None:
            apply_host_state(report, state, publish)  # publishes inside the state's lock, if it accepts
        elif report.ok:
            publish()
        if sink is not None:
            if report.ok and published:
                report.extracted_to = str(extract_to)
            else:
                sink.abort()
                remove_made_dirs(made)
    except BaseException:
        if sink is not None:
            sink.abort()
        remove_made_dirs(made)
        raise
    return report
