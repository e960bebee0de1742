"""SLSA v1 provenance (issue 15): every bundle carries a signed in-toto statement about its engines.

What is tested, through the real CLI and real TensorRT-RTX bundles:
- the statement's shape and content for a two-target build from flags (the session bundle) and a
  build from a spec file with an fp16 variant (spec digest, converter);
- its DSSE signature with independent code: securesystemslib's `Envelope.verify` with our P-256
  public key, and the predicate parsed by the in-toto attestation protobufs (SLSA's own schema);
- the stand-alone `runtime/verify.py` (python -I) and `bundle verify` give one verdict on hostile
  provenance, re-signed into an otherwise valid bundle with the trusted key;
- `bundle provenance` (human and --json), exit 28 for an authentic bundle without provenance,
  countersigned bundles under countersigner-only trust and under a policy, and that sealing a
  build directory twice gives the same bytes (the times come from build.json).
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import tarfile
import time
from pathlib import Path
from typing import Callable, List, Optional

import pytest
from cryptography.hazmat.primitives.serialization import load_pem_public_key

from bundler.provenance import BUILD_TYPE, BUILDER_ID, PROVENANCE
from bundler.signing import load_private_key
from conftest import run_bundle
from test_stdlib_verifier import ROOT, Entry, assert_same, find, read_entries, resign, stdlib_verify, write_tar

UTC_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


def _member(bundle: Path, rel: str) -> bytes:
    with tarfile.open(bundle) as tf:
        return tf.extractfile(f"{bundle.name.split('.bundle.tar')[0]}/{rel}").read()


def _statement(envelope: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(envelope)["payload"]))


def _envelope(statement: dict, key_path: Path) -> bytes:
    """A provenance envelope signed by ``key_path``, written as seal writes it."""
    from bundler.provenance import sign_envelope

    body = (json.dumps(statement, sort_keys=True, indent=2) + "\n").encode()
    return sign_envelope(body, load_private_key(key_path, None))


def _replace_provenance(entries: List[Entry], new: Optional[bytes], key_path: Path) -> List[Entry]:
    """The bundle with another provenance member (None: none at all), manifest and SHA256SUMS
    updated and everything re-signed with ``key_path``: only the provenance's own rules can fail."""
    entries = list(entries)
    i = find(entries, PROVENANCE)
    if new is None:
        del entries[i]
    else:
        entries[i] = (entries[i][0], new)

    def edit(m: dict) -> None:
        m["files"] = [f for f in m["files"] if f["path"] != PROVENANCE]
        if new is not None:
            m["files"].append({"path": PROVENANCE, "size": len(new), "sha256": hashlib.sha256(new).hexdigest()})

    return resign(entries, key_path, edit_manifest=edit)


# -- the statement --------------------------------------------------------------------------------

def test_statement_shape_for_a_two_target_build(tiny_bundle):
    manifest = json.loads(_member(tiny_bundle, "manifest.json"))
    envelope = json.loads(_member(tiny_bundle, PROVENANCE))
    assert envelope["payloadType"] == "application/vnd.in-toto+json"
    st = _statement(_member(tiny_bundle, PROVENANCE))
    assert st["_type"] == "https://in-toto.io/Statement/v1"
    assert st["predicateType"] == "https://slsa.dev/provenance/v1"
    # one subject per engine, exactly the manifest's paths and digests
    assert st["subject"] == [{"name": e["path"], "digest": {"sha256": e["sha256"]}} for e in manifest["engines"]]
    assert len(st["subject"]) == 2
    # the member is signed like any other: in the manifest's files and SHA256SUMS
    entry = next(f for f in manifest["files"] if f["path"] == PROVENANCE)
    assert entry["sha256"] == hashlib.sha256(_member(tiny_bundle, PROVENANCE)).hexdigest()
    assert f"{entry['sha256']}  {PROVENANCE}" in _member(tiny_bundle, "SHA256SUMS").decode()

    bd, rd = st["predicate"]["buildDefinition"], st["predicate"]["runDetails"]
    assert bd["buildType"] == BUILD_TYPE
    ext = bd["externalParameters"]
    assert (ext["name"], ext["version"]) == ("tiny", "1.0.0")
    (b,) = ext["builds"]
    assert b["targets"] == ["sm_86", "rtx5090"]  # as given on the command line
    assert b["precisions"] == ["fp32"]
    assert b["profiles"] == [{"x": {"min": [1, 3, 16, 16], "opt": [2, 3, 16, 16], "max": [4, 3, 16, 16]}}]
    assert b["flags"]["backend"] == "tensorrt-rtx" and b["flags"]["golden"] is True
    assert b["model"] == "tiny.onnx" and b["spec"] is None
    deps = {d["name"]: d for d in bd["resolvedDependencies"]}
    assert deps["model/tiny.onnx"]["digest"] == {"sha256": manifest["model"]["sha256"]}
    version = manifest["engines"][0]["backend"]["version"]
    assert deps["tensorrt-rtx"]["uri"] == f"pkg:generic/tensorrt-rtx@{version}"

    assert rd["builder"] == {"id": BUILDER_ID, "version": {"trt-bundler": manifest["tool"]["version"]}}
    meta = rd["metadata"]
    assert UTC_RE.match(meta["startedOn"]) and UTC_RE.match(meta["finishedOn"])
    assert meta["startedOn"] <= min(e["started"] for e in manifest["engines"]) <= meta["finishedOn"]
    assert meta["trtbundler_host"] == manifest["engines"][0]["host"]
    assert re.fullmatch(r"[0-9a-f-]{36}", meta["invocationId"])


