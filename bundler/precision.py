"""Precision as a graph transformation: fp16, bf16, int8 and fp8 variants of an fp32 ONNX model.

TensorRT 11 and TensorRT-RTX have no FP16/INT8 builder flags: the precision an engine runs in is
the precision its ONNX graph carries. So the bundler converts the graph itself, before the build:

* fp16: onnxconverter-common's `convert_float_to_float16(keep_io_types=True)`. We chose it over
  NVIDIA ModelOpt AutoCast because ModelOpt's ONNX extra installs PyTorch and onnxruntime-gpu
  (6.5 GB here, and it replaces the CPU onnxruntime the cpu target needs), while
  onnxconverter-common is a small, pure-Python, well-kept converter whose op block list keeps
  numerically fragile ops in fp32. docs/precision.md has the comparison.
* bf16: the same conversion, then every FLOAT16 tensor, Cast and type annotation rewritten to
  BFLOAT16 (the op block list that protects fp16 applies to bf16 as well).
* int8: onnxruntime `quantize_static` in QDQ format: symmetric, per-channel weights, biases left
  in float (TensorRT rejects int32 bias DequantizeLinear), scales from the calibration data.
* fp8 (E4M3): onnxruntime's float8 calibration is unusable in 1.32 (its Distribution method
  crashes), so the int8 QDQ graph is rewritten: every Q/DQ pair becomes FLOAT8E4M3FN with its
  scale widened by 127/448, and int8 weights are re-encoded as E4M3 through ml_dtypes. Q/DQ with
  float8 needs opset 19, so the source is converted to opset 19 first.

Each variant's accuracy against the fp32 reference is measured on the golden inputs with
onnxruntime on the CPU. That is a proxy that needs no GPU; the engine's own accuracy is measured
on the target by the loader's selftest, and the manifest says which is which.
"""

from __future__ import annotations

import hashlib
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import AccuracyError, BuildError, InputError, printable
from .manifest import AccuracyInfo, CalibrationInfo, InputStats, ModelInfo, PrecisionVariant, ShapeRange, Tolerance
from .targets import Target

PRECISIONS = ("fp32", "fp16", "bf16", "int8", "fp8")

#: The lowest compute capability whose tensor cores run each precision. TensorRT-RTX itself refuses
#: fp8 below SM89 ("model contains HW-specific datatypes"); we refuse before any build starts.
MIN_CC: Dict[str, Tuple[int, int]] = {
    "fp32": (0, 0),
    "fp16": (6, 0),
    "bf16": (8, 0),
    "int8": (6, 1),
    "fp8": (8, 9),
}

#: Calibration sets below this many samples get a warning in the manifest.
MIN_CALIBRATION_SAMPLES = 64

FP8_MAX = 448.0  # largest finite FLOAT8E4M3FN
INT8_MAX = 127.0


def check_precision(name: str) -> str:
    p = name.strip().lower()
    if p not in PRECISIONS:
        raise InputError(f"unknown precision {name!r}: use one of {', '.join(PRECISIONS)}")
    return p


def check_target_supports(target: Target, precision: str) -> None:
    """A precision the target's hardware cannot run is refused before anything is built."""
    if target.cc is None or target.is_cpu:
        if target.is_cpu and precision in ("bf16", "fp8"):
            raise BuildError(f"target cpu cannot run {precision}: onnxruntime's CPU provider has no {precision} kernels")
        return
    need = MIN_CC[precision]
    if target.cc < need:
        raise BuildError(
            f"target {target.label} (compute capability {target.cc_str}) cannot run {precision}: "
            f"it needs compute capability {need[0]}.{need[1]} or newer"
        )


# -- calibration --------------------------------------------------------------------------------

def _npz_files(path: Path) -> List[Path]:
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix == ".npz" and p.is_file())
        if not files:
            raise InputError(f"{path}: calibration directory holds no .npz files")
        return files
    if path.is_file():
        return [path]
    raise InputError(f"{path}: no such calibration file or directory")


