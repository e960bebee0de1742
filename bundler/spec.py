"""Build spec files: a CI job's build matrix as a TOML file in version control.

``bundle create --spec bundle.toml`` and ``bundle build --spec bundle.toml`` read one file that
lists models and their targets, precisions, shapes and the rest (docs/build-spec.md). The CLI
flags are sugar over the same `BuildRequest`: both paths go through `request_from_flags`, so a
spec-file build and the equivalent flags give the same manifest.

Validation is strict and happens before anything is built: an unknown key, a wrong type, a bad
shape, target or version, a missing model file, or two models that would make the same bundle
are each one `InputError` (exit 3) naming the file and the key.
"""

from __future__ import annotations

import hashlib

import math
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Mapping, Optional, Sequence, Union

from .backends import BuildRequest
from .errors import BundleError, InputError

if sys.version_info >= (3, 11):
    import tomllib
else:  # pragma: no cover - exercised on 3.9/3.10 only
    import tomli as tomllib

BACKENDS = ("auto", "tensorrt", "tensorrt-rtx")

# key -> (type check, description used in messages). Paths are strings relative to the spec file.
_PER_MODEL_ONLY = ("name", "path")
_SHARED = (
    "version", "targets", "precisions", "shapes", "profiles", "workspace", "backend", "golden",
    "sample_input", "sample_values", "calibration", "jobs", "timing_cache", "keep_fp32", "accept_accuracy_loss",
)
MODEL_KEYS = _PER_MODEL_ONLY + _SHARED
DEFAULT_KEYS = _SHARED
TOP_KEYS = ("defaults", "model")
_PATH_KEYS = ("path", "sample_input", "calibration", "timing_cache")


def request_from_flags(
    model: Union[str, Path],
    name: str,
    version: str,
    targets: Sequence[str],
    shapes: Sequence[str] = (),
    workspace: Union[str, int, None] = None,
    backend: str = "auto",
    golden: bool = True,
    sample_input: Optional[Union[str, Path]] = None,
    precisions: Optional[Sequence[str]] = None,
    profiles: Sequence[Sequence[str]] = (),
    calibration: Optional[Union[str, Path]] = None,
    jobs: Optional[int] = None,
    timing_cache: Optional[Union[str, Path]] = None,
    sample_values: Union[Sequence[str], Mapping[str, Any]] = (),
    keep_fp32: Sequence[str] = (),
    accept_accuracy_loss: bool = False,
) -> BuildRequest:
    """The one place where textual build options become a `BuildRequest`.

    Both the CLI flags and spec files come through here. ``shapes`` and each entry of
    ``profiles`` are ``INPUT:MIN:OPT:MAX`` strings; ``workspace`` is a byte count or a size like
    ``2G``; ``precisions`` defaults to the precision the source graph carries (no conversion).
    ``sample_values`` is ``NAME=VALUE`` strings (``--sample-value``) or a mapping (a spec's
    ``sample_values`` table); both become one dict, so flags and spec give equal requests.
    """
    from .model import parse_shape, parse_size

    if isinstance(workspace, bool):
        raise InputError("workspace: expected a size like 2G or a byte count")
    if isinstance(workspace, int):
        if workspace <= 0:
            raise InputError(f"size {workspace} must be positive")
        ws: Optional[int] = workspace
    else:
        ws = parse_size(workspace) if workspace else None
    return BuildRequest(
        model=Path(model),
        name=name,
        version=version,
        targets=list(targets),
        shapes=[parse_shape(s) for s in shapes],
        workspace=ws,
        backend=backend,
        golden=golden,
        sample_input=Path(sample_input) if sample_input is not None else None,
        precisions=_precisions(precisions) if precisions else None,  # None: the graph's own precision
        profiles=[[parse_shape(s) for s in p] for p in profiles],
        calibration=Path(calibration) if calibration is not None else None,
        jobs=jobs,
        timing_cache=Path(timing_cache) if timing_cache is not None else None,
        sample_values=_sample_values(sample_values),
        keep_fp32=[k.strip() for k in keep_fp32 if k.strip()],
        accept_accuracy_loss=accept_accuracy_loss,
    )


