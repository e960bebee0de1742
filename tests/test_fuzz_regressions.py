"""Inputs the fuzzers found (issue 13, family 2) stay fixed.

Every file under fuzz/regressions/TARGET/ is an input that once crashed fuzz/targets/TARGET.py
(an exception other than the documented ones, or a broken invariant); it is replayed here through
that target's own ``check`` (without atheris), which must return normally. The loader's npz
findings are also checked end to end, through the real loader on a real cpu-target bundle: one
clean line and exit 3, where these inputs used to end in exit 22 ("EOFError: No data left in
file", "BadZipFile", "TokenError", a .npz taken as one array, a member's raw bytes taken as an
array) or, for a deflated member, in a gigabyte of memory for a megabyte of input.
"""

from __future__ import annotations

import importlib.util
import io
import os
import subprocess
import sys
import zipfile
from pathlib import Path

import numpy as np
import pytest

from conftest import REPO, run_bundle

TARGETS = REPO / "fuzz" / "targets"
REGRESSIONS = REPO / "fuzz" / "regressions"
KEPT = sorted(p for p in REGRESSIONS.glob("*/*") if p.is_file())


def load_target(name: str):  # noqa: ANN201
    if str(TARGETS) not in sys.path:
        sys.path.insert(0, str(TARGETS))
    spec = importlib.util.spec_from_file_location(f"fuzz_target_{name}", TARGETS / f"{name}.py")
    mod = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(mod)
    return mod


def test_regressions_are_kept() -> None:
    assert KEPT, "fuzz/regressions/ is empty"
    assert {p.parent.name for p in KEPT} <= {p.stem for p in TARGETS.glob("*.py") if not p.stem.startswith("_")}


@pytest.mark.parametrize("path", KEPT, ids=[f"{p.parent.name}/{p.name}" for p in KEPT])
def test_kept_input_passes_its_target(path: Path) -> None:
    target = load_target(path.parent.name)
    assert target.check(path.read_bytes()) in (True, False)


# -- the loader's npz reading, end to end ---------------------------------------------------------------

@pytest.fixture(scope="module")
def cpu_bundle(tmp_path_factory, keys, tiny_model) -> Path:  # noqa: ANN001
    d = tmp_path_factory.mktemp("npz")
    r = run_bundle("create", tiny_model, "--name", "npz", "--version", "1.0.0", "--target", "cpu",
                   "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16", "--key", keys["release"]["key"], "--out", d / "dist")
    assert r.code == 0, r.err
    r = run_bundle("extract", d / "dist" / "npz-1.0.0.bundle.tar", "--trust", keys["release"]["pub"], "--dest", d / "x")
    assert r.code == 0, r.err
    return d / "x"


def loader(*args: object, cwd: Path) -> subprocess.CompletedProcess:
    env = {k: v for k, v in os.environ.items() if not k.startswith("BUNDLE_")}
    p = subprocess.run([sys.executable, "-I", str(REPO / "runtime_stub" / "loader.py"), *map(str, args)],
                       capture_output=True, text=True, cwd=cwd, env=env, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.mark.parametrize("case", ["empty-file.npy", "npz-given-as-input.npz", "npy-header-token-error.npz",
                                  "declared-8-TiB.npz", "valid"])
def test_input_files_the_fuzzer_found_are_exit_3(cpu_bundle, keys, tmp_path, case) -> None:  # noqa: ANN001
    if case == "valid":
        x = tmp_path / "x.npy"
        np.save(x, np.zeros((1, 3, 16, 16), np.float32))
    else:
        x = REGRESSIONS / "npz" / case
    p = loader("run", "--bundle", cpu_bundle, "--trust", keys["release"]["pub"], "--input", f"x={x}",
               "--output", tmp_path / "out.npz", cwd=tmp_path)
    if case == "valid":
        assert p.returncode == 0, p.stderr
        return
    assert p.returncode == 3, p.stderr
    lines = p.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: --input x="), p.stderr
    assert not (tmp_path / "out.npz").exists()


@pytest.mark.parametrize("case", ["deflated-8-MiB-of-zeros.npz", "bad-central-directory.npz", "unsupported-compression.npz",
                                  "npy-instead-of-npz.npy", "encrypted-member.npz", "member-without-npy-magic.npz",
                                  "compressed-real"])
def test_golden_files_the_fuzzer_found_are_exit_3(cpu_bundle, tmp_path, case) -> None:  # noqa: ANN001
    """--no-verify: the golden file is used as found (with verification a changed file is a
    digest failure first, exit 12, and nothing of it is read)."""
    import shutil

    d = tmp_path / "b"
    shutil.copytree(cpu_bundle, d)
    golden = d / "golden" / "inputs.npz"
    if case == "compressed-real":  # the real golden data, only deflated: refused by the format's rule
        arrays = dict(np.load(io.BytesIO(golden.read_bytes())))
        buf = io.BytesIO()
        np.savez_compressed(buf, **arrays)
        golden.write_bytes(buf.getvalue())
        with zipfile.ZipFile(buf) as z:
            assert all(i.compress_type == zipfile.ZIP_DEFLATED for i in z.infolist())
    else:
        golden.write_bytes((REGRESSIONS / "npz" / case).read_bytes())
    p = loader("selftest", "--bundle", d, "--no-verify", cwd=tmp_path)
    assert p.returncode == 3, p.stderr
    err = [ln for ln in p.stderr.strip().splitlines() if not ln.startswith("warning: --no-verify")]
    assert len(err) == 1 and err[0].startswith("error: golden/inputs.npz: not a usable .npz ("), p.stderr


def test_the_real_golden_data_still_loads(cpu_bundle, keys, tmp_path) -> None:  # noqa: ANN001
    p = loader("selftest", "--bundle", cpu_bundle, "--trust", keys["release"]["pub"], cwd=tmp_path)
    assert p.returncode == 0, p.stderr
