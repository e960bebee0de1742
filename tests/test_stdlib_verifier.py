"""The stdlib-only verifier (runtime_stub/verify.py, shipped as runtime/verify.py in every bundle).

It must run where nothing but Python is installed, and it must agree with `bundle verify` on every
bundle, good or bad. So: it runs here in an empty virtual environment with ``python -I``; a
differential suite feeds the same tampered bundles to both and compares exit codes, failure
classes and whole JSON reports; signatures made by `cryptography` and by `model_signing` are
accepted; its P-256 code is checked against `cryptography`; and its source is checked to import
only the standard library and to parse as Python 3.8.
"""

from __future__ import annotations

import ast
import base64
import glob
import hashlib
import importlib.util
import io
import json
import os
import random
import shutil
import subprocess
import sys
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest
from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec
from cryptography.hazmat.primitives.asymmetric.utils import decode_dss_signature, encode_dss_signature

from bundler.signing import key_id, load_private_key, make_statement, sign_statement
from conftest import REPO, make_conv_model, run_bundle

VERIFIER = REPO / "runtime_stub" / "verify.py"
ROOT = "tiny-1.0.0"
P256_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551

Entry = Tuple[tarfile.TarInfo, bytes]


# -- running the verifier -----------------------------------------------------------------------

class Run:
    def __init__(self, code: int, out: str, err: str) -> None:
        self.code, self.out, self.err = code, out, err

    def json(self) -> dict:
        return json.loads(self.out)


def stdlib_verify(target: Path, *trust: Path, python: str = sys.executable, script: Path = VERIFIER,
                  json_mode: bool = True, extra: Tuple[str, ...] = ()) -> Run:
    args = [python, "-I", str(script), str(target)]
    for t in trust:
        args += ["--trust", str(t)]
    if json_mode:
        args.append("--json")
    p = subprocess.run(args + list(extra), capture_output=True, text=True, timeout=300, cwd="/")
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    return Run(p.returncode, p.stdout, p.stderr)


def both(target: Path, *trust: Path) -> Tuple[Run, Run]:
    """`bundle verify --json` and the stdlib verifier on the same input, side by side."""
    lib_args: List[object] = ["verify", target]
    for t in trust:
        lib_args += ["--trust", t]
    with ThreadPoolExecutor(2) as pool:
        lib_f = pool.submit(run_bundle, *lib_args, "--json")
        ours_f = pool.submit(stdlib_verify, target, *trust)
        lib, ours = lib_f.result(), ours_f.result()
    return Run(lib.code, lib.out, lib.err), ours


def assert_same(target: Path, *trust: Path, code: Optional[int] = None) -> dict:
    """Both verifiers give the same exit code, failure class and JSON report; returns it."""
    lib, ours = both(target, *trust)
    lrep, orep = lib.json(), ours.json()
    assert (ours.code, (orep.get("error") or {}).get("class")) == (lib.code, (lrep.get("error") or {}).get("class")), (
        f"library: {lib.code} {lib.err.strip()}\nstdlib:  {ours.code} {ours.err.strip()}"
    )
    if code is not None:
        assert lib.code == code, lib.err
    assert orep == lrep  # the whole report: message, member, files, signers, engines, host
    if ours.code:
        err_lines = ours.err.strip().splitlines()
        assert len(err_lines) == 1 and err_lines[0].startswith(f"error [{orep['error']['class']}]: "), ours.err
    return orep


# -- tamper helpers (our own: tests/test_tamper.py is someone else's and may change) ---------------

def read_entries(path: Path) -> List[Entry]:
    out = []
    with tarfile.open(path) as tf:
        for ti in tf.getmembers():
            data = tf.extractfile(ti).read() if ti.isfile() else b""
            out.append((ti, data))
    return out


def reg(name: str, data: bytes, mode: int = 0o644) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime = len(data), mode, 1700000000
    return ti, data


def special(name: str, kind: bytes, linkname: str = "") -> Entry:
    ti = tarfile.TarInfo(name)
    ti.type, ti.linkname, ti.mtime = kind, linkname, 1700000000
    return ti, b""


def write_tar(path: Path, entries: List[Entry]) -> Path:
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for ti, data in entries:
            ti = _copy(ti)
            ti.size = len(data) if ti.type in (tarfile.REGTYPE, tarfile.AREGTYPE) else 0
            tf.addfile(ti, io.BytesIO(data) if ti.size else None)
    return path


def _copy(ti: tarfile.TarInfo) -> tarfile.TarInfo:
    c = tarfile.TarInfo(ti.name)
    for a in ("size", "mode", "mtime", "type", "linkname", "uid", "gid", "uname", "gname", "devmajor", "devminor"):
        setattr(c, a, getattr(ti, a))
    c.pax_headers = dict(ti.pax_headers)
    return c


def find(entries: List[Entry], rel: str) -> int:
    for i, (ti, _) in enumerate(entries):
        if ti.name == f"{ROOT}/{rel}":
            return i
    raise KeyError(rel)


def sig_index(entries: List[Entry]) -> int:
    return next(i for i, (ti, _) in enumerate(entries) if ti.name.split("/")[1:2] == ["signatures"])


def flip(path: Path, offset: int, mask: int = 0x01) -> Path:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))
    return path


def data_offsets(path: Path) -> Dict[str, Tuple[int, int, int]]:
    """member name -> (header offset, data offset, size)."""
    with tarfile.open(path) as tf:
        return {ti.name: (ti.offset, ti.offset_data, ti.size) for ti in tf.getmembers()}


def resign(entries: List[Entry], key_path: Path, *, subject: str = ROOT,
           edit_manifest: Optional[Callable[[dict], None]] = None,
           edit_sums: Optional[Callable[[bytes], bytes]] = None,
           edit_statement: Optional[Callable[[dict], None]] = None) -> List[Entry]:
    """Edit manifest/SHA256SUMS/statement, then re-sign everything with a (trusted) key."""
    entries = list(entries)
    mi, si, gi = find(entries, "manifest.json"), find(entries, "SHA256SUMS"), sig_index(entries)
    if edit_manifest is not None:
        m = json.loads(entries[mi][1])
        edit_manifest(m)
        entries[mi] = (entries[mi][0], (json.dumps(m, sort_keys=True, indent=2) + "\n").encode())
    resources = {ti.name[len(ROOT) + 1:]: hashlib.sha256(d).hexdigest() for ti, d in entries
                 if ti.isfile() and not ti.name.startswith(f"{ROOT}/signatures/")}
    sums = "".join(f"{d}  {p}\n" for p, d in resources.items() if p != "SHA256SUMS").encode()
    if edit_sums is not None:
        sums = edit_sums(sums)
    entries[si] = (entries[si][0], sums)
    resources["SHA256SUMS"] = hashlib.sha256(sums).hexdigest()
    statement = make_statement(subject, resources)
    if edit_statement is not None:
        st = json.loads(statement)
        edit_statement(st)
        statement = json.dumps(st).encode()
    entries[gi] = (entries[gi][0], sign_statement(statement, load_private_key(key_path, None)))
    return entries


