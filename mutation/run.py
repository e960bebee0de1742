"""Mutation testing of the shared verifier and the loader's engine choice, with cosmic-ray.

    python mutation/run.py verify [--work DIR] [--limit N]
    python mutation/run.py loader [--work DIR]
    python mutation/run.py report verify|loader [--work DIR]

Why this shape:
- cosmic-ray rewrites the module on disk for each mutant, so the run happens in a private copy of
  the repository (DIR/repo, made with `git worktree`), never in the checkout you work in.
- The test suite drives the verifier through subprocesses (the CLI and `python -I verify.py`),
  tens of minutes per run. Per mutant, the harness runs the same cases through the shared
  verifier in-process instead: tests/test_verifier_cases.py's tables (test_stdlib_verifier.py's
  TAR_CASES, DIR_CASES and re-signed manifests, plus flips and cuts of every member), each with
  the exit code the suite expects, materialized once into DIR/corpus (mutation/oracle.py runs
  them, ~1 s). For the loader, tests/test_engine_choice.py runs as it is.
- Scope (docs/testing.md says what is and is not covered): for verify.py, the sections between
  the bytes and the verdict: signature files and statements, strict JSON, the manifest schema,
  engine headers, the tar reader and the pipeline. The pure-Python P-256 arithmetic (2,000
  mutants, checked against `cryptography` on generated vectors by its own tests), the trust
  policy, host state, host check and command-line sections are not in this run. Operators: every
  cosmic-ray operator except the arithmetic/bitwise replacements beyond one per operator
  (`+` -> `-` is kept, `+` -> `**`, `<<`, `|`... are not) and `is`/`is not` swaps of `==`.

Results: DIR/<module>.sqlite (the cosmic-ray session) and mutation/results-<module>.json (counts
and every survivor with its line, operator and source), which `report` rewrites.
"""

from __future__ import annotations

import argparse
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent

SCOPES = {
    # section markers of runtime_stub/verify.py ("# == NAME"): from this marker up to the next one
    "verify": ["signature files and statements", "strict JSON", "manifest schema", "engine headers",
               "strict streaming tar reader", "the pipeline"],
}
LOADER_FUNCTIONS = ("_version_matches", "assess", "choose")
EXCLUDED_OPERATORS = [
    r"ReplaceBinaryOperator_\w+_(Mul|Div|FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)$",
    r"ReplaceBinaryOperator_(Mul|Div|FloorDiv|Mod|Pow|RShift|LShift|BitOr|BitAnd|BitXor)_\w+$",
    r"ReplaceComparisonOperator_\w+_(Is|IsNot)$",
]


def sh(*cmd: str, cwd: Path, env: dict) -> None:
    subprocess.run(list(cmd), cwd=cwd, env=env, check=True)


def section_rows(path: Path, names: list) -> list:
    """(first, last) line ranges of the named '# == ' sections."""
    lines = path.read_text().splitlines()
    marks = [(i + 1, line[5:].split(" (")[0].rstrip(" =")) for i, line in enumerate(lines) if line.startswith("# == ")]
    out = []
    for (start, name), nxt in zip(marks, marks[1:] + [(len(lines) + 1, "")]):
        if any(name.startswith(n) for n in names):
            out.append((start, nxt[0] - 1))
    assert len(out) == len(names), (out, names)
    return out


def function_rows(path: Path, names: tuple) -> list:
    import ast
    tree = ast.parse(path.read_text())
    return [(n.lineno, n.end_lineno) for n in tree.body if isinstance(n, ast.FunctionDef) and n.name in names]


def prepare(work: Path, env: dict) -> Path:
    """A private worktree at this checkout's HEAD (the module under test and the case tables)."""
    repo = work / "repo"
    head = subprocess.run(["git", "rev-parse", "HEAD"], cwd=REPO, env=env, check=True, capture_output=True,
                          text=True).stdout.strip()
    if not repo.exists():
        sh("git", "worktree", "add", "--detach", str(repo), head, cwd=REPO, env=env)
    sh("git", "checkout", "--force", "--detach", head, cwd=repo, env=env)
    # Mutants are positions in one version of the module: a session made for other bytes is
    # thrown away. The corpus (the cases and their expected codes) is rebuilt for every commit, so
    # `--survivors` after new cases were added tests the survivors against the new tables.
    digest = hashlib.sha256((repo / "runtime_stub" / "verify.py").read_bytes()).hexdigest()
    mark = work / "verify.sha256"
    if not mark.exists() or mark.read_text() != digest:
        if (work / "verify.sqlite").exists():  # its kills may carry over: see carry_over
            os.replace(work / "verify.sqlite", work / "verify.prev.sqlite")
            if (work / "verify.src.py").exists():
                os.replace(work / "verify.src.py", work / "verify.prev.py")
        (work / "verify.toml").unlink(missing_ok=True)
        shutil.rmtree(work / "cache", ignore_errors=True)  # keys and the good bundle, made by that code
        mark.write_text(digest)
    made = work / "corpus.commit"
    if not made.exists() or made.read_text() != head:
        (work / "corpus.json").unlink(missing_ok=True)
        shutil.rmtree(work / "corpus", ignore_errors=True)
        made.write_text(head)
    return repo


