"""The loader stub, end to end on the cpu target, from an extracted bundle, in a child process.

Each test runs `runtime/loader.py` copied out of a real bundle, the way an operator would, and
checks its verdicts against onnxruntime/onnx reference outputs for a real model from a wheel.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import numpy_helper

from conftest import SAMPLE, onnx_light_model, run_bundle

SHAPE = "input:1x3x64x64:4x3x64x64:16x3x64x64"


def loader(root: Path, *args: object, env: dict = None, cwd: Path = None) -> subprocess.CompletedProcess:  # noqa: RUF013
    import os

    e = dict(os.environ)
    e.pop("BUNDLE_TRUST", None)
    e.update(env or {})
    p = subprocess.run([sys.executable, str(root / "runtime" / "loader.py"), *map(str, args)],
                       capture_output=True, text=True, env=e, cwd=cwd, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory, keys) -> Path:  # noqa: ANN001
    """tinynet with a cpu engine and an sm_86 engine, extracted."""
    d = tmp_path_factory.mktemp("cpu")
    r = run_bundle("create", SAMPLE, "--name", "tinynet", "--version", "1.0.0", "--target", "cpu", "--target", "sm_86",
                   "--shape", SHAPE, "--key", keys["release"]["key"], "--out", d, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    dest = d / "x"
    r = run_bundle("extract", d / "tinynet-1.0.0.bundle.tar", "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    return dest


def test_info_explains_every_engine(cpu_bundle, keys):
    p = loader(cpu_bundle, "info", "--trust", keys["release"]["pub"], "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    by_target = {e["target"]: e for e in doc["engines"]}
    assert by_target["cpu"]["fits"] is True
    assert by_target["sm86"]["fits"] is False and "no GPU on this host" in by_target["sm86"]["why"]
    assert doc["chosen"] == by_target["cpu"]["path"]
    assert doc["host"]["gpus"] == []


def test_selftest_run_bench_from_another_directory(cpu_bundle, keys, tmp_path):
    # BUNDLE_TRUST is the default key; the loader finds its bundle from its own location.
    env = {"BUNDLE_TRUST": str(keys["release"]["pub"])}
    p = loader(cpu_bundle, "selftest", env=env, cwd=tmp_path)
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("PASS") and "max abs err" in p.stdout
    p = loader(cpu_bundle, "selftest", "--json", env=env, cwd=tmp_path)
    doc = json.loads(p.stdout)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["error"] is None  # the --json contract
    assert doc["pass"] is True and doc["max_abs_err"] <= doc["atol"] and doc["latency_ms"] > 0

    x = np.random.default_rng(5).random((3, 3, 64, 64), dtype=np.float32)
    np.save(tmp_path / "x.npy", x)
    p = loader(cpu_bundle, "run", "--input", f"input={tmp_path / 'x.npy'}", "--output", tmp_path / "out.npz", env=env)
    assert p.returncode == 0, p.stderr
    out = np.load(tmp_path / "out.npz")["probs"]
    import onnxruntime as ort

    ref = ort.InferenceSession(str(SAMPLE), providers=["CPUExecutionProvider"]).run(None, {"input": x})[0]
    np.testing.assert_allclose(out, ref, rtol=1e-5, atol=1e-6)
    assert out.shape == (3, 10)

    p = loader(cpu_bundle, "bench", "--iterations", "20", "--warmup", "2", "--json", env=env)
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["iterations"] == 20 and doc["target"] == "cpu"
    lat = doc["latency_ms"]
    assert 0 < lat["p50"] <= lat["p90"] <= lat["p99"]
    assert doc["throughput_per_s"] > 0


def test_run_reports_input_mismatches(cpu_bundle, keys, tmp_path):
    t = ("--trust", keys["release"]["pub"])
    np.save(tmp_path / "small.npy", np.zeros((1, 3, 32, 32), np.float32))
    np.save(tmp_path / "int.npy", np.zeros((1, 3, 64, 64), np.int64))
    np.save(tmp_path / "big.npy", np.zeros((17, 3, 64, 64), np.float32))
    cases = [
        (("--input", f"input={tmp_path / 'small.npy'}"), "outside the engine's profile 1x3x64x64 .. 16x3x64x64"),
        (("--input", f"input={tmp_path / 'big.npy'}"), "has shape 17x3x64x64"),
        (("--input", f"input={tmp_path / 'int.npy'}"), "input input is int64; the model takes float32"),
        (("--input", f"image={tmp_path / 'small.npy'}"), "inputs needed: input; given: image"),
        (("--input", f"input={tmp_path / 'nope.npy'}"), "cannot read"),
    ]
    for args, needle in cases:
        p = loader(cpu_bundle, "run", *t, *args, "--output", tmp_path / "o.npz")
        assert p.returncode == 3, (args, p.stderr)
        assert needle in p.stderr
        assert not (tmp_path / "o.npz").exists()


def test_refuses_without_trust_and_on_tampering(cpu_bundle, keys, tmp_path):
    import shutil

    p = loader(cpu_bundle, "selftest")  # the verifier reads trust, and says what is missing as verify does
    assert p.returncode == 3 and "no trusted key" in p.stderr and "BUNDLE_TRUST" in p.stderr
    p = loader(cpu_bundle, "selftest", "--trust", keys["other"]["pub"])
    assert p.returncode == 11 and "failed verification" in p.stderr
    p = loader(cpu_bundle, "selftest", "--trust", keys["other"]["pub"], "--json")
    doc = json.loads(p.stdout)
    assert doc == {"ok": False, "exit_code": 11, "verified": False,
                   "error": {"class": "signature", "message": doc["error"]["message"]}}
    bad = tmp_path / "bad"
    shutil.copytree(cpu_bundle, bad)
    ref = bad / "golden" / "outputs.npz"
    with np.load(ref) as z:  # a well-formed reference with wrong numbers
        wrong = {k: z[k] + 1.0 for k in z.files}
    with open(ref, "wb") as f:
        np.savez(f, **wrong)
    p = loader(bad, "selftest", "--trust", keys["release"]["pub"])
    assert p.returncode == 12, p.stderr
    # --no-verify runs it anyway, says so, and the damaged reference then fails the selftest.
    p = loader(bad, "selftest", "--no-verify")
    assert "UNVERIFIED" in p.stderr
    assert p.returncode == 21, (p.returncode, p.stderr)
    assert "FAIL" in p.stdout + p.stderr


def test_no_engine_fits_lists_what_the_bundle_offers(tmp_path, keys):
    r = run_bundle("create", SAMPLE, "--name", "gpuonly", "--version", "1.0.0", "--target", "sm_86", "--target", "rtx5090",
                   "--shape", SHAPE, "--key", keys["release"]["key"], "--out", tmp_path, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    assert run_bundle("extract", tmp_path / "gpuonly-1.0.0.bundle.tar", "--trust", keys["release"]["pub"], "--dest", tmp_path / "x").code == 0
    p = loader(tmp_path / "x", "selftest", "--trust", keys["release"]["pub"])
    assert p.returncode == 20
    assert "no engine in this bundle fits this host" in p.stderr
    assert "sm86:" in p.stderr and "rtx5090:" in p.stderr


def test_selftest_real_model_from_wheel_matches_shipped_reference(tmp_path, keys):
    """light_resnet50 from the onnx wheel, fed the input onnx's own backend tests use
    (arange(n)/n, see onnx.backend.test.runner.Runner.generate_dummy_data): the bundle's golden
    outputs equal the reference output shipped in the wheel, and selftest passes on it."""
    model = onnx_light_model("light_resnet50")
    m = onnx.load(str(model))
    inits = {i.name for i in m.graph.initializer}
    (inp,) = [i for i in m.graph.input if i.name not in inits]
    shape = tuple(d.dim_value for d in inp.type.tensor_type.shape.dim)
    n = int(np.prod(shape))
    x = (np.arange(n).reshape(shape) / n).astype(np.float32)
    np.savez(tmp_path / "sample.npz", **{inp.name: x})
    r = run_bundle("create", model, "--name", "resnet50", "--version", "1.0.0", "--target", "cpu", "--target", "sm_89",
                   "--sample-input", tmp_path / "sample.npz", "--key", keys["release"]["key"], "--out", tmp_path,
                   "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    dest = tmp_path / "x"
    assert run_bundle("extract", tmp_path / "resnet50-1.0.0.bundle.tar", "--trust", keys["release"]["pub"], "--dest", dest).code == 0
    golden_out = np.load(dest / "golden" / "outputs.npz")
    shipped = onnx.TensorProto()
    shipped.ParseFromString((model.parent / "light_resnet50_output_0.pb").read_bytes())
    expected = numpy_helper.to_array(shipped)
    (out_name,) = golden_out.files
    np.testing.assert_allclose(golden_out[out_name], expected, rtol=1e-3, atol=1e-5)  # onnx's own tolerance
    p = loader(dest, "selftest", "--trust", keys["release"]["pub"], "--json")
    assert p.returncode == 0, p.stderr
    doc = json.loads(p.stdout)
    assert doc["pass"] is True and doc["target"] == "cpu"
