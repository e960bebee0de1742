"""Parallel vs serial build time for a 4-target build (issue: fleet builds).

Builds the same model for four TensorRT-RTX targets twice through the library's real build path,
once with one worker and once with one worker per core, alternating runs, and prints the median
times and the parallel/serial ratio (lower is better; 1/cores is the ideal). Peak RSS of the whole
run is printed too: parallel builds multiply memory by the number of workers.

    python benchmarks/parallel_build.py [--model M.onnx] [--runs 3] [--json out.json]

The default model is PP-OCRv4 det from the rapidocr_onnxruntime wheel when installed (about 1 s
per build), else light_resnet50 from the onnx wheel.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import shutil
import statistics
import sys
import tempfile
import time
from pathlib import Path

TARGETS = ["sm_86", "sm_89", "sm_120", "sm_80"]


def default_model() -> Path:
    try:
        import rapidocr_onnxruntime

        p = Path(rapidocr_onnxruntime.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
        if p.is_file():
            return p
    except ImportError:
        pass
    import onnx

    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / "light_resnet50.onnx"


def shapes_for(model: Path) -> list:
    if "det" in model.name:
        return ["x:1x3x320x320:1x3x640x640:1x3x960x960"]
    return []


def one(model: Path, jobs: int, work: Path) -> float:
    from bundler.backends import BuildRequest, build
    from bundler.model import parse_shape

    out = work / f"b{jobs}-{time.monotonic_ns()}"
    req = BuildRequest(model, "bench", "1.0.0", TARGETS, [parse_shape(s) for s in shapes_for(model)],
                       backend="tensorrt-rtx", golden=False, jobs=jobs)
    t0 = time.perf_counter()
    build(req, out)
    dt = time.perf_counter() - t0
    shutil.rmtree(out)
    return dt


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--model", type=Path, default=None)
    ap.add_argument("--runs", type=int, default=3)
    ap.add_argument("--json", type=Path, default=None)
    args = ap.parse_args()
    model = args.model or default_model()
    cores = os.cpu_count() or 1
    serial, parallel = [], []
    with tempfile.TemporaryDirectory() as d:
        work = Path(d)
        for _ in range(args.runs):  # alternate, so drift hits both the same
            serial.append(one(model, 1, work))
            parallel.append(one(model, cores, work))
    s, p = statistics.median(serial), statistics.median(parallel)
    rss = max(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss)
    result = {
        "model": model.name, "targets": TARGETS, "cores": cores, "runs": args.runs,
        "serial_s": serial, "parallel_s": parallel, "serial_median_s": s, "parallel_median_s": p,
        "parallel_over_serial": p / s, "ideal": 1 / min(cores, len(TARGETS)), "peak_rss_mib": rss / 1024,
    }
    print(f"model {model.name}, {len(TARGETS)} targets, {cores} cores, {args.runs} runs each (alternating)")
    print(f"{'':12}{'median s':>10}")
    print(f"{'serial':12}{s:>10.2f}")
    print(f"{'parallel':12}{p:>10.2f}")
    print(f"parallel/serial = {p / s:.2f}  (ideal {result['ideal']:.2f}); peak RSS of one process {rss / 1024:.0f} MiB")
    if args.json:
        args.json.write_text(json.dumps(result, indent=2))
    return 0


if __name__ == "__main__":
    sys.exit(main())
