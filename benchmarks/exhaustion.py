#!/usr/bin/env python3
"""Issue 13, family 4: exhaustion. Each hostile input must be refused within a time and a memory
bound, by `bundle verify` and by the stand-alone `runtime_stub/verify.py`; both are recorded.

    python benchmarks/exhaustion.py                  # full sizes (a million members, ...): ~5 min
    python benchmarks/exhaustion.py --quick          # the sizes tests/test_campaign_exhaustion.py uses
    python benchmarks/exhaustion.py --only deep-json-signature --keep

Inputs are built on a real signed bundle (a synthetic build sealed by the real `seal`, as
benchmarks/fakebuild.py makes them; the tests pass their own TensorRT-RTX bundle instead), with
benchmarks/hostile.py. Huge declared sizes are real sizes on disk, left sparse (holes), never
written. Each verifier runs as the child of a small `python -S` launcher that forks, execs and
waits for it with wait4(2): the wall time and the peak RSS (ru_maxrss) are that child's alone, and
the launcher kills it at the time bound. The results go to --out as JSON (one row per input and
verifier) and a summary is printed; the command exits 1 if any input was not refused with its
expected code inside the bounds. docs/security.md quotes the figures.
"""

from __future__ import annotations

import argparse
import base64
import datetime as dt
import hashlib
import itertools
import json
import os
import platform
import subprocess
import sys
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, Iterator, List, Optional

HERE = Path(__file__).resolve().parent
REPO = HERE.parent
sys.path[:0] = [str(HERE), str(REPO)]

from hostile import (  # noqa: E402
    BLOCK, Bundle, extended, header, member, pax, pax_records, resign, write_tar,
)

VERIFIER = REPO / "runtime_stub" / "verify.py"
TIME_BOUND_S = 10.0  # per run, start-up included; the launcher kills a run at this point
RSS_BOUND_MIB = {"bundle verify": 128, "verify.py": 128}  # measured peaks: docs/security.md
GiB, TiB = 1 << 30, 1 << 40

# fork, exec, wait4: the child's own wall time and peak RSS; SIGKILL at the bound
LAUNCHER = r"""
import json, os, signal, sys, time
out, limit = sys.argv[1], float(sys.argv[2])
t = time.perf_counter()
pid = os.fork()
if pid == 0:
    try:
        fd = os.open(sys.argv[3], os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
        os.dup2(fd, 2)
        null = os.open(os.devnull, os.O_WRONLY)
        os.dup2(null, 1)
        os.execv(sys.argv[4], sys.argv[4:])
    finally:
        os._exit(127)
def kill(signum, frame):
    os.kill(pid, signal.SIGKILL)
signal.signal(signal.SIGALRM, kill)
signal.setitimer(signal.ITIMER_REAL, limit)
_, status, ru = os.wait4(pid, 0)
signal.setitimer(signal.ITIMER_REAL, 0)
with open(out, "w") as f:
    json.dump({"wall_s": time.perf_counter() - t, "cpu_s": ru.ru_utime + ru.ru_stime,
               "peak_rss_mib": ru.ru_maxrss / 1024, "code": os.waitstatus_to_exitcode(status)}, f)
"""


def measure(argv: List[str], limit: float = TIME_BOUND_S, env: Optional[Dict[str, str]] = None) -> dict:
    """Run ``argv``: its exit code, wall time, CPU time, peak RSS (MiB) and first stderr line."""
    with tempfile.TemporaryDirectory(prefix="exh-") as d:
        result, err = Path(d) / "r.json", Path(d) / "err"
        p = subprocess.run([sys.executable, "-S", "-c", LAUNCHER, str(result), str(limit), str(err), *argv],
                           env=env, timeout=limit + 60, capture_output=True)
        if p.returncode != 0 or not result.exists():
            raise RuntimeError(f"launcher failed: {p.stderr.decode(errors='replace')}")
        out = json.loads(result.read_text())
        lines = err.read_text(errors="replace").strip().splitlines()
        out["error"] = lines[0] if lines else ""
        out["stderr_lines"] = len(lines)
    return out


