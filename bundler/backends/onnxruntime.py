"""The cpu target: the ONNX model itself is the "engine", run by onnxruntime on the host's CPU.

A host without a matching GPU can still serve the model, and CI can run `selftest`, `run` and
`bench` end to end. The model is shipped unmodified: onnxruntime's saved optimized graphs may
contain contrib ops and are tied to the onnxruntime version that wrote them, which would defeat a
long-lived artefact. Building only checks that this onnxruntime can load the model.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import shutil
import socket
import time
from typing import Callable

from ..errors import BuildError
from ..manifest import BackendInfo, BuildSettings, EngineRecord, TargetInfo
from ..targets import Target


class OnnxRuntimeBackend:
    name = "onnxruntime"
    extension = ".onnx"

    def __init__(self) -> None:
        try:
            import onnxruntime
        except ImportError:
            raise BuildError("target cpu needs onnxruntime: pip install onnxruntime") from None
        self.ort = onnxruntime

    def version(self) -> str:
        return str(self.ort.__version__)

    def identity(self) -> dict:
        return {"name": self.name, "module": "onnxruntime", "version": self.version(), "cuda": None}

    def resolve(self, target: Target) -> Target:
        if not target.is_cpu:
            raise BuildError(f"target {target.label}: the onnxruntime backend builds the cpu target only")
        return target

    def build(self, job, on_stage: Callable[..., None]) -> EngineRecord:  # noqa: ANN001 - jobs.Job
        started = _dt.datetime.now(_dt.timezone.utc)
        t0 = time.monotonic()
        on_stage("building")
        shutil.copyfile(job.model_path, job.engine_path)
        opts = self.ort.SessionOptions()
        opts.log_severity_level = 4  # the exception carries any error, as our one line
        try:
            sess = self.ort.InferenceSession(str(job.engine_path), opts, providers=["CPUExecutionProvider"])
        except Exception as e:  # noqa: BLE001
            first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
            raise BuildError(f"target cpu ({job.precision}): onnxruntime {self.version()} cannot load the model: {first}") from None
        lines = [
            f"onnxruntime {self.version()} loaded the model with CPUExecutionProvider",
            *(f"input  {i.name}: {i.type} {i.shape}" for i in sess.get_inputs()),
            *(f"output {o.name}: {o.type} {o.shape}" for o in sess.get_outputs()),
            "the engine file is the ONNX graph, unmodified (portable across onnxruntime versions)",
        ]
        job.log_path.write_text("\n".join(lines) + "\n", encoding="utf-8")
        data = job.engine_path.read_bytes()
        return EngineRecord(
            path=f"engines/{job.engine_path.name}",
            size=len(data),
            sha256=hashlib.sha256(data).hexdigest(),
            log=f"engines/{job.log_path.name}",
            target=TargetInfo(label="cpu", cc=None, gpu=None),
            backend=BackendInfo(name=self.name, module="onnxruntime", version=self.version()),
            build=BuildSettings(profiles=list(job.profiles), precision=job.precision, workspace=None, optimization_level=None),
            header=None,
            host=socket.gethostname(),
            started=started.strftime("%Y-%m-%dT%H:%M:%SZ"),
            duration_s=round(time.monotonic() - t0, 3),
        )
