"""Trust policies: whose signatures count, how many, for which bundles (docs/trust-policy.md).

Real keys made by `bundle keys generate`, a real bundle, real countersignatures, and the same
verdicts from `bundle verify` and from the stdlib `verify.py` under Python 3.8.
"""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path
from typing import List, Optional

import pytest

from conftest import REPO, run_bundle
from test_tamper import read_entries, reg, write_tar

PY38 = sorted(Path.home().glob(".pyenv/versions/3.8*/bin/python"))
VERIFY = REPO / "runtime_stub" / "verify.py"


def _id(pub: Path) -> str:
    r = run_bundle("keys", "id", pub)
    assert r.code == 0, r.err
    return r.out.strip()


@pytest.fixture(scope="module")
def third(tmp_path_factory) -> dict:  # noqa: ANN001
    d = tmp_path_factory.mktemp("third")
    r = run_bundle("keys", "generate", "third", "--dir", d, "--no-passphrase")
    assert r.code == 0, r.err
    return {"key": d / "third.key", "pub": d / "third.pub", "id": r.out.strip()}


def policy(path: Path, keys: List[dict], rules: List[dict], *, version: int = 1, revoked: Optional[list] = None,
           signers: Optional[dict] = None, windows: Optional[dict] = None) -> Path:
    doc = {
        "format": "trt-bundler-policy/1",
        "version": version,
        "keys": [dict({"id": k["id"], "name": k["name"], "path": str(k["pub"])}, **(windows or {}).get(k["name"], {}))
                 for k in keys],
        "revoked": revoked or [],
        "rules": rules,
    }
    if signers is not None:
        doc["policy_signers"] = signers
    path.write_text(json.dumps(doc, indent=2))
    return path


def verify_both(bundle: Path, pol: Path, *extra: str) -> tuple:
    """`bundle verify --policy` and `python3.8 -I verify.py --policy`: the same exit code."""
    r = run_bundle("verify", bundle, "--policy", pol, "--json", *extra)
    py = PY38[0] if PY38 else Path(sys.executable)
    p = subprocess.run([str(py), "-I", str(VERIFY), str(bundle), "--policy", str(pol), "--json", *extra],
                       capture_output=True, text=True, timeout=120)
    assert "Traceback" not in p.stderr, p.stderr
    assert p.returncode == r.code, (r.err, p.stderr)
    doc = json.loads(r.out)
    assert json.loads(p.stdout)["ok"] == doc["ok"]
    return r, doc


def add_signature(bundle: Path, out: Path, sig_name: str, data: bytes) -> Path:
    """A bundle with one more signature file, right after the existing ones (hand-made: what a
    second signer's tool, or an attacker, could write)."""
    entries = read_entries(bundle)
    root = entries[0][0].name.split("/")[0]
    last_sig = max(i for i, (ti, _) in enumerate(entries) if ti.name.startswith(f"{root}/signatures/"))
    entries.insert(last_sig + 1, reg(f"{root}/signatures/{sig_name}", data))
    return write_tar(out, entries)


def countersign(bundle: Path, out: Path, key: Path, trust: Path) -> Path:
    """A second signer's `bundle sign`: it verifies the bundle (against the first signer's key)
    and adds its own signature file, changing no other member."""
    d = out.parent / (out.stem + "-signed")
    r = run_bundle("sign", bundle, "--key", key, "--trust", trust, "--out", d)
    assert r.code == 0, r.err
    (signed,) = d.glob("*.bundle.tar")
    return signed


@pytest.fixture(scope="module")
def people(keys, third) -> List[dict]:  # noqa: ANN001
    return [dict(keys["release"], name="release CI"), dict(keys["other"], name="security officer"),
            dict(third, name="second officer")]


