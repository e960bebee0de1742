"""`bundle export --triton`: real bundles into a Triton model repository, through the CLI.

Every config.pbtxt written is parsed with protobuf's text format into Triton's own
`ModelConfig` message (`tritonclient.grpc.model_config_pb2`, the test extra), and checked field
by field. Full TensorRT cannot be installed here, so the tensorrt_plan bundle is sealed from a
real `bundle build` directory whose engines were rewritten to the full-TensorRT header layout
(docs/bundle-format.md: magic ``ftrt``, version at bytes 24-26) and whose build record says so:
the verifier checks those headers against the manifest exactly as for engines TensorRT wrote.
"""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path

import pytest
from google.protobuf import text_format

from conftest import run_bundle

model_config_pb2 = pytest.importorskip("tritonclient.grpc.model_config_pb2")

SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"
PROFILE2 = "x:1x3x16x16:8x3x16x16:16x3x16x16"
SDE = {"SOURCE_DATE_EPOCH": "1700000000"}


def sha256(p: Path) -> str:
    return hashlib.sha256(Path(p).read_bytes()).hexdigest()


def parse_config(path: Path):  # noqa: ANN201 - model_config_pb2.ModelConfig
    return text_format.Parse(Path(path).read_text(encoding="ascii"), model_config_pb2.ModelConfig())


def tree(root: Path) -> dict:
    """Every path under root (hidden ones included) with its bytes' digest: what 'untouched' means."""
    out = {}
    for dirpath, dirs, files in os.walk(root):
        for d in dirs:
            out[os.path.relpath(os.path.join(dirpath, d), root) + "/"] = None
        for f in files:
            p = os.path.join(dirpath, f)
            out[os.path.relpath(p, root)] = sha256(Path(p))
    return out


def manifest_of(bundle: Path) -> dict:
    with tarfile.open(bundle) as tf:
        m = next(x for x in tf.getmembers() if x.name.endswith("/manifest.json"))
        return json.loads(tf.extractfile(m).read())


