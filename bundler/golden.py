"""Golden inputs and reference outputs, so a closed host can check an engine against the model.

At build time we run the source ONNX model on CPU (onnxruntime, or `onnx.reference` where
onnxruntime is missing) on sample inputs, and store both in the bundle. The loader's `selftest`
later runs the engine on the same inputs and compares within a per-precision tolerance. That is
the only way an operator without the model's training stack can tell "this engine computes what
the model computes on this GPU".

The .npz files are written with fixed zip timestamps, so the same inputs give the same bytes.
"""

from __future__ import annotations

import io
import zipfile
from dataclasses import dataclass, field
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Tuple, Union

import numpy as np

from .errors import InputError, printable
from .manifest import GoldenInfo, ModelInfo, ShapeRange, Tolerance

#: atol/rtol per precision for engine-vs-reference comparisons. Deliberately loose for reduced
#: precisions: the check is "this engine computes this model", not an accuracy benchmark.
TOLERANCES: Dict[str, Tolerance] = {
    "fp32": Tolerance(atol=1e-3, rtol=1e-3),
    "fp16": Tolerance(atol=1e-2, rtol=1e-2),
    "bf16": Tolerance(atol=5e-2, rtol=5e-2),
    "int8": Tolerance(atol=1e-1, rtol=1e-1),
    "fp8": Tolerance(atol=2e-1, rtol=2e-1),
}

INPUTS_NPZ = "golden/inputs.npz"
OUTPUTS_NPZ = "golden/outputs.npz"


@dataclass
class GoldenSet:
    inputs: Dict[str, np.ndarray]
    outputs: Dict[str, np.ndarray]
    reference: str
    values: Dict[str, str] = field(default_factory=dict)  # per input, how its data was made
    warnings: List[str] = field(default_factory=list)


def write_npz(path: Path, arrays: Dict[str, np.ndarray]) -> None:
    """Like `np.savez`, but byte-reproducible: sorted names, fixed timestamps, no compression."""
    with zipfile.ZipFile(path, "w", compression=zipfile.ZIP_STORED) as zf:
        for name in sorted(arrays):
            buf = io.BytesIO()
            np.lib.format.write_array(buf, np.ascontiguousarray(arrays[name]), allow_pickle=False)
            info = zipfile.ZipInfo(f"{name}.npy", date_time=(1980, 1, 1, 0, 0, 0))
            info.external_attr = 0o644 << 16
            zf.writestr(info, buf.getvalue())


def read_npz(path: Path) -> Dict[str, np.ndarray]:
    try:
        with np.load(path, allow_pickle=False) as z:
            return {k: z[k] for k in z.files}
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except (ValueError, OSError, zipfile.BadZipFile) as e:
        raise InputError(f"{path}: not a readable .npz file ({e})") from None


def _np_dtype(name: str) -> np.dtype:
    try:
        return np.dtype(name)
    except TypeError:
        raise InputError(f"input dtype {name} has no numpy equivalent; pass --sample-input with that data") from None


SampleValue = Union[bool, int, float]

_BOOLS = {"true": True, "false": False}


def parse_sample_value(arg: str) -> Tuple[str, SampleValue]:
    """``NAME=VALUE`` of ``--sample-value``: ``true``/``false``, an integer or a float.

    The name is everything before the last ``=`` (a value never holds one). Whether the value fits
    the input's dtype is checked against the model later (`check_sample_values`).
    """
    name, sep, text = arg.rpartition("=")
    if not sep or not name:
        raise InputError(f"--sample-value {arg!r}: expected NAME=VALUE, e.g. --sample-value sr=16000")
    return name, parse_scalar(text.strip(), f"--sample-value {arg!r}")


def parse_scalar(text: str, where: str) -> SampleValue:
    if text.lower() in _BOOLS:
        return _BOOLS[text.lower()]
    try:
        return int(text)
    except ValueError:
        pass
    try:
        v = float(text)
    except ValueError:
        raise InputError(f"{where}: the value must be true, false, an integer or a number, got {text!r}") from None
    if not np.isfinite(v):
        raise InputError(f"{where}: the value must be finite, got {text!r}")
    return v


