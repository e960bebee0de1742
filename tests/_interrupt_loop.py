"""Interrupted work (issue 13, family 6): signals at random points in real `bundle` runs.

Used by tests/test_campaign_interrupts.py (a few seeded iterations per command and signal, in CI)
and by ``python benchmarks/interrupts.py --iterations N`` (the long loop, which writes the figures
docs/security.md quotes). Nothing is mocked: every run is the real CLI as a subprocess, started in
a session of its own, working on a real signed bundle of a few tens of MiB (a MatMul model with a
big weight, built for the ``cpu`` target so that no TensorRT build is needed to make it).

**One iteration** of a command under a signal:

1. The destination directory is set up (an unrelated file in it; for ``sign --in-place``, the
   bundle itself) and snapshotted: every path with its type, size and SHA-256.
2. The command starts (``start_new_session=True``); after a delay drawn from a seeded RNG over the
   command's measured duration, the signal is sent: SIGINT to the whole process group (what a
   terminal's Ctrl-C does), SIGTERM and SIGKILL to the `bundle` process alone (what ``kill`` and a
   CI runner's cancel do).
3. The oracle:
   - the exit status is the signal's (130 for SIGINT, 143 for SIGTERM; -2/-15, killed by the
     signal, only in the interpreter's first milliseconds, before any file is opened; -9 for
     SIGKILL), or 0 when the command finished first; never a traceback; after 130/143 the last
     line of stderr is "interrupted"/"terminated";
   - no process of the session is left (within `GONE_S`);
   - the destination is *untouched* (byte-identical to the snapshot, apart from the documented
     private names of this run's pid that only a SIGKILL may leave, and `copy`'s resume files)
     or *complete* (the command's outputs all there and checked: the bundle verifies, the
     extracted tree is the verified one, the joined bundle and the copy are the original bytes);
     the one documented middle state is `split` SIGKILLed while publishing: some parts under
     their final names, each byte-identical to its range of the bundle, and no index;
   - no file under an output's final name is partial (checked whenever one is there).
4. The outputs of a finished run are reset; the same command runs again, to completion: exit 0,
   the outputs complete, and nothing else left in the destination (the re-run removed or reused
   what the killed run left).

A failure raises `LoopFailure` naming the seed, command, signal, iteration and delay; the same
iteration replays with ``python benchmarks/interrupts.py --seed S --commands C --signals SIG
--iterations I`` (the delay is the same; where it lands depends on the machine's speed).
"""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

REPO = Path(__file__).resolve().parent.parent
NAME, VERSION = "big", "1.0.0"
BUNDLE = f"{NAME}-{VERSION}.bundle.tar"
COMMANDS = ("create", "seal", "sign", "sign-in-place", "extract", "run", "split", "join", "copy")
SIGNALS = {"SIGINT": signal.SIGINT, "SIGTERM": signal.SIGTERM, "SIGKILL": signal.SIGKILL}
EXIT = {"SIGINT": (130, -2), "SIGTERM": (143, -15), "SIGKILL": (-9,)}
LAST_LINE = {130: "interrupted", 143: "terminated"}
HANG_S = 60.0  # a hang detector: the slowest command here finishes in a few seconds
GONE_S = 5.0  # how long the session's processes may take to go after `bundle` exited
PART_SIZE = 8 << 20
_ENV_DROP = ("BUNDLE_TRUST", "BUNDLE_POLICY", "BUNDLE_STATE", "BUNDLE_LEDGER", "BUNDLE_CACHE", "BUNDLE_KEY_PASSPHRASE",
             "BUNDLE_COPY_TEST_STOP", "BUNDLE_MOUNTINFO")


class LoopFailure(AssertionError):
    pass


# -- inputs ------------------------------------------------------------------------------------------

@dataclass
class Inputs:
    """Everything the commands read, made once: keys, a model, its build directory, the bundle
    sealed from it, that bundle split into parts, and the verified tree of the bundle."""

    work: Path
    key: Path
    pub: Path
    other_key: Path
    other_pub: Path
    model: Path
    build: Path
    bundle: Path
    bundle_sha256: str
    index: Path
    parts: Dict[str, str]  # final name of every part and the index -> SHA-256
    tree: Dict[str, str]  # the extracted bundle: relative path -> SHA-256
    shape: str


