"""Dynamic-shape advice, golden-data failures and --sample-value, through the CLI (real builds)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import numpy as np
import onnx
from onnx import TensorProto, helper, numpy_helper

from conftest import run_bundle

BUILD = ("--version", "1.0.0", "--target", "sm_86", "--jobs", "1", "--backend", "tensorrt-rtx")


def one_error_line(r, code: int = 3) -> str:  # noqa: ANN001
    assert r.code == code, (r.code, r.err)
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error [input]: "), r.err
    return lines[0]


def suggested_flags(line: str) -> list:
    assert "onnxruntime ran the model on the CPU with these" in line, line
    return shlex.split(line.split("your data has): ", 1)[1])


def make_gather_model(path: Path) -> Path:
    """Looks up rows of a 5-row table: random indices 0-9 are out of range half the time."""
    idx = helper.make_tensor_value_info("idx", TensorProto.INT64, [4])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [4, 2])
    table = numpy_helper.from_array(np.arange(10, dtype=np.float32).reshape(5, 2), "table")
    g = helper.make_graph([helper.make_node("Gather", ["table", "idx"], ["y"])], "g", [idx], [y], [table])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def make_two_input_model(path: Path, length_name: str = "L", reshape_to: int = 0) -> Path:
    """Two inputs with dynamic non-batch dims: an image (N x 3 x H x W) and a sequence (N x L).
    With ``reshape_to``, the sequence is reshaped to that fixed length, so only L = reshape_to runs."""
    img = helper.make_tensor_value_info("img", TensorProto.FLOAT, ["batch", 3, "p2o.Dim.0", None])
    seq = helper.make_tensor_value_info("seq", TensorProto.FLOAT, ["batch", length_name])
    a = helper.make_tensor_value_info("a", TensorProto.FLOAT, ["batch", 3, "p2o.Dim.0", None])
    b = helper.make_tensor_value_info("b", TensorProto.FLOAT, ["batch", length_name] if not reshape_to else [None, reshape_to])
    nodes = [helper.make_node("Relu", ["img"], ["a"])]
    inits = []
    if reshape_to:
        inits.append(numpy_helper.from_array(np.array([-1, reshape_to], dtype=np.int64), "shape"))
        nodes.append(helper.make_node("Reshape", ["seq", "shape"], ["r"]))
        nodes.append(helper.make_node("Relu", ["r"], ["b"]))
    else:
        nodes.append(helper.make_node("Relu", ["seq"], ["b"]))
    g = helper.make_graph(nodes, "two", [img, seq], [a, b], inits)
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def test_every_dynamic_input_named_at_once_and_the_suggestion_builds(tmp_path):
    model = make_two_input_model(tmp_path / "two.onnx")
    r = run_bundle("build", model, "--name", "two", "--out", tmp_path / "b", *BUILD)
    line = one_error_line(r)
    # both inputs in one run, dims by role letter, ONNX names in brackets, readable names as they are
    assert "2 inputs have dynamic dims" in line
    assert "img: batch x 3 x H x W [H=p2o.Dim.0, W=unnamed]" in line
    assert "seq: batch x L" in line
    assert "DynamicDimension" not in line and "x1x1:" not in line
    assert not (tmp_path / "b").exists()
    flags = suggested_flags(line)
    assert flags == ["--shape", "img:1x3x640x640:1x3x640x640:4x3x640x640", "--shape", "seq:1x512:1x512:4x512"]
    r = run_bundle("build", model, "--name", "two", "--out", tmp_path / "b", *BUILD, *flags)
    assert r.code == 0, r.err
    rec = json.loads((tmp_path / "b" / "build.json").read_text())
    assert rec["engines"][0]["path"] == "engines/two_640x640_fp32_sm86.engine"  # --name, not the file's stem


def test_advice_says_it_cannot_know_when_nothing_runs(tmp_path):
    model = make_two_input_model(tmp_path / "seven.onnx", reshape_to=7)
    r = run_bundle("build", model, "--name", "seven", "--out", tmp_path / "b", *BUILD,
                   "--shape", "img:1x3x32x32")  # a given shape stays; only seq is advised on
    line = one_error_line(r)
    assert "input seq has dynamic dims" in line and "img:" not in line.split("--shape NAME:MIN:OPT:MAX:")[1]
    assert "cannot know which sizes this model takes" in line and "--shape seq" not in line


def test_model_strings_in_the_advice_are_escaped(tmp_path):
    model = make_two_input_model(tmp_path / "evil.onnx", length_name="L\x1b[31m\u202e")
    r = run_bundle("build", model, "--name", "evil", "--out", tmp_path / "b", *BUILD)
    line = one_error_line(r)
    assert "\x1b" not in r.err and "\u202e" not in r.err
    assert "\\x1b[31m" in line  # shown escaped, in brackets behind its letter
    assert "seq: batch x T [T=L" in line


def test_golden_failure_names_sample_input_and_no_golden_then_sample_value_fixes_it(tmp_path):
    model = make_gather_model(tmp_path / "lookup.onnx")
    r = run_bundle("build", model, "--name", "lookup", "--out", tmp_path / "b", *BUILD)
    line = one_error_line(r)
    assert "CPU reference run for golden outputs failed" in line
    assert "--sample-input" in line and "--no-golden" in line and "--sample-value" in line
    assert "idx = random integers 0-9" in line  # says what the integer input got
    assert not (tmp_path / "b").exists()
    r = run_bundle("build", model, "--name", "lookup", "--out", tmp_path / "b", *BUILD, "--sample-value", "idx=3")
    assert r.code == 0, r.err
    golden = json.loads((tmp_path / "b" / "build.json").read_text())["golden"]
    assert golden["values"] == {"idx": "3 (--sample-value)"} and golden["warnings"] == []
    with np.load(tmp_path / "b" / "golden" / "inputs.npz") as z:
        assert z["idx"].dtype == np.int64 and z["idx"].tolist() == [3, 3, 3, 3]
    with np.load(tmp_path / "b" / "golden" / "outputs.npz") as z:
        assert z["y"].tolist() == [[6.0, 7.0]] * 4


def test_bad_sample_values_are_one_line_errors(tmp_path):
    model = make_gather_model(tmp_path / "lookup.onnx")
    np.savez(tmp_path / "in.npz", idx=np.zeros(4, dtype=np.int64))
    cases = [
        (("--sample-value", "nosuch=1"), "--sample-value names input 'nosuch', but the model's inputs are: idx"),
        (("--sample-value", "idx=1.5"), "input 'idx' is int64; give an integer"),
        (("--sample-value", "idx=1e99999"), "must be finite"),
        (("--sample-value", "idx"), "expected NAME=VALUE"),
        (("--sample-value", "idx=1", "--sample-value", "idx=2"), "given twice for input 'idx'"),
        (("--sample-value", "idx=99999999999999999999"), "out of range for int64"),
        (("--sample-value", "idx=1", "--sample-input", tmp_path / "in.npz"), "give one of them"),
    ]
    for flags, want in cases:
        r = run_bundle("build", model, "--name", "lookup", "--out", tmp_path / "b", *BUILD, *flags)
        assert want in one_error_line(r), (flags, r.err)
        assert not (tmp_path / "b").exists()


def test_spec_sample_values(tmp_path):
    make_gather_model(tmp_path / "lookup.onnx")
    spec = tmp_path / "bundle.toml"
    spec.write_text('[[model]]\nname = "lookup"\npath = "lookup.onnx"\nversion = "1.0.0"\ntargets = ["sm_86"]\n'
                    'backend = "tensorrt-rtx"\nsample_values = { idx = 4 }\n')
    r = run_bundle("build", "--spec", spec, "--out", tmp_path / "out")
    assert r.code == 0, r.err
    golden = json.loads((tmp_path / "out" / "lookup-1.0.0" / "build.json").read_text())["golden"]
    assert golden["values"] == {"idx": "4 (--sample-value)"}
    spec.write_text(spec.read_text().replace("{ idx = 4 }", '{ idx = [1] }'))
    line = one_error_line(run_bundle("build", "--spec", spec, "--out", tmp_path / "out2"))
    assert "key 'sample_values'" in line and "input 'idx'" in line
    assert not (tmp_path / "out2").exists()
