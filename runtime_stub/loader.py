#!/usr/bin/env python3
"""Minimal loader: run this bundle's engine on a closed host with the TensorRT runtime alone.

Needs only Python >= 3.8, numpy, and whichever runtime is present: `tensorrt_rtx`, `tensorrt` or
`tensorrt_lean` for GPU engines, `onnxruntime` for the cpu target. CUDA is reached through ctypes
to the driver library (libcuda.so.1, present wherever the NVIDIA driver is), so there is no
PyTorch, pycuda or cuda-python to install on the closed host.

    python3 -I DIR/runtime/loader.py info     --trust KEY.pub
    python3 -I DIR/runtime/loader.py selftest --trust KEY.pub
    python3 -I DIR/runtime/loader.py run      --trust KEY.pub --input x=x.npy --output out.npz
    python3 -I DIR/runtime/loader.py bench    --trust KEY.pub --iterations 200 --json > bench.json

(DIR is the extracted bundle; run from a working directory outside it.) Keep every file of your own (inputs, outputs, redirected reports) outside the bundle directory:
a file inside it is an extra file, and every later verification fails on it. The loader refuses
to write its own outputs there.

Before loading anything the bundle is verified with a stdlib-only verifier (``--verifier``, by
default ``runtime/verify.py`` beside this file; operators should point it at the standalone copy
they installed and checked once). Trust is read by that verifier, the same way it reads it when
run alone: ``--trust KEY.pub`` (repeatable), else ``BUNDLE_TRUST`` (key files separated by
``os.pathsep``). Without trust it refuses, unless ``--no-verify`` is given: then nothing is
checked against a signature, the manifest and every file are used as found, and every report
says ``"verified": false``. The host state (``--state FILE`` or ``BUNDLE_STATE``, with
``--record``, ``--allow-downgrade``, ``--max-age``) is likewise the verifier's: the loader passes
the flags on, so an older bundle than this host accepted is refused (exit 18).

Exit codes: 0 ok; 2 usage; 3 bad input (files, names, dtypes, shapes); 10-18 verification
failures (as `bundle verify`; 12 also when a file changed after it was verified); 20 no engine in
the bundle fits this host; 21 selftest outside tolerance; 22 runtime or CUDA failure; 130/143
interrupted (SIGINT/SIGTERM).

Run it as ``python3 -I runtime/loader.py ...``. Whatever the flags, its first statement takes its
own directory off the import path, so nothing planted beside it (a ``json.py``, a ``numpy/``) is
ever imported; ``-I`` also ignores PYTHON* variables and the user's site-packages. After the
verifier has proved each file's SHA-256, every file the loader uses (manifest, engine, golden data)
is read exactly once, checked against that proven digest, and used from those bytes: a file
swapped after verification is caught (exit 12), and a path that leaves the bundle is refused.
"""

import sys

if sys.version_info < (3, 8):  # before any import that would fail on an old Python with a traceback
    sys.stderr.write("error [usage]: loader.py needs Python 3.8 or newer; this is Python %d.%d\n" % tuple(sys.version_info[:2]))
    sys.exit(2)

if __name__ == "__main__" and sys.path and not (sys.flags.isolated or getattr(sys.flags, "safe_path", False)):
    # Python put this script's directory first on sys.path: take it off before any other import,
    # so a module planted beside the loader can never shadow the standard library or numpy.
    # (No `from __future__` line above this: that statement is itself an import.)
    del sys.path[0]

import argparse  # noqa: E402 - after the sys.path guard, on purpose
import ctypes  # noqa: E402
import hashlib  # noqa: E402
import io  # noqa: E402
import json  # noqa: E402
import math  # noqa: E402
import os  # noqa: E402
import signal  # noqa: E402
import stat  # noqa: E402
import subprocess  # noqa: E402
import tempfile  # noqa: E402
import time  # noqa: E402
from pathlib import Path  # noqa: E402
from typing import Any, Dict, List, Optional, Tuple  # noqa: E402

EXIT_USAGE = 2
EXIT_INPUT = 3
EXIT_NO_ENGINE = 20
EXIT_SELFTEST = 21
EXIT_RUNTIME = 22


class LoaderError(Exception):
    CLASSES = {EXIT_USAGE: "usage", EXIT_INPUT: "input", EXIT_NO_ENGINE: "no-engine", EXIT_SELFTEST: "selftest",
               EXIT_RUNTIME: "runtime", 10: "archive", 11: "signature", 12: "digest", 13: "members", 14: "unsafe",
               15: "limits", 16: "binding", 4: "key"}

    def __init__(self, message: str, code: int) -> None:
        super().__init__(message)
        self.code = code

    @property
    def failure_class(self) -> str:
        return self.CLASSES.get(self.code, "error")


# -- CUDA through the driver API ------------------------------------------------------------------

class CudaError(LoaderError):
    def __init__(self, what: str, status: int) -> None:
        super().__init__("CUDA call %s failed with error %d" % (what, status), EXIT_RUNTIME)


