"""Metadata dataclasses and their canonical JSON form.

Everything the bundle promises about itself lives here: the source model and its IO tensors, every
engine with its build settings and header read-back, and the size and digest of every payload file.
`manifest.json` is covered by the signature (through its digest), so whatever is in these classes
is signed. The JSON form is canonical (sorted keys, fixed indentation) so that the same metadata
always gives the same bytes, which reproducible sealing depends on.
"""

from __future__ import annotations

import dataclasses
import json
import typing
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar, Union

FORMAT_VERSION = "trt-bundle/1"
BUILD_FORMAT_VERSION = "trt-bundler-build/1"

Dim = Union[int, str, None]  # a static size, a symbolic dim name (verbatim, even "?"), or None: unnamed dynamic


@dataclass
class TensorSpec:
    name: str
    dtype: str
    shape: List[Dim]


@dataclass
class ShapeRange:
    min: List[int]
    opt: List[int]
    max: List[int]


@dataclass
class ModelInfo:
    """The source ONNX model as the bundle carries it (``path`` is relative to the bundle root)."""

    path: str
    sha256: str
    size: int
    ir_version: int
    opset: Dict[str, int]
    producer: str
    precision: str
    inputs: List[TensorSpec]
    outputs: List[TensorSpec]


@dataclass
class TargetInfo:
    label: str
    cc: Optional[str]  # "8.6"; None only for a portable engine
    gpu: Optional[str] = None


@dataclass
class BackendInfo:
    name: str  # "tensorrt" | "tensorrt-rtx"
    module: str  # the Python module that built it
    version: str
    cuda: Optional[str] = None
    driver: Optional[str] = None


@dataclass
class BuildSettings:
    profiles: List[Dict[str, ShapeRange]]
    precision: str
    workspace: Optional[int] = None
    optimization_level: Optional[int] = None
    timing_cache: Optional[str] = None  # full TensorRT: the cache file used and its digest


@dataclass
class EngineHeader:
    """What the engine's own first bytes say, read without a GPU (see engine_header.py)."""

    product: str  # "tensorrt-rtx" | "tensorrt"
    version: str
    cc: Optional[List[str]] = None  # compute capabilities encoded in the header, when it has them
    cc_mask: Optional[int] = None


@dataclass
class EngineRecord:
    path: str
    size: int
    sha256: str
    log: str
    target: TargetInfo
    backend: BackendInfo
    build: BuildSettings
    header: Optional[EngineHeader]  # None for the cpu target, whose "engine" is an ONNX file
    host: str
    started: str
    duration_s: float


@dataclass
class Tolerance:
    atol: float
    rtol: float


@dataclass
class GoldenInfo:
    """Sample inputs and CPU reference outputs for the loader's selftest."""

    inputs: str  # bundle-relative path of the inputs .npz
    outputs: str
    reference: str  # what computed the outputs, e.g. "onnxruntime 1.32.0 CPUExecutionProvider"
    source: str  # "random (seed 0, opt shapes)" or "sample-input"
    tolerances: Dict[str, Tolerance]  # by precision


@dataclass
class InputStats:
    min: float
    max: float
    mean: float
    std: float


@dataclass
class CalibrationInfo:
    """What int8/fp8 scales were computed from: the classic INT8 failure is a set that does not
    represent the field (day-only images, and the model breaks at night), so it is on record."""

    source: str  # file or directory name as given
    sha256: str  # over the sorted .npz files' names and bytes
    files: int
    samples: int
    batch: int  # samples per calibration batch (fits the profile)
    inputs: Dict[str, InputStats]
    warnings: List[str] = field(default_factory=list)


@dataclass
class AccuracyInfo:
    measured_with: Optional[str]  # None when the graph could not be run on the CPU
    max_abs_err: Optional[float]
    max_rel_err: Optional[float]
    note: str = ""


@dataclass
class PrecisionVariant:
    """A converted graph the engines of one precision were built from."""

    precision: str
    graph: str  # bundle-relative path of the converted ONNX file
    sha256: str
    size: int
    converter: str
    accuracy: Optional[AccuracyInfo] = None
    calibration: Optional[CalibrationInfo] = None


