"""Rollback and freeze protection on the host (issue 11): the host state file.

Real keys, real bundles built through the CLI, the CLI and the stand-alone verifier (on Python 3.8,
isolated) in subprocesses, real parallel processes on one state file. docs/security.md ("Rollback
and freeze") says what each refusal protects against.
"""

from __future__ import annotations

import fcntl
import glob
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List

import pytest

from conftest import REPO, Result, make_conv_model, run_bundle

VERIFIER = REPO / "runtime_stub" / "verify.py"
DAY = 86400
EPOCH = 1700000000
SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"


def py38() -> str:
    found = sorted(glob.glob(os.path.expanduser("~/.pyenv/versions/3.8.*/bin/python3.8")))
    if not found:
        pytest.skip("no Python 3.8 on this machine")
    return found[0]


def stdlib_verify(*args: object, python: str = "", cwd: Path = None) -> Result:  # type: ignore[assignment]
    """The stand-alone verifier as a closed host runs it: Python 3.8, isolated, no bundler."""
    env = {k: v for k, v in os.environ.items() if k not in ("PYTHONPATH", "BUNDLE_STATE", "BUNDLE_TRUST")}
    p = subprocess.run([python or py38(), "-I", str(VERIFIER), *map(str, args)], capture_output=True, text=True,
                       timeout=300, env=env, cwd=cwd or "/")
    assert "Traceback" not in p.stderr, p.stderr
    return Result(p.returncode, p.stdout, p.stderr)


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys) -> Dict[str, Path]:  # noqa: ANN001
    """Bundles of one model, all by the trusted key (cpu target: built in a moment):

    - old:      m 1.0.0, sealed at EPOCH
    - new:      m 1.1.0, sealed 10 days later
    - twin:     m 1.0.0 again, without golden data: another bundle under an accepted version
    - stale:    m 1.2.0 (a higher version), sealed 30 days before EPOCH
    - other:    n 2.0.0, another name
    """
    d = tmp_path_factory.mktemp("state-bundles")
    model = make_conv_model(d / "m.onnx")
    out = {}
    plan = [("old", "m", "1.0.0", EPOCH, []), ("new", "m", "1.1.0", EPOCH + 10 * DAY, []),
            ("twin", "m", "1.0.0", EPOCH, ["--no-golden"]), ("stale", "m", "1.2.0", EPOCH - 30 * DAY, []),
            ("other", "n", "2.0.0", EPOCH, [])]
    for label, name, version, epoch, extra in plan:
        dist = d / label
        r = run_bundle("create", model, "--name", name, "--version", version, "--target", "cpu", "--shape", SHAPE,
                       "--key", keys["release"]["key"], "--out", dist, *extra, env={"SOURCE_DATE_EPOCH": str(epoch)})
        assert r.code == 0, r.err
        out[label] = dist / f"{name}-{version}.bundle.tar"
    return out


def verify(bundle: Path, keys: dict, state: Path, *flags: object) -> Result:
    return run_bundle("verify", bundle, "--trust", keys["release"]["pub"], "--state", state, *flags)


def read_state(path: Path) -> dict:
    return json.loads(path.read_text())


def one_error_line(r: Result, cls: str) -> str:
    lines = r.err.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith(f"error [{cls}]: "), r.err
    return lines[0]


def no_temp_files(state: Path) -> bool:
    return not [p for p in os.listdir(state.parent) if p.startswith(f".{state.name}.tmp-")]


# == version precedence: one rule, in the shared verifier ==========================================