def build_corpus(work: Path, repo: Path, env: dict) -> Path:
    corpus = work / "corpus.json"
    if corpus.exists():
        return corpus
    # One normal run of the case module makes the keys and the bundle into the cache and proves
    # that every case gives its expected code on the unmutated code.
    sh(sys.executable, "-m", "pytest", "-q", "-x", "-p", "no:xdist", "-p", "no:cacheprovider", "-o", "addopts=",
       "tests/test_verifier_cases.py", "tests/test_engine_choice.py", cwd=repo, env=env)
    sh(sys.executable, str(REPO / "mutation" / "corpus.py"), str(repo), str(work / "cache"), str(work / "corpus"),
       str(corpus), cwd=repo, env=env)
    return corpus


def config(work: Path, module: str, repo: Path, corpus: Path, env: dict) -> Path:
    if module == "verify":
        path, test = "runtime_stub/verify.py", f"{sys.executable} {REPO / 'mutation' / 'oracle.py'} {corpus}"
    else:
        path = "runtime_stub/loader.py"
        test = (f"{sys.executable} -m pytest -x -q -p no:xdist -p no:cacheprovider -o addopts= "
                f"tests/test_engine_choice.py")
    cfg = work / f"{module}.toml"
    cfg.write_text(f"""[cosmic-ray]
module-path = "{path}"
timeout = 60.0
excluded-modules = []
test-command = "{test}"

[cosmic-ray.distributor]
name = "local"
""")
    return cfg


