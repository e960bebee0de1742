#!/usr/bin/env python3
"""Benchmark seal / verify / extract against the tools that bound them, in one command.

    python benchmarks/run.py --size 4G              # the targets; about 15 minutes on 2 vCPUs
    python benchmarks/run.py --size 1G --runs 3 --rss-sizes ''   # quick look

What it does (all in --workdir, removed afterwards unless --keep):

1. Writes synthetic build directories (benchmarks/fakebuild.py: a valid TensorRT-RTX header, then
   pseudo-random bytes) - one with a single engine of --size, one with --engines engines that
   add up to --size - and seals them with the real `bundle seal`.
2. Times each of our commands against its baseline on the same bytes, alternating A, B, A, B, ...
   (--runs each), and reports medians and the ratio of medians:
     seal     `bundle seal BUILD`                vs `cp ENGINE` to the same filesystem (and cp + sync)
     verify   `bundle verify BUNDLE`             vs `openssl dgst -sha256 BUNDLE`
     rt-verify `python3 -I runtime/verify.py`    vs the same openssl run (if the file exists)
     multi    `bundle verify` of the N-engine bundle vs one core computing the same digests
              (benchmarks/onecore.py) and vs openssl
     extract  `bundle extract BUNDLE`            vs `tar xf BUNDLE` + `openssl dgst -sha256 BUNDLE`
3. Peak RSS of seal, verify and extract at each --rss-sizes size (sparse engines: quick to make;
   the bundle and the extracted copy are still written in full).

Every command runs as a child of a small launcher that reports its wall time, CPU time and peak
RSS (os.wait4: that command only). Our commands run with stderr on a pseudo-terminal, so their
rich progress bars are drawn as a user sees them (--no-pty to turn that off). Before every timed
run: outputs of the last run are deleted, `sync` is run and the harness pauses --settle seconds
(untimed), so one run's writeback and freed memory do not land in the next; each round waits
until both cores are free of other people's jobs (see `alternate`). The page cache cannot be
dropped here (no control over the VM's caches), so all figures are WARM-CACHE: inputs are read
once before each section and then come from memory. --compare-rev REV also times the `bundle`
of an older commit (run from a `git archive` of it) on the same bytes.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import shutil
import statistics
import subprocess
import sys
import tempfile
import threading
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Dict, List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))
sys.path.insert(0, str(REPO))

from fakebuild import make_build_dir, parse_size  # noqa: E402

RUNTIME_VERIFY = REPO / "runtime_stub" / "verify.py"
MiB = 1 << 20


@dataclass
class Sample:
    wall_s: float
    cpu_s: float
    maxrss_mib: float
    code: int


@dataclass
class Series:
    label: str
    argv: List[str]
    samples: List[Sample] = field(default_factory=list)
    cwd: Optional[Path] = None  # where to run it (--compare-rev: a checkout of the old code)
    scaling: List[float] = field(default_factory=list)  # lower of two_core_scaling() before/after each round

    @property
    def median(self) -> float:
        return statistics.median(s.wall_s for s in self.samples)

    @property
    def cpu_median(self) -> float:
        return statistics.median(s.cpu_s for s in self.samples)

    @property
    def maxrss(self) -> float:
        return max(s.maxrss_mib for s in self.samples)


# -- running one child ---------------------------------------------------------------------------

# A tiny launcher between us and each measured command. A child's peak RSS as wait4 reports it is
# never below the RSS of the process it was forked from (Linux records the parent's high-water
# mark at exec), so measuring from this 45 MiB Python process would inflate every figure. The
# launcher is a bare `python -S` (about 9 MiB) that forks, execs, waits and reports.
LAUNCHER = r"""
import json, os, sys, time
out = sys.argv[1]
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        os.execvp(sys.argv[2], sys.argv[2:])
    finally:
        os._exit(127)
