"""Look inside a bundle without extracting and without trusting it.

`inspect` is for the question "what is on this stick?" before any key is at hand. It uses the
same strict reader as verify (a hostile archive is refused the same way) but checks no signature:
everything it shows is a claim, and its report says so (``verified: false``).

Because nothing here is authenticated, reading is cheap and total whatever the bundle holds:

- ``manifest.json`` is read into memory only up to `INSPECT_MAX_MANIFEST` (1 MiB; real manifests
  are 5 to 12 KiB for one to six engines, so tens of KiB for a large build matrix). A larger one is
  skipped by the reader (streamed, never buffered) and noted. The caller may pass a larger bound
  once a signature has been checked (``bundle inspect --trust`` passes verify's 16 MiB).
- It is parsed strictly (`strict_json`): no duplicate keys, no NaN/Infinity, no number token of
  more than `MAX_NUMBER_DIGITS` digits, no non-finite float, nesting at most `MAX_JSON_DEPTH`.
- It is then typed against the manifest schema (`manifest.from_dict(Manifest, ...)`). The report
  carries only that typed `Manifest`, never the raw parsed data: a manifest that does not fit is
  a note, and no manifest field is shown.
- At most `MAX_SIGNATURES` signature files of at most `MAX_SIGNATURE_SIZE` (verify's bounds) are
  parsed; others are noted, not parsed.

Every problem with the bundle's *content* becomes a note (exit 0); only the strict tar reader's
refusals (archive, members, unsafe, limits) and an unreadable file end in an error. Nothing here
prints: the CLI renders the report, escaping every string it took from the bundle.
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional, Tuple

from .archive import Limits, StrictTarReader
from .engine_header import HEADER_SIZE, HeaderError, parse_header
from .errors import ArchiveError, InputError, VerificationError
from .manifest import FORMAT_VERSION, MANIFEST, EngineHeader, Manifest, from_dict, to_dict
from runtime_stub.verify import StrictJSONError, loads_strict
from .signing import SIGNATURES_DIR, parse_signature_file, parse_statement
from .verify import MAX_SIGNATURE_SIZE, MAX_SIGNATURES

# For the docs (docs/exit-codes.md, `inspect`): without --trust, inspect parses a manifest.json of
# at most 1 MiB (INSPECT_MAX_MANIFEST) and at most 16 signature files of at most 1 MiB each; larger
# ones are noted and not shown. JSON nesting is limited to 64 levels and numbers to 40 digits.
INSPECT_MAX_MANIFEST = 1 << 20
MAX_QUOTE = 200  # characters of a hostile value or parser message quoted in a note

UNVERIFIED_NOTE = "NOT VERIFIED: nothing here was checked against a trusted key; pass --trust KEY.pub to verify"


@dataclass
class InspectMember:
    path: str
    size: int
    mode: str
    is_dir: bool


@dataclass
class InspectReport:
    bundle: str
    verified: bool = False
    root: Optional[str] = None
    signer_key_ids: List[Optional[str]] = field(default_factory=list)  # raw hints, as claimed
    signed_subject: Optional[str] = None
    manifest: Optional[Manifest] = None  # only ever a schema-checked Manifest, never raw JSON
    members: List[InspectMember] = field(default_factory=list)
    engine_headers: Dict[str, Optional[EngineHeader]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)
    sha256: Optional[str] = None  # of the whole file as this pass read it

    def to_dict(self) -> dict:
        return to_dict(self)


def _clip(text: str, n: int = MAX_QUOTE) -> str:
    """Quote at most ``n`` characters of something hostile: a 1 MiB key must not become a 1 MiB note."""
    return text if len(text) <= n else text[:n] + "..."


def typed_manifest(raw: bytes, where: str) -> Tuple[Optional[Manifest], List[str]]:
    """``(Manifest, notes)`` or ``(None, notes)``: a manifest the report may show, and why not."""
    try:
        data = loads_strict(raw)
    except StrictJSONError as e:
        return None, [f"{where}: {_clip(str(e))}; no manifest fields are shown"]
    try:
        m = from_dict(Manifest, data, MANIFEST)
    except (ValueError, TypeError, RecursionError) as e:  # SchemaError is a ValueError
        return None, [f"{where}: does not match the manifest schema ({_clip(str(e))}); no manifest fields are shown"]
    notes = []
    if m.format != FORMAT_VERSION:
        notes.append(f"{where}: format {_clip(m.format, 40)!r}; this tool knows {FORMAT_VERSION}")
    return m, notes


# -- the pass -----------------------------------------------------------------------------------------

def inspect_bundle(path: Path, limits: Limits = Limits(), *, max_manifest: int = INSPECT_MAX_MANIFEST,
                   verified_digests: Optional[Dict[str, str]] = None) -> InspectReport:
    """Read a bundle's members, claims and engine headers in one bounded streaming pass.

    ``path`` is a bundle tar or an extracted bundle directory (`_inspect_directory`, same rules).
    ``max_manifest`` is how much of manifest.json is parsed; keep the default unless a signature
    over this very file has been checked (compare ``sha256`` with the verify report's; a
    directory has no whole-file digest, so pass ``verified_digests``, the verify report's
    path -> SHA-256, and the manifest read here must match it).
    Raises `InputError` for an unreadable file and the strict reader's classes for a tar it
    refuses; never anything else for what a bundle holds.
    """
    path = Path(path)
    if path.is_dir():
        try:
            return _inspect_directory(path, limits, max_manifest, verified_digests)
        except OSError as e:  # as verify reports a directory it cannot read
            raise ArchiveError(f"{e.filename or path}: read error ({e.strerror or e})") from None
    if not path.is_file():
        raise InputError(f"{path}: no such bundle file or directory")
    rep = InspectReport(bundle=str(path))
    try:
        f = open(path, "rb")
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    with f:
        reader = StrictTarReader(f, limits)
        try:
            _scan(reader, rep, max_manifest)
            rep.sha256 = reader.archive_sha256
        except OSError as e:
            raise ArchiveError(f"read error at byte {reader.position}: {e.strerror or e}") from None
        finally:
            reader.close()  # its whole-file hash runs on a worker thread
    rep.notes.insert(0, UNVERIFIED_NOTE)
    return rep


def _scan(reader: StrictTarReader, rep: InspectReport, max_manifest: int) -> None:
    signatures = 0
    while True:
        m = reader.next()
        if m is None:
            break
        if rep.root is None:
            rep.root = m.name.split("/", 1)[0]
        rel = m.name[len(rep.root) + 1 :] if m.name.startswith(rep.root + "/") else m.name
        rep.members.append(InspectMember(rel, m.size, f"{m.mode:04o}", m.is_dir))
        if m.is_dir:
            continue
        if rel.startswith(SIGNATURES_DIR + "/"):
            if m.size > MAX_SIGNATURE_SIZE:
                rep.notes.append(f"{m.name}: signature file of {m.size} bytes is over the limit of {MAX_SIGNATURE_SIZE}; not parsed")
                continue
            signatures += 1
            if signatures > MAX_SIGNATURES:
                if signatures == MAX_SIGNATURES + 1:
                    rep.notes.append(f"more than {MAX_SIGNATURES} signature files; the rest are not parsed")
                continue
            buf = bytearray()
            reader.read_data(buf.extend)
            _signature(bytes(buf), m.name, rep)
        elif rel == MANIFEST:
            if m.size > max_manifest:
                rep.notes.append(f"{m.name}: {m.size} bytes, over the {max_manifest} that inspect parses without "
                                 "a verified signature; no manifest fields are shown")
                continue  # the reader skips its data without keeping it
            buf = bytearray()
            reader.read_data(buf.extend)
            rep.manifest, notes = typed_manifest(bytes(buf), m.name)
            rep.notes.extend(notes)
        elif rel.endswith(".engine"):
            head = bytearray()

            def take(chunk: memoryview, head: bytearray = head) -> None:
                if len(head) < HEADER_SIZE:
                    head.extend(chunk[: HEADER_SIZE - len(head)])

            reader.read_data(take)
            try:
                rep.engine_headers[rel] = parse_header(bytes(head), m.size)
            except HeaderError as e:
                rep.engine_headers[rel] = None
                rep.notes.append(f"{m.name}: {e}")


def _signature(raw: bytes, where: str, rep: InspectReport) -> None:
    """Record a signature file's claimed key hint and subject; a bad one is a note.

    `parse_signature_file` and `parse_statement` raise only `SignatureError` for bad content,
    but what they return is unauthenticated JSON: the subject is kept only if it is a string.
    """
    try:
        sf = parse_signature_file(raw, where)
        rep.signer_key_ids.append(sf.hint)
        subject: Any = parse_statement(sf.payload, where).subject
    except VerificationError as e:
        rep.notes.append(_clip(str(e), 4 * MAX_QUOTE))
        return
    if isinstance(subject, str):
        rep.signed_subject = subject
    else:
        rep.notes.append(f"{where}: signed subject is not a string; not shown")


# -- an extracted directory ---------------------------------------------------------------------------

def _inspect_directory(top: Path, limits: Limits, max_manifest: int,
                       verified_digests: Optional[Dict[str, str]]) -> InspectReport:
    """`inspect_bundle` for an extracted bundle directory, under the rules of a tar.

    The walk is verify's (`_walk`): a symlink, a special file, a setuid bit, a name or a count
    over the limits is refused with the class verify gives it, nothing is followed; files are
    opened with O_NOFOLLOW and read only up to the same bounds as a tar's members (signatures,
    manifest), and the manifest goes through the same strict parse and schema as a tar's.
    """
    import hashlib

    from runtime_stub.verify import _read_small, _walk  # verify's own directory rules, not a copy

    files, dirs = _walk(top, limits)
    rep = InspectReport(bundle=str(top), root=top.resolve().name)
    for rel in sorted(set(files) | dirs):
        is_dir = rel in dirs
        mode = os.lstat(top / rel).st_mode & 0o7777
        rep.members.append(InspectMember(rel, 0 if is_dir else files[rel], f"{mode:04o}", is_dir))
    sigs = sorted(r for r in files if r.startswith(SIGNATURES_DIR + "/"))
    for n, rel in enumerate(sigs):
        where = f"{top}/{rel}"
        if n >= MAX_SIGNATURES:
            rep.notes.append(f"more than {MAX_SIGNATURES} signature files; the rest are not parsed")
            break
        if files[rel] > MAX_SIGNATURE_SIZE:
            rep.notes.append(f"{where}: signature file of {files[rel]} bytes is over the limit of {MAX_SIGNATURE_SIZE}; not parsed")
            continue
        raw = _read_small(str(top / rel), MAX_SIGNATURE_SIZE)
        if len(raw) > MAX_SIGNATURE_SIZE:
            rep.notes.append(f"{where}: signature file grew over the limit of {MAX_SIGNATURE_SIZE}; not parsed")
            continue
        _signature(raw, where, rep)
    if MANIFEST not in files:
        rep.notes.append(f"{top}: no {MANIFEST}; no manifest fields are shown")
    elif files[MANIFEST] > max_manifest:
        rep.notes.append(f"{top}/{MANIFEST}: {files[MANIFEST]} bytes, over the {max_manifest} that inspect parses without "
                         "a verified signature; no manifest fields are shown")
    else:
        raw = _read_small(str(top / MANIFEST), max_manifest)
        if verified_digests is not None and hashlib.sha256(raw).hexdigest() != verified_digests.get(MANIFEST):
            raise ArchiveError(f"{top}/{MANIFEST}: changed between verification and inspection", member=f"{top}/{MANIFEST}")
        if len(raw) > max_manifest:
            rep.notes.append(f"{top}/{MANIFEST}: grew over the {max_manifest} bytes that inspect parses; no manifest fields are shown")
        else:
            rep.manifest, notes = typed_manifest(raw, f"{top}/{MANIFEST}")
            rep.notes.extend(notes)
    for rel in sorted(r for r in files if r.endswith(".engine")):
        head = _read_small(str(top / rel), HEADER_SIZE - 1)[:HEADER_SIZE]
        try:
            rep.engine_headers[rel] = parse_header(head, files[rel])
        except HeaderError as e:
            rep.engine_headers[rel] = None
            rep.notes.append(f"{top}/{rel}: {e}")
    rep.notes.insert(0, UNVERIFIED_NOTE)
    return rep
