"""One verifier: the library and the shipped `runtime/verify.py` are the same code, with one rule
for trust files, names compared as bytes, strict signed JSON, and a Python version gate.

Every rule is exercised through both entry points (`bundle verify` and `python -I verify.py`),
in subprocesses, on real bundles and real key files; the name rule also under the oldest and the
newest Python on the machine, whose Unicode tables differ.
"""

from __future__ import annotations

import ast
import hashlib
import json
import os
import random
import subprocess
import sys
import tarfile
from pathlib import Path
from typing import List

import pytest
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

import runtime_stub.verify as shared
from bundler.signing import EcdsaChecker, ecdsa_fast, load_private_key, make_statement, sign_statement
from conftest import REPO, run_bundle
from test_stdlib_verifier import (
    ROOT,
    find,
    other_pythons,
    read_entries,
    reg,
    resign,
    sig_index,
    stdlib_verify,
    write_tar,
)

VERIFIER = REPO / "runtime_stub" / "verify.py"


# -- the same code -----------------------------------------------------------------------------------

def test_the_library_runs_the_shipped_verifier(tmp_path, tiny_bundle, keys):
    """What `bundle verify` runs is the module whose bytes every bundle carries as runtime/verify.py."""
    assert Path(shared.__file__).resolve() == VERIFIER.resolve()
    import bundler.archive
    import bundler.errors
    import bundler.manifest
    import bundler.signing

    assert bundler.archive.StrictTarReader is shared.StrictTarReader
    assert bundler.errors.BundleError is shared.BundleError and bundler.errors.DigestError is shared.DigestError
    assert bundler.manifest.Manifest is shared.Manifest and bundler.manifest.EngineRecord is shared.EngineRecord
    assert bundler.signing.parse_statement is shared.parse_statement and bundler.signing.load_trust is shared.load_trust
    dest = tmp_path / "x"
    assert run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest).code == 0
    digest = run_bundle("verifier").out.strip()
    assert hashlib.sha256((dest / "runtime" / "verify.py").read_bytes()).hexdigest() == digest
    assert hashlib.sha256(VERIFIER.read_bytes()).hexdigest() == digest


# Names of the verification algorithm: defined in runtime_stub/verify.py and nowhere else.
SHARED_ONLY = {
    "StrictTarReader", "Limits", "Member", "check_name", "parse_signature_file", "parse_statement",
    "verify_signature", "load_trust", "load_public_key", "parse_public_key_pem", "parse_header", "version_matches",
    "check_version", "check_bundle_name", "_check_signatures", "_load_manifest", "_check_manifest_semantics",
    "_run_directory", "_convert", "loads_strict", "query_gpus", "installed_runtimes", "host_report", "parse_sums",
    "ascii_fold", "printable", "ExitCode", "BundleError", "VerifyReport", "Manifest", "EngineRecord",
    "version_key", "compare_versions", "check_rollback", "check_freshness", "apply_host_state", "load_state",
    "state_options", "parse_duration", "parse_created", "HostState", "StateEntry",
    "check_ledger", "parse_ledger_head", "ledger_line", "ledger_hash", "LedgerEntry", "LedgerHead",
    "verify_signed_file",
}


def test_no_second_copy_of_the_algorithm_in_the_library():
    """A test that fails if the library grows its own copy of anything the verifier defines."""
    for path in sorted((REPO / "bundler").rglob("*.py")):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        # cuda.query_gpus adapts the shared device query to the build side's tuples
        allowed = {"cuda.py": {"query_gpus"}}.get(path.name, set())
        assert not (defined & SHARED_ONLY) - allowed, (path, defined & SHARED_ONLY)


