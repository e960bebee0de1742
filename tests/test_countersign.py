"""`bundle sign` (countersignatures) and signed expiry (`--expires`, `--allow-expired`).

Everything runs as a user runs it: the CLI in a subprocess, the stand-alone verifier under the
oldest supported Python (3.8) with `-I`, model-signing's own CLI on an extracted bundle.
"""

from __future__ import annotations

import glob
import json
import os
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import REPO, run_bundle, tar_members

VERIFIER = REPO / "runtime_stub" / "verify.py"
ROOT = "tiny-1.0.0"


def _python38() -> Optional[str]:
    for c in sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8.*/bin/python3.8"))):
        if os.access(c, os.X_OK):
            return c
    return None


PY38 = _python38() or sys.executable  # the oldest Python verify.py supports, where installed


def stdlib_verify(target: Path, *trust: Path, extra: tuple = (), script: Path = VERIFIER) -> subprocess.CompletedProcess:
    args = [PY38, "-I", str(script), str(target), "--json", *extra]
    for t in trust:
        args += ["--trust", str(t)]
    p = subprocess.run(args, capture_output=True, text=True, timeout=300, env={"PATH": os.environ.get("PATH", "")})
    assert "Traceback" not in p.stderr, p.stderr
    return p


def sign(bundle: Path, key: Path, *trust: Path, out: Optional[Path] = None, in_place: bool = False,
         expires: Optional[str] = None):  # noqa: ANN201
    args: List[object] = ["sign", bundle, "--key", key]
    for t in trust:
        args += ["--trust", t]
    if out is not None:
        args += ["--out", out]
    if in_place:
        args.append("--in-place")
    if expires is not None:
        args += ["--expires", expires]
    return run_bundle(*args)


def payload_region(path: Path) -> bytes:
    """The raw bytes from manifest.json's header to the end of the last member: everything but
    the signature block and the end-of-archive padding."""
    data = path.read_bytes()
    with tarfile.open(path) as tf:
        members = tf.getmembers()
    manifest = next(m for m in members if m.name == f"{ROOT}/manifest.json")
    last = members[-1]
    end = last.offset_data + last.size + (-last.size % 512)
    return data[manifest.offset:end]


@pytest.fixture()
def countersigned(tmp_path, tiny_bundle, keys) -> Path:  # noqa: ANN001
    """The session bundle (signed by 'release'), countersigned by 'other' into a new directory."""
    r = sign(tiny_bundle, keys["other"]["key"], keys["release"]["pub"], out=tmp_path / "signed")
    assert r.code == 0, r.err
    path = tmp_path / "signed" / tiny_bundle.name
    assert path.is_file()
    return path


