"""Edge and boundary cases of the shared verifier that the first mutation run showed untested.

Each case is hostile input (or a valid edge) with one expected exit code, built from the good
test bundle like the tables in tests/test_stdlib_verifier.py. They live here, not in those tables,
because they run in-process only (tests/test_verifier_cases.py, and the mutation oracle through
it): each pins a boundary or a defence-in-depth check that a whole-bundle tamper does not reach:
the exact limit of a name, a PAX header or a JSON depth; a link target in the last byte of its
field; statements re-signed by the trusted key whose fields sort below and above the one value
allowed (so that `!=` cannot be weakened to `<` or `>` unnoticed); two trusted signatures that
disagree.
"""

from __future__ import annotations

import hashlib
import json
import struct
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import test_stdlib_verifier as sv
from bundler.signing import load_private_key, sign_statement
from runtime_stub import verify as shared

ROOT = sv.ROOT
Entry = Tuple[tarfile.TarInfo, bytes]
Build = Callable[[Path, Path, dict], Path]


def _entries(good: Path) -> List[Entry]:
    return sv.read_entries(good)


def _tar(edit: Callable[[List[Entry], dict], List[Entry]]) -> Build:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        return sv.write_tar(work / "case.tar", edit(_entries(good), ctx))
    return build


def _fix_checksum(data: bytearray, off: int) -> None:
    """The ustar checksum of the header at ``off``, recomputed after a hand edit."""
    data[off + 148:off + 156] = b" " * 8
    data[off + 148:off + 156] = b"%06o\0 " % sum(data[off:off + 512])


def _patched(rel: str, at: int, value: bytes, edit: Callable[[List[Entry], dict], List[Entry]] = None) -> Build:
    """Header bytes of member ``rel`` overwritten by hand (what tarfile will not write), checksum fixed."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        src = work / "base.tar"
        sv.write_tar(src, edit(_entries(good), ctx) if edit else _entries(good))
        data = bytearray(src.read_bytes())
        off = sv.data_offsets(src)[f"{ROOT}/{rel}"][0]
        data[off + at:off + at + len(value)] = value
        _fix_checksum(data, off)
        out = work / "case.tar"
        out.write_bytes(bytes(data))
        src.unlink()
        return out
    return build


def _raw_pax(rel: str, records: bytes) -> Build:
    """A PAX extended header with exactly ``records`` (not re-encoded) before member ``rel``."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        src = work / "base.tar"
        sv.write_tar(src, _entries(good))
        data = src.read_bytes()
        off = sv.data_offsets(src)[f"{ROOT}/{rel}"][0]
        ti = tarfile.TarInfo("././@PaxHeader")
        ti.type, ti.size, ti.mtime = tarfile.XHDTYPE, len(records), 0
        pax = ti.tobuf(tarfile.USTAR_FORMAT) + records + b"\0" * (-len(records) % 512)
        out = work / "case.tar"
        out.write_bytes(data[:off] + pax + data[off:])
        src.unlink()
        return out
    return build


def _pax_size_of(rel: str) -> Build:
    """A PAX ``size`` record that says what the ustar size field says (valid, and taken)."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        size = len(_entries(good)[sv.find(_entries(good), rel)][1])
        return _raw_pax(rel, _pax_record("size", str(size)))(good, work, ctx)
    return build


def _pax_record(key: str, value: str) -> bytes:
    body = f" {key}={value}\n".encode()
    n = len(body) + len(str(len(body)))
    n = len(body) + len(str(n))
    return str(n).encode() + body


def _pax_record_of_size(key: str, total: int) -> bytes:
    """One PAX record of exactly ``total`` bytes (a long mtime fraction fills it)."""
    fixed = len(f"{total} {key}=1700000000.\n")
    return _pax_record(key, "1700000000." + "0" * (total - fixed))


def _shadow(ustar_name: str, mode: bytes = None) -> Build:
    """README.txt under a PAX path of its own name, its ustar name field set to ``ustar_name``
    (what a tar that ignores PAX headers would extract it to), and its mode field to ``mode``."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        rel = "runtime/README.txt"
        base = sv.write_tar(work / "base.tar", _entries(good))
        off = sv.data_offsets(base)[f"{ROOT}/{rel}"][0]
        data = bytearray(base.read_bytes())
        data[off:off + 100] = ustar_name.encode().ljust(100, b"\0")[:100]
        if mode is not None:
            data[off + 100:off + 108] = mode
        _fix_checksum(data, off)
        rec = _pax_record("path", f"{ROOT}/{rel}")
        ti = tarfile.TarInfo("././@PaxHeader")
        ti.type, ti.size, ti.mtime = tarfile.XHDTYPE, len(rec), 0
        pax = ti.tobuf(tarfile.USTAR_FORMAT) + rec + b"\0" * (-len(rec) % 512)
        out = work / "case.tar"
        out.write_bytes(bytes(data[:off]) + pax + bytes(data[off:]))
        base.unlink()
        return out
    return build


