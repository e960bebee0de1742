"""Run a materialized case corpus through the shared verifier, in this process.

    python mutation/oracle.py CORPUS.json

The corpus (written by mutation/run.py from tests/test_verifier_cases.py's tables) lists hostile
and good bundles with the exit code the test suite expects for each. Exit 0 when every case gives
its code and message, 1 at the first one that does not (printed). cosmic-ray runs this once per mutant of
runtime_stub/verify.py: a mutant that leaves every case's code unchanged "survived".
"""

import json
import sys
from pathlib import Path


def main() -> int:
    corpus = json.loads(Path(sys.argv[1]).read_text())
    sys.path.insert(0, corpus["repo"])
    sys.path.insert(0, str(Path(corpus["repo"]) / "tests"))
    from runtime_stub import verify as shared
    from bundler.signing import ecdsa_fast  # the P-256 arithmetic is not under mutation here
    from test_verifier_cases import normal_message, run_case

    cases = sorted(corpus["cases"], key=lambda c: c["id"] != "good-bundle")  # most mutants die on it
    for case in cases:
        if case.get("policy"):
            trust = shared.load_policy(Path(case["policy"]))
        else:
            trust = shared.load_trust(case.get("trust") or corpus["trust"])
        got = run_case(shared, Path(case["target"]), trust, case.get("via", "file"), ecdsa_fast, case.get("now"))
        ok = got.code == case["code"]
        if ok and case["code"]:
            ok = bool(got.message) and (case.get("message") is None
                                        or normal_message(got.message, Path(case["target"])) == case["message"])
        if not ok:
            print(f"{case['id']}: expected {case['code']}, got {got.code} ({got.message})")
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