def _sample_values(given: Union[Sequence[str], Mapping[str, Any]]) -> Dict[str, Any]:
    from .golden import parse_sample_value, parse_scalar

    if isinstance(given, Mapping):
        out = {}
        for k, v in given.items():
            if isinstance(v, str):
                v = parse_scalar(v, f"sample value {k!r}")
            elif isinstance(v, float) and not math.isfinite(v):
                raise InputError(f"sample value {k!r}: the value must be finite")
            elif not isinstance(v, (bool, int, float)):
                raise InputError(f"sample value {k!r}: expected true, false, an integer or a number")
            out[str(k)] = v
        return out
    out = {}
    for arg in given:
        name, v = parse_sample_value(arg)
        if name in out:
            raise InputError(f"--sample-value given twice for input {name!r}")
        out[name] = v
    return out


def _precisions(values: Sequence[str]) -> List[str]:
    from .precision import check_precision

    out = [check_precision(v) for v in values]
    if not out:
        raise InputError("give at least one precision")
    dupes = sorted({p for p in out if out.count(p) > 1})
    if dupes:
        raise InputError(f"precision given twice: {', '.join(dupes)}")
    return out


# -- spec files ---------------------------------------------------------------------------------

@dataclass
class SpecEntry:
    """One ``[[model]]`` of a spec file and the request it became."""

    index: int  # 1-based position in the file
    request: BuildRequest

    @property
    def bundle_name(self) -> str:
        return f"{self.request.name}-{self.request.version}"


def _type_name(v: Any) -> str:
    if isinstance(v, bool):
        return "a boolean"
    if isinstance(v, int):
        return "an integer"
    if isinstance(v, float):
        return "a float"
    if isinstance(v, str):
        return "a string"
    if isinstance(v, list):
        return "an array"
    if isinstance(v, dict):
        return "a table"
    return type(v).__name__


class _Ctx:
    """Message prefix for one table of the spec: ``FILE: model #2 ('detector'), key 'shapes': ...``."""

    def __init__(self, file: Path, where: str) -> None:
        self.file = file
        self.where = where

    def error(self, key: Optional[str], msg: str) -> InputError:
        k = f", key {key!r}" if key else ""
        return InputError(f"{self.file}: {self.where}{k}: {msg}")


def _check_str(ctx: _Ctx, key: str, v: Any) -> str:
    if not isinstance(v, str):
        raise ctx.error(key, f"expected a string, got {_type_name(v)}")
    if not v:
        raise ctx.error(key, "must not be empty")
    return v


def _check_str_list(ctx: _Ctx, key: str, v: Any, allow_empty: bool = False) -> List[str]:
    if not isinstance(v, list):
        raise ctx.error(key, f"expected an array of strings, got {_type_name(v)}")
    for i, x in enumerate(v):
        if not isinstance(x, str):
            raise ctx.error(key, f"item {i + 1}: expected a string, got {_type_name(x)}")
    if not v and not allow_empty:
        raise ctx.error(key, "must not be empty")
    return list(v)


