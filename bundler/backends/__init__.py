"""The build stage: one engine per target, written into a build directory with its records.

A build directory is the hand-off between `bundle build` and `bundle seal`. Under full TensorRT
each GPU architecture needs its own build host, so a fleet build is several `bundle build` runs on
several hosts and one `seal` that merges their directories. The directory holds::

    build.json                      # BuildRecord: model info + one EngineRecord per engine
    model/<model>.onnx              # the source model, byte for byte
    engines/<stem>.engine           # one per GPU target (<stem>.onnx for the cpu target)
    engines/<stem>.log              # the builder's log for that engine
    golden/inputs.npz, outputs.npz  # sample inputs and CPU reference outputs (see golden.py)

Backends sit behind the `Backend` protocol (Polygraphy's pattern): `TensorRTBackend` drives both
full TensorRT and TensorRT-RTX, whose Python APIs differ only in a few places.
"""

from __future__ import annotations

import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Protocol, Union

from ..errors import BuildError, InputError, OutputError
from ..fsutil import make_dirs, make_workdir, remove_made_dirs, remove_stale, rename_noreplace
from ..manifest import BuildRecord, EngineRecord, ModelInfo, ShapeRange, to_json
from ..model import ShapeSpec, default_shape, inputs_needing_shape, load_model, resolve_profile, safe_stem, shape_token
from ..targets import Target, parse_target

BUILD_RECORD = "build.json"


@dataclass
class BuildRequest:
    """Everything `build` needs; the CLI flags map one to one onto these fields."""

    model: Path
    name: str
    version: str
    targets: List[str]
    shapes: List[ShapeSpec] = field(default_factory=list)
    workspace: Optional[int] = None
    backend: str = "auto"
    golden: bool = True  # store sample inputs and CPU reference outputs for the loader's selftest
    sample_input: Optional[Path] = None  # .npz with one array per input; random data otherwise
    # --sample-value NAME=VALUE: one value for a whole input (a sample rate, a flag), no .npz needed
    sample_values: Dict[str, Union[bool, int, float]] = field(default_factory=dict)
    precisions: Optional[List[str]] = None  # targets x precisions; None = the graph's own precision
    profiles: List[List[ShapeSpec]] = field(default_factory=list)  # extra optimization profiles
    calibration: Optional[Path] = None  # .npz (or a directory of them) for int8/fp8
    jobs: Optional[int] = None  # parallel build workers; None = number of cores
    timing_cache: Optional[Path] = None  # full TensorRT only: read, updated, recorded
    keep_fp32: List[str] = field(default_factory=list)  # fp16/bf16: node names, and/or "auto"
    accept_accuracy_loss: bool = False  # build a variant outside its selftest tolerance anyway
    # the spec file this request came from: {"name": file name, "sha256": its digest}, for the
    # SLSA provenance's externalParameters (bundler/provenance.py); None for command-line flags
    spec: Optional[Dict[str, str]] = None


class Backend(Protocol):
    """One way of turning an ONNX file into engines."""

    name: str
    extension: str  # of the engine file: ".engine", or ".onnx" for the cpu target

    def version(self) -> str: ...

    def identity(self) -> Optional[dict]:
        """What builds the engine, exactly (product, module, version, CUDA major): part of the
        build cache key. None when it is not known here (the build host decides)."""
        ...

    def resolve(self, target: Target) -> Target:
        """Return the target with its compute capability filled in, or raise `BuildError`
        when this backend cannot build for it. Called for every target before any build."""
        ...

    def build(self, job: "Job", on_stage: Callable[[str], None]) -> EngineRecord:
        """Build one engine; ``on_stage`` reports "parsing", "building", "writing"."""
        ...


def select_backend(name: str) -> Backend:
    from .tensorrt import TensorRTBackend, import_runtime

    if name not in ("auto", "tensorrt", "tensorrt-rtx"):
        raise InputError(f"unknown backend {name!r}: use auto, tensorrt or tensorrt-rtx")
    if name == "auto":
        from ..cuda import query_gpus

        full = import_runtime("tensorrt")
        if full is not None and query_gpus():
            return TensorRTBackend(full, "tensorrt")
        rtx = import_runtime("tensorrt_rtx")
        if rtx is not None:
            return TensorRTBackend(rtx, "tensorrt-rtx")
        if full is not None:
            raise BuildError("full TensorRT is installed but this host has no GPU; install tensorrt-rtx-cu13 to build ahead of time")
        raise BuildError("no TensorRT found: pip install tensorrt-rtx-cu13 (or full tensorrt on a GPU host)")
    module = "tensorrt" if name == "tensorrt" else "tensorrt_rtx"
    mod = import_runtime(module)
    if mod is None:
        hint = "pip install tensorrt-rtx-cu13" if module == "tensorrt_rtx" else "install TensorRT for this host's CUDA"
        raise BuildError(f"backend {name} requested but module {module} does not import ({hint})")
    return TensorRTBackend(mod, name)


