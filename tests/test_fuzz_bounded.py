"""Coverage-guided fuzzing, bounded for CI (issue 13, family 2).

Each atheris target under fuzz/targets/ runs for a few seconds through the same command as a long
run (``python fuzz/run.py TARGET --seconds N --scratch DIR``), on a copy of its seed corpus, and
must end without a crash: an exception other than the documented ones, a broken invariant (the
two tar reads disagreeing, a verdict outside 0 and 10-16), an input slower than 10 s or memory
past 1 GiB. A crash fails the test with the path of the crashing input; replay it with
``python fuzz/targets/TARGET.py PATH`` and keep it under fuzz/regressions/TARGET/
(tests/test_fuzz_regressions.py replays those).

The budget: about 40 s of fuzzing plus 3 to 5 s of start-up per target (instrumentation) on one
xdist worker, about a minute of CPU in all (it was twice that until the whole suite neared CI's
15 minutes; the long runs are where fuzzing finds things). The targets differ in speed (the tar target runs
the whole verification pipeline, some 80 inputs a second; the signature parser some 1,800), so
the seconds go where an input costs most. The long runs are ``python fuzz/run.py TARGET
--seconds 600`` (docs/testing.md).
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO

pytest.importorskip("atheris", reason="atheris has wheels for CPython 3.11+ on Linux only")

SECONDS = {"tar_reader": 14, "signature": 6, "manifest": 8, "trust_policy": 6, "npz": 8}


@pytest.mark.parametrize("target", sorted(SECONDS))
def test_fuzz_target_for_a_bounded_time(target: str, tmp_path: Path) -> None:
    p = subprocess.run([sys.executable, str(REPO / "fuzz" / "run.py"), target, "--seconds", str(SECONDS[target]),
                        "--scratch", str(tmp_path)], capture_output=True, text=True, cwd=REPO, timeout=600)
    crashes = sorted(str(f) for f in (tmp_path / "findings").glob("*"))
    assert p.returncode == 0 and not crashes, (
        f"fuzz/targets/{target}.py crashed; inputs: {crashes}\n{p.stderr[-6000:]}")
    doc = json.loads((tmp_path / "figures.json").read_text())
    assert doc["crashes"] == [] and doc["exit_code"] == 0
    assert doc["tried_counted"] >= 200, doc  # it really ran (the slowest target does some 2,000)
    assert doc["rejected"] > 0, doc  # and the mutations were refused, not all accepted
