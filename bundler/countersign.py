"""`bundle sign`: add one more signature file to a sealed bundle (a countersignature).

Who runs it: a second signer (a release manager, a security team, the new key of a rotation)
who vouches for a bundle someone else sealed. What they sign is what they checked, so `sign`
verifies the bundle first against keys the signer trusts (``trusted``, the ``--trust`` of
`bundle verify`): a bundle that fails verification is never signed, and the new signature signs
a statement with exactly the subject and resources of the verified one. Signing a statement
read from an unverified tar would endorse whatever its first signer claimed, tampered bytes or
an attacker's key included.

Nothing but the signature block changes: every other member is copied byte for byte, headers
included, from the verified tar (whose whole-file SHA-256 is checked again while copying, so a
file changed after verification is never signed). The new member is written as sealing writes
members and placed among the signature files in name order, so they stay the first members.
The signed content digest (the statement's subject digest) does not change; the tar's SHA-256
does. The result goes to a new file that appears under its final name only when complete:
``out_dir/NAME-VERSION.bundle.tar`` (never overwriting), or, with ``in_place``, an atomic
rename over the original once the new file is complete and synced.
"""

from __future__ import annotations

import hashlib
import os
import re
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional, Tuple

from cryptography.hazmat.primitives.asymmetric import ec

from . import ledger as _ledger
from .archive import BLOCK, CHUNK, RECORD, AsyncSha256, Limits, StrictTarReader, member_header
from .errors import ArchiveError, InputError, OutputError, error_for_code
from .fsutil import check_out_dir, fsync_dir, make_dirs, make_workfile, remove_made_dirs, remove_stale, removed_on_failure
from .signing import (
    PAYLOAD_TYPE,
    SIGNATURES_DIR,
    LedgerHead,
    PublicKey,
    TrustedKey,
    ecdsa_fast,
    key_id,
    make_statement,
    pae,
    parse_signature_file,
    parse_statement,
    sign_statement,
)
from .verify import MAX_SIGNATURES, verify_bundle


@dataclass(frozen=True)
class SignResult:
    path: Path  # the countersigned bundle
    sha256: str  # its whole-file digest (changed by the new member)
    content_digest: str  # the signed subject digest: the same before and after
    key_id: str  # the new signer
    signature: str  # bundle-relative path of the new signature file
    expires: Optional[str]  # the new signature's signed expiry, if any
    signers: Tuple[str, ...]  # every signature file now in the bundle, in member order
    ledger: Optional[LedgerHead] = None  # the signing ledger entry written for this signature, if any


@dataclass(frozen=True)
class _Span:
    """One member of the signature block as it lies in the file: [start, end) covers its
    header block(s), data and padding."""

    rel: str
    start: int
    end: int
    size: int
    is_dir: bool
    data: Optional[bytes]  # a signature file's bytes


