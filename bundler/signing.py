"""Keys, key ids and OpenSSF model-signing v1.0 compatible signatures.

Layers, as in sigstore/model-transparency: (1) a resource list of (path, SHA-256) pairs; (2) an
in-toto Statement v1 over it with predicate type ``https://model_signing/signature/v1.0``; (3) a
DSSE envelope signing that statement's PAE with ECDSA P-256; (4) a sigstore bundle v0.3 JSON file
holding the envelope and the signer's key id as ``verificationMaterial.publicKey.hint``.

This module never reads tars; `seal` and `verify` hand it resource lists and bytes. Signing is
deterministic (RFC 6979), so the same inputs and key give the same signature bytes.
"""

from __future__ import annotations

import base64
import hashlib
import json
import re
import os
import stat
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Sequence, Tuple

from cryptography.exceptions import InvalidSignature
from cryptography.hazmat.primitives import hashes, serialization
from cryptography.hazmat.primitives.asymmetric import ec

from .errors import InputError, KeyFileError, OutputError, SignatureError

BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"
SIGNATURES_DIR = "signatures"
PASSPHRASE_ENV = "BUNDLE_KEY_PASSPHRASE"


# -- keys -------------------------------------------------------------------------------------

def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    return key.public_bytes(serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo)


def key_id(key: ec.EllipticCurvePublicKey) -> str:
    """Hex SHA-256 of the SubjectPublicKeyInfo PEM: the value model-signing writes as ``hint``."""
    return hashlib.sha256(public_pem(key)).hexdigest()


@dataclass(frozen=True)
class GeneratedKey:
    private_path: Path
    public_path: Path
    key_id: str


def generate_key(name: str, directory: Path, passphrase: Optional[bytes]) -> GeneratedKey:
    """Make an ECDSA P-256 key pair: ``NAME.key`` (PKCS#8 PEM, mode 0600) and ``NAME.pub``.

    Neither file is ever overwritten: losing a signing key by typo is not recoverable.
    """
    if not name or "/" in name or name.startswith("."):
        raise InputError(f"key name {name!r}: use a plain file name")
    directory = Path(directory)
    try:
        directory.mkdir(parents=True, exist_ok=True, mode=0o700)
    except OSError as e:
        raise OutputError(f"{directory}: cannot create the key directory ({e.strerror})") from None
    priv_path, pub_path = directory / f"{name}.key", directory / f"{name}.pub"
    for p in (priv_path, pub_path):
        if p.exists():
            raise OutputError(f"{p}: already exists; keys are never overwritten")
    key = ec.generate_private_key(ec.SECP256R1())
    enc: serialization.KeySerializationEncryption
    enc = serialization.BestAvailableEncryption(passphrase) if passphrase else serialization.NoEncryption()
    priv_pem = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, enc)
    _write_new(priv_path, priv_pem, 0o600)
    try:
        _write_new(pub_path, public_pem(key.public_key()), 0o644)
    except BaseException:
        priv_path.unlink()
        raise
    return GeneratedKey(priv_path, pub_path, key_id(key.public_key()))


def _write_new(path: Path, data: bytes, mode: int) -> None:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, mode)
    except FileExistsError:
        raise OutputError(f"{path}: already exists; keys are never overwritten") from None
    except OSError as e:
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        os.chmod(path, mode)
    except OSError as e:
        path.unlink(missing_ok=True)
        raise OutputError(f"{path}: cannot write ({e.strerror})") from None  # umask may have narrowed it; make it exactly what we promise


def private_key_is_encrypted(path: Path) -> bool:
    try:
        return b"ENCRYPTED" in Path(path).read_bytes()[:64]
    except OSError:
        return False


def load_private_key(path: Path, passphrase: Optional[bytes]) -> ec.EllipticCurvePrivateKey:
    """Load a signing key, refusing one that group or others can read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such private key") from None
    if st.st_mode & 0o077:
        raise KeyFileError(
            f"{path}: private key is accessible to group or others (mode {stat.S_IMODE(st.st_mode):04o}); "
            f"fix it with: chmod 600 {path}"
        )
    data = path.read_bytes()
    if b"PRIVATE KEY" not in data:
        raise KeyFileError(f"{path}: not a PEM private key")
    if b"ENCRYPTED" in data and not passphrase:
        raise KeyFileError(f"{path}: key is encrypted; set {PASSPHRASE_ENV} or run interactively to be asked")
    try:
        key = serialization.load_pem_private_key(data, passphrase if b"ENCRYPTED" in data else None)
    except (ValueError, TypeError) as e:
        if b"ENCRYPTED" in data:
            raise KeyFileError(f"{path}: wrong passphrase or damaged key") from None
        raise KeyFileError(f"{path}: cannot read private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: not an ECDSA P-256 key (model-signing compatible bundles need P-256)")
    return key


def load_public_key(path: Path) -> ec.EllipticCurvePublicKey:
    path = Path(path)
    try:
        data = path.read_bytes()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such public key") from None
    except OSError as e:
        raise KeyFileError(f"{path}: cannot read ({e.strerror})") from None
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: is a private key; trust takes the public key (.pub)")
    try:
        key = serialization.load_pem_public_key(data)
    except (ValueError, TypeError):
        raise KeyFileError(f"{path}: not a PEM public key") from None
    if not isinstance(key, ec.EllipticCurvePublicKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: not an ECDSA P-256 public key")
    return key


@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    key: ec.EllipticCurvePublicKey
    source: str


def load_trust(paths: Sequence[Path]) -> Dict[str, TrustedKey]:
    """Trusted keys by key id, from ``--trust`` files. A trust-policy file format will extend this."""
    trusted: Dict[str, TrustedKey] = {}
    for p in paths:
        k = load_public_key(Path(p))
        kid = key_id(k)
        trusted[kid] = TrustedKey(kid, k, str(p))
    return trusted


# -- statement --------------------------------------------------------------------------------

def subject_digest(resources: Dict[str, str]) -> str:
    """model-signing's root digest: SHA-256 over the raw file digests in sorted path order."""
    h = hashlib.sha256()
    for name in sorted(resources):
        h.update(bytes.fromhex(resources[name]))
    return h.hexdigest()


