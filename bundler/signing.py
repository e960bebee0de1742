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
import os
import re
import stat
import time
from dataclasses import dataclass
from pathlib import Path
from typing import TYPE_CHECKING, Optional

if TYPE_CHECKING:  # imported where used: `cryptography` costs ~30 ms, and verify rarely needs it
    from cryptography.hazmat.primitives.asymmetric import ec

# Reading what a bundle or a trust file says (parsing, the trust-file rule, the pure-Python
# signature check) is the shared verification code's; this module adds what needs `cryptography`:
# making keys, signing, and a fast signature check that the pipeline can use instead.
from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    BUNDLE_MEDIA_TYPE,
    PAYLOAD_TYPE,
    PREDICATE_TYPE,
    SIGNATURES_DIR,
    STATEMENT_TYPE,
    PublicKey,
    SignatureFile,
    Statement,
    LedgerHead,
    TrustedKey,
    load_public_key,
    load_trust,
    pae,
    parse_signature_file,
    parse_statement,
    ecdsa_p256_verify,
    expires_epoch,
    subject_digest,
)

from .errors import InputError, KeyFileError, OutputError

PASSPHRASE_ENV = "BUNDLE_KEY_PASSPHRASE"


# -- keys -------------------------------------------------------------------------------------

def public_pem(key: ec.EllipticCurvePublicKey) -> bytes:
    from cryptography.hazmat.primitives import serialization

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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

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


def _is_public_key_pem(path: Path) -> bool:
    """Whether the file's first PEM block is a public key (read at most 64 KiB: a key is small)."""
    try:
        with open(path, "rb") as f:
            head = f.read(64 << 10)
    except OSError:
        return False  # the caller's own read reports it
    begin = head.find(b"-----BEGIN ")
    return begin >= 0 and head.startswith(b"-----BEGIN PUBLIC KEY-----", begin)


def load_private_key(path: Path, passphrase: Optional[bytes]) -> ec.EllipticCurvePrivateKey:
    """Load a signing key, refusing one that group or others can read."""
    path = Path(path)
    try:
        st = path.stat()
    except FileNotFoundError:
        raise KeyFileError(f"{path}: no such private key") from None
    if not stat.S_ISREG(st.st_mode):
        raise KeyFileError(f"{path}: not a regular file; --key takes the private signing key file (.key)")
    # What the file is comes before how it is protected: `--key release.pub` is a mix-up of the
    # pair's two files, and advising `chmod 600` on a public key sends the user the wrong way.
    if _is_public_key_pem(path):
        raise KeyFileError(f"{path}: is a public key; --key takes the private signing key (the .key file of the "
                           f"pair), --trust takes the .pub")
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
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        key = serialization.load_pem_private_key(data, passphrase if b"ENCRYPTED" in data else None)
    except (ValueError, TypeError) as e:
        if b"ENCRYPTED" in data:
            raise KeyFileError(f"{path}: wrong passphrase or damaged key") from None
        raise KeyFileError(f"{path}: cannot read private key ({e})") from None
    if not isinstance(key, ec.EllipticCurvePrivateKey) or key.curve.name != "secp256r1":
        raise KeyFileError(f"{path}: not an ECDSA P-256 key (model-signing compatible bundles need P-256)")
    return key


# -- statement --------------------------------------------------------------------------------

def make_statement(subject: str, resources: "dict[str, str]", expires: Optional[str] = None,
                   ledger: Optional[LedgerHead] = None) -> bytes:
    """The in-toto statement a signature signs. ``expires`` (``YYYY-MM-DDTHH:MM:SSZ``) goes in
    as ``predicate.expires``: inside the signed payload, so it cannot be stripped or moved
    without breaking the signature, and in the predicate, whose unknown fields model-signing
    v1.0 verifiers ignore (so each signature file stays model-signing compatible). ``ledger``
    (the signing ledger's head this signing extends, docs/ledger.md) goes in as
    ``predicate.ledger`` for the same reasons; neither changes the subject digest."""
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
    if expires is not None:
        expires_epoch(expires)  # never write what the verifier would refuse
        statement["predicate"]["expires"] = expires
    if ledger is not None:
        statement["predicate"]["ledger"] = {"id": ledger.id, "seq": ledger.seq, "sha256": ledger.sha256}
    return json.dumps(statement, indent=2).encode("utf-8")