def engine_stem(name: str, model: ModelInfo, profile: Dict[str, ShapeRange], target: Target, precision: str) -> str:
    """``{name}_{shape}_{precision}_{gpu}``, e.g. ``yolov8s_640x640_fp16_rtx4090``.

    ``name`` is the bundle's ``--name``, not the ONNX file's stem: exporters call files
    ``inference.onnx`` or ``ch_PP-OCRv4_det_infer.onnx``, and the engine should carry the name
    the bundle is known by (the model file keeps its own name under ``model/``).
    """
    return f"{safe_stem(name)}_{shape_token(profile, model)}_{precision}_{target.label}"


@dataclass(frozen=True)
class BuildEvent:
    """One step of one build, for live displays: stage is queued, parsing, building, done or failed."""

    job: str  # the engine stem
    target: str
    precision: str
    stage: str
    elapsed_s: float = 0.0
    message: str = ""
    node: str = ""  # the build farm's node running it ("" for local builds)


ProgressFn = Callable[[BuildEvent], None]


def _plan_checks(request: BuildRequest, gpu_backend: Optional[Backend] = None):  # noqa: ANN202
    """Every check that can fail without building anything, in one place, before any build."""
    from ..precision import check_target_supports, supported
    from ..versioning import check_bundle_name, check_version

    check_version(request.version)
    check_bundle_name(request.name)
    if not request.targets:
        raise InputError("give at least one --target")
    targets = [parse_target(t) for t in request.targets]
    model = load_model(request.model)
    _check_member_name(model.path)
    _check_golden_flags(request, model)
    need = inputs_needing_shape(model, request.shapes)
    if need:  # every input at once, with shapes onnxruntime ran (seconds, and only on this error path)
        from ..shapes import shape_advice

        raise InputError(shape_advice(request.model, model, need, _settled_shapes(model, request.shapes),
                                      request.sample_values))
    profiles = [resolve_profile(model, request.shapes)] + [resolve_profile(model, p) for p in request.profiles]
    precisions = supported(request.precisions) if request.precisions else [model.precision]
    if model.precision != "fp32" and precisions != [model.precision]:
        raise InputError(
            f"the source graph is already {model.precision}; precision conversions start from an fp32 graph"
        )
    if gpu_backend is None and any(not t.is_cpu for t in targets):
        gpu_backend = select_backend(request.backend)
    cpu_backend = None
    if any(t.is_cpu for t in targets):
        from .onnxruntime import OnnxRuntimeBackend

        cpu_backend = OnnxRuntimeBackend()
    resolved = []
    for t in targets:
        backend = cpu_backend if t.is_cpu else gpu_backend
        assert backend is not None
        resolved.append((backend, backend.resolve(t)))
    labels = [t.label for _, t in resolved]
    dupes = sorted({x for x in labels if labels.count(x) > 1})
    if dupes:
        raise InputError(f"target given twice: {', '.join(dupes)}")
    for _, t in resolved:
        for p in precisions:
            check_target_supports(t, p)
    if request.keep_fp32 and not any(p in ("fp16", "bf16") for p in precisions):
        raise InputError("--keep-fp32 applies to fp16 and bf16 graphs; add --precision fp16 or bf16")
    if "auto" in request.keep_fp32 and not request.golden:
        raise InputError("--keep-fp32 auto measures each try on the golden inputs; drop --no-golden")
    calibration = None
    if any(p in ("int8", "fp8") for p in precisions):
        if request.calibration is None:
            raise InputError("int8 and fp8 need calibration data: pass --calibration FILE.npz or a directory of them")
        from ..precision import load_calibration

        calibration = load_calibration(request.calibration, model, profiles[0])
    elif request.calibration is not None:
        raise InputError("--calibration is only used for int8 and fp8; add --precision int8 or fp8, or drop it")
    return model, profiles, precisions, resolved, calibration


def _check_golden_flags(request: BuildRequest, model: ModelInfo) -> None:
    """--sample-value: names and dtypes, before any build (they also feed the shape advice)."""
    from ..golden import check_sample_values

    if request.sample_values and request.sample_input is not None:
        raise InputError("--sample-value and --sample-input both set golden inputs; give one of them")
    check_sample_values(model, request.sample_values)


def _settled_shapes(model: ModelInfo, shapes: List[ShapeSpec]) -> Dict[str, ShapeRange]:
    """Ranges of the inputs whose shape is already settled: given with --shape, or batch-only."""
    need = {t.name for t in inputs_needing_shape(model, shapes)}
    out = {s.name: ShapeRange(list(s.min), list(s.opt), list(s.max)) for s in shapes}
    for t in model.inputs:
        if t.name not in out and t.name not in need:
            d = list(default_shape(t))
            out[t.name] = ShapeRange(d, d, d)
    return out


