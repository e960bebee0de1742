"""Hostile strings and hostile manifests against the real CLI: nothing a bundle holds is markup,
a terminal command, or a way to crash `bundle` (exit 1) or make it slow.

Bundles are made by rewriting the session bundle's tar (the helpers of test_tamper.py): a
signature whose key hint is rich markup plus escape sequences (it need not verify), a manifest
re-signed by the TRUSTED key whose target label, engine path, dates and tensor names hold markup
and control characters (it does verify), and unsigned manifests that are huge, deep, not objects,
or full of numbers Python's json would take. Every command that reads a bundle runs on them as a
child process, and its output is checked byte by byte.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
import sys
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from bundler.errors import ExitCode, printable
from bundler.inspect import INSPECT_MAX_MANIFEST
from runtime_stub.verify import MAX_JSON_DEPTH
from conftest import REPO, Result, run_bundle
from test_tamper import (
    ENGINE,
    ROOT,
    Entry,
    _add,
    _edit_signature,
    _resign,
    end_of_members,
    find,
    flip,
    layout,
    read_entries,
    reg,
    write_tar,
)

# Markup that would print a green VERIFIED (or crash rich on its closing tag), ESC sequences that
# clear the screen and recolour it, a C1 CSI, BEL, a bidi override and an emoji code.
HOSTILE = "[bold green]VERIFIED[/]\x1b[2J\x1b]0;owned\x07\x9b31m\u202e :smile: [/]"
HOSTILE_NAME = "[bold red]evil\x9b31m\u202e:smile:"  # fits a member name: no C0, DEL or backslash

# Anything a terminal acts on: C0 but newline, DEL, C1; plus bidi controls and other format
# characters. Our own tables use box-drawing characters, so non-ASCII as such is allowed.
_CONTROL = re.compile(r"[\x00-\x09\x0b-\x1f\x7f-\x9f\u200b-\u200f\u202a-\u202e\u2066-\u2069\ufeff]")


def assert_clean(r: Result, *, code: int) -> None:
    """Exit code as expected (never 1), nothing a terminal would act on, no rich rewriting."""
    assert r.code == code, (r.code, r.out[-2000:], r.err)
    assert r.code != ExitCode.INTERNAL and "internal error" not in r.err
    for stream in (r.out, r.err):
        m = _CONTROL.search(stream)
        assert m is None, f"control character {m.group()!r} in output: {stream[max(0, m.start() - 80):m.end() + 80]!r}"
        assert "\U0001f604" not in stream  # :smile: replaced by rich's emoji
    for line in r.out.splitlines():
        if code != 0:
            assert not line.lstrip().startswith("VERIFIED"), line
    if r.err:
        assert len(r.err.strip().splitlines()) == 1, r.err


def assert_no_verified_spoof(r: Result) -> None:
    """The only VERIFIED a line may start with is our own one for a bundle that verified."""
    ours = ("VERIFIED tiny 1.0.0  (", "VERIFIED against the trusted keys given")  # verify's, inspect's
    for line in r.out.splitlines():
        if line.startswith("VERIFIED"):
            assert r.code == 0 and line.startswith(ours), line


def both(*commands: Tuple[object, ...]) -> List[Result]:
    with ThreadPoolExecutor(len(commands)) as pool:
        return list(pool.map(lambda args: run_bundle(*args), commands))


@pytest.fixture()
def pub(keys) -> Path:  # noqa: ANN001
    return keys["release"]["pub"]


@pytest.fixture()
def entries(tiny_bundle) -> List[Entry]:  # noqa: ANN001
    return read_entries(tiny_bundle)


# -- a signature whose key hint is markup and escape sequences (it does not verify) -----------------

@pytest.fixture()
def hostile_hint(tmp_path, entries) -> Path:  # noqa: ANN001
    _edit_signature(entries, lambda d: d["verificationMaterial"]["publicKey"].update(hint=HOSTILE))
    return write_tar(tmp_path / "hint.tar", entries)


def test_hostile_hint_verify(hostile_hint, pub) -> None:  # noqa: ANN001
    plain, js = both(("verify", hostile_hint, "--trust", pub), ("verify", hostile_hint, "--trust", pub, "--json"))
    for r in (plain, js):
        assert_clean(r, code=ExitCode.SIGNATURE)
        assert r.err.startswith("error [signature]: no signature from a trusted key"), r.err
        assert "[bold green]" not in r.err  # the hint is not a key id: named, never echoed
    assert "signer:  (invalid key hint)  [not checked: key not in the trust policy]" in plain.out
    assert "[bold green]" not in plain.out and "VERIFIED" not in plain.out
    doc = json.loads(js.out)
    assert doc["ok"] is False and doc["exit_code"] == ExitCode.SIGNATURE
    assert doc["signers"][0]["key_id"] == HOSTILE  # the JSON carries it exactly, escaped
    assert "\\u001b[2J" in js.out and js.out.isascii()


@pytest.mark.parametrize("json_mode", [False, True], ids=["plain", "json"])
def test_hostile_hint_extract_leaves_nothing(hostile_hint, pub, tmp_path, json_mode) -> None:  # noqa: ANN001
    parent = tmp_path / "target"
    parent.mkdir()
    r = run_bundle("extract", hostile_hint, "--trust", pub, "--dest", parent / "tiny", *(["--json"] if json_mode else []))
    assert_clean(r, code=ExitCode.SIGNATURE)
    assert os.listdir(parent) == []
    if json_mode:
        assert json.loads(r.out)["extracted_to"] is None


def test_hostile_hint_inspect(hostile_hint, pub) -> None:  # noqa: ANN001
    plain, js, tplain, tjs = both(("inspect", hostile_hint), ("inspect", hostile_hint, "--json"),
                                  ("inspect", hostile_hint, "--trust", pub), ("inspect", hostile_hint, "--trust", pub, "--json"))
    assert_clean(plain, code=0)
    assert_clean(js, code=0)
    assert plain.out.startswith("NOT VERIFIED")
    assert "signer:   (invalid key hint)" in plain.out and "[bold green]" not in plain.out
    assert json.loads(js.out)["signer_key_ids"] == [HOSTILE]
    for r in (tplain, tjs):  # verify's verdict, verify's code
        assert_clean(r, code=ExitCode.SIGNATURE)
        assert r.err.startswith("error [signature]: ")
    doc = json.loads(tjs.out)
    assert doc["ok"] is False and doc["verified"] is False and doc["verification"]["signers"][0]["key_id"] == HOSTILE


# -- a manifest the TRUSTED key signed, with markup and controls in what verify does not constrain --

HOSTILE_ENGINE = f"engines/{HOSTILE_NAME}.engine"


def _hostile_provenance(entries: List[Entry], key: Path) -> bytes:
    """The SLSA provenance re-signed by the trusted key: the renamed engine as its subject (so it
    still binds), markup and escape sequences as its builder id and host."""
    import base64

    from bundler.provenance import PROVENANCE, sign_envelope
    from bundler.signing import load_private_key

    i = find(entries, PROVENANCE)
    st = json.loads(base64.b64decode(json.loads(entries[i][1])["payload"]))
    for sub in st["subject"]:
        if sub["name"] == ENGINE:
            sub["name"] = HOSTILE_ENGINE
    st["predicate"]["runDetails"]["builder"]["id"] = HOSTILE
    st["predicate"]["runDetails"]["metadata"]["trtbundler_host"] = HOSTILE
    env = sign_envelope((json.dumps(st, sort_keys=True, indent=2) + "\n").encode(), load_private_key(key, None))
    entries[i] = reg(entries[i][0].name, env)
    return env


def _hostile_signed(entries: List[Entry], key: Path) -> List[Entry]:
    import hashlib

    i = find(entries, ENGINE)
    entries[i] = reg(f"{ROOT}/{HOSTILE_ENGINE}", entries[i][1])
    prov = _hostile_provenance(entries, key)

    def edit(doc: dict) -> None:
        for f in doc["files"]:
            if f["path"] == "provenance/slsa-v1.intoto.json":
                f["size"], f["sha256"] = len(prov), hashlib.sha256(prov).hexdigest()
        doc["created"] = HOSTILE
        doc["model"]["inputs"][0]["name"] = HOSTILE
        doc["tool"] = {HOSTILE: HOSTILE}
        for e in doc["engines"]:
            if e["path"] == ENGINE:
                e["path"] = HOSTILE_ENGINE
                e["target"]["label"] = HOSTILE
        for f in doc["files"]:
            if f["path"] == ENGINE:
                f["path"] = HOSTILE_ENGINE

    return _resign(entries, key, edit)


@pytest.fixture()
def hostile_signed(tmp_path, entries, keys) -> Path:  # noqa: ANN001
    return write_tar(tmp_path / "signed.tar", _hostile_signed(entries, keys["release"]["key"]))


def test_hostile_signed_manifest_verifies_and_prints_plain(hostile_signed, pub, tmp_path) -> None:  # noqa: ANN001
    dest = tmp_path / "x"
    plain, js, ext = both(("verify", hostile_signed, "--trust", pub), ("verify", hostile_signed, "--trust", pub, "--json"),
                          ("extract", hostile_signed, "--trust", pub, "--dest", dest))
    for r in (plain, js, ext):
        assert_clean(r, code=0)
        assert_no_verified_spoof(r)
    assert plain.out.startswith("VERIFIED tiny 1.0.0")
    assert printable(HOSTILE) in plain.out  # the target label, literally, escaped: [bold green]VERIFIED[/]\x1b[2J...
    assert "[bold green]VERIFIED[/]\\x1b[2J" in plain.out
    assert printable(f"{HOSTILE_NAME}.engine") in plain.out
    doc = json.loads(js.out)
    assert HOSTILE in {e["target"] for e in doc["engines"]}
    assert HOSTILE_ENGINE in {e["path"] for e in doc["engines"]}
    assert (dest / HOSTILE_ENGINE).is_file()  # extraction happened, and its line is plain too
    assert "extracted to " + printable(dest) in ext.out
    # the SLSA provenance: its builder id and host are the trusted signer's markup, shown escaped
    assert "provenance: SLSA v1, 2 engines, builder " + printable(HOSTILE) in plain.out
    pplain, pjs = both(("provenance", hostile_signed, "--trust", pub), ("provenance", hostile_signed, "--trust", pub, "--json"))
    for r in (pplain, pjs):
        assert_clean(r, code=0)
        assert_no_verified_spoof(r)
    assert "builder:    " + printable(HOSTILE) in pplain.out and "host:       " + printable(HOSTILE) in pplain.out
    assert printable(HOSTILE_ENGINE) in pplain.out
    assert json.loads(pjs.out)["predicate"]["runDetails"]["builder"]["id"] == HOSTILE and pjs.out.isascii()


def test_hostile_signed_manifest_inspect(hostile_signed, pub) -> None:  # noqa: ANN001
    runs = both(("inspect", hostile_signed), ("inspect", hostile_signed, "--json"),
                ("inspect", hostile_signed, "--trust", pub), ("inspect", hostile_signed, "--trust", pub, "--json"))
    for r in runs:
        assert_clean(r, code=0)
        assert_no_verified_spoof(r)
    plain, js, tplain, tjs = runs
    for r in (plain, tplain):
        assert printable(HOSTILE) in r.out  # created, label, input name: plain text, escaped
        assert f"created:  {printable(HOSTILE)}" in r.out
        assert printable(f"{HOSTILE_NAME}.engine") in r.out
    assert plain.out.startswith("NOT VERIFIED") and tplain.out.startswith("VERIFIED against the trusted keys given")
    for r in (js, tjs):
        m = json.loads(r.out)["manifest"]
        assert m["created"] == HOSTILE and m["tool"] == {HOSTILE: HOSTILE}
        assert m["model"]["inputs"][0]["name"] == HOSTILE
        assert HOSTILE in {e["target"]["label"] for e in m["engines"]}
        assert r.out.isascii()
    assert json.loads(tjs.out)["verified"] is True and json.loads(tjs.out)["verification"]["ok"] is True


def test_hostile_engine_name_inspect_engine(hostile_signed) -> None:  # noqa: ANN001
    plain, js = both(("inspect-engine", hostile_signed), ("inspect-engine", hostile_signed, "--json"))
    assert_clean(plain, code=0)
    assert_clean(js, code=0)
    assert printable(HOSTILE_ENGINE) in plain.out and "[bold red]evil\\x9b31m\\u202e:smile:" in plain.out
    assert HOSTILE_ENGINE in {e["name"] for e in json.loads(js.out)["engines"]}


@pytest.mark.parametrize("json_mode", [False, True], ids=["plain", "json"])
def test_hostile_member_name_in_an_error_line(tmp_path, entries, keys, pub, json_mode) -> None:  # noqa: ANN001
    """The hostile engine, signed, then changed: the DIGEST error quotes its name. Extraction
    refuses, the line is one escaped line, nothing is left behind."""
    path = write_tar(tmp_path / "flipped.tar", _hostile_signed(entries, keys["release"]["key"]))
    m = layout(path)[HOSTILE_ENGINE]
    flip(path, m.offset_data + m.size // 2)
    parent = tmp_path / "target"
    parent.mkdir()
    flag = ["--json"] if json_mode else []
    v, x = both(("verify", path, "--trust", pub, *flag), ("extract", path, "--trust", pub, "--dest", parent / "t", *flag))
    for r in (v, x):
        assert_clean(r, code=ExitCode.DIGEST)
        assert r.err.startswith(f"error [digest]: {printable(ROOT + '/' + HOSTILE_ENGINE)}: SHA-256 differs"), r.err
        if json_mode:
            assert json.loads(r.out)["error"]["member"] == f"{ROOT}/{HOSTILE_ENGINE}"
    assert os.listdir(parent) == []


def test_hostile_bundle_path(tiny_bundle, pub, tmp_path) -> None:  # noqa: ANN001
    """File names on a stick are input too: the path the operator typed is escaped when shown."""
    path = tmp_path / "x\x1b[31m[bold green]VERIFIED[red]\u202e.tar"  # no "/": it would be a directory
    shutil.copyfile(tiny_bundle, path)
    ok, missing = both(("verify", path, "--trust", pub), ("verify", tmp_path / "no\x1b[2Jsuch.tar", "--trust", pub))
    assert_clean(ok, code=0)
    assert ok.out.startswith("VERIFIED tiny 1.0.0  (") and printable(path) in ok.out
    assert_clean(missing, code=ExitCode.INPUT)
    assert "no\\x1b[2Jsuch.tar: no such bundle file" in missing.err


# -- unsigned hostile manifests: inspect stays cheap and total --------------------------------------

def _with_manifest(entries: List[Entry], raw: bytes) -> List[Entry]:
    i = find(entries, "manifest.json")
    entries[i] = reg(entries[i][0].name, raw)
    return entries


def _measured(*args: object) -> Tuple[Result, float, int]:
    """Run the CLI under a fresh parent that reports its one child's peak RSS (KiB): this
    process's own RUSAGE_CHILDREN already holds the peak of every earlier child (TensorRT builds)."""
    probe = (
        "import resource, subprocess, sys, time\n"
        "t = time.monotonic()\n"
        "p = subprocess.run([sys.executable, '-m', 'bundler.cli', *sys.argv[1:]], capture_output=True, text=True)\n"
        "wall = time.monotonic() - t\n"
        "sys.stderr.write(p.stderr)\n"
        "sys.stdout.write(p.stdout)\n"
        "sys.stderr.write('\\n@@%d %f %d' % (p.returncode, wall, resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss))\n"
    )
    p = subprocess.run([sys.executable, "-c", probe, *map(str, args)], capture_output=True, text=True, timeout=120, cwd=REPO)
    err, _, tail = p.stderr.rpartition("\n@@")
    code, wall, rss = tail.split()
    assert "Traceback" not in err and "Traceback" not in p.stdout, err
    return Result(int(code), p.stdout, err), float(wall), int(rss)