def make_full_tensorrt(build_dir: Path, version: str = "10.13.0") -> None:
    """Rewrite a TensorRT-RTX build directory's engines as full-TensorRT engines: the header
    layout the verifier reads (magic, TensorRT version at bytes 24-26), the build record's header
    and backend to match. `bundle seal` checks every header against the record again."""
    rec_path = build_dir / "build.json"
    rec = json.loads(rec_path.read_text())
    for e in rec["engines"]:
        if e["header"] is None:
            continue
        body = (build_dir / e["path"]).read_bytes()
        head = bytearray(64)
        head[0:4] = b"ftrt"
        head[24:27] = bytes(int(v) for v in version.split("."))
        data = bytes(head) + body[64:]
        (build_dir / e["path"]).write_bytes(data)
        e["header"] = {"product": "tensorrt", "version": version, "cc": None, "cc_mask": None}
        e["backend"] = dict(e["backend"], name="tensorrt", module="tensorrt", version=version + ".35")
        e["sha256"], e["size"] = hashlib.sha256(data).hexdigest(), len(data)
    rec_path.write_text(json.dumps(rec, indent=2, sort_keys=True) + "\n")


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys, tiny_model) -> dict:  # noqa: ANN001
    """Real bundles of the tests' model: RTX sm_86 + cpu at 1.2.3 and 1.3.0, full TensorRT
    sm_86 + sm_89 + cpu with two profiles at 2.0.1."""
    d = tmp_path_factory.mktemp("export")
    out = {}
    for version in ("1.2.3", "1.3.0"):
        r = run_bundle("create", tiny_model, "--name", "tiny", "--version", version, "--target", "sm_86",
                       "--target", "cpu", "--shape", SHAPE, "--key", keys["release"]["key"], "--out", d / "rtx",
                       "--backend", "tensorrt-rtx", env=SDE)
        assert r.code == 0, r.err
        out[version] = d / "rtx" / f"tiny-{version}.bundle.tar"
    build = d / "build"
    r = run_bundle("build", tiny_model, "--name", "tiny", "--version", "2.0.1", "--target", "sm_86", "--target", "sm_89",
                   "--target", "cpu", "--shape", SHAPE, "--profile", PROFILE2, "--out", build, "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    make_full_tensorrt(build)
    r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", d / "trt", env=SDE)
    assert r.code == 0, r.err
    out["trt"] = d / "trt" / "tiny-2.0.1.bundle.tar"
    out["trt_build"] = build
    return out


def export(bundle: Path, repo: Path, keys: dict, *args: object):  # noqa: ANN201
    return run_bundle("export", bundle, "--triton", repo, "--trust", keys["release"]["pub"], *args)


def test_rtx_only_bundle_is_refused_and_nothing_written(tmp_path, tiny_bundle, keys):
    repo = tmp_path / "repo"
    r = export(tiny_bundle, repo, keys)
    assert r.code == 27, r.err
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error [export]: nothing to export for Triton")
    assert "TensorRT-RTX" in lines[0] and "--target cpu" in lines[0] and r.out == ""
    assert not repo.exists()  # not even the repository it would have made
    repo.mkdir()
    r = export(tiny_bundle, repo, keys, "--json")
    assert r.code == 27
    doc = json.loads(r.out)
    assert doc["ok"] is False and doc["exit_code"] == 27 and doc["error"]["class"] == "export"
    assert os.listdir(repo) == []


def test_rtx_and_cpu_bundle_exports_the_cpu_model(tmp_path, bundles, keys):
    repo = tmp_path / "repo"
    r = export(bundles["1.2.3"], repo, keys, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)  # exactly one JSON document on stdout
    m = manifest_of(bundles["1.2.3"])
    cpu = next(e for e in m["engines"] if e["target"]["label"] == "cpu")
    rtx = next(e for e in m["engines"] if e["target"]["label"] == "sm86")
    assert (doc["ok"], doc["model"], doc["platform"], doc["version"], doc["semver"]) == (
        True, "tiny", "onnxruntime_onnx", 1002003, "1.2.3")
    assert doc["files"] == [{"path": "tiny/1002003/model.onnx", "source": cpu["path"], "size": cpu["size"],
                             "sha256": cpu["sha256"]}]
    assert [(s["path"], s["target"]) for s in doc["skipped"]] == [(rtx["path"], "sm86")]
    assert "TensorRT-RTX" in doc["skipped"][0]["reason"] and "skipped: " in r.err and "TensorRT-RTX" in r.err
    # exactly these files, the ONNX being the verified cpu engine's bytes
    assert set(tree(repo)) == {"tiny/", "tiny/1002003/", "tiny/config.pbtxt", "tiny/bundle-versions.json",
                               "tiny/1002003/model.onnx"}
    assert sha256(repo / "tiny/1002003/model.onnx") == cpu["sha256"]
    c = parse_config(repo / "tiny/config.pbtxt")
    assert c.name == "tiny" and c.platform == "onnxruntime_onnx" and c.backend == ""
    assert c.max_batch_size == 4  # the profile's max batch
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("x", model_config_pb2.TYPE_FP32, [3, 16, 16])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("y", model_config_pb2.TYPE_FP32, [8, 16, 16])]
    assert c.HasField("dynamic_batching") and list(c.dynamic_batching.preferred_batch_size) == [2]
    assert len(c.instance_group) == 1
    g = c.instance_group[0]
    assert (g.kind, g.count, list(g.profile)) == (model_config_pb2.ModelInstanceGroup.KIND_CPU, 1, [])
    assert c.default_model_filename == "model.onnx" and len(c.cc_model_filenames) == 0
    assert not c.HasField("version_policy") and not c.HasField("sequence_batching")
    # asked for the plans it cannot have: refused with the reason, nothing added
    before = tree(repo)
    r = export(bundles["1.2.3"], repo, keys, "--platform", "tensorrt_plan", "--model-name", "tiny_gpu")
    assert r.code == 27 and "no full TensorRT engine" in r.err and "TensorRT-RTX" in r.err and tree(repo) == before


