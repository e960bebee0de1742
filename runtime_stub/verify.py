#!/usr/bin/env python3
"""Stand-alone bundle verifier: Python >= 3.8, standard library only.

    python3 verify.py BUNDLE --trust KEY.pub [--trust KEY.pub ...] [--json] [--require-host]

BUNDLE is a ``NAME-VERSION.bundle.tar`` or a directory made by ``bundle extract --dest DIR``.
Without ``--trust``, the trusted keys come from ``BUNDLE_TRUST`` (files separated by os.pathsep).

This file is THE implementation of reading and verifying a bundle: `bundle verify`, `extract`,
`inspect --trust` and `run` import it (the library adds only an extraction sink and a faster
signature check through `cryptography`), and every bundle carries it, byte for byte, as
``runtime/verify.py``, so a host without trt-bundler, `cryptography` or pip runs exactly the
checks the publisher ran. A copy inside a bundle proves nothing by itself: run a copy you trust
(`bundle verifier --out`, checked against its published SHA-256). docs/bundle-format.md is the
normative spec it implements, read top to bottom in the same order.

Exit codes: 0 verified; 1 internal error; 2 usage; 3 bad input; 4 key problem; 10 archive
(not a tar, damaged, truncated, data after the end); 11 signature; 12 digest; 13 members
(extra, missing, duplicated); 14 unsafe member (links, devices, '..', setuid, odd PAX keys, case
clash); 15 limits; 16 binding (signed metadata disagrees with the bundle); 17 host (only with
--require-host); 18 rollback (only with a host state, --state or BUNDLE_STATE: older than a
version this host accepted, a different bundle under an accepted version, or stale by --max-age);
19 parts (a split bundle: a part missing, damaged, from another bundle or another split).

BUNDLE may also be a split bundle: its part index (NAME-VERSION.bundle.tar.ID.parts.json, made by
`bundle split`) or any one of its parts. Every part is checked against the signed index and the
bundle is verified streaming part after part, without a joined copy.

A bundle's SLSA v1.0 provenance (provenance/slsa-v1.intoto.json: a DSSE envelope over an
in-toto Statement v1, one subject per engine) is checked too when present: its signature under
the trusted keys, its type, and that its subjects are exactly the engines (11 or 16).

Signatures are OpenSSF model-signing v1.0 files (sigstore bundle v0.3 JSON, DSSE envelope,
in-toto statement) made with ECDSA P-256 keys; the ECDSA verification below is written out in
pure Python (verification only: no secret is ever handled here, so constant time is not needed).

For an extracted directory the root name bound by the signature is the manifest's NAME-VERSION
(the directory itself may be renamed); symlinks, special files, setuid/setgid/sticky files,
files outside the signed list (except signatures/*.sig), directories holding no signed file and
missing files are refused. The directory named on the command line may itself be a symlink.
A directory has no whole-file digest: its report has "sha256": null.

Trust files follow one rule: a regular file of at most 1 MiB holding exactly one ``PUBLIC KEY``
PEM block (no headers, canonical base64) for a named-curve P-256 key with an uncompressed point.
Member names are compared as bytes; case clashes are found with an ASCII-only fold, so every
Python gives the same verdict. Signed JSON (signature files, statements, the manifest) is parsed
strictly: no duplicate keys, no NaN or Infinity, bounded nesting and numbers.

Speed: one pass, 1 MiB reads; the whole-file SHA-256 runs in a worker thread beside the member
digests (hashlib releases the GIL), so a bundle is checked at about the speed of one
``openssl dgst -sha256`` over it when a second core is free.

Tested on CPython 3.8.18, 3.9.18, 3.10.13, 3.11.7, 3.12.1 and 3.13.0 (tests/test_stdlib_verifier.py
runs it under every interpreter it finds, each in an empty virtual environment with ``python -I``);
the test suite also checks that the source parses as Python 3.6, so that on 3.6 and 3.7 its first
lines can say which Python it needs (exit 2), and that it imports only standard-library modules.
"""

import sys

if sys.version_info < (3, 8):  # before any import that would fail on an old Python with a traceback
    sys.stderr.write("error [usage]: verify.py needs Python 3.8 or newer; this is Python %d.%d\n" % tuple(sys.version_info[:2]))
    sys.exit(2)

if __name__ == "__main__" and sys.path and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
    # Python put this script's directory first on sys.path: take it off before any other import,
    # so a module planted beside the verifier (a json.py in runtime/) is never imported.
    del sys.path[0]

import argparse  # noqa: E402 - after the sys.path guard, on purpose
import base64
import binascii
import calendar
import contextlib
import dataclasses
import datetime
import enum
import functools
import hashlib
import io
import itertools
import json
import math
import mmap
import os
import queue
import re
import signal
import stat
import struct
import threading
import time
import typing
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Set, Tuple, Union

__all__ = ["main", "verify_bundle", "load_trust", "ecdsa_p256_verify", "parse_public_key_pem"]

BLOCK = 512
RECORD = 20 * BLOCK
CHUNK = 1 << 20  # read size: big enough that hashlib releases the GIL and syscalls are rare
MAP_WINDOW = 4 << 20  # a regular file is read through mmap windows of this size (page-aligned)
MAP_IN_FLIGHT = 2  # windows mapped at once besides the one being parsed: RSS stays ~12 MiB
ALLOWED_PAX_KEYS = frozenset({"path", "size", "mtime"})
MAX_SIGNATURE_SIZE = 1 << 20
MAX_SIGNATURES = 16
MAX_MANIFEST_SIZE = 16 << 20
MAX_KEY_FILE_SIZE = 1 << 20

FORMAT_VERSION = "trt-bundle/1"
MANIFEST = "manifest.json"
SHA256SUMS = "SHA256SUMS"
SIGNATURES_DIR = "signatures"
BUNDLE_MEDIA_TYPE = "application/vnd.dev.sigstore.bundle.v0.3+json"
PAYLOAD_TYPE = "application/vnd.in-toto+json"
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"


# == errors and exit codes (bundler/errors.py; the numbers are a public interface) ==============

KEY_ID_RE = re.compile(r"[0-9a-f]{64}\Z")
TRUST_ENV = "BUNDLE_TRUST"


def printable(text: Any) -> str:
    """The display rule for any string that may come from a bundle (bundler/errors.py
    `printable`): printable ASCII passes, a backslash is doubled, everything else (control
    characters, escape sequences, non-ASCII) becomes a Python escape. It is the standard
    library's ``unicode_escape`` codec, the same on every Python from 3.8 on."""
    return str(text).encode("unicode_escape").decode("ascii")


def shown_key_id(hint: Optional[str]) -> str:
    """A signature file's key hint for display: a real key id, or a label; never echoed raw."""
    if hint is None:
        return "(no key hint)"
    return hint if KEY_ID_RE.match(hint) else "(invalid key hint)"


class ExitCode(enum.IntEnum):
    OK = 0
    INTERNAL = 1
    USAGE = 2
    INPUT = 3
    KEY = 4
    BUILD = 5
    OUTPUT = 6
    ACCURACY = 7  # build side: a precision variant outside its selftest's tolerance
    ARCHIVE = 10
    SIGNATURE = 11
    DIGEST = 12
    MEMBERS = 13
    UNSAFE = 14
    LIMITS = 15
    BINDING = 16
    HOST = 17
    ROLLBACK = 18  # the host state refuses an authentic bundle: older, equivocating or stale
    PARTS = 19  # a split bundle: a part bad, missing, from another bundle or another split; the part index
    MEDIA = 23  # `bundle copy`: the destination cannot hold the file (FAT32's 4 GiB - 1, free space)
    AUDIT = 24  # `bundle audit`: a bundle under the audited paths is not verified (or not ledgered)
    LEDGER = 25  # the signing ledger's hash chain is broken (docs/ledger.md)
    FARM = 26  # build side: the Ray build farm (not installed, unreachable, no node for a build, a lost build)
    EXPORT = 27  # `bundle export`: an authentic bundle that cannot become the model asked for (RTX-only for Triton, ...)
    PROVENANCE = 28  # `bundle provenance`: an authentic bundle that carries no SLSA provenance (sealed before it existed)


class BundleError(Exception):
    code = ExitCode.INTERNAL

    def __init__(self, message: str, member: Optional[str] = None) -> None:
        super().__init__(message)
        self.message = message
        self.member = member

    @property
    def failure_class(self) -> str:
        return self.code.name.lower()

    def __str__(self) -> str:
        return self.message


class UsageError(BundleError):
    code = ExitCode.USAGE


class InputError(BundleError):
    code = ExitCode.INPUT


class KeyFileError(BundleError):
    code = ExitCode.KEY


class VerificationError(BundleError):
    pass


class ArchiveError(VerificationError):
    code = ExitCode.ARCHIVE


class SignatureError(VerificationError):
    code = ExitCode.SIGNATURE


class DigestError(VerificationError):
    code = ExitCode.DIGEST


class MembersError(VerificationError):
    code = ExitCode.MEMBERS


class UnsafeMemberError(VerificationError):
    code = ExitCode.UNSAFE


class LimitsError(VerificationError):
    code = ExitCode.LIMITS


class BindingError(VerificationError):
    code = ExitCode.BINDING


class HostError(VerificationError):
    code = ExitCode.HOST


class PartsError(VerificationError):
    """A part set (a bundle split by `bundle split`) is not the one its signed part index
    describes: a part missing, damaged, from another bundle or from another split."""
    code = ExitCode.PARTS


# == ECDSA P-256 (secp256r1) verification over SHA-256 =========================================

_P = 0xFFFFFFFF00000001000000000000000000000000FFFFFFFFFFFFFFFFFFFFFFFF
_A = _P - 3
_B = 0x5AC635D8AA3A93E7B3EBBD55769886BC651D06B0CC53B0F63BCE3C3E27D2604B
_N = 0xFFFFFFFF00000000FFFFFFFFFFFFFFFFBCE6FAADA7179E84F3B9CAC2FC632551
_GX = 0x6B17D1F2E12C4247F8BCE6E563A440F277037D812DEB33A0F4A13945D898C296
_GY = 0x4FE342E2FE1A7F9B8EE7EB4A7C0F9E162BCE33576B315ECECBB6406837BF51F5

_INF = (0, 1, 0)  # the point at infinity in Jacobian coordinates (Z == 0)


def _on_curve(x: int, y: int) -> bool:
    return 0 <= x < _P and 0 <= y < _P and (y * y - (x * x * x + _A * x + _B)) % _P == 0


def _jdouble(X: int, Y: int, Z: int) -> Tuple[int, int, int]:
    """2P in Jacobian coordinates, a = -3 (dbl-2001-b)."""
    if not Z or not Y:
        return _INF
    p = _P
    delta = Z * Z % p
    gamma = Y * Y % p
    beta = X * gamma % p
    alpha = 3 * (X - delta) * (X + delta) % p
    X3 = (alpha * alpha - 8 * beta) % p
    Z3 = ((Y + Z) * (Y + Z) - gamma - delta) % p
    Y3 = (alpha * (4 * beta - X3) - 8 * gamma * gamma) % p
    return X3, Y3, Z3


def _jadd_affine(X1: int, Y1: int, Z1: int, x2: int, y2: int) -> Tuple[int, int, int]:
    """P + Q with P Jacobian and Q affine (not infinity)."""
    if not Z1:
        return x2, y2, 1
    p = _P
    Z1Z1 = Z1 * Z1 % p
    H = (x2 * Z1Z1 - X1) % p
    r = (y2 * Z1 * Z1Z1 - Y1) % p
    if not H:
        return _jdouble(X1, Y1, Z1) if not r else _INF
    HH = H * H % p
    HHH = H * HH % p
    V = X1 * HH % p
    X3 = (r * r - HHH - 2 * V) % p
    Y3 = (r * (V - X3) - Y1 * HHH) % p
    return X3, Y3, Z1 * H % p


def _affine_add(P1: Tuple[int, int], P2: Tuple[int, int]) -> Optional[Tuple[int, int]]:
    """Affine sum of two finite points; None for the point at infinity."""
    (x1, y1), (x2, y2) = P1, P2
    if x1 == x2:
        if (y1 + y2) % _P == 0:
            return None
        lam = (3 * x1 * x1 + _A) * pow(2 * y1, -1, _P) % _P
    else:
        lam = (y2 - y1) * pow(x2 - x1, -1, _P) % _P
    x3 = (lam * lam - x1 - x2) % _P
    return x3, (lam * (x1 - x3) - y1) % _P


def _shamir(u1: int, u2: int, Q: Tuple[int, int]) -> Tuple[int, int, int]:
    """u1*G + u2*Q in one double-and-add pass (Shamir's trick); Jacobian result."""
    table = [None, (_GX, _GY), Q, _affine_add((_GX, _GY), Q)]
    X, Y, Z = _INF
    for i in range(max(u1.bit_length(), u2.bit_length()) - 1, -1, -1):
        X, Y, Z = _jdouble(X, Y, Z)
        pt = table[((u1 >> i) & 1) | (((u2 >> i) & 1) << 1)]
        if pt is not None:
            X, Y, Z = _jadd_affine(X, Y, Z, pt[0], pt[1])
    return X, Y, Z


def _der_tlv(data: bytes, pos: int, end: int) -> Tuple[int, int, int]:
    """(tag, start, stop) of the DER element at ``pos``; strict: minimal definite lengths."""
    if pos + 2 > end:
        raise ValueError("DER element cut short")
    tag, length = data[pos], data[pos + 1]
    pos += 2
    if tag & 0x1F == 0x1F:
        raise ValueError("DER high tag numbers are not used here")
    if length & 0x80:
        nbytes = length & 0x7F
        if nbytes == 0 or nbytes > 4 or pos + nbytes > end:
            raise ValueError("bad DER length")
        length = int.from_bytes(data[pos:pos + nbytes], "big")
        if data[pos] == 0 or length < 0x80:
            raise ValueError("non-minimal DER length")
        pos += nbytes
    if pos + length > end:
        raise ValueError("DER element runs past its container")
    return tag, pos, pos + length


def _der_uint(data: bytes, start: int, stop: int) -> int:
    """A DER INTEGER's content as a non-negative int; strict (minimal, no negatives)."""
    if stop <= start:
        raise ValueError("empty INTEGER")
    if data[start] & 0x80:
        raise ValueError("negative INTEGER")
    if data[start] == 0 and stop - start > 1 and not data[start + 1] & 0x80:
        raise ValueError("non-minimal INTEGER")
    return int.from_bytes(data[start:stop], "big")


def parse_der_signature(sig: bytes) -> Optional[Tuple[int, int]]:
    """ECDSA-Sig-Value ::= SEQUENCE { r INTEGER, s INTEGER } in strict DER; None if malformed."""
    try:
        tag, s0, s1 = _der_tlv(sig, 0, len(sig))
        if tag != 0x30 or s1 != len(sig):
            return None
        tag, r0, r1 = _der_tlv(sig, s0, s1)
        if tag != 0x02:
            return None
        r = _der_uint(sig, r0, r1)
        tag, t0, t1 = _der_tlv(sig, r1, s1)
        if tag != 0x02 or t1 != s1:
            return None
        return r, _der_uint(sig, t0, t1)
    except (ValueError, IndexError):
        return None


@dataclass(frozen=True)
class PublicKey:
    """A validated P-256 public point."""

    x: int
    y: int

    def spki_der(self) -> bytes:
        return _SPKI_P256_PREFIX + b"\x04" + self.x.to_bytes(32, "big") + self.y.to_bytes(32, "big")

    def pem(self) -> bytes:
        """The canonical PEM: what `cryptography` writes, and what the key id hashes."""
        b64 = base64.b64encode(self.spki_der()).decode("ascii")
        lines = [b64[i:i + 64] for i in range(0, len(b64), 64)]
        return ("-----BEGIN PUBLIC KEY-----\n" + "\n".join(lines) + "\n-----END PUBLIC KEY-----\n").encode("ascii")

    @property
    def key_id(self) -> str:
        return hashlib.sha256(self.pem()).hexdigest()


def ecdsa_p256_verify(key: PublicKey, signature: bytes, message: bytes) -> bool:
    """Whether ``signature`` (DER) is a valid ECDSA P-256 / SHA-256 signature of ``message``."""
    rs = parse_der_signature(bytes(signature))
    if rs is None:
        return False
    r, s = rs
    if not (1 <= r < _N and 1 <= s < _N):
        return False
    if not _on_curve(key.x, key.y):
        return False
    e = int.from_bytes(hashlib.sha256(message).digest(), "big")
    w = pow(s, -1, _N)
    X, _, Z = _shamir(e * w % _N, r * w % _N, (key.x, key.y))
    if not Z:
        return False
    zz = Z * Z % _P
    # x(R) = X / Z^2; compare without an inversion: r or r + n (when below p) times Z^2.
    if X == r * zz % _P:
        return True
    return r + _N < _P and X == (r + _N) * zz % _P


# -- keys: SubjectPublicKeyInfo PEM -------------------------------------------------------------

_OID_EC_PUBLIC_KEY = bytes.fromhex("2a8648ce3d0201")  # 1.2.840.10045.2.1
_OID_PRIME256V1 = bytes.fromhex("2a8648ce3d030107")  # 1.2.840.10045.3.1.7
_SPKI_P256_PREFIX = bytes.fromhex("3059301306072a8648ce3d020106082a8648ce3d030107034200")


# Named curves an operator may meet (OMS v1.0's own key vector is P-384): named, so the refusal says why.
_OTHER_CURVES = {bytes.fromhex("2b81040022"): "P-384 (secp384r1)", bytes.fromhex("2b81040023"): "P-521 (secp521r1)",
                 bytes.fromhex("2b8104000a"): "secp256k1"}


class NotP256(ValueError):
    """A well-formed public key of another algorithm or curve."""


def point_from_bytes(data: bytes) -> PublicKey:
    """SEC 1 uncompressed point 04||X||Y, the encoding every P-256 tool writes in an SPKI.
    Compressed and hybrid encodings are refused: one encoding, one answer everywhere."""
    if len(data) == 65 and data[0] == 4:
        x, y = int.from_bytes(data[1:33], "big"), int.from_bytes(data[33:], "big")
    elif data[:1] in (b"\x02", b"\x03"):
        raise ValueError("compressed point (trust files hold the uncompressed 04||X||Y form)")
    else:
        raise ValueError("unsupported point encoding")
    if not _on_curve(x, y):
        raise ValueError("point is not on the P-256 curve")
    return PublicKey(x, y)


def parse_spki_der(der: bytes) -> PublicKey:
    tag, s0, s1 = _der_tlv(der, 0, len(der))
    if tag != 0x30 or s1 != len(der):
        raise ValueError("not a SubjectPublicKeyInfo")
    tag, a0, a1 = _der_tlv(der, s0, s1)
    if tag != 0x30:
        raise ValueError("not a SubjectPublicKeyInfo")
    tag, o0, o1 = _der_tlv(der, a0, a1)
    if tag != 0x06:
        raise ValueError("not a SubjectPublicKeyInfo")
    tag, b0, b1 = _der_tlv(der, a1, s1)
    if tag != 0x03 or b1 != s1 or b1 - b0 < 2 or der[b0] != 0:
        raise ValueError("not a SubjectPublicKeyInfo")
    if der[o0:o1] != _OID_EC_PUBLIC_KEY:
        raise NotP256("not an EC key")
    if o1 >= a1:
        raise NotP256("EC key without curve parameters")
    tag, c0, c1 = _der_tlv(der, o1, a1)
    if tag == 0x06 and c1 == a1 and der[c0:c1] in _OTHER_CURVES:
        raise NotP256(f"curve {_OTHER_CURVES[der[c0:c1]]}; this verifier takes P-256 (prime256v1) keys")
    if tag != 0x06 or c1 != a1 or der[c0:c1] != _OID_PRIME256V1:
        raise NotP256("not on the named curve prime256v1")
    return point_from_bytes(der[b0 + 1:b1])


_PEM_BEGIN, _PEM_END = b"-----BEGIN PUBLIC KEY-----", b"-----END PUBLIC KEY-----"
_B64_LINE = re.compile(rb"[A-Za-z0-9+/]{1,76}={0,2}")


