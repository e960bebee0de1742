"""Issue 13, family 8: conformance with the OpenSSF model-signing (OMS) v1.0 spec's own schemas
and test vectors, which lie in ``../shared/reference/oms-v1.0/`` (copied unchanged from
ossf/model-signing-spec; CI always has them, the tests skip where they are absent).

- Every signature file bundler writes (`bundle create`'s seal, `bundle sign`'s countersignature)
  validates against ``bundle.schema.json``, and its DSSE payload against ``statement.schema.json``
  (which takes ``predicate.schema.json`` by ``$ref``), with `jsonschema` (Draft 2020-12) and a
  `referencing` registry of the four schemas by their ``$id``. One known deviation is pinned: a
  signature with ``--expires`` carries ``predicate.expires``, which the v1.0 predicate schema
  (``additionalProperties: false``) does not allow (docs/security.md, "what is not defended").
- Each invalid vector, placed as a bundle's signature file, is refused with exit 11 (signature) by
  `bundle verify` and by verify.py on every Python; and each vector's defect grafted onto the
  bundle's own valid signature is refused too, for the defect's own reason.
- The valid vectors (a P-384 key, a certificate chain, Sigstore keyless) are refused with a
  message that names what is unsupported, never "internal error"; a P-384 trust file is refused
  (4) naming its curve.
"""

from __future__ import annotations

import base64
import copy
import json
from pathlib import Path
from typing import Dict, List

import pytest

from campaign import assert_verdict, pythons, stdlib_verdicts, verify_json
from conftest import REPO, run_bundle
from hostile import Bundle

OMS = REPO.parent / "shared" / "reference" / "oms-v1.0" / "v1.0"
pytestmark = pytest.mark.skipif(not OMS.is_dir(), reason=f"OMS v1.0 reference vectors not found at {OMS}")

jsonschema = pytest.importorskip("jsonschema")
referencing = pytest.importorskip("referencing")

VECTORS = sorted(str(p.relative_to(OMS)) for p in OMS.glob("*/*.bundle.json"))


def _validators() -> Dict[str, "jsonschema.protocols.Validator"]:
    from referencing import Registry, Resource

    schemas = {p.name.split(".")[0]: json.loads(p.read_text()) for p in OMS.glob("*.schema.json")}
    registry = Registry().with_resources((s["$id"], Resource.from_contents(s)) for s in schemas.values())
    cls = jsonschema.Draft202012Validator
    for s in schemas.values():
        cls.check_schema(s)
    return {name: cls(s, registry=registry) for name, s in schemas.items()}


@pytest.fixture(scope="module")
def schemas() -> dict:
    return _validators()


def errors(validator, doc) -> List[str]:  # noqa: ANN001
    return sorted(f"{'/'.join(map(str, e.absolute_path))}: {e.message}" for e in validator.iter_errors(doc))


def payload(sig_doc: dict) -> dict:
    return json.loads(base64.b64decode(sig_doc["dsseEnvelope"]["payload"]))


# -- the harness agrees with the spec about its own vectors ----------------------------------------

def test_the_vectors_validate_as_the_spec_says(schemas) -> None:  # noqa: ANN001
    """valid/*: bundle and statement valid; invalid/*: the bundle is not; invalid-payload/*: the
    bundle is, its statement is not. Without this, a pass below could mean a broken registry."""
    assert {v.split("/")[0] for v in VECTORS} == {"valid", "invalid", "invalid-payload"}
    for v in VECTORS:
        raw = (OMS / v).read_bytes()
        doc = json.loads(raw) if raw.strip() else None
        kind = v.split("/")[0]
        bundle_errors = errors(schemas["bundle"], doc)
        assert bool(bundle_errors) == (kind == "invalid"), (v, bundle_errors)
        if kind != "invalid":
            assert bool(errors(schemas["statement"], payload(doc))) == (kind == "invalid-payload"), v


# -- what we write validates -------------------------------------------------------------------------