def test_semver_precedence():
    from bundler.versioning import compare_versions, version_key
    from runtime_stub import verify as shared

    assert version_key is shared.version_key and compare_versions is shared.compare_versions  # one implementation
    chain = ["1.0.0-alpha", "1.0.0-alpha.1", "1.0.0-alpha.beta", "1.0.0-beta", "1.0.0-beta.2", "1.0.0-beta.11",
             "1.0.0-rc.1", "1.0.0", "1.9.0", "1.10.0", "2.0.0"]
    assert sorted(reversed(chain), key=version_key) == chain
    for lo, hi in zip(chain, chain[1:]):
        assert compare_versions(lo, hi) == -1 and compare_versions(hi, lo) == 1, (lo, hi)
    assert compare_versions("1.0.0-rc.1", "1.0.0") < 0
    assert compare_versions("1.10.0", "1.9.0") > 0
    assert compare_versions("1.0.0+build.1", "1.0.0+build.2") == 0  # build metadata has no precedence
    assert compare_versions("1.0.0-2", "1.0.0-10") < 0  # numeric identifiers compare numerically
    assert compare_versions("1.0.0-10", "1.0.0-1a") < 0  # ... and below alphanumeric ones
    with pytest.raises(shared.InputError):
        version_key("1.0")


def test_semver_dependency_is_gone():
    """The product needs no semver package (the stdlib rule above); only the test extra has it,
    for the campaign oracle's independent check (tests/_campaign.py)."""
    import tomllib

    project = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    assert not any("semver" in d for d in project["dependencies"])
    assert not any("semver" in d for extra, deps in project["optional-dependencies"].items() if extra != "test" for d in deps)
    for path in (REPO / "bundler").rglob("*.py"):
        assert "import semver" not in path.read_text(), path


# == rollback ======================================================================================

def test_downgrade_refused_then_allowed_and_logged(tmp_path, keys, bundles):
    state = tmp_path / "state.json"
    assert verify(bundles["new"], keys, state, "--record").code == 0
    before = state.read_bytes()

    r = verify(bundles["old"], keys, state, "--record")
    assert r.code == 18
    line = one_error_line(r, "rollback")
    assert "version 1.0.0 of m is older than 1.1.0 accepted on this host" in line and "--allow-downgrade" in line
    assert state.read_bytes() == before  # a refusal writes nothing

    # extract refuses it too, and never publishes the destination
    dest = tmp_path / "out" / "m-1.0.0"
    r = run_bundle("extract", bundles["old"], "--trust", keys["release"]["pub"], "--dest", dest, "--state", state)
    assert r.code == 18 and not dest.exists() and not (tmp_path / "out").exists()
    assert state.read_bytes() == before

    r = verify(bundles["old"], keys, state, "--record", "--allow-downgrade", "--json")
    assert r.code == 0, r.err
    rep = r.json()
    assert rep["host_state"] == {"path": str(state), "previous_version": "1.1.0", "downgrade": True, "recorded": True}
    doc = read_state(state)
    entry = doc["bundles"]["m"]
    assert entry["version"] == "1.1.0"  # the highest accepted stays: the override is for this run only
    assert set(entry["accepted"]) == {"1.0.0", "1.1.0"} and entry["accepted"]["1.0.0"] == rep["content_digest"]
    [log] = doc["log"]
    assert (log["event"], log["name"], log["from_version"], log["to_version"], log["content_digest"]) == (
        "downgrade-allowed", "m", "1.1.0", "1.0.0", rep["content_digest"])
    assert isinstance(log["pid"], int) and log["uid"] == os.getuid() and log["time"].endswith("Z")

    # still refused without the flag; a plain verify (no --record) checks but writes nothing
    assert verify(bundles["old"], keys, state).code == 18
    written = state.read_bytes()
    assert verify(bundles["old"], keys, state, "--allow-downgrade").code == 0
    assert state.read_bytes() == written and no_temp_files(state)


def test_content_digest_is_the_signed_subject_digest(tmp_path, keys, bundles):
    from runtime_stub.verify import subject_digest

    rep = run_bundle("verify", bundles["new"], "--trust", keys["release"]["pub"], "--json").json()
    assert rep["host_state"] is None  # no state given: none read, none written
    assert rep["content_digest"] == subject_digest({f["path"]: f["expected_sha256"] for f in rep["files"]})
    assert rep["content_digest"] != rep["sha256"]


