"""What GPUs this host has, asked through the CUDA driver API with ctypes.

Used to choose a backend (`auto`), to resolve the `local` target and for verify's host check.
The driver query itself is the shared verification code's (runtime_stub/verify.py `query_gpus`,
which the stand-alone verifier's host check uses too); this adapter only gives the build side
compute capabilities as tuples.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import List, Tuple

from runtime_stub.verify import query_gpus as _query_gpus


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    cc: Tuple[int, int]
    driver: str  # the CUDA driver API version, e.g. "13.0"

    @property
    def cc_str(self) -> str:
        return f"{self.cc[0]}.{self.cc[1]}"


def query_gpus() -> List[GpuInfo]:
    """Every GPU the driver reports; an empty list when there is no driver or no device."""
    out = []
    for g in _query_gpus():
        major, _, minor = g.cc.partition(".")
        out.append(GpuInfo(g.index, g.name, (int(major), int(minor)), g.driver))
    return out