def test_countersigned_bundle_verifies_with_either_key(countersigned, tiny_bundle, keys, tmp_path):
    names = tar_members(countersigned)
    sig_names = sorted(f"{ROOT}/signatures/{keys[k]['id']}.sig" for k in ("release", "other"))
    assert names[:3] == sig_names + [f"{ROOT}/manifest.json"]  # signatures first, sorted, then the manifest
    assert names[2:] == tar_members(tiny_bundle)[1:]
    # Not one byte of the payload changed (headers included); only the signature block grew.
    assert payload_region(countersigned) == payload_region(tiny_bundle)
    assert countersigned.stat().st_size % 10240 == 0

    orig = run_bundle("verify", tiny_bundle, "--trust", keys["release"]["pub"], "--json").json()
    for who in ("release", "other"):
        lib = run_bundle("verify", countersigned, "--trust", keys[who]["pub"], "--json")
        assert lib.code == 0, lib.err
        ours = stdlib_verify(countersigned, keys[who]["pub"])
        assert ours.returncode == 0, ours.stderr
        for rep in (lib.json(), json.loads(ours.stdout)):
            # The content digest, what operators record, is the same; the tar's digest is not.
            assert rep["content_digest"] == orig["content_digest"] and len(rep["content_digest"]) == 64
            assert rep["sha256"] != orig["sha256"]
            valid = [s["key_id"] for s in rep["signers"] if s["valid"]]
            assert valid == [keys[who]["id"]]
            assert rep["expired_accepted"] is False
    human = run_bundle("verify", countersigned, "--trust", keys["other"]["pub"])
    assert f"content: {orig['content_digest']}" in human.out
    p = subprocess.run([PY38, "-I", str(VERIFIER), str(countersigned), "--trust", str(keys["other"]["pub"])],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0 and f"content: {orig['content_digest']}" in p.stdout, p.stderr
    # Both keys trusted: both signatures are checked and valid.
    rep = run_bundle("verify", countersigned, "--trust", keys["release"]["pub"], "--trust", keys["other"]["pub"], "--json").json()
    assert [s["valid"] for s in rep["signers"]] == [True, True]

    # After extraction, the bundle's own runtime/verify.py (under Python 3.8) accepts the directory.
    dest = tmp_path / "x"
    assert run_bundle("extract", countersigned, "--trust", keys["other"]["pub"], "--dest", dest).code == 0
    p = stdlib_verify(dest, keys["other"]["pub"], script=dest / "runtime" / "verify.py")
    assert p.returncode == 0, p.stderr
    assert json.loads(p.stdout)["content_digest"] == orig["content_digest"]


def test_model_signing_accepts_each_signature_file(tiny_bundle, keys, tmp_path):
    pytest.importorskip("model_signing")
    # Countersigned with an expiry: predicate.expires must not upset model-signing either.
    r = sign(tiny_bundle, keys["other"]["key"], keys["release"]["pub"], out=tmp_path / "signed", expires="30d")
    assert r.code == 0, r.err
    dest = tmp_path / ROOT
    r = run_bundle("extract", tmp_path / "signed" / tiny_bundle.name, "--trust", keys["other"]["pub"], "--dest", dest,
                   "--json")
    assert r.code == 0, r.err
    assert [s["expires"] for s in r.json()["signers"] if s["valid"]][0].endswith("Z")
    for who, other in (("release", "other"), ("other", "release")):
        sig = dest / "signatures" / f"{keys[who]['id']}.sig"
        p = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(dest), "--signature", str(sig),
                            "--public_key", str(keys[who]["pub"])], capture_output=True, text=True, timeout=300)
        assert p.returncode == 0 and "Verification succeeded" in p.stdout, p.stdout + p.stderr
        p = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(dest), "--signature", str(sig),
                            "--public_key", str(keys[other]["pub"])], capture_output=True, text=True, timeout=300)
        assert p.returncode != 0  # really checking: the other key does not verify this file


def test_in_place_replaces_only_on_success(bundle_copy, keys):
    before = bundle_copy.read_bytes()
    leftovers = lambda: [p.name for p in bundle_copy.parent.iterdir() if p.name != bundle_copy.name]  # noqa: E731
    # Refused (the bundle does not verify against the key given): the original stays, byte for byte.
    r = sign(bundle_copy, keys["other"]["key"], keys["other"]["pub"], in_place=True)
    assert r.code == 11 and "error [signature]: cannot sign a bundle that fails verification" in r.err, r.err
    assert bundle_copy.read_bytes() == before and leftovers() == []
    # Accepted: replaced by rename, nothing else left in the directory.
    r = sign(bundle_copy, keys["other"]["key"], keys["release"]["pub"], in_place=True)
    assert r.code == 0, r.err
    assert leftovers() == []
    assert bundle_copy.read_bytes() != before
    assert sum(1 for n in tar_members(bundle_copy) if "/signatures/" in n) == 2
    assert run_bundle("verify", bundle_copy, "--trust", keys["other"]["pub"]).code == 0
    assert stdlib_verify(bundle_copy, keys["release"]["pub"]).returncode == 0


def test_out_never_overwrites(bundle_copy, keys, tmp_path):
    r = sign(bundle_copy, keys["other"]["key"], keys["release"]["pub"], out=bundle_copy.parent)
    assert r.code == 6 and "already exists" in r.err and "--in-place" in r.err, r.err
    r = run_bundle("sign", bundle_copy, "--key", keys["other"]["key"], "--trust", keys["release"]["pub"])
    assert r.code == 2 and "exactly one of --out DIR and --in-place" in r.err, r.err
    r = sign(bundle_copy, keys["other"]["key"], keys["release"]["pub"], out=tmp_path / "o", in_place=True)
    assert r.code == 2, r.err
    assert not (tmp_path / "o").exists()


