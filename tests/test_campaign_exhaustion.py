"""Issue 13, family 4: exhaustion, the quick sizes of `python benchmarks/exhaustion.py`.

Every input of benchmarks/exhaustion.py (huge declared sizes, sparse on disk; many members; deep and
long names; sparse members; gigabyte and sixteen megabyte signature files; deep JSON; huge numbers
in PAX records and JSON; huge base64; a directory of too many files, a tree too deep; hostile trust
files) is built on the session bundle with the quick sizes and run through `python -I verify.py` (and
`bundle verify` on nine of them: the same code, twice the start-up), each as the child of a launcher that measures it with wait4(2). Each must end
with its one expected exit code and one error line (two inputs are accepted: their bounds are the
point), under 128 MiB of peak RSS. The launcher kills a run after 60 s, so a hang fails the test;
speed is not asserted here: the full-size figures (a million members, gigabyte inputs) are measured
by the benchmark script and quoted in docs/security.md.
"""

from __future__ import annotations

from typing import Dict, List

import pytest

from campaign import hostile  # noqa: F401 - puts benchmarks/ on sys.path
from exhaustion import CASES, RSS_BOUND_MIB, Ctx, check, run_cases

HANG_S = 60.0
# `bundle verify` runs the same verification code as verify.py (docs/verifier.md) and costs twice
# the start-up; here it runs on the inputs that keep the most in memory and on one of each kind.
BOTH = {"control-good-bundle", "signed-member-declares-512GiB", "signatures-16x1MiB-trusted-hint",
        "directories-before-signatures", "json-deep-manifest-trusted", "pax-size-60000-digits",
        "manifest-16MiB-junk", "directory-many-entries", "trust-file-dev-zero"}


@pytest.fixture(scope="module")
def rows(tmp_path_factory, tiny_bundle, keys) -> Dict[str, List[dict]]:  # noqa: ANN001
    from hostile import Bundle

    ctx = Ctx(Bundle.read(tiny_bundle), tiny_bundle, keys["release"]["key"], keys["release"]["pub"], full=False)
    work = tmp_path_factory.mktemp("exhaustion")
    (work / "a").mkdir()
    (work / "b").mkdir()
    out: Dict[str, List[dict]] = {}
    got = run_cases(ctx, work / "a", CASES, limit=HANG_S, which=["verify.py"])
    got += run_cases(ctx, work / "b", [c for c in CASES if c.name in BOTH], limit=HANG_S, which=["bundle verify"])
    for r in got:
        out.setdefault(r["case"], []).append(r)
    return out


@pytest.mark.parametrize("case", [c.name for c in CASES])
def test_refused_with_its_code_in_bounded_memory(case, rows) -> None:  # noqa: ANN001
    got = rows[case]
    assert sorted(r["verifier"] for r in got) == (["bundle verify", "verify.py"] if case in BOTH else ["verify.py"])
    assert check(got, HANG_S, RSS_BOUND_MIB) == []
    assert len({r["code"] for r in got}) == 1  # both verifiers agree
