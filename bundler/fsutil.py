"""Filesystem helpers shared by the stages that publish outputs: never replace, never half-write."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from pathlib import Path
from contextlib import contextmanager
from typing import Callable, Iterator, List, Optional, Tuple, Union

from .errors import OutputError


def rename_noreplace(src: Path, dst: Path) -> None:
    """rename(2) that fails instead of replacing ``dst`` (renameat2 RENAME_NOREPLACE on Linux)."""
    libc_name = ctypes.util.find_library("c")
    if libc_name:
        libc = ctypes.CDLL(libc_name, use_errno=True)
        fn = getattr(libc, "renameat2", None)
        if fn is not None:
            AT_FDCWD, RENAME_NOREPLACE = -100, 1
            if fn(AT_FDCWD, os.fsencode(src), AT_FDCWD, os.fsencode(dst), RENAME_NOREPLACE) == 0:
                return
            err = ctypes.get_errno()
            if err == 17:  # EEXIST
                raise OutputError(f"{dst}: already exists; not overwritten")
            if err not in (22, 38):  # EINVAL / ENOSYS: filesystem without renameat2 flags
                raise OSError(err, os.strerror(err), str(dst))
    if dst.exists():
        raise OutputError(f"{dst}: already exists; not overwritten")
    os.rename(src, dst)


def write_all(fd: int, data: Union[bytes, memoryview]) -> None:
    """All of ``data`` to ``fd``: os.write may write less than asked (a pipe, a signal, a full disk)."""
    view = memoryview(data)
    while view:
        view = view[os.write(fd, view):]


@contextmanager
def removed_on_failure(tmp: Path, made: List[Path], where: Optional[Path] = None) -> Iterator[None]:
    """Run the block that writes ``tmp`` and publishes it; if anything fails or interrupts it,
    remove ``tmp`` and the directories this run ``made`` (nothing half-written stays, under any
    name). An OSError becomes one `OutputError` line naming the file (or ``where``); anything
    else (a bundle error, Ctrl-C, SIGTERM) propagates unchanged after the cleanup."""
    try:
        yield
    except OSError as e:
        tmp.unlink(missing_ok=True)
        remove_made_dirs(made)
        raise OutputError(f"{e.filename or where or tmp}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        remove_made_dirs(made)
        raise


def fsync_dir(directory: Path) -> None:
    """Make a rename in ``directory`` durable. Best effort: FUSE and some file systems refuse a
    directory fsync, and the rename itself has happened either way."""
    try:
        dfd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY)
    except OSError:
        return
    try:
        os.fsync(dfd)
    except OSError:
        pass
    finally:
        os.close(dfd)


def remove_tree(path: Path) -> None:
    """``rm -rf path`` that finishes even when SIGINT or SIGTERM interrupts it.

    A work directory removed at the very end of a command (create's build directory, bundle
    run's private directory) took the signal half-way through `shutil.rmtree` and stayed, part
    removed, although the command had every chance to clean up (found by the interrupt loop of
    tests/test_campaign_interrupts.py). The CLI ignores every signal after the first, so the
    second pass runs to the end; then the interruption goes on its way."""
    import shutil

    try:
        shutil.rmtree(path, ignore_errors=True)
    except BaseException:
        shutil.rmtree(path, ignore_errors=True)
        raise


def make_workdir(parent: Path, prefix: str) -> Path:
    """A private (0700) temporary directory named ``PREFIX<pid>-XXXX`` under ``parent``.

    The pid in the name is what lets a later run tell a leftover of a killed run (SIGKILL leaves
    no chance to clean up) from the working directory of a run still going: see `remove_stale`.
    A signal (Ctrl-C, SIGTERM: exceptions here) that lands around the mkdir removes what the
    mkdir made before it propagates: `tempfile.mkdtemp` could be interrupted after making the
    directory and before returning its name, and then nobody knew to remove it.
    """
    return _make_new(Path(parent), prefix, lambda p: os.mkdir(p, 0o700), lambda p: os.rmdir(p))


def make_workfile(parent: Path, prefix: str) -> Tuple[int, Path]:
    """``(fd, path)`` of a new 0600 file named ``PREFIX<pid>-XXXX`` under ``parent``: a partial
    output (a bundle being sealed) that `remove_stale` can clear after a SIGKILL. Interrupted
    around its creation, it removes the file before the signal propagates (as `make_workdir`)."""
    fds: List[int] = []

    def create(p: Path) -> None:
        fds.append(os.open(p, os.O_RDWR | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600))

    def undo(p: Path) -> None:
        for fd in fds:
            os.close(fd)
        os.unlink(p)

    path = _make_new(Path(parent), prefix, create, undo)
    return fds[0], path


def _make_new(parent: Path, prefix: str, create: Callable[[Path], None], undo: Callable[[Path], None]) -> Path:
    import secrets

    for _ in range(100):
        path = parent / f"{prefix}{os.getpid()}-{secrets.token_hex(4)}"
        try:
            create(path)
            return path
        except FileExistsError:
            continue
        except BaseException:
            # Whatever exists under this name now is ours: the pid and 32 random bits name it.
            try:
                undo(path)
            except OSError:
                pass
            raise
    raise FileExistsError(f"{parent}: no free name for {prefix}{os.getpid()}-*")


def remove_stale(parent: Path, prefix: str) -> List[Path]:
    """Remove ``PREFIX<pid>-*`` directories and files under ``parent`` whose process is gone.

    A SIGKILLed or powered-off run leaves its partial outputs (a build directory of hundreds of
    MB, a half-written bundle of GBs) where it worked; the next run into the same place removes
    them. Only real directories and regular files (not symlinks) owned by this user are touched, and only when their
    pid names no living process; a directory of a live run, or of a reused pid, is left alone
    (merely ignored: every run makes a fresh one). Returns what was removed.
    """
    import shutil

    removed: List[Path] = []
    try:
        names = os.listdir(parent)
    except OSError:
        return removed
    for name in names:
        if not name.startswith(prefix):
            continue
        pid_text = name[len(prefix):].split("-", 1)[0]
        if not pid_text.isdigit() or int(pid_text) == os.getpid():
            continue
        path = Path(parent) / name
        try:
            st = os.lstat(path)
        except OSError:
            continue
        if not (stat.S_ISDIR(st.st_mode) or stat.S_ISREG(st.st_mode)) or st.st_uid != os.getuid():
            continue
        try:
            os.kill(int(pid_text), 0)
            continue  # alive (or not ours to signal): leave it
        except ProcessLookupError:
            pass
        except PermissionError:
            continue
        if stat.S_ISDIR(st.st_mode):
            shutil.rmtree(path, ignore_errors=True)
        else:
            try:
                os.unlink(path)
            except OSError:
                continue
        removed.append(path)
    return removed


def make_dirs(path: Path) -> List[Path]:
    """``mkdir -p path``, returning the directories it created, outermost first.

    A command that fails must leave nothing new behind, not even an empty ``--out`` (or
    ``--dest`` parent) that it made for an output that never came: the caller hands the list to
    `remove_made_dirs` on failure. Raises OSError like `Path.mkdir`.
    """
    path = Path(path)
    missing: List[Path] = []
    p = path
    while not p.exists() and not p.is_symlink() and p != p.parent:
        missing.append(p)
        p = p.parent
    if not p.is_dir():  # a file where a directory should be: say which, not "cannot create a/b/c"
        raise NotADirectoryError(20, os.strerror(20), str(p))
    made: List[Path] = []
    try:
        for d in reversed(missing):
            try:
                d.mkdir()
            except FileExistsError:
                if not d.is_dir():
                    raise
                continue  # another process made it meanwhile: theirs, not ours to remove
            made.append(d)
    except BaseException:
        remove_made_dirs(made)  # a/b made, a/b/c refused: a/b goes again
        raise
    return made


def remove_made_dirs(made: List[Path]) -> None:
    """Undo `make_dirs`: remove what it created, innermost first, where still empty.

    A directory that holds something now (kept builder logs, another run's output) stays. Never
    raises: it runs while another error is on its way out.
    """
    for d in reversed(made):
        try:
            d.rmdir()
        except OSError:
            return  # not empty (or gone): its parents are not empty either


def check_out_dir(out_dir: Path, what: str) -> None:
    """Refuse an ``--out`` that cannot be the directory it names, before anything is built.

    ``--out dist/m.tar`` used to become a directory called ``m.tar`` with the bundle inside;
    ``--out`` naming an existing file failed only after the build. ``what`` says what goes in it.
    """
    from .errors import InputError

    out_dir = Path(out_dir)
    if out_dir.name.lower().endswith(".tar"):
        raise InputError(f"--out {out_dir}: is a directory for {what}, not a file name; "
                         f"pass the directory (e.g. --out {out_dir.parent})")
    if out_dir.exists() and not out_dir.is_dir():
        raise OutputError(f"--out {out_dir}: exists and is not a directory; --out is the directory for {what}")