def test_predicate_fits_the_slsa_v1_schema(tiny_bundle):
    """The in-toto attestation library's protobufs are SLSA's and in-toto's own schemas: every
    standard field has the type the spec gives it. Our additions are vendor extension fields
    (``trtbundler_*``, as SLSA v1.0 names them), which a strict parser is told to skip."""
    from google.protobuf import json_format
    from in_toto_attestation.predicates.provenance.v1 import provenance_pb2
    from in_toto_attestation.v1 import statement_pb2
    from in_toto_attestation.v1.resource_descriptor import ResourceDescriptor
    from in_toto_attestation.v1.statement import Statement

    st = _statement(_member(tiny_bundle, PROVENANCE))
    Statement.copy_from_pb(json_format.Parse(json.dumps(st), statement_pb2.Statement())).validate()
    prov = json_format.Parse(json.dumps(st["predicate"]), provenance_pb2.Provenance(), ignore_unknown_fields=True)
    assert prov.build_definition.build_type == BUILD_TYPE
    assert prov.run_details.builder.id == BUILDER_ID
    assert prov.run_details.metadata.started_on.ToJsonString().startswith(st["predicate"]["runDetails"]["metadata"]["startedOn"][:19])
    assert len(prov.build_definition.resolved_dependencies) == len(st["predicate"]["buildDefinition"]["resolvedDependencies"])
    for rd in prov.build_definition.resolved_dependencies:  # each has a uri, digest or content
        ResourceDescriptor.copy_from_pb(rd).validate()
    unknown = set(st["predicate"]["runDetails"]["metadata"]) - {"invocationId", "startedOn", "finishedOn"}
    assert unknown and all(k.startswith("trtbundler_") for k in unknown)


def test_dsse_signature_verifies_with_securesystemslib(tiny_bundle, keys):
    """Independent DSSE code (securesystemslib 1.x) checks our envelope with our public key."""
    from securesystemslib.dsse import Envelope
    from securesystemslib.exceptions import VerificationError
    from securesystemslib.signer import SSlibKey

    doc = json.loads(_member(tiny_bundle, PROVENANCE))
    assert doc["signatures"][0]["keyid"] == keys["release"]["id"]
    pub = load_pem_public_key(keys["release"]["pub"].read_bytes())
    key = SSlibKey.from_crypto(pub, keyid=keys["release"]["id"])
    assert key.scheme == "ecdsa-sha2-nistp256"
    env = Envelope.from_dict(json.loads(_member(tiny_bundle, PROVENANCE)))
    assert list(env.verify([key], 1)) == [keys["release"]["id"]]
    assert json.loads(env.payload)["predicateType"] == "https://slsa.dev/provenance/v1"
    # another key under the same key id does not verify it
    wrong = SSlibKey.from_crypto(load_pem_public_key(keys["other"]["pub"].read_bytes()), keyid=keys["release"]["id"])
    with pytest.raises(VerificationError):
        env.verify([wrong], 1)


# -- the CLI -------------------------------------------------------------------------------------