def check_sample_values(model: ModelInfo, values: Mapping[str, SampleValue]) -> None:
    """Every name is an input and every value fits its dtype: one line for the first that does not."""
    want = {t.name: t for t in model.inputs}
    for name, v in values.items():
        t = want.get(name)
        if t is None:
            raise InputError(
                f"--sample-value names input {printable(name)!r}, but the model's inputs are: "
                f"{', '.join(printable(n) for n in sorted(want))}"
            )
        dt = _np_dtype(t.dtype)
        shown = f"--sample-value {printable(name)}={v!r}"
        if dt.kind == "b":
            if not isinstance(v, bool) and v not in (0, 1):
                raise InputError(f"{shown}: input {printable(name)!r} is bool; use true or false")
        elif dt.kind in "iu":
            if isinstance(v, bool) or not isinstance(v, int):
                raise InputError(f"{shown}: input {printable(name)!r} is {t.dtype}; give an integer")
            info = np.iinfo(dt)
            if not info.min <= v <= info.max:
                raise InputError(f"{shown}: out of range for {t.dtype} ({info.min} to {info.max})")
        elif dt.kind == "f":
            if isinstance(v, bool):
                raise InputError(f"{shown}: input {printable(name)!r} is {t.dtype}; give a number")
        else:
            raise InputError(f"{shown}: input {printable(name)!r} has dtype {t.dtype}; pass --sample-input instead")


def random_inputs(
    model: ModelInfo, profile: Dict[str, ShapeRange], seed: int = 0, values: Optional[Mapping[str, SampleValue]] = None
) -> Dict[str, np.ndarray]:
    """Inputs at each input's opt shape: floats uniform in [0, 1), ints in [0, 10), random bools;
    an input with a ``--sample-value`` is that value everywhere.

    The generator is drawn from for every input, set or not, so setting one input's value leaves
    the others' data as it was (golden data stays comparable across builds).
    """
    rng = np.random.default_rng(seed)
    values = values or {}
    out = {}
    for t in model.inputs:
        shape = tuple(profile[t.name].opt)
        dt = _np_dtype(t.dtype)
        if dt.kind == "f":
            a = rng.random(shape, dtype=np.float64).astype(dt)
        elif dt.kind in "iu":
            a = rng.integers(0, 10, size=shape).astype(dt)
        elif dt.kind == "b":
            a = rng.random(shape) < 0.5
        else:
            raise InputError(f"input {printable(t.name)!r} has dtype {t.dtype}; pass --sample-input with data for it")
        if t.name in values:
            a = np.full(shape, values[t.name], dtype=dt)
        out[t.name] = a
    return out


def describe_values(
    model: ModelInfo, profile: Dict[str, ShapeRange], values: Mapping[str, SampleValue], sample_input: Optional[Path]
) -> Tuple[Dict[str, str], List[str]]:
    """Per input, how its golden data was made (for the manifest), and warnings for a reviewer.

    An integer input of at most one element is almost always a parameter (a sample rate, a length,
    a count), for which random 0-9 runs but means little: those get a warning naming the flag.
    Integer tensors (token ids, indices) keep 0-9, valid for any table of ten or more rows.
    """
    if sample_input is not None:
        return {t.name: "from --sample-input" for t in model.inputs}, []
    desc: Dict[str, str] = {}
    warnings: List[str] = []
    for t in model.inputs:
        kind = _np_dtype(t.dtype).kind
        if t.name in values:
            v = values[t.name]
            desc[t.name] = f"{str(v).lower() if isinstance(v, bool) else v} (--sample-value)"
        elif kind == "f":
            desc[t.name] = "random uniform [0, 1)"
        elif kind in "iu":
            desc[t.name] = "random integers 0-9"
            if int(np.prod(profile[t.name].opt)) <= 1:
                warnings.append(
                    f"integer input {printable(t.name)!r} got a random value 0-9; if it is a parameter such as a "
                    f"sample rate or a length, set it: --sample-value {printable(t.name)}=VALUE"
                )
        else:
            desc[t.name] = "random booleans"
    return desc, warnings


