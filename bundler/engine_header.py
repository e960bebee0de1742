"""Read an engine's header offline: which runtime built it, and for which GPUs.

TensorRT has no API for this (NVIDIA/TensorRT#3073, #4233) and its `get_engine_validity` needs a
driver, so we read the bytes. The layout below was read from real files (see docs/bundle-format.md):

TensorRT-RTX (magic ``vtrt``): bytes 16-23 file size (u64 LE), 24-27 version major.minor.patch.build,
28-31 ``vtrt`` again, 32-39 a compute-capability bitmask (u64 LE).
Full TensorRT: bytes 24-26 major.minor.patch (community practice); no compute-capability field.
"""

from __future__ import annotations

import struct
from typing import List, Optional, Tuple

from .manifest import EngineHeader

HEADER_SIZE = 64
RTX_MAGIC = b"vtrt"

#: TensorRT-RTX compute-capability bitmask, bit -> (major, minor).
RTX_CC_BITS: List[Tuple[int, Tuple[int, int]]] = [
    (0x01, (7, 5)),
    (0x02, (8, 0)),
    (0x04, (8, 6)),
    (0x08, (8, 9)),
    (0x10, (12, 0)),
    (0x20, (12, 1)),
]


class HeaderError(ValueError):
    """The bytes are not an engine header we understand."""


def cc_list_from_mask(mask: int) -> List[str]:
    return [f"{cc[0]}.{cc[1]}" for bit, cc in RTX_CC_BITS if mask & bit]


def mask_from_cc(cc: Tuple[int, int]) -> Optional[int]:
    for bit, c in RTX_CC_BITS:
        if c == cc:
            return bit
    return None


def parse_header(data: bytes, file_size: Optional[int] = None) -> EngineHeader:
    """Parse the first `HEADER_SIZE` bytes of an engine.

    ``file_size``, when known, is checked against the size the RTX header records, which catches
    a truncated or padded engine before any runtime sees it.
    """
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
        return EngineHeader(
            product="tensorrt-rtx",
            version=f"{major}.{minor}.{patch}.{build}",
            cc=cc_list_from_mask(mask),
            cc_mask=mask,
        )
    if data[:4] in (b"ftrt", b"ptrt") or data[1:4] == b"trt":
        major, minor, patch = data[24], data[25], data[26]
        return EngineHeader(product="tensorrt", version=f"{major}.{minor}.{patch}")
    raise HeaderError(f"unknown engine magic {data[:4]!r}")


def read_header(path) -> EngineHeader:  # noqa: ANN001 - str or Path
    import os

    with open(path, "rb") as f:
        data = f.read(HEADER_SIZE)
        size = os.fstat(f.fileno()).st_size
    return parse_header(data, size)


def version_matches(header_version: str, runtime_version: str) -> bool:
    """Whether an engine whose header says ``header_version`` was built by ``runtime_version``.

    The header keeps the build number for TensorRT-RTX (1.7.1.116) and only three parts for full
    TensorRT, so compare on as many parts as both have.
    """
    a = header_version.split(".")
    b = runtime_version.split(".")
    n = min(len(a), len(b))
    return n >= 3 and a[:n] == b[:n]
