"""Clean mistakes (issue 10): every wrong request gets one clear line and leaves nothing behind.

Everything runs through the real CLI (or the real loader) in a subprocess; builds are real
TensorRT-RTX builds. Each test asserts what a user would see: the exit code, the one line on
stderr, and the file system afterwards.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest

from conftest import SAMPLE, make_unbuildable_model, run_bundle

SHAPE = "input:1x3x64x64:4x3x64x64:16x3x64x64"


def one_error_line(r, cls: str) -> str:  # noqa: ANN001
    """The one line on stderr of a failure, checked to be exactly that."""
    lines = r.err.splitlines()
    assert len(lines) == 1, r.err
    assert lines[0].startswith(f"error [{cls}]: "), r.err
    return lines[0]


# -- 1. usage errors are one line --------------------------------------------------------------------

@pytest.mark.parametrize("args, needle", [
    (("verify", "--bogus"), "No such option: --bogus; see 'bundle verify --help'"),
    (("verify", "b.tar", "--tust", "k.pub"), "--trust"),  # click's suggestion survives
    (("verify", "b.tar", "--json", "--bogus"), "No such option: --bogus"),
    (("create",), "Missing argument 'model'"),
    (("extract", "b.tar"), "Missing option '--dest'"),
    (("build", "m.onnx", "--jobs", "0"), "Invalid value for '--jobs'"),
    (("keys", "id"), "Missing argument 'pub'; see 'bundle keys id --help'"),
])
def test_usage_errors_are_one_line(args, needle):
    r = run_bundle(*args)
    assert r.code == 2, (r.code, r.err)
    line = one_error_line(r, "usage")
    assert needle in line
    assert "╭" not in r.err and "Usage:" not in r.err
    assert r.out == ""  # with --json too: a usage error prints no document


def test_no_arguments_still_prints_help():
    r = run_bundle()
    assert r.code == 2
    assert "verify" in r.out and "create" in r.out
    assert "error" not in r.err


# -- 2. a public key given as --key ------------------------------------------------------------------

def test_public_key_as_signing_key_is_named_before_permissions(tmp_path, keys):
    pub = keys["release"]["pub"]
    assert os.stat(pub).st_mode & 0o077  # 0644, as keys generate writes it: the old message said chmod 600
    out = tmp_path / "new" / "dist"
    r = run_bundle("create", SAMPLE, "--name", "s", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE,
                   "--key", pub, "--out", out, "--backend", "tensorrt-rtx")
    assert r.code == 4, r.err
    line = one_error_line(r, "key")
    assert "is a public key" in line and "--key takes the private signing key" in line
    assert "chmod" not in line
    assert not (tmp_path / "new").exists()
    r = run_bundle("seal", tmp_path / "nobuild", "--key", pub, "--out", out)
    assert r.code == 4 and "is a public key" in one_error_line(r, "key")
    private_pub = tmp_path / "p.pub"  # a 0600 public key is still a public key
    shutil.copyfile(pub, private_pub)
    os.chmod(private_pub, 0o600)
    r = run_bundle("seal", tmp_path / "nobuild", "--key", private_pub, "--out", out)
    assert r.code == 4 and "is a public key" in one_error_line(r, "key")


# -- 3. a failed create or build leaves nothing new ----------------------------------------------------

BEFORE_BUILD = [
    (("--target", "rtx4900", "--shape", SHAPE), 3, "did you mean rtx4090"),  # 6. the nearest names
    (("--target", "sm_86", "--shape", "input:1x3x64"), 3, "rank 3"),
    (("--target", "sm_90", "--shape", SHAPE), 5, "cannot be built by TensorRT-RTX"),
]


@pytest.mark.parametrize("command", ["create", "build"])
@pytest.mark.parametrize("extra, code, needle", BEFORE_BUILD)
def test_failure_before_any_build_creates_no_out(tmp_path, keys, command, extra, code, needle):
    out = tmp_path / "new" / "dist"
    key = ("--key", keys["release"]["key"]) if command == "create" else ()
    r = run_bundle(command, SAMPLE, "--name", "s", "--version", "1.0.0", *key, "--out", out,
                   "--backend", "tensorrt-rtx", *extra)
    assert r.code == code, (r.code, r.err)
    assert needle in one_error_line(r, {3: "input", 5: "build"}[code])
    assert not (tmp_path / "new").exists(), list((tmp_path / "new").rglob("*"))


@pytest.mark.parametrize("command", ["create", "build"])
def test_missing_model_creates_no_out(tmp_path, keys, command):
    key = ("--key", keys["release"]["key"]) if command == "create" else ()
    r = run_bundle(command, tmp_path / "missing.onnx", "--name", "s", "--version", "1.0.0", *key,
                   "--out", tmp_path / "new" / "dist", "--target", "sm_86")
    assert r.code == 3 and "no such model file" in one_error_line(r, "input")
    assert not (tmp_path / "new").exists()


def test_failed_build_leaves_only_the_logs_it_names(tmp_path, keys):
    model = make_unbuildable_model(tmp_path / "topk.onnx")
    out = tmp_path / "new" / "dist"
    r = run_bundle("create", model, "--name", "s", "--version", "1.0.0", "--key", keys["release"]["key"],
                   "--out", out, "--target", "sm_86", "--backend", "tensorrt-rtx")
    assert r.code == 5, r.err
    line = r.err.splitlines()[-1]
    assert line.startswith("error [build]: ") and f"builder logs kept in {out / 's-1.0.0.failed-logs'}" in line
    assert [p.name for p in out.iterdir()] == ["s-1.0.0.failed-logs"]  # no work dir, no bundle
    assert [p.suffix for p in (out / "s-1.0.0.failed-logs").iterdir()] == [".log"]

    b = tmp_path / "new2" / "b"
    r = run_bundle("build", model, "--name", "s", "--version", "1.0.0", "--out", b, "--target", "sm_86",
                   "--backend", "tensorrt-rtx")
    assert r.code == 5, r.err
    assert f"builder logs kept in {b}.failed-logs" in r.err.splitlines()[-1]
    assert [p.name for p in b.parent.iterdir()] == ["b.failed-logs"]


def test_failure_after_the_build_removes_the_out_it_made(tmp_path, keys):
    odd = tmp_path / "we\\ird.onnx"  # builds, but verify would refuse the member name: refused at seal
    odd.write_bytes(SAMPLE.read_bytes())
    r = run_bundle("create", odd, "--name", "s", "--version", "1.0.0", "--key", keys["release"]["key"],
                   "--out", tmp_path / "new" / "dist", "--target", "sm_86", "--shape", SHAPE, "--backend", "tensorrt-rtx")
    assert r.code == 3 and "backslash" in r.err.splitlines()[-1]
    assert not (tmp_path / "new").exists()


# -- 4. --out must be a directory ------------------------------------------------------------------------

def test_out_naming_a_tar_or_a_file_is_refused(tmp_path, keys):
    key = keys["release"]["key"]
    flags = ("--name", "s", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE, "--backend", "tensorrt-rtx")
    tar = tmp_path / "s.bundle.tar"
    r = run_bundle("create", SAMPLE, *flags, "--key", key, "--out", tar)
    assert r.code == 3 and "not a file name" in one_error_line(r, "input")
    r = run_bundle("build", SAMPLE, *flags, "--out", tmp_path / "b.tar")
    assert r.code == 3 and "names a tar file" in one_error_line(r, "input")
    r = run_bundle("seal", tmp_path / "b", "--key", key, "--out", tar)
    assert r.code == 3 and "not a file name" in one_error_line(r, "input")
    assert not tar.exists() and not (tmp_path / "b.tar").exists()

    existing = tmp_path / "dist"
    existing.write_text("keep me")
    r = run_bundle("create", SAMPLE, *flags, "--key", key, "--out", existing)
    assert r.code == 6 and "exists and is not a directory" in one_error_line(r, "output")
    r = run_bundle("seal", tmp_path / "b", "--key", key, "--out", existing)
    assert r.code == 6 and "exists and is not a directory" in one_error_line(r, "output")
    r = run_bundle("build", SAMPLE, *flags, "--out", existing)
    assert r.code == 6 and "already exists" in one_error_line(r, "output")
    assert existing.read_text() == "keep me"


# -- 5. inspect an extracted directory ------------------------------------------------------------------

@pytest.fixture()
def extracted(tmp_path, tiny_bundle, keys) -> Path:  # noqa: ANN001
    dest = tmp_path / "tiny"
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    return dest


def test_inspect_extracted_directory(extracted, keys):
    r = run_bundle("inspect", extracted)
    assert r.code == 0, r.err
    assert r.out.startswith("NOT VERIFIED") and "tiny 1.0.0" in r.out and "tensorrt-rtx" in r.out
    doc = run_bundle("inspect", extracted, "--json").json()
    assert doc["ok"] is True and doc["verified"] is False and doc["sha256"] is None
    assert doc["manifest"]["name"] == "tiny" and doc["signed_subject"] == "tiny-1.0.0"
    assert {m["path"] for m in doc["members"]} >= {"manifest.json", "SHA256SUMS", "engines"}
    assert all(h is not None for h in doc["engine_headers"].values()) and len(doc["engine_headers"]) == 2

    r = run_bundle("inspect", extracted, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["verified"] is True and doc["verification"]["ok"] is True
    # --trust: verify's verdict first, with verify's code
    r = run_bundle("inspect", extracted, "--trust", keys["other"]["pub"])
    assert r.code == 11 == run_bundle("verify", extracted, "--trust", keys["other"]["pub"]).code
    assert r.err.splitlines()[-1].startswith("error [signature]: ")


def test_inspect_directory_tampered_and_hostile(extracted, keys, tmp_path):
    engine = next((extracted / "engines").glob("*.engine"))
    data = bytearray(engine.read_bytes())
    data[-1] ^= 0xFF
    engine.write_bytes(bytes(data))
    r = run_bundle("inspect", extracted, "--trust", keys["release"]["pub"])
    assert r.code == 12 and r.err.splitlines()[-1].startswith("error [digest]: ")
    assert run_bundle("inspect", extracted).code == 0  # unverified, the claims are still shown

    # A hostile manifest is read as in a tar: strict JSON, schema-typed, strings escaped.
    manifest = extracted / "manifest.json"
    doc = json.loads(manifest.read_text())
    doc["name"] = "ti\x1b[2J\x1b]0;pwned\x07ny"
    manifest.write_text(json.dumps(doc))
    r = run_bundle("inspect", extracted)
    assert r.code == 0, r.err
    assert "\x1b" not in r.out and "\x07" not in r.out
    manifest.write_text('{"name": "a", "name": "b"}')
    r = run_bundle("inspect", extracted)
    assert r.code == 0 and "duplicate key" in r.out and "no manifest fields are shown" in r.out
    manifest.write_bytes(b" " * ((1 << 20) + 1))
    r = run_bundle("inspect", extracted, "--json")
    assert r.code == 0 and r.json()["manifest"] is None
    assert any("over the 1048576" in n for n in r.json()["notes"])

    (extracted / "model" / "link.onnx").symlink_to("/etc/passwd")
    r = run_bundle("inspect", extracted)
    assert r.code == 14 and "symlink" in one_error_line(r, "unsafe")
    r = run_bundle("inspect", tmp_path / "nothing")
    assert r.code == 3 and "no such bundle file or directory" in one_error_line(r, "input")


# -- 7. extract --dest creates missing parents, and removes them when it fails ----------------------------

def test_extract_creates_missing_parents_and_removes_them_on_failure(tmp_path, tiny_bundle, bundle_copy, keys):
    dest = tmp_path / "a" / "b" / "c"
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    assert (dest / "manifest.json").is_file()

    r = run_bundle("extract", tiny_bundle, "--trust", keys["other"]["pub"], "--dest", tmp_path / "u" / "v" / "w")
    assert r.code == 11
    assert not (tmp_path / "u").exists()  # the parents it made went with the failed extraction

    data = bytearray(bundle_copy.read_bytes())
    data[len(data) // 2] ^= 0xFF  # inside an engine: a digest failure half-way through
    bundle_copy.write_bytes(bytes(data))
    r = run_bundle("extract", bundle_copy, "--trust", keys["release"]["pub"], "--dest", tmp_path / "a" / "x" / "y")
    assert r.code == 12, r.err
    assert sorted(p.name for p in (tmp_path / "a").iterdir()) == ["b"]  # a existed: it stays, x went

    blocker = tmp_path / "file"
    blocker.write_text("x")
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", blocker / "d")
    assert r.code == 6 and "cannot create the directory" in one_error_line(r, "output")


# -- 8. the loader's selftest line shows the deciding figure --------------------------------------------

def test_selftest_line_shows_the_deciding_figure(tmp_path, keys):
    r = run_bundle("create", SAMPLE, "--name", "tinynet", "--version", "1.0.0", "--target", "cpu", "--shape", SHAPE,
                   "--key", keys["release"]["key"], "--out", tmp_path)
    assert r.code == 0, r.err
    dest = tmp_path / "x"
    assert run_bundle("extract", tmp_path / "tinynet-1.0.0.bundle.tar", "--trust", keys["release"]["pub"],
                      "--dest", dest).code == 0

    def selftest(root: Path, *args: str) -> subprocess.CompletedProcess:
        p = subprocess.run([sys.executable, "-I", str(root / "runtime" / "loader.py"), "selftest", *args],
                           capture_output=True, text=True, cwd=tmp_path, timeout=300)
        assert "Traceback" not in p.stderr, p.stderr
        return p

    p = selftest(dest, "--trust", str(keys["release"]["pub"]))
    assert p.returncode == 0, p.stderr
    first = p.stdout.splitlines()[0]
    assert first.startswith("PASS") and "every element within tolerance" in first and "<= atol 0.001 + rtol" in first

    # Outputs off the reference by more than the tolerance in 2 elements (--no-verify: the
    # changed reference would otherwise fail verification first).
    bad = tmp_path / "bad"
    shutil.copytree(dest, bad)
    ref = dict(np.load(bad / "golden" / "outputs.npz"))
    probs = ref["probs"].copy()
    probs.flat[3] += 0.05
    probs.flat[7] -= 0.01
    np.savez(bad / "golden" / "outputs.npz", probs=probs)
    p = selftest(bad, "--no-verify")
    assert p.returncode == 21, p.stderr
    first = p.stdout.splitlines()[0]
    assert first.startswith("FAIL") and f"2 of {probs.size} elements of probs out of tolerance" in first
    assert "worst probs[0,3]: |out-ref| 0.05 > atol 0.001 + rtol 0.001*|ref| = " in first
    doc = json.loads(selftest(bad, "--no-verify", "--json").stdout)
    w = doc["worst"]
    assert doc["pass"] is False and w["output"] == "probs" and w["index"] == [0, 3]
    assert w["out_of_tolerance"] == 2 and w["elements"] == probs.size and w["err"] > w["allowed"]
    assert doc["outputs"]["probs"]["out_of_tolerance"] == 2
