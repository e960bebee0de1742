"""Child processes never outlive `bundle`.

A CI runner that cancels a job, `timeout`, or an operator's `kill -9` may end `bundle` without
any chance to clean up. Its children (build workers deep in a TensorRT build, the loader) would
then run on, hold the inherited stdout so that the harness capturing it hangs, and keep writing
into directories that are being cleaned. Linux's PR_SET_PDEATHSIG has the kernel SIGKILL a child
when its parent dies, whatever killed the parent.
"""

from __future__ import annotations

import ctypes
import ctypes.util
import os
import signal
import sys
from typing import Callable, Optional

PR_SET_PDEATHSIG = 1


def die_with_parent() -> Optional[Callable[[], None]]:
    """A function for the child to call first thing (a ``preexec_fn``, a pool initializer) that
    makes it get SIGKILL when this process dies; None where the platform has no such call.

    The parent's pid is taken now, in the parent: a parent that died between the fork and the
    child's call would otherwise go unnoticed (the child is then re-parented), so the child
    checks it and exits at once.
    """
    if not sys.platform.startswith("linux"):
        return None
    try:
        prctl = ctypes.CDLL(ctypes.util.find_library("c") or "libc.so.6", use_errno=True).prctl
    except (OSError, AttributeError):
        return None
    parent = os.getpid()

    def set_pdeathsig() -> None:
        prctl(PR_SET_PDEATHSIG, int(signal.SIGKILL))
        if os.getppid() != parent:
            os._exit(1)

    return set_pdeathsig