def parse_public_key_pem(data: bytes) -> PublicKey:
    """The one trust-file rule: exactly one ``PUBLIC KEY`` PEM block and nothing else (white
    space around it aside), no PEM headers, canonical base64, an SPKI for a named P-256 curve
    with an uncompressed point.

    Raises NotP256 for a readable key of another kind and ValueError, with the reason, for
    anything else. Lenient parsers (OpenSSL skips text and takes the first of several blocks)
    made two verifiers accept different files; a trust anchor has no reason to be anything but
    what `bundle keys generate` writes.
    """
    text = data.strip(b" \t\r\n")
    if data.count(b"-----BEGIN ") != 1 or data.count(b"-----END ") != 1:
        if b"-----BEGIN RSA PUBLIC KEY-----" in data and data.count(b"-----BEGIN ") == 1:
            raise NotP256("RSA key")
        raise ValueError("not exactly one PEM block" if b"-----BEGIN " in data else "no PEM public key")
    if not text.startswith(_PEM_BEGIN):
        if text.startswith(b"-----BEGIN RSA PUBLIC KEY-----"):
            raise NotP256("RSA key")
        raise ValueError("text before the PEM block, or not a PUBLIC KEY block")
    if not text.endswith(_PEM_END):
        raise ValueError("text after the PEM block, or the block is not closed")
    lines = text[len(_PEM_BEGIN):-len(_PEM_END)].replace(b"\r\n", b"\n").split(b"\n")
    if lines[0] != b"" or lines[-1] != b"":
        raise ValueError("the BEGIN and END lines must stand alone")
    body = lines[1:-1]
    if any(b":" in ln for ln in body):
        raise ValueError("PEM headers are not allowed in a trust file")
    if not body or not all(_B64_LINE.fullmatch(ln) for ln in body):
        raise ValueError("bad base64 in PEM")
    try:
        der = base64.b64decode(b"".join(body), validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad base64 in PEM") from None
    if base64.b64encode(der) != b"".join(body):
        raise ValueError("base64 in PEM is not canonical")
    return parse_spki_der(der)


# -- trust ---------------------------------------------------------------------------------------

@dataclass(frozen=True)
class TrustedKey:
    key_id: str
    key: PublicKey
    source: str
    name: str = ""  # the policy's human name for the key
    not_before: Optional[str] = None  # validity window (UTC, RFC 3339), checked against the host clock
    not_after: Optional[str] = None


def read_upto(path: Path, limit: int, err: Callable[[str], BundleError], what: str, not_regular: str = "") -> bytes:
    """At most ``limit`` + 1 bytes of a regular file: the one rule for every small file a host
    gives the verifier (trusted keys, policies, rotation statements). O_NONBLOCK: a FIFO must
    not hang the open; only a regular file is read, and never more than it may hold
    (--trust /dev/zero used to grow without bound). The caller judges a result over ``limit``."""
    try:
        fd = os.open(str(path), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | getattr(os, "O_BINARY", 0))
    except FileNotFoundError:
        raise err(f"{path}: no such {what}") from None
    except OSError as e:
        raise err(f"{path}: cannot read ({e.strerror})") from None
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise err(f"{path}: not a regular file{not_regular}")
        with os.fdopen(fd, "rb", closefd=False) as f:
            return f.read(limit + 1)
    except OSError as e:
        raise err(f"{path}: cannot read ({e.strerror})") from None
    finally:
        os.close(fd)


def read_bounded(path: Path, limit: int, err: Callable[[str], BundleError], what: str) -> bytes:
    """`read_upto`, refusing a file over ``limit``."""
    data = read_upto(path, limit, err, what)
    if len(data) > limit:
        raise err(f"{path}: over {limit} bytes; not a {what}")
    return data


def load_public_key(path: Path) -> PublicKey:
    """A trusted P-256 public key from a PEM file, with the library's messages (exit 4)."""
    data = read_upto(path, MAX_KEY_FILE_SIZE, KeyFileError, "public key", "; trust takes a public key file (.pub)")
    if b"PRIVATE KEY" in data:
        raise KeyFileError(f"{path}: is a private key; trust takes the public key (.pub)")
    if len(data) > MAX_KEY_FILE_SIZE:
        raise KeyFileError(f"{path}: over {MAX_KEY_FILE_SIZE} bytes; not a public key file")
    try:
        return parse_public_key_pem(data)
    except NotP256 as e:
        raise KeyFileError(f"{path}: not an ECDSA P-256 public key ({e})") from None
    except (ValueError, IndexError) as e:
        raise KeyFileError(f"{path}: not a PEM public key ({e})") from None


def load_trust_source(path: Path) -> List[TrustedKey]:
    """Every key one ``--trust`` argument contributes.

    Today a ``--trust`` file is one PEM public key. This is the single place that reads it, so a
    future trust-policy file (several keys, each with its scope) only has to be recognised here.
    """
    key = load_public_key(path)
    return [TrustedKey(key.key_id, key, str(path))]


def load_trust(paths: List[Path]) -> Dict[str, TrustedKey]:
    """Trusted keys by key id, from ``--trust`` arguments (a later one wins for the same key)."""
    trusted = {}  # type: Dict[str, TrustedKey]
    for p in paths:
        for tk in load_trust_source(Path(p)):
            trusted[tk.key_id] = tk
    return trusted


# == trust policy (docs/trust-policy.md) ========================================================

POLICY_FORMAT = "trt-bundler-policy/1"
POLICY_ENV = "BUNDLE_POLICY"
POLICY_PAYLOAD_TYPE = "application/vnd.trt-bundler.policy+json"
MAX_POLICY_SIZE = 1 << 20
_UTC_RE = re.compile(r"([0-9]{4})-([0-9]{2})-([0-9]{2})(?:T([0-9]{2}):([0-9]{2}):([0-9]{2})Z)?\Z")


def parse_utc(text: str, what: str) -> float:
    """``YYYY-MM-DD`` (midnight UTC) or ``YYYY-MM-DDTHH:MM:SSZ`` as POSIX seconds; nothing else
    (no offsets, no fractions): one spelling of a time in every signed or trusted document."""
    import calendar

    m = _UTC_RE.match(text) if isinstance(text, str) else None
    if not m:
        raise ValueError(f"{what}: {text!r} is not YYYY-MM-DD or YYYY-MM-DDTHH:MM:SSZ (UTC)")
    y, mo, d, hh, mi, ss = (int(g) if g else 0 for g in m.groups())
    if not (1 <= mo <= 12 and 1 <= d <= 31 and hh < 24 and mi < 60 and ss < 60):
        raise ValueError(f"{what}: {text!r} is not a valid date and time")
    return float(calendar.timegm((y, mo, d, hh, mi, ss, 0, 0, 0)))


@dataclass
class PolicyKeyDoc:
    id: str
    name: str
    pem: Optional[str] = None  # inline PEM, or
    path: Optional[str] = None  # a .pub file, relative to the policy file
    not_before: Optional[str] = None
    not_after: Optional[str] = None


@dataclass
class RevocationDoc:
    id: str
    reason: str
    date: str


@dataclass
class RuleDoc:
    bundles: str  # a glob over bundle names (fnmatch, case-sensitive); the first matching rule applies
    keys: List[str]  # key ids, or ["*"] for every key of the policy
    threshold: int
    max_age: Optional[str] = None  # freshness (a duration): checked against the host state's newest seal time


@dataclass
class SignersDoc:
    keys: List[str]
    threshold: int


@dataclass
class PolicySignatureDoc:
    keyid: str
    sig: str  # base64 of a DER ECDSA P-256 signature over PAE(POLICY_PAYLOAD_TYPE, body)


@dataclass
class PolicyDoc:
    format: str
    version: int
    keys: List[PolicyKeyDoc]
    rules: List[RuleDoc]
    revoked: List[RevocationDoc] = field(default_factory=list)
    policy_signers: Optional[SignersDoc] = None  # who may sign the next version (rotation)
    signatures: List[PolicySignatureDoc] = field(default_factory=list)


@dataclass
class TrustPolicy:
    """Whose signatures count for which bundles, and how many are needed.

    ``--trust A.pub --trust B.pub`` is the policy of those keys with one rule: any bundle, one
    signature (`policy_from_keys`). A policy file adds names, validity windows, revocations and
    k-of-n rules per bundle-name pattern, and can be rotated by signatures of its own signers.
    """

    keys: Dict[str, TrustedKey]
    rules: List[RuleDoc]
    revoked: Dict[str, RevocationDoc] = field(default_factory=dict)
    version: int = 0
    source: str = "--trust"
    signers: Optional[SignersDoc] = None
    body: bytes = b""  # the canonical signed body (policy files only)
    signatures: List[PolicySignatureDoc] = field(default_factory=list)

    def rule_for(self, name: str) -> Optional[RuleDoc]:
        import fnmatch

        return next((r for r in self.rules if fnmatch.fnmatchcase(name, r.bundles)), None)

    def allowed(self, rule: RuleDoc) -> List[str]:
        return sorted(self.keys) if rule.keys == ["*"] else list(rule.keys)


def policy_from_keys(trusted: Dict[str, TrustedKey]) -> TrustPolicy:
    """The policy that plain ``--trust`` files mean: any one of these keys, for any bundle."""
    return TrustPolicy(keys=dict(trusted), rules=[RuleDoc("*", ["*"], 1)])


def policy_body(doc: Dict[str, Any]) -> bytes:
    """What a policy's signatures sign: the document without ``signatures``, as canonical JSON
    (sorted keys, no spaces, ASCII), so reformatting the file does not invalidate them."""
    body = {k: v for k, v in doc.items() if k != "signatures"}
    return json.dumps(body, sort_keys=True, separators=(",", ":"), ensure_ascii=True).encode("ascii")


def parse_policy(raw: bytes, where: str, base: Optional[Path] = None) -> TrustPolicy:
    """A policy file's bytes, checked in full: strict JSON, the schema, every key's PEM against
    its id, every rule's keys known, thresholds reachable. Any fault is a key error (exit 4)."""
    def bad(msg: str) -> KeyFileError:
        return KeyFileError(f"{where}: {msg}")

    try:
        obj = loads_strict(raw)
        doc = _convert(PolicyDoc, obj, "policy")
    except (StrictJSONError, SchemaError, RecursionError) as e:
        raise bad(f"not a trust policy ({e})") from None
    if doc.format != POLICY_FORMAT:
        raise bad(f"format {doc.format!r}; this verifier reads {POLICY_FORMAT}")
    if doc.version < 1:
        raise bad("version must be a positive integer")
    keys = {}  # type: Dict[str, TrustedKey]
    for k in doc.keys:
        if not KEY_ID_RE.match(k.id):
            raise bad(f"key {k.name!r}: id must be 64 lowercase hex digits")
        if (k.pem is None) == (k.path is None):
            raise bad(f"key {k.name!r}: give exactly one of pem or path")
        if k.pem is not None:
            try:
                key = parse_public_key_pem(k.pem.encode("ascii"))
            except (NotP256, ValueError, IndexError, UnicodeEncodeError) as e:
                raise bad(f"key {k.name!r}: not an ECDSA P-256 public key PEM ({e})") from None
        else:
            key = load_public_key((base or Path(".")) / str(k.path))
        if key.key_id != k.id:
            raise bad(f"key {k.name!r}: its PEM has id {key.key_id}, not {k.id}")
        for label, t in (("not_before", k.not_before), ("not_after", k.not_after)):
            if t is not None:
                try:
                    parse_utc(t, f"key {k.name!r} {label}")
                except ValueError as e:
                    raise bad(str(e)) from None
        if k.id in keys:
            raise bad(f"key {k.id[:16]}... listed twice")
        keys[k.id] = TrustedKey(k.id, key, where, k.name, k.not_before, k.not_after)
    revoked = {}  # type: Dict[str, RevocationDoc]
    for r in doc.revoked:
        if not KEY_ID_RE.match(r.id):
            raise bad("a revoked id must be 64 lowercase hex digits")
        try:
            parse_utc(r.date, f"revocation of {r.id[:16]}...")
        except ValueError as e:
            raise bad(str(e)) from None
        revoked[r.id] = r
    if not doc.rules:
        raise bad("no rules: nothing could ever verify")
    for r in doc.rules + ([RuleDoc("(policy signers)", doc.policy_signers.keys, doc.policy_signers.threshold)]
                          if doc.policy_signers else []):
        if r.keys != ["*"]:
            for kid in r.keys:
                if kid not in keys:
                    raise bad(f"rule {r.bundles!r} names key {kid[:16]}..., which the policy does not list")
            if len(set(r.keys)) != len(r.keys):
                raise bad(f"rule {r.bundles!r} names a key twice")
        if r.max_age is not None:
            try:
                parse_duration(r.max_age)
            except UsageError:
                raise bad(f"rule {r.bundles!r}: max_age {r.max_age!r} is not a duration such as 3600, 90m, 12h, 30d or 2w") from None
        n = len(keys) if r.keys == ["*"] else len(r.keys)
        if not 1 <= r.threshold <= n:
            raise bad(f"rule {r.bundles!r}: threshold {r.threshold} of {n} keys can never be met")
    return TrustPolicy(keys=keys, rules=doc.rules, revoked=revoked, version=doc.version, source=where,
                       signers=doc.policy_signers, body=policy_body(obj), signatures=doc.signatures)


def load_policy(path: Path) -> TrustPolicy:
    """A trust policy file (``--policy`` / ``BUNDLE_POLICY``): at most 1 MiB, regular, strict."""
    raw = read_bounded(Path(path), MAX_POLICY_SIZE, KeyFileError, "trust policy")
    return parse_policy(raw, str(path), Path(path).parent)


def policy_signers_counted(old: TrustPolicy, new: TrustPolicy, ecdsa: "Optional[Ecdsa]" = None) -> List[str]:
    """Key ids of ``old``'s policy signers (not revoked there) whose signatures on ``new`` verify,
    each once. What `verify_policy_update` demands, and what `bundle policy update` reports."""
    if old.signers is None:
        return []
    allowed = old.keys if old.signers.keys == ["*"] else {k: old.keys[k] for k in old.signers.keys}
    counted = []  # type: List[str]
    for s in new.signatures:
        tk = allowed.get(s.keyid)
        if tk is None or s.keyid in counted or s.keyid in old.revoked:
            continue
        try:
            sig = b64_canonical(s.sig)
        except ValueError:
            continue
        if (ecdsa or ecdsa_p256_verify)(tk.key, sig, pae(POLICY_PAYLOAD_TYPE, new.body)):
            counted.append(s.keyid)
    return counted


def verify_policy_update(old: TrustPolicy, new: TrustPolicy, ecdsa: "Optional[Ecdsa]" = None) -> List[str]:
    """Accept ``new`` as the successor of ``old`` (TUF-style root rotation) or raise.

    ``new`` must carry a higher version and valid signatures by at least the threshold of
    ``old``'s policy signers (distinct keys). Returns the key ids whose signatures counted. A host
    that keeps its current policy, and only moves forward through this check, cannot be rewound
    by anyone holding a key the chain has since rotated out.
    """
    if old.signers is None:
        raise SignatureError(f"{old.source}: has no policy_signers, so no successor can be accepted")
    if new.version <= old.version:
        raise SignatureError(f"{new.source}: version {new.version} is not newer than {old.version} ({old.source})")
    counted = policy_signers_counted(old, new, ecdsa)
    if len(counted) < old.signers.threshold:
        raise SignatureError(f"{new.source}: signed by {len(counted)} of the {old.signers.threshold} policy signers "
                             f"that {old.source} (version {old.version}) requires")
    return counted


ROTATION_FORMAT = "trt-bundler-key-rotation/1"
ROTATION_PAYLOAD_TYPE = "application/vnd.trt-bundler.key-rotation+json"


def verify_rotation(raw: bytes, where: str) -> Tuple[str, str, str]:
    """``(old id, new id, date)`` of a key-rotation statement whose signature by the old key
    (given inline, checked against its id) verifies; SignatureError otherwise. It proves only
    that the holder of the old key named the new one: a policy adopts it in its next version."""
    try:
        doc = loads_strict(raw)
        if doc.get("format") != ROTATION_FORMAT:
            raise ValueError(f"format {doc.get('format')!r}")
        old = parse_public_key_pem(doc["old_pem"].encode("ascii"))
        new = parse_public_key_pem(doc["new_pem"].encode("ascii"))
        if old.key_id != doc["old"] or new.key_id != doc["new"]:
            raise ValueError("a key id does not match its PEM")
        parse_utc(doc["date"], "date")
        sigs = [s for s in doc["signatures"] if s.get("keyid") == old.key_id]
        body = policy_body(doc)
    except (StrictJSONError, ValueError, KeyError, TypeError, AttributeError, NotP256, RecursionError) as e:
        raise SignatureError(f"{where}: not a key-rotation statement ({e})") from None
    for s in sigs:
        try:
            if ecdsa_p256_verify(old, b64_canonical(s.get("sig")), pae(ROTATION_PAYLOAD_TYPE, body)):
                return old.key_id, new.key_id, doc["date"]
        except ValueError:
            continue
    raise SignatureError(f"{where}: no valid signature by the old key {old.key_id[:16]}...")


# == signature files and statements (bundler/signing.py) =======================================

@dataclass(frozen=True)
class SignatureFile:
    hint: Optional[str]
    payload: bytes
    signature: bytes
    unsupported: Optional[str] = None  # why this file's kind of signature is not checked here


@dataclass(frozen=True)
class Statement:
    subject: str
    resources: Dict[str, str]
    ignore_paths: Tuple[str, ...]
    expires: Optional[str] = None  # predicate.expires: this signature's end of validity (UTC)
    ledger: "Optional[LedgerHead]" = None  # predicate.ledger: the signing ledger's head this signing extended


def pae(payload_type: str, body: bytes) -> bytes:
    """DSSE pre-authentication encoding: what the signature actually covers."""
    t = payload_type.encode("utf-8")
    return b"DSSEv1 %d %s %d %s" % (len(t), t, len(body), body)


def subject_digest(resources: Dict[str, str]) -> str:
    h = hashlib.sha256()
    for name in sorted(resources):
        h.update(bytes.fromhex(resources[name]))
    return h.hexdigest()


def b64_canonical(text: Any) -> bytes:
    """Standard base64 (RFC 4648, with padding) exactly as an encoder writes it: what
    `b64decode(validate=True)` alone accepts varies with the Python version (3.8 takes extra
    padding that 3.13 refuses) and ignores unused low bits, so one signature file could verify on
    one Python and fail on another. Decode, re-encode, compare: one answer everywhere."""
    if not isinstance(text, str):
        raise ValueError("base64 field is not a string")
    try:
        data = base64.b64decode(text, validate=True)
    except (binascii.Error, ValueError):
        raise ValueError("bad base64") from None
    if base64.b64encode(data).decode("ascii") != text:
        raise ValueError("base64 is not in its canonical form")
    return data


_KEYS_ONLY = "this verifier takes ECDSA P-256 public keys (--trust KEY.pub)"


def _unsupported_material(vm: Dict[str, Any]) -> Optional[str]:
    """OpenSSF model-signing v1.0 has three kinds of verification material (bundle.schema.json):
    a public key, an X.509 certificate chain, and Sigstore's keyless certificate with
    transparency-log entries. Only the first can be checked offline against keys the host holds;
    the other two are named, so that the operator learns what is missing instead of reading
    "does not verify"."""
    if vm.get("certificate") is not None:
        if vm.get("tlogEntries"):
            return ("Sigstore keyless signatures (a Fulcio certificate and transparency-log entries) are not "
                    "supported; " + _KEYS_ONLY)
        return "certificate-based signatures are not supported; " + _KEYS_ONLY
    if vm.get("x509CertificateChain") is not None:
        return "certificate-chain signatures (x509CertificateChain) are not supported; " + _KEYS_ONLY
    return None


def parse_signature_file(raw: bytes, where: str) -> SignatureFile:
    try:
        doc = loads_strict(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("mediaType") not in (BUNDLE_MEDIA_TYPE, "application/vnd.dev.sigstore.bundle+json;version=0.3"):
            raise ValueError(f"unsupported mediaType {doc.get('mediaType')!r}")
        for required in ("verificationMaterial", "dsseEnvelope"):  # both required by OMS v1.0
            if not isinstance(doc.get(required), dict):
                raise ValueError(f"no {required} object")
        if not any(k in doc["verificationMaterial"] for k in ("publicKey", "certificate", "x509CertificateChain")):
            raise ValueError("verificationMaterial holds no publicKey, certificate or x509CertificateChain")
        unsupported = _unsupported_material(doc["verificationMaterial"])
        env = doc["dsseEnvelope"]
        if env["payloadType"] != PAYLOAD_TYPE:
            raise ValueError(f"unsupported payloadType {env['payloadType']!r}")
        sigs = env["signatures"]
        if not isinstance(sigs, list) or len(sigs) != 1:
            raise ValueError("expected exactly one DSSE signature")
        hint = (doc["verificationMaterial"].get("publicKey") or {}).get("hint")
        payload = b64_canonical(env["payload"])
        sig = b64_canonical(sigs[0]["sig"])
    except RecursionError:  # hostile nesting ("[[[[...") is unparsable, not a crash
        raise SignatureError(f"{where}: not a model-signing signature file (nested too deeply)", member=where) from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{where}: not a model-signing signature file ({e})", member=where) from None
    if hint is not None and not isinstance(hint, str):
        raise SignatureError(f"{where}: key hint is not a string", member=where)
    return SignatureFile(hint, payload, sig, unsupported)


def verify_signature(sf: SignatureFile, key: PublicKey, ecdsa: "Optional[Ecdsa]" = None) -> bool:
    return (ecdsa or ecdsa_p256_verify)(key, sf.signature, pae(PAYLOAD_TYPE, sf.payload))


_HEX64 = re.compile(r"[0-9a-f]{64}")  # lowercase, as model-signing and sha256sum write it


def parse_statement(payload: bytes, where: str) -> Statement:
    try:
        st = loads_strict(payload)
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
        resources = {}  # type: Dict[str, str]
        for r in pred["resources"]:
            if r["algorithm"] != "sha256":
                raise ValueError(f"algorithm {r['algorithm']!r}")
            name, digest = r["name"], r["digest"]
            if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
                raise ValueError("bad resource entry")
            if name in resources:
                raise ValueError(f"resource {name!r} listed twice")
            resources[name] = digest
        ignore = tuple(str(p) for p in ser.get("ignore_paths", []))
        expires = pred.get("expires")
        if "expires" in pred:
            expires_epoch(expires)  # one strict form, or the statement is refused
        ledger = parse_ledger_head(pred["ledger"]) if "ledger" in pred else None
    except RecursionError:
        raise SignatureError(f"{where}: signed statement is malformed (nested too deeply)", member=where) from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as e:
        raise SignatureError(f"{where}: signed statement is malformed ({e})", member=where) from None
    if subject_digest(resources) != root:
        raise SignatureError(f"{where}: signed statement's subject digest does not match its resources", member=where)
    return Statement(subject, resources, ignore, expires, ledger)


_EXPIRES_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")


def expires_epoch(value: Any) -> int:
    """Seconds since the epoch of a signed expiry, which has exactly one form: an RFC 3339 UTC
    time ``YYYY-MM-DDTHH:MM:SSZ`` (ASCII digits, no fraction, no offset other than ``Z``), a
    real calendar time. One form, so that every verifier reads the same instant from it."""
    if not isinstance(value, str) or not _EXPIRES_RE.match(value):
        raise ValueError("expires is not a UTC time YYYY-MM-DDTHH:MM:SSZ")
    try:
        t = datetime.datetime.strptime(value, "%Y-%m-%dT%H:%M:%SZ")
    except ValueError:
        raise ValueError("expires is not a real calendar time") from None
    return int(t.replace(tzinfo=datetime.timezone.utc).timestamp())


MAX_JSON_DEPTH = 64  # no bundle document nests deeper than 6; json's own limit is a RecursionError
MAX_NUMBER_DIGITS = 40  # sizes and counts fit in 20 digits


def _clip40(text: str) -> str:
    return text if len(text) <= 40 else text[:40] + "..."


# == strict JSON: every signed or shown JSON document ================================================

class StrictJSONError(ValueError):
    """JSON that Python's parser would take but that no bundle writer produces."""


# Strings are removed before brackets are counted: a '[' inside a string is not nesting. First the
# escaped backslashes go, then the escaped quotes (bytes.replace, left to right, as JSON pairs a run
# of backslashes); what is left between two quotes is a string. The scan runs in chunks, so the
# pieces it splits off stay few whatever the input: one regex substitution over 1 MiB of `"",`
# kept 56 MiB of pieces, and the textbook string regex (a repeated group) 45 MiB of backtracking
# state for 1 MiB of escapes.
_SCAN_CHUNK = 64 << 10
_NOT_BRACKETS = bytes(b for b in range(256) if b not in b"[]{}")
_DEPTH_STEP = {ord("["): 1, ord("{"): 1, ord("]"): -1, ord("}"): -1}


def _max_depth(raw: bytes, stop: int = MAX_JSON_DEPTH) -> int:
    """The deepest nesting of ``raw`` (or the first depth over ``stop``), counted in C-speed
    passes before json allocates anything: json's own limit is its recursion limit (~1000
    levels), and RecursionError is not a message."""
    unescaped = raw.replace(b"\\\\", b"").replace(b'\\"', b"")
    depth = peak = 0
    inside = False  # in a string at the start of the chunk
    for at in range(0, len(unescaped), _SCAN_CHUNK):
        pieces = unescaped[at : at + _SCAN_CHUNK].split(b'"')
        outside = b"".join(pieces[1::2] if inside else pieces[0::2]).translate(None, _NOT_BRACKETS)
        if len(pieces) % 2 == 0:  # an odd number of quotes in this chunk
            inside = not inside
        if outside:
            levels = list(itertools.accumulate(map(_DEPTH_STEP.__getitem__, outside), initial=depth))
            peak, depth = max(peak, max(levels)), levels[-1]
            if peak > stop:
                break
    return peak


def _object(pairs: List[tuple]) -> Dict[str, Any]:
    d = dict(pairs)
    if len(d) != len(pairs):
        seen: set = set()
        for k, _ in pairs:
            if k in seen:
                raise StrictJSONError(f"duplicate key {_clip40(k)!r}")
            seen.add(k)
    return d


def _int(token: str) -> int:
    if len(token.lstrip("-")) > MAX_NUMBER_DIGITS:
        raise StrictJSONError(f"integer of {len(token.lstrip('-'))} digits (at most {MAX_NUMBER_DIGITS})")
    return int(token)


def _float(token: str) -> float:
    if len(token) > MAX_NUMBER_DIGITS + 10:  # digits, sign, point and exponent
        raise StrictJSONError(f"number of {len(token)} characters")
    value = float(token)
    if not math.isfinite(value):
        raise StrictJSONError(f"number {_clip40(token)} is out of range")
    return value


def _constant(token: str) -> Any:
    raise StrictJSONError(f"{token} is not JSON")


def loads_strict(raw: bytes) -> Any:
    """Parse JSON the way a bundle writer wrote it, or raise `StrictJSONError` (a ValueError).

    Python's json accepts NaN and Infinity, keeps the last of duplicate keys, turns 1e999 into
    inf, and raises RecursionError or a digit-limit ValueError on hostile input. Each of those is
    refused here with a one-line reason, so the parsed value can be typed and printed as JSON
    (``allow_nan=False``) without a surprise.
    """
    depth = _max_depth(raw)
    if depth > MAX_JSON_DEPTH:
        raise StrictJSONError(f"nested deeper than {MAX_JSON_DEPTH} levels")
    try:
        text = raw.decode("utf-8")
        return json.loads(text, object_pairs_hook=_object, parse_int=_int, parse_float=_float,
                          parse_constant=_constant)
    except StrictJSONError:
        raise
    except UnicodeDecodeError as e:
        raise StrictJSONError(f"not UTF-8 (byte {e.start})") from None
    except json.JSONDecodeError as e:
        raise StrictJSONError(f"not valid JSON ({e.msg} at line {e.lineno} column {e.colno})") from None
    except (ValueError, RecursionError) as e:  # belt and braces: a limit we did not foresee
        raise StrictJSONError(f"not usable JSON ({type(e).__name__})") from None


# == manifest schema (bundler/manifest.py; typed, checked field by field) ======================

Dim = Union[int, str, None]  # None: an unnamed dynamic dim


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: List[Dim]


@dataclass
class ShapeRange:
    min: List[int]
    opt: List[int]
    max: List[int]


@dataclass
class ModelInfo:
    path: str
    sha256: str
    size: int
    ir_version: int
    opset: Dict[str, int]
    producer: str
    precision: str
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]


@dataclass
class TargetInfo:
    label: str
    cc: Optional[str]
    gpu: Optional[str] = None


@dataclass
class BackendInfo:
    name: str
    module: str
    version: str
    cuda: Optional[str] = None
    driver: Optional[str] = None


@dataclass
class BuildSettings:
    profiles: List[Dict[str, ShapeRange]]
    precision: str
    workspace: Optional[int] = None
    optimization_level: Optional[int] = None
    timing_cache: Optional[str] = None


@dataclass
class EngineHeader:
    product: str
    version: str
    cc: Optional[List[str]] = None
    cc_mask: Optional[int] = None


@dataclass
class CacheInfo:
    """The build cache (docs/farm.md): ``key`` is the SHA-256 of what determines the engine;
    ``reused``: taken from the cache, so ``host``/``started``/``duration_s`` are the original build's."""

    key: str
    reused: bool


@dataclass
class EngineRecord:
    path: str
    size: int
    sha256: str
    log: str
    target: TargetInfo
    backend: BackendInfo
    build: BuildSettings
    header: Optional[EngineHeader]  # None for the cpu target, whose "engine" is an ONNX file
    host: str
    started: str
    duration_s: float
    cache: Optional[CacheInfo] = None  # None: built without a build cache (and in older manifests)


@dataclass
class Tolerance:
    atol: float
    rtol: float


@dataclass
class GoldenInfo:
    inputs: str
    outputs: str
    reference: str
    source: str
    tolerances: Dict[str, Tolerance]
    # per input, how its golden data was made ("random integers 0-9", "16000 (--sample-value)"):
    # a reviewer can tell a real sample rate from a made-up one. Empty in older manifests.
    values: Dict[str, str] = field(default_factory=dict)
    warnings: List[str] = field(default_factory=list)


@dataclass
class InputStats:
    min: float
    max: float
    mean: float
    std: float


@dataclass
class CalibrationInfo:
    source: str
    sha256: str
    files: int
    samples: int
    batch: int
    inputs: Dict[str, InputStats]
    warnings: List[str] = field(default_factory=list)


@dataclass
class AccuracyInfo:
    measured_with: Optional[str]
    max_abs_err: Optional[float]
    max_rel_err: Optional[float]
    note: str = ""
    # Against the tolerance the loader's selftest applies to this precision (|o - r| <= atol +
    # rtol * |r| for every element): the worst element's error over its allowance (<= 1 passes),
    # the share of elements outside, and the verdict. None where not measured.
    atol: Optional[float] = None
    rtol: Optional[float] = None
    tolerance_ratio: Optional[float] = None
    outside_fraction: Optional[float] = None
    within_tolerance: Optional[bool] = None


@dataclass
class PrecisionVariant:
    precision: str
    graph: str
    sha256: str
    size: int
    converter: str
    accuracy: Optional[AccuracyInfo] = None
    calibration: Optional[CalibrationInfo] = None
    kept_fp32: List[str] = field(default_factory=list)  # node names left in fp32 (--keep-fp32)
    kept_fp32_reason: str = ""  # how they were chosen: given by name, or found by the auto search
    accuracy_loss_accepted: bool = False  # built outside tolerance under --accept-accuracy-loss
    log: Optional[str] = None  # the converter's own messages (warnings), bundled beside the graph


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class Manifest:
    name: str
    version: str
    created: str
    model: ModelInfo
    engines: List[EngineRecord]
    files: List[FileEntry]
    golden: Optional[GoldenInfo] = None
    variants: List[PrecisionVariant] = field(default_factory=list)
    tool: Dict[str, str] = field(default_factory=dict)
    format: str = FORMAT_VERSION

    @property
    def root(self) -> str:
        return f"{self.name}-{self.version}"


class SchemaError(ValueError):
    pass


@functools.lru_cache(maxsize=None)
def _schema_fields(tp: Any) -> Tuple[Tuple[str, Any, bool], ...]:
    """(name, type, required) for each field of a schema dataclass. `typing.get_type_hints`
    evaluates every annotation again on each call, which was most of a manifest's parse time;
    the answer for a class never changes."""
    hints = typing.get_type_hints(tp)
    return tuple((f.name, hints[f.name], f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING)  # type: ignore[misc]
                 for f in dataclasses.fields(tp))


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object")
        kwargs = {}
        for name, ftype, required in _schema_fields(tp):
            if name in value:
                kwargs[name] = _convert(ftype, value[name], f"{where}.{name}")
            elif required:
                raise SchemaError(f"{where}: missing field {name!r}")
        return tp(**kwargs)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except SchemaError as e:
                errors.append(str(e))
        raise SchemaError(errors[0] if errors else f"{where}: bad value")
    if origin in (list, List):
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: expected an integer")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true or false")
        return value
    raise SchemaError(f"{where}: unsupported type {tp!r}")


