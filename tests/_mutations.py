"""Hypothesis strategies for the mutation campaign (issue 13, family 1).

Each ``draw_*`` function takes Hypothesis's ``data`` object and the `Campaign` (its starting
bundle) and returns ``(tar bytes, description[, files])``:

- `draw_structural`: the tar around the signed bytes: header fields (with the checksum fixed, or
  not), byte flips, data and padding, PAX extended headers and records, member order,
  duplicates, drops and insertions of any type, the trailer, truncation and appended bytes. Some
  edits are harmless by the format's rules (fields the reader never reads, a PAX ``path`` equal to
  the name, a ``prefix``/``name`` split of the same name, execute bits, directory members for
  signed parents, no record padding): they are drawn on purpose, so that the acceptance side of
  the oracle is exercised too.
- `draw_manifest`, `draw_statement`, `draw_envelope`, `draw_sums`, `draw_payload`: semantic edits
  (JSON values of every type and length, Unicode, huge and non-finite numbers, deep nesting,
  duplicate keys, fields deleted, added, swapped and copied from elsewhere) to the manifest, the
  signed statement, the signature file, SHA256SUMS and the payload files; the bundle is then
  re-signed with the TRUSTED key (`_tarkit.reseal`), so that the checks after the signature run.
"""

from __future__ import annotations

import base64
import copy
import hashlib
import json
from typing import Any, Callable, Dict, List, Optional, Tuple

from hypothesis import strategies as st

from _tarkit import BLOCK, FIELDS, RECORD, UNREAD_FIELDS, Bundle, RawTar, Record, pax_data, pax_record
from _tarkit import regular_records, reseal, set_field, signature_file, special_record, statement_for

# -- JSON values ---------------------------------------------------------------------------------------


class Raw:
    """JSON text inserted verbatim (NaN, 41-digit integers, 100,000 levels of nesting, bad UTF-8)."""

    def __init__(self, data: bytes) -> None:
        self.data = data

    def __repr__(self) -> str:
        return f"Raw({self.data[:40]!r}{'...' if len(self.data) > 40 else ''})"


class Pairs(list):
    """A JSON object as a list of (key, value): may hold the same key twice."""


def dumps(obj: Any, ascii_only: bool = True) -> bytes:
    if isinstance(obj, Raw):
        return obj.data
    if isinstance(obj, (dict, Pairs)):
        items = list(obj) if isinstance(obj, Pairs) else list(obj.items())
        return b"{" + b", ".join(dumps(k, ascii_only) + b": " + dumps(v, ascii_only) for k, v in items) + b"}"
    if isinstance(obj, (list, tuple)):
        return b"[" + b", ".join(dumps(x, ascii_only) for x in obj) + b"]"
    if isinstance(obj, str):
        return json.dumps(obj, ensure_ascii=ascii_only).encode("utf-8", "surrogatepass")
    return json.dumps(obj).encode("ascii")


RAW_VALUES = [
    b"NaN", b"Infinity", b"-Infinity", b"1e400", b"-1e400", b"1e-400", b"9" * 40, b"-" + b"9" * 40, b"9" * 41,
    b"-" + b"9" * 41, b"1" * 5000, b"0." + b"0" * 60 + b"1", b"1" * 49 + b".0", b"1" * 50 + b".0", b"01", b"-0", b"1.",
    b".5", b"+1", b"0x10", b"tru", b"nul", b"", b"[", b"{", b'"\\ud800"', b'"\\udc00\\ud800"', b'"\xff"',
    b'"\xc0\xaf"', b'"\xed\xa0\x80"', b'"\\u0000"', b'"a\x00b"', b'"a\x1bb"', b'"\\', b'"unterminated',
    b"[" * 64 + b"]" * 64, b"[" * 65 + b"]" * 65, b"[" * 5000 + b"]" * 5000, b"[" * 100000,
    b'{"a":' * 70 + b"1" + b"}" * 70, b'["[[[["]', b'"' + b"\\\\" * 5000 + b'"', b"[" + b'"",' * 20000 + b'""]',
]

HOSTILE_STRINGS = [
    "", " ", ".", "..", "/", "../../etc/passwd", "/etc/passwd", "engines/../manifest.json", "./manifest.json",
    "engines//x.engine", "a\\b", "\x00", "a\x00b", "\x1b[2J\x1b[31mred", "\x9b31m", "\u202egnp.exe", "\ud800",
    "\ufeff", "é", "e\u0301", "\u212a", "STRASSE", "straße", "x" * 100, "x" * 5000, "NaN", "Infinity", "null",
    "0" * 64, "A" * 64, "f" * 63, "f" * 65, "trt-bundle/1", "trt-bundle/2", "TRT-BUNDLE/1", "1.0.0", "1.0", "01.0.0",
    "1.0.0-rc.1", "1.0.0+build.5", "v1.0.0", "camp", "camp-1.0.0", "Camp", "-camp", "camp-", "8.6", "9.0", "12.0",
    "8.6.0", "cpu", "sm86", "onnxruntime", "tensorrt", "tensorrt-rtx", "fp32", "fp16", "int8", "bf16", "fp8",
    "1.7.1.116", "1.7.1", "1.7", "1.7.1.116.0", "manifest.json", "SHA256SUMS", "signatures/x.sig",
    "model/tiny.onnx", "golden/inputs.npz", "2099-01-01T00:00:00Z", "2000-01-01T00:00:00Z", "2099-02-30T00:00:00Z",
    "9999-12-31T23:59:59Z", "0000-01-01T00:00:00Z", "2099-01-01T00:00:00+00:00", "2099-01-01", "2099-01-01T00:00:00.5Z",
    "\u0662\u0660\u0669\u0669-01-01T00:00:00Z", "sha256", "SHA256", "files", "https://in-toto.io/Statement/v1",
    "https://model_signing/signature/v1.0",
]