def make_statement(subject: str, resources: Dict[str, str]) -> bytes:
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": subject, "digest": {"sha256": subject_digest(resources)}}],
        "predicateType": PREDICATE_TYPE,
        "predicate": {
            "resources": [
                {"digest": resources[n], "name": n, "algorithm": "sha256"} for n in sorted(resources)
            ],
            "serialization": {
                "ignore_paths": [SIGNATURES_DIR],
                "allow_symlinks": False,
                "method": "files",
                "hash_type": "sha256",
            },
        },
    }
    return json.dumps(statement, indent=2).encode("utf-8")


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature actually covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def sign_statement(statement: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A model-signing compatible signature file (sigstore bundle v0.3 JSON) for ``statement``."""
    sig = key.sign(pae(PAYLOAD_TYPE, statement), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    doc = {
        "mediaType": BUNDLE_MEDIA_TYPE,
        "verificationMaterial": {"publicKey": {"hint": key_id(key.public_key())}, "tlogEntries": []},
        "dsseEnvelope": {
            "payload": base64.b64encode(statement).decode("ascii"),
            "payloadType": PAYLOAD_TYPE,
            "signatures": [{"sig": base64.b64encode(sig).decode("ascii"), "keyid": ""}],
        },
    }
    return (json.dumps(doc, indent=2) + "\n").encode("utf-8")


@dataclass(frozen=True)
class SignatureFile:
    """A parsed (not yet verified) signature file."""

    hint: Optional[str]
    payload: bytes
    signature: bytes


@dataclass(frozen=True)
class Statement:
    subject: str
    resources: Dict[str, str]  # path -> sha256 hex
    ignore_paths: Tuple[str, ...]


def parse_signature_file(raw: bytes, where: str) -> SignatureFile:
    try:
        doc = json.loads(raw.decode("utf-8"))
        if doc.get("mediaType") not in (BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"):
            raise ValueError(f"unsupported mediaType {doc.get('mediaType')!r}")
        env = doc["dsseEnvelope"]
        if env["payloadType"] != PAYLOAD_TYPE:
            raise ValueError(f"unsupported payloadType {env['payloadType']!r}")
        sigs = env["signatures"]
        if not isinstance(sigs, list) or len(sigs) != 1:
            raise ValueError("expected exactly one DSSE signature")
        hint = ((doc.get("verificationMaterial") or {}).get("publicKey") or {}).get("hint")
        payload = base64.b64decode(env["payload"], validate=True)
        sig = base64.b64decode(sigs[0]["sig"], validate=True)
    except RecursionError:  # hostile nesting ("[[[[…") is unparsable, not a crash
        raise SignatureError(f"{where}: not a model-signing signature file (nested too deeply)", member=where) from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{where}: not a model-signing signature file ({e})", member=where) from None
    if hint is not None and not isinstance(hint, str):
        raise SignatureError(f"{where}: key hint is not a string", member=where)
    return SignatureFile(hint, payload, sig)


def verify_signature(sf: SignatureFile, key: ec.EllipticCurvePublicKey) -> bool:
    try:
        key.verify(sf.signature, pae(PAYLOAD_TYPE, sf.payload), ec.ECDSA(hashes.SHA256()))
        return True
    except InvalidSignature:
        return False


_HEX64 = re.compile(r"[0-9a-fA-F]{64}")


def parse_statement(payload: bytes, where: str) -> Statement:
    """Parse a signed in-toto statement, checking it is a model-signing v1.0 file manifest."""
    try:
        st = json.loads(payload.decode("utf-8"))
        if st.get("_type") != STATEMENT_TYPE:
            raise ValueError(f"statement type {st.get('_type')!r}")
        if st.get("predicateType") != PREDICATE_TYPE:
            raise ValueError(f"predicate type {st.get('predicateType')!r}")
        subjects = st["subject"]
        if len(subjects) != 1:
            raise ValueError("expected one subject")
        subject = subjects[0]["name"]
        root = subjects[0]["digest"]["sha256"]
        pred = st["predicate"]
        ser = pred["serialization"]
        if ser.get("method") != "files" or ser.get("hash_type") != "sha256":
            raise ValueError(f"serialization {ser.get('method')}/{ser.get('hash_type')} (need files/sha256)")
        resources: Dict[str, str] = {}
        for r in pred["resources"]:
            if r["algorithm"] != "sha256":
                raise ValueError(f"algorithm {r['algorithm']!r}")
            name, digest = r["name"], r["digest"]
            if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ValueError("bad resource entry")
            if name in resources:
                raise ValueError(f"resource {name!r} listed twice")
            resources[name] = digest.lower()
        ignore = tuple(str(p) for p in ser.get("ignore_paths", []))
    except RecursionError:
        raise SignatureError(f"{where}: signed statement is malformed (nested too deeply)", member=where) from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as e:
        raise SignatureError(f"{where}: signed statement is malformed ({e})", member=where) from None
    if subject_digest(resources) != root:
        raise SignatureError(f"{where}: signed statement's subject digest does not match its resources", member=where)
    return Statement(subject, resources, ignore)
