"""What GPUs this host has, asked through the CUDA driver API with ctypes.

Used to choose a backend (`auto`), to resolve the `local` target and for verify's host check.
ctypes keeps us free of cuda-python and pycuda; a host with no driver simply has no GPUs.
"""

from __future__ import annotations

import ctypes
import ctypes.util
from dataclasses import dataclass
from typing import List, Optional, Tuple

_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR = 75
_CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR = 76


@dataclass(frozen=True)
class GpuInfo:
    index: int
    name: str
    cc: Tuple[int, int]
    driver: str  # the CUDA driver API version, e.g. "13.0"

    @property
    def cc_str(self) -> str:
        return f"{self.cc[0]}.{self.cc[1]}"


def _load_libcuda() -> Optional[ctypes.CDLL]:
    for name in ("libcuda.so.1", "libcuda.so", ctypes.util.find_library("cuda")):
        if not name:
            continue
        try:
            return ctypes.CDLL(name)
        except OSError:
            continue
    return None


def query_gpus() -> List[GpuInfo]:
    """Every GPU the driver reports; an empty list when there is no driver or no device."""
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
        lib.cuDeviceGetAttribute(ctypes.byref(major), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MAJOR, dev)
        lib.cuDeviceGetAttribute(ctypes.byref(minor), _CU_DEVICE_ATTRIBUTE_COMPUTE_CAPABILITY_MINOR, dev)
        gpus.append(GpuInfo(i, name.value.decode(errors="replace"), (major.value, minor.value), driver))
    return gpus