# semver.Version.parse (semver 3, the regex path) and bundler.versioning.check_bundle_name
_SEMVER_PRERELEASE_ID = r"0|[1-9]\d*|\d*[a-zA-Z-][0-9a-zA-Z-]*"
_SEMVER_BUILD_ID = r"[0-9a-zA-Z-]+"
_SEMVER_RE = re.compile(
    r"""
    ^
    (?P<major>0|[1-9]\d*)
    (?:
        \.
        (?P<minor>0|[1-9]\d*)
        (?:
            \.
            (?P<patch>0|[1-9]\d*)
        )
    )
    (?:-(?P<prerelease>
        (?:""" + _SEMVER_PRERELEASE_ID + r""")
        (?:\.(?:""" + _SEMVER_PRERELEASE_ID + r"""))*
    ))?
    (?:\+(?P<build>
        (?:""" + _SEMVER_BUILD_ID + r""")
        (?:\.(?:""" + _SEMVER_BUILD_ID + r"""))*
    ))?
    \Z
    """,
    re.VERBOSE | re.ASCII,
)
_BUNDLE_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]*(-[A-Za-z0-9._]+)*")


def check_version(text: str) -> None:
    try:
        m = _SEMVER_RE.match(text)
        if m is None:
            raise ValueError(f"{text} is not valid SemVer string")
        for part in ("major", "minor", "patch"):
            int(m.group(part))  # as semver does: an int past Python's digit limit is a ValueError
    except (ValueError, TypeError):
        raise InputError(f"version {text!r} is not a semantic version (MAJOR.MINOR.PATCH, e.g. 1.4.0 or 2.0.0-rc.1)") from None


def check_bundle_name(name: str) -> None:
    if not _BUNDLE_NAME_RE.fullmatch(name) or len(name) > 100:
        raise InputError(f"bundle name {name!r}: use letters, digits, '.', '_' and inner '-' (at most 100 characters)")


def parse_manifest(raw: bytes, where: str) -> Manifest:
    try:
        data = loads_strict(raw)
    except StrictJSONError as e:
        raise SchemaError(f"{where}: {e}") from None
    return _convert(Manifest, data, where)


# == engine headers (bundler/engine_header.py) =================================================

HEADER_SIZE = 64
RTX_MAGIC = b"vtrt"
RTX_CC_BITS = [(0x01, (7, 5)), (0x02, (8, 0)), (0x04, (8, 6)), (0x08, (8, 9)), (0x10, (12, 0)), (0x20, (12, 1))]


class HeaderError(ValueError):
    pass


def cc_list_from_mask(mask: int) -> List[str]:
    return [f"{cc[0]}.{cc[1]}" for bit, cc in RTX_CC_BITS if mask & bit]


def parse_header(data: bytes, file_size: Optional[int] = None) -> EngineHeader:
    if len(data) < 32:
        raise HeaderError(f"too short for an engine header ({len(data)} bytes)")
    if data[:4] == RTX_MAGIC:
        if len(data) < 40:
            raise HeaderError("TensorRT-RTX header is cut short")
        if data[28:32] != RTX_MAGIC:
            raise HeaderError("TensorRT-RTX header lacks its second 'vtrt' tag")
        (recorded_size,) = struct.unpack_from("<Q", data, 16)
        if file_size is not None and recorded_size != file_size:
            raise HeaderError(f"header records {recorded_size} bytes but the engine has {file_size}")
        major, minor, patch, build = data[24], data[25], data[26], data[27]
        (mask,) = struct.unpack_from("<Q", data, 32)
        return EngineHeader("tensorrt-rtx", f"{major}.{minor}.{patch}.{build}", cc_list_from_mask(mask), mask)
    if data[:4] in (b"ftrt", b"ptrt") or data[1:4] == b"trt":
        major, minor, patch = data[24], data[25], data[26]
        return EngineHeader("tensorrt", f"{major}.{minor}.{patch}")
    raise HeaderError(f"unknown engine magic {data[:4]!r}")


def version_matches(header_version: str, runtime_version: str) -> bool:
    a = header_version.split(".")
    b = runtime_version.split(".")
    n = min(len(a), len(b))
    return n >= 3 and a[:n] == b[:n]


# == strict streaming tar reader (bundler/archive.py) ==========================================

@dataclass(frozen=True)
class Limits:
    max_members: int = 10000
    max_member_size: int = 1 << 40
    max_total_size: int = 4 << 40
    max_name_bytes: int = 1024
    max_pax_header: int = 64 << 10
    max_trailing_zeros: int = RECORD


@dataclass(frozen=True)
class Member:
    name: str
    size: int
    mode: int
    is_dir: bool
    offset: int


class _WindowHasher:
    """The whole-file SHA-256, on a worker thread (or inline) so that it runs on a second core
    beside the member digest; hashlib releases the GIL on large updates."""

    def __init__(self, threaded: bool) -> None:
        self._h = hashlib.sha256()
        # SimpleQueue, not Queue: its put() is one C call. Queue.put appends and then wakes the
        # worker in Python, and a Ctrl-C that unwound the main thread between the two left the
        # worker asleep beside the end marker for ever (`bundle join` hung so in the interrupt
        # loop of tests/test_campaign_interrupts.py).
        self._work = queue.SimpleQueue()  # type: queue.SimpleQueue
        self._error = None  # type: Optional[BaseException]
        self._thread = None  # type: Optional[threading.Thread]
        if threaded:
            try:
                self._thread = threading.Thread(target=self._loop, name="bundle-sha256", daemon=True)
                self._thread.start()
            except RuntimeError:  # pragma: no cover - no threads on this platform
                self._thread = None

    def _loop(self) -> None:
        while True:
            item = self._work.get()
            if item is None:
                return
            view, done = item
            try:
                self._h.update(view)
            except BaseException as e:  # pragma: no cover - report at the end, keep windows flowing
                self._error = e
            finally:
                if done is not None:
                    done.set()

    def submit(self, view: memoryview, done: Optional[threading.Event] = None) -> None:
        """Hash ``view``: inline, or on the worker, which sets ``done`` when it no longer reads it."""
        if self._thread is None:
            self._h.update(view)
            if done is not None:
                done.set()
        else:
            self._work.put((view, done))

    def close(self) -> None:
        if self._thread is not None:
            self._work.put(None)
            self._thread.join()
            self._thread = None

    def hexdigest(self) -> str:
        self.close()
        if self._error is not None:  # pragma: no cover
            raise self._error
        return self._h.hexdigest()


class _Source:
    """Plain reads, for inputs that cannot be mapped (a pipe, a file not read from its start):
    one buffer at a time, hashed inline. Regular files take `_MappedSource`, the fast path."""

    def __init__(self, f: Any, threaded: bool = True, chunk: int = CHUNK) -> None:
        self._f = f
        self.hasher = _WindowHasher(False)
        self._buf = bytearray(chunk)
        self._cur = memoryview(b"")
        self._off = 0
        self._eof = False
        self.pos = 0  # bytes handed out so far (the reader's position)

    def _refill(self) -> bool:
        if self._eof:
            return False
        view = memoryview(self._buf)
        got = 0
        while got < len(view):
            n = self._f.readinto(view[got:])
            if not n:
                self._eof = True
                break
            got += n
        if not got:
            return False
        self.hasher.submit(view[:got])
        self._cur, self._off = view[:got], 0
        return True

    def next_slice(self, limit: int) -> Optional[memoryview]:
        """Up to ``limit`` (> 0) bytes; None at the end of the file. Valid until the next call."""
        if self._off >= len(self._cur) and not self._refill():
            return None
        n = min(limit, len(self._cur) - self._off)
        out = self._cur[self._off:self._off + n]
        self._off += n
        self.pos += n
        return out

    def read_upto(self, n: int) -> bytes:
        parts = bytearray()
        while len(parts) < n:
            s = self.next_slice(n - len(parts))
            if s is None:
                break
            parts += s
        return bytes(parts)

    def read_exact(self, n: int, what: str) -> bytes:
        data = self.read_upto(n)
        if len(data) != n:
            raise ArchiveError(f"truncated archive: {what} ends at byte {self.pos}")
        return data

    def close(self) -> None:
        self.hasher.close()


class _MappedSource(_Source):
    """A regular file read through a few page-aligned mmap windows instead of read() calls.

    Why (docs/performance.md): on these machines copying a file out of the page cache with
    read() costs about half as much CPU as hashing it, and a verify hashes every byte twice (the
    member's digest and the whole file's) on two cores, with the copy on top. Hashing straight
    from the mapped page cache removes the copy: a 2 GiB real bundle verifies faster than one
    `openssl dgst -sha256` over it. At most 1 + MAP_IN_FLIGHT windows are mapped at once, so the
    resident size stays bounded whatever the file size. The file's size is taken once, at the
    start (bytes appended later are not read), and checked again before each window: a file
    that shrinks is an archive error. (A shrink racing that check ends the process with SIGBUS,
    never with a verdict: docs/security.md.)
    """

    def __init__(self, fd: int, size: int, threaded: bool) -> None:
        self._fd = fd
        self._size = size
        self.hasher = _WindowHasher(threaded)
        self._windows = []  # type: List[Tuple[mmap.mmap, memoryview, threading.Event]]
        self._cur = memoryview(b"")
        self._off = 0
        self._mapped = 0  # file offset of the next window
        self.pos = 0

    def _release(self, keep: int) -> None:
        while len(self._windows) > keep:
            m, view, done = self._windows.pop(0)
            done.wait()
            view.release()
            try:
                m.close()
            except BufferError:  # a consumer kept a slice: the map goes when that slice does
                pass

    def _refill(self) -> bool:
        if self._mapped >= self._size:
            return False
        n = min(MAP_WINDOW, self._size - self._mapped)
        if os.fstat(self._fd).st_size < self._mapped + n:
            raise ArchiveError(f"the file shrank while it was being read (at byte {self._mapped})")
        self._release(MAP_IN_FLIGHT)
        m = mmap.mmap(self._fd, n, offset=self._mapped, access=mmap.ACCESS_READ)
        view = memoryview(m)
        done = threading.Event()
        self._windows.append((m, view, done))
        self.hasher.submit(view, done)
        self._cur, self._off = view, 0
        self._mapped += n
        return True

    def close(self) -> None:
        self.hasher.close()
        self._cur = memoryview(b"")
        self._release(0)


def _open_source(f: Any, threaded: bool) -> Any:
    """mmap windows for a regular file read from its start, plain reads for anything else,
    including a file system that cannot map files (probed with the first window)."""
    try:
        fd = f.fileno()
        st = os.fstat(fd)
        if stat.S_ISREG(st.st_mode) and st.st_size > 0 and f.tell() == 0:
            mmap.mmap(fd, min(st.st_size, MAP_WINDOW), access=mmap.ACCESS_READ).close()
            return _MappedSource(fd, st.st_size, threaded)
    except (AttributeError, OSError, ValueError, io.UnsupportedOperation):
        pass
    return _Source(f, threaded)


_OCTAL_RE = re.compile(rb"^ *([0-7]*)[ \0]*\Z")
_DECIMAL_RE = re.compile(r"^(0|[1-9][0-9]*)\Z")
_MTIME_RE = re.compile(r"^-?[0-9]+(\.[0-9]+)?\Z")
_PAX_LENGTH_RE = re.compile(rb"^[1-9][0-9]*\Z")


def _octal(fld: bytes, what: str, offset: int) -> int:
    """A ustar numeric field: octal digits, optionally space-led and NUL/space-terminated. Nothing
    else (no '0o' prefix, no sign, no base-256): two parsers must never read different numbers."""
    if fld and fld[0] & 0x80:
        raise ArchiveError(f"header at byte {offset}: base-256 {what} is not allowed (use PAX)")
    m = _OCTAL_RE.match(fld)
    if not m:
        raise ArchiveError(f"header at byte {offset}: {what} field is not octal")
    return int(m.group(1), 8) if m.group(1) else 0


_ASCII_FOLD = str.maketrans("ABCDEFGHIJKLMNOPQRSTUVWXYZ", "abcdefghijklmnopqrstuvwxyz")
SIGNATURE_NAME_RE = re.compile(r"[A-Za-z0-9._-]+\.sig\Z")


def ascii_fold(name: str) -> str:
    """The case-clash rule: A-Z fold to a-z, nothing else changes. Unicode case folding differs
    between Python 3.8-3.10 and 3.11+ (so verify.py on 3.8 accepted what 3.11 refused); this
    gives the same answer on every Python. Names that differ in any other way are different."""
    return name.translate(_ASCII_FOLD)


def check_name(name: str, limits: Limits, offset: int) -> None:
    """Reject, never rewrite: absolute paths, '..', '.', empty parts, backslashes, NULs."""
    if len(name.encode("utf-8", "surrogateescape")) > limits.max_name_bytes:
        raise LimitsError(f"member name longer than {limits.max_name_bytes} bytes at byte {offset}", member=name[:80])
    if "\0" in name:
        raise UnsafeMemberError(f"{name!r}: NUL in member name", member=name)
    if "\\" in name:
        raise UnsafeMemberError(f"{name}: backslash in member name", member=name)
    if name.startswith("/"):
        raise UnsafeMemberError(f"{name}: absolute member path", member=name)
    for p in name.split("/"):
        if p == "..":
            raise UnsafeMemberError(f"{name}: '..' in member path", member=name)
        if p in ("", "."):
            raise UnsafeMemberError(f"{name}: empty or '.' component in member path", member=name)
    if any(ord(c) < 0x20 or ord(c) == 0x7F for c in name):
        raise UnsafeMemberError(f"{name!r}: control character in member name", member=name)


def _check_shadow_name(ustar: str, cut: bool, path: str) -> None:
    """Under a PAX ``path`` the ustar name (and prefix) fields are what a tar that ignores PAX
    headers extracts to. They are not the member's name here, but they must not point outside the
    archive's directory either (absolute, or a whole '..' component), so that no other tool can be
    led astray by a bundle this verifier passed. A full 100-byte name field may end in a component
    cut short (writers truncate it), which is not judged."""
    parts = ustar.split("/")[:-1] if cut else ustar.split("/")
    if ustar.startswith("/") or ".." in parts:
        raise UnsafeMemberError(f"{path}: its ustar name field {ustar!r} leaves the archive's directory (a tar that "
                                "ignores PAX headers would extract it there)", member=path)


_LINK_KINDS = {b"1": "hard link", b"2": "symlink", b"3": "character device", b"4": "block device",
               b"6": "FIFO", b"g": "global PAX header", b"L": "GNU long name", b"K": "GNU long link name",
               b"S": "GNU sparse file"}


class StrictTarReader:
    """Iterates members of a POSIX tar, refusing anything a bundle never contains."""

    def __init__(self, f: Any, limits: Limits = Limits(), threaded: bool = True, source: Optional[_Source] = None) -> None:
        self._r = source if source is not None else _open_source(f, threaded)  # source: a part set's
        self.limits = limits
        self._left = 0
        self._pad = 0
        self._current = None  # type: Optional[Member]
        self._names = set()  # type: Set[str]
        self._folded = {}  # type: Dict[str, str]
        self._count = 0
        self._total = 0
        self.finished = False

    @property
    def archive_sha256(self) -> str:
        return self._r.hasher.hexdigest()

    @property
    def position(self) -> int:
        return self._r.pos

    def close(self) -> None:
        self._r.close()

    def read_data(self, consume: Optional[Callable[[memoryview], None]]) -> None:
        name = self._current.name if self._current else "?"
        while self._left:
            s = self._r.next_slice(self._left)
            if s is None:
                raise ArchiveError(f"{name}: truncated archive ({self._left} bytes of data missing)", member=name)
            if consume is not None:
                consume(s)
            self._left -= len(s)
        if self._pad:
            pad = self._r.read_exact(self._pad, f"padding of {name}")
            self._pad = 0
            if pad.count(0) != len(pad):
                raise ArchiveError(f"{name}: non-zero bytes in the padding after its data", member=name)

    def next(self) -> Optional[Member]:
        if self.finished:
            return None
        if self._left or self._pad:
            self.read_data(None)
        pax = None  # type: Optional[dict]
        while True:
            offset = self._r.pos
            block = self._r.read_exact(BLOCK, "a member header")
            if block.count(0) == BLOCK:
                if pax is not None:
                    raise ArchiveError(f"a PAX header with no member after it, at byte {offset}")
                self._finish(offset)
                return None
            hdr = self._parse_header(block, offset)
            typeflag, size = hdr["type"], hdr["size"]
            if typeflag == b"x":
                if pax is not None:
                    raise ArchiveError(f"two PAX headers in a row at byte {offset}")
                if size > self.limits.max_pax_header:
                    raise LimitsError(f"PAX header of {size} bytes at byte {offset} is over the limit")
                raw = self._r.read_exact(size, "a PAX header")
                padn = (-size) % BLOCK
                if padn:
                    if self._r.read_exact(padn, "PAX header padding").count(0) != padn:
                        raise ArchiveError(f"non-zero bytes in the padding of the PAX header at byte {offset}")
                pax = self._parse_pax(raw, offset)
                continue
            break
        name = hdr["name"]
        if pax is not None:
            if "path" in pax:
                _check_shadow_name(hdr["name"], hdr["name_cut"], pax["path"])
                name = pax["path"]
            if "size" in pax:
                if not _DECIMAL_RE.match(pax["size"]):
                    raise ArchiveError(f"PAX size at byte {offset} is not a plain decimal number")
                if len(pax["size"]) > len(str(self.limits.max_member_size)):  # before int(): 10**5000 is a ValueError
                    raise LimitsError(f"{name}: PAX size of {len(pax['size'])} digits is over the per-member limit of "
                                      f"{self.limits.max_member_size}", member=name)
                size = int(pax["size"])
            if "mtime" in pax and not _MTIME_RE.match(pax["mtime"]):
                raise ArchiveError(f"PAX mtime at byte {offset} is not a number")
        if typeflag in (b"0", b"\0", b"7"):
            if typeflag == b"7":
                raise UnsafeMemberError(f"{name}: contiguous-file member type is not allowed", member=name)
            is_dir = False
        elif typeflag == b"5":
            is_dir = True
            name = name.rstrip("/")
            if size:
                raise ArchiveError(f"{name}: directory member with data", member=name)
        else:
            kind = _LINK_KINDS.get(typeflag, f"member of type {typeflag!r}")
            raise UnsafeMemberError(f"{name}: {kind} is not allowed in a bundle", member=name)
        check_name(name, self.limits, offset)
        mode = hdr["mode"]
        if mode & 0o7000:
            raise UnsafeMemberError(f"{name}: setuid, setgid or sticky bit set (mode {mode:04o})", member=name)
        self._count += 1
        if self._count > self.limits.max_members:
            raise LimitsError(f"more than {self.limits.max_members} members", member=name)
        if size > self.limits.max_member_size:
            raise LimitsError(f"{name}: {size} bytes is over the per-member limit of {self.limits.max_member_size}", member=name)
        self._total += size
        if self._total > self.limits.max_total_size:
            raise LimitsError(f"archive content over the limit of {self.limits.max_total_size} bytes", member=name)
        if name in self._names:
            raise MembersError(f"{name}: duplicated member", member=name)
        folded = ascii_fold(name)
        if folded in self._folded:
            raise UnsafeMemberError(f"{name}: collides with {self._folded[folded]} when case is ignored", member=name)
        self._names.add(name)
        self._folded[folded] = name
        self._left = size
        self._pad = (-size) % BLOCK
        self._current = Member(name, size, mode, is_dir, offset)
        return self._current

    def _parse_header(self, block: bytes, offset: int) -> dict:
        stored = _octal(block[148:156], "checksum", offset)
        computed = sum(block[:148]) + 8 * 0x20 + sum(block[156:])
        if stored != computed:
            raise ArchiveError(f"bad header checksum at byte {offset} (not a tar, or damaged)")
        if block[257:265] != b"ustar\x0000":
            raise ArchiveError(f"header at byte {offset} is not POSIX ustar/PAX")
        try:
            name = block[0:100].split(b"\0", 1)[0].decode("utf-8")
            prefix = block[345:500].split(b"\0", 1)[0].decode("utf-8")
        except UnicodeDecodeError:
            raise UnsafeMemberError(f"member name at byte {offset} is not UTF-8") from None
        if prefix:
            name = f"{prefix}/{name}"
        if block[157:257].strip(b"\0"):
            # the whole field, NULs dropped: a target hidden after a NUL is still shown
            linkname = block[157:257].replace(b"\0", b"").decode("utf-8", "replace")
            if block[156:157] not in (b"1", b"2"):
                raise UnsafeMemberError(f"{name}: link target {linkname!r} on a non-link member", member=name)
        return {
            "name": name,
            "name_cut": b"\0" not in block[0:100],  # the field is full: its last component may be cut short
            "mode": _octal(block[100:108], "mode", offset),
            "size": _octal(block[124:136], "size", offset),
            "type": block[156:157],
        }

    def _parse_pax(self, raw: bytes, offset: int) -> dict:
        out = {}
        pos = 0
        while pos < len(raw):
            sp = raw.find(b" ", pos)
            if sp < 0:
                raise ArchiveError(f"malformed PAX record at byte {offset}")
            if not _PAX_LENGTH_RE.match(raw[pos:sp]) or sp - pos > len(str(len(raw))):  # no int() of 10**5000
                raise ArchiveError(f"malformed PAX record length at byte {offset}")
            length = int(raw[pos:sp])
            if length <= 0 or pos + length > len(raw):
                raise ArchiveError(f"malformed PAX record length at byte {offset}")
            record = raw[sp + 1:pos + length]
            if not record.endswith(b"\n") or b"=" not in record:
                raise ArchiveError(f"malformed PAX record at byte {offset}")
            key_b, value_b = record[:-1].split(b"=", 1)
            try:
                key, value = key_b.decode("utf-8"), value_b.decode("utf-8")
            except UnicodeDecodeError:
                raise UnsafeMemberError(f"PAX record at byte {offset} is not UTF-8") from None
            if key not in ALLOWED_PAX_KEYS:
                raise UnsafeMemberError(f"PAX key {key!r} at byte {offset} is not allowed (only path, size, mtime)")
            if key in out:
                raise ArchiveError(f"PAX key {key!r} twice at byte {offset}")
            out[key] = value
            pos += length
        return out

    def _finish(self, offset: int) -> None:
        second = self._r.read_exact(BLOCK, "the end-of-archive marker")
        if second.count(0) != BLOCK:
            raise ArchiveError(f"a lone zero block at byte {offset}, then more data")
        tail = self._r.read_upto(self.limits.max_trailing_zeros + 1)
        if tail.count(0) != len(tail):
            raise ArchiveError(f"data after the end of the archive (at byte {offset + 2 * BLOCK})")
        if len(tail) > self.limits.max_trailing_zeros:
            raise ArchiveError(f"more than {self.limits.max_trailing_zeros} bytes after the end of the archive")
        self.finished = True


