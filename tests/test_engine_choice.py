"""The loader's engine choice, on host descriptions the tests inject.

Which engine `loader.py` runs depends on the host: its GPUs (compute capability) and the runtime
versions installed. No GPU that TensorRT-RTX accepts is lent here, so these tests pass the host
description to the loader's own `assess`/`choose` (its test seam: both take the GPUs and runtimes
as arguments, and `main` fills them from ctypes and package metadata). The real ctypes path has
its own GPU test (tests/test_loader_gpu.py). The manifest is the one a real TensorRT-RTX build
signed (the session's `tiny_bundle`: sm_86 and rtx5090 engines); cpu and fp16 records are added
to it as `bundle create` writes them, to test the order among kinds.
"""

from __future__ import annotations

import copy
import json
import tarfile

import pytest

from runtime_stub import loader

EXIT_USAGE, EXIT_NO_ENGINE = 2, 20


@pytest.fixture(scope="module")
def manifest(tiny_bundle) -> dict:  # noqa: ANN001
    with tarfile.open(tiny_bundle) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("/manifest.json"))
        return json.loads(tf.extractfile(member).read())


@pytest.fixture(scope="module")
def rtx_version(manifest) -> str:  # noqa: ANN001
    versions = {e["header"]["version"] for e in manifest["engines"]}
    assert len(versions) == 1 and versions.pop().count(".") == 3
    return manifest["engines"][0]["header"]["version"]


def _path(manifest: dict, cc: str, precision: str = "fp32") -> str:
    return next(e["path"] for e in manifest["engines"] if e["target"]["cc"] == cc and e["build"]["precision"] == precision)


@pytest.fixture(scope="module")
def fleet(manifest) -> dict:  # noqa: ANN001
    """The real manifest plus a cpu engine and an fp16 twin of each GPU engine."""
    m = copy.deepcopy(manifest)
    gpu = [e for e in m["engines"]]
    for e in gpu:
        twin = copy.deepcopy(e)
        twin["path"] = e["path"].replace("_fp32_", "_fp16_")
        twin["build"]["precision"] = "fp16"
        m["engines"].append(twin)
    cpu = copy.deepcopy(gpu[0])
    cpu.update(path="engines/tiny_cpu.onnx", header=None,
               target={"cc": None, "gpu": None, "label": "cpu"},
               backend=dict(gpu[0]["backend"], name="onnxruntime", version="1.23.2"))
    m["engines"].append(cpu)
    return m


def gpu(cc: str, index: int = 0, name: str = "GPU") -> dict:
    return {"index": index, "name": name, "cc": cc}


def test_a_fitting_gpu_engine_is_preferred_over_cpu(fleet, rtx_version):  # noqa: ANN001
    item, record = loader.choose(fleet, [gpu("8.6")], {"tensorrt-rtx": rtx_version, "onnxruntime": "1.23.2"}, None)
    assert (item["path"], item["gpu"], item["fits"]) == (_path(fleet, "8.6"), 0, True)
    assert record["path"] == item["path"] and record["target"]["cc"] == "8.6"
    assert "GPU 0 GPU (cc 8.6)" in item["why"]


def test_compute_capability_picks_the_engine(fleet, rtx_version):  # noqa: ANN001
    rts = {"tensorrt-rtx": rtx_version}
    assert loader.choose(fleet, [gpu("12.0")], rts, None)[0]["path"] == _path(fleet, "12.0")
    # Two GPUs: the engine runs on the GPU it was built for, whatever the device order.
    item = loader.choose(fleet, [gpu("12.0", 0), gpu("8.6", 1)], rts, None, precision=None)[0]
    assert item["gpu"] == {_path(fleet, "12.0"): 0, _path(fleet, "8.6"): 1}[item["path"]]
    item = loader.choose(fleet, [gpu("7.5", 0), gpu("8.6", 1)], rts, None)[0]
    assert (item["path"], item["gpu"]) == (_path(fleet, "8.6"), 1)


def test_an_unmatched_compute_capability_falls_back_to_cpu_with_the_reason(fleet, rtx_version):  # noqa: ANN001
    items = loader.assess(fleet, [gpu("8.9", name="L4")], {"tensorrt-rtx": rtx_version, "onnxruntime": "1.23.2"})
    assert items[0]["path"] == "engines/tiny_cpu.onnx" and items[0]["fits"]
    why = {i["path"]: i["why"] for i in items}
    assert why[_path(fleet, "8.6")] == "built for compute capability 8.6; this host has 8.9 (L4)"
    assert all(not i["fits"] for i in items[1:])