def test_versions_accumulate_never_overwrite_and_map_back(tmp_path, bundles, keys):
    from bundler.export_triton import read_mapping, semver_of, triton_version

    repo = tmp_path / "repo"
    assert export(bundles["1.2.3"], repo, keys).code == 0
    config = (repo / "tiny/config.pbtxt").read_bytes()
    r = export(bundles["1.3.0"], repo, keys)
    assert r.code == 0, r.err
    assert "(unchanged" in r.out and (repo / "tiny/config.pbtxt").read_bytes() == config
    assert sorted(os.listdir(repo / "tiny")) == ["1002003", "1003000", "bundle-versions.json", "config.pbtxt"]
    # the mapping file: integer <-> semantic version and the bundle's digests, both ways
    mapping = read_mapping(repo / "tiny/bundle-versions.json")
    assert sorted(mapping) == [1002003, 1003000]
    for number, entry in mapping.items():
        bundle = bundles[entry["version"]]
        v = run_bundle("verify", bundle, "--trust", keys["release"]["pub"], "--json").json()
        assert semver_of(number) == entry["version"] and triton_version(entry["version"]) == number
        assert (entry["content_digest"], entry["bundle_sha256"]) == (v["content_digest"], v["sha256"])
        assert entry["files"] == {"model.onnx": sha256(repo / "tiny" / str(number) / "model.onnx")}
    # the same version again: refused, the repository untouched (also with a killed run's leftover)
    leftover = repo / ".trt-export-999999999-dead"
    leftover.mkdir()
    before = tree(repo)
    r = export(bundles["1.2.3"], repo, keys)
    assert r.code == 6 and "1002003" in r.err and "never overwritten" in r.err and len(r.err.splitlines()) == 1
    del before[".trt-export-999999999-dead/"]
    assert tree(repo) == before  # the dead run's directory is cleared, nothing else changed
    # a config.pbtxt that differs (edited by hand) is never replaced, and no version is added
    (repo / "tiny/config.pbtxt").write_bytes(config + b"# tuned by hand\n")
    shutil.rmtree(repo / "tiny/1003000")
    before = tree(repo)
    r = export(bundles["1.3.0"], repo, keys)
    assert r.code == 6 and "config.pbtxt: differs" in r.err
    assert tree(repo) == before


def test_version_rule_both_ways():
    from bundler.errors import ExportError
    from bundler.export_triton import semver_of, triton_version

    for v, n in [("0.0.1", 1), ("0.1.0", 1000), ("1.2.3", 1002003), ("1.2.3+build.7", 1002003),
                 ("999999.999.999", 999999999999), ("10.0.0", 10000000)]:
        assert triton_version(v) == n
        assert semver_of(n) == v.split("+")[0]
    assert triton_version("1.999.999") < triton_version("2.0.0")  # semver order is integer order
    for bad in ("1.0.0-rc.1", "1.1000.0", "1.0.1000", "1000000.0.0", "0.0.0", "1.0"):
        with pytest.raises(ExportError):
            triton_version(bad)
    for bad in (0, -1, 10**12, True, "1002003"):
        with pytest.raises(ValueError):
            semver_of(bad)


