"""Advice for dynamic inputs: which inputs need ``--shape``, their dims in words, and shapes that run.

A real exporter names dims ``p2o.DynamicDimension.0``, ``unk__54``, ``?`` or nothing at all, and a
user who has never seen the model cannot guess which of them is a batch, a height or a sequence
length, nor which sizes the graph accepts (PP-OCR det wants multiples of 32, PP-OCR rec a height
its neck can pool, silero-vad at least 256 samples). Advice that names one input per run, or
suggests sizes the model cannot take, costs a build-fail-retry cycle per line of advice.

So this module:

* names every input that needs a ``--shape`` in one message, each dim by a role letter
  (``x: N x 3 x H x W [N=p2o.DynamicDimension.0, ...]``), reusing readable ONNX names as they are
  (``input: batch x sequence``); every string from the model goes through `printable`;
* suggests shapes only after onnxruntime has run the model on the CPU with them (the same inputs
  golden data would get), and otherwise says plainly that it cannot tell. A CPU run is not a
  TensorRT build, but it rules out every shape the graph itself cannot take, which is what made
  the old ``1x3x1x1:8x3x8x8`` example fail.
"""

from __future__ import annotations

import itertools
import re
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Dict, List, Mapping, Optional, Sequence, Tuple

from .errors import printable
from .manifest import ModelInfo, ShapeRange, TensorSpec

#: Sizes tried per role, most useful first. Image sizes are multiples of 32 (detectors with a
#: 5-level feature pyramid need them: PP-OCR det refuses 96), 224 for classifiers, and 48, the
#: text-line height OCR recognisers use (PP-OCR rec refuses 640 and 320); a height is tried before
#: a width, because text-line models constrain the height. Sequences start at 512, a common window
#: (silero-vad's 16 kHz chunk). Failing runs at large sizes cost seconds, so the lists stay short.
CANDIDATES: Dict[str, Tuple[int, ...]] = {
    "batch": (1,),
    "height": (640, 48, 320, 224, 32),
    "width": (640, 320, 224, 48, 32),
    "sequence": (512, 256, 128, 16, 1),
    "other": (1, 16, 128, 512),
}
MAX_BATCH = 4  # the max corner of a suggested profile, kept only if onnxruntime runs it too
LETTERS = {"batch": "N", "height": "H", "width": "W", "sequence": "T", "other": "D"}
PROBE_RUNS = 32  # at most this many CPU runs ...
PROBE_SECONDS = 20.0  # ... and about this long, then the advice says it cannot tell

_CLEAN_NAME = re.compile(r"^[A-Za-z][A-Za-z0-9_]{0,15}\Z")
_GENERATED = re.compile(r"^(unk__\d+|.*_dim_?\d+|[A-Za-z]+\d+_\d+)\Z")

DimKey = Tuple[object, ...]  # ("name", dim_param) or ("axis", input, index): one TensorRT dimension


@dataclass(frozen=True)
class Axis:
    """One dynamic axis of one input."""

    input: str
    index: int
    key: DimKey
    onnx_name: Optional[str]
    role: str


def _role(t: TensorSpec, i: int) -> str:
    name = t.shape[i] if isinstance(t.shape[i], str) else ""
    low = str(name).lower()
    if low in ("n", "b", "bs") or low.startswith("batch"):
        return "batch"
    if low in ("h", "height"):
        return "height"
    if low in ("w", "width"):
        return "width"
    if any(k in low for k in ("seq", "len", "time", "frame", "token")):
        return "sequence"
    rank = len(t.shape)
    if rank == 4 and isinstance(t.shape[1], int) and t.shape[1] in (1, 2, 3, 4):  # NCHW
        return {0: "batch", 2: "height", 3: "width"}.get(i, "other")
    if rank == 4 and isinstance(t.shape[3], int) and t.shape[3] in (1, 2, 3, 4):  # NHWC
        return {0: "batch", 1: "height", 2: "width"}.get(i, "other")
    if i == 0 and rank >= 2:
        return "batch"
    if (rank == 2 and i == 1) or (rank == 3 and i == 1 and not isinstance(t.shape[0], int)):
        return "sequence"  # (batch, time) or (batch, time, features)
    return "other"


