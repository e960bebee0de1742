"""Test recorded survivors again, against the cases of this working tree, without a session.

    python mutation/check.py [--lines 1444-1895] [--jobs 2] [--verbose]

Why: `mutation/run.py verify --survivors` tests the committed HEAD in a private worktree, so
each round of new cases needs a commit and a rebuilt corpus. When writing cases against the
survivors of mutation/results-verify.json, this runs exactly those mutants (optionally only a
range of lines) against the cases as they are in the working tree: it materializes them
(mutation/corpus.py, into --work), then forks one child per mutant as mutation/fast.py does and
runs the same case loop. It prints every mutant that still survives; record the final figures
with `mutation/run.py` after committing.

The survivors' occurrence numbers belong to the verifier the session ran on (--source, the
session's copy). Each is found again in the working tree's verifier by its operator, the text of
its line and its rank among the mutants of that operator on lines of that text (the name
mutation/run.py's carry-over uses), so edits elsewhere in the file do not lose it; one whose line
is gone is reported as stale and not run.
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path.insert(0, str(HERE))

from fast import Positions, child  # noqa: E402 - the forked runner's own parse and case loop


def relocate(old: Positions, old_source: str, new: Positions, new_source: str, operator, occurrence: int):  # noqa: ANN001, ANN201
    """(line, occurrence, rank, line text) in the new source of the mutant ``occurrence`` of the
    old one, or None. The rank is its place among the mutants of that operator on lines of that
    text: with the operator and the text, the mutant's name in mutation/equivalent/."""
    old_lines, new_lines = old_source.splitlines(), new_source.splitlines()

    def line_of(node) -> int:  # noqa: ANN001
        return node.start_pos[0]

    olds = old.get(operator)
    if occurrence >= len(olds):
        return None
    text = old_lines[line_of(olds[occurrence][0]) - 1].strip()
    same = [k for k, (n, _) in enumerate(olds) if old_lines[line_of(n) - 1].strip() == text]
    rank = same.index(occurrence)
    news = new.get(operator)
    cand = [k for k, (n, _) in enumerate(news) if new_lines[line_of(n) - 1].strip() == text]
    if rank >= len(cand):
        return None
    return line_of(news[cand[rank]][0]), cand[rank], rank, text


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--results", type=Path, default=HERE / "results-verify.json")
    ap.add_argument("--source", type=Path, default=REPO / ".mutation" / "verify.src.py",
                    help="the verifier the session ran on (default: mutation/run.py's copy of it)")
    ap.add_argument("--lines", help="FIRST-LAST: only survivors on these lines of runtime_stub/verify.py")
    ap.add_argument("--work", type=Path, default=REPO / ".mutation" / "check")
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--verbose", action="store_true", help="print the first case each killed mutant fails")
    args = ap.parse_args()

    import cosmic_ray.plugins

    module_path = REPO / "runtime_stub" / "verify.py"
    source = module_path.read_text()
    positions = Positions(source)
    if not args.source.is_file():  # guessing it would move every survivor onto the wrong mutant
        ap.error(f"{args.source}: no such file (the verifier the results' session ran on)")
    old_source = args.source.read_text()
    old_positions = positions if old_source == source else Positions(old_source)
    judged = set()
    for path in sorted((HERE / "equivalent").glob("verify-*.json")):
        judged.update((e["operator"], e["source"], e["rank"]) for e in json.loads(path.read_text()))
    survivors, stale, equivalent = [], [], 0
    for s in json.loads(args.results.read_text())["survivors"]:
        operator = cosmic_ray.plugins.get_operator("core/" + s["operator"])()
        moved = relocate(old_positions, old_source, positions, source, operator, s["occurrence"])
        if moved is None:
            stale.append(s)
        elif (s["operator"], moved[3], moved[2]) in judged:
            equivalent += 1
        else:
            survivors.append(dict(s, line=moved[0], occurrence=moved[1], rank=moved[2], operator_obj=operator))
    if args.lines:
        lo, hi = (int(x) for x in args.lines.split("-"))
        survivors = [s for s in survivors if lo <= s["line"] <= hi]

    work = args.work.resolve()
    work.mkdir(parents=True, exist_ok=True)
    cache = Path(os.environ.get("TRT_BUNDLER_TEST_CACHE") or (REPO / ".mutation" / "cache"))
    env = dict(os.environ, TRT_BUNDLER_TEST_CACHE=str(cache), PYTHONDONTWRITEBYTECODE="1")
    if not (cache / "dist" / "tiny-1.0.0.bundle.tar").is_file():
        subprocess.run([sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider",
                        "-o", "addopts=", "tests/test_verifier_cases.py", "-k", "good-bundle"],
                       cwd=REPO, env=env, check=True)
    corpus_path = work / "corpus.json"
    subprocess.run([sys.executable, str(HERE / "corpus.py"), str(REPO), str(cache), str(work / "corpus"),
                    str(corpus_path)], cwd=REPO, env=env, check=True)
    corpus = json.loads(corpus_path.read_text())
    corpus["cases"].sort(key=lambda c: c["id"] != "good-bundle")

    sys.path.insert(0, str(REPO))
    sys.path.insert(0, str(REPO / "tests"))
    from bundler.signing import ecdsa_fast
    from test_verifier_cases import normal_message, run_case

    running: dict = {}
    outcome: dict = {}
    t0 = time.time()

    def reap(block: bool) -> None:
        while running:
            for pid, (key, started) in list(running.items()):
                got, status = os.waitpid(pid, os.WNOHANG)
                if got == 0:
                    if time.monotonic() - started > args.timeout:
                        os.killpg(pid, 9)
                    continue
                del running[pid]
                code = os.waitstatus_to_exitcode(status)
                outcome[key] = {0: "survived", 3: "no-such-mutant"}.get(code, "killed")
            if not block or len(running) < args.jobs:
                return
            time.sleep(0.01)

    for i, s in enumerate(survivors):
        operator = s["operator_obj"]
        reap(block=True)
        pid = os.fork()
        if pid == 0:
            code = 1
            try:
                os.setpgid(0, 0)
                if not args.verbose:
                    devnull = os.open(os.devnull, os.O_WRONLY)
                    os.dup2(devnull, 1)
                mutant = positions.mutant_source(operator, s["occurrence"])
                if mutant is None:
                    code = 3
                else:
                    if args.verbose:
                        print(f"-- line {s['line']} {s['operator']} #{s['occurrence']}:", flush=True)
                    code = child(mutant, str(module_path), corpus, ecdsa_fast, normal_message, run_case, args.verbose)
            finally:
                os._exit(code)
        running[pid] = (i, time.monotonic())
    while running:
        reap(block=False)
        time.sleep(0.01)

    alive = [s for i, s in enumerate(survivors) if outcome.get(i) == "survived"]
    for s in alive:
        print(f"survives  {s['line']:5d}  {s['operator']:45s} rank {s['rank']:<2d} {s['source'][:90]}")
    for s in stale:
        print(f"stale     {s['line']:5d}  {s['operator']:45s} (line changed since the session)")
    killed = sum(1 for v in outcome.values() if v == "killed")
    print(f"{len(survivors)} run: {killed} killed, {len(alive)} survive, {len(stale)} stale, "
          f"{equivalent} judged equivalent (not run); "
          f"{len(corpus['cases'])} cases; {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
