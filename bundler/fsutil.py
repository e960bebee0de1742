"""Filesystem helpers shared by the stages that publish outputs: never replace, never half-write."""

from __future__ import annotations

import ctypes
import ctypes.util
import os
from pathlib import Path

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
