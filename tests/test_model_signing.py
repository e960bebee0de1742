"""Interop with the independent OpenSSF verifier/signer (PyPI `model-signing`), both ways."""

from __future__ import annotations

import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import run_bundle

pytest.importorskip("model_signing")


def model_signing(*args: object) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "model_signing", *map(str, args)], capture_output=True, text=True, timeout=300)


@pytest.fixture()
def extracted(tmp_path, tiny_bundle, keys) -> Path:  # noqa: ANN001
    dest = tmp_path / "tiny-1.0.0"
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    return dest


def test_model_signing_accepts_our_bundle(extracted, keys):
    sig = extracted / "signatures" / f"{keys['release']['id']}.sig"
    p = model_signing("verify", "key", extracted, "--signature", sig, "--public_key", keys["release"]["pub"])
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Verification succeeded" in p.stdout
    # ...and it is really checking: a changed engine byte fails it, as does the wrong key.
    p = model_signing("verify", "key", extracted, "--signature", sig, "--public_key", keys["other"]["pub"])
    assert p.returncode != 0
    engine = next((extracted / "engines").glob("*.engine"))
    data = bytearray(engine.read_bytes())
    data[100] ^= 1
    engine.write_bytes(bytes(data))
    p = model_signing("verify", "key", extracted, "--signature", sig, "--public_key", keys["release"]["pub"])
    assert p.returncode != 0


def _repack(src_dir: Path, root: str, out: Path) -> None:
    """Tar an extracted bundle in the format's member order (signatures, manifest, sums, rest)."""
    files = sorted(p.relative_to(src_dir).as_posix() for p in src_dir.rglob("*") if p.is_file())
    first = [f for f in files if f.startswith("signatures/")] + ["manifest.json", "SHA256SUMS"]
    order = first + [f for f in files if f not in first]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for f in order:
            tf.add(src_dir / f, arcname=f"{root}/{f}")


def test_we_accept_a_signature_made_by_model_signing(extracted, keys, tmp_path):
    for s in (extracted / "signatures").iterdir():
        s.unlink()
    sig = extracted / "signatures" / "by-model-signing.sig"
    p = model_signing("sign", "key", extracted, "--private_key", keys["other"]["key"], "--signature", sig,
                      "--ignore-paths", extracted / "signatures")
    assert p.returncode == 0, p.stdout + p.stderr
    out = tmp_path / "resigned.bundle.tar"
    _repack(extracted, "tiny-1.0.0", out)
    r = run_bundle("verify", out, "--trust", keys["other"]["pub"], "--json")
    assert r.code == 0, r.out + r.err
    rep = r.json()
    assert rep["ok"] and rep["signers"][0]["key_id"] == keys["other"]["id"]
    assert rep["signers"][0]["file"] == "signatures/by-model-signing.sig"
    # The key that did not sign it is not enough.
    r = run_bundle("verify", out, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 11 and r.json()["error"]["class"] == "signature"
