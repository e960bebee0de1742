"""The model stage: load and check an ONNX file, describe its IO, resolve shape profiles.

This module knows nothing about TensorRT. It answers "is this a model we can build, and with which
optimization profile?" early, so that a typo in ``--shape`` fails in milliseconds with a message
naming the input, instead of minutes later inside a TensorRT log.
"""

from __future__ import annotations

import hashlib
import re
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Iterable, List, Sequence, Tuple

from .errors import InputError, printable
from .manifest import Dim, ModelInfo, ShapeRange, TensorSpec

HASH_CHUNK = 1 << 20


def sha256_file(path: Path) -> Tuple[str, int]:
    """SHA-256 and size of a file, read in bounded chunks."""
    h = hashlib.sha256()
    size = 0
    with open(path, "rb") as f:
        while True:
            chunk = f.read(HASH_CHUNK)
            if not chunk:
                break
            h.update(chunk)
            size += len(chunk)
    return h.hexdigest(), size


@dataclass(frozen=True)
class ShapeSpec:
    """One ``--shape`` argument: an input name and its min/opt/max dims."""

    name: str
    min: Tuple[int, ...]
    opt: Tuple[int, ...]
    max: Tuple[int, ...]


_DIMS_RE = re.compile(r"^\d+(x\d+)*\Z")


def _parse_dims(text: str, arg: str) -> Tuple[int, ...]:
    if not _DIMS_RE.match(text):
        raise InputError(f"--shape {arg!r}: dimensions must look like 1x3x640x640, got {text!r}")
    dims = tuple(int(d) for d in text.split("x"))
    if any(d <= 0 for d in dims):
        raise InputError(f"--shape {arg!r}: every dimension must be at least 1")
    return dims


def parse_shape(arg: str) -> ShapeSpec:
    """Parse trtexec's syntax: ``NAME:MIN:OPT:MAX`` or ``NAME:SHAPE`` (static).

    The name may itself contain colons (some exporters emit ``input:0``), so the dims are taken
    from the right.
    """
    parts = arg.split(":")
    if len(parts) >= 4 and all(_DIMS_RE.match(p) for p in parts[-3:]):
        name = ":".join(parts[:-3])
        lo, opt, hi = (_parse_dims(p, arg) for p in parts[-3:])
    elif len(parts) >= 2:
        name = ":".join(parts[:-1])
        lo = opt = hi = _parse_dims(parts[-1], arg)
    else:
        raise InputError(f"--shape {arg!r}: expected INPUT:MIN:OPT:MAX or INPUT:SHAPE")
    if not name:
        raise InputError(f"--shape {arg!r}: the input name is empty")
    if not (len(lo) == len(opt) == len(hi)):
        raise InputError(f"--shape {arg!r}: min, opt and max must have the same rank")
    if not all(a <= b <= c for a, b, c in zip(lo, opt, hi)):
        raise InputError(f"--shape {arg!r}: each dimension needs min <= opt <= max")
    return ShapeSpec(name, lo, opt, hi)


def _dtype_name(elem_type: int) -> str:
    import onnx
    from onnx import helper

    try:
        return str(helper.tensor_dtype_to_np_dtype(elem_type).name)
    except Exception:  # noqa: BLE001 - dtypes numpy lacks (bfloat16, fp8) keep ONNX's name
        return onnx.TensorProto.DataType.Name(elem_type).lower()


def _tensor_spec(value_info) -> TensorSpec:  # noqa: ANN001 - onnx.ValueInfoProto
    t = value_info.type
    if not t.HasField("tensor_type"):
        raise InputError(f"IO {value_info.name!r} is not a tensor; TensorRT engines take tensors only")
    tt = t.tensor_type
    shape: List[Dim] = []
    if tt.HasField("shape"):
        for d in tt.shape.dim:
            if d.HasField("dim_value") and d.dim_value > 0:
                shape.append(int(d.dim_value))
            elif d.HasField("dim_param") and d.dim_param:
                shape.append(d.dim_param)  # verbatim: TensorRT treats equal names as one dimension
            else:
                shape.append(None)
    else:
        raise InputError(f"IO {value_info.name!r} has no shape (not even a rank); re-export the model with shapes")
    return TensorSpec(value_info.name, _dtype_name(tt.elem_type), shape)


def _graph_precision(model) -> str:  # noqa: ANN001
    """The precision the graph itself carries (TensorRT 11 and TensorRT-RTX take it from there)."""
    from onnx import TensorProto

    types = {init.data_type for init in model.graph.initializer}
    ops = {n.op_type for n in model.graph.node}
    if "QuantizeLinear" in ops or "DequantizeLinear" in ops:
        if types & {TensorProto.FLOAT8E4M3FN, TensorProto.FLOAT8E5M2}:
            return "fp8"
        return "int8"
    if TensorProto.BFLOAT16 in types:
        return "bf16"
    if TensorProto.FLOAT16 in types:
        return "fp16"
    return "fp32"