# == the report (bundler/verify.py; same fields, same JSON) ====================================

@dataclass
class SignerReport:
    file: str
    key_id: Optional[str]
    trusted: bool  # the key is in the trust policy (revoked keys included)
    valid: Optional[bool]  # the signature verifies under that key; None when not checked
    trust_source: Optional[str] = None
    name: str = ""  # the policy's name for the key
    counted: bool = False  # counted towards the policy rule's threshold
    reason: str = ""  # why not counted
    expires: Optional[str] = None  # the signed statement's predicate.expires, for a valid signature
    sha256: Optional[str] = None  # of the signature file's bytes: names this very signature (the signing ledger does)
    ledger: "Optional[LedgerHead]" = None  # the statement's predicate.ledger, for a valid signature


@dataclass
class PolicyReport:
    source: str  # the policy file, or "--trust"
    version: int
    rule: str  # the bundle-name pattern of the rule that applied
    threshold: int
    counted: List[str] = field(default_factory=list)  # key ids whose signatures counted
    max_age: Optional[int] = None  # the rule's freshness demand, seconds (applied with a host state)

    def bundles_rule(self) -> str:
        return repr(self.rule)


@dataclass
class FileReport:
    path: str
    expected_size: Optional[int]
    expected_sha256: Optional[str]
    size: Optional[int] = None
    sha256: Optional[str] = None
    status: str = "pending"


@dataclass
class EngineReport:
    path: str
    target: str
    cc: Optional[str]
    backend: str
    backend_version: str
    header: Optional[EngineHeader] = None
    header_ok: Optional[bool] = None
    runnable_here: Optional[bool] = None
    reason: str = ""


@dataclass
class GpuReport:
    index: int
    name: str
    cc: str
    driver: str


@dataclass
class HostReport:
    gpus: List[GpuReport] = field(default_factory=list)
    runtimes: Dict[str, str] = field(default_factory=dict)
    runnable: List[str] = field(default_factory=list)
    required: bool = False


@dataclass
class Failure:
    code: int
    failure_class: str
    member: Optional[str]
    message: str


@dataclass
class VerifyReport:
    bundle: str
    ok: bool = False
    exit_code: int = int(ExitCode.INTERNAL)
    error: Optional[Failure] = None
    sha256: Optional[str] = None
    content_digest: Optional[str] = None  # the signed subject digest: what every signature signs
    expired_accepted: bool = False  # a counted signature had expired and --allow-expired took it
    root: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    created: Optional[str] = None
    signers: List[SignerReport] = field(default_factory=list)
    policy: Optional[PolicyReport] = None
    files: List[FileReport] = field(default_factory=list)
    engines: List[EngineReport] = field(default_factory=list)
    host: Optional[HostReport] = None
    extracted_to: Optional[str] = None
    content_digest: Optional[str] = None  # the accepted statement's subject digest (subject_digest)
    host_state: "Optional[StateReport]" = None  # what the host state said (--state), else None
    parts: "Optional[PartsReport]" = None  # a split bundle: the part index and every part's check
    provenance: "Optional[ProvenanceReport]" = None  # the SLSA provenance member, once checked; None when absent
    # The schema-checked manifest whose digest matched the signed one (None before that), for
    # callers that need more than the report (`bundle audit`: precisions, build hosts) without
    # reading the bundle a second time. Not part of the JSON report.
    manifest: Optional[Manifest] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(dataclasses.replace(self, manifest=None))
        d.pop("manifest")
        if d["provenance"] is not None:  # the statement itself is `bundle provenance --json`'s, not the report's
            d["provenance"].pop("statement")
        if d["error"] is not None:
            d["error"]["class"] = d["error"].pop("failure_class")
        return d


# == the pipeline ==============================================================================

class Sink:
    """Where verified bytes go, besides the digest: the library's extraction writes them into a
    staging directory (bundler/verify.py). The stand-alone verifier uses none. Each method may
    raise; the pipeline then stops, and the caller discards whatever the sink made."""

    def begin(self, rel: str, mode: int) -> None: ...
    def write(self, chunk: memoryview) -> None: ...
    def end(self) -> None: ...
    def mkdir(self, rel: str) -> None: ...


Ecdsa = Callable[["PublicKey", bytes, bytes], bool]


class _State:
    def __init__(self, report: VerifyReport, ecdsa: Optional[Ecdsa] = None, sink: Optional[Sink] = None,
                 tick: Optional[Callable[[], None]] = None, allow_expired: bool = False,
                 now: Optional[float] = None) -> None:
        self.report = report
        self.allow_expired = allow_expired
        self.now = now  # None: the host clock, read when the expiry is checked
        self.ecdsa = ecdsa or ecdsa_p256_verify
        self.sink = sink
        self.tick = tick
        self.statement = None  # type: Optional[Statement]
        self.manifest = None  # type: Optional[Manifest]
        self.expected_sizes = {}  # type: Dict[str, int]
        self.files = {}  # type: Dict[str, FileReport]
        self.dirs = set()  # type: Set[str]
        self.engine_heads = {}  # type: Dict[str, bytes]
        self.sums_raw = None  # type: Optional[bytes]
        self.provenance_raw = None  # type: Optional[bytes]
        self.policy = TrustPolicy(keys={}, rules=[])
        self.threaded = True
        self.probe = None  # type: Optional[HostProbe]

    def signatures_checked(self) -> None:
        """A trusted signature holds: start asking about the host (`HostProbe`) while the rest streams."""
        if self.threaded and self.probe is None:
            self.probe = HostProbe()


def verify_bundle(path: Path, trusted: Union[Dict[str, TrustedKey], TrustPolicy], limits: Limits = Limits(),
                  require_host: bool = False, threaded: bool = True, *, sink: Optional[Sink] = None,
                  progress: Optional[Callable[[int, int], None]] = None, ecdsa: Optional[Ecdsa] = None,
                  allow_expired: bool = False, now: Optional[float] = None,
                  tee: Optional[Callable[[memoryview], None]] = None) -> VerifyReport:
    """Verify a bundle tar, or an extracted bundle directory, against trusted keys.

    Never raises for a bad bundle: the report carries the failure, its class and exit code.
    Raises `InputError` for problems with the request itself (no such file, no key), and
    whatever ``sink`` raises (the caller's own output errors). ``progress(done, total)`` is
    called per chunk of a tar; ``ecdsa`` replaces the pure-Python signature check (the library
    passes `cryptography`'s, cross-checked against this one in the tests). ``allow_expired``
    accepts a signature past its signed expiry (recorded as ``expired_accepted``); ``now``
    replaces the host clock for that check (seconds since the epoch).

    ``path`` may also name a split bundle: its part index or any of its parts (`part_index_for`).
    Then the index's signature is checked under the same trust, every part against the index,
    and the bundle streams part after part through the same pipeline (`_run_parts`); ``tee``
    receives every byte of the joined bundle as it streams (`bundle join` writes it).
    """
    path = Path(path)
    is_dir = path.is_dir()
    if not is_dir and not path.is_file():
        raise InputError(f"{path}: no such bundle file or directory")
    if is_dir and sink is not None:
        raise InputError(f"{path}: is a directory; extraction takes a bundle tar")
    policy = trusted if isinstance(trusted, TrustPolicy) else policy_from_keys(trusted)
    if not policy.keys:
        raise InputError("no trusted key given (--trust KEY.pub); a key inside the bundle is never trusted")
    report = VerifyReport(bundle=str(path))
    state = _State(report, ecdsa, sink, allow_expired=allow_expired, now=now)
    state.policy = policy
    state.threaded = threaded
    try:
        if is_dir:
            try:
                _run_directory(path, trusted, state, limits)
            except OSError as e:
                raise ArchiveError(f"{e.filename or path}: read error ({e.strerror or e})") from None
        elif part_index_for(path) is not None:
            _run_parts(path, state, limits, threaded, progress, tee)
        else:
            with open(path, "rb", buffering=0) as f:
                reader = StrictTarReader(f, limits, threaded)
                if progress is not None:
                    total = os.fstat(f.fileno()).st_size
                    state.tick = lambda: progress(reader.position, total)
                try:
                    try:
                        _run(reader, trusted, state)
                    except OSError as e:
                        raise ArchiveError(f"read error at byte {reader.position}: {e.strerror or e}") from None
                    report.sha256 = reader.archive_sha256
                finally:
                    reader.close()
        _check_manifest_semantics(state, str(path) if is_dir else None)
        report.host = host_report(state.manifest, report.engines, required=require_host, probe=state.probe)
        if require_host and not report.host.runnable:
            raise HostError("no engine in this bundle can run on this host (see the host section of the report)")
        report.ok = True
        report.exit_code = int(ExitCode.OK)
    except VerificationError as e:
        report.ok = False
        report.exit_code = int(e.code)
        report.error = Failure(int(e.code), e.failure_class, e.member, e.message)
        if state.probe is not None:  # refused after the signatures: no thread outlives the call
            state.probe.wait()
    if state.statement is not None:  # what the trusted signature covers, whoever countersigned it
        report.content_digest = subject_digest(state.statement.resources)
    report.files = sorted(state.files.values(), key=lambda r: r.path)
    return report


def _rel(root: str, m: Member) -> str:
    if m.name == root:
        return ""
    if not m.name.startswith(root + "/"):
        raise UnsafeMemberError(f"{m.name}: outside the bundle's top directory {root}/", member=m.name)
    return m.name[len(root) + 1:]


def _run(reader: StrictTarReader, trusted: Dict[str, TrustedKey], st: _State) -> None:
    report = st.report
    member = reader.next()
    if member is None:
        raise ArchiveError("empty archive: no members")
    root = member.name.split("/", 1)[0]
    report.root = root

    # 1. signatures, which must come first
    sig_files = []  # type: List[Tuple[str, str, bytes]]
    while member is not None:
        rel = _rel(root, member)
        if member.is_dir:
            st.dirs.add(rel)
            member = reader.next()
            continue
        if not rel.startswith(SIGNATURES_DIR + "/"):
            break
        _check_sig_member(member.name, rel, member.size, len(sig_files))
        buf = bytearray()
        reader.read_data(buf.extend)
        sig_files.append((member.name, rel, bytes(buf)))
        if st.sink is not None:
            st.sink.begin(rel, member.mode)
            st.sink.write(memoryview(buf))
            st.sink.end()
        member = reader.next()
    if not sig_files:
        raise SignatureError(f"no signature: a bundle's first members must be {root}/{SIGNATURES_DIR}/*.sig")
    st.statement = _check_signatures(sig_files, st.policy, report, st.ecdsa)
    _record_expiry(st, sig_files)
    st.signatures_checked()
    if st.statement.subject != root:
        raise BindingError(
            f"the signature is for {st.statement.subject!r} but the bundle's directory is {root!r}", member=root
        )
    signed = st.statement.resources
    for p, d in signed.items():
        st.files[p] = FileReport(p, None, d)
    if MANIFEST not in signed:
        raise BindingError(f"the signed file list has no {MANIFEST}; not a bundle of this format")
    # A directory member must be a parent of a signed path: checked as each one arrives, so an
    # archive of a million unsigned directories costs extraction no more than verification.
    parents = _parents(list(signed) + [rel for _, rel, _ in sig_files])
    for d in sorted(st.dirs):
        _check_dir(root, d, parents)

    # 2. manifest.json, then everything else, hashed as it streams
    first_payload = True
    while member is not None:
        rel = _rel(root, member)
        if member.is_dir:
            _check_dir(root, rel, parents)
            st.dirs.add(rel)
            if st.sink is not None:
                st.sink.mkdir(rel)
            member = reader.next()
            continue
        if first_payload and rel != MANIFEST:
            raise MembersError(f"{member.name}: {MANIFEST} must come right after the signatures", member=member.name)
        first_payload = False
        if rel.startswith(SIGNATURES_DIR + "/"):
            raise MembersError(f"{member.name}: signature file after the payload began", member=member.name)
        fr = st.files.get(rel)
        if fr is None:
            st.files[rel] = FileReport(rel, None, None, size=member.size, status="extra")
            raise MembersError(f"{member.name}: extra member, not in the signed file list", member=member.name)
        _check_size(st, fr, rel, member.name, member.size)
        h = hashlib.sha256()
        keep = bytearray() if rel in (MANIFEST, SHA256SUMS, PROVENANCE) else None  # type: Optional[bytearray]
        head = bytearray()
        want_head = _wants_head(rel)
        update = h.update
        sink, tick = st.sink, st.tick
        if keep is None and not want_head and sink is None and tick is None:
            reader.read_data(update)  # the plain verifier's hot path: nothing but the digest
        else:
            def consume(chunk: memoryview) -> None:
                update(chunk)
                if keep is not None:
                    keep.extend(chunk)
                if want_head and len(head) < HEADER_SIZE:
                    head.extend(chunk[:HEADER_SIZE - len(head)])
                if sink is not None:
                    sink.write(chunk)
                if tick is not None:
                    tick()
            if sink is not None:
                sink.begin(rel, member.mode)
            reader.read_data(consume)
            if sink is not None:
                sink.end()
        _check_digest(st, fr, rel, member.name, member.size, h.hexdigest(), bytes(head) if want_head else None)
        if rel == MANIFEST:
            _load_manifest(bytes(keep or b""), st, root, root)
        elif rel == SHA256SUMS:
            st.sums_raw = bytes(keep or b"")
        elif rel == PROVENANCE:
            st.provenance_raw = bytes(keep or b"")
        member = reader.next()
    if not reader.finished:  # pragma: no cover - next() returns None only at the end
        raise ArchiveError("archive did not end cleanly")
    _check_missing(st, root)


def _wants_head(rel: str) -> bool:
    """Members whose first bytes are kept for the engine-header cross-check."""
    return rel.startswith("engines/") and not rel.endswith(".log")


def _check_sig_member(full: str, rel: str, size: int, count: int) -> None:
    name = rel[len(SIGNATURES_DIR) + 1:]
    if not SIGNATURE_NAME_RE.match(name):
        raise SignatureError(f"{full}: only signatures/NAME.sig files, NAME of A-Z a-z 0-9 . _ -, may live in "
                             "signatures/", member=full)
    if size > MAX_SIGNATURE_SIZE:
        raise LimitsError(f"{full}: signature file of {size} bytes is over the limit", member=full)
    if count >= MAX_SIGNATURES:
        raise LimitsError(f"more than {MAX_SIGNATURES} signature files", member=full)


def _check_size(st: _State, fr: FileReport, rel: str, full: str, size: int) -> None:
    expected_size = st.expected_sizes.get(rel)
    fr.expected_size = expected_size
    if expected_size is not None and size != expected_size:
        fr.size, fr.status = size, "size-mismatch"
        raise DigestError(f"{full}: size {size} differs from the signed {expected_size}", member=full)
    if rel in (MANIFEST, SHA256SUMS) and size > MAX_MANIFEST_SIZE:
        raise LimitsError(f"{full}: {rel} of {size} bytes is over the limit", member=full)
    if rel == PROVENANCE and size > MAX_PROVENANCE_SIZE:  # it is kept in memory, like the manifest
        raise LimitsError(f"{full}: {rel} of {size} bytes is over the limit", member=full)


def _check_digest(st: _State, fr: FileReport, rel: str, full: str, size: int, digest: str,
                  head: Optional[bytes]) -> None:
    fr.size, fr.sha256 = size, digest
    if fr.sha256 != fr.expected_sha256:
        fr.status = "digest-mismatch"
        raise DigestError(f"{full}: SHA-256 differs from the signed digest", member=full)
    fr.status = "ok"
    if head is not None:
        st.engine_heads[rel] = head


def _check_missing(st: _State, root: str) -> None:
    missing = sorted(p for p, fr in st.files.items() if fr.status == "pending")
    for p in missing:
        st.files[p].status = "missing"
    if missing:
        raise MembersError(f"{root}/{missing[0]}: signed member missing from the bundle"
                           + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                           member=f"{root}/{missing[0]}")


def _parents(paths: List[str]) -> Set[str]:
    """Every directory that holds a signed path, the bundle's top directory ("") included."""
    out = {""}
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def _check_dir(root: str, rel: str, parents: Set[str]) -> None:
    if rel not in parents:
        raise MembersError(f"{root}/{rel}/: directory member that holds no signed file", member=f"{root}/{rel}")


def _short_key_id(hint: Optional[str]) -> str:
    """A key hint in a message: it was read before anything was authenticated, so only a real
    key id (64 lowercase hex) is quoted, shortened; anything else is named, never echoed."""
    if hint is None:
        return "unknown"
    return hint[:16] + "..." if KEY_ID_RE.match(hint) else "invalid-hint"


def _check_signatures(sig_files: List[Tuple[str, str, bytes]], policy: TrustPolicy,
                      report: VerifyReport, ecdsa: Ecdsa = None) -> Statement:  # type: ignore[assignment]
    """Check every signature file against the policy's keys and return the signed statement.

    Counting against the policy's rule waits for the manifest (`_check_policy`), which names the
    bundle; the manifest is read only once its digest matched a statement signed by a key of the
    policy that is not revoked. An invalid signature, or one by an unknown key, is reported and
    never counted; it fails the bundle only if what remains does not meet the rule.
    """
    statements = []  # type: List[Statement]
    full_of = {rel: full for full, rel, _ in sig_files}
    for full, rel, raw in sig_files:
        sf = parse_signature_file(raw, full)
        candidates = _candidate_keys(sf, policy)
        sr = SignerReport(file=rel, key_id=sf.hint, trusted=False, valid=None, sha256=hashlib.sha256(raw).hexdigest())
        report.signers.append(sr)
        if sf.unsupported is not None:  # reported, never checked, never counted
            sr.reason = sf.unsupported
            continue
        for tk in candidates:
            if verify_signature(sf, tk.key, ecdsa):
                sr.key_id, sr.trusted, sr.valid, sr.trust_source, sr.name = tk.key_id, True, True, tk.source, tk.name
                if tk.key_id in policy.revoked:
                    sr.reason = _revoked_reason(policy, tk.key_id)
                else:
                    statements.append(parse_statement(sf.payload, full))
                break
        else:
            if candidates:
                sr.trusted, sr.valid = sf.hint is not None, False
                sr.name = candidates[0].name if sf.hint is not None else ""
                sr.reason = f"signature does not verify under {'trusted key ' + candidates[0].key_id[:16] + '...' if sf.hint else 'any trusted key'}"
            else:
                sr.reason = "key not in the trust policy"
    if not statements:
        bad = next((s for s in report.signers if s.valid is False or s.reason.startswith("key revoked")), None)
        if bad is None:  # nothing checkable failed: say what kind of signature could not be checked
            bad = next((s for s in report.signers if s.reason.endswith(_KEYS_ONLY)), None)
        if bad is not None:
            raise SignatureError(f"{full_of[bad.file]}: {bad.reason}", member=full_of[bad.file])
        signers = ", ".join(sorted(_short_key_id(s.key_id) for s in report.signers))
        trusted_ids = ", ".join(sorted(k[:16] + "..." for k in policy.keys))
        raise SignatureError(f"no signature from a trusted key (signed by {signers}; trusted: {trusted_ids})")
    first = statements[0]
    for s in statements[1:]:
        if s.resources != first.resources or s.subject != first.subject:
            raise SignatureError("trusted signatures disagree about the bundle's contents")
    return first


def _candidate_keys(sf: SignatureFile, policy: TrustPolicy) -> List[TrustedKey]:
    """The trusted keys a signature file's signature is tried with (section 6.3): the key its
    hint names; none when the hint names a key the policy does not hold; every key when there is
    no hint. Bundle signatures and part indexes alike."""
    known = policy.keys
    return [known[sf.hint]] if sf.hint in known else ([] if sf.hint else list(known.values()))


def _revoked_reason(policy: TrustPolicy, key_id: str) -> str:
    r = policy.revoked[key_id]
    return f"key revoked on {r.date}: {r.reason}"


def _key_reason(policy: TrustPolicy, tk: TrustedKey, name: str, rule: RuleDoc, now: float) -> str:
    """Why a valid signature by ``tk`` does not count for a bundle named ``name`` under
    ``rule`` ("" when it counts): revoked, outside the key's validity window, or not a key the
    rule allows. The one rule for bundle signatures (`_check_policy`) and part indexes."""
    if tk.key_id in policy.revoked:
        return _revoked_reason(policy, tk.key_id)
    if tk.not_before is not None and now < parse_utc(tk.not_before, "not_before"):
        return f"key not valid before {tk.not_before}"
    if tk.not_after is not None and now > parse_utc(tk.not_after, "not_after"):
        return f"key expired after {tk.not_after}"
    if tk.key_id not in policy.allowed(rule):
        return f"key not allowed to sign {name!r} (rule {rule.bundles!r})"
    return ""


def _check_policy(st: "_State", name: str) -> None:
    """Count the signatures against the policy rule for bundle ``name`` (from the manifest).

    A signature counts when it verifies, its key is not revoked (revocation has no date to
    compare with: a closed host has no trusted time, so a revoked key never counts, even for
    bundles signed before), the host clock is inside the key's validity window, the rule allows
    the key, and no signature by the same key counted already.
    """
    policy, report = st.policy, st.report
    rule = policy.rule_for(name)
    if rule is None:
        raise SignatureError(f"the trust policy ({policy.source}) has no rule for bundles named {name!r}")
    now = _now(st)
    counted = []  # type: List[str]
    for sr in report.signers:
        tk = policy.keys.get(sr.key_id or "")
        if not sr.valid or tk is None or sr.reason:
            continue
        reason = _key_reason(policy, tk, name, rule, now)
        if reason:
            sr.reason = reason
        elif tk.key_id in counted:
            sr.reason = "the same key signed twice: counted once"
        else:
            sr.counted = True
            counted.append(tk.key_id)
    report.policy = PolicyReport(policy.source, policy.version, rule.bundles, rule.threshold, counted,
                                 parse_duration(rule.max_age) if rule.max_age is not None else None)
    if len(counted) >= rule.threshold:
        # Only counted signatures' expiries matter (an uncounted signer's says nothing here).
        report.expired_accepted = _check_expiry([s for s in report.signers if s.counted], now, st.allow_expired)
    else:
        why = "; ".join(f"{_short_key_id(s.key_id)}{' (' + s.name + ')' if s.name else ''}: {s.reason}"
                        for s in report.signers if not s.counted)
        raise SignatureError(f"trust policy{' ' + policy.source if policy.source != '--trust' else ''}: "
                             f"{len(counted)} of the {rule.threshold} signatures required for {name!r} "
                             f"(rule {rule.bundles!r}) counted" + (f"; not counted: {why}" if why else ""))


def _now(st: "_State") -> float:
    """The host clock (or a test's fixed time): key validity windows and signed expiries."""
    return st.now if st.now is not None else datetime.datetime.now(datetime.timezone.utc).timestamp()


