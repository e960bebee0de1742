"""Read an engine's header offline: which runtime built it, and for which GPUs.

TensorRT has no API for this (NVIDIA/TensorRT#3073, #4233) and its `get_engine_validity` needs a
driver, so we read the bytes. The layout below was read from real files (see docs/bundle-format.md):

TensorRT-RTX (magic ``vtrt``): bytes 16-23 file size (u64 LE), 24-27 version major.minor.patch.build,
28-31 ``vtrt`` again, 32-39 a compute-capability bitmask (u64 LE).
Full TensorRT: bytes 24-26 major.minor.patch (community practice); no compute-capability field.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Dict, List, Optional, Tuple

# Parsing a header is part of verification, so it is defined once, in the shared code.
from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    HEADER_SIZE,
    RTX_CC_BITS,
    RTX_MAGIC,
    EngineHeader,
    HeaderError,
    cc_list_from_mask,
    parse_header,
    version_matches,
)


def mask_from_cc(cc: Tuple[int, int]) -> Optional[int]:
    for bit, c in RTX_CC_BITS:
        if c == cc:
            return bit
    return None


def read_header(path) -> EngineHeader:  # noqa: ANN001 - str or Path
    import os

    with open(path, "rb") as f:
        data = f.read(HEADER_SIZE)
        size = os.fstat(f.fileno()).st_size
    return parse_header(data, size)


# -- `bundle inspect-engine`: headers of an engine file, a bundle tar or an extracted directory --------


@dataclass
class InspectedEngine:
    """One engine's header, as read from its first `HEADER_SIZE` bytes."""

    name: str  # the file path given, or the bundle-relative member path (engines/x.engine)
    size: int
    header: EngineHeader
    gpus: Dict[str, List[str]]  # compute capability -> GPU names from targets.GPU_TABLE

    def to_dict(self) -> dict:
        return {
            "name": self.name,
            "size": self.size,
            "product": self.header.product,
            "version": self.header.version,
            "cc": self.header.cc,
            "cc_mask": self.header.cc_mask,
            "gpus": self.gpus,
        }


@dataclass
class EngineFileReport:
    path: str
    kind: str  # "engine", "bundle" or "directory"
    engines: List[InspectedEngine] = field(default_factory=list)
    verified: Optional[bool] = None  # False for a bundle: headers only, no signature checked
    notes: List[str] = field(default_factory=list)

    def to_dict(self) -> dict:
        return {
            "file": self.path,
            "kind": self.kind,
            "verified": self.verified,
            "notes": list(self.notes),
            "engines": [e.to_dict() for e in self.engines],
        }


def _gpus(header: EngineHeader) -> Dict[str, List[str]]:
    from .targets import gpu_names_for

    out: Dict[str, List[str]] = {}
    for cc in header.cc or []:
        major, minor = (int(x) for x in cc.split("."))
        out[cc] = gpu_names_for((major, minor))
    return out


def _inspected(name: str, data: bytes, size: int) -> InspectedEngine:
    from .errors import InputError

    if size == 0:
        raise InputError(f"{name}: empty file, not a TensorRT engine", member=name)
    try:
        header = parse_header(data, size)
    except HeaderError as e:
        raise InputError(f"{name}: not a TensorRT engine we can read: {e}", member=name) from None
    return InspectedEngine(name, size, header, _gpus(header))


def _looks_like_tar(head: bytes) -> bool:
    return len(head) >= 512 and head[257:263] == b"ustar\0"


def inspect_engine_file(path) -> EngineFileReport:  # noqa: ANN001 - str or Path
    """Read engine headers offline (no GPU, no TensorRT) from one of:

    - an engine file (TensorRT-RTX or full TensorRT);
    - a bundle tar, read with the strict streaming reader: only the first `HEADER_SIZE` bytes of
      each ``*.engine`` member are kept, nothing is extracted and **nothing is verified**;
    - a directory holding ``engines/*.engine`` (an extracted bundle or a build directory), or
      ``*.engine`` files directly.

    Raises `InputError` (exit 3) for a missing path, a file that is neither an engine nor a tar,
    a header cut short, or no engines at all; a damaged or hostile tar gets the strict reader's
    own classes (archive, unsafe, limits, ...).
    """
    import os
    from pathlib import Path

    from .errors import InputError

    p = Path(path)
    if p.is_dir():
        files = sorted((p / "engines").glob("*.engine")) if (p / "engines").is_dir() else []
        if not files:
            files = sorted(p.glob("*.engine"))
        if not files:
            raise InputError(f"{p}: no engines/*.engine (nor *.engine) in this directory")
        rep = EngineFileReport(str(p), "directory")
        for f in files:
            with open(f, "rb") as fh:
                data = fh.read(HEADER_SIZE)
                size = os.fstat(fh.fileno()).st_size
            rep.engines.append(_inspected(f.relative_to(p).as_posix(), data, size))
        return rep
    if not p.exists():
        raise InputError(f"{p}: no such file or directory")
    if not p.is_file():
        raise InputError(f"{p}: not a regular file or directory")
    with open(p, "rb") as fh:
        head = fh.read(512)
        size = os.fstat(fh.fileno()).st_size
    if head[:4] == RTX_MAGIC or not _looks_like_tar(head):
        return EngineFileReport(str(p), "engine", [_inspected(str(p), head[:HEADER_SIZE], size)])
    return _inspect_bundle_engines(p)


def _inspect_bundle_engines(p) -> EngineFileReport:  # noqa: ANN001
    from .archive import StrictTarReader
    from .errors import InputError

    rep = EngineFileReport(str(p), "bundle", verified=False)
    rep.notes.append("NOT VERIFIED: engine headers were read without checking any signature; "
                     "run `bundle verify --trust KEY.pub` before trusting them")
    with open(p, "rb") as fh:
        reader = StrictTarReader(fh, threaded=False)  # no whole-file digest is wanted here
        root: Optional[str] = None
        while True:
            m = reader.next()
            if m is None:
                break
            if root is None:
                root = m.name.split("/", 1)[0]
            if m.is_dir or not m.name.endswith(".engine"):
                continue  # its data is skipped (still read and checked by the reader)
            rel = m.name[len(root) + 1:] if m.name.startswith(root + "/") else m.name
            head = bytearray()

            def take(chunk: memoryview, head: bytearray = head) -> None:
                if len(head) < HEADER_SIZE:
                    head.extend(chunk[: HEADER_SIZE - len(head)])

            reader.read_data(take)
            rep.engines.append(_inspected(rel, bytes(head), m.size))
    if not rep.engines:
        raise InputError(f"{p}: the bundle holds no .engine members (a cpu-only bundle has no TensorRT engine)")
    return rep
