"""Memory bound: seal, verify and extract of a 1 GiB engine stay under 128 MiB of peak RSS.

Bundles hold 2-40 GiB engines; every stage streams through a fixed ring of buffers, so peak
memory must not grow with the payload. Sizes other than 1 GiB (8 GiB included) are checked by
`python benchmarks/run.py`, which prints the same measurement; timings are never asserted here.

How RSS is measured: each `bundle` command runs under a tiny launcher (`python -S`, about 9 MiB)
that forks it, waits, and reports `resource.getrusage(RUSAGE_CHILDREN).ru_maxrss`. Not measured
from pytest directly, for two reasons: RUSAGE_CHILDREN of this process is the maximum over every
child it ever had (TensorRT builds in other tests reach gigabytes), and a child's high-water mark
starts at the RSS of the process it was forked from (Linux records it at exec), which for pytest
with onnx and TensorRT loaded is itself near the limit. The launcher's own few MiB are included:
the bound is conservative.

The engine is sparse (a valid TensorRT-RTX header, then a hole), so it is made instantly and takes
no disk; the bundle and the extracted copy are real 1 GiB files in tmp_path, deleted at the end.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

sys.path.insert(0, str(REPO / "benchmarks"))
from fakebuild import make_build_dir  # noqa: E402

LIMIT_MIB = 128
SIZE = 1 << 30

LAUNCHER = r"""
import json, os, resource, sys
pid = os.fork()
if pid == 0:
    try:
        os.execv(sys.executable, [sys.executable, "-m", "bundler.cli", *sys.argv[2:]])
    finally:
        os._exit(127)
_, status = os.waitpid(pid, 0)
with open(sys.argv[1], "w") as f:
    json.dump({"code": os.waitstatus_to_exitcode(status),
               "maxrss_mib": resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss / 1024}, f)
"""


def peak_rss(tmp_path: Path, *args: object) -> dict:
    """Run `bundle ARGS` under the launcher; its exit code, stderr and peak RSS in MiB."""
    report = tmp_path / "rss.json"
    p = subprocess.run(
        [sys.executable, "-S", "-c", LAUNCHER, str(report), *map(str, args)],
        capture_output=True, text=True, timeout=300, env={**os.environ, "PYTHONPATH": str(REPO)},
    )
    assert p.returncode == 0, p.stderr
    out = json.loads(report.read_text())
    out["err"] = p.stderr
    return out


def test_peak_rss_is_bounded_at_1_gib(tmp_path, keys) -> None:  # noqa: ANN001
    if shutil.disk_usage(tmp_path).free < 3 * SIZE:
        pytest.skip("needs 3 GiB of free disk in tmp_path")
    build, out, dest = tmp_path / "build", tmp_path / "dist", tmp_path / "extracted"
    make_build_dir(build, [SIZE], name="memtest", sparse=True)
    try:
        seal = peak_rss(tmp_path, "seal", build, "--key", keys["release"]["key"], "--out", out)
        assert seal["code"] == 0, seal["err"]
        bundle = out / "memtest-1.0.0.bundle.tar"
        assert bundle.stat().st_size > SIZE

        verify = peak_rss(tmp_path, "verify", bundle, "--trust", keys["release"]["pub"])
        assert verify["code"] == 0, verify["err"]

        extract = peak_rss(tmp_path, "extract", bundle, "--trust", keys["release"]["pub"], "--dest", dest)
        assert extract["code"] == 0, extract["err"]
        engine = next((dest / "engines").glob("*.engine"))
        assert engine.stat().st_size == SIZE

        peaks = {name: round(r["maxrss_mib"], 1) for name, r in (("seal", seal), ("verify", verify), ("extract", extract))}
        print(f"peak RSS at 1 GiB: {peaks} MiB")
        for name, mib in peaks.items():
            assert mib < LIMIT_MIB, f"{name}: peak RSS {mib} MiB for a 1 GiB engine (limit {LIMIT_MIB} MiB)"
    finally:
        shutil.rmtree(dest, ignore_errors=True)
        shutil.rmtree(out, ignore_errors=True)
        shutil.rmtree(build, ignore_errors=True)
