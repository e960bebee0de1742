"""Fuzz target: the loader's .npz and .npy reading.

    python fuzz/run.py npz --seconds 600

Every input is read as golden data (`runtime_stub.loader.read_npz`: bytes in memory, pickling
off) and, written to a file, as an operator's ``--input NAME=FILE.npy`` (`load_input`), which
must give one array. Documented: `LoaderError` (exit 3 in the loader). Anything else is a crash,
and so is an allocation the input's own size does not back (libFuzzer's -rss_limit_mb and
-malloc_limit_mb, set by fuzz/run.py).
"""

from __future__ import annotations

import sys

from _common import MemFile, main

_state: dict = {}


def check(data: bytes) -> bool:
    import numpy as np

    from runtime_stub import loader as L

    if not _state:
        _state["file"] = MemFile("x.npy")
    accepted = False
    try:
        arrays = L.read_npz(data, "golden/inputs.npz")
        if not all(isinstance(a, np.ndarray) for a in arrays.values()):
            raise AssertionError("read_npz gave something that is not an array")
        accepted = True
    except L.LoaderError:
        pass
    path = _state["file"].write(data)
    try:
        name, array = L.load_input(f"x={path}")
        if not isinstance(array, np.ndarray):
            raise AssertionError(f"--input gave a {type(array).__name__}, not an array")
        accepted = True
    except L.LoaderError:
        pass
    return accepted


if __name__ == "__main__":
    main("npz", check, ["runtime_stub.loader", "zipfile"], also_import=["numpy"],
         functions_of=["numpy.lib._format_impl", "numpy.lib._npyio_impl"])
    sys.exit(0)
