"""Filesystem helpers shared by the stages that publish outputs: never replace, never half-write."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import stat
from pathlib import Path
from typing import List, Tuple

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


def make_workdir(parent: Path, prefix: str) -> Path:
    """A private (0700) temporary directory named ``PREFIX<pid>-XXXX`` under ``parent``.

    The pid in the name is what lets a later run tell a leftover of a killed run (SIGKILL leaves
    no chance to clean up) from the working directory of a run still going: see `remove_stale`.
    """
    import tempfile

    return Path(tempfile.mkdtemp(prefix=f"{prefix}{os.getpid()}-", dir=str(parent)))


def make_workfile(parent: Path, prefix: str) -> Tuple[int, Path]:
    """``(fd, path)`` of a new 0600 file named ``PREFIX<pid>-XXXX`` under ``parent``: a partial
    output (a bundle being sealed) that `remove_stale` can clear after a SIGKILL."""
    import tempfile

    fd, name = tempfile.mkstemp(prefix=f"{prefix}{os.getpid()}-", dir=str(parent))
    return fd, Path(name)


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