def _check_member_name(rel: str) -> None:
    """Refuse, before building, a model file name that would make an unverifiable bundle."""
    from ..archive import Limits, check_member_name
    from ..errors import VerificationError

    try:
        check_member_name(f"bundle/{rel}", Limits(), 0)
    except VerificationError as e:
        raise InputError(f"model file name: {e.message} (rename the file; verify would refuse this bundle)") from None


@dataclass
class Plan:
    """What `plan_build` checked and computed, before anything is written."""

    request: BuildRequest
    model: ModelInfo
    profiles: List[Dict[str, ShapeRange]]
    precisions: List[str]
    resolved: list  # (Backend, Target), one per target
    calibration: object
    golden: object  # golden.Golden or None
    started: str = ""  # UTC, when planning began: the build's start in its SLSA provenance

    def builders(self) -> Dict[str, Optional[dict]]:
        """Backend name -> `identity()` (product and exact version, for cache keys); None where
        the build host decides (full TensorRT on a farm's GPU node)."""
        return {name: b.identity() for name, b in {b.name: b for b, _ in self.resolved}.items()}


@dataclass
class Staged:
    """A staging directory with the source model, golden data and converted graphs, and the jobs
    that build its engines."""

    jobs: List["Job"]
    variants: list
    golden_info: object


def plan_build(request: BuildRequest, gpu_backend: Optional[Backend] = None) -> Plan:
    """Every check that needs no output directory, then the golden data (a CPU run). A farm passes
    its own ``gpu_backend`` (one that builds on another host), else `select_backend` picks one."""
    from ..provenance import utc_now

    started = utc_now()
    model, profiles, precisions, resolved, calibration = _plan_checks(request, gpu_backend)
    golden = None
    if request.golden:
        from ..golden import make_golden

        golden = make_golden(request.model, model, profiles[0], request.sample_input, values=request.sample_values)
    return Plan(request, model, profiles, precisions, resolved, calibration, golden, started)


def stage_build(plan: Plan, staging: Path) -> Staged:
    """Fill ``staging`` (an empty directory) with the model, golden data and converted graphs;
    return one job per (precision, target), whose engines go to ``staging/engines``."""
    request, model = plan.request, plan.model
    (staging / "model").mkdir()
    (staging / "engines").mkdir()
    shutil.copyfile(request.model, staging / model.path)
    golden_info = None
    if plan.golden is not None:
        from ..golden import INPUTS_NPZ, OUTPUTS_NPZ, golden_info as _info, write_npz

        (staging / "golden").mkdir()
        write_npz(staging / INPUTS_NPZ, plan.golden.inputs)
        write_npz(staging / OUTPUTS_NPZ, plan.golden.outputs)
        golden_info = _info(plan.golden, request.sample_input, 0)
    variants, graphs = _convert_all(request, model, plan.precisions, plan.calibration, plan.golden, staging)
    jobs = []
    for precision in plan.precisions:
        for backend, target in plan.resolved:
            stem = engine_stem(request.name, model, plan.profiles[0], target, precision)
            jobs.append(Job(
                stem=stem, backend=backend.name, target=target, precision=precision, model=model,
                model_path=graphs[precision], source_path=Path(request.model),
                profiles=plan.profiles, workspace=request.workspace,
                engine_path=staging / "engines" / f"{stem}{backend.extension}",
                log_path=staging / "engines" / f"{stem}.log", timing_cache=request.timing_cache,
            ))
    return Staged(jobs, variants, golden_info)


def finish_build(plan: Plan, staged: Staged, records: List[EngineRecord], staging: Path) -> BuildRecord:
    """Write ``build.json``: the staging directory is now a complete build directory."""
    from ..provenance import record_build
    from ..provenance import utc_now as plan_started_fallback

    record = BuildRecord(
        name=plan.request.name, version=plan.request.version, model=plan.model, engines=records,
        golden=staged.golden_info, variants=staged.variants, provenance=record_build(plan, plan.started or plan_started_fallback()),
    )
    (staging / BUILD_RECORD).write_bytes(to_json(record))
    os.chmod(staging, 0o755)  # mkdtemp made it 0700
    return record