_, status, ru = os.wait4(pid, 0)
wall = time.perf_counter() - t
with open(out, "w") as f:
    json.dump({"wall": wall, "cpu": ru.ru_utime + ru.ru_stime, "maxrss_kib": ru.ru_maxrss,
               "code": os.waitstatus_to_exitcode(status)}, f)
"""


def run_child(argv: Sequence[str], *, pty: bool = False, cwd: Optional[Path] = None) -> Sample:
    """Run ``argv``; wall time, CPU time and peak RSS of that command alone (see LAUNCHER)."""
    env = dict(os.environ, COLUMNS="120")
    # An installed package has its bytecode cached; this environment sets PYTHONDONTWRITEBYTECODE,
    # which would make every timed run compile bundler/ and runtime_stub/verify.py again (~0.1 s).
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    master = slave = None
    if pty:
        master, slave = os.openpty()

        def drain() -> None:
            while True:
                try:
                    if not os.read(master, 65536):
                        return
                except OSError:
                    return

        reader = threading.Thread(target=drain, daemon=True)
    fd, result = tempfile.mkstemp(prefix="bench-", suffix=".json")
    os.close(fd)
    devnull = os.open(os.devnull, os.O_RDWR)
    try:
        p = subprocess.Popen([sys.executable, "-S", "-c", LAUNCHER, result, *argv], stdin=devnull, stdout=devnull,
                             stderr=slave if pty else devnull, cwd=cwd, env=env)
        if pty:
            os.close(slave)
            reader.start()
        p.wait()
        if pty:
            reader.join(timeout=5)
            os.close(master)
        r = json.loads(Path(result).read_text())
    finally:
        os.close(devnull)
        os.unlink(result)
    return Sample(r["wall"], r["cpu"], r["maxrss_kib"] / 1024, r["code"])


def sync() -> None:
    os.sync()


def warm(path: Path) -> None:
    """Read a file once so that timed runs start from the page cache (warm-cache figures)."""
    with open(path, "rb", buffering=0) as f:
        buf = bytearray(8 * MiB)
        while f.readinto(buf):
            pass


def bundle_argv(*args: object) -> List[str]:
    """The installed `bundle` program, as users run it. Not `python -m bundler.cli`: that
    compiles cli.py on every run (a module run as __main__ never gets cached bytecode), about
    30 ms that no installed `bundle` pays."""
    script = Path(sys.executable).with_name("bundle")
    return [str(script) if script.is_file() else sys.executable, *([] if script.is_file() else ["-m", "bundler.cli"]),
            *map(str, args)]


def module_argv(*args: object) -> List[str]:
    """`python -m bundler.cli`: whatever `bundler` the working directory holds (--compare-rev)."""
    return [sys.executable, "-m", "bundler.cli", *map(str, args)]


SETTLE_S = 3.0
QUIET = 1.75  # two_core_scaling() at or above this: both cores are ours
QUIET_WAIT_S = 300.0


def wait_quiet(log=print) -> float:  # noqa: ANN001
    """Wait (up to QUIET_WAIT_S) until nobody else is using the cores; returns the last scaling."""
    deadline = time.monotonic() + QUIET_WAIT_S
    scaling = two_core_scaling()
    warned = False
    while scaling < QUIET and time.monotonic() < deadline:
        if not warned:
            log(f"  (cores busy: two-core scaling {scaling:.2f}; waiting for them to be free)")
            warned = True
        time.sleep(5)
        scaling = two_core_scaling()
    return scaling


def alternate(pairs: List[Series], runs: int, before, pty_labels=(), ok_codes=(0,), log=print) -> None:  # noqa: ANN001
    """Run every series ``runs`` times, interleaved: A1 B1 C1 A2 B2 C2 ...

    Before each run: ``before`` deletes the last outputs, then sync, then a pause of SETTLE_S. On
    the Firecracker VMs we measured, memory freed by a deleted file is handed back to the host
    about two seconds later (free page reporting) and writing fresh data into it is then far
    slower; whichever command ran first after a delete used to win. With the pause, every run
    starts from the same state.

    Other people's jobs share these 2 vCPUs. Each round starts only when both cores are free
    (`wait_quiet`), and a round after which they were not is run again (up to 3 times); the
    scaling seen before and after each kept round is recorded with the results.
    """
    for i in range(runs):
        for attempt in range(4):
            before_scaling = wait_quiet(log)
            round_samples = []
            for s in pairs:
                before(s)
                sync()
                time.sleep(SETTLE_S)
                sample = run_child(s.argv, pty=s.label in pty_labels, cwd=s.cwd)
                if sample.code not in ok_codes:
                    raise SystemExit(f"{s.label} failed with exit code {sample.code}: {' '.join(s.argv)}")
                round_samples.append(sample)
                log(f"  run {i + 1}/{runs} {s.label:<22} {sample.wall_s:7.2f} s  cpu {sample.cpu_s:6.2f} s  "
                    f"rss {sample.maxrss_mib:6.1f} MiB")
            after_scaling = two_core_scaling()
            if after_scaling >= QUIET or attempt == 3:
                break
            log(f"  (cores were busy during this round: scaling {after_scaling:.2f}; running it again)")
        for s, sample in zip(pairs, round_samples):
            s.samples.append(sample)
            s.scaling.append(min(before_scaling, after_scaling))


# -- the benchmark -------------------------------------------------------------------------------

def two_core_scaling(mib: int = 512) -> float:
    """How much faster two threads hash than one right now (2.0 = two free cores).

    The VMs we measured on share physical cores with other tenants; when a neighbour is busy,
    two SHA-256 streams no longer run at full speed side by side, and every figure that depends on
    two cores (ours) moves while the one-core baselines barely do. Recorded with each result.
    """
    import hashlib

    buf = os.urandom(4 * MiB)

    def work() -> None:
        h = hashlib.sha256()
        for _ in range(mib // 4):
            h.update(buf)

    t = time.perf_counter()
    work()
    one = time.perf_counter() - t
    threads = [threading.Thread(target=work) for _ in range(2)]
    t = time.perf_counter()
    for th in threads:
        th.start()
    for th in threads:
        th.join()
    two = time.perf_counter() - t
    return round(2 * one / two, 2)


def machine() -> Dict[str, str]:
    cpu = "?"
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                cpu = line.split(":", 1)[1].strip()
                break
    except OSError:
        pass
    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    mem = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    ossl = subprocess.run(["openssl", "version"], capture_output=True, text=True).stdout.strip()
    return {
        "cpu": cpu,
        "cpus": str(os.cpu_count()),
        "sha_ni": str(" sha_ni" in flags),
        "memory_gib": f"{mem / (1 << 30):.1f}",
        "kernel": platform.release(),
        "python": platform.python_version(),
        "openssl": ossl,
    }


def fs_of(path: Path) -> str:
    try:
        out = subprocess.run(["df", "-T", str(path)], capture_output=True, text=True).stdout.splitlines()[-1].split()
        return f"{out[1]} on {out[0]}"
    except (OSError, IndexError):
        return "?"


def make_real_build_dir(build: Path, size: int, work: Path) -> Path:
    """`bundle build` of a real model: y = x @ W, W of about size/2 bytes (float32), for sm_86.

    Real bundles verify slower than synthetic single-member ones (FACTS.md): two large members,
    a real engine layout. TensorRT-RTX builds the 1 GiB case in about 4 s with 5 GB peak RSS.
    """
    import numpy as np
    import onnx
    from onnx import TensorProto, helper, numpy_helper

    n = int((size / 2 / 4) ** 0.5) // 64 * 64
    w = np.random.default_rng(0).standard_normal((n, n), dtype=np.float32)
    graph = helper.make_graph(
        [helper.make_node("MatMul", ["x", "w"], ["y"])], "real",
        [helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, n])],
        [helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, n])],
        [numpy_helper.from_array(w, "w")])
    model = helper.make_model(graph, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    path = work / "real.onnx"
    onnx.save(model, str(path))
    del model, graph, w
    subprocess.run(bundle_argv("build", path, "--name", "real", "--version", "1.0.0", "--target", "sm_86",
                               "--backend", "tensorrt-rtx", "--no-golden", "--out", build), check=True, capture_output=True)
    path.unlink()
    return next((build / "engines").glob("*.engine"))


def main(argv: Optional[Sequence[str]] = None) -> int:
    global SETTLE_S
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--size", default="4G", help="engine size for the timed runs (default 4G)")
    ap.add_argument("--engines", type=int, default=4, help="engines in the multi-engine bundle (default 4)")
    ap.add_argument("--runs", type=int, default=5, help="timed runs of each command (default 5)")
    ap.add_argument("--rss-sizes", default="1G,8G", help="sizes for the peak-RSS check ('' to skip)")
    ap.add_argument("--only", default="seal,verify,rt-verify,multi,extract,rss", help="comma-separated subset")
    ap.add_argument("--workdir", type=Path, default=None, help="scratch directory (default: a new one in $TMPDIR)")
    ap.add_argument("--keep", action="store_true", help="keep the scratch directory")
    ap.add_argument("--no-pty", action="store_true", help="run our commands without a terminal (no progress bars)")
    ap.add_argument("--compare-rev", default=None, metavar="REV",
                    help="also time `bundle` as of this git revision (e.g. the commit before a change)")
    ap.add_argument("--settle", type=float, default=SETTLE_S, help="seconds to wait after deleting outputs, before each run")
    ap.add_argument("--json", type=Path, default=HERE / "results.json", help="where to write the results")
    ap.add_argument("--real", action="store_true",
                    help="time seal/verify/extract on a real bundle (`bundle build` of a MatMul model whose weight is "
                         "half of --size, for sm_86 with TensorRT-RTX: engine + source model) instead of a synthetic one")
    a = ap.parse_args(argv)

    SETTLE_S = a.settle
    size = parse_size(a.size)
    only = set(a.only.split(","))
    rss_sizes = [parse_size(s) for s in a.rss_sizes.split(",") if s.strip()] if "rss" in only else []
    work = Path(a.workdir or tempfile.mkdtemp(prefix="trt-bundler-bench-"))
    work.mkdir(parents=True, exist_ok=True)
    need = max(3 * size, 2 * max([0, *rss_sizes]))  # engine + bundle + one output; or bundle + extracted copy
    free = shutil.disk_usage(work).free
    if free < need * 1.1:
        raise SystemExit(f"{work}: {free >> 30} GiB free; this run needs about {need >> 30} GiB")
    pty_labels = () if a.no_pty else ("bundle seal", "bundle verify", "bundle verify (multi)", "bundle extract")
    results: Dict[str, object] = {
        "when": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
        "machine": machine(),
        "filesystem": fs_of(work),
        "size": size,
        "runs": a.runs,
        "cache": "warm (page cache not dropped: not possible here; inputs read once before timing)",
        "progress_bars": not a.no_pty,
        "settle_s": a.settle,
        "operations": {},
        "rss": [],
    }
    print(f"workdir {work} ({results['filesystem']}); {results['machine']}")
    try:
        keydir = work / "keys"
        subprocess.run(bundle_argv("keys", "generate", "bench", "--dir", keydir, "--no-passphrase"),
                       check=True, capture_output=True)
        key, pub = keydir / "bench.key", keydir / "bench.pub"
        ops = results["operations"]
        assert isinstance(ops, dict)
        old = None
        if a.compare_rev:
            old = work / "old-src"
            old.mkdir()
            archive = subprocess.run(["git", "-C", str(REPO), "archive", a.compare_rev, "bundler", "runtime_stub"],
                                     check=True, capture_output=True).stdout
            subprocess.run(["tar", "xf", "-", "-C", str(old)], input=archive, check=True)
            results["compare_rev"] = subprocess.run(["git", "-C", str(REPO), "rev-parse", a.compare_rev],
                                                    check=True, capture_output=True, text=True).stdout.strip()

        def old_series(what: str, *args: object) -> List[Series]:
            """`python -m bundler.cli` run from a checkout of --compare-rev (it shadows the install)."""
            return [Series(f"{what} @{a.compare_rev}", module_argv(*args), cwd=old)] if old else []

        def seal_fresh(build: Path, out: Path) -> Path:
            shutil.rmtree(out, ignore_errors=True)
            subprocess.run(bundle_argv("seal", build, "--key", key, "--out", out), check=True, capture_output=True)
            return next(out.glob("*.bundle.tar"))

        timed = only & {"seal", "verify", "rt-verify", "extract"}
        if timed:
            build = work / "build-1"
            t = time.perf_counter()
            if a.real:
                print(f"\n== a real bundle of about {size / (1 << 30):.2f} GiB: a TensorRT-RTX engine plus its source model")
                engine = make_real_build_dir(build, size, work)
                print(f"  built {engine.name} ({engine.stat().st_size / (1 << 30):.2f} GiB) in {time.perf_counter() - t:.1f} s")
            else:
                print(f"\n== one engine of {size / (1 << 30):.2f} GiB")
                rec = make_build_dir(build, [size])
                engine = build / rec.engines[0].path
                print(f"  wrote {engine.name} in {time.perf_counter() - t:.1f} s")
            bundle = seal_fresh(build, work / "dist-1")
            bsize = bundle.stat().st_size
            warm(engine)
            warm(bundle)

            if "seal" in only:
                print("-- seal")
                warm(engine)
                s_ours = Series("bundle seal", bundle_argv("seal", build, "--key", key, "--out", work / "seal-out"))
                s_cp = Series("cp", ["cp", str(engine), str(work / "cp-out")])
                s_cps = Series("cp + sync", ["sh", "-c", f"cp '{engine}' '{work / 'cp-out'}' && sync '{work / 'cp-out'}'"])
                # Seal hashes every byte twice (member digests, whole-bundle digest): its floor is
                # SHA-256 over the finished bundle, the target (<= 1.2x), not cp.
                s_ssl = Series("openssl dgst -sha256 (finished bundle)", ["openssl", "dgst", "-sha256", str(bundle)])
                s_old = old_series("bundle seal", "seal", build, "--key", key, "--out", work / "seal-out-old")

                def clean_seal(_s: Series) -> None:
                    shutil.rmtree(work / "seal-out", ignore_errors=True)
                    shutil.rmtree(work / "seal-out-old", ignore_errors=True)
                    (work / "cp-out").unlink(missing_ok=True)

                alternate([s_ours, s_ssl, s_cp, s_cps, *s_old], a.runs, clean_seal, pty_labels)
                clean_seal(s_ours)
                ops["seal"] = report(s_ours, [s_ssl, s_cp, s_cps, *s_old], size, "time", 1.2)

            if "verify" in only or "rt-verify" in only:
                print("-- verify")
                warm(bundle)  # the seal runs wrote 10+ GiB since: it may have left the page cache
                series = [Series("bundle verify", bundle_argv("verify", bundle, "--trust", pub)),
                          Series("openssl dgst -sha256", ["openssl", "dgst", "-sha256", str(bundle)])]
                if "rt-verify" in only and RUNTIME_VERIFY.is_file():
                    series.append(Series("runtime/verify.py", [sys.executable, "-I", str(RUNTIME_VERIFY), str(bundle), "--trust", str(pub)]))
                s_old = old_series("bundle verify", "verify", bundle, "--trust", pub)
                alternate(series + s_old, a.runs, lambda s: None, pty_labels)
                ops["verify"] = report(series[0], [series[1], *s_old], bsize, "throughput", 0.95)
                if len(series) > 2:
                    ops["rt-verify"] = report(series[2], [series[1]], bsize, "throughput", 0.95)
                elif "rt-verify" in only:
                    ops["rt-verify"] = {"skipped": f"{RUNTIME_VERIFY} does not exist"}

            if "extract" in only:
                print("-- extract")
                warm(bundle)
                dest, tdest = work / "x-ours", work / "x-tar"
                s_ours = Series("bundle extract", bundle_argv("extract", bundle, "--trust", pub, "--dest", dest))
                s_base = Series("tar xf + openssl dgst",
                                ["sh", "-c", f"mkdir '{tdest}' && tar xf '{bundle}' -C '{tdest}' && openssl dgst -sha256 '{bundle}'"])
                # Extract fsyncs every file before it publishes DEST (a power cut never leaves a
                # half-written tree under the final name), so the like-for-like floor syncs too.
                s_sync = Series("tar xf + sync + openssl dgst",
                                ["sh", "-c", f"mkdir '{tdest}' && tar xf '{bundle}' -C '{tdest}' && sync -f '{tdest}' "
                                             f"&& openssl dgst -sha256 '{bundle}'"])
                s_old = old_series("bundle extract", "extract", bundle, "--trust", pub, "--dest", work / "x-old")

                def clean_extract(_s: Series) -> None:
                    shutil.rmtree(dest, ignore_errors=True)
                    shutil.rmtree(tdest, ignore_errors=True)
                    shutil.rmtree(work / "x-old", ignore_errors=True)

                alternate([s_ours, s_base, s_sync, *s_old], a.runs, clean_extract, pty_labels)
                clean_extract(s_ours)
                ops["extract"] = report(s_ours, [s_base, s_sync, *s_old], bsize, "time", 1.15)
            shutil.rmtree(build)
            shutil.rmtree(work / "dist-1")

        if "multi" in only:
            n = a.engines
            print(f"\n== {n} engines, {size / (1 << 30):.2f} GiB in all")
            build = work / "build-n"
            make_build_dir(build, [size // n] * n)
            bundle = seal_fresh(build, work / "dist-n")
            shutil.rmtree(build)
            warm(bundle)
            series = [Series("bundle verify (multi)", bundle_argv("verify", bundle, "--trust", pub)),
                      Series("one core, same digests", [sys.executable, str(HERE / "onecore.py"), str(bundle)]),
                      Series("openssl dgst -sha256", ["openssl", "dgst", "-sha256", str(bundle)]),
                      *old_series("bundle verify (multi)", "verify", bundle, "--trust", pub)]
            alternate(series, a.runs, lambda s: None, pty_labels)
            ops["multi"] = report(series[0], series[1:], bundle.stat().st_size, "time", 1 / 1.6)
            ops["multi"]["cpu_over_wall"] = round(series[0].cpu_median / series[0].median, 2)
            shutil.rmtree(work / "dist-n")

        for rsize in rss_sizes:
            print(f"\n== peak RSS, one sparse engine of {rsize / (1 << 30):.2f} GiB")
            build = work / "build-rss"
            shutil.rmtree(build, ignore_errors=True)
            make_build_dir(build, [rsize], sparse=True)
            out = work / "dist-rss"
            shutil.rmtree(out, ignore_errors=True)
            sync()
            row = {"size": rsize}
            sample = run_child(bundle_argv("seal", build, "--key", key, "--out", out))
            row["seal"] = asdict(sample)
            bundle = next(out.glob("*.bundle.tar"))
            shutil.rmtree(build)
            row["verify"] = asdict(run_child(bundle_argv("verify", bundle, "--trust", pub)))
            row["extract"] = asdict(run_child(bundle_argv("extract", bundle, "--trust", pub, "--dest", work / "x-rss")))
            shutil.rmtree(work / "x-rss", ignore_errors=True)
            shutil.rmtree(out)
            for op in ("seal", "verify", "extract"):
                r = row[op]
                print(f"  {op:<8} {r['wall_s']:7.2f} s  peak RSS {r['maxrss_mib']:6.1f} MiB  exit {r['code']}")
                if r["code"] != 0:
                    raise SystemExit(f"{op} failed at {rsize} bytes")
            results["rss"].append(row)  # type: ignore[union-attr]
    finally:
        if not a.keep:
            shutil.rmtree(work, ignore_errors=True)

    print()
    print(table(results))
    a.json.write_text(json.dumps(results, indent=2) + "\n")
    print(f"\nwrote {a.json}")
    return 0


def report(ours: Series, bases: List[Series], nbytes: int, kind: str, target: float) -> dict:
    """Ratio against the first baseline: throughput (theirs/ours time, higher is better) or
    time (ours/theirs, lower is better)."""
    base = bases[0]
    if kind == "throughput":
        ratio = base.median / ours.median
        met = ratio >= target
    else:
        ratio = ours.median / base.median
        met = ratio <= target
    return {
        "ours": _series(ours, nbytes),
        "baselines": [_series(b, nbytes) for b in bases],
        "ratio_kind": kind,
        "ratio": round(ratio, 3),
        "target": target,
        "met": met,
        "extra_ratios": {b.label: round(ours.median / b.median, 3) for b in bases[1:]},
    }


def _series(s: Series, nbytes: int) -> dict:
    return {
        "label": s.label,
        "argv": s.argv,
        "median_s": round(s.median, 3),
        "min_s": round(min(x.wall_s for x in s.samples), 3),
        "max_s": round(max(x.wall_s for x in s.samples), 3),
        "median_cpu_s": round(s.cpu_median, 3),
        "median_mib_s": round(nbytes / MiB / s.median, 1),
        "peak_rss_mib": round(s.maxrss, 1),
        "two_core_scaling": s.scaling,
        "samples": [asdict(x) for x in s.samples],
    }


def table(results: dict) -> str:
    lines = ["| operation | ours: median s (MiB/s) | baseline: median s | ratio | target | met | peak RSS MiB | 2-core scaling |",
             "|---|---|---|---|---|---|---|---|"]
    names = {"seal": "seal", "verify": "verify", "rt-verify": "runtime/verify.py", "multi": "verify, several engines",
             "extract": "extract"}
    for key, label in names.items():
        r = results["operations"].get(key)
        if not r:
            continue
        if "skipped" in r:
            lines.append(f"| {label} | skipped: {r['skipped']} | | | | | | |")
            continue
        o, b = r["ours"], r["baselines"][0]
        sym = ">=" if r["ratio_kind"] == "throughput" else "<="
        what = "throughput ratio" if r["ratio_kind"] == "throughput" else "time ratio"
        extra = "".join(f"; vs {k}: {v}x time" for k, v in r["extra_ratios"].items())
        lines.append(
            f"| {label} | {o['median_s']:.2f} ({o['median_mib_s']:.0f}) | {b['label']}: {b['median_s']:.2f}"
            f"{extra} | {r['ratio']:.2f} ({what}) | {sym} {r['target']} | {'yes' if r['met'] else 'NO'} | {o['peak_rss_mib']:.0f} "
            f"| {min(o['two_core_scaling'] or [0]):.2f} |"
        )
    for row in results.get("rss", []):
        g = row["size"] / (1 << 30)
        label = f"{g:g} GiB" if g >= 1 else f"{row['size'] >> 20} MiB"
        lines.append(f"| peak RSS at {label} | seal {row['seal']['maxrss_mib']:.0f}, verify {row['verify']['maxrss_mib']:.0f}, "
                     f"extract {row['extract']['maxrss_mib']:.0f} MiB | | | <= 128 MiB | "
                     f"{'yes' if max(row[k]['maxrss_mib'] for k in ('seal', 'verify', 'extract')) <= 128 else 'NO'} | | |")
    return "\n".join(lines)


if __name__ == "__main__":
    sys.exit(main())