_INTS = [0, 1, -1, 2, 3, 4, 7, 8, 63, 64, 65, 255, 256, 512, 2**31 - 1, 2**31, 2**32, 2**53 + 1, 2**63 - 1, 2**63,
         2**64, 2**40, 2**40 + 1, 4 << 40, 10**39, 10**40 - 1, -(10**40 - 1)]

json_scalars = st.one_of(
    st.none(), st.booleans(), st.sampled_from(_INTS), st.integers(-(2**70), 2**70),
    st.floats(allow_nan=False, allow_infinity=False), st.sampled_from(HOSTILE_STRINGS), st.text(max_size=30),
)
json_values = st.one_of(
    json_scalars,
    st.builds(Raw, st.sampled_from(RAW_VALUES)),
    st.recursive(json_scalars, lambda kids: st.lists(kids, max_size=3) | st.dictionaries(
        st.sampled_from(["path", "name", "size", "sha256", "header", "cc", "x"]) | st.text(max_size=6), kids, max_size=3),
        max_leaves=6),
)

# -- edits of a JSON tree --------------------------------------------------------------------------------

Path_ = Tuple[Any, ...]


def _nodes(obj: Any, path: Path_ = ()) -> List[Path_]:
    out = [path]
    if isinstance(obj, dict):
        for k, v in obj.items():
            out += _nodes(v, path + (k,))
    elif isinstance(obj, list):
        for i, v in enumerate(obj):
            out += _nodes(v, path + (i,))
    return out


def _get(obj: Any, path: Path_) -> Any:
    for p in path:
        obj = obj[p]
    return obj


class Doc:
    """A JSON document under edit; ``root`` may be replaced wholesale."""

    def __init__(self, obj: Any) -> None:
        self.holder = [obj]
        self.dups: List[Tuple[Path_, str, Any]] = []

    @property
    def root(self) -> Any:
        return self.holder[0]

    def set(self, path: Path_, value: Any) -> None:
        parent = _get(self.holder, (0,) + path[:-1]) if path else self.holder
        parent[path[-1] if path else 0] = value

    def delete(self, path: Path_) -> None:
        del _get(self.holder, (0,) + path[:-1])[path[-1]]

    def to_bytes(self, ascii_only: bool = True) -> bytes:
        root = copy.deepcopy(self.root)
        holder = [root]
        for path, key, value in self.dups:
            try:
                node = _get(holder, (0,) + path)
            except (KeyError, IndexError, TypeError):
                continue
            if isinstance(node, dict) and key in node:
                pairs = Pairs(node.items())
                pairs.append((key, value))
                parent = _get(holder, (0,) + path[:-1]) if path else holder
                parent[path[-1] if path else 0] = pairs
        return dumps(holder[0], ascii_only)


def _tweak(data: Any, value: Any) -> Any:
    if isinstance(value, bool):
        return not value
    if isinstance(value, int):
        return data.draw(st.sampled_from([value + 1, value - 1, -value, 0, value * 2**32, 2**63, 10**40 - 1, float(value)]))
    if isinstance(value, float):
        return data.draw(st.sampled_from([-value, value * 1e308, 0.0, int(value), value + 1e-9]))
    if isinstance(value, str):
        return data.draw(st.sampled_from([value + "x", value[:-1], value.upper(), value + "/", "../" + value, "/" + value,
                                          value.replace(".", "/"), value + "\x00", value * 2, value[::-1]]))
    if value is None:
        return data.draw(st.sampled_from(["", 0, [], {}]))
    return data.draw(json_values)


def edit_json(data: Any, doc: Doc, extra: Optional[List[Any]] = None, keys: Optional[List[str]] = None) -> str:
    """One edit anywhere in ``doc``; returns what it did. ``extra``: values that fit this document."""
    nodes = _nodes(doc.root)
    path = data.draw(st.sampled_from(nodes))
    op = data.draw(st.sampled_from(["replace", "replace", "tweak", "tweak", "delete", "add", "copy", "copy", "swap",
                                    "dupkey", "wrap"]))
    values = json_values if not extra else st.one_of(json_values, st.sampled_from(extra))
    node = _get(doc.root, path)
    if op == "replace":
        doc.set(path, data.draw(values))
    elif op == "tweak":
        doc.set(path, _tweak(data, node))
    elif op == "delete" and path:
        doc.delete(path)
    elif op == "add" and isinstance(node, dict):
        key = data.draw(st.sampled_from(keys or ["x"]) | st.text(max_size=8))
        node[key] = data.draw(values)
    elif op == "add" and isinstance(node, list):
        i = data.draw(st.integers(0, len(node)))
        node.insert(i, copy.deepcopy(node[0]) if node and data.draw(st.booleans()) else data.draw(values))
    elif op == "copy":
        src = data.draw(st.sampled_from(nodes))
        if path[:len(src)] != src and src[:len(path)] != path:
            doc.set(path, copy.deepcopy(_get(doc.root, src)))
    elif op == "swap" and isinstance(node, list) and len(node) > 1:
        i, j = data.draw(st.integers(0, len(node) - 1)), data.draw(st.integers(0, len(node) - 1))
        node[i], node[j] = node[j], node[i]
    elif op == "dupkey" and isinstance(node, dict) and node:
        key = data.draw(st.sampled_from(sorted(node)))
        doc.dups.append((path, key, node[key] if data.draw(st.booleans()) else data.draw(values)))
    elif op == "wrap":
        doc.set(path, data.draw(st.sampled_from([[node], {"x": node}, [node, node]])))
    else:
        doc.set(path, data.draw(values))
        op = "replace"
    return f"{op} {'/'.join(map(str, path)) or '(root)'}"


