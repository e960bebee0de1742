"""Build every real model this project can install with `bundle build --target sm_86`, adding only the
flags the advice asks for; print one tab-separated row per model (the table in docs/models.md).

Needs onnx, rapidocr_onnxruntime and silero-vad (pip install --no-deps silero-vad==6.2.3); run from
the repository root: python benchmarks/try_models.py [NAME-FRAGMENT...]
"""
import glob
import importlib.util
import os
import shlex
import subprocess
import sys
import tempfile
import time
from pathlib import Path
import onnx
import rapidocr_onnxruntime

light = sorted(glob.glob(str(Path(onnx.__file__).parent / "backend/test/data/light/*.onnx")))
rapid = sorted(glob.glob(os.path.dirname(rapidocr_onnxruntime.__file__) + "/models/*.onnx"))
silero = sorted(glob.glob(importlib.util.find_spec("silero_vad").submodule_search_locations[0] + "/data/*.onnx"))
only = sys.argv[1:]
for m in light + rapid + silero:
    if only and not any(o in m for o in only):
        continue
    extra = ["--sample-value", "sr=16000"] if "silero" in m and "sr" in [i.name for i in onnx.load(m, load_external_data=False).graph.input] else []
    out = tempfile.mkdtemp(prefix="tm-")
    flags = list(extra)
    for attempt in range(2):
        t = time.time()
        p = subprocess.run([sys.executable, "-m", "bundler.cli", "build", m, "--name", "m", "--version", "1.0.0",
                            "--target", "sm_86", "--jobs", "1", "--out", out + f"/{attempt}", *flags], capture_output=True, text=True)
        err = " ".join(l for l in p.stderr.splitlines() if l.startswith(("error", "warning")))
        if p.returncode == 3 and "--shape" in err and attempt == 0 and "ran the model" in err:
            flags += shlex.split(err.split("your data has): ", 1)[1])
            continue
        break
    print(f"{Path(m).name}\t{' '.join(flags) or '-'}\t{'built' if p.returncode == 0 else 'exit %d' % p.returncode}\t{time.time()-t:.1f}s\t{err[:400]}", flush=True)
