"""Tamper suite: the real CLI against deliberately damaged copies of a real bundle.

Every case runs `bundle verify` twice (human output and ``--json``) as a subprocess and checks
that the bundle is refused with the exit code of its failure class, one error line on stderr and,
with ``--json``, exactly one JSON document whose ``ok``/``exit_code``/``error.class`` agree with the
process. Repacked tars are written here, byte by byte, from `tarfile.TarInfo` headers, so hostile
headers (links, devices, setuid, odd PAX keys) can be made; the good bundle is only READ with
`tarfile`. Nothing is mocked.
"""

from __future__ import annotations

import base64
import hashlib
import json
import os
import shutil
import tarfile
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

from bundler.archive import BLOCK, RECORD, Limits
from bundler.errors import ExitCode
from bundler.seal import RUNTIME_DIR, runtime_files
from bundler.signing import load_trust
from bundler.verify import verify_bundle
from conftest import run_bundle

ROOT = "tiny-1.0.0"
SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"
EPOCH = {"SOURCE_DATE_EPOCH": "1700000000"}

# Every member of the session bundle, by path inside ROOT ("signature" stands for the one
# signatures/<key id>.sig file, whose name depends on the session's random key).
MEMBERS = [
    "signature",
    "manifest.json",
    "SHA256SUMS",
    "engines/tiny_16x16_fp32_rtx5090.engine",
    "engines/tiny_16x16_fp32_rtx5090.log",
    "engines/tiny_16x16_fp32_sm86.engine",
    "engines/tiny_16x16_fp32_sm86.log",
    "model/tiny.onnx",
    "golden/inputs.npz",
    "golden/outputs.npz",
] + [f"{RUNTIME_DIR}/{name}" for name, _, _ in runtime_files()] + [  # the loader stub
    "provenance/slsa-v1.intoto.json",  # the SLSA provenance, last
]
ENGINE = "engines/tiny_16x16_fp32_sm86.engine"
LAST = MEMBERS[-1]

Entry = Tuple[tarfile.TarInfo, bytes]


# -- helpers --------------------------------------------------------------------------------------

def _cls(code: int) -> str:
    return ExitCode(code).name.lower()


def assert_rejected(path: Path, code: int, pub: Path, *, member: Optional[str] = None) -> dict:
    """`verify` and `verify --json` both refuse ``path`` with ``code``; returns the JSON report."""
    with ThreadPoolExecutor(2) as pool:  # the two runs are independent; halve the wall time
        plain_f = pool.submit(run_bundle, "verify", path, "--trust", pub)
        js_f = pool.submit(run_bundle, "verify", path, "--trust", pub, "--json")
        plain, js = plain_f.result(), js_f.result()
    cls = _cls(code)
    for r in (plain, js):
        assert r.code == code, f"expected {code} ({cls}), got {r.code}: {r.err}"
        lines = r.err.strip().splitlines()
        assert len(lines) == 1, f"stderr is not one line: {r.err!r}"
        assert lines[0].startswith(f"error [{cls}]: "), lines[0]
    assert "VERIFIED" not in plain.out
    doc = json.loads(js.out)  # json.loads refuses trailing data: exactly one document
    assert isinstance(doc, dict)
    assert doc["ok"] is False
    assert doc["exit_code"] == js.code == code
    assert doc["error"]["class"] == cls
    assert doc["error"]["code"] == code
    assert doc["error"]["message"] and "\n" not in doc["error"]["message"]
    if member is not None:
        assert doc["error"]["member"] == member, doc["error"]
    return doc


def assert_verifies(path: Path, pub: Path) -> dict:
    r = run_bundle("verify", path, "--trust", pub, "--json")
    assert r.code == 0, r.out[-2000:] + r.err
    doc = json.loads(r.out)
    assert doc["ok"] is True and doc["exit_code"] == 0 and doc["error"] is None
    return doc


def layout(path: Path) -> Dict[str, tarfile.TarInfo]:
    """Members of a bundle by path inside ROOT ('signature' for the .sig), with their offsets."""
    with tarfile.open(path) as tf:
        out = {}
        for m in tf.getmembers():
            rel = m.name.split("/", 1)[1]
            out["signature" if rel.startswith("signatures/") else rel] = m
    return out


