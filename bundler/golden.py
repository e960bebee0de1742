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
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, Optional, Tuple

import numpy as np

from .errors import InputError
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


def random_inputs(model: ModelInfo, profile: Dict[str, ShapeRange], seed: int = 0) -> Dict[str, np.ndarray]:
    """Inputs at each input's opt shape: floats uniform in [0, 1), ints in [0, 10), random bools."""
    rng = np.random.default_rng(seed)
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
            raise InputError(f"input {t.name!r} has dtype {t.dtype}; pass --sample-input with data for it")
        out[t.name] = a
    return out


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
        opts.log_severity_level = 3
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
) -> GoldenSet:
    if sample_input is not None:
        inputs = read_npz(Path(sample_input))
        check_inputs(model, profile, inputs, str(sample_input))
    else:
        inputs = random_inputs(model, profile, seed)
    try:
        outputs, reference = reference_outputs(model_path, inputs)
    except InputError:
        raise
    except Exception as e:  # noqa: BLE001 - a model the CPU reference cannot run is still buildable
        first = str(e).strip().splitlines()[0][:300] if str(e).strip() else type(e).__name__
        raise InputError(f"{model_path}: the CPU reference run for golden outputs failed: {first}") from None
    return GoldenSet(inputs, outputs, reference)


def golden_info(g: GoldenSet, sample_input: Optional[Path], seed: int) -> GoldenInfo:
    return GoldenInfo(
        inputs=INPUTS_NPZ,
        outputs=OUTPUTS_NPZ,
        reference=g.reference,
        source="sample-input" if sample_input else f"random (seed {seed}, opt shapes)",
        tolerances=dict(TOLERANCES),
    )