def load_model(path: Path) -> ModelInfo:
    """Check an ONNX file and describe it. Raises `InputError` with a one-line reason."""
    import onnx

    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such model file")
    try:
        model = onnx.load(str(path), load_external_data=False)
    except Exception as e:  # noqa: BLE001 - protobuf raises many types for garbage input
        raise InputError(f"{path}: not an ONNX model ({type(e).__name__}: {_first_line(e)})") from None
    if not model.graph.node and not model.graph.output:
        raise InputError(f"{path}: not an ONNX model (no graph)")
    if any(init.data_location == onnx.TensorProto.EXTERNAL for init in model.graph.initializer):
        raise InputError(
            f"{path}: weights are stored in external data files, which bundles do not carry yet; "
            f"save the model as one file (onnx.save(model, path, save_as_external_data=False)) if it is under 2 GB"
        )
    try:
        onnx.checker.check_model(str(path))
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: ONNX checker rejected the model: {_first_line(e)}") from None
    try:
        inferred = onnx.shape_inference.infer_shapes(model, strict_mode=False)
    except Exception as e:  # noqa: BLE001
        raise InputError(f"{path}: ONNX shape inference failed: {_first_line(e)}") from None
    graph = inferred.graph
    initializers = {i.name for i in graph.initializer}
    inputs = [_tensor_spec(v) for v in graph.input if v.name not in initializers]
    outputs = [_tensor_spec(v) for v in graph.output]
    if not inputs:
        raise InputError(f"{path}: the model has no inputs")
    if not outputs:
        raise InputError(f"{path}: the model has no outputs")
    digest, size = sha256_file(path)
    opset = {(o.domain or "ai.onnx"): int(o.version) for o in model.opset_import}
    producer = " ".join(p for p in (model.producer_name, model.producer_version) if p)
    return ModelInfo(
        path=f"model/{path.name}",
        sha256=digest,
        size=size,
        ir_version=int(model.ir_version),
        opset=opset,
        producer=producer,
        precision=_graph_precision(model),
        inputs=inputs,
        outputs=outputs,
    )


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:300] if text else type(e).__name__


def _fmt(shape: Iterable[Dim]) -> str:
    return "x".join("?" if d is None else str(d) for d in shape)


def shared_dims(model: ModelInfo) -> Dict[str, List[Tuple[str, int]]]:
    """Dim names used on more than one axis. TensorRT takes every use of a name for one dimension,
    which is right for a batch dim shared by several inputs and wrong when an exporter names
    unrelated axes alike (rapidocr's cls model calls both H and W '?')."""
    uses: Dict[str, List[Tuple[str, int]]] = {}
    for t in model.inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, str):
                uses.setdefault(d, []).append((t.name, i))
    return {k: v for k, v in uses.items() if len(v) > 1}


def inputs_needing_shape(model: ModelInfo, shapes: Sequence[ShapeSpec]) -> List[TensorSpec]:
    """Inputs without a ``--shape`` that have a dynamic axis other than the leading batch axis
    (a batch-only input defaults to batch 1, which is always safe)."""
    given = {s.name for s in shapes}
    return [
        t for t in model.inputs
        if t.name not in given and [i for i, d in enumerate(t.shape) if not isinstance(d, int)] not in ([], [0])
    ]


def default_shape(t: TensorSpec) -> Tuple[int, ...]:
    """The shape an input without ``--shape`` gets: its static dims, batch 1."""
    return tuple(1 if not isinstance(d, int) else int(d) for d in t.shape)