def dynamic_axes(inputs: Sequence[TensorSpec]) -> List[Axis]:
    """Every dynamic axis, with the identity TensorRT gives it: equal names are one dimension."""
    out = []
    for t in inputs:
        for i, d in enumerate(t.shape):
            if isinstance(d, int):
                continue
            key: DimKey = ("name", d) if isinstance(d, str) else ("axis", t.name, i)
            out.append(Axis(t.name, i, key, d if isinstance(d, str) else None, _role(t, i)))
    return out


def _labels(axes: Sequence[Axis]) -> Dict[DimKey, str]:
    """A short label per dimension: a readable ONNX name as it is, else the role's letter."""
    labels: Dict[DimKey, str] = {}
    taken = set()
    for a in axes:
        if a.key in labels:
            continue
        name = a.onnx_name
        if name and _CLEAN_NAME.match(name) and not _GENERATED.match(name) and name not in taken:
            label = name
        else:
            base = LETTERS[a.role]
            label, n = base, 2
            while label in taken:
                label, n = f"{base}{n}", n + 1
        labels[a.key] = label
        taken.add(label)
    return labels


def describe(inputs: Sequence[TensorSpec], all_inputs: Sequence[TensorSpec]) -> str:
    """``x: N x 3 x H x W [N=p2o.DynamicDimension.0, H=p2o.DynamicDimension.1, ...]; state: ...``.

    Labels are computed over ``all_inputs`` so that a dim shared with another input reads the same
    everywhere. The brackets give the ONNX name behind each letter (``unnamed`` for an axis without
    one); a readable ONNX name used as the label itself needs no bracket.
    """
    labels = _labels(dynamic_axes(all_inputs))
    parts = []
    for t in inputs:
        dims, notes = [], []
        for i, d in enumerate(t.shape):
            if isinstance(d, int):
                dims.append(str(d))
                continue
            key: DimKey = ("name", d) if isinstance(d, str) else ("axis", t.name, i)
            label = labels[key]
            dims.append(label)
            note = f"{label}=unnamed" if d is None else (None if d == label else f"{label}={printable(d)}")
            if note and note not in notes:
                notes.append(note)
        shared = [lab for lab in dict.fromkeys(dims) if not lab.isdigit() and dims.count(lab) > 1]
        if shared:
            notes.append(f"{', '.join(shared)} named alike on several axes, so one dimension to TensorRT (bundle fix-dims splits them)")
        text = f"{printable(t.name)}: {' x '.join(dims)}"
        parts.append(text + (f" [{', '.join(notes)}]" if notes else ""))
    return "; ".join(parts)


@dataclass
class Probe:
    """What onnxruntime made of the candidate shapes."""

    profile: Optional[Dict[str, ShapeRange]]  # every input; None when no candidate ran
    runs: int
    last_error: str