def test_fast_and_pure_python_ecdsa_agree():
    """The library's cryptography path and the stdlib path give the same answer on each vector."""
    rng = random.Random(7)
    n = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
    checker = EcdsaChecker()  # what `bundle verify` uses: pure Python first, cryptography later
    for i in range(24):
        priv = ec.generate_private_key(ec.SECP256R1())
        pub = priv.public_key().public_numbers()
        key = shared.PublicKey(pub.x, pub.y)
        msg = rng.randbytes(rng.randrange(0, 300))
        sig = priv.sign(msg, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(sig)
        vectors = [
            (sig, msg, True),
            (sig, msg + b"x", False),
            (encode_dss_signature(r, n - s), msg, True),  # the other valid s
            (encode_dss_signature(s, r), msg, False),
            (encode_dss_signature(r, s + n), msg, False),
            (encode_dss_signature(0, s), msg, False),
            (sig[:-1], msg, False),
            (b"\x30\x00", msg, False),
            (sig + b"\x00", msg, False),
        ]
        for data, m, want in vectors:
            assert shared.ecdsa_p256_verify(key, data, m) is want, (i, data.hex())
            assert ecdsa_fast(key, data, m) is want, (i, data.hex())
            assert checker(key, data, m) is want, (i, data.hex())
    assert checker.calls > EcdsaChecker.PURE_FIRST  # both of its paths answered above


# -- one strict rule for trust files -----------------------------------------------------------------

def _pem(pub_key) -> bytes:  # noqa: ANN001
    return pub_key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def _trust_cases(tmp_path: Path, good: Path) -> dict:
    data = good.read_bytes()
    other = _pem(ec.generate_private_key(ec.SECP256R1()).public_key())
    body = data.split(b"\n")
    pt = ec.generate_private_key(ec.SECP256R1()).public_key()
    compressed = pt.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
    prefix = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200")  # SPKI, 33-byte point
    import base64

    comp_pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(prefix + compressed) + b"-----END PUBLIC KEY-----\n"
    from cryptography.hazmat.primitives.asymmetric import rsa

    rsa_pub = _pem(rsa.generate_private_key(public_exponent=65537, key_size=2048).public_key())
    cases = {
        "two keys in one file": (data + other, "not exactly one PEM block"),
        "text before the block": (b"release key\n" + data, "text before the PEM block"),
        "text after the block": (data + b"trailing words\n", "text after the PEM block"),
        "PEM header": (b"\n".join(body[:1] + [b"Comment: hi", b""] + body[1:]), "PEM headers are not allowed"),
        "certificate block first": (b"-----BEGIN CERTIFICATE-----\nAAAA\n-----END CERTIFICATE-----\n" + data,
                                    "not exactly one PEM block"),
        "compressed point": (comp_pem, "compressed point"),
        "RSA key": (rsa_pub, "not an ECDSA P-256 public key"),
        "over 1 MiB": (data + b" " * (1 << 20), "over 1048576 bytes"),
        "private key": (ec.generate_private_key(ec.SECP256R1()).private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()), "is a private key"),
    }
    out = {}
    for i, (label, (content, needle)) in enumerate(cases.items()):
        p = tmp_path / f"trust{i}.pub"
        p.write_bytes(content)
        out[label] = (p, needle)
    fifo = tmp_path / "fifo.pub"
    os.mkfifo(fifo)
    out["a FIFO (must not hang)"] = (fifo, "not a regular file")
    out["/dev/zero"] = (Path("/dev/zero"), "not a regular file")
    return out


def test_trust_files_follow_one_strict_rule(tmp_path, tiny_bundle, keys):
    good = keys["release"]["pub"]
    assert run_bundle("verify", tiny_bundle, "--trust", good).code == 0  # control
    assert stdlib_verify(tiny_bundle, good, json_mode=False).code == 0
    for label, (path, needle) in _trust_cases(tmp_path, good).items():
        lib = run_bundle("verify", tiny_bundle, "--trust", path)
        std = stdlib_verify(tiny_bundle, path, json_mode=False)
        assert lib.code == std.code == 4, (label, lib.err, std.err)
        assert needle in lib.err, (label, lib.err)
        assert lib.err == std.err, label  # the same one line, from the same code
        assert len(lib.err.strip().splitlines()) == 1


def test_explicit_curve_parameters_and_hybrid_points_are_refused(tmp_path, tiny_bundle, keys):
    """Encodings `openssl ec` can write for the very same key: refused, with the reason."""
    made = 0
    for label, args, needle in (("explicit", ["-param_enc", "explicit"], "named curve"),
                                ("hybrid", ["-conv_form", "hybrid"], "unsupported point encoding")):
        out = tmp_path / f"{label}.pub"
        p = subprocess.run(["openssl", "ec", "-pubin", "-in", str(keys["release"]["pub"]), *args, "-out", str(out)],
                           capture_output=True)
        if p.returncode != 0:
            continue
        made += 1
        r = run_bundle("verify", tiny_bundle, "--trust", out)
        assert r.code == 4 and needle in r.err, (label, r.err)
    if made == 0:
        pytest.skip("openssl cannot write these encodings here")


# -- names compared as bytes -----------------------------------------------------------------------------