def resolve_profile(model: ModelInfo, shapes: Sequence[ShapeSpec]) -> Dict[str, ShapeRange]:
    """Turn the model's IO spec plus ``--shape`` arguments into one optimization profile.

    Static inputs need no ``--shape`` (one that is given must agree). An input whose only dynamic
    axis is the leading batch axis defaults to batch 1, which is always safe; any other dynamic
    axis needs a ``--shape``. Dims that share a name are one dimension to TensorRT, so their
    ranges must agree; a clash is reported with both axes named and the fix, since TensorRT's own
    message for it ("profile has min > max" on a dimension the user never named) is obscure.
    """
    by_name = {s.name: s for s in shapes}
    known = {t.name for t in model.inputs}
    seen: Dict[str, int] = {}
    for s in shapes:
        seen[s.name] = seen.get(s.name, 0) + 1
        if s.name not in known:
            raise InputError(
                f"--shape names input {s.name!r}, but the model's inputs are: {', '.join(sorted(known))}"
            )
        if seen[s.name] > 1:
            raise InputError(f"--shape given twice for input {s.name!r}")
    need = inputs_needing_shape(model, shapes)
    if need:
        from .shapes import describe

        raise InputError(
            f"dynamic dims need --shape NAME:MIN:OPT:MAX for {', '.join(repr(printable(t.name)) for t in need)}: "
            f"{describe(need, model.inputs)}"
        )
    profile: Dict[str, ShapeRange] = {}
    symbols: Dict[str, Tuple[str, int, Tuple[int, int, int]]] = {}
    for t in model.inputs:
        spec = by_name.get(t.name)
        if spec is None:
            static = default_shape(t)
            spec = ShapeSpec(t.name, static, static, static)
        if len(spec.min) != len(t.shape):
            raise InputError(
                f"--shape for {t.name!r} has rank {len(spec.min)}, but the model's input has rank {len(t.shape)} "
                f"({_fmt(t.shape)})"
            )
        for i, d in enumerate(t.shape):
            rng = (spec.min[i], spec.opt[i], spec.max[i])
            if isinstance(d, int):
                if rng != (d, d, d):
                    raise InputError(
                        f"--shape for {t.name!r} sets axis {i} to {rng[0]}:{rng[1]}:{rng[2]}, "
                        f"but the model fixes it at {d}"
                    )
            elif isinstance(d, str):
                prev = symbols.get(d)
                if prev is None:
                    symbols[d] = (t.name, i, rng)
                elif prev[2] != rng:
                    raise InputError(
                        f"dim {d!r} is shared by {prev[0]!r} axis {prev[1]} and {t.name!r} axis {i}, "
                        f"so TensorRT treats them as one dimension, but --shape gives them different ranges "
                        f"({':'.join(map(str, prev[2]))} vs {':'.join(map(str, rng))}); give them equal ranges, "
                        f"or give each axis its own name: bundle fix-dims MODEL.onnx --out FIXED.onnx"
                    )
        profile[t.name] = ShapeRange(list(spec.min), list(spec.opt), list(spec.max))
    return profile


def fix_shared_dims(src: Path, out: Path) -> Dict[str, str]:
    """Give every input axis that shares a dim name with an unrelated axis a name of its own.

    Names shared across different inputs on the same axis index (a batch dim fed to two inputs)
    are kept; names repeated within one input, or across different axis indices, become
    ``{input}_dim{axis}``. Returns the renames; writes nothing when there are none.
    """
    import onnx

    model = onnx.load(str(src))
    init_names = {i.name for i in model.graph.initializer}
    uses: Dict[str, List[Tuple[str, int]]] = {}
    for vi in model.graph.input:
        if vi.name in init_names:
            continue
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_param") and d.dim_param:
                uses.setdefault(d.dim_param, []).append((vi.name, i))
    clash = {k for k, v in uses.items() if len(v) > 1 and (len({n for n, _ in v}) < len(v) or len({a for _, a in v}) > 1)}
    renames: Dict[str, str] = {}
    for vi in model.graph.input:
        for i, d in enumerate(vi.type.tensor_type.shape.dim):
            if d.HasField("dim_param") and d.dim_param in clash:
                new = f"{vi.name}_dim{i}"
                renames[f"{vi.name}[{i}] {d.dim_param!r}"] = new
                d.dim_param = new
    if renames:
        # Outputs and intermediate value_info may use the old names; shape inference recomputes them.
        for vi in list(model.graph.output) + list(model.graph.value_info):
            for d in vi.type.tensor_type.shape.dim:
                if d.HasField("dim_param") and d.dim_param in clash:
                    d.ClearField("dim_param")
        onnx.checker.check_model(model)
        onnx.save(model, str(out))
    return renames


def shape_token(profile: Dict[str, ShapeRange], model: ModelInfo) -> str:
    """The ``{shape}`` part of an engine's file name, from the first input's opt shape.

    Image models read as HxW (``640x640``), which is what deployment teams name engines by;
    other ranks keep every dim after the batch axis.
    """
    first = profile[model.inputs[0].name].opt
    dims = list(first)
    if len(dims) == 4 and dims[1] in (1, 2, 3, 4):
        dims = dims[2:]  # NCHW
    elif len(dims) == 4 and dims[3] in (1, 2, 3, 4):
        dims = dims[1:3]  # NHWC
    elif len(dims) > 1:
        dims = dims[1:]
    return "x".join(str(d) for d in dims) if dims else "scalar"


def safe_stem(text: str) -> str:
    """A file-name-safe form of a model name: letters, digits, '-' and '.' only."""
    s = re.sub(r"[^A-Za-z0-9.-]+", "-", text).strip("-.")
    return s or "model"


_SIZE_RE = re.compile(r"^(\d+)\s*([KMGT]i?B?|B)?\Z", re.I)


def parse_size(text: str) -> int:
    """``1073741824``, ``512M``, ``1G``, ``2GiB`` -> bytes (binary units, as TensorRT counts)."""
    m = _SIZE_RE.match(text.strip())
    if not m:
        raise InputError(f"size {text!r}: use a byte count or a number with K, M, G or T (e.g. 1G)")
    n = int(m.group(1))
    unit = (m.group(2) or "B")[0].upper()
    n <<= {"B": 0, "K": 10, "M": 20, "G": 30, "T": 40}[unit]
    if n <= 0:
        raise InputError(f"size {text!r} must be positive")
    return n
