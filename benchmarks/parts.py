"""Split bundles: time and peak memory of verifying a part set against the same bundle as one tar.

    python benchmarks/parts.py [--size 1G] [--part 300M] [--runs 3]

Makes a real bundle with one engine of ``--size`` (benchmarks/fakebuild.py, sealed by the real
`bundle seal`), splits it with `bundle split`, then times, in child processes:
`verify.py TAR`, `verify.py INDEX` (the same bundle through its parts), `bundle verify` of both,
`bundle join` and `bundle copy` of the part set to a directory on the same disk. Prints median
wall time, CPU time and peak RSS per command; no assertion, no timing in the test suite.

A part set costs more CPU than a tar by design: each byte is hashed three times (the member's
digest, the part's digest that names a bad part, the whole bundle's) where a tar needs two, and
parts are read with read() (they often sit on FUSE or removable media) where a tar is mapped.
Two of the three digests run on worker threads, so with two free cores the wall time stays
close to the tar's; parts on a USB stick are bound by the stick, not the CPU.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import List, Optional, Sequence

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(HERE)]

from fakebuild import make_build_dir, parse_size  # noqa: E402


def child(argv: List[str]) -> tuple:
    """(wall s, cpu s, peak RSS MiB) of one child process that must exit 0 (wait4: its own
    figures, not the sum or maximum over every child so far)."""
    t = time.monotonic()
    p = subprocess.Popen(argv, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    _, status, ru = os.wait4(p.pid, 0)
    wall = time.monotonic() - t
    p.returncode = os.waitstatus_to_exitcode(status)
    err = p.stderr.read() if p.stderr else ""
    if p.returncode != 0:
        raise SystemExit(f"{' '.join(argv)}: exit {p.returncode}: {err.strip()}")
    return wall, ru.ru_utime + ru.ru_stime, ru.ru_maxrss / 1024


def main(argv: Optional[Sequence[str]] = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--size", default="1G", help="engine size (default 1G)")
    ap.add_argument("--part", default="300M", help="--max-part-size for the split (default 300M)")
    ap.add_argument("--runs", type=int, default=3)
    args = ap.parse_args(argv)
    work = Path(tempfile.mkdtemp(prefix="parts-bench-"))
    py = [sys.executable]
    bundle = py + ["-m", "bundler.cli"]
    env_path = os.pathsep.join([str(REPO), os.environ.get("PYTHONPATH", "")])
    os.environ["PYTHONPATH"] = env_path
    try:
        make_build_dir(work / "build", [parse_size(args.size)])
        subprocess.run(bundle + ["keys", "generate", "k", "--dir", str(work / "keys"), "--no-passphrase"], check=True,
                       capture_output=True)
        key, pub = work / "keys" / "k.key", work / "keys" / "k.pub"
        subprocess.run(bundle + ["seal", str(work / "build"), "--key", str(key), "--out", str(work / "dist")],
                       check=True, capture_output=True)
        tar = next((work / "dist").glob("*.bundle.tar"))
        subprocess.run(bundle + ["split", str(tar), "--key", str(key), "--trust", str(pub), "--out",
                                 str(work / "parts"), "--max-part-size", args.part], check=True, capture_output=True)
        index = next((work / "parts").glob("*.parts.json"))
        verifier = [sys.executable, "-I", str(REPO / "runtime_stub" / "verify.py")]
        cases = [
            ("verify.py TAR", verifier + [str(tar), "--trust", str(pub)], None),
            ("verify.py PARTS", verifier + [str(index), "--trust", str(pub)], None),
            ("bundle verify TAR", bundle + ["verify", str(tar), "--trust", str(pub)], None),
            ("bundle verify PARTS", bundle + ["verify", str(index), "--trust", str(pub)], None),
            ("bundle join", bundle + ["join", str(index), "--trust", str(pub), "--out", str(work / "joined")],
             work / "joined"),
            ("bundle copy PARTS", bundle + ["copy", str(index), str(work / "stick")], work / "stick"),
        ]
        print(f"bundle {tar.stat().st_size} bytes, {len(list((work / 'parts').glob('*.part-*')))} parts")
        print(f"{'command':22} {'wall s':>8} {'cpu s':>8} {'peak MiB':>9}")
        for label, argv_, out in cases:
            samples = []
            for _ in range(args.runs):
                if out is not None:
                    shutil.rmtree(out, ignore_errors=True)
                    if label.startswith("bundle copy"):
                        out.mkdir()
                samples.append(child(argv_))
            wall = statistics.median(s[0] for s in samples)
            cpu = statistics.median(s[1] for s in samples)
            rss = max(s[2] for s in samples)
            print(f"{label:22} {wall:8.2f} {cpu:8.2f} {rss:9.0f}")
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