def probe_shapes(
    model_path: Path,
    model: ModelInfo,
    given: Mapping[str, ShapeRange],
    values: Mapping[str, object],
    max_runs: int = PROBE_RUNS,
    max_seconds: float = PROBE_SECONDS,
) -> Probe:
    """Find shapes the model runs with on the CPU, trying the most useful candidates first.

    ``given`` holds the range of every input whose shape is settled (a ``--shape``, or the batch-1
    default); those stay as they are, and a dim name they share takes its range from them, so the
    suggestion agrees with them the way `resolve_profile` requires. Each other dynamic dimension
    takes a candidate of its role; combinations are tried in order of the sum of their candidates'
    ranks (all first choices, then one second choice, earlier dims first, ...) in one onnxruntime session, fed exactly
    what golden data would be fed (`golden.random_inputs` with ``values``), so a suggestion also
    makes golden data. Then the batch is widened to `MAX_BATCH` for the max corner, if that runs.
    """
    from .golden import random_inputs

    try:
        import onnxruntime as ort
    except ImportError:
        return Probe(None, 0, "onnxruntime is not installed")
    axes = [a for a in dynamic_axes(model.inputs) if a.input not in given]
    fixed: Dict[DimKey, Tuple[int, int, int]] = {}  # dims shared with a settled input
    for t in model.inputs:
        if t.name in given:
            r = given[t.name]
            for i, d in enumerate(t.shape):
                if isinstance(d, str):
                    fixed.setdefault(("name", d), (r.min[i], r.opt[i], r.max[i]))
    dims: List[DimKey] = [k for k in dict.fromkeys(a.key for a in axes) if k not in fixed]
    roles = {a.key: a.role for a in reversed(axes)}  # the first axis of a dimension names its role
    cands = {k: CANDIDATES[roles[k]] for k in dims}

    def ranges(choice: Dict[DimKey, int], batch: Optional[int] = None) -> Dict[str, ShapeRange]:
        prof = {}
        for t in model.inputs:
            if t.name in given:
                prof[t.name] = given[t.name]
                continue
            lo, opt, hi = [], [], []
            for i, d in enumerate(t.shape):
                key: DimKey = ("name", d) if isinstance(d, str) else ("axis", t.name, i)
                if isinstance(d, int):
                    r = (d, d, d)
                elif key in fixed:
                    r = fixed[key]
                else:
                    v = choice[key]
                    r = (v, v, batch if batch is not None and roles[key] == "batch" else v)
                lo.append(r[0])
                opt.append(r[1])
                hi.append(r[2])
            prof[t.name] = ShapeRange(lo, opt, hi)
        return prof

    def at_max(prof: Dict[str, ShapeRange]) -> Dict[str, ShapeRange]:
        return {n: ShapeRange(r.max, r.max, r.max) for n, r in prof.items()}

    try:
        opts = ort.SessionOptions()
        opts.log_severity_level = 4
        sess = ort.InferenceSession(str(model_path), opts, providers=["CPUExecutionProvider"])
    except Exception as e:  # noqa: BLE001
        return Probe(None, 0, _first_line(e))
    start = time.monotonic()
    runs, last = 0, ""

    def runs_ok(prof: Dict[str, ShapeRange]) -> bool:
        nonlocal runs, last
        runs += 1
        try:
            sess.run(None, random_inputs(model, prof, 0, values))
            return True
        except Exception as e:  # noqa: BLE001 - any failure means "not this shape"
            last = _first_line(e)
            return False

    ranks = sorted(itertools.product(*(range(len(cands[k])) for k in dims)), key=lambda r: (sum(r), r[::-1]))
    for r in ranks:
        if runs >= max_runs or time.monotonic() - start > max_seconds:
            break
        choice = {k: cands[k][j] for k, j in zip(dims, r)}
        if runs_ok(ranges(choice)):
            if any(roles[k] == "batch" for k in dims):
                wide = ranges(choice, MAX_BATCH)
                if runs_ok(at_max(wide)):
                    return Probe(wide, runs, last)
            return Probe(ranges(choice), runs, last)
    return Probe(None, runs, last)


def _first_line(e: BaseException) -> str:
    text = str(e).strip().splitlines()
    return text[0][:200] if text else type(e).__name__


def shape_flag(name: str, r: ShapeRange) -> str:
    """``--shape NAME:MIN:OPT:MAX``, or ``NAME:SHAPE`` when the three are equal."""
    fmt = lambda s: "x".join(str(d) for d in s)  # noqa: E731
    dims = fmt(r.opt) if r.min == r.opt == r.max else f"{fmt(r.min)}:{fmt(r.opt)}:{fmt(r.max)}"
    return f"--shape {printable(name)}:{dims}"


def shape_advice(
    model_path: Path,
    model: ModelInfo,
    need: Sequence[TensorSpec],
    given: Mapping[str, ShapeRange],
    values: Mapping[str, object],
) -> str:
    """The one-line message for inputs that need ``--shape``: all of them, in words, and either
    flags that onnxruntime ran or a plain statement that the bundler cannot know."""
    what = describe(need, model.inputs)
    head = (f"{len(need)} inputs have dynamic dims and need --shape NAME:MIN:OPT:MAX each: {what}"
            if len(need) > 1 else f"input {what.split(':', 1)[0]} has dynamic dims and needs --shape NAME:MIN:OPT:MAX: {what}")
    p = probe_shapes(model_path, model, given, values)
    if p.profile is None:
        why = f" (last error: {printable(p.last_error)})" if p.last_error else ""
        ints = [t.name for t in model.inputs if t.dtype.startswith(("int", "uint", "bool")) and t.name not in values]
        hint = (f"; integer and boolean inputs got random values, set them with --sample-value NAME=VALUE "
                f"({', '.join(printable(n) for n in ints)})" if ints else "")
        return (f"{head}. The bundler cannot know which sizes this model takes: onnxruntime ran none of the "
                f"{p.runs} shape sets it tried on the CPU{why}{hint}; take the sizes from the model's documentation "
                f"or its training code")
    flags = " ".join(shape_flag(t.name, p.profile[t.name]) for t in need)
    return (f"{head}. onnxruntime ran the model on the CPU with these (a starting point; widen the ranges to "
            f"the sizes your data has): {flags}")