def load_calibration(
    path: Path, model: ModelInfo, profile: Dict[str, ShapeRange]
) -> Tuple[List[Dict[str, np.ndarray]], CalibrationInfo]:
    """Read ``--calibration`` (one .npz, or a directory of them), check it against the model and
    profile, and slice it into batches that fit the profile (at most the opt batch size)."""
    from .golden import read_npz

    path = Path(path)
    files = _npz_files(path)
    digest = hashlib.sha256()
    arrays: Dict[str, List[np.ndarray]] = {}
    for f in files:
        digest.update(f.name.encode() + b"\0")
        digest.update(f.read_bytes())
        for k, v in read_npz(f).items():
            arrays.setdefault(k, []).append(v)
    want = {t.name: t for t in model.inputs}
    if set(arrays) != set(want):
        raise InputError(f"{path}: calibration arrays are {sorted(arrays)}, the model's inputs are {sorted(want)}")
    data = {k: np.concatenate(v, axis=0) if len(v) > 1 else v[0] for k, v in arrays.items()}
    counts = {k: int(v.shape[0]) if v.ndim else 0 for k, v in data.items()}
    if len(set(counts.values())) != 1:
        raise InputError(f"{path}: inputs have different sample counts {counts}; stack samples along the first axis")
    samples = next(iter(counts.values()))
    if samples == 0:
        raise InputError(f"{path}: the calibration set is empty")
    for name, a in data.items():
        t, rng = want[name], profile[name]
        if str(a.dtype) != t.dtype:
            raise InputError(f"{path}: calibration input {name!r} is {a.dtype}, the model takes {t.dtype}")
        if a.ndim != len(rng.min):
            raise InputError(f"{path}: calibration input {name!r} has rank {a.ndim}, the model's input has rank {len(rng.min)}")
        inner_ok = all(lo <= d <= hi for d, lo, hi in zip(a.shape[1:], rng.min[1:], rng.max[1:]))
        if not inner_ok:
            raise InputError(
                f"{path}: calibration input {name!r} samples are {'x'.join(map(str, a.shape[1:]))}, outside the profile "
                f"{'x'.join(map(str, rng.min[1:]))} .. {'x'.join(map(str, rng.max[1:]))}"
            )
    batch = max(1, min(rng.opt[0] for rng in profile.values()))
    batch = min(batch, min(rng.max[0] for rng in profile.values()))
    batches = [{k: np.ascontiguousarray(v[i : i + batch]) for k, v in data.items()} for i in range(0, samples, batch)]
    min_batch = min(rng.min[0] for rng in profile.values())
    batches = [b for b in batches if next(iter(b.values())).shape[0] >= min_batch]
    stats: Dict[str, InputStats] = {}
    warnings: List[str] = []
    if samples < MIN_CALIBRATION_SAMPLES:
        warnings.append(
            f"only {samples} calibration samples (fewer than {MIN_CALIBRATION_SAMPLES}): scales may not represent "
            f"the field; use data from every condition the model will see"
        )
    for name, a in sorted(data.items()):
        f = a.astype(np.float64)
        st = InputStats(min=float(f.min()), max=float(f.max()), mean=float(f.mean()), std=float(f.std()))
        stats[name] = st
        if st.std == 0.0:
            warnings.append(f"input {name!r} has zero variance in the calibration set: every sample is the same")
    info = CalibrationInfo(
        source=path.name, sha256=digest.hexdigest(), files=len(files), samples=samples, batch=batch,
        inputs=stats, warnings=warnings,
    )
    return batches, info


# -- conversion ---------------------------------------------------------------------------------

def _without_initializer_inputs(model) -> None:  # noqa: ANN001
    """IR < 4 graphs list every initializer as a graph input too. Converters retype the
    initializer but not its input entry, which then disagree (onnxruntime: "Tensor element type
    mismatch"). Drop those entries and declare IR 4, where they are not needed."""
    inits = {i.name for i in model.graph.initializer}
    keep = [i for i in model.graph.input if i.name not in inits]
    if len(keep) != len(model.graph.input):
        del model.graph.input[:]
        model.graph.input.extend(keep)
        model.ir_version = max(model.ir_version, 4)