def _record_expiry(st: _State, sig_files: List[Tuple[str, str, bytes]]) -> None:
    """Right after `_check_signatures`: record the content digest and each valid signer's
    signed expiry. The expiry rule itself (`_check_expiry`) is applied by `_check_policy` to the
    signatures that counted. The statements were verified already: re-reading them here only
    looks up ``predicate.expires``."""
    report = st.report
    assert st.statement is not None
    report.content_digest = subject_digest(st.statement.resources)
    files = {rel: (full, raw) for full, rel, raw in sig_files}
    for s in report.signers:
        if s.valid:
            full, raw = files[s.file]
            statement = parse_statement(parse_signature_file(raw, full).payload, full)
            s.expires, s.ledger = statement.expires, statement.ledger


def _check_expiry(signers: List[SignerReport], now: float, allow_expired: bool) -> bool:
    """Fail if any counted signature is past its signed expiry (``now`` > ``expires``), unless
    ``allow_expired``; return whether an expired signature was accepted that way.

    Any one counted signer's expiry is enough: an expiry is its signer's statement that the
    bundle must not be trusted after that time, and a countersignature without one does not
    lift it. ``now`` is the host clock: see docs/security.md for what a wrong clock does.
    """
    expired = [(expires_epoch(s.expires), s) for s in signers
               if s.expires is not None and now > expires_epoch(s.expires)]
    if not expired:
        return False
    if allow_expired:
        return True
    _, first = min(expired, key=lambda e: e[0])
    raise BindingError(f"bundle expired on {first.expires} (signature {_short_key_id(first.key_id)}); "
                       "pass --allow-expired to accept it")

def _load_manifest(raw: bytes, st: _State, root: Optional[str], where: str) -> None:
    """Parse the (already digest-checked) manifest and bind it to the signed list.

    ``root`` is the tar's top directory; None for a directory, whose binding is checked by the
    caller against the manifest's own NAME-VERSION. ``where`` prefixes messages and members.
    """
    try:
        m = parse_manifest(raw, MANIFEST)
    except SchemaError as e:
        raise BindingError(f"{where}/{MANIFEST}: {e}", member=f"{where}/{MANIFEST}") from None
    st.manifest = m
    r = st.report
    r.name, r.version, r.created, r.manifest = m.name, m.version, m.created, m
    wm = f"{where}/{MANIFEST}"
    if m.format != FORMAT_VERSION:
        raise BindingError(f"{wm}: format {m.format!r}; this verifier knows {FORMAT_VERSION}", member=wm)
    try:
        check_version(m.version)
        check_bundle_name(m.name)
    except InputError as e:
        raise BindingError(f"{wm}: {e.message}", member=wm) from None
    if root is None:
        r.root = m.root
        assert st.statement is not None
        if st.statement.subject != m.root:
            raise BindingError(
                f"the signature is for {st.statement.subject!r} but {where}/{MANIFEST} names {m.root!r}",
                member=f"{where}/{MANIFEST}",
            )
    elif m.root != root:
        raise BindingError(
            f"{root}/{MANIFEST}: names {m.name} {m.version}, which does not match the directory {root}",
            member=f"{root}/{MANIFEST}",
        )
    # The name is bound to the signed directory now: count the signatures under its rule.
    _check_policy(st, m.name)
    assert st.statement is not None
    signed = st.statement.resources
    listed = {f.path: f for f in m.files}
    if len(listed) != len(m.files):
        twice = next(f.path for i, f in enumerate(m.files) if any(g.path == f.path for g in m.files[:i]))
        raise BindingError(f"{where}/{MANIFEST}: lists {twice} twice in its files", member=f"{where}/{MANIFEST}")
    expected = set(listed) | {MANIFEST, SHA256SUMS}
    if expected != set(signed):
        diff = sorted(expected ^ set(signed))
        raise BindingError(f"{where}/{MANIFEST}: file list differs from the signed list ({diff[0]})", member=f"{where}/{MANIFEST}")
    for p, f in listed.items():
        if f.sha256 != signed[p]:
            raise BindingError(f"{where}/{MANIFEST}: digest of {p} differs from the signed list", member=f"{where}/{p}")
        st.expected_sizes[p] = f.size
        st.files[p].expected_size = f.size
    # Everything the manifest points at must be a signed file, with the digest it claims.
    mf = listed.get(m.model.path)
    if mf is None or mf.sha256 != m.model.sha256 or mf.size != m.model.size:
        raise BindingError(f"{wm}: source model {m.model.path} is not listed with its size and digest", member=wm)
    refs = [e.log for e in m.engines] + ([m.golden.inputs, m.golden.outputs] if m.golden else []) + [
        v.log for v in m.variants if v.log is not None]
    for ref in refs:
        if ref not in listed:
            raise BindingError(f"{wm}: refers to {ref}, which is not a signed file", member=wm)
    for v in m.variants:
        vf = listed.get(v.graph)
        if vf is None or vf.sha256 != v.sha256 or vf.size != v.size:
            raise BindingError(f"{wm}: {v.precision} graph {v.graph} is not listed with its size and digest", member=wm)
    # Every engine says which graph it was built from: the source's own precision or a variant,
    # one graph per precision (a second one would silently replace the first in this map).
    graphs = {m.model.precision: m.model.sha256}
    for v in m.variants:
        if v.precision in graphs:
            raise BindingError(f"{wm}: a second {v.precision} graph ({v.graph}); one graph per precision", member=wm)
        graphs[v.precision] = v.sha256
    seen = set()  # type: Set[str]
    for e in m.engines:
        if e.path in seen:
            raise BindingError(f"{wm}: engine {e.path} has two records", member=wm)
        seen.add(e.path)
        if e.header is not None and not e.target.cc:  # a TensorRT engine: where it may run is its cc
            raise BindingError(f"{wm}: engine {e.path} has GPU target {e.target.label!r} without a compute capability",
                               member=wm)
    for e in m.engines:
        if e.build.precision not in graphs:
            raise BindingError(f"{wm}: engine {e.path} is {e.build.precision}, but no graph of that precision is signed", member=wm)
        if e.header is None and e.sha256 != graphs[e.build.precision]:
            raise BindingError(f"{wm}: cpu engine {e.path} is not the signed {e.build.precision} graph", member=wm)
    for e in m.engines:
        f = listed.get(e.path)
        if f is None or f.sha256 != e.sha256 or f.size != e.size:
            raise BindingError(f"{where}/{MANIFEST}: engine {e.path} is not listed with its size and digest", member=f"{where}/{e.path}")
        st.report.engines.append(EngineReport(e.path, e.target.label, e.target.cc, e.backend.name, e.backend.version))


def _check_manifest_semantics(st: _State, where: Optional[str] = None) -> None:
    """Checks that need the whole pass: engine headers against the manifest, SHA256SUMS."""
    m = st.manifest
    root = where if where is not None else st.report.root
    if m is None:  # pragma: no cover - the signed list always holds manifest.json
        raise BindingError("no manifest")
    by_path = {e.path: e for e in m.engines}
    for er in st.report.engines:
        rec = by_path[er.path]
        member = f"{root}/{er.path}"
        if not _wants_head(er.path):  # only these heads are kept: elsewhere no header could be checked
            er.header_ok = False
            raise BindingError(f"{member}: an engine must lie below engines/ and not be a .log file (its first bytes "
                               "are checked against the record there only)", member=member)
        if rec.header is None:
            # Only the cpu target ships without an engine header; anything else claiming that is
            # a way around the header cross-check, and so is a TensorRT engine labelled as cpu.
            is_engine = True
            try:
                parse_header(st.engine_heads.get(er.path, b""))
            except HeaderError:
                is_engine = False
            if rec.backend.name != "onnxruntime" or rec.target.label != "cpu" or is_engine:
                er.header_ok = False
                raise BindingError(f"{member}: manifest records no engine header, but this is not a cpu-target ONNX file", member=member)
            continue
        try:
            header = parse_header(st.engine_heads.get(er.path, b""), rec.size)
        except HeaderError as e:
            er.header_ok = False
            raise BindingError(f"{member}: engine header unreadable ({e})", member=member) from None
        er.header = header
        problems = []
        if header.product != rec.header.product or header.version != rec.header.version:
            problems.append(f"header says {header.product} {header.version}, manifest {rec.header.product} {rec.header.version}")
        if header.cc != rec.header.cc or header.cc_mask != rec.header.cc_mask:
            problems.append(f"header targets {header.cc} (mask {header.cc_mask}), manifest {rec.header.cc} (mask {rec.header.cc_mask})")
        if header.product == "tensorrt-rtx" and rec.target.cc not in (header.cc or []):  # cc not null: step 7.7
            problems.append(f"labelled for {rec.target.cc} but built for {header.cc}")
        if not version_matches(header.version, rec.backend.version):
            problems.append(f"built by {rec.backend.name} {rec.backend.version} but the header says {header.version}")
        if problems:
            er.header_ok = False
            raise BindingError(f"{member}: " + "; ".join(problems), member=member)
        er.header_ok = True
    if st.sums_raw is not None:
        expected = {p: fr.expected_sha256 for p, fr in st.files.items() if p != SHA256SUMS}
        got = parse_sums(st.sums_raw)
        if got != expected:
            raise BindingError(f"{root}/{SHA256SUMS}: does not list exactly the signed files and digests", member=f"{root}/{SHA256SUMS}")
    if st.provenance_raw is not None:
        st.report.provenance = check_provenance(st.provenance_raw, st, f"{root}/{PROVENANCE}")


_SUMS_LINE = re.compile(rb"([0-9a-f]{64})  ([^\x00-\x1f\x7f\\]+)")


def parse_sums(raw: bytes) -> Optional[Dict[str, str]]:
    """SHA256SUMS exactly as `sha256sum` writes it for our names: ``HEX64 SP SP PATH LF`` per
    file, nothing else (no CR, no other line separator, a final LF, no path twice), so that what
    this verifier accepts is what `sha256sum -c` will check. None when it is anything else."""
    if not raw.endswith(b"\n"):
        return None
    out = {}  # type: Dict[str, str]
    for line in raw[:-1].split(b"\n"):
        m = _SUMS_LINE.fullmatch(line)
        if m is None:
            return None
        try:
            path = m.group(2).decode("utf-8")
        except UnicodeDecodeError:
            return None
        if path in out:
            return None
        out[path] = m.group(1).decode("ascii")
    return out


# -- an extracted directory ---------------------------------------------------------------------

_O_NOFOLLOW = getattr(os, "O_NOFOLLOW", 0)
_O_CLOEXEC = getattr(os, "O_CLOEXEC", 0)


def _kind(mode: int) -> str:
    if stat.S_ISLNK(mode):
        return "symlink"
    if stat.S_ISCHR(mode):
        return "character device"
    if stat.S_ISBLK(mode):
        return "block device"
    if stat.S_ISFIFO(mode):
        return "FIFO"
    if stat.S_ISSOCK(mode):
        return "socket"
    return "special file"


def _walk(top: Path, limits: Limits) -> Tuple[Dict[str, int], Set[str]]:
    """Regular files (rel path -> size) and directories of an extracted bundle, checked like
    tar members: no symlinks or special files, plain names, no setuid/setgid/sticky files, no
    case-fold collisions, within the limits. Nothing is followed."""
    files = {}  # type: Dict[str, int]
    dirs = set()  # type: Set[str]
    folded = {}  # type: Dict[str, str]
    count, total = 0, 0
    stack = [""]
    while stack:
        rel_dir = stack.pop()
        with os.scandir(os.path.join(str(top), rel_dir) if rel_dir else str(top)) as it:
            # at most the members still allowed, plus one: a directory of ten million entries
            # must not be listed (and held) whole before the limit can say no
            entries = list(itertools.islice(it, limits.max_members - count + 1))
        if count + len(entries) > limits.max_members:
            raise LimitsError(f"more than {limits.max_members} members (in {rel_dir or '.'})", member=rel_dir or None)
        entries.sort(key=lambda e: e.name)
        for entry in entries:
            rel = f"{rel_dir}/{entry.name}" if rel_dir else entry.name
            full = os.path.join(str(top), rel)
            check_name(rel, limits, 0)
            st = os.lstat(full)
            mode = st.st_mode
            if stat.S_ISDIR(mode):
                dirs.add(rel)
                stack.append(rel)
            elif stat.S_ISREG(mode):
                if mode & 0o7000:
                    raise UnsafeMemberError(
                        f"{full}: setuid, setgid or sticky bit set (mode {stat.S_IMODE(mode):04o})", member=full)
                if st.st_size > limits.max_member_size:
                    raise LimitsError(f"{full}: {st.st_size} bytes is over the per-member limit of {limits.max_member_size}", member=full)
                total += st.st_size
                if total > limits.max_total_size:
                    raise LimitsError(f"directory content over the limit of {limits.max_total_size} bytes", member=full)
                files[rel] = st.st_size
            else:
                raise UnsafeMemberError(f"{full}: {_kind(mode)} is not allowed in a bundle", member=full)
            count += 1
            if count > limits.max_members:
                raise LimitsError(f"more than {limits.max_members} members", member=full)
            f = ascii_fold(rel)
            if f in folded:
                raise UnsafeMemberError(f"{full}: collides with {folded[f]} when case is ignored", member=full)
            folded[f] = rel
    return files, dirs


def _open_regular(full: str) -> int:
    try:
        fd = os.open(full, os.O_RDONLY | _O_NOFOLLOW | _O_CLOEXEC)
    except FileNotFoundError:
        raise MembersError(f"{full}: disappeared while being verified", member=full) from None
    except OSError:
        if _O_NOFOLLOW and os.path.islink(full):
            raise UnsafeMemberError(f"{full}: symlink is not allowed in a bundle", member=full) from None
        raise
    if not stat.S_ISREG(os.fstat(fd).st_mode):
        os.close(fd)
        raise UnsafeMemberError(f"{full}: not a regular file", member=full)
    return fd


def _read_small(full: str, limit: int) -> bytes:
    fd = _open_regular(full)
    try:
        chunks = []
        size = 0
        while size <= limit:
            b = os.read(fd, limit + 1 - size)
            if not b:
                break
            chunks.append(b)
            size += len(b)
        return b"".join(chunks)
    finally:
        os.close(fd)


def _hash_file(full: str, want_head: bool, keep_limit: Optional[int], buf: bytearray) -> Tuple[int, str, bytes, Optional[bytes]]:
    """(size, sha256, first bytes, whole data when ``keep_limit`` is set) of a regular file."""
    fd = _open_regular(full)
    try:
        h = hashlib.sha256()
        view = memoryview(buf)
        size = 0
        head = b""
        kept = bytearray() if keep_limit is not None else None
        with open(fd, "rb", buffering=0, closefd=False) as f:
            while True:
                n = f.readinto(buf)
                if not n:
                    break
                chunk = view[:n]
                h.update(chunk)
                if want_head and len(head) < HEADER_SIZE:
                    head += bytes(chunk[:HEADER_SIZE - len(head)])
                if kept is not None:
                    kept += chunk
                    if keep_limit is not None and len(kept) > keep_limit:
                        raise LimitsError(f"{full}: grew over the limit of {keep_limit} bytes while being read", member=full)
                size += n
        return size, h.hexdigest(), head, (bytes(kept) if kept is not None else None)
    finally:
        os.close(fd)


def _raise_missing(st: _State, where: str, missing: List[str]) -> None:
    missing = sorted(missing)
    for p in missing:
        st.files[p].status = "missing"
    raise MembersError(f"{where}/{missing[0]}: signed file missing from the directory"
                       + (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""),
                       member=f"{where}/{missing[0]}")


def _run_directory(top: Path, trusted: Dict[str, TrustedKey], st: _State, limits: Limits) -> None:
    """The directory counterpart of `_run`: same checks, in an order that fails before hashing.

    Order: walk (unsafe entries, limits) -> signatures -> manifest.json (digest, then its
    NAME-VERSION must be the signed subject) -> nothing extra, nothing missing, sizes -> digests.
    """
    report = st.report
    where = str(top)

    def full(rel: str) -> str:
        return os.path.join(where, rel)

    files, dirs = _walk(top, limits)

    # 1. signatures: signatures/*.sig only, in name order
    sig_rels = sorted(r for r in files if r.startswith(SIGNATURES_DIR + "/"))
    sig_files = []  # type: List[Tuple[str, str, bytes]]
    for rel in sig_rels:
        _check_sig_member(full(rel), rel, files[rel], len(sig_files))
        raw = _read_small(full(rel), MAX_SIGNATURE_SIZE)
        if len(raw) > MAX_SIGNATURE_SIZE:
            raise LimitsError(f"{full(rel)}: signature file of {len(raw)}+ bytes is over the limit", member=full(rel))
        sig_files.append((full(rel), rel, raw))
    for d in sorted(dirs):
        if d.startswith(SIGNATURES_DIR + "/"):
            raise SignatureError(f"{full(d)}: only signatures/*.sig files may live in signatures/", member=full(d))
    if not sig_files:
        raise SignatureError(f"no signature: {full(SIGNATURES_DIR)}/ holds no *.sig file")
    st.statement = _check_signatures(sig_files, st.policy, report, st.ecdsa)
    _record_expiry(st, sig_files)
    st.signatures_checked()
    signed = st.statement.resources
    for p, d in signed.items():
        st.files[p] = FileReport(p, None, d)
    if MANIFEST not in signed:
        raise BindingError(f"the signed file list has no {MANIFEST}; not a bundle of this format")
    missing = [p for p in signed if p not in files]

    # 2. manifest.json: digest-checked, then it names the root the signature must be for
    buf = bytearray(CHUNK)
    if MANIFEST in missing:
        _raise_missing(st, where, missing)
    fr = st.files[MANIFEST]
    _check_size(st, fr, MANIFEST, full(MANIFEST), files[MANIFEST])
    size, digest, _, raw = _hash_file(full(MANIFEST), False, MAX_MANIFEST_SIZE, buf)
    _check_digest(st, fr, MANIFEST, full(MANIFEST), size, digest, None)
    _load_manifest(raw or b"", st, None, where)

    # 3. nothing extra, nothing missing, every size right, before any other data is read
    for rel in sorted(files):
        if not rel.startswith(SIGNATURES_DIR + "/") and rel not in st.files:
            st.files[rel] = FileReport(rel, None, None, size=files[rel], status="extra")
            raise MembersError(f"{full(rel)}: extra file, not in the signed file list; move it out of the bundle "
                               "directory (keep inputs, outputs and reports outside it)", member=full(rel))
    if missing:
        _raise_missing(st, where, missing)
    members = set(signed) | set(sig_rels)
    for d in sorted(dirs):
        if not any(p.startswith(d + "/") for p in members):
            raise MembersError(f"{full(d)}/: directory that holds no signed file", member=full(d))
    order = sorted(p for p in signed if p != MANIFEST)
    for rel in order:
        _check_size(st, st.files[rel], rel, full(rel), files[rel])

    # 4. every file's digest, streamed
    for rel in order:
        fr = st.files[rel]
        want_head = _wants_head(rel)
        keep_limit = MAX_MANIFEST_SIZE if rel == SHA256SUMS else MAX_PROVENANCE_SIZE if rel == PROVENANCE else None
        size, digest, head, raw = _hash_file(full(rel), want_head, keep_limit, buf)
        _check_size(st, fr, rel, full(rel), size)  # it changed since the walk
        _check_digest(st, fr, rel, full(rel), size, digest, head if want_head else None)
        if rel == SHA256SUMS:
            st.sums_raw = raw
        elif rel == PROVENANCE:
            st.provenance_raw = raw


# == SLSA provenance (docs/bundle-format.md section 14) =========================================

PROVENANCE = "provenance/slsa-v1.intoto.json"  # the one member path this section judges
SLSA_PREDICATE_TYPE = "https://slsa.dev/provenance/v1"
MAX_PROVENANCE_SIZE = 4 << 20  # a statement names each engine once: far below this


@dataclass
class ProvenanceReport:
    """The bundle's SLSA v1 provenance (``provenance/slsa-v1.intoto.json``) after its checks.

    ``checked``: its own DSSE signature verified under ``key_id``, a key that counts for this
    bundle. False when that key is not in the trust policy (a bundle countersigned by the only
    key this host trusts): then the provenance is authentic only as a signed member of the
    bundle, whose counted signatures list its digest; ``reason`` says so."""

    path: str
    key_id: str
    checked: bool
    reason: str = ""
    build_type: str = ""
    builder: str = ""
    subjects: int = 0
    statement: Optional[Dict[str, Any]] = None  # the verified in-toto statement; not in the JSON report


class ProvenanceMissingError(BundleError):
    """An authentic bundle without a provenance member (sealed before bundler wrote one): not a
    finding about the bundle, which verifies, but nothing for `bundle provenance` to show."""

    code = ExitCode.PROVENANCE


def parse_dsse_envelope(raw: bytes, where: str) -> Tuple[str, bytes, bytes]:
    """(keyid, payload, signature) of a bare DSSE envelope with one signature (the provenance
    member: DSSE's own JSON form, as in-toto and cosign write attestations). Strict JSON,
    payload type in-toto, canonical base64, and a ``keyid`` that is a key id (section 6.3):
    the key that signed it, which selects the trusted key to check it with."""
    try:
        doc = loads_strict(raw)
        if not isinstance(doc, dict):
            raise ValueError("not a JSON object")
        if doc.get("payloadType") != PAYLOAD_TYPE:
            raise ValueError(f"payloadType {_clip40(str(doc.get('payloadType')))!r}, not {PAYLOAD_TYPE}")
        sigs = doc["signatures"]
        if not isinstance(sigs, list) or len(sigs) != 1 or not isinstance(sigs[0], dict):
            raise ValueError("expected exactly one DSSE signature")
        keyid = sigs[0].get("keyid")
        if not isinstance(keyid, str) or not KEY_ID_RE.match(keyid):
            raise ValueError("the signature's keyid is not a key id (64 lower-case hex digits)")
        payload = b64_canonical(doc["payload"])
        sig = b64_canonical(sigs[0]["sig"])
    except RecursionError:
        raise SignatureError(f"{where}: not a DSSE envelope (nested too deeply)", member=where) from None
    except (ValueError, KeyError, TypeError, AttributeError, UnicodeDecodeError) as e:
        raise SignatureError(f"{where}: not a DSSE envelope ({e})", member=where) from None
    return keyid, payload, sig


def parse_provenance_statement(payload: bytes, where: str) -> Tuple[Dict[str, Any], List[Tuple[str, str]]]:
    """The statement and its subjects [(name, sha256)]: an in-toto Statement v1 with predicate
    type SLSA provenance v1, each subject ``{"name": str, "digest": {"sha256": hex64}}`` and no
    name twice, a predicate with ``buildDefinition`` (``buildType``, ``externalParameters``) and
    ``runDetails.builder.id`` (the fields SLSA v1.0 requires)."""
    try:
        st = loads_strict(payload)
        if not isinstance(st, dict):
            raise ValueError("not a JSON object")
        if st.get("_type") != STATEMENT_TYPE:
            raise ValueError(f"statement type {_clip40(str(st.get('_type')))!r}")
        if st.get("predicateType") != SLSA_PREDICATE_TYPE:
            raise ValueError(f"predicate type {_clip40(str(st.get('predicateType')))!r}, not {SLSA_PREDICATE_TYPE}")
        subjects = []  # type: List[Tuple[str, str]]
        for s in st["subject"]:
            name, digest = s["name"], s["digest"]
            if not isinstance(name, str) or not isinstance(digest, dict) or list(digest) != ["sha256"] \
                    or not isinstance(digest["sha256"], str) or not _HEX64.fullmatch(digest["sha256"]):
                raise ValueError("bad subject entry")
            if any(n == name for n, _ in subjects):
                raise ValueError("a subject listed twice")
            subjects.append((name, digest["sha256"]))
        pred = st["predicate"]
        bd, rd = pred["buildDefinition"], pred["runDetails"]
        if not isinstance(bd["buildType"], str) or not isinstance(bd["externalParameters"], dict):
            raise ValueError("buildDefinition needs buildType and externalParameters")
        if not isinstance(rd["builder"]["id"], str):
            raise ValueError("runDetails.builder.id is not a string")
    except RecursionError:
        raise SignatureError(f"{where}: provenance statement is malformed (nested too deeply)", member=where) from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError, UnicodeDecodeError) as e:
        raise SignatureError(f"{where}: provenance statement is malformed ({e})", member=where) from None
    return st, subjects