@dataclass
class Ctx:
    base: Bundle  # the signed bundle the inputs are made from
    base_path: Path
    key: Path  # its (trusted, unencrypted) private key, for inputs a trusted signer's tool made
    pub: Path
    full: bool  # full sizes, or the quick ones

    def n(self, full: int, quick: int) -> int:
        return full if self.full else quick

    @property
    def root(self) -> str:
        return self.base.root

    def first_engine(self) -> str:
        return next(r for r in self.base.rels() if r.startswith("engines/") and r.endswith((".engine", ".onnx")))


@dataclass
class Case:
    name: str
    expected: int
    what: str
    build: Callable[[Ctx, Path], Path]  # -> the input: a tar, or a directory
    trust: Optional[Callable[[Ctx, Path], Path]] = None  # a hostile trust file instead of the bundle


# -- builders ---------------------------------------------------------------------------------------

def _parts(ctx: Ctx, b: Optional[Bundle] = None) -> list:
    return (b or ctx.base).chunks()


def _flat(parts: list) -> list:
    return [c for _, c in parts]


def _replace_member(parts: list, rel: str, chunks: list) -> list:
    out = []
    for r, c in parts:
        out += chunks if r == rel else [c]
    return out


def _declared(ctx: Ctx, rel: str, size: int, typeflag: bytes = b"0") -> list:
    """A member header declaring ``size`` bytes (PAX size when the ustar field cannot hold it),
    followed by that many bytes: a sparse hole, then its padding."""
    name = f"{ctx.root}/{rel}"
    head = (pax([("size", str(size))]) if size >= 8 ** 11 else b"") + header(name, size, typeflag)
    return [head, size, b"\0" * ((-size) % BLOCK)]


def huge_signed_member(ctx: Ctx, out: Path) -> Path:
    rel = ctx.first_engine()
    return write_tar(out, _replace_member(_parts(ctx), rel, _declared(ctx, rel, 512 * GiB)))


def huge_extra_member(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _flat(_parts(ctx)) + _declared(ctx, "engines/zz-extra.engine", 900 * GiB))


def member_over_limit(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _flat(_parts(ctx)) + _declared(ctx, "engines/zz-huge.engine", 2 * TiB))


def gigabyte_signature(ctx: Ctx, out: Path) -> Path:
    parts = _parts(ctx)
    return write_tar(out, _replace_member(parts, ctx.base.signature_rel(), _declared(ctx, ctx.base.signature_rel(), GiB)))


def huge_manifest(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _replace_member(_parts(ctx), "manifest.json", _declared(ctx, "manifest.json", 10 * GiB)))


def _with(ctx: Ctx, rel: str, data: bytes) -> list:
    return [member(f"{ctx.root}/{r}", data if r == rel else d, mode=m) for r, d, m in ctx.base.members]


def junk_signature(ctx: Ctx, out: Path) -> Path:
    junk = b'{"mediaType": "' + b"x" * ((1 << 20) - 20) + b'"}'
    return write_tar(out, _with(ctx, ctx.base.signature_rel(), junk[:1 << 20]))


def _signature_doc(hint: str, payload: bytes, sig: bytes) -> bytes:
    return json.dumps({"mediaType": "application/vnd.dev.sigstore.bundle.v0.3+json",
                       "verificationMaterial": {"publicKey": {"hint": hint}, "tlogEntries": []},
                       "dsseEnvelope": {"payload": base64.b64encode(payload).decode(),
                                        "payloadType": "application/vnd.in-toto+json",
                                        "signatures": [{"sig": base64.b64encode(sig).decode(), "keyid": ""}]}}).encode()


def _key_id(ctx: Ctx) -> str:
    from runtime_stub.verify import load_public_key
    return load_public_key(ctx.pub).key_id


