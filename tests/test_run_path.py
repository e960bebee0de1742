"""The run path: nothing runs before it is verified, and only the verified bytes are used.

Every test drives the real loader (`runtime/loader.py` of a real bundle) or `bundle run` in a
subprocess, on real cpu-target bundles built by TensorRT-RTX's sibling path (onnxruntime), and
attacks it the way someone with the USB stick or a local account would: a replaced loader,
modules planted beside it, files swapped between verification and load, outputs written into the
bundle, signals in the middle of the work. docs/security.md maps each to its defence.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from pathlib import Path
from typing import List, Optional

import numpy as np
import onnx
import pytest
from onnx import TensorProto, helper, numpy_helper

from conftest import REPO, SAMPLE, run_bundle

SHAPE = "input:1x3x64x64:4x3x64x64:16x3x64x64"
PLANTS = ["json.py", "numpy.py", "__future__.py", "argparse.py", "hashlib.py", "subprocess.py"]


def _env(extra: Optional[dict] = None) -> dict:
    e = dict(os.environ)
    e.pop("BUNDLE_TRUST", None)
    e.update(extra or {})
    return e


def loader(root: Path, *args: object, isolated: bool = False, env: Optional[dict] = None,
           cwd: Optional[Path] = None) -> subprocess.CompletedProcess:
    cmd = [sys.executable] + (["-I"] if isolated else []) + [str(root / "runtime" / "loader.py")]
    p = subprocess.run(cmd + [str(a) for a in args], capture_output=True, text=True, env=_env(env), cwd=cwd, timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def verify_py(path: Path, *args: object, verifier: Path = REPO / "runtime_stub" / "verify.py",
              env: Optional[dict] = None) -> subprocess.CompletedProcess:
    p = subprocess.run([sys.executable, str(verifier), str(path), *map(str, args)], capture_output=True, text=True,
                       env=_env(env), timeout=300)
    assert "Traceback" not in p.stderr, p.stderr
    return p


def plant(path: Path, marker: Path) -> None:
    """A module that, if ever imported, leaves a marker file (and would be code execution)."""
    path.write_text(f"open({str(marker)!r}, 'w').write('imported')\n")


@pytest.fixture(scope="module")
def cpu_tar(tmp_path_factory, keys) -> Path:  # noqa: ANN001
    d = tmp_path_factory.mktemp("cpu")
    r = run_bundle("create", SAMPLE, "--name", "tinynet", "--version", "1.0.0", "--target", "cpu", "--shape", SHAPE,
                   "--key", keys["release"]["key"], "--out", d)
    assert r.code == 0, r.err
    return d / "tinynet-1.0.0.bundle.tar"


@pytest.fixture()
def extracted(tmp_path, cpu_tar, keys) -> Path:  # noqa: ANN001
    dest = tmp_path / "tinynet-1.0.0"
    r = run_bundle("extract", cpu_tar, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    return dest


def cpu_engine(root: Path) -> str:
    m = json.loads((root / "manifest.json").read_text())
    (e,) = [e for e in m["engines"] if e["target"]["label"] == "cpu"]
    return e["path"]


# -- verify, then run exactly what was verified ----------------------------------------------------

def test_control_a_planted_module_is_imported_by_an_ordinary_script(tmp_path):
    """Without the guard Python imports a planted json.py: the attack the next tests defeat is real."""
    (tmp_path / "s.py").write_text("import json\n")
    plant(tmp_path / "json.py", tmp_path / "marker")
    subprocess.run([sys.executable, str(tmp_path / "s.py")], capture_output=True, timeout=60)
    assert (tmp_path / "marker").exists()


def test_bundle_run_never_executes_a_replaced_loader(extracted, cpu_tar, keys, tmp_path):
    marker = tmp_path / "replaced-loader-ran"
    (extracted / "runtime" / "loader.py").write_text(
        f"open({str(marker)!r}, 'w').write('ran')\nprint('PASS'); raise SystemExit(0)\n")
    r = run_bundle("run", extracted, "--trust", keys["release"]["pub"], "--", "selftest")
    assert r.code == 12, (r.code, r.err)
    assert re.search(r"runtime/loader.py: size \d+ differs from the signed", r.err), r.err
    assert not marker.exists()
    assert verify_py(extracted, "--trust", keys["release"]["pub"]).returncode == 12  # the same verdict
    # A tar is verified and extracted by the library; the installed loader runs, isolated, and says so.
    r = run_bundle("run", cpu_tar, "--trust", keys["release"]["pub"], "--", "info", "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    assert doc["verified"] is True and doc["chosen"].endswith(".onnx")


@pytest.mark.parametrize("name", PLANTS + ["numpy/__init__.py"])
def test_a_module_planted_beside_the_loader_is_never_imported(extracted, keys, tmp_path, name):
    marker = tmp_path / "planted-module-ran"
    target = extracted / "runtime" / name
    target.parent.mkdir(exist_ok=True)
    plant(target, marker)
    standalone = tmp_path / "verify.py"
    shutil.copyfile(REPO / "runtime_stub" / "verify.py", standalone)
    pub = keys["release"]["pub"]
    runs = [
        loader(extracted, "selftest", "--trust", pub),  # by hand, no -I: the loader's first statement
        loader(extracted, "selftest", "--trust", pub, isolated=True),
        loader(extracted, "selftest", "--trust", pub, "--verifier", standalone),
    ]
    r = run_bundle("run", extracted, "--trust", pub, "--", "selftest")
    for p in runs:
        assert p.returncode == 13, p.stderr  # the planted file is an extra file: verification refuses
        assert f"runtime/{name.split('/')[0]}" in p.stderr and "move it out of the bundle directory" in p.stderr
    assert r.code == 13 and "move it out" in r.err
    assert not marker.exists(), "a module planted beside the loader was imported"


@pytest.mark.parametrize("name", PLANTS)
def test_a_module_planted_beside_the_standalone_verifier_is_never_imported(extracted, keys, tmp_path, name):
    vdir = tmp_path / "opt"
    vdir.mkdir()
    shutil.copyfile(REPO / "runtime_stub" / "verify.py", vdir / "verify.py")
    marker = tmp_path / "planted-module-ran"
    plant(vdir / name, marker)
    p = verify_py(extracted, "--trust", keys["release"]["pub"], verifier=vdir / "verify.py")
    assert p.returncode == 0, p.stderr
    assert p.stdout.startswith("VERIFIED tinynet 1.0.0")
    assert not marker.exists()


# -- read once: a file swapped after verification is caught ------------------------------------------

def _stopped(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] == "T"
    except FileNotFoundError:
        return False


def run_with_swap(root: Path, pub: Path, swap, *args: str) -> subprocess.CompletedProcess:  # noqa: ANN001
    """Run the loader, let the verifier finish, stop it (test seam), swap files for real, resume."""
    p = subprocess.Popen([sys.executable, str(root / "runtime" / "loader.py"), *args, "--trust", str(pub)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                         env=_env({"BUNDLE_LOADER_TEST_STOP": "1"}))
    deadline = time.monotonic() + 60
    while not _stopped(p.pid):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline, "the loader never reached its pause point"
        time.sleep(0.01)
    swap(root)
    os.kill(p.pid, signal.SIGCONT)
    out, err = p.communicate(timeout=120)
    assert "Traceback" not in err, err
    return subprocess.CompletedProcess(p.args, p.returncode, out, err)


def _other_npz(root: Path) -> None:
    with open(root / "golden" / "outputs.npz", "wb") as f:
        np.savez(f, probs=np.zeros((4, 10), np.float32))


def _other_manifest(root: Path) -> None:
    m = json.loads((root / "manifest.json").read_text())
    m["golden"]["inputs"] = "../../outside.npz"  # would read outside the bundle if it were used
    (root / "manifest.json").write_text(json.dumps(m))


def _other_engine(root: Path) -> None:
    path = root / cpu_engine(root)
    data = bytearray(path.read_bytes())
    data[-5] ^= 0x01
    path.write_bytes(bytes(data))


def _symlinked_inputs(root: Path) -> None:
    """The same bytes, but through a symlink to a file outside the bundle: refused all the same."""
    outside = root.parent / "outside-inputs.npz"
    shutil.copyfile(root / "golden" / "inputs.npz", outside)
    (root / "golden" / "inputs.npz").unlink()
    (root / "golden" / "inputs.npz").symlink_to(outside)


@pytest.mark.parametrize("swap, needle", [
    (_other_npz, "golden/outputs.npz: changed after it was verified"),
    (_other_manifest, "manifest.json: changed after it was verified"),
    (_other_engine, "changed after it was verified"),
    (_symlinked_inputs, "golden/inputs.npz: cannot open"),
])
def test_a_file_swapped_after_verification_is_caught(extracted, keys, swap, needle):
    p = run_with_swap(extracted, keys["release"]["pub"], swap, "selftest")
    assert p.returncode == 12, p.stderr
    assert needle in p.stderr
    assert "PASS" not in p.stdout


def test_a_module_planted_after_verification_is_not_imported(extracted, keys, tmp_path):
    marker = tmp_path / "late-module-ran"
    p = run_with_swap(extracted, keys["release"]["pub"], lambda root: [plant(root / "runtime" / n, marker) for n in PLANTS],
                      "selftest", "--json")
    assert p.returncode == 0, p.stderr  # everything it used was verified; the late files were never read
    doc = json.loads(p.stdout)
    assert doc["pass"] is True and doc["verified"] is True
    assert not marker.exists()


def test_each_file_is_read_once(extracted, keys):
    """strace-free check: the loader opens each bundle file it uses exactly once (read_count)."""
    code = (
        "import runpy, sys, json\n"
        f"g = runpy.run_path({str(extracted / 'runtime' / 'loader.py')!r})\n"
        f"proven = g['verify_bundle'](g['Path']({str(extracted)!r}), [{str(keys['release']['pub'])!r}], None)\n"
        f"files = g['BundleFiles'](g['Path']({str(extracted)!r}), proven)\n"
        "m = files.json('manifest.json')\n"
        "files.npz(m['golden']['inputs']); files.npz(m['golden']['outputs'])\n"
        "files.read([e['path'] for e in m['engines']][0])\n"
        "print(json.dumps(files.read_count))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120, env=_env())
    assert p.returncode == 0, p.stderr
    counts = json.loads(p.stdout)
    assert set(counts.values()) == {1} and len(counts) == 4


def test_paths_that_leave_the_bundle_are_refused(extracted, tmp_path):
    np.savez(tmp_path / "outside.npz", input=np.zeros((1, 3, 64, 64), np.float32))
    m = json.loads((extracted / "manifest.json").read_text())
    for bad in ("../outside.npz", "/etc/passwd", "golden/../../outside.npz", "golden//inputs.npz"):
        m["golden"]["inputs"] = bad
        (extracted / "manifest.json").write_text(json.dumps(m))
        p = loader(extracted, "selftest", "--no-verify")
        assert p.returncode == 3, (bad, p.stderr)
        assert "not a path inside the bundle" in p.stderr


def test_no_verify_is_announced_and_reported(extracted, keys):
    p = loader(extracted, "selftest", "--no-verify", "--json")
    assert p.returncode == 0, p.stderr
    assert "UNVERIFIED" in p.stderr
    assert json.loads(p.stdout)["verified"] is False
    p = loader(extracted, "info", "--trust", keys["release"]["pub"], "--json")
    assert json.loads(p.stdout)["verified"] is True


def test_bundle_strings_reach_the_terminal_escaped(extracted):
    """Loader output quotes the manifest; markup and escape sequences come out as plain escapes."""
    hostile = "x\x1b[2J\x1b]0;owned\x07[bold red]\u202e\x9b31m"
    m = json.loads((extracted / "manifest.json").read_text())
    m["name"] = hostile
    m["engines"][0]["target"]["label"] = hostile
    (extracted / "manifest.json").write_text(json.dumps(m))
    p = loader(extracted, "info", "--no-verify")
    assert p.returncode == 0, p.stderr
    for out in (p.stdout, p.stderr):
        assert not re.search("[\x00-\x08\x0b-\x1f\x7f-\x9f\u202e]", out), out
    assert "x\\x1b[2J\\x1b]0;owned\\x07[bold red]\\u202e\\x9b31m" in p.stdout
    p = loader(extracted, "info", "--no-verify", "--json")
    assert json.loads(p.stdout)["name"] == hostile
    assert "\x1b" not in p.stdout


# -- operator files stay outside the bundle ------------------------------------------------------------

def test_outputs_inside_the_bundle_are_refused(extracted, keys, tmp_path):
    pub = keys["release"]["pub"]
    np.save(tmp_path / "x.npy", np.zeros((1, 3, 64, 64), np.float32))
    p = loader(extracted, "run", "--trust", pub, "--input", f"input={tmp_path / 'x.npy'}", "--output", extracted / "out.npz")
    assert p.returncode == 2 and "inside the bundle directory" in p.stderr and "write it outside" in p.stderr
    assert not (extracted / "out.npz").exists()
    # The classic mistake: a shell redirect into the bundle directory.
    p = subprocess.run(["bash", "-c", f'"$0" {extracted}/runtime/loader.py bench --trust {pub} --iterations 2 --json > {extracted}/bench.json',
                        sys.executable], capture_output=True, text=True, env=_env(), timeout=120)
    assert p.returncode == 2 and "standard output is redirected" in p.stderr, p.stderr
    # The shell made the file before the loader ran: verification now names it and says what to do.
    v = verify_py(extracted, "--trust", pub)
    assert v.returncode == 13
    assert "bench.json: extra file" in v.stderr and "move it out of the bundle directory" in v.stderr
    (extracted / "bench.json").unlink()
    assert verify_py(extracted, "--trust", pub).returncode == 0


def test_verify_py_reads_trust_as_the_loader_does(extracted, keys):
    rel, other = str(keys["release"]["pub"]), str(keys["other"]["pub"])
    assert verify_py(extracted, env={"BUNDLE_TRUST": rel}).returncode == 0
    assert verify_py(extracted, env={"BUNDLE_TRUST": os.pathsep.join([other, rel])}).returncode == 0
    assert verify_py(extracted, env={"BUNDLE_TRUST": other}).returncode == 11
    assert verify_py(extracted, "--trust", rel, env={"BUNDLE_TRUST": other}).returncode == 0  # flags win
    p = verify_py(extracted)
    assert p.returncode == 3 and "BUNDLE_TRUST" in p.stderr
    # The loader hands trust to the verifier: the same environment gives the same verdicts.
    assert loader(extracted, "info", env={"BUNDLE_TRUST": os.pathsep.join([other, rel])}).returncode == 0
    assert loader(extracted, "info", env={"BUNDLE_TRUST": other}).returncode == 11


def _routine(doc: Path) -> str:
    text = doc.read_text()
    m = re.search(r"```sh\n(# The operator routine.*?)```", text, re.S)
    assert m, "docs/operators.md lost its scripted routine"
    return m.group(1)


def test_the_documented_operator_routine_runs_as_written(tmp_path, cpu_tar, keys):
    script = _routine(REPO / "docs" / "operators.md")
    values = {"BUNDLE": cpu_tar, "TRUST": keys["release"]["pub"], "VERIFY": REPO / "runtime_stub" / "verify.py",
              "MODELS": tmp_path / "models"}
    (tmp_path / "models").mkdir()
    for var, value in values.items():  # only the lines the docs say to set change
        script, n = re.subn(rf"^{var}=.*$", f"{var}={value}", script, flags=re.M)
        assert n == 1, var
    env = _env({"PATH": f"{Path(sys.executable).parent}{os.pathsep}{os.environ['PATH']}", "HOME": str(tmp_path),
                "TMPDIR": str(tmp_path)})  # the routine's `mktemp -d` working directory lands here
    p = subprocess.run(["bash", "-euo", "pipefail", "-c", script], capture_output=True, text=True, env=env,
                       cwd=tmp_path, timeout=300)
    assert p.returncode == 0, p.stdout + p.stderr
    assert "PASS" in p.stdout
    dest = tmp_path / "models" / "tinynet-1.0.0"
    assert verify_py(dest, "--trust", keys["release"]["pub"]).returncode == 0  # nothing was left inside
    reports = list(tmp_path.rglob("bench.json"))
    assert reports and all(dest not in r.parents for r in reports)
    assert json.loads(reports[0].read_text())["iterations"] > 0


# -- signals: no leftovers, no orphans -----------------------------------------------------------------

def _children(pid: int) -> List[int]:
    try:
        with open(f"/proc/{pid}/task/{pid}/children") as f:
            return [int(x) for x in f.read().split()]
    except FileNotFoundError:
        return []


def _alive(pid: int) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def _start_run(cpu_tar: Path, pub: Path, tmpdir: Path) -> subprocess.Popen:
    return subprocess.Popen([sys.executable, "-m", "bundler.cli", "run", str(cpu_tar), "--trust", str(pub), "--",
                             "bench", "--seconds", "120"], stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env=_env({"TMPDIR": str(tmpdir)}))


def _wait_for_loader(p: subprocess.Popen) -> int:
    deadline = time.monotonic() + 60
    while True:
        assert p.poll() is None, p.communicate()
        kids = _children(p.pid)
        if kids:
            return kids[0]
        assert time.monotonic() < deadline, "no loader child started"
        time.sleep(0.02)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_bundle_run_stops_it_cleanly(cpu_tar, keys, tmp_path, sig, code):
    p = _start_run(cpu_tar, keys["release"]["pub"], tmp_path)
    child = _wait_for_loader(p)
    time.sleep(0.5)  # the loader is benchmarking now
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=10)
    assert time.monotonic() - t0 < 3
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert not _alive(child)
    assert [x.name for x in tmp_path.iterdir() if x.name.startswith("bundle-run-")] == []


def test_sigkill_leaves_no_process_and_the_next_run_cleans_up(cpu_tar, keys, tmp_path):
    p = _start_run(cpu_tar, keys["release"]["pub"], tmp_path)
    child = _wait_for_loader(p)
    p.kill()
    p.communicate(timeout=10)
    deadline = time.monotonic() + 5
    while _alive(child):
        assert time.monotonic() < deadline, "the loader outlived a SIGKILLed bundle run"
        time.sleep(0.05)
    left = [x for x in tmp_path.iterdir() if x.name.startswith("bundle-run-")]
    assert left, "expected the killed run's working directory to be left behind"
    r = run_bundle("run", cpu_tar, "--trust", keys["release"]["pub"], "--", "info", env={"TMPDIR": str(tmp_path)})
    assert r.code == 0, r.err
    assert [x for x in tmp_path.iterdir() if x.name.startswith("bundle-run-")] == []


@pytest.fixture(scope="module")
def big_tar(tmp_path_factory, keys) -> Path:  # noqa: ANN001
    """A cpu-target bundle of ~200 MB (a 96 MB weight, carried as model and as cpu engine), so that
    extraction takes long enough to be interrupted half-way."""
    d = tmp_path_factory.mktemp("big")
    k = 6 * 1024 * 1024
    w = numpy_helper.from_array(np.random.default_rng(0).standard_normal((k, 4)).astype(np.float32), "w")
    x = helper.make_tensor_value_info("x", TensorProto.FLOAT, [1, k])
    y = helper.make_tensor_value_info("y", TensorProto.FLOAT, [1, 4])
    g = helper.make_graph([helper.make_node("MatMul", ["x", "w"], ["y"])], "big", [x], [y], [w])
    model = helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)])
    model.ir_version = 8
    onnx.save(model, str(d / "big.onnx"))
    r = run_bundle("create", d / "big.onnx", "--name", "big", "--version", "1.0.0", "--target", "cpu",
                   "--key", keys["release"]["key"], "--out", d)
    assert r.code == 0, r.err
    return d / "big-1.0.0.bundle.tar"


def _staging(parent: Path) -> List[Path]:
    return [x for x in parent.iterdir() if ".staging-" in x.name]


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130), (signal.SIGKILL, -9)])
def test_a_signal_during_extract_never_leaves_a_partial_dest(big_tar, keys, tmp_path, sig, code):
    dest = tmp_path / "big"
    p = subprocess.Popen([sys.executable, "-m", "bundler.cli", "extract", str(big_tar), "--trust",
                          str(keys["release"]["pub"]), "--dest", str(dest)],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    deadline = time.monotonic() + 60
    while not _staging(tmp_path):
        assert p.poll() is None, p.communicate()
        assert time.monotonic() < deadline
        time.sleep(0.002)
    os.kill(p.pid, signal.SIGSTOP)  # hold it half-way through, so the signal lands mid-extraction
    p.send_signal(sig)
    if sig != signal.SIGKILL:
        os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=10)
    assert p.returncode == code, err
    assert "Traceback" not in err
    assert not dest.exists()
    if sig != signal.SIGKILL:
        assert _staging(tmp_path) == []
    # A later run into the same place succeeds and removes what a SIGKILL left.
    r = run_bundle("extract", big_tar, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 0, r.err
    assert _staging(tmp_path) == []
    assert verify_py(dest, "--trust", keys["release"]["pub"]).returncode == 0


# -- extraction work is bounded by what is signed ---------------------------------------------------------

def _dir_entry(name: str) -> tarfile.TarInfo:
    ti = tarfile.TarInfo(name)
    ti.type, ti.mode, ti.mtime, ti.uid, ti.gid, ti.uname, ti.gname = tarfile.DIRTYPE, 0o755, 1700000000, 0, 0, "", ""
    return ti


def _bomb(src: Path, dst: Path, where: str, count: int = 9000) -> Path:
    """The bundle with ``count`` deep directory members, none of them a parent of a signed file."""
    from test_tamper import BLOCK, RECORD

    with tarfile.open(src) as tf:
        members = [(m, tf.extractfile(m).read()) for m in tf.getmembers()]
    root = members[0][0].name.split("/")[0]
    deep = "/".join(["d" * 8] * 100)  # 900 bytes: under the reader's 1024-byte name limit
    bombs = [(_dir_entry(f"{root}/b{i}/{deep}"[:1000].rstrip("/")), b"") for i in range(count)]
    at = 1 if where == "before-signature-check" else 2  # after the .sig, or after manifest.json
    entries = members[:at] + bombs + members[at:]
    buf = bytearray()
    for ti, data in entries:
        buf += ti.tobuf(tarfile.PAX_FORMAT, "utf-8", "surrogateescape")
        buf += data + b"\0" * ((-len(data)) % BLOCK)
    buf += b"\0" * (2 * BLOCK)
    buf += b"\0" * ((-len(buf)) % RECORD)
    dst.write_bytes(bytes(buf))
    return dst


@pytest.mark.parametrize("where", ["before-signature-check", "after-manifest"])
def test_a_directory_bomb_costs_extract_no_more_than_verify(tiny_bundle, keys, tmp_path, where):
    bomb = _bomb(tiny_bundle, tmp_path / "bomb.tar", where)
    pub = keys["release"]["pub"]
    t0 = time.monotonic()
    v = run_bundle("verify", bomb, "--trust", pub)
    t_verify = time.monotonic() - t0
    dest = tmp_path / "dest"
    t0 = time.monotonic()
    x = run_bundle("extract", bomb, "--trust", pub, "--dest", dest)
    t_extract = time.monotonic() - t0
    for r in (v, x):
        assert r.code == 13, r.err
        assert "directory member that holds no signed file" in r.err
    assert not dest.exists() and _staging(tmp_path) == []
    assert t_extract <= 2 * t_verify + 0.5, (t_extract, t_verify)
    assert verify_py(bomb, "--trust", pub).returncode == 13  # the stdlib verifier agrees


def test_the_loader_source_keeps_its_import_guard_first():
    """The guard must stay the first statement, and no `from __future__` may come before it."""
    for name in ("loader.py", "verify.py"):
        src = (REPO / "runtime_stub" / name).read_text()
        body = src.split('"""', 2)[2]
        statements = [ln for ln in body.splitlines() if ln.strip() and not ln.lstrip().startswith("#")]
        assert statements[0] == "import sys", (name, statements[0])
        assert statements[1].startswith("if sys.version_info < (3, 8):"), (name, statements[1])  # the version gate
        guard = next(i for i, ln in enumerate(statements) if ln.startswith("if __name__"))
        assert statements[guard].startswith('if __name__ == "__main__" and sys.path'), (name, statements[guard])
        assert not any(ln.startswith(("import ", "from ")) for ln in statements[1:guard]), name
        assert not re.search(r"^from __future__", src, re.M)


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_during_a_parallel_build_stops_it_at_once(tmp_path, keys, sig, code):
    """Six real TensorRT-RTX builds of resnet50 on two workers take several seconds; the first
    signal cancels the queue and kills the workers (no waiting for queued builds), removes the
    private build directory, leaves no bundle and no process."""
    from conftest import onnx_light_model

    out = tmp_path / "out"
    targets = [a for t in ("sm_75", "sm_80", "sm_86", "sm_89", "sm_120", "sm_121") for a in ("--target", t)]
    p = subprocess.Popen([sys.executable, "-m", "bundler.cli", "create", str(onnx_light_model("light_resnet50")),
                          "--name", "r", "--version", "1.0.0", *targets, "--jobs", "2", "--no-golden",
                          "--key", str(keys["release"]["key"]), "--out", str(out), "--backend", "tensorrt-rtx"],
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=_env())
    first = p.stderr.readline()
    assert first.startswith("building"), first + p.stderr.read()
    workers = _children(p.pid)
    t0 = time.monotonic()
    p.send_signal(sig)
    _, err = p.communicate(timeout=30)
    took = time.monotonic() - t0
    assert p.returncode == code, err
    assert took < 3, f"{took:.1f} s: queued builds were waited for"
    assert "Traceback" not in err
    assert workers and not any(_alive(w) for w in workers)
    assert not list(out.glob("*.bundle.tar")) and not list(out.glob(".bundle-build-*"))
