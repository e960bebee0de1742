"""Every hostile case of the verifier tables, run in-process against the shared verifier.

tests/test_stdlib_verifier.py runs these cases through both entry points in subprocesses
(`bundle verify --json` and `python -I verify.py --json`), which is what users run. This module
runs the same tables, with the same expected exit codes, through `runtime_stub.verify.verify_bundle`
in this process: about a second for all of them. That speed is what the mutation-testing harness
(mutation/run.py) needs: it runs this module once per mutant of the shared verifier, and a case
that still gives its expected code under a mutant means the suite did not notice the change.

Besides the tables: a byte flip in the data of every member, a flipped byte in every header field,
truncation at 512-byte boundaries (`generated_cases`), the trailing-zero allowance to the byte,
and the good bundle itself.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Optional, Tuple

import pytest

import test_stdlib_verifier as sv
import _edge_cases_json
import _edge_cases_pipeline_a
import _edge_cases_pipeline_b
import _edge_cases_tar
from _edge_cases import BOTH_KEYS, EDGES, POLICIES
from runtime_stub import verify as shared

def _tar_case(make: Callable[[Path, Path], None]) -> Callable[[Path, Path, dict], Path]:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        out = work / "case.tar"
        make(good, out)
        return out
    return build


def _dir_case(make: Callable[[Path], None]) -> Callable[[Path, Path, dict], Path]:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        d = work / sv.ROOT
        shutil.copytree(ctx["extracted"], d)
        make(d)
        return d
    return build


def _resigned_case(kw: dict) -> Callable[[Path, Path, dict], Path]:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        return sv.write_tar(work / "case.tar", sv.resign(sv.read_entries(good), ctx["keys"]["release"]["key"], **kw))
    return build


def _flip_data(member: str) -> Callable[[Path, Path, dict], Path]:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        header, data, size = sv.data_offsets(good)[member]
        out = work / "case.tar"
        shutil.copyfile(good, out)
        return sv.flip(out, data + size // 2)
    return build


def _flip_header(member: str, at: int) -> Callable[[Path, Path, dict], Path]:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        out = work / "case.tar"
        shutil.copyfile(good, out)
        return sv.flip(out, sv.data_offsets(good)[member][0] + at)
    return build


def _cut(n_blocks: int) -> Callable[[Path, Path, dict], Path]:
    def build(good: Path, work: Path, ctx: dict) -> Path:
        out = work / "case.tar"
        out.write_bytes(good.read_bytes()[: n_blocks * 512])
        return out
    return build


def _zeros(extra: int) -> Callable[[Path, Path, dict], Path]:
    """The bundle with its end-of-archive padding grown to the allowance plus ``extra`` bytes."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        data = good.read_bytes()
        end = max(h + 512 + ((s + 511) & ~511) for h, _, s in sv.data_offsets(good).values()) + 1024
        out = work / "case.tar"
        out.write_bytes(data[:end] + b"\0" * (shared.Limits().max_trailing_zeros + extra))
        return out
    return build


def _identity(good: Path, work: Path, ctx: dict) -> Path:
    return good


def _resigned_params() -> List[Tuple[str, dict, int]]:
    mark = next(m for m in sv.test_differential_resigned_by_trusted_key.pytestmark if m.name == "parametrize")
    return [tuple(p) for p in mark.args[1]]


def _good_members(good: Path) -> List[str]:
    with tarfile.open(good) as tf:
        return [ti.name for ti in tf.getmembers() if ti.isfile()]