class Cuda:
    """The few CUDA driver calls the loader needs, through ctypes.

    TensorRT uses the CUDA runtime, which runs on the device's primary context; retaining that
    same context here means our allocations and streams are the ones TensorRT sees.
    """

    CU_DEVICE_ATTRIBUTE_CC_MAJOR = 75
    CU_DEVICE_ATTRIBUTE_CC_MINOR = 76

    def __init__(self, lib: ctypes.CDLL) -> None:
        self.lib = lib
        self.ctx = None
        self.device = None
        lib.cuDeviceGetName.argtypes = [ctypes.c_char_p, ctypes.c_int, ctypes.c_int]
        lib.cuDeviceTotalMem_v2.argtypes = [ctypes.POINTER(ctypes.c_size_t), ctypes.c_int]
        lib.cuDevicePrimaryCtxRetain.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_int]
        lib.cuCtxSetCurrent.argtypes = [ctypes.c_void_p]
        lib.cuMemAlloc_v2.argtypes = [ctypes.POINTER(ctypes.c_uint64), ctypes.c_size_t]
        lib.cuMemFree_v2.argtypes = [ctypes.c_uint64]
        lib.cuMemHostAlloc.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_size_t, ctypes.c_uint]
        lib.cuMemFreeHost.argtypes = [ctypes.c_void_p]
        lib.cuMemcpyHtoDAsync_v2.argtypes = [ctypes.c_uint64, ctypes.c_void_p, ctypes.c_size_t, ctypes.c_void_p]
        lib.cuMemcpyDtoHAsync_v2.argtypes = [ctypes.c_void_p, ctypes.c_uint64, ctypes.c_size_t, ctypes.c_void_p]
        lib.cuStreamCreate.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_uint]
        lib.cuStreamSynchronize.argtypes = [ctypes.c_void_p]
        lib.cuStreamDestroy_v2.argtypes = [ctypes.c_void_p]
        lib.cuStreamBeginCapture_v2.argtypes = [ctypes.c_void_p, ctypes.c_int]
        lib.cuStreamEndCapture.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_void_p)]
        lib.cuGraphInstantiateWithFlags.argtypes = [ctypes.POINTER(ctypes.c_void_p), ctypes.c_void_p, ctypes.c_ulonglong]
        lib.cuGraphLaunch.argtypes = [ctypes.c_void_p, ctypes.c_void_p]
        lib.cuGraphExecDestroy.argtypes = [ctypes.c_void_p]
        lib.cuGraphDestroy.argtypes = [ctypes.c_void_p]

    @classmethod
    def load(cls) -> "Optional[Cuda]":
        # sonames only: ctypes.util.find_library runs ldconfig, gcc and ld from PATH (verify.py)
        for name in ("libcuda.so.1", "libcuda.so", "nvcuda.dll"):
            try:
                lib = ctypes.CDLL(name)
            except OSError:
                continue
            if lib.cuInit(0) != 0:
                return None
            return cls(lib)
        return None

    def check(self, status: int, what: str) -> None:
        if status != 0:
            raise CudaError(what, status)

    def driver_version(self) -> str:
        v = ctypes.c_int(0)
        self.check(self.lib.cuDriverGetVersion(ctypes.byref(v)), "cuDriverGetVersion")
        return "%d.%d" % (v.value // 1000, (v.value % 1000) // 10)

    def devices(self) -> List[Dict[str, Any]]:
        count = ctypes.c_int(0)
        self.check(self.lib.cuDeviceGetCount(ctypes.byref(count)), "cuDeviceGetCount")
        out = []
        for i in range(count.value):
            dev = ctypes.c_int(0)
            self.check(self.lib.cuDeviceGet(ctypes.byref(dev), i), "cuDeviceGet")
            name = ctypes.create_string_buffer(256)
            self.check(self.lib.cuDeviceGetName(name, 256, dev.value), "cuDeviceGetName")
            major, minor = ctypes.c_int(0), ctypes.c_int(0)
            self.check(self.lib.cuDeviceGetAttribute(ctypes.byref(major), self.CU_DEVICE_ATTRIBUTE_CC_MAJOR, dev.value), "cuDeviceGetAttribute")
            self.check(self.lib.cuDeviceGetAttribute(ctypes.byref(minor), self.CU_DEVICE_ATTRIBUTE_CC_MINOR, dev.value), "cuDeviceGetAttribute")
            mem = ctypes.c_size_t(0)
            self.check(self.lib.cuDeviceTotalMem_v2(ctypes.byref(mem), dev.value), "cuDeviceTotalMem")
            out.append({"index": i, "name": name.value.decode(errors="replace"),
                        "cc": "%d.%d" % (major.value, minor.value), "memory_bytes": mem.value})
        return out

    def use_device(self, index: int) -> None:
        dev = ctypes.c_int(0)
        self.check(self.lib.cuDeviceGet(ctypes.byref(dev), index), "cuDeviceGet")
        ctx = ctypes.c_void_p()
        self.check(self.lib.cuDevicePrimaryCtxRetain(ctypes.byref(ctx), dev.value), "cuDevicePrimaryCtxRetain")
        self.check(self.lib.cuCtxSetCurrent(ctx), "cuCtxSetCurrent")
        self.ctx, self.device = ctx, dev.value

    def malloc(self, nbytes: int) -> int:
        p = ctypes.c_uint64(0)
        self.check(self.lib.cuMemAlloc_v2(ctypes.byref(p), max(int(nbytes), 1)), "cuMemAlloc")
        return p.value

    def free(self, ptr: int) -> None:
        self.check(self.lib.cuMemFree_v2(ptr), "cuMemFree")

    def host_alloc(self, nbytes: int) -> int:
        """Pinned (page-locked) host memory: async copies need it to overlap with compute."""
        p = ctypes.c_void_p()
        self.check(self.lib.cuMemHostAlloc(ctypes.byref(p), max(int(nbytes), 1), 0), "cuMemHostAlloc")
        return p.value or 0

    def host_free(self, ptr: int) -> None:
        self.check(self.lib.cuMemFreeHost(ptr), "cuMemFreeHost")

    def stream(self) -> int:
        s = ctypes.c_void_p()
        self.check(self.lib.cuStreamCreate(ctypes.byref(s), 0), "cuStreamCreate")
        return s.value or 0

    def stream_destroy(self, s: int) -> None:
        self.check(self.lib.cuStreamDestroy_v2(s), "cuStreamDestroy")

    def sync(self, s: int) -> None:
        self.check(self.lib.cuStreamSynchronize(s), "cuStreamSynchronize")

    def htod(self, dst: int, src: int, nbytes: int, s: int) -> None:
        self.check(self.lib.cuMemcpyHtoDAsync_v2(dst, src, nbytes, s), "cuMemcpyHtoDAsync")

    def dtoh(self, dst: int, src: int, nbytes: int, s: int) -> None:
        self.check(self.lib.cuMemcpyDtoHAsync_v2(dst, src, nbytes, s), "cuMemcpyDtoHAsync")

    def begin_capture(self, s: int) -> None:
        self.check(self.lib.cuStreamBeginCapture_v2(s, 2), "cuStreamBeginCapture")  # relaxed mode

    def end_capture(self, s: int) -> int:
        g = ctypes.c_void_p()
        self.check(self.lib.cuStreamEndCapture(s, ctypes.byref(g)), "cuStreamEndCapture")
        exe = ctypes.c_void_p()
        try:
            self.check(self.lib.cuGraphInstantiateWithFlags(ctypes.byref(exe), g, 0), "cuGraphInstantiate")
        finally:
            self.lib.cuGraphDestroy(g)
        return exe.value or 0

    def graph_launch(self, exe: int, s: int) -> None:
        self.check(self.lib.cuGraphLaunch(exe, s), "cuGraphLaunch")

    def roundtrip_check(self, nbytes: int = 1 << 20) -> Dict[str, Any]:
        """Allocate, copy host -> device -> host through pinned memory, compare. For `info --cuda-check`."""
        import numpy as np

        s = self.stream()
        src, dst = self.host_alloc(nbytes), self.host_alloc(nbytes)
        dev = self.malloc(nbytes)
        try:
            a = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(src))
            b = np.ctypeslib.as_array((ctypes.c_uint8 * nbytes).from_address(dst))
            a[:] = np.random.default_rng(0).integers(0, 256, nbytes, dtype=np.uint8)
            b[:] = 0
            t0 = time.perf_counter()
            self.htod(dev, src, nbytes, s)
            self.dtoh(dst, dev, nbytes, s)
            self.sync(s)
            dt = time.perf_counter() - t0
            equal = bool((a == b).all())
            # The same copies captured as a CUDA graph and replayed: the path `bench` uses.
            b[:] = 0
            a[:] = a[::-1].copy()
            self.begin_capture(s)
            self.htod(dev, src, nbytes, s)
            self.dtoh(dst, dev, nbytes, s)
            exe = self.end_capture(s)
            try:
                self.graph_launch(exe, s)
                self.sync(s)
            finally:
                self.lib.cuGraphExecDestroy(exe)
            graph_equal = bool((a == b).all())
            return {"bytes": nbytes, "equal": equal and graph_equal, "copies_equal": equal,
                    "graph_replay_equal": graph_equal, "seconds": dt}
        finally:
            self.free(dev)
            self.host_free(src)
            self.host_free(dst)
            self.stream_destroy(s)


# -- the bundle -----------------------------------------------------------------------------------

def printable(text: Any) -> str:
    """Every string shown from a bundle goes through this: printable ASCII passes, a backslash is
    doubled, anything else (control characters, escape sequences, non-ASCII) is written as a
    Python escape. It is the standard library's ``unicode_escape`` codec, the same rule as
    `bundle` and verify.py use, so no terminal ever receives a byte the bundle chose."""
    return str(text).encode("unicode_escape").decode("ascii")