def _set(rel: str, **attrs: object) -> Callable[[List[Entry], dict], List[Entry]]:
    def edit(es: List[Entry], ctx: dict) -> List[Entry]:
        return sv._set(rel, **attrs)(es)
    return edit


def _add(name: str, data: bytes = b"x") -> Callable[[List[Entry], dict], List[Entry]]:
    def edit(es: List[Entry], ctx: dict) -> List[Entry]:
        return es + [sv.reg(name, data)]
    return edit


def _resigned(**kw: object) -> Build:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        return sv.write_tar(work / "case.tar", sv.resign(_entries(good), ctx["keys"]["release"]["key"], **kw))
    return build


def _statement(edit: Callable[[dict], None]) -> Build:
    return _resigned(edit_statement=edit)


def _manifest(edit: Callable[[dict], None]) -> Build:
    return _resigned(edit_manifest=edit)


def _set_path(path: Tuple, value: object) -> Callable[[dict], None]:
    def edit(doc: dict) -> None:
        d = doc
        for k in path[:-1]:
            d = d[k]
        d[path[-1]] = value
    return edit


def _nested(depth: int) -> Callable[[dict], None]:
    """An unknown manifest field holding arrays nested so that the document is ``depth`` deep."""
    def edit(m: dict) -> None:
        v: object = []
        for _ in range(depth - 2):
            v = [v]
        m["zz_extra"] = v
    return edit


def _second_signature(edit_statement: Callable[[dict], None], first_edit: Optional[Callable[[dict], None]] = None,
                      coherent: bool = True) -> Build:
    """The bundle signed by the release key (its statement edited by ``first_edit``), plus a
    signature by the 'other' key (trusted in this case) over that statement changed by
    ``edit_statement``; ``coherent``: its subject digest then follows its resources."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = sv.resign(_entries(good), ctx["keys"]["release"]["key"], edit_statement=first_edit)
        gi = sv.sig_index(es)
        doc = json.loads(es[gi][1])
        import base64
        st = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
        edit_statement(st)
        if coherent:
            st["subject"][0]["digest"]["sha256"] = shared.subject_digest(
                {r["name"]: r["digest"] for r in st["predicate"]["resources"]})
        other = load_private_key(ctx["keys"]["other"]["key"], None)
        ti = tarfile.TarInfo(f"{ROOT}/signatures/{ctx['keys']['other']['id']}.sig")
        ti.mtime, ti.mode = es[gi][0].mtime, 0o644
        es.insert(gi + 1, (ti, sign_statement(json.dumps(st).encode(), other)))
        return sv.write_tar(work / "case.tar", es)
    return build


def _other_engine_header(field: str, value: object) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        e = next(e for e in m["engines"] if e.get("header"))
        e["header"][field] = value
    return edit


SM86 = "engines/tiny_16x16_fp32_sm86.engine"
PROVENANCE_DIR = "provenance"


def _engine(data_of: Callable[[bytes], bytes], record: Callable[[dict], None] = None) -> Build:
    """The sm_86 engine's bytes replaced (``data_of``), its record and file entry updated to match
    (``record`` edits the rest), re-signed by the trusted key: the binding checks see a bundle
    whose signature and digests all hold."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        # the SLSA provenance names each engine's digest: a bundle whose engine changes is re-sealed
        # without one (provenance is optional; its own checks have their cases in test_provenance.py)
        es = [e for e in _entries(good) if not e[0].name.startswith(f"{ROOT}/{PROVENANCE_DIR}/")]
        i = sv.find(es, SM86)
        data = data_of(es[i][1])
        es[i] = (es[i][0], data)
        sha = hashlib.sha256(data).hexdigest()

        def edit(m: dict) -> None:
            e = next(e for e in m["engines"] if e["path"] == SM86)
            e["sha256"], e["size"] = sha, len(data)
            f = next(f for f in m["files"] if f["path"] == SM86)
            f["sha256"], f["size"] = sha, len(data)
            m["files"] = [f for f in m["files"] if not f["path"].startswith(f"{PROVENANCE_DIR}/")]
            if record is not None:
                record(e)
        return sv.write_tar(work / "case.tar", sv.resign(es, ctx["keys"]["release"]["key"], edit_manifest=edit))
    return build