def test_bundle_provenance_json_is_the_statement(tiny_bundle, keys):
    r = run_bundle("provenance", tiny_bundle, "--trust", keys["release"]["pub"], "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out) == _statement(_member(tiny_bundle, PROVENANCE))
    r = run_bundle("provenance", tiny_bundle, "--trust", keys["release"]["pub"])
    assert r.code == 0, r.err
    assert f"signed by:  {keys['release']['id']}  [signature valid]" in r.out
    assert f"builder:    {BUILDER_ID}" in r.out and "targets sm_86, rtx5090" in r.out
    assert "engines/tiny_16x16_fp32_sm86.engine" in r.out and "subjects:   2 engines" in r.out
    r = run_bundle("verify", tiny_bundle, "--trust", keys["release"]["pub"], "--json")
    assert r.json()["provenance"] == {"path": PROVENANCE, "key_id": keys["release"]["id"], "checked": True,
                                      "reason": "", "build_type": BUILD_TYPE, "builder": BUILDER_ID, "subjects": 2}


def test_bundle_provenance_refuses_an_untrusted_bundle(tiny_bundle, keys):
    r = run_bundle("provenance", tiny_bundle, "--trust", keys["other"]["pub"], "--json")
    assert r.code == 11
    assert r.json()["ok"] is False and r.json()["error"]["class"] == "signature"
    assert r.err.count("\n") == 1 and r.err.startswith("error [signature]: ")


def test_bundle_without_provenance_verifies_and_provenance_exits_28(tmp_path, tiny_bundle, keys):
    """A bundle sealed before provenance existed: still verifies (removing the member from a
    signed bundle breaks its signature, so absence is only ever the signer's choice), and
    `bundle provenance` says there is none with exit 28."""
    old = write_tar(tmp_path / tiny_bundle.name, _replace_provenance(read_entries(tiny_bundle), None,
                                                                    keys["release"]["key"]))
    rep = assert_same(old, keys["release"]["pub"], code=0)
    assert rep["provenance"] is None
    r = run_bundle("verify", old, "--trust", keys["release"]["pub"])
    assert r.code == 0 and "provenance: none in this bundle" in r.out
    r = run_bundle("provenance", old, "--trust", keys["release"]["pub"])
    assert r.code == 28, r.err
    assert r.err.startswith("error [provenance]: ") and "no SLSA provenance" in r.err and r.err.count("\n") == 1


def test_removing_the_member_breaks_the_bundle_signature(tmp_path, tiny_bundle, keys):
    entries = [e for e in read_entries(tiny_bundle) if not e[0].name.endswith(PROVENANCE)]
    rep = assert_same(write_tar(tmp_path / tiny_bundle.name, entries), keys["release"]["pub"], code=13)
    assert "signed member missing" in rep["error"]["message"] and PROVENANCE in rep["error"]["message"]


# -- hostile provenance, re-signed into an otherwise valid bundle ---------------------------------

def _hostile(st: dict) -> None:
    """No edit: the statement as sealed (a control)."""


def _swap_digest(st: dict) -> None:
    st["subject"][0]["digest"]["sha256"] = st["subject"][1]["digest"]["sha256"]


def _drop_subject(st: dict) -> None:
    del st["subject"][1]


def _wrong_predicate_type(st: dict) -> None:
    st["predicateType"] = "https://slsa.dev/provenance/v0.2"


def _no_builder_id(st: dict) -> None:
    del st["predicate"]["runDetails"]["builder"]["id"]


@pytest.mark.parametrize("edit,signer,code,words", [
    (_hostile, "release", 0, None),
    (_swap_digest, "release", 16, "subjects are not the bundle's engines"),
    (_drop_subject, "release", 16, "subjects are not the bundle's engines"),
    (_wrong_predicate_type, "release", 11, "predicate type"),
    (_no_builder_id, "release", 11, "malformed"),
    (_hostile, "other", 0, None),  # not a key of this host's: not checked, bound by the bundle signature
])
def test_hostile_provenance_is_refused_by_both_verifiers(tmp_path, tiny_bundle, keys, edit: Callable, signer: str,
                                                         code: int, words: Optional[str]):
    st = _statement(_member(tiny_bundle, PROVENANCE))
    edit(st)
    bad = _replace_provenance(read_entries(tiny_bundle), _envelope(st, keys[signer]["key"]), keys["release"]["key"])
    path = write_tar(tmp_path / tiny_bundle.name, bad)
    rep = assert_same(path, keys["release"]["pub"], code=code)  # bundle verify --json and python -I verify.py
    if words is not None:
        assert words in rep["error"]["message"] and rep["error"]["member"] == f"{ROOT}/{PROVENANCE}"
    else:
        assert rep["provenance"]["key_id"] == keys[signer]["id"]
        assert rep["provenance"]["checked"] is (signer == "release")


def test_a_signature_that_does_not_verify_is_refused(tmp_path, tiny_bundle, keys):
    """keyid names the trusted key, but the signature is another statement's: never ignored."""
    env = json.loads(_member(tiny_bundle, PROVENANCE))
    st = _statement(_member(tiny_bundle, PROVENANCE))
    st["predicate"]["runDetails"]["metadata"]["startedOn"] = "2000-01-01T00:00:00Z"
    env["payload"] = base64.b64encode((json.dumps(st, sort_keys=True, indent=2) + "\n").encode()).decode()
    bad = _replace_provenance(read_entries(tiny_bundle), (json.dumps(env, indent=2) + "\n").encode(),
                              keys["release"]["key"])
    rep = assert_same(write_tar(tmp_path / tiny_bundle.name, bad), keys["release"]["pub"], code=11)
    assert "signature does not verify under trusted key" in rep["error"]["message"]


def test_stdlib_verifier_on_the_extracted_bundle(tmp_path, tiny_bundle, keys):
    """`runtime/verify.py` from inside the bundle, with nothing installed (python -I), on the
    extracted directory: it checks the provenance too and says so."""
    dest = tmp_path / "x"
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    script = dest / "runtime" / "verify.py"
    ok = stdlib_verify(dest, keys["release"]["pub"], script=script, json_mode=False)
    assert ok.code == 0, ok.err
    assert f"provenance: SLSA v1, 2 engines, builder {BUILDER_ID}, signed by {keys['release']['id']}" in ok.out
    # tampered in place: SHA256SUMS and the signed digest catch it first (digest, 12)
    p = dest / PROVENANCE
    p.chmod(0o644)
    p.write_bytes(p.read_bytes().replace(b'"payloadType"', b'"payloadtype"'))
    bad = stdlib_verify(dest, keys["release"]["pub"], script=script)
    assert bad.code == 12 and PROVENANCE in bad.json()["error"]["message"]


# -- countersigning ------------------------------------------------------------------------------

def test_countersigned_bundle_under_countersigner_only_trust(tmp_path, tiny_bundle, keys):
    """The provenance stays signed by the sealing key. A host that trusts only the countersigner
    accepts the bundle, and with it the provenance as a signed member; its own signature is
    reported as not checked (the sealing key is not trusted there)."""
    r = run_bundle("sign", tiny_bundle, "--key", keys["other"]["key"], "--trust", keys["release"]["pub"],
                   "--out", tmp_path / "cs")
    assert r.code == 0, r.err
    cs = tmp_path / "cs" / tiny_bundle.name
    assert _member(cs, PROVENANCE) == _member(tiny_bundle, PROVENANCE)
    rep = assert_same(cs, keys["other"]["pub"], code=0)
    assert rep["provenance"]["checked"] is False and rep["provenance"]["key_id"] == keys["release"]["id"]
    assert rep["provenance"]["reason"].startswith("key not in the trust policy")
    r = run_bundle("provenance", cs, "--trust", keys["other"]["pub"])
    assert r.code == 0, r.err
    assert "[signature not checked: key not in the trust policy" in r.out
    # both keys trusted: the sealer's signature is checked
    rep = assert_same(cs, keys["release"]["pub"], keys["other"]["pub"], code=0)
    assert rep["provenance"]["checked"] is True

    # a policy that holds the sealing key but does not allow it for 'tiny': checked false, said why
    policy = tmp_path / "policy.json"
    policy.write_text(json.dumps({
        "format": "trt-bundler-policy/1", "version": 1,
        "keys": [{"id": keys["release"]["id"], "name": "ci", "path": str(keys["release"]["pub"])},
                 {"id": keys["other"]["id"], "name": "release manager", "path": str(keys["other"]["pub"])}],
        "rules": [{"bundles": "tiny", "keys": [keys["other"]["id"]], "threshold": 1}],
    }))
    r = run_bundle("verify", cs, "--policy", policy, "--json")
    assert r.code == 0, r.err
    prov = r.json()["provenance"]
    assert prov["checked"] is False and "not allowed to sign 'tiny'" in prov["reason"]


# -- a spec-file build with a precision variant; reproducible sealing ---------------------------------

@pytest.fixture(scope="module")
def spec_build(tmp_path_factory, tiny_model, keys):  # noqa: ANN001
    """`bundle build --spec` (one target, fp32 and fp16: two engines and a converted graph)."""
    d = tmp_path_factory.mktemp("specbuild")
    spec = d / "bundle.toml"
    spec.write_text(f"""
[[model]]
name = "tiny"
version = "2.0.0"
path = "{tiny_model}"
targets = ["sm_86"]
precisions = ["fp32", "fp16"]
shapes = ["x:1x3x16x16:2x3x16x16:4x3x16x16"]
backend = "tensorrt-rtx"
""")
    r = run_bundle("build", "--spec", spec, "--out", d / "builds")
    assert r.code == 0, r.err
    return spec, d / "builds" / "tiny-2.0.0"


def test_spec_build_records_the_spec_digest_and_converter(tmp_path, spec_build, keys):
    spec, build_dir = spec_build
    r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", tmp_path,
                   env={"SOURCE_DATE_EPOCH": "1700000000"})
    assert r.code == 0, r.err
    bundle = tmp_path / "tiny-2.0.0.bundle.tar"
    st = _statement(_member(bundle, PROVENANCE))
    manifest = json.loads(_member(bundle, "manifest.json"))
    (b,) = st["predicate"]["buildDefinition"]["externalParameters"]["builds"]
    assert b["spec"] == {"name": "bundle.toml", "sha256": hashlib.sha256(spec.read_bytes()).hexdigest()}
    assert b["precisions"] == ["fp32", "fp16"] and b["targets"] == ["sm_86"]
    assert sorted(s["name"] for s in st["subject"]) == sorted(e["path"] for e in manifest["engines"])
    assert len(st["subject"]) == 2
    conv = [d for d in st["predicate"]["buildDefinition"]["resolvedDependencies"]
            if (d.get("annotations") or {}).get("role") == "converter"]
    (variant,) = manifest["variants"]
    assert [c["annotations"]["converter"] for c in conv] == [variant["converter"]]
    assert conv[0]["uri"].startswith("pkg:pypi/onnxconverter-common@")
    build_json = json.loads((build_dir / "build.json").read_text())
    assert st["predicate"]["runDetails"]["metadata"]["startedOn"] == build_json["provenance"]["started"]
    assert assert_same(bundle, keys["release"]["pub"], code=0)["provenance"]["checked"] is True