def edit_sig(entries: List[Entry], edit: Callable[[dict], None]) -> List[Entry]:
    entries = list(entries)
    gi = sig_index(entries)
    doc = json.loads(entries[gi][1])
    edit(doc)
    entries[gi] = (entries[gi][0], json.dumps(doc, indent=2).encode())
    return entries


def tweak_rs(doc: dict, which: str, how: Callable[[int], int]) -> None:
    sig = doc["dsseEnvelope"]["signatures"][0]
    r, s = decode_dss_signature(base64.b64decode(sig["sig"]))
    r, s = (how(r), s) if which == "r" else (r, how(s))
    sig["sig"] = base64.b64encode(encode_dss_signature(r, s)).decode()


def load_stdlib_module():  # noqa: ANN201
    spec = importlib.util.spec_from_file_location("stdlib_verify_under_test", VERIFIER)
    mod = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = mod  # dataclasses look their module up
    spec.loader.exec_module(mod)
    return mod


# -- fixtures -----------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def empty_python(tmp_path_factory) -> str:  # noqa: ANN001
    """An empty virtual environment: no pip, no site packages, nothing of ours."""
    d = tmp_path_factory.mktemp("emptyvenv") / "venv"
    subprocess.run([sys.executable, "-m", "venv", "--without-pip", str(d)], check=True, timeout=120)
    py = str(d / "bin" / "python")
    probe = subprocess.run([py, "-I", "-c", "import cryptography"], capture_output=True, text=True)
    assert probe.returncode != 0 and "ModuleNotFoundError" in probe.stderr  # really empty
    probe = subprocess.run([py, "-I", "-c", "import bundler"], capture_output=True, text=True, cwd="/")
    assert probe.returncode != 0
    return py


@pytest.fixture(scope="module")
def extracted(tmp_path_factory, tiny_bundle, keys) -> Path:  # noqa: ANN001
    dest = tmp_path_factory.mktemp("extracted") / ROOT
    r = run_bundle("extract", tiny_bundle, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    return dest


@pytest.fixture()
def ext_copy(tmp_path, extracted) -> Path:  # noqa: ANN001
    dst = tmp_path / ROOT
    shutil.copytree(extracted, dst)
    return dst


@pytest.fixture(scope="module")
def entries(tiny_bundle) -> List[Entry]:  # noqa: ANN001
    return read_entries(tiny_bundle)


@pytest.fixture(scope="module")
def other_bundles(tmp_path_factory, keys) -> Dict[str, Path]:  # noqa: ANN001
    """Two more real bundles by the same trusted key: the next version, and the same name-version
    built for another target (a different set of files under the same subject)."""
    model = make_conv_model(tmp_path_factory.mktemp("m2") / "tiny.onnx")
    out = {}
    for label, version, target in (("next", "1.0.1", "sm_86"), ("same-name", "1.0.0", "sm_89")):
        d = tmp_path_factory.mktemp(label)
        r = run_bundle("create", model, "--name", "tiny", "--version", version, "--target", target,
                       "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--key", keys["release"]["key"],
                       "--out", d, "--backend", "tensorrt-rtx", "--no-golden", env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert r.code == 0, r.err
        out[label] = d / f"tiny-{version}.bundle.tar"
    return out


def other_pythons() -> List[str]:
    """Other CPython interpreters on this machine (3.8 first): the verifier must run on all."""
    found = []
    for v in ("3.8", "3.9", "3.10", "3.12", "3.13"):
        cands = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{v}.*/bin/python{v}"))) + [shutil.which(f"python{v}")]
        for c in cands:
            if c and os.access(c, os.X_OK) and subprocess.run([c, "-c", "pass"], capture_output=True).returncode == 0:
                found.append(c)
                break
    return found


# == (a) an empty environment, the copy inside a real bundle, the extracted directory ==========

def test_bundle_carries_this_verifier(extracted):
    shipped = extracted / "runtime" / "verify.py"
    assert shipped.read_bytes() == VERIFIER.read_bytes()
    assert os.stat(shipped).st_mode & 0o111  # sealed with mode 0755
    assert shipped.read_bytes().startswith(b"#!/usr/bin/env python3\n")


@pytest.mark.parametrize("which", ["inside-bundle", "repo"])
def test_good_bundle_in_empty_venv(empty_python, extracted, tiny_bundle, keys, which):
    script = extracted / "runtime" / "verify.py" if which == "inside-bundle" else VERIFIER
    pub = keys["release"]["pub"]
    r = stdlib_verify(tiny_bundle, pub, python=empty_python, script=script)
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["ok"] is True and rep["exit_code"] == 0 and rep["error"] is None
    assert rep["sha256"] == hashlib.sha256(tiny_bundle.read_bytes()).hexdigest()
    assert (rep["root"], rep["name"], rep["version"]) == (ROOT, "tiny", "1.0.0")
    assert [(s["key_id"], s["trusted"], s["valid"], s["trust_source"]) for s in rep["signers"]] == [
        (keys["release"]["id"], True, True, str(pub))]
    assert rep["files"] and {f["status"] for f in rep["files"]} == {"ok"}
    assert {e["target"] for e in rep["engines"]} == {"sm86", "rtx5090"} and all(e["header_ok"] for e in rep["engines"])
    # no TensorRT in an empty environment: reported, not a failure
    assert rep["host"]["runtimes"] == {} and all(e["runnable_here"] is False for e in rep["engines"])
    # the extracted directory, with the same checks and the same file list
    d = stdlib_verify(extracted, pub, python=empty_python, script=script)
    assert d.code == 0, d.err
    drep = d.json()
    assert drep["ok"] and drep["root"] == ROOT and drep["sha256"] is None
    assert drep["files"] == rep["files"] and drep["signers"] == rep["signers"] and drep["engines"] == rep["engines"]
    # human output
    h = stdlib_verify(tiny_bundle, pub, python=empty_python, script=script, json_mode=False)
    assert h.code == 0 and h.out.startswith("VERIFIED tiny 1.0.0") and keys["release"]["id"] in h.out
    assert f"files:   {len(rep['files'])}/{len(rep['files'])} match" in h.out
    # and a refusal, in the same environment
    bad = stdlib_verify(tiny_bundle, keys["other"]["pub"], python=empty_python, script=script, json_mode=False)
    assert bad.code == 11 and bad.err.startswith("error [signature]: no signature from a trusted key") and "VERIFIED" not in bad.out


@pytest.mark.parametrize("python", other_pythons() or [pytest.param(None, marks=pytest.mark.skip("no other Python found"))])
def test_other_python_versions(python, tmp_path, tiny_bundle, extracted, keys):
    """Really run it on the oldest supported Python (and others), isolated (-I, fresh venv)."""
    venv = tmp_path / "venv"
    subprocess.run([python, "-m", "venv", "--without-pip", str(venv)], check=True, timeout=120)
    py = str(venv / "bin" / "python")
    for target in (tiny_bundle, extracted):
        r = stdlib_verify(target, keys["release"]["pub"], python=py)
        assert r.code == 0, (python, r.err)
        assert r.json()["ok"] is True
    r = stdlib_verify(tiny_bundle, keys["other"]["pub"], python=py)
    assert r.code == 11 and r.json()["error"]["class"] == "signature"


def test_report_equals_library_report(tiny_bundle, keys):
    rep = assert_same(tiny_bundle, keys["release"]["pub"], code=0)
    assert rep["ok"] is True
    # several --trust, a later duplicate of the same key wins the trust_source (as in the library)
    rep = assert_same(tiny_bundle, keys["other"]["pub"], keys["release"]["pub"], code=0)
    assert rep["signers"][0]["trust_source"] == str(keys["release"]["pub"])


def test_renamed_directory_verifies_but_subject_must_match(ext_copy, tmp_path, keys):
    renamed = tmp_path / "whatever-name"
    ext_copy.rename(renamed)
    r = stdlib_verify(renamed, keys["release"]["pub"])
    assert r.code == 0, r.err
    assert r.json()["root"] == ROOT
    # a directory whose manifest names another NAME-VERSION than the signed subject is refused
    # (here the manifest is re-signed under another subject, so only the binding is wrong)
    ents = read_entries_dir(renamed)
    re_signed = resign(ents, keys["release"]["key"], subject="tiny-9.9.9")
    for ti, data in re_signed:
        (renamed / ti.name[len(ROOT) + 1:]).write_bytes(data)
    r = stdlib_verify(renamed, keys["release"]["pub"])
    assert r.code == 16 and r.json()["error"]["class"] == "binding", r.err
    assert "tiny-9.9.9" in r.json()["error"]["message"]


def read_entries_dir(d: Path) -> List[Entry]:
    out = []
    for p in sorted(d.rglob("*")):
        if p.is_file():
            out.append(reg(f"{ROOT}/{p.relative_to(d).as_posix()}", p.read_bytes()))
    return out


def _dir_symlink(d: Path) -> None:
    os.symlink("manifest.json", d / "runtime" / "link.txt")


def _dir_symlink_replacing_signed(d: Path) -> None:
    target = d / "runtime" / "README.txt"
    data = target.read_bytes()
    target.unlink()
    (d.parent / "outside.txt").write_bytes(data)
    os.symlink(d.parent / "outside.txt", target)


def _dir_fifo(d: Path) -> None:
    os.mkfifo(d / "engines" / "pipe")


def _dir_extra(d: Path) -> None:
    (d / "engines" / "extra.bin").write_bytes(b"x")


def _dir_extra_in_signatures(d: Path) -> None:
    (d / "signatures" / "notes.txt").write_bytes(b"x")


def _dir_missing(d: Path) -> None:
    (d / "runtime" / "README.txt").unlink()


def _dir_missing_manifest(d: Path) -> None:
    (d / "manifest.json").unlink()


def _dir_modified(d: Path) -> None:
    p = next((d / "engines").glob("*.engine"))
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))


