"""`bundle export --triton`: a verified bundle into a Triton Inference Server model repository.

What a closed host serves with Triton is a model repository (``REPO/<model>/config.pbtxt`` and
``REPO/<model>/<version>/<files>``). This module writes one model version into one, from a
bundle that has just been verified, using exactly the bytes that were verified: the bundle is
extracted by the verifier's own extraction sink into a private work directory inside REPO (so
every later step is a rename on one file system, never a copy or a second read), the files are
arranged there, flushed to disk, and published with a rename that never replaces anything.

The rules (docs/triton.md is normative):

- Full TensorRT engines become one ``tensorrt_plan`` model, one plan per compute capability,
  named in ``cc_model_filenames``. TensorRT-RTX engines cannot be loaded by Triton's TensorRT
  backend and are skipped with that reason; a bundle with nothing else is refused (exit 27).
- The ``cpu`` target (the ONNX graph itself) becomes an ``onnxruntime_onnx`` model on CPU
  instances. A Triton model has one platform, so one export writes one of the two kinds.
- Inputs, outputs, data types and dims come from the signed manifest; ``max_batch_size``,
  dynamic batching and TensorRT optimization profiles from the engines' build profiles.
- The Triton version is ``MAJOR*1000000 + MINOR*1000 + PATCH`` of the bundle's semantic
  version (order-preserving, the same on every host), and every export is also recorded in
  ``REPO/<model>/bundle-versions.json`` with the full version string and the bundle's digests.

Nothing here prints; the CLI (bundler/cli_export.py) renders the returned `TritonExport`.
"""

from __future__ import annotations

import datetime as _dt
import json
import os
import re
import shutil
import signal
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional, Tuple, Union

from runtime_stub.verify import _SEMVER_RE

from .errors import ExportError, InputError, OutputError, error_for_code
from .fsutil import fsync_dir, make_dirs, make_workdir, remove_made_dirs, remove_stale, rename_noreplace, write_all
from .manifest import EngineRecord, Manifest, ShapeRange, TensorSpec
from .signing import TrustedKey
from .verify import TrustPolicy, verify_bundle

TRITON_RELEASE = "2.73.0"  # the model_config.proto written for (tritonclient 2.73.0's); docs/triton.md
PLATFORM_TENSORRT = "tensorrt_plan"
PLATFORM_ONNX = "onnxruntime_onnx"
PLATFORMS = (PLATFORM_TENSORRT, PLATFORM_ONNX)
MAPPING_FILE = "bundle-versions.json"
MAPPING_FORMAT = "trt-bundler-triton-versions/1"
VERSION_RULE = "MAJOR*1000000 + MINOR*1000 + PATCH"
MAX_MAJOR = 999_999  # keeps every version under 10**12: far inside Triton's int64, short to read
ONNX_FILENAME = "model.onnx"  # Triton's default_model_filename for onnxruntime_onnx
WORK_PREFIX = ".trt-export-"  # private work directories in REPO (removed; a killed run's by the next)
_MODEL_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._-]{0,99}\Z")
_CC_RE = re.compile(r"([1-9][0-9]?)\.([0-9])\Z")

# numpy/ONNX dtype names as the manifest records them (bundler/model.py) -> Triton's DataType.
TRITON_TYPES = {
    "bool": "TYPE_BOOL", "uint8": "TYPE_UINT8", "uint16": "TYPE_UINT16", "uint32": "TYPE_UINT32",
    "uint64": "TYPE_UINT64", "int8": "TYPE_INT8", "int16": "TYPE_INT16", "int32": "TYPE_INT32",
    "int64": "TYPE_INT64", "float16": "TYPE_FP16", "float32": "TYPE_FP32", "float64": "TYPE_FP64",
    "bfloat16": "TYPE_BF16", "object": "TYPE_STRING",
}
RTX_REASON = ("TensorRT-RTX engine: Triton's TensorRT backend loads engines of full TensorRT only "
              "(an RTX engine needs the TensorRT-RTX runtime)")


# -- the version rule -----------------------------------------------------------------------------