def find_bundle(arg: Optional[str]) -> Path:
    root = Path(arg) if arg else Path(__file__).resolve().parent.parent
    if not root.is_dir():
        raise LoaderError("%s: not an extracted bundle directory; pass --bundle DIR" % printable(root), EXIT_INPUT)
    return root


VERIFICATION_CLASSES = {10, 11, 12, 13, 14, 15, 16, 17, 18}


def verify_bundle(root: Path, trust: List[str], verifier: Optional[str], policy: Optional[str] = None,
                  allow_expired: bool = False, state_flags: Optional[List[str]] = None) -> Dict[str, Tuple[int, str]]:
    """Run the stdlib verifier on ``root`` in an isolated child process (``python -I``).

    Returns what it proved: every signed file's size and SHA-256. Trust (``--policy``,
    ``BUNDLE_POLICY``, ``--trust`` or ``BUNDLE_TRUST``) is read by the verifier itself, so the
    loader and verify.py can never read it differently; so is the host state (``state_flags``:
    --state, --record, --allow-downgrade, --max-age, passed on as given; else ``BUNDLE_STATE``,
    which the child inherits), so a bundle older than one this host accepted is refused here too
    (exit 18). ``allow_expired`` passes ``--allow-expired`` on (only when set: an older
    standalone verify.py lacks the flag). Any failure stops the loader with the verifier's exit code.
    """
    tool = Path(verifier) if verifier else Path(__file__).resolve().parent / "verify.py"
    if not tool.is_file():
        raise LoaderError("%s: verifier not found; pass --verifier PATH to the standalone verify.py" % printable(tool), EXIT_INPUT)
    cmd = [sys.executable, "-I", str(tool), str(root), "--json"]
    for t in trust:
        cmd += ["--trust", t]
    if policy:
        cmd += ["--policy", policy]
    if allow_expired:
        cmd.append("--allow-expired")
    cmd += state_flags or []
    p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, universal_newlines=True)
    try:
        report = json.loads(p.stdout)
        if not isinstance(report, dict):
            raise ValueError("not an object")
    except ValueError:
        raise LoaderError("verifier %s gave no report (exit %d): %s" % (
            printable(tool), p.returncode, " ".join(p.stderr.split())[:300]), EXIT_RUNTIME)
    if p.returncode != 0 or report.get("ok") is not True:
        err = report.get("error") if isinstance(report.get("error"), dict) else {}
        code = p.returncode or EXIT_RUNTIME
        if code in VERIFICATION_CLASSES:
            raise LoaderError("bundle failed verification [%s]: %s" % (err.get("class"), err.get("message")), code)
        raise LoaderError("verifier: %s" % err.get("message"), code)
    proven = {}  # type: Dict[str, Tuple[int, str]]
    for f in report.get("files") or []:
        if f.get("status") == "ok" and isinstance(f.get("expected_sha256"), str) and isinstance(f.get("size"), int):
            proven[f["path"]] = (f["size"], f["expected_sha256"])
    if "manifest.json" not in proven:
        raise LoaderError("verifier %s reported success but proved no manifest.json" % printable(tool), EXIT_RUNTIME)
    return proven


class BundleFiles:
    """Read each file of an extracted bundle once, and only as the verification proved it.

    With ``proven`` (path -> size, SHA-256 from the verifier), a path must be one of the verified
    files; it is opened without following symlinks, read into memory in one pass, hashed, and
    compared with the proven digest before a single byte is used. So a file swapped after the
    verifier finished (a different manifest, a planted engine) is caught, never used. Without
    ``proven`` (``--no-verify``) files are read the same way, unchecked.
    """

    def __init__(self, root: Path, proven: Optional[Dict[str, Tuple[int, str]]]) -> None:
        self.root = root
        self.proven = proven
        self.read_count = {}  # type: Dict[str, int]

    @staticmethod
    def check_path(rel: Any) -> List[str]:
        if not isinstance(rel, str) or not rel or "\\" in rel or "\0" in rel or rel.startswith("/"):
            raise LoaderError("%s: not a path inside the bundle" % printable(rel), EXIT_INPUT)
        parts = rel.split("/")
        if any(p in ("", ".", "..") for p in parts):
            raise LoaderError("%s: not a path inside the bundle" % printable(rel), EXIT_INPUT)
        return parts

    def _open(self, parts: List[str]) -> int:
        nofollow = getattr(os, "O_NOFOLLOW", 0)
        if os.open not in os.supports_dir_fd or not hasattr(os, "O_DIRECTORY"):
            return os.open(os.path.join(str(self.root), *parts), os.O_RDONLY | nofollow | getattr(os, "O_BINARY", 0))
        fd = os.open(str(self.root), os.O_RDONLY | os.O_DIRECTORY)
        try:
            for p in parts[:-1]:
                nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | nofollow, dir_fd=fd)
                os.close(fd)
                fd = nfd
            return os.open(parts[-1], os.O_RDONLY | nofollow | getattr(os, "O_NONBLOCK", 0), dir_fd=fd)
        finally:
            os.close(fd)

    def read(self, rel: Any) -> bytes:
        parts = self.check_path(rel)
        want = None  # type: Optional[Tuple[int, str]]
        if self.proven is not None:
            want = self.proven.get(rel)
            if want is None:
                raise LoaderError("%s: not a verified file of this bundle" % printable(rel), EXIT_INPUT)
        where = printable(rel)
        try:
            fd = self._open(parts)
        except OSError as e:
            code = 12 if want is not None else EXIT_INPUT
            raise LoaderError("%s: cannot open (%s)%s" % (where, e.strerror or e, "; it changed after verification" if want else ""), code)
        try:
            st = os.fstat(fd)
            if not stat.S_ISREG(st.st_mode):
                raise LoaderError("%s: not a regular file%s" % (where, "; it changed after verification" if want else ""), 12 if want else EXIT_INPUT)
            size = want[0] if want is not None else st.st_size
            buf = bytearray(size)
            view = memoryview(buf)
            got = 0
            with os.fdopen(fd, "rb", buffering=0, closefd=False) as f:
                while got < size:
                    n = f.readinto(view[got:])
                    if not n:
                        break
                    got += n
                extra = f.read(1)
        finally:
            os.close(fd)
        self.read_count[rel] = self.read_count.get(rel, 0) + 1
        if want is not None:
            if got != size or extra or hashlib.sha256(buf).hexdigest() != want[1]:
                raise LoaderError("%s: changed after it was verified (its SHA-256 or size differs from the signed "
                                  "digest); nothing was used; extract the bundle again" % where, 12)
        elif got != size:
            raise LoaderError("%s: changed while it was read" % where, EXIT_INPUT)
        return bytes(buf)

    def json(self, rel: str) -> Any:
        try:
            return json.loads(self.read(rel).decode("utf-8"), parse_constant=_no_constant)
        except ValueError as e:  # bad UTF-8, bad JSON, NaN: unusable even if signed
            raise LoaderError("%s: not usable JSON (%s)" % (printable(rel), printable(e)), EXIT_INPUT)

    def npz(self, rel: str) -> Dict[str, Any]:
        return read_npz(self.read(rel), rel)


