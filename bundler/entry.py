"""The `bundle` program's entry point: take SIGINT and SIGTERM first, then import the rest.

Importing the CLI (typer, rich, cryptography, the verifier) takes a few hundred milliseconds. A
Ctrl-C or a CI cancel in that window used to meet Python's defaults: a ``KeyboardInterrupt``
traceback from the middle of an import, or death by SIGTERM without a word (found by the
interrupt loop of tests/test_campaign_interrupts.py). Here the two signals are caught before any
of those imports, with the same rule as the CLI's own handler (the first one wins, any further
one is ignored): the import is abandoned, ``interrupted``/``terminated`` is printed, and the exit
code is 130/143, as for a command interrupted later (with ``--json``, after the same one JSON
document a later interrupt prints). Nothing has been written at that point, so there is nothing
to clean up. Standard library only until the handlers are in place.

It also owns two costs that are fixed per run and, on a 2 GiB bundle, are what separates
`bundle verify` from `openssl dgst -sha256` (docs/performance.md): the cyclic garbage collector
walking the hundred thousand objects the imports make (all of which live until exit), and the
interpreter's teardown of those modules at exit (about 50 ms). The collector is off during the
imports and their objects are then frozen out of its sight; the teardown is skipped only when
there is nothing to tear down (`_fast_exit`).
"""

from __future__ import annotations

import atexit
import gc
import os
import signal
import sys
import threading
from typing import Any


class _EarlySignal(KeyboardInterrupt):
    def __init__(self, signum: int) -> None:
        super().__init__(signum)
        self.signum = signum


def _early(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    raise _EarlySignal(signum)


def _stopped(signum: int, no_document_yet: bool) -> int:
    what = "terminated" if signum == signal.SIGTERM else "interrupted"
    # --json promises one JSON document on stdout, printed here only if none was made yet.
    if no_document_yet and json_mode(sys.argv[1:]):
        import json

        sys.stdout.write(json.dumps({"ok": False, "exit_code": 128 + signum,
                                     "error": {"class": "interrupted", "member": None, "message": what}}) + "\n")
        sys.stdout.flush()
    sys.stderr.write(what + "\n")
    sys.stderr.flush()
    return 128 + signum


def json_mode(args: list) -> bool:
    """Whether the command line asks for --json (before a ``--``, after which it is an operand)."""
    return "--json" in (args[:args.index("--")] if "--" in args else args)


def _fast_exit(code: Any) -> None:
    """Leave with ``os._exit`` when the interpreter's teardown has nothing to do but free memory.

    That is: an integer exit code, no thread but this one alive (a thread pool or a progress bar
    still running takes the ordinary exit, which joins it), no ``atexit`` callback registered but
    `logging`'s (imported by ``concurrent.futures``), which is run here (Ray, ``weakref.finalize``
    and ``multiprocessing`` each register one, and then the ordinary exit runs it), and stdout and
    stderr flushed. Every file the commands write is closed and fsynced before they return, so
    nothing is lost. When any of that does not hold, it returns and changes nothing."""
    if not isinstance(code, int) or isinstance(code, bool) or threading.active_count() != 1:
        return
    logging = sys.modules.get("logging")
    if getattr(atexit, "_ncallbacks", lambda: -1)() != (0 if logging is None else 1):
        return
    try:
        sys.stdout.flush()
        sys.stderr.flush()
    except (OSError, ValueError):  # a closed pipe: the ordinary exit reports it as it always did
        return
    if logging is not None:
        logging.shutdown()
    os._exit(code)


def main() -> int:
    """`bundle`: the CLI's ``main`` (which installs its own handlers and exits), reached only
    once its imports are done; a signal before that ends the program here."""
    signal.signal(signal.SIGINT, _early)
    signal.signal(signal.SIGTERM, _early)
    gc.disable()  # the imports below make objects that all live until exit: nothing to collect
    try:
        from bundler.cli import main as cli_main

        gc.freeze()  # ...so the collector never walks them again
        gc.enable()
        try:
            cli_main()  # replaces the handlers with the CLI's, then sys.exit()s
        except SystemExit as e:
            _fast_exit(0 if e.code is None else e.code)
            raise
    except KeyboardInterrupt as e:
        # _EarlySignal: in the imports, or before the CLI's handlers were in place; the CLI's
        # Interrupted: in the instant between its command's end and the exit.
        # No JSON document yet: the signal came before the CLI's handlers, or in the instant
        # between them and its first document (the CLI records each one it makes).
        cli = sys.modules.get("bundler.cli")
        state = getattr(cli, "_SIGNAL", {}) if cli is not None else {}
        return _stopped(getattr(e, "signum", signal.SIGINT), not (state.get("json_out") or state.get("said")))
    return 0


if __name__ == "__main__":
    sys.exit(main())