def test_two_of_three_met_and_not_met(tmp_path, tiny_bundle, people):
    pol = policy(tmp_path / "p.json", people, [{"bundles": "tiny*", "keys": [p["id"] for p in people], "threshold": 2}])
    r, doc = verify_both(tiny_bundle, pol)
    assert r.code == 11, r.err
    assert "1 of the 2 signatures required for 'tiny' (rule 'tiny*') counted" in r.err
    two = countersign(tiny_bundle, tmp_path / "two.tar", people[1]["key"], people[0]["pub"])
    r, doc = verify_both(two, pol)
    assert r.code == 0, r.err
    assert [s["counted"] for s in doc["signers"]] == [True, True]
    assert {s["name"] for s in doc["signers"]} == {"release CI", "security officer"}
    assert doc["policy"]["threshold"] == 2 and len(doc["policy"]["counted"]) == 2
    human = run_bundle("verify", two, "--policy", pol)
    assert "(security officer)  [valid, counted]" in human.out
    assert "policy:  " in human.out and "2 of 2 required signatures counted" in human.out


def test_revoked_key_never_counts(tmp_path, tiny_bundle, people):
    pol = policy(tmp_path / "p.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 1}],
                 revoked=[{"id": people[0]["id"], "reason": "laptop stolen", "date": "2026-11-01"}])
    r, _ = verify_both(tiny_bundle, pol)
    assert r.code == 11 and "key revoked on 2026-11-01: laptop stolen" in r.err, r.err


@pytest.mark.parametrize("window, why", [
    ({"not_after": "2020-01-01"}, "key expired after 2020-01-01"),
    ({"not_before": "2099-01-01T00:00:00Z"}, "key not valid before 2099-01-01T00:00:00Z"),
])
def test_key_outside_its_validity_window(tmp_path, tiny_bundle, people, window, why):
    pol = policy(tmp_path / "p.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 1}],
                 windows={"release CI": window})
    r, doc = verify_both(tiny_bundle, pol)
    assert r.code == 11 and why in r.err, r.err
    assert doc["signers"][0]["reason"] == why and doc["signers"][0]["counted"] is False


def test_key_not_allowed_for_this_bundle_name(tmp_path, tiny_bundle, people):
    pol = policy(tmp_path / "p.json", people, [
        {"bundles": "det-*", "keys": [people[0]["id"]], "threshold": 1},
        {"bundles": "*", "keys": [people[1]["id"]], "threshold": 1},
    ])
    r, _ = verify_both(tiny_bundle, pol)
    assert r.code == 11 and "key not allowed to sign 'tiny' (rule '*')" in r.err, r.err
    pol = policy(tmp_path / "q.json", people, [{"bundles": "det-*", "keys": ["*"], "threshold": 1}])
    r, _ = verify_both(tiny_bundle, pol)
    assert r.code == 11 and "has no rule for bundles named 'tiny'" in r.err, r.err