def triton_version(version: str) -> int:
    """The Triton model version (a directory name, an integer) of a bundle's semantic version.

    ``MAJOR*1000000 + MINOR*1000 + PATCH``: Triton serves the highest integer by default, and this
    keeps semver order for releases; it needs no state, so every host that exports the same bundle
    agrees. Build metadata (``+…``) does not change precedence and is dropped (recorded in the
    mapping file). Refused: pre-releases (1.0.0-rc.1 must sort below 1.0.0's integer and above
    0.999.999's, and there is none between), MINOR or PATCH over 999, MAJOR over 999999, and
    0.0.0 (Triton ignores a version directory named 0).
    """
    m = _SEMVER_RE.match(version)
    if m is None:
        raise ExportError(f"version {version!r} is not a semantic version")
    if m.group("prerelease") is not None:
        raise ExportError(f"version {version}: a pre-release has no Triton version (its release takes the "
                          f"integer, and the one below it belongs to the release before); export a release version "
                          f"(docs/triton.md)")
    major, minor, patch = (int(m.group(p)) for p in ("major", "minor", "patch"))
    if minor > 999 or patch > 999 or major > MAX_MAJOR:
        raise ExportError(f"version {version}: Triton versions are {VERSION_RULE}; MINOR and PATCH must be at "
                          f"most 999 and MAJOR at most {MAX_MAJOR}")
    number = major * 1_000_000 + minor * 1_000 + patch
    if number == 0:
        raise ExportError("version 0.0.0: its Triton version would be 0, a directory Triton ignores")
    return number


def semver_of(number: int) -> str:
    """The inverse of `triton_version` (without build metadata, which the mapping file keeps)."""
    if isinstance(number, bool) or not isinstance(number, int) or not 0 < number <= MAX_MAJOR * 1_000_000 + 999_999:
        raise ValueError(f"{number!r} is not a Triton version made by {VERSION_RULE}")
    return f"{number // 1_000_000}.{number // 1_000 % 1_000}.{number % 1_000}"


# -- what is written ------------------------------------------------------------------------------

@dataclass
class ExportedFile:
    path: str  # relative to the repository: MODEL/VERSION/FILE
    source: str  # the bundle member it is (engines/…)
    size: int
    sha256: str  # the signed digest of that member: these bytes were verified


@dataclass
class SkippedEngine:
    path: str
    target: str
    backend: str
    reason: str


@dataclass
class TritonExport:
    """One model version written into a repository (`export_triton`'s answer, the CLI's JSON)."""

    repository: str
    model: str
    platform: str
    version: int  # the Triton version (directory name)
    bundle: str
    name: str
    semver: str  # the bundle's version, as signed
    content_digest: str
    bundle_sha256: str
    config: str  # MODEL/config.pbtxt, relative to the repository
    config_written: bool  # False: it existed with exactly these bytes
    max_batch_size: int
    files: List[ExportedFile] = field(default_factory=list)
    skipped: List[SkippedEngine] = field(default_factory=list)
    mapping_file: str = ""
    rule: str = VERSION_RULE
    tensorrt_version: Optional[str] = None  # the full TensorRT that built the plans (the server needs it)
    triton_release: str = TRITON_RELEASE

    def to_dict(self) -> dict:
        return asdict(self)


@dataclass
class _Plan:
    """What a verified manifest becomes, before anything is written."""

    platform: str
    config: bytes
    files: List[Tuple[EngineRecord, str]]  # (engine, file name in the version directory)
    skipped: List[SkippedEngine]
    max_batch_size: int
    tensorrt_version: Optional[str]


# -- planning: manifest -> config.pbtxt (pure) ---------------------------------------------------

def check_model_name(name: str) -> None:
    """A Triton model name is a directory in the repository: letters, digits, '.', '_', '-'."""
    if not _MODEL_NAME_RE.match(name) or name in (".", ".."):
        raise InputError(f"model name {name!r}: use letters, digits, '.', '_' and '-', starting with a letter or "
                         f"digit (at most 100 characters)")


