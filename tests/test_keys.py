"""`bundle keys`: key generation, ids, passphrases and the permission check."""

from __future__ import annotations

import hashlib
import os
import stat

from cryptography.hazmat.primitives import serialization

from conftest import SAMPLE, run_bundle


def test_generate_writes_0600_key_and_prints_model_signing_hint(tmp_path):
    r = run_bundle("keys", "generate", "ci", "--dir", tmp_path, env={"BUNDLE_KEY_PASSPHRASE": "s3cret"})
    assert r.code == 0, r.err
    key, pub = tmp_path / "ci.key", tmp_path / "ci.pub"
    assert stat.S_IMODE(key.stat().st_mode) == 0o600
    assert b"ENCRYPTED PRIVATE KEY" in key.read_bytes()
    # The id is the hex SHA-256 of the SubjectPublicKeyInfo PEM, as model-signing's `hint`.
    assert r.out.strip() == hashlib.sha256(pub.read_bytes()).hexdigest()
    r2 = run_bundle("keys", "id", pub)
    assert r2.code == 0 and r2.out.strip() == r.out.strip()
    # Loadable with the passphrase, P-256.
    k = serialization.load_pem_private_key(key.read_bytes(), b"s3cret")
    assert k.curve.name == "secp256r1"


def test_generate_refuses_to_overwrite(tmp_path):
    assert run_bundle("keys", "generate", "a", "--dir", tmp_path, "--no-passphrase").code == 0
    before = (tmp_path / "a.key").read_bytes()
    r = run_bundle("keys", "generate", "a", "--dir", tmp_path, "--no-passphrase")
    assert r.code == 6 and "already exists" in r.err
    assert (tmp_path / "a.key").read_bytes() == before


def test_generate_without_passphrase_source_fails_cleanly(tmp_path):
    r = run_bundle("keys", "generate", "x", "--dir", tmp_path)  # stdin is not a terminal
    assert r.code == 4 and "BUNDLE_KEY_PASSPHRASE" in r.err
    assert not (tmp_path / "x.key").exists()


def test_group_readable_key_is_refused_with_chmod_fix(tmp_path):
    assert run_bundle("keys", "generate", "loose", "--dir", tmp_path, "--no-passphrase").code == 0
    key = tmp_path / "loose.key"
    os.chmod(key, 0o640)
    r = run_bundle("create", SAMPLE, "--name", "s", "--version", "1.0.0", "--target", "sm_86",
                   "--shape", "input:1x3x64x64", "--key", key, "--out", tmp_path / "out")
    assert r.code == 4
    assert f"chmod 600 {key}" in r.err
    assert not (tmp_path / "out" / "s-1.0.0.bundle.tar").exists()


def test_wrong_passphrase_and_missing_passphrase(tmp_path):
    assert run_bundle("keys", "generate", "enc", "--dir", tmp_path, env={"BUNDLE_KEY_PASSPHRASE": "right"}).code == 0
    args = ("create", SAMPLE, "--name", "s", "--version", "1.0.0", "--target", "sm_86",
            "--shape", "input:1x3x64x64", "--key", tmp_path / "enc.key", "--out", tmp_path / "out")
    r = run_bundle(*args, env={"BUNDLE_KEY_PASSPHRASE": "wrong"})
    assert r.code == 4 and "wrong passphrase" in r.err
    r = run_bundle(*args)
    assert r.code == 4 and "encrypted" in r.err
    r = run_bundle(*args, env={"BUNDLE_KEY_PASSPHRASE": "right"})
    assert r.code == 0, r.err


def test_keys_id_rejects_private_key_and_garbage(tmp_path, keys):
    r = run_bundle("keys", "id", keys["release"]["key"])
    assert r.code == 4 and "private key" in r.err
    junk = tmp_path / "junk.pub"
    junk.write_text("hello")
    r = run_bundle("keys", "id", junk)
    assert r.code == 4 and "not a PEM public key" in r.err
