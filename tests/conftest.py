"""Shared fixtures: real models, real keys, real TensorRT-RTX builds, the real CLI in a subprocess.

Expensive artefacts (engines, bundles) are built once per session and copied by tests that
modify them. Nothing is mocked: `bundle` runs as a child process exactly as a user runs it.
"""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

REPO = Path(__file__).resolve().parent.parent
SAMPLE = REPO / "samples" / "tinynet.onnx"


@dataclass
class Result:
    code: int
    out: str
    err: str

    def json(self):  # noqa: ANN201
        return json.loads(self.out)


def run_bundle(*args: object, cwd: Optional[Path] = None, env: Optional[dict] = None, input: Optional[str] = None) -> Result:
    """Run the `bundle` CLI as a subprocess; asserts it never prints a traceback."""
    full_env = dict(os.environ)
    full_env.pop("BUNDLE_KEY_PASSPHRASE", None)
    full_env.update(env or {})
    p = subprocess.run(
        [sys.executable, "-m", "bundler.cli", *map(str, args)],
        cwd=cwd,
        env=full_env,
        input=input if input is not None else "",
        capture_output=True,
        text=True,
        timeout=600,
    )
    assert "Traceback" not in p.stderr and "Traceback" not in p.stdout, p.stderr
    return Result(p.returncode, p.stdout, p.stderr)


def session_processes(sid: int) -> List[int]:
    """Live (not zombie) processes of session ``sid`` (a command started with
    ``start_new_session=True`` has its pid as session id): what must be gone after a signal."""
    out = []
    for d in os.listdir("/proc"):
        if not d.isdigit():
            continue
        try:
            with open(f"/proc/{d}/stat") as f:
                fields = f.read().rsplit(")", 1)[1].split()
        except OSError:
            continue
        if int(fields[3]) == sid and fields[0] != "Z":  # after the comm: state ppid pgrp session tty_nr
            out.append(int(d))
    return out


def make_conv_model(path: Path, *, dynamic_batch: bool = True, hw: int = 16) -> Path:
    """A small Conv-Relu-Add model made by the tests themselves."""
    rng = np.random.default_rng(1)
    batch = "N" if dynamic_batch else 1
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [batch, 3, hw, hw])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [batch, 8, hw, hw])
    w = numpy_helper.from_array(rng.standard_normal((8, 3, 3, 3)).astype(np.float32), "w")
    b = numpy_helper.from_array(rng.standard_normal((8,)).astype(np.float32), "b")
    nodes = [
        helper.make_node("Conv", ["x", "w", "b"], ["c"], pads=[1, 1, 1, 1]),
        helper.make_node("Relu", ["c"], ["y"]),
    ]
    g = helper.make_graph(nodes, "conv", [x], [y], [w, b])
    m = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    m.ir_version = 8
    onnx.save(m, str(path))
    return path


def make_unbuildable_model(path: Path) -> Path:
    """Valid ONNX that TensorRT cannot build: TopK whose k is a runtime input (TensorRT needs a constant)."""
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, 16])
    k = helper.make_tensor_value_info("k", TensorProto.INT64, [1])
    v = helper.make_tensor_value_info("v", TensorProto.FLOAT, [1, "K"])
    i = helper.make_tensor_value_info("i", TensorProto.INT64, [1, "K"])
    g = helper.make_graph([helper.make_node("TopK", ["x", "k"], ["v", "i"])], "g", [x, k], [v, i])
    onnx.save(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)]), str(path))
    return path


def onnx_light_model(name: str = "light_squeezenet") -> Path:
    """A real architecture shipped inside the onnx wheel (constant weights)."""
    return Path(onnx.__file__).parent / "backend" / "test" / "data" / "light" / f"{name}.onnx"


# The mutation-testing harness (mutation/run.py) runs a few fast test modules once per mutant;
# making keys and building the session bundle each time would cost seconds per mutant. With
# TRT_BUNDLER_TEST_CACHE set, `keys` and `tiny_bundle` are made once into that directory and
# reused. The normal suite never sets it (a cached bundle could outlive the code that built it).
TEST_CACHE = os.environ.get("TRT_BUNDLER_TEST_CACHE")


def _cached_dir(tmp_path_factory, name: str) -> Path:  # noqa: ANN001
    if not TEST_CACHE:
        return tmp_path_factory.mktemp(name)
    d = Path(TEST_CACHE) / name
    d.mkdir(parents=True, exist_ok=True)
    return d


@pytest.fixture(scope="session")
def keys(tmp_path_factory) -> dict:  # noqa: ANN001
    """Two unencrypted P-256 key pairs made through the CLI: 'release' (trusted) and 'other'."""
    d = _cached_dir(tmp_path_factory, "keys")
    out = {}
    for name in ("release", "other"):
        if (d / f"{name}.id").is_file():
            out[name] = {"key": d / f"{name}.key", "pub": d / f"{name}.pub", "id": (d / f"{name}.id").read_text()}
            continue
        r = run_bundle("keys", "generate", name, "--dir", d, "--no-passphrase")
        assert r.code == 0, r.err
        out[name] = {"key": d / f"{name}.key", "pub": d / f"{name}.pub", "id": r.out.strip()}
        if TEST_CACHE:
            (d / f"{name}.id").write_text(r.out.strip())
    return out


@pytest.fixture(scope="session")
def tiny_model(tmp_path_factory) -> Path:  # noqa: ANN001
    return make_conv_model(tmp_path_factory.mktemp("model") / "tiny.onnx")


@pytest.fixture(scope="session")
def tiny_bundle(tmp_path_factory, keys, tiny_model) -> Path:  # noqa: ANN001
    """A real bundle: two TensorRT-RTX engines (sm_86, rtx5090) of the tests' own model."""
    out = _cached_dir(tmp_path_factory, "dist")
    if TEST_CACHE and (out / "tiny-1.0.0.bundle.tar").is_file():
        return out / "tiny-1.0.0.bundle.tar"
    r = run_bundle(
        "create", tiny_model, "--name", "tiny", "--version", "1.0.0",
        "--target", "sm_86", "--target", "rtx5090", "--shape", "x:1x3x16x16:2x3x16x16:4x3x16x16",
        "--key", keys["release"]["key"], "--out", out, "--backend", "tensorrt-rtx",
        env={"SOURCE_DATE_EPOCH": "1700000000"},
    )
    assert r.code == 0, r.err
    path = out / "tiny-1.0.0.bundle.tar"
    assert path.is_file()
    return path


@pytest.fixture()
def bundle_copy(tmp_path, tiny_bundle) -> Path:  # noqa: ANN001
    """A private copy of the session bundle, safe to tamper with."""
    dst = tmp_path / tiny_bundle.name
    shutil.copyfile(tiny_bundle, dst)
    return dst


def tar_members(path: Path) -> List[str]:
    import tarfile

    with tarfile.open(path) as tf:
        return tf.getnames()