def raw_edit(data: Any, raw: bytes) -> Tuple[bytes, str]:
    """Sometimes, an edit of the serialised bytes themselves."""
    op = data.draw(st.sampled_from(["none"] * 12 + ["cut", "append", "bom", "badbyte", "crlf", "random"]))
    if op == "cut":
        return raw[:data.draw(st.integers(0, max(0, len(raw) - 1)))], "cut"
    if op == "append":
        return raw + data.draw(st.sampled_from([b"\n", b" ", b"x", b"{}", b"\x00", b",", b"]"])), "append"
    if op == "bom":
        return b"\xef\xbb\xbf" + raw, "bom"
    if op == "badbyte":
        i = data.draw(st.integers(0, len(raw)))
        return raw[:i] + data.draw(st.sampled_from([b"\xff", b"\xc3", b"\x80", b"\xed\xa0\x80"])) + raw[i:], "badbyte"
    if op == "crlf":
        return raw.replace(b"\n", b"\r\n"), "crlf"
    if op == "random":
        return data.draw(st.binary(max_size=64)), "random"
    return raw, ""


def _serialise(data: Any, doc: Doc) -> Tuple[bytes, str]:
    raw = doc.to_bytes(ascii_only=data.draw(st.booleans()))
    if data.draw(st.booleans()) and not doc.dups:
        try:  # the writer's own form, when the document allows it
            raw = (json.dumps(doc.root, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")
        except (TypeError, ValueError, UnicodeEncodeError):
            pass
    return raw_edit(data, raw)


# -- structural ----------------------------------------------------------------------------------------------

NUMERIC = ("mode", "uid", "gid", "size", "mtime", "chksum", "devmajor", "devminor")


def _octal(n: int, width: int) -> bytes:
    return b"%0*o\0" % (width - 1, n)


def field_value(data: Any, name: str, header: bytes, names: List[str]) -> bytes:
    off, width = FIELDS[name]
    cur = header[off:off + width]
    if name in NUMERIC:
        try:
            n = int(cur.split(b"\0", 1)[0].strip() or b"0", 8)
        except ValueError:
            n = 0
        special = [n + 1, max(0, n - 1), 0, n * 2, n + BLOCK, max(0, n - BLOCK), 8 ** (width - 1) - 1]
        if name == "mode":
            special += [0o4755, 0o2755, 0o1644, 0o7777, 0o777, 0o755, 0o644, 0o600, 0o000, 0o100644, 0o40755]
        if name == "size":
            special += [2**33, 2**40, 2**40 + 1, 4 << 40]
        kind = data.draw(st.sampled_from(["octal", "octal", "spaced", "full", "b256", "junk", "random"]))
        if kind == "octal":
            v = data.draw(st.sampled_from(special) | st.integers(0, 8 ** (width - 1) - 1))
            return _octal(min(v, 8 ** (width - 1) - 1), width)
        if kind == "spaced":
            digits = b"%o" % data.draw(st.sampled_from(special))
            lead = data.draw(st.integers(0, max(0, width - len(digits) - 1)))
            return (b" " * lead + digits + data.draw(st.sampled_from([b"\0", b" ", b" \0", b"\0 "])))[:width]
        if kind == "full":
            return (b"%0*o" % (width, data.draw(st.sampled_from(special))))[-width:]
        if kind == "b256":
            v = data.draw(st.sampled_from(special + [2**63, 2**64 - 1]))
            return bytes([0x80]) + (v % 256 ** (width - 1)).to_bytes(width - 1, "big")
        if kind == "junk":
            return data.draw(st.sampled_from([b"0o644\0", b"+644\0", b"-1\0", b"\x00644", b"6 44\0", b"644 \0x",
                                              b" " * width, b"\0" * width, b"8\0", b"99\0", b"\xff" * width,
                                              b"0x1F\0", b"\xd9\xa1\0"]))
        return data.draw(st.binary(min_size=width, max_size=width))
    if name == "typeflag":
        return data.draw(st.sampled_from([bytes([c]) for c in b"0\x0012345679xgLKSADIMNV"]) | st.binary(min_size=1, max_size=1))
    if name == "magic":
        return data.draw(st.sampled_from([b"ustar\0", b"ustar ", b"ustar\0\0", b"USTAR\0", b"\0" * 6]) | st.binary(min_size=6, max_size=6))
    if name == "version":
        return data.draw(st.sampled_from([b"00", b"  ", b" \0", b"01", b"\0\0"]) | st.binary(min_size=2, max_size=2))
    kind = data.draw(st.sampled_from(["name", "name", "random", "empty", "case"]))
    if kind == "name":
        return data.draw(st.sampled_from(names)).encode("utf-8", "surrogateescape")
    if kind == "empty":
        return b""
    if kind == "case":
        return cur.upper()
    return data.draw(st.binary(max_size=width))


def hostile_names(root: str, existing: List[str]) -> List[str]:
    r = root
    return [f"{r}/{p}" for p in existing] + [
        f"{r}/../x", "../x", "/etc/passwd", f"/{r}/manifest.json", f"{r}//manifest.json", f"{r}/./manifest.json",
        f"{r}/manifest.json/", f"{r}\\manifest.json", f"{r}/MANIFEST.JSON", f"{r.upper()}/manifest.json", f"{r}/Manifest.json",
        f"{r}/engines", f"{r}/signatures/x.sig", f"{r}/signatures/x.SIG", f"{r}/signatures/sub/x.sig", f"{r}/signatures",
        f"{r}/x\x00y", f"{r}/\x1b[31m", f"{r}/\u202egnp.exe", f"{r}/\u00e9", f"{r}/e\u0301", f"{r}/\u212a",
        f"{r}/" + "a" * 200, f"{r}/" + "a/" * 600 + "b", "other-1.0.0/manifest.json", r, r + "/", "", ".",
        f"./{r}/manifest.json", f"{r}/engines/../manifest.json", f"{r}/golden/inputs.npz/x", f"{r}/x\udcff",
    ]


def _copy_tar(tar: RawTar) -> RawTar:
    return RawTar([Record(r.header, r.data, r.pad) for r in tar.records], tar.trailer)


def _pax_values(data: Any, key: bytes, member: Record, names: List[str]) -> bytes:
    if key == b"path":
        return data.draw(st.sampled_from([member.name] + names)).encode("utf-8", "surrogateescape")
    if key == b"size":
        n = len(member.data)
        return data.draw(st.sampled_from([str(n), str(n + 1), str(max(0, n - 1)), "0", str(2**40 + 1), "9" * 30, "0" + str(n),
                                          "+" + str(n), "-1", "1e3", " " + str(n), str(n) + " ", "", "0x10",
                                          "\u0661\u0662", str(n + BLOCK)])).encode("utf-8")
    if key == b"mtime":
        return data.draw(st.sampled_from(["1700000000", "-1", "1.5", "1.", ".5", "1e9", "nan", "", "\u0661",
                                          "1700000000.000000001", "9" * 400])).encode("utf-8")
    return data.draw(st.sampled_from([b"0", b"root", b"/etc/passwd", b"UTF-8", b"BINARY", b"\xff\xfe", b""]) | st.binary(max_size=20))


def _pax_block(data: Any, member: Record, names: List[str]) -> Tuple[bytes, str]:
    keys = st.sampled_from([b"path", b"path", b"size", b"size", b"mtime", b"linkpath", b"uid", b"gid", b"uname", b"gname",
                            b"atime", b"ctime", b"hdrcharset", b"comment", b"GNU.sparse.size", b"GNU.sparse.map",
                            b"SCHILY.xattr.user.x", b"LIBARCHIVE.xattr.x", b"", b"path ", b"PATH", b"p\xffth"])
    recs = data.draw(st.lists(keys, min_size=1, max_size=3))
    body = pax_data([(k, _pax_values(data, k, member, names)) for k in recs])
    how = data.draw(st.sampled_from(["ok"] * 6 + ["len+1", "len-1", "len0", "zero-led", "nonl", "noeq", "huge", "junk", "random"]))
    if how == "len+1" or how == "len-1":
        sp = body.index(b" ")
        n = int(body[:sp]) + (1 if how == "len+1" else -1)
        body = str(n).encode() + body[sp:]
    elif how == "len0":
        body = b"0" + body[body.index(b" "):]
    elif how == "zero-led":
        body = b"0" + body
    elif how == "nonl":
        body = body[:-1] + b" "
    elif how == "noeq":
        body = body.replace(b"=", b":", 1)
    elif how == "huge":
        body = b"99999999999999999999 path=x\n"
    elif how == "junk":
        body = body + data.draw(st.sampled_from([b"\0", b"\n", b" ", b"5 a=b"]))
    elif how == "random":
        body = data.draw(st.binary(max_size=300))
    return body, f"pax[{b','.join(recs).decode('utf-8', 'replace')}/{how}]"


def draw_structural(data: Any, c: Any) -> Tuple[bytes, str]:
    tar = _copy_tar(c.tar)
    names = hostile_names(c.root, list(c.bundle.files))
    descs: List[str] = []
    posts: List[Callable[[bytes], bytes]] = []
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["field", "field", "field", "benign", "benign", "flip", "data", "pad", "pax", "pax",
                                        "order", "insert", "insert", "trailer", "truncate", "append", "limits"]))
        n = len(tar.records)
        if op == "field" and n:
            i = data.draw(st.integers(0, n - 1))
            fname = data.draw(st.sampled_from(sorted(FIELDS)))
            value = field_value(data, fname, tar.records[i].header, names)
            fix = data.draw(st.sampled_from([True, True, True, False]))
            tar.records[i].header = set_field(tar.records[i].header, fname, value, fix=fix)
            descs.append(f"field {fname}={value[:40]!r} of record {i}{'' if fix else ' (checksum left)'}")
        elif op == "benign" and n:
            descs.append(_benign(data, tar, c))
        elif op == "flip" and n:
            i = data.draw(st.integers(0, n - 1))
            at = data.draw(st.integers(0, BLOCK - 1))
            mask = data.draw(st.integers(1, 255))
            h = bytearray(tar.records[i].header)
            h[at] ^= mask
            tar.records[i].header = bytes(h)
            descs.append(f"flip header byte {at} of record {i} by {mask:#x}")
        elif op == "data" and n:
            i = data.draw(st.integers(0, n - 1))
            r = tar.records[i]
            how = data.draw(st.sampled_from(["flip", "grow", "shrink", "replace"]))
            d = bytearray(r.data)
            if how == "flip" and d:
                d[data.draw(st.integers(0, len(d) - 1))] ^= data.draw(st.integers(1, 255))
            elif how == "grow":
                d += data.draw(st.binary(min_size=1, max_size=600))
            elif how == "shrink" and d:
                del d[data.draw(st.integers(0, len(d) - 1)):]
            else:
                d = bytearray(data.draw(st.binary(max_size=600)))
            r.data = bytes(d)
            if data.draw(st.booleans()):
                r.header = set_field(r.header, "size", _octal(len(d), 12))
            descs.append(f"data {how} of record {i} ({len(d)} bytes)")
        elif op == "pad" and n:
            i = data.draw(st.integers(0, n - 1))
            r = tar.records[i]
            k = (-len(r.data)) % BLOCK
            if k:
                pad = bytearray(k)
                pad[data.draw(st.integers(0, k - 1))] = data.draw(st.integers(1, 255))
                r.pad = bytes(pad)
            descs.append(f"non-zero padding after record {i}")
        elif op == "pax":
            idx = tar.member_indices()
            i = data.draw(st.sampled_from(idx)) if idx else 0
            member = tar.records[i] if idx else Record(b"\0" * BLOCK)
            body, what = _pax_block(data, member, names)
            rec = pax_record(body)
            if data.draw(st.integers(0, 5)) == 0:
                rec.header = set_field(rec.header, data.draw(st.sampled_from(["typeflag", "name", "mode", "size"])),
                                       data.draw(st.sampled_from([b"g", b"x", b"\0", b"../x", b"0004755", b"00000000000"])))
            tar.records.insert(i, rec)
            descs.append(f"{what} before record {i}")
        elif op == "order" and n > 1:
            how = data.draw(st.sampled_from(["swap", "move", "dup", "drop", "reverse"]))
            i, j = data.draw(st.integers(0, n - 1)), data.draw(st.integers(0, n - 1))
            recs = tar.records
            if how == "swap":
                recs[i], recs[j] = recs[j], recs[i]
            elif how == "move":
                recs.insert(j, recs.pop(i))
            elif how == "dup":
                recs.insert(j, Record(recs[i].header, recs[i].data, recs[i].pad))
            elif how == "drop":
                recs.pop(i)
            else:
                lo, hi = min(i, j), max(i, j) + 1
                recs[lo:hi] = recs[lo:hi][::-1]
            descs.append(f"order {how} {i},{j}")
        elif op == "insert":
            j = data.draw(st.integers(0, n))
            name = data.draw(st.sampled_from(names) | st.text(min_size=1, max_size=40))
            kind = data.draw(st.sampled_from([b"0", b"0", b"5", b"1", b"2", b"3", b"4", b"6", b"7", b"g", b"L", b"K", b"S"]))
            try:
                if kind == b"0":
                    body = data.draw(st.sampled_from([b"", b"x", c.bundle.files.get("manifest.json", b"")]) | st.binary(max_size=700))
                    mode = data.draw(st.sampled_from([0o644, 0o755, 0o4755, 0o600]))
                    recs = regular_records(name, body, mode)
                else:
                    link = data.draw(st.sampled_from(["", "/etc/passwd", "../x", f"{c.root}/manifest.json"]))
                    recs = [special_record(name, kind, link, data.draw(st.sampled_from([0o755, 0o644, 0o2755])))]
            except (ValueError, UnicodeEncodeError):
                continue
            tar.records[j:j] = recs
            descs.append(f"insert {kind.decode()} {name[:60]!r} at {j}")
        elif op == "trailer":
            how = data.draw(st.sampled_from(["none", "one-block", "two-blocks", "limit", "limit+1", "junk", "second", "odd"]))
            z = b"\0" * (2 * BLOCK)
            tar.trailer = {
                "none": b"", "one-block": b"\0" * BLOCK, "two-blocks": z, "limit": z + b"\0" * RECORD,
                "limit+1": z + b"\0" * (RECORD + 1), "junk": z + b"x", "odd": z + b"\0" * 7,
                "second": z + tar.records[0].to_bytes() + z if tar.records else z,
            }[how]
            descs.append(f"trailer {how}")
        elif op == "truncate":
            frac = data.draw(st.integers(0, 1000))
            posts.append(lambda raw, frac=frac: raw[:len(raw) * frac // 1000])
            descs.append(f"truncate at {frac / 10:.1f}%")
        elif op == "limits" and n:
            idx = tar.member_indices()
            i = data.draw(st.sampled_from(idx))
            how = data.draw(st.sampled_from(["pax-size", "long-path", "pax-header-size"]))
            if how == "pax-size":
                body = pax_data([(b"size", str(data.draw(st.sampled_from([2**40 + 1, 4 << 40, 2**63]))).encode())])
            elif how == "long-path":
                body = pax_data([(b"path", (c.root + "/" + "a/" * data.draw(st.integers(512, 700)) + "b").encode())])
            else:
                body = b""
            rec = pax_record(body)
            if how == "pax-header-size":
                rec.header = set_field(rec.header, "size", _octal(data.draw(st.sampled_from([(64 << 10) + 1, 2**32])), 12))
            tar.records.insert(i, rec)
            descs.append(f"limits: {how} before record {i}")
        elif op == "append":
            tail = data.draw(st.sampled_from([b"\0", b"x", b"\0" * BLOCK + b"x"]) | st.binary(min_size=1, max_size=600))
            posts.append(lambda raw, tail=tail: raw + tail)
            descs.append(f"append {len(tail)} bytes")
    raw = tar.to_bytes()
    for post in posts:
        raw = post(raw)
    return raw, "; ".join(descs) or "(unchanged)"


def _benign(data: Any, tar: RawTar, c: Any) -> str:
    """An edit the format says changes nothing that is verified."""
    idx = tar.member_indices()
    i = data.draw(st.sampled_from(idx))
    r = tar.records[i]
    how = data.draw(st.sampled_from(["unread", "pax-path", "pax-size", "pax-mtime", "prefix", "exec", "dir", "no-padding"]))
    if how == "unread":
        fname = data.draw(st.sampled_from(UNREAD_FIELDS))
        width = FIELDS[fname][1]
        value = data.draw(st.binary(min_size=width, max_size=width) | st.sampled_from([b"\0" * width, b"\xff" * width]))
        r.header = set_field(r.header, fname, value)
        return f"benign: {fname}={value[:16]!r} of record {i}"
    if how in ("pax-path", "pax-size", "pax-mtime"):
        key = how[4:].encode()
        value = {"path": r.name.encode(), "size": str(len(r.data)).encode(), "mtime": b"1700000000.5"}[how[4:]]
        tar.records.insert(i, pax_record(pax_data([(key, value)])))
        return f"benign: PAX {how[4:]} of record {i}"
    if how == "prefix" and "/" in r.name:
        head, tail = r.name.split("/", 1)
        h = set_field(r.header, "name", tail.encode(), fix=False)
        r.header = set_field(h, "prefix", head.encode())
        return f"benign: prefix/name split of record {i}"
    if how == "exec":
        r.header = set_field(r.header, "mode", data.draw(st.sampled_from([b"0000755\0", b"0000600\0", b"0000444\0", b"0000777\0"])))
        return f"benign: mode of record {i}"
    if how == "dir":
        parents = sorted({"/".join(p.split("/")[:k]) for p in c.bundle.files for k in range(1, p.count("/") + 1)})
        rel = data.draw(st.sampled_from([""] + parents))
        name = c.root + ("/" + rel if rel else "") + data.draw(st.sampled_from(["", "/"]))
        j = data.draw(st.integers(0, len(tar.records)))
        tar.records.insert(j, special_record(name, b"5", mode=0o755))
        return f"benign: directory {name} at {j}"
    tar.trailer = b"\0" * (2 * BLOCK)
    return "benign: no record padding"


# -- semantic (re-signed with the trusted key) -------------------------------------------------------------

MANIFEST_KEYS = ["format", "name", "version", "created", "model", "engines", "files", "golden", "variants", "tool",
                 "path", "sha256", "size", "header", "cc", "cc_mask", "product", "log", "target", "backend", "build",
                 "precision", "label", "expires"]


def _resealed(c: Any, files: Dict[str, bytes], **kw: Any) -> Tuple[bytes, Dict[str, bytes]]:
    b = reseal(Bundle(c.root, dict(files), dict(c.bundle.modes)), c.key, **kw)
    return b.to_tar(), b.files


def draw_manifest(data: Any, c: Any) -> Tuple[bytes, str, Dict[str, bytes]]:
    doc = Doc(json.loads(c.bundle.files["manifest.json"]))
    extra = _manifest_extras(c, doc.root)
    descs = []
    for _ in range(data.draw(st.integers(1, 3))):
        if data.draw(st.integers(0, 3)) == 0 and isinstance(doc.root, dict):
            descs.append(_benign_manifest(data, doc.root))
        else:
            descs.append(edit_json(data, doc, extra, MANIFEST_KEYS))
    raw, how = _serialise(data, doc)
    files = dict(c.bundle.files)
    files["manifest.json"] = raw
    tar, signed = _resealed(c, files)
    return tar, "manifest: " + "; ".join(descs) + (f"; {how}" if how else ""), signed


def _list(value: Any) -> list:
    """A field that an earlier edit may have made anything at all, as a list."""
    return value if isinstance(value, list) else []


def _benign_manifest(data: Any, m: dict) -> str:
    """A manifest edit that breaks no claim the verifier checks (informational fields, unknown
    keys): once re-signed, such a bundle must still verify."""
    engines = [e for e in _list(m.get("engines")) if isinstance(e, dict)]
    how = data.draw(st.sampled_from(["producer", "created", "host", "duration", "tool", "unknown", "engine-unknown", "reorder-files"]))
    text = data.draw(st.sampled_from(HOSTILE_STRINGS[:40]) | st.text(max_size=20))
    if how == "producer" and isinstance(m.get("model"), dict):
        m["model"]["producer"] = text
    elif how == "created":
        m["created"] = text
    elif how == "host" and engines:
        engines[0]["host"] = text
    elif how == "duration" and engines:
        engines[0]["duration_s"] = data.draw(st.sampled_from([0, 0.0, 1e300, -1.5, 2**63]))
    elif how == "tool":
        m["tool"] = {"name": text, "version": text}
    elif how == "unknown":
        m[data.draw(st.sampled_from(["x", "comment", "signed_by", "files2"]))] = data.draw(json_scalars)
    elif how == "engine-unknown" and engines:
        engines[0][data.draw(st.sampled_from(["x", "note"]))] = data.draw(json_scalars)
    elif how == "reorder-files" and isinstance(m.get("files"), list):
        m["files"] = data.draw(st.permutations(m["files"]))
    return f"benign {how}"


def _manifest_extras(c: Any, m: dict) -> List[Any]:
    """Values of the right type taken from elsewhere in this bundle: they pass the schema and
    reach the cross-checks."""
    out: List[Any] = [p for p in c.bundle.files] + [hashlib.sha256(b).hexdigest() for b in c.bundle.files.values()]
    out += [len(b) for b in c.bundle.files.values()]
    out += [copy.deepcopy(e) for e in m.get("engines", [])] + [copy.deepcopy(f) for f in m.get("files", [])]
    out += [{"product": "tensorrt-rtx", "version": "1.7.1.116", "cc": ["8.9"], "cc_mask": 8}, None, [],
            {"label": "cpu", "cc": None, "gpu": None}, {"label": "sm89", "cc": "8.9", "gpu": None}]
    return out


def draw_statement(data: Any, c: Any) -> Tuple[bytes, str, Dict[str, bytes]]:
    files = {p: b for p, b in c.bundle.files.items() if not p.startswith("signatures/")}
    digests = {p: hashlib.sha256(b).hexdigest() for p, b in files.items()}
    doc = Doc(json.loads(statement_for(c.root, digests)))
    extra: List[Any] = list(digests) + list(digests.values()) + [c.root, "other-1.0.0", {"sha256": "0" * 64}]
    descs = []
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["benign", "benign", "expires", "edit", "edit", "edit"]))
        root = doc.root if isinstance(doc.root, dict) else {}
        pred = root.get("predicate") if isinstance(root.get("predicate"), dict) else None
        if op == "expires" and pred is not None:
            value = data.draw(st.sampled_from(EXPIRES) | json_values)
            pred["expires"] = value
            descs.append(f"expires={value!r}"[:80])
        elif op == "benign" and pred is not None:
            descs.append(_benign_statement(data, root, pred))
        else:
            descs.append(edit_json(data, doc, extra, ["expires", "name", "digest", "sha256", "algorithm", "resources", "subject"]))
    if data.draw(st.booleans()):  # keep the subject digest consistent, so the checks after it run
        descs.append(_recompute_subject(doc.root))
    raw, how = _serialise(data, doc)
    sig = signature_file(raw, c.key)
    out = {next(iter(c.bundle.signature_paths)): sig}
    out.update(files)
    b = Bundle(c.root, out, dict(c.bundle.modes))
    return b.to_tar(), "statement: " + "; ".join(descs) + (f"; {how}" if how else ""), b.files