TABLE: Dict[str, Tuple[Callable[[Path, Path, dict], Path], int]] = {"good-bundle": (_identity, 0)}
TABLE.update({f"tar/{k}": (_tar_case(make), code) for k, (make, code) in sv.TAR_CASES.items()})
TABLE.update({f"dir/{k}": (_dir_case(make), code) for k, (make, code) in sv.DIR_CASES.items()})
TABLE.update({f"resigned/{k}": (_resigned_case(kw), code) for k, kw, code in _resigned_params()})
TABLE.update({"zeros/at-the-allowance": (_zeros(0), 0), "zeros/one-byte-over": (_zeros(1), 10)})
TABLE.update({f"edge/{k}": v for k, v in EDGES.items()})
TABLE.update({f"edge/{k}": (build, code) for k, (build, code, _, _) in POLICIES.items()})
# more cases per area of the verifier, written against the mutation run's survivors
BOTH_KEYS = set(BOTH_KEYS)
for _area, _module in (("tar", _edge_cases_tar), ("json", _edge_cases_json), ("pipeline_a", _edge_cases_pipeline_a),
                       ("pipeline_b", _edge_cases_pipeline_b)):
    TABLE.update({f"edge/{_area}-{k}": v for k, v in _module.EDGES.items()})
    BOTH_KEYS.update(f"{_area}-{k}" for k in _module.BOTH_KEYS)


def setup_of(case: str) -> Tuple[Optional[Callable[[dict], dict]], Optional[float]]:
    """A case's trust policy maker (None: plain trusted keys) and its verification time (None: now)."""
    case = base_case(case)
    if case.startswith("edge/") and case[5:] in POLICIES:
        _, _, policy, now = POLICIES[case[5:]]
        return policy, now
    return None, None


def write_policy(case: str, work: Path, ctx: dict) -> Optional[Path]:
    policy, _ = setup_of(case)
    if policy is None:
        return None
    path = work / "policy.json"
    path.write_text(json.dumps(policy(ctx), indent=1))
    return path


# Cases run again through the other two ways the shared code takes bytes. Without the hashing
# thread (a Python without threads, `threaded=False`): the whole verification, same code and
# message. Through a pipe: `verify_bundle` takes regular files only, but the tar reader reads
# anything that cannot be mapped (a pipe, a file system without mmap, a file not read from its
# start) with plain read() calls; the reader alone must refuse the same archive-level damage with
# the same message, and read a good bundle's members to the same digests as Python's tarfile.
UNTHREADED_CASES = ["good-bundle", "tar/truncated-in-engine-data", "tar/appended-garbage", "zeros/one-byte-over",
                    "tar/duplicate-member", "resigned/sums-line-missing", "edge/engine-rtx-cc-7.5",
                    "edge/pax-header-at-the-limit"]
PIPE_CASES = ["good-bundle", "tar/truncated-in-engine-data", "tar/truncated-in-end-marker", "tar/truncated-in-first-header",
              "tar/truncated-before-end-marker", "tar/appended-garbage", "tar/appended-too-many-zeros",
              "tar/record-padding-not-zero", "tar/second-end-block-not-zero", "tar/appended-zero-block",
              "tar/truncated-record-padding-only", "zeros/at-the-allowance", "zeros/one-byte-over", "tar/duplicate-member",
              "edge/pax-header-one-byte-over", "edge/pax-size-equal-to-real"]
# (not the 64 KiB PAX record at the limit: the independent reading below, Python 3.11.7's tarfile,
# takes 20-30 s over it in its PAX regex (the quadratic search fixed for CVE-2024-6232 in later
# releases); our reader takes it in milliseconds, in file mode and without threads above)
TABLE.update({f"via-unthreaded/{c}": TABLE[c] for c in UNTHREADED_CASES})
TABLE.update({f"via-pipe/{c}": TABLE[c] for c in PIPE_CASES})


def via_of(case: str) -> str:
    return case[4:].split("/", 1)[0] if case.startswith("via-") else "file"


def base_case(case: str) -> str:
    return case.split("/", 1)[1] if case.startswith("via-") else case


class Outcome:
    """What a case gave: its exit code (0 accepted) and the refusal's message."""

    def __init__(self, code: int, message: Optional[str] = None) -> None:
        self.code, self.message = code, message