def check_provenance(raw: bytes, st: "_State", where: str) -> ProvenanceReport:
    """The provenance member's rules (docs/bundle-format.md section 14), run once the bundle's
    signatures counted and every member matched its signed digest.

    Its signer is the envelope's ``keyid``. When the trust policy holds that key, the signature
    MUST verify under it [signature] (a signature that claims a trusted key and does not verify
    is never ignored, as in section 7 step 4); it is ``checked`` when the key also counts for
    this bundle's name (not revoked, inside its validity window, allowed by the rule). A key the
    policy does not hold cannot be checked: the provenance is then as authentic as any other
    signed member, through the counted bundle signatures that list its digest (a bundle
    countersigned by the only key this host trusts, or re-signed with another tool). Either way
    its subjects MUST be the manifest's engines exactly, paths and SHA-256 [binding]."""
    keyid, payload, sig = parse_dsse_envelope(raw, where)
    policy = st.policy
    assert st.manifest is not None
    tk = policy.keys.get(keyid)
    bound = "the provenance is authentic as a signed member of the bundle; its own signature does not count"
    if tk is not None:
        if not st.ecdsa(tk.key, sig, pae(PAYLOAD_TYPE, payload)):
            raise SignatureError(f"{where}: signature does not verify under trusted key {keyid[:16]}...", member=where)
        rule = policy.rule_for(st.manifest.name)
        why = _key_reason(policy, tk, st.manifest.name, rule, _now(st)) if rule is not None else "no rule"
        checked, reason = not why, (f"{why}: {bound}" if why else "")
    else:  # not a key of this host's: nothing to check it with (the bundle may be re-signed, or countersigned)
        checked, reason = False, f"key not in the trust policy: {bound}"
    statement, subjects = parse_provenance_statement(payload, where)
    engines = sorted((e.path, e.sha256) for e in st.manifest.engines)
    if sorted(subjects) != engines:
        diff = sorted(set(subjects) ^ set(engines))
        raise BindingError(f"{where}: its subjects are not the bundle's engines ({diff[0][0] if diff else 'count'})",
                           member=where)
    bd, rd = statement["predicate"]["buildDefinition"], statement["predicate"]["runDetails"]
    return ProvenanceReport(PROVENANCE, keyid, checked, reason, bd["buildType"], rd["builder"]["id"], len(subjects),
                            statement)


def provenance_line(rep: VerifyReport) -> str:
    """The provenance's line in both verifiers' human reports (escaped: it quotes the bundle)."""
    p = rep.provenance
    if p is None:
        return "provenance: none in this bundle" if rep.ok else ""
    how = "signature valid" if p.checked else "signer not trusted here; bound by the bundle's signature"
    return printable(f"provenance: SLSA v1, {p.subjects} engines, builder {p.builder}, signed by "
                     f"{shown_key_id(p.key_id)} [{how}]")


# == host check (bundler/verify.py host_report, bundler/cuda.py) ===============================

def _load_libcuda() -> Any:
    # The driver's sonames only, found by the dynamic loader. Not ctypes.util.find_library: on
    # Linux it runs ldconfig, then gcc and ld looked up on PATH, so every verification executed
    # programs that are no part of the verifier (a planted `ld` in any PATH directory ran).
    import ctypes  # here, not at the top: the query runs on the host probe's thread, beside the pass

    for name in ("libcuda.so.1", "libcuda.so"):
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def query_gpus() -> List[GpuReport]:
    import ctypes

    lib = _load_libcuda()
    if lib is None:
        return []
    if lib.cuInit(0) != 0:
        return []
    version = ctypes.c_int(0)
    lib.cuDriverGetVersion(ctypes.byref(version))
    driver = f"{version.value // 1000}.{(version.value % 1000) // 10}"
    count = ctypes.c_int(0)
    if lib.cuDeviceGetCount(ctypes.byref(count)) != 0:
        return []
    gpus = []
    for i in range(count.value):
        dev = ctypes.c_int(0)
        if lib.cuDeviceGet(ctypes.byref(dev), i) != 0:
            continue
        name = ctypes.create_string_buffer(256)
        lib.cuDeviceGetName(name, 256, dev)
        major, minor = ctypes.c_int(0), ctypes.c_int(0)
        lib.cuDeviceGetAttribute(ctypes.byref(major), 75, dev)  # compute capability major
        lib.cuDeviceGetAttribute(ctypes.byref(minor), 76, dev)  # compute capability minor
        gpus.append(GpuReport(i, name.value.decode(errors="replace"), f"{major.value}.{minor.value}", driver))
    return gpus


def _packages_distributions() -> Dict[str, List[str]]:
    """importlib.metadata.packages_distributions(), which Python 3.8 and 3.9 lack."""
    from importlib import metadata

    fn = getattr(metadata, "packages_distributions", None)
    if fn is not None:
        return fn()
    out = {}  # type: Dict[str, List[str]]
    for dist in metadata.distributions():
        top = dist.read_text("top_level.txt")
        names = top.split() if top else sorted({
            (f.parts[0] if len(f.parts) > 1 else f.name.rsplit(".", 1)[0])
            for f in (dist.files or []) if f.suffix == ".py" or len(f.parts) > 1 and not f.parts[0].endswith(".dist-info")
        })
        for pkg in names:
            out.setdefault(pkg, []).append(dist.metadata["Name"])
    return out


_RUNTIME_DISTS = (
    ("tensorrt_rtx", "tensorrt-rtx", ("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx")),
    ("tensorrt", "tensorrt", ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")),
    ("tensorrt_lean", "tensorrt", ("tensorrt-lean", "tensorrt-lean-cu13", "tensorrt-lean-cu12")),
    ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
)


def installed_runtimes() -> Dict[str, str]:
    """TensorRT runtimes importable here, by product, with versions; nothing is imported
    (tensorrt_rtx loads a 234 MB library). Known distribution names are asked first (ms);
    scanning every installed package's metadata (0.2 s, a tenth of a 2 GiB verify) is the
    fallback for a runtime installed under another name."""
    from importlib import metadata, util

    found = {}  # type: Dict[str, str]
    dists = None
    for module, product, names in _RUNTIME_DISTS:
        if product in found:
            continue
        try:
            if util.find_spec(module) is None:
                continue
        except (ImportError, ValueError):
            continue
        for dist in names:
            try:
                found[product] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            if dists is None:
                dists = _packages_distributions()
            for dist in dists.get(module, []):
                try:
                    found[product] = metadata.version(dist)
                    break
                except metadata.PackageNotFoundError:
                    continue
    return found


class HostProbe:
    """This host's GPUs and TensorRT runtimes, asked on a worker thread while the bundle streams.

    Why: neither the driver query (cuInit: 0.1 to 1 s on a GPU host) nor the runtime lookup
    (package metadata: tens of ms) depends on the bundle's bytes, so neither has to wait for the
    pass to end. The pipeline starts one only after a trusted signature has been checked, so a
    bundle refused before that costs nothing more; unthreaded runs ask at the end instead."""

    def __init__(self) -> None:
        self._answer = None  # type: Any
        self._thread = threading.Thread(target=self._ask, name="bundle-host-probe", daemon=True)
        self._thread.start()

    def _ask(self) -> None:
        try:
            self._answer = (query_gpus(), installed_runtimes())
        except BaseException as e:  # noqa: BLE001 - handed to the thread that asks for the answer
            self._answer = e

    def wait(self) -> None:
        self._thread.join()

    def answer(self) -> Tuple[List[GpuReport], Dict[str, str]]:
        self._thread.join()
        if isinstance(self._answer, BaseException):
            raise self._answer
        return self._answer


def host_report(manifest: Optional[Manifest], engines: List[EngineReport], required: bool = False,
                probe: Optional[HostProbe] = None) -> HostReport:
    gpus, runtimes = probe.answer() if probe is not None else (query_gpus(), installed_runtimes())
    rep = HostReport(gpus=gpus, runtimes=runtimes, required=required)
    for er in engines:
        header = er.header
        product = header.product if header else er.backend
        version = header.version if header else er.backend_version
        ccs = (header.cc if header and header.cc is not None else ([er.cc] if er.cc else []))
        if er.backend == "onnxruntime":
            ort = runtimes.get("onnxruntime")
            er.runnable_here = ort is not None
            er.reason = f"onnxruntime {ort} on the CPU" if ort else "no onnxruntime installed"
            if ort:
                rep.runnable.append(er.path)
            continue
        rt = runtimes.get(product)
        if rt is None:
            er.runnable_here, er.reason = False, f"no {product} runtime installed"
        elif not version_matches(version, rt):
            er.runnable_here, er.reason = False, f"engine needs {product} {version}, host has {rt}"
        elif not gpus:
            er.runnable_here, er.reason = False, "no GPU on this host"
        elif not any(g.cc in ccs for g in gpus):
            er.runnable_here, er.reason = False, f"engine is for compute capability {', '.join(ccs)}; host GPUs are {', '.join(g.cc for g in gpus)}"
        else:
            er.runnable_here, er.reason = True, "matches a GPU and runtime on this host"
            rep.runnable.append(er.path)
    return rep


# == host state (rollback and freeze protection) ===============================================
#
# A signature proves who made a bundle, not that it is the newest one: an attacker who holds the
# stick can hand a host an older, validly signed bundle (a rollback to a version with a known
# bug), a different bundle under a version the host already runs, or keep replaying an old one
# forever (a frozen feed). The host therefore remembers, per bundle name, the highest version it
# accepted, the signed content digest of every version it accepted, and the newest seal time
# (the manifest's `created`) it has seen, in one JSON file the operator names (--state FILE or
# BUNDLE_STATE; there is no implicit default, so a verdict never depends on a file nobody asked
# for). docs/security.md ("Rollback and freeze") says what this protects against and what not.
#
# The file is only ever replaced whole (temporary file, fsync, rename, fsync of the directory),
# so a reader without the lock always sees a complete file; writers hold an exclusive flock on
# FILE.lock, beside it, from reading the state to writing it. A file that does not parse is
# refused (exit 3), never reset: resetting it would silently drop the very protection it holds.

STATE_ENV = "BUNDLE_STATE"
STATE_FORMAT = "trt-bundler-state/1"
MAX_STATE_SIZE = 16 << 20
_CREATED_RE = re.compile(r"[0-9]{4}-[0-9]{2}-[0-9]{2}T[0-9]{2}:[0-9]{2}:[0-9]{2}Z\Z")
_CREATED_FORMAT = "%Y-%m-%dT%H:%M:%SZ"
_DURATION_RE = re.compile(r"([0-9]{1,12})([smhdw]?)\Z")
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


class RollbackError(VerificationError):
    """An authentic bundle that this host's state refuses (exit 18): a lower version than one
    accepted here, another bundle under an accepted version, or a seal older than --max-age
    allows. A class of its own, so that a script can tell "old" from "forged"."""

    code = ExitCode.ROLLBACK


class StateFileError(BundleError):
    """The state file cannot be read or is not a state file (exit 3). Never reset silently."""

    code = ExitCode.INPUT


class StateWriteError(BundleError):
    """The state file, its lock or its temporary file cannot be written (exit 6)."""

    code = ExitCode.OUTPUT


def version_key(text: str) -> Tuple[Any, ...]:
    """Sort key giving semantic-versioning precedence (semver.org 2.0, section 11): the one
    ordering rule for bundle versions, used by the host state and by the library.

    MAJOR, MINOR and PATCH compare numerically; a pre-release sorts before its release; pre-release
    identifiers compare left to right, numeric ones numerically and below alphanumeric ones, which
    compare in ASCII order; a longer list of equal leading identifiers is higher; build metadata
    is ignored. Raises `InputError` for a string that is not a semantic version.
    """
    check_version(text)
    m = _SEMVER_RE.match(text)
    assert m is not None
    pre = m.group("prerelease")
    if pre is None:
        tail = (1,)  # type: Tuple[Any, ...]
    else:
        tail = (0, tuple((0, int(i), "") if i.isdigit() else (1, 0, i) for i in pre.split(".")))
    return (int(m.group("major")), int(m.group("minor")), int(m.group("patch"))) + tail


def compare_versions(a: str, b: str) -> int:
    """-1, 0 or 1 as version ``a`` has lower, equal or higher precedence than ``b``."""
    ka, kb = version_key(a), version_key(b)
    return (ka > kb) - (ka < kb)


def parse_duration(text: Any) -> int:
    """``--max-age``: seconds, or a number with s, m, h, d or w (``90d``, ``12h``). Raises
    `UsageError`: a duration is something the operator typed."""
    m = _DURATION_RE.match(str(text).strip())
    if m is None:
        raise UsageError(f"--max-age {text!r}: give a duration such as 3600, 90m, 12h, 30d or 2w")
    return int(m.group(1)) * _DURATION_UNITS[m.group(2)]


def parse_created(text: Any) -> Optional[int]:
    """A manifest's `created` (UTC, ``YYYY-MM-DDTHH:MM:SSZ``, as `bundle seal` writes it) in
    seconds since the epoch, or None if it is not in that form."""
    if not isinstance(text, str) or not _CREATED_RE.match(text):
        return None
    try:
        return calendar.timegm(time.strptime(text, _CREATED_FORMAT))
    except (ValueError, OverflowError):
        return None


def _show_duration(seconds: int) -> str:
    for unit, size in (("w", 7 * 86400), ("d", 86400), ("h", 3600), ("m", 60)):
        if seconds and seconds % size == 0:
            return f"{seconds // size}{unit}"
    return f"{seconds}s"


@dataclass
class StateEntry:
    """What a host remembers about one bundle name."""

    name: str
    version: str  # the highest version accepted here
    content_digest: str  # that version's signed content digest
    newest_created: Optional[str]  # the newest seal time seen for this name (freshness)
    accepted: Dict[str, str] = field(default_factory=dict)  # every version accepted -> its digest
    updated: Optional[str] = None  # host clock at the last record: for people, never compared


@dataclass
class HostState:
    bundles: Dict[str, StateEntry] = field(default_factory=dict)
    log: List[Dict[str, Any]] = field(default_factory=list)  # append-only: every --allow-downgrade used

    def to_dict(self) -> Dict[str, Any]:
        bundles = {}
        for name in sorted(self.bundles):
            d = dataclasses.asdict(self.bundles[name])
            del d["name"]
            bundles[name] = d
        return {"format": STATE_FORMAT, "bundles": bundles, "log": self.log}


@dataclass
class StateOptions:
    """What the caller asked of the host state: where it is, whether to record an accepted
    bundle, whether a lower version may pass (logged when recorded), and a freshness window."""

    path: Path
    record: bool = False
    allow_downgrade: bool = False
    max_age: Optional[int] = None  # seconds


@dataclass
class StateReport:
    """The host state's part of a verify report."""

    path: str
    previous_version: Optional[str]  # the highest version accepted here before this bundle
    downgrade: bool  # lower than previous_version, let through by --allow-downgrade
    recorded: bool  # written to the state file


def state_options(path: Optional[str], record: bool = False, allow_downgrade: bool = False,
                  max_age: Optional[int] = None) -> Optional[StateOptions]:
    """The host state a command uses: ``--state``, else ``BUNDLE_STATE``, else none (the flags
    that need one are then a usage error rather than silently doing nothing)."""
    chosen = path or os.environ.get(STATE_ENV) or None
    if chosen is None:
        wanted = [f for f, on in (("--record", record), ("--allow-downgrade", allow_downgrade),
                                  ("--max-age", max_age is not None)) if on]
        if wanted:
            raise UsageError(f"{', '.join(wanted)} needs a host state file: pass --state FILE or set {STATE_ENV}")
        return None
    return StateOptions(Path(chosen), record, allow_downgrade, max_age)


def _state_error(path: Path, why: str) -> StateFileError:
    return StateFileError(f"{path}: not a usable host state file ({why}); repair or restore it "
                          f"(it is never reset automatically: that would drop its rollback protection)")


def _parse_state(doc: Any, path: Path) -> HostState:
    def need(cond: bool, why: str) -> None:
        if not cond:
            raise _state_error(path, why)

    need(isinstance(doc, dict), "not a JSON object")
    need(doc.get("format") == STATE_FORMAT, f"format is not {STATE_FORMAT!r}")
    need(set(doc) == {"format", "bundles", "log"}, "unexpected or missing top-level keys")
    bundles, log = doc["bundles"], doc["log"]
    need(isinstance(bundles, dict) and isinstance(log, list), "bundles is not an object or log not a list")
    need(all(isinstance(e, dict) for e in log), "a log entry is not an object")
    state = HostState(log=log)
    keys = {"version", "content_digest", "newest_created", "accepted", "updated"}
    for name, e in bundles.items():
        where = f"bundles[{name!r}]"
        try:
            check_bundle_name(name)
        except InputError:
            need(False, f"{where}: not a bundle name")
        need(isinstance(e, dict) and set(e) == keys, f"{where}: unexpected or missing keys")
        acc = e["accepted"]
        need(isinstance(acc, dict) and all(isinstance(d, str) and _HEX64.fullmatch(d) for d in acc.values()),
             f"{where}.accepted: not an object of content digests")
        for v in list(acc) + [e["version"]]:
            try:
                check_version(v)
            except InputError:
                need(False, f"{where}: {v!r} is not a semantic version")
        need(isinstance(e["content_digest"], str) and acc.get(e["version"]) == e["content_digest"],
             f"{where}: version and content_digest do not match accepted")
        need(all(compare_versions(v, e["version"]) <= 0 for v in acc), f"{where}: version is not the highest accepted")
        need(e["newest_created"] is None or parse_created(e["newest_created"]) is not None,
             f"{where}.newest_created: not a YYYY-MM-DDTHH:MM:SSZ time")
        need(e["updated"] is None or isinstance(e["updated"], str), f"{where}.updated: not a string")
        state.bundles[name] = StateEntry(name, e["version"], e["content_digest"], e["newest_created"], dict(acc), e["updated"])
    return state


def load_state(path: Path) -> HostState:
    """Read the state file; a file that does not exist yet is an empty state (a fresh host).
    Raises `StateFileError` for anything else that is not a complete, valid state file."""
    path = Path(path)
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | _O_CLOEXEC)
    except FileNotFoundError:
        return HostState()
    except OSError as e:
        raise _state_error(path, e.strerror or str(e)) from None
    try:
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise _state_error(path, "not a regular file")
        if st.st_size > MAX_STATE_SIZE:
            raise _state_error(path, f"{st.st_size} bytes is over the limit of {MAX_STATE_SIZE}")
        chunks = []
        while True:
            chunk = os.read(fd, CHUNK)
            if not chunk:
                break
            chunks.append(chunk)
    except OSError as e:
        raise _state_error(path, e.strerror or str(e)) from None
    finally:
        os.close(fd)
    try:
        doc = loads_strict(b"".join(chunks))
    except (StrictJSONError, RecursionError, UnicodeDecodeError, ValueError) as e:
        raise _state_error(path, f"not strict JSON: {e}") from None
    return _parse_state(doc, path)


@contextlib.contextmanager
def state_lock(path: Path) -> Any:
    """Hold an exclusive lock on ``PATH.lock`` (created beside the state file, never removed:
    removing a lock file lets two writers lock two different files). Blocks while another
    command holds it; a signal still interrupts the wait. The kernel drops the lock when the
    descriptor is closed, also when the process is killed."""
    try:
        import fcntl
    except ImportError:  # pragma: no cover - Windows
        raise StateWriteError("a host state needs file locking (fcntl), which this platform lacks") from None
    lock = Path(str(path) + ".lock")
    try:
        fd = os.open(lock, os.O_RDWR | os.O_CREAT | _O_CLOEXEC | _O_NOFOLLOW, 0o644)
    except OSError as e:
        raise StateWriteError(f"{lock}: cannot open the host state's lock file ({e.strerror or e})") from None
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _temp_prefix(path: Path) -> str:
    return f".{path.name}.tmp-"


def _prepare_state(path: Path, state: HostState) -> Path:
    """Write the new state to a temporary file beside ``path`` and fsync it; the caller renames
    it into place (`_commit_state`) or removes it. Leftovers of a killed writer are removed first
    (the caller holds the lock, so every temporary file there is a leftover)."""
    path = Path(path)
    directory = path.parent
    try:
        for old in os.listdir(directory):
            if old.startswith(_temp_prefix(path)):
                os.unlink(directory / old)
    except OSError:
        pass  # a leftover that cannot be removed costs disk space, not correctness
    try:
        mode = stat.S_IMODE(os.stat(path).st_mode)
    except OSError:
        mode = 0o644  # readable by every operator account: checks without --record need no lock
    data = (json.dumps(state.to_dict(), indent=2, sort_keys=True, ensure_ascii=True) + "\n").encode("ascii")
    tmp = directory / f"{_temp_prefix(path)}{os.getpid()}-{os.urandom(4).hex()}"
    try:
        fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | _O_NOFOLLOW | _O_CLOEXEC, 0o600)
    except OSError as e:
        raise StateWriteError(f"{path}: cannot write the host state ({e.strerror or e})") from None
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view):]
            os.fchmod(fd, mode)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        _unlink_quietly(tmp)
        if isinstance(e, OSError):
            raise StateWriteError(f"{path}: cannot write the host state ({e.strerror or e})") from None
        raise
    return tmp


def _commit_state(tmp: Path, path: Path) -> None:
    try:
        os.replace(tmp, path)
        dfd = os.open(Path(path).parent, os.O_RDONLY | os.O_DIRECTORY | _O_CLOEXEC)
        try:
            os.fsync(dfd)
        finally:
            os.close(dfd)
    except OSError as e:
        raise StateWriteError(f"{path}: cannot replace the host state ({e.strerror or e})") from None


def _unlink_quietly(p: Path) -> None:
    try:
        os.unlink(p)
    except OSError:
        pass


def check_freshness(state_entry: Optional[StateEntry], created: Optional[str], max_age_seconds: int) -> None:
    """Refuse a bundle sealed more than ``max_age_seconds`` before the newest seal time this host
    has seen for its name (a frozen feed replaying an old, validly signed bundle forever).

    It never reads the host clock: the reference is the newest signed `created` seen, so a wrong
    host clock neither refuses good bundles nor lets stale ones through. A first bundle of a name
    has nothing to be compared with and passes. Raises `RollbackError`.
    """
    if state_entry is None or state_entry.newest_created is None:
        return
    newest = parse_created(state_entry.newest_created)
    mine = parse_created(created)
    if newest is None:  # pragma: no cover - _parse_state refuses such a file
        return
    name = state_entry.name
    if mine is None:
        raise RollbackError(f"{name}: seal time {created!r} is not a YYYY-MM-DDTHH:MM:SSZ time; its freshness cannot be checked")
    if mine < newest - max_age_seconds:
        raise RollbackError(
            f"{name} sealed {created} is more than {_show_duration(max_age_seconds)} (--max-age) older than the newest "
            f"{name} seen on this host (sealed {state_entry.newest_created}): a frozen or replayed feed?"
        )


def check_rollback(state_entry: Optional[StateEntry], version: str, content_digest: str, allow_downgrade: bool) -> bool:
    """Refuse a version lower than the highest accepted here (unless ``allow_downgrade``), and a
    version of equal precedence to one accepted here with other contents (always: a published
    version never changes, and no flag makes two different bundles the same version).
    Returns True when it let a downgrade through. Raises `RollbackError`."""
    if state_entry is None:
        return False
    name = state_entry.name
    for v, digest in sorted(state_entry.accepted.items()):
        if compare_versions(v, version) == 0 and digest != content_digest:
            raise RollbackError(
                f"version {version} of {name} was accepted on this host with content digest {digest}; "
                f"this bundle has {content_digest} (the same version with other contents is never accepted)"
            )
    if compare_versions(version, state_entry.version) < 0:
        if not allow_downgrade:
            raise RollbackError(
                f"version {version} of {name} is older than {state_entry.version} accepted on this host "
                f"(content digest {state_entry.content_digest[:16]}...); pass --allow-downgrade to accept it anyway"
            )
        return True
    return False


def _user() -> Dict[str, Any]:
    who = {"uid": os.getuid() if hasattr(os, "getuid") else None, "user": None}  # type: Dict[str, Any]
    try:
        import pwd

        who["user"] = pwd.getpwuid(os.getuid()).pw_name
    except (ImportError, KeyError, OSError):
        pass
    return who


def record_accepted(state: HostState, name: str, version: str, content_digest: str, created: Optional[str],
                    downgrade: bool, previous: Optional[str], expired: Optional[List[str]] = None) -> None:
    """Add an accepted bundle to ``state`` (in memory): the highest version only moves up, every
    accepted version keeps its digest, the newest seal time only moves forward, and each
    override is appended to the log: a downgrade let through by --allow-downgrade, an expired
    signature accepted by --allow-expired (``expired``: those signatures' expiry times)."""
    now = time.strftime(_CREATED_FORMAT, time.gmtime())
    entry = state.bundles.get(name)
    if entry is None:
        entry = state.bundles[name] = StateEntry(name, version, content_digest, None)
    elif compare_versions(version, entry.version) > 0:
        entry.version, entry.content_digest = version, content_digest
    entry.accepted[version] = content_digest
    mine = parse_created(created)
    if mine is not None and (entry.newest_created is None or mine > (parse_created(entry.newest_created) or 0)):
        entry.newest_created = created
    entry.updated = now
    if downgrade:
        state.log.append(dict({"time": now, "event": "downgrade-allowed", "name": name, "from_version": previous,
                               "to_version": version, "content_digest": content_digest, "pid": os.getpid()}, **_user()))
    if expired:
        state.log.append(dict({"time": now, "event": "expired-allowed", "name": name, "version": version,
                               "expired": sorted(expired), "content_digest": content_digest, "pid": os.getpid()},
                              **_user()))


