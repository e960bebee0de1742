"""Child processes never outlive `bundle`.

A CI runner that cancels a job, `timeout`, or an operator's `kill -9` may end `bundle` without
any chance to clean up. Its children (build workers deep in a TensorRT build, the loader) would
then run on, hold the inherited stdout so that the harness capturing it hangs, and keep writing
into directories that are being cleaned. Linux's PR_SET_PDEATHSIG has the kernel SIGKILL a child
when its parent dies, whatever killed the parent.
"""

from __future__ import annotations

import contextlib
import ctypes
import ctypes.util
import os
import signal
import sys
import threading
from typing import Callable, Iterator, List, Optional

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


@contextlib.contextmanager
def signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the length of the block, then hand the first one that came
    to the handler that was in place (the CLI's raises ``Interrupted``).

    Why: a handler that raises does so at whatever bytecode the main thread is at, and inside
    ``concurrent.futures.wait`` that can be between two lock operations of its own: the futures'
    locks it holds while it checks them stay taken, the pool's manager thread then blocks on one
    when it cancels the queue, and the interpreter's exit waits for that thread for ever
    (`bundle create -j2` hung after "interrupted" about once in twelve Ctrl-Cs under load). Held
    for one short block at a time, the signal is raised between blocks instead, where no lock is
    taken. Outside the main thread, where handlers cannot be set, it holds nothing.
    """
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    came: List[int] = []

    def hold(signum: int, frame: object) -> None:
        came.append(signum)

    before = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in before:
        signal.signal(s, hold)
    try:
        yield
    finally:
        for s, handler in before.items():
            signal.signal(s, handler)
        if came:  # delivered even when the block failed: the signal is what the user did last
            handler = before[came[0]]
            if callable(handler):
                handler(came[0], None)
            elif handler == signal.SIG_DFL:
                signal.raise_signal(came[0])
