"""Drive full TensorRT or TensorRT-RTX through their (nearly identical) Python APIs.

Differences handled here, and nowhere else:

* TensorRT-RTX builds ahead of time for compute capabilities set on the builder config
  (`num_compute_capabilities`, `set_compute_capability`); full TensorRT builds for the GPU it runs
  on, so a target must match a local GPU.
* TensorRT-RTX has no SM90/SM100 support; it is refused before any build starts.
* Full TensorRT < 10 needs the EXPLICIT_BATCH network flag; 10+ and RTX take 0.

Tested here: TensorRT-RTX 1.7 on a CPU-only host. Full TensorRT is driven through the same code
paths but cannot be installed on this project's machines (see docs/testing.md).
"""

from __future__ import annotations

import datetime as _dt
import functools
import hashlib
import importlib
import os
import socket
import time
from pathlib import Path
from types import ModuleType
from typing import Callable, List, Optional

from ..cuda import query_gpus
from ..engine_header import HeaderError, parse_header
from ..errors import BuildError
from ..manifest import BackendInfo, BuildSettings, EngineRecord, TargetInfo
from ..targets import Target


def import_runtime(module: str) -> Optional[ModuleType]:
    try:
        return importlib.import_module(module)
    except Exception:  # noqa: BLE001 - a broken install must read as "not available", not crash
        return None


@functools.lru_cache(maxsize=None)
def _cuda_major_from_distribution(module: str) -> Optional[str]:
    """The CUDA major the wheel targets, from its distribution name (``tensorrt_rtx_cu13`` -> 13).

    Memoized: `packages_distributions` reads the metadata of every installed distribution (about
    a second), and the answer cannot change while the process runs; each build record and each
    build cache key asks for it."""
    try:
        from importlib.metadata import packages_distributions

        for dist in packages_distributions().get(module, []):
            low = dist.lower().replace("-", "_")
            if "_cu" in low:
                return low.rsplit("_cu", 1)[1].split("_")[0]
    except Exception:  # noqa: BLE001
        return None
    return None