def _kind(e: EngineRecord) -> str:
    if e.header is None:
        return "cpu" if e.backend.name == "onnxruntime" and e.target.label == "cpu" else "other"
    if e.header.product == "tensorrt" and e.backend.name == "tensorrt":
        return "tensorrt"
    if e.header.product == "tensorrt-rtx":
        return "rtx"
    return "other"


def plan_export(manifest: Manifest, model_name: str, platform: Optional[str] = None,
                precision: Optional[str] = None) -> _Plan:
    """Choose the engines and write the configuration for ``manifest`` (already verified)."""
    if platform is not None and platform not in PLATFORMS:
        raise InputError(f"--platform {platform!r}: one of {', '.join(PLATFORMS)}")
    kinds = {e.path: _kind(e) for e in manifest.engines}
    has_trt = any(k == "tensorrt" for k in kinds.values())
    has_cpu = any(k == "cpu" for k in kinds.values())
    if platform is None:
        if not has_trt and not has_cpu:
            rtx = sum(1 for k in kinds.values() if k == "rtx")
            what = f"its {rtx} engine(s) are TensorRT-RTX" if rtx == len(kinds) else "it has no full TensorRT or cpu engine"
            raise ExportError(f"nothing to export for Triton: {what}, and {RTX_REASON.split(': ', 1)[1]}; build the "
                              f"bundle with --target cpu (onnxruntime_onnx) or with full TensorRT (--backend tensorrt)")
        platform = PLATFORM_TENSORRT if has_trt else PLATFORM_ONNX
    want = "tensorrt" if platform == PLATFORM_TENSORRT else "cpu"
    chosen = [e for e in manifest.engines if kinds[e.path] == want]
    if not chosen:
        rtx = " (its TensorRT-RTX engines cannot be served by Triton's TensorRT backend)" \
            if want == "tensorrt" and any(k == "rtx" for k in kinds.values()) else ""
        raise ExportError(f"--platform {platform}: this bundle has no "
                          f"{'full TensorRT' if want == 'tensorrt' else 'cpu-target'} engine{rtx}")
    precisions = sorted({e.build.precision for e in chosen})
    if precision is not None:
        if precision not in precisions:
            raise ExportError(f"--precision {precision}: the {platform} engines are {', '.join(precisions)}")
    elif len(precisions) > 1:
        raise ExportError(f"the {platform} engines are in {', '.join(precisions)}; one Triton model has one: "
                          f"choose with --precision")
    else:
        precision = precisions[0]
    skipped = []
    for e in manifest.engines:
        k = kinds[e.path]
        if k == want and e.build.precision == precision:
            continue
        if k == "rtx":
            reason = RTX_REASON
        elif k == want:
            reason = f"{e.build.precision}: not the precision exported ({precision}; --precision)"
        elif k == "cpu":
            reason = f"cpu target: a Triton model has one platform; export it with --platform {PLATFORM_ONNX}"
        elif k == "tensorrt":
            reason = f"full TensorRT engine: a Triton model has one platform; export it with --platform {PLATFORM_TENSORRT}"
        else:
            reason = "not an engine Triton can serve"
        skipped.append(SkippedEngine(e.path, e.target.label, f"{e.backend.name} {e.backend.version}", reason))
    chosen = [e for e in chosen if e.build.precision == precision]
    profiles = chosen[0].build.profiles
    for e in chosen[1:]:
        if e.build.profiles != profiles:
            raise ExportError(f"{e.path} and {chosen[0].path} were built with different optimization profiles; "
                              f"one Triton model has one configuration for all its plans")
    files: List[Tuple[EngineRecord, str]] = []
    trt_version = None
    if want == "tensorrt":
        by_cc: Dict[str, EngineRecord] = {}
        for e in chosen:
            m = _CC_RE.match(e.target.cc or "")
            if m is None:
                raise ExportError(f"{e.path}: compute capability {e.target.cc!r} is not MAJOR.MINOR")
            if e.target.cc in by_cc:
                raise ExportError(f"{by_cc[e.target.cc].path} and {e.path} are both for compute capability "
                                  f"{e.target.cc}; cc_model_filenames holds one plan per compute capability")
            by_cc[e.target.cc] = e
        versions = sorted({e.header.version for e in chosen if e.header is not None})
        if len(versions) > 1:
            raise ExportError(f"the plans were built by TensorRT {' and '.join(versions)}; one Triton server runs "
                              f"one TensorRT version, so its plans must share it")
        trt_version = versions[0]
        for cc in sorted(by_cc, key=lambda c: tuple(int(x) for x in c.split("."))):
            files.append((by_cc[cc], f"model_sm{cc.replace('.', '')}.plan"))
    else:
        files.append((chosen[0], ONNX_FILENAME))
    config, mbs = _config_text(manifest, model_name, platform, profiles, files)
    return _Plan(platform, config, files, skipped, mbs, trt_version)


