"""Interrupts and cancellations of real builds, as CI and operators deliver them.

Every test starts `bundle create` on real TensorRT-RTX builds of resnet50 (several seconds each)
in a session of its own, sends real signals (to the process, or to the whole process group as a
terminal's Ctrl-C does), then looks for two kinds of leftovers: processes still in that session
(a worker that outlived `bundle` holds the harness's stdout) and files in --out.
"""

from __future__ import annotations

import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import List

import pytest

from conftest import make_conv_model, onnx_light_model, run_bundle, session_processes

SIX = [a for t in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_120", "sm_121") for a in ("--target", t)]




def _start(out: Path, keys: dict, *targets: str, jobs: str = "2") -> subprocess.Popen:
    env = dict(os.environ)
    env.pop("BUNDLE_TRUST", None)
    p = subprocess.Popen([sys.executable, "-m", "bundler.cli", "create", str(onnx_light_model("light_resnet50")),
                          "--name", "r", "--version", "1.0.0", *targets, "--jobs", jobs, "--no-golden",
                          "--key", str(keys["release"]["key"]), "--out", str(out), "--backend", "tensorrt-rtx"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env, start_new_session=True)
    first = p.stderr.readline()  # "building ..." once the workers run: builds are under way
    assert first.startswith("building"), first + p.stderr.read()
    time.sleep(0.5)  # into TensorRT's C++ builder, where no Python signal handler runs
    assert len(session_processes(p.pid)) >= 2, "the CLI and its build workers are seen in their session"  # the check can fail
    return p


def _wait_gone(sid: int, seconds: float) -> List[int]:
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        left = session_processes(sid)
        if not left:
            return []
        time.sleep(0.05)
    return session_processes(sid)


def _leftovers(out: Path) -> List[str]:
    return sorted(p.name for p in out.iterdir()) if out.exists() else []


@pytest.mark.parametrize("first, second, code", [
    (signal.SIGINT, signal.SIGINT, 130),
    (signal.SIGTERM, signal.SIGTERM, 143),
    (signal.SIGINT, signal.SIGTERM, 130),
])
def test_a_second_signal_never_hangs_and_nothing_is_left(tmp_path, keys, first, second, code):
    """Ctrl-C from a terminal reaches the whole process group (workers too); an impatient user
    presses it again. Both arrive while builds run: exit in under 3 s with the first signal's
    code, no process of the session left, nothing in --out."""
    out = tmp_path / "out"
    p = _start(out, keys, *SIX)
    t0 = time.monotonic()
    os.killpg(p.pid, first)
    time.sleep(0.2)
    try:
        os.killpg(p.pid, second)
    except ProcessLookupError:
        pass  # already gone: fine, the point is that it cannot hang
    _, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == code, err
    assert took < 3, f"{took:.1f} s"
    assert "Traceback" not in err
    assert err.strip().splitlines()[-1] == ("interrupted" if first == signal.SIGINT else "terminated"), err
    assert _wait_gone(p.pid, 2) == [], "processes outlived bundle"
    assert _leftovers(out) == []


def test_one_build_stops_at_once_too(tmp_path, keys):
    """A single target used to build inside the CLI process, where Ctrl-C waited for TensorRT to
    return. It runs in a worker like any other build, so the first signal ends it at once."""
    out = tmp_path / "out"
    p = _start(out, keys, "--target", "sm_86", jobs="1")
    t0 = time.monotonic()
    p.send_signal(signal.SIGINT)
    _, err = p.communicate(timeout=30)
    assert p.returncode == 130, err
    assert time.monotonic() - t0 < 3
    assert _wait_gone(p.pid, 2) == []
    assert _leftovers(out) == []


def test_workers_die_with_a_sigkilled_parent_and_the_next_run_cleans_up(tmp_path, keys):
    """SIGKILL leaves `bundle` no chance to clean up: its workers must die anyway (they would
    hold the harness's stdout for ever), and the private build directory it left in --out is
    removed by the next run into the same --out."""
    out = tmp_path / "out"
    p = _start(out, keys, *SIX)
    os.kill(p.pid, signal.SIGKILL)
    p.communicate(timeout=30)
    assert _wait_gone(p.pid, 3) == [], "build workers outlived a SIGKILLed bundle"
    left = _leftovers(out)
    assert len(left) == 1 and left[0].startswith(f".bundle-build-{p.pid}-"), left

    model = make_conv_model(tmp_path / "m.onnx")
    r = run_bundle("create", model, "--name", "m", "--version", "1.0.0", "--target", "sm_86", "--no-golden",
                   "--key", keys["release"]["key"], "--out", out, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    assert _leftovers(out) == ["m-1.0.0.bundle.tar"]


def test_a_killed_seals_partial_bundle_is_removed_by_the_next_seal(tmp_path, keys):
    """A seal killed half-way leaves `.NAME.bundle.tar.partial-PID-*` (possibly GBs) in --out;
    the next seal of that bundle into that --out removes it, and never touches a live run's."""
    model = make_conv_model(tmp_path / "m.onnx")
    build = tmp_path / "build"
    r = run_bundle("build", model, "--name", "m", "--version", "1.0.0", "--target", "sm_86", "--no-golden",
                   "--out", build, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    out = tmp_path / "out"
    out.mkdir()
    dead = subprocess.Popen(["true"])
    dead.wait()
    stale = out / f".m-1.0.0.bundle.tar.partial-{dead.pid}-abcd1234"
    stale.write_bytes(b"\0" * 4096)
    live = out / f".m-1.0.0.bundle.tar.partial-{os.getpid()}-abcd1234"  # this test's pid is alive
    live.write_bytes(b"\0" * 4096)
    r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", out)
    assert r.code == 0, r.err
    assert not stale.exists()
    assert live.exists()
    assert (out / "m-1.0.0.bundle.tar").is_file()


# -- signals held around the build pool's waits (bundler/proc.py signals_held) ---------------------

def test_a_signal_inside_a_held_block_reaches_the_handler_after_it():
    """The build pool waits inside `signals_held` blocks: a Ctrl-C that lands in
    concurrent.futures' own lock handling is raised after the block, by the handler that was in
    place, so no lock of the pool stays taken (a hang at exit, seen once in twelve Ctrl-Cs)."""
    from bundler.proc import signals_held

    seen: List[str] = []

    class Stop(Exception):
        pass

    def handler(signum, frame):
        seen.append(f"handler {signum}")
        raise Stop

    old = signal.signal(signal.SIGINT, handler)
    try:
        with pytest.raises(Stop):
            with signals_held():
                signal.raise_signal(signal.SIGINT)
                signal.raise_signal(signal.SIGTERM)  # a second signal: the first one wins
                seen.append("block ran to its end")
        assert seen == ["block ran to its end", f"handler {int(signal.SIGINT)}"]
        assert signal.getsignal(signal.SIGINT) is handler  # the handler is back in place
        # A block that fails still hands the signal on: it is what the user did last.
        seen.clear()
        with pytest.raises(Stop) as e:
            with signals_held():
                signal.raise_signal(signal.SIGINT)
                raise ValueError("the block's own failure")
        assert isinstance(e.value.__context__, ValueError)
        # Without a signal, nothing is raised and nothing is called.
        seen.clear()
        with signals_held():
            pass
        assert seen == []
    finally:
        signal.signal(signal.SIGINT, old)


def test_a_held_signal_that_was_ignored_stays_ignored():
    from bundler.proc import signals_held

    old = signal.signal(signal.SIGTERM, signal.SIG_IGN)
    try:
        with signals_held():
            signal.raise_signal(signal.SIGTERM)
        assert signal.getsignal(signal.SIGTERM) == signal.SIG_IGN
    finally:
        signal.signal(signal.SIGTERM, old)
