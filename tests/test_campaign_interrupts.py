"""Hostile-input campaign (issue 13), family 6: interrupted work.

The loop (tests/_interrupt_loop.py, whose module doc has the oracle) sends SIGINT (to the process
group), SIGTERM and SIGKILL at seeded random points to real runs of `create`, `seal`, `sign`,
`sign --in-place`, `extract`, `run`, `split`, `join` and `copy` on a real signed 16 MiB bundle:
one run per command and signal here (bounded: about 60 s on 2 cores), N with
``python benchmarks/interrupts.py --iterations N`` (the figures of docs/security.md).

Then what the loop found, pinned: a signal in the CLI's start-up (a traceback), in a command's
own imports (typer's silent 130, even for SIGTERM), the moment `bundle run` starts its loader
(the loader left running); and the durability half of the family: `extract`, `join`, `copy` and
`seal` fsync every file they publish, and its directory, before the rename that publishes it,
seen in the real system calls (strace).
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

import _interrupt_loop as L
from conftest import REPO, session_processes

SEED = "ci-1"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory) -> L.Inputs:  # noqa: ANN001
    return L.prepare(tmp_path_factory.mktemp("interrupts"), weight_mib=8)


@pytest.mark.parametrize("command", L.COMMANDS)
def test_signals_at_random_points_leave_nothing_half_done(inputs, tmp_path, command):
    """SIGINT, SIGTERM and SIGKILL once each at a seeded random point of a real run: the exit
    status of the signal (or 0), no process left, the destination untouched or complete, never a
    partial file under a final name, and a re-run that succeeds and leaves nothing else."""
    outcomes, _ = L.loop(inputs, [command], list(L.SIGNALS), 1, SEED, tmp_path, quick=True)
    assert [o.signal for o in outcomes] == list(L.SIGNALS)
    for o in outcomes:
        assert o.state in ("finished", "untouched", "complete", "partial-set"), o


def _bundle(*args: object, **popen: object) -> subprocess.Popen:
    return subprocess.Popen(L.bundle_cmd(*args), stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                            text=True, env=L.child_env(), start_new_session=True, preexec_fn=L.default_sigint, **popen)


@pytest.mark.parametrize("sig, code, word", [(signal.SIGINT, 130, "interrupted"), (signal.SIGTERM, 143, "terminated")])
def test_a_signal_during_start_up_ends_in_one_line(tmp_path, sig, code, word):
    """The CLI's imports take a few hundred ms. A signal there gave a KeyboardInterrupt
    traceback (SIGINT) or a silent death (SIGTERM); bundler/entry.py takes both before those
    imports. Signals at fractions of the start-up: the signal's code and one line each time,
    except in the interpreter's own first milliseconds (killed by the signal, no code of ours
    ran); at least one run must land after the handler went in, or the test proves nothing."""
    startup = L.startup_seconds()
    ours = 0
    for frac in (0.35, 0.55, 0.75, 0.9):
        p = _bundle("verify", tmp_path / "none.tar", "--json")
        time.sleep(frac * startup)
        os.killpg(p.pid, sig) if sig == signal.SIGINT else os.kill(p.pid, sig)
        out, err = p.communicate(timeout=60)
        if p.returncode == -sig:  # before `bundler` was reached
            assert str(REPO) not in err, err
            continue
        assert "Traceback" not in err, err
        if p.returncode == code:
            assert err.strip().splitlines() == [word], err
            # --json: one document on stdout, as when a command is interrupted later
            assert json.loads(out) == {"ok": False, "exit_code": code,
                                       "error": {"class": "interrupted", "member": None, "message": word}}, out
            ours += 1
        else:
            assert p.returncode == 3, (p.returncode, err)  # it got to the command first: no such bundle
            assert json.loads(out)["exit_code"] == 3, out
    assert ours >= 1, "no signal landed in the start-up after the handler: machine too fast for this test?"


def test_an_interrupt_that_escapes_a_command_keeps_its_code_and_line():
    """Typer turns a KeyboardInterrupt raised outside `_run` (a command's own imports) into a
    silent exit 130, even for SIGTERM; the CLI says it, with the signal's code. Here a real
    command of a real typer app raises the CLI's own `Interrupted` where a signal would."""
    code = ("import sys\nfrom bundler import cli\n"
            "@cli.app.command('stop-here')\ndef stop_here() -> None:\n    cli._SIGNAL['num'] = 15\n"
            "    raise cli.Interrupted(15)\n"
            "sys.exit(cli._invoke(['stop-here']))\n")
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, env=L.child_env(), timeout=60)
    assert (p.returncode, p.stderr.strip().splitlines()) == (143, ["terminated"]), p.stderr


