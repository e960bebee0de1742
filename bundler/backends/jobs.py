"""Running builds: one job per (target, precision), in parallel worker processes.

Builds are independent and CPU-bound (TensorRT-RTX compiles ahead of time on the CPU), so they run
in a process pool. Processes, not threads: the builder holds the GIL in places, and a crashing
build must not take the others down. Each worker reports its stage through a queue so the CLI can
show a live table; the library itself prints nothing.
"""

from __future__ import annotations

import multiprocessing
import os
import queue as _queue
import signal
import time
from concurrent.futures import FIRST_COMPLETED, Future, ProcessPoolExecutor, wait
from concurrent.futures.process import BrokenProcessPool
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional

from ..errors import BuildError
from ..manifest import EngineRecord, ModelInfo, ShapeRange
from ..proc import die_with_parent, signals_held
from ..targets import Target


@dataclass(frozen=True)
class Job:
    stem: str
    backend: str  # "tensorrt", "tensorrt-rtx" or "onnxruntime"
    target: Target
    precision: str
    model: ModelInfo
    model_path: Path  # the graph to build from: the source, or its precision variant
    profiles: List[Dict[str, ShapeRange]]
    workspace: Optional[int]
    engine_path: Path
    log_path: Path
    timing_cache: Optional[Path] = None
    source_path: Optional[Path] = None  # the unconverted source graph (full TensorRT <= 10 uses flags)


def _backend(name: str):  # noqa: ANN202
    if name == "onnxruntime":
        from .onnxruntime import OnnxRuntimeBackend

        return OnnxRuntimeBackend()
    from . import select_backend

    return select_backend(name)


def run_one(job: Job, events=None) -> EngineRecord:  # noqa: ANN001 - a queue or None
    """Build one job (in a worker or inline). Raises BuildError with a one-line message."""
    start = time.monotonic()

    def stage(name: str, message: str = "") -> None:
        if events is not None:
            events.put((job.stem, name, time.monotonic() - start, message))

    stage("parsing")
    try:
        return _backend(job.backend).build(job, stage)
    except BuildError:
        raise
    except Exception as e:  # noqa: BLE001 - one line for whatever the builder raised
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BuildError(f"target {job.target.label} ({job.precision}): {type(e).__name__}: {first}") from None


def run_jobs(jobs: List[Job], workers: Optional[int], progress: Optional[Callable] = None) -> List[EngineRecord]:
    """Run every job; return records in job order. On the first failure, queued jobs are
    cancelled, running ones finish (their logs are kept), and one BuildError names the targets."""
    from . import BuildEvent

    n = max(1, min(workers or os.cpu_count() or 1, len(jobs)))
    by_stem = {j.stem: j for j in jobs}

    def emit(stem: str, stage: str, elapsed: float = 0.0, message: str = "") -> None:
        if progress is not None:
            j = by_stem[stem]
            progress(BuildEvent(stem, j.target.label, j.precision, stage, elapsed, message))

    for j in jobs:
        emit(j.stem, "queued")
    # Even one build runs in a worker process: a TensorRT build is minutes of C++ in which the
    # Python signal handler of the process running it never gets to run, so Ctrl-C and SIGTERM
    # could not stop a build made inline. The parent only waits, and can kill the worker at once.
    try:
        return _run_pool(jobs, n, emit)
    except (BrokenProcessPool, EOFError, ConnectionError) as e:
        raise BuildError(f"a build worker process died ({type(e).__name__}); out of memory? try --jobs 1") from None


_WORKER_EVENTS = None  # set once per worker process by _init_worker; never used in the parent


def _init_worker(events, die_with_parent) -> None:  # noqa: ANN001
    """First thing in each worker: die with the parent, whatever kills it (SIGKILL included),
    and leave signals to the parent. A worker that took Ctrl-C itself (the terminal sends it to
    the whole process group) could stop half-way through a queue operation and leave the parent
    waiting on it; the parent cancels the queue and kills the workers instead."""
    global _WORKER_EVENTS
    if die_with_parent is not None:
        die_with_parent()
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_DFL)
    _WORKER_EVENTS = events


def _run_in_worker(job: Job) -> EngineRecord:
    return run_one(job, _WORKER_EVENTS)


def _run_pool(jobs: List[Job], n: int, emit: Callable) -> List[EngineRecord]:
    started: Dict[str, float] = {}
    ctx = _mp_context()
    events = ctx.Queue()
    results: Dict[str, EngineRecord] = {}
    failures: List[str] = []
    pool = ProcessPoolExecutor(max_workers=n, mp_context=ctx, initializer=_init_worker,
                               initargs=(events, die_with_parent()))
    try:
        with signals_held():  # a signal is raised between these blocks, never inside the pool's locks
            futures: Dict[Future, Job] = {pool.submit(_run_in_worker, j): j for j in jobs}
        pending = set(futures)
        while pending:
            with signals_held():
                done, pending = wait(pending, timeout=0.1, return_when=FIRST_COMPLETED)
                _drain(events, emit, started)
            for f in done:
                j = futures[f]
                elapsed = time.monotonic() - started.get(j.stem, time.monotonic())
                if f.cancelled():
                    emit(j.stem, "cancelled")
                    continue
                exc = f.exception()
                if exc is None:
                    results[j.stem] = f.result()
                    emit(j.stem, "done", elapsed)
                else:
                    msg = exc.message if isinstance(exc, BuildError) else f"{type(exc).__name__}: {exc}"
                    failures.append(msg)
                    emit(j.stem, "failed", elapsed, msg)
                    for other in pending:
                        other.cancel()
        _drain(events, emit, started)
    except BaseException:
        # Ctrl-C or SIGTERM (the CLI raises it here): leaving the pool's `with` would wait for
        # every queued build to run. Cancel the queue and kill the workers, which may be deep in
        # a TensorRT build that no Python-level signal interrupts, then let the caller clean up.
        _kill_pool(pool)
        raise
    pool.shutdown(wait=True)
    if failures:
        more = f" (and {len(failures) - 1} more failed)" if len(failures) > 1 else ""
        raise BuildError(failures[0] + more)
    return [results[j.stem] for j in jobs]


def _kill_pool(pool: ProcessPoolExecutor) -> None:
    procs = list((getattr(pool, "_processes", None) or {}).values())  # no public handle on workers
    pool.shutdown(wait=False, cancel_futures=True)
    for p in procs:
        try:
            p.kill()
        except (OSError, ValueError):
            pass
    for p in procs:
        p.join(5)


def _mp_context():  # noqa: ANN202
    """fork where it exists: workers inherit the imported TensorRT module (importing it again costs
    about a second per worker, more than a small build). The parent has built nothing and started
    no TensorRT threads at this point, which is what makes forking safe here."""
    methods = multiprocessing.get_all_start_methods()
    return multiprocessing.get_context("fork" if "fork" in methods else "spawn")


def _drain(events, emit, started) -> None:  # noqa: ANN001
    while True:
        try:
            stem, stage, elapsed, msg = events.get_nowait()
        except (_queue.Empty, EOFError, OSError):
            return
        started.setdefault(stem, time.monotonic() - elapsed)
        emit(stem, stage, elapsed, msg)