def test_sign_refuses_what_fails_verification_and_a_second_signature(bundle_copy, keys, tmp_path):
    out = tmp_path / "out"
    # A changed engine byte: refused with verify's own class and code, nothing written.
    tampered = tmp_path / "t" / bundle_copy.name
    tampered.parent.mkdir()
    data = bytearray(bundle_copy.read_bytes())
    with tarfile.open(bundle_copy) as tf:
        engine = next(m for m in tf.getmembers() if m.name.endswith(".engine"))
    data[engine.offset_data + 100] ^= 1
    tampered.write_bytes(bytes(data))
    r = sign(tampered, keys["other"]["key"], keys["release"]["pub"], out=out)
    assert r.code == 12 and "error [digest]" in r.err, r.err
    assert not out.exists()
    # The key that sealed it signs it once only.
    r = sign(bundle_copy, keys["release"]["key"], keys["release"]["pub"], out=out)
    assert r.code == 3 and "already signed by this key" in r.err, r.err
    assert not out.exists()
    # ...and so does a countersigner.
    r = sign(bundle_copy, keys["other"]["key"], keys["release"]["pub"], in_place=True)
    assert r.code == 0, r.err
    r = sign(bundle_copy, keys["other"]["key"], keys["other"]["pub"], out=out)
    assert r.code == 3 and "already signed by this key" in r.err, r.err
    assert not out.exists()


