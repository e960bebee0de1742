"""Run a cosmic-ray session's pending mutants of runtime_stub/verify.py through the case oracle,
each in a forked child of one warm process.

    python mutation/fast.py SESSION.sqlite CORPUS.json MODULE.py [--jobs N] [--survivors] [--timeout S]

Why not `cosmic-ray exec`: it rewrites the module on disk and starts the test command as a new
interpreter for every mutant (about 6 s each here, 2.5 h for the verifier's 1,600 mutants on one
core). The oracle's own work is about a second; the rest was interpreter start-up, imports and
re-reading the corpus. Here the parent imports everything once and reads the corpus once, asks
cosmic-ray operators for each mutant (positions counted as its MutationVisitor counts them), and a
forked child compiles that source as `runtime_stub.verify`, runs the cases and exits 0 (survived)
or 1 (killed). Nothing is written into the repository, so a stopped run leaves no mutant on disk.
Results go into the same session database, so `mutation/run.py report` reads them as before.

`--survivors` runs again the mutants recorded as survived (after new cases were added to the
tables: a stricter oracle can only kill more). A child that runs past `--timeout` counts as killed,
as in cosmic-ray (an endless loop is a detected change).
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import sys
import time
import types
from pathlib import Path


def run_cases(module: types.ModuleType, corpus: dict, ecdsa, normalize, run_case,  # noqa: ANN001
              verbose: bool = False) -> int:
    """mutation/oracle.py's loop, against an already-compiled module: 0 when every case gives its
    expected code and message (tests/data/verifier-messages.json), else 1. ``run_case`` is
    tests/test_verifier_cases.py's, so a case runs here exactly as the suite runs it."""
    trusts: dict = {}
    for case in corpus["cases"]:
        if case.get("policy"):
            trust = module.load_policy(Path(case["policy"]))
        else:
            names = tuple(case.get("trust") or corpus["trust"])
            if names not in trusts:
                trusts[names] = module.load_trust(list(names))
            trust = trusts[names]
        got = run_case(module, Path(case["target"]), trust, case.get("via", "file"), ecdsa, case.get("now"))
        ok = got.code == case["code"]
        if ok and case["code"]:
            ok = bool(got.message) and (case.get("message") is None
                                        or normalize(got.message, Path(case["target"])) == case["message"])
        if not ok:
            if verbose:
                print(f"{case['id']}: expected {case['code']}, got {got.code} ({got.message})")
            return 1
    return 0


class Positions:
    """Every mutation position of each operator in one parse of the module, in cosmic-ray's
    occurrence order (pre-order, as its MutationVisitor counts them).

    Parsing the 4,400-line verifier with parso and walking it costs 2-3 s; doing it once instead
    of once per mutant is most of this runner's speed. Mutants are applied in a forked child, to
    the child's copy-on-write copy of the tree, so the parent's tree stays the original."""

    def __init__(self, source: str) -> None:
        from cosmic_ray.ast import ast_nodes, get_ast

        self.tree = get_ast(source)
        self._nodes = list(ast_nodes(self.tree))
        self._by_operator: dict = {}

    def get(self, operator) -> list:  # noqa: ANN001
        key = type(operator).__name__ + repr(sorted(vars(operator).items()))
        if key not in self._by_operator:
            self._by_operator[key] = [(node, index) for node in self._nodes
                                      for index, _ in enumerate(operator.mutation_positions(node))]
        return self._by_operator[key]

    def mutant_source(self, operator, occurrence: int):  # noqa: ANN001, ANN201
        """The mutated module's source, or None when there is no such occurrence. Changes the
        tree: call it only in a child."""
        positions = self.get(operator)
        if occurrence >= len(positions):
            return None
        node, index = positions[occurrence]
        parent = node.parent
        new = operator.mutate(node, index)
        if new is not node:
            at = parent.children.index(node)
            if new is None:
                del parent.children[at]
            else:
                parent.children[at] = new
                new.parent = parent
        return self.tree.get_code()