def test_huge_manifest_is_not_parsed(tmp_path, entries) -> None:  # noqa: ANN001
    """16 MiB of `[{},{},...]` (just under verify's own bound, so the old inspect parsed it: ~1 GiB
    and 7 s): noted, skipped by the reader, never held in memory."""
    n = ((16 << 20) - 2) // 3
    raw = b"[" + b"{}," * (n - 1) + b"{}]"
    assert INSPECT_MAX_MANIFEST < len(raw) <= 16 << 20
    path = write_tar(tmp_path / "huge.tar", _with_manifest(entries, raw))
    assert layout(path)["manifest.json"].size == len(raw)  # the member really claims and holds it
    r, wall, rss_kib = _measured("inspect", path, "--json")
    assert_clean(r, code=0)
    doc = json.loads(r.out)
    assert doc["manifest"] is None
    assert any("over the" in n and "no manifest fields are shown" in n for n in doc["notes"]), doc["notes"]
    print(f"huge manifest: inspect --json {wall:.2f} s, peak RSS {rss_kib / 1024:.1f} MiB")
    assert wall < 5, wall
    assert 10 << 10 < rss_kib < 200 << 10, rss_kib  # KiB: a real measurement, and well under 200 MiB


def test_manifest_just_under_the_bound_is_cheap(tmp_path, entries) -> None:  # noqa: ANN001
    """The same shape at just under 1 MiB is parsed, does not fit the schema, and costs little."""
    n = (INSPECT_MAX_MANIFEST - 2) // 3
    raw = b"[" + b"{}," * (n - 1) + b"{}]"
    assert len(raw) <= INSPECT_MAX_MANIFEST
    path = write_tar(tmp_path / "mib.tar", _with_manifest(entries, raw))
    r, wall, rss_kib = _measured("inspect", path, "--json")
    assert_clean(r, code=0)
    doc = json.loads(r.out)
    assert doc["manifest"] is None
    assert any("does not match the manifest schema" in n for n in doc["notes"]), doc["notes"]
    print(f"1 MiB manifest: inspect --json {wall:.2f} s, peak RSS {rss_kib / 1024:.1f} MiB")
    assert wall < 5 and rss_kib < 200 << 10, (wall, rss_kib)