def test_runtime_version_must_match_on_three_parts(fleet, rtx_version):  # noqa: ANN001
    major, minor, patch, build = rtx_version.split(".")
    p86 = _path(fleet, "8.6")
    for runtime, fits in ((rtx_version, True), (f"{major}.{minor}.{patch}", True),
                          (f"{major}.{minor}", False), (f"{major}.{minor}.{int(patch) + 1}", False),
                          (f"{major}.{minor}.{patch}.{int(build) + 1}", False)):
        item = next(i for i in loader.assess(fleet, [gpu("8.6")], {"tensorrt-rtx": runtime}) if i["path"] == p86)
        assert item["fits"] is fits, runtime
        if not fits:
            assert item["why"] == f"needs tensorrt-rtx {rtx_version}, host has {runtime}"


def test_no_runtime_and_no_gpu_each_named(fleet, rtx_version):  # noqa: ANN001
    p86 = _path(fleet, "8.6")
    item = next(i for i in loader.assess(fleet, [gpu("8.6")], {}) if i["path"] == p86)
    assert item["why"] == f"needs tensorrt-rtx {rtx_version}, not installed"
    item = next(i for i in loader.assess(fleet, [], {"tensorrt-rtx": rtx_version}) if i["path"] == p86)
    assert item["why"] == "no GPU on this host"
    cpu = next(i for i in loader.assess(fleet, [], {}) if i["path"] == "engines/tiny_cpu.onnx")
    assert (cpu["fits"], cpu["why"]) == (False, "cpu target needs onnxruntime, which is not installed")


def test_nothing_fits_lists_every_offer(fleet):  # noqa: ANN001
    with pytest.raises(loader.LoaderError) as e:
        loader.choose(fleet, [gpu("9.0", name="H200")], {}, None)
    assert e.value.code == EXIT_NO_ENGINE
    msg = str(e.value)
    assert msg.startswith("no engine in this bundle fits this host [H200 (cc 9.0)]")
    assert all(t in msg for t in ("sm86:", "rtx5090:", "cpu:"))


def test_fp32_before_reduced_precisions_unless_asked(fleet, rtx_version):  # noqa: ANN001
    rts = {"tensorrt-rtx": rtx_version}
    assert loader.choose(fleet, [gpu("8.6")], rts, None)[0]["precision"] == "fp32"
    item = loader.choose(fleet, [gpu("8.6")], rts, None, precision="fp16")[0]
    assert (item["path"], item["precision"]) == (_path(fleet, "8.6", "fp16"), "fp16")
    with pytest.raises(loader.LoaderError) as e:
        loader.choose(fleet, [gpu("8.6")], rts, None, precision="int8")
    assert e.value.code == EXIT_USAGE and "the bundle has engines in fp16, fp32" in str(e.value)


def test_engine_named_by_target_or_file(fleet, rtx_version):  # noqa: ANN001
    rts = {"tensorrt-rtx": rtx_version, "onnxruntime": "1.23.2"}
    assert loader.choose(fleet, [gpu("8.6")], rts, "cpu")[0]["path"] == "engines/tiny_cpu.onnx"
    p86 = _path(fleet, "8.6", "fp16")
    assert loader.choose(fleet, [gpu("8.6")], rts, p86.split("/")[-1])[0]["path"] == p86
    with pytest.raises(loader.LoaderError) as e:  # asked for, but this host cannot run it
        loader.choose(fleet, [gpu("8.6")], rts, "rtx5090")
    assert e.value.code == EXIT_NO_ENGINE
    with pytest.raises(loader.LoaderError) as e:
        loader.choose(fleet, [gpu("8.6")], rts, "rtx9999")
    assert e.value.code == EXIT_USAGE and "no such engine" in str(e.value)


