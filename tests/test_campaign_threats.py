"""Issue 13, threat model: code planted where the verifier might run it.

The run-path tests (tests/test_run_path.py) show that no module planted beside the loader or the
verifier is imported. This adds the other half: verification executes no program at all. Until
the campaign found it, both verifiers asked `ctypes.util.find_library("cuda")` for the GPU report,
which on Linux runs ldconfig and then `gcc` and `ld` looked up along PATH: a `ld` planted in any
PATH directory (a virtual environment's bin/, ~/.local/bin) ran inside every `bundle verify`.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import List

import pytest

from conftest import REPO

pytestmark = pytest.mark.skipif(shutil.which("strace") is None, reason="needs strace")


def _execs(tmp_path: Path, argv: List[str], env: dict) -> List[str]:
    log = tmp_path / "execve.txt"
    p = subprocess.run(["strace", "-f", "-qq", "-e", "trace=execve", "-o", str(log), *argv],
                       capture_output=True, text=True, env=env, timeout=300, cwd=tmp_path)
    if "ptrace" in p.stderr and not log.exists():
        pytest.skip(f"strace cannot trace here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, p.stderr
    return [line.split("execve(", 1)[1].split(",", 1)[0] for line in log.read_text().splitlines() if "execve(" in line]


def test_verification_executes_no_other_program(tmp_path, tiny_bundle, keys) -> None:  # noqa: ANN001
    """A planted `ld`, `gcc` and `ldconfig` first on PATH: neither `bundle verify` nor verify.py
    (as the loader runs it, `python -I`) starts them, or anything else."""
    plant = tmp_path / "plant"
    plant.mkdir()
    for tool in ("ld", "gcc", "cc", "ldconfig", "nvidia-smi"):
        (plant / tool).write_text(f"#!/bin/sh\ntouch {tmp_path}/planted-{tool}-ran\nexit 1\n")
        os.chmod(plant / tool, 0o755)
    env = {**os.environ, "PATH": f"{plant}:{os.environ.get('PATH', '')}", "PYTHONPATH": str(REPO)}
    pub = str(keys["release"]["pub"])
    for argv in ([sys.executable, "-m", "bundler.cli", "verify", str(tiny_bundle), "--trust", pub],
                 [sys.executable, "-I", str(REPO / "runtime_stub" / "verify.py"), str(tiny_bundle), "--trust", pub]):
        execs = _execs(tmp_path, argv, env)
        assert execs == [f'"{sys.executable}"'], execs  # the interpreter itself, nothing after it
    assert not list(tmp_path.glob("planted-*"))