EXPIRES = ["2099-01-01T00:00:00Z", "2099-12-31T23:59:59Z", "9999-12-31T23:59:59Z", "2000-01-01T00:00:00Z",
           "1970-01-01T00:00:00Z", "2099-02-30T00:00:00Z", "2099-01-01T24:00:00Z", "2099-01-01T00:00:60Z",
           "0000-01-01T00:00:00Z", "2099-01-01T00:00:00+00:00", "2099-01-01", "2099-01-01T00:00:00.5Z",
           "2099-01-01t00:00:00z", " 2099-01-01T00:00:00Z", "\u0662\u0660\u0669\u0669-01-01T00:00:00Z", None, 0, ""]


def _benign_statement(data: Any, root: dict, pred: dict) -> str:
    """A statement edit that the format says changes nothing verified."""
    how = data.draw(st.sampled_from(["unknown-key", "allow_symlinks", "ignore_paths", "reorder", "predicate-key"]))
    if how == "unknown-key":
        root[data.draw(st.sampled_from(["x", "comment", "_note"]))] = data.draw(json_scalars)
    elif how == "allow_symlinks" and isinstance(pred.get("serialization"), dict):
        pred["serialization"]["allow_symlinks"] = data.draw(st.booleans())
    elif how == "ignore_paths" and isinstance(pred.get("serialization"), dict):
        pred["serialization"]["ignore_paths"] = data.draw(st.sampled_from([[], ["signatures", "x"], ["manifest.json"]]))
    elif how == "reorder" and isinstance(pred.get("resources"), list):
        pred["resources"] = data.draw(st.permutations(pred["resources"]))
    else:
        pred[data.draw(st.sampled_from(["x", "note"]))] = data.draw(json_scalars)
    return f"benign {how}"


