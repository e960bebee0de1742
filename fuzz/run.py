#!/usr/bin/env python3
"""The hostile-input campaign's long runs, one command each (issue 13, families 1 and 2).

    python fuzz/run.py mutation --minutes 30        # family 1: Hypothesis mutations of real bundles
    python fuzz/run.py tar_reader --seconds 600     # family 2: one atheris target
    python fuzz/run.py all --minutes 60             # everything, the time split between them
    python fuzz/run.py all --minutes 9 --workers 16 # the same on 16 cores: 16 processes per step
    python fuzz/run.py figures                      # the table docs/security.md quotes

Targets (fuzz/targets/): tar_reader, signature, manifest, trust_policy, npz.

A target's run adds what it finds to its corpus (fuzz/corpus/TARGET/, minimised with libFuzzer's
-merge=1 at the end, so it stays small in git), writes a crashing input to fuzz/findings/TARGET/
and its figures to fuzz/results/TARGET.json. ``--scratch DIR`` runs on a copy of the corpus in DIR
and writes nothing in the repository (tests/test_fuzz_bounded.py, CI).

The mutation run builds a real bundle (``bundle keys generate``, ``bundle create``; or takes one
with ``--bundle TAR --key KEY --pub PUB``), then calls the Hypothesis tests of
tests/test_campaign_mutation.py with fresh random inputs, round after round, until the time is
up; failing inputs land in fuzz/findings/mutation/, figures in fuzz/results/mutation.json.

``--workers N`` runs N such processes side by side (each its own random inputs; the exhaustive
truncation only in the first) and adds their figures up. Exit status: 0 when nothing was found.
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
from typing import List, Optional

REPO = Path(__file__).resolve().parent.parent
FUZZ = REPO / "fuzz"
TARGETS = ["tar_reader", "signature", "manifest", "trust_policy", "npz"]
RESULTS = FUZZ / "results"
# libFuzzer's limits: a hang is an input that takes 10 s (the slowest seen take well under 1 s),
# and memory past 1 GiB is a crash (the verifier's documented bound is far below).
LIMITS = ["-timeout=10", "-rss_limit_mb=1024", "-print_final_stats=1"]


# -- family 2: atheris targets -------------------------------------------------------------------------

def run_target(name: str, seconds: int, scratch: Optional[Path] = None, merge: bool = True,
               results: Optional[Path] = None) -> int:
    script = FUZZ / "targets" / f"{name}.py"
    seeds = FUZZ / "corpus" / name
    if scratch is not None:
        scratch.mkdir(parents=True, exist_ok=True)
        corpus, findings = scratch / "corpus", scratch / "findings"
        figures = results or scratch / "figures.json"
        corpus.mkdir(exist_ok=True)
        dirs = [corpus, seeds]  # the first is written to; the seeds are read only
    else:
        corpus, findings, figures = seeds, FUZZ / "findings" / name, results or RESULTS / f"{name}.json"
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
        "target": name, "seconds": round(wall, 1), "exit_code": p.returncode, "workers": 1,
        "executed": stats.get("number_of_executed_units", 0), "exec_per_s": stats.get("average_exec_per_sec", 0),
        "new_units": stats.get("new_units_added", 0), "peak_rss_mib": stats.get("peak_rss_mb", 0),
        "tried_counted": ours.get("tried", 0), "accepted": ours.get("accepted", 0), "rejected": ours.get("rejected", 0),
        "worst_s": ours.get("worst_s", 0.0), "worst_input_bytes": ours.get("worst_input_bytes", 0),
        "corpus_files": sum(1 for _ in corpus.iterdir()), "crashes": crashes,
        "python": sys.version.split()[0],
    }
    if p.returncode != 0 or crashes:
        doc["log_tail"] = log[-4000:]
    if scratch is None and merge and not crashes:
        _merge(script, corpus, [])
        doc["corpus_files"] = sum(1 for _ in corpus.iterdir())
    figures.parent.mkdir(parents=True, exist_ok=True)
    figures.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps({k: v for k, v in doc.items() if k != "log_tail"}), flush=True)
    if crashes or p.returncode != 0:
        print(f"fuzz {name}: CRASH (exit {p.returncode}); inputs: {', '.join(crashes) or '(none written)'}\n{log[-3000:]}",
              file=sys.stderr)
        return 1
    return 0


_GROWN = re.compile(r"[0-9a-f]{40}\Z")  # libFuzzer names the inputs it adds by their SHA-1


def _merge(script: Path, corpus: Path, extra: List[Path]) -> None:
    """Keep only the inputs that add coverage: libFuzzer's -merge=1 of ``corpus`` and ``extra``
    into a fresh directory. The named seeds (fuzz/make_corpus.py) always stay; grown inputs
    (SHA-1 names) stay only if the merge kept them."""
    with tempfile.TemporaryDirectory(dir=corpus.parent) as t:
        out = Path(t) / "merged"
        out.mkdir()
        p = subprocess.run([sys.executable, str(script), "-merge=1", str(out), str(corpus), *map(str, extra), *LIMITS],
                           capture_output=True, text=True, cwd=REPO)
        if p.returncode != 0 or not any(out.iterdir()):
            return
        seeds = {f.read_bytes() for f in corpus.iterdir() if not _GROWN.match(f.name)}
        keep = {f.name for f in out.iterdir() if f.read_bytes() not in seeds}
        for f in corpus.iterdir():
            if _GROWN.match(f.name) and f.name not in keep:
                f.unlink()
        for name in keep:
            if not (corpus / name).exists():
                shutil.move(str(out / name), corpus / name)


def run_target_workers(name: str, seconds: int, workers: int, scratch: Optional[Path], merge: bool) -> int:
    """``workers`` processes of one target side by side, each on its own scratch corpus; their
    figures added up, their finds merged into the corpus (unless ``scratch``)."""
    base = scratch or Path(tempfile.mkdtemp(prefix=f"fuzz-{name}-"))
    cmds = [[sys.executable, __file__, name, "--seconds", str(seconds), "--scratch", str(base / f"w{i}")] for i in range(workers)]
    codes = [p.wait() for p in [subprocess.Popen(c, cwd=REPO, stdout=subprocess.DEVNULL) for c in cmds]]
    docs = [json.loads((base / f"w{i}" / "figures.json").read_text()) for i in range(workers)
            if (base / f"w{i}" / "figures.json").exists()]
    crashes = [c for d in docs for c in d["crashes"]]
    if scratch is None:
        dest = FUZZ / "findings" / name
        dest.mkdir(parents=True, exist_ok=True)
        crashes = [shutil.copy(c, dest) for c in crashes]
        if merge and not crashes:
            _merge(FUZZ / "targets" / f"{name}.py", FUZZ / "corpus" / name, [base / f"w{i}" / "corpus" for i in range(workers)])
    doc = {
        "target": name, "seconds": max(d["seconds"] for d in docs), "exit_code": max(codes), "workers": workers,
        **{k: sum(d[k] for d in docs) for k in ("executed", "new_units", "tried_counted", "accepted", "rejected")},
        "exec_per_s": sum(d["exec_per_s"] for d in docs), "peak_rss_mib": max(d["peak_rss_mib"] for d in docs),
        "worst_s": max(d["worst_s"] for d in docs), "worst_input_bytes": max(docs, key=lambda d: d["worst_s"])["worst_input_bytes"],
        "corpus_files": sum(1 for _ in (FUZZ / "corpus" / name).iterdir()), "crashes": [str(c) for c in crashes],
        "python": sys.version.split()[0],
    }
    out = (scratch / "figures.json") if scratch else RESULTS / f"{name}.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    if scratch is None:
        shutil.rmtree(base, ignore_errors=True)
    print(json.dumps(doc), flush=True)
    return 1 if crashes or max(codes) else 0


# -- family 1: mutation --------------------------------------------------------------------------------

def run_mutation(minutes: float, base: Optional[List[Path]] = None, results: Optional[Path] = None,
                 truncation: bool = True) -> int:
    """Family 1 for ``minutes``: the controls and the exhaustive truncation, then rounds of every
    family until the time is up."""
    os.environ["CAMPAIGN_PROFILE"] = "long"
    os.environ.setdefault("CAMPAIGN_ROUND", "100")
    os.environ.setdefault("CAMPAIGN_CLI_FIRST", "3")
    os.environ.setdefault("CAMPAIGN_CLI_EVERY", "50")
    sys.path[:0] = [str(REPO), str(REPO / "tests")]
    import test_campaign_mutation as T
    from _campaign import Campaign, CampaignFailure, build_base

    deadline = time.monotonic() + minutes * 60
    findings = FUZZ / "findings" / "mutation"
    failures: List[str] = []
    harness: List[str] = []
    with tempfile.TemporaryDirectory(prefix="campaign-") as t:
        tmp = Path(t)
        if base:
            path, key, pub = base
        else:
            from conftest import make_conv_model

            r = subprocess.run([sys.executable, "-m", "bundler.cli", "keys", "generate", "release", "--dir", str(tmp),
                                "--no-passphrase"], capture_output=True, text=True)
            if r.returncode:
                raise SystemExit(r.stderr)
            key, pub = tmp / "release.key", tmp / "release.pub"
            path = build_base(tmp / "dist", key, make_conv_model(tmp / "tiny.onnx"))
        (tmp / "work").mkdir()
        c = Campaign(path, key, pub, tmp / "work", findings=findings)
        families = [T.test_structural_mutations] * 3 + [T.test_manifest_edits_resigned] * 2 + [
            T.test_statement_edits_signed, T.test_signature_file_edits, T.test_sha256sums_edits_resigned,
            T.test_payload_edits_resigned]

        def run(step) -> None:  # noqa: ANN001
            try:
                step(c)
            except CampaignFailure as e:  # a finding: its input is saved; keep it and go on
                failures.append(f"{step.__name__}: {str(e)[:2000]}")
                print(f"FINDING in {step.__name__}: {str(e)[:500]}", file=sys.stderr, flush=True)
            except Exception as e:  # noqa: BLE001 - the harness itself failed: say where, and go on
                import traceback

                harness.append(f"{step.__name__}: {type(e).__name__}: {str(e)[:500]}")
                print(f"HARNESS ERROR in {step.__name__} (not a finding about the verifier):", file=sys.stderr)
                traceback.print_exc()

        run(T.test_the_starting_bundle_and_its_unedited_reseal_pass_the_oracle)
        if truncation:
            run(T.test_truncation_at_every_block_boundary)
        rounds = 0
        while time.monotonic() < deadline:
            run(families[rounds % len(families)])
            rounds += 1
            print(f"mutation: round {rounds}, {sum(f.tried for f in c.stats.values())} inputs, "
                  f"{max(0, int(deadline - time.monotonic()))} s left", flush=True)
        doc = c.figures()
        doc.update({"rounds": rounds, "examples_per_round": int(os.environ["CAMPAIGN_ROUND"]), "findings": failures,
                    "harness_errors": harness, "workers": 1})
    out = results or RESULTS / "mutation.json"
    out.parent.mkdir(parents=True, exist_ok=True)
    out.write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2), flush=True)
    return 1 if failures or harness else 0


def run_mutation_workers(minutes: float, workers: int, base: Optional[List[Path]]) -> int:
    with tempfile.TemporaryDirectory(prefix="campaign-workers-") as t:
        tmp = Path(t)
        extra = ["--bundle", str(base[0]), "--key", str(base[1]), "--pub", str(base[2])] if base else []
        cmds = [[sys.executable, __file__, "mutation", "--minutes", str(minutes), "--results", str(tmp / f"w{i}.json"), *extra]
                + ([] if i == 0 else ["--no-truncation"]) for i in range(workers)]
        codes = [p.wait() for p in [subprocess.Popen(c, cwd=REPO, stdout=subprocess.DEVNULL) for c in cmds]]
        docs = [json.loads((tmp / f"w{i}.json").read_text()) for i in range(workers) if (tmp / f"w{i}.json").exists()]
    fams: dict = {}
    for d in docs:
        for name, f in d["families"].items():
            a = fams.setdefault(name, {"tried": 0, "accepted": 0, "rejected": 0, "by_class": {}, "worst_s": 0.0,
                                       "worst_input": "", "cli_inputs": 0, "cli_worst_s": 0.0, "cli_peak_rss_mib": 0.0,
                                       "tarfile_reads_fewer_members": 0})
            for k in ("tried", "accepted", "rejected", "cli_inputs", "tarfile_reads_fewer_members"):
                a[k] += f[k]
            for k, v in f["by_class"].items():
                a["by_class"][k] = a["by_class"].get(k, 0) + v
            if f["worst_s"] > a["worst_s"]:
                a["worst_s"], a["worst_input"] = f["worst_s"], f["worst_input"]
            a["cli_worst_s"] = max(a["cli_worst_s"], f["cli_worst_s"])
            a["cli_peak_rss_mib"] = max(a["cli_peak_rss_mib"], f["cli_peak_rss_mib"])
    doc = {"families": dict(sorted(fams.items())), "process_peak_rss_mib": max(d["process_peak_rss_mib"] for d in docs),
           "base_bundle_bytes": docs[0]["base_bundle_bytes"], "seconds": max(d["seconds"] for d in docs),
           "python": docs[0]["python"], "rounds": sum(d["rounds"] for d in docs),
           "examples_per_round": docs[0]["examples_per_round"], "findings": [x for d in docs for x in d["findings"]],
           "harness_errors": [x for d in docs for x in d.get("harness_errors", [])], "workers": workers}
    RESULTS.mkdir(parents=True, exist_ok=True)
    (RESULTS / "mutation.json").write_text(json.dumps(doc, indent=2) + "\n")
    print(json.dumps(doc, indent=2), flush=True)
    return 1 if doc["findings"] or doc["harness_errors"] or max(codes) else 0


# -- figures -----------------------------------------------------------------------------------------------

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
                        f"{f['worst_s'] * 1000:.0f} ms{cli} | {d['process_peak_rss_mib']:.0f} MiB"
                        f"{' (CLI ' + format(f['cli_peak_rss_mib'], '.0f') + ' MiB)' if f['cli_inputs'] else ''} | "
                        f"{sum(1 for x in d.get('findings', []) if fam in x)} |")
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
    ap.add_argument("--workers", type=int, default=1, help="processes side by side (default 1)")
    ap.add_argument("--scratch", type=Path, help="a target only: work in this directory, write nothing in the repository")
    ap.add_argument("--no-merge", action="store_true", help="a target only: leave the grown corpus as it is")
    ap.add_argument("--bundle", type=Path, help="mutation: start from this bundle (with --key and --pub) instead of building one")
    ap.add_argument("--key", type=Path, help="mutation: the private key that signed --bundle (edits are re-signed with it)")
    ap.add_argument("--pub", type=Path, help="mutation: its public key (the trust of every verification)")
    ap.add_argument("--results", type=Path, help=argparse.SUPPRESS)  # a worker's figures file
    ap.add_argument("--no-truncation", action="store_true", help=argparse.SUPPRESS)  # workers after the first
    args = ap.parse_args()
    base = [args.bundle, args.key, args.pub] if args.bundle else None
    if args.bundle and not (args.key and args.pub):
        ap.error("--bundle needs --key and --pub")
    if args.what == "figures":
        print(figures_table())
        return 0
    if args.what == "mutation":
        if args.workers > 1:
            return run_mutation_workers(args.minutes or 30, args.workers, base)
        return run_mutation(args.minutes or 30, base, args.results, truncation=not args.no_truncation)
    if args.what == "all":
        total = (args.minutes or 30) * 60
        if args.workers > 1:
            rc = run_mutation_workers(total / 2 / 60, args.workers, base)
        else:
            rc = run_mutation(total / 2 / 60, base)
        for name in TARGETS:
            seconds = int(total / 2 / len(TARGETS))
            rc |= (run_target_workers(name, seconds, args.workers, None, not args.no_merge) if args.workers > 1
                   else run_target(name, seconds))
        print(figures_table())
        return rc
    seconds = args.seconds or (int(args.minutes * 60) if args.minutes else 600)
    if args.workers > 1:
        return run_target_workers(args.what, seconds, args.workers, args.scratch, not args.no_merge)
    return run_target(args.what, seconds, args.scratch, merge=not args.no_merge, results=args.results)


if __name__ == "__main__":
    sys.exit(main())
