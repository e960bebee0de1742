"""Bad input gets one clear line, a documented exit code, and never a partial output file."""

from __future__ import annotations

import onnx
import pytest
from onnx import TensorProto, helper

from conftest import SAMPLE, make_unbuildable_model, run_bundle

SHAPE = "input:1x3x64x64:4x3x64x64:16x3x64x64"


def create(tmp_path, keys, model, *extra):  # noqa: ANN001, ANN201
    return run_bundle("create", model, "--name", "s", "--version", "1.0.0", "--key", keys["release"]["key"],
                      "--out", tmp_path / "out", "--backend", "tensorrt-rtx", *extra)


def assert_no_output(tmp_path):  # noqa: ANN001
    out = tmp_path / "out"
    assert not out.exists() or list(out.iterdir()) == [], list(out.iterdir())


@pytest.mark.parametrize(
    "extra, code, needle",
    [
        (("--target", "sm_86", "--shape", "input:1x3x64"), 3, "rank 3"),
        (("--target", "sm_86", "--shape", "input:4x3x64x64:1x3x64x64:8x3x64x64"), 3, "min <= opt <= max"),
        (("--target", "sm_86", "--shape", "input:1x3x32x32:1x3x64x64:1x3x64x64"), 3, "the model fixes it at 64"),
        (("--target", "sm_86", "--shape", "input:1x4x64x64"), 3, "fixes it at 3"),
        (("--target", "sm_86", "--shape", "image:1x3x64x64"), 3, "model's inputs are: input"),
        (("--target", "sm_86", "--shape", "input:1xAx64x64"), 3, "dimensions must look like"),
        (("--target", "gtx9999", "--shape", SHAPE), 3, "unknown target 'gtx9999'"),
        (("--target", "h100", "--shape", SHAPE), 5, "cannot be built by TensorRT-RTX"),
        (("--target", "sm_90", "--shape", SHAPE), 5, "cannot be built by TensorRT-RTX"),
        (("--target", "local", "--shape", SHAPE), 5, "target local needs full TensorRT"),
        (("--target", "sm_86", "--target", "8.6", "--shape", SHAPE), 3, "target given twice"),
        (("--target", "sm_86", "--shape", SHAPE, "--workspace", "lots"), 3, "size 'lots'"),
    ],
)
def test_create_refuses_before_building(tmp_path, keys, extra, code, needle):
    r = create(tmp_path, keys, SAMPLE, *extra)
    assert r.code == code, (r.code, r.err)
    assert needle in r.err
    assert r.err.count("\n") == 1  # exactly one line
    assert_no_output(tmp_path)


def test_bad_version_and_name(tmp_path, keys):
    r = run_bundle("create", SAMPLE, "--name", "s", "--version", "1.0", "--target", "sm_86", "--shape", SHAPE,
                   "--key", keys["release"]["key"], "--out", tmp_path / "out")
    assert r.code == 3 and "not a semantic version" in r.err
    r = run_bundle("create", SAMPLE, "--name", "../evil", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE,
                   "--key", keys["release"]["key"], "--out", tmp_path / "out")
    assert r.code == 3 and "bundle name" in r.err
    assert_no_output(tmp_path)


def test_not_onnx_and_corrupt_onnx(tmp_path, keys):
    junk = tmp_path / "junk.onnx"
    junk.write_bytes(b"\x89PNG\r\n\x1a\n" + bytes(range(256)) * 4)
    r = create(tmp_path, keys, junk, "--target", "sm_86")
    assert r.code == 3 and "not an ONNX model" in r.err
    cut = tmp_path / "cut.onnx"
    cut.write_bytes(SAMPLE.read_bytes()[:5000])
    r = create(tmp_path, keys, cut, "--target", "sm_86")
    assert r.code == 3 and str(cut) in r.err
    r = create(tmp_path, keys, tmp_path / "missing.onnx", "--target", "sm_86")
    assert r.code == 3 and "no such model file" in r.err
    assert_no_output(tmp_path)


def test_checker_rejects_invalid_graph(tmp_path, keys):
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("Relu", ["nope"], ["y"])], "g", [x], [y])
    path = tmp_path / "bad.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    r = create(tmp_path, keys, path, "--target", "sm_86")
    assert r.code == 3 and "checker rejected" in r.err
    assert_no_output(tmp_path)


def test_contradictory_shared_dims(tmp_path, keys):
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["N", 4])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["N", 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, ["N", 4])
    g = helper.make_graph([helper.make_node("Add", ["a", "b"], ["y"])], "g", [a, b], [y])
    path = tmp_path / "shared.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    r = create(tmp_path, keys, path, "--target", "sm_86", "--shape", "a:1x4:2x4:8x4", "--shape", "b:1x4:4x4:8x4")
    assert r.code == 3 and "dim 'N' is shared by 'a' axis 0 and 'b' axis 0" in r.err
    r = create(tmp_path, keys, path, "--target", "sm_86", "--shape", "a:1x4:2x4:8x4", "--shape", "b:1x4:2x4:8x4")
    assert r.code == 0, r.err