def test_equal_version_with_other_contents_is_a_conflict(tmp_path, keys, bundles):
    state = tmp_path / "state.json"
    first = verify(bundles["old"], keys, state, "--record", "--json")
    assert first.code == 0
    twin = run_bundle("verify", bundles["twin"], "--trust", keys["release"]["pub"], "--json").json()
    assert twin["ok"] and twin["content_digest"] != first.json()["content_digest"]
    before = state.read_bytes()
    for flags in ((), ("--record",), ("--record", "--allow-downgrade")):  # no flag overrides a conflict
        r = verify(bundles["twin"], keys, state, *flags)
        assert r.code == 18, flags
        line = one_error_line(r, "rollback")
        assert (f"version 1.0.0 of m was accepted on this host with content digest {first.json()['content_digest']}; "
                f"this bundle has {twin['content_digest']}") in line
    assert state.read_bytes() == before
    # an accepted version, not only the highest one, keeps its digest
    assert verify(bundles["new"], keys, state, "--record").code == 0
    assert verify(bundles["twin"], keys, state, "--record", "--allow-downgrade").code == 18
    # the same bundle again is no conflict
    assert verify(bundles["old"], keys, state, "--record", "--allow-downgrade").code == 0


# == concurrency and signals =======================================================================

def _flock_waiters() -> int:
    with open("/proc/locks") as f:
        return sum(1 for line in f if "->" in line and "FLOCK" in line)


def _hold_lock(state: Path) -> int:
    fd = os.open(str(state) + ".lock", os.O_RDWR | os.O_CREAT, 0o644)
    fcntl.flock(fd, fcntl.LOCK_EX)
    return fd


def _wait_for_waiters(procs: List[subprocess.Popen], n: int) -> None:
    deadline = time.monotonic() + 120
    while _flock_waiters() < n:
        assert all(p.poll() is None for p in procs), [p.communicate() for p in procs if p.poll() is not None]
        assert time.monotonic() < deadline, "the commands never waited on the state lock"
        time.sleep(0.1)


