"""The loader's GPU path on a real NVIDIA GPU (the `device` machine), skipped where there is none.

CI and the development machines have no GPU, so these tests skip there. On a GPU host they need
two extracted bundles built elsewhere (TensorRT-RTX cannot be installed on the GPU machine we
have, and cannot run engines on its SM90 GPU anyway):

    TRT_BUNDLER_GPU_BUNDLE   an extracted bundle with only GPU engines (e.g. sm_86 + rtx5090)
    TRT_BUNDLER_CPU_BUNDLE   an extracted bundle with a cpu engine and a GPU engine
    TRT_BUNDLER_TRUST        the public key that signed both

`tests/gpu/prepare-device-bundles.sh` prepares them; docs/testing.md records the run.
"""

from __future__ import annotations

import ctypes
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest


def _has_driver() -> bool:
    try:
        lib = ctypes.CDLL("libcuda.so.1")
    except OSError:
        return False
    return lib.cuInit(0) == 0


pytestmark = [
    pytest.mark.skipif(not _has_driver(), reason="no NVIDIA driver on this host"),
    pytest.mark.skipif(not os.environ.get("TRT_BUNDLER_GPU_BUNDLE"), reason="TRT_BUNDLER_GPU_BUNDLE not set"),
]


def loader(bundle: str, *args: str) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, str(Path(bundle) / "runtime" / "loader.py"), *args,
                        "--trust", os.environ["TRT_BUNDLER_TRUST"]], capture_output=True, text=True, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def _reference_cc() -> str:
    """The GPU's compute capability from a second, independent source: nvidia-smi."""
    out = subprocess.run(["nvidia-smi", "--query-gpu=compute_cap", "--format=csv,noheader"],
                         capture_output=True, text=True, check=True).stdout
    return out.split()[0]


def test_device_query_and_copies_through_ctypes():
    p = loader(os.environ["TRT_BUNDLER_GPU_BUNDLE"], "info", "--cuda-check", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    gpus = doc["host"]["gpus"]
    assert gpus, "the loader found no GPU through libcuda"
    assert gpus[0]["cc"] == _reference_cc()
    assert gpus[0]["memory_bytes"] > 1 << 30
    assert doc["host"]["driver"] and doc["host"]["driver"][0].isdigit()
    check = doc["cuda_check"]
    assert check["equal"] is True and check["bytes"] == 1 << 20
    assert check["copies_equal"] is True and check["graph_replay_equal"] is True


def test_engine_selection_uses_the_real_compute_capability():
    cc = _reference_cc()
    p = loader(os.environ["TRT_BUNDLER_GPU_BUNDLE"], "info", "--json")
    doc = json.loads(p.stdout)
    for e in doc["engines"]:
        assert e["fits"] is False
        assert f"this host has {cc}" in e["why"]
    assert doc["chosen"] is None


def test_clear_refusal_when_no_engine_fits():
    cc = _reference_cc()
    p = loader(os.environ["TRT_BUNDLER_GPU_BUNDLE"], "selftest")
    assert p.returncode == 20, p.stderr
    assert "no engine in this bundle fits this host" in p.stderr
    assert f"(cc {cc})" in p.stderr and "sm86:" in p.stderr


@pytest.mark.skipif(not os.environ.get("TRT_BUNDLER_CPU_BUNDLE"), reason="TRT_BUNDLER_CPU_BUNDLE not set")
def test_cpu_engine_serves_when_the_gpu_does_not_fit():
    p = loader(os.environ["TRT_BUNDLER_CPU_BUNDLE"], "selftest", "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["pass"] is True and doc["target"] == "cpu"