def end_of_members(path: Path) -> int:
    """Byte offset of the end-of-archive marker (two zero blocks)."""
    last = max(layout(path).values(), key=lambda m: m.offset_data)
    return last.offset_data + -(-last.size // BLOCK) * BLOCK


def reg(name: str, data: bytes, mode: int = 0o644) -> Entry:
    ti = tarfile.TarInfo(name)
    ti.size, ti.mode, ti.mtime, ti.type = len(data), mode, 1700000000, tarfile.REGTYPE
    ti.uid = ti.gid = 0
    ti.uname = ti.gname = ""
    return ti, data


def special(name: str, kind: bytes, linkname: str = "", mode: int = 0o644) -> Entry:
    ti, _ = reg(name, b"", mode)
    ti.type, ti.linkname, ti.size = kind, linkname, 0
    return ti, b""


def read_entries(path: Path) -> List[Entry]:
    """The bundle's members, in order, as (header, data) pairs to repack."""
    out = []
    with tarfile.open(path) as tf:
        for m in tf.getmembers():
            assert m.isfile(), m.name
            out.append(reg(m.name, tf.extractfile(m).read(), m.mode))
    return out


def write_tar(path: Path, entries: List[Entry]) -> Path:
    """A POSIX (PAX) tar written header by header; nothing is sanitised on the way."""
    buf = bytearray()
    for ti, data in entries:
        buf += ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        buf += data
        buf += b"\0" * ((-len(data)) % BLOCK)
    buf += b"\0" * (2 * BLOCK)
    buf += b"\0" * ((-len(buf)) % RECORD)
    path.write_bytes(bytes(buf))
    return path


def find(entries: List[Entry], rel: str) -> int:
    for i, (ti, _) in enumerate(entries):
        r = ti.name.split("/", 1)[1]
        if r == rel or (rel == "signature" and r.startswith("signatures/")):
            return i
    raise KeyError(rel)


def flip(path: Path, offset: int, mask: int = 0x01) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        b = f.read(1)
        assert len(b) == 1
        f.seek(offset)
        f.write(bytes([b[0] ^ mask]))


def header_checksum(block: bytearray) -> None:
    block[148:156] = b" " * 8
    block[148:156] = b"%06o\0 " % sum(block)


# -- fixtures ------------------------------------------------------------------------------------

@pytest.fixture()
def pub(keys) -> Path:  # noqa: ANN001
    return keys["release"]["pub"]


@pytest.fixture()
def entries(tiny_bundle) -> List[Entry]:  # noqa: ANN001
    return read_entries(tiny_bundle)


@pytest.fixture(scope="module")
def other_signed(tmp_path_factory, keys, tiny_model) -> Path:  # noqa: ANN001
    """The same model, name and version, built once and sealed by `bundle seal` with keys['other']."""
    d = tmp_path_factory.mktemp("other")
    r = run_bundle("build", tiny_model, "--name", "tiny", "--version", "1.0.0", "--target", "sm_86",
                   "--target", "rtx5090", "--shape", SHAPE, "--out", d / "build", "--backend", "tensorrt-rtx")
    assert r.code == 0, r.err
    r = run_bundle("seal", d / "build", "--key", keys["other"]["key"], "--out", d / "dist", env=EPOCH)
    assert r.code == 0, r.err
    return d / "dist" / f"{ROOT}.bundle.tar"


@pytest.fixture(scope="module")
def next_version(tmp_path_factory, keys, tiny_model) -> Path:  # noqa: ANN001
    """A second genuine release-signed bundle of the same model: tiny 1.0.1."""
    d = tmp_path_factory.mktemp("v101")
    r = run_bundle("create", tiny_model, "--name", "tiny", "--version", "1.0.1", "--target", "sm_86",
                   "--target", "rtx5090", "--shape", SHAPE, "--key", keys["release"]["key"], "--out", d,
                   "--backend", "tensorrt-rtx", env=EPOCH)
    assert r.code == 0, r.err
    return d / "tiny-1.0.1.bundle.tar"


# -- controls: without them, a rejection could come from the harness, not the tampering ----------

def test_good_bundle_verifies(tiny_bundle, pub) -> None:  # noqa: ANN001
    doc = assert_verifies(tiny_bundle, pub)
    assert doc["root"] == ROOT
    assert all(f["status"] == "ok" for f in doc["files"])


def test_members_list_covers_the_bundle(tiny_bundle) -> None:  # noqa: ANN001
    """The flip cases are parametrized over MEMBERS: if the bundle gains a member, extend it."""
    assert sorted(layout(tiny_bundle)) == sorted(MEMBERS)


def test_untouched_repack_verifies(tmp_path, entries, pub) -> None:  # noqa: ANN001
    assert_verifies(write_tar(tmp_path / "repacked.tar", entries), pub)


# -- a byte flipped in data, headers and padding ---------------------------------------------------

@pytest.mark.parametrize("rel", MEMBERS)
def test_flip_data_byte(bundle_copy, pub, rel) -> None:  # noqa: ANN001
    m = layout(bundle_copy)[rel]
    assert m.size > 0
    flip(bundle_copy, m.offset_data + m.size // 2)
    if rel == "signature":
        # The signature no longer parses, or parses and no longer verifies: either way, class 11.
        assert_rejected(bundle_copy, ExitCode.SIGNATURE, pub)
    else:
        doc = assert_rejected(bundle_copy, ExitCode.DIGEST, pub, member=m.name)
        assert {f["path"]: f["status"] for f in doc["files"]}[rel] == "digest-mismatch"


# A byte inside each ustar header field (offset within the 512-byte header).
HEADER_FIELDS = {"name": 1, "mode": 101, "size": 125, "chksum": 149, "typeflag": 156, "magic": 258, "prefix": 345}


@pytest.mark.parametrize(
    "rel,field",
    [(ENGINE, f) for f in HEADER_FIELDS] + [(r, f) for r in ("signature", "manifest.json", LAST) for f in ("name", "size")],
)
def test_flip_header_byte(bundle_copy, pub, rel, field) -> None:  # noqa: ANN001
    m = layout(bundle_copy)[rel]
    flip(bundle_copy, m.offset_data - BLOCK + HEADER_FIELDS[field])  # the header right before the data
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)


@pytest.mark.parametrize("rel", ["signature", "manifest.json", "SHA256SUMS", ENGINE, "runtime/README.txt"])
def test_flip_padding_byte(bundle_copy, pub, rel) -> None:  # noqa: ANN001
    m = layout(bundle_copy)[rel]
    pad = (-m.size) % BLOCK
    assert pad > 0, "no padding to damage"
    flip(bundle_copy, m.offset_data + m.size + pad - 1)
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)


