"""Fuzz target: the manifest parser and the checks that bind a manifest to a bundle.

    python fuzz/run.py manifest --seconds 600

Every input is parsed as a manifest (`parse_manifest`: strict JSON, then the schema) and by
inspect's view (`bundler.inspect.typed_manifest`, which may only return notes). A manifest that
parses is then bound as if a trusted signature listed exactly its files (`_load_manifest`: names,
versions, the file list, model, golden data, variants, engines, the trust policy's rule) and
checked against engine headers made from its own header records (`_check_manifest_semantics`),
so the cross-checks run on hostile values too. Documented: `SchemaError` from the parser and
`VerificationError` from the checks. Anything else is a crash.
"""

from __future__ import annotations

import hashlib
import struct
import sys

from _common import main

_KEY_ID = "f" * 64


def check(data: bytes) -> bool:
    from bundler.inspect import typed_manifest
    from runtime_stub import verify as V

    typed_manifest(data, "manifest.json")
    try:
        m = V.parse_manifest(data, "manifest.json")
    except V.SchemaError:
        return False
    root = f"{m.name}-{m.version}"
    resources = {f.path: f.sha256 for f in m.files if isinstance(f.path, str)}
    resources.update({V.MANIFEST: hashlib.sha256(data).hexdigest(), V.SHA256SUMS: "0" * 64})
    rep = V.VerifyReport(bundle="fuzz")
    st = V._State(rep, now=1.7e9)
    key = V.TrustedKey(_KEY_ID, V.PublicKey(V._GX, V._GY), "fuzz")
    st.policy = V.policy_from_keys({_KEY_ID: key})
    st.statement = V.Statement(root, resources, ())
    st.files = {p: V.FileReport(p, None, d) for p, d in resources.items()}  # as _run does once the signature is checked
    rep.signers.append(V.SignerReport(file="signatures/fuzz.sig", key_id=_KEY_ID, trusted=True, valid=True))
    try:
        V._load_manifest(data, st, root, root)
        for e in m.engines:
            st.engine_heads[e.path] = _header_for(e)
        V._check_manifest_semantics(st)
    except V.VerificationError:
        return False
    return True


def _header_for(e) -> bytes:  # noqa: ANN001
    """The first 64 bytes of an engine as its manifest record describes it."""
    h = e.header
    if h is None:
        return b""
    parts = [int(p) if p.isdigit() and int(p) < 256 else 0 for p in str(h.version).split(".")[:4]] + [0, 0, 0, 0]
    mask = h.cc_mask if isinstance(h.cc_mask, int) and 0 <= h.cc_mask < 2**64 else 0
    size = e.size if isinstance(e.size, int) and 0 <= e.size < 2**64 else 0
    magic = b"vtrt" if h.product == "tensorrt-rtx" else b"ftrt"
    return magic + b"\0" * 12 + struct.pack("<Q", size) + bytes(parts[:4]) + magic + struct.pack("<Q", mask) + b"\0" * 24


if __name__ == "__main__":
    main("manifest", check, ["runtime_stub.verify"], also_import=["bundler.inspect"])
    sys.exit(0)