def _batching(manifest: Manifest, profiles: List[Dict[str, ShapeRange]]) -> Tuple[int, List[int]]:
    """``(max_batch_size, preferred batch sizes)`` from the build profiles; ``(0, [])`` when the
    model does not batch on its first dimension the way Triton's batcher needs.

    Triton batches on a first dimension it removes from ``dims``. That needs every input and
    output to have a dynamic first dimension, and every profile to accept a batch of 1 up to one
    maximum shared by all inputs. max_batch_size is the largest profile maximum (Triton picks
    the profile that fits a batch); the preferred sizes are the profiles' opt batches, the
    shapes TensorRT tuned for.
    """
    tensors = manifest.model.inputs + manifest.model.outputs
    if not profiles or any(not t.shape or isinstance(t.shape[0], int) for t in tensors):
        return 0, []
    maxima, preferred = [], set()
    for p in profiles:
        ranges = [p.get(t.name) for t in manifest.model.inputs]
        if any(r is None or not r.min or r.min[0] != 1 for r in ranges):
            return 0, []
        tops = {r.max[0] for r in ranges if r is not None}
        if len(tops) != 1:
            return 0, []
        maxima.append(tops.pop())
        preferred.update(r.opt[0] for r in ranges if r is not None)
    mbs = max(maxima)
    if mbs < 1 or mbs > 2**31 - 1:
        return 0, []
    return mbs, sorted(b for b in preferred if 1 < b <= mbs)


def _dims(t: TensorSpec, batched: bool) -> List[int]:
    dims = [d if isinstance(d, int) and d > 0 else -1 for d in t.shape]
    return dims[1:] if batched else dims


def pbtxt_string(text: str, where: str = "a name") -> str:
    """A protobuf text-format string literal: printable ASCII as it is, ``"``, ``'`` and ``\\``
    escaped, every other UTF-8 byte as a 3-digit octal escape. No name from a bundle can end the
    literal, start a new field or line, or reach a terminal that shows the file as a control
    character. Raises `ExportError` for text that is not Unicode scalar values (lone surrogates)."""
    try:
        raw = text.encode("utf-8")
    except UnicodeEncodeError:
        raise ExportError(f"{where} is not valid Unicode text; Triton's configuration needs UTF-8") from None
    out = []
    for b in raw:
        if b in (0x22, 0x27, 0x5C):
            out.append("\\" + chr(b))
        elif 0x20 <= b < 0x7F:
            out.append(chr(b))
        else:
            out.append(f"\\{b:03o}")
    return '"' + "".join(out) + '"'


def _tensor_block(kind: str, tensors: List[TensorSpec], batched: bool, platform: str) -> List[str]:
    lines = [f"{kind} ["]
    for i, t in enumerate(tensors):
        dt = TRITON_TYPES.get(t.dtype)
        if dt is None or (dt == "TYPE_STRING" and platform == PLATFORM_TENSORRT):
            raise ExportError(f"{kind} {pbtxt_string(t.name, f'{kind} name')}: data type {t.dtype!r} has no Triton "
                              f"{platform} equivalent")
        dims = _dims(t, batched)
        lines += ["  {", f"    name: {pbtxt_string(t.name, f'{kind} name')}", f"    data_type: {dt}"]
        if dims:
            lines.append(f"    dims: [ {', '.join(str(d) for d in dims)} ]")
        else:  # a scalar, or only the batch dimension: Triton's documented form is [1] reshaped to []
            lines += ["    dims: [ 1 ]", "    reshape: { shape: [ ] }"]
        lines.append("  }," if i < len(tensors) - 1 else "  }")
    lines.append("]")
    return lines