def scope(session: Path, rows: list) -> None:
    """Mark mutants outside the scope, or of excluded operators, as skipped."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import WorkerOutcome, WorkResult

    with use_db(str(session), WorkDB.Mode.open) as db:
        skipped = []
        for item in db.pending_work_items:
            m = item.mutations[0]
            row = m.start_pos[0]
            op = m.operator_name.split("/")[-1]
            if not any(a <= row <= b for a, b in rows) or any(re.search(e, op) for e in EXCLUDED_OPERATORS):
                skipped.append(item.job_id)
        db.set_multiple_results(skipped, WorkResult(worker_outcome=WorkerOutcome.SKIPPED))


def _keys(items: list, src: list) -> dict:
    """job id -> (operator, the stripped text of its line, rank among the mutants with that same
    operator and line text): a name for a mutant that survives edits elsewhere in the file."""
    seen: dict = {}
    out = {}
    for item in sorted(items, key=lambda i: (i.mutations[0].operator_name, i.mutations[0].occurrence)):
        m = item.mutations[0]
        base = (m.operator_name, src[m.start_pos[0] - 1].strip())
        seen[base] = seen.get(base, -1) + 1
        out[item.job_id] = base + (seen[base],)
    return out


def carry_over(prev: Path, prev_src: str, session: Path, src: str) -> int:
    """Kills from a session on an earlier version of verify.py, for the mutants of lines whose text
    did not change (the same operator at the same rank on the same line text).

    Why only kills: the case tables only grow, so a mutant the old tables killed on an unchanged
    line is killed again; a survivor is always run again. A re-run of the whole module after
    every small edit would cost 40 minutes; `--fresh` does it anyway."""
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    with use_db(str(prev), WorkDB.Mode.open) as db:  # ranks over every mutant of the file, in scope or not
        done = list(db.completed_work_items)
        old_keys = _keys(list(db.work_items), prev_src.splitlines())
        killed = {old_keys[i.job_id] for i, r in done
                  if r.worker_outcome == WorkerOutcome.NORMAL and r.test_outcome == TestOutcome.KILLED}
    n = 0
    with use_db(str(session), WorkDB.Mode.open) as db:
        pending = {i.job_id for i in db.pending_work_items}
        for job, key in _keys(list(db.work_items), src.splitlines()).items():
            if job in pending and key in killed:
                db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=TestOutcome.KILLED,
                                              output="killed in the previous version (line unchanged)"))
                n += 1
    return n


EQUIVALENT = REPO / "mutation" / "equivalent"


def equivalents(module: str) -> dict:
    """(operator, line text, rank) -> why, from mutation/equivalent/<module>-*.json: survivors
    read and judged equivalent (no input can tell them from the original), each with its reason."""
    out = {}
    for path in sorted(EQUIVALENT.glob(f"{module}-*.json")):
        for e in json.loads(path.read_text()):
            out[(e["operator"], e["source"], e["rank"])] = e["reason"]
    return out


def report(work: Path, module: str) -> dict:
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome

    repo = work / "repo"
    src = (repo / ("runtime_stub/verify.py" if module == "verify" else "runtime_stub/loader.py")).read_text().splitlines()
    counts = {"killed": 0, "survived": 0, "incompetent": 0, "pending": 0, "skipped": 0, "error": 0}
    survivors = []
    judged = equivalents(module)
    with use_db(str(work / f"{module}.sqlite"), WorkDB.Mode.open) as db:
        keys = _keys(list(db.work_items), src)
        for item, result in db.completed_work_items:
            if result.worker_outcome == WorkerOutcome.SKIPPED:
                counts["skipped"] += 1
            elif result.worker_outcome != WorkerOutcome.NORMAL:
                counts["error"] += 1
            elif result.test_outcome == TestOutcome.KILLED:
                counts["killed"] += 1
            elif result.test_outcome == TestOutcome.INCOMPETENT:
                counts["incompetent"] += 1
            else:
                counts["survived"] += 1
                m = item.mutations[0]
                _, text, rank = keys[item.job_id]
                op = m.operator_name.split("/")[-1]
                why = judged.get((op, text, rank))
                survivors.append({"line": m.start_pos[0], "operator": op, "occurrence": m.occurrence,
                                  "rank": rank, "source": text, "job": item.job_id,
                                  **({"equivalent": why} if why else {})})
        counts["pending"] = db.num_work_items - db.num_results
    run = counts["killed"] + counts["survived"] + counts["incompetent"]
    equivalent = sum(1 for s in survivors if "equivalent" in s)
    counts["equivalent"] = equivalent
    doc = {"module": module, "counts": counts, "kill_rate_all": round(counts["killed"] / run, 4) if run else None,
           # the measure: killed among the mutants that some input could tell apart
           "kill_rate_non_equivalent": round(counts["killed"] / (run - equivalent), 4) if run - equivalent else None,
           "survivors": sorted(survivors, key=lambda s: (s["line"], s["operator"]))}
    (REPO / "mutation" / f"results-{module}.json").write_text(json.dumps(doc, indent=1) + "\n")
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("what", choices=["verify", "loader", "report"])
    ap.add_argument("module", nargs="?", choices=["verify", "loader"])
    ap.add_argument("--work", type=Path, default=REPO / ".mutation")
    ap.add_argument("--jobs", type=int, default=1, help="mutants tested at once (verify only)")
    ap.add_argument("--survivors", action="store_true",
                    help="test again the mutants that survived (after cases were added; verify only)")
    ap.add_argument("--fresh", action="store_true", help="carry nothing over from an earlier version's session")
    args = ap.parse_args()
    work = args.work.resolve()
    if args.fresh:
        for stale in ("verify.prev.sqlite", "verify.prev.py"):
            (work / stale).unlink(missing_ok=True)
    if args.what == "report":
        doc = report(work, args.module or "verify")
        print(json.dumps({k: doc[k] for k in ("module", "counts", "kill_rate_all", "kill_rate_non_equivalent")}))
        return 0
    module = args.what
    work.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, TRT_BUNDLER_TEST_CACHE=str(work / "cache"), PYTHONDONTWRITEBYTECODE="1")
    repo = prepare(work, env)
    env["PYTHONPATH"] = str(repo)
    corpus = build_corpus(work, repo, env)
    cfg = config(work, module, repo, corpus, env)
    session = work / f"{module}.sqlite"
    if not session.exists():
        sh("cosmic-ray", "init", str(cfg), str(session), cwd=repo, env=env)
        target = repo / ("runtime_stub/verify.py" if module == "verify" else "runtime_stub/loader.py")
        rows = section_rows(target, SCOPES["verify"]) if module == "verify" else function_rows(target, LOADER_FUNCTIONS)
        scope(session, rows)
        sh("cosmic-ray", "baseline", str(cfg), cwd=repo, env=env)
        if module == "verify":
            shutil.copyfile(target, work / "verify.src.py")
            if (work / "verify.prev.sqlite").exists() and (work / "verify.prev.py").exists():
                n = carry_over(work / "verify.prev.sqlite", (work / "verify.prev.py").read_text(), session,
                               target.read_text())
                print(f"{n} kills carried over from the previous version of the module")
    t0 = time.time()
    if module == "verify":  # forked children of one warm process: see mutation/fast.py
        sh(sys.executable, str(REPO / "mutation" / "fast.py"), str(session), str(corpus),
           str(repo / "runtime_stub" / "verify.py"), "--jobs", str(args.jobs),
           *(["--survivors"] if args.survivors else []), cwd=repo, env=env)
    else:
        sh("cosmic-ray", "exec", str(cfg), str(session), cwd=repo, env=env)
    doc = report(work, module)
    print(json.dumps({k: doc[k] for k in ("module", "counts", "kill_rate_all", "kill_rate_non_equivalent")}),
          f"{time.time() - t0:.0f} s")
    shutil.rmtree(work / "corpus" / "_tmp", ignore_errors=True)
    return 0


if __name__ == "__main__":
    sys.exit(main())