def _rtx_mask(mask: int, cc: str, ccs: List[str]) -> Build:
    """The sm_86 engine re-headed for ``mask`` (TensorRT-RTX's compute-capability bits) and
    labelled ``cc`` with header cc list ``ccs``, consistently."""
    def data_of(d: bytes) -> bytes:
        b = bytearray(d)
        struct.pack_into("<Q", b, 32, mask)
        return bytes(b)

    def record(e: dict) -> None:
        e["header"]["cc"], e["header"]["cc_mask"], e["target"]["cc"] = ccs, mask, cc
    return _engine(data_of, record)


def _full_trt(magic: bytes, version: Tuple[int, int, int], backend_version: str = None) -> Build:
    """The sm_86 engine replaced by bytes with a full-TensorRT header (``magic``, version bytes at
    24-26), recorded as a TensorRT engine of that version."""
    def data_of(d: bytes) -> bytes:
        b = bytearray(d[:4096])
        b[0:4] = magic
        b[24:27] = bytes(version)
        b[28:32] = b"\0\0\0\0"
        return bytes(b)

    def record(e: dict) -> None:
        v = ".".join(str(x) for x in version)
        e["header"] = {"product": "tensorrt", "version": v, "cc": None, "cc_mask": None}
        e["backend"] = dict(e["backend"], name="tensorrt", module="tensorrt", version=backend_version or v + ".35")
    return _engine(data_of, record)


def _cut_engine(n: int) -> Build:
    return _engine(lambda d: d[:n])


def _rtx_field(at: int, value: bytes) -> Build:
    def data_of(d: bytes) -> bytes:
        b = bytearray(d)
        b[at:at + len(value)] = value
        return bytes(b)
    return _engine(data_of)


def _sha_edge(which: str, low: bool) -> Callable[[dict], None]:
    """A signed digest in the manifest replaced by the lowest or highest 64-hex value."""
    value = "0" * 64 if low else "f" * 64

    def edit(m: dict) -> None:
        if which == "model":
            m["model"]["sha256"] = value
        elif which == "engine":
            next(e for e in m["engines"] if e["path"] == SM86)["sha256"] = value
        elif which == "file":
            next(f for f in m["files"] if f["path"] == SM86)["sha256"] = value
        elif which == "variant":
            m["variants"][0]["sha256"] = value
    return edit


def _size_edge(which: str, delta: int) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        if which == "model":
            m["model"]["size"] += delta
        elif which == "engine":
            next(e for e in m["engines"] if e["path"] == SM86)["size"] += delta
        elif which == "variant":
            m["variants"][0]["size"] += delta
    return edit


def _deep_objects(depth: int) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        v: object = {}
        for _ in range(depth - 2):
            v = {"a": v}
        m["zz_extra"] = v
    return edit


def _extra(value: object) -> Callable[[dict], None]:
    return _set_path(("zz_extra",), value)


