"""Cases that kill surviving mutants of the shared verifier: area 'json' (see docs/testing.md,
"Mutation testing"). Same shape as tests/_edge_cases.py, whose builders these reuse: each case is
a bundle built from the good test bundle with one expected exit code (and its message in
tests/data/verifier-messages.json). Registered as edge/json-NAME by tests/test_verifier_cases.py.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, Dict, Set, Tuple

import test_stdlib_verifier as sv
from _edge_cases import _entries, _extra, _manifest, _set_path, _statement


def _sig_doc(edit: Callable[[dict], None]) -> object:
    """The signature file (not itself signed) edited as JSON: parse_signature_file's checks."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        return sv.write_tar(work / "case.tar", sv.edit_sig(_entries(good), edit))
    return build


def _sig_raw(raw_of: Callable[[bytes], bytes]) -> object:
    """The signature file's bytes replaced: the strict JSON parser's refusals."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good)
        gi = sv.sig_index(es)
        es[gi] = (es[gi][0], raw_of(es[gi][1]))
        return sv.write_tar(work / "case.tar", es)
    return build


def _env(key: str, value: object) -> Callable[[dict], None]:
    return lambda doc: doc["dsseEnvelope"].__setitem__(key, value)


def _vm(value: dict) -> Callable[[dict], None]:
    return lambda doc: doc.__setitem__("verificationMaterial", value)


def _dup_key(key: str) -> Callable[[bytes], bytes]:
    return lambda raw: b'{"a": 0, "' + key.encode() + b'": 1, "' + key.encode() + b'": 2, ' + raw.lstrip()[1:]


def _number(token: str) -> Callable[[bytes], bytes]:
    """An extra field (ignored) holding the number ``token`` exactly as written."""
    return lambda raw: b'{"a": ' + token.encode() + b', ' + raw.lstrip()[1:]


def _payload_unused_bits(good: Path, work: Path, ctx: dict) -> Path:
    """The statement padded with spaces to a length of 3n+1 bytes and signed by the trusted key;
    its base64 payload then written with a nonzero unused low bit (the next base64 letter before "=="), which
    decodes to the same, signed bytes but is not the canonical form."""
    import base64
    import json

    from bundler.signing import load_private_key, sign_statement
    es = sv.resign(_entries(good), ctx["keys"]["release"]["key"])
    gi = sv.sig_index(es)
    doc = json.loads(es[gi][1])
    payload = base64.b64decode(doc["dsseEnvelope"]["payload"])
    payload += b" " * ((1 - len(payload)) % 3)
    doc = json.loads(sign_statement(payload, load_private_key(ctx["keys"]["release"]["key"], None)))
    text = doc["dsseEnvelope"]["payload"]
    abc = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/"
    assert text.endswith("==") and abc.index(text[-3]) % 16 == 0
    doc["dsseEnvelope"]["payload"] = text[:-3] + abc[abc.index(text[-3]) + 1] + "=="
    es[gi] = (es[gi][0], json.dumps(doc, indent=2).encode())
    return sv.write_tar(work / "case.tar", es)


def _dim(value: object) -> Callable[[dict], None]:
    def edit(m: dict) -> None:
        m["model"]["inputs"][0]["shape"][0] = value
    return edit


def _nest(depth: int) -> list:
    v: list = []
    for _ in range(depth - 1):
        v = [v]
    return v


_ZEROS = [0] * 8000  # indent=2: about 72 KB, so the next value is in the depth scan's second 64 KiB chunk


def _variant(m: dict) -> None:
    """An fp16 variant (its graph: the signed source model's file) with accuracy and calibration."""
    m["variants"] = [{
        "precision": "fp16", "graph": m["model"]["path"], "sha256": m["model"]["sha256"], "size": m["model"]["size"],
        "converter": "x", "accuracy": {"measured_with": None, "max_abs_err": 0.5, "max_rel_err": None,
                                       "within_tolerance": True},
        "calibration": {"source": "s", "sha256": "0" * 64, "files": 1, "samples": 1, "batch": 1,
                        "inputs": {"x": {"min": 0, "max": 1, "mean": 0.5, "std": 0.1}}}}]


def _cache(reused: object) -> Callable[[dict], None]:
    """A build-cache record on every engine: the schema's bool field."""
    def edit(m: dict) -> None:
        for e in m["engines"]:
            e["cache"] = {"key": "0" * 64, "reused": reused}
    return edit


EDGES: Dict[str, Tuple[object, int]] = {
    # signature file: base64 fields, envelope and verification material
    "sig-payload-base64-stray-char": (_sig_doc(lambda d: d["dsseEnvelope"].update(payload=d["dsseEnvelope"]["payload"] + "!")), 11),
    "sig-payload-base64-not-ascii": (_sig_doc(lambda d: d["dsseEnvelope"].update(payload="\u00e9" + d["dsseEnvelope"]["payload"])), 11),
    "sig-payload-base64-unused-bits": (_payload_unused_bits, 11),
    "sig-payload-type-lower": (_sig_doc(_env("payloadType", "application/vnd.in-toto+jsom")), 11),
    "sig-payload-type-higher": (_sig_doc(_env("payloadType", "application/vnd.in-toto+jsoo")), 11),
    "sig-no-signatures": (_sig_doc(lambda d: d["dsseEnvelope"].__setitem__("signatures", [])), 11),
    "sig-two-signatures": (_sig_doc(lambda d: d["dsseEnvelope"]["signatures"].append(d["dsseEnvelope"]["signatures"][0])), 11),
    "sig-no-verification-material": (_sig_doc(lambda d: d.pop("verificationMaterial")), 11),
    "sig-sigstore-keyless": (_sig_doc(_vm({"certificate": {"rawBytes": "AAAA"}, "tlogEntries": [{}]})), 11),
    "sig-certificate": (_sig_doc(_vm({"certificate": {"rawBytes": "AAAA"}})), 11),
    "sig-certificate-chain": (_sig_doc(_vm({"x509CertificateChain": {"certificates": []}})), 11),
    # the strict JSON parser, through the signature file
    "sig-not-utf8-outside-strings": (_sig_raw(lambda raw: raw + b"\xff"), 11),
    "sig-not-json": (_sig_raw(lambda raw: raw[:-2]), 11),
    "sig-duplicate-key-short": (_sig_raw(_dup_key("k")), 11),
    "sig-duplicate-key-40": (_sig_raw(_dup_key("k" * 40)), 11),
    "sig-duplicate-key-41": (_sig_raw(_dup_key("k" * 41)), 11),
    "sig-number-50-characters": (_sig_raw(_number("1." + "0" * 48)), 0),
    "sig-number-51-characters": (_sig_raw(_number("1." + "0" * 49)), 11),
    # signed statements re-signed by the trusted key
    "statement-root-highest": (_statement(lambda st: st["subject"][0]["digest"].update(sha256="f" * 64)), 11),
    "statement-expires-feb-30": (_statement(_set_path(("predicate", "expires"), "2099-02-30T00:00:00Z")), 11),
    # manifests re-signed by the trusted key: integer digit limit, Dim union, version digits
    "manifest-int-40-digits": (_manifest(_extra(10 ** 39)), 0),
    "manifest-int-41-digits": (_manifest(_extra(10 ** 40)), 16),
    "manifest-dim-float": (_manifest(_dim(1.5)), 16),
    "manifest-engine-cache-reused": (_manifest(_cache(True)), 0),
    "manifest-engine-cache-reused-not-bool": (_manifest(_cache(1)), 16),
    # the depth pre-scan across 64 KiB chunks (the document is 2 deep where zz_extra's items start)
    "manifest-deep-in-second-chunk": (_manifest(_extra([_ZEROS, _nest(63)])), 16),
    "manifest-64-in-first-chunk-65-in-second": (_manifest(_extra([_nest(62), _ZEROS, _nest(63)])), 16),
    "manifest-deep-after-a-string-across-chunks": (_manifest(_extra(["x" * 70000, "a", _nest(63)])), 16),
    "manifest-brackets-in-a-string-after-one-across-chunks": (_manifest(_extra(["x" * 70000, "[" * 100])), 0),
    "manifest-variant-accuracy-calibration": (_manifest(_variant), 0),
    "manifest-version-5000-digits": (_manifest(_set_path(("version",), "1" * 5000 + ".0.0")), 16),
}
BOTH_KEYS: Set[str] = set()  # names of cases verified against both test keys