def test_concurrent_extracts_lose_no_record(tmp_path, keys, bundles):
    """Four real `bundle extract` processes on one state file. The test holds the state's lock
    until all four have verified and wait on it, then lets them go at once (a barrier)."""
    state = tmp_path / "state.json"
    waiting_before = _flock_waiters()
    fd = _hold_lock(state)
    env = dict(os.environ)
    env.pop("BUNDLE_STATE", None)
    jobs = [("old", "a"), ("new", "b"), ("other", "c"), ("new", "d")]
    procs = [subprocess.Popen([sys.executable, "-m", "bundler.cli", "extract", bundles[label], "--trust",
                               keys["release"]["pub"], "--dest", tmp_path / dest, "--state", state],
                              stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
             for label, dest in jobs]
    try:
        _wait_for_waiters(procs, waiting_before + len(procs))
    finally:
        os.close(fd)  # go
    results = {dest: (p.wait(timeout=300), p.stderr.read()) for (_, dest), p in zip(jobs, procs)}
    for p in procs:
        p.stdout.close()
        p.stderr.close()
    assert all("Traceback" not in err for _, err in results.values())
    assert results["b"][0] == results["c"][0] == results["d"][0] == 0, results
    doc = read_state(state)  # valid JSON, whole
    assert set(doc["bundles"]) == {"m", "n"}  # no record lost
    assert doc["bundles"]["m"]["version"] == "1.1.0" and doc["bundles"]["n"]["version"] == "2.0.0"
    # 1.0.0 went first (accepted, recorded) or after 1.1.0 (refused, not extracted): never both lost
    code_a = results["a"][0]
    assert code_a in (0, 18), results["a"]
    assert ("1.0.0" in doc["bundles"]["m"]["accepted"]) == (code_a == 0) == (tmp_path / "a").is_dir()
    assert all((tmp_path / d).is_dir() for d in "bcd") and no_temp_files(state)


def test_sigterm_while_waiting_for_the_lock_leaves_nothing(tmp_path, keys, bundles):
    state = tmp_path / "state.json"
    dest = tmp_path / "out"
    waiting_before = _flock_waiters()
    fd = _hold_lock(state)
    try:
        procs = [subprocess.Popen([sys.executable, "-m", "bundler.cli", "extract", bundles["new"], "--trust",
                                   keys["release"]["pub"], "--dest", dest, "--state", state],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True),
                 subprocess.Popen([py38(), "-I", str(VERIFIER), str(bundles["new"]), "--trust",
                                   str(keys["release"]["pub"]), "--state", str(state), "--record"],
                                  stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)]
        _wait_for_waiters(procs, waiting_before + 2)
        for p in procs:
            p.send_signal(signal.SIGTERM)
        outs = [p.communicate(timeout=60) for p in procs]
    finally:
        os.close(fd)
    assert [p.returncode for p in procs] == [143, 143], outs
    assert all("terminated" in err and "Traceback" not in err for _, err in outs)
    assert not state.exists() and no_temp_files(state) and not dest.exists()
    assert not [p for p in os.listdir(tmp_path) if "staging" in p]
    assert verify(bundles["new"], keys, state, "--record").code == 0  # the lock is free again


# == the stand-alone verifier shares the file ======================================================

def test_cli_and_stdlib_verifier_share_one_state_file(tmp_path, keys, bundles):
    state = tmp_path / "state.json"
    pub = keys["release"]["pub"]
    assert verify(bundles["new"], keys, state, "--record").code == 0
    # written by `bundle verify`, honoured by verify.py on Python 3.8
    r = stdlib_verify(bundles["old"], "--trust", pub, "--state", state, "--record")
    assert r.code == 18 and "older than 1.1.0 accepted on this host" in one_error_line(r, "rollback")
    r = stdlib_verify(bundles["old"], "--trust", pub, "--state", state, "--record", "--allow-downgrade", "--json")
    assert r.code == 0, r.err
    assert r.json()["host_state"]["downgrade"] is True
    assert stdlib_verify(bundles["other"], "--trust", pub, "--state", state, "--record").code == 0
    doc = read_state(state)
    assert set(doc["bundles"]) == {"m", "n"} and len(doc["log"]) == 1
    # written by verify.py, honoured by `bundle verify`
    assert verify(bundles["twin"], keys, state).code == 18
    assert verify(bundles["old"], keys, state).code == 18
    assert verify(bundles["other"], keys, state, "--record").code == 0
    # BUNDLE_STATE is the same as --state, for both
    env_state = {"BUNDLE_STATE": str(state)}
    assert run_bundle("verify", bundles["old"], "--trust", pub, env=env_state).code == 18
    p = subprocess.run([py38(), "-I", str(VERIFIER), str(bundles["old"]), "--trust", str(pub)], capture_output=True,
                       text=True, env={**os.environ, **env_state}, cwd="/")
    assert p.returncode == 18, p.stderr


def test_loader_passes_the_state_to_its_verifier(tmp_path, keys, bundles):
    """`bundle run` records like extract; the loader (run by hand, or by `bundle run` on a
    directory) has its verifier check the same state."""
    state = tmp_path / "state.json"
    pub = keys["release"]["pub"]
    old_dir = tmp_path / "m-1.0.0"
    assert run_bundle("extract", bundles["old"], "--trust", pub, "--dest", old_dir).code == 0  # no state: no record
    r = run_bundle("run", bundles["new"], "--trust", pub, "--state", state, "--", "info")
    assert r.code == 0, r.err
    assert read_state(state)["bundles"]["m"]["version"] == "1.1.0"
    r = run_bundle("run", old_dir, "--trust", pub, "--state", state, "--", "info")
    assert r.code == 18 and "[rollback]" in r.err and "older than 1.1.0" in r.err
    loader = [sys.executable, "-I", str(old_dir / "runtime" / "loader.py"), "info", "--verifier", str(VERIFIER),
              "--trust", str(pub)]
    p = subprocess.run(loader + ["--state", str(state)], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 18 and "bundle failed verification [rollback]" in p.stderr, p.stderr
    p = subprocess.run(loader, capture_output=True, text=True, cwd=tmp_path, env={**os.environ, "BUNDLE_STATE": str(state)})
    assert p.returncode == 18, p.stderr
    p = subprocess.run(loader + ["--state", str(state), "--no-verify"], capture_output=True, text=True, cwd=tmp_path)
    assert p.returncode == 2 and "need verification" in p.stderr
    # `bundle run DIR --allow-downgrade` records through the loader's verifier, once
    r = run_bundle("run", old_dir, "--trust", pub, "--state", state, "--allow-downgrade", "--", "info")
    assert r.code == 0, r.err
    doc = read_state(state)
    assert "1.0.0" in doc["bundles"]["m"]["accepted"] and [e["to_version"] for e in doc["log"]] == ["1.0.0"]


# == a damaged state file is refused, never reset ==================================================

@pytest.mark.parametrize("content", [
    b"",
    b'{"format": "trt-bundler-state/1", "bundles": {}',  # truncated
    b"[]",
    b'{"format": "trt-bundler-state/2", "bundles": {}, "log": []}',
    b'{"format": "trt-bundler-state/1", "bundles": {}, "log": [], "log": []}',  # duplicate key
    b'{"format": "trt-bundler-state/1", "bundles": {"m": {"version": "1.1.0", "content_digest": "' + b"0" * 64
    + b'", "newest_created": null, "accepted": {"1.1.0": "' + b"0" * 64 + b'", "2.0.0": "' + b"1" * 64
    + b'"}, "updated": null}}, "log": []}',  # a higher version accepted than the one recorded as highest
    b'{"format": "trt-bundler-state/1", "bundles": {"m": {"version": "1.1", "content_digest": "x", '
    b'"newest_created": null, "accepted": {}, "updated": null}}, "log": []}',
    "directory",
])
def test_a_corrupt_state_file_is_refused_not_reset(tmp_path, keys, bundles, content):
    state = tmp_path / "state.json"
    if content == "directory":
        state.mkdir()
    else:
        state.write_bytes(content)
    for cmd in (lambda: verify(bundles["new"], keys, state, "--record"),
                lambda: stdlib_verify(bundles["new"], "--trust", keys["release"]["pub"], "--state", state, "--record"),
                lambda: run_bundle("extract", bundles["new"], "--trust", keys["release"]["pub"], "--dest",
                                   tmp_path / "dest", "--state", state)):
        r = cmd()
        assert r.code == 3, r.err
        assert "not a usable host state file" in one_error_line(r, "input")
        assert state.is_dir() if content == "directory" else state.read_bytes() == content
        assert not (tmp_path / "dest").exists() and no_temp_files(state)


def test_state_usage_errors(tmp_path, keys, bundles):
    env = {"BUNDLE_STATE": ""}
    for flags in (["--record"], ["--allow-downgrade"], ["--max-age", "1d"]):
        r = run_bundle("verify", bundles["new"], "--trust", keys["release"]["pub"], *flags, env=env)
        assert r.code == 2 and "needs a host state file" in one_error_line(r, "usage"), flags
        r = stdlib_verify(bundles["new"], "--trust", keys["release"]["pub"], *flags)
        assert r.code == 2 and "needs a host state file" in one_error_line(r, "usage"), flags
    r = verify(bundles["new"], keys, tmp_path / "s.json", "--max-age", "ten days")
    assert r.code == 2 and "--max-age" in one_error_line(r, "usage")
    r = verify(bundles["new"], keys, tmp_path / "no-such-dir" / "s.json", "--record")
    assert r.code == 6 and "lock file" in one_error_line(r, "output")


# == freshness =====================================================================================

def test_max_age_refuses_a_bundle_sealed_long_before_the_newest_seen(tmp_path, keys, bundles):
    state = tmp_path / "state.json"
    pub = keys["release"]["pub"]
    # nothing seen yet: nothing to compare with
    assert verify(bundles["stale"], keys, tmp_path / "fresh.json", "--max-age", "1d").code == 0
    assert verify(bundles["new"], keys, state, "--record").code == 0  # sealed EPOCH + 10 days
    assert read_state(state)["bundles"]["m"]["newest_created"] == "2023-11-24T22:13:20Z"
    # 1.2.0 is a higher version, but sealed 40 days before the newest m this host has seen
    for r in (verify(bundles["stale"], keys, state, "--record", "--max-age", "30d"),
              stdlib_verify(bundles["stale"], "--trust", pub, "--state", state, "--max-age", "2592000")):
        assert r.code == 18
        line = one_error_line(r, "rollback")
        assert "m sealed 2023-10-15T22:13:20Z is more than 30d (--max-age) older than the newest m seen" in line
    assert read_state(state)["bundles"]["m"]["version"] == "1.1.0"
    # within the window it passes; the host clock plays no part (the bundles are from 2023)
    assert verify(bundles["stale"], keys, state, "--record", "--max-age", "41d").code == 0
    entry = read_state(state)["bundles"]["m"]
    assert entry["version"] == "1.2.0" and entry["newest_created"] == "2023-11-24T22:13:20Z"  # only moves forward


def test_check_freshness_function():
    from runtime_stub.verify import RollbackError, StateEntry, check_freshness

    entry = StateEntry("m", "1.0.0", "0" * 64, "2024-01-31T00:00:00Z", {"1.0.0": "0" * 64})
    check_freshness(None, "2000-01-01T00:00:00Z", 0)  # a first bundle of its name
    check_freshness(entry, "2024-01-01T00:00:00Z", 30 * DAY)  # exactly at the edge
    with pytest.raises(RollbackError):
        check_freshness(entry, "2023-12-31T23:59:59Z", 30 * DAY)
    with pytest.raises(RollbackError):
        check_freshness(entry, "yesterday", 30 * DAY)


def test_a_trust_policy_rule_can_demand_freshness(tmp_path, keys, bundles):
    """A rule's max_age applies wherever the policy is used with a host state, without anyone
    remembering a flag: the stale (but higher, validly signed) bundle is refused, by the CLI and
    by verify.py on Python 3.8."""
    state = tmp_path / "state.json"
    assert verify(bundles["new"], keys, state, "--record").code == 0
    pol = tmp_path / "policy.json"
    pol.write_text(json.dumps({
        "format": "trt-bundler-policy/1", "version": 1,
        "keys": [{"id": keys["release"]["id"], "name": "release", "path": str(keys["release"]["pub"])}],
        "rules": [{"bundles": "m", "keys": ["*"], "threshold": 1, "max_age": "30d"}],
    }))
    r = run_bundle("verify", bundles["stale"], "--policy", pol, "--state", state)
    assert r.code == 18 and "is more than 30d" in r.err, r.err
    assert stdlib_verify(bundles["stale"], "--policy", pol, "--state", state).code == 18
    assert run_bundle("verify", bundles["stale"], "--policy", pol).code == 0  # no state: nothing to compare with
    pol.write_text(pol.read_text().replace('"30d"', '"thirty days"'))
    r = run_bundle("verify", bundles["stale"], "--policy", pol, "--state", state)
    assert r.code == 4 and "max_age 'thirty days' is not a duration" in r.err