def test_the_same_key_twice_counts_once(tmp_path, tiny_bundle, people):
    entries = read_entries(tiny_bundle)
    sig = next(d for ti, d in entries if "/signatures/" in ti.name)
    dup = add_signature(tiny_bundle, tmp_path / "dup.tar", "zz-copy.sig", sig)
    pol = policy(tmp_path / "p.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 2}])
    r, _ = verify_both(dup, pol)
    assert r.code == 11 and "the same key signed twice: counted once" in r.err, r.err


def test_an_invalid_signature_is_reported_and_never_counted(tmp_path, tiny_bundle, people):
    two = countersign(tiny_bundle, tmp_path / "two.tar", people[1]["key"], people[0]["pub"])
    entries = read_entries(two)
    i = [k for k, (ti, _) in enumerate(entries) if "/signatures/" in ti.name][1]
    doc = json.loads(entries[i][1])
    sig = bytearray(__import__("base64").b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
    sig[-1] ^= 1
    doc["dsseEnvelope"]["signatures"][0]["sig"] = __import__("base64").b64encode(bytes(sig)).decode()
    entries[i] = reg(entries[i][0].name, json.dumps(doc).encode())
    bad = write_tar(tmp_path / "bad.tar", entries)
    one = policy(tmp_path / "one.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 1}])
    r, doc = verify_both(bad, one)
    assert r.code == 0, r.err
    assert [(s["valid"], s["counted"]) for s in doc["signers"]] == [(True, True), (False, False)]
    human = run_bundle("verify", bad, "--policy", one)
    assert "[INVALID, not counted: signature does not verify under trusted key" in human.out
    two_needed = policy(tmp_path / "two.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 2}])
    r, _ = verify_both(bad, two_needed)
    assert r.code == 11 and "1 of the 2 signatures required" in r.err


def test_policy_files_are_checked_and_exclusive_with_trust(tmp_path, tiny_bundle, keys, people, monkeypatch):
    good = policy(tmp_path / "p.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 1}])
    r = run_bundle("verify", tiny_bundle, "--policy", good, "--trust", keys["release"]["pub"])
    assert r.code == 2 and "--policy and --trust are exclusive" in r.err
    r = run_bundle("verify", tiny_bundle, env={"BUNDLE_POLICY": str(good)})
    assert r.code == 0, r.err
    cases = {
        "not json": (b"{", "not a trust policy"),
        "mismatch": (json.dumps({"format": "trt-bundler-policy/1", "version": 1, "rules": [{"bundles": "*", "keys": ["*"], "threshold": 1}],
                                 "keys": [{"id": people[1]["id"], "name": "x", "path": str(people[0]["pub"])}]}).encode(),
                     "its PEM has id"),
        "threshold": (json.dumps({"format": "trt-bundler-policy/1", "version": 1, "rules": [{"bundles": "*", "keys": ["*"], "threshold": 3}],
                                  "keys": [{"id": people[0]["id"], "name": "x", "path": str(people[0]["pub"])}]}).encode(),
                      "threshold 3 of 1 keys can never be met"),
        "unknown key": (json.dumps({"format": "trt-bundler-policy/1", "version": 1, "rules": [{"bundles": "*", "keys": ["ab" * 32], "threshold": 1}],
                                    "keys": [{"id": people[0]["id"], "name": "x", "path": str(people[0]["pub"])}]}).encode(),
                        "which the policy does not list"),
    }
    for name, (data, want) in cases.items():
        p = tmp_path / f"{name.replace(' ', '_')}.json"
        p.write_bytes(data)
        r = run_bundle("verify", tiny_bundle, "--policy", p)
        assert r.code == 4 and want in r.err, (name, r.err)
        assert len(r.err.strip().splitlines()) == 1


def test_bundle_run_and_the_loader_verify_under_the_policy(tmp_path, tiny_bundle, people):
    ok = policy(tmp_path / "ok.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 1}])
    r = run_bundle("run", tiny_bundle, "--policy", ok, "--", "info", "--json")
    assert r.code == 0, r.err
    assert json.loads(r.out)["verified"] is True
    strict = policy(tmp_path / "two.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 2}])
    r = run_bundle("run", tiny_bundle, "--policy", strict, "--", "info")
    assert r.code == 11 and "1 of the 2 signatures required" in r.err
    x = tmp_path / "x"
    assert run_bundle("extract", tiny_bundle, "--policy", ok, "--dest", x).code == 0
    p = subprocess.run([sys.executable, "-I", str(x / "runtime" / "loader.py"), "info", "--policy", str(strict)],
                       capture_output=True, text=True, timeout=120)
    assert p.returncode == 11 and "1 of the 2 signatures required" in p.stderr, p.stderr


def test_policy_rotation_chain_and_a_forged_successor(tmp_path, people):
    officers = {"keys": [people[1]["id"], people[2]["id"]], "threshold": 2}
    p1 = policy(tmp_path / "p1.json", people, [{"bundles": "*", "keys": [people[0]["id"]], "threshold": 1}], signers=officers)
    p2 = policy(tmp_path / "p2.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 2}], version=2, signers=officers)
    r = run_bundle("policy", "update", p1, p2, "--key", people[1]["key"])
    assert r.code == 0 and "1 of the 2 policy signers required (needs more signers)" in r.out, r.err
    r = run_bundle("policy", "verify", p1, p2)
    assert r.code == 11 and "signed by 1 of the 2 policy signers" in r.err
    r = run_bundle("policy", "update", p1, p2, "--key", people[2]["key"])
    assert r.code == 0 and "2 of the 2 policy signers required (ready" in r.out, r.err
    r = run_bundle("policy", "verify", p1, p2)
    assert r.code == 0 and "version 2" in r.out, r.err
    # the release key is not a policy signer: it cannot sign a successor
    p3 = policy(tmp_path / "p3.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 1}], version=3, signers=officers)
    r = run_bundle("policy", "update", p2, p3, "--key", people[0]["key"])
    assert r.code == 4 and "is not one of the policy signers" in r.err
    # a forged successor: signatures copied from p2 onto a changed policy do not verify
    forged = json.loads(p2.read_text())
    forged["version"] = 3
    forged["rules"] = [{"bundles": "*", "keys": [people[0]["id"]], "threshold": 1}]
    (tmp_path / "forged.json").write_text(json.dumps(forged))
    r = run_bundle("policy", "verify", p2, tmp_path / "forged.json")
    assert r.code == 11 and "signed by 0 of the 2 policy signers" in r.err
    # rewinding: p1 cannot follow p2
    r = run_bundle("policy", "verify", p2, p1)
    assert r.code == 11 and "is not newer than" in r.err
    # the stdlib verifier accepts the same chain (closed hosts have no bundler)
    py = str(PY38[0]) if PY38 else sys.executable
    code = ("import sys; sys.path.insert(0, sys.argv[1]); import verify as v;"
            "print(v.verify_policy_update(v.load_policy(v.Path(sys.argv[2])), v.load_policy(v.Path(sys.argv[3]))))")
    p = subprocess.run([py, "-c", code, str(VERIFY.parent), str(p1), str(p2)], capture_output=True, text=True)
    assert p.returncode == 0 and people[1]["id"] in p.stdout, p.stderr


def test_key_rotation_statement(tmp_path, people, third):
    out = tmp_path / "rot.json"
    r = run_bundle("keys", "rotate", people[0]["key"], "--new", third["pub"], "--out", out)
    assert r.code == 0, r.err
    r = run_bundle("keys", "verify-rotation", out)
    assert r.code == 0 and f"{people[0]['id']} -> {third['id']}" in r.out, r.err
    doc = json.loads(out.read_text())
    doc["new"], doc["new_pem"] = people[1]["id"], Path(people[1]["pub"]).read_text()
    (tmp_path / "forged.json").write_text(json.dumps(doc))
    r = run_bundle("keys", "verify-rotation", tmp_path / "forged.json")
    assert r.code == 11 and "no valid signature by the old key" in r.err
    r = run_bundle("keys", "rotate", people[0]["key"], "--new", third["pub"], "--out", out)
    assert r.code == 6  # never overwritten


def test_the_shipped_example_policy_parses_and_holds_no_private_key():
    from runtime_stub.verify import load_policy

    p = load_policy(REPO / "keys" / "trust.example.json")
    assert p.version == 1 and len(p.keys) == 3 and p.signers is not None and p.signers.threshold == 2
    assert [r.bundles for r in p.rules] == ["detector-*", "*"]
    # what the repository ships under keys/ (keys/local/, where the Quickstart puts a demo pair,
    # is ignored by git and never shipped)
    shipped = subprocess.run(["git", "-C", str(REPO), "ls-files", "keys"], capture_output=True, text=True).stdout.split()
    assert "keys/trust.example.json" in shipped
    for f in shipped:
        assert b"PRIVATE KEY" not in (REPO / f).read_bytes(), f


def test_the_library_api_takes_a_policy_and_a_host_state(tmp_path, tiny_bundle, people):
    """What the CLI does with --policy and --state, from Python: the same verdicts and records."""
    from bundler import api

    pol = api.load_policy(policy(tmp_path / "p.json", people, [{"bundles": "*", "keys": ["*"], "threshold": 2}]))
    rep = api.verify(tiny_bundle, pol)
    assert not rep.ok and rep.exit_code == 11 and "1 of the 2 signatures required" in rep.error.message
    one = api.load_policy(policy(tmp_path / "q.json", people, [{"bundles": "tiny", "keys": ["*"], "threshold": 1}]))
    state = api.state_options(str(tmp_path / "state.json"))
    rep = api.extract(tiny_bundle, one, tmp_path / "x", state=state)
    assert rep.ok and rep.policy.counted == [people[0]["id"]], rep.error
    assert state.record is False  # the caller's options are not changed
    saved = json.loads((tmp_path / "state.json").read_text())
    assert saved["bundles"]["tiny"]["version"] == "1.0.0"
    assert saved["bundles"]["tiny"]["content_digest"] == rep.content_digest