def _check_value(ctx: _Ctx, key: str, v: Any, base: Path) -> Any:
    """Type-check and parse one value; return it in the form `request_from_flags` takes."""
    from .model import parse_shape, parse_size
    from .targets import parse_target
    from .versioning import check_bundle_name, check_version

    try:
        if key == "name":
            s = _check_str(ctx, key, v)
            check_bundle_name(s)
            return s
        if key == "version":
            s = _check_str(ctx, key, v)
            check_version(s)
            return s
        if key in _PATH_KEYS:
            return base / _check_str(ctx, key, v)
        if key == "targets":
            items = _check_str_list(ctx, key, v)
            for t in items:
                parse_target(t)
            return items
        if key == "precisions":
            return _precisions(_check_str_list(ctx, key, v))
        if key == "shapes":
            items = _check_str_list(ctx, key, v, allow_empty=True)
            for s in items:
                parse_shape(s)
            return items
        if key == "profiles":
            if not isinstance(v, list):
                raise ctx.error(key, f"expected an array of arrays of shape strings, got {_type_name(v)}")
            out = []
            for i, p in enumerate(v):
                if not isinstance(p, list):
                    raise ctx.error(key, f"item {i + 1}: expected an array of shape strings, got {_type_name(p)}")
                out.append(_check_str_list(ctx, f"{key}[{i + 1}]", p))
                for s in p:
                    parse_shape(s)
            return out
        if key == "workspace":
            if isinstance(v, bool) or not isinstance(v, (int, str)):
                raise ctx.error(key, f"expected a size like \"2G\" or a byte count, got {_type_name(v)}")
            if isinstance(v, int):
                if v <= 0:
                    raise ctx.error(key, "must be positive")
                return v
            parse_size(v)
            return v
        if key == "backend":
            s = _check_str(ctx, key, v)
            if s not in BACKENDS:
                raise ctx.error(key, f"unknown backend {s!r}: use {', '.join(BACKENDS)}")
            return s
        if key == "sample_values":
            if not isinstance(v, dict):
                raise ctx.error(key, f"expected a table of input = value, e.g. {{ sr = 16000 }}, got {_type_name(v)}")
            for name, x in v.items():
                if isinstance(x, (dict, list)) or x is None:
                    raise ctx.error(key, f"input {name!r}: expected true, false, an integer or a number, got {_type_name(x)}")
            return _sample_values(v)
        if key == "keep_fp32":
            return _check_str_list(ctx, key, v)
        if key in ("golden", "accept_accuracy_loss"):
            if not isinstance(v, bool):
                raise ctx.error(key, f"expected true or false, got {_type_name(v)}")
            return v
        if key == "jobs":
            if isinstance(v, bool) or not isinstance(v, int):
                raise ctx.error(key, f"expected an integer, got {_type_name(v)}")
            if v < 1:
                raise ctx.error(key, "must be at least 1")
            return v
    except InputError as e:
        if e.message.startswith(f"{ctx.file}: "):
            raise
        msg = e.message[2:] if e.message.startswith("--shape ") else e.message  # "shape 'x:1x3': ..."
        raise ctx.error(key, msg) from None
    raise AssertionError(f"unhandled spec key {key}")  # pragma: no cover


def _check_table(ctx: _Ctx, table: Any, allowed: Sequence[str], base: Path) -> Dict[str, Any]:
    if not isinstance(table, dict):
        raise ctx.error(None, f"expected a table, got {_type_name(table)}")
    out = {}
    for key, v in table.items():
        if key not in allowed:
            raise ctx.error(key, f"unknown key (allowed: {', '.join(allowed)})")
        out[key] = _check_value(ctx, key, v, base)
    return out