def apply_host_state(report: VerifyReport, options: StateOptions, publish: Optional[Callable[[], None]] = None) -> None:
    """Check a successfully verified bundle against the host state and, with ``options.record``,
    remember it. A refusal turns the report into a failure (exit 18); nothing is written then.

    With ``record``, the lock on the state file is held from reading it to replacing it, so two
    commands never lose each other's record. ``publish`` (extraction's rename into place) runs
    inside, after the checks and once the new state is written to a temporary file, and the state
    is replaced only after it: a bundle is recorded only when it was fully accepted, and a
    refused one is never published. Raises `StateFileError`/`StateWriteError` (exit 3/6) for
    the state file itself, and whatever ``publish`` raises.
    """
    if not report.ok:
        return
    assert report.name is not None and report.version is not None and report.content_digest is not None
    lock = state_lock(options.path) if options.record else contextlib.nullcontext()
    with lock:
        state = load_state(options.path)
        entry = state.bundles.get(report.name)
        try:
            downgrade = check_rollback(entry, report.version, report.content_digest, options.allow_downgrade)
            # --max-age and the trust policy rule's max_age: the stricter one applies
            ages = [a for a in (options.max_age, report.policy.max_age if report.policy else None) if a is not None]
            if ages:
                check_freshness(entry, report.created, min(ages))
        except RollbackError as e:
            report.ok, report.exit_code = False, int(e.code)
            report.error = Failure(int(e.code), e.failure_class, e.member, e.message)
            return
        previous = entry.version if entry is not None else None
        report.host_state = StateReport(str(options.path), previous, downgrade, False)
        if not options.record:
            if publish is not None:
                publish()
            return
        expired = [sr.expires for sr in report.signers if report.expired_accepted and sr.counted and sr.expires]
        record_accepted(state, report.name, report.version, report.content_digest, report.created, downgrade, previous,
                        [e for e in expired if e is not None and expires_epoch(e) < time.time()])
        tmp = _prepare_state(options.path, state)
        try:
            if publish is not None:
                publish()
            _commit_state(tmp, options.path)
        finally:
            _unlink_quietly(tmp)  # gone after the rename; removed if anything above failed
        report.host_state.recorded = True


# == split bundles: part sets (bundle split/join/copy; docs/bundle-format.md section 13) =

#
# A bundle too large for its medium is cut by `bundle split` into numbered parts: plain byte
# ranges of the tar, so `cat` of the parts in order is the bundle, byte for byte. A part index,
# signed like the bundle (a model-signing/DSSE signature file, checked under the same trust or
# policy), lists each part's size and SHA-256 and the whole bundle's digest. Everything needed to
# judge a part set is here, so `bundle verify/extract/run/join` and this file agree on it.

PARTS_FORMAT = "trt-bundle-parts/1"
PARTS_PREDICATE_TYPE = "https://trt-bundler/part-index/v1"  # not model-signing's: never a bundle signature
PART_INDEX_SUFFIX = ".parts.json"
MAX_PARTS = 4096
MAX_PART_INDEX_SIZE = 4 << 20
_PART_NAME_RE = re.compile(r"(.+)\.([0-9a-f]{12})\.part-([0-9]{3,})-of-([0-9]{3,})\Z")
_USTAR_MAGIC = b"ustar\x0000"


@dataclass
class HeaderMark:
    offset: int  # from the start of the part; a multiple of 512
    name: str  # the header's ustar name field (prefix/name), as text


@dataclass
class PartRecord:
    number: int
    name: str
    offset: int
    size: int
    sha256: str
    first_header: Optional[HeaderMark]
    last_header: Optional[HeaderMark]


@dataclass
class PartBundleRecord:
    name: str
    version: str
    size: int
    content_digest: str


@dataclass
class PartIndexDoc:
    format: str
    split_id: str
    created: str
    part_size: int
    bundle: PartBundleRecord
    parts: List[PartRecord]


@dataclass(frozen=True)
class PartIndex:
    subject: str  # the file the parts make: NAME-VERSION.bundle.tar
    sha256: str  # the whole bundle's SHA-256 (the statement's subject digest)
    doc: PartIndexDoc

    @property
    def root(self) -> str:
        return f"{self.doc.bundle.name}-{self.doc.bundle.version}"


@dataclass
class PartReport:
    number: int
    name: str
    expected_size: int
    expected_sha256: str
    size: Optional[int] = None
    sha256: Optional[str] = None
    # ok | missing | not-a-file | unreadable | size-mismatch | damaged | other-bundle | other-split | pending
    status: str = "pending"
    detail: str = ""  # what is wrong, as the end of "part K of N (NAME) ..."


@dataclass
class PartsReport:
    index: str
    split_id: str
    created: str
    part_size: int
    bundle: str  # NAME-VERSION.bundle.tar, the file the parts make
    bundle_sha256: str
    signer: SignerReport
    parts: List[PartReport] = field(default_factory=list)


def split_id_for(sha256: str, part_size: int) -> str:
    """A split's id: a function of the bundle's bytes and the part size. Splitting a bundle the
    same way twice gives the same names and bytes; any other split of it (another part size, a
    countersigned copy) gets other names, so two splits never overwrite each other's parts."""
    return hashlib.sha256(f"{PARTS_FORMAT}:{sha256}:{part_size}".encode("ascii")).hexdigest()[:12]


def part_file_name(subject: str, split_id: str, number: int, count: int) -> str:
    """``NAME-VERSION.bundle.tar.ID.part-002-of-003``: zero-padded, so `ls` and a shell glob list
    the parts in order (``cat NAME-VERSION.bundle.tar.ID.part-* > NAME-VERSION.bundle.tar``)."""
    width = max(3, len(str(count)))
    return f"{subject}.{split_id}.part-{number:0{width}d}-of-{count:0{width}d}"


def part_index_name(subject: str, split_id: str) -> str:
    return f"{subject}.{split_id}{PART_INDEX_SUFFIX}"


def part_index_for(path: Path) -> Optional[Path]:
    """The part index a path stands for: itself when its name ends in ``.parts.json``; the index
    beside it when it is named like a part (``….ID.part-K-of-N``); else None (a bundle tar)."""
    path = Path(path)
    if path.name.endswith(PART_INDEX_SUFFIX):
        return path
    m = _PART_NAME_RE.match(path.name)
    return path.with_name(part_index_name(m.group(1), m.group(2))) if m else None