def test_expired_countersignature_refused_then_accepted(tiny_bundle, keys, tmp_path):
    r = sign(tiny_bundle, keys["other"]["key"], keys["release"]["pub"], out=tmp_path, expires="1s")
    assert r.code == 0, r.err
    path = tmp_path / tiny_bundle.name
    time.sleep(2.1)
    both = ("--trust", keys["release"]["pub"], "--trust", keys["other"]["pub"])
    for trust in (both, ("--trust", keys["other"]["pub"])):
        r = run_bundle("verify", path, *trust, "--json")
        assert r.code == 16 and r.json()["error"]["class"] == "binding", r.err
        assert "bundle expired on " in r.err and f"(signature {keys['other']['id'][:16]}...)" in r.err
        assert "pass --allow-expired to accept it" in r.err
        r = run_bundle("verify", path, *trust, "--json", "--allow-expired")
        assert r.code == 0 and r.json()["expired_accepted"] is True, r.err
    p = stdlib_verify(path, keys["other"]["pub"])
    assert p.returncode == 16 and "error [binding]: bundle expired on" in p.stderr
    p = stdlib_verify(path, keys["other"]["pub"], extra=("--allow-expired",))
    assert p.returncode == 0 and json.loads(p.stdout)["expired_accepted"] is True, p.stderr
    # Only signatures that count matter: with only the sealer's (unexpiring) key trusted, the
    # expired countersignature is not checked, and the bundle verifies.
    r = run_bundle("verify", path, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 0 and r.json()["expired_accepted"] is False, r.err
    # extract, inspect --trust and run take the same flag.
    dest = tmp_path / "x"
    assert run_bundle("extract", path, "--trust", keys["other"]["pub"], "--dest", dest).code == 16
    assert not dest.exists()
    assert run_bundle("extract", path, "--trust", keys["other"]["pub"], "--dest", dest, "--allow-expired").code == 0
    assert run_bundle("inspect", path, "--trust", keys["other"]["pub"]).code == 16
    assert run_bundle("inspect", path, "--trust", keys["other"]["pub"], "--allow-expired").code == 0
    r = run_bundle("run", path, "--trust", keys["other"]["pub"], "--", "info", "--json")
    assert r.code == 16, r.err
    for target in (path, dest):  # a tar (library, then the loader) and a directory (the loader only)
        r = run_bundle("run", target, "--trust", keys["other"]["pub"], "--allow-expired", "--", "info", "--json")
        assert r.code == 0, r.err
    # The bundle's own loader passes --allow-expired on to the verifier it runs.
    cmd = [sys.executable, "-I", str(dest / "runtime" / "loader.py"), "info", "--json", "--trust", str(keys["other"]["pub"])]
    p = subprocess.run(cmd, capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 16 and "expired" in p.stderr, p.stderr
    p = subprocess.run(cmd + ["--allow-expired"], capture_output=True, text=True, timeout=300, cwd=tmp_path)
    assert p.returncode == 0, p.stderr


def test_seal_expires(tiny_model, keys, tmp_path):
    build = tmp_path / "build"
    r = run_bundle("build", tiny_model, "--name", "cpuonly", "--version", "1.0.0", "--target", "cpu",
                   "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--out", build)
    assert r.code == 0, r.err
    # A past or malformed expiry is refused before anything is written.
    for bad, why in (("2020-01-01", "is not in the future"), ("2027-02-30", "give a duration"), ("90", "give a duration")):
        r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", tmp_path / "no", "--expires", bad)
        assert r.code == 3 and why in r.err, (bad, r.err)
        assert not (tmp_path / "no").exists()
    r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", tmp_path / "d", "--expires", "1s")
    assert r.code == 0 and "expires: " in r.out, r.err
    path = tmp_path / "d" / "cpuonly-1.0.0.bundle.tar"
    time.sleep(2.1)
    r = run_bundle("verify", path, "--trust", keys["release"]["pub"])
    assert r.code == 16 and "bundle expired on" in r.err, r.err
    r = run_bundle("verify", path, "--trust", keys["release"]["pub"], "--allow-expired")
    assert r.code == 0 and "accepted because of --allow-expired" in r.out, r.err
    # the override is written to the host state's log, like --allow-downgrade
    state = tmp_path / "state.json"
    r = run_bundle("extract", path, "--trust", keys["release"]["pub"], "--allow-expired", "--state", state,
                   "--dest", tmp_path / "x")
    assert r.code == 0, r.err
    (entry,) = json.loads(state.read_text())["log"]
    assert entry["event"] == "expired-allowed" and entry["name"] == "cpuonly" and entry["version"] == "1.0.0"
    digest = run_bundle("verify", path, "--trust", keys["release"]["pub"], "--allow-expired", "--json").json()["content_digest"]
    assert len(entry["expired"]) == 1 and entry["content_digest"] == digest
    # sign verifies first, so an expired bundle is not countersigned (re-seal it instead).
    r = sign(path, keys["other"]["key"], keys["release"]["pub"], out=tmp_path / "c")
    assert r.code == 16, r.err
    # A date far enough ahead verifies, and is shown per signer.
    r = run_bundle("seal", build, "--key", keys["release"]["key"], "--out", tmp_path / "e", "--expires", "2099-01-31")
    assert r.code == 0, r.err
    r = run_bundle("verify", tmp_path / "e" / "cpuonly-1.0.0.bundle.tar", "--trust", keys["release"]["pub"], "--json")
    assert r.code == 0 and r.json()["signers"][0]["expires"] == "2099-01-31T00:00:00Z", r.err


def test_expires_has_one_strict_form():
    """parse_statement accepts predicate.expires only as YYYY-MM-DDTHH:MM:SSZ, a real time."""
    sys.path.insert(0, str(REPO))
    from runtime_stub import verify as v
    from bundler.signing import make_statement

    resources = {"manifest.json": "0" * 64}
    good = make_statement(ROOT, resources, "2027-01-31T12:00:00Z")
    assert v.parse_statement(good, "x").expires == "2027-01-31T12:00:00Z"
    assert v.parse_statement(make_statement(ROOT, resources), "x").expires is None
    for bad in ("2027-01-31", "2027-01-31T12:00:00+00:00", "2027-01-31T12:00:00.5Z", "2027-02-30T00:00:00Z",
                "2027-01-31t12:00:00z", "２０２７-01-31T12:00:00Z", None, 1800000000):
        doc = json.loads(good)
        doc["predicate"]["expires"] = bad
        with pytest.raises(v.SignatureError, match="malformed"):
            v.parse_statement(json.dumps(doc).encode(), "x")