def _pythons() -> List[str]:
    found = other_pythons()
    return [found[0], found[-1]] if found else [sys.executable]


def test_an_ascii_case_clash_is_refused_on_every_python(tmp_path, tiny_bundle, keys):
    entries = read_entries(tiny_bundle) + [reg(f"{ROOT}/Manifest.JSON", b"{}")]
    bundle = write_tar(tmp_path / "clash.tar", entries)
    verdicts = {py: stdlib_verify(bundle, keys["release"]["pub"], python=py).code for py in _pythons()}
    assert set(verdicts.values()) == {14}, verdicts
    r = run_bundle("verify", bundle, "--trust", keys["release"]["pub"])
    assert r.code == 14 and "collides with" in r.err


@pytest.mark.parametrize("pair", [("\u2c2f", "\u2c5f"), ("stra\u00dfe", "STRASSE"), ("\u212a", "k")])
def test_names_that_only_unicode_folds_together_verify_alike_everywhere(tmp_path, tiny_bundle, keys, pair):
    """U+2C2F/U+2C5F are a case pair from Unicode 14 (Python 3.11+ folds them, 3.8 does not);
    casefold also joins 'strasse' and the Kelvin sign with 'k'. By the ASCII rule none of these
    clash, so a bundle that signs both names verifies, with the same verdict on every Python."""
    extra = [reg(f"{ROOT}/docs/{n}", n.encode("utf-8")) for n in pair]

    def add_files(m: dict) -> None:
        for ti, data in extra:
            m["files"].append({"path": ti.name[len(ROOT) + 1:], "size": len(data),
                               "sha256": hashlib.sha256(data).hexdigest()})

    entries = resign(read_entries(tiny_bundle) + extra, keys["release"]["key"], edit_manifest=add_files)
    bundle = write_tar(tmp_path / "pair.tar", entries)
    verdicts = {py: stdlib_verify(bundle, keys["release"]["pub"], python=py).code for py in _pythons()}
    assert set(verdicts.values()) == {0}, verdicts
    assert run_bundle("verify", bundle, "--trust", keys["release"]["pub"]).code == 0


@pytest.mark.parametrize("sig_name", ["K\u00e9.sig", ".sig", "a b.sig", "k.SIG", "k.sig.txt"])
def test_signature_file_names_are_a_safe_ascii_set(tmp_path, tiny_bundle, keys, sig_name):
    entries = read_entries(tiny_bundle)
    gi = sig_index(entries)
    ti, data = entries[gi]
    entries[gi] = reg(f"{ROOT}/signatures/{sig_name}", data)
    bundle = write_tar(tmp_path / "sig.tar", entries)
    for py in _pythons():
        r = stdlib_verify(bundle, keys["release"]["pub"], python=py, json_mode=False)
        assert r.code == 11 and "signatures/NAME.sig" in r.err, (py, r.err)
    assert run_bundle("verify", bundle, "--trust", keys["release"]["pub"]).code == 11


# -- signed JSON and SHA256SUMS are read exactly as written ---------------------------------------------------

def _resigned(tmp_path, tiny_bundle, keys, **kw) -> Path:  # noqa: ANN001
    return write_tar(tmp_path / "resigned.tar", resign(read_entries(tiny_bundle), keys["release"]["key"], **kw))


@pytest.mark.parametrize("label, edit", [
    ("CRLF", lambda b: b.replace(b"\n", b"\r\n")),
    ("no final newline", lambda b: b[:-1]),
    ("U+2028 separator", lambda b: b.replace(b"\n", "\u2028".encode(), 1)),
    ("form feed", lambda b: b.replace(b"\n", b"\f", 1)),
    ("a path twice", lambda b: b + b.split(b"\n")[0] + b"\n"),
    ("one space", lambda b: b.replace(b"  ", b" ", 1)),
    ("uppercase hex", lambda b: b[:64].upper() + b[64:]),
])
def test_sha256sums_is_exactly_what_sha256sum_writes(tmp_path, tiny_bundle, keys, label, edit):
    bundle = _resigned(tmp_path, tiny_bundle, keys, edit_sums=edit)
    r = run_bundle("verify", bundle, "--trust", keys["release"]["pub"])
    assert r.code == 16 and "SHA256SUMS" in r.err, (label, r.err)
    assert stdlib_verify(bundle, keys["release"]["pub"]).code == 16