def _recompute_subject(st_: Any) -> str:
    try:
        res = {r["name"]: r["digest"] for r in st_["predicate"]["resources"]}
        st_["subject"][0]["digest"]["sha256"] = hashlib.sha256(b"".join(bytes.fromhex(res[n]) for n in sorted(res))).hexdigest()
        return "subject digest recomputed"
    except (KeyError, TypeError, ValueError, IndexError, AttributeError):
        return "subject digest not recomputable"


def _b64_variants(text: str) -> List[str]:
    s = text.rstrip("=")
    return [s, text + "=", text + "\n", " " + text, text.replace("+", "-").replace("/", "_"), text[:-1] + "B" if text else "",
            text[:4] + "\n" + text[4:], text.lower(), base64.b64encode(base64.b64decode(text) + b"\0").decode()]


def draw_envelope(data: Any, c: Any) -> Tuple[bytes, str, Dict[str, bytes]]:
    from cryptography.hazmat.primitives.asymmetric import ec

    sig_path = next(iter(c.bundle.signature_paths))
    original = json.loads(c.bundle.files[sig_path])
    env = original["dsseEnvelope"]
    doc = Doc(copy.deepcopy(original))
    hint = original["verificationMaterial"]["publicKey"]["hint"]
    extra: List[Any] = _b64_variants(env["payload"]) + _b64_variants(env["signatures"][0]["sig"]) + [
        hint, hint.upper(), hint[:-1], "", None, "application/vnd.dev.sigstore.bundle+json;version=0.3",
        "application/vnd.dev.sigstore.bundle.v0.2+json", "application/vnd.in-toto+json", copy.deepcopy(env["signatures"][0]),
        [copy.deepcopy(env["signatures"][0])] * 2, {"hint": hint}]
    descs = [edit_json(data, doc, extra, ["hint", "keyid", "sig", "payload", "mediaType", "payloadType"])
             for _ in range(data.draw(st.integers(1, 3)))]
    raw, how = _serialise(data, doc)
    files = dict(c.bundle.files)
    files[sig_path] = raw
    extra_sig = data.draw(st.sampled_from(["none"] * 4 + ["untrusted-same", "trusted-other", "copy", "badname"]))
    if extra_sig != "none":
        digests = {p: hashlib.sha256(b).hexdigest() for p, b in files.items() if not p.startswith("signatures/")}
        if extra_sig == "untrusted-same":
            body = signature_file(statement_for(c.root, digests), ec.generate_private_key(ec.SECP256R1()))
        elif extra_sig == "trusted-other":
            digests = dict(digests, **{"runtime/README.txt": "0" * 64})
            body = signature_file(statement_for(c.root, digests), c.key)
        else:
            body = c.bundle.files[sig_path]
        name = "signatures/a b.sig" if extra_sig == "badname" else "signatures/zz-second.sig"
        order = list(files)
        files[name] = body
        files = {p: files[p] for p in ([order[0], name] if data.draw(st.booleans()) else [name, order[0]]) + order[1:]}
        descs.append(f"second signature file: {extra_sig}")
    b = Bundle(c.root, files, dict(c.bundle.modes))
    return b.to_tar(), "signature file: " + "; ".join(descs) + (f"; {how}" if how else ""), b.files