def check_inputs(model: ModelInfo, profile: Dict[str, ShapeRange], arrays: Dict[str, np.ndarray], where: str) -> None:
    """Names, dtypes and shapes inside the profile; one clear line for the first mismatch."""
    want = {t.name: t for t in model.inputs}
    extra = sorted(set(arrays) - set(want))
    missing = sorted(set(want) - set(arrays))
    if missing or extra:
        raise InputError(f"{where}: inputs needed {sorted(want)}, got {sorted(arrays)}")
    for name, a in arrays.items():
        t = want[name]
        if a.dtype != _np_dtype(t.dtype):
            raise InputError(f"{where}: input {name!r} is {a.dtype}, the model takes {t.dtype}")
        rng = profile[name]
        if a.ndim != len(rng.min) or not all(lo <= d <= hi for d, lo, hi in zip(a.shape, rng.min, rng.max)):
            raise InputError(
                f"{where}: input {name!r} has shape {'x'.join(map(str, a.shape))}, outside the profile "
                f"{'x'.join(map(str, rng.min))} .. {'x'.join(map(str, rng.max))}"
            )


def reference_outputs(model_path: Path, inputs: Dict[str, np.ndarray]) -> Tuple[Dict[str, np.ndarray], str]:
    """Run the model on CPU. onnxruntime when present, else the onnx reference evaluator."""
    try:
        import onnxruntime as ort
    except ImportError:
        ort = None
    if ort is not None:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4  # fatal only: a failed run is our one-line error, not ORT's log line too
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
        names = [o.name for o in sess.get_outputs()]
        values = sess.run(names, inputs)
        return dict(zip(names, values)), f"onnxruntime {ort.__version__} CPUExecutionProvider"
    import onnx
    from onnx.reference import ReferenceEvaluator

    ev = ReferenceEvaluator(str(model_path))
    names = list(ev.output_names)
    values = ev.run(None, inputs)
    return dict(zip(names, values)), f"onnx.reference {onnx.__version__}"


def make_golden(
    model_path: Path,
    model: ModelInfo,
    profile: Dict[str, ShapeRange],
    sample_input: Optional[Path] = None,
    seed: int = 0,
    values: Optional[Mapping[str, SampleValue]] = None,
) -> GoldenSet:
    values = dict(values or {})
    if sample_input is not None:
        if values:
            raise InputError("--sample-value and --sample-input both set golden inputs; give one of them")
        inputs = read_npz(Path(sample_input))
        check_inputs(model, profile, inputs, str(sample_input))
    else:
        check_sample_values(model, values)
        inputs = random_inputs(model, profile, seed, values)
    desc, warnings = describe_values(model, profile, values, sample_input)
    try:
        outputs, reference = reference_outputs(model_path, inputs)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a model the CPU reference cannot run is still buildable
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        used = "; ".join(f"{printable(n)} = {d}" for n, d in desc.items() if not d.startswith("random uniform"))
        used = f" (inputs: {used})" if used and sample_input is None else ""
        raise InputError(
            f"{model_path}: the CPU reference run for golden outputs failed{used}: {printable(first)}; "
            f"give inputs the model accepts with --sample-input FILE.npz (or --sample-value NAME=VALUE per input), "
            f"or build without golden data (and so without selftest): --no-golden"
        ) from None
    return GoldenSet(inputs, outputs, reference, desc, warnings)


def golden_info(g: GoldenSet, sample_input: Optional[Path], seed: int) -> GoldenInfo:
    return GoldenInfo(
        inputs=INPUTS_NPZ,
        outputs=OUTPUTS_NPZ,
        reference=g.reference,
        source="sample-input" if sample_input else f"random (seed {seed}, opt shapes)",
        tolerances=dict(TOLERANCES),
        values=dict(g.values),
        warnings=list(g.warnings),
    )
