"""`bundle inspect-engine`: engine headers read offline, from real TensorRT-RTX engines.

One `bundle build` makes an engine for every compute capability TensorRT-RTX supports; each
engine, the sealed bundle and the extracted bundle must then report exactly the runtime version
installed here and exactly the one compute capability the engine was built for.
"""

from __future__ import annotations

import json
import random
import shutil
import tarfile
from pathlib import Path

import pytest

from conftest import make_conv_model, run_bundle
from bundler.targets import gpu_names_for

tensorrt_rtx = pytest.importorskip("tensorrt_rtx")

#: requested target -> (label in file names and records, compute capability, header bit)
ALL_RTX = {
    "sm_75": ("sm75", "7.5", 0x01),
    "sm_80": ("sm80", "8.0", 0x02),
    "sm_86": ("sm86", "8.6", 0x04),
    "sm_89": ("sm89", "8.9", 0x08),
    "sm_120": ("sm120", "12.0", 0x10),
    "sm_121": ("sm121", "12.1", 0x20),
}
SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"


@pytest.fixture(scope="module")
def six(tmp_path_factory, keys):  # noqa: ANN001, ANN201
    """A build directory with one engine per TensorRT-RTX compute capability, its sealed bundle,
    and the bundle extracted again."""
    d = tmp_path_factory.mktemp("six")
    model = make_conv_model(d / "six.onnx")
    args = []
    for t in ALL_RTX:
        args += ["--target", t]
    r = run_bundle("build", model, *args, "--out", d / "build", "--name", "six", "--version", "1.0.0",
                   "--shape", SHAPE, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    r = run_bundle("seal", d / "build", "--key", keys["release"]["key"], "--out", d / "dist")
    assert r.code == 0, r.err
    bundle = d / "dist" / "six-1.0.0.bundle.tar"
    r = run_bundle("extract", bundle, "--trust", keys["release"]["pub"], "--dest", d / "extracted")
    assert r.code == 0, r.err
    record = json.loads((d / "build" / "build.json").read_text())
    # engine path (engines/x.engine) -> the label of the target it was built for
    labels = {e["path"]: e["target"]["label"] for e in record["engines"]}
    assert sorted(labels.values()) == sorted(v[0] for v in ALL_RTX.values())
    return {"build": d / "build", "bundle": bundle, "extracted": d / "extracted", "labels": labels}


def inspect_json(path: Path) -> dict:
    r = run_bundle("inspect-engine", path, "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["error"] is None
    return doc


def check_engine(e: dict, label: str) -> None:
    _, cc, bit = next(v for v in ALL_RTX.values() if v[0] == label)
    assert e["product"] == "tensorrt-rtx"
    assert e["version"] == tensorrt_rtx.__version__  # e.g. 1.7.1.116, the build number included
    assert e["cc"] == [cc], (e["name"], e["cc"])
    assert e["cc_mask"] == bit
    major, minor = (int(x) for x in cc.split("."))
    assert e["gpus"] == {cc: gpu_names_for((major, minor))}


def check_all(doc: dict, labels: dict) -> None:
    names = [e["name"] for e in doc["engines"]]
    assert sorted(names) == sorted(labels), names
    for e in doc["engines"]:
        check_engine(e, labels[e["name"]])


def test_each_engine_file_reports_its_one_cc(six):  # noqa: ANN001
    assert len(six["labels"]) == 6
    for rel, label in six["labels"].items():
        path = six["build"] / rel
        doc = inspect_json(path)
        assert doc["kind"] == "engine"
        assert len(doc["engines"]) == 1
        e = doc["engines"][0]
        assert e["size"] == path.stat().st_size
        check_engine(e, label)


def test_gpu_names_are_the_table_s(six):  # noqa: ANN001
    by_label = {label: rel for rel, label in six["labels"].items()}
    gpus = inspect_json(six["build"] / by_label["sm89"])["engines"][0]["gpus"]
    assert "rtx4090" in gpus["8.9"] and "l4" in gpus["8.9"]
    gpus = inspect_json(six["build"] / by_label["sm75"])["engines"][0]["gpus"]
    assert "t4" in gpus["7.5"]


def test_human_output_of_one_engine(six):  # noqa: ANN001
    rel = next(r for r, label in six["labels"].items() if label == "sm120")
    r = run_bundle("inspect-engine", six["build"] / rel)
    assert r.code == 0, r.err
    assert "tensorrt-rtx" in r.out and tensorrt_rtx.__version__ in r.out
    assert "12.0" in r.out and "rtx5090" in r.out
    assert "NOT VERIFIED" not in r.out  # a lone engine has no signature to speak of


def test_bundle_tar_every_engine_not_verified(six):  # noqa: ANN001
    doc = inspect_json(six["bundle"])
    assert doc["kind"] == "bundle"
    assert doc["verified"] is False
    assert any("NOT VERIFIED" in n for n in doc["notes"])
    check_all(doc, six["labels"])
    r = run_bundle("inspect-engine", six["bundle"])
    assert r.code == 0, r.err
    assert "NOT VERIFIED" in r.out
    for label, cc, _ in ALL_RTX.values():
        assert f"{label}.engine" in r.out
        assert cc in r.out


def test_bundle_is_only_read(six, tmp_path):  # noqa: ANN001
    copy = tmp_path / six["bundle"].name
    shutil.copyfile(six["bundle"], copy)
    before = sorted(p.name for p in tmp_path.iterdir())
    inspect_json(copy)
    assert sorted(p.name for p in tmp_path.iterdir()) == before  # nothing extracted beside it


def test_extracted_and_build_directories(six):  # noqa: ANN001
    for d in (six["extracted"], six["build"]):
        doc = inspect_json(d)
        assert doc["kind"] == "directory"
        check_all(doc, six["labels"])


# -- errors -------------------------------------------------------------------------------------

def assert_input_error(path: Path, needle: str) -> None:
    r = run_bundle("inspect-engine", path)
    assert r.code == 3, (r.code, r.out, r.err)
    assert r.err.count("\n") == 1, r.err  # exactly one line
    assert r.err.startswith("error [input]:"), r.err
    assert needle in r.err, r.err
    r = run_bundle("inspect-engine", path, "--json")
    assert r.code == 3
    doc = r.json()
    assert doc["ok"] is False and doc["exit_code"] == 3
    assert doc["error"]["class"] == "input" and needle in doc["error"]["message"]


def test_random_file(tmp_path):  # noqa: ANN001
    data = bytes(random.Random(7).getrandbits(8) for _ in range(4096))
    assert data[:4] != b"vtrt" and data[1:4] != b"trt"
    p = tmp_path / "random.engine"
    p.write_bytes(data)
    assert_input_error(p, "unknown engine magic")


def test_empty_file(tmp_path):  # noqa: ANN001
    p = tmp_path / "empty.engine"
    p.write_bytes(b"")
    assert_input_error(p, "empty file")


def test_header_cut_to_20_bytes(six, tmp_path):  # noqa: ANN001
    src = six["build"] / next(iter(six["labels"]))
    p = tmp_path / "cut.engine"
    p.write_bytes(src.read_bytes()[:20])
    assert_input_error(p, "too short for an engine header (20 bytes)")


def test_engine_cut_after_the_header(six, tmp_path):  # noqa: ANN001
    src = six["build"] / next(iter(six["labels"]))
    p = tmp_path / "cut.engine"
    p.write_bytes(src.read_bytes()[:4096])
    assert_input_error(p, f"header records {src.stat().st_size} bytes but the engine has 4096")


def test_onnx_model_is_not_an_engine(tmp_path):  # noqa: ANN001
    assert_input_error(make_conv_model(tmp_path / "m.onnx"), "not a TensorRT engine")


def test_missing_path_and_empty_directory(tmp_path):  # noqa: ANN001
    assert_input_error(tmp_path / "nope.engine", "no such file or directory")
    (tmp_path / "d").mkdir()
    assert_input_error(tmp_path / "d", "no engines/*.engine")


def test_tar_without_engines(tmp_path):  # noqa: ANN001
    (tmp_path / "readme.txt").write_text("hello\n")
    p = tmp_path / "x.bundle.tar"
    with tarfile.open(p, "w", format=tarfile.USTAR_FORMAT) as tf:
        tf.add(tmp_path / "readme.txt", arcname="x-1.0.0/readme.txt")
    assert_input_error(p, "no .engine members")
