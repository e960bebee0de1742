"""Fuzz target: the trust-file rule, the trust-policy parser and key-rotation statements.

    python fuzz/run.py trust_policy --seconds 600

Every input is read as a trust file (`load_public_key` on a regular file: the PEM/SPKI rule),
as a trust policy (`parse_policy`; a policy that parses must answer `rule_for`, `allowed` and a
successor check against itself), and as a key-rotation statement (`verify_rotation`).
Documented: `KeyFileError` (trust files, policies) and `SignatureError` (rotations, successors).
Anything else is a crash.
"""

from __future__ import annotations

import os
import sys
import tempfile
from pathlib import Path

from _common import main

_state: dict = {}


def check(data: bytes) -> bool:
    from runtime_stub import verify as V

    if not _state:
        _state["dir"] = Path(tempfile.mkdtemp(prefix="fuzz-trust-", dir="/dev/shm" if os.path.isdir("/dev/shm") else None))
    accepted = False
    key_file = _state["dir"] / "key.pub"
    key_file.write_bytes(data)
    try:
        key = V.load_public_key(key_file)
        if not V.KEY_ID_RE.match(key.key_id):
            raise AssertionError("a key id that is not 64 hex digits")
        accepted = True
    except V.KeyFileError:
        pass
    try:
        policy = V.parse_policy(data, "policy.json", _state["dir"])
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