def _dir_grown(d: Path) -> None:
    with open(d / "model" / "tiny.onnx", "ab") as f:
        f.write(b"\0")


def _dir_setuid(d: Path) -> None:
    os.chmod(d / "runtime" / "verify.py", 0o4755)


def _dir_setgid(d: Path) -> None:
    os.chmod(d / "model" / "tiny.onnx", 0o2644)


def _dir_sticky(d: Path) -> None:
    os.chmod(d / "SHA256SUMS", 0o1644)


def _dir_empty_dir(d: Path) -> None:
    (d / "empty").mkdir()


def _dir_no_signature(d: Path) -> None:
    for s in (d / "signatures").iterdir():
        s.unlink()


def _dir_case_clash(d: Path) -> None:
    (d / "Manifest.json").write_bytes(b"{}")


DIR_CASES = {
    "symlink": (_dir_symlink, 14),
    "symlink-replacing-signed-file": (_dir_symlink_replacing_signed, 14),
    "fifo": (_dir_fifo, 14),
    "setuid": (_dir_setuid, 14),
    "setgid-file": (_dir_setgid, 14),
    "sticky-file": (_dir_sticky, 14),
    "case-clash": (_dir_case_clash, 14),
    "extra-file": (_dir_extra, 13),
    "missing-file": (_dir_missing, 13),
    "missing-manifest": (_dir_missing_manifest, 13),
    "empty-directory": (_dir_empty_dir, 13),
    "extra-file-in-signatures": (_dir_extra_in_signatures, 11),
    "no-signature": (_dir_no_signature, 11),
    "modified-engine": (_dir_modified, 12),
    "grown-model": (_dir_grown, 12),
}


@pytest.mark.parametrize("case", sorted(DIR_CASES))
def test_directory_refusals(ext_copy, keys, case):
    make, code = DIR_CASES[case]
    make(ext_copy)
    r = stdlib_verify(ext_copy, keys["release"]["pub"])
    assert r.code == code, f"{case}: {r.err}"
    rep = r.json()
    assert rep["ok"] is False and rep["exit_code"] == code and rep["error"]["code"] == code
    assert r.err.startswith(f"error [{rep['error']['class']}]: ")


# == (b) differential: the same tampered bundles through both verifiers ======================

