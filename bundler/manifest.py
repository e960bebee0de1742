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
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Type, TypeVar

# The schema of everything a bundle promises is defined once, in the shared verification code
# (runtime_stub/verify.py, standard library only): the library builds these very classes, and
# the verifier checks them, field by field, with the same converter.
from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    FORMAT_VERSION,
    MANIFEST,
    SHA256SUMS,
    SIGNATURES_DIR,
    AccuracyInfo,
    BackendInfo,
    BuildSettings,
    CacheInfo,
    CalibrationInfo,
    Dim,
    EngineHeader,
    EngineRecord,
    FileEntry,
    GoldenInfo,
    InputStats,
    Manifest,
    ModelInfo,
    PrecisionVariant,
    SchemaError,
    ShapeRange,
    TargetInfo,
    TensorSpec,
    Tolerance,
    _convert,
    StrictJSONError,
    loads_strict,
)

BUILD_FORMAT_VERSION = "trt-bundler-build/1"
RUNTIME_DIR = "runtime"  # the loader stub, the verifier and their README, in every bundle


@dataclass
class BuildProvenance:
    """What a build knew about its own run that its engine records do not say, for the SLSA
    provenance that `seal` signs (bundler/provenance.py): what it was asked (``parameters``:
    targets, precisions, profiles, flags, the spec file's digest) and when and where it ran.
    Recorded in ``build.json`` so that sealing the same build directory twice gives the same
    provenance: its times are the build's, never the clock at sealing."""

    started: str  # UTC, YYYY-MM-DDTHH:MM:SSZ: the build began (before the golden CPU run)
    finished: str  # UTC: every engine was built
    host: str  # the host that ran `bundle build` (each engine's own build host is in its record)
    invocation: str  # a random id of this build run (SLSA runDetails.metadata.invocationId)
    parameters: Dict[str, Any]  # SLSA externalParameters of this build (docs/bundle-format.md section 14)


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
    provenance: Optional[BuildProvenance] = None  # absent in build directories made before provenance existed


T = TypeVar("T")


def to_dict(obj: Any) -> Any:
    return dataclasses.asdict(obj)


def to_json(obj: Any) -> bytes:
    """Canonical JSON: sorted keys, two-space indent, UTF-8, trailing newline."""
    data = to_dict(obj) if dataclasses.is_dataclass(obj) else obj
    return (json.dumps(data, sort_keys=True, indent=2, ensure_ascii=False) + "\n").encode("utf-8")


def from_dict(cls: Type[T], data: Any, where: str = "") -> T:
    """Build a dataclass from parsed JSON, checking every field's type on the way.

    Signed metadata is still input: a trusted signer's tool may be buggy or newer. Checking types
    here means later code can rely on them instead of failing with a KeyError deep in verify.
    """
    return _convert(cls, data, where or cls.__name__)


def parse_json(cls: Type[T], raw: bytes, where: str) -> T:
    """Strict JSON (no duplicate keys, NaN or hostile nesting: `loads_strict`) into ``cls``."""
    try:
        data = loads_strict(raw)
    except StrictJSONError as e:
        raise SchemaError(f"{where}: {e}") from None
    return from_dict(cls, data, where)