def test_sealing_twice_gives_the_same_bytes(tmp_path, spec_build, keys):
    """The provenance's times are the build's (build.json), not the clock at sealing."""
    _, build_dir = spec_build
    outs = []
    for i in range(2):
        time.sleep(1.1 * i)  # a clock read at sealing would differ now
        r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", tmp_path / str(i),
                       env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert r.code == 0, r.err
        outs.append((tmp_path / str(i) / "tiny-2.0.0.bundle.tar").read_bytes())
    assert outs[0] == outs[1]


def test_auditor_steps_with_openssl(tmp_path, tiny_bundle, keys):
    """docs/auditors.md's shell steps, run as written: tar, python3's PAE, openssl, sha256sum."""
    import shutil
    import subprocess

    doc = (Path(__file__).resolve().parent.parent / "docs" / "auditors.md").read_text()
    section = doc[doc.index("## SLSA provenance, checked with independent tools"):]
    script = re.search(r"```sh\n(tar -xOf .*?)```", section, re.S).group(1)
    shutil.copyfile(tiny_bundle, tmp_path / "tiny-1.0.0.bundle.tar")
    shutil.copyfile(keys["release"]["pub"], tmp_path / "release.pub")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "Verified OK" in p.stdout
    assert p.stdout.count(".engine: OK") == 2
    # the same steps with another key fail at openssl
    shutil.copyfile(keys["other"]["pub"], tmp_path / "release.pub")
    shutil.rmtree(tmp_path / "x")
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], cwd=tmp_path, capture_output=True, text=True,
                       timeout=120)
    assert p.returncode != 0 and "Verification failure" in p.stdout + p.stderr
