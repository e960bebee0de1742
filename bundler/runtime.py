"""The runtime side on hosts where bundler is installed: the standalone verifier and `bundle run`.

`bundle run` never executes code it found in a bundle. It runs the loader and the verifier that
were installed with trt-bundler (the same files every bundle carries as ``runtime/``), copied into
a private 0700 directory, with an isolated interpreter (``python -I``), so nothing beside them can
be imported. A tar is verified and extracted by the library into that private directory first; a
directory is verified by the loader itself, through the installed verifier. Either way the loader
then reads each file once and uses only bytes whose digest the verification proved
(runtime_stub/loader.py, docs/security.md).
"""

from __future__ import annotations

import os
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import TYPE_CHECKING, Dict, List, Optional, Union

from .errors import InputError, OutputError, error_for_code
from .fsutil import make_workdir, remove_stale, remove_tree
from .proc import die_with_parent
from .signing import TrustedKey
from runtime_stub.verify import TrustPolicy

if TYPE_CHECKING:  # the verifier is imported when a bundle is run, not when this module is
    from .verify import StateOptions

VERIFIER = "verify.py"
LOADER = "loader.py"
RUN_PREFIX = "bundle-run-"


def _stub_bytes(name: str) -> bytes:
    return resources.files("runtime_stub").joinpath(name).read_bytes()


def verifier_bytes() -> bytes:
    return _stub_bytes(VERIFIER)


def loader_bytes() -> bytes:
    return _stub_bytes(LOADER)


def _write_new(dest: Path, data: bytes, mode: int) -> None:
    """Write a new file (never overwriting, never through a symlink)."""
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise OutputError(f"{dest}: already exists; not overwritten") from None
    except OSError as e:
        raise OutputError(f"{dest}: cannot write ({e.strerror})") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def write_verifier(dest: Path) -> None:
    """Write the standalone verifier to a new file (never overwriting), mode 0755."""
    _write_new(dest, verifier_bytes(), 0o755)


def _state_flags(state: Optional[StateOptions], record: bool) -> List[str]:
    """The loader's flags for the host state, passed on to the verifier it runs."""
    if state is None:
        return []
    flags = ["--state", str(state.path)]
    if record:
        flags.append("--record")
    if state.allow_downgrade:
        flags.append("--allow-downgrade")
    if state.max_age is not None:
        flags += ["--max-age", str(state.max_age)]
    return flags


def run_loader(bundle: Path, trusted: "Union[Dict[str, TrustedKey], TrustPolicy]", trust_paths: List[Path],
               args: List[str], policy: Optional[Path] = None, allow_expired: bool = False,
               state: Optional[StateOptions] = None) -> int:
    """Verify ``bundle`` (a tar or an extracted directory), then run the installed loader's
    ``ARGS`` on it with ``python -I``. Returns the loader's exit code. ``allow_expired`` goes
    to both verifications (the library's of a tar, the loader's own of the directory).

    With ``state`` the bundle is checked against the host state and recorded there, like
    `extract`: a tar by the library once it is extracted into the private directory, a directory
    by the verifier the loader runs (``--record``). The loader's own verification checks the
    same state again (the bundle is then the accepted one), never recording a second time.

    The private working directory is removed on success, failure, Ctrl-C and SIGTERM (the CLI
    turns SIGTERM into an exception); one left by a SIGKILLed run is removed by the next run.
    """
    from .verify import verify_bundle

    bundle = Path(bundle)
    if not args:
        raise InputError("give the loader command after --, e.g. bundle run B --trust K -- selftest")
    if not bundle.is_dir() and not bundle.is_file():
        raise InputError(f"{bundle}: no such bundle file or directory")
    tmp = Path(tempfile.gettempdir())
    remove_stale(tmp, RUN_PREFIX)
    try:
        work = make_workdir(tmp, RUN_PREFIX)
    except OSError as e:
        raise OutputError(f"{tmp}: cannot create a private working directory ({e.strerror})") from None
    try:
        loader, verifier = work / LOADER, work / VERIFIER
        _write_new(loader, loader_bytes(), 0o600)
        _write_new(verifier, verifier_bytes(), 0o600)
        root = bundle
        record_in_loader = state is not None and state.record
        if bundle.is_file():
            root = work / "bundle"
            report = verify_bundle(bundle, trusted, extract_to=root, allow_expired=allow_expired, state=state)
            if not report.ok:
                assert report.error is not None
                raise error_for_code(report.exit_code, report.error.message, report.error.member)
            record_in_loader = False  # recorded above, once extracted
        cmd = [sys.executable, "-I", str(loader), args[0], "--bundle", str(root), "--verifier", str(verifier)]
        cmd += _state_flags(state, record_in_loader)
        for t in trust_paths:
            cmd += ["--trust", str(t)]
        if policy is not None:
            cmd += ["--policy", str(policy)]
        if allow_expired:
            cmd.append("--allow-expired")
        child = _start_child(cmd + args[1:])
        try:
            return child.wait()
        except BaseException:  # Ctrl-C (the loader got it too: a moment to finish), SIGTERM
            try:
                child.wait(0.25)
            except subprocess.TimeoutExpired:
                pass
            child.kill()
            child.wait()
            raise
    finally:
        remove_tree(work)


def _start_child(cmd: List[str]) -> subprocess.Popen:
    """Start ``cmd`` so that a signal can never leave it running unseen.

    `subprocess.run` has no object for its child until Popen returns; SIGINT or SIGTERM in the
    fork/exec window raised from inside Popen, and the loader ran on, without a parent, in a
    directory that was being removed (found by the interrupt loop of
    tests/test_campaign_interrupts.py). The two signals are blocked while it starts (the child
    unblocks them before exec), so one that comes meanwhile is taken only once the Popen exists,
    and ends the child too.
    """
    import signal

    sigs = {signal.SIGINT, signal.SIGTERM}
    old = signal.pthread_sigmask(signal.SIG_BLOCK, sigs)
    pdeath = die_with_parent()

    def in_child() -> None:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        if pdeath is not None:
            pdeath()

    try:
        child = subprocess.Popen(cmd, preexec_fn=in_child)
    except BaseException:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)
        raise
    try:
        signal.pthread_sigmask(signal.SIG_SETMASK, old)  # a signal that came meanwhile is raised here
    except BaseException:
        child.kill()
        child.wait()
        raise
    return child