def _real_manifest(entries: List[Entry]) -> dict:
    return json.loads(entries[find(entries, "manifest.json")][1])


def _dup_name(entries: List[Entry]) -> bytes:
    text = json.dumps(_real_manifest(entries))
    return ('{"name": "evil", ' + text[1:]).encode()


BAD_MANIFESTS: Dict[str, Tuple[Callable[[List[Entry]], bytes], str]] = {
    "deep-nesting": (lambda es: b"[" * 100_000 + b"]" * 100_000, f"nested deeper than {MAX_JSON_DEPTH} levels"),
    "deep-in-an-ignored-key": (lambda es: b'{"x": ' + b"[" * 65 + b"]" * 65 + b"}", f"nested deeper than {MAX_JSON_DEPTH}"),
    "array": (lambda es: b"[]", "does not match the manifest schema (manifest.json: expected an object)"),
    "string": (lambda es: b'"x"', "does not match the manifest schema"),
    "number": (lambda es: b"1", "does not match the manifest schema"),
    "huge-integer": (lambda es: b'{"name": 1' + b"0" * 5000 + b"}", "integer of 5001 digits"),
    "41-digit-integer": (lambda es: b'{"size": ' + b"9" * 41 + b"}", "integer of 41 digits"),
    "nan": (lambda es: b'{"name": NaN}', "NaN is not JSON"),
    "infinity": (lambda es: b'{"duration_s": -Infinity}', "-Infinity is not JSON"),
    "float-overflow": (lambda es: b'{"duration_s": 1e999}', "out of range"),
    "duplicate-key": (_dup_name, "duplicate key 'name'"),
    "not-utf8": (lambda es: b'{"name": "\xff"}', "not UTF-8"),
    "truncated": (lambda es: b'{"name": ', "not valid JSON"),
    "wrong-type-deep": (lambda es: json.dumps({**_real_manifest(es), "engines": [{"path": 1}]}).encode(),
                        "manifest.json.engines[0].path: expected a string"),
}