def child(source: str, path: str, corpus: dict, ecdsa, normalize, run_case, verbose: bool = False) -> int:  # noqa: ANN001
    module = types.ModuleType("runtime_stub.verify")
    module.__file__ = path
    sys.modules["runtime_stub.verify"] = module
    try:
        exec(compile(source, path, "exec"), module.__dict__)  # noqa: S102 - the mutant under test
        return run_cases(module, corpus, ecdsa, normalize, run_case, verbose)
    except BaseException:  # noqa: BLE001 - any escape is a change the cases noticed
        return 1


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("session", type=Path)
    ap.add_argument("corpus", type=Path)
    ap.add_argument("module", type=Path)
    ap.add_argument("--jobs", type=int, default=1)
    ap.add_argument("--timeout", type=float, default=30.0)
    ap.add_argument("--survivors", action="store_true")
    args = ap.parse_args()

    import cosmic_ray.plugins
    from cosmic_ray.work_db import WorkDB, use_db
    from cosmic_ray.work_item import TestOutcome, WorkerOutcome, WorkResult

    corpus = json.loads(args.corpus.read_text())
    corpus["cases"].sort(key=lambda c: c["id"] != "good-bundle")  # most mutants die on it
    sys.path.insert(0, corpus["repo"])
    sys.path.insert(0, str(Path(corpus["repo"]) / "tests"))
    from bundler.signing import ecdsa_fast  # the P-256 arithmetic is not under mutation here
    from test_verifier_cases import normal_message, run_case  # the suite's own runner and masking

    original = args.module.read_text()
    positions = Positions(original)
    with use_db(str(args.session), WorkDB.Mode.open) as db:
        if args.survivors:
            items = [item for item, result in db.completed_work_items
                     if result.worker_outcome == WorkerOutcome.NORMAL and result.test_outcome == TestOutcome.SURVIVED]
        else:
            items = list(db.pending_work_items)
        total, done, t0 = len(items), 0, time.time()
        running: dict = {}  # pid -> (job_id, started)

        def reap(block: bool) -> None:
            nonlocal done
            while running:
                for pid, (job, started) in list(running.items()):
                    got, status = os.waitpid(pid, os.WNOHANG)
                    if got == 0:
                        if time.monotonic() - started > args.timeout:
                            os.killpg(pid, signal.SIGKILL)
                        continue
                    del running[pid]
                    code = os.waitstatus_to_exitcode(status)
                    if code == 3:  # no such occurrence: nothing to test
                        db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.NO_TEST))
                    else:
                        outcome = TestOutcome.SURVIVED if code == 0 else TestOutcome.KILLED
                        db.set_result(job, WorkResult(worker_outcome=WorkerOutcome.NORMAL, test_outcome=outcome,
                                                      output=f"exit {code}"))
                    done += 1
                    if done % 50 == 0 or done == total:
                        print(f"{done}/{total} in {time.time() - t0:.0f} s", flush=True)
                if not block or len(running) < args.jobs:
                    return
                time.sleep(0.01)

        for item in items:
            m = item.mutations[0]
            operator = cosmic_ray.plugins.get_operator(m.operator_name)(**(getattr(m, "operator_args", None) or {}))
            try:
                positions.get(operator)
            except Exception as e:  # noqa: BLE001 - cosmic-ray cannot make this one (recorded as an error, as exec does)
                db.set_result(item.job_id, WorkResult(worker_outcome=WorkerOutcome.EXCEPTION, output=repr(e)))
                continue
            reap(block=True)
            pid = os.fork()
            if pid == 0:  # the child never returns into this loop, whatever happens in it
                code = 1
                try:
                    os.setpgid(0, 0)
                    source = positions.mutant_source(operator, m.occurrence)
                    code = 3 if source is None else child(source, str(args.module), corpus, ecdsa_fast, normal_message, run_case)
                finally:
                    os._exit(code)
            running[pid] = (item.job_id, time.monotonic())
        while running:
            reap(block=False)
            time.sleep(0.01)
    print(f"{total} mutants in {time.time() - t0:.0f} s")
    return 0


if __name__ == "__main__":
    sys.exit(main())
