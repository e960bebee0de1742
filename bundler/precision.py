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
from pathlib import Path
from typing import Dict, Iterator, List, Optional, Sequence, Tuple

import numpy as np

from .errors import BuildError, InputError
from .manifest import AccuracyInfo, CalibrationInfo, InputStats, ModelInfo, ShapeRange
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


def _fp16(src: Path) -> "object":
    import onnx
    from onnxconverter_common import float16

    model = onnx.load(str(src))
    _without_initializer_inputs(model)
    return float16.convert_float_to_float16(model, keep_io_types=True, disable_shape_infer=False)


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


def convert(
    src: Path, precision: str, out: Path, batches: Optional[List[Dict[str, np.ndarray]]] = None
) -> str:
    """Write the ``precision`` variant of the fp32 model ``src`` to ``out``; returns the converter's
    name and version for the manifest."""
    import onnx

    try:
        if precision in ("fp16", "bf16"):
            import onnxconverter_common

            model = _fp16(src)
            if precision == "bf16":
                _to_bf16(model)
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


def measure_accuracy(
    converted: Path, inputs: Dict[str, np.ndarray], reference: Dict[str, np.ndarray]
) -> AccuracyInfo:
    """Run the converted graph with onnxruntime on CPU and compare with the fp32 reference."""
    try:
        import onnxruntime as ort

        opts = ort.SessionOptions()
        opts.log_severity_level = 3
        sess = ort.InferenceSession(str(converted), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        outs = dict(zip(names, sess.run(names, inputs)))
        version = ort.__version__
    except Exception as e:  # noqa: BLE001 - e.g. no bf16/fp8 CPU kernels: record why, do not fail
        text = str(e).replace(str(converted), Path(converted).name)  # no temporary paths in signed metadata
        first = text.strip().splitlines()[0][:200] if text.strip() else type(e).__name__
        return AccuracyInfo(measured_with=None, max_abs_err=None, max_rel_err=None,
                            note=f"not measurable with onnxruntime on the CPU: {first}")
    abs_err = rel_err = 0.0
    for name, ref in reference.items():
        o = np.asarray(outs[name], dtype=np.float64)
        r = np.asarray(ref, dtype=np.float64)
        d = np.abs(o - r)
        if d.size:
            abs_err = max(abs_err, float(d.max()))
            rel_err = max(rel_err, float((d / np.maximum(np.abs(r), 1e-12)).max()))
    return AccuracyInfo(
        measured_with=f"onnxruntime {version} CPUExecutionProvider, golden inputs, against the fp32 reference outputs",
        max_abs_err=abs_err, max_rel_err=rel_err,
        note="graph-level proxy measured without a GPU; the engine's own accuracy is measured on the target by `loader.py selftest`",
    )


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
