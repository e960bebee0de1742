"""Materialize tests/test_verifier_cases.py's cases (tables and generated) into a directory.

    python mutation/corpus.py REPO CACHE OUT CORPUS.json

REPO: the checkout whose tests define the cases; CACHE: a test cache (TRT_BUNDLER_TEST_CACHE)
holding keys/ and dist/tiny-1.0.0.bundle.tar, made by one normal run of the case module; OUT:
where each case's input is written (emptied first). CORPUS.json lists every case with its
expected exit code and message, its trust, policy and clock. mutation/run.py and
mutation/check.py both build their corpus here, so the two runners judge mutants by one table.
"""

from __future__ import annotations

import json
import shutil
import sys
import tarfile
from pathlib import Path


def materialize(repo: Path, cache: Path, out: Path) -> dict:
    sys.path.insert(0, str(repo / "tests"))
    sys.path.insert(0, str(repo))
    import test_verifier_cases as tc

    shutil.rmtree(out, ignore_errors=True)  # what a failed or interrupted build left
    good = cache / "dist" / "tiny-1.0.0.bundle.tar"
    keys = {n: {"key": cache / "keys" / f"{n}.key", "pub": cache / "keys" / f"{n}.pub",
                "id": (cache / "keys" / f"{n}.id").read_text()} for n in ("release", "other")}
    extracted = out / "_extracted"
    with tarfile.open(good) as tf:
        tf.extractall(extracted, filter="data")
    for p in extracted.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    ctx = {"keys": keys, "extracted": extracted / tc.sv.ROOT}
    cases = dict(tc.TABLE)
    cases.update(tc.generated_cases(good))
    messages = tc.expected_messages()
    items = []
    for i, (case, (build, code)) in enumerate(sorted(cases.items())):
        d = out / str(i)
        d.mkdir(parents=True)
        target = build(good, d, ctx)
        message = None if case.startswith("cut/") or not code else messages[tc.normal_case_id(tc.base_case(case))]
        policy = tc.write_policy(case, d, ctx)
        items.append({"id": case, "target": str(target), "code": code, "message": message,
                      "trust": [str(keys[n]["pub"]) for n in tc.trust_names(case)], "via": tc.via_of(case),
                      "policy": str(policy) if policy else None, "now": tc.setup_of(case)[1]})
    return {"repo": str(repo), "trust": [str(keys["release"]["pub"])], "cases": items}


def main() -> int:
    repo, cache, out, corpus = (Path(a).resolve() for a in sys.argv[1:5])
    doc = materialize(repo, cache, out)
    tmp = corpus.with_name(corpus.name + ".tmp")
    tmp.write_text(json.dumps(doc, indent=1))
    tmp.replace(corpus)
    print(len(doc["cases"]), "cases")
    return 0


if __name__ == "__main__":
    sys.exit(main())
