"""Fleet builds: precisions x targets, calibration records, profiles, shared dims, parallel builds."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper

from conftest import SAMPLE, make_conv_model, make_unbuildable_model, onnx_light_model, run_bundle


def extract(bundle: Path, pub: Path, dest: Path) -> dict:
    r = run_bundle("extract", bundle, "--trust", pub, "--dest", dest)
    assert r.code == 0, r.err
    return json.loads((dest / "manifest.json").read_text())


@pytest.fixture(scope="module")
def squeezenet_fleet(tmp_path_factory, keys):  # noqa: ANN001, ANN201
    """A real model from the onnx wheel, fp32 + fp16 + int8 for two targets, in one create."""
    d = tmp_path_factory.mktemp("fleet")
    model = onnx_light_model("light_squeezenet")
    m = onnx.load(str(model))
    inits = {i.name for i in m.graph.initializer}
    (inp,) = [i for i in m.graph.input if i.name not in inits]
    rng = np.random.default_rng(0)
    np.savez(d / "calib.npz", **{inp.name: rng.random((16, 3, 224, 224), dtype=np.float32)})
    r = run_bundle("create", model, "--name", "squeezenet", "--version", "1.0.0", "--target", "sm_86", "--target", "rtx5090",
                   "--precision", "fp32", "--precision", "fp16", "--precision", "int8", "--calibration", d / "calib.npz",
                   "--key", keys["release"]["key"], "--out", d, "--backend", "tensorrt-rtx", "--jobs", "2")
    assert r.code == 0, r.err
    return d, r, extract(d / "squeezenet-1.0.0.bundle.tar", keys["release"]["pub"], d / "x")


def test_matrix_of_engines_and_recorded_accuracy(squeezenet_fleet, keys):
    d, r, m = squeezenet_fleet
    got = sorted((e["target"]["label"], e["build"]["precision"]) for e in m["engines"])
    assert got == sorted((t, p) for t in ("sm86", "rtx5090") for p in ("fp32", "fp16", "int8"))
    for e in m["engines"]:
        assert e["path"] == f"engines/squeezenet_224x224_{e['build']['precision']}_{e['target']['label']}.engine"
        assert e["header"]["cc"] == [e["target"]["cc"]]
    variants = {v["precision"]: v for v in m["variants"]}
    assert set(variants) == {"fp16", "int8"}
    for p, v in variants.items():
        graph = d / "x" / v["graph"]
        assert graph.is_file() and v["graph"] == f"model/light_squeezenet.{p}.onnx"
        acc = v["accuracy"]
        assert acc["measured_with"].startswith("onnxruntime") and "selftest" in acc["note"]
        assert 0 <= acc["max_abs_err"] < (1e-2 if p == "fp16" else 0.2)
    fp16 = onnx.load(str(d / "x" / variants["fp16"]["graph"]))
    assert any(i.data_type == TensorProto.FLOAT16 for i in fp16.graph.initializer)
    assert fp16.graph.input[0].type.tensor_type.elem_type == TensorProto.FLOAT  # IO types kept
    int8 = onnx.load(str(d / "x" / variants["int8"]["graph"]))
    assert {"QuantizeLinear", "DequantizeLinear"} <= {n.op_type for n in int8.graph.node}
    cal = variants["int8"]["calibration"]
    assert cal["samples"] == 16 and cal["files"] == 1 and len(cal["sha256"]) == 64
    (stats,) = cal["inputs"].values()
    assert 0 <= stats["min"] < stats["mean"] < stats["max"] <= 1 and stats["std"] > 0
    assert any("only 16 calibration samples" in w for w in cal["warnings"])  # tiny set is flagged
    assert "warning: int8 calibration: only 16 calibration samples" in r.err
    # Live progress in CI logs: one line per build start and end.
    assert r.err.count("done ") == 6 and "building sm86 (int8)" in r.err


def test_fp8_refused_on_sm86_before_building_and_built_on_sm89(tmp_path, keys):
    model = make_conv_model(tmp_path / "m.onnx")
    np.savez(tmp_path / "cal.npz", x=np.random.default_rng(1).random((64, 3, 16, 16), dtype=np.float32))
    args = ("--name", "m", "--version", "1.0.0", "--precision", "fp8", "--calibration", tmp_path / "cal.npz",
            "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--key", keys["release"]["key"], "--backend", "tensorrt-rtx")
    r = run_bundle("create", model, "--target", "sm_89", "--target", "sm_86", "--out", tmp_path / "a", *args)
    assert r.code == 5 and "target sm86 (compute capability 8.6) cannot run fp8" in r.err
    assert "building" not in r.err  # refused before any build started
    assert not (tmp_path / "a" / "m-1.0.0.bundle.tar").exists()
    # fp8 of this random conv model is outside the selftest's tolerance (measured on the CPU): the
    # gate refuses it, and the override builds it, with a warning and a record in the manifest.
    r = run_bundle("create", model, "--target", "sm_89", "--target", "rtx5090", "--out", tmp_path / "b", *args)
    assert r.code == 7 and "error [accuracy]: the fp8 graph" in r.err, r.err
    r = run_bundle("create", model, "--target", "sm_89", "--target", "rtx5090", "--out", tmp_path / "b", *args,
                   "--accept-accuracy-loss")
    assert r.code == 0, r.err
    assert "warning: fp8: built OUTSIDE tolerance under --accept-accuracy-loss" in r.err
    m = extract(tmp_path / "b" / "m-1.0.0.bundle.tar", keys["release"]["pub"], tmp_path / "x")
    (v,) = m["variants"]
    fp8 = onnx.load(str(tmp_path / "x" / v["graph"]))
    assert any(i.data_type == TensorProto.FLOAT8E4M3FN for i in fp8.graph.initializer)
    assert v["calibration"]["warnings"] == []  # 64 samples, varied: no warning
    assert v["accuracy_loss_accepted"] is True and v["accuracy"]["within_tolerance"] is False


def test_calibration_errors_and_zero_variance_warning(tmp_path, keys):
    model = make_conv_model(tmp_path / "m.onnx")
    base = ("create", model, "--name", "m", "--version", "1.0.0", "--target", "sm_86", "--shape", "x:1x3x16x16",
            "--key", keys["release"]["key"], "--out", tmp_path / "o", "--backend", "tensorrt-rtx")
    r = run_bundle(*base, "--precision", "int8")
    assert r.code == 3 and "need calibration data" in r.err
    np.savez(tmp_path / "wrong.npz", y=np.zeros((4, 3, 16, 16), np.float32))
    r = run_bundle(*base, "--precision", "int8", "--calibration", tmp_path / "wrong.npz")
    assert r.code == 3 and "calibration arrays are ['y']" in r.err
    np.savez(tmp_path / "small.npz", x=np.zeros((4, 3, 8, 8), np.float32))
    r = run_bundle(*base, "--precision", "int8", "--calibration", tmp_path / "small.npz")
    assert r.code == 3 and "outside the profile" in r.err
    r = run_bundle(*base, "--precision", "fp64")
    assert r.code == 3 and "unknown precision 'fp64'" in r.err
    (tmp_path / "caldir").mkdir()
    np.savez(tmp_path / "caldir" / "a.npz", x=np.ones((40, 3, 16, 16), np.float32))
    np.savez(tmp_path / "caldir" / "b.npz", x=np.ones((40, 3, 16, 16), np.float32))
    r = run_bundle(*base, "--precision", "int8", "--calibration", tmp_path / "caldir")
    assert r.code == 0, r.err
    # the warnings that matter are the last thing create prints, not only a manifest field
    assert r.err.strip().splitlines()[-1] == "warning: int8 calibration: input 'x' has zero variance in the calibration set: every sample is the same", r.err
    m = extract(tmp_path / "o" / "m-1.0.0.bundle.tar", keys["release"]["pub"], tmp_path / "x")
    cal = m["variants"][0]["calibration"]
    assert cal["files"] == 2 and cal["samples"] == 80
    assert any("zero variance" in w for w in cal["warnings"])
    assert not any("calibration samples" in w for w in cal["warnings"])


def test_several_profiles_and_the_loader_picks_the_one_that_fits(tmp_path, keys):
    x = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])
    g = helper.make_graph([helper.make_node("Relu", ["img"], ["out"])], "g", [x], [y])
    model = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(model))
    r = run_bundle("create", model, "--name", "dyn", "--version", "1.0.0", "--target", "sm_86", "--target", "cpu",
                   "--shape", "img:1x3x32x32:1x3x64x64:1x3x64x64", "--profile", "img:1x3x256x256:2x3x512x512:4x3x512x512",
                   "--key", keys["release"]["key"], "--out", tmp_path, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    m = extract(tmp_path / "dyn-1.0.0.bundle.tar", keys["release"]["pub"], tmp_path / "x")
    for e in m["engines"]:
        assert [p["img"]["max"] for p in e["build"]["profiles"]] == [[1, 3, 64, 64], [4, 3, 512, 512]]
    import subprocess
    import sys

    np.save(tmp_path / "big.npy", np.ones((2, 3, 300, 300), np.float32))  # fits only the second profile
    p = subprocess.run([sys.executable, str(tmp_path / "x" / "runtime" / "loader.py"), "run", "--trust", str(keys["release"]["pub"]),
                        "--input", f"img={tmp_path / 'big.npy'}", "--output", str(tmp_path / "o.npz")], capture_output=True, text=True)
    assert p.returncode == 0, p.stderr
    np.save(tmp_path / "odd.npy", np.ones((1, 3, 100, 100), np.float32))  # between the two: fits neither
    p = subprocess.run([sys.executable, str(tmp_path / "x" / "runtime" / "loader.py"), "run", "--trust", str(keys["release"]["pub"]),
                        "--input", f"img={tmp_path / 'odd.npy'}", "--output", str(tmp_path / "o2.npz")], capture_output=True, text=True)
    assert p.returncode == 3 and "profiles 1x3x32x32 .. 1x3x64x64 or 1x3x256x256 .. 4x3x512x512" in p.stderr


def test_rapidocr_cls_shared_dims_message_and_fix(tmp_path, keys):
    rapidocr = pytest.importorskip("rapidocr_onnxruntime")
    cls = Path(rapidocr.__file__).parent / "models" / "ch_ppocr_mobile_v2.0_cls_infer.onnx"
    shape = "x:1x3x48x192:4x3x48x192:8x3x48x320"
    r = run_bundle("build", cls, "--name", "cls", "--version", "1.0.0", "--target", "sm_86", "--shape", shape,
                   "--out", tmp_path / "b", "--backend", "tensorrt-rtx")
    assert r.code == 3
    assert "dim '?' is shared by 'x' axis 2 and 'x' axis 3" in r.err and "bundle fix-dims" in r.err
    assert not (tmp_path / "b").exists()
    fixed = tmp_path / "cls_fixed.onnx"
    r = run_bundle("fix-dims", cls, "--out", fixed)
    assert r.code == 0, r.err
    assert "'x_dim2'" in r.out and "'x_dim3'" in r.out
    r = run_bundle("build", fixed, "--name", "cls", "--version", "1.0.0", "--target", "sm_86", "--target", "sm_120",
                   "--shape", shape, "--out", tmp_path / "b", "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "b" / "build.json").read_text())
    assert rec["engines"][0]["build"]["profiles"][0]["x"]["max"] == [8, 3, 48, 320]
    r = run_bundle("fix-dims", cls, "--out", fixed)
    assert r.code == 6  # never overwrites


def test_failing_parallel_build_names_target_keeps_logs_leaves_no_bundle(tmp_path, keys):
    model = make_unbuildable_model(tmp_path / "topk.onnx")
    out = tmp_path / "out"
    r = run_bundle("create", model, "--name", "t", "--version", "1.0.0", "--target", "sm_86", "--target", "sm_89",
                   "--no-golden", "--jobs", "2", "--key", keys["release"]["key"], "--out", out, "--backend", "tensorrt-rtx")
    assert r.code == 5
    assert "target sm" in r.err and "builder logs kept in" in r.err
    logs = out / "t-1.0.0.failed-logs"
    assert sorted(p.suffix for p in logs.iterdir()) == [".log", ".log"]
    assert all(p.read_text().strip() for p in logs.iterdir())
    assert [p.name for p in out.iterdir()] == ["t-1.0.0.failed-logs"]  # no bundle, no temporary directory


def test_live_build_table_on_a_terminal(tmp_path):
    """On a terminal the builds show as a live rich table (here a pseudo-terminal made by script(1))."""
    import shutil
    import subprocess
    import sys

    if shutil.which("script") is None:
        pytest.skip("script(1) not installed")
    log = tmp_path / "tty.log"
    cmd = (f"{sys.executable} -m bundler.cli build {SAMPLE} --name t --version 1.0.0 --target sm_86 --target sm_89 "
           f"--out {tmp_path / 'b'} --backend tensorrt-rtx --jobs 2")
    p = subprocess.run(["script", "-qec", cmd, str(log)], stdin=subprocess.DEVNULL, capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    screen = log.read_bytes().decode("utf-8", "replace")
    assert "builds" in screen  # the live table's title
    for col in ("target", "precision", "stage", "elapsed"):
        assert col in screen
    assert "done" in screen and "Traceback" not in screen
    assert (tmp_path / "b" / "build.json").is_file()
