"""Fuzz target: the trust-file rule, the trust-policy parser and key-rotation statements.

    python fuzz/run.py trust_policy --seconds 600

Every input is read as a trust file (`load_public_key` on a regular file: the PEM/SPKI rule),
as a trust policy (`parse_policy`; a policy that parses must answer `rule_for`, `allowed` and a
successor check against itself), and as a key-rotation statement (`verify_rotation`).
Documented: `KeyFileError` (trust files, policies) and `SignatureError` (rotations, successors).
Anything else is a crash.
"""

from __future__ import annotations

import sys
from pathlib import Path

from _common import MemFile, main

_state: dict = {}
_NO_BASE = Path("/nonexistent/fuzz-policy-base")  # a policy's relative key paths lead nowhere


def check(data: bytes) -> bool:
    from runtime_stub import verify as V

    if not _state:
        _state["file"] = MemFile("key.pub")
    accepted = False
    key_file = _state["file"].write(data)
    try:
        key = V.load_public_key(key_file)
        if not V.KEY_ID_RE.match(key.key_id):
            raise AssertionError("a key id that is not 64 hex digits")
        accepted = True
    except V.KeyFileError:
        pass
    try:
        policy = V.parse_policy(data, "policy.json", _NO_BASE)
        for name in ("camp", "detector-x", ""):
            rule = policy.rule_for(name)
            if rule is not None:
                policy.allowed(rule)
        V.policy_signers_counted(policy, policy)
        try:
            V.verify_policy_update(policy, policy)
            raise AssertionError("a policy accepted as its own successor")
        except V.SignatureError:
            pass
        accepted = True
    except V.KeyFileError:
        pass
    try:
        V.verify_rotation(data, "rotation.json")
        accepted = True
    except V.SignatureError:
        pass
    return accepted


if __name__ == "__main__":
    main("trust_policy", check, ["runtime_stub.verify"])
    sys.exit(0)
