"""Shared runners for the hostile-input campaign (issue 13): tests/test_campaign_*.py.

The inputs are made by benchmarks/hostile.py (also used by benchmarks/exhaustion.py); this module
runs the verifiers on them the way an operator would: `bundle verify`, `bundle extract` and the
standard-library `runtime_stub/verify.py` under every CPython 3.8 to 3.13 found on the machine.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Dict, List, Tuple

from conftest import REPO, Result, run_bundle

sys.path.insert(0, str(REPO / "benchmarks"))
import hostile  # noqa: E402,F401 - re-exported for the campaign tests

VERIFIER = REPO / "runtime_stub" / "verify.py"
CLASSES = {1: "internal", 2: "usage", 3: "input", 4: "key", 6: "output", 10: "archive", 11: "signature", 12: "digest",
           13: "members", 14: "unsafe", 15: "limits", 16: "binding", 17: "host", 18: "rollback"}


def pythons() -> List[str]:
    """One interpreter per CPython 3.8 ... 3.13 on this machine (pyenv first, then PATH); the
    running one stands in for its own version. CI has all six (docs/testing.md)."""
    found = {f"{sys.version_info[0]}.{sys.version_info[1]}": sys.executable}
    for minor in range(8, 14):
        v = f"3.{minor}"
        if v in found:
            continue
        for c in sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}.*/bin/python{v}"))):
            if os.access(c, os.X_OK):
                found[v] = c
                break
    return [found[v] for v in sorted(found, key=lambda v: int(v.split(".")[1]))]


# verify.py's own entry point, main(), once per case inside one `python -I` process per
# interpreter: the same code as `python -I verify.py CASE --trust K --json`, without paying the
# interpreter's start-up 25 times per version (tests/test_stdlib_verifier.py runs the file as a
# script under every version).
_DRIVER = r"""
import contextlib, importlib.util, io, json, sys
spec = importlib.util.spec_from_file_location("verify_under_test", sys.argv[1])
mod = importlib.util.module_from_spec(spec)
sys.modules[spec.name] = mod
spec.loader.exec_module(mod)
out = {}
for case, argv in json.loads(sys.stdin.read()).items():
    o, e = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(o), contextlib.redirect_stderr(e):
        code = mod.main(argv)
    out[case] = [code, e.getvalue(), o.getvalue()]
sys.stdout.write(json.dumps(out))
"""


def stdlib_verdicts(cases: Dict[str, List[str]]) -> Dict[str, Dict[str, Tuple[int, str, str]]]:
    """{python: {case: (exit code, stderr, stdout)}} for verify.py's ``main(argv)`` per case."""
    def one(py: str) -> Tuple[str, Dict[str, Tuple[int, str, str]]]:
        p = subprocess.run([py, "-I", "-c", _DRIVER, str(VERIFIER)], input=json.dumps(cases), capture_output=True,
                           text=True, timeout=600, cwd="/")
        assert p.returncode == 0 and "Traceback" not in p.stderr, f"{py}: {p.stderr[-3000:]}"
        return py, {k: tuple(v) for k, v in json.loads(p.stdout).items()}
    with ThreadPoolExecutor(2) as pool:
        return dict(pool.map(one, pythons()))


def assert_one_error_line(err: str, code: int) -> None:
    lines = err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error [{CLASSES[code]}]: "), err
    assert "internal error" not in lines[0] and "Traceback" not in err


def verify_json(target: Path, pub: Path, *extra: object) -> Result:
    return run_bundle("verify", target, "--trust", pub, "--json", *extra)


def assert_verdict(r: Result, code: int) -> dict:
    """The exit code, one error line of the right class, and one JSON document that agrees."""
    assert r.code == code, f"expected {code}, got {r.code}: {r.err.strip()}"
    doc = json.loads(r.out)
    assert doc["exit_code"] == code and doc["ok"] is (code == 0)
    if code:
        assert_one_error_line(r.err, code)
        assert doc["error"]["class"] == CLASSES[code]
    return doc
