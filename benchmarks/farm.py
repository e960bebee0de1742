"""Build farm vs local --jobs 2, and a rerun with a warm build cache (issue 14, docs/farm.md).

On this machine: a Ray cluster of a head and one extra worker node (`ray start`, one CPU each,
two in all) inside a network namespace of its own (only loopback), built by the same helper the
tests use (tests/test_farm.py `Cluster`). It builds one spec of 3 models x 4 targets x 2
precisions (24 TensorRT-RTX engines) three ways, one run each:

1. `bundle farm --spec S --ray ADDRESS --cache C`: cold, every engine built by a Ray task;
2. `bundle create --spec S` with `jobs = 2`: the same builds on this host's two cores;
3. `bundle farm` again into a new --out with the now warm cache: nothing is built.

It prints wall times, the ratios farm/local and warm/cold (the issue asks under 0.10), and the
peak memory summed over every process involved (the driver or CLI and, for the farm, every Ray
process of the cluster), and writes them to benchmarks/results-farm.json.

    sudo python benchmarks/farm.py [--json benchmarks/results-farm.json]   # needs root (ip netns)
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(REPO / "tests"))
sys.path.insert(0, str(REPO))

# Real architectures from the onnx wheel whose TensorRT-RTX builds take seconds to a minute each
# here, as real models do (squeezenet builds in well under a second: it would measure start-up).
MODELS = ["light_resnet50", "light_densenet121", "light_inception_v2"]
TARGETS = ["sm_80", "sm_86", "sm_89", "sm_120"]  # TensorRT-RTX builds no fp32 GEMM for sm_75 (resnet50)
PRECISIONS = ["fp32", "fp16"]


def rss_of(pids) -> int:  # noqa: ANN001
    total = 0
    for pid in pids:
        try:
            with open(f"/proc/{pid}/statm") as f:
                total += int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
        except OSError:
            pass
    return total


class Peak:
    """Samples the summed RSS of some processes every 0.1 s; `.peak` is the largest sum seen."""

    def __init__(self, pids_fn) -> None:  # noqa: ANN001
        self.pids_fn, self.peak, self._stop = pids_fn, 0, threading.Event()
        self._t = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            self.peak = max(self.peak, rss_of(self.pids_fn()))
            time.sleep(0.1)

    def __enter__(self) -> "Peak":
        self._t.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self._stop.set()
        self._t.join()


def write_spec(d: Path) -> Path:
    import onnx

    light = Path(onnx.__file__).parent / "backend" / "test" / "data" / "light"
    body = [f'[defaults]\nversion = "1.0.0"\ntargets = {json.dumps(TARGETS)}\nprecisions = {json.dumps(PRECISIONS)}\n'
            'backend = "tensorrt-rtx"\ngolden = false\njobs = 2\n']
    for m in MODELS:
        shutil.copyfile(light / f"{m}.onnx", d / f"{m}.onnx")
        body.append(f'\n[[model]]\nname = "{m.replace("light_", "")}"\npath = "{m}.onnx"\n')
    (d / "bundle.toml").write_text("".join(body))
    return d / "bundle.toml"


def timed(cmd_popen, watch) -> tuple:  # noqa: ANN001
    t0 = time.perf_counter()
    p = cmd_popen()
    with Peak(lambda: watch(p)) as peak:
        out, err = p.communicate()
    dt = time.perf_counter() - t0
    if p.returncode != 0:
        raise SystemExit(f"failed ({p.returncode}):\n{err[-3000:]}")
    return dt, peak.peak, err


def main() -> int:
    from test_farm import Cluster, _session

    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--json", type=Path, default=REPO / "benchmarks" / "results-farm.json")
    args = ap.parse_args()
    if os.geteuid() != 0:
        raise SystemExit("needs root: the cluster runs in a network namespace of its own (ip netns)")
    work = Path(tempfile.mkdtemp(prefix="trtb-farm-bench-"))
    cluster = Cluster()
    try:
        t0 = time.perf_counter()
        cluster.start()
        start_s = time.perf_counter() - t0
        proj = work / "proj"
        proj.mkdir()
        spec = write_spec(proj)
        key = work / "keys" / "bench.key"
        subprocess.run([sys.executable, "-m", "bundler.cli", "keys", "generate", "bench", "--dir", str(key.parent),
                        "--no-passphrase"], check=True, capture_output=True, env=dict(os.environ, PYTHONPATH=str(REPO)))
        cache = work / "cache"

        def farm(out: str):  # noqa: ANN202
            return lambda: cluster.popen("farm", "--spec", spec, "--ray", cluster.address, "--key", key,
                                         "--out", work / out, "--cache", cache)

        def farm_pids(p):  # noqa: ANN001, ANN202
            return cluster.processes() + _session(p.pid)

        cold, cold_mem, cold_err = timed(farm("cold"), farm_pids)
        nodes = sorted({line.split(" on ")[1].split()[0] for line in cold_err.splitlines()
                        if line.startswith("done ") and " on " in line})
        local_env = dict(os.environ, PYTHONPATH=str(REPO))
        local, local_mem, _ = timed(
            lambda: subprocess.Popen([sys.executable, "-m", "bundler.cli", "create", "--spec", str(spec), "--key",
                                      str(key), "--out", str(work / "local")], env=local_env, stdout=subprocess.PIPE,
                                     stderr=subprocess.PIPE, text=True, start_new_session=True),
            lambda p: _session(p.pid))
        warm, warm_mem, warm_err = timed(farm("warm"), farm_pids)
        builds = len(MODELS) * len(TARGETS) * len(PRECISIONS)
        assert warm_err.count("reused ") == builds and "building" not in warm_err, warm_err
        result = {
            "spec": {"models": MODELS, "targets": TARGETS, "precisions": PRECISIONS, "builds": builds},
            "cluster": {"nodes": 2, "cpus_per_node": 1, "start_s": round(start_s, 2), "nodes_used": nodes},
            "cpus": os.cpu_count(), "runs": 1,
            "farm_cold_s": round(cold, 2), "local_jobs2_s": round(local, 2), "farm_warm_s": round(warm, 2),
            "farm_over_local": round(cold / local, 3), "warm_over_cold": round(warm / cold, 3),
            "peak_rss_mib": {"farm_cold": round(cold_mem / 2**20), "local_jobs2": round(local_mem / 2**20),
                             "farm_warm": round(warm_mem / 2**20)},
            "date": time.strftime("%Y-%m-%d"),
        }
    finally:
        cluster.stop()
        shutil.rmtree(work, ignore_errors=True)
    print(f"{builds} builds ({len(MODELS)} models x {len(TARGETS)} targets x {len(PRECISIONS)} precisions), "
          f"{os.cpu_count()} cores; Ray cluster of 2 nodes x 1 CPU (started in {start_s:.1f} s, not counted)")
    print(f"{'':28}{'wall s':>8}{'peak RSS MiB':>14}")
    print(f"{'farm, cold cache':28}{cold:>8.1f}{cold_mem / 2**20:>14.0f}")
    print(f"{'local create, jobs = 2':28}{local:>8.1f}{local_mem / 2**20:>14.0f}")
    print(f"{'farm, warm cache':28}{warm:>8.1f}{warm_mem / 2**20:>14.0f}")
    print(f"farm/local = {cold / local:.2f}; warm/cold = {warm / cold:.3f} (goal: under 0.10)")
    args.json.write_text(json.dumps(result, indent=2) + "\n")
    return 0


if __name__ == "__main__":
    sys.exit(main())
