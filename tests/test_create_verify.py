"""End to end through the CLI: create -> verify -> extract -> inspect, with real TensorRT-RTX engines."""

from __future__ import annotations

import hashlib
import os
from pathlib import Path
import json
import subprocess
import tarfile


from bundler.engine_header import read_header
from conftest import onnx_light_model, run_bundle, tar_members


def test_bundle_layout_and_order(tiny_bundle, keys):
    names = tar_members(tiny_bundle)
    root = "tiny-1.0.0"
    assert names[0] == f"{root}/signatures/{keys['release']['id']}.sig"
    assert names[1] == f"{root}/manifest.json"
    assert names[2] == f"{root}/SHA256SUMS"
    engines = [n for n in names if n.endswith(".engine")]
    assert engines == [f"{root}/engines/tiny_16x16_fp32_rtx5090.engine", f"{root}/engines/tiny_16x16_fp32_sm86.engine"]
    assert f"{root}/engines/tiny_16x16_fp32_sm86.log" in names
    assert names.index(f"{root}/model/tiny.onnx") > names.index(engines[-1])
    assert names[-2].startswith(f"{root}/runtime/")
    assert names[-1] == f"{root}/provenance/slsa-v1.intoto.json"  # the SLSA provenance comes last
    with tarfile.open(tiny_bundle) as tf:
        for m in tf.getmembers():
            assert m.uid == 0 and m.gid == 0 and m.uname == "" and m.gname == ""
            assert m.mtime == 1700000000  # SOURCE_DATE_EPOCH
            assert m.mode in (0o644, 0o755)


def test_verify_ok_and_json_report(tiny_bundle, keys):
    r = run_bundle("verify", tiny_bundle, "--trust", keys["release"]["pub"])
    assert r.code == 0, r.err
    assert "VERIFIED tiny 1.0.0" in r.out
    r = run_bundle("verify", tiny_bundle, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 0
    rep = r.json()  # stdout is exactly one JSON document
    assert rep["ok"] is True and rep["exit_code"] == 0 and rep["error"] is None
    assert rep["name"] == "tiny" and rep["version"] == "1.0.0"
    assert rep["sha256"] == hashlib.sha256(tiny_bundle.read_bytes()).hexdigest()
    assert [s["key_id"] for s in rep["signers"]] == [keys["release"]["id"]]
    assert rep["signers"][0]["trusted"] and rep["signers"][0]["valid"]
    assert {f["status"] for f in rep["files"]} == {"ok"}
    assert {e["target"] for e in rep["engines"]} == {"sm86", "rtx5090"}
    assert all(e["header_ok"] for e in rep["engines"])
    # No GPU here: the host check reports why nothing runs, and does not fail verify by default.
    assert all(e["runnable_here"] is False for e in rep["engines"])
    r = run_bundle("verify", tiny_bundle, "--trust", keys["release"]["pub"], "--require-host", "--json")
    assert r.code == 17 and r.json()["error"]["class"] == "host"


def test_manifest_records_build_and_header(tiny_bundle, keys, tmp_path):
    dest = tmp_path / "x"
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    m = json.loads((dest / "manifest.json").read_text())
    assert m["format"] == "trt-bundle/1" and m["name"] == "tiny" and m["version"] == "1.0.0"
    assert m["created"] == "2023-11-14T22:13:20Z"  # from SOURCE_DATE_EPOCH
    assert m["model"]["inputs"] == [{"name": "x", "dtype": "float32", "shape": ["N", 3, 16, 16]}]
    assert m["model"]["sha256"] == hashlib.sha256((dest / "model/tiny.onnx").read_bytes()).hexdigest()
    by_label = {e["target"]["label"]: e for e in m["engines"]}
    assert by_label["sm86"]["target"]["cc"] == "8.6"
    assert by_label["rtx5090"]["target"] == {"label": "rtx5090", "cc": "12.0", "gpu": "rtx5090"}
    for e in m["engines"]:
        assert e["backend"]["name"] == "tensorrt-rtx" and e["backend"]["version"].startswith("1.")
        assert e["build"]["profiles"] == [{"x": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}]
        assert e["build"]["precision"] == "fp32"
        assert e["host"] and e["duration_s"] > 0
        engine = dest / e["path"]
        assert e["size"] == engine.stat().st_size
        assert e["sha256"] == hashlib.sha256(engine.read_bytes()).hexdigest()
        header = read_header(engine)
        assert e["header"]["version"] == header.version == e["backend"]["version"]
        assert e["header"]["cc"] == header.cc == [e["target"]["cc"]]
        assert (dest / e["log"]).read_text().strip()
    # The extracted bundle passes coreutils' check of SHA256SUMS.
    p = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=dest, capture_output=True, text=True)
    assert p.returncode == 0, p.stdout + p.stderr
    assert p.stdout.count(": OK") == len(m["files"]) + 1


def test_extract_never_overwrites(tiny_bundle, keys, tmp_path):
    dest = tmp_path / "exists"
    dest.mkdir()
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 6 and "already exists" in r.err
    assert list(dest.iterdir()) == []
    assert sorted(p.name for p in tmp_path.iterdir()) == ["exists"]  # no staging left behind