def test_header_size_edited_with_checksum_fixed(bundle_copy, pub) -> None:  # noqa: ANN001
    """A consistent header that shrinks an engine by one block: refused from the header against
    the size the signed manifest gives, before its data is read."""
    m = layout(bundle_copy)[ENGINE]
    off = m.offset_data - BLOCK
    with open(bundle_copy, "r+b") as f:
        f.seek(off)
        block = bytearray(f.read(BLOCK))
        block[124:136] = b"%011o\0" % (m.size - BLOCK)
        header_checksum(block)
        f.seek(off)
        f.write(block)
    assert_rejected(bundle_copy, ExitCode.DIGEST, pub, member=m.name)


def test_not_a_tar(tmp_path, pub) -> None:  # noqa: ANN001
    p = tmp_path / "notes.bundle.tar"
    p.write_bytes(b"this is not a tar archive\n" * 100)
    assert_rejected(p, ExitCode.ARCHIVE, pub)


# -- truncation and trailing data ------------------------------------------------------------------

TRUNCATIONS: Dict[str, Callable[[Dict[str, tarfile.TarInfo], int], int]] = {
    "empty-file": lambda lay, end: 0,
    "first-header": lambda lay, end: 100,
    "signature-data": lambda lay, end: lay["signature"].offset_data + 1000,
    "signature-padding": lambda lay, end: lay["signature"].offset_data + lay["signature"].size,
    "manifest-header": lambda lay, end: lay["manifest.json"].offset_data - BLOCK + 200,
    "between-members": lambda lay, end: lay[ENGINE].offset_data - BLOCK,
    "engine-header": lambda lay, end: lay[ENGINE].offset_data - 300,
    "engine-data": lambda lay, end: lay[ENGINE].offset_data + lay[ENGINE].size // 2,
    "last-member-data": lambda lay, end: lay[LAST].offset_data + 10,
    "before-end-marker": lambda lay, end: end,
    "mid-first-marker-block": lambda lay, end: end + 256,
    "between-marker-blocks": lambda lay, end: end + BLOCK,
    "mid-second-marker-block": lambda lay, end: end + BLOCK + 300,
}


@pytest.mark.parametrize("where", list(TRUNCATIONS))
def test_truncated(bundle_copy, pub, where) -> None:  # noqa: ANN001
    size = TRUNCATIONS[where](layout(bundle_copy), end_of_members(bundle_copy))
    assert size < bundle_copy.stat().st_size
    os.truncate(bundle_copy, size)
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)


def test_truncated_record_padding_is_fine(bundle_copy, pub) -> None:  # noqa: ANN001
    """Control for the cases above: the end marker is what counts, not tar's record padding."""
    os.truncate(bundle_copy, end_of_members(bundle_copy) + 2 * BLOCK)
    assert_verifies(bundle_copy, pub)


@pytest.mark.parametrize("tail", ["garbage", "one-byte-after-zeros", "second-archive"])
def test_appended_data(bundle_copy, tiny_bundle, pub, tail) -> None:  # noqa: ANN001
    data = {
        "garbage": b"#!/bin/sh\nrm -rf /\n",
        "one-byte-after-zeros": b"\0" * BLOCK + b"\x01",
        # A tar that smuggles a whole second copy (with all its members) after the end marker.
        "second-archive": tiny_bundle.read_bytes(),
    }[tail]
    with open(bundle_copy, "ab") as f:
        f.write(data)
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)


def test_appended_zeros_limit(bundle_copy, pub) -> None:  # noqa: ANN001
    trailing = bundle_copy.stat().st_size - (end_of_members(bundle_copy) + 2 * BLOCK)
    allowed = Limits().max_trailing_zeros
    assert 0 <= trailing <= allowed
    with open(bundle_copy, "ab") as f:
        f.write(b"\0" * (allowed - trailing))
    assert_verifies(bundle_copy, pub)  # exactly the allowed amount of zeros: still fine
    with open(bundle_copy, "ab") as f:
        f.write(b"\0")
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)  # one more zero byte: refused
    with open(bundle_copy, "ab") as f:
        f.write(b"\0" * RECORD * 4)
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)


# -- members extra, missing, duplicated, out of order ---------------------------------------------

@pytest.mark.parametrize("rel", ["signature", "manifest.json", "SHA256SUMS", ENGINE, "model/tiny.onnx", "runtime/README.txt", LAST])
def test_duplicated_member(tmp_path, entries, pub, rel) -> None:  # noqa: ANN001
    i = find(entries, rel)
    entries.insert(i + 1, entries[i])
    doc = assert_rejected(write_tar(tmp_path / "dup.tar", entries), ExitCode.MEMBERS, pub)
    assert doc["error"]["member"] == entries[i][0].name


