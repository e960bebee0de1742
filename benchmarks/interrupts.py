#!/usr/bin/env python3
"""Issue 13, family 6: interrupted work, the long loop, in one command.

    python benchmarks/interrupts.py --iterations 3              # 9 commands x 3 signals x 3: ~5 min on 2 vCPUs
    python benchmarks/interrupts.py --iterations 2 --commands extract --signals SIGKILL --seed 7

For each command (`create`, `seal`, `sign`, `sign --in-place`, `extract`, `run`, `split`, `join`,
`copy`) and each signal (SIGINT to the process group, SIGTERM and SIGKILL to `bundle`), N real runs
are interrupted after a seeded random delay over the command's measured duration, then checked by
the oracle of tests/_interrupt_loop.py (exit status, no process left, destination untouched or
complete, no partial file under a final name, a re-run succeeds and leaves nothing else). The
bundle is a real signed one of about 2 x --weight-mib MiB.

Writes every outcome and, per command and signal, the runs, outcomes, worst time from the signal
to exit and to the last process gone, to --out (benchmarks/results-interrupts.json); prints the
figures docs/security.md quotes. Exit 1 at the first failure, with the seed and the command that
replays it.
"""

from __future__ import annotations

import argparse
import dataclasses
import datetime as dt
import json
import os
import platform
import shutil
import sys
import tempfile
import time
from collections import Counter
from pathlib import Path
from typing import Dict, List

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(REPO), str(REPO / "tests")]

import _interrupt_loop as L  # noqa: E402


def summary(outcomes: List[L.Outcome]) -> Dict[str, dict]:
    out: Dict[str, dict] = {}
    for key in sorted({(o.command, o.signal) for o in outcomes}):
        os_ = [o for o in outcomes if (o.command, o.signal) == key]
        out[f"{key[0]} {key[1]}"] = {
            "runs": len(os_), "states": dict(Counter(o.state for o in os_)), "codes": dict(Counter(str(o.code) for o in os_)),
            "worst_exit_s": max(o.exit_s for o in os_), "worst_gone_s": max(o.gone_s for o in os_),
            "leftovers_cleaned_by_rerun": sum(1 for o in os_ if o.leftovers),
        }
    return out


def totals(outcomes: List[L.Outcome]) -> dict:
    worst = max(outcomes, key=lambda o: o.gone_s)
    return {"runs": len(outcomes), "reruns": len(outcomes), "signals": dict(Counter(o.signal for o in outcomes)),
            "states": dict(Counter(o.state for o in outcomes)),
            "interrupted": sum(1 for o in outcomes if o.state != "finished"),
            "worst_exit_s": max(o.exit_s for o in outcomes),
            "worst_gone_s": worst.gone_s, "worst_case": f"{worst.command} {worst.signal} (delay {worst.delay_s} s)",
            "leftovers_cleaned_by_rerun": sum(1 for o in outcomes if o.leftovers),
            "per_exit": {f"{o.command} {o.signal}": o.exit_s for o in sorted(outcomes, key=lambda o: o.exit_s)}}


def row(t: dict, commands: int) -> str:
    """The family-6 row of docs/security.md's campaign table."""
    st = t["states"]
    worst_exit = max(t["per_exit"], key=lambda k: t["per_exit"][k])
    return (f"| 6. interrupted work | {t['runs']} signalled runs ({commands} commands x SIGINT, SIGTERM, SIGKILL) "
            f"and {t['reruns']} re-runs | {t['runs']} of {t['runs']} clean: {st.get('untouched', 0)} untouched, "
            f"{st.get('complete', 0)} complete, {st.get('partial-set', 0)} split part sets, {st.get('finished', 0)} "
            f"finished first; no partial file, no process left; every re-run exit 0 "
            f"({t['leftovers_cleaned_by_rerun']} removed a SIGKILLed run's work files) | "
            f"{t['per_exit'][worst_exit]:.2f} s from signal to exit ({worst_exit}); {t['worst_gone_s']:.2f} s to the last "
            f"process | n/a |")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--iterations", type=int, default=3, help="runs per command and signal")
    ap.add_argument("--seed", default="6")
    ap.add_argument("--commands", nargs="+", default=list(L.COMMANDS), choices=L.COMMANDS)
    ap.add_argument("--signals", nargs="+", default=list(L.SIGNALS), choices=list(L.SIGNALS))
    ap.add_argument("--weight-mib", type=int, default=16, help="the model's weight; the bundle is about twice that")
    ap.add_argument("--out", type=Path, default=HERE / "results-interrupts.json")
    ap.add_argument("--work", type=Path)
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="interrupts-", dir=a.work))
    t0 = time.monotonic()
    outcomes: List[L.Outcome] = []  # filled as they come: a failure keeps those before it
    failure, durations, bundle_bytes = None, {}, 0

    def show(o: L.Outcome) -> None:
        print(f"{o.command:14} {o.signal:8} #{o.iteration:<3} delay {o.delay_s:6.3f}  exit {o.code:4}  {o.state:11} "
              f"exit {o.exit_s:6.3f} s  gone {o.gone_s:6.3f} s  {' '.join(o.leftovers)}", flush=True)

    try:
        inp = L.prepare(work / "inputs", a.weight_mib)
        bundle_bytes = inp.bundle.stat().st_size
        try:
            _, durations = L.loop(inp, a.commands, a.signals, a.iterations, a.seed, work,
                                  on_outcome=lambda o: (outcomes.append(o), show(o)))
        except L.LoopFailure as e:
            failure = str(e)
            print("FAIL", e, file=sys.stderr)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    doc = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
           "machine": f"{os.cpu_count()} CPUs, {platform.platform()}", "python": platform.python_version(),
           "seed": a.seed, "iterations": a.iterations, "weight_mib": a.weight_mib,
           "bundle_bytes": bundle_bytes,
           "seconds": round(time.monotonic() - t0, 1), "durations_s": durations, "failure": failure,
           "totals": totals(outcomes) if outcomes else {}, "per_command": summary(outcomes),
           "outcomes": [dataclasses.asdict(o) for o in outcomes]}
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    if outcomes:
        print(row(doc["totals"], len(a.commands)))
    print(f"results: {a.out}")
    return 1 if failure else 0


if __name__ == "__main__":
    sys.exit(main())
