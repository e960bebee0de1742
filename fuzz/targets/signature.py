"""Fuzz target: the signature-file and statement parsers.

    python fuzz/run.py signature --seconds 600

Every input is read as a signature file (`parse_signature_file`, then `parse_statement` on its
payload), as a statement on its own (`parse_statement`), and by inspect's unauthenticated view
of a signature (`bundler.inspect._signature`, which may only add notes). A parsed statement's
expiry must be readable by `expires_epoch` (it was validated), and its subject digest must be the
one its resources give. Documented: `SignatureError`. Anything else is a crash.
"""

from __future__ import annotations

import sys

from _common import main


def check(data: bytes) -> bool:
    from bundler.inspect import InspectReport, _signature
    from runtime_stub import verify as V

    accepted = False
    try:
        sf = V.parse_signature_file(data, "fuzz.sig")
        if sf.hint is not None and not isinstance(sf.hint, str):
            raise AssertionError("a hint that is not a string")
        V.shown_key_id(sf.hint)
        _statement(V, sf.payload)
        accepted = True
    except V.SignatureError:
        pass
    try:
        _statement(V, data)
        accepted = True
    except V.SignatureError:
        pass
    rep = InspectReport("fuzz")
    _signature(data, "fuzz.sig", rep)
    return accepted


def _statement(V, payload: bytes) -> None:  # noqa: ANN001
    st = V.parse_statement(payload, "fuzz.sig")
    if st.expires is not None:
        V.expires_epoch(st.expires)
    V.subject_digest(st.resources)
    V.printable(st.subject)


if __name__ == "__main__":
    main("signature", check, ["runtime_stub.verify"], also_import=["bundler.inspect"])
    sys.exit(0)