def _load_named(src: Path):  # noqa: ANN202 - onnx.ModelProto
    """The source graph, with a name on every node: --keep-fp32 and the auto search name nodes,
    and the converter's block list matches by name. Unnamed nodes get ``OpType_INDEX`` (their
    position in the graph), stable for a given source file."""
    import onnx

    model = onnx.load(str(src))
    _without_initializer_inputs(model)
    taken = {n.name for n in model.graph.node if n.name}
    for i, n in enumerate(model.graph.node):
        if not n.name:
            name = f"{n.op_type}_{i}"
            while name in taken:
                name += "_"
            n.name = name
            taken.add(name)
    return model


def _fp16(model, keep_fp32: Sequence[str] = ()):  # noqa: ANN001, ANN202 - onnx.ModelProto
    import copy

    from onnxconverter_common import float16

    return float16.convert_float_to_float16(copy.deepcopy(model), keep_io_types=True, disable_shape_infer=False,
                                            node_block_list=list(keep_fp32) or None)


def _to_bf16(model) -> None:  # noqa: ANN001 - onnx.ModelProto, converted to fp16 already
    """Rewrite a keep_io_types fp16 graph to bf16: tensors, Casts and type annotations."""
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    def retype(value_info) -> None:  # noqa: ANN001
        tt = value_info.type.tensor_type
        if tt.elem_type == TensorProto.FLOAT16:
            tt.elem_type = TensorProto.BFLOAT16

    def convert_tensor(t) -> None:  # noqa: ANN001
        if t.data_type == TensorProto.FLOAT16:
            arr = numpy_helper.to_array(t).astype(np.float32).astype(ml_dtypes.bfloat16)
            t.CopyFrom(numpy_helper.from_array(arr, t.name))

    g = model.graph
    for init in g.initializer:
        convert_tensor(init)
    for vi in list(g.value_info) + list(g.input) + list(g.output):
        retype(vi)
    for node in g.node:
        for a in node.attribute:
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.FLOAT16:
                a.i = TensorProto.BFLOAT16
            if a.type == a.TENSOR:
                convert_tensor(a.t)


def _quantize_int8(src: Path, out: Path, batches: List[Dict[str, np.ndarray]]) -> None:
    from onnxruntime.quantization import CalibrationDataReader, QuantFormat, QuantType, quantize_static

    class Reader(CalibrationDataReader):
        def __init__(self) -> None:
            self._it: Iterator[Dict[str, np.ndarray]] = iter(batches)

        def get_next(self):  # noqa: ANN202
            return next(self._it, None)

    quantize_static(
        str(src), str(out), Reader(),
        quant_format=QuantFormat.QDQ,
        activation_type=QuantType.QInt8,
        weight_type=QuantType.QInt8,
        per_channel=True,
        extra_options={"QuantizeBias": False, "ActivationSymmetric": True, "WeightSymmetric": True},
    )


def _int8_qdq_to_fp8(model) -> None:  # noqa: ANN001 - onnx.ModelProto with symmetric int8 Q/DQ
    import ml_dtypes
    from onnx import TensorProto, numpy_helper

    g = model.graph
    inits = {i.name: i for i in g.initializer}
    widen = np.float32(INT8_MAX / FP8_MAX)
    scales, zero_points, weights = set(), set(), set()
    for node in g.node:
        if node.op_type in ("QuantizeLinear", "DequantizeLinear"):
            if len(node.input) > 1 and node.input[1] in inits:
                scales.add(node.input[1])
            if len(node.input) > 2 and node.input[2] in inits:
                zero_points.add(node.input[2])
            if node.op_type == "DequantizeLinear" and node.input[0] in inits:
                weights.add((node.input[0], node.input[1], node.input[2] if len(node.input) > 2 else ""))
    for name, scale_name, _zp in weights:
        w = numpy_helper.to_array(inits[name]).astype(np.float32)  # symmetric: real = q * scale
        w8 = np.clip(w * np.float32(FP8_MAX / INT8_MAX), -FP8_MAX, FP8_MAX).astype(ml_dtypes.float8_e4m3fn)
        inits[name].CopyFrom(numpy_helper.from_array(w8, name))
    for name in scales:
        s = numpy_helper.to_array(inits[name]).astype(np.float32) * widen
        inits[name].CopyFrom(numpy_helper.from_array(s.astype(np.float32), name))
    for name in zero_points:
        z = numpy_helper.to_array(inits[name])
        if np.any(z != 0):
            raise BuildError("fp8 conversion needs symmetric int8 quantization (zero points of 0)")
        inits[name].CopyFrom(numpy_helper.from_array(np.zeros(z.shape, dtype=ml_dtypes.float8_e4m3fn), name))
    for vi in list(g.value_info):
        if vi.type.tensor_type.elem_type == TensorProto.INT8:
            vi.type.tensor_type.elem_type = TensorProto.FLOAT8E4M3FN