def sixteen_big_signatures(ctx: Ctx, out: Path) -> Path:
    """16 files of nearly 1 MiB, each naming the trusted key: every one is parsed, decoded and
    checked (a 760 KiB statement hashed into the PAE), and none verifies."""
    sig_rel = ctx.base.signature_rel()
    payload = b'{"padding": "' + b"p" * 760_000 + b'"}'
    doc = _signature_doc(_key_id(ctx), payload, b"\x30\x06\x02\x01\x01\x02\x01\x01")
    assert len(doc) < 1 << 20
    sigs = [member(f"{ctx.root}/signatures/s{i:02d}.sig", doc) for i in range(16)]
    rest = [c for r, c in _parts(ctx) if r != sig_rel]
    return write_tar(out, sigs + rest)


def seventeen_signatures(ctx: Ctx, out: Path) -> Path:
    sig_rel = ctx.base.signature_rel()
    sig = ctx.base.data(sig_rel)
    sigs = [member(f"{ctx.root}/signatures/s{i:02d}.sig", sig) for i in range(17)]
    return write_tar(out, sigs + [c for r, c in _parts(ctx) if r != sig_rel])


def _batches(n: int, make: Callable[[int], bytes], per: int = 10_000) -> Iterator[bytes]:
    """``make(i)`` for i < n, joined in batches: a million members are streamed to disk."""
    for start in range(0, n, per):
        yield b"".join(make(i) for i in range(start, min(n, start + per)))


def million_directories(ctx: Ctx, out: Path) -> Path:
    dirs = _batches(ctx.n(1_000_000, 20_000), lambda i: header(f"{ctx.root}/d{i:07d}", 0, b"5", mode=0o755))
    return write_tar(out, itertools.chain(dirs, _flat(_parts(ctx))))


def million_tiny_members(ctx: Ctx, out: Path) -> Path:
    tiny = _batches(ctx.n(1_000_000, 20_000),
                    lambda i: header(f"{ctx.root}/runtime/t{i:07d}", 1) + b"x" + b"\0" * (BLOCK - 1))
    return write_tar(out, itertools.chain(_flat(_parts(ctx)), tiny))


def _deep(components: int) -> str:
    return "/".join(["a"] * components)


def deep_name(ctx: Ctx, out: Path) -> Path:
    name = f"{ctx.root}/{_deep(ctx.n(1_000_000, 100_000))}/x"  # 2 MB of path: over the PAX header limit
    return write_tar(out, _flat(_parts(ctx)) + [member(name, b"x")])


def deep_name_in_pax_limit(ctx: Ctx, out: Path) -> Path:
    name = f"{ctx.root}/{_deep(30_000)}/x"  # 60 KB: fits the PAX header, not the name limit
    return write_tar(out, _flat(_parts(ctx)) + [member(name, b"x")])


def long_name(ctx: Ctx, out: Path) -> Path:
    name = f"{ctx.root}/runtime/" + "n" * ctx.n(16 << 20, 1 << 20)
    return write_tar(out, _flat(_parts(ctx)) + [member(name, b"x")])


def gnu_sparse(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _flat(_parts(ctx)) + [header(f"{ctx.root}/runtime/sparse", 0, b"S")])


def pax_sparse(ctx: Ctx, out: Path) -> Path:
    recs = [("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"), ("GNU.sparse.realsize", str(TiB)),
            ("GNU.sparse.name", f"{ctx.root}/runtime/sparse")]
    return write_tar(out, _flat(_parts(ctx)) + [pax(recs) + header(f"{ctx.root}/runtime/sparse", 0)])


def deep_json_signature(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _with(ctx, ctx.base.signature_rel(), b"[" * (1 << 20)))