def sha256_file(path: Path) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def child_env(**extra: str) -> Dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in _ENV_DROP}
    env["PYTHONPATH"] = str(REPO) + (os.pathsep + env["PYTHONPATH"] if env.get("PYTHONPATH") else "")
    env["SOURCE_DATE_EPOCH"] = "1700000000"
    env.update(extra)
    return env


def default_sigint() -> None:
    """In the child, before exec: SIGINT as a terminal's program gets it. A harness started in
    the background (``cmd &``, some CI runners, xdist workers) has SIGINT ignored, which its
    children inherit; Python then leaves it ignored until `bundle` installs its handler, and a
    Ctrl-C in the start-up would be lost rather than tested."""
    signal.signal(signal.SIGINT, signal.SIG_DFL)


def bundle_cmd(*args: object) -> List[str]:
    return [sys.executable, "-m", "bundler.cli", *map(str, args)]


def _cli(*args: object) -> str:
    p = subprocess.run(bundle_cmd(*args), capture_output=True, text=True, env=child_env(), timeout=600, stdin=subprocess.DEVNULL)
    if p.returncode != 0:
        raise RuntimeError(f"preparing the inputs: bundle {' '.join(map(str, args))}: {p.stderr}")
    return p.stdout


def make_big_model(path: Path, weight_mib: int) -> Tuple[Path, str]:
    """A MatMul whose weight is ``weight_mib`` MiB of float32: the bundle carries it twice (the
    model and the cpu-target engine), so it is about 2 x weight_mib MiB."""
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = 1024
    m = max(1, weight_mib * (1 << 20) // (4 * n))
    rng = np.random.default_rng(6)
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, ["N", n])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", m])
    w = numpy_helper.from_array(rng.standard_normal((n, m)).astype(np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [x], [y], [w])
    mo = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    mo.ir_version = 8
    onnx.save(mo, str(path))
    return path, f"x:1x{n}:2x{n}:4x{n}"


def prepare(work: Path, weight_mib: int = 16) -> Inputs:
    """Make the inputs through the real CLI (keys, build, seal, split) and the library (the
    reference extraction)."""
    from bundler import api

    work.mkdir(parents=True, exist_ok=True)
    keys = work / "keys"
    for k in ("release", "other"):
        _cli("keys", "generate", k, "--dir", keys, "--no-passphrase")
    model, shape = make_big_model(work / "big.onnx", weight_mib)
    build = work / "build"
    _cli("build", model, "--name", NAME, "--version", VERSION, "--target", "cpu", "--shape", shape, "--out", build)
    _cli("seal", build, "--key", keys / "release.key", "--out", work / "dist")
    bundle = work / "dist" / BUNDLE
    _cli("split", bundle, "--key", keys / "release.key", "--trust", keys / "release.pub", "--out", work / "parts",
         "--max-part-size", PART_SIZE)
    parts = {p.name: sha256_file(p) for p in sorted((work / "parts").iterdir())}
    index = next(work / "parts" / n for n in parts if n.endswith(".parts.json"))
    ref = work / "reference-tree"
    rep = api.extract(bundle, api.load_trust([keys / "release.pub"]), ref)
    assert rep.ok, rep.error
    tree = {str(p.relative_to(ref)): sha256_file(p) for p in sorted(ref.rglob("*")) if p.is_file()}
    shutil.rmtree(ref)
    return Inputs(work, keys / "release.key", keys / "release.pub", keys / "other.key", keys / "other.pub", model,
                  build, bundle, sha256_file(bundle), index, parts, tree, shape)


# -- the commands ------------------------------------------------------------------------------------

@dataclass
class Case:
    """One command: how to run it into a destination directory, what a complete run leaves there,
    what an interrupted one may leave, and how to check a complete one."""

    name: str
    argv: Callable[[Path], List[str]]
    outputs: List[str]  # top-level names in the destination that a complete run makes (or replaces)
    private: List[str]  # regexes ({pid}: the run's pid) of work files only a SIGKILL may leave
    complete: Callable[[Path, "subprocess.CompletedProcess"], None]  # raises LoopFailure
    resumable: List[str] = field(default_factory=list)  # regexes of files kept on purpose for a resume
    setup: Optional[Callable[[Path], None]] = None  # fills the destination before each run
    env: Callable[[Path], Dict[str, str]] = lambda dest: {}
    partial_set: Optional[Callable[[Path, List[str]], None]] = None  # split: published parts without an index
    foreign: List[str] = field(default_factory=list)  # regexes of what other software writes there in every run


def _fail(msg: str) -> None:
    raise LoopFailure(msg)


def cases(inp: Inputs) -> Dict[str, Case]:
    from bundler import api

    trust = api.load_trust([inp.pub])
    trust_other = api.load_trust([inp.other_pub])
    partial = [re.escape(f".{BUNDLE}.partial-") + "{pid}-[0-9a-f]+"]
    content = api.verify(inp.bundle, trust).content_digest

    def verified(path: Path, keys: object = trust, same_content: bool = True) -> None:
        rep = api.verify(path, keys)
        if not rep.ok:
            _fail(f"{path}: under its final name but does not verify: {rep.error}")
        if (rep.name, rep.version) != (NAME, VERSION) or (same_content and rep.content_digest != content):
            _fail(f"{path}: verifies, but with another content than the original bundle")

    def same_bytes(path: Path, sha: str) -> None:
        if not path.is_file() or sha256_file(path) != sha:
            _fail(f"{path}: under its final name with other bytes than the original (partial?)")

    def tree_is_verified(dest: Path, _p: object) -> None:
        got = {str(p.relative_to(dest / "x")): sha256_file(p) for p in sorted((dest / "x").rglob("*")) if p.is_file()}
        if got != inp.tree:
            _fail(f"extracted tree differs from the verified one: {sorted(set(got.items()) ^ set(inp.tree.items()))[:5]}")

    def parts_complete(dest: Path, _p: object) -> None:
        for n, sha in inp.parts.items():
            same_bytes(dest / n, sha)
        rep = api.verify(dest / inp.index.name, trust)
        if not rep.ok:
            _fail(f"the part set does not verify: {rep.error}")

    def parts_partial(dest: Path, present: List[str]) -> None:
        if inp.index.name in present:
            _fail("the part index is there but not every part")
        for n in present:
            same_bytes(dest / n, inp.parts[n])

    def ran(dest: Path, p: "subprocess.CompletedProcess") -> None:
        if p.returncode != 0 or "PASS" not in p.stdout:
            _fail(f"bundle run finished but the selftest did not pass: {p.returncode} {p.stdout[-500:]}")

    def in_place_setup(dest: Path) -> None:
        shutil.copyfile(inp.bundle, dest / BUNDLE)

    k, pub, okey = inp.key, inp.pub, inp.other_key
    return {
        "create": Case("create", lambda d: ["create", inp.model, "--name", NAME, "--version", VERSION, "--target", "cpu",
                                            "--shape", inp.shape, "--key", k, "--out", d],
                       [BUNDLE], [r"\.bundle-build-{pid}-[0-9a-f]+"] + partial,
                       lambda d, p: verified(d / BUNDLE, same_content=False)),  # a new build: new golden data
        "seal": Case("seal", lambda d: ["seal", inp.build, "--key", k, "--out", d], [BUNDLE], partial,
                     lambda d, p: same_bytes(d / BUNDLE, inp.bundle_sha256)),  # sealing is deterministic
        "sign": Case("sign", lambda d: ["sign", inp.bundle, "--key", okey, "--trust", pub, "--out", d], [BUNDLE], partial,
                     lambda d, p: (verified(d / BUNDLE, trust_other), verified(d / BUNDLE))),
        "sign-in-place": Case("sign-in-place", lambda d: ["sign", d / BUNDLE, "--key", okey, "--trust", pub, "--in-place"],
                              [BUNDLE], partial, lambda d, p: verified(d / BUNDLE, trust_other), setup=in_place_setup),
        "extract": Case("extract", lambda d: ["extract", inp.bundle, "--trust", pub, "--dest", d / "x"], ["x"],
                        [r"\.x\.staging-{pid}-[0-9a-f]+"], tree_is_verified),
        "run": Case("run", lambda d: ["run", inp.bundle, "--trust", pub, "--", "selftest"], [],
                    [r"bundle-run-{pid}-[0-9a-f]+"], ran, env=lambda d: {"TMPDIR": str(d)},
                    # importing onnxruntime (the loader's cpu backend) writes $TMPDIR/.ses, a session
                    # id of its own, in every run: not ours, and not a leftover of an interruption
                    foreign=[r"\.ses"]),
        "split": Case("split", lambda d: ["split", inp.bundle, "--key", k, "--trust", pub, "--out", d,
                                          "--max-part-size", PART_SIZE],
                      sorted(inp.parts), [re.escape(f".{BUNDLE}.") + "[0-9a-f]+" + r"\.partial-{pid}-[0-9a-f]+"],
                      parts_complete, partial_set=parts_partial),
        "join": Case("join", lambda d: ["join", inp.index, "--trust", pub, "--out", d], [BUNDLE], partial,
                     lambda d, p: same_bytes(d / BUNDLE, inp.bundle_sha256)),
        "copy": Case("copy", lambda d: ["copy", inp.bundle, d], [BUNDLE], [],
                     lambda d, p: same_bytes(d / BUNDLE, inp.bundle_sha256),
                     resumable=[re.escape(f".{BUNDLE}.copy-") + r"(partial|journal|journal\.new)"]),
    }


# -- snapshots -----------------------------------------------------------------------------------------

Snap = Dict[str, Tuple]


def snapshot(root: Path) -> Snap:
    """Every path under ``root`` (not following links): its type, and for files size and SHA-256."""
    out: Snap = {}
    for dirpath, dirnames, filenames in os.walk(root):
        for n in dirnames + filenames:
            p = Path(dirpath) / n
            rel = str(p.relative_to(root))
            st = os.lstat(p)
            if os.path.islink(p):
                out[rel] = ("link", os.readlink(p))
            elif p.is_dir():
                out[rel] = ("dir",)
            else:
                out[rel] = ("file", st.st_size, sha256_file(p))
    return out


def _top(snap: Snap) -> Dict[str, Snap]:
    tops: Dict[str, Snap] = {}
    for rel, v in snap.items():
        tops.setdefault(rel.split("/", 1)[0], {})[rel] = v
    return tops


def wait_gone(sid: int, seconds: float) -> List[int]:
    from conftest import session_processes

    deadline = time.monotonic() + seconds
    while True:
        left = session_processes(sid)
        if not left or time.monotonic() > deadline:
            return left
        time.sleep(0.02)


# -- one iteration -------------------------------------------------------------------------------------

@dataclass
class Outcome:
    command: str
    signal: str
    iteration: int
    delay_s: float
    code: int
    state: str  # finished | untouched | complete | partial-set
    exit_s: float  # from the signal to the process's exit (0 when it finished first: exit 0)
    gone_s: float  # from the signal until no process of the session is left
    leftovers: List[str]  # private names the killed run left (removed by the re-run)
    rerun_s: float


def _run_to_end(argv: List[str], env: Dict[str, str]) -> subprocess.CompletedProcess:
    return subprocess.run(bundle_cmd(*argv), capture_output=True, text=True, env=env, timeout=600, stdin=subprocess.DEVNULL)


def measure(case: Case, dest: Path) -> float:
    """Seconds a full run of ``case`` takes here (one run; its outputs are then removed)."""
    _reset(case, dest)
    t0 = time.monotonic()
    p = _run_to_end(case.argv(dest), child_env(**case.env(dest)))
    took = time.monotonic() - t0
    if p.returncode != 0:
        raise RuntimeError(f"{case.name}: a plain run failed: {p.stderr}")
    case.complete(dest, p)
    return took


def _reset(case: Case, dest: Path) -> None:
    shutil.rmtree(dest, ignore_errors=True)
    dest.mkdir(parents=True)
    (dest / "unrelated.txt").write_bytes(b"an operator's file: never touched\n")
    if case.setup is not None:
        case.setup(dest)


def iteration(case: Case, sig_name: str, dest: Path, delay: float, i: int, seed: object) -> Outcome:
    """One run of ``case`` interrupted by ``sig_name`` after ``delay`` seconds; the oracle of the
    module doc. Raises `LoopFailure` with what is needed to replay it."""
    try:
        return _iteration(case, sig_name, dest, delay, i, seed)
    except LoopFailure as e:
        if str(e).startswith("[seed "):
            raise
        raise LoopFailure(f"{_where(case, sig_name, delay, i, seed)} {e}") from None


def _where(case: Case, sig_name: str, delay: float, i: int, seed: object) -> str:
    return (f"[seed {seed}, {case.name}, {sig_name}, iteration {i}, delay {delay:.3f} s] (replay: python "
            f"benchmarks/interrupts.py --seed {seed} --commands {case.name} --signals {sig_name} --iterations {i + 1})")


def _iteration(case: Case, sig_name: str, dest: Path, delay: float, i: int, seed: object) -> Outcome:
    def fail(msg: str) -> None:
        raise LoopFailure(f"{_where(case, sig_name, delay, i, seed)} {msg}")

    _reset(case, dest)
    before = snapshot(dest)
    env = child_env(**case.env(dest))
    sig = SIGNALS[sig_name]
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        p = subprocess.Popen(bundle_cmd(*case.argv(dest)), stdin=subprocess.DEVNULL, stdout=out, stderr=err, env=env,
                             start_new_session=True, preexec_fn=default_sigint)
        time.sleep(delay)
        t_sig = time.monotonic()
        sent = p.poll() is None
        if sent:
            try:
                if sig == signal.SIGINT:
                    os.killpg(p.pid, sig)  # a terminal's Ctrl-C reaches the whole foreground group
                else:
                    os.kill(p.pid, sig)
            except ProcessLookupError:
                sent = False
        try:
            code = p.wait(timeout=HANG_S)
        except subprocess.TimeoutExpired:
            os.killpg(p.pid, signal.SIGKILL)
            p.wait()
            fail(f"no exit {HANG_S:.0f} s after the signal (a hang)")
        t_exit = time.monotonic()
        left = wait_gone(p.pid, GONE_S)
        t_gone = time.monotonic()
        if left:
            for pid in left:
                try:
                    os.kill(pid, signal.SIGKILL)
                except ProcessLookupError:
                    pass
            fail(f"processes of the session outlived `bundle` by {GONE_S} s: {left}")
        out.seek(0)
        err.seek(0)
        stdout, stderr = out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace")
    done = subprocess.CompletedProcess(p.args, code, stdout, stderr)

    # the exit status
    if code != 0 and code not in EXIT[sig_name]:
        fail(f"exit status {code}, expected one of {EXIT[sig_name]} or 0; stderr: {stderr[-2000:]}")
    if "Traceback" in stderr or "Traceback" in stdout:
        # The one traceback allowed: SIGINT in the interpreter's own start-up (site, the runpy
        # machinery), before the first line of bundler runs: no code of ours can take it there.
        if not (code == -2 and stderr.rstrip().endswith("KeyboardInterrupt") and str(REPO) not in stderr):
            fail(f"a traceback: {stderr[-3000:]}")
    if code in LAST_LINE:
        last = stderr.strip().splitlines()[-1:] or [""]
        if last[0] != LAST_LINE[code]:
            fail(f"exit {code} but stderr ends with {last[0]!r}, not {LAST_LINE[code]!r}")
    # -2/-15: killed by the signal under its default action, which Python has only before the
    # handlers go in (nothing written yet) and again in its finalization, after the command's
    # end (its outputs complete): checked below, once the destination is known

    # the destination
    after = snapshot(dest)
    b_top, a_top = _top(before), _top(after)
    private = [re.compile(r.replace("{pid}", str(p.pid))) for r in case.private]
    resumable = [re.compile(r) for r in case.resumable]
    leftovers: List[str] = []
    for name in sorted(set(b_top) | set(a_top)):
        if name in case.outputs:
            continue
        if b_top.get(name) == a_top.get(name):
            continue
        if name in b_top:
            fail(f"{name}: was there before and was changed or removed")
        if any(r.fullmatch(name) for r in resumable) or any(re.fullmatch(r, name) for r in case.foreign):
            continue
        if any(r.fullmatch(name) for r in private):
            if code != -9:
                fail(f"{name}: a work file left behind although the command could clean up (exit {code})")
            leftovers.append(name)
            continue
        fail(f"{name}: appeared in the destination, and is neither an output nor a documented work file")
    changed = [n for n in case.outputs if a_top.get(n) != b_top.get(n)]
    if not changed:
        state = "untouched"
    elif len(changed) == len(case.outputs) and all(n in a_top for n in case.outputs):
        case.complete(dest, done) if case.outputs else None
        state = "complete"
    elif case.partial_set is not None and code == -9 and all(n in a_top for n in changed):
        case.partial_set(dest, changed)
        state = "partial-set"
    else:
        fail(f"outputs half there: {changed} of {case.outputs}")
    if code in (-2, -15) and (stdout.strip() or str(REPO) in stderr) and state != "complete" and case.outputs:
        fail(f"killed by {sig_name}'s default action after it had started work, outputs {state}: {stderr[-1000:]}")
    if code == 0:
        if not case.outputs:
            case.complete(dest, done)
        elif state != "complete":
            fail(f"exit 0 but the outputs are {state}")
        state = "finished"

    # the re-run, after the finished run's outputs are reset to how they were
    for n in case.outputs:
        if state in ("complete", "finished") and n in a_top:
            target = dest / n
            shutil.rmtree(target) if target.is_dir() and not target.is_symlink() else target.unlink()
    if case.setup is not None and state in ("complete", "finished"):
        case.setup(dest)
    t0 = time.monotonic()
    again = _run_to_end(case.argv(dest), env)
    rerun_s = time.monotonic() - t0
    if again.returncode != 0 or "Traceback" in again.stderr:
        fail(f"the re-run failed ({again.returncode}): {again.stderr[-2000:]}")
    case.complete(dest, again)
    final = _top(snapshot(dest))
    extra = sorted(n for n in final if n not in case.outputs and final[n] != b_top.get(n)
                   and not any(re.fullmatch(r, n) for r in case.foreign))
    missing = sorted(n for n in b_top if n not in case.outputs and n not in final)
    if extra or missing:
        fail(f"after the re-run the destination holds {extra} besides the outputs (missing: {missing})")
    stopped = sent and code != 0  # signalled, and not finished first: the time it took to stop counts
    return Outcome(case.name, sig_name, i, round(delay, 4), code, state,
                   round(t_exit - t_sig, 4) if stopped else 0.0, round(t_gone - t_sig, 4) if stopped else 0.0,
                   leftovers, round(rerun_s, 3))


def delay_for(seed: object, command: str, sig_name: str, i: int, startup_s: float, duration_s: float) -> float:
    """The iteration's delay, from an RNG seeded by (seed, command, signal, iteration): a quarter
    of the points fall in the start-up (the interpreter and the CLI's imports, while the handlers
    go in), the rest over the command's work, up to a little past its measured end. The same
    seed draws the same fractions; the seconds scale with the durations measured here."""
    rng = random.Random(f"{seed}:{command}:{sig_name}:{i}")
    if rng.random() < 0.25:
        return rng.uniform(0.0, 1.0) * startup_s
    return startup_s + rng.uniform(0.0, 1.0) * (max(duration_s, startup_s) * 1.05 - startup_s)


def startup_seconds() -> float:
    """How long `bundle --version` takes here: the interpreter and the CLI's imports."""
    best = float("inf")
    for _ in range(3):  # the fastest of three: a load spike must not push every delay past the work
        t0 = time.monotonic()
        subprocess.run(bundle_cmd("--version"), capture_output=True, env=child_env(), check=True)
        best = min(best, time.monotonic() - t0)
    return best


def loop(inp: Inputs, commands: List[str], signals: List[str], iterations: int, seed: object, scratch: Path,
         on_outcome: Optional[Callable[[Outcome], None]] = None, quick: bool = False
         ) -> Tuple[List[Outcome], Dict[str, float]]:
    """``iterations`` interrupted runs per command and signal. Returns the outcomes and each
    command's last measured duration. ``quick`` (the test suite) saves the first measuring run."""
    all_cases = cases(inp)
    startup = startup_seconds()
    durations: Dict[str, float] = {"startup": round(startup, 3)}
    outcomes: List[Outcome] = []
    for name in commands:
        case = all_cases[name]
        dest = scratch / f"dest-{name}"
        # a plain run measures the command (quick: the first delay assumes twice the start-up);
        # then each re-run, a plain run too, measures it again, and the fastest run seen sets the
        # delays: a shared machine's load swings by a factor of several, and delays drawn from a
        # slow moment's duration land after most runs' end
        durations[name] = round(measure(case, dest), 3) if not quick else 2 * startup
        for sig_name in signals:
            for i in range(iterations):
                d = delay_for(seed, name, sig_name, i, startup, durations[name])
                o = iteration(case, sig_name, dest, d, i, seed)
                durations[name] = min(durations[name], o.rerun_s)
                outcomes.append(o)
                if on_outcome is not None:
                    on_outcome(o)
        shutil.rmtree(dest, ignore_errors=True)
    return outcomes, durations
