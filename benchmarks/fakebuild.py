"""Engine-like build directories of any size, without TensorRT.

`bundle seal` needs a build directory: ``build.json`` (a `bundler.manifest.BuildRecord`), the
engines it lists, their build logs and the source model. A real TensorRT-RTX build of a multi-GiB
engine needs a GPU-sized model and minutes, and the engine header records the file size, so a
small real engine cannot simply be padded. Here the 64-byte TensorRT-RTX header is written by hand
(layout in bundler/engine_header.py: 'vtrt', u64 file size at 16, version bytes 24-27 that match the
record's backend version, 'vtrt' at 28, compute-capability mask at 32) and the rest of the engine
is pseudo-random bytes (AES-CTR keystream: incompressible like real weights, deterministic, fast).

Everything goes through the real `seal` path afterwards, so the bundles are real bundles.
"""

from __future__ import annotations

import hashlib
import struct
from pathlib import Path
from typing import List, Optional, Sequence

from bundler.backends import BUILD_RECORD
from bundler.engine_header import parse_header
from bundler.manifest import (
    BackendInfo,
    BuildRecord,
    BuildSettings,
    EngineHeader,
    EngineRecord,
    ModelInfo,
    ShapeRange,
    TargetInfo,
    TensorSpec,
    to_json,
)

REPO = Path(__file__).resolve().parent.parent
SAMPLE_MODEL = REPO / "samples" / "tinynet.onnx"
RTX_VERSION = (1, 7, 1, 116)
# (label, cc, header mask bit): TensorRT-RTX targets, one per engine of a multi-engine build.
TARGETS = [("sm86", "8.6", 0x04), ("sm89", "8.9", 0x08), ("sm120", "12.0", 0x10),
           ("sm80", "8.0", 0x02), ("sm75", "7.5", 0x01), ("sm121", "12.1", 0x20)]
GEN_CHUNK = 8 << 20

UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_size(text: str) -> int:
    """'4G', '512M', '1.5G', '123' (bytes); binary units."""
    t = text.strip().upper().removesuffix("IB").removesuffix("B")
    unit = t[-1] if t and t[-1] in UNITS else ""
    number = t[: len(t) - len(unit)]
    return int(float(number) * UNITS[unit])


def rtx_header(size: int, mask: int) -> bytes:
    h = bytearray(64)
    h[0:4] = b"vtrt"
    struct.pack_into("<Q", h, 16, size)
    h[24:28] = bytes(RTX_VERSION)
    h[28:32] = b"vtrt"
    struct.pack_into("<Q", h, 32, mask)
    return bytes(h)


def _keystream(seed: int):  # noqa: ANN202
    from cryptography.hazmat.primitives.ciphers import Cipher, algorithms, modes

    key = hashlib.sha256(f"trt-bundler benchmark {seed}".encode()).digest()[:16]
    return Cipher(algorithms.AES(key), modes.CTR(b"\0" * 16)).encryptor()


def write_engine(path: Path, size: int, mask: int, seed: int = 0, sparse: bool = False) -> str:
    """Write an engine of exactly ``size`` bytes; returns its SHA-256.

    ``sparse``: header, then a hole (zeros that take no disk until written elsewhere): instant to
    make, for memory tests where content does not matter.
    """
    if size < 64:
        raise ValueError("an engine is at least its 64-byte header")
    header = rtx_header(size, mask)
    h = hashlib.sha256(header)
    with open(path, "wb") as f:
        f.write(header)
        left = size - 64
        if sparse:
            f.truncate(size)
            zeros = bytes(GEN_CHUNK)
            while left:
                n = min(left, GEN_CHUNK)
                h.update(memoryview(zeros)[:n])
                left -= n
        else:
            enc = _keystream(seed)
            zeros = bytes(GEN_CHUNK)
            while left:
                n = min(left, GEN_CHUNK)
                chunk = enc.update(memoryview(zeros)[:n])
                h.update(chunk)
                f.write(chunk)
                left -= n
    parse_header(header, size)  # the header is one bundler itself accepts
    return h.hexdigest()


def make_build_dir(
    out: Path,
    engine_sizes: Sequence[int],
    *,
    name: str = "bench",
    version: str = "1.0.0",
    seed: int = 0,
    sparse: bool = False,
    model: Optional[Path] = None,
) -> BuildRecord:
    """A build directory as `bundle build` would leave it, with engines of the given sizes."""
    if not 1 <= len(engine_sizes) <= len(TARGETS):
        raise ValueError(f"1 to {len(TARGETS)} engines")
    out = Path(out)
    (out / "engines").mkdir(parents=True)
    (out / "model").mkdir()
    model = Path(model or SAMPLE_MODEL)
    model_bytes = model.read_bytes()
    model_rel = f"model/{model.name}"
    (out / model_rel).write_bytes(model_bytes)
    info = ModelInfo(
        path=model_rel,
        sha256=hashlib.sha256(model_bytes).hexdigest(),
        size=len(model_bytes),
        ir_version=8,
        opset={"ai.onnx": 17},
        producer="trt-bundler-benchmarks",
        precision="fp16",
        inputs=[TensorSpec("input", "float16", ["batch", 3, 640, 640])],
        outputs=[TensorSpec("output", "float16", ["batch", 84, 8400])],
    )
    version_str = ".".join(map(str, RTX_VERSION))
    engines: List[EngineRecord] = []
    for i, size in enumerate(engine_sizes):
        label, cc, mask = TARGETS[i]
        stem = f"{name}_640x640_fp16_{label}"
        path, log = f"engines/{stem}.engine", f"engines/{stem}.log"
        digest = write_engine(out / path, size, mask, seed=seed + i, sparse=sparse)
        (out / log).write_text(f"[benchmark] synthetic engine {stem}: {size} bytes\n")
        engines.append(EngineRecord(
            path=path,
            size=size,
            sha256=digest,
            log=log,
            target=TargetInfo(label=label, cc=cc),
            backend=BackendInfo(name="tensorrt-rtx", module="tensorrt_rtx", version=version_str, cuda="13"),
            build=BuildSettings(
                profiles=[{"input": ShapeRange([1, 3, 640, 640], [4, 3, 640, 640], [16, 3, 640, 640])}],
                precision="fp16",
            ),
            header=EngineHeader(product="tensorrt-rtx", version=version_str, cc=[cc], cc_mask=mask),
            host="benchmark",
            started="2026-01-01T00:00:00Z",
            duration_s=0.0,
        ))
    record = BuildRecord(name=name, version=version, model=info, engines=engines)
    (out / BUILD_RECORD).write_bytes(to_json(record))
    return record


if __name__ == "__main__":
    import argparse

    ap = argparse.ArgumentParser(description="Write a synthetic build directory (no TensorRT needed).")
    ap.add_argument("out", type=Path)
    ap.add_argument("--size", action="append", required=True, help="engine size, e.g. 4G (repeat for more engines)")
    ap.add_argument("--sparse", action="store_true")
    a = ap.parse_args()
    make_build_dir(a.out, [parse_size(s) for s in a.size], sparse=a.sparse)
    print(a.out)