def brackets_in_strings(ctx: Ctx, out: Path) -> Path:
    """Nesting that is not nesting: a megabyte of brackets and escaped quotes inside one string."""
    s = (b'[\\"{' * ((1 << 20) // 5))[: (1 << 20) - 40]
    return write_tar(out, _with(ctx, ctx.base.signature_rel(), b'{"mediaType": "' + s + b'"}'))


def deep_json_manifest(ctx: Ctx, out: Path) -> Path:
    n = ctx.n(8 << 20, 1 << 20)
    return resign(ctx.base, ctx.key, raw_manifest=b"[" * n + b"]" * n).write(out)


def deep_json_statement(ctx: Ctx, out: Path) -> Path:
    return resign(ctx.base, ctx.key, raw_statement=b"[" * 700_000).write(out)


def _pax_member(ctx: Ctx, rel: str, records: bytes) -> list:
    data = ctx.base.data(rel)
    mode = dict((r, m) for r, _, m in ctx.base.members)[rel]
    return [extended(records) + header(f"{ctx.root}/{rel}", len(data), mode=mode) + data + b"\0" * ((-len(data)) % BLOCK)]


def pax_size_digits(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _replace_member(_parts(ctx), "manifest.json",
                                          _pax_member(ctx, "manifest.json", pax_records([("size", "9" * 60_000)]))))


def pax_length_digits(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _replace_member(_parts(ctx), "manifest.json",
                                          _pax_member(ctx, "manifest.json", b"9" * 60_000 + b" path=x\n")))


def pax_mtime_digits(ctx: Ctx, out: Path) -> Path:
    """Accepted: mtime is not read (only its syntax), and a valid bundle stays valid."""
    return write_tar(out, _replace_member(_parts(ctx), "manifest.json",
                                          _pax_member(ctx, "manifest.json", pax_records([("mtime", "9" * 60_000)]))))


def json_huge_integer(ctx: Ctx, out: Path) -> Path:
    def edit(m: dict) -> None:
        m["engines"][0]["size"] = 0  # replaced below by a 5000-digit literal
    b = resign(ctx.base, ctx.key, edit_manifest=edit)
    raw = b.data("manifest.json").replace(b'"size": 0', b'"size": ' + b"9" * 5000, 1)
    return resign(ctx.base, ctx.key, raw_manifest=raw).write(out)


def json_huge_float(ctx: Ctx, out: Path) -> Path:
    raw = ctx.base.data("manifest.json").replace(b"{", b'{"x": 1e999999, ', 1)
    return resign(ctx.base, ctx.key, raw_manifest=raw).write(out)


def json_number_in_signature(ctx: Ctx, out: Path) -> Path:
    sig = ctx.base.data(ctx.base.signature_rel()).replace(b'"tlogEntries": []', b'"tlogEntries": [' + b"7" * 5000 + b"]")
    return write_tar(out, _with(ctx, ctx.base.signature_rel(), sig))


def huge_base64_signature(ctx: Ctx, out: Path) -> Path:
    doc = json.loads(ctx.base.data(ctx.base.signature_rel()))
    doc["dsseEnvelope"]["signatures"][0]["sig"] = base64.b64encode(os.urandom(760_000)).decode()
    return write_tar(out, _with(ctx, ctx.base.signature_rel(), json.dumps(doc).encode()))


def huge_base64_payload_trusted(ctx: Ctx, out: Path) -> Path:
    """Accepted: a trusted signer's statement padded to just under 1 MiB of base64."""
    from bundler.signing import make_statement
    b = resign(ctx.base, ctx.key)  # the statement below must name the files exactly as resign writes them
    digests = {r: hashlib.sha256(d).hexdigest() for r, d, _ in b.members if not r.startswith("signatures/")}
    st = json.loads(make_statement(ctx.root, digests))
    st["predicate"]["serialization"]["ignore_paths"] += ["i" * 1000] * 740
    return resign(ctx.base, ctx.key, raw_statement=json.dumps(st).encode()).write(out)


def manifest_at_limit(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _with(ctx, "manifest.json", b" " * (16 << 20)))


def sums_at_limit(ctx: Ctx, out: Path) -> Path:
    return write_tar(out, _with(ctx, "SHA256SUMS", b"0" * (16 << 20)))


def _extracted(ctx: Ctx, out: Path) -> Path:
    from bundler import api
    rep = api.extract(ctx.base_path, api.load_trust([ctx.pub]), out)
    assert rep.ok, rep.error
    return out


def directory_many_entries(ctx: Ctx, out: Path) -> Path:
    d = _extracted(ctx, out)
    many = d / "runtime" / "many"
    many.mkdir()
    fd = os.open(many, os.O_RDONLY | os.O_DIRECTORY)
    try:
        for i in range(ctx.n(1_000_000, 12_000)):
            os.close(os.open(f"f{i:07d}", os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644, dir_fd=fd))
    finally:
        os.close(fd)
    return d


def directory_deep_tree(ctx: Ctx, out: Path) -> Path:
    d = _extracted(ctx, out)
    fd = os.open(d / "runtime", os.O_RDONLY | os.O_DIRECTORY)
    try:
        for _ in range(ctx.n(5_000, 600)):  # 10 KB of path (quick: 1.2 KB): PATH_MAX is 4 KB
            os.mkdir("d", dir_fd=fd)
            nfd = os.open("d", os.O_RDONLY | os.O_DIRECTORY, dir_fd=fd)
            os.close(fd)
            fd = nfd
    finally:
        os.close(fd)
    return d


def _base(ctx: Ctx, out: Path) -> Path:
    return ctx.base_path


def sparse_trust_file(ctx: Ctx, out: Path) -> Path:
    with open(out, "wb") as f:
        f.truncate(GiB)
    return out


def dev_zero_trust(ctx: Ctx, out: Path) -> Path:
    return Path("/dev/zero")


CASES: List[Case] = [
    Case("control-good-bundle", 0, "the untouched bundle (control)", _base),
    Case("signed-member-declares-512GiB", 12, "an engine header declaring 512 GiB (sparse on disk), not its signed size",
         huge_signed_member),
    Case("extra-member-declares-900GiB", 13, "an unsigned member declaring 900 GiB (sparse)", huge_extra_member),
    Case("member-declares-2TiB", 15, "a member declaring 2 TiB, over the per-member limit", member_over_limit),
    Case("signature-declares-1GiB", 15, "a gigabyte signature file (sparse)", gigabyte_signature),
    Case("manifest-declares-10GiB", 15, "a 10 GiB manifest (sparse)", huge_manifest),
    Case("signature-1MiB-junk", 11, "a 1 MiB signature file that is one long string", junk_signature),
    Case("signatures-16x1MiB-trusted-hint", 11, "16 signature files of ~1 MiB, each naming the trusted key",
         sixteen_big_signatures),
    Case("signatures-17", 15, "17 signature files", seventeen_signatures),
    Case("directories-before-signatures", 15, "a million directory members (quick: 20,000) before the signatures",
         million_directories),
    Case("tiny-members-after-manifest", 13, "a million 1-byte members (quick: 20,000) after the payload",
         million_tiny_members),
    Case("name-deep-over-pax-limit", 15, "a name of a million components (quick: 100,000): PAX header over 64 KiB",
         deep_name),
    Case("name-deep-within-pax-limit", 15, "a name of 30,000 components (60 KB) in a PAX header", deep_name_in_pax_limit),
    Case("name-long", 15, "a 16 MiB name (quick: 1 MiB)", long_name),
    Case("gnu-sparse-member", 14, "a GNU sparse member", gnu_sparse),
    Case("pax-sparse-1TiB", 14, "a PAX 1.0 sparse map declaring 1 TiB", pax_sparse),
    Case("json-deep-signature", 11, "a signature file of a megabyte of '['", deep_json_signature),
    Case("json-brackets-in-strings", 11, "a megabyte of brackets and escaped quotes inside one JSON string",
         brackets_in_strings),
    Case("json-deep-manifest-trusted", 16, "a manifest of 8 MiB of '[' then ']' (quick: 1 MiB), signed by the trusted key",
         deep_json_manifest),
    Case("json-deep-statement-trusted", 11, "a statement of 700,000 '[', signed by the trusted key", deep_json_statement),
    Case("pax-size-60000-digits", 15, "a PAX size of 60,000 digits", pax_size_digits),
    Case("pax-length-60000-digits", 10, "a PAX record length of 60,000 digits", pax_length_digits),
    Case("pax-mtime-60000-digits", 0, "a PAX mtime of 60,000 digits (ignored: accepted, bounded)", pax_mtime_digits),
    Case("json-integer-5000-digits-trusted", 16, "a 5,000-digit integer in a manifest signed by the trusted key",
         json_huge_integer),
    Case("json-1e999999-trusted", 16, "1e999999 in a manifest signed by the trusted key", json_huge_float),
    Case("json-integer-5000-digits-signature", 11, "a 5,000-digit integer in a signature file", json_number_in_signature),
    Case("base64-760KiB-signature-value", 11, "a signature value of 760 KiB of base64", huge_base64_signature),
    Case("base64-1MiB-payload-trusted", 0, "a trusted statement padded to ~1 MiB of base64 (accepted, bounded)",
         huge_base64_payload_trusted),
    Case("manifest-16MiB-junk", 12, "a 16 MiB manifest (at the limit, read and hashed) that is not the signed one",
         manifest_at_limit),
    Case("sha256sums-16MiB-junk", 12, "a 16 MiB SHA256SUMS (at the limit) that is not the signed one", sums_at_limit),
    Case("directory-many-entries", 15, "an extracted directory with a million files in one directory (quick: 12,000)",
         directory_many_entries),
    Case("directory-deep-tree", 15, "an extracted directory 5,000 levels deep (quick: 600)", directory_deep_tree),
    Case("trust-file-1GiB-sparse", 4, "a 1 GiB trust file (sparse)", _base, sparse_trust_file),
    Case("trust-file-dev-zero", 4, "/dev/zero as the trust file", _base, dev_zero_trust),
]


def verifiers(target: Path, trust: Path, python: str) -> Dict[str, List[str]]:
    return {"bundle verify": [python, "-m", "bundler.cli", "verify", str(target), "--trust", str(trust)],
            "verify.py": [python, "-I", str(VERIFIER), str(target), "--trust", str(trust)]}


def run_cases(ctx: Ctx, work: Path, cases: List[Case], *, python: str = sys.executable,
              which: Optional[List[str]] = None, limit: float = TIME_BOUND_S, keep: bool = False) -> List[dict]:
    """Build each input in ``work``, run the verifiers on it, and return one row per run."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("PYTHONDONTWRITEBYTECODE", None)
    rows = []
    for case in cases:
        where = work / case.name
        where.mkdir()
        target = case.build(ctx, where / "input") if case.trust is None else ctx.base_path
        trust = ctx.pub if case.trust is None else case.trust(ctx, where / "trust.pub")
        size = _input_bytes(target)
        for label, argv in verifiers(target, trust, python).items():
            if which and label not in which:
                continue
            r = measure(argv, limit, env)
            rows.append({"family": 4, "case": case.name, "what": case.what, "verifier": label,
                         "input_bytes": size, "expected": case.expected, **r})
        if not keep:
            remove_tree(where)
    return rows


def remove_tree(top: Path) -> None:
    """Remove ``top`` without recursion and without long paths: the deep-tree input is deeper than
    Python's recursion limit (os.walk, shutil.rmtree) and than PATH_MAX. Walks down by chdir."""
    if not os.path.lexists(top):
        return
    if not os.path.isdir(top) or os.path.islink(top):
        os.unlink(top)
        return
    old = os.getcwd()
    os.chdir(top)
    names: List[str] = []  # the directories entered below top
    try:
        while True:
            sub = None
            with os.scandir(".") as it:
                for e in it:
                    if e.is_dir(follow_symlinks=False):
                        sub = e.name
                        break
                    os.unlink(e.name)
            if sub is not None:
                os.chdir(sub)
                names.append(sub)
            elif names:
                os.chdir("..")
                os.rmdir(names.pop())
            else:
                break
    finally:
        os.chdir(old)
    os.rmdir(top)


def _input_bytes(target: Path) -> int:
    if not target.is_dir():
        return target.stat().st_size
    p = subprocess.run(["du", "-sb", str(target)], capture_output=True, text=True)  # no recursion limit
    return int(p.stdout.split()[0]) if p.returncode == 0 else -1


def check(rows: List[dict], limit: float = TIME_BOUND_S, rss: Optional[Dict[str, float]] = None) -> List[str]:
    """What went wrong: a wrong exit code, more than one error line, a bound exceeded."""
    rss = rss or RSS_BOUND_MIB
    bad = []
    for r in rows:
        where = f"{r['case']} / {r['verifier']}"
        if r["code"] != r["expected"]:
            bad.append(f"{where}: exit {r['code']}, expected {r['expected']} ({r['error']})")
        elif r["expected"] and (r["stderr_lines"] != 1 or not r["error"].startswith("error [") or "internal" in r["error"]):
            bad.append(f"{where}: not one error line: {r['error']!r} ({r['stderr_lines']} lines)")
        if r["wall_s"] > limit:
            bad.append(f"{where}: {r['wall_s']:.1f} s, over {limit} s")
        if r["peak_rss_mib"] > rss[r["verifier"]]:
            bad.append(f"{where}: {r['peak_rss_mib']:.0f} MiB, over {rss[r['verifier']]} MiB")
    return bad


def summary(rows: List[dict]) -> dict:
    inputs = sorted({r["case"] for r in rows})
    refused = sorted({r["case"] for r in rows if r["expected"] and r["code"] == r["expected"]})
    worst = max(rows, key=lambda r: r["wall_s"])
    peak = max(rows, key=lambda r: r["peak_rss_mib"])
    return {"inputs": len(inputs), "hostile": sum(1 for c in inputs if next(r for r in rows if r["case"] == c)["expected"]),
            "refused": len(refused), "runs": len(rows),
            "worst_time_s": round(worst["wall_s"], 3), "worst_time_case": f"{worst['case']} ({worst['verifier']})",
            "peak_rss_mib": round(peak["peak_rss_mib"], 1), "peak_rss_case": f"{peak['case']} ({peak['verifier']})"}


def make_base(work: Path) -> Ctx:
    """A signed bundle without TensorRT: two synthetic 64 KiB engines sealed by the real seal."""
    from bundler import api
    from bundler.signing import generate_key
    from fakebuild import make_build_dir

    k = generate_key("exhaustion", work / "keys", None)
    make_build_dir(work / "build", [64 << 10, 64 << 10], name="exh")
    res = api.seal([work / "build"], api.load_private_key(k.private_path, None), work / "dist")
    return Ctx(Bundle.read(res.path), res.path, k.private_path, k.public_path, full=True)


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("--quick", action="store_true", help="the small sizes the test suite uses")
    ap.add_argument("--only", action="append", default=[], metavar="CASE", help="run only these cases")
    ap.add_argument("--out", type=Path, default=HERE / "results-exhaustion.json")
    ap.add_argument("--work", type=Path, help="where to build the inputs (default: a temporary directory)")
    ap.add_argument("--keep", action="store_true", help="keep the inputs")
    a = ap.parse_args()
    work = Path(tempfile.mkdtemp(prefix="exhaustion-", dir=a.work))
    try:
        ctx = make_base(work / "base")
        ctx.full = not a.quick
        cases = [c for c in CASES if not a.only or c.name in a.only]
        rows = run_cases(ctx, work, cases, keep=a.keep)
    finally:
        if not a.keep:
            remove_tree(work)
    doc = {"date": dt.datetime.now(dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"), "sizes": "quick" if a.quick else "full",
           "machine": f"{platform.node()} {os.cpu_count()} CPUs, {platform.platform()}", "python": platform.python_version(),
           "bounds": {"time_s": TIME_BOUND_S, "peak_rss_mib": RSS_BOUND_MIB}, "summary": summary(rows), "rows": rows}
    a.out.write_text(json.dumps(doc, indent=2) + "\n")
    for r in rows:
        print(f"{r['case']:38s} {r['verifier']:13s} exit {r['code']:>3} (want {r['expected']:>2})  "
              f"{r['wall_s']:6.2f} s  {r['peak_rss_mib']:6.1f} MiB  {r['input_bytes']:>15,d} B")
    print(json.dumps(doc["summary"], indent=2))
    bad = check(rows)
    for b in bad:
        print("FAIL", b)
    print(f"results: {a.out}")
    return 1 if bad else 0


if __name__ == "__main__":
    sys.exit(main())