def draw_sums(data: Any, c: Any) -> Tuple[bytes, str, Dict[str, bytes]]:
    lines = c.bundle.files["SHA256SUMS"].split(b"\n")[:-1]
    descs = []
    for _ in range(data.draw(st.integers(1, 3))):
        op = data.draw(st.sampled_from(["shuffle", "drop", "dup", "extra", "upper", "crlf", "star", "onespace", "tab",
                                        "blank", "nonl", "bom", "dotslash", "trailing-space", "u2028", "wrongdigest"]))
        i = data.draw(st.integers(0, len(lines) - 1)) if lines else 0
        if not lines:
            lines = [b"x"]
        if op == "shuffle":
            lines = data.draw(st.permutations(lines))
        elif op == "drop":
            lines.pop(i)
        elif op == "dup":
            lines.insert(i, lines[i])
        elif op == "extra":
            lines.append(b"0" * 64 + b"  " + data.draw(st.sampled_from([b"extra", b"../x", b"signatures/x.sig", b"SHA256SUMS"])))
        elif op == "upper":
            lines[i] = lines[i][:64].upper() + lines[i][64:]
        elif op == "crlf":
            lines = [ln + b"\r" for ln in lines]
        elif op == "star":
            lines[i] = lines[i][:66] + b"*" + lines[i][66:]
        elif op == "onespace":
            lines[i] = lines[i][:64] + lines[i][65:]
        elif op == "tab":
            lines[i] = lines[i][:64] + b"\t" + lines[i][66:]
        elif op == "blank":
            lines.append(b"")
        elif op == "nonl":
            lines[-1] = lines[-1] + b"\0"
        elif op == "bom":
            lines[0] = b"\xef\xbb\xbf" + lines[0]
        elif op == "dotslash":
            lines[i] = lines[i][:66] + b"./" + lines[i][66:]
        elif op == "trailing-space":
            lines[i] = lines[i] + b" "
        elif op == "u2028":
            lines[i] = lines[i] + "\u2028".encode()
        else:
            lines[i] = hashlib.sha256(lines[i]).hexdigest().encode() + lines[i][64:]
        descs.append(op)
    files = dict(c.bundle.files)
    files["SHA256SUMS"] = b"\n".join(lines) + b"\n"
    tar, signed = _resealed(c, files, recompute_sums=False)
    return tar, "SHA256SUMS: " + "; ".join(descs), signed