def test_differential_byte_flips_in_every_member(tiny_bundle, tmp_path, keys):
    offsets = data_offsets(tiny_bundle)
    assert len(offsets) >= 8

    def one(name: str) -> Tuple[str, int]:
        header, data, size = offsets[name]
        p = tmp_path / f"flip-{hashlib.sha1(name.encode()).hexdigest()[:10]}.tar"
        shutil.copyfile(tiny_bundle, p)
        flip(p, data + size // 2)
        rep = assert_same(p, keys["release"]["pub"])
        return name, rep["exit_code"]

    results = dict(one(n) for n in offsets)
    sig = next(n for n in offsets if "/signatures/" in n)
    assert results.pop(sig) == 11  # the signed statement or the signature itself changed
    assert set(results.values()) == {12}, results  # any other member: digest
    # a flipped header byte: checksum
    h = tmp_path / "hdr.tar"
    shutil.copyfile(tiny_bundle, h)
    flip(h, offsets[f"{ROOT}/model/tiny.onnx"][0] + 10)
    assert assert_same(h, keys["release"]["pub"], code=10)["error"]["class"] == "archive"


def _truncate(at: Callable[[int, Dict[str, Tuple[int, int, int]]], int]) -> Callable[[Path, Path], None]:
    def make(good: Path, out: Path) -> None:
        data = good.read_bytes()
        out.write_bytes(data[: at(len(data), data_offsets(good))])
    return make


def _flip_at(at: Callable[[Dict[str, Tuple[int, int, int]]], int]) -> Callable[[Path, Path], None]:
    def make(good: Path, out: Path) -> None:
        shutil.copyfile(good, out)
        flip(out, at(data_offsets(good)))
    return make


def _numeric_field(rel: str, at: int, value: Optional[bytes]) -> Callable[[Path, Path], None]:
    """Rewrite one numeric header field by hand (tarfile cannot write odd numbers), checksum fixed.
    ``value`` None: the same number, space-led (valid ustar)."""
    def make(good: Path, out: Path) -> None:
        data = bytearray(good.read_bytes())
        off = data_offsets(good)[f"{ROOT}/{rel}"][0]
        width = 12 if at == 124 else 8
        if value is None:
            digits = bytes(data[off + at:off + at + width]).rstrip(b"\0").lstrip(b"0") or b"0"
            new = (b" " * (width - 1 - len(digits)) + digits + b"\0")
        else:
            new = value
        assert len(new) == width
        data[off + at:off + at + width] = new
        data[off + 148:off + 156] = b" " * 8
        data[off + 148:off + 156] = b"%06o\0 " % sum(data[off:off + 512])
        out.write_bytes(bytes(data))
    return make


def _pax_override(rel: str, key: str, value: str) -> Callable[[List[Entry]], List[Entry]]:
    def edit(es: List[Entry]) -> List[Entry]:
        i = find(es, rel)
        ti = _copy(es[i][0])
        ti.pax_headers = {key: value}
        es[i] = (ti, es[i][1])
        return es
    return edit


def _dangling_pax(good: Path, out: Path) -> None:
    """A PAX extended header, then the end of the archive: no member for it to describe."""
    data = good.read_bytes()
    offs = data_offsets(good)
    end = max(v[1] + v[2] for v in offs.values()) + 511 & ~511
    ti = tarfile.TarInfo("././@PaxHeader")
    rec = b"17 path=whatever\n"
    ti.type, ti.size = tarfile.XHDTYPE, len(rec)
    pax = ti.tobuf(tarfile.USTAR_FORMAT) + rec + b"\0" * (512 - len(rec))
    body = data[:end] + pax
    out.write_bytes(body + b"\0" * (-len(body) % 10240 or 10240))


def _numeric_newline(rel: str, at: int) -> Callable[[Path, Path], None]:
    """The same number, its NUL terminator replaced by a newline: not a ustar number (a lax
    parser that strips whitespace would read it), so both verifiers refuse it."""
    def make(good: Path, out: Path) -> None:
        data = bytearray(good.read_bytes())
        off = data_offsets(good)[f"{ROOT}/{rel}"][0]
        width = 12 if at == 124 else 8
        field = bytes(data[off + at:off + at + width])
        assert field.endswith(b"\0"), field
        _numeric_field(rel, at, field[:-1] + b"\n")(good, out)
    return make


def _append(tail: bytes) -> Callable[[Path, Path], None]:
    def make(good: Path, out: Path) -> None:
        out.write_bytes(good.read_bytes() + tail)
    return make


def _rewrite(edit: Callable[[List[Entry]], List[Entry]]) -> Callable[[Path, Path], None]:
    def make(good: Path, out: Path) -> None:
        write_tar(out, edit(read_entries(good)))
    return make


def _set(rel: str, **attrs: object) -> Callable[[List[Entry]], List[Entry]]:
    def edit(es: List[Entry]) -> List[Entry]:
        i = find(es, rel)
        ti = _copy(es[i][0])
        for k, v in attrs.items():
            setattr(ti, k, v)
        es[i] = (ti, es[i][1])
        return es
    return edit


def _insert(entry_fn: Callable[[], Entry], before: Optional[str] = None) -> Callable[[List[Entry]], List[Entry]]:
    def edit(es: List[Entry]) -> List[Entry]:
        if before is None:
            es.append(entry_fn())
        else:
            es.insert(find(es, before), entry_fn())
        return es
    return edit


def _dup(rel: str) -> Callable[[List[Entry]], List[Entry]]:
    def edit(es: List[Entry]) -> List[Entry]:
        ti, data = es[find(es, rel)]
        es.append((_copy(ti), data))
        return es
    return edit


def _drop(rel: str) -> Callable[[List[Entry]], List[Entry]]:
    def edit(es: List[Entry]) -> List[Entry]:
        del es[find(es, rel)]
        return es
    return edit


def _swap(a: str, b: str) -> Callable[[List[Entry]], List[Entry]]:
    def edit(es: List[Entry]) -> List[Entry]:
        i, j = find(es, a), find(es, b)
        es[i], es[j] = es[j], es[i]
        return es
    return edit


def _sig_edit(edit: Callable[[dict], None]) -> Callable[[List[Entry]], List[Entry]]:
    return lambda es: edit_sig(es, edit)


def _pax_bad_key(es: List[Entry]) -> List[Entry]:
    i = find(es, "model/tiny.onnx")
    ti = _copy(es[i][0])
    ti.pax_headers = {"comment": "hello"}
    es[i] = (ti, es[i][1])
    return es


def _pax_long_path(es: List[Entry]) -> List[Entry]:
    """A legitimately long name goes through a PAX path record: both accept it as extra."""
    es.append(reg(f"{ROOT}/runtime/" + "x" * 150, b"data"))
    return es


def _hint_removed(doc: dict) -> None:
    del doc["verificationMaterial"]["publicKey"]["hint"]


def _high_s(doc: dict) -> None:
    tweak_rs(doc, "s", lambda s: P256_N - s)


def _emptied(doc: dict) -> None:
    doc.clear()


SIG_NESTED = b"[" * 200000 + b"]" * 200000

# name -> (make(good, out), expected exit code)
TAR_CASES: Dict[str, Tuple[Callable[[Path, Path], None], int]] = {
    "untouched-repack": (_rewrite(lambda es: es), 0),
    "truncated-in-first-header": (_truncate(lambda n, o: 100), 10),
    "truncated-in-engine-data": (_truncate(lambda n, o: next(v[1] + v[2] // 2 for k, v in o.items() if k.endswith(".engine"))), 10),
    "truncated-before-end-marker": (_truncate(lambda n, o: max(v[1] + v[2] for v in o.values()) + 511 & ~511), 10),
    "truncated-in-end-marker": (_truncate(lambda n, o: (max(v[1] + v[2] for v in o.values()) + 511 & ~511) + 700), 10),
    "truncated-record-padding-only": (_truncate(lambda n, o: (max(v[1] + v[2] for v in o.values()) + 511 & ~511) + 1024), 0),
    "empty-file": (_truncate(lambda n, o: 0), 10),
    "end-marker-not-zero": (_flip_at(lambda o: (max(v[1] + v[2] for v in o.values()) + 511 & ~511) + 100), 10),
    "second-end-block-not-zero": (_flip_at(lambda o: (max(v[1] + v[2] for v in o.values()) + 511 & ~511) + 700), 10),
    "record-padding-not-zero": (_flip_at(lambda o: (max(v[1] + v[2] for v in o.values()) + 511 & ~511) + 1100), 10),
    "appended-garbage": (_append(b"garbage"), 10),
    "appended-zero-block": (_append(b"\0" * 512), 0),
    "appended-too-many-zeros": (_append(b"\0" * 20480), 10),
    "appended-second-archive": (_append(b"\0" * 512 + bytes(reg("x", b"y")[0].tobuf(tarfile.PAX_FORMAT))), 10),
    "duplicate-member": (_rewrite(_dup("runtime/README.txt")), 13),
    "duplicate-manifest": (_rewrite(lambda es: es[:2] + [es[find(es, "manifest.json")]] + es[2:]), 13),
    "extra-member": (_rewrite(_insert(lambda: reg(f"{ROOT}/engines/extra.bin", b"x"))), 13),
    "missing-member": (_rewrite(_drop("runtime/README.txt")), 13),
    "missing-manifest": (_rewrite(_drop("manifest.json")), 13),
    "manifest-not-second": (_rewrite(_swap("manifest.json", "SHA256SUMS")), 13),
    "directory-member-ok": (_rewrite(_insert(lambda: special(f"{ROOT}/engines", tarfile.DIRTYPE), before="SHA256SUMS")), 0),
    "directory-member-signatures": (_rewrite(lambda es: [special(f"{ROOT}/signatures", tarfile.DIRTYPE)] + es), 0),
    "negative-size": (_numeric_field("runtime/README.txt", 124, b"-0000000001\0"), 10),
    "size-with-0o-prefix": (_numeric_field("runtime/README.txt", 124, b"0o0000002777"), 10),
    "mode-with-sign": (_numeric_field("runtime/README.txt", 100, b"+000644\0"), 10),
    "size-space-led": (_numeric_field("SHA256SUMS", 124, None), 0),
    "size-trailing-newline": (_numeric_newline("runtime/README.txt", 124), 10),
    "mode-trailing-newline": (_numeric_newline("runtime/README.txt", 100), 10),
    "linkname-on-regular-file": (_rewrite(_set("runtime/README.txt", linkname="/etc/passwd")), 14),
    "linkname-on-directory": (_rewrite(_insert(lambda: special(f"{ROOT}/engines", tarfile.DIRTYPE, "/etc"), before="SHA256SUMS")), 14),
    "pax-size-not-decimal": (_rewrite(_pax_override("runtime/README.txt", "size", "0x10")), 10),
    "pax-size-leading-zero": (_rewrite(_pax_override("runtime/README.txt", "size", "0559")), 10),
    "pax-mtime-not-number": (_rewrite(_pax_override("runtime/README.txt", "mtime", "yesterday")), 10),
    "pax-header-at-the-end": (_dangling_pax, 10),
    "directory-member-empty": (_rewrite(_insert(lambda: special(f"{ROOT}/empty", tarfile.DIRTYPE))), 13),
    "symlink": (_rewrite(_insert(lambda: special(f"{ROOT}/runtime/link", tarfile.SYMTYPE, "/etc/passwd"))), 14),
    "hardlink": (_rewrite(_insert(lambda: special(f"{ROOT}/runtime/hard", tarfile.LNKTYPE, f"{ROOT}/manifest.json"))), 14),
    "char-device": (_rewrite(_insert(lambda: special(f"{ROOT}/runtime/dev", tarfile.CHRTYPE))), 14),
    "fifo": (_rewrite(_insert(lambda: special(f"{ROOT}/runtime/fifo", tarfile.FIFOTYPE))), 14),
    "dotdot": (_rewrite(_insert(lambda: reg(f"{ROOT}/../evil", b"x"))), 14),
    "absolute-path": (_rewrite(_insert(lambda: reg("/tmp/evil", b"x"))), 14),
    "outside-root": (_rewrite(_insert(lambda: reg("other-1.0.0/x", b"x"))), 14),
    "case-collision": (_rewrite(_insert(lambda: reg(f"{ROOT}/Manifest.json", b"{}"))), 14),
    "setuid": (_rewrite(_set("runtime/README.txt", mode=0o4755)), 14),
    "sticky": (_rewrite(_set("model/tiny.onnx", mode=0o1644)), 14),
    "bad-pax-key": (_rewrite(_pax_bad_key), 14),
    "long-name-via-pax": (_rewrite(_pax_long_path), 13),
    "no-signature": (_rewrite(lambda es: [e for e in es if "/signatures/" not in e[0].name]), 11),
    "signature-moved-to-end": (_rewrite(lambda es: [e for e in es if "/signatures/" not in e[0].name] + [es[sig_index(es)]]), 11),
    "signature-r-plus-1": (_rewrite(_sig_edit(lambda d: tweak_rs(d, "r", lambda r: r + 1))), 11),
    "signature-s-minus-1": (_rewrite(_sig_edit(lambda d: tweak_rs(d, "s", lambda s: s - 1))), 11),
    "signature-r-zero": (_rewrite(_sig_edit(lambda d: tweak_rs(d, "r", lambda r: 0))), 11),
    "signature-s-is-n": (_rewrite(_sig_edit(lambda d: tweak_rs(d, "s", lambda s: P256_N))), 11),
    "signature-high-s-is-valid": (_rewrite(_sig_edit(_high_s)), 0),
    "signature-not-der": (_rewrite(_sig_edit(lambda d: d["dsseEnvelope"]["signatures"][0].update(sig=base64.b64encode(b"\x30\x02\x02\x00").decode()))), 11),
    "signature-no-hint": (_rewrite(_sig_edit(_hint_removed)), 0),
    "signature-empty-json": (_rewrite(_sig_edit(_emptied)), 11),
    "signature-nested-json": (_rewrite(lambda es: [(e[0], SIG_NESTED) if "/signatures/" in e[0].name else e for e in es]), 11),
}


def test_differential_manifest_with_huge_integer(entries, tmp_path, keys):
    """json.loads raises a plain ValueError (not JSONDecodeError) for an int over Python's digit
    limit; the strict parser refuses any integer over 40 digits first, in both entry points, as
    signed metadata the verifier cannot use (binding, exit 16), never as an internal error."""
    def edit(m: dict) -> None:
        m["engines"][0]["size"] = 10 ** 5000

    try:
        sys.set_int_max_str_digits(0)  # only so that the test can write it
        ents = resign(entries, keys["release"]["key"], edit_manifest=edit)
    finally:
        sys.set_int_max_str_digits(4300)
    out = write_tar(tmp_path / "huge.tar", ents)
    lib, ours = both(out, keys["release"]["pub"])
    assert (lib.code, lib.json()) == (ours.code, ours.json())
    assert ours.code == 16, ours.err
    assert "integer of 5001 digits" in ours.err


@pytest.mark.parametrize("case", sorted(TAR_CASES))
def test_differential_tamper(case, tiny_bundle, tmp_path, keys):
    make, code = TAR_CASES[case]
    out = tmp_path / "t.bundle.tar"
    make(tiny_bundle, out)
    rep = assert_same(out, keys["release"]["pub"], code=code)
    assert rep["exit_code"] == code


def test_differential_untrusted_key(tiny_bundle, keys):
    rep = assert_same(tiny_bundle, keys["other"]["pub"], code=11)
    assert rep["signers"][0]["trusted"] is False and rep["signers"][0]["valid"] is None


@pytest.mark.parametrize("which,code", [("next", 16), ("same-name", 12)])
def test_differential_spliced_signature(which, code, entries, other_bundles, tmp_path, keys):
    """The trusted key's real signature of another bundle, put in place of this one's."""
    other = read_entries(other_bundles[which])
    gi = sig_index(entries)
    es = list(entries)
    es[gi] = (es[gi][0], other[sig_index(other)][1])
    out = write_tar(tmp_path / "spliced.tar", es)
    rep = assert_same(out, keys["release"]["pub"], code=code)
    assert rep["signers"][0]["valid"] is True  # the signature itself is genuine


def _engine_header_version(m: dict) -> None:
    m["engines"][0]["header"]["version"] = "1.0.0.1"


def _manifest_name(m: dict) -> None:
    m["name"] = "huge"


def _manifest_schema(m: dict) -> None:
    m["engines"][0]["size"] = "big"


def _format(m: dict) -> None:
    m["format"] = "trt-bundle/2"


def _version_not_semver(m: dict) -> None:
    m["version"] = "01.0.0"


def _name_odd(m: dict) -> None:
    m["name"] = "-tiny"


def _model_digest(m: dict) -> None:
    m["model"]["sha256"] = "0" * 64


def _log_ref(m: dict) -> None:
    m["engines"][0]["log"] = "engines/nowhere.log"


def _engine_cc_label(m: dict) -> None:
    """The sm_86 engine relabelled for 8.9: its TensorRT-RTX header still says 8.6."""
    e = next(e for e in m["engines"] if e["target"]["cc"] == "8.6")
    e["target"]["cc"] = "8.9"


def _engine_without_header(m: dict) -> None:
    m["engines"][0]["header"] = None


def _gpu_target_without_cc(m: dict) -> None:
    m["engines"][0]["target"]["cc"] = None


def _statement_digest(st: dict) -> None:
    st["subject"][0]["digest"]["sha256"] = "0" * 64


@pytest.mark.parametrize("case,kw,code", [
    ("engine-header-mismatch", {"edit_manifest": _engine_header_version}, 16),
    ("engine-cc-label-differs-from-header", {"edit_manifest": _engine_cc_label}, 16),
    ("gpu-engine-without-header", {"edit_manifest": _engine_without_header}, 16),
    ("gpu-target-without-cc", {"edit_manifest": _gpu_target_without_cc}, 16),
    ("manifest-renamed", {"edit_manifest": _manifest_name}, 16),
    ("manifest-schema", {"edit_manifest": _manifest_schema}, 16),
    ("manifest-format", {"edit_manifest": _format}, 16),
    ("manifest-version-not-semver", {"edit_manifest": _version_not_semver}, 16),
    ("manifest-name-odd", {"edit_manifest": _name_odd}, 16),
    ("manifest-model-digest", {"edit_manifest": _model_digest}, 16),
    ("manifest-log-not-signed", {"edit_manifest": _log_ref}, 16),
    ("sums-line-missing", {"edit_sums": lambda b: b"".join(b.splitlines(keepends=True)[1:])}, 16),
    ("subject-other-version", {"subject": "tiny-2.0.0"}, 16),
    ("statement-subject-digest", {"edit_statement": _statement_digest}, 11),
])
def test_differential_resigned_by_trusted_key(case, kw, code, entries, tmp_path, keys):
    """A trusted signer's tool went wrong: the signature is valid, the metadata is not."""
    out = write_tar(tmp_path / f"{case}.tar", resign(entries, keys["release"]["key"], **kw))
    assert assert_same(out, keys["release"]["pub"], code=code)["exit_code"] == code


def test_differential_trusted_signatures_that_disagree(entries, tmp_path, keys):
    """Two trusted keys sign different contents (one of them lists another SHA256SUMS): no
    verifier may pick the one it likes; both refuse, as a signature failure (11)."""
    es = resign(entries, keys["release"]["key"])
    resources = {ti.name[len(ROOT) + 1:]: hashlib.sha256(d).hexdigest() for ti, d in es
                 if ti.isfile() and not ti.name.startswith(f"{ROOT}/signatures/")}
    resources["SHA256SUMS"] = "0" * 64
    other = sign_statement(make_statement(ROOT, resources), load_private_key(keys["other"]["key"], None))
    gi = sig_index(es)
    es.insert(gi + 1, reg(f"{ROOT}/signatures/{keys['other']['id']}.sig", other))
    out = write_tar(tmp_path / "disagree.tar", es)
    rep = assert_same(out, keys["release"]["pub"], keys["other"]["pub"], code=11)
    assert "trusted signatures disagree" in rep["error"]["message"]
    # Trusting only the release key, the other signature is just an unknown signer: accepted.
    assert assert_same(out, keys["release"]["pub"], code=0)["ok"] is True


def test_resign_helper_itself_makes_good_bundles(entries, tmp_path, keys):
    out = write_tar(tmp_path / "resigned.tar", resign(entries, keys["release"]["key"]))
    assert assert_same(out, keys["release"]["pub"], code=0)["ok"] is True


def test_usage_and_input_errors(tiny_bundle, tmp_path, keys):
    r = stdlib_verify(tiny_bundle)  # no --trust
    assert r.code == 3 and r.json()["error"]["class"] == "input"
    r = stdlib_verify(tmp_path / "nope.tar", keys["release"]["pub"])
    assert r.code == 3 and "no such bundle file" in r.json()["error"]["message"]
    r = stdlib_verify(tiny_bundle, tmp_path / "nope.pub")
    assert r.code == 4 and r.json()["error"]["class"] == "key"
    r = stdlib_verify(tiny_bundle, keys["release"]["key"])  # a private key
    assert r.code == 4 and "is a private key" in r.json()["error"]["message"]
    r = stdlib_verify(tiny_bundle, keys["release"]["pub"], extra=("--bogus",))
    assert r.code == 2 and r.err.startswith("error [usage]: ") and len(r.err.strip().splitlines()) == 1


def test_key_errors_match_library(tiny_bundle, tmp_path, keys):
    from cryptography.hazmat.primitives.asymmetric import ed25519, rsa

    cases = {
        "p384.pub": ec.generate_private_key(ec.SECP384R1()).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "rsa.pub": rsa.generate_private_key(public_exponent=65537, key_size=1024).public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "ed25519.pub": ed25519.Ed25519PrivateKey.generate().public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo),
        "garbage.pub": b"-----BEGIN PUBLIC KEY-----\nnot base64!\n-----END PUBLIC KEY-----\n",
        "empty.pub": b"",
    }
    for name, data in cases.items():
        p = tmp_path / name
        p.write_bytes(data)
        lib, ours = both(tiny_bundle, p)
        assert lib.code == ours.code == 4, name
        assert ours.json() == lib.json(), name


# == (c) signatures by cryptography and by model_signing ======================================

def test_cryptography_random_k_signature_accepted(entries, tmp_path, keys):
    """`bundle` signs deterministically (RFC 6979); a random-k signature must verify just as well."""
    es = list(entries)
    gi = sig_index(es)
    doc = json.loads(es[gi][1])
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"])
    pae = b"DSSEv1 %d %s %d %s" % (len(b"application/vnd.in-toto+json"), b"application/vnd.in-toto+json", len(payload), payload)
    key = load_private_key(keys["release"]["key"], None)
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(key.sign(pae, ec.ECDSA(hashes.SHA256()))).decode()
    es[gi] = (es[gi][0], json.dumps(doc).encode())
    out = write_tar(tmp_path / "random-k.tar", es)
    assert stdlib_verify(out, keys["release"]["pub"]).code == 0


def _repack(src_dir: Path, root: str, out: Path) -> Path:
    files = sorted(p.relative_to(src_dir).as_posix() for p in src_dir.rglob("*") if p.is_file())
    first = [f for f in files if f.startswith("signatures/")] + ["manifest.json", "SHA256SUMS"]
    with tarfile.open(out, "w", format=tarfile.PAX_FORMAT) as tf:
        for f in first + [f for f in files if f not in first]:
            tf.add(src_dir / f, arcname=f"{root}/{f}")
    return out


def test_model_signing_signature_accepted(ext_copy, tmp_path, keys):
    pytest.importorskip("model_signing")
    for s in (ext_copy / "signatures").iterdir():
        s.unlink()
    sig = ext_copy / "signatures" / "x.sig"
    p = subprocess.run([sys.executable, "-m", "model_signing", "sign", "key", str(ext_copy), "--private_key",
                        str(keys["other"]["key"]), "--signature", str(sig), "--ignore-paths", str(ext_copy / "signatures")],
                       capture_output=True, text=True, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    # the directory
    r = stdlib_verify(ext_copy, keys["other"]["pub"])
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["signers"] == [{"file": "signatures/x.sig", "key_id": keys["other"]["id"], "trusted": True,
                               "valid": True, "trust_source": str(keys["other"]["pub"]), "name": "", "counted": True,
                               "reason": "", "expires": None, "sha256": hashlib.sha256(sig.read_bytes()).hexdigest(),
                               "ledger": None}]
    assert stdlib_verify(ext_copy, keys["release"]["pub"]).code == 11
    # the re-tarred bundle: both verifiers accept it, identically
    out = _repack(ext_copy, ROOT, tmp_path / "resigned.bundle.tar")
    assert assert_same(out, keys["other"]["pub"], code=0)["ok"] is True
    assert assert_same(out, keys["release"]["pub"], code=11)["error"]["class"] == "signature"
    # r or s changed by one: refused, in the directory and in the tar
    doc = json.loads(sig.read_text())
    for which in ("r", "s"):
        d = json.loads(json.dumps(doc))
        tweak_rs(d, which, lambda v: v ^ 1)
        sig.write_text(json.dumps(d))
        r = stdlib_verify(ext_copy, keys["other"]["pub"])
        assert r.code == 11 and "does not verify" in r.json()["error"]["message"], (which, r.err)
        out = _repack(ext_copy, ROOT, tmp_path / f"tweaked-{which}.tar")
        assert assert_same(out, keys["other"]["pub"], code=11)["error"]["class"] == "signature"


# == (d) the P-256 code against cryptography ==================================================

@pytest.fixture(scope="module")
def sv():  # noqa: ANN201
    return load_stdlib_module()


def test_p256_against_cryptography(sv):
    rng = random.Random(1234)
    outcomes = {"valid": 0, "invalid": 0}
    for i in range(50):
        priv = ec.generate_private_key(ec.SECP256R1())
        pub = priv.public_key()
        pem = pub.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)
        ours = sv.parse_public_key_pem(pem)
        assert ours.pem() == pem and ours.key_id == key_id(pub)  # canonical form = cryptography's
        msg = rng.randbytes(rng.randrange(0, 300))
        sig = priv.sign(msg, ec.ECDSA(hashes.SHA256()))
        r, s = decode_dss_signature(sig)
        variants = [
            (sig, msg),
            (encode_dss_signature(r, P256_N - s), msg),  # high S: ECDSA accepts it
            (sig, msg + b"x"),
            (encode_dss_signature(r ^ (1 << rng.randrange(256)), s), msg),
            (encode_dss_signature(r, s ^ (1 << rng.randrange(256))), msg),
            (encode_dss_signature(r, r), msg),
            (encode_dss_signature(r + P256_N, s) if r + P256_N < 2 ** 256 else sig[:-1], msg),
            (sig + b"\0", msg),  # trailing bytes
            (sig[:-1], msg),
            (b"\x30\x81" + sig[1:], msg),  # long-form length where short form is due
            (_pad_int(sig), msg),  # non-minimal INTEGER
            (ec.generate_private_key(ec.SECP256R1()).sign(msg, ec.ECDSA(hashes.SHA256())), msg),  # another key
        ]
        for der, m in variants:
            try:
                pub.verify(der, m, ec.ECDSA(hashes.SHA256()))
                want = True
            except InvalidSignature:
                want = False
            got = sv.ecdsa_p256_verify(ours, der, m)
            assert got is want, (i, der.hex(), m.hex())
            outcomes["valid" if want else "invalid"] += 1
    assert outcomes["valid"] >= 100 and outcomes["invalid"] >= 400


def _pad_int(sig: bytes) -> bytes:
    """Re-encode with r's INTEGER given a superfluous leading zero (BER, not DER)."""
    r, s = decode_dss_signature(sig)
    rb = r.to_bytes((r.bit_length() + 8) // 8, "big")
    rb = b"\0" + rb
    sb = s.to_bytes((s.bit_length() + 8) // 8, "big")
    body = b"\x02" + bytes([len(rb)]) + rb + b"\x02" + bytes([len(sb)]) + sb
    return b"\x30" + bytes([len(body)]) + body


def test_p256_keys_compressed_and_invalid(sv):
    for _ in range(10):
        pub = ec.generate_private_key(ec.SECP256R1()).public_key()
        comp = pub.public_bytes(serialization.Encoding.X962, serialization.PublicFormat.CompressedPoint)
        der = bytes.fromhex("3039301306072a8648ce3d020106082a8648ce3d030107032200") + comp
        assert serialization.load_der_public_key(der).public_numbers() == pub.public_numbers()
        pem = b"-----BEGIN PUBLIC KEY-----\n" + base64.encodebytes(der) + b"-----END PUBLIC KEY-----\n"
        # A valid key to OpenSSL, but not the one encoding a trust file may use (one rule).
        with pytest.raises(ValueError, match="compressed point"):
            sv.parse_public_key_pem(pem)
    good = ec.generate_private_key(ec.SECP256R1()).public_key().public_numbers()
    pt = b"\x04" + good.x.to_bytes(32, "big") + good.y.to_bytes(32, "big")
    prefix = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")
    bad_points = [
        b"\x04" + good.x.to_bytes(32, "big") + ((good.y + 1) % (2 ** 256)).to_bytes(32, "big"),  # off the curve
        b"\x04" + b"\0" * 64,
    ]
    for bp in bad_points:
        with pytest.raises(ValueError):
            serialization.load_der_public_key(prefix + bp)
        with pytest.raises(ValueError):
            sv.parse_spki_der(prefix + bp)
    assert sv.parse_spki_der(prefix + pt).x == good.x
    with pytest.raises(ValueError):
        sv.parse_spki_der(prefix + pt + b"\0")  # trailing bytes
    # the key id of a real key file equals `bundle keys id`
    other = ec.generate_private_key(ec.SECP256R1()).public_key()
    assert sv.PublicKey(other.public_numbers().x, other.public_numbers().y).key_id == key_id(other)


def test_runtime_lookup_without_packages_distributions(sv, monkeypatch):
    """Python 3.8/3.9 have no importlib.metadata.packages_distributions; the fallback must find the
    same distributions for the runtimes the host check asks about."""
    from importlib import metadata

    real = metadata.packages_distributions()
    want = {m: real.get(m) for m in ("tensorrt_rtx", "onnxruntime", "numpy")}
    assert want["tensorrt_rtx"] and want["numpy"]  # installed in this environment
    monkeypatch.delattr(metadata, "packages_distributions")
    got = sv._packages_distributions()
    for module, dists in want.items():
        if dists:
            assert set(dists) <= set(got.get(module, [])), module
    assert sv.installed_runtimes()["tensorrt-rtx"] == metadata.version(want["tensorrt_rtx"][0])


def test_host_probe_runs_beside_the_pass_and_never_outlives_it(sv, tiny_bundle, keys, entries, tmp_path, monkeypatch):
    """The host query (GPUs, runtimes) runs on a worker thread, started only once a trusted
    signature holds: a bundle refused before that never starts one, one refused after waits for
    it, and no probe thread outlives a verdict. Threaded and unthreaded runs report the same host."""
    import threading

    started = []

    class Counted(sv.HostProbe):
        def __init__(self) -> None:
            started.append(self)
            super().__init__()

    monkeypatch.setattr(sv, "HostProbe", Counted)
    trust = sv.load_trust([str(keys["release"]["pub"])])

    def probes() -> list:
        return [t for t in threading.enumerate() if t.name == "bundle-host-probe"]

    threaded = sv.verify_bundle(tiny_bundle, trust)
    assert threaded.ok and len(started) == 1 and not probes()
    plain = sv.verify_bundle(tiny_bundle, trust, threaded=False)
    assert plain.ok and len(started) == 1  # unthreaded: asked at the end, on the caller's thread
    assert threaded.to_dict()["host"] == plain.to_dict()["host"]

    untrusted = sv.verify_bundle(tiny_bundle, sv.load_trust([str(keys["other"]["pub"])]))
    assert untrusted.exit_code == 11 and len(started) == 1  # refused at the signatures: never asked

    engine = next(i for i, (ti, _) in enumerate(entries) if ti.name.endswith(".engine"))
    ti, data = entries[engine]
    flipped = list(entries)
    flipped[engine] = (ti, data[:-1] + bytes([data[-1] ^ 1]))
    late = sv.verify_bundle(write_tar(tmp_path / "flipped.tar", flipped), trust)
    assert late.exit_code == 12 and len(started) == 2 and not probes()  # digest: after the signatures


def test_version_and_name_rules_match_library(sv):
    """The manifest's version must be semver and its name plain, by the library's exact rules
    (bundler.versioning, which re-exports the shared rule): same verdict, same message."""
    from bundler.errors import InputError
    from bundler.versioning import check_bundle_name, check_version

    rng = random.Random(7)
    versions = ["1.0.0", "01.0.0", "1.0", "1.0.0-rc.1", "1.0.0-01", "1.0.0+b.01", "1.0.0\n", "1.0.0-",
                "\u0661.0.0", "1.0.0-rc.1+x-y.z", "1." + "9" * 5000 + ".0"]
    versions += ["1.%d." % rng.randrange(3) + "".join(rng.choice("0123456789.-+aZ\n ") for _ in range(rng.randrange(8)))
                 for _ in range(3000)]
    names = ["tiny", "a-b", "a--b", "-a", "a.", "x" * 101, "\u00e9", "a b", "a\n"]
    names += ["".join(rng.choice("aZ9._- \n") for _ in range(rng.randrange(1, 8))) for _ in range(3000)]

    def verdict(fn, err, arg):  # noqa: ANN001, ANN202
        try:
            fn(arg)
            return None
        except err as e:
            return e.message

    accepted = 0
    for v in versions:
        want = verdict(check_version, InputError, v)
        assert verdict(sv.check_version, sv.InputError, v) == want, repr(v)
        accepted += want is None
    for n in names:
        assert verdict(sv.check_bundle_name, sv.InputError, n) == verdict(check_bundle_name, InputError, n), repr(n)
    assert 100 < accepted < len(versions) - 100  # both verdicts were exercised


def test_key_id_matches_cli(sv, keys):
    for name in ("release", "other"):
        r = run_bundle("keys", "id", keys[name]["pub"])
        assert r.code == 0
        assert sv.load_public_key(keys[name]["pub"]).key_id == r.out.strip() == keys[name]["id"]


# == (e) standard library only, Python 3.8 grammar =============================================

def test_stdlib_only_and_python38_grammar():
    src = VERIFIER.read_text()
    tree = ast.parse(src, feature_version=(3, 8))  # SyntaxError on 3.9+ syntax (match, parenthesised with, ...)
    modules = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.Import):
            modules |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom):
            assert node.level == 0, "relative import"
            modules.add(node.module.split(".")[0])
    assert modules and "hashlib" in modules
    not_std = sorted(m for m in modules if m not in sys.stdlib_module_names)
    assert not not_std, not_std
    assert not {"bundler", "cryptography", "numpy"} & modules
    # 3.9+ runtime features that the 3.8 grammar does not catch
    for node in ast.walk(tree):
        if isinstance(node, ast.Subscript) and isinstance(node.value, ast.Name):
            assert node.value.id not in {"list", "dict", "tuple", "set", "frozenset", "type"}, ast.dump(node)
        if isinstance(node, ast.Attribute):
            assert node.attr not in {"removeprefix", "removesuffix", "file_digest", "bit_count", "is_relative_to",
                                     "randbytes", "cache"}, node.attr
        if isinstance(node, ast.BinOp) and isinstance(node.op, ast.BitOr):
            for side in (node.left, node.right):
                assert not (isinstance(side, ast.Constant) and side.value is None), "X | None"
        if isinstance(node, ast.keyword):
            assert node.arg != "strict" and node.arg != "usedforsecurity", node.arg
    assert "from __future__ import annotations" not in src  # annotations are real objects on 3.8
    assert "Tested on CPython 3.8" in (ast.get_docstring(tree) or "")


def test_verifier_never_prints_a_traceback(tmp_path, keys):
    """Internal failures end in one line and exit 1 (here: a bundle path that is unreadable)."""
    p = tmp_path / "x.tar"
    p.write_bytes(b"\0" * 10)
    p.chmod(0)
    r = stdlib_verify(p, keys["release"]["pub"])
    if os.geteuid() == 0:  # root reads it anyway: then it is simply not a tar
        assert r.code == 10
    else:
        assert r.code == 1 and r.json()["error"]["class"] == "internal"
    assert len(r.err.strip().splitlines()) == 1