def run_case(module, target: Path, trust, via: str = "file", ecdsa=None, now=None) -> Outcome:  # noqa: ANN001
    """Verify ``target`` with ``module`` (the shared verifier, or a mutant of it in the mutation
    harness): from its file, without threads, or (the tar reader alone) through a pipe."""
    if via == "pipe":
        return _read_through_pipe(module, target)
    report = module.verify_bundle(target, trust, threaded=via != "unthreaded", ecdsa=ecdsa, now=now)
    if report.ok is not (report.exit_code == 0) or (report.exit_code and report.error is None):
        return Outcome(-1, "report and exit code disagree")
    if report.exit_code and report.error.code != report.exit_code:
        return Outcome(-1, "error class and exit code disagree")
    return Outcome(report.exit_code, report.error.message if report.error else None)


def _read_through_pipe(module, target: Path) -> Outcome:  # noqa: ANN001
    import hashlib
    import threading

    r, w = os.pipe()

    def feed() -> None:
        try:
            with open(target, "rb") as src, os.fdopen(w, "wb") as dst:
                shutil.copyfileobj(src, dst)
        except BrokenPipeError:  # the reader stopped at a refusal
            pass
    t = threading.Thread(target=feed, daemon=True)
    t.start()
    got = []
    try:
        with os.fdopen(r, "rb", buffering=0) as f:
            reader = module.StrictTarReader(f, module.Limits())
            try:
                while True:
                    m = reader.next()
                    if m is None:
                        break
                    h = hashlib.sha256()
                    reader.read_data(h.update)
                    got.append((m.name, h.hexdigest()))
                whole = reader.archive_sha256
            except module.VerificationError as e:
                return Outcome(e.code, e.message)
            finally:
                reader.close()
    finally:
        t.join(10)
    with tarfile.open(target) as tf:  # the independent reading of the same bytes
        want = [(ti.name.rstrip("/"), hashlib.sha256(tf.extractfile(ti).read() if ti.isfile() else b"").hexdigest())
                for ti in tf.getmembers()]
    if got != want or whole != hashlib.sha256(target.read_bytes()).hexdigest():
        return Outcome(-1, "members or digests differ from tarfile's reading")
    return Outcome(0)


def trust_names(case: str) -> Tuple[str, ...]:
    """Whose public keys a case is verified against: the release key, or both test keys."""
    case = base_case(case)
    return ("release", "other") if case.startswith("edge/") and case[5:] in BOTH_KEYS else ("release",)


@pytest.fixture(scope="module")
def ctx(tiny_bundle, keys, tmp_path_factory) -> dict:  # noqa: ANN001
    dest = tmp_path_factory.mktemp("cases-extracted") / sv.ROOT
    report = shared.verify_bundle(tiny_bundle, shared.load_trust([str(keys["release"]["pub"])]))
    assert report.ok, report.error
    # An extracted copy, made by the tar module from the verified bytes (what `bundle extract`
    # writes, without depending on the code under test to make the fixture).
    with tarfile.open(tiny_bundle) as tf:
        tf.extractall(dest.parent, filter="data")
    for p in dest.rglob("*"):
        p.chmod(0o755 if p.is_dir() else 0o644)
    return {"keys": keys, "extracted": dest, "trust": shared.load_trust([str(keys["release"]["pub"])]),
            "trust-both": shared.load_trust([str(keys[n]["pub"]) for n in ("release", "other")])}


# Every refusal's message, as users read it, per case (tests/data/verifier-messages.json).
# Besides the exit code, each case pins its one-line message: a change that keeps the class but
# names the wrong member, miscounts "(and N more)" or drops a reason is a bug users see. What
# differs between test sessions is masked: the case's own directory, key ids and other long hex,
# and byte counts and offsets (the signature's DER length moves them). `UPDATE_MESSAGES=1` rewrites
# the file from the current code; review its diff like code.
MESSAGES = Path(__file__).parent / "data" / "verifier-messages.json"
_HEX = re.compile(r"[0-9a-f]{16,}")
_BYTES = re.compile(r"\b\d+ bytes\b|\bat byte \d+|\bends at byte \d+")


def normal_message(message: str, target: Path) -> str:
    """A refusal message with what varies between sessions masked (mutation/fast.py uses this)."""
    out = message.replace(str(Path(target).parent), "<case>")
    out = _BYTES.sub(lambda m: re.sub(r"\d+", "N", m.group(0)), out)
    return _HEX.sub("<hex>", out)


