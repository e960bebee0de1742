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

    sys.path.insert(0, str(Path(__file__).parent))
    from fast import run_cases  # one loop: the same checks as the forked runner

    corpus["cases"].sort(key=lambda c: c["id"] != "good-bundle")  # most mutants die on it
    return run_cases(shared, corpus, ecdsa_fast, normal_message, run_case, verbose=True)


if __name__ == "__main__":
    sys.exit(main())
