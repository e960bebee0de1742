"""The precision quality gate: a build never ships a variant its own selftest would fail.

PP-OCRv4 det (inside the rapidocr_onnxruntime wheel) converted to fp16 as is gives max abs err 1.0
on two thirds of its output pixels: a constant of 9.8e7 does not fit fp16. The gate refuses it with
exit 7; `--keep-fp32 auto` finds the node to keep; `--accept-accuracy-loss` builds it anyway, says
so on the terminal and in the manifest, and the bundle's selftest then fails exactly as predicted.
The cpu target runs the converted graph itself, so the loader's selftest runs here, for real.
"""

from __future__ import annotations

import json
import tarfile
from pathlib import Path

import pytest

from conftest import make_conv_model, run_bundle

rapidocr = pytest.importorskip("rapidocr_onnxruntime")
DET = Path(rapidocr.__file__).parent / "models" / "ch_PP-OCRv4_det_infer.onnx"
SHAPE = ("--shape", "x:1x3x320x320")


def _manifest(bundle: Path) -> dict:
    with tarfile.open(bundle) as tf:
        name = next(n for n in tf.getnames() if n.endswith("/manifest.json"))
        return json.loads(tf.extractfile(name).read())


def _create(tmp_path: Path, keys: dict, *extra: object, target: str = "cpu"):  # noqa: ANN202
    out = tmp_path / "out"
    r = run_bundle("create", DET, "--name", "det", "--version", "1.0.0", "--target", target, *SHAPE,
                   "--precision", "fp16", *extra, "--key", keys["release"]["key"], "--out", out,
                   "--backend", "tensorrt-rtx")
    return r, out / "det-1.0.0.bundle.tar"


def test_fp16_outside_tolerance_is_refused_with_the_figures(tmp_path, keys):
    r, bundle = _create(tmp_path, keys, target="sm_86")
    assert r.code == 7, r.err
    lines = r.err.strip().splitlines()
    assert lines[-1].startswith("error [accuracy]: the fp16 graph of model/ch_PP-OCRv4_det_infer.onnx"), r.err
    assert "x the allowance atol 0.01 + rtol 0.01" in lines[-1]
    assert "max abs err 1," in lines[-1] and "% of output values outside" in lines[-1]
    assert "--keep-fp32 auto" in lines[-1] and "--accept-accuracy-loss" in lines[-1]
    assert not bundle.exists()
    assert "building" not in r.err  # refused before any engine was built


def test_keep_fp32_auto_brings_pp_ocr_det_within_tolerance_and_its_selftest_passes(tmp_path, keys):
    r, bundle = _create(tmp_path, keys, "--keep-fp32", "auto")
    assert r.code == 0, r.err
    v = _manifest(bundle)["variants"][0]
    assert v["precision"] == "fp16"
    assert v["kept_fp32"] and len(v["kept_fp32"]) <= 4, v["kept_fp32"]  # a handful of 672 nodes
    assert v["kept_fp32_reason"].startswith("auto: the ") and "bisection" in v["kept_fp32_reason"]
    a = v["accuracy"]
    assert a["within_tolerance"] is True and a["tolerance_ratio"] <= 1 and a["outside_fraction"] == 0
    assert (a["atol"], a["rtol"]) == (0.01, 0.01)
    assert v["accuracy_loss_accepted"] is False
    # the converters' warnings went to the signed conversion log, not the terminal
    assert "UserWarning" not in r.err and "truncated" not in r.err
    with tarfile.open(bundle) as tf:
        log = tf.extractfile(f"det-1.0.0/{v['log']}").read().decode()
    assert "UserWarning: the float32 number 97903600.0 will be truncated" in log
    assert "kept in fp32" in log
    run = run_bundle("run", bundle, "--trust", keys["release"]["pub"], "--", "selftest", "--json")
    assert run.code == 0, run.err
    assert json.loads(run.out)["pass"] is True
    shown = run_bundle("inspect", bundle)
    assert shown.code == 0
    assert "precision variants" in shown.out and "within tolerance" in shown.out and "1 node(s)" in shown.out


def test_accepted_loss_is_recorded_warned_and_the_selftest_fails_as_predicted(tmp_path, keys):
    r, bundle = _create(tmp_path, keys, "--accept-accuracy-loss")
    assert r.code == 0, r.err
    assert "warning: fp16: built OUTSIDE tolerance under --accept-accuracy-loss" in r.err
    v = _manifest(bundle)["variants"][0]
    assert v["accuracy_loss_accepted"] is True and v["accuracy"]["within_tolerance"] is False
    assert v["accuracy"]["tolerance_ratio"] > 10
    run = run_bundle("run", bundle, "--trust", keys["release"]["pub"], "--", "selftest")
    assert run.code == 21, run.out + run.err  # the loader's "selftest outside tolerance"
    shown = run_bundle("inspect", bundle)
    assert "OUTSIDE tolerance (accepted: --accept-accuracy-loss)" in shown.out


def test_keep_fp32_by_name_is_checked_and_recorded(tmp_path, keys):
    r, _ = _create(tmp_path, keys, "--keep-fp32", "Constant_77777")
    assert r.code == 3, r.err
    assert "--keep-fp32 Constant_77777: no node of that name in the graph (nearest: " in r.err
    r, bundle = _create(tmp_path, keys, "--keep-fp32", "Constant_7")
    assert r.code == 0, r.err
    v = _manifest(bundle)["variants"][0]
    assert v["kept_fp32"] == ["Constant_7"] and v["kept_fp32_reason"] == "given by name (--keep-fp32)"
    assert v["accuracy"]["within_tolerance"] is True


def test_keep_fp32_needs_a_half_precision_and_golden_data(tmp_path, keys):
    model = make_conv_model(tmp_path / "m.onnx")
    base = ("create", model, "--name", "m", "--version", "1.0.0", "--target", "cpu", "--key", keys["release"]["key"],
            "--out", tmp_path / "out")
    r = run_bundle(*base, "--keep-fp32", "auto")
    assert r.code == 3 and "--keep-fp32 applies to fp16 and bf16 graphs" in r.err
    r = run_bundle(*base, "--precision", "fp16", "--keep-fp32", "auto", "--no-golden")
    assert r.code == 3 and "drop --no-golden" in r.err
    assert not (tmp_path / "out" / "m-1.0.0.bundle.tar").exists()


def test_bf16_is_judged_through_an_fp32_emulation(tmp_path, keys):
    """onnxruntime has no bf16 CPU kernels; the gate measures bf16 on an fp32 graph rounded to
    bf16 wherever the bf16 graph holds bf16, so bf16 is gated like fp16 instead of waved through."""
    model = make_conv_model(tmp_path / "m.onnx")
    r = run_bundle("build", model, "--name", "m", "--version", "1.0.0", "--target", "sm_86", "--precision", "bf16",
                   "--out", tmp_path / "b", "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "b" / "build.json").read_text())
    a = rec["variants"][0]["accuracy"]
    assert a["within_tolerance"] is True and 0 < a["max_abs_err"] < 0.05, a
    assert "bf16 emulated in fp32" in a["measured_with"]