def _as_cpu(bytes_of: str = "model", backend: str = "onnxruntime", label: str = "cpu") -> Build:
    """The sm_86 engine's record turned into a cpu-target one (no header, onnxruntime) whose
    "engine" is ``bytes_of``: the signed fp32 graph (what a cpu target ships) or the engine."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good)
        model = es[sv.find(es, "model/tiny.onnx")][1]
        engine = es[sv.find(es, SM86)][1]
        data = model if bytes_of == "model" else engine

        def record(e: dict) -> None:
            e["header"] = None
            e["backend"] = {"name": backend, "version": "1.20.1", "module": backend, "cuda": None, "driver": None}
            e["target"] = {"label": label, "cc": None, "gpu": None}
        return _engine(lambda d: data, record)(good, work, ctx)
    return build


def _drop(*rels: str) -> Build:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = [e for e in _entries(good) if e[0].name not in {f"{ROOT}/{r}" for r in rels}]
        return sv.write_tar(work / "case.tar", es)
    return build


def _dir(edit: Callable[[Path], None]) -> Build:
    """The verified bundle extracted into a directory, then ``edit``ed (directory mode)."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        import shutil
        d = work / ROOT
        shutil.copytree(ctx["extracted"], d)
        edit(d)
        return d
    return build


def _unlink(*rels: str) -> Callable[[Path], None]:
    def edit(d: Path) -> None:
        for r in rels:
            (d / r).unlink()
    return edit


def _sparse(*sizes: int) -> Callable[[Path], None]:
    """Extra files in the extracted directory, sparse (no disk blocks), of the given sizes: the
    per-member and total size limits are checked before anything is read."""
    def edit(d: Path) -> None:
        for i, size in enumerate(sizes):
            with open(d / "engines" / f"big{i}.bin", "wb") as f:
                f.truncate(size)
    return edit


def _sparse_to_total(total: int) -> Callable[[Path], None]:
    """Sparse extra files that bring the directory's content to exactly ``total`` bytes."""
    def edit(d: Path) -> None:
        have = sum(p.stat().st_size for p in d.rglob("*") if p.is_file())
        left, sizes = total - have, []
        while left > 0:
            sizes.append(min(left, _MAX_MEMBER))
            left -= sizes[-1]
        _sparse(*sizes)(d)
    return edit


def _many_files(total: int) -> Callable[[Path], None]:
    """Empty extra files so that the directory holds ``total`` entries (files and directories)."""
    def edit(d: Path) -> None:
        have = sum(1 for _ in d.rglob("*"))
        extra = d / "engines" / "many"
        extra.mkdir()
        for i in range(total - have - 1):
            (extra / str(i)).touch()
    return edit


_MAX_MEMBERS = shared.Limits().max_members
_MAX_MEMBER = shared.Limits().max_member_size
_MAX_TOTAL = shared.Limits().max_total_size
_MAX_PAX = shared.Limits().max_pax_header
_NAME_MAX = shared.Limits().max_name_bytes