def test_build_failure_leaves_nothing_and_names_target(tmp_path, keys):
    # TopK with a runtime k from an input: valid ONNX that TensorRT cannot build (k must be a constant).
    path = make_unbuildable_model(tmp_path / "topk.onnx")
    r = create(tmp_path, keys, path, "--target", "sm_86")
    assert r.code == 5, (r.code, r.err)
    assert "target sm86" in r.err
    # No bundle and no temporary directory; only the builder logs, kept for the post-mortem.
    assert [p.name for p in (tmp_path / "out").iterdir()] == ["s-1.0.0.failed-logs"]


def test_unknown_backend_and_missing_full_tensorrt(tmp_path, keys):
    r = run_bundle("create", SAMPLE, "--name", "s", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE,
                   "--key", keys["release"]["key"], "--out", tmp_path / "out", "--backend", "onnxruntime")
    assert r.code == 3 and "unknown backend" in r.err
    try:  # full TensorRT cannot be installed here; where it is, this case does not apply
        import tensorrt  # noqa: F401
    except ImportError:
        r = run_bundle("create", SAMPLE, "--name", "s", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE,
                       "--key", keys["release"]["key"], "--out", tmp_path / "out", "--backend", "tensorrt")
        assert r.code == 5 and "module tensorrt does not import" in r.err
    assert_no_output(tmp_path)


def test_build_out_dir_exists(tmp_path):
    (tmp_path / "b").mkdir()
    r = run_bundle("build", SAMPLE, "--name", "s", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE,
                   "--out", tmp_path / "b", "--backend", "tensorrt-rtx")
    assert r.code == 6 and "already exists" in r.err


def test_verify_bad_requests(tmp_path, tiny_bundle, keys):
    r = run_bundle("verify", tiny_bundle)
    assert r.code == 3 and "--trust" in r.err
    r = run_bundle("verify", tmp_path / "nope.tar", "--trust", keys["release"]["pub"], "--json")
    assert r.code == 3 and r.json()["error"]["class"] == "input"
    r = run_bundle("verify", tiny_bundle, "--trust", tmp_path / "nokey.pub")
    assert r.code == 4
    notatar = tmp_path / "x.tar"
    notatar.write_bytes(b"hello world" * 100)
    r = run_bundle("verify", notatar, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 10 and r.json()["error"]["class"] == "archive"


def test_usage_error_exit_code():
    r = run_bundle("create")
    assert r.code == 2


def test_model_with_external_data_is_refused(tmp_path, keys):
    import numpy as np
    from onnx import numpy_helper

    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    w = numpy_helper.from_array(np.ones((4, 4), np.float32), "w")
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "g", [x], [y], [w])
    path = tmp_path / "ext.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path),
              save_as_external_data=True, all_tensors_to_one_file=True, location="ext.data", size_threshold=0)
    r = create(tmp_path, keys, path, "--target", "sm_86")
    assert r.code == 3 and "external data" in r.err
    assert_no_output(tmp_path)


def test_model_file_name_verify_would_refuse_is_refused_at_seal(tmp_path, keys):
    odd = tmp_path / "we\\ird.onnx"
    odd.write_bytes(SAMPLE.read_bytes())
    r = create(tmp_path, keys, odd, "--target", "sm_86", "--shape", SHAPE)
    assert r.code == 3 and "backslash" in r.err
    assert_no_output(tmp_path)


def test_unwritable_output_is_an_output_error(tmp_path, keys):
    blocker = tmp_path / "file"
    blocker.write_text("not a directory")
    r = create(tmp_path, keys, SAMPLE, "--target", "sm_86", "--shape", SHAPE)
    assert r.code == 0  # sanity: the same command works with a usable --out
    r = run_bundle("create", SAMPLE, "--name", "s", "--version", "1.0.0", "--key", keys["release"]["key"],
                   "--out", blocker / "sub", "--target", "sm_86", "--shape", SHAPE, "--backend", "tensorrt-rtx")
    assert r.code == 6, r.err
    r = run_bundle("keys", "generate", "k", "--dir", blocker / "keys", "--no-passphrase")
    assert r.code == 6, r.err


def test_dynamic_batch_defaults_to_one_other_dynamic_dims_need_a_shape(tmp_path, keys):
    # Only the batch axis is dynamic: batch 1 is always a safe default.
    r = create(tmp_path, keys, SAMPLE, "--target", "sm_86")
    assert r.code == 0, r.err
    # A dynamic spatial axis has no safe default: the error says what to pass.
    x = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["N", 3, "H", "W"])
    y = helper.make_tensor_value_info("out", TensorProto.FLOAT, ["N", 3, "H", "W"])
    g = helper.make_graph([helper.make_node("Relu", ["img"], ["out"])], "g", [x], [y])
    path = tmp_path / "dyn.onnx"
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    out = tmp_path / "o2"
    r = run_bundle("create", path, "--name", "d", "--version", "1.0.0", "--key", keys["release"]["key"], "--out", out,
                   "--target", "sm_86", "--backend", "tensorrt-rtx")
    assert r.code == 3 and "input img has dynamic dims and needs --shape NAME:MIN:OPT:MAX: img: N x 3 x H x W" in r.err
    assert "--shape img:1x3x640x640:1x3x640x640:4x3x640x640" in r.err  # a shape onnxruntime ran
    assert not (out / "d-1.0.0.bundle.tar").exists()