def _config_text(manifest: Manifest, model_name: str, platform: str, profiles: List[Dict[str, ShapeRange]],
                 files: List[Tuple[EngineRecord, str]]) -> Tuple[bytes, int]:
    """config.pbtxt, in Triton's documented text format. It holds nothing of one version (no
    bundle version, no digest), so every version of a model shares it byte for byte."""
    names = [t.name for t in manifest.model.inputs] + [t.name for t in manifest.model.outputs]
    if len(set(names)) != len(names) or not manifest.model.inputs or not manifest.model.outputs:
        raise ExportError("the model's inputs and outputs must have distinct names, and at least one of each")
    mbs, preferred = _batching(manifest, profiles)
    lines = [
        "# Written by trt-bundler `bundle export --triton` (docs/triton.md); the same for every version of",
        "# this model. Which bundle each version directory came from: " + MAPPING_FILE + ".",
        f"name: {pbtxt_string(model_name)}",
        f"platform: {pbtxt_string(platform)}",
        f"max_batch_size: {mbs}",
    ]
    lines += _tensor_block("input", manifest.model.inputs, mbs > 0, platform)
    lines += _tensor_block("output", manifest.model.outputs, mbs > 0, platform)
    if mbs > 0:
        lines += ["dynamic_batching {"]
        if preferred:
            lines.append(f"  preferred_batch_size: [ {', '.join(str(b) for b in preferred)} ]")
        lines += ["}"]
    if platform == PLATFORM_TENSORRT:
        profile_names = ", ".join(pbtxt_string(str(i)) for i in range(len(profiles)))
        lines += ["instance_group [", "  {", "    kind: KIND_GPU", "    count: 1"]
        if profiles:
            lines.append(f"    profile: [ {profile_names} ]")
        lines += ["  }", "]", "cc_model_filenames ["]
        for i, (e, fname) in enumerate(files):
            lines += ["  {", f"    key: {pbtxt_string(str(e.target.cc))}", f"    value: {pbtxt_string(fname)}",
                      "  }," if i < len(files) - 1 else "  }"]
        lines.append("]")
    else:
        lines += ["instance_group [", "  {", "    kind: KIND_CPU", "    count: 1", "  }", "]",
                  f"default_model_filename: {pbtxt_string(ONNX_FILENAME)}"]
    return ("\n".join(lines) + "\n").encode("ascii"), mbs


# -- writing --------------------------------------------------------------------------------------

@contextmanager
def _signals_held() -> Iterator[None]:
    """Hold SIGINT and SIGTERM for the publishing renames: the version directory and its mapping
    entry appear together or not at all. A signal that arrives meanwhile is delivered (and so
    interrupts, exit 130/143) right after, with the export complete."""
    try:
        old = signal.pthread_sigmask(signal.SIG_BLOCK, {signal.SIGINT, signal.SIGTERM})
    except (AttributeError, ValueError, OSError):  # pragma: no cover - no pthread_sigmask
        old = None
    try:
        yield
    finally:
        if old is not None:
            signal.pthread_sigmask(signal.SIG_SETMASK, old)


@contextmanager
def _dir_locked(directory: Path) -> Iterator[None]:
    """An exclusive flock on the model directory itself: exports into one model take turns for
    the config check, the version rename and the mapping update (no lock file to leave behind)."""
    import fcntl

    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW | os.O_CLOEXEC)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _write_new(path: Path, data: bytes) -> None:
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW | os.O_CLOEXEC, 0o644)
    try:
        write_all(fd, data)
        os.fsync(fd)
    finally:
        os.close(fd)


def _mapping_entry(report_name: str, semver: str, content: str, sha: str, files: List[ExportedFile]) -> dict:
    return {"bundle": report_name, "version": semver, "content_digest": content, "bundle_sha256": sha,
            "exported": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            "files": {f.path.split("/", 2)[2]: f.sha256 for f in files}}