def _half(named, precision: str, keep_fp32: Sequence[str] = ()):  # noqa: ANN001, ANN202
    """The fp16 or bf16 graph of a named fp32 model, the nodes in ``keep_fp32`` left in fp32."""
    model = _fp16(named, keep_fp32)
    if precision == "bf16":
        _to_bf16(model)
    return model


def convert(
    src: Path, precision: str, out: Path, batches: Optional[List[Dict[str, np.ndarray]]] = None,
    keep_fp32: Sequence[str] = (),
) -> str:
    """Write the ``precision`` variant of the fp32 model ``src`` to ``out``; returns the converter's
    name and version for the manifest."""
    import onnx

    try:
        if precision in ("fp16", "bf16"):
            import onnxconverter_common

            model = _half(_load_named(src), precision, keep_fp32)
            onnx.save(model, str(out))
            return f"onnxconverter-common {onnxconverter_common.__version__} (keep_io_types)" + (
                ", FLOAT16 rewritten to BFLOAT16" if precision == "bf16" else "")
        if precision in ("int8", "fp8"):
            import onnxruntime

            if not batches:
                raise InputError(f"{precision} needs calibration data: pass --calibration FILE.npz or DIR")
            m = onnx.load(str(src))
            _without_initializer_inputs(m)
            source = out.with_name(out.stem + ".source.onnx")
            if precision == "fp8":
                from onnx import version_converter

                opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 0)
                if opset < 19:
                    m = version_converter.convert_version(m, 19)
            onnx.save(m, str(source))
            try:
                _quantize_int8(source, out, batches)
            finally:
                source.unlink()
            if precision == "fp8":
                m = onnx.load(str(out))
                _int8_qdq_to_fp8(m)
                onnx.checker.check_model(m)
                onnx.save(m, str(out))
            return f"onnxruntime {onnxruntime.__version__} quantize_static (QDQ, symmetric, per-channel)" + (
                "; Q/DQ rewritten to FLOAT8E4M3FN" if precision == "fp8" else "")
    except (InputError, BuildError):
        raise
    except Exception as e:  # noqa: BLE001 - converters raise anything; the user needs one line
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise BuildError(f"converting the model to {precision} failed: {first}") from None
    raise InputError(f"unknown precision {precision!r}")


def _run_cpu(model: "object", inputs: Dict[str, np.ndarray], optimize: bool = True) -> Dict[str, np.ndarray]:
    """Run a graph (ModelProto or path) with onnxruntime's CPU provider; its own log lines off.

    ``optimize=False`` runs the graph as written. Q/DQ graphs need it: onnxruntime's QDQ fusions
    assume int8's asymmetric zero points, and on an fp8 graph one of them drops a Relu before a
    QuantizeLinear (a conv model's outputs came back negative, max abs err 6.2 instead of 0.5)."""
    import onnxruntime as ort

    opts = ort.SessionOptions()
    opts.log_severity_level = 4  # not even errors: the exception carries them, as one line of ours
    if not optimize:
        opts.graph_optimization_level = ort.GraphOptimizationLevel.ORT_DISABLE_ALL
    source = model if isinstance(model, (str, Path)) else model.SerializeToString()  # type: ignore[attr-defined]
    sess = ort.InferenceSession(str(source) if isinstance(source, Path) else source, opts,
                                providers=["CPUExecutionProvider"])
    names = [o.name for o in sess.get_outputs()]
    return dict(zip(names, sess.run(names, inputs)))


