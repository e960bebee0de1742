"""Look inside a bundle without extracting and without trusting it.

`inspect` is for the question "what is on this stick?" before any key is at hand. It uses the
same strict reader as verify (a hostile archive is refused the same way) but checks no signature:
everything it shows is a claim, and its report says so (``verified: false``).
"""

from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, List, Optional

from .archive import Limits, StrictTarReader
from .engine_header import HEADER_SIZE, HeaderError, parse_header
from .errors import InputError, VerificationError
from .manifest import EngineHeader, to_dict
from .seal import MANIFEST
from .signing import SIGNATURES_DIR, parse_signature_file, parse_statement
from .verify import MAX_MANIFEST_SIZE, MAX_SIGNATURE_SIZE


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
    signer_key_ids: List[Optional[str]] = field(default_factory=list)
    signed_subject: Optional[str] = None
    manifest: Optional[Dict[str, Any]] = None
    members: List[InspectMember] = field(default_factory=list)
    engine_headers: Dict[str, Optional[EngineHeader]] = field(default_factory=dict)
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return to_dict(self)


def inspect_bundle(path: Path, limits: Limits = Limits()) -> InspectReport:
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such bundle file")
    rep = InspectReport(bundle=str(path))
    with open(path, "rb") as f:
        reader = StrictTarReader(f, limits)
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
            if rel.startswith(SIGNATURES_DIR + "/") and m.size <= MAX_SIGNATURE_SIZE:
                buf = bytearray()
                reader.read_data(buf.extend)
                try:
                    sf = parse_signature_file(bytes(buf), m.name)
                    rep.signer_key_ids.append(sf.hint)
                    rep.signed_subject = parse_statement(sf.payload, m.name).subject
                except VerificationError as e:
                    rep.notes.append(str(e))
            elif rel == MANIFEST and m.size <= MAX_MANIFEST_SIZE:
                buf = bytearray()
                reader.read_data(buf.extend)
                try:
                    rep.manifest = json.loads(bytes(buf).decode("utf-8"))
                except (UnicodeDecodeError, json.JSONDecodeError) as e:
                    rep.notes.append(f"{m.name}: not valid JSON ({e})")
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
    rep.notes.insert(0, "NOT VERIFIED: nothing here was checked against a trusted key; pass --trust KEY.pub to verify")
    return rep