def load_spec(path: Union[str, Path]) -> List[SpecEntry]:
    """Parse and check a spec file; one `SpecEntry` per ``[[model]]``, in file order.

    Paths in the file are relative to the file's own directory. Nothing is built here, but every
    model file (and sample input or calibration set) must exist.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such spec file")
    try:
        raw = path.read_bytes()
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror})") from None
    try:
        doc = tomllib.loads(raw.decode("utf-8"))
    except UnicodeDecodeError:
        raise InputError(f"{path}: not UTF-8 text, so not a TOML spec file") from None
    except tomllib.TOMLDecodeError as e:
        raise InputError(f"{path}: not valid TOML ({e})") from None
    base = path.parent
    top = _Ctx(path, "top level")
    for key in doc:
        if key not in TOP_KEYS:
            raise top.error(key, "unknown key (allowed: [defaults] and [[model]] tables)")
    defaults: Dict[str, Any] = {}
    if "defaults" in doc:
        defaults = _check_table(_Ctx(path, "[defaults]"), doc["defaults"], DEFAULT_KEYS, base)
    models = doc.get("model")
    if models is None:
        raise InputError(f"{path}: no [[model]] table: list at least one model")
    if not isinstance(models, list) or not all(isinstance(m, dict) for m in models):
        raise top.error("model", "expected an array of tables: write each model as [[model]]")
    if not models:
        raise InputError(f"{path}: no [[model]] table: list at least one model")
    entries: List[SpecEntry] = []
    seen: Dict[str, int] = {}
    for i, table in enumerate(models, 1):
        label = f"model #{i}" + (f" ({table['name']!r})" if isinstance(table.get("name"), str) else "")
        ctx = _Ctx(path, label)
        values = dict(defaults)
        values.update(_check_table(ctx, table, MODEL_KEYS, base))
        for key in ("name", "path", "version", "targets"):
            if key not in values:
                where = "" if key in _PER_MODEL_ONLY else " (here or in [defaults])"
                raise ctx.error(key, f"missing{where}")
        for key in ("path", "sample_input", "calibration"):
            p = values.get(key)
            if p is not None and not p.exists():
                what = "model file" if key == "path" else "file or directory" if key == "calibration" else "file"
                raise ctx.error(key, f"no such {what}: {p}")
        if not values["path"].is_file():
            raise ctx.error("path", f"not a file: {values['path']}")
        bundle = f"{values['name']}-{values['version']}"
        if bundle in seen:
            raise ctx.error("name", f"model #{seen[bundle]} makes the same bundle {bundle}; give each model its own name or version")
        seen[bundle] = i
        model = values.pop("path")
        targets = values.pop("targets")
        try:
            req = request_from_flags(model, values.pop("name"), values.pop("version"), targets, **values)
        except InputError as e:
            raise ctx.error(None, e.message) from None
        req.spec = {"name": path.name, "sha256": hashlib.sha256(raw).hexdigest()}  # the bytes parsed, for provenance
        entries.append(SpecEntry(i, req))
    return entries


# -- running a spec -----------------------------------------------------------------------------

def _failed(e: BundleError, entry: SpecEntry, what: str, made: Sequence[Any]) -> BundleError:
    """The same error class (so the same exit code), its message naming the model and what stays."""
    kept = ", ".join(str(m) for m in made) or "none"
    msg = f"model #{entry.index} ({entry.request.name}) failed: {e.message}; {what} made before it (kept): {kept}"
    return type(e)(msg, member=e.member)


def create_all(
    entries: Sequence[SpecEntry],
    key: Any,
    out_dir: Path,
    progress: Optional[Callable[..., None]] = None,
    on_bundle: Optional[Callable[[SpecEntry, Any], None]] = None,
    expires: Optional[str] = None,
    ledger: Optional[Path] = None,
    cache: Optional[Path] = None,
) -> List[Any]:
    """`api.create` for each entry in order (each seal recorded in ``ledger``, if set); stop at
    the first failure.

    Every bundle file is checked to be absent before anything is built. On a failure the
    error is re-raised with its own class (exit code), its message naming the model and the
    bundles already made, which stay; the failing model leaves no bundle (`api.create` builds
    in a private directory and seals atomically).
    """
    from .create import create
    from .errors import OutputError
    from .fsutil import check_out_dir

    out_dir = Path(out_dir)
    check_out_dir(out_dir, "the bundles")
    for entry in entries:
        final = out_dir / f"{entry.bundle_name}.bundle.tar"
        if final.exists():
            raise OutputError(f"{final}: already exists (model #{entry.index}); bundles are never overwritten")
    made: List[Any] = []
    for entry in entries:
        try:
            res = create(entry.request, key, out_dir, progress=progress, expires=expires, ledger=ledger, cache=cache)
        except BundleError as e:
            raise _failed(e, entry, "bundles", [r.path for r in made]) from None
        made.append(res)
        if on_bundle is not None:
            on_bundle(entry, res)
    return made


def build_all(
    entries: Sequence[SpecEntry],
    out_dir: Path,
    progress: Optional[Callable[..., None]] = None,
    on_build: Optional[Callable[[SpecEntry, Path, Any], None]] = None,
    cache: Optional[Path] = None,
) -> List[Path]:
    """`build` for each entry into ``out_dir/NAME-VERSION`` (build directories to seal later)."""
    from .backends import build
    from .errors import OutputError
    from .fsutil import check_out_dir

    out_dir = Path(out_dir)
    check_out_dir(out_dir, "one NAME-VERSION build directory per model")
    for entry in entries:
        d = out_dir / entry.bundle_name
        if d.exists():
            raise OutputError(f"{d}: already exists (model #{entry.index}); builds never overwrite")
    made: List[Path] = []
    for entry in entries:
        d = out_dir / entry.bundle_name
        try:
            rec = build(entry.request, d, progress=progress, cache=cache)
        except BundleError as e:
            raise _failed(e, entry, "build directories", made) from None
        made.append(d)
        if on_build is not None:
            on_build(entry, d, rec)
    return made