def draw_payload(data: Any, c: Any) -> Tuple[bytes, str, Dict[str, bytes]]:
    files = dict(c.bundle.files)
    candidates = [p for p in files if not p.startswith("signatures/") and p not in ("manifest.json", "SHA256SUMS")]
    p = data.draw(st.sampled_from(candidates))
    d = bytearray(files[p])
    how = data.draw(st.sampled_from(["header-byte", "version", "mask", "size-field", "magic", "other-file", "truncate",
                                     "append", "random"]))
    if how == "header-byte" and d:
        d[data.draw(st.integers(0, min(63, len(d) - 1)))] ^= data.draw(st.integers(1, 255))
    elif how == "version" and len(d) >= 28:
        d[24:28] = data.draw(st.binary(min_size=4, max_size=4))
    elif how == "mask" and len(d) >= 40:
        d[32:40] = data.draw(st.sampled_from([1, 2, 4, 8, 16, 32, 0, 0x7E, 1 << 63])).to_bytes(8, "little")
    elif how == "size-field" and len(d) >= 24:
        d[16:24] = data.draw(st.sampled_from([0, len(d) + 1, len(d) - 1, 2**64 - 1])).to_bytes(8, "little")
    elif how == "magic" and len(d) >= 4:
        d[0:4] = data.draw(st.sampled_from([b"ftrt", b"ptrt", b"xtrt", b"vtrx", b"\0\0\0\0", b"PK\x03\x04"]))
    elif how == "other-file":
        d = bytearray(files[data.draw(st.sampled_from(candidates))])
    elif how == "truncate":
        del d[data.draw(st.integers(0, len(d))):]
    elif how == "append":
        d += data.draw(st.binary(min_size=1, max_size=100))
    else:
        d = bytearray(data.draw(st.binary(max_size=200)))
    files[p] = bytes(d)
    desc = f"payload {p}: {how}"
    if data.draw(st.sampled_from([True, True, True, False])):
        m = json.loads(files["manifest.json"])
        sha, size = hashlib.sha256(files[p]).hexdigest(), len(files[p])
        for rec in m.get("files", []) + m.get("engines", []) + [m.get("model", {})] + m.get("variants", []):
            if rec.get("path") == p or rec.get("graph") == p:
                rec["sha256"], rec["size"] = sha, size
        if data.draw(st.booleans()):
            for e in m.get("engines", []):
                if e.get("path") == p and e.get("header") and len(files[p]) >= 40 and files[p][:4] == b"vtrt":
                    e["header"]["version"] = ".".join(str(x) for x in files[p][24:28])
                    desc += " (manifest header follows)"
        files["manifest.json"] = (json.dumps(m, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode()
        desc += " (manifest digests follow)"
    tar, signed = _resealed(c, files)
    return tar, desc, signed