def normal_case_id(case: str) -> str:
    return _HEX.sub("<hex>", case)


def expected_messages() -> Dict[str, str]:
    return json.loads(MESSAGES.read_text()) if MESSAGES.is_file() else {}


def _check(target: Path, code: int, trust, case: str = "", now=None) -> None:  # noqa: ANN001
    got = run_case(shared, target, trust, via_of(case), now=now)
    assert got.code == code, f"expected {code}, got {got.code}: {got.message}"
    if code:
        assert got.message
        if case and not case.startswith("cut/"):  # cut cases are named by block numbers, which vary
            _check_message(normal_case_id(base_case(case)), normal_message(got.message, target))


_UPDATED: Dict[str, str] = {}


def _check_message(case: str, message: str) -> None:
    if os.environ.get("UPDATE_MESSAGES"):
        _UPDATED[case] = message
        old = expected_messages()
        old.update(_UPDATED)
        MESSAGES.parent.mkdir(exist_ok=True)
        MESSAGES.write_text(json.dumps(dict(sorted(old.items())), indent=1) + "\n")
        return
    want = expected_messages().get(case)
    assert want is not None, f"{case}: no expected message in {MESSAGES.name} (UPDATE_MESSAGES=1 adds it)"
    assert message == want


@pytest.mark.parametrize("case", sorted(TABLE))
def test_case(case, tiny_bundle, ctx, tmp_path):  # noqa: ANN001
    build, code = TABLE[case]
    trust = ctx["trust-both"] if len(trust_names(case)) == 2 else ctx["trust"]
    policy = write_policy(case, tmp_path, ctx)
    if policy is not None:
        trust = shared.load_policy(policy)
    _check(build(tiny_bundle, tmp_path, ctx), code, trust, case, now=setup_of(case)[1])


def generated_cases(good: Path) -> Dict[str, Tuple[Callable[[Path, Path, dict], Path], int]]:
    """Cases made from the good bundle's own layout: a flipped data byte in every member (the
    signature file's is a signature failure, any other a digest one); a flipped byte in every
    header field of every member without fixing the checksum (an archive failure); and cuts at
    512-byte boundaries before the end-of-archive marker (archive failures): every boundary of
    every header and of the marker, and the first, middle and last block of each member's data
    (every boundary of the data would add ~4,000 runs and no new code path)."""
    out: Dict[str, Tuple[Callable[[Path, Path, dict], Path], int]] = {}
    offsets = sv.data_offsets(good)
    for name in _good_members(good):
        rel = name.split("/", 1)[1]
        out[f"flip-data/{rel}"] = (_flip_data(name), 11 if "/signatures/" in name else 12)
        for field, at in (("name", 0), ("mode", 101), ("size", 125), ("chksum", 149), ("type", 156),
                          ("magic", 258), ("prefix", 345)):
            out[f"flip-header/{rel}/{field}"] = (_flip_header(name, at), 10)
    cuts = {0, 1}
    for h, d, size in offsets.values():
        last = (d + size + 511) // 512
        cuts.update({h // 512, d // 512, (d + size // 2) // 512, last - 1, last})
    end = max(h + 512 + ((size + 511) & ~511) for h, _, size in offsets.values()) // 512
    cuts.update({end, end + 1})
    assert end + 2 <= good.stat().st_size // 512 and max(cuts) == end + 1
    out.update({f"cut/{n}-blocks": (_cut(n), 10) for n in sorted(cuts)})
    return out


def test_generated_cases(tiny_bundle, ctx, tmp_path):  # noqa: ANN001
    cases = generated_cases(tiny_bundle)
    assert len(cases) > 100
    for i, (case, (build, code)) in enumerate(sorted(cases.items())):
        work = tmp_path / str(i)
        work.mkdir()
        try:
            _check(build(tiny_bundle, work, ctx), code, ctx["trust"], case)
        except AssertionError as e:
            raise AssertionError(f"{case}: {e}") from None