def test_full_tensorrt_plans_one_per_compute_capability(tmp_path, bundles, keys):
    repo = tmp_path / "repo"
    r = export(bundles["trt"], repo, keys, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    m = manifest_of(bundles["trt"])
    by_label = {e["target"]["label"]: e for e in m["engines"]}
    assert (doc["platform"], doc["version"], doc["tensorrt_version"], doc["max_batch_size"]) == (
        "tensorrt_plan", 2000001, "10.13.0", 16)
    assert [s["target"] for s in doc["skipped"]] == ["cpu"] and "--platform onnxruntime_onnx" in doc["skipped"][0]["reason"]
    vdir = repo / "tiny" / "2000001"
    assert sorted(os.listdir(vdir)) == ["model_sm86.plan", "model_sm89.plan"]
    for label in ("sm86", "sm89"):  # the verified bytes, with the full-TensorRT header they were sealed with
        data = (vdir / f"model_{label}.plan").read_bytes()
        assert hashlib.sha256(data).hexdigest() == by_label[label]["sha256"] and data[:4] == b"ftrt"
    c = parse_config(repo / "tiny/config.pbtxt")
    assert c.name == "tiny" and c.platform == "tensorrt_plan"
    assert dict(c.cc_model_filenames) == {"8.6": "model_sm86.plan", "8.9": "model_sm89.plan"}
    assert c.default_model_filename == ""
    assert c.max_batch_size == 16  # the larger of the two profiles' max batch (4 and 16)
    assert [(i.name, i.data_type, list(i.dims)) for i in c.input] == [("x", model_config_pb2.TYPE_FP32, [3, 16, 16])]
    assert [(o.name, o.data_type, list(o.dims)) for o in c.output] == [("y", model_config_pb2.TYPE_FP32, [8, 16, 16])]
    assert list(c.dynamic_batching.preferred_batch_size) == [2, 8]  # the profiles' opt batches
    assert len(c.instance_group) == 1
    g = c.instance_group[0]
    assert (g.kind, g.count, list(g.profile)) == (model_config_pb2.ModelInstanceGroup.KIND_GPU, 1, ["0", "1"])
    # the same bundle's cpu target, as a model of its own
    r = export(bundles["trt"], repo, keys, "--platform", "onnxruntime_onnx", "--model-name", "tiny_cpu")
    assert r.code == 0, r.err
    c = parse_config(repo / "tiny_cpu/config.pbtxt")
    assert c.name == "tiny_cpu" and c.platform == "onnxruntime_onnx" and c.max_batch_size == 16
    assert sha256(repo / "tiny_cpu/2000001/model.onnx") == by_label["cpu"]["sha256"]
    assert r.err.count("skipped: ") == 2 and "a Triton model has one platform" in r.err


def test_tampered_bundle_is_refused_before_anything_is_written(tmp_path, bundles, keys):
    bad = tmp_path / "tiny-1.2.3.bundle.tar"
    shutil.copyfile(bundles["1.2.3"], bad)
    with tarfile.open(bad) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith("_cpu.onnx"))
    with open(bad, "r+b") as f:  # one byte of the ONNX graph the export would have written
        f.seek(member.offset_data + member.size // 2)
        b = f.read(1)
        f.seek(-1, 1)
        f.write(bytes([b[0] ^ 0x01]))
    repo = tmp_path / "repo"
    repo.mkdir()
    r = export(bad, repo, keys)
    assert r.code == 12 and r.err.startswith("error [digest]: cannot export a bundle that fails verification")
    assert len(r.err.splitlines()) == 1 and os.listdir(repo) == []
    r = run_bundle("export", bundles["1.2.3"], "--triton", repo, "--trust", keys["other"]["pub"])
    assert r.code == 11 and os.listdir(repo) == []  # an untrusted signer: the same
    r = export(bundles["1.2.3"], repo, keys, "--model-name", "../escape")
    assert r.code == 3 and "model name" in r.err and os.listdir(repo) == [] and not (tmp_path / "escape").exists()


def test_hostile_tensor_names_are_escaped(tmp_path, keys):
    """Tensor names are the model author's: quotes, a backslash, a newline, braces, '#', an
    escape sequence and a bidi override must stay one string in config.pbtxt (Triton's parser
    reads back exactly the name) and never reach the terminal raw."""
    import onnx
    from onnx import TensorProto, helper

    name_in, name_out = 'in"put\n\\\u00e9}{ #', "out'\x1b[31m\u202e"
    x = helper.make_tensor_value_info(name_in, TensorProto.FLOAT, [1, 4])
    y = helper.make_tensor_value_info(name_out, TensorProto.INT64, [1, 4])
    nodes = [helper.make_node("Relu", [name_in], ["r"]), helper.make_node("Cast", ["r"], [name_out], to=TensorProto.INT64)]
    model = helper.make_model(helper.make_graph(nodes, "g", [x], [y]), opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(tmp_path / "h.onnx"))
    r = run_bundle("create", tmp_path / "h.onnx", "--name", "h", "--version", "3.0.0", "--target", "cpu",
                   "--key", keys["release"]["key"], "--out", tmp_path / "d")
    assert r.code == 0, r.err
    repo = tmp_path / "repo"
    r = export(tmp_path / "d" / "h-3.0.0.bundle.tar", repo, keys)
    assert r.code == 0, r.err
    text = (repo / "h/config.pbtxt").read_bytes()
    assert all(0x20 <= b < 0x7F or b == 0x0A for b in text)  # ASCII only: every other byte escaped
    c = parse_config(repo / "h/config.pbtxt")
    assert [i.name for i in c.input] == [name_in] and [o.name for o in c.output] == [name_out]
    assert c.max_batch_size == 0 and list(c.input[0].dims) == [1, 4]  # a fixed batch: no batching, full dims
    assert c.output[0].data_type == model_config_pb2.TYPE_INT64 and not c.HasField("dynamic_batching")
    assert "\x1b" not in r.out + r.err and "\u202e" not in r.out + r.err


def test_interrupt_leaves_nothing(tmp_path, bundles, keys):
    """Ctrl-C (or SIGTERM, which the CLI turns into the same exception) during verification:
    the repository it created, the work directory and the extraction are all gone."""
    from bundler.export_triton import export_triton
    from bundler.signing import load_trust

    def interrupt(done: int, total: int) -> None:
        if done > total // 2:
            raise KeyboardInterrupt

    repo = tmp_path / "repo"
    with pytest.raises(KeyboardInterrupt):
        export_triton(bundles["1.2.3"], load_trust([keys["release"]["pub"]]), repo, progress=interrupt)
    assert not repo.exists()
    repo.mkdir()
    with pytest.raises(KeyboardInterrupt):
        export_triton(bundles["1.2.3"], load_trust([keys["release"]["pub"]]), repo, progress=interrupt)
    assert os.listdir(repo) == []


def _export_process(bundle: Path, repo: Path, keys: dict) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bundler.cli", "export", str(bundle), "--triton", str(repo),
                             "--trust", str(keys["release"]["pub"]), "--json"],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_concurrent_exports_into_one_model_and_sigterm_while_waiting(tmp_path, bundles, keys):
    """Two exports of two versions at once into a new model: both land, one made the model, the
    mapping holds both. Then an export waiting for the model's lock (held here, as a third
    export would hold it) is stopped by SIGTERM: 143, and nothing of it is left."""
    import fcntl

    from bundler.export_triton import read_mapping

    repo = tmp_path / "repo"
    procs = [_export_process(bundles[v], repo, keys) for v in ("1.2.3", "1.3.0")]
    docs = []
    for p in procs:
        out, err = p.communicate(timeout=120)
        assert p.returncode == 0, err
        docs.append(json.loads(out))
    assert sorted(d["config_written"] for d in docs) == [False, True]
    assert sorted(read_mapping(repo / "tiny/bundle-versions.json")) == [1002003, 1003000]
    assert sorted(os.listdir(repo)) == ["tiny"]

    shutil.rmtree(repo / "tiny/1003000")
    before = tree(repo)
    fd = os.open(repo / "tiny", os.O_RDONLY | os.O_DIRECTORY)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        p = _export_process(bundles["1.3.0"], repo, keys)
        deadline = time.monotonic() + 60
        while not list(repo.glob(".trt-export-*/model/bundle-versions.json")):  # staged, next: the lock
            assert p.poll() is None and time.monotonic() < deadline, p.communicate()
            time.sleep(0.05)
        time.sleep(0.3)
        assert p.poll() is None  # waiting for the lock
        p.send_signal(signal.SIGTERM)
        out, err = p.communicate(timeout=10)
    finally:
        os.close(fd)
    assert p.returncode == 143 and "terminated" in err and json.loads(out)["exit_code"] == 143
    assert tree(repo) == before  # no version, no mapping change, no work directory
    assert export(bundles["1.3.0"], repo, keys).code == 0  # and nothing stale blocks the next one