def test_a_path_listed_twice_in_the_manifest_is_refused(tmp_path, tiny_bundle, keys):
    bundle = _resigned(tmp_path, tiny_bundle, keys, edit_manifest=lambda m: m["files"].append(dict(m["files"][0])))
    r = run_bundle("verify", bundle, "--trust", keys["release"]["pub"])
    assert r.code == 16 and "twice" in r.err, r.err


def _raw_statement_bundle(tmp_path, tiny_bundle, keys, mangle) -> Path:  # noqa: ANN001
    """Re-sign with a statement whose JSON text is edited after it was made (duplicate keys...)."""
    entries = read_entries(tiny_bundle)
    resources = {ti.name[len(ROOT) + 1:]: hashlib.sha256(d).hexdigest() for ti, d in entries
                 if not ti.name.startswith(f"{ROOT}/signatures/")}
    statement = mangle(make_statement(ROOT, resources))
    gi = sig_index(entries)
    entries[gi] = (entries[gi][0], sign_statement(statement, load_private_key(keys["release"]["key"], None)))
    return write_tar(tmp_path / "stmt.tar", entries)


def test_duplicate_keys_in_signed_json_are_refused(tmp_path, tiny_bundle, keys):
    def two_subjects(st: bytes) -> bytes:
        doc = json.loads(st)
        fake = json.dumps([{"name": "other-9.9.9", "digest": {"sha256": "0" * 64}}])
        return st.replace(b'"subject":', b'"subject": ' + fake.encode() + b', "subject":', 1) if doc else st

    bundle = _raw_statement_bundle(tmp_path, tiny_bundle, keys, two_subjects)
    for r in (run_bundle("verify", bundle, "--trust", keys["release"]["pub"]),
              stdlib_verify(bundle, keys["release"]["pub"], json_mode=False)):
        assert r.code == 11 and "duplicate key 'subject'" in r.err, r.err
    nan = _resigned(tmp_path, tiny_bundle, keys, edit_manifest=lambda m: m["engines"][0].update(duration_s=float("nan")))
    r = run_bundle("verify", nan, "--trust", keys["release"]["pub"])
    assert r.code == 16 and "NaN is not JSON" in r.err, r.err


def test_uppercase_resource_digests_are_refused(tmp_path, tiny_bundle, keys):
    """model-signing and sha256sum write lowercase hex; a signed statement with uppercase is refused."""
    def upper_first_digest(st: bytes) -> bytes:
        doc = json.loads(st)
        digest = doc["predicate"]["resources"][0]["digest"]
        assert digest != digest.upper()
        return st.replace(digest.encode(), digest.upper().encode(), 1)

    bundle = _raw_statement_bundle(tmp_path, tiny_bundle, keys, upper_first_digest)
    for r in (run_bundle("verify", bundle, "--trust", keys["release"]["pub"]),
              stdlib_verify(bundle, keys["release"]["pub"], json_mode=False)):
        assert r.code == 11 and "bad resource entry" in r.err, r.err
    control = _raw_statement_bundle(tmp_path, tiny_bundle, keys, lambda st: st)
    assert run_bundle("verify", control, "--trust", keys["release"]["pub"]).code == 0


# -- the Python version gate -------------------------------------------------------------------------------------

def _old_python(version: str) -> str:
    import glob

    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    if not found:
        pytest.skip(f"no Python {version} on this machine")
    return found[0]


@pytest.mark.parametrize("version", ["3.6", "3.7"])
@pytest.mark.parametrize("script", ["verify.py", "loader.py"])
def test_old_pythons_are_told_what_they_need(tiny_bundle, keys, version, script):
    py = _old_python(version)
    p = subprocess.run([py, "-I", str(REPO / "runtime_stub" / script), str(tiny_bundle), "--trust",
                        str(keys["release"]["pub"])], capture_output=True, text=True, timeout=60)
    assert p.returncode == 2, p.stderr
    assert p.stderr == f"error [usage]: {script} needs Python 3.8 or newer; this is Python {version}\n"
    assert p.stdout == ""


def test_the_shipped_files_parse_on_old_pythons():
    """The gate can only speak if the file parses: no syntax newer than 3.6 before it runs."""
    for script in ("verify.py", "loader.py"):
        ast.parse((REPO / "runtime_stub" / script).read_text(), feature_version=(3, 6))


