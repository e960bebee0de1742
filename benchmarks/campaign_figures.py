#!/usr/bin/env python3
"""Issue 13: the campaign's figures, in one command: every hostile input of families 3, 4, 5 and 8,
run through the verifiers, each measured (exit code, wall time, peak RSS).

    python benchmarks/campaign_figures.py                      # with family 4 at full size: ~10 min on 2 vCPUs
    python benchmarks/campaign_figures.py --exhaustion quick   # family 4 at the test suite's sizes: ~3 min

The inputs are the test suite's own (tests/test_campaign_tarfile.py, test_campaign_wrong_software.py,
test_campaign_oms.py, and benchmarks/exhaustion.py for family 4), built on a fresh real bundle made
here exactly as the tests' session bundle is (`bundle create` of a small Conv model for sm_86 and
rtx5090 with TensorRT-RTX, signed by a fresh key). Each input runs under `bundle verify`,
`python -I runtime_stub/verify.py` and, for family 3, `bundle extract` too, each as the child of
the wait4 launcher of benchmarks/exhaustion.py. The JSON written to --out has every row and, per
family, the inputs tried, how many were refused with their expected code, the worst time and the
peak RSS; the table docs/security.md quotes is printed at the end. Exit 1 if any input got another
exit code than its expected one.
"""

from __future__ import annotations

import argparse
import datetime as dt
import json
import os
import platform
import subprocess
import sys
import tempfile
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO), str(REPO / "tests")]

import exhaustion  # noqa: E402
from exhaustion import measure, remove_tree  # noqa: E402
from hostile import Bundle, resign  # noqa: E402

SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"


def make_bundle(work: Path) -> Dict[str, Path]:
    """The tests' session bundle, made the same way: keys, model, `bundle create`."""
    from bundler.signing import generate_key
    from conftest import make_conv_model

    keys = {n: generate_key(n, work / "keys", None) for n in ("release", "other")}
    model = make_conv_model(work / "tiny.onnx")
    env = {**os.environ, "PYTHONPATH": str(REPO), "SOURCE_DATE_EPOCH": "1700000000"}
    subprocess.run([sys.executable, "-m", "bundler.cli", "create", str(model), "--name", "tiny", "--version", "1.0.0",
                    "--target", "sm_86", "--target", "rtx5090", "--shape", SHAPE, "--key", str(keys["release"].private_path),
                    "--out", str(work / "dist"), "--backend", "tensorrt-rtx"], env=env, check=True, capture_output=True)
    return {"bundle": work / "dist" / "tiny-1.0.0.bundle.tar", "key": keys["release"].private_path,
            "pub": keys["release"].public_path}


def run(family: int, inputs: Dict[str, tuple], pub: Path, work: Path, extract: bool = False) -> List[dict]:
    """``inputs``: case -> (tar, expected exit code). One row per case and verifier."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    rows = []
    for case, (tar, expected) in inputs.items():
        argvs = exhaustion.verifiers(tar, pub, sys.executable)
        if extract:
            argvs["bundle extract"] = [sys.executable, "-m", "bundler.cli", "extract", str(tar), "--trust", str(pub),
                                       "--dest", str(work / "dest")]
        for label, argv in argvs.items():
            r = measure(argv, exhaustion.TIME_BOUND_S, env)
            remove_tree(work / "dest")
            rows.append({"family": family, "case": case, "verifier": label, "input_bytes": tar.stat().st_size,
                         "expected": expected, **r})
    return rows


def family3(base: Bundle, key: Path, work: Path) -> Dict[str, tuple]:
    import test_campaign_tarfile as t
    d = work / "f3"
    d.mkdir()
    (d / "outside").mkdir()
    from hostile import write_tar
    return {n: (write_tar(d / f"{n}.tar", build(base, key, d)), code) for n, (build, code) in t.CASES.items()}


def family5(base: Bundle, key: Path, work: Path) -> Dict[str, tuple]:
    import test_campaign_wrong_software as t
    d = work / "f5"
    d.mkdir()
    out = {n: (make(base, key).write(d / f"{n}.tar"), code) for n, (make, code, _) in t.CASES.items()}
    for kind in t.SUMS_KINDS:
        out[f"sha256sums-{kind}"] = (resign(base, key, edit_sums=t._sums_variant(kind)).write(d / f"sums-{kind}.tar"),
                                     0 if kind == "exact" else 16)
    return out


def family8(base: Bundle, key: Path, work: Path) -> Dict[str, tuple]:
    import test_campaign_oms as t
    if not t.OMS.is_dir():
        print(f"family 8 skipped: no {t.OMS}", file=sys.stderr)
        return {}
    d = work / "f8"
    d.mkdir()
    return {c: (t._with_signature(base, raw).write(d / f"case{i}.tar"), 11)
            for i, (c, (raw, _)) in enumerate(t._cases(base, key).items())}


def per_family(rows: List[dict]) -> Dict[int, dict]:
    out = {}
    for fam in sorted({r["family"] for r in rows}):
        rs = [r for r in rows if r["family"] == fam]
        out[fam] = exhaustion.summary(rs)
        out[fam]["wrong"] = sorted({f"{r['case']} ({r['verifier']}): {r['code']}" for r in rs if r["code"] != r["expected"]})
    return out


def table(fams: Dict[int, dict]) -> str:
    names = {3: "tarfile filter bypasses", 4: "exhaustion", 5: "wrong software", 8: "OMS v1.0 conformance"}
    lines = ["| family | inputs tried | hostile / refused | worst time | peak memory |", "|---|---|---|---|---|"]
    for fam, s in fams.items():
        lines.append(f"| {fam}. {names.get(fam, '')} | {s['inputs']} ({s['runs']} runs) | {s['hostile']} / {s['refused']} | "
                     f"{s['worst_time_s']:.2f} s ({s['worst_time_case']}) | {s['peak_rss_mib']:.0f} MiB ({s['peak_rss_case']}) |")
    return "\n".join(lines)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--exhaustion", choices=["full", "quick", "skip"], default="full")
    ap.add_argument("--out", type=Path, default=HERE / "results-campaign.json")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="campaign-", dir=a.work))
    try:
        made = make_bundle(work / "base")
        base, key, pub = Bundle.read(made["bundle"]), made["key"], made["pub"]
        rows = run(3, family3(base, key, work), pub, work, extract=True)
        rows += run(5, family5(base, key, work), pub, work)
        rows += run(8, family8(base, key, work), pub, work)
        if a.exhaustion != "skip":
            ctx = exhaustion.Ctx(base, made["bundle"], key, pub, full=a.exhaustion == "full")
            (work / "f4").mkdir()
            rows += exhaustion.run_cases(ctx, work / "f4", exhaustion.CASES)
    finally:
        remove_tree(work)
    fams = per_family(rows)
    doc = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "python": platform.python_version(),
           "exhaustion_sizes": a.exhaustion, "families": fams, "rows": rows}
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    print(table(fams))
    bad = [w for s in fams.values() for w in s["wrong"]] + exhaustion.check([r for r in rows if r["family"] == 4])
    for b in bad:
        print("FAIL", b)
    print(f"results: {a.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