class TensorRTBackend:
    extension = ".engine"

    def __init__(self, trt: ModuleType, name: str) -> None:
        self.trt = trt
        self.name = name
        self.is_rtx = name == "tensorrt-rtx"
        self._gpus = None if self.is_rtx else query_gpus()

    def version(self) -> str:
        return str(self.trt.__version__)

    def identity(self) -> dict:
        """Product and exact version of the builder (the build cache key's ``builder``)."""
        return {"name": self.name, "module": self.trt.__name__, "version": self.version(),
                "cuda": _cuda_major_from_distribution(self.trt.__name__)}

    # -- target checks, all before any build -------------------------------------------------
    def _rtx_capability(self, target: Target):  # noqa: ANN202
        assert target.cc is not None
        attr = f"SM{target.cc[0]}{target.cc[1]}"
        cc_enum = getattr(self.trt, "ComputeCapability", None)
        value = getattr(cc_enum, attr, None) if cc_enum is not None else None
        if value is None:
            supported = sorted(
                a[2:] for a in dir(cc_enum) if a.startswith("SM") and a[2:].isdigit()
            ) if cc_enum is not None else []
            pretty = ", ".join(f"sm_{s}" for s in supported)
            raise BuildError(
                f"target {target.label} (compute capability {target.cc_str}) cannot be built by "
                f"TensorRT-RTX {self.version()}; it supports {pretty}. Build it with full TensorRT on such a GPU"
            )
        return value

    def resolve(self, target: Target) -> Target:
        if target.is_cpu:
            raise BuildError("target cpu is built by onnxruntime, not TensorRT")
        if self.is_rtx:
            if target.cc is None:
                raise BuildError("target local needs full TensorRT and a GPU on this host; TensorRT-RTX builds ahead of time for named targets only")
            self._rtx_capability(target)
            return target
        gpus = self._gpus or []
        if not gpus:
            raise BuildError(f"target {target.label}: full TensorRT builds on the GPU it targets, and this host has none")
        local = gpus[0]
        if target.cc is None:
            # Name it by what it is, so engines of `local` builds on different GPU hosts merge in seal.
            return Target(f"sm{local.cc[0]}{local.cc[1]}", local.cc, gpu=local.name)
        if target.cc != local.cc:
            raise BuildError(
                f"target {target.label} is compute capability {target.cc_str}, but full TensorRT builds for this "
                f"host's GPU ({local.name}, {local.cc_str}); build it on such a host and merge with `bundle seal`"
            )
        return target

    # -- the build ---------------------------------------------------------------------------
    def build(self, job, on_stage: Callable[..., None]) -> EngineRecord:  # noqa: ANN001 - jobs.Job
        trt = self.trt
        target = job.target
        lines: List[str] = []

        class _Logger(trt.ILogger):  # type: ignore[name-defined,misc]
            def __init__(self) -> None:
                trt.ILogger.__init__(self)

            def log(self, severity, msg):  # noqa: ANN001, ANN202
                lines.append(f"[{str(severity).rsplit('.', 1)[-1]}] {msg}")

        logger = _Logger()
        started = _dt.datetime.now(_dt.timezone.utc)
        t0 = time.monotonic()
        label = f"target {target.label} ({job.precision})"
        builder = trt.Builder(logger)
        flags = 0
        major = int(self.version().split(".")[0])
        if not self.is_rtx and major < 10:
            flags = 1 << int(trt.NetworkDefinitionCreationFlag.EXPLICIT_BATCH)
        network = builder.create_network(flags)
        parser = trt.OnnxParser(network, logger)
        graph, flags_for = self._graph_and_flags(job, major)
        lines.append(f"[bundler] {job.precision}: building {Path(graph).name}" +
                     (f" with builder flag(s) {', '.join(flags_for)}" if flags_for else ", precision taken from the graph"))
        if not parser.parse_from_file(str(graph)):
            errors = [str(parser.get_error(i)) for i in range(parser.num_errors)]
            self._write_log(job.log_path, lines + errors)
            first = errors[0].splitlines()[0] if errors else "unknown parser error"
            raise BuildError(f"{label}: the TensorRT ONNX parser failed: {first} (log: {job.log_path.name})")
        config = builder.create_builder_config()
        for flag in flags_for:
            config.set_flag(getattr(trt.BuilderFlag, flag))
        if job.workspace:
            config.set_memory_pool_limit(trt.MemoryPoolType.WORKSPACE, int(job.workspace))
        for profile in job.profiles:
            opt = builder.create_optimization_profile()
            for name, rng in profile.items():
                opt.set_shape(name, tuple(rng.min), tuple(rng.opt), tuple(rng.max))
            config.add_optimization_profile(opt)
        if self.is_rtx:
            config.num_compute_capabilities = 1
            config.set_compute_capability(self._rtx_capability(target), 0)
        cache_note = self._load_timing_cache(config, job.timing_cache)
        on_stage("building")
        serialized = builder.build_serialized_network(network, config)
        duration = time.monotonic() - t0
        if serialized is None:
            self._write_log(job.log_path, lines)
            errs = [l for l in lines if l.startswith(("[ERROR]", "[INTERNAL_ERROR]"))]
            detail = errs[-1] if errs else "no engine produced"
            raise BuildError(f"{label}: TensorRT build failed: {detail[:300]} (log: {job.log_path.name})")
        on_stage("writing")
        digest, size = _write_engine(job.engine_path, serialized)
        self._save_timing_cache(config, job)
        self._write_log(job.log_path, lines)
        with open(job.engine_path, "rb") as f:
            head = f.read(64)
        try:
            header = parse_header(head, size)
        except HeaderError as e:
            raise BuildError(f"{label}: the engine's header is not readable ({e})") from None
        gpus = query_gpus()
        return EngineRecord(
            path=f"engines/{job.engine_path.name}",
            size=size,
            sha256=digest,
            log=f"engines/{job.log_path.name}",
            target=TargetInfo(label=target.label, cc=target.cc_str, gpu=target.gpu),
            backend=BackendInfo(
                name=self.name,
                module=trt.__name__,
                version=self.version(),
                cuda=_cuda_major_from_distribution(trt.__name__),
                driver=gpus[0].driver if gpus else None,
            ),
            build=BuildSettings(
                profiles=list(job.profiles),
                precision=job.precision,
                workspace=job.workspace,
                optimization_level=int(getattr(config, "builder_optimization_level", -1)),
                timing_cache=cache_note,
            ),
            header=header,
            host=socket.gethostname(),
            started=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            duration_s=round(duration, 3),
        )

    def _graph_and_flags(self, job, major: int):  # noqa: ANN001, ANN202
        """Which graph to parse and which precision builder flags to set.

        TensorRT 11 and TensorRT-RTX take precision from the graph alone: the converted graph, no
        flags. Full TensorRT <= 10 still has the flags and its fp16/bf16 kernels are chosen by them,
        so there the fp32 source is built with FP16/BF16 set; int8/fp8 keep their Q/DQ graph and
        set INT8/FP8, which explicit quantization needs on TensorRT 8.x.
        """
        if self.is_rtx or major >= 11:
            return job.model_path, []
        flag = {"fp16": "FP16", "bf16": "BF16", "int8": "INT8", "fp8": "FP8"}.get(job.precision)
        if flag is None:
            return job.model_path, []
        if not hasattr(self.trt.BuilderFlag, flag):
            raise BuildError(f"target {job.target.label}: TensorRT {self.version()} has no {flag} builder flag")
        if job.precision in ("fp16", "bf16") and job.source_path is not None:
            return job.source_path, [flag]
        return job.model_path, [flag]

    def _load_timing_cache(self, config, path: Optional[Path]) -> Optional[str]:  # noqa: ANN001
        """Full TensorRT: start from the cache file when it exists. TensorRT-RTX has none."""
        if path is None:
            return None
        if self.is_rtx:
            return "not used: TensorRT-RTX has no timing cache"
        data = Path(path).read_bytes() if Path(path).is_file() else b""
        cache = config.create_timing_cache(data)
        config.set_timing_cache(cache, ignore_mismatch=False)
        before = hashlib.sha256(data).hexdigest() if data else "empty"
        return f"{path} (sha256 before: {before})"

    def _save_timing_cache(self, config, job) -> None:  # noqa: ANN001
        if job.timing_cache is None or self.is_rtx:
            return
        cache = config.get_timing_cache()
        if cache is not None:
            out = job.engine_path.with_suffix(".timing-cache")
            out.write_bytes(memoryview(cache.serialize()))

    @staticmethod
    def _write_log(path: Path, lines: List[str]) -> None:
        path.write_text("\n".join(lines) + ("\n" if lines else ""), encoding="utf-8")


def _write_engine(path: Path, serialized) -> tuple:  # noqa: ANN001 - IHostMemory
    """Write the engine and hash it from memory in the same pass (no re-read)."""
    view = memoryview(serialized)
    h = hashlib.sha256(view)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as f:
        f.write(view)
    return h.hexdigest(), view.nbytes
