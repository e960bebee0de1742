"""The signing ledger: every seal and sign appends a hash-chained entry; the chain is checked.

Real builds (TensorRT-RTX, once per module), real keys, real `bundle` subprocesses, a real
ledger file written by concurrent processes. Nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import subprocess
import sys
import tarfile
from pathlib import Path

import pytest

from conftest import REPO, run_bundle

from bundler.ledger import LedgerError, verify_ledger
from runtime_stub.verify import SignatureError, check_ledger, ledger_line, parse_statement

PY38 = Path.home() / ".pyenv" / "versions" / "3.8.18" / "bin" / "python"


@pytest.fixture(scope="module")
def build_dir(tmp_path_factory, tiny_model) -> Path:  # noqa: ANN001
    """One real build directory; every test seals it (sealing is fast, building is not)."""
    out = tmp_path_factory.mktemp("ledger-build") / "b1"
    r = run_bundle("build", tiny_model, "--name", "led", "--version", "1.0.0", "--target", "sm_86",
                   "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--backend", "tensorrt-rtx", "--out", out)
    assert r.code == 0, r.err
    return out


def _entries(path: Path) -> list:
    return [json.loads(line) for line in path.read_bytes().splitlines()]


def _sig_member(bundle: Path, kid: str) -> bytes:
    with tarfile.open(bundle) as tf:
        member = next(m for m in tf.getmembers() if m.name.endswith(f"signatures/{kid}.sig"))
        return tf.extractfile(member).read()


def _statement(sig: bytes) -> dict:
    return json.loads(base64.b64decode(json.loads(sig)["dsseEnvelope"]["payload"]))


def _init(path: Path) -> None:
    r = run_bundle("ledger", "init", path)
    assert r.code == 0, r.err
    assert path.is_file()


def test_init_never_replaces_and_verify_reports_the_head(tmp_path):
    led = tmp_path / "ledger.jsonl"
    _init(led)
    (init,) = _entries(led)
    assert init["event"] == "init" and init["seq"] == 0 and init["format"] == "trt-bundler-ledger/1"
    assert len(init["ledger"]) == 32 and init["prev"] == "0" * 64
    before = led.read_bytes()
    r = run_bundle("ledger", "init", led)
    assert r.code == 6 and "already exists" in r.err and led.read_bytes() == before
    r = run_bundle("ledger", "verify", led, "--json")
    assert r.code == 0, r.err
    doc = r.json()
    assert doc["ok"] and doc["entries"] == 0 and doc["head"]["seq"] == 0
    assert doc["head"]["sha256"] == hashlib.sha256(before.rstrip(b"\n")).hexdigest()
    assert doc["id"] == init["ledger"]
    assert run_bundle("ledger", "verify", env={"BUNDLE_LEDGER": str(led)}).code == 0
    r = run_bundle("ledger", "verify", tmp_path / "nope.jsonl")
    assert r.code == 3 and "bundle ledger init" in r.err


def test_seal_and_sign_append_entries_and_sign_the_head(tmp_path, build_dir, keys):
    led = tmp_path / "ledger.jsonl"
    _init(led)
    r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", tmp_path / "sealed", "--ledger", led)
    assert r.code == 0, r.err
    assert "ledger:  entry 1 " in r.out
    bundle = tmp_path / "sealed" / "led-1.0.0.bundle.tar"
    init, seal = _entries(led)
    head0 = {"id": init["ledger"], "seq": 0, "sha256": hashlib.sha256(led.read_bytes().splitlines()[0]).hexdigest()}
    sig = _sig_member(bundle, keys["release"]["id"])
    st = _statement(sig)
    assert st["predicate"]["ledger"] == head0  # the signed statement records the head it extended
    assert seal["event"] == "seal" and seal["seq"] == 1 and seal["extends"] == head0 and seal["prev"] == head0["sha256"]
    assert seal["key_id"] == keys["release"]["id"] and (seal["name"], seal["version"]) == ("led", "1.0.0")
    assert seal["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest()
    assert seal["signature_sha256"] == hashlib.sha256(sig).hexdigest()
    assert seal["signature"] == f"signatures/{keys['release']['id']}.sig"

    # both verifiers report the recorded head, and accept it (Python 3.8 too)
    v = run_bundle("verify", bundle, "--trust", keys["release"]["pub"], "--json")
    assert v.code == 0, v.err
    rep = v.json()
    assert rep["signers"][0]["ledger"] == head0 and rep["signers"][0]["sha256"] == seal["signature_sha256"]
    assert seal["content_digest"] == rep["content_digest"]
    if PY38.exists():
        p = subprocess.run([str(PY38), "-I", str(REPO / "runtime_stub" / "verify.py"), str(bundle), "--trust",
                            str(keys["release"]["pub"])], capture_output=True, text=True, timeout=120)
        assert p.returncode == 0, p.stderr
        assert "extends ledger entry 0" in p.stdout

    # a countersignature appends a 'sign' entry; the content digest is the same, the tar's is new
    r = run_bundle("sign", bundle, "--key", keys["other"]["key"], "--trust", keys["release"]["pub"], "--in-place",
                   env={"BUNDLE_LEDGER": str(led)})
    assert r.code == 0, r.err
    entries = _entries(led)
    sign = entries[2]
    head1 = {"id": init["ledger"], "seq": 1, "sha256": hashlib.sha256(led.read_bytes().splitlines()[1]).hexdigest()}
    assert sign["event"] == "sign" and sign["extends"] == head1 and sign["key_id"] == keys["other"]["id"]
    assert sign["content_digest"] == seal["content_digest"]
    assert sign["bundle_sha256"] == hashlib.sha256(bundle.read_bytes()).hexdigest() != seal["bundle_sha256"]
    csig = _sig_member(bundle, keys["other"]["id"])
    assert sign["signature_sha256"] == hashlib.sha256(csig).hexdigest()
    assert _statement(csig)["predicate"]["ledger"] == head1
    assert run_bundle("ledger", "verify", led).code == 0


def test_model_signing_accepts_a_signature_with_a_ledger_head(tmp_path, build_dir, keys):
    """predicate.ledger sits where model-signing v1.0 verifiers ignore unknown fields."""
    pytest.importorskip("model_signing")
    led = tmp_path / "ledger.jsonl"
    _init(led)
    assert run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", tmp_path, "--ledger", led).code == 0
    dest = tmp_path / "x"
    assert run_bundle("extract", tmp_path / "led-1.0.0.bundle.tar", "--trust", keys["release"]["pub"],
                      "--dest", dest).code == 0
    sig = dest / "signatures" / f"{keys['release']['id']}.sig"
    assert "ledger" in _statement(sig.read_bytes())["predicate"]
    for pub, ok in ((keys["release"]["pub"], True), (keys["other"]["pub"], False)):
        p = subprocess.run([sys.executable, "-m", "model_signing", "verify", "key", str(dest), "--signature", str(sig),
                            "--public_key", str(pub)], capture_output=True, text=True, timeout=300)
        assert (p.returncode == 0) is ok, p.stdout + p.stderr


def test_no_ledger_no_entry_and_a_missing_ledger_is_refused(tmp_path, build_dir, keys, tiny_model):
    r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", tmp_path / "plain")
    assert r.code == 0 and "ledger:" not in r.out
    assert "ledger" not in _statement(_sig_member(tmp_path / "plain" / "led-1.0.0.bundle.tar",
                                                  keys["release"]["id"]))["predicate"]
    # a ledger that does not exist is never created implicitly: nothing is sealed
    out = tmp_path / "out"
    out.mkdir()
    r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", out, "--ledger", tmp_path / "typo.jsonl")
    assert r.code == 3 and r.err.count("\n") == 1 and "bundle ledger init" in r.err
    assert list(out.iterdir()) == [] and not (tmp_path / "typo.jsonl").exists()
    # create checks the ledger before it builds anything: a typo costs nothing
    r = run_bundle("create", tiny_model, "--name", "led", "--version", "1.0.0", "--target", "sm_86", "--shape",
                   "x:1x3x16x16:2x3x16x16:4x3x16x16", "--key", keys["release"]["key"], "--out", out,
                   env={"BUNDLE_LEDGER": str(tmp_path / "typo.jsonl")})
    assert r.code == 3 and "bundle ledger init" in r.err and "building" not in r.err and list(out.iterdir()) == []


def _ledger_with(tmp_path: Path, build_dir: Path, keys: dict, n: int) -> Path:
    led = tmp_path / "ledger.jsonl"
    _init(led)
    for i in range(n):
        r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", tmp_path / f"s{i}", "--ledger", led)
        assert r.code == 0, r.err
    return led


def test_an_edited_entry_is_named_and_never_extended(tmp_path, build_dir, keys):
    led = _ledger_with(tmp_path, build_dir, keys, 4)
    lines = led.read_bytes().splitlines(keepends=True)
    assert len(lines) == 5 and _entries(led)[4]["extends"]["seq"] == 3
    good = led.read_bytes()
    # a canonical, strictly valid edit of entry 2 (the bundle's name): only the chain shows it
    entry = json.loads(lines[2])
    entry["name"] = "led-evil"
    lines[2] = ledger_line(entry)
    led.write_bytes(b"".join(lines))
    r = run_bundle("ledger", "verify", led)
    assert r.code == 25 and r.err.count("\n") == 1
    assert "error [ledger]:" in r.err and "line 3 (entry 2)" in r.err and "changed" in r.err
    doc = run_bundle("ledger", "verify", led, "--json").json()
    assert doc["exit_code"] == 25 and doc["broken"] == {"seq": 2, "line": 3, "reason": doc["broken"]["reason"]}
    assert doc["entries"] == 1 and doc["head"]["seq"] == 1  # what is still trusted: entries 0 and 1
    # sealing and countersigning refuse to extend it; nothing is written
    before = led.read_bytes()
    out = tmp_path / "refused"
    r = run_bundle("seal", build_dir, "--key", keys["release"]["key"], "--out", out, "--ledger", led)
    assert r.code == 25 and not out.exists() and led.read_bytes() == before
    b0 = tmp_path / "s0" / "led-1.0.0.bundle.tar"
    original = b0.read_bytes()
    r = run_bundle("sign", b0, "--key", keys["other"]["key"], "--trust", keys["release"]["pub"], "--in-place",
                   "--ledger", led)
    assert r.code == 25 and b0.read_bytes() == original and led.read_bytes() == before
    assert [p.name for p in b0.parent.iterdir()] == [b0.name]  # no partial file

    # other breaks, each named at its line
    orig = good.splitlines(keepends=True)
    cases = {
        "removed": (orig[:2] + orig[3:], 3, "numbered 3, expected 2"),
        "duplicate key": (orig[:3] + [orig[3][:-2] + b',"seq":3}\n'] + orig[4:], 4, "duplicate key"),
        "spaces": (orig[:1] + [orig[1].replace(b":", b": ", 1)] + orig[2:], 2, "canonical"),
        "torn write": (orig[:4] + [orig[4][:-40]], 5, "incomplete"),
        "empty": ([], 1, "empty"),
        "init entry removed": (orig[1:], 1, "numbered 1, expected 0"),
        "init entry changed": ([orig[0].replace(b'"user":', b'"user":"x","z":')] + orig[1:], 1, "changed"),
    }
    for what, (content, line, why) in cases.items():  # the library's `ledger verify`, one process
        led.write_bytes(b"".join(content))
        with pytest.raises(LedgerError) as e:
            verify_ledger(led)
        assert int(e.value.code) == 25 and f"line {line} " in e.value.message and why in e.value.message, what
    led.write_bytes(good)
    assert run_bundle("ledger", "verify", led).code == 0


def test_a_cut_off_end_shows_only_against_a_recorded_head(tmp_path, build_dir, keys):
    led = _ledger_with(tmp_path, build_dir, keys, 2)
    head = run_bundle("ledger", "verify", led, "--json").json()["head"]["sha256"]
    assert run_bundle("ledger", "verify", led, "--head", head).code == 0
    lines = led.read_bytes().splitlines(keepends=True)
    led.write_bytes(b"".join(lines[:-1]))  # the last entry removed: the chain still holds
    assert run_bundle("ledger", "verify", led).code == 0
    r = run_bundle("ledger", "verify", led, "--head", head)
    assert r.code == 25 and "no entry has hash" in r.err


_APPENDER = """
import sys
from pathlib import Path
from bundler.ledger import head_for_signing, record_signing
led, tag, n = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3])
for i in range(n):
    head = head_for_signing(led)
    record_signing(led, event="seal", key_id="a" * 64, name=f"w{tag}", version=f"1.0.{i}", bundle_sha256="b" * 64,
                   content_digest="c" * 64, signature="signatures/x.sig", signature_sha256=f"{int(tag):02d}{i:062d}",
                   extends=head, expires=None)
