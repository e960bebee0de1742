"""How the `bundle` program leaves (bundler/entry.py).

It skips the interpreter's teardown (``os._exit``) when that teardown would only free memory:
about 50 ms of every run, which on a 2 GiB bundle is part of what separates `bundle verify` from
`openssl dgst -sha256` (docs/performance.md). These tests pin the other half of that rule: when
something is left to do at exit (an ``atexit`` callback such as Ray's shutdown, a thread still
running, a log handler holding text), the ordinary exit runs, so nothing is lost or orphaned;
and when the fast exit is taken, every byte the command printed still arrives.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

from conftest import REPO


def _bundle_in_process(tmp_path: Path, prelude: str, *argv: str) -> subprocess.CompletedProcess:
    """Run the real entry point with ``argv``, after ``prelude`` (Python) has run in the same
    process: how a library the command imports would register its own exit work."""
    code = (f"import sys\n{prelude}\nsys.argv = ['bundle', *{list(argv)!r}]\n"
            "from bundler.entry import main\nsys.exit(main())\n")
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=tmp_path, timeout=120)


def test_an_atexit_callback_registered_before_the_exit_still_runs(tmp_path: Path) -> None:
    flag = tmp_path / "ran"
    p = _bundle_in_process(tmp_path, f"import atexit\natexit.register(lambda: open({str(flag)!r}, 'w').write('x'))",
                           "verify", "missing.bundle.tar", "--trust", "missing.pub")
    assert p.returncode == 4, p.stderr  # the command's own verdict is kept
    assert p.stderr == "error [key]: missing.pub: no such public key\n"
    assert flag.read_text() == "x"


def test_a_thread_still_running_is_waited_for(tmp_path: Path) -> None:
    flag = tmp_path / "done"
    prelude = ("import threading, time\n"
               f"threading.Thread(target=lambda: (time.sleep(0.5), open({str(flag)!r}, 'w').write('x'))).start()")
    p = _bundle_in_process(tmp_path, prelude, "verify", "missing.bundle.tar", "--trust", "missing.pub")
    assert p.returncode == 4, p.stderr
    assert flag.read_text() == "x"


def test_a_log_handler_is_flushed(tmp_path: Path) -> None:
    # concurrent.futures imports logging, whose atexit hook flushes handlers: the fast exit runs
    # that hook itself rather than skipping it.
    log = tmp_path / "log.txt"
    prelude = ("import logging, logging.handlers\n"  # a handler that holds records until it is closed
               f"h = logging.handlers.MemoryHandler(100, target=logging.FileHandler({str(log)!r}))\n"
               "logging.getLogger().addHandler(h)\nlogging.getLogger().warning('before the command')")
    p = _bundle_in_process(tmp_path, prelude, "verify", "missing.bundle.tar", "--trust", "missing.pub")
    assert p.returncode == 4, p.stderr
    assert log.read_text() == "before the command\n"


def test_a_long_report_arrives_whole_through_a_pipe(tiny_bundle: Path, keys: dict) -> None:
    # The fast exit flushes stdout first: a JSON report of a real bundle parses to its end.
    p = subprocess.run([sys.executable, "-m", "bundler.cli", "verify", str(tiny_bundle), "--trust",
                        str(keys["release"]["pub"]), "--json"], capture_output=True, text=True, cwd=REPO, timeout=120)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["ok"] is True and doc["files"], doc