def parse_part_index(payload: bytes, where: str) -> PartIndex:
    """A part index's statement (section 13.2), checked in full: strict JSON, the schema, and a
    layout with nothing left to interpretation (parts numbered from 1, each ``part_size`` bytes
    but the last, in order, covering the bundle exactly, named by the naming rule, the split id
    derived from the digest and the part size). Any fault is [parts]. The signature over it is
    `load_part_index`'s; `bundle copy` reads an index with this alone (it judges no trust)."""
    def bad(msg: str) -> PartsError:
        return PartsError(f"{where}: not a usable part index ({msg})", member=where)

    try:
        st = loads_strict(payload)
        if not isinstance(st, dict):
            raise ValueError("not a JSON object")
        if st.get("_type") != STATEMENT_TYPE:
            raise ValueError(f"statement type {st.get('_type')!r}")
        if st.get("predicateType") != PARTS_PREDICATE_TYPE:
            raise ValueError(f"predicate type {st.get('predicateType')!r}")
        subjects = st["subject"]
        if not isinstance(subjects, list) or len(subjects) != 1:
            raise ValueError("expected one subject")
        subject, digest = subjects[0]["name"], subjects[0]["digest"]["sha256"]
        if not isinstance(subject, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest):
            raise ValueError("bad subject")
        doc = _convert(PartIndexDoc, st["predicate"], "predicate")
    except RecursionError:
        raise bad("nested too deeply") from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:  # StrictJSONError, SchemaError too
        raise bad(str(e)) from None
    if doc.format != PARTS_FORMAT:
        raise bad(f"format {doc.format!r}; this verifier reads {PARTS_FORMAT}")
    try:
        check_bundle_name(doc.bundle.name)
        check_version(doc.bundle.version)
    except InputError as e:
        raise bad(e.message) from None
    idx = PartIndex(subject, digest, doc)
    total, size, parts = doc.bundle.size, doc.part_size, doc.parts
    if subject != f"{idx.root}.bundle.tar":
        raise bad(f"subject {subject!r} is not {idx.root}.bundle.tar")
    if not _HEX64.fullmatch(doc.bundle.content_digest) or not _CREATED_RE.match(doc.created):
        raise bad("content_digest or created malformed")
    if size <= 0 or size % BLOCK or total <= 0:
        raise bad(f"part size {size} is not a positive multiple of {BLOCK}, or bundle size {total} is not positive")
    count = -(-total // size)
    if count > MAX_PARTS or len(parts) != count:
        raise bad(f"{len(parts)} parts for {total} bytes in parts of {size} (at most {MAX_PARTS} parts)")
    if doc.split_id != split_id_for(digest, size):
        raise bad(f"split id {doc.split_id!r} is not the one of this bundle and part size")
    for k, rec in enumerate(parts):
        want_size = min(size, total - k * size)
        if (rec.number, rec.offset, rec.size) != (k + 1, k * size, want_size):
            raise bad(f"part #{k + 1}: number, offset or size out of sequence")
        if rec.name != part_file_name(subject, doc.split_id, k + 1, count):
            raise bad(f"part {k + 1}: name {rec.name!r} breaks the naming rule")
        if not _HEX64.fullmatch(rec.sha256):
            raise bad(f"part {k + 1}: sha256 is not 64 lower-case hex digits")
        for m in (rec.first_header, rec.last_header):
            if m is not None and (m.offset < 0 or m.offset % BLOCK or m.offset + BLOCK > rec.size):
                raise bad(f"part {k + 1}: a header mark outside the part")
    return idx


def load_part_index(path: Path, policy: TrustPolicy, ecdsa: Optional[Ecdsa] = None,
                    now: Optional[float] = None) -> Tuple[PartIndex, SignerReport]:
    """Read a part index and check its signature under ``policy`` (section 13.2).

    The signature is checked before anything in the statement is read, with the same keys and
    rules as a bundle's (`_candidate_keys`, `_key_reason`): by a key of the policy, not revoked,
    inside its validity window, allowed by the rule for the bundle's name. One such signature
    suffices, whatever the rule's threshold: the index only locates and identifies parts; the
    bundle itself is verified under the full rule as it streams (docs/security.md).
    """
    where = str(path)
    raw = read_bounded(Path(path), MAX_PART_INDEX_SIZE, PartsError, "part index")
    sf = parse_signature_file(raw, where)
    candidates = _candidate_keys(sf, policy)
    tk = next((k for k in candidates if verify_signature(sf, k.key, ecdsa)), None)
    if tk is None:
        if candidates:
            under = f"trusted key {candidates[0].key_id[:16]}..." if sf.hint else "any trusted key"
            raise SignatureError(f"{where}: the part index's signature does not verify under {under}", member=where)
        trusted_ids = ", ".join(sorted(k[:16] + "..." for k in policy.keys))
        raise SignatureError(f"{where}: part index signed by {_short_key_id(sf.hint)}, not a trusted key "
                             f"(trusted: {trusted_ids})", member=where)
    idx = parse_part_index(sf.payload, where)
    name = idx.doc.bundle.name
    rule = policy.rule_for(name)
    now = datetime.datetime.now(datetime.timezone.utc).timestamp() if now is None else now
    reason = f"no rule for bundles named {name!r}" if rule is None else _key_reason(policy, tk, name, rule, now)
    if reason:
        raise SignatureError(f"{where}: the part index's signer {tk.key_id[:16]}... does not count: {reason}", member=where)
    return idx, SignerReport(file=Path(path).name, key_id=tk.key_id, trusted=True, valid=True, trust_source=tk.source,
                             name=tk.name, counted=True)


def _header_mark(block: Union[bytes, bytearray], offset: int) -> Optional[HeaderMark]:
    """A 512-byte block that is a tar member header (checksum right, ustar magic; not a PAX
    header), as a landmark; None otherwise."""
    try:
        stored = _octal(bytes(block[148:156]), "checksum", offset)
    except ArchiveError:
        return None
    if stored != sum(block[:148]) + 8 * 0x20 + sum(block[156:]) or block[156:157] in (b"x", b"g"):
        return None
    name, prefix = bytes(block[0:100]).split(b"\0", 1)[0], bytes(block[345:500]).split(b"\0", 1)[0]
    return HeaderMark(offset, (prefix + b"/" + name if prefix else name).decode("utf-8", "replace"))


class HeaderMarks:
    """The first and the last tar member header in a part, at the part's 512-byte boundaries
    (section 13.3). The index records them; a part whose digest is wrong is then told apart:
    headers of another bundle's root (another bundle), headers of this bundle in other places
    (another split), or the recorded ones (this part, damaged). Fed the part's bytes in order,
    in pieces of whole 512-byte blocks (only the last may be shorter; its partial block is not
    looked at), so every reader finds the same marks however it reads."""

    def __init__(self) -> None:
        self.first = None  # type: Optional[HeaderMark]
        self.last = None  # type: Optional[HeaderMark]
        self._pos = 0

    def feed(self, data: Union[bytes, bytearray], length: int) -> None:
        at = data.find(_USTAR_MAGIC, 257, length)
        while at >= 0:
            start = at - 257
            if start % BLOCK == 0 and start + BLOCK <= length:
                mark = _header_mark(data[start:start + BLOCK], self._pos + start)
                if mark is not None:
                    self.first = self.first or mark
                    self.last = mark
            at = data.find(_USTAR_MAGIC, at + 1, length)
        self._pos += length


def _judge_part(pr: PartReport, rec: PartRecord, marks: HeaderMarks, root: str) -> None:
    """Set a read part's status: ok, or what its bytes say it is (section 13.4)."""
    if pr.size == rec.size and pr.sha256 == rec.sha256:
        pr.status, pr.detail = "ok", ""
        return
    first, last = marks.first, marks.last
    foreign = next((m for m in (first, last) if m is not None and m.name.split("/", 1)[0] != root), None)
    if foreign is not None:
        pr.status = "other-bundle"
        pr.detail = (f"holds another bundle's data (a tar header for {foreign.name} at byte {foreign.offset}), "
                     f"not {root}'s: a part of another bundle")
    elif pr.size != rec.size and first is not None and first != rec.first_header:
        pr.status = "other-split"
        pr.detail = (f"is {pr.size} bytes, not {rec.size}, and its tar headers are not where this split has them: "
                     f"a part of another split of {root} (an older split left on the medium?)")
    elif pr.size != rec.size:
        pr.status = "size-mismatch"
        pr.detail = (f"is {pr.size} bytes, the signed part index records {rec.size}: truncated or grown, "
                     "or a part of a split with another part size")
    elif (first is not None or last is not None) and (first, last) != (rec.first_header, rec.last_header):
        pr.status = "other-split"
        pr.detail = (f"holds {root}'s data, but not this split's part {rec.number}: its tar headers are elsewhere "
                     "(a part of another split, e.g. an older split or a countersigned copy, left on the medium?)")
    else:
        pr.status = "damaged"
        pr.detail = "is damaged: its SHA-256 differs from the signed part index"


def _missing_detail(directory: Path, idx: PartIndex, number: int) -> str:
    """"is missing", naming a part of the same number from another split of this bundle found
    beside it (a name, not proof: its bytes are not read)."""
    try:
        names = sorted(os.listdir(directory))
    except OSError:
        names = []
    for n in names:
        m = _PART_NAME_RE.match(n)
        if m and m.group(1) == idx.subject and m.group(2) != idx.doc.split_id and int(m.group(3)) == number:
            return f"is missing ({n} beside it is part {number} of another split of {idx.root}, not of split {idx.doc.split_id})"
    return "is missing"


def _prescan(directory: Path, idx: PartIndex, reports: List[PartReport]) -> None:
    """Before any byte is read: every part is there, a regular file of the recorded size."""
    for pr in reports:
        try:
            st = os.stat(directory / pr.name)
        except FileNotFoundError:
            pr.status, pr.detail = "missing", _missing_detail(directory, idx, pr.number)
            continue
        except OSError as e:
            pr.status, pr.detail = "unreadable", f"cannot be read ({e.strerror})"
            continue
        if not stat.S_ISREG(st.st_mode):
            pr.status, pr.detail = "not-a-file", f"is not a regular file ({_kind(st.st_mode)})"
        else:
            pr.size = st.st_size


class _PartsSource(_Source):
    """A part set's bytes, part after part, as one stream for the tar reader (section 13.4).

    Each part is read once: one buffer feeds the tar reader, the whole bundle's SHA-256, the
    part's own SHA-256, its header marks, and ``tee`` (`bundle join`'s output). The digests run on
    worker threads as for a single tar; a small ring of buffers bounds memory. At the end of
    each part its digest is compared with the index; a bad part stops the stream there, so no
    byte after it reaches the reader. `drain` reads what is left (once), so that a failed
    verification still judges every part. A missing part is never skipped over while streaming.
    """

    RING = 3

    def __init__(self, directory: Path, idx: PartIndex, reports: List[PartReport], threaded: bool,
                 tee: Optional[Callable[[memoryview], None]] = None) -> None:
        self.hasher = _WindowHasher(threaded)
        self._dir, self._idx, self._reports, self._threaded, self._tee = directory, idx, reports, threaded, tee
        self._ring = [bytearray(CHUNK) for _ in range(self.RING)]
        self._busy = [[] for _ in range(self.RING)]  # type: List[List[threading.Event]]
        self._slot = 0
        self._cur = memoryview(b"")
        self._off = 0
        self.pos = 0
        self._k = -1  # the part being read
        self._open = False  # part self._k is open and not judged yet
        self._f = None  # type: Any
        self._left = 0
        self._part_hash = None  # type: Optional[_WindowHasher]
        self._marks = HeaderMarks()
        self._skip = False  # drain: parts already judged bad before reading are passed over

    def _refill(self) -> bool:
        while True:
            while self._left == 0:
                if self._open:
                    self._end_part()
                if self._k + 1 >= len(self._reports):
                    return False
                self._begin_part(self._k + 1)
            if self._read_chunk():
                return True

    def _stop(self, pr: PartReport, status: str, detail: str) -> PartsError:
        pr.status, pr.detail = status, detail
        self._close_part()
        return _parts_failure(self._idx, self._reports, only=pr)

    def _begin_part(self, k: int) -> None:
        self._k = k
        pr = self._reports[k]
        if pr.status != "pending":  # judged before reading (missing, not a file): never read
            if self._skip:
                return
            raise _parts_failure(self._idx, self._reports, only=pr)
        try:
            fd = os.open(str(self._dir / pr.name), os.O_RDONLY | getattr(os, "O_NONBLOCK", 0) | _O_CLOEXEC
                         | getattr(os, "O_BINARY", 0))
        except FileNotFoundError:
            raise self._stop(pr, "missing", "is missing (it disappeared while the parts were read)") from None
        except OSError as e:
            raise self._stop(pr, "unreadable", f"cannot be read ({e.strerror})") from None
        self._f = os.fdopen(fd, "rb", buffering=0)
        self._open = True
        st = os.fstat(fd)
        if not stat.S_ISREG(st.st_mode):
            raise self._stop(pr, "not-a-file", f"is not a regular file ({_kind(st.st_mode)})")
        pr.size = st.st_size
        self._left = min(st.st_size, pr.expected_size)  # never more than the index says
        self._part_hash = _WindowHasher(self._threaded)
        self._marks = HeaderMarks()

    def _read_chunk(self) -> int:
        pr = self._reports[self._k]
        slot, buf = self._slot, self._ring[self._slot]
        for done in self._busy[slot]:
            done.wait()
        want = min(len(buf), self._left)
        view = memoryview(buf)[:want]
        got = 0
        try:
            while got < want:
                n = self._f.readinto(view[got:])
                if not n:
                    break
                got += n
        except OSError as e:
            raise self._stop(pr, "unreadable", f"cannot be read (at byte {self.pos}: {e.strerror or e})") from None
        if got < want:  # it shrank since it was measured
            pr.size = os.fstat(self._f.fileno()).st_size
            self._left = got  # what was read is judged below
        view = view[:got]
        whole, part = threading.Event(), threading.Event()
        self.hasher.submit(view, whole)
        assert self._part_hash is not None
        self._part_hash.submit(view, part)
        self._busy[slot] = [whole, part]
        self._marks.feed(buf, got)
        if self._tee is not None and got:
            self._tee(view)
        self._cur, self._off = view, 0
        self._left -= got
        self._slot = (slot + 1) % self.RING
        return got

    def _close_part(self) -> None:
        self._open = False
        self._left = 0
        f, self._f = self._f, None
        if f is not None:
            f.close()
        if self._part_hash is not None:
            self._part_hash.close()

    def _end_part(self) -> None:
        pr = self._reports[self._k]
        assert self._part_hash is not None and self._f is not None
        size_now = os.fstat(self._f.fileno()).st_size
        pr.sha256 = self._part_hash.hexdigest()
        self._close_part()
        if size_now != pr.size:
            pr.size = size_now
        _judge_part(pr, self._idx.doc.parts[self._k], self._marks, self._idx.root)
        if pr.status != "ok":
            raise _parts_failure(self._idx, self._reports, only=pr)

    def drain(self) -> None:
        """Read (and judge) every byte not read yet, never raising for a bad part: after a
        failure, the report still says which parts are good and which are not."""
        self._skip = True
        self._cur, self._off = memoryview(b""), 0
        while True:
            try:
                if not self._refill():
                    return
            except PartsError:
                continue
            self.pos += len(self._cur)
            self._cur = memoryview(b"")

    def close(self) -> None:
        self._close_part()
        self.hasher.close()
        self._cur = memoryview(b"")


def _parts_failure(idx: PartIndex, reports: List[PartReport], only: Optional[PartReport] = None) -> PartsError:
    """One line naming the first bad part by number (``only``: just that one, while streaming),
    then how many more are bad and which."""
    count = len(reports)
    bad = [only] if only is not None else [p for p in reports if p.status not in ("ok", "pending")]
    first = bad[0]
    msg = f"part {first.number} of {count} ({first.name}) {first.detail}"
    if len(bad) > 1:
        more = ", ".join(f"part {p.number} {p.status}" for p in bad[1:8]) + (", ..." if len(bad) > 8 else "")
        msg += f"; also bad: {more}"
    return PartsError(msg, member=first.name)


def _run_parts(path: Path, st: "_State", limits: Limits, threaded: bool,
               progress: Optional[Callable[[int, int], None]], tee: Optional[Callable[[memoryview], None]]) -> None:
    """Verify a part set (section 13.4): the index's signature; every part present with its
    size; then the bundle through the tar pipeline, part after part, each part's digest checked
    at its end. A bad part outranks what the tar reader made of its bytes: the message names it."""
    index_path = part_index_for(path)
    assert index_path is not None
    idx, signer = load_part_index(index_path, st.policy, st.ecdsa, _now(st))
    doc = idx.doc
    reports = [PartReport(r.number, r.name, r.size, r.sha256) for r in doc.parts]
    st.report.parts = PartsReport(str(index_path), doc.split_id, doc.created, doc.part_size, idx.subject, idx.sha256,
                                  signer, reports)
    directory = index_path.parent
    _prescan(directory, idx, reports)
    src = _PartsSource(directory, idx, reports, threaded, tee)
    failure = None  # type: Optional[VerificationError]
    try:
        if all(p.status == "pending" for p in reports):
            reader = StrictTarReader(None, limits, threaded, source=src)
            if progress is not None:
                st.tick = lambda: progress(reader.position, doc.bundle.size)
            try:
                _run(reader, st.policy.keys, st)
            except VerificationError as e:
                failure = e
            except OSError as e:
                failure = ArchiveError(f"read error at byte {reader.position}: {e.strerror or e}")
        src.drain()
        if any(p.status != "ok" for p in reports):
            raise _parts_failure(idx, reports)
        if failure is not None:
            raise failure
        st.report.sha256 = src.hasher.hexdigest()
    finally:
        src.close()
    rep = st.report
    if rep.sha256 != idx.sha256:
        raise PartsError(f"{index_path}: every part matches, but together they are not the bundle the index names "
                         f"(SHA-256 {rep.sha256}, not {idx.sha256})", member=str(index_path))
    if (rep.name, rep.version, rep.content_digest) != (doc.bundle.name, doc.bundle.version, doc.bundle.content_digest):
        raise PartsError(f"{index_path}: the parts hold {rep.name} {rep.version}, but the index names "
                         f"{doc.bundle.name} {doc.bundle.version}", member=str(index_path))


def part_lines(rep: VerifyReport) -> List[str]:
    """The part set's lines of the human report (both verifiers): how many parts match, who
    signed the index, and one line per bad part. Every string from an index or a file name is
    escaped."""
    p = rep.parts
    if p is None:
        return []
    ok = sum(1 for r in p.parts if r.status == "ok")
    out = [printable(f"parts:   {ok}/{len(p.parts)} match the signed part index {p.index} (split {p.split_id} "
                     f"of {p.created}, signed by {shown_key_id(p.signer.key_id)})")]
    for r in p.parts:
        if r.status not in ("ok", "pending"):
            out.append(printable(f"part {r.number} [{r.status}]: {r.name} {r.detail}"))
    return out


# == signing ledger and signed audit reports (docs/ledger.md, docs/auditors.md) ================

# A signing ledger is a local, append-only JSON Lines file on the machine(s) that seal and sign
# releases: one line per signing (`bundle seal`, `create`, `sign`), each naming the SHA-256 of
# the line before it, so that changing, removing or inserting a line breaks every later link.
# Each signature's statement records the head it extended (`predicate.ledger`, parsed below),
# so an auditor can tell a signature made in the official process (it has an entry, and its
# recorded head is in the chain) from one made elsewhere with the same key. The rules live here,
# beside the other verification rules, so that the writer (bundler/ledger.py), `bundle ledger
# verify` and `bundle audit` share them, and a closed host can check a ledger with Python alone.

LEDGER_FORMAT = "trt-bundler-ledger/1"
MAX_LEDGER_LINE = 64 << 10  # one entry is ~1 KiB; a longer line is not an entry
LEDGER_GENESIS_PREV = "0" * 64  # the init entry's `prev`: it has no predecessor
LEDGER_EVENTS = ("seal", "sign")
_LEDGER_ID_RE = re.compile(r"[0-9a-f]{32}\Z")


class LedgerError(BundleError):
    """The ledger's chain is broken (or has no entry with a head it must contain)."""

    code = ExitCode.LEDGER


@dataclass
class LedgerHead:
    """A position in one ledger: its id, an entry's number and that entry's line hash."""

    id: str  # the ledger's id: 32 lowercase hex, chosen at random by its init entry
    seq: int  # the entry's number (0: the init entry)
    sha256: str  # SHA-256 of that entry's line, without its newline


@dataclass
class LedgerEntry:
    """One line of a ledger. Line 1 is ``event: "init"`` (with ``format``); every later line
    is a signing (``seal`` or ``sign``) with the signing fields. Unknown members are ignored
    (a later revision may add some); the line's hash covers them all the same."""

    seq: int
    prev: str  # SHA-256 of the previous line (LEDGER_GENESIS_PREV for the init entry)
    time: str  # UTC, YYYY-MM-DDTHH:MM:SSZ, the writer's clock
    event: str  # "init", "seal" or "sign"
    ledger: str  # the ledger's id
    format: Optional[str] = None  # the init entry: LEDGER_FORMAT
    key_id: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    bundle_sha256: Optional[str] = None  # the whole tar written by this signing
    content_digest: Optional[str] = None  # the signed subject digest (unchanged by countersigning)
    signature: Optional[str] = None  # bundle-relative path of the signature file made
    signature_sha256: Optional[str] = None  # SHA-256 of that signature file: names this very signature
    extends: Optional[LedgerHead] = None  # the head recorded in the signed statement
    expires: Optional[str] = None
    host: str = ""
    user: str = ""
    tool: str = ""


@dataclass
class LedgerBreak:
    seq: int  # the number the broken entry has (or should have): its line number - 1
    line: int
    reason: str


@dataclass
class LedgerCheck:
    """What `check_ledger` found: every entry before the first broken one, their line hashes,
    the head (the last good entry) and the first break, if any."""

    path: str
    ok: bool = False
    id: Optional[str] = None
    entries: List[LedgerEntry] = field(default_factory=list)
    hashes: List[str] = field(default_factory=list)
    broken: Optional[LedgerBreak] = None

    @property
    def head(self) -> Optional[LedgerHead]:
        if self.id is None or not self.hashes:
            return None
        return LedgerHead(self.id, len(self.hashes) - 1, self.hashes[-1])

    def error(self) -> LedgerError:
        assert self.broken is not None
        b = self.broken
        return LedgerError(f"{self.path}: line {b.line} (entry {b.seq}): {b.reason}; the chain is broken from this "
                           "entry on (repair or restore the ledger; docs/ledger.md)")


def parse_ledger_head(value: Any) -> LedgerHead:
    """A statement's ``predicate.ledger`` or an entry's ``extends``: an object with ``id`` (32
    lowercase hex), ``seq`` (an integer >= 0) and ``sha256`` (64 lowercase hex). Other members
    are ignored. Raises ValueError (a malformed statement)."""
    head = _convert(LedgerHead, value, "ledger")
    if not _LEDGER_ID_RE.match(head.id) or head.seq < 0 or not _HEX64.fullmatch(head.sha256):
        raise ValueError("ledger head is not {id: 32 hex, seq: integer >= 0, sha256: 64 hex}")
    return head


def ledger_line(entry: Dict[str, Any]) -> bytes:
    """An entry's one canonical spelling: sorted keys, no spaces, ASCII, one LF. Its hash
    (`ledger_hash`) is over these bytes without the LF."""
    return json.dumps(entry, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode("ascii") + b"\n"


def ledger_hash(line: bytes) -> str:
    return hashlib.sha256(line[:-1] if line.endswith(b"\n") else line).hexdigest()


def _ledger_entry(raw: bytes, seq: int, chk: LedgerCheck) -> Tuple[Optional[str], Optional[LedgerEntry]]:
    """``(None, entry)`` when line ``seq + 1`` continues the chain in ``chk``, else
    ``(why not, None)``."""
    if len(raw) > MAX_LEDGER_LINE:
        return f"longer than {MAX_LEDGER_LINE} bytes; not a ledger entry", None
    if not raw.endswith(b"\n"):
        return "incomplete (no newline at its end): a write was cut off", None
    try:
        obj = loads_strict(raw[:-1])
    except StrictJSONError as e:
        return f"not strict JSON ({e})", None
    if not isinstance(obj, dict):
        return "not a JSON object", None
    try:
        canonical = ledger_line(obj) == raw
    except (ValueError, TypeError):  # pragma: no cover - loads_strict returns JSON types only
        canonical = False
    if not canonical:
        return "not in the canonical form (sorted keys, no spaces, ASCII): edited by hand?", None
    try:
        e = _ledger_entry_from(obj)
    except SchemaError as err:
        return str(err), None
    why = _ledger_rules(e, seq, chk)
    return (why, None) if why is not None else (None, e)


_CHANGED_BEFORE = "prev is not the hash of the entry before it"
_ENTRY_REQUIRED = (("seq", int), ("prev", str), ("time", str), ("event", str), ("ledger", str))
_ENTRY_OPTIONAL = ("format", "key_id", "name", "version", "bundle_sha256", "content_digest", "signature",
                   "signature_sha256", "expires")


def _ledger_entry_from(obj: Dict[str, Any]) -> LedgerEntry:
    """`_convert(LedgerEntry, obj)` by hand: the same types and messages, ~50x faster (a ledger
    is read whole before every signing, and `_convert` resolves type hints on every call)."""
    kwargs = {}  # type: Dict[str, Any]
    for name, tp in _ENTRY_REQUIRED:
        if name not in obj:
            raise SchemaError(f"entry: missing field {name!r}")
        v = obj[name]
        if not isinstance(v, tp) or isinstance(v, bool):
            raise SchemaError(f"entry.{name}: expected {'an integer' if tp is int else 'a string'}")
        kwargs[name] = v
    for name in _ENTRY_OPTIONAL:
        v = obj.get(name)
        if v is not None and not isinstance(v, str):
            raise SchemaError(f"entry.{name}: expected a string")
        kwargs[name] = v
    for name in ("host", "user", "tool"):
        v = obj.get(name, "")
        if not isinstance(v, str):
            raise SchemaError(f"entry.{name}: expected a string")
        kwargs[name] = v
    x = obj.get("extends")
    if x is not None:
        if not isinstance(x, dict) or not all(k in x for k in ("id", "seq", "sha256")):
            raise SchemaError("entry.extends: expected an object with id, seq and sha256")
        if not isinstance(x["id"], str) or not isinstance(x["sha256"], str) or not isinstance(x["seq"], int) \
                or isinstance(x["seq"], bool):
            raise SchemaError("entry.extends: id and sha256 are strings, seq an integer")
        kwargs["extends"] = LedgerHead(x["id"], x["seq"], x["sha256"])
    return LedgerEntry(**kwargs)


def _ledger_rules(e: LedgerEntry, seq: int, chk: LedgerCheck) -> Optional[str]:
    if e.seq != seq:
        return f"numbered {e.seq}, expected {seq} (an entry was removed, inserted or moved)"
    expected_prev = LEDGER_GENESIS_PREV if seq == 0 else chk.hashes[-1]
    if e.prev != expected_prev:
        return (_CHANGED_BEFORE if seq else f"the init entry's prev must be {LEDGER_GENESIS_PREV[:8]}...")
    if not _CREATED_RE.match(e.time):
        return f"time {printable(e.time)!r} is not YYYY-MM-DDTHH:MM:SSZ"
    if seq == 0:
        if e.event != "init" or e.format != LEDGER_FORMAT:
            return f"the first entry must be the init entry of a {LEDGER_FORMAT} ledger"
        if not _LEDGER_ID_RE.match(e.ledger):
            return "the ledger id must be 32 lowercase hex digits"
        return None
    if e.ledger != chk.id:
        return "names another ledger id than the init entry"
    if e.event not in LEDGER_EVENTS:
        return f"event {printable(e.event)!r}; a signing entry is {' or '.join(LEDGER_EVENTS)}"
    for label, value in (("key_id", e.key_id), ("bundle_sha256", e.bundle_sha256),
                         ("content_digest", e.content_digest), ("signature_sha256", e.signature_sha256)):
        if not isinstance(value, str) or not _HEX64.fullmatch(value):
            return f"{label} is not 64 lowercase hex digits"
    if not (isinstance(e.name, str) and isinstance(e.version, str) and isinstance(e.signature, str)):
        return "a signing entry needs name, version and signature"
    x = e.extends
    if x is None:
        return "a signing entry needs extends (the head its statement records)"
    if x.id != chk.id or not 0 <= x.seq < seq or x.sha256 != chk.hashes[x.seq]:
        return "extends names no earlier entry of this ledger"
    return None


def check_ledger(f: Any, where: str) -> LedgerCheck:
    """Read a ledger from the binary file ``f`` and check its chain, line by line: each line
    strict, canonical JSON of an entry; numbered from 0 in order; ``prev`` the hash of the line
    before; line 1 the init entry; every later one a signing entry of the same ledger whose
    ``extends`` is an earlier entry. Stops at the first line that breaks a rule (`LedgerBreak`).
    A changed entry is named by the next entry's ``prev``; so the last entry, and lines cut off
    at the end, show only against a head recorded elsewhere (a signed audit report, `bundle
    ledger verify --head`)."""
    chk = LedgerCheck(where)
    line = 0
    while True:
        raw = f.readline(MAX_LEDGER_LINE + 1)
        if not raw:
            break
        line += 1
        why, e = _ledger_entry(raw, line - 1, chk)
        if why == _CHANGED_BEFORE:
            # The line before no longer hashes to what this one recorded: that line was changed
            # (a lone edit of this prev is possible too, but an edit of content is the attack).
            # It is the first entry not to be trusted.
            chk.entries.pop()
            chk.hashes.pop()
            chk.broken = LedgerBreak(line - 2, line - 1, f"its hash is not the prev that entry {line - 1} records: "
                                                         f"this entry (or that prev) was changed")
            if not chk.hashes:
                chk.id = None
            return chk
        if e is None:
            chk.broken = LedgerBreak(line - 1, line, why or "unreadable")
            return chk
        if line == 1:
            chk.id = e.ledger
        chk.entries.append(e)
        chk.hashes.append(ledger_hash(raw))
    if line == 0:
        chk.broken = LedgerBreak(0, 1, "empty: not even the init entry (truncated?)")
        return chk
    chk.ok = True
    return chk


AUDIT_PREDICATE_TYPE = "https://trt-bundler/audit-report/v1"


@dataclass
class SignedFileReport:
    """A file whose detached signature (`FILE.sig`) verified: who signed it, and what."""

    file: str
    signature: str
    key_id: str
    name: str  # the trusted key's name (a policy's), or ""
    subject: str  # the file name the signer gave it (informative: renaming the file is harmless)
    sha256: str
    predicate: Dict[str, Any] = field(default_factory=dict)


def verify_signed_file(data_sha256: str, sig_raw: bytes, where: str, sig_where: str,
                       trusted: Dict[str, TrustedKey], predicate_type: str = AUDIT_PREDICATE_TYPE,
                       ecdsa: "Optional[Ecdsa]" = None) -> SignedFileReport:
    """Check a detached signature over one file (a signed audit report): the signature file
    is a bundle signature's envelope (sigstore bundle v0.3, DSSE, in-toto statement v1, ECDSA
    P-256), its key one of ``trusted``, and its statement has ``predicate_type`` (so a bundle
    signature can never pass for a report's, nor the reverse) and one subject whose SHA-256 is
    ``data_sha256``. SignatureError (11) or DigestError (12) otherwise."""
    sf = parse_signature_file(sig_raw, sig_where)
    candidates = [trusted[sf.hint]] if sf.hint in trusted else ([] if sf.hint else list(trusted.values()))
    signer = next((tk for tk in candidates if verify_signature(sf, tk.key, ecdsa)), None)
    if signer is None:
        if candidates:
            raise SignatureError(f"{sig_where}: signature does not verify under "
                                 f"{'trusted key ' + candidates[0].key_id[:16] + '...' if sf.hint else 'any trusted key'}",
                                 member=sig_where)
        trusted_ids = ", ".join(sorted(k[:16] + "..." for k in trusted))
        raise SignatureError(f"{sig_where}: not signed by a trusted key (signed by {_short_key_id(sf.hint)}; "
                             f"trusted: {trusted_ids})", member=sig_where)
    try:
        st = loads_strict(sf.payload)
        if st.get("_type") != STATEMENT_TYPE or st.get("predicateType") != predicate_type:
            raise ValueError(f"statement type {st.get('_type')!r} / {st.get('predicateType')!r}, "
                             f"not {predicate_type}")
        subjects = st["subject"]
        if not isinstance(subjects, list) or len(subjects) != 1:
            raise ValueError("expected one subject")
        name, digest = subjects[0]["name"], subjects[0]["digest"]["sha256"]
        predicate = st.get("predicate", {})
        if not isinstance(name, str) or not isinstance(digest, str) or not _HEX64.fullmatch(digest) \
                or not isinstance(predicate, dict):
            raise ValueError("bad subject or predicate")
    except RecursionError:  # pragma: no cover - loads_strict bounds nesting
        raise SignatureError(f"{sig_where}: signed statement is malformed (nested too deeply)", member=sig_where) from None
    except (ValueError, KeyError, TypeError, AttributeError, IndexError) as e:
        raise SignatureError(f"{sig_where}: signed statement is malformed ({e})", member=sig_where) from None
    if digest != data_sha256:
        raise DigestError(f"{where}: SHA-256 differs from the digest signed in {sig_where}", member=where)
    return SignedFileReport(where, sig_where, signer.key_id, signer.name, name, digest, predicate)


# == command line (bundler/cli.py `bundle verify`) =============================================

class _Parser(argparse.ArgumentParser):
    def error(self, message: str) -> "typing.NoReturn":  # one line, exit 2, like every other error
        raise UsageError(message)


def _one_line(msg: str) -> str:
    return " ".join(str(msg).split())


def _err_line(cls: str, msg: str) -> None:
    print(f"error [{cls}]: {printable(_one_line(msg))}", file=sys.stderr)


def _fail(e: BaseException, json_mode: bool) -> int:
    if isinstance(e, BundleError):
        code, cls, msg, member = int(e.code), e.failure_class, e.message, e.member
    else:
        code, cls, msg, member = int(ExitCode.INTERNAL), "internal", f"internal error: {type(e).__name__}: {e}", None
    msg = _one_line(msg)
    if json_mode and code != int(ExitCode.USAGE):
        print(json.dumps({"ok": False, "exit_code": code, "error": {"class": cls, "member": member, "message": msg}}, indent=2))
    _err_line(cls, msg)
    return code


def signer_lines(rep: VerifyReport) -> List[str]:
    """One line per signature file: key id, the policy's name for it, valid or not, counted or
    not and why; then the rule that applied. Shared by both verifiers' human reports; every
    string that came from a bundle or a policy is escaped."""
    out = []
    for s in rep.signers:
        if s.valid:
            state = "valid, counted" if s.counted else f"valid, NOT counted: {s.reason}" if s.reason else "valid"
        elif s.valid is False:
            state = f"INVALID, not counted: {s.reason}"
        else:
            state = f"not checked: {s.reason or 'untrusted key'}"
        name = f" ({s.name})" if s.name else ""
        expires = f"  expires {s.expires}" if s.expires else ""
        if s.ledger is not None:
            expires += f"  extends ledger entry {s.ledger.seq}"
        out.append(printable(f"signer:  {shown_key_id(s.key_id)}{name}  [{state}]{expires}"))
    if rep.policy is not None:
        p = rep.policy
        src = "--trust keys" if p.source == "--trust" else f"{p.source} version {p.version}"
        out.append(printable(f"policy:  {src}: rule {p.bundles_rule()}, {len(p.counted)} of {p.threshold} required signatures counted"))
    return out


def _print_report(rep: VerifyReport) -> None:
    if rep.ok:
        print(f"VERIFIED {printable(rep.name)} {printable(rep.version)}  ({printable(rep.bundle)})")
    for line in signer_lines(rep):
        print(line)
    if rep.expired_accepted:
        print("expired: a signature has expired; accepted because of --allow-expired")
    if rep.content_digest:
        print(f"content: {rep.content_digest}")
    if rep.sha256:
        print(f"sha256:  {rep.sha256}")
    ok_files = sum(1 for f in rep.files if f.status == "ok")
    print(f"files:   {ok_files}/{len(rep.files)} match the signed digests")
    for line in part_lines(rep):
        print(line)
    if provenance_line(rep):
        print(provenance_line(rep))
    for e in rep.engines:
        hdr = ("onnx (cpu)" if e.backend == "onnxruntime" else "-") if e.header is None else f"{e.header.product} {e.header.version}" + (" ok" if e.header_ok else " MISMATCH")
        runs = "-" if e.runnable_here is None else ("yes" if e.runnable_here else f"no: {e.reason}")
        print(printable(f"engine:  {e.path.split('/')[-1]}  target {e.target}  cc {e.cc or '-'}  header {hdr}  runs here: {runs}"))
    if rep.host is not None and not rep.host.runnable:
        why = "no GPU found" if not rep.host.gpus else "no engine matches this host"
        print(f"host:    {why}; the bundle is authentic, but none of its engines can run here")
    if rep.host_state is not None:
        print(printable(state_line(rep)))


def state_line(rep: VerifyReport) -> str:
    """The host state's verdict in one line of the human report (verify.py and `bundle`)."""
    hs = rep.host_state
    assert hs is not None
    before = f"highest accepted before: {hs.previous_version}" if hs.previous_version else "first of its name here"
    what = "recorded in" if hs.recorded else "checked against"
    down = "; DOWNGRADE allowed by --allow-downgrade" + (" (logged)" if hs.recorded else "") if hs.downgrade else ""
    return f"state:   {what} {hs.path} ({before}){down}"


def trust_paths(flags: List[str]) -> List[str]:
    """Trusted key files: ``--trust`` flags, else ``BUNDLE_TRUST`` (files separated by
    ``os.pathsep``, like PATH). The loader passes its flags here and never reads trust itself,
    so the two can never disagree about which keys count."""
    paths = list(flags) or [p for p in os.environ.get(TRUST_ENV, "").split(os.pathsep) if p]
    if not paths:
        raise InputError(f"no trusted key: pass --trust KEY.pub or set {TRUST_ENV} (a key inside the bundle is never trusted)")
    return paths


def trust_from_args(trust: List[str], policy: Optional[str]) -> Union[Dict[str, TrustedKey], TrustPolicy]:
    """What to trust, by the one rule every entry point uses: ``--policy`` or ``BUNDLE_POLICY``
    (a policy file), else ``--trust`` or ``BUNDLE_TRUST`` (key files: any one signature). Both
    at once is refused: one host, one statement of whom it trusts."""
    if policy and trust:
        raise UsageError("--policy and --trust are exclusive: a policy file lists its keys itself")
    chosen = policy or (None if trust else os.environ.get(POLICY_ENV) or None)
    if chosen:
        return load_policy(Path(chosen))
    return load_trust([Path(p) for p in trust_paths(trust)])


def _main(argv: Optional[List[str]]) -> int:
    parser = _Parser(
        prog="verify.py", allow_abbrev=False,
        description="Verify a trt-bundler bundle (tar or extracted directory) against trusted keys, "
                    "with the Python standard library only. Exit 0 only if every check holds.",
    )
    parser.add_argument("bundle", help="a .bundle.tar file, a directory made by `bundle extract`, or a split bundle's "
                                       "part index (.parts.json) or any of its parts")
    parser.add_argument("--trust", action="append", default=[], metavar="PUB",
                        help="trusted public key PEM (repeatable; default: $BUNDLE_TRUST, files separated by os.pathsep); "
                             "a key inside the bundle is never trusted")
    parser.add_argument("--policy", metavar="FILE",
                        help=f"trust policy file (default: ${POLICY_ENV}); replaces --trust (docs/trust-policy.md)")
    parser.add_argument("--json", dest="json_mode", action="store_true", help="print the full report as one JSON document")
    parser.add_argument("--require-host", action="store_true", help="also fail (exit 17) unless an engine can run on this host")
    parser.add_argument("--allow-expired", action="store_true",
                        help="accept a signature past its signed expiry (recorded in the report as expired_accepted)")
    parser.add_argument("--state", metavar="FILE", help=f"host state file for rollback protection (default: ${STATE_ENV}; "
                                                         "none: no state is read or written)")
    parser.add_argument("--record", action="store_true", help="remember this bundle in the host state once it is verified")
    parser.add_argument("--allow-downgrade", action="store_true",
                        help="accept a lower version than this host accepted before (logged in the state file with --record)")
    parser.add_argument("--max-age", metavar="DURATION", type=parse_duration,
                        help="refuse a bundle sealed more than DURATION (3600, 90m, 12h, 30d, 2w) before the newest "
                             "one of its name seen on this host (exit 18)")
    args = parser.parse_args(argv)
    state = state_options(args.state, args.record, args.allow_downgrade, args.max_age)
    trusted = trust_from_args(args.trust, args.policy)
    rep = verify_bundle(Path(args.bundle), trusted, require_host=args.require_host, allow_expired=args.allow_expired)
    if state is not None:
        apply_host_state(rep, state)
    if args.json_mode:
        print(json.dumps(rep.to_dict(), indent=2))
    else:
        _print_report(rep)
    if not rep.ok:
        assert rep.error is not None
        _err_line(rep.error.failure_class, rep.error.message)
        return rep.exit_code
    return 0


class _Terminated(KeyboardInterrupt):
    """SIGTERM (`timeout`, a service stop): unwinds like Ctrl-C, so every ``finally`` runs (the
    host state's lock is released and its temporary file removed) and the exit code is 143."""


def _terminated(signum: int, frame: Any) -> None:
    signal.signal(signal.SIGTERM, signal.SIG_IGN)  # a second one must not interrupt the cleanup
    raise _Terminated()


def main(argv: Optional[List[str]] = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    json_mode = "--json" in args
    for stream in (sys.stdout, sys.stderr):
        try:
            stream.reconfigure(errors="backslashreplace")  # type: ignore[union-attr]
        except (AttributeError, ValueError):
            pass
    main_thread = threading.current_thread() is threading.main_thread()
    # SIGTERM unwinds like Ctrl-C: the state lock is released and its temporary file removed
    previous_term = signal.signal(signal.SIGTERM, _terminated) if main_thread else None
    try:
        return _main(args)
    except KeyboardInterrupt as e:
        code = 143 if isinstance(e, _Terminated) else 130
        what = "terminated" if code == 143 else "interrupted"
        if json_mode:
            print(json.dumps({"ok": False, "exit_code": code, "error": {"class": "interrupted", "member": None, "message": what}}))
        print(what, file=sys.stderr)
        return code
    except SystemExit as e:  # argparse --help
        return e.code if isinstance(e.code, int) else 0
    except BaseException as e:  # noqa: BLE001 - every failure ends in one line and an exit code
        try:
            return _fail(e, json_mode)
        except BaseException:  # pragma: no cover - even printing failed
            return int(ExitCode.INTERNAL)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    sys.exit(main())