def test_tar_reader_refuses_via_both_entry_points_identically(tmp_path, tiny_bundle, keys):
    """A differential control over the shared code: one tampered bundle, two entry points."""
    entries = read_entries(tiny_bundle)
    i = find(entries, "model/tiny.onnx")
    ti, data = entries[i]
    entries[i] = (ti, data[:-1] + bytes([data[-1] ^ 1]))
    bundle = write_tar(tmp_path / "t.tar", entries)
    lib = run_bundle("verify", bundle, "--trust", keys["release"]["pub"], "--json")
    std = stdlib_verify(bundle, keys["release"]["pub"])
    assert lib.code == std.code == 12
    assert json.loads(lib.out) == json.loads(std.out)
    with tarfile.open(bundle) as tf:  # the tar itself is well-formed: the digest is what differs
        assert len(tf.getmembers()) == len(entries)


def test_base64_in_signature_files_is_canonical_on_every_python(tmp_path, tiny_bundle, keys):
    """Extra padding and unused low bits were accepted by some Pythons and refused by others."""
    from test_stdlib_verifier import edit_sig

    def pad_more(doc: dict) -> None:
        sig = doc["dsseEnvelope"]["signatures"][0]["sig"]
        doc["dsseEnvelope"]["signatures"][0]["sig"] = sig + "=="  # still decodes on 3.8-3.10

    bundle = write_tar(tmp_path / "b64.tar", edit_sig(read_entries(tiny_bundle), pad_more))
    for py in _pythons():
        r = stdlib_verify(bundle, keys["release"]["pub"], python=py, json_mode=False)
        assert r.code == 11 and "base64" in r.err, (py, r.err)
    r = run_bundle("verify", bundle, "--trust", keys["release"]["pub"])
    assert r.code == 11 and "base64" in r.err, r.err


@pytest.mark.parametrize("label, edit, needle", [
    ("two records for one engine", lambda m: m["engines"].append(dict(m["engines"][0])), "has two records"),
    ("a second fp32 graph", lambda m: m["variants"].append(
        {"precision": m["model"]["precision"], "graph": m["model"]["path"], "sha256": m["model"]["sha256"],
         "size": m["model"]["size"], "converter": "none"}), "one graph per precision"),
])
def test_ambiguous_records_are_refused(tmp_path, tiny_bundle, keys, label, edit, needle):
    bundle = _resigned(tmp_path, tiny_bundle, keys, edit_manifest=edit)
    for r in (run_bundle("verify", bundle, "--trust", keys["release"]["pub"]),
              stdlib_verify(bundle, keys["release"]["pub"], json_mode=False)):
        assert r.code == 16 and needle in r.err, (label, r.err)


def test_bundle_verify_reads_bundle_trust_like_verify_py(tiny_bundle, keys):
    env = {"BUNDLE_TRUST": os.pathsep.join([str(keys["other"]["pub"]), str(keys["release"]["pub"])])}
    assert run_bundle("verify", tiny_bundle, env=env).code == 0
    r = run_bundle("verify", tiny_bundle, env={"BUNDLE_TRUST": str(keys["other"]["pub"])})
    assert r.code == 11
    r = run_bundle("verify", tiny_bundle)
    assert r.code == 3 and "BUNDLE_TRUST" in r.err


def test_mapped_and_plain_reads_see_the_same_archive(tiny_bundle):
    """Regular files are read through mmap windows, anything else with read(): same members,
    same bytes, same whole-file digest (also with windows smaller than a member)."""
    import io

    def scan(f, window=None) -> tuple:  # noqa: ANN001
        if window:
            old, shared.MAP_WINDOW = shared.MAP_WINDOW, window
        try:
            r = shared.StrictTarReader(f)
            out = []
            while (m := r.next()) is not None:
                h = hashlib.sha256()
                r.read_data(h.update)
                out.append((m.name, m.size, h.hexdigest()))
            digest = r.archive_sha256
            r.close()
            return out, digest, type(r._r).__name__
        finally:
            if window:
                shared.MAP_WINDOW = old

    data = tiny_bundle.read_bytes()
    with open(tiny_bundle, "rb") as f:
        mapped = scan(f)
    with open(tiny_bundle, "rb") as f:
        small = scan(f, window=mmap_granularity())
    plain = scan(io.BytesIO(data))
    assert (mapped[2], small[2], plain[2]) == ("_MappedSource", "_MappedSource", "_Source")
    assert mapped[:2] == small[:2] == plain[:2]
    assert mapped[1] == hashlib.sha256(data).hexdigest()


def mmap_granularity() -> int:
    import mmap

    return mmap.ALLOCATIONGRANULARITY