def _data_errors() -> Tuple[type, ...]:
    """What numpy and zipfile raise for bytes that are not a usable array file (each one found by
    fuzz/targets/npz.py): one LoaderError (exit 3) for all of them, never exit 22."""
    import struct
    import tokenize
    import zipfile
    import zlib

    return (ValueError, OSError, EOFError, KeyError, IndexError, TypeError, NotImplementedError, MemoryError,
            OverflowError, SyntaxError, RecursionError, zipfile.BadZipFile, zlib.error, tokenize.TokenError, struct.error)


def read_npz(data: bytes, where: str) -> Dict[str, Any]:
    """The arrays of an .npz held in memory (golden data: the bytes read once and checked against
    the proven digest), loaded with pickling off. bundle-format.md 5.4: a ZIP whose members are
    stored, not compressed; a compressed member is refused before anything is inflated (1 MB of
    deflated zeros used to hold 1 GB here). Anything unusable is one LoaderError (exit 3)."""
    import zipfile

    import numpy as np

    try:
        with zipfile.ZipFile(io.BytesIO(data)) as zf:
            for info in zf.infolist():
                if info.compress_type != zipfile.ZIP_STORED:
                    raise ValueError("member %s is compressed; golden data is stored uncompressed" % info.filename)
                if info.flag_bits & 0x1:
                    raise ValueError("member %s is encrypted" % info.filename)
        with np.load(io.BytesIO(data), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
        for k, v in arrays.items():
            if not isinstance(v, np.ndarray):  # numpy hands back the raw bytes of a member that is no .npy
                raise ValueError("member %s is not an .npy array" % k)
        return arrays
    except _data_errors() as e:
        raise LoaderError("%s: not a usable .npz (%s: %s)" % (printable(where), type(e).__name__, printable(e)), EXIT_INPUT)


def load_input(spec: str) -> Tuple[str, Any]:
    """``--input NAME=FILE.npy``: the operator's array, loaded with pickling off; anything
    unusable (an .npz, which holds several arrays, included) is one LoaderError (exit 3).
    fuzz/targets/npz.py fuzzes this function too."""
    import numpy as np

    name, sep, file = spec.partition("=")
    if not sep or not name or not file:
        raise LoaderError("--input %s: use NAME=FILE.npy" % printable(spec), EXIT_USAGE)
    try:
        array = np.load(file, allow_pickle=False)
    except _data_errors() as e:
        raise LoaderError("--input %s: cannot read %s (%s: %s)" % (printable(spec), printable(file), type(e).__name__, printable(e)), EXIT_INPUT)
    if not isinstance(array, np.ndarray):
        close = getattr(array, "close", None)
        if close is not None:
            close()
        raise LoaderError("--input %s: %s holds several arrays (an .npz); give one .npy per input" % (printable(spec), printable(file)), EXIT_INPUT)
    return name, array


def _no_constant(name: str) -> Any:
    raise ValueError("%s is not a JSON number" % name)


def stop_after_verify_for_tests() -> None:
    """Test seam: with BUNDLE_LOADER_TEST_STOP=1 the loader stops itself (SIGSTOP) right after the
    verifier has finished and before it reads anything, so a test can swap files in that window
    and resume it (SIGCONT). It weakens nothing: the stop only widens a window that always exists."""
    if os.environ.get("BUNDLE_LOADER_TEST_STOP") == "1" and hasattr(signal, "SIGSTOP"):
        os.kill(os.getpid(), signal.SIGSTOP)


def runtime_versions() -> Dict[str, str]:
    """Installed runtimes by product, read from package metadata (importing TensorRT is slow)."""
    import importlib.util

    try:
        from importlib import metadata
    except ImportError:  # pragma: no cover - Python < 3.8
        return {}
    out = {}
    candidates = {
        "tensorrt-rtx": ("tensorrt_rtx", ["tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx", "tensorrt_rtx_cu13", "tensorrt_rtx_cu12"]),
        "tensorrt": ("tensorrt", ["tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt_cu13", "tensorrt_cu12"]),
        "tensorrt-lean": ("tensorrt_lean", ["tensorrt-lean", "tensorrt-lean-cu13", "tensorrt-lean-cu12"]),
        "onnxruntime": ("onnxruntime", ["onnxruntime", "onnxruntime-gpu"]),
    }
    for product, (module, dists) in candidates.items():
        if importlib.util.find_spec(module) is None:
            continue
        for d in dists:
            try:
                out[product] = metadata.version(d)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            out[product] = "unknown"
    return out


def _version_matches(engine: str, runtime: str) -> bool:
    a, b = engine.split("."), runtime.split(".")
    n = min(len(a), len(b))
    return n >= 3 and a[:n] == b[:n]


def assess(manifest: Dict[str, Any], gpus: List[Dict[str, Any]], runtimes: Dict[str, str]) -> List[Dict[str, Any]]:
    """For every engine: does it fit this host, and if not, why not. Best fit first."""
    out = []
    for e in manifest.get("engines", []):
        backend = e["backend"]["name"]
        header = e.get("header") or {}
        item = {"path": e["path"], "target": e["target"]["label"], "backend": backend, "precision": e["build"]["precision"],
                "version": header.get("version") or e["backend"]["version"], "fits": False, "why": "", "gpu": None}
        if backend == "onnxruntime":
            if "onnxruntime" in runtimes:
                item.update(fits=True, why="cpu target: onnxruntime %s" % runtimes["onnxruntime"])
            else:
                item["why"] = "cpu target needs onnxruntime, which is not installed"
            out.append(item)
            continue
        ccs = header.get("cc") or ([e["target"]["cc"]] if e["target"].get("cc") else [])
        product = header.get("product") or backend
        candidates = [product] + (["tensorrt-lean"] if product == "tensorrt" else [])
        rt = next((runtimes[p] for p in candidates if p in runtimes), None)
        gpu = next((g for g in gpus if g["cc"] in ccs), None)
        reasons = []
        if not gpus:
            reasons.append("no GPU on this host")
        elif gpu is None:
            reasons.append("built for compute capability %s; this host has %s" % (
                ", ".join(ccs) or "?", ", ".join("%s (%s)" % (g["cc"], g["name"]) for g in gpus)))
        if rt is None:
            reasons.append("needs %s %s, not installed" % (product, item["version"]))
        elif not _version_matches(item["version"], rt):
            reasons.append("needs %s %s, host has %s" % (product, item["version"], rt))
        if reasons:
            item["why"] = "; ".join(reasons)
        else:
            item.update(fits=True, why="GPU %d %s (cc %s) with %s %s" % (gpu["index"], gpu["name"], gpu["cc"], product, rt), gpu=gpu["index"])
        out.append(item)
    # GPU engines before the cpu one (a GPU that fits is why the bundle was made); then the
    # precision the model was trained in before reduced ones, unless --precision says otherwise.
    order = {"fp32": 0, "fp16": 1, "bf16": 2, "int8": 3, "fp8": 4}
    out.sort(key=lambda i: (not i["fits"], i["backend"] == "onnxruntime", order.get(i["precision"], 9), i["path"]))
    return out


def choose(manifest: Dict[str, Any], gpus: List[Dict[str, Any]], runtimes: Dict[str, str], want: Optional[str],
           precision: Optional[str] = None) -> Tuple[Dict[str, Any], Dict[str, Any]]:
    items = assess(manifest, gpus, runtimes)
    if precision:
        items = [i for i in items if i["precision"] == precision]
        if not items:
            have = sorted({e["build"]["precision"] for e in manifest["engines"]})
            raise LoaderError("--precision %s: the bundle has engines in %s" % (precision, ", ".join(have)), EXIT_USAGE)
    if want:
        items = [i for i in items if i["target"] == want or i["path"] == want or i["path"].split("/")[-1] == want]
        if not items:
            raise LoaderError("--engine %s: no such engine; the bundle has %s" % (
                want, ", ".join(sorted({e["target"]["label"] for e in manifest["engines"]}))), EXIT_USAGE)
    fit = [i for i in items if i["fits"]]
    if not fit:
        host = ", ".join("%s (cc %s)" % (g["name"], g["cc"]) for g in gpus) or "no GPU"
        offers = "; ".join("%s: %s" % (i["target"], i["why"]) for i in items)
        raise LoaderError("no engine in this bundle fits this host [%s]; the bundle offers: %s" % (host, offers), EXIT_NO_ENGINE)
    item = fit[0]
    record = next(e for e in manifest["engines"] if e["path"] == item["path"])
    return item, record


# -- runners --------------------------------------------------------------------------------------

class OrtRunner:
    """The cpu target: the ONNX model run by onnxruntime's CPU provider."""

    def __init__(self, model: bytes) -> None:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        # From the verified bytes, never from the path: the file may have changed since.
        self.sess = ort.InferenceSession(model, opts, providers=["CPUExecutionProvider"])
        self.output_names = [o.name for o in self.sess.get_outputs()]

    def infer(self, feeds: Dict[str, Any]) -> Dict[str, Any]:
        return dict(zip(self.output_names, self.sess.run(self.output_names, feeds)))

    def time_once(self, feeds: Dict[str, Any]) -> float:
        t0 = time.perf_counter()
        self.sess.run(self.output_names, feeds)
        return time.perf_counter() - t0

    def close(self) -> None:
        pass


class TrtRunner:
    """A TensorRT engine on one GPU: pinned host buffers, one stream, a CUDA graph where allowed."""

    def __init__(self, plan: bytes, where: str, product: str, cuda: Cuda, gpu: int) -> None:
        import importlib

        module = {"tensorrt-rtx": "tensorrt_rtx", "tensorrt": "tensorrt"}.get(product, "tensorrt")
        try:
            trt = importlib.import_module(module)
        except ImportError:
            trt = importlib.import_module("tensorrt_lean")
        self.trt, self.cuda = trt, cuda
        cuda.use_device(gpu)
        self.logger = trt.Logger(trt.Logger.WARNING)
        self.runtime = trt.Runtime(self.logger)
        self.engine = self.runtime.deserialize_cuda_engine(plan)  # the verified bytes, read once
        if self.engine is None:
            raise LoaderError("%s: the TensorRT runtime refused to deserialize the engine (see its log above)" % printable(where), EXIT_RUNTIME)
        self.context = self.engine.create_execution_context()
        self.stream = cuda.stream()
        self.names = [self.engine.get_tensor_name(i) for i in range(self.engine.num_io_tensors)]
        self.inputs = [n for n in self.names if self.engine.get_tensor_mode(n) == trt.TensorIOMode.INPUT]
        self.outputs = [n for n in self.names if n not in self.inputs]
        self.buffers: Dict[str, Tuple[int, int, int]] = {}  # name -> (device ptr, pinned host ptr, bytes)
        self.graph = None
        self.graph_shapes = None
        self.profile = 0

    def use_profile(self, index: int) -> None:
        """Select the optimization profile the next inputs fit (engines may have several)."""
        if index != self.profile:
            if not self.context.set_optimization_profile_async(index, self.stream):
                raise LoaderError("TensorRT refused optimization profile %d" % index, EXIT_RUNTIME)
            self.cuda.sync(self.stream)
            self.profile = index
            self.graph = None

    def _buffer(self, name: str, nbytes: int) -> Tuple[int, int, int]:
        cur = self.buffers.get(name)
        if cur is None or cur[2] < nbytes:
            if cur is not None:
                self.cuda.free(cur[0])
                self.cuda.host_free(cur[1])
            cur = (self.cuda.malloc(nbytes), self.cuda.host_alloc(nbytes), nbytes)
            self.buffers[name] = cur
            self.graph = None  # addresses changed
        return cur

    def _stage(self, feeds: Dict[str, Any]) -> Dict[str, Tuple[Tuple[int, ...], Any]]:
        import numpy as np

        shapes = {}
        for n in self.inputs:
            a = np.ascontiguousarray(feeds[n])
            self.context.set_input_shape(n, tuple(a.shape))
            dev, host, _ = self._buffer(n, a.nbytes)
            ctypes.memmove(host, a.ctypes.data, a.nbytes)
            self.context.set_tensor_address(n, dev)
            shapes[n] = (tuple(a.shape), a.dtype)
        out = {}
        for n in self.outputs:
            shape = tuple(self.context.get_tensor_shape(n))
            dtype = np.dtype(self.trt.nptype(self.engine.get_tensor_dtype(n)))
            nbytes = int(np.prod(shape)) * dtype.itemsize
            dev, host, _ = self._buffer(n, nbytes)
            self.context.set_tensor_address(n, dev)
            out[n] = (shape, dtype)
        return {"in": shapes, "out": out}

    def _enqueue(self, io: Dict[str, Any]) -> None:
        for n, (shape, dtype) in io["in"].items():
            dev, host, _ = self.buffers[n]
            self.cuda.htod(dev, host, int(self._nbytes(shape, dtype)), self.stream)
        if not self.context.execute_async_v3(self.stream):
            raise LoaderError("TensorRT execute_async_v3 failed", EXIT_RUNTIME)
        for n, (shape, dtype) in io["out"].items():
            dev, host, _ = self.buffers[n]
            self.cuda.dtoh(host, dev, int(self._nbytes(shape, dtype)), self.stream)

    @staticmethod
    def _nbytes(shape: Tuple[int, ...], dtype: Any) -> int:
        n = 1
        for d in shape:
            n *= int(d)
        return n * dtype.itemsize

    def _collect(self, io: Dict[str, Any]) -> Dict[str, Any]:
        import numpy as np

        res = {}
        for n, (shape, dtype) in io["out"].items():
            _, host, _ = self.buffers[n]
            nbytes = self._nbytes(shape, dtype)
            raw = (ctypes.c_uint8 * max(nbytes, 1)).from_address(host)
            res[n] = np.frombuffer(bytes(raw)[:nbytes], dtype=dtype).reshape(shape).copy()
        return res

    def infer(self, feeds: Dict[str, Any]) -> Dict[str, Any]:
        io = self._stage(feeds)
        self._enqueue(io)
        self.cuda.sync(self.stream)
        return self._collect(io)

    def capture(self, feeds: Dict[str, Any]) -> bool:
        """Capture copies + execution as one CUDA graph; False where the engine does not allow it."""
        io = self._stage(feeds)
        self._enqueue(io)  # one plain run first: TensorRT finishes lazy setup outside capture
        self.cuda.sync(self.stream)
        try:
            self.cuda.begin_capture(self.stream)
            self._enqueue(io)
            self.graph = self.cuda.end_capture(self.stream)
            return True
        except LoaderError:
            self.graph = None
            return False

    def time_once(self, feeds: Dict[str, Any]) -> float:
        t0 = time.perf_counter()
        if self.graph:
            self.cuda.graph_launch(self.graph, self.stream)
        else:
            self._enqueue(self._stage(feeds))
        self.cuda.sync(self.stream)
        return time.perf_counter() - t0

    def close(self) -> None:
        for dev, host, _ in self.buffers.values():
            self.cuda.free(dev)
            self.cuda.host_free(host)
        self.buffers = {}


def open_runner(files: BundleFiles, item: Dict[str, Any], record: Dict[str, Any], cuda: Optional[Cuda]) -> Any:
    if record["backend"]["name"] == "onnxruntime":
        return OrtRunner(files.read(record["path"]))
    if cuda is None:
        raise LoaderError("no CUDA driver on this host", EXIT_NO_ENGINE)
    product = (record.get("header") or {}).get("product") or record["backend"]["name"]
    return TrtRunner(files.read(record["path"]), record["path"], product, cuda, item["gpu"] or 0)


# -- inputs ---------------------------------------------------------------------------------------

def check_feeds(record: Dict[str, Any], model: Dict[str, Any], feeds: Dict[str, Any]) -> int:
    """Names, dtypes and shapes inside one of the engine's optimization profiles, before anything
    runs. Returns the index of the first profile that fits."""
    import numpy as np

    want = {t["name"]: t for t in model["inputs"]}
    missing = sorted(set(want) - set(feeds))
    extra = sorted(set(feeds) - set(want))
    if missing or extra:
        raise LoaderError("inputs needed: %s; given: %s" % (", ".join(sorted(want)), ", ".join(sorted(feeds)) or "none"), EXIT_INPUT)
    for name, a in feeds.items():
        t = want[name]
        if a.dtype != np.dtype(t["dtype"]):
            raise LoaderError("input %s is %s; the model takes %s" % (name, a.dtype, t["dtype"]), EXIT_INPUT)
    profiles = record["build"]["profiles"]

    def fits(profile: Dict[str, Any], name: str, a: Any) -> bool:
        rng = profile[name]
        return a.ndim == len(rng["min"]) and all(lo <= d <= hi for d, lo, hi in zip(a.shape, rng["min"], rng["max"]))

    for i, profile in enumerate(profiles):
        if all(fits(profile, n, a) for n, a in feeds.items()):
            return i
    name, a = next((n, a) for n, a in feeds.items() if not fits(profiles[0], n, a))
    ranges = " or ".join("%s .. %s" % ("x".join(map(str, p[name]["min"])), "x".join(map(str, p[name]["max"]))) for p in profiles)
    raise LoaderError("input %s has shape %s, outside the engine's profile%s %s" % (
        name, "x".join(map(str, a.shape)), "s" if len(profiles) > 1 else "", ranges), EXIT_INPUT)


def save_npz_atomic(path: Path, arrays: Dict[str, Any]) -> None:
    import numpy as np

    path = Path(path)
    if path.exists():
        raise LoaderError("%s: already exists; not overwritten" % path, EXIT_INPUT)
    fd, tmp = tempfile.mkstemp(prefix=".%s.partial-" % path.name, dir=str(path.parent or "."))
    try:
        with os.fdopen(fd, "wb") as f:
            np.savez(f, **arrays)
        os.link(tmp, str(path))
    finally:
        os.unlink(tmp)


# -- commands -------------------------------------------------------------------------------------

def _host(cuda: Optional[Cuda]) -> Dict[str, Any]:
    if cuda is None:
        return {"driver": None, "gpus": []}
    return {"driver": cuda.driver_version(), "gpus": cuda.devices()}


def _finite(value: Any) -> Any:
    """JSON has no NaN or Infinity: a non-finite figure (a NaN output, say) is written as null."""
    if isinstance(value, float) and not math.isfinite(value):
        return None
    if isinstance(value, dict):
        return {k: _finite(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [_finite(v) for v in value]
    return value


def _print(args: argparse.Namespace, doc: Dict[str, Any], lines: List[str], code: int = 0) -> None:
    """With --json: one document with ok, exit_code, error and verified on top, as every bundle
    command. Human lines go through `printable`, since they quote the manifest."""
    if args.json:
        doc = dict(doc, ok=code == 0, exit_code=code, error=doc.get("error"), verified=args.verified)
        print(json.dumps(_finite(doc), indent=2, sort_keys=True, allow_nan=False))
    else:
        print("\n".join(printable(line) for line in lines))


def _inside(path: Path, root: Path) -> bool:
    """Would ``path`` land inside the bundle directory (after symlinks in its parents)?"""
    try:
        where = Path(os.path.realpath(str(path)))
        top = Path(os.path.realpath(str(root)))
    except (OSError, ValueError):
        return False
    return where == top or top in where.parents


def refuse_outputs_inside(args: argparse.Namespace, root: Path) -> None:
    """Operator files inside the bundle directory break every later verification ("extra
    file"), so the loader writes none there, and says so before it does any work."""
    why = ("inside the bundle directory %s: an extra file there makes every later verification fail; "
           "write it outside the bundle" % printable(root))
    out = getattr(args, "output", None)
    if out and _inside(Path(out), root):
        raise LoaderError("--output %s is %s" % (printable(out), why), EXIT_USAGE)
    try:  # `loader.py bench --json > DIR/bench.json`: the shell made the file before we ran
        target = os.readlink("/proc/self/fd/1")
    except OSError:
        return
    if target.startswith("/") and _inside(Path(target), root) and os.path.isfile(target):
        raise LoaderError("standard output is redirected to %s, %s" % (printable(target), why), EXIT_USAGE)


def cmd_info(args: argparse.Namespace, files: BundleFiles, manifest: Dict[str, Any], cuda: Optional[Cuda]) -> int:
    host = _host(cuda)
    runtimes = runtime_versions()
    items = assess(manifest, host["gpus"], runtimes)
    doc = {"bundle": str(files.root), "name": manifest["name"], "version": manifest["version"], "host": host,
           "runtimes": runtimes, "engines": items, "chosen": next((i["path"] for i in items if i["fits"]), None)}
    if args.cuda_check and cuda is not None and host["gpus"]:
        cuda.use_device(0)
        doc["cuda_check"] = cuda.roundtrip_check()
    lines = ["bundle:   %s %s (%s)" % (manifest["name"], manifest["version"], files.root),
             "driver:   %s" % (host["driver"] or "none (no NVIDIA driver found)")]
    for g in host["gpus"]:
        lines.append("gpu %d:    %s, compute capability %s, %.1f GiB" % (g["index"], g["name"], g["cc"], g["memory_bytes"] / 2 ** 30))
    lines.append("runtimes: %s" % (", ".join("%s %s" % kv for kv in sorted(runtimes.items())) or "none"))
    for i in items:
        lines.append("%s %-8s %-5s %s: %s" % ("*" if i["path"] == doc["chosen"] else " ", i["target"], i["precision"],
                                              i["path"].split("/")[-1], i["why"]))
    if "cuda_check" in doc:
        c = doc["cuda_check"]
        lines.append("cuda:     %d-byte host->device->host round trip %s in %.2f ms; replayed as a CUDA graph %s" % (
            c["bytes"], "OK" if c["copies_equal"] else "MISMATCH", c["seconds"] * 1e3, "OK" if c["graph_replay_equal"] else "MISMATCH"))
    lines.append("chosen:   %s" % (doc["chosen"] or "none: no engine fits this host"))
    code = EXIT_RUNTIME if "cuda_check" in doc and not doc["cuda_check"]["equal"] else 0
    _print(args, doc, lines, code)
    return code


def _compare(outputs: Dict[str, Any], ref: Dict[str, Any], atol: float, rtol: float) -> Dict[str, Any]:
    """Each output against its reference by np.allclose's rule, |out - ref| <= atol + rtol*|ref|
    per element, and the figure that decided it: the worst element's error and what it was
    allowed (``worst``), and how many elements broke the rule. "max abs err 0.03" alone cannot
    say why a selftest failed when the tolerance has a relative part."""
    import numpy as np

    res = {"ok": True, "max_abs_err": 0.0, "max_rel_err": 0.0, "outputs": {}, "worst": None}
    worst_excess = -float("inf")
    for name, r in ref.items():
        if name not in outputs:
            res["ok"] = False
            res["outputs"][name] = {"ok": False, "why": "missing"}
            res["worst"] = {"output": name, "why": "missing"}
            worst_excess = float("inf")
            continue
        o = np.asarray(outputs[name])
        if o.shape != r.shape:
            res["ok"] = False
            why = "shape %s vs reference %s" % (o.shape, r.shape)
            res["outputs"][name] = {"ok": False, "why": why}
            res["worst"] = {"output": name, "why": why}
            worst_excess = float("inf")
            continue
        of, rf = o.astype(np.float64), r.astype(np.float64)
        with np.errstate(invalid="ignore", over="ignore"):
            diff = np.abs(of - rf)
            allowed = atol + rtol * np.abs(rf)
            close = np.isclose(of, rf, atol=atol, rtol=rtol)  # np.allclose, element by element
            excess = diff - allowed
        # NaN (a NaN output, or inf - inf) counts as the worst there is unless isclose accepted it
        excess = np.where(np.isnan(excess), np.where(close, -np.inf, np.inf), excess)
        bad = int(close.size - np.count_nonzero(close))
        abs_err = float(diff.max()) if diff.size else 0.0
        rel_err = float((diff / np.maximum(np.abs(rf), 1e-12)).max()) if diff.size else 0.0
        ok = bad == 0
        entry = {"ok": ok, "max_abs_err": abs_err, "max_rel_err": rel_err, "out_of_tolerance": bad,
                 "elements": int(close.size)}
        if excess.size:
            i = int(np.argmax(excess))
            entry["worst"] = {"output": name, "index": [int(x) for x in np.unravel_index(i, excess.shape)],
                              "err": float(diff.flat[i]), "allowed": float(allowed.flat[i]),
                              "out_of_tolerance": bad, "elements": int(close.size)}
            if float(excess.flat[i]) > worst_excess or res["worst"] is None:
                worst_excess = float(excess.flat[i])
                res["worst"] = entry["worst"]
        res["outputs"][name] = entry
        res["ok"] = res["ok"] and ok
        res["max_abs_err"] = max(res["max_abs_err"], abs_err)
        res["max_rel_err"] = max(res["max_rel_err"], rel_err)
    return res


def _deciding_line(res: Dict[str, Any], atol: float, rtol: float) -> str:
    """The figure that decided PASS or FAIL, as one line: the worst element's error against
    what np.allclose's rule allowed it, and how many elements were out of tolerance."""
    w = res.get("worst")
    if w is None:
        return "no output elements to compare"
    if "why" in w:
        return "output %s: %s" % (w["output"], w["why"])
    where = "%s[%s]" % (w["output"], ",".join(str(i) for i in w["index"]))
    rule = "atol %g + rtol %g*|ref|" % (atol, rtol)
    if w["out_of_tolerance"]:
        return "%d of %d elements of %s out of tolerance; worst %s: |out-ref| %.3g > %s = %.3g" % (
            w["out_of_tolerance"], w["elements"], w["output"], where, w["err"], rule, w["allowed"])
    return "every element within tolerance; nearest the limit %s: |out-ref| %.3g <= %s = %.3g" % (
        where, w["err"], rule, w["allowed"])


def cmd_selftest(args: argparse.Namespace, files: BundleFiles, manifest: Dict[str, Any], cuda: Optional[Cuda]) -> int:
    golden = manifest.get("golden")
    if not golden:
        raise LoaderError("this bundle has no golden data (it was created with --no-golden)", EXIT_INPUT)
    host = _host(cuda)
    item, record = choose(manifest, host["gpus"], runtime_versions(), args.engine, args.precision)
    inputs = files.npz(golden["inputs"])
    ref = files.npz(golden["outputs"])
    precision = record["build"]["precision"]
    tol = golden["tolerances"].get(precision) or golden["tolerances"]["fp32"]
    runner = open_runner(files, item, record, cuda)
    try:
        t0 = time.perf_counter()
        outputs = runner.infer(inputs)
        latency = time.perf_counter() - t0
    finally:
        runner.close()
    res = _compare(outputs, ref, tol["atol"], tol["rtol"])
    doc = {"engine": record["path"], "target": record["target"]["label"], "precision": precision, "pass": res["ok"],
           "atol": tol["atol"], "rtol": tol["rtol"], "max_abs_err": res["max_abs_err"], "max_rel_err": res["max_rel_err"],
           "latency_ms": latency * 1e3, "reference": golden["reference"], "outputs": res["outputs"],
           "worst": res["worst"]}
    lines = ["%s %s on %s (%s): %s" % ("PASS" if res["ok"] else "FAIL", record["path"].split("/")[-1], item["why"],
                                       precision, _deciding_line(res, tol["atol"], tol["rtol"])),
             "max abs err %.3g, max rel err %.3g (tolerance atol %g, rtol %g, against %s)" % (
                 res["max_abs_err"], res["max_rel_err"], tol["atol"], tol["rtol"], golden["reference"]),
             "latency %.3f ms (first run, includes copies)" % (latency * 1e3)]
    code = 0 if res["ok"] else EXIT_SELFTEST
    _print(args, doc, lines, code)
    return code


def cmd_run(args: argparse.Namespace, files: BundleFiles, manifest: Dict[str, Any], cuda: Optional[Cuda]) -> int:
    feeds = {}
    for spec in args.input:
        name, array = load_input(spec)
        feeds[name] = array
    if Path(args.output).exists():
        raise LoaderError("%s: already exists; not overwritten" % printable(args.output), EXIT_INPUT)
    host = _host(cuda)
    item, record = choose(manifest, host["gpus"], runtime_versions(), args.engine, args.precision)
    profile = check_feeds(record, manifest["model"], feeds)
    runner = open_runner(files, item, record, cuda)
    try:
        if isinstance(runner, TrtRunner):
            runner.use_profile(profile)
        outputs = runner.infer(feeds)
    finally:
        runner.close()
    save_npz_atomic(Path(args.output), outputs)
    doc = {"engine": record["path"], "output": str(args.output),
           "outputs": {k: {"shape": list(v.shape), "dtype": str(v.dtype)} for k, v in outputs.items()}}
    _print(args, doc, ["%s -> %s" % (record["path"].split("/")[-1], args.output)] +
           ["  %s: %s %s" % (k, v.dtype, "x".join(map(str, v.shape))) for k, v in outputs.items()])
    return 0


def cmd_bench(args: argparse.Namespace, files: BundleFiles, manifest: Dict[str, Any], cuda: Optional[Cuda]) -> int:
    import numpy as np

    golden = manifest.get("golden")
    if not golden:
        raise LoaderError("bench uses the bundle's golden inputs; this bundle has none", EXIT_INPUT)
    host = _host(cuda)
    item, record = choose(manifest, host["gpus"], runtime_versions(), args.engine, args.precision)
    feeds = files.npz(golden["inputs"])
    runner = open_runner(files, item, record, cuda)
    graph = False
    try:
        if isinstance(runner, TrtRunner) and not args.no_graph:
            graph = runner.capture(feeds)
        for _ in range(args.warmup):
            runner.time_once(feeds)
        times = []
        start = time.perf_counter()
        while True:
            times.append(runner.time_once(feeds))
            if args.seconds is not None:
                if time.perf_counter() - start >= args.seconds:
                    break
            elif len(times) >= args.iterations:
                break
        wall = time.perf_counter() - start
    finally:
        runner.close()
    t = np.array(times) * 1e3
    batch = int(next(iter(feeds.values())).shape[0]) if feeds and next(iter(feeds.values())).ndim else 1
    doc = {"engine": record["path"], "target": record["target"]["label"], "iterations": len(times), "warmup": args.warmup,
           "cuda_graph": graph, "batch": batch,
           "latency_ms": {"p50": float(np.percentile(t, 50)), "p90": float(np.percentile(t, 90)),
                          "p99": float(np.percentile(t, 99)), "mean": float(t.mean()), "min": float(t.min())},
           "throughput_per_s": len(times) * batch / wall if wall > 0 else None}
    lat = doc["latency_ms"]
    _print(args, doc, ["%s: %d iterations after %d warm-up%s" % (record["path"].split("/")[-1], len(times), args.warmup,
                                                               ", CUDA graph" if graph else ""),
                       "latency ms: p50 %.3f  p90 %.3f  p99 %.3f" % (lat["p50"], lat["p90"], lat["p99"]),
                       "throughput: %.1f samples/s (batch %d)" % (doc["throughput_per_s"] or 0, batch)])
    return 0


def build_parser() -> argparse.ArgumentParser:
    common = argparse.ArgumentParser(add_help=False)
    common.add_argument("--bundle", help="extracted bundle directory (default: the one this file is in)")
    common.add_argument("--trust", action="append", default=[], help="trusted public key PEM (default: $BUNDLE_TRUST)")
    common.add_argument("--policy", help="trust policy file (default: $BUNDLE_POLICY); replaces --trust")
    common.add_argument("--verifier", help="verify.py to use (default: runtime/verify.py of the bundle)")
    common.add_argument("--no-verify", action="store_true", help="skip verification (not recommended)")
    common.add_argument("--allow-expired", action="store_true",
                        help="accept a bundle whose signature has expired (passed to the verifier)")
    common.add_argument("--state", metavar="FILE", help="host state file, passed to the verifier (default: $BUNDLE_STATE)")
    common.add_argument("--record", action="store_true", help="the verifier records the bundle in the host state")
    common.add_argument("--allow-downgrade", action="store_true", help="the verifier accepts a lower version than "
                        "this host accepted before")
    common.add_argument("--max-age", metavar="DURATION", help="the verifier refuses a bundle sealed more than DURATION "
                        "before the newest one of its name seen on this host")
    common.add_argument("--engine", help="force an engine, by target label or file name")
    common.add_argument("--precision", help="only engines of this precision (fp32, fp16, bf16, int8, fp8)")
    common.add_argument("--json", action="store_true", help="print one JSON document")
    p = argparse.ArgumentParser(prog="loader.py", description="Run a verified bundle's engine on this host.")
    sub = p.add_subparsers(dest="command")
    info = sub.add_parser("info", parents=[common], help="host GPUs, runtimes, and which engine fits")
    info.add_argument("--cuda-check", action="store_true", help="also do a host->device->host copy round trip")
    sub.add_parser("selftest", parents=[common], help="run the golden inputs and compare with the reference")
    run = sub.add_parser("run", parents=[common], help="run on your inputs")
    run.add_argument("--input", action="append", default=[], required=True, metavar="NAME=FILE.npy")
    run.add_argument("--output", required=True, metavar="OUT.npz")
    bench = sub.add_parser("bench", parents=[common], help="latency and throughput")
    bench.add_argument("--iterations", type=int, default=100)
    bench.add_argument("--seconds", type=float, default=None)
    bench.add_argument("--warmup", type=int, default=10)
    bench.add_argument("--no-graph", action="store_true", help="do not capture a CUDA graph")
    return p


def state_flags(args: argparse.Namespace) -> List[str]:
    """The host-state flags given to the loader, as the verifier takes them."""
    flags = ["--state", args.state] if args.state else []
    flags += ["--record"] if args.record else []
    flags += ["--allow-downgrade"] if args.allow_downgrade else []
    flags += ["--max-age", args.max_age] if args.max_age else []
    return flags


class Terminated(BaseException):
    """SIGTERM (a CI cancel, `timeout`): unwinds like Ctrl-C so temporary files are removed."""


def _terminated(signum: int, frame: Any) -> None:
    raise Terminated()


COMMANDS = {"info": cmd_info, "selftest": cmd_selftest, "run": cmd_run, "bench": cmd_bench}


def main(argv: Optional[List[str]] = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not args.command:
        parser.print_help(sys.stderr)
        return EXIT_USAGE
    args.verified = False
    previous_term = signal.signal(signal.SIGTERM, _terminated)  # cleanup (finally blocks) on SIGTERM too
    try:
        root = find_bundle(args.bundle)
        refuse_outputs_inside(args, root)
        if args.no_verify and state_flags(args):
            raise LoaderError("--state, --record, --allow-downgrade and --max-age need verification; "
                              "they cannot go with --no-verify", EXIT_USAGE)
        if args.no_verify:
            sys.stderr.write("warning: --no-verify: running an UNVERIFIED bundle: no signature or digest is checked\n")
            proven = None
        else:
            proven = verify_bundle(root, args.trust, args.verifier, args.policy, args.allow_expired, state_flags(args))
            args.verified = True
            stop_after_verify_for_tests()
        files = BundleFiles(root, proven)
        manifest = files.json("manifest.json")
        if not isinstance(manifest, dict):
            raise LoaderError("manifest.json: not a JSON object", EXIT_INPUT)
        cuda = Cuda.load()
        return COMMANDS[args.command](args, files, manifest, cuda)
    except LoaderError as e:
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "exit_code": e.code, "verified": args.verified,
                              "error": {"class": e.failure_class, "message": str(e)}}, indent=2))
        sys.stderr.write("error: %s\n" % printable(" ".join(str(e).split())))
        return e.code
    except Terminated:
        return 143
    except BrokenPipeError:  # `loader.py info --json | head`: the reader left, not an error of ours
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        return 141
    except KeyboardInterrupt:
        return 130
    except Exception as e:  # noqa: BLE001 - one line, never a traceback, on a closed host
        if getattr(args, "json", False):
            print(json.dumps({"ok": False, "exit_code": EXIT_RUNTIME, "verified": args.verified,
                              "error": {"class": "runtime", "message": "%s: %s" % (type(e).__name__, e)}}, indent=2))
        sys.stderr.write("error: %s: %s\n" % (type(e).__name__, printable(" ".join(str(e).split())[:500])))
        return EXIT_RUNTIME
    finally:
        signal.signal(signal.SIGTERM, previous_term)


if __name__ == "__main__":
    sys.exit(main())
