"""`bundle verifier` and `bundle run`: the runtime on hosts where trt-bundler is installed."""

from __future__ import annotations

import hashlib
import json
import stat

from conftest import REPO, SAMPLE, run_bundle

SHAPE = "input:1x3x64x64:4x3x64x64:16x3x64x64"


def test_verifier_digest_and_standalone_copy(tmp_path, tiny_bundle, keys):
    r = run_bundle("verifier", "--print-digest")
    assert r.code == 0
    digest = r.out.strip()
    assert digest == hashlib.sha256((REPO / "runtime_stub" / "verify.py").read_bytes()).hexdigest()
    out = tmp_path / "verify.py"
    r = run_bundle("verifier", "--out", out)
    assert r.code == 0 and r.out.strip() == digest and digest in r.err
    assert hashlib.sha256(out.read_bytes()).hexdigest() == digest
    assert stat.S_IMODE(out.stat().st_mode) & 0o111
    r = run_bundle("verifier", "--out", out)
    assert r.code == 6 and "already exists" in r.err
    # The copy shipped inside every bundle is the same file.
    dest = tmp_path / "x"
    assert run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest).code == 0
    assert hashlib.sha256((dest / "runtime" / "verify.py").read_bytes()).hexdigest() == digest


def test_bundle_run_wraps_the_loader(tmp_path, keys):
    r = run_bundle("create", SAMPLE, "--name", "tinynet", "--version", "1.0.0", "--target", "cpu", "--shape", SHAPE,
                   "--key", keys["release"]["key"], "--out", tmp_path)
    assert r.code == 0, r.err
    bundle = tmp_path / "tinynet-1.0.0.bundle.tar"
    tmpdir = tmp_path / "tmpdir"
    tmpdir.mkdir()
    r = run_bundle("run", bundle, "--trust", keys["release"]["pub"], "--", "selftest", "--json", env={"TMPDIR": str(tmpdir)})
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["pass"] is True and doc["target"] == "cpu"
    # The temporary extraction and verifier copy are gone (onnxruntime leaves a '.ses' file of its own).
    assert [p.name for p in tmpdir.iterdir() if p.name.startswith("bundle-")] == []
    # An untrusted key stops it before the loader runs, with verify's exit code.
    r = run_bundle("run", bundle, "--trust", keys["other"]["pub"], "--", "selftest")
    assert r.code == 11 and "no signature from a trusted key" in r.err
    # A directory works too; the loader then verifies with the verifier installed with bundler.
    dest = tmp_path / "x"
    assert run_bundle("extract", bundle, "--trust", keys["release"]["pub"], "--dest", dest).code == 0
    (dest / "runtime" / "verify.py").write_text("import sys; sys.exit(0)  # a forged verifier that says yes\n")
    r = run_bundle("run", dest, "--trust", keys["release"]["pub"], "--", "info", "--json")
    assert r.code == 12, (r.code, r.out, r.err)  # the forged runtime/verify.py is itself a changed file
    r = run_bundle("run", bundle, "--trust", keys["release"]["pub"])
    assert r.code == 3 and "give the loader command" in r.err