def _signature_docs(path: Path) -> List[dict]:
    b = Bundle.read(path)
    return [json.loads(d) for r, d, _ in b.members if r.startswith("signatures/")]


@pytest.fixture(scope="module")
def countersigned(tmp_path_factory, tiny_bundle, keys) -> Path:  # noqa: ANN001
    out = tmp_path_factory.mktemp("oms-sign")
    r = run_bundle("sign", tiny_bundle, "--key", keys["other"]["key"], "--trust", keys["release"]["pub"], "--out", out)
    assert r.code == 0, r.err
    return out / tiny_bundle.name


def test_sealed_and_countersigned_signature_files_validate(schemas, tiny_bundle, countersigned) -> None:  # noqa: ANN001
    docs = _signature_docs(countersigned)
    assert len(docs) == 2 and _signature_docs(tiny_bundle)[0] in docs  # seal's file, kept, plus sign's
    for doc in docs:
        assert errors(schemas["bundle"], doc) == []
        assert errors(schemas["envelope"], doc["dsseEnvelope"]) == []
        st = payload(doc)
        assert errors(schemas["statement"], st) == []
        assert errors(schemas["predicate"], st["predicate"]) == []


def test_expires_is_the_one_deviation_from_the_predicate_schema(schemas, tiny_bundle, keys, tmp_path) -> None:  # noqa: ANN001
    """`--expires` writes predicate.expires (inside the signed payload, which model-signing 1.1.1
    ignores); the v1.0 predicate schema allows no extra member. Pinned: if this test fails, the
    deviation was removed and docs/security.md should say so."""
    r = run_bundle("sign", tiny_bundle, "--key", keys["other"]["key"], "--trust", keys["release"]["pub"],
                   "--out", tmp_path, "--expires", "90d")
    assert r.code == 0, r.err
    doc = next(d for d in _signature_docs(tmp_path / tiny_bundle.name) if "expires" in payload(d)["predicate"])
    assert errors(schemas["bundle"], doc) == []
    assert errors(schemas["statement"], payload(doc)) == [
        "predicate: Additional properties are not allowed ('expires' was unexpected)"]


# -- the spec's vectors as a bundle's signature file ----------------------------------------------

def _with_signature(b: Bundle, raw: bytes) -> Bundle:
    sig = b.signature_rel()
    return Bundle(b.root, [(r, raw if r == sig else d, m) for r, d, m in b.members])


def _grafted(b: Bundle, edit) -> bytes:  # noqa: ANN001
    doc = json.loads(b.data(b.signature_rel()))
    edit(doc)
    return (json.dumps(doc, indent=2) + "\n").encode()


def _vector(name: str) -> dict:
    return json.loads((OMS / name).read_text())