@pytest.mark.parametrize("case", list(BAD_MANIFESTS))
def test_bad_manifest_is_one_note(tmp_path, entries, pub, case) -> None:  # noqa: ANN001
    make, needle = BAD_MANIFESTS[case]
    path = write_tar(tmp_path / f"{case}.tar", _with_manifest(entries, make(entries)))
    plain, js, tjs = both(("inspect", path), ("inspect", path, "--json"), ("inspect", path, "--trust", pub, "--json"))
    assert_clean(plain, code=0)
    assert_clean(js, code=0)
    notes = [line for line in plain.out.splitlines() if line.startswith("note: ")]
    assert len(notes) == 1 and needle in notes[0], plain.out
    assert "no manifest fields are shown" in notes[0]
    assert "name:     ? (no usable manifest" in plain.out
    doc = json.loads(js.out)
    assert doc["manifest"] is None and doc["ok"] is True
    assert [n for n in doc["notes"] if needle in n] == [notes[0][len("note: "):]]
    assert len(doc["members"]) == len(entries)  # the rest of the report is there
    # Unsigned bytes: verification fails on the manifest's digest, and inspect --trust says so.
    assert_clean(tjs, code=ExitCode.DIGEST)
    assert json.loads(tjs.out)["error"]["class"] == "digest"