def test_sigterm_the_moment_bundle_run_starts_its_loader(inputs, tmp_path):
    """SIGTERM sent as soon as `bundle run`'s child appears (in or just after the fork/exec of
    the loader). It used to come out of subprocess.run's Popen with no object to kill: the loader
    ran on in a directory being removed ("can't open file .../loader.py" after "terminated").
    Now: 143, "terminated" last, nothing left in the session or in $TMPDIR."""
    for attempt in range(2):
        tmp = tmp_path / f"t{attempt}"
        tmp.mkdir()
        p = subprocess.Popen(L.bundle_cmd("run", inputs.bundle, "--trust", inputs.pub, "--", "info"),
                             stdin=subprocess.DEVNULL, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                             env=L.child_env(TMPDIR=str(tmp)), start_new_session=True)
        while p.poll() is None and len(session_processes(p.pid)) < 2:
            pass  # busy: the window is a few milliseconds
        if p.poll() is None:
            os.kill(p.pid, signal.SIGTERM)
        out, err = p.communicate(timeout=60)
        assert p.returncode in (143, 0), err
        if p.returncode == 143:
            assert err.strip().splitlines()[-1] == "terminated", err
        assert "loader.py" not in err and "Traceback" not in err, err
        assert L.wait_gone(p.pid, L.GONE_S) == []
        assert [n for n in os.listdir(tmp) if n != ".ses"] == []  # .ses: onnxruntime's own, every run


# -- durability: fsync before the rename that publishes -----------------------------------------------

def _strace_ok() -> bool:
    if shutil.which("strace") is None:
        return False
    return subprocess.run(["strace", "-o", os.devnull, "true"], capture_output=True).returncode == 0


needs_strace = pytest.mark.skipif(not _strace_ok(), reason="strace missing or ptrace not permitted")
_CALL = re.compile(r"^\d+\s+(\w+)\((.*)\)\s+=\s+(-?\d+)")
_FD = re.compile(r"^(-?\d+)<(.*)>$")


def _traced(tmp_path: Path, *args: object) -> List[tuple]:
    """Run `bundle ARGS` under strace -f -y and return (call, [args], result) of each finished
    file-system call, in order; fd arguments are resolved to their paths by -y."""
    log = tmp_path / "strace.log"
    p = subprocess.run(["strace", "-f", "--seccomp-bpf", "-y", "-s", "4096", "-o", str(log), "-e",
                        "trace=openat,fsync,fdatasync,rename,renameat,renameat2,link,linkat"]
                       + L.bundle_cmd(*args), capture_output=True, text=True, env=L.child_env(), timeout=300)
    assert p.returncode == 0, p.stderr
    calls = []
    pending: Dict[str, str] = {}
    for line in log.read_text().splitlines():
        # another thread's call in between splits one into "<unfinished ...>" and "<... resumed>";
        # joined, it counts where it finished
        pid, _, rest = line.partition(" ")
        rest = rest.strip()
        if rest.endswith("<unfinished ...>"):
            pending[pid] = rest[: -len("<unfinished ...>")].rstrip()
            continue
        resumed = re.match(r"^<\.\.\. \w+ resumed>(.*)$", rest)
        if resumed and pid in pending:
            line = f"{pid} {pending.pop(pid)}{resumed.group(1)}"
        m = _CALL.match(line)
        if m and int(m.group(3)) >= 0:
            calls.append((m.group(1), [a.strip().strip('"') for a in _split_args(m.group(2))], int(m.group(3))))
    return calls


def _split_args(text: str) -> List[str]:
    out, depth, cur = [], 0, ""
    for ch in text:
        if ch in "<{[":
            depth += 1
        elif ch in ">}]":
            depth -= 1
        if ch == "," and depth == 0:
            out.append(cur)
            cur = ""
        else:
            cur += ch
    return out + [cur]


def _path(arg: str) -> str:
    m = _FD.match(arg)
    return os.path.realpath(m.group(2) if m else arg)


def _synced(calls: List[tuple], upto: int) -> Dict[str, int]:
    """Paths fsynced (or fdatasynced) before call number ``upto``: path -> index of the call."""
    return {_path(a[0]): i for i, (c, a, _) in enumerate(calls[:upto]) if c in ("fsync", "fdatasync")}


