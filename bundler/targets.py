"""Target parsing: one `Target` type for compute capabilities, GPU names and `local`.

Users name GPUs the way their fleet inventory does (``rtx4090``, ``l4``), CI jobs name compute
capabilities (``sm_86``, ``8.6``). Both resolve through the single table below, so a name can never
map to two capabilities in two places of the code.
"""

from __future__ import annotations

import difflib
import re
from dataclasses import dataclass
from typing import Dict, Optional, Tuple

from .errors import InputError

#: Well-known GPU names -> compute capability. One table for the whole product.
GPU_TABLE: Dict[str, Tuple[int, int]] = {
    # Turing
    "t4": (7, 5), "rtx2080": (7, 5), "rtx2080ti": (7, 5), "quadro-rtx8000": (7, 5),
    # Ampere
    "a100": (8, 0), "a30": (8, 0),
    "a10": (8, 6), "a10g": (8, 6), "a40": (8, 6), "a16": (8, 6), "a2": (8, 6), "rtx-a6000": (8, 6),
    "rtx3060": (8, 6), "rtx3070": (8, 6), "rtx3080": (8, 6), "rtx3090": (8, 6),
    "jetson-orin": (8, 7),
    # Ada
    "l4": (8, 9), "l40": (8, 9), "l40s": (8, 9), "rtx-6000-ada": (8, 9),
    "rtx4060": (8, 9), "rtx4070": (8, 9), "rtx4080": (8, 9), "rtx4090": (8, 9),
    # Hopper
    "h100": (9, 0), "h200": (9, 0), "gh200": (9, 0),
    # Blackwell
    "b200": (10, 0), "gb200": (10, 0),
    "rtx5070": (12, 0), "rtx5080": (12, 0), "rtx5090": (12, 0), "rtx-pro-6000": (12, 0),
    "dgx-spark": (12, 1), "gb10": (12, 1),
}

_SM_RE = re.compile(r"^(?:sm_?|compute_?)?(\d{1,2})(\d)\Z")
_DOT_RE = re.compile(r"^(\d{1,2})\.(\d)\Z")


@dataclass(frozen=True)
class Target:
    """One build target.

    ``label`` is what appears in file names and tables (``rtx4090``, ``sm86``, ``local``); ``cc``
    is the compute capability, or None for ``local`` until the host GPU has been queried.
    """

    label: str
    cc: Optional[Tuple[int, int]]
    gpu: Optional[str] = None  # the GPU name when the user gave one

    @property
    def is_cpu(self) -> bool:
        return self.label == "cpu"

    @property
    def sm(self) -> str:
        if self.cc is None:
            return "local"
        return f"sm_{self.cc[0]}{self.cc[1]}"

    @property
    def cc_str(self) -> Optional[str]:
        return None if self.cc is None else f"{self.cc[0]}.{self.cc[1]}"

    def with_cc(self, cc: Tuple[int, int], gpu: Optional[str] = None) -> "Target":
        return Target(self.label, cc, gpu or self.gpu)


def parse_target(text: str) -> Target:
    """Parse ``sm_86``, ``sm86``, ``8.6``, ``86``, a GPU name from `GPU_TABLE`, or ``local``."""
    t = text.strip().lower()
    if t == "local":
        return Target("local", None)
    if t == "cpu":
        return Target("cpu", None)
    if t in GPU_TABLE:
        return Target(t, GPU_TABLE[t], gpu=t)
    m = _DOT_RE.match(t) or _SM_RE.match(t)
    if m:
        cc = (int(m.group(1)), int(m.group(2)))
        return Target(f"sm{cc[0]}{cc[1]}", cc)
    known = ", ".join(sorted(GPU_TABLE))
    raise InputError(
        f"unknown target {text!r}: {_did_you_mean(t)}use a compute capability (sm_86 or 8.6), 'local', 'cpu', "
        f"or one of: {known}"
    )


#: Compute-capability spellings offered as suggestions (any sm_XY parses; these are the real ones).
_KNOWN_SM = ("sm_75", "sm_80", "sm_86", "sm_87", "sm_89", "sm_90", "sm_100", "sm_120", "sm_121")


def _did_you_mean(text: str) -> str:
    """``"did you mean rtx4090? "`` for a near miss, else ``""``.

    A typo in a fleet's GPU name (``rtx4900``) is the most common wrong target, and the list of
    forty names after it hides the one that was meant. Candidates are the table's names, the
    keywords and the real compute capabilities; close enough means difflib's ratio >= 0.75.
    """
    candidates = sorted(GPU_TABLE) + ["local", "cpu"] + list(_KNOWN_SM)
    near = difflib.get_close_matches(text, candidates, n=3, cutoff=0.75)
    if not near:
        return ""
    names = near[0] if len(near) == 1 else f"{', '.join(near[:-1])} or {near[-1]}"
    return f"did you mean {names}? Otherwise "


def gpu_names_for(cc: Tuple[int, int]) -> list:
    """Every GPU name in the table with this compute capability (for messages and `info`)."""
    return sorted(name for name, c in GPU_TABLE.items() if c == cc)
