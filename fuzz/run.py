#!/usr/bin/env python3
"""The hostile-input campaign's long runs, one command each (issue 13, families 1 and 2).

    python fuzz/run.py mutation --minutes 30        # family 1: Hypothesis mutations of real bundles
    python fuzz/run.py tar_reader --seconds 600     # family 2: one atheris target
    python fuzz/run.py all --minutes 60             # everything, the time split between them
    python fuzz/run.py figures                      # the table docs/security.md quotes

Targets (fuzz/targets/): tar_reader, signature, manifest, trust_policy, npz.

A target's run adds what it finds to its corpus (fuzz/corpus/TARGET/, minimised again with
libFuzzer's -merge=1 at the end, so it stays small in git), writes a crashing input to
fuzz/findings/TARGET/ and its figures to fuzz/results/TARGET.json. ``--scratch DIR`` runs on a
copy of the corpus in DIR and writes nothing in the repository (tests/test_fuzz_bounded.py, CI).

The mutation run builds a real bundle (``bundle keys generate``, ``bundle create``), then calls the
Hypothesis tests of tests/test_campaign_mutation.py with fresh random inputs, round after round,
until the time is up; failing inputs land in fuzz/findings/mutation/, figures in
fuzz/results/mutation.json. Exit status: 0 when nothing was found, 1 otherwise.
"""

from __future__ import annotations

import argparse
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "fuzz"
TARGETS = ["tar_reader", "signature", "manifest", "trust_policy", "npz"]
RESULTS = FUZZ / "results"
# libFuzzer's limits: a hang is an input that takes 10 s (the slowest seen take well under 1 s),
# and memory past 1 GiB is a crash (the verifier's documented bound is far below).
LIMITS = ["-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1"]


def run_target(name: str, seconds: int, scratch: Path = None, merge: bool = True) -> int:  # type: ignore[assignment]
    script = FUZZ / "targets" / f"{name}.py"
    seeds = FUZZ / "corpus" / name
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        corpus, findings, figures = scratch / "corpus", scratch / "findings", scratch / "figures.json"
        corpus.mkdir(exist_ok=True)
        dirs = [corpus, seeds]  # the first is written to; the seeds are read only
    else:
        corpus, findings, figures = seeds, FUZZ / "findings" / name, RESULTS / f"{name}.json"
        dirs = [corpus]
    findings.mkdir(parents=True, exist_ok=True)
    env = dict(os.environ, FUZZ_FIGURES=str(figures) + ".live", PYTHONDONTWRITEBYTECODE="1")
    cmd = [sys.executable, str(script), *map(str, dirs), f"-max_total_time={seconds}",
           f"-artifact_prefix={findings}/", *LIMITS]
    print(f"fuzz {name}: {seconds} s", flush=True)
    t0 = time.monotonic()
    p = subprocess.run(cmd, env=env, capture_output=True, text=True, cwd=REPO)
    wall = time.monotonic() - t0
    log = "\n".join(line for line in (p.stdout + p.stderr).splitlines() if not line.startswith("INFO: Instrumenting"))
    crashes = sorted(str(f) for f in findings.iterdir() if f.name.startswith(("crash-", "timeout-", "oom-", "leak-")))
    stats = {k: float(v) if "." in v else int(v) for k, v in re.findall(r"stat::(\w+):\s+([0-9.]+)", log)}
    live = Path(str(figures) + ".live")
    ours = json.loads(live.read_text()) if live.exists() else {}
    live.unlink(missing_ok=True)
    doc = {
        "target": name, "seconds": round(wall, 1), "exit_code": p.returncode,
        "executed": stats.get("number_of_executed_units"), "exec_per_s": stats.get("average_exec_per_sec"),
        "new_units": stats.get("new_units_added"), "peak_rss_mib": stats.get("peak_rss_mb"),
        "tried_counted": ours.get("tried"), "accepted": ours.get("accepted"), "rejected": ours.get("rejected"),
        "worst_s": ours.get("worst_s"), "worst_input_bytes": ours.get("worst_input_bytes"),
        "corpus_files": sum(1 for _ in corpus.iterdir()), "crashes": crashes,
        "python": sys.version.split()[0],
    }
    if p.returncode != 0 or crashes:
        doc["log_tail"] = log[-4000:]
    if scratch is None and merge and not crashes:
        _merge(script, corpus)
        doc["corpus_files"] = sum(1 for _ in corpus.iterdir())
    figures.parent.mkdir(parents=True, exist_ok=True)
    figures.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "log_tail"}))
    if crashes or p.returncode != 0:
        print(f"fuzz {name}: CRASH (exit {p.returncode}); inputs: {', '.join(crashes) or '(none written)'}\n{log[-3000:]}",
              file=sys.stderr)
        return 1
    return 0


def _merge(script: Path, corpus: Path) -> None:
    """Keep only the inputs that add coverage: libFuzzer's -merge=1 into a fresh directory."""
    with tempfile.TemporaryDirectory(dir=corpus.parent) as t:
        out = Path(t) / "merged"
        out.mkdir()
        p = subprocess.run([sys.executable, str(script), "-merge=1", str(out), str(corpus), *LIMITS],
                           capture_output=True, text=True, cwd=REPO)
        if p.returncode == 0 and any(out.iterdir()):
            for f in corpus.iterdir():
                f.unlink()
            for f in out.iterdir():
                shutil.move(str(f), corpus / f.name)