def _publish(calls: List[tuple], final: Path) -> tuple:
    """(index, source path) of the rename or link that made ``final``."""
    for i, (c, a, _) in enumerate(calls):
        if c in ("rename", "renameat", "renameat2", "link", "linkat"):
            paths = [_path(x) for x in a if x.startswith("/") or _FD.match(x) or "/" in x]
            if c in ("renameat", "renameat2", "linkat"):
                paths = [_path(a[1]), _path(a[3])]
            if paths and os.path.realpath(paths[-1]) == os.path.realpath(final):
                return i, paths[0]
    raise AssertionError(f"no rename or link made {final}")


@needs_strace
def test_extract_syncs_every_file_and_directory_before_publishing(inputs, tmp_path):
    """After a completed `extract`, a power loss cannot leave DEST with incomplete files: every
    extracted file was fsynced (an fd opened on its staging path), then every staging directory,
    then the rename made DEST, then DEST's parent was synced."""
    dest = tmp_path / "out" / "x"
    calls = _traced(tmp_path, "extract", inputs.bundle, "--trust", inputs.pub, "--dest", dest)
    at, staging = _publish(calls, dest)
    assert re.fullmatch(r"\.x\.staging-\d+-[0-9a-f]+", Path(staging).name), staging
    synced = _synced(calls, at)
    files = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_file())
    dirs = sorted(str(p.relative_to(dest)) for p in dest.rglob("*") if p.is_dir())
    assert set(files) == set(inputs.tree)
    assert [f for f in files if _path(f"{staging}/{f}") not in synced] == [], "files published without fsync"
    assert [d for d in dirs + ["."] if _path(f"{staging}/{d}") not in synced] == [], "directories not synced"
    assert any(c == "fsync" and _path(a[0]) == _path(str(dest.parent)) for c, a, _ in calls[at + 1:]), \
        "the rename itself was not made durable"


@needs_strace
@pytest.mark.parametrize("command", ["join", "copy", "seal"])
def test_single_file_outputs_are_synced_before_their_rename(inputs, tmp_path, command):
    """`join`, `copy` and `seal` write under a temporary name, fsync the file and its directory,
    then rename (or link) it to its final name, then sync the directory again."""
    out = tmp_path / "out"
    out.mkdir()
    argv = {"join": ["join", inputs.index, "--trust", inputs.pub, "--out", out],
            "copy": ["copy", inputs.bundle, out],
            "seal": ["seal", inputs.build, "--key", inputs.key, "--out", out]}[command]
    calls = _traced(tmp_path, *argv)
    final = out / L.BUNDLE
    assert L.sha256_file(final) == inputs.bundle_sha256
    at, tmp = _publish(calls, final)
    synced = _synced(calls, at)
    assert tmp in synced, f"{tmp} published without fsync"
    assert _path(str(out)) in synced, "directory not synced before the rename"
    assert any(c == "fsync" and _path(a[0]) == _path(str(out)) for c, a, _ in calls[at + 1:]), "rename not made durable"


def test_a_cleanup_the_signal_interrupts_still_finishes(tmp_path):
    """`create` took SIGTERM while removing its build directory, after the bundle was sealed,
    and left `.bundle-build-PID-*` behind with exit 143 (the loop, seed 6, create SIGTERM #3).
    `remove_tree` (create's, `bundle run`'s and the farm's last cleanup) finishes the removal
    and then lets the interruption go on: here a real signal, SIGALRM, handled as the CLI
    handles SIGTERM (raise once, ignore any further one), lands inside it."""
    from bundler.errors import Interrupted
    from bundler.fsutil import remove_tree

    work = tmp_path / ".bundle-build-1-abcd"
    for d in range(40):
        (work / str(d)).mkdir(parents=True)
        for f in range(100):
            (work / str(d) / str(f)).write_bytes(b"x")

    def handler(signum, frame):  # noqa: ANN001
        signal.signal(signal.SIGALRM, signal.SIG_IGN)
        raise Interrupted(signal.SIGTERM)

    old = signal.signal(signal.SIGALRM, handler)
    try:
        signal.setitimer(signal.ITIMER_REAL, 0.005)
        with pytest.raises(Interrupted):
            remove_tree(work)
            time.sleep(1)  # the removal finished before the signal came: wait for it here instead
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)
    assert not work.exists()