def test_duplicated_member_at_the_end(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """The last copy is the one a naive extractor keeps: it must still be refused."""
    i = find(entries, ENGINE)
    evil = reg(entries[i][0].name, b"\x7fELF" + b"\0" * 100)
    doc = assert_rejected(write_tar(tmp_path / "dup.tar", entries + [evil]), ExitCode.MEMBERS, pub)
    assert doc["error"]["member"] == entries[i][0].name


@pytest.mark.parametrize("where", ["end", "middle", "new-dir"])
def test_extra_member(tmp_path, entries, pub, where) -> None:  # noqa: ANN001
    if where == "end":
        entries.append(reg(f"{ROOT}/extra.txt", b"not signed\n"))
    elif where == "middle":
        entries.insert(find(entries, ENGINE), reg(f"{ROOT}/engines/evil.engine", b"\0" * 2000))
    else:
        entries.append(reg(f"{ROOT}/hooks/post-install.sh", b"#!/bin/sh\n", 0o755))
    doc = assert_rejected(write_tar(tmp_path / "extra.tar", entries), ExitCode.MEMBERS, pub)
    assert [f["status"] for f in doc["files"]].count("extra") == 1


@pytest.mark.parametrize("rel", ["SHA256SUMS", ENGINE, "engines/tiny_16x16_fp32_rtx5090.log", "model/tiny.onnx", "runtime/README.txt", LAST])
def test_missing_member(tmp_path, entries, pub, rel) -> None:  # noqa: ANN001
    del entries[find(entries, rel)]
    doc = assert_rejected(write_tar(tmp_path / "missing.tar", entries), ExitCode.MEMBERS, pub, member=f"{ROOT}/{rel}")
    assert {f["path"]: f["status"] for f in doc["files"]}[rel] == "missing"


def test_missing_manifest(tmp_path, entries, pub) -> None:  # noqa: ANN001
    del entries[find(entries, "manifest.json")]
    assert_rejected(write_tar(tmp_path / "missing.tar", entries), ExitCode.MEMBERS, pub)


def test_manifest_not_second(tmp_path, entries, pub) -> None:  # noqa: ANN001
    i, j = find(entries, "manifest.json"), find(entries, "SHA256SUMS")
    entries[i], entries[j] = entries[j], entries[i]
    assert_rejected(write_tar(tmp_path / "order.tar", entries), ExitCode.MEMBERS, pub)


def test_second_signature_after_payload(tmp_path, entries, pub) -> None:  # noqa: ANN001
    sig = entries[find(entries, "signature")][1]
    entries.append(reg(f"{ROOT}/signatures/late.sig", sig))
    assert_rejected(write_tar(tmp_path / "late-sig.tar", entries), ExitCode.MEMBERS, pub)


# -- unsafe members --------------------------------------------------------------------------------

def _setuid(entries: List[Entry]) -> List[Entry]:
    i = find(entries, "runtime/README.txt")
    entries[i] = reg(entries[i][0].name, entries[i][1], 0o4755)
    return entries


def _pax(key: str, value: str) -> Callable[[List[Entry]], List[Entry]]:
    def f(entries: List[Entry]) -> List[Entry]:
        i = find(entries, ENGINE)
        entries[i][0].pax_headers = {key: value}
        return entries
    return f


def _add(entry: Entry, before: Optional[str] = None) -> Callable[[List[Entry]], List[Entry]]:
    def f(entries: List[Entry]) -> List[Entry]:
        entries.insert(find(entries, before) if before else len(entries), entry)
        return entries
    return f


UNSAFE: Dict[str, Callable[[List[Entry]], List[Entry]]] = {
    "symlink": _add(special(f"{ROOT}/runtime/link", tarfile.SYMTYPE, "/etc/passwd")),
    "symlink-replacing-member": _add(special(f"{ROOT}/engines/x", tarfile.SYMTYPE, "../../../../tmp"), before=ENGINE),
    "hardlink": _add(special(f"{ROOT}/runtime/hard", tarfile.LNKTYPE, f"{ROOT}/model/tiny.onnx")),
    "dotdot": _add(reg(f"{ROOT}/../escape.txt", b"x")),
    "dotdot-deep": _add(reg(f"{ROOT}/runtime/../../../../tmp/escape.txt", b"x")),
    "absolute": _add(reg("/tmp/escape.txt", b"x")),
    "outside-top-dir": _add(reg("elsewhere/file.txt", b"x")),
    "setuid": _setuid,
    "setgid-dir": _add(special(f"{ROOT}/runtime", tarfile.DIRTYPE, mode=0o2755), before="runtime/README.txt"),
    "pax-uname": _pax("uname", "root"),
    "pax-linkpath": _pax("linkpath", "/etc/shadow"),
    "pax-uid": _pax("uid", "0"),
    "case-collision": _add(reg(f"{ROOT}/runtime/readme.txt", b"shadow\n")),
    "case-collision-dir": _add(reg(f"{ROOT}/Model/tiny.onnx", b"shadow\n")),
    "fifo": _add(special(f"{ROOT}/runtime/fifo", tarfile.FIFOTYPE)),
    "char-device": _add(special(f"{ROOT}/runtime/null", tarfile.CHRTYPE)),
    "block-device": _add(special(f"{ROOT}/runtime/sda", tarfile.BLKTYPE)),
    "contiguous-file": _add(special(f"{ROOT}/runtime/cont", tarfile.CONTTYPE)),
    "global-pax-header": _add(special(f"{ROOT}/runtime/g", tarfile.XGLTYPE)),
    "gnu-longname": _add(special(f"{ROOT}/runtime/L", tarfile.GNUTYPE_LONGNAME)),
    "backslash": _add(reg(f"{ROOT}/runtime\\..\\..\\x", b"x")),
    "pax-path-dotdot": _pax("path", f"{ROOT}/../../escape.txt"),
    "pax-path-absolute": _pax("path", "/tmp/escape.txt"),
}


@pytest.mark.parametrize("case", list(UNSAFE))
def test_unsafe_member(tmp_path, entries, pub, case) -> None:  # noqa: ANN001
    path = write_tar(tmp_path / "unsafe.tar", UNSAFE[case](entries))
    with open(path, "rb") as f:  # the hostile bytes really are in the file (tarfile did not tidy them)
        raw = f.read()
    if case in ("absolute", "dotdot", "symlink"):
        assert {"absolute": b"/tmp/escape.txt", "dotdot": b"/../escape.txt", "symlink": b"/etc/passwd"}[case] in raw
    assert_rejected(path, ExitCode.UNSAFE, pub)


# -- signatures ------------------------------------------------------------------------------------

def test_untrusted_signer(other_signed, pub, keys) -> None:  # noqa: ANN001
    doc = assert_rejected(other_signed, ExitCode.SIGNATURE, pub)
    assert [(s["key_id"], s["trusted"]) for s in doc["signers"]] == [(keys["other"]["id"], False)]
    assert_verifies(other_signed, keys["other"]["pub"])  # control: the bundle itself is sound


def test_no_signature(tmp_path, entries, pub) -> None:  # noqa: ANN001
    del entries[find(entries, "signature")]
    assert_rejected(write_tar(tmp_path / "unsigned.tar", entries), ExitCode.SIGNATURE, pub)


def test_signature_moved_to_the_end(tmp_path, entries, pub) -> None:  # noqa: ANN001
    entries.append(entries.pop(find(entries, "signature")))
    assert_rejected(write_tar(tmp_path / "sig-last.tar", entries), ExitCode.SIGNATURE, pub)


def test_signature_not_a_sig_file(tmp_path, entries, pub) -> None:  # noqa: ANN001
    i = find(entries, "signature")
    entries[i] = reg(entries[i][0].name[: -len(".sig")] + ".txt", entries[i][1])
    assert_rejected(write_tar(tmp_path / "sig-name.tar", entries), ExitCode.SIGNATURE, pub)


def test_signature_nested_json(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """A signature file of deeply nested JSON made json.loads raise RecursionError, which was
    reported as an internal error (exit 1); it is an unparsable signature (11)."""
    i = find(entries, "signature")
    entries[i] = reg(entries[i][0].name, b"[" * 200_000)
    assert_rejected(write_tar(tmp_path / "nested.tar", entries), ExitCode.SIGNATURE, pub)


def _edit_signature(entries: List[Entry], edit: Callable[[dict], None]) -> None:
    i = find(entries, "signature")
    doc = json.loads(entries[i][1])
    edit(doc)
    entries[i] = reg(entries[i][0].name, (json.dumps(doc, indent=2) + "\n").encode())


def test_signature_value_altered(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """Well-formed JSON and DER, one bit of the ECDSA `s` value changed: parses, does not verify."""
    def edit(doc: dict) -> None:
        sig = bytearray(base64.b64decode(doc["dsseEnvelope"]["signatures"][0]["sig"]))
        sig[-1] ^= 0x01
        doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(bytes(sig)).decode()
    _edit_signature(entries, edit)
    doc = assert_rejected(write_tar(tmp_path / "badsig.tar", entries), ExitCode.SIGNATURE, pub)
    assert doc["signers"][0]["valid"] is False


def test_signature_not_der(tmp_path, entries, pub) -> None:  # noqa: ANN001
    _edit_signature(entries, lambda d: d["dsseEnvelope"]["signatures"][0].update(sig=base64.b64encode(b"\x30\x02\x01").decode()))
    assert_rejected(write_tar(tmp_path / "badder.tar", entries), ExitCode.SIGNATURE, pub)


def test_signed_statement_edited(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """An engine swapped and its digest rewritten inside the signed statement: the signature breaks."""
    i = find(entries, ENGINE)
    evil = bytearray(entries[i][1])
    evil[-1] ^= 0xFF
    entries[i] = reg(entries[i][0].name, bytes(evil))

    def edit(doc: dict) -> None:
        st = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
        for r in st["predicate"]["resources"]:
            if r["name"] == ENGINE:
                r["digest"] = hashlib.sha256(evil).hexdigest()
        doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st, indent=2).encode()).decode()
    _edit_signature(entries, edit)
    doc = assert_rejected(write_tar(tmp_path / "restated.tar", entries), ExitCode.SIGNATURE, pub)
    assert doc["signers"][0]["valid"] is False


def test_signature_of_other_key_claiming_release_hint(tmp_path, entries, other_signed, pub, keys) -> None:  # noqa: ANN001
    other_sig = read_entries(other_signed)[0][1]
    i = find(entries, "signature")
    doc = json.loads(other_sig)
    doc["verificationMaterial"]["publicKey"]["hint"] = keys["release"]["id"]
    entries[i] = reg(entries[i][0].name, (json.dumps(doc, indent=2) + "\n").encode())
    rep = assert_rejected(write_tar(tmp_path / "forged-hint.tar", entries), ExitCode.SIGNATURE, pub)
    assert rep["signers"][0]["valid"] is False


# -- binding: signed metadata that belongs to another bundle --------------------------------------

def test_splice_other_versions_signature_and_manifest(tmp_path, entries, next_version, pub) -> None:  # noqa: ANN001
    donor = {ti.name.split("/", 1)[1]: (ti, data) for ti, data in read_entries(next_version)}
    sig_rel = next(r for r in donor if r.startswith("signatures/"))
    grafted = [reg(f"{ROOT}/{sig_rel}", donor[sig_rel][1]),
               reg(f"{ROOT}/manifest.json", donor["manifest.json"][1]),
               reg(f"{ROOT}/SHA256SUMS", donor["SHA256SUMS"][1])]
    payload = [e for e in entries if e[0].name.split("/", 1)[1] not in ("manifest.json", "SHA256SUMS")
               and not e[0].name.split("/", 1)[1].startswith("signatures/")]
    path = write_tar(tmp_path / "spliced.tar", grafted + payload)
    # BINDING, not DIGEST: the grafted signature is genuine (release key), so it verifies; the
    # signature is checked before any payload, and the first thing checked after it is that the
    # signed subject ("tiny-1.0.1") is this tar's top directory ("tiny-1.0.0"). That fails before
    # the grafted manifest is even read, so no digest is ever compared.
    doc = assert_rejected(path, ExitCode.BINDING, pub, member=ROOT)
    assert "tiny-1.0.1" in doc["error"]["message"]


def test_splice_other_versions_metadata_under_its_own_name(tmp_path, entries, next_version, pub) -> None:  # noqa: ANN001
    """1.0.1's signature and manifest with 1.0.0's payload, all renamed to tiny-1.0.1/: the
    signature and directory now agree, so what catches it is a payload digest."""
    donor = read_entries(next_version)
    meta = donor[:3]
    assert [ti.name.split("/", 1)[1] for ti, _ in meta][1:] == ["manifest.json", "SHA256SUMS"]
    payload = [reg("tiny-1.0.1/" + ti.name.split("/", 1)[1], data) for ti, data in entries[3:]]
    differing = [ti.name for (ti, d), (_, d2) in zip(payload, donor[3:]) if d != d2]
    assert differing, "the two builds produced identical payloads; this case tests nothing"
    path = write_tar(tmp_path / "spliced.tar", meta + payload)
    assert_rejected(path, ExitCode.DIGEST, pub, member=differing[0])


@pytest.mark.parametrize("new_root", ["tiny-1.0.1", "tiny-9.9.9", "tinier-1.0.0"])
def test_renamed_top_directory(tmp_path, entries, pub, new_root) -> None:  # noqa: ANN001
    renamed = [reg(new_root + "/" + ti.name.split("/", 1)[1], data, ti.mode) for ti, data in entries]
    doc = assert_rejected(write_tar(tmp_path / "renamed.tar", renamed), ExitCode.BINDING, pub)
    assert doc["root"] == new_root


# -- limits ----------------------------------------------------------------------------------------

def _huge_pax_header(entries: List[Entry]) -> List[Entry]:
    ti, _ = special(f"{ROOT}/PaxHeader/evil", tarfile.XHDTYPE)
    ti.size = 100 << 20  # declared only: refused from the header, never read or allocated
    return entries + [(ti, b"")]


def _huge_member(entries: List[Entry]) -> List[Entry]:
    ti, _ = reg(f"{ROOT}/engines/huge.engine", b"")
    ti.size = 2 << 40  # 2 TiB: tarfile moves it into a PAX 'size' record; no data follows
    return entries + [(ti, b"")]


def _many_dirs(entries: List[Entry]) -> List[Entry]:
    # Before the signatures: after them, the first unsigned directory is refused on arrival
    # (class 13) long before the count could trip; here only the count can stop it.
    dirs = [special(f"{ROOT}/d{i}", tarfile.DIRTYPE, mode=0o755) for i in range(Limits().max_members)]
    return dirs + entries


@pytest.mark.parametrize("change", [_huge_pax_header, _huge_member, _many_dirs], ids=["pax-header-size", "member-size", "member-count"])
def test_limits_from_headers(tmp_path, entries, pub, change) -> None:  # noqa: ANN001
    path = write_tar(tmp_path / "limits.tar", change(entries))
    assert path.stat().st_size < 8 << 20  # the limit trips on what headers claim, not on bytes read
    assert_rejected(path, ExitCode.LIMITS, pub)


def test_long_member_name_error_is_one_line(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """A 300-character name with spaces in the error message must not be wrapped onto two lines."""
    name = f"{ROOT}/notes/" + "read me " * 40 + ".txt"
    entries.append(reg(name, b"x"))
    doc = assert_rejected(write_tar(tmp_path / "long.tar", entries), ExitCode.MEMBERS, pub, member=name)
    assert name in doc["error"]["message"]


def test_member_limit(tiny_bundle, pub) -> None:  # noqa: ANN001
    rep = verify_bundle(tiny_bundle, load_trust([pub]), limits=Limits(max_members=3))
    assert rep.ok is False
    assert rep.exit_code == ExitCode.LIMITS == 15
    assert rep.error is not None and rep.error.failure_class == "limits" and rep.error.code == 15
    assert rep.to_dict()["error"]["class"] == "limits"
    assert verify_bundle(tiny_bundle, load_trust([pub]), limits=Limits(max_members=len(MEMBERS))).ok  # control


def test_member_size_limit(tiny_bundle, pub) -> None:  # noqa: ANN001
    rep = verify_bundle(tiny_bundle, load_trust([pub]), limits=Limits(max_member_size=100_000))
    assert rep.ok is False and rep.exit_code == ExitCode.LIMITS
    assert rep.error is not None and rep.error.member == f"{ROOT}/engines/tiny_16x16_fp32_rtx5090.engine"


# -- extract: a refused bundle leaves nothing behind -----------------------------------------------

def _append(p: Path, data: bytes) -> None:
    with open(p, "ab") as f:
        f.write(data)


def _flip_rel(rel: str) -> Callable[[Path, Path, Path], None]:
    def f(p: Path, tmp: Path, other: Path) -> None:
        m = layout(p)[rel]
        flip(p, m.offset_data + m.size // 2)
    return f


def _repack(change: Callable[[List[Entry]], List[Entry]]) -> Callable[[Path, Path, Path], None]:
    def f(p: Path, tmp: Path, other: Path) -> None:
        write_tar(p, change(read_entries(p)))
    return f


EXTRACT_CASES: Dict[str, Tuple[Callable[[Path, Path, Path], None], int]] = {
    "first-engine-flipped": (_flip_rel("engines/tiny_16x16_fp32_rtx5090.engine"), ExitCode.DIGEST),
    "last-member-flipped": (_flip_rel(LAST), ExitCode.DIGEST),
    "truncated-before-end-marker": (lambda p, t, o: os.truncate(p, end_of_members(p)), ExitCode.ARCHIVE),
    "appended-garbage": (lambda p, t, o: _append(p, b"evil"), ExitCode.ARCHIVE),
    "symlink": (_repack(UNSAFE["symlink"]), ExitCode.UNSAFE),
    "dotdot": (_repack(UNSAFE["dotdot"]), ExitCode.UNSAFE),
    "extra-member": (_repack(_add(reg(f"{ROOT}/extra.txt", b"x"))), ExitCode.MEMBERS),
    "untrusted-signer": (lambda p, t, o: shutil.copyfile(o, p), ExitCode.SIGNATURE),
    "renamed-top-dir": (_repack(lambda es: [reg("tiny-2.0.0/" + ti.name.split("/", 1)[1], d) for ti, d in es]), ExitCode.BINDING),
}


@pytest.mark.parametrize("case", list(EXTRACT_CASES))
@pytest.mark.parametrize("json_mode", [False, True], ids=["plain", "json"])
def test_extract_refused_leaves_nothing(bundle_copy, tmp_path, pub, other_signed, case, json_mode) -> None:  # noqa: ANN001
    tamper, code = EXTRACT_CASES[case]
    tamper(bundle_copy, tmp_path, other_signed)
    parent = tmp_path / "target"
    parent.mkdir()
    dest = parent / "tiny"
    r = run_bundle("extract", bundle_copy, "--trust", pub, "--dest", dest, *(["--json"] if json_mode else []))
    assert r.code == code, r.err
    assert len(r.err.strip().splitlines()) == 1 and r.err.startswith(f"error [{_cls(code)}]: "), r.err
    assert not dest.exists() and not dest.is_symlink()
    assert os.listdir(parent) == []  # no .tiny.staging-* left behind
    assert not any(p.name.startswith(".tiny.staging") for p in tmp_path.rglob("*"))
    if json_mode:
        doc = json.loads(r.out)
        assert doc["ok"] is False and doc["exit_code"] == code and doc["error"]["class"] == _cls(code)
        assert doc["extracted_to"] is None


def test_extract_unwritable_name_is_output_error(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """Signature file names are not signed, so a 300-byte one passes `verify`; no filesystem here can
    hold it. That was reported as an ARCHIVE "read error" (10); it is a failure to write (OUTPUT, 6)
    and it still leaves nothing behind."""
    i = find(entries, "signature")
    entries[i] = reg(f"{ROOT}/signatures/{'a' * 300}.sig", entries[i][1])
    path = write_tar(tmp_path / "longsig.tar", entries)
    parent = tmp_path / "target"
    parent.mkdir()
    for json_mode in (False, True):
        r = run_bundle("extract", path, "--trust", pub, "--dest", parent / "tiny", *(["--json"] if json_mode else []))
        assert r.code == ExitCode.OUTPUT, r.err
        assert len(r.err.strip().splitlines()) == 1 and r.err.startswith("error [output]: "), r.err
        if json_mode:
            doc = json.loads(r.out)
            assert doc["ok"] is False and doc["exit_code"] == r.code and doc["error"]["class"] == "output"
        assert os.listdir(parent) == []


def test_extract_good_bundle_control(tiny_bundle, tmp_path, pub) -> None:  # noqa: ANN001
    """Control for the case above: the same command on the good bundle does create DEST."""
    parent = tmp_path / "target"
    parent.mkdir()
    dest = parent / "tiny"
    r = run_bundle("extract", tiny_bundle, "--trust", pub, "--dest", dest)
    assert r.code == 0, r.err
    assert os.listdir(parent) == ["tiny"]
    assert (dest / ENGINE).stat().st_size == layout(tiny_bundle)[ENGINE].size


# -- strictness of numbers and dangling headers (two parsers must never read different things) --

def test_pax_header_dangling_before_end_marker(tmp_path, entries, pub) -> None:  # noqa: ANN001
    good = write_tar(tmp_path / "good.tar", entries)
    raw = bytearray(good.read_bytes())
    end = end_of_members(good)
    record = b"path=../../../evil.txt\n"
    line = b"%d %s" % (len(record) + 3, record)
    ti = tarfile.TarInfo("././@PaxHeader")
    ti.type, ti.size = tarfile.XHDTYPE, len(line)
    hdr = ti.tobuf(tarfile.USTAR_FORMAT)
    body = line + b"\0" * ((-len(line)) % BLOCK)
    out = bytes(raw[:end]) + hdr + body + b"\0" * (2 * BLOCK)
    out += b"\0" * ((-len(out)) % RECORD)
    (tmp_path / "dangling.tar").write_bytes(out)
    assert_rejected(tmp_path / "dangling.tar", ExitCode.ARCHIVE, pub)


@pytest.mark.parametrize("size_value", ["+5", "1_0", " 10", "0x10", "10\n"])
def test_pax_size_must_be_plain_decimal(tmp_path, entries, pub, size_value) -> None:  # noqa: ANN001
    i = find(entries, "runtime/README.txt")
    ti, data = entries[i]
    ti.pax_headers = {"size": size_value}
    path = write_tar(tmp_path / "b.tar", entries)
    assert_rejected(path, ExitCode.ARCHIVE, pub)


def test_ustar_size_with_0o_prefix(bundle_copy, pub) -> None:  # noqa: ANN001
    m = layout(bundle_copy)["runtime/README.txt"]
    with open(bundle_copy, "r+b") as f:
        f.seek(m.offset)
        block = bytearray(f.read(BLOCK))
        field = block[124:136]
        digits = field.rstrip(b"\0 ").lstrip(b"0 ")
        block[124:136] = (b"0o" + digits).rjust(11, b"0")[:11] + b"\0"
        header_checksum(block)
        f.seek(m.offset)
        f.write(block)
    assert_rejected(bundle_copy, ExitCode.ARCHIVE, pub)


def test_directory_entries_of_signed_paths_are_accepted(tmp_path, entries, pub) -> None:  # noqa: ANN001
    """Tools that write directory entries (GNU tar, 7-Zip) must not make a good bundle fail."""
    root = entries[0][0].name.split("/", 1)[0]
    dirs = [special(f"{root}/{d}", tarfile.DIRTYPE, mode=0o755) for d in ("signatures", "engines", "runtime")]
    path = write_tar(tmp_path / "dirs.tar", [special(root, tarfile.DIRTYPE, mode=0o755), dirs[0], entries[0], *entries[1:3],
                                            dirs[1], *entries[3:], dirs[2]])
    assert_verifies(path, pub)


# -- a trusted signer's tool that writes a wrong manifest (signature valid, semantics not) ------------

def _resign(entries: List[Entry], key_path: Path, edit: Callable[[dict], None]) -> List[Entry]:
    """Edit manifest.json, then recompute SHA256SUMS and re-sign with the TRUSTED key, so only the
    manifest's semantic checks can catch it."""
    from bundler.signing import load_private_key, make_statement, sign_statement

    i = find(entries, "manifest.json")
    doc = json.loads(entries[i][1])
    edit(doc)
    manifest = (json.dumps(doc, sort_keys=True, indent=2) + "\n").encode()
    entries[i] = reg(entries[i][0].name, manifest)
    digests = {}
    for ti, data in entries:
        rel = ti.name.split("/", 1)[1]
        if not rel.startswith("signatures/") and rel != "SHA256SUMS":
            digests[rel] = hashlib.sha256(data).hexdigest()
    sums = "".join(f"{d}  {p}\n" for p, d in digests.items()).encode()
    j = find(entries, "SHA256SUMS")
    entries[j] = reg(entries[j][0].name, sums)
    digests["SHA256SUMS"] = hashlib.sha256(sums).hexdigest()
    sig = sign_statement(make_statement(ROOT, digests), load_private_key(key_path, None))
    k = find(entries, "signature")
    entries[k] = reg(entries[k][0].name, sig)
    return entries


@pytest.mark.parametrize("case", ["format", "version", "golden-path", "engine-header", "model-digest", "engine-precision",
                                  "control"])
def test_trusted_but_wrong_manifest(tmp_path, entries, pub, keys, case) -> None:  # noqa: ANN001
    def edit(doc: dict) -> None:
        if case == "format":
            doc["format"] = "trt-bundle/99"
        elif case == "version":
            doc["version"] = "1.0"
        elif case == "golden-path":
            doc["golden"]["outputs"] = "golden/elsewhere.npz"
        elif case == "engine-header":
            sm86 = next(e for e in doc["engines"] if e["target"]["label"] == "sm86")
            sm86["header"]["cc"], sm86["header"]["cc_mask"] = ["8.9"], 8  # relabel an SM86 engine as SM89
        elif case == "model-digest":
            doc["model"]["sha256"] = "0" * 64
        elif case == "engine-precision":
            doc["engines"][0]["build"]["precision"] = "int8"  # no int8 graph is signed

    path = write_tar(tmp_path / f"{case}.tar", _resign(entries, keys["release"]["key"], edit))
    if case == "control":
        assert_verifies(path, pub)  # re-signing itself is sound: only the edits are caught
    else:
        assert_rejected(path, ExitCode.BINDING, pub)