def run_mutation(minutes: float) -> int:
    """Family 1 for ``minutes``: the exhaustive truncation once, then rounds of every family."""
    os.environ["CAMPAIGN_PROFILE"] = "long"
    os.environ.setdefault("CAMPAIGN_ROUND", "100")
    os.environ.setdefault("CAMPAIGN_CLI_FIRST", "3")
    os.environ.setdefault("CAMPAIGN_CLI_EVERY", "50")
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    import test_campaign_mutation as T
    from _campaign import Campaign, build_base
    from conftest import make_conv_model

    deadline = time.monotonic() + minutes * 60
    findings = FUZZ / "findings" / "mutation"
    failures = []
    with tempfile.TemporaryDirectory(prefix="campaign-") as t:
        tmp = Path(t)
        r = subprocess.run([sys.executable, "-m", "bundler.cli", "keys", "generate", "release", "--dir", str(tmp),
                            "--no-passphrase"], capture_output=True, text=True)
        if r.returncode:
            raise SystemExit(r.stderr)
        path = build_base(tmp / "dist", tmp / "release.key", make_conv_model(tmp / "tiny.onnx"))
        (tmp / "work").mkdir()
        c = Campaign(path, tmp / "release.key", tmp / "release.pub", tmp / "work", findings=findings)
        families = [T.test_structural_mutations] * 3 + [T.test_manifest_edits_resigned] * 2 + [
            T.test_statement_edits_signed, T.test_signature_file_edits, T.test_sha256sums_edits_resigned,
            T.test_payload_edits_resigned]
        steps = [T.test_the_starting_bundle_and_its_unedited_reseal_pass_the_oracle, T.test_truncation_at_every_block_boundary]
        def run(step) -> None:  # noqa: ANN001
            try:
                step(c)
            except Exception as e:  # noqa: BLE001 - a finding: it is saved; keep it and go on
                failures.append(f"{step.__name__}: {str(e)[:2000]}")
                print(f"FINDING in {step.__name__}: {str(e)[:500]}", file=sys.stderr, flush=True)

        for step in steps:
            run(step)
        rounds = 0
        while time.monotonic() < deadline:
            run(families[rounds % len(families)])
            rounds += 1
            print(f"mutation: round {rounds}, {sum(f.tried for f in c.stats.values())} inputs, "
                  f"{max(0, int(deadline - time.monotonic()))} s left", flush=True)
        doc = c.figures()
        doc.update({"rounds": rounds, "examples_per_round": int(os.environ["CAMPAIGN_ROUND"]), "findings": failures})
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2))
    return 1 if failures else 0


def figures_table() -> str:
    """The campaign figures as the markdown table docs/security.md carries."""
    rows = ["| family | inputs tried | rejected | accepted | worst time per input | peak memory | found |",
            "|---|---|---|---|---|---|---|"]
    mut = RESULTS / "mutation.json"
    if mut.exists():
        d = json.loads(mut.read_text())
        for fam, f in d["families"].items():
            if fam == "control":
                continue
            cli = f" (CLI {f['cli_worst_s']:.1f} s)" if f["cli_inputs"] else ""
            rows.append(f"| mutation: {fam} | {f['tried']:,} | {f['rejected']:,} | {f['accepted']:,} | "
                        f"{f['worst_s'] * 1000:.0f} ms{cli} | {d['process_peak_rss_mib']:.0f} MiB in-process"
                        f"{', CLI ' + format(f['cli_peak_rss_mib'], '.0f') + ' MiB' if f['cli_inputs'] else ''} | "
                        f"{len(d.get('findings', []))} |")
    for name in TARGETS:
        p = RESULTS / f"{name}.json"
        if not p.exists():
            continue
        d = json.loads(p.read_text())
        rows.append(f"| atheris: {name} | {d['tried_counted']:,} | {d['rejected']:,} | {d['accepted']:,} | "
                    f"{d['worst_s'] * 1000:.0f} ms | {d['peak_rss_mib']} MiB | {len(d['crashes'])} |")
    return "\n".join(rows)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawDescriptionHelpFormatter,
                                 epilog=__doc__.split("\n\n", 1)[1])
    ap.add_argument("what", choices=["mutation", "all", "figures"] + TARGETS)
    ap.add_argument("--seconds", type=int, help="run time (a target; default 600)")
    ap.add_argument("--minutes", type=float, help="run time (mutation, all; default 30)")
    ap.add_argument("--scratch", type=Path, help="a target only: work in this directory, write nothing in the repository")
    ap.add_argument("--no-merge", action="store_true", help="a target only: leave the grown corpus as it is")
    args = ap.parse_args()
    if args.what == "figures":
        print(figures_table())
        return 0
    if args.what == "mutation":
        return run_mutation(args.minutes or 30)
    if args.what == "all":
        total = (args.minutes or 30) * 60
        rc = run_mutation(total / 2 / 60)
        for name in TARGETS:
            rc |= run_target(name, int(total / 2 / len(TARGETS)))
        print(figures_table())
        return rc
    return run_target(args.what, args.seconds or (int(args.minutes * 60) if args.minutes else 600), args.scratch,
                      merge=not args.no_merge)


if __name__ == "__main__":
    sys.exit(main())