_DURATION_RE = re.compile(r"([1-9][0-9]{0,6})([smhdw])\Z")
_DURATION_UNITS = {"s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}
_DATE_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}\Z")


def parse_expiry(text: str, now: Optional[float] = None) -> str:
    """``--expires`` as the signed form ``YYYY-MM-DDTHH:MM:SSZ``.

    Accepts a duration from ``now`` (``90d``, ``12h``, ``30m``, ``45s``, ``2w``), a date
    (``2027-01-31``, meaning 00:00:00 UTC at the start of that day) or a UTC time
    (``2027-01-31T12:00:00Z``). The result must lie in the future: a past expiry makes a bundle
    that no host accepts without ``--allow-expired``, which is a typo, never an intent.
    """
    now = time.time() if now is None else now
    text = str(text).strip()
    m = _DURATION_RE.match(text)
    if m:
        when = int(now) + int(m.group(1)) * _DURATION_UNITS[m.group(2)]
    else:
        value = text + "T00:00:00Z" if _DATE_RE.match(text) else text
        try:
            when = expires_epoch(value)
        except ValueError:
            raise InputError(f"--expires {text!r}: give a duration (90d, 12h, 30m, 45s, 2w), a date (2027-01-31) "
                             "or a UTC time (2027-01-31T12:00:00Z)") from None
    try:
        out = time.strftime("%Y-%m-%dT%H:%M:%SZ", time.gmtime(when))
        expires_epoch(out)
    except (ValueError, OverflowError, OSError):
        raise InputError(f"--expires {text!r}: out of range") from None
    if when <= now:
        raise InputError(f"--expires {text!r}: {out} is not in the future; a bundle must not be signed expired")
    return out


def sign_statement(statement: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """A model-signing compatible signature file (sigstore bundle v0.3 JSON) for ``statement``."""
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

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


def ecdsa_fast(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """ECDSA P-256/SHA-256 through `cryptography` (OpenSSL): the library's fast path for the
    shared pipeline's signature check. Same answers as the pure-Python `ecdsa_p256_verify`
    (tests/test_one_verifier.py checks both on the same vectors)."""
    from cryptography.exceptions import InvalidSignature
    from cryptography.hazmat.primitives import hashes
    from cryptography.hazmat.primitives.asymmetric import ec

    try:
        pub = ec.EllipticCurvePublicNumbers(key.x, key.y, ec.SECP256R1()).public_key()
        pub.verify(bytes(signature), message, ec.ECDSA(hashes.SHA256()))
        return True
    except (InvalidSignature, ValueError):
        return False


class EcdsaChecker:
    """The signature check one verification uses: pure Python for its first few signatures,
    `cryptography` after.

    A pure-Python P-256 check costs about 3 ms; importing OpenSSL's bindings costs about 30 ms
    of start-up, which every `bundle verify` paid before its first byte was hashed (a bundle has
    one or two signatures). Beyond `PURE_FIRST` signatures, the fast path pays for itself. Both
    give the same answers (tests/test_one_verifier.py), so which one ran never changes a verdict.
    """

    PURE_FIRST = 8

    def __init__(self) -> None:
        self.calls = 0

    def __call__(self, key: PublicKey, signature: bytes, message: bytes) -> bool:
        self.calls += 1
        if self.calls <= self.PURE_FIRST:
            return ecdsa_p256_verify(key, signature, message)
        return ecdsa_fast(key, signature, message)