def _mapping_bytes(model: str, versions: Dict[str, dict]) -> bytes:
    doc = {"format": MAPPING_FORMAT, "model": model, "rule": VERSION_RULE,
           "versions": dict(sorted(versions.items(), key=lambda kv: int(kv[0])))}
    return (json.dumps(doc, indent=2, sort_keys=False, ensure_ascii=True) + "\n").encode("ascii")


def read_mapping(path: Path) -> Dict[int, dict]:
    """The mapping file's entries by Triton version (for tools and tests; `bundle export` keeps it)."""
    try:
        doc = json.loads(Path(path).read_bytes())
    except (OSError, ValueError) as e:
        raise InputError(f"{path}: not a readable mapping file ({e})") from None
    if not isinstance(doc, dict) or doc.get("format") != MAPPING_FORMAT or not isinstance(doc.get("versions"), dict):
        raise InputError(f"{path}: not a {MAPPING_FORMAT} file")
    try:
        return {int(k): v for k, v in doc["versions"].items()}
    except ValueError:
        raise InputError(f"{path}: a version that is not an integer") from None


def _load_versions(path: Path, model: str) -> Dict[str, dict]:
    if not path.exists():
        return {}
    try:
        doc = json.loads(path.read_bytes())
    except (OSError, ValueError) as e:
        raise OutputError(f"{path}: cannot read the version mapping ({e}); not changed") from None
    if not isinstance(doc, dict) or doc.get("format") != MAPPING_FORMAT or doc.get("model") != model \
            or not isinstance(doc.get("versions"), dict):
        raise OutputError(f"{path}: not this model's {MAPPING_FORMAT} file; not changed")
    return dict(doc["versions"])


def export_triton(
    bundle: Path,
    trusted: "Union[Dict[str, TrustedKey], TrustPolicy]",
    repository: Path,
    *,
    model_name: Optional[str] = None,
    platform: Optional[str] = None,
    precision: Optional[str] = None,
    allow_expired: bool = False,
    progress: Optional[Callable[[int, int], None]] = None,
) -> TritonExport:
    """Verify ``bundle`` and write one version of it into the Triton repository ``repository``.

    ``model_name`` defaults to the bundle's name; ``platform`` to ``tensorrt_plan`` when the
    bundle has full TensorRT engines, else ``onnxruntime_onnx`` for its cpu target. Raises the
    verification's own error (exit 10-16) before anything is written, `ExportError` (27) when
    the bundle cannot become that model, `OutputError` (6) when the version exists, or the
    model's config.pbtxt exists with other bytes (it is never replaced), `InputError` (3) for the
    request. On any failure or interrupt, nothing new is left in the repository.
    """
    bundle, repository = Path(bundle), Path(repository)
    if model_name is not None:
        check_model_name(model_name)
    if platform is not None and platform not in PLATFORMS:
        raise InputError(f"--platform {platform!r}: one of {', '.join(PLATFORMS)}")
    if bundle.is_dir():
        raise InputError(f"{bundle}: is a directory; export takes a bundle tar or a part set (an extracted "
                         f"directory would have to be read again after it was verified)")
    if repository.is_symlink() or (repository.exists() and not repository.is_dir()):
        raise OutputError(f"{repository}: exists and is not a directory; --triton names the model repository")
    try:
        made = make_dirs(repository)
    except OSError as e:
        raise OutputError(f"{e.filename or repository}: cannot create the directory ({e.strerror or e})") from None
    work: Optional[Path] = None
    try:
        remove_stale(repository, WORK_PREFIX)  # a killed export's leftovers
        try:
            work = make_workdir(repository, WORK_PREFIX)
        except OSError as e:
            raise OutputError(f"{repository}: cannot create a work directory there ({e.strerror or e})") from None
        extracted = work / "bundle"
        report = verify_bundle(bundle, trusted, extract_to=extracted, allow_expired=allow_expired, progress=progress)
        if not report.ok:
            assert report.error is not None
            raise error_for_code(report.exit_code, f"cannot export a bundle that fails verification: "
                                 f"{report.error.message}", report.error.member)
        manifest = report.manifest
        assert manifest is not None and report.version is not None and report.name is not None
        name = model_name or manifest.name
        check_model_name(name)
        number = triton_version(report.version)
        plan = plan_export(manifest, name, platform, precision)
        result = TritonExport(
            repository=str(repository), model=name, platform=plan.platform, version=number, bundle=str(bundle),
            name=report.name, semver=report.version, content_digest=report.content_digest or "",
            bundle_sha256=report.sha256 or "", config=f"{name}/config.pbtxt", config_written=False,
            max_batch_size=plan.max_batch_size, skipped=plan.skipped, mapping_file=f"{name}/{MAPPING_FILE}",
            tensorrt_version=plan.tensorrt_version)
        try:
            _publish(work, extracted, repository, result, plan)
        except OSError as e:  # the disk, not the bundle: one OUTPUT line naming the file
            raise OutputError(f"{e.filename or repository}: cannot write ({e.strerror or e})") from None
        return result
    except BaseException:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
            work = None
        remove_made_dirs(made)
        raise
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)


