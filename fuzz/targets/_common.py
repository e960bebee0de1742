"""What every atheris target shares: the import path, the figures it writes, the fuzzing loop.

A target module defines ``check(data: bytes) -> bool`` (True: the input was accepted, False: it
was refused with one of the documented errors) and lets any other exception propagate: atheris
reports that as a crash and saves the input. ``check`` runs without atheris too, which is how
tests/test_fuzz_regressions.py replays the inputs kept under fuzz/regressions/.
"""

from __future__ import annotations

import importlib
import json
import os
import resource
import sys
import time
from pathlib import Path
from typing import Callable, Sequence

REPO = Path(__file__).resolve().parents[2]
if str(REPO) not in sys.path:
    sys.path.insert(0, str(REPO))
FUZZ = REPO / "fuzz"
FUZZ_KEY = FUZZ / "keys" / "fuzz.pub"  # trusted by the tar target; its private key was thrown away


class MemFile:
    """A file that lives in memory and dies with the process (``memfd_create``), reachable by a
    path (``/proc/self/fd/N``) for the functions that take one. libFuzzer ends the process with
    exit(), so a temporary file or directory would be left behind after every run."""

    def __init__(self, name: str) -> None:
        self.fd = os.memfd_create(name)
        self.path = Path(f"/proc/self/fd/{self.fd}")

    def write(self, data: bytes) -> Path:
        os.ftruncate(self.fd, 0)
        os.pwrite(self.fd, data, 0)
        return self.path


class Figures:
    """Inputs tried, accepted and refused, the slowest input and the peak RSS, written to
    ``$FUZZ_FIGURES`` once a second, and after every input in the last two seconds of a run with
    ``-max_total_time`` (libFuzzer ends the process with exit(): no Python exit hook runs)."""

    def __init__(self, target: str) -> None:
        self.target = target
        self.tried = self.accepted = 0
        self.worst_s = 0.0
        self.worst_len = 0
        self.path = os.environ.get("FUZZ_FIGURES")
        self._next = time.monotonic() + 1.0
        limit = [a.split("=", 1)[1] for a in sys.argv if a.startswith("-max_total_time=")]
        # in the last two seconds of a timed run, write after every input: the count is then exact
        self._every_input_after = time.monotonic() + int(limit[-1]) - 2 if limit and limit[-1].isdigit() else float("inf")

    def record(self, accepted: bool, seconds: float, length: int) -> None:
        self.tried += 1
        self.accepted += bool(accepted)
        if seconds > self.worst_s:
            self.worst_s, self.worst_len = seconds, length
        now = time.monotonic()
        if self.path and (now >= self._next or now >= self._every_input_after):
            self.flush()
            self._next = time.monotonic() + 1.0

    def flush(self) -> None:
        doc = {"target": self.target, "tried": self.tried, "accepted": self.accepted,
               "rejected": self.tried - self.accepted, "worst_s": round(self.worst_s, 4),
               "worst_input_bytes": self.worst_len,
               "peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1)}
        tmp = f"{self.path}.tmp"
        with open(tmp, "w") as f:
            json.dump(doc, f)
        os.replace(tmp, self.path)


def main(target: str, check: Callable[[bytes], bool], instrument: Sequence[str], *,
         also_import: Sequence[str] = (), functions_of: Sequence[str] = ()) -> None:
    """Import the modules ``instrument`` names with atheris's coverage instrumentation (every
    module of their top-level packages is instrumented), then ``also_import`` inside the same
    hook (so that what they import from those packages is instrumented, not they), instrument
    the functions and methods of the ``functions_of`` modules in place (a part of a large
    package: instrumenting all of numpy costs 6 s at every start), and fuzz ``check`` under
    libFuzzer's command line (``-max_total_time=``, corpus directories, ``-merge=1``...)."""
    import inspect

    import atheris

    with atheris.instrument_imports(include=sorted({m.split(".")[0] for m in instrument})):
        for name in list(instrument) + list(also_import):
            importlib.import_module(name)
    for name in functions_of:
        mod = importlib.import_module(name)
        for obj in list(vars(mod).values()):
            funcs = [obj] if inspect.isfunction(obj) else (
                [f for f in vars(obj).values() if inspect.isfunction(f)] if inspect.isclass(obj) else [])
            for f in funcs:
                if getattr(f, "__module__", None) == name:
                    atheris.instrument_func(f)
    figures = Figures(target)
    survey = os.environ.get("FUZZ_KEEP_GOING")  # a directory: record each kind of crash there and go on
    kinds: dict = {}

    def one(data: bytes) -> None:
        t0 = time.perf_counter()
        try:
            accepted = check(data)
        except Exception as e:  # noqa: BLE001 - only in survey mode; otherwise re-raised for libFuzzer
            if not survey:
                raise
            kind = f"{type(e).__name__}-{_where(e)}"
            kinds[kind] = kinds.get(kind, 0) + 1
            if kinds[kind] <= 3:
                import hashlib

                Path(survey, f"{kind}-{hashlib.sha1(data).hexdigest()[:12]}").write_bytes(data)
            accepted = False
        figures.record(accepted, time.perf_counter() - t0, len(data))

    atheris.Setup(sys.argv, one)
    atheris.Fuzz()


def _where(e: BaseException) -> str:
    """The innermost frame of the project's own code (or the last one) a crash went through."""
    import traceback

    frames = traceback.extract_tb(e.__traceback__)
    own = [f for f in frames if "/runtime_stub/" in f.filename or "/bundler/" in f.filename] or frames
    f = own[-1] if own else None
    return f"{Path(f.filename).stem}.{f.name}.{f.lineno}" if f else "unknown"
