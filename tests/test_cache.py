"""The build cache (docs/farm.md): hit, miss, corruption, what the key covers, ls/prune, racing writers.

Real TensorRT-RTX builds through the CLI; the cache directory is inspected and damaged by hand,
as a full disk or a bad sector would.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from conftest import REPO, make_conv_model, run_bundle

SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"


def build(model: Path, out: Path, cache: Path, *extra: object, name: str = "m", targets=("sm_86",), env=None):  # noqa: ANN001, ANN201
    t = [a for x in targets for a in ("--target", x)]
    args = ["build", model, "--name", name, "--version", "1.0.0", *t, "--shape", SHAPE, "--no-golden",
            "--out", out, "--backend", "tensorrt-rtx", *extra]
    if cache is not None:
        args += ["--cache", cache]
    return run_bundle(*args, env=env)


def entries(cache: Path) -> list:
    r = run_bundle("cache", "ls", "--cache", cache, "--json")
    assert r.code == 0, r.err
    return r.json()["entries"]


def engines(build_dir: Path) -> dict:
    return {e["target"]["label"]: e for e in json.loads((build_dir / "build.json").read_text())["engines"]}


def test_a_miss_is_stored_and_a_hit_keeps_the_original_build_host_and_time(tmp_path, keys):
    model = make_conv_model(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    r = build(model, tmp_path / "a", cache, targets=("sm_86", "rtx5090"))
    assert r.code == 0, r.err
    assert r.err.count("building ") == 2 and "reused" not in r.err
    first = engines(tmp_path / "a")
    assert all(e["cache"]["reused"] is False for e in first.values())
    listed = {e["key"]: e for e in entries(cache)}
    assert set(listed) == {e["cache"]["key"] for e in first.values()}
    assert all(e["ok"] and e["builder"].startswith("tensorrt-rtx ") for e in listed.values())

    # Another bundle name, the same graph and settings: every engine comes from the cache.
    out = tmp_path / "dist"
    r = run_bundle("create", model, "--name", "other", "--version", "2.0.0", "--target", "sm_86", "--target", "rtx5090",
                   "--shape", SHAPE, "--no-golden", "--backend", "tensorrt-rtx", "--cache", cache,
                   "--key", keys["release"]["key"], "--out", out)
    assert r.code == 0, r.err
    assert "building" not in r.err and r.err.count("reused ") == 2, r.err
    assert "(reused)" in r.out  # the engine table says so too
    x = tmp_path / "x"
    v = run_bundle("extract", out / "other-2.0.0.bundle.tar", "--trust", keys["release"]["pub"], "--dest", x)
    assert v.code == 0, v.err
    m = json.loads((x / "manifest.json").read_text())
    for e in m["engines"]:
        orig = first[e["target"]["label"]]
        assert e["cache"] == {"key": orig["cache"]["key"], "reused": True}
        assert (e["host"], e["started"], e["duration_s"], e["sha256"]) == \
               (orig["host"], orig["started"], orig["duration_s"], orig["sha256"])
        assert e["path"] == f"engines/other_16x16_fp32_{e['target']['label']}.engine"  # named for this bundle
        assert (x / e["log"]).read_bytes() == (tmp_path / "a" / orig["log"]).read_bytes()
    py38 = Path.home() / ".pyenv" / "versions" / "3.8.18" / "bin" / "python"
    if py38.exists():  # the stdlib verifier reads the new field on the oldest Python it supports
        p = subprocess.run([str(py38), str(x / "runtime" / "verify.py"), str(out / "other-2.0.0.bundle.tar"),
                            "--trust", str(keys["release"]["pub"])], capture_output=True, text=True)
        assert p.returncode == 0, p.stderr


@pytest.mark.parametrize("damage", ["engine", "entry.json", "build.log"])
def test_a_corrupted_entry_is_removed_and_rebuilt_never_used(tmp_path, damage):
    model = make_conv_model(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    assert build(model, tmp_path / "a", cache).code == 0
    (entry,) = entries(cache)
    d = cache / entry["key"]
    victim = d / ("engine.engine" if damage == "engine" else damage)
    data = bytearray(victim.read_bytes())
    data[len(data) // 2] ^= 0x01  # one flipped bit
    victim.write_bytes(bytes(data))
    r = build(model, tmp_path / "b", cache)
    assert r.code == 0, r.err
    assert f"warning: build cache entry {entry['key'][:16]}... is corrupted" in r.err, r.err
    assert "removed, rebuilding" in r.err and "building sm86" in r.err and "reused" not in r.err
    e = engines(tmp_path / "b")["sm86"]
    assert e["cache"] == {"key": entry["key"], "reused": False}
    # the rebuilt engine is what the new build directory holds, and the entry is whole again
    assert (tmp_path / "b" / e["path"]).stat().st_size == e["size"]
    (again,) = entries(cache)
    assert again["key"] == entry["key"] and again["ok"]
    assert (cache / entry["key"] / "engine.engine").read_bytes() == (tmp_path / "b" / e["path"]).read_bytes()
    r = build(model, tmp_path / "c", cache)
    assert r.code == 0 and "reused sm86" in r.err and "warning" not in r.err, r.err
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]  # no temporary or trash directory left


def test_the_key_covers_precision_profiles_settings_and_not_the_name(tmp_path):
    model = make_conv_model(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    assert build(model, tmp_path / "a", cache).code == 0
    keys_seen = {e["key"] for e in entries(cache)}
    for n, extra in enumerate([("--precision", "fp16"), ("--workspace", "64M"),
                               ("--profile", "x:1x3x16x16:1x3x16x16:8x3x16x16")]):
        r = build(model, tmp_path / f"v{n}", cache, *extra)
        assert r.code == 0, r.err
        assert "building sm86" in r.err and "reused" not in r.err, (extra, r.err)
        now = {e["key"] for e in entries(cache)}
        assert len(now) == len(keys_seen) + 1, extra
        keys_seen = now
    # a different bundle name, given through BUNDLE_CACHE instead of --cache: a hit
    r = build(model, tmp_path / "renamed", None, name="renamed", env={"BUNDLE_CACHE": str(cache)})
    assert r.code == 0 and "reused sm86" in r.err, r.err
    other = make_conv_model(tmp_path / "other.onnx", hw=32)  # another graph: a miss
    r = run_bundle("build", other, "--name", "m", "--version", "1.0.0", "--target", "sm_86", "--no-golden",
                   "--out", tmp_path / "o", "--backend", "tensorrt-rtx", "--cache", cache)
    assert r.code == 0 and "building sm86" in r.err, r.err


def test_ls_and_prune_remove_the_least_recently_used(tmp_path):
    model = make_conv_model(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    assert build(model, tmp_path / "a", cache, targets=("sm_86", "sm_89", "rtx5090")).code == 0
    assert build(model, tmp_path / "b", cache, targets=("sm_89",)).code == 0  # sm89 is now the most recently used
    listed = entries(cache)
    assert [e["target"] for e in listed][-1] == "sm89" and len(listed) == 3
    r = run_bundle("cache", "prune", "--cache", cache, "--max-size", str(listed[-1]["size"] + 100), "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert sorted(e["target"] for e in doc["removed"]) == ["rtx5090", "sm86"] and doc["kept"] == 1
    assert [e["target"] for e in entries(cache)] == ["sm89"]
    r = run_bundle("cache", "ls", "--cache", cache)
    assert r.code == 0 and "1 entries" in r.out and "sm89" in r.out
    r = run_bundle("cache", "prune", "--cache", cache, "--max-size", "0")
    assert r.code == 0 and "kept 0 entries" in r.out
    assert entries(cache) == []
    r = run_bundle("cache", "prune", "--cache", cache, "--max-size", "lots")
    assert r.code == 3 and "error [input]: size 'lots'" in r.err
    r = run_bundle("cache", "ls", "--cache", tmp_path / "nosuch")
    assert r.code == 3 and "no such build cache directory" in r.err
    r = run_bundle("cache", "ls", env={"BUNDLE_CACHE": ""})
    assert r.code == 2 and "give --cache DIR or set BUNDLE_CACHE" in r.err


def test_two_builds_of_the_same_engines_at_once_share_one_entry_each(tmp_path):
    model = make_conv_model(tmp_path / "m.onnx")
    cache = tmp_path / "cache"
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-m", "bundler.cli", "build", str(model), "--name", "m", "--version",
                               "1.0.0", "--target", "sm_86", "--target", "rtx5090", "--shape", SHAPE, "--no-golden",
                               "--out", str(tmp_path / f"out{i}"), "--backend", "tensorrt-rtx", "--jobs", "1",
                               "--cache", str(cache)], env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
             for i in range(2)]
    for p in procs:
        _, err = p.communicate(timeout=300)
        assert p.returncode == 0, err
    listed = entries(cache)
    assert sorted(e["target"] for e in listed) == ["rtx5090", "sm86"] and all(e["ok"] for e in listed)
    assert not [p for p in cache.iterdir() if p.name.startswith(".")]
    r = build(model, tmp_path / "after", cache, targets=("sm_86", "rtx5090"))
    assert r.code == 0 and r.err.count("reused ") == 2, r.err


def test_manifests_without_the_cache_field_still_verify_and_the_field_is_typed(tiny_bundle, keys, tmp_path):
    """Bundles sealed before the cache existed have no `cache` field: it reads as null. A wrong
    type is refused like any other schema error."""
    from runtime_stub.verify import SchemaError, parse_manifest

    x = tmp_path / "x"
    assert run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", x).code == 0
    doc = json.loads((x / "manifest.json").read_text())
    assert all("cache" in e and e["cache"] is None for e in doc["engines"])  # written, as null, without a cache
    for e in doc["engines"]:
        del e["cache"]
    assert all(e.cache is None for e in parse_manifest(json.dumps(doc).encode(), "m").engines)
    doc["engines"][0]["cache"] = {"key": "ab" * 32, "reused": "yes"}
    with pytest.raises(SchemaError, match=r"engines\[0\]\.cache\.reused: expected true or false"):
        parse_manifest(json.dumps(doc).encode(), "m")
    doc["engines"][0]["cache"] = {"key": "ab" * 32, "reused": True}
    assert parse_manifest(json.dumps(doc).encode(), "m").engines[0].cache.reused is True