def sign_bundle(
    bundle: Path,
    key: ec.EllipticCurvePrivateKey,
    trusted: "dict[str, TrustedKey]",
    *,
    out_dir: Optional[Path] = None,
    in_place: bool = False,
    expires: Optional[str] = None,
    limits: Limits = Limits(),
    ledger: Optional[Path] = None,
) -> SignResult:
    """Verify ``bundle`` against ``trusted``, then add a signature by ``key`` over the same
    statement (with ``expires`` in it, if given).

    Exactly one of ``out_dir`` (write ``out_dir/NAME-VERSION.bundle.tar``, never overwriting)
    and ``in_place`` (replace ``bundle`` atomically). Raises the verification's own error class
    (exit 10-17) for a bundle that fails verification, `InputError` for a bundle this key has
    signed already, `OutputError` when the result cannot be written. ``ledger``: a signing
    ledger (bundler/ledger.py) whose head goes into the new statement and which gets this
    signature's entry before the result is published.
    """
    bundle = Path(bundle)
    if (out_dir is None) == (not in_place):
        raise InputError("give exactly one of --out DIR and --in-place")
    if bundle.is_symlink() and in_place:
        raise InputError(f"{bundle}: is a symlink; --in-place replaces a real file (give its target, or use --out)")
    if bundle.is_dir():
        raise InputError(f"{bundle}: is a directory; sign takes a bundle tar")
    if not bundle.is_file():
        raise InputError(f"{bundle}: no such bundle file")
    if out_dir is not None:
        check_out_dir(Path(out_dir), "NAME-VERSION.bundle.tar")
    before = _identity(bundle)

    report = verify_bundle(bundle, trusted, limits=limits)
    if not report.ok:
        assert report.error is not None
        raise error_for_code(report.exit_code, f"cannot sign a bundle that fails verification: {report.error.message}",
                             report.error.member)
    assert report.root is not None and report.sha256 is not None and report.content_digest is not None
    root = report.root
    kid = key_id(key.public_key())
    sig_rel = f"{SIGNATURES_DIR}/{kid}.sig"

    spans, payload_start, end_marker = _scan(bundle, limits, report.sha256)
    sigs = [s for s in spans if not s.is_dir]
    _refuse_own_signature(sigs, key, kid, sig_rel)
    if len(sigs) >= MAX_SIGNATURES:
        raise InputError(f"{bundle}: already holds {len(sigs)} signature files, the most a bundle may carry")

    valid = {s.file for s in report.signers if s.valid}
    source = next(s for s in sigs if s.rel in valid)
    where = f"{root}/{source.rel}"
    statement = parse_statement(parse_signature_file(source.data or b"", where).payload, where)
    head = _ledger.head_for_signing(ledger) if ledger is not None else None
    new_sig = sign_statement(make_statement(statement.subject, statement.resources, expires, ledger=head), key)
    new_member = member_header(f"{root}/{sig_rel}", len(new_sig), 0o644, _mtime(bundle, sigs[0])) + new_sig
    new_member += b"\0" * (-len(new_sig) % BLOCK)

    # Placed among the signature files in name order (the writer rule for several of them),
    # directory members and the existing files keeping their places and bytes.
    at = next((i for i, s in enumerate(spans) if not s.is_dir and s.rel > sig_rel),
              max(i for i, s in enumerate(spans) if not s.is_dir) + 1)

    if in_place:
        final, made = bundle, []
        directory = bundle.parent
    else:
        directory = Path(out_dir)  # type: ignore[arg-type]
        final = directory / f"{root}.bundle.tar"
        if final.exists() or final.is_symlink():
            raise OutputError(f"{final}: already exists; bundles are never overwritten (--in-place adds the "
                              "signature to it)")
        try:
            made = make_dirs(directory)
        except OSError as e:
            raise OutputError(f"{e.filename or directory}: cannot create the directory ({e.strerror or e})") from None
    prefix = f".{final.name}.partial-"
    try:
        remove_stale(directory, prefix)  # a killed sign's half-written tar
        fd, tmp = make_workfile(directory, prefix)
    except OSError as e:
        remove_made_dirs(made)
        raise OutputError(f"{directory}: cannot write the bundle there ({e.strerror})") from None
    with removed_on_failure(tmp, made, final):
        try:
            os.fchmod(fd, 0o644)  # mkstemp makes 0600; a bundle is meant to be copied and shared
            digest = _write(bundle, fd, spans, at, new_member, payload_start, end_marker, report.sha256)
            os.fsync(fd)
        finally:
            os.close(fd)
        if in_place and _identity(bundle) != before:
            raise ArchiveError(f"{bundle}: changed while it was being signed; not replaced")
        entry = None
        if ledger is not None and head is not None:  # recorded before it appears, never after
            entry = _ledger.record_signing(
                ledger, event="sign", key_id=kid, name=report.name or "", version=report.version or "",
                bundle_sha256=digest, content_digest=report.content_digest, signature=sig_rel,
                signature_sha256=hashlib.sha256(new_sig).hexdigest(), extends=head, expires=expires)
        if in_place:
            os.replace(tmp, bundle)  # atomic: the old bundle or the new one, never a mix
            fsync_dir(directory)
        else:
            from .seal import _publish  # link(2): never replaces a file that appeared meanwhile

            _publish(tmp, final)
    names = [s.rel for s in sigs]
    names.insert(sum(1 for s in spans[:at] if not s.is_dir), sig_rel)
    return SignResult(final, digest, report.content_digest, kid, sig_rel, expires, tuple(names), entry)


def _identity(path: Path) -> Tuple[int, int, int, int]:
    st = path.stat()
    return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns




def _scan(bundle: Path, limits: Limits, verified_sha256: str) -> Tuple[List[_Span], int, int]:
    """Where the signature block's members lie, where the payload starts and where the
    end-of-archive marker starts, read by the verifier's own strict reader. The whole file is
    hashed on the way: it must be the file that was just verified."""
    spans: List[_Span] = []
    with open(bundle, "rb", buffering=0) as f:
        reader = StrictTarReader(f, limits)
        try:
            start = reader.position
            m = reader.next()
            root = m.name.split("/", 1)[0] if m is not None else ""
            while m is not None:
                rel = m.name[len(root) + 1:] if m.name != root else ""
                if not m.is_dir and not rel.startswith(SIGNATURES_DIR + "/"):
                    break
                buf = bytearray()
                reader.read_data(None if m.is_dir else buf.extend)
                spans.append(_Span(rel, start, reader.position, m.size, m.is_dir, None if m.is_dir else bytes(buf)))
                start = reader.position
                m = reader.next()
            payload_start = end_marker = start
            while m is not None:
                reader.read_data(None)
                end_marker = reader.position
                m = reader.next()
            digest = reader.archive_sha256
        finally:
            reader.close()
    if digest != verified_sha256:
        raise ArchiveError(f"{bundle}: changed while it was being signed (SHA-256 differs from the verified one)")
    return spans, payload_start, end_marker


def _refuse_own_signature(sigs: List[_Span], key: ec.EllipticCurvePrivateKey, kid: str, sig_rel: str) -> None:
    """One signer, one signature: a second file by the same key adds no assurance and would
    count twice under a naive k-of-n rule. Found by name, by key hint, and, for a file without
    a hint (model-signing may write none), by the signature verifying under this key."""
    pub = key.public_key().public_numbers()
    ours = PublicKey(pub.x, pub.y)
    for s in sigs:
        sf = parse_signature_file(s.data or b"", s.rel)  # verified already: parses
        if s.rel == sig_rel or sf.hint == kid or ecdsa_fast(ours, sf.signature, pae(PAYLOAD_TYPE, sf.payload)):
            raise InputError(f"already signed by this key ({kid[:16]}...: {s.rel}); a key signs a bundle once")


_OCTAL = re.compile(rb" *([0-7]+)[ \0]*\Z")


def _mtime(bundle: Path, first_sig: _Span) -> int:
    """The mtime the sealer gave its members (SOURCE_DATE_EPOCH or 0), read from the first
    signature file's ustar header, so the new member looks like its neighbours. 0 if unreadable."""
    header_at = first_sig.end - first_sig.size - (-first_sig.size % BLOCK) - BLOCK
    try:
        with open(bundle, "rb") as f:
            f.seek(header_at)
            block = f.read(BLOCK)
    except OSError:
        return 0
    m = _OCTAL.match(block[136:148]) if len(block) == BLOCK else None
    return int(m.group(1), 8) if m else 0


def _write(bundle: Path, fd: int, spans: List[_Span], at: int, new_member: bytes, payload_start: int,
           end_marker: int, verified_sha256: str) -> str:
    """Write the countersigned tar to ``fd``; return its SHA-256. The original is read once,
    front to back, and hashed: a file that is not the verified one is refused."""
    src_hash = hashlib.sha256()
    out_hash = AsyncSha256()  # on its own thread: the two digests use two cores
    written = 0

    def emit(data: bytes) -> None:
        nonlocal written
        view = memoryview(data)
        while view:
            n = os.write(fd, view)
            view = view[n:]
        out_hash.update(data)
        written += len(data)

    with open(bundle, "rb", buffering=0) as f:
        head = _read_exact(f, payload_start)
        src_hash.update(head)
        for i, s in enumerate(spans):
            if i == at:
                emit(new_member)
            emit(head[s.start:s.end])
        if at == len(spans):
            emit(new_member)
        left = end_marker - payload_start
        while left:
            chunk = f.read(min(CHUNK, left))
            if not chunk:
                raise ArchiveError(f"{bundle}: became shorter while it was being signed")
            src_hash.update(chunk)
            emit(chunk)
            left -= len(chunk)
        while True:  # the end marker and padding: hashed (they were verified), written anew
            chunk = f.read(CHUNK)
            if not chunk:
                break
            src_hash.update(chunk)
    if src_hash.hexdigest() != verified_sha256:
        raise ArchiveError(f"{bundle}: changed while it was being signed (SHA-256 differs from the verified one)")
    emit(b"\0" * (2 * BLOCK))
    emit(b"\0" * (-written % RECORD))
    return out_hash.hexdigest()


def _read_exact(f, n: int) -> bytes:  # noqa: ANN001 - a binary file
    buf = bytearray()
    while len(buf) < n:
        chunk = f.read(n - len(buf))
        if not chunk:
            raise ArchiveError("bundle became shorter while it was being signed")
        buf += chunk
    return bytes(buf)