def test_oversized_signature_is_noted(tmp_path, entries) -> None:  # noqa: ANN001
    i = find(entries, "signature")
    entries[i] = reg(entries[i][0].name, b" " * ((1 << 20) + 1))
    r = run_bundle("inspect", write_tar(tmp_path / "bigsig.tar", entries), "--json")
    assert_clean(r, code=0)
    doc = json.loads(r.out)
    assert doc["signer_key_ids"] == []
    assert any("signature file of 1048577 bytes is over the limit" in n and "not parsed" in n for n in doc["notes"])


# -- inspect --trust reports what verify reports ----------------------------------------------------

def _truncate(p: Path, es: List[Entry]) -> None:
    os.truncate(p, end_of_members(p))


def _flip_engine(p: Path, es: List[Entry]) -> None:
    m = layout(p)[ENGINE]
    flip(p, m.offset_data + m.size // 2)


def _rewrite(change: Callable[[List[Entry]], List[Entry]]) -> Callable[[Path, List[Entry]], None]:
    def f(p: Path, es: List[Entry]) -> None:
        write_tar(p, change(es))
    return f


def _hint(es: List[Entry]) -> List[Entry]:
    _edit_signature(es, lambda d: d["verificationMaterial"]["publicKey"].update(hint=HOSTILE))
    return es


def _big_sig(es: List[Entry]) -> List[Entry]:
    i = find(es, "signature")
    es[i] = reg(es[i][0].name, b" " * ((1 << 20) + 1))
    return es


SAME_VERDICT: Dict[str, Tuple[Callable[[Path, List[Entry]], None], str, int]] = {
    "good": (lambda p, es: None, "release", ExitCode.OK),
    "engine-byte-flipped": (_flip_engine, "release", ExitCode.DIGEST),
    "wrong-key": (lambda p, es: None, "other", ExitCode.SIGNATURE),
    "truncated": (_truncate, "release", ExitCode.ARCHIVE),
    "extra-member": (_rewrite(_add(reg(f"{ROOT}/extra.txt", b"x"))), "release", ExitCode.MEMBERS),
    "hostile-hint": (_rewrite(_hint), "release", ExitCode.SIGNATURE),
    "nested-manifest": (_rewrite(lambda es: _with_manifest(es, b"[" * 100_000)), "release", ExitCode.DIGEST),
    "signature-over-limit": (_rewrite(_big_sig), "release", ExitCode.LIMITS),
    "renamed-top-dir": (_rewrite(lambda es: [reg("tiny-2.0.0/" + ti.name.split("/", 1)[1], d) for ti, d in es]),
                        "release", ExitCode.BINDING),
}


@pytest.mark.parametrize("case", list(SAME_VERDICT))
def test_inspect_trust_has_verify_verdict(bundle_copy, entries, keys, case) -> None:  # noqa: ANN001
    damage, key, code = SAME_VERDICT[case]
    damage(bundle_copy, entries)
    pub = keys[key]["pub"]
    v, i, vj, ij = both(("verify", bundle_copy, "--trust", pub), ("inspect", bundle_copy, "--trust", pub),
                        ("verify", bundle_copy, "--trust", pub, "--json"), ("inspect", bundle_copy, "--trust", pub, "--json"))
    for r in (v, i, vj, ij):
        assert_clean(r, code=code)
        assert_no_verified_spoof(r)
    assert i.err == v.err and ij.err == vj.err  # the same one error line (or none)
    vdoc, idoc = json.loads(vj.out), json.loads(ij.out)
    assert {k: idoc[k] for k in ("ok", "exit_code", "error")} == {k: vdoc[k] for k in ("ok", "exit_code", "error")}
    assert list(idoc)[:3] == ["ok", "exit_code", "error"]
    assert idoc["verified"] is (code == 0) and idoc["verification"] == vdoc
    if code == 0:
        assert i.out.startswith("VERIFIED against the trusted keys given") and idoc["manifest"]["name"] == "tiny"
    else:
        assert i.out == v.out  # the same report on stdout as well
        assert "manifest" not in idoc  # nothing of a bundle that failed is parsed for display
        assert idoc["error"]["class"] == ExitCode(code).name.lower()


def test_the_stdlib_verifier_escapes_what_it_prints(hostile_hint, hostile_signed, pub) -> None:  # noqa: ANN001
    """runtime/verify.py on a closed host: the same display rule as `bundle`, for a hostile key
    hint (refused) and for a signed manifest full of markup and escape sequences (verified)."""
    import subprocess
    import sys

    for bundle, code in ((hostile_hint, 11), (hostile_signed, 0)):
        for extra in ((), ("--json",)):
            p = subprocess.run([sys.executable, "-I", str(REPO / "runtime_stub" / "verify.py"), str(bundle),
                                "--trust", str(pub), *extra], capture_output=True, text=True, timeout=120)
            assert p.returncode == code, p.stderr
            r = Result(p.returncode, p.stdout, p.stderr)
            assert_clean(r, code=code)
            if extra:
                json.loads(p.stdout)
    assert "(invalid key hint)" in subprocess.run(
        [sys.executable, "-I", str(REPO / "runtime_stub" / "verify.py"), str(hostile_hint), "--trust", str(pub)],
        capture_output=True, text=True, timeout=120).stdout
