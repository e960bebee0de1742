"""Trust policies: signing a policy's successor, checking a rotation chain, and key rotations.

Reading and enforcing a policy is verification, so it lives in the shared verifier
(runtime_stub/verify.py: `load_policy`, `parse_policy`, `verify_policy_update`), which closed hosts
run with nothing installed. This module holds only what needs a private key: adding signatures to
a policy (`bundle policy update`) and writing key-rotation statements (`bundle keys rotate`).
"""

from __future__ import annotations

import base64
import datetime as _dt
import json
import os
from pathlib import Path
from typing import Dict, List, Optional, Sequence

from cryptography.hazmat.primitives import hashes
from cryptography.hazmat.primitives.asymmetric import ec

from runtime_stub.verify import (
    POLICY_PAYLOAD_TYPE,
    ROTATION_FORMAT,
    ROTATION_PAYLOAD_TYPE,
    TrustPolicy,
    load_policy,
    loads_strict,
    pae,
    parse_policy,
    policy_body,
    policy_signers_counted,
    read_bounded,
    verify_policy_update,
)

from .errors import InputError, KeyFileError, OutputError
from .fsutil import rename_noreplace
from .signing import key_id, public_pem



def _sign(body: bytes, payload_type: str, key: ec.EllipticCurvePrivateKey) -> Dict[str, str]:
    sig = key.sign(pae(payload_type, body), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    return {"keyid": key_id(key.public_key()), "sig": base64.b64encode(sig).decode("ascii")}


def _write_atomic(dest: Path, data: bytes, replace: bool = True) -> None:
    """``dest`` appears whole or not at all; with ``replace=False`` never over an existing file
    (one that appeared meanwhile included: rename_noreplace)."""
    tmp = dest.with_name(f".{dest.name}.partial-{os.getpid()}")
    try:
        with open(tmp, "xb") as f:
            f.write(data)
            f.flush()
            os.fsync(f.fileno())
        if replace:
            os.replace(tmp, dest)
        else:
            rename_noreplace(tmp, dest)
    except OSError as e:
        tmp.unlink(missing_ok=True)
        raise OutputError(f"{dest}: cannot write ({e.strerror or e})") from None
    except BaseException:
        tmp.unlink(missing_ok=True)
        raise


def sign_policy_update(old_path: Path, new_path: Path, keys: Sequence[ec.EllipticCurvePrivateKey],
                       out: Optional[Path] = None) -> "tuple[TrustPolicy, int, int]":
    """Add signatures by ``keys`` (each one of ``old``'s policy signers) to the policy at
    ``new_path``, writing it to ``out`` (default: in place, atomically). Signatures already on it
    are kept, so k signers can sign in turn on different machines. Returns the new policy, how
    many distinct signers' signatures it now carries that count, and the threshold."""
    old = load_policy(old_path)
    raw = read_bounded(Path(new_path), 1 << 20, KeyFileError, "trust policy")
    unsigned = parse_policy(raw, str(new_path), Path(new_path).parent)  # the new policy must itself be sound
    doc = loads_strict(raw)
    if old.signers is None:
        raise InputError(f"{old_path}: has no policy_signers; no successor can be signed under it")
    if unsigned.version <= old.version:
        raise InputError(f"{new_path}: version {unsigned.version} must be higher than {old.version} ({old_path})")
    allowed = set(old.keys) if old.signers.keys == ["*"] else set(old.signers.keys)
    sigs: List[Dict[str, str]] = [s for s in doc.get("signatures", [])]
    body = policy_body(doc)
    for k in keys:
        kid = key_id(k.public_key())
        if kid not in allowed:
            raise KeyFileError(f"key {kid[:16]}... is not one of the policy signers of {old_path}")
        sigs = [s for s in sigs if s.get("keyid") != kid] + [_sign(body, POLICY_PAYLOAD_TYPE, k)]
    doc["signatures"] = sigs
    data = (json.dumps(doc, indent=2, sort_keys=False) + "\n").encode("utf-8")
    dest = Path(out) if out else Path(new_path)
    new = parse_policy(data, str(dest), dest.parent)
    counted = len(policy_signers_counted(old, new))  # verified, not merely claimed
    _write_atomic(dest, data)
    return new, counted, old.signers.threshold


def verify_chain(paths: Sequence[Path]) -> List[TrustPolicy]:
    """Each policy must be accepted as the successor of the one before it (`verify_policy_update`)."""
    if len(paths) < 2:
        raise InputError("give the policy this host trusts now, then each newer one in order")
    chain = [load_policy(Path(paths[0]))]
    for p in paths[1:]:
        new = load_policy(Path(p))
        verify_policy_update(chain[-1], new)
        chain.append(new)
    return chain


def write_rotation(old: ec.EllipticCurvePrivateKey, new_pub_pem: bytes, out: Path) -> Dict[str, str]:
    """A statement, signed by the old key, that names its successor: what a key holder sends the
    policy's signers, who adopt it in the next policy version (docs/trust-policy.md)."""
    from runtime_stub.verify import parse_public_key_pem

    try:
        new = parse_public_key_pem(new_pub_pem)
    except (ValueError, IndexError) as e:
        raise KeyFileError(f"--new: not an ECDSA P-256 public key PEM ({e})") from None
    doc = {
        "format": ROTATION_FORMAT,
        "old": key_id(old.public_key()),
        "old_pem": public_pem(old.public_key()).decode("ascii"),
        "new": new.key_id,
        "new_pem": new.pem().decode("ascii"),
        "date": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
    }
    if doc["old"] == doc["new"]:
        raise InputError("the new key is the old key")
    body = policy_body(doc)
    doc["signatures"] = [_sign(body, ROTATION_PAYLOAD_TYPE, old)]
    _write_atomic(Path(out), (json.dumps(doc, indent=2) + "\n").encode("utf-8"), replace=False)
    return doc