@dataclass
class FileEntry:
    path: str
    size: int
    sha256: str


@dataclass
class BuildRecord:
    """``build.json`` in a build directory: the output of `bundle build`, the input of `seal`."""

    name: str
    version: str
    model: ModelInfo
    engines: List[EngineRecord]
    golden: Optional[GoldenInfo] = None
    variants: List[PrecisionVariant] = field(default_factory=list)
    format: str = BUILD_FORMAT_VERSION


@dataclass
class Manifest:
    name: str
    version: str
    created: str
    model: ModelInfo
    engines: List[EngineRecord]
    files: List[FileEntry]  # every member but signatures/, manifest.json and SHA256SUMS
    golden: Optional[GoldenInfo] = None
    variants: List[PrecisionVariant] = field(default_factory=list)
    tool: Dict[str, str] = field(default_factory=dict)
    format: str = FORMAT_VERSION

    @property
    def root(self) -> str:
        """The bundle's top directory, which binds name and version to every member path."""
        return f"{self.name}-{self.version}"


T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def to_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, UTF-8, trailing newline."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


class SchemaError(ValueError):
    """The JSON does not have the shape of the dataclass it should fill."""


def from_dict(cls: Type[T], data: Any, where: str = "") -> T:
    """Build a dataclass from parsed JSON, checking every field's type on the way.

    Signed metadata is still input: a trusted signer's tool may be buggy or newer. Checking types
    here means later code can rely on them instead of failing with a KeyError deep in verify.
    """
    return _convert(cls, data, where or cls.__name__)


def _convert(tp: Any, value: Any, where: str) -> Any:
    origin = typing.get_origin(tp)
    args = typing.get_args(tp)
    if dataclasses.is_dataclass(tp):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object")
        hints = typing.get_type_hints(tp)
        kwargs = {}
        for f in dataclasses.fields(tp):
            if f.name in value:
                kwargs[f.name] = _convert(hints[f.name], value[f.name], f"{where}.{f.name}")
            elif f.default is dataclasses.MISSING and f.default_factory is dataclasses.MISSING:  # type: ignore[misc]
                raise SchemaError(f"{where}: missing field {f.name!r}")
        return tp(**kwargs)
    if origin is Union:
        if value is None and type(None) in args:
            return None
        errors = []
        for a in args:
            if a is type(None):
                continue
            try:
                return _convert(a, value, where)
            except SchemaError as e:
                errors.append(str(e))
        raise SchemaError(errors[0] if errors else f"{where}: bad value")
    if origin in (list, List):
        if not isinstance(value, list):
            raise SchemaError(f"{where}: expected a list")
        return [_convert(args[0], v, f"{where}[{i}]") for i, v in enumerate(value)]
    if origin in (dict, Dict):
        if not isinstance(value, dict):
            raise SchemaError(f"{where}: expected an object")
        return {str(k): _convert(args[1], v, f"{where}.{k}") for k, v in value.items()}
    if tp is Any:
        return value
    if tp is float:
        if isinstance(value, bool) or not isinstance(value, (int, float)):
            raise SchemaError(f"{where}: expected a number")
        return float(value)
    if tp is int:
        if isinstance(value, bool) or not isinstance(value, int):
            raise SchemaError(f"{where}: expected an integer")
        return value
    if tp is str:
        if not isinstance(value, str):
            raise SchemaError(f"{where}: expected a string")
        return value
    if tp is bool:
        if not isinstance(value, bool):
            raise SchemaError(f"{where}: expected true or false")
        return value
    raise SchemaError(f"{where}: unsupported type {tp!r}")


def parse_json(cls: Type[T], raw: bytes, where: str) -> T:
    try:
        data = json.loads(raw.decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as e:
        raise SchemaError(f"{where}: not valid JSON ({e})") from None
    except (ValueError, RecursionError) as e:  # digit limits, hostile nesting: still not valid for us
        raise SchemaError(f"{where}: not usable JSON ({type(e).__name__})") from None
    return from_dict(cls, data, where)