# case -> (signature file bytes from the session bundle, expected words in the message)
def _cases(b: Bundle, key: Path) -> Dict[str, tuple]:
    cert = _vector("valid/certificate.bundle.json")["verificationMaterial"]
    sigstore = _vector("valid/sigstore.bundle.json")["verificationMaterial"]
    from bundler.signing import load_private_key, sign_statement

    # our own statement with the invalid-payload vector's predicate type, signed by the trusted key
    st = json.loads(base64.b64decode(json.loads(b.data(b.signature_rel()))["dsseEnvelope"]["payload"]))
    st["predicateType"] = payload(_vector("invalid-payload/wrong-predicate.bundle.json"))["predicateType"]
    wrong_predicate_sig = sign_statement(json.dumps(st, indent=2).encode(), load_private_key(key, None))
    out = {f"vector:{v}": ((OMS / v).read_bytes(), None) for v in VECTORS}
    out["vector:valid/key.bundle.json"] = ((OMS / "valid/key.bundle.json").read_bytes(), "no signature from a trusted key")
    out["vector:valid/certificate.bundle.json"] = (
        (OMS / "valid/certificate.bundle.json").read_bytes(), "certificate-chain signatures (x509CertificateChain) are not supported")
    out["vector:valid/sigstore.bundle.json"] = (
        (OMS / "valid/sigstore.bundle.json").read_bytes(), "Sigstore keyless signatures")
    out.update({
        # the invalid vectors' defects, grafted onto our own valid signature: only the defect can refuse it
        "graft:empty": (b"", "not a model-signing signature file (not valid JSON"),
        "graft:missing-envelope": (_grafted(b, lambda d: d.pop("dsseEnvelope")), "no dsseEnvelope object"),
        "graft:missing-verification-material": (_grafted(b, lambda d: d.pop("verificationMaterial")),
                                                "no verificationMaterial object"),
        "graft:certificate-without-tlog-entries": (
            _grafted(b, lambda d: d.update(verificationMaterial={"certificate": copy.deepcopy(sigstore["certificate"])})),
            "certificate-based signatures are not supported"),
        "graft:certificate-chain": (_grafted(b, lambda d: d.update(verificationMaterial=copy.deepcopy(cert))),
                                    "certificate-chain signatures (x509CertificateChain) are not supported"),
        "graft:sigstore-keyless": (_grafted(b, lambda d: d.update(verificationMaterial=copy.deepcopy(sigstore))),
                                   "Sigstore keyless signatures (a Fulcio certificate and transparency-log entries) are not supported"),
        "graft:wrong-predicate (signed by the trusted key)": (wrong_predicate_sig, "signed statement is malformed (predicate type"),
    })
    return out


@pytest.fixture(scope="module")
def vector_bundles(tmp_path_factory, tiny_bundle, keys) -> Dict[str, tuple]:  # noqa: ANN001
    d = tmp_path_factory.mktemp("oms-vectors")
    b = Bundle.read(tiny_bundle)
    out = {}
    for i, (case, (raw, words)) in enumerate(_cases(b, keys["release"]["key"]).items()):
        out[case] = (_with_signature(b, raw).write(d / f"case{i}.tar"), words)
    return out


@pytest.fixture(scope="module")
def stdlib(vector_bundles, keys) -> dict:  # noqa: ANN001
    pub = str(keys["release"]["pub"])
    return stdlib_verdicts({c: [str(p), "--trust", pub, "--json"] for c, (p, _) in vector_bundles.items()})


def test_every_vector_and_defect_is_refused_as_a_signature_failure(vector_bundles, stdlib, keys) -> None:  # noqa: ANN001
    assert len(vector_bundles) == len(VECTORS) + 7
    for case, (path, words) in vector_bundles.items():
        doc = assert_verdict(verify_json(path, keys["release"]["pub"]), 11)
        msg = doc["error"]["message"]
        assert "internal" not in msg and (words is None or words in msg), (case, msg)
        for py, verdicts in stdlib.items():
            code, err, out = verdicts[case]
            assert code == 11 and json.loads(out)["error"]["message"] == msg, (case, py, err)
    assert len(stdlib) == len(pythons())


def test_unsupported_material_is_reported_not_counted(vector_bundles, keys) -> None:  # noqa: ANN001
    doc = verify_json(vector_bundles["vector:valid/sigstore.bundle.json"][0], keys["release"]["pub"]).json()
    (signer,) = doc["signers"]
    assert signer["valid"] is None and signer["trusted"] is False and signer["counted"] is False
    assert signer["reason"].startswith("Sigstore keyless signatures")


def test_a_p384_trust_file_is_refused_naming_its_curve(tiny_bundle, tmp_path) -> None:  # noqa: ANN001
    """The OMS key vector is signed with P-384: an operator who holds that public key is told why
    it is refused (exit 4, key), by both verifiers."""
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    pub = tmp_path / "p384.pub"
    pub.write_bytes(ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo))
    r = run_bundle("verify", tiny_bundle, "--trust", pub)
    assert r.code == 4 and "P-384 (secp384r1); this verifier takes P-256 (prime256v1) keys" in r.err, r.err
    verdicts = stdlib_verdicts({"p384": [str(tiny_bundle), "--trust", str(pub)]})
    assert {v["p384"][0] for v in verdicts.values()} == {4}