EDGES: Dict[str, Tuple[Build, int]] = {
    # tar reader: link targets, magic, names, PAX records and limits
    "linkname-one-char": (_tar(_set("runtime/README.txt", linkname="x")), 14),
    "linkname-last-byte": (_patched("runtime/README.txt", 256, b"x"), 14),
    "magic-gnu": (_patched("runtime/README.txt", 257, b"ustar  \0"), 10),
    "magic-version-nul": (_patched("runtime/README.txt", 257, b"ustar\0\0\0"), 10),
    "typeflag-nul-regular-file": (_patched("runtime/README.txt", 156, b"\0"), 0),
    "contiguous-file": (_patched("runtime/README.txt", 156, b"7"), 14),
    "name-control-char": (_tar(_add(f"{ROOT}/runtime/a\x01b")), 14),
    "name-del-char": (_tar(_add(f"{ROOT}/runtime/a\x7fb")), 14),
    "name-backslash": (_tar(_add(f"{ROOT}/runtime/a\\b")), 14),
    "name-empty-component": (_tar(_add(f"{ROOT}/runtime//b")), 14),
    "name-dot-component": (_tar(_add(f"{ROOT}/runtime/./b")), 14),
    "name-at-the-byte-limit": (_tar(_add(f"{ROOT}/" + "n" * (_NAME_MAX - len(ROOT) - 1))), 13),
    "name-one-byte-over": (_tar(_add(f"{ROOT}/" + "n" * (_NAME_MAX - len(ROOT)))), 15),
    "pax-header-empty": (_raw_pax("runtime/README.txt", b""), 0),
    "pax-size-equal-to-real": (_pax_size_of("runtime/README.txt"), 0),
    "pax-size-14-digits": (_raw_pax("runtime/README.txt", _pax_record("size", "1" + "0" * 13)), 15),
    "pax-size-over-member-limit": (_raw_pax("runtime/README.txt", _pax_record("size", str((1 << 40) + 1))), 15),
    "pax-mtime-fraction": (_raw_pax("runtime/README.txt", _pax_record("mtime", "1700000000.5")), 0),
    "pax-mtime-negative": (_raw_pax("runtime/README.txt", _pax_record("mtime", "-1")), 0),
    "pax-header-at-the-limit": (_raw_pax("runtime/README.txt", _pax_record_of_size("mtime", _MAX_PAX)), 0),
    "pax-header-one-byte-over": (_raw_pax("runtime/README.txt", _pax_record_of_size("mtime", _MAX_PAX + 1)), 15),
    "pax-record-no-equals": (_raw_pax("runtime/README.txt", b"9 mtime1\n"), 10),
    "pax-record-no-newline": (_raw_pax("runtime/README.txt", b"10 mtime=1 "), 10),
    "pax-record-no-space": (_raw_pax("runtime/README.txt", b"10mtime=1\n"), 10),
    "pax-record-length-too-long": (_raw_pax("runtime/README.txt", b"99 mtime=1\n"), 10),
    "pax-record-length-too-many-digits": (_raw_pax("runtime/README.txt", b"0000000000011 mtime=1\n"), 10),
    "pax-key-twice": (_raw_pax("runtime/README.txt", _pax_record("mtime", "1") + _pax_record("mtime", "2")), 10),
    "pax-path-shadow-plain": (_shadow("x/README.txt"), 0),
    "pax-path-shadow-dotdot": (_shadow("x/../README.txt"), 14),
    "pax-path-shadow-absolute": (_shadow("/README.txt"), 14),
    "pax-path-shadow-dotdot-last-99": (_shadow("x/" + "y" * 94 + "/.."), 14),
    "pax-path-shadow-dotdot-cut-100": (_shadow("x/" + "y" * 95 + "/.."), 0),
    # signed statements re-signed by the trusted key: each field below and above its one value
    "statement-type-lower": (_statement(_set_path(("_type",), "https://in-toto.io/Statement/v0.1")), 11),
    "statement-type-higher": (_statement(_set_path(("_type",), "https://in-toto.io/Statement/v2")), 11),
    "statement-predicate-type-lower": (_statement(_set_path(("predicateType",), "https://model_signing/signature/v0.9")), 11),
    "statement-predicate-type-higher": (_statement(_set_path(("predicateType",), "https://model_signing/signature/v2.0")), 11),
    "statement-no-subject": (_statement(_set_path(("subject",), [])), 11),
    "statement-two-subjects": (_statement(lambda st: st["subject"].append(dict(st["subject"][0]))), 11),
    "statement-method-lower": (_statement(_set_path(("predicate", "serialization", "method"), "dirs")), 11),
    "statement-method-higher": (_statement(_set_path(("predicate", "serialization", "method"), "shards")), 11),
    "statement-hash-lower": (_statement(_set_path(("predicate", "serialization", "hash_type"), "sha1")), 11),
    "statement-hash-higher": (_statement(_set_path(("predicate", "serialization", "hash_type"), "sha512")), 11),
    "statement-algorithm-lower": (_statement(lambda st: st["predicate"]["resources"][0].update(algorithm="sha1")), 11),
    "statement-algorithm-higher": (_statement(lambda st: st["predicate"]["resources"][0].update(algorithm="sha512")), 11),
    "statement-digest-not-hex": (_statement(lambda st: st["predicate"]["resources"][0].update(digest="z" * 64)), 11),
    "statement-name-not-string": (_statement(lambda st: st["predicate"]["resources"][0].update(name=7)), 11),
    "statement-expires-not-string": (_statement(_set_path(("predicate", "expires"), 20991231)), 11),
    "statement-expires-bad-form": (_statement(_set_path(("predicate", "expires"), "2099-12-31")), 11),
    "statement-expires-future": (_statement(_set_path(("predicate", "expires"), "2099-12-31T00:00:00Z")), 0),
    "statement-expired": (_statement(_set_path(("predicate", "expires"), "2001-01-01T00:00:00Z")), 16),
    # two trusted signatures (both keys trusted in these cases)
    "two-signatures-agree": (_second_signature(lambda st: None), 0),
    "two-signatures-other-resources": (_second_signature(lambda st: st["predicate"]["resources"].pop()), 11),
    "two-signatures-other-subject": (_second_signature(lambda st: st["subject"][0].update(name="tiny-9.0.0")), 11),
    # manifests re-signed by the trusted key
    "manifest-depth-at-the-limit": (_manifest(_nested(shared.MAX_JSON_DEPTH)), 0),  # unknown fields are allowed
    "manifest-depth-one-over": (_manifest(_nested(shared.MAX_JSON_DEPTH + 1)), 16),
    "manifest-name-100": (_manifest(_set_path(("name",), "n" * 100)), 16),
    "manifest-name-101": (_manifest(_set_path(("name",), "n" * 101)), 16),
    "manifest-engine-product-lower": (_manifest(_other_engine_header("product", "tensorrt")), 16),
    "manifest-engine-product-higher": (_manifest(_other_engine_header("product", "tensorrt-rtz")), 16),
    "manifest-engine-version-lower": (_manifest(_other_engine_header("version", "0.0.0.1")), 16),
    "manifest-engine-cc-mask-other": (_manifest(_other_engine_header("cc_mask", 1)), 16),
    "manifest-engine-cc-other": (_manifest(_other_engine_header("cc", ["7.5"])), 16),
    "manifest-file-listed-twice": (_manifest(lambda m: m["files"].append(dict(m["files"][0]))), 16),
    # the JSON depth pre-scan: brackets inside strings, escaped quotes, 64 KiB chunk boundaries
    "manifest-brackets-in-a-string": (_manifest(_extra("[" * 200 + "{" * 200)), 0),
    "manifest-escaped-quote-then-brackets": (_manifest(_extra('a\\"' + "[" * 200)), 0),
    "manifest-objects-one-over": (_manifest(_deep_objects(shared.MAX_JSON_DEPTH + 1)), 16),
    "manifest-objects-at-the-limit": (_manifest(_deep_objects(shared.MAX_JSON_DEPTH)), 0),
    "manifest-string-across-a-chunk": (_manifest(_extra(["x" * 70000 + "[" * 100, [[[]]]])), 0),
    "manifest-deep-after-a-chunk": (_manifest(lambda m: (_extra("x" * 70000)(m), _nested(shared.MAX_JSON_DEPTH + 1)(m))
                                              and None), 16),
    # engine headers: every TensorRT-RTX compute capability bit, full TensorRT magics, cut headers
    **{f"engine-rtx-cc-{cc}": (_rtx_mask(bit, cc, [cc]), 0)
       for bit, cc in ((0x01, "7.5"), (0x02, "8.0"), (0x08, "8.9"), (0x20, "12.1"))},
    "engine-rtx-two-bits": (_rtx_mask(0x06, "8.0", ["8.0", "8.6"]), 0),
    "engine-rtx-bit-outside-table": (_rtx_mask(0x40, "8.6", []), 16),
    "engine-full-trt-ftrt": (_full_trt(b"ftrt", (10, 13, 0)), 0),
    "engine-full-trt-ptrt": (_full_trt(b"ptrt", (10, 8, 1)), 0),
    "engine-full-trt-other-first-byte": (_full_trt(b"ntrt", (10, 13, 2)), 0),
    "engine-full-trt-version-differs": (_full_trt(b"ftrt", (10, 13, 0), backend_version="10.12.0.36"), 16),
    "engine-unknown-magic": (_full_trt(b"ftrx", (10, 13, 0)), 16),
    "engine-31-bytes": (_cut_engine(31), 16),
    "engine-32-bytes": (_cut_engine(32), 16),
    "engine-39-bytes": (_cut_engine(39), 16),
    "engine-40-bytes": (_cut_engine(40), 16),
    "engine-rtx-second-tag-lower": (_rtx_field(28, b"vtrs"), 16),
    "engine-rtx-second-tag-higher": (_rtx_field(28, b"vtru"), 16),
    "engine-rtx-recorded-size-lower": (_rtx_field(16, struct.pack("<Q", 1)), 16),
    "engine-rtx-recorded-size-higher": (_rtx_field(16, struct.pack("<Q", 1 << 40)), 16),
    "engine-rtx-version-byte": (_rtx_field(27, b"\x7f"), 16),
    # manifest binding: each signed digest and size below and above the true one
    **{f"manifest-{w}-sha-{'low' if low else 'high'}": (_manifest(_sha_edge(w, low)), 16)
       for w in ("model", "engine", "file") for low in (True, False)},
    **{f"manifest-{w}-size-{'minus' if d < 0 else 'plus'}-one": (_manifest(_size_edge(w, d)), 16)
       for w in ("model", "engine") for d in (-1, 1)},
    "manifest-format-lower": (_manifest(_set_path(("format",), "trt-bundle/0")), 16),
    "manifest-root-lower": (_resigned(subject="tiny-0.0.9"), 16),
    # the schema's types: bool is not an int, an int is not a bool, a str is not a number
    "manifest-size-bool": (_manifest(lambda m: m["engines"][0].update(size=True)), 16),
    "manifest-duration-str": (_manifest(lambda m: m["engines"][0].update(duration_s="1")), 16),
    "manifest-duration-bool": (_manifest(lambda m: m["engines"][0].update(duration_s=False)), 16),
    "manifest-duration-int": (_manifest(lambda m: m["engines"][0].update(duration_s=1)), 0),
    "manifest-name-not-str": (_manifest(lambda m: m.update(name=7)), 16),
    "manifest-optional-none": (_manifest(lambda m: m["engines"][0].update(cache=None)), 0),
    "manifest-optional-wrong": (_manifest(lambda m: m["engines"][0].update(cache=5)), 16),
    # a cpu-target record: its "engine" must be the signed graph, and only onnxruntime/cpu may lack a header
    "cpu-target-graph": (_as_cpu(), 0),
    "cpu-target-carrying-an-engine": (_as_cpu(bytes_of="engine"), 16),
    "cpu-label-tensorrt-backend": (_as_cpu(backend="tensorrt"), 16),
    "cpu-backend-gpu-label": (_as_cpu(label="rtx4090"), 16),
    "cpu-backend-label-lower": (_as_cpu(label="cpt"), 16),
    "cpu-backend-name-lower": (_as_cpu(backend="onnxruntimd"), 16),
    # more than one thing missing: the message counts the rest
    "two-members-missing": (_drop("runtime/README.txt", "runtime/loader.py"), 13),
    "three-members-missing": (_drop("runtime/README.txt", "runtime/loader.py", "golden/inputs.npz"), 13),
    "dir-good": (_dir(lambda d: None), 0),
    "dir-two-files-missing": (_dir(_unlink("runtime/README.txt", "runtime/loader.py")), 13),
    "dir-member-at-the-size-limit": (_dir(_sparse(_MAX_MEMBER)), 13),
    "dir-member-one-byte-over": (_dir(_sparse(_MAX_MEMBER + 1)), 15),
    "dir-total-at-the-limit": (_dir(_sparse_to_total(_MAX_TOTAL)), 13),
    "dir-total-over-the-limit": (_dir(_sparse(*[_MAX_MEMBER] * (_MAX_TOTAL // _MAX_MEMBER), 1)), 15),
    "dir-entries-at-the-limit": (_dir(_many_files(_MAX_MEMBERS)), 13),
    "dir-entries-one-over": (_dir(_many_files(_MAX_MEMBERS + 1)), 15),
    "pax-size-exactly-the-member-limit": (_raw_pax("runtime/README.txt", _pax_record("size", str(_MAX_MEMBER))), 12),
    "dir-sums-changed": (_dir(lambda d: (d / "SHA256SUMS").write_bytes((d / "SHA256SUMS").read_bytes() + b"\n")), 12),
}

T2030 = 1893456000.0  # 2030-01-01T00:00:00Z


def _policy(rules: List[Tuple[str, List[str], int]], keys: Dict[str, dict] = None, revoked: List[str] = ()) -> Callable[[dict], dict]:
    """A trust policy over the two test keys (``keys`` adds not_before/not_after per key name),
    rules of (bundles glob, key names or "*", threshold), ``revoked`` key names."""
    def make(ctx: dict) -> dict:
        k = ctx["keys"]
        out = []
        for n in ("release", "other"):
            entry = {"id": k[n]["id"], "name": f"test {n}", "pem": Path(k[n]["pub"]).read_text()}
            entry.update((keys or {}).get(n, {}))
            out.append(entry)
        return {"format": "trt-bundler-policy/1", "version": 1, "keys": out,
                "revoked": [{"id": k[n]["id"], "reason": "test", "date": "2026-01-01"} for n in revoked],
                "rules": [{"bundles": b, "keys": ["*"] if names == "*" else [k[n]["id"] for n in names], "threshold": t}
                          for b, names, t in rules]}
    return make


_ANY = _policy([("*", "*", 1)])
_BOTH_2 = _policy([("*", ["release", "other"], 2)])
def _good(good: Path, work: Path, ctx: dict) -> Path:
    """The good bundle itself, copied beside the case's policy file."""
    import shutil
    return Path(shutil.copyfile(good, work / "case.tar"))
_agreeing = _second_signature(lambda st: None)
_expiring = _statement(_set_path(("predicate", "expires"), "2030-01-01T00:00:00Z"))

# case -> (build, code, policy maker, now): verified under a trust policy file and/or at a given time
POLICIES: Dict[str, Tuple[Build, int, Callable[[dict], dict], float]] = {
    "policy-any-key": (_good, 0, _ANY, None),
    "policy-threshold-2-one-signer": (_good, 11, _BOTH_2, None),
    "policy-threshold-2-two-signers": (_agreeing, 0, _BOTH_2, None),
    "policy-threshold-2-one-revoked": (_agreeing, 11, _policy([("*", ["release", "other"], 2)], revoked=["other"]), None),
    "policy-revoked-signer": (_good, 11, _policy([("*", "*", 1)], revoked=["release"]), None),
    "policy-no-rule-for-the-name": (_good, 11, _policy([("other-*", "*", 1)]), None),
    "policy-first-matching-rule-applies": (_good, 11, _policy([("tiny", ["other"], 1), ("*", "*", 1)]), None),
    "policy-rule-of-the-other-key": (_good, 11, _policy([("*", ["other"], 1)]), None),
    "policy-key-window-holds": (_good, 0, _policy([("*", "*", 1)], {"release": {"not_before": "2001-01-01",
                                                                           "not_after": "2099-01-01"}}), None),
    "policy-key-not-yet-valid": (_good, 11, _policy([("*", "*", 1)], {"release": {"not_before": "2099-01-01"}}), None),
    "policy-key-no-longer-valid": (_good, 11, _policy([("*", "*", 1)], {"release": {"not_after": "2001-01-01"}}), None),
    "policy-key-valid-from-now": (_good, 0, _policy([("*", "*", 1)], {"release": {"not_before": "2030-01-01"}}), T2030),
    "policy-key-valid-from-a-second-later": (_good, 11, _policy([("*", "*", 1)], {"release": {"not_before": "2030-01-01"}}),
                                             T2030 - 1),
    "policy-key-valid-until-now": (_good, 0, _policy([("*", "*", 1)], {"release": {"not_after": "2030-01-01"}}), T2030),
    "policy-key-valid-until-a-second-ago": (_good, 11, _policy([("*", "*", 1)], {"release": {"not_after": "2030-01-01"}}),
                                            T2030 + 1),
    "expires-now": (_expiring, 0, None, T2030),
    "expires-a-second-ago": (_expiring, 16, None, T2030 + 1),
}

# cases whose trust is both test keys (default: the release key alone)
BOTH_KEYS = {"two-signatures-agree", "two-signatures-other-resources", "two-signatures-other-subject"}