def _bf16_emulated(model):  # noqa: ANN001, ANN202 - a bf16 onnx.ModelProto
    """A float32 graph that computes what the bf16 graph computes, for onnxruntime's CPU provider,
    which has no bf16 kernels: weights keep their bf16 values, and every tensor the bf16 graph
    holds in bf16 is rounded to bf16 (Cast to BFLOAT16 and back) right where it is made. The
    arithmetic in between runs in fp32, as TensorRT accumulates bf16 math in fp32."""
    import copy

    from onnx import TensorProto, helper, numpy_helper

    m = copy.deepcopy(model)
    g = m.graph
    low = set()
    for vi in list(g.value_info) + list(g.output):
        if vi.type.tensor_type.elem_type == TensorProto.BFLOAT16:
            low.add(vi.name)
            vi.type.tensor_type.elem_type = TensorProto.FLOAT

    def widen(t) -> None:  # noqa: ANN001
        if t.data_type == TensorProto.BFLOAT16:
            t.CopyFrom(numpy_helper.from_array(numpy_helper.to_array(t).astype(np.float32), t.name))

    for init in g.initializer:
        widen(init)
    for node in g.node:
        for a in node.attribute:
            if a.type == a.TENSOR:
                widen(a.t)
            if node.op_type == "Cast" and a.name == "to" and a.i == TensorProto.BFLOAT16:
                a.i = TensorProto.FLOAT
                low.update(node.output)
    opset = next((o.version for o in m.opset_import if o.domain in ("", "ai.onnx")), 13)
    if opset < 13:  # Cast to and from bfloat16 exists from opset 13 on
        from onnx import version_converter

        m = version_converter.convert_version(m, 13)
        g = m.graph
    nodes = []
    for node in g.node:
        nodes.append(node)
        for i, out in enumerate(node.output):
            if out in low:
                pre, mid = f"{out}__bf16emu_f32", f"{out}__bf16emu_bf16"
                node.output[i] = pre
                nodes.append(helper.make_node("Cast", [pre], [mid], to=TensorProto.BFLOAT16))
                nodes.append(helper.make_node("Cast", [mid], [out], to=TensorProto.FLOAT))
    del g.node[:]
    g.node.extend(nodes)
    return m