def test_full_tensorrt_engine_runs_on_the_lean_runtime(fleet):  # noqa: ANN001
    """A full-TensorRT engine (no cc list in its header) is matched by its target's cc, and the
    lean runtime serves it when full TensorRT is absent."""
    m = copy.deepcopy(fleet)
    e = next(e for e in m["engines"] if e["path"] == _path(fleet, "8.6"))
    e["header"] = {"product": "tensorrt", "version": "10.13.0", "cc": None, "cc_mask": None}
    e["backend"] = dict(e["backend"], name="tensorrt", version="10.13.0.35")
    item = loader.choose(m, [gpu("8.6")], {"tensorrt-lean": "10.13.0.35"}, e["path"])[0]
    assert item["fits"] and "tensorrt 10.13.0.35" in item["why"]
    item = next(i for i in loader.assess(m, [gpu("8.6")], {"tensorrt": "10.12.0.36"}) if i["path"] == e["path"])
    assert item["why"] == "needs tensorrt 10.13.0, host has 10.12.0.36"


def test_choice_edges_the_mutation_run_found(fleet, rtx_version):  # noqa: ANN001
    """Cases pinned by the loader's mutation run (mutation/results-loader.json): the whole
    precision order with an unknown precision last, a cpu engine listed first and named to sort
    first, a GPU engine without a header record, the lean runtime offered to an RTX engine, an
    engine named by a file name in a subdirectory, and the record that goes with the choice."""
    rts = {"tensorrt-rtx": rtx_version, "onnxruntime": "1.23.2"}
    base = next(e for e in fleet["engines"] if e["path"] == _path(fleet, "8.6"))
    cpu = next(e for e in fleet["engines"] if e["target"]["label"] == "cpu")

    # every precision of the order, on paths that sort against it, plus one the order lacks
    m = {"engines": []}
    for name, precision in (("a", "xyz"), ("b", "fp8"), ("c", "int8"), ("d", "bf16"), ("e", "fp16"), ("f", "fp32")):
        e = copy.deepcopy(base)
        e["path"], e["build"]["precision"] = f"engines/{name}.engine", precision
        m["engines"].append(e)
    order = [i["precision"] for i in loader.assess(m, [gpu("8.6")], rts)]
    assert order == ["fp32", "fp16", "bf16", "int8", "fp8", "xyz"]

    # a cpu engine first in the manifest and first by path: the fitting GPU engine still wins,
    # engines after the cpu one are still assessed, and the record returned is the chosen one's
    m = copy.deepcopy(fleet)
    c = next(e for e in m["engines"] if e["target"]["label"] == "cpu")
    m["engines"].remove(c)
    c["path"] = "engines/a_cpu.onnx"
    m["engines"].insert(0, c)
    other = copy.deepcopy(base)  # listed first, sorts after the chosen one, fits no GPU here
    other["path"], other["target"]["cc"] = "engines/zz_sm99.engine", "9.9"
    other["header"] = dict(other["header"], cc=["9.9"])
    m["engines"].insert(0, other)
    item, record = loader.choose(m, [gpu("8.6")], rts, None)
    assert item["path"] == _path(fleet, "8.6") and record["path"] == item["path"]
    assert len(loader.assess(m, [gpu("8.6")], rts)) == len(m["engines"])
    # a cpu engine asked for by its file name, which sorts after the GPU engines' names
    assert loader.choose(fleet, [gpu("8.6")], rts, "tiny_cpu.onnx")[0]["path"] == cpu["path"]

    # a GPU engine without a header record: its backend names the runtime, its target the cc
    m = {"engines": [dict(copy.deepcopy(base), header=None)]}
    m["engines"][0]["backend"]["version"] = rtx_version
    item = loader.assess(m, [gpu("8.6")], {"tensorrt-rtx": rtx_version})[0]
    assert item["fits"] and f"with tensorrt-rtx {rtx_version}" in item["why"]

    # the lean runtime serves full-TensorRT engines only, never a TensorRT-RTX one
    item = loader.assess({"engines": [base]}, [gpu("8.6")], {"tensorrt-lean": rtx_version})[0]
    assert not item["fits"] and item["why"] == f"needs tensorrt-rtx {rtx_version}, not installed"

    # an engine in a subdirectory, named by its file name alone
    m = {"engines": [dict(copy.deepcopy(base), path="engines/sm86/model.engine")]}
    assert loader.choose(m, [gpu("8.6")], rts, "model.engine")[0]["path"] == "engines/sm86/model.engine"