def test_inspect_without_and_with_trust(tiny_bundle, keys):
    r = run_bundle("inspect", tiny_bundle)
    assert r.code == 0, r.err
    assert "NOT VERIFIED" in r.out
    assert keys["release"]["id"] in r.out and "tiny_16x16_fp32_sm86.engine" in r.out
    r = run_bundle("inspect", tiny_bundle, "--json")
    d = r.json()
    assert d["verified"] is False and d["verification"] is None
    assert d["manifest"]["name"] == "tiny"
    assert d["signer_key_ids"] == [keys["release"]["id"]]
    hdrs = d["engine_headers"]
    assert hdrs["engines/tiny_16x16_fp32_sm86.engine"]["cc"] == ["8.6"]
    assert hdrs["engines/tiny_16x16_fp32_rtx5090.engine"]["cc"] == ["12.0"]
    r = run_bundle("inspect", tiny_bundle, "--json", "--trust", keys["release"]["pub"])
    assert r.code == 0 and r.json()["verified"] is True
    r = run_bundle("inspect", tiny_bundle, "--json", "--trust", keys["other"]["pub"])
    assert r.code == 11 and r.json()["verified"] is False


def test_real_model_from_onnx_wheel_two_targets(tmp_path, keys):
    model = onnx_light_model("light_squeezenet")
    assert model.is_file()
    r = run_bundle("create", model, "--name", "squeezenet", "--version", "2.1.0-rc.1",
                   "--target", "8.9", "--target", "t4", "--key", keys["release"]["key"], "--out", tmp_path,
                   "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    bundle = tmp_path / "squeezenet-2.1.0-rc.1.bundle.tar"
    assert str(bundle) in r.out
    # engines carry the bundle's --name, not the ONNX file's stem (light_squeezenet)
    assert "squeezenet_224x224_fp32_t4.engine" in r.out and "light-squeezenet" not in r.out
    r = run_bundle("verify", bundle, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 0, r.err
    rep = r.json()
    assert {(e["target"], e["cc"]) for e in rep["engines"]} == {("sm89", "8.9"), ("t4", "7.5")}
    dest = tmp_path / "x"
    assert run_bundle("extract", bundle, "--trust", keys["release"]["pub"], "--dest", dest).code == 0
    assert (dest / "model" / "light_squeezenet.onnx").read_bytes() == model.read_bytes()


def test_build_then_seal_several_build_dirs(tmp_path, keys, tiny_model):
    common = ("--name", "tiny", "--version", "1.0.0", "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--backend", "tensorrt-rtx")
    assert run_bundle("build", tiny_model, "--target", "sm_80", "--out", tmp_path / "b1", *common).code == 0
    assert run_bundle("build", tiny_model, "--target", "sm_120", "--out", tmp_path / "b2", *common).code == 0
    r = run_bundle("seal", tmp_path / "b1", tmp_path / "b2", "--key", keys["release"]["key"], "--out", tmp_path / "dist")
    assert r.code == 0, r.err
    bundle = tmp_path / "dist" / "tiny-1.0.0.bundle.tar"
    rep = run_bundle("verify", bundle, "--trust", keys["release"]["pub"], "--json").json()
    assert rep["ok"] and sorted(e["cc"] for e in rep["engines"]) == ["12.0", "8.0"]
    # Sealing refuses to overwrite, and refuses build dirs of different models.
    r = run_bundle("seal", tmp_path / "b1", "--key", keys["release"]["key"], "--out", tmp_path / "dist")
    assert r.code == 6
    other = tmp_path / "other.onnx"
    from conftest import make_conv_model

    make_conv_model(other, hw=32)
    assert run_bundle("build", other, "--target", "sm_86", "--out", tmp_path / "b3", "--name", "tiny", "--version", "1.0.0",
                      "--shape", "x:1x3x32x32", "--backend", "tensorrt-rtx").code == 0
    r = run_bundle("seal", tmp_path / "b1", tmp_path / "b3", "--key", keys["release"]["key"], "--out", tmp_path / "d2")
    assert r.code == 3 and "different source model" in r.err
    assert not (tmp_path / "d2" / "tiny-1.0.0.bundle.tar").exists()


def test_sealing_twice_is_byte_identical(tmp_path, keys, tiny_model):
    build = tmp_path / "b"
    assert run_bundle("build", tiny_model, "--target", "sm_86", "--target", "a100", "--out", build, "--name", "tiny",
                      "--version", "1.0.0", "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--backend", "tensorrt-rtx").code == 0
    env = {"SOURCE_DATE_EPOCH": "1750000000"}
    for d in ("one", "two"):
        r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", tmp_path / d, env=env)
        assert r.code == 0, r.err
    a = (tmp_path / "one" / "tiny-1.0.0.bundle.tar").read_bytes()
    b = (tmp_path / "two" / "tiny-1.0.0.bundle.tar").read_bytes()
    assert a == b
    # A different epoch changes the bytes (the test would pass trivially if time were ignored).
    assert run_bundle("seal", build, "--key", keys["release"]["key"], "--out", tmp_path / "three",
                      env={"SOURCE_DATE_EPOCH": "1750000001"}).code == 0
    assert (tmp_path / "three" / "tiny-1.0.0.bundle.tar").read_bytes() != a


def test_seal_detects_engine_changed_after_build(tmp_path, keys, tiny_model):
    build = tmp_path / "b"
    assert run_bundle("build", tiny_model, "--target", "sm_86", "--out", build, "--name", "tiny", "--version", "1.0.0",
                      "--shape", "x:1x3x16x16", "--backend", "tensorrt-rtx").code == 0
    engine = next((build / "engines").glob("*.engine"))
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", tmp_path / "dist")
    assert r.code == 3 and "changed since it was built" in r.err
    assert not (tmp_path / "dist").exists()  # no partial tar under any name, nor the --out made for it


def test_extract_into_an_unwritable_place_is_an_output_error(tiny_bundle, keys, tmp_path):
    # root ignores directory permissions, so use a place where nobody can create a directory.
    if os.geteuid() == 0:
        dest = Path("/proc/trt-bundler-x")
    else:
        ro = tmp_path / "ro"
        ro.mkdir(mode=0o500)
        dest = ro / "x"
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 6 and "cannot create a staging directory" in r.err
    assert not dest.exists()