def _publish(work: Path, extracted: Path, repository: Path, result: TritonExport, plan: _Plan) -> None:
    """Arrange the verified files as MODEL/VERSION in ``work``, then rename into the repository."""
    name, number = result.model, result.version
    staged_model = work / "model"
    staged_version = staged_model / str(number)
    os.mkdir(staged_model, 0o755)
    os.mkdir(staged_version, 0o755)
    for e, fname in plan.files:
        os.rename(extracted / e.path, staged_version / fname)  # the verified bytes, moved (one file system)
        result.files.append(ExportedFile(f"{name}/{number}/{fname}", e.path, e.size, e.sha256))
    entry = _mapping_entry(result.name, result.semver, result.content_digest, result.bundle_sha256, result.files)
    _write_new(staged_model / "config.pbtxt", plan.config)
    _write_new(staged_model / MAPPING_FILE, _mapping_bytes(name, {str(number): entry}))
    # the moved files were fsynced by the extraction sink, the two new ones by _write_new: what
    # is left to make durable before the rename is the two directories' entries
    fsync_dir(staged_version)
    fsync_dir(staged_model)
    target = repository / name
    if not target.exists() and not target.is_symlink():
        try:
            with _signals_held():
                rename_noreplace(staged_model, target)  # a new model: all of it appears at once
            fsync_dir(repository)
            result.config_written = True
            return
        except OutputError:
            pass  # another export made it meanwhile: add the version to it, below
    if target.is_symlink() or not target.is_dir():
        raise OutputError(f"{target}: exists and is not a model directory; not touched")
    with _dir_locked(target):
        config_path = target / "config.pbtxt"
        try:
            existing = config_path.read_bytes() if config_path.is_file() and not config_path.is_symlink() else None
        except OSError as e:
            raise OutputError(f"{config_path}: cannot read ({e.strerror or e})") from None
        if existing is None:
            raise OutputError(f"{target}: a model directory without a config.pbtxt written by bundle export; not "
                              f"touched (choose another --model-name)")
        if existing != plan.config:
            raise OutputError(f"{config_path}: differs from the configuration this bundle needs (inputs, outputs, "
                              f"batching, profiles or plans changed, or it was edited); never overwritten: export "
                              f"under another --model-name, or move the model away (docs/triton.md)")
        dest = target / str(number)
        if dest.exists() or dest.is_symlink():
            raise OutputError(f"{dest}: version {number} ({result.semver}) is there already; a version is never "
                              f"overwritten")
        mapping = target / MAPPING_FILE
        versions = _load_versions(mapping, name)
        versions[str(number)] = entry
        new_mapping = work / (MAPPING_FILE + ".new")
        _write_new(new_mapping, _mapping_bytes(name, versions))
        with _signals_held():
            rename_noreplace(staged_version, dest)
            os.replace(new_mapping, mapping)
        fsync_dir(target)