"""


def test_concurrent_appends_keep_the_chain(tmp_path, build_dir, keys):
    """Two writer processes appending at once (the library), then four concurrent `bundle seal`s
    (the CLI): the flock serialises them, every entry is there once, the chain holds."""
    led = tmp_path / "ledger.jsonl"
    _init(led)
    env = dict(os.environ, PYTHONPATH=str(REPO))
    procs = [subprocess.Popen([sys.executable, "-c", _APPENDER, str(led), str(t), "25"], env=env) for t in (1, 2)]
    assert [p.wait(timeout=300) for p in procs] == [0, 0]
    with open(led, "rb") as f:
        chk = check_ledger(f, str(led))
    assert chk.ok and len(chk.entries) == 51
    assert [e.seq for e in chk.entries] == list(range(51))
    assert sorted(e.signature_sha256 for e in chk.entries[1:]) == sorted(
        f"{t:02d}{i:062d}" for t in (1, 2) for i in range(25))
    # overlapping signings: each records the head it saw, never a later one
    assert all(e.extends.seq < e.seq for e in chk.entries[1:])

    cmds = [[sys.executable, "-m", "bundler.cli", "seal", str(build_dir), "--key", str(keys["release"]["key"]),
             "--out", str(tmp_path / f"c{i}"), "--ledger", str(led)] for i in range(4)]
    procs = [subprocess.Popen(c, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE) for c in cmds]
    assert [p.wait(timeout=300) for p in procs] == [0, 0, 0, 0]
    assert run_bundle("ledger", "verify", led).code == 0
    entries = _entries(led)
    assert len(entries) == 55
    sealed = {hashlib.sha256((tmp_path / f"c{i}" / "led-1.0.0.bundle.tar").read_bytes()).hexdigest() for i in range(4)}
    assert {e["bundle_sha256"] for e in entries[51:]} == sealed


def test_a_malformed_signed_ledger_head_is_a_malformed_statement():
    """predicate.ledger is typed like predicate.expires: one form, or the statement is refused."""
    base = {"_type": "https://in-toto.io/Statement/v1", "predicateType": "https://model_signing/signature/v1.0",
            "subject": [{"name": "t-1.0.0",
                         "digest": {"sha256": "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855"}}],
            "predicate": {"resources": [], "serialization": {"method": "files", "hash_type": "sha256"}}}
    good = {"id": "0" * 32, "seq": 3, "sha256": "f" * 64}
    st = parse_statement(json.dumps(dict(base, predicate=dict(base["predicate"], ledger=good))).encode(), "x.sig")
    assert (st.ledger.id, st.ledger.seq, st.ledger.sha256) == ("0" * 32, 3, "f" * 64)
    for bad in (None, "head", {"id": "0" * 32, "seq": -1, "sha256": "f" * 64}, {"id": "0" * 32, "seq": True,
                "sha256": "f" * 64}, {"id": "0" * 31, "seq": 1, "sha256": "f" * 64},
                {"id": "0" * 32, "seq": 1, "sha256": "F" * 64}, {"id": "0" * 32, "seq": 1}):
        with pytest.raises(SignatureError, match="signed statement is malformed"):
            parse_statement(json.dumps(dict(base, predicate=dict(base["predicate"], ledger=bad))).encode(), "x.sig")