def _compare(outs: Dict[str, np.ndarray], reference: Dict[str, np.ndarray], tol: Tolerance) -> AccuracyInfo:
    """The selftest's own rule (np.allclose: |o - r| <= atol + rtol * |r| for every element),
    with the figures that explain its verdict."""
    abs_err = rel_err = ratio = 0.0
    outside = total = 0
    for name, ref in reference.items():
        o = np.asarray(outs[name], dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        if o.shape != r.shape:
            return AccuracyInfo(measured_with=None, max_abs_err=None, max_rel_err=None, atol=tol.atol, rtol=tol.rtol,
                                within_tolerance=False, note=f"output {name!r} has shape {o.shape}, the reference {r.shape}")
        d = np.abs(o - r)
        d = np.where(np.isnan(d), np.inf, d)  # a NaN is as wrong as an answer can be
        allowance = tol.atol + tol.rtol * np.abs(r)
        total += d.size
        if d.size:
            abs_err = max(abs_err, float(d.max()))
            rel_err = max(rel_err, float((d / np.maximum(np.abs(r), 1e-12)).max()))
            ratio = max(ratio, float((d / allowance).max()))
            outside += int(np.count_nonzero(d > allowance))
    return AccuracyInfo(
        measured_with=None, max_abs_err=abs_err, max_rel_err=rel_err, atol=tol.atol, rtol=tol.rtol,
        tolerance_ratio=ratio, outside_fraction=outside / total if total else 0.0, within_tolerance=outside == 0,
    )


def measure_accuracy(
    converted: "object", precision: str, inputs: Dict[str, np.ndarray], reference: Dict[str, np.ndarray],
    tol: Tolerance,
) -> AccuracyInfo:
    """Run the converted graph (a path or a ModelProto) with onnxruntime on the CPU and judge it by
    the tolerance the loader's selftest will apply to this precision. bf16 runs as an fp32 graph
    that rounds to bf16 wherever the bf16 graph would (`_bf16_emulated`)."""
    import onnxruntime as ort

    how = "CPUExecutionProvider, golden inputs, against the fp32 reference outputs"
    try:
        graph = converted
        if precision == "bf16":
            import onnx

            model = onnx.load(str(converted)) if isinstance(converted, (str, Path)) else converted
            graph = _bf16_emulated(model)
            how += "; bf16 emulated in fp32 with rounding to bf16 at every bf16 tensor"
        quantized = precision in ("int8", "fp8")
        if quantized:
            how += "; graph optimizations off (the Q/DQ graph as written)"
        outs = _run_cpu(graph, inputs, optimize=not quantized)
    except Exception as e:  # noqa: BLE001 - e.g. no fp8 CPU kernels: record why, do not fail
        text = str(e).replace(str(converted), Path(str(converted)).name) if isinstance(converted, (str, Path)) else str(e)
        first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
        return AccuracyInfo(measured_with=None, max_abs_err=None, max_rel_err=None, atol=tol.atol, rtol=tol.rtol,
                            note=f"not measurable with onnxruntime on the CPU: {first}")
    info = _compare(outs, reference, tol)
    info.measured_with = f"onnxruntime {ort.__version__} {how}"
    if not info.note:
        info.note = ("graph-level proxy measured without a GPU; the engine's own accuracy is measured on the "
                     "target by `loader.py selftest`")
    return info


# -- keeping nodes in fp32 ------------------------------------------------------------------------

def _node_magnitudes(named, inputs: Dict[str, np.ndarray]) -> Dict[str, float]:  # noqa: ANN001
    """For every node: the largest magnitude among its float outputs and float weights, from one
    fp32 run that exposes every intermediate tensor. Out-of-range values are the usual reason
    a graph fails in fp16 (65504 is fp16's largest finite value; a constant of 9.8e7 becomes inf)."""
    import copy

    import onnx
    from onnx import TensorProto, helper, numpy_helper

    probe = copy.deepcopy(named)
    typed = onnx.shape_inference.infer_shapes(probe)
    types = {vi.name: vi.type.tensor_type.elem_type for vi in list(typed.graph.value_info) + list(typed.graph.output)}
    have = {o.name for o in probe.graph.output}
    for n in probe.graph.node:
        for o in n.output:
            if o and o not in have and types.get(o) == TensorProto.FLOAT:
                probe.graph.output.append(helper.make_tensor_value_info(o, TensorProto.FLOAT, None))
                have.add(o)
    values = _run_cpu(probe, inputs)
    weights = {i.name: float(np.abs(numpy_helper.to_array(i)).max()) for i in named.graph.initializer
               if i.data_type == TensorProto.FLOAT and np.prod(i.dims) > 0}
    out = {}
    for n in named.graph.node:
        m = 0.0
        for name in list(n.output) + list(n.input):
            v = values.get(name) if name in n.output else None
            if v is not None and v.size and np.issubdtype(v.dtype, np.floating):
                m = max(m, float(np.nanmax(np.abs(v))))
            m = max(m, weights.get(name, 0.0))
        out[n.name] = m
    return out


@dataclass
class KeepSearch:
    """What `--keep-fp32 auto` found, for the manifest and the build's log."""

    kept: List[str]
    accuracy: AccuracyInfo
    attempts: int
    reason: str


def search_keep_fp32(
    named, precision: str, inputs: Dict[str, np.ndarray], reference: Dict[str, np.ndarray], tol: Tolerance,
    always: Sequence[str] = (),
) -> KeepSearch:  # noqa: ANN001 - onnx.ModelProto
    """The fewest nodes to leave in fp32 for the variant to meet ``tol``, in the spirit of
    Polygraphy's `debug precision` bisection, but over nodes ranked by risk rather than graph order.

    Nodes are ranked by the magnitude of the values they make or hold in an fp32 run, largest
    first, and the search bisects on how many of the top-ranked stay in fp32: about log2(nodes)
    conversions and CPU runs (10 for PP-OCRv4 det's 672 nodes, ~15 s), against hundreds for
    onnxconverter-common's `auto_convert_mixed_precision`, which also prints to stdout. Keeping
    more of the top-ranked nodes only removes low-precision arithmetic, so the verdict is close to
    monotonic in the count; where it is not, the search still ends on a count that passes, if
    not the smallest. The nodes in ``always`` (given by name) stay in fp32 throughout.
    """
    ranking = [k for k, _ in sorted(_node_magnitudes(named, inputs).items(), key=lambda kv: (-kv[1], kv[0]))
               if k not in set(always)]
    attempts = 0

    def attempt(k: int) -> AccuracyInfo:
        nonlocal attempts
        attempts += 1
        return measure_accuracy(_half(named, precision, list(always) + ranking[:k]), precision, inputs, reference, tol)

    # Invariant: keeping the top `hi` passes, keeping the top `lo` does not.
    lo, hi = 0, len(ranking)
    best = attempt(hi)
    if best.within_tolerance is None:
        raise BuildError(f"--keep-fp32 auto cannot judge the {precision} graph: {best.note}")
    if not best.within_tolerance:
        return KeepSearch(list(always) + ranking, best, attempts,
                          "auto: even with every node in fp32 the graph is outside tolerance")
    first = attempt(lo)
    if first.within_tolerance:
        best, hi = first, lo
    while hi - lo > 1:
        mid = (lo + hi) // 2
        info = attempt(mid)
        if info.within_tolerance:
            hi, best = mid, info
        else:
            lo = mid
    kept = list(always) + ranking[:hi]
    return KeepSearch(kept, best, attempts, f"auto: the {hi} of {len(ranking)} nodes with the largest fp32 values "
                                            f"kept in fp32, found by bisection in {attempts} CPU runs")


class _Captured:
    """Everything converters say while they work, kept for the build log instead of the terminal:
    onnxconverter-common's UserWarnings, the quantizer's `WARNING:root` lines, print()s, and
    onnxruntime's own log (turned down to errors for the duration; 2, its default, after)."""

    def __init__(self) -> None:
        self.lines: List[str] = []

    def __enter__(self) -> "_Captured":
        import contextlib
        import io
        import logging
        import warnings

        import onnxruntime as ort

        self._warnings = warnings.catch_warnings(record=True)
        self._caught = self._warnings.__enter__()
        warnings.simplefilter("always")
        root = logging.getLogger()
        self._root_state = (root.handlers[:], root.level)
        lines = self.lines

        class _Keep(logging.Handler):
            def emit(self, record: logging.LogRecord) -> None:
                lines.append(f"{record.levelname}:{record.name}: {record.getMessage()}")

        root.handlers = [_Keep()]
        self._stdout = io.StringIO()
        self._redirect = contextlib.redirect_stdout(self._stdout)
        self._redirect.__enter__()
        ort.set_default_logger_severity(4)
        return self

    def __exit__(self, *exc: object) -> None:
        import logging

        import onnxruntime as ort

        ort.set_default_logger_severity(2)
        self._redirect.__exit__(*exc)
        root = logging.getLogger()
        root.handlers, level = self._root_state
        root.setLevel(level)
        self.lines.extend(f"{w.category.__name__}: {w.message}" for w in self._caught)
        self.lines.extend(line for line in self._stdout.getvalue().splitlines() if line.strip())
        self._warnings.__exit__(*exc)


def make_variant(
    src: Path, precision: str, model: ModelInfo, staging: Path, golden: Optional["object"], tolerance: Tolerance,
    batches: Optional[List[Dict[str, np.ndarray]]] = None, cal_info: Optional[CalibrationInfo] = None,
    keep_fp32: Sequence[str] = (), accept_loss: bool = False,
) -> PrecisionVariant:
    """Convert ``src`` to ``precision`` under ``staging``, measure it on the golden inputs, and
    refuse it (`AccuracyError`) when it is outside the tolerance its selftest will apply, unless
    ``accept_loss``. ``keep_fp32``: node names to leave in fp32, and/or "auto" to search for them.
    The converters' messages go to the variant's log, beside its graph."""
    import onnxruntime  # noqa: F401 - imported before capturing, so its import-time output is not lost

    rel = variant_path(model, precision)
    out = staging / rel
    log_rel = rel[: -len(".onnx")] + ".log"
    names = [k for k in keep_fp32 if k != "auto"]
    auto = "auto" in keep_fp32
    kept: List[str] = []
    reason = ""
    log: List[str] = [f"{precision} variant of {model.path}"]
    with _Captured() as captured:
        if precision in ("fp16", "bf16") and (names or auto):
            named = _load_named(src)
            known = {n.name for n in named.graph.node}
            unknown = [n for n in names if n not in known]
            if unknown:
                import difflib

                near = difflib.get_close_matches(unknown[0], sorted(known), n=3)
                raise InputError(f"--keep-fp32 {printable(unknown[0])}: no node of that name in the graph"
                                 + (f" (nearest: {', '.join(printable(x) for x in near)})" if near else ""))
            if auto:
                if golden is None:
                    raise InputError("--keep-fp32 auto measures each try on the golden inputs; drop --no-golden")
                found = search_keep_fp32(named, precision, golden.inputs, golden.outputs, tolerance, names)  # type: ignore[attr-defined]
                kept, reason = found.kept, found.reason
            else:
                kept, reason = names, "given by name (--keep-fp32)"
        converter = convert(src, precision, out, batches, kept)
        accuracy = (measure_accuracy(out, precision, golden.inputs, golden.outputs, tolerance)  # type: ignore[attr-defined]
                    if golden is not None else None)
    log += [f"converter: {converter}"] + ([f"kept in fp32 ({reason}): {', '.join(kept)}"] if kept else [])
    log += captured.lines
    if accuracy is not None:
        log.append(f"accuracy: {accuracy}")
    (staging / log_rel).write_text("\n".join(printable(line) for line in log) + "\n", encoding="utf-8")
    accepted = False
    if accuracy is not None and accuracy.within_tolerance is False:
        if not accept_loss:
            raise AccuracyError(accuracy_refusal(precision, model.path, accuracy))
        accepted = True
    digest, size = sha256_and_size(out)
    return PrecisionVariant(
        precision=precision, graph=rel, sha256=digest, size=size, converter=converter, accuracy=accuracy,
        calibration=cal_info, kept_fp32=kept, kept_fp32_reason=reason, accuracy_loss_accepted=accepted, log=log_rel,
    )


def accuracy_refusal(precision: str, model_path: str, a: AccuracyInfo) -> str:
    """One line: which variant, how far off, against which tolerance, and what to do."""
    how = ("try --keep-fp32 auto to leave the nodes that need it in fp32" if precision in ("fp16", "bf16")
           else "calibrate with more and more representative data (--calibration)")
    return (f"the {precision} graph of {printable(model_path)} is outside the tolerance its selftest applies: "
            f"worst error {a.tolerance_ratio:.3g}x the allowance atol {a.atol:g} + rtol {a.rtol:g} x |reference| "
            f"(max abs err {a.max_abs_err:.3g}, {100 * (a.outside_fraction or 0):.1f}% of output values outside) "
            f"on the golden inputs; {how}, or pass --accept-accuracy-loss to build it anyway")


#: A variant using more than this share of its tolerance is reported as near the limit.
NEAR_LIMIT = 0.5


def variant_warnings(variants: Sequence[PrecisionVariant]) -> List[str]:
    """What a builder should read before shipping: accepted losses, accuracy near the limit or
    not measured, calibration warnings. Computed here, printed by the CLI at the end of create."""
    out = []
    for v in variants:
        a = v.accuracy
        if v.accuracy_loss_accepted and a is not None:
            out.append(f"{v.precision}: built OUTSIDE tolerance under --accept-accuracy-loss (worst error "
                       f"{a.tolerance_ratio:.3g}x the allowance); its selftest will fail")
        elif a is None:
            out.append(f"{v.precision}: accuracy not measured (no golden data); the selftest is the first check")
        elif a.within_tolerance is None:
            out.append(f"{v.precision}: {a.note}")
        elif a.tolerance_ratio is not None and a.tolerance_ratio > NEAR_LIMIT:
            out.append(f"{v.precision}: worst error is {a.tolerance_ratio:.2f}x the allowance (near the limit of 1)")
        for w in (v.calibration.warnings if v.calibration else []):
            out.append(f"{v.precision} calibration: {w}")
    return out


def sha256_and_size(path: Path) -> Tuple[str, int]:
    data = Path(path).read_bytes()
    return hashlib.sha256(data).hexdigest(), len(data)


def variant_path(model: ModelInfo, precision: str) -> str:
    """Where a converted graph lives in the build dir and the bundle."""
    stem = Path(model.path).stem
    return f"model/{stem}.{precision}.onnx"


def supported(precisions: Sequence[str]) -> List[str]:
    out = []
    for p in precisions:
        p = check_precision(p)
        if p in out:
            raise InputError(f"precision {p} given twice")
        out.append(p)
    return out