def build(
    request: BuildRequest, out_dir: Path, progress: Optional[ProgressFn] = None, logs_dir: Optional[Path] = None,
    cache: Optional[Path] = None,
) -> BuildRecord:
    """Check everything, then build targets x precisions into ``out_dir``, which must not exist.

    The directory appears only when every engine has been built: work happens in a staging
    directory beside it, so a failed or interrupted build never leaves a half-filled build dir
    under its final name. When a build fails, every builder log is kept in ``logs_dir`` (default
    ``OUT.failed-logs/``) and the error says where. With ``cache`` (a build cache directory,
    `bundler.cache`), engines built before from the same inputs are reused, the others stored.
    """
    from ..cache import open_cache, run_cached

    _check_build_out(Path(out_dir))
    plan = plan_build(request)
    out_dir = Path(out_dir)
    if out_dir.exists():
        raise OutputError(f"{out_dir}: already exists; builds never overwrite (remove it or pick another --out)")
    made: List[Path] = []
    try:
        made = make_dirs(out_dir.parent)
        remove_stale(out_dir.parent, f".{out_dir.name}.partial-")  # a killed build's staging
        staging = make_workdir(out_dir.parent, f".{out_dir.name}.partial-")
    except OSError as e:
        remove_made_dirs(made)
        raise OutputError(f"{out_dir.parent}: cannot create the build directory there ({e.strerror})") from None
    try:
        staged = stage_build(plan, staging)
        try:
            records = run_cached(staged.jobs, plan.builders(), lambda jobs: run_jobs(jobs, request.jobs, progress),
                                 open_cache(cache), progress)
        except BuildError as e:
            kept = _keep_logs(staging, Path(logs_dir) if logs_dir else out_dir.with_name(out_dir.name + ".failed-logs"))
            raise BuildError(f"{e.message}; builder logs kept in {kept}" if kept else e.message) from None
        _update_timing_cache(staging, request.timing_cache)
        record = finish_build(plan, staged, records, staging)
        rename_noreplace(staging, out_dir)
    except OSError as e:
        shutil.rmtree(staging, ignore_errors=True)
        remove_made_dirs(made)
        raise OutputError(f"{e.filename or out_dir}: cannot write ({e.strerror or e})") from None
    except BaseException:
        # Nothing new is left but the builder logs of a failed build (named in the error): the
        # parents made for --out go again unless those logs now live in them.
        shutil.rmtree(staging, ignore_errors=True)
        remove_made_dirs(made)
        raise
    return record


def _check_build_out(out_dir: Path) -> None:
    """The build directory's name, checked before the model is even read: a wrong --out should
    cost nothing. ``--out b.tar`` would make a directory named like a bundle file."""
    if out_dir.name.lower().endswith(".tar"):
        raise InputError(f"--out {out_dir}: names a tar file, but build writes a build directory there "
                         f"(seal it into a bundle with `bundle seal {out_dir.with_suffix('')} --key K`)")
    if out_dir.exists() or out_dir.is_symlink():
        raise OutputError(f"{out_dir}: already exists; builds never overwrite (remove it or pick another --out)")


def _convert_all(request, model, precisions, calibration, golden, staging):  # noqa: ANN001, ANN202
    """Write each precision's graph into the staging dir, measured against fp32 on the CPU and
    refused when outside its selftest's tolerance (`precision.make_variant`)."""
    from ..golden import TOLERANCES
    from ..precision import make_variant

    graphs: Dict[str, Path] = {}
    variants = []
    for p in precisions:
        if p == model.precision:
            graphs[p] = Path(request.model)
            continue
        batches, cal_info = (calibration if p in ("int8", "fp8") and calibration else (None, None))
        v = make_variant(Path(request.model), p, model, staging, golden, TOLERANCES[p], batches, cal_info,
                         request.keep_fp32, request.accept_accuracy_loss)
        variants.append(v)
        graphs[p] = staging / v.graph
    return variants, graphs


def _update_timing_cache(staging: Path, path: Optional[Path]) -> None:
    """Full TensorRT: write the updated timing cache back (atomically). Each build started from the
    same file and added its own tactics; the largest result, which holds the most, is kept."""
    caches = sorted((staging / "engines").glob("*.timing-cache"), key=lambda p: p.stat().st_size)
    if path is None or not caches:
        return
    tmp = Path(path).with_name(f".{Path(path).name}.partial")
    shutil.copyfile(caches[-1], tmp)
    os.replace(tmp, path)
    for c in caches:
        c.unlink()


def _keep_logs(staging: Path, dest: Path) -> Optional[Path]:
    """A failed build still leaves every builder log, beside where the output would have been."""
    logs = sorted((staging / "engines").glob("*.log"))
    if not logs:
        return None
    base, n = dest, 1
    while dest.exists():  # an earlier failure's logs stay; this one gets the next free name
        dest = base.with_name(f"{base.name}.{n}")
        n += 1
    dest.mkdir(parents=True)
    for log in logs:
        shutil.copyfile(log, dest / log.name)
    return dest


from .jobs import Job, run_jobs  # noqa: E402 - jobs imports engine_stem's neighbours lazily
