"""The mutation campaign's engine (issue 13, family 1): the oracle, the figures, the strategies.

Used by tests/test_campaign_mutation.py (a bounded, derandomized run in CI) and by
``python fuzz/run.py mutation --minutes N`` (the long run, which writes the figures that
docs/security.md quotes). Nothing here is mocked: every input is a real tar file on disk, read by
the real verifier through each entry point.

**The oracle** (`Campaign.check`), for every input:

1. `bundler.api.verify` (the library: `cryptography` ECDSA), `runtime_stub.verify.verify_bundle`
   (the stand-alone file's own pipeline, pure-Python ECDSA, unthreaded) and `bundler.api.extract`
   into a fresh directory run in this process, each under a hang detector (`HANG_S`).
   `bundler.api.inspect` (no trust) runs too.
2. None of them may raise anything but a documented request error; the two verify reports must
   be equal as whole documents, and extract must give the same exit code, class and message.
3. The exit code is 0 or a documented verification code, 10 to 16 (17 and 18 need
   ``--require-host`` or a host state, which the campaign does not pass). Never 1.
4. Extraction writes nothing outside its destination: afterwards the destination's parent holds
   the destination (on success) or nothing (on failure), and the destination holds only regular
   files and directories.
5. Acceptance only when the bytes that matter are unchanged. For a structural mutation (the
   signed bytes are left as they were, the tar around them is edited) that means: the extracted
   tree is the original bundle's (every path; every byte of every file but the signature files,
   and of those the decoded payload and signature, which is all they sign: `signed_content`;
   modes may differ, as extraction normalises them), the report's content digest is the
   original's, and Python's `tarfile` reading the same bytes finds no member the verified
   extraction lacks and no member with other bytes. For a semantic mutation (manifest, statement, signature file, SHA256SUMS or payload
   edited, then re-signed with the trusted key, so that the checks after the signature are
   reached) it means `spec_violations` finds nothing: the extracted files are exactly what was
   signed and every claim of the manifest holds for them, checked by an independent restatement
   of docs/bundle-format.md sections 5 to 7 written here with plain `json` (no verifier code).
6. For a bounded sample (the first input of each new outcome, and every `CLI_EVERY`-th in a long
   run) the same file also goes through the command lines as real subprocesses: ``python -I
   runtime_stub/verify.py --json``, ``bundle verify --json``, ``bundle extract --json`` and
   ``bundle inspect --trust --json``; they must agree with the library on the exit code and the
   error, print exactly one JSON document, never a traceback, and extract must leave nothing
   but its destination.

A failing input is saved (`Campaign.findings`) and named in the assertion, so it can become a
regression test.
"""

from __future__ import annotations

import base64
import contextlib
import datetime
import hashlib
import io
import json
import os
import re
import resource
import shutil
import signal
import subprocess
import sys
import tarfile
import tempfile
import threading
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Dict, Iterator, List, Optional, Tuple

from _tarkit import Bundle, RawTar, tree

REPO = Path(__file__).resolve().parent.parent
VERIFY_PY = REPO / "runtime_stub" / "verify.py"
DOCUMENTED = {0, 10, 11, 12, 13, 14, 15, 16}
HANG_S = 30.0  # a hang detector, not a speed goal: the slowest input seen takes well under 1 s
CHILD_TIMEOUT_S = 120.0
# The command lines cost about 2 s of CPU per input (four interpreters that import typer, rich and
# cryptography), so they run on a sample: the first CLI_FIRST inputs of each family that give an
# outcome (exit code, class) not seen before, and in a long run every CLI_EVERY-th input too.
CLI_EVERY = int(os.environ.get("CAMPAIGN_CLI_EVERY", "0"))
CLI_FIRST = int(os.environ.get("CAMPAIGN_CLI_FIRST", "1"))


class InputHang(BaseException):
    """Raised by the hang detector; a BaseException so that no ``except Exception`` eats it."""


@contextlib.contextmanager
def hang_detector(seconds: float) -> Iterator[None]:
    """SIGALRM after ``seconds`` raises `InputHang` in the main thread (pytest-xdist runs tests
    there). Elsewhere the time is only measured."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return

    def fire(signum: int, frame: Any) -> None:
        raise InputHang(f"no verdict after {seconds} s")

    old = signal.signal(signal.SIGALRM, fire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, old)


@dataclass
class Child:
    code: int
    out: str
    err: str
    seconds: float
    maxrss_kib: int


def run_child(args: List[str], timeout: float = CHILD_TIMEOUT_S, cwd: Optional[Path] = None,
              env: Optional[Dict[str, str]] = None) -> Child:
    """A subprocess with its own peak RSS (``wait4``), so the figures count the verifier alone."""
    with tempfile.TemporaryFile() as out, tempfile.TemporaryFile() as err:
        t0 = time.perf_counter()
        p = subprocess.Popen(args, stdin=subprocess.DEVNULL, stdout=out, stderr=err, cwd=cwd,
                             env=env if env is not None else dict(os.environ))
        timer = threading.Timer(timeout, p.kill)
        timer.start()
        try:
            _, status, usage = os.wait4(p.pid, 0)
        finally:
            timer.cancel()
        p.returncode = os.waitstatus_to_exitcode(status)
        seconds = time.perf_counter() - t0
        out.seek(0)
        err.seek(0)
        return Child(p.returncode, out.read().decode("utf-8", "replace"), err.read().decode("utf-8", "replace"),
                     seconds, usage.ru_maxrss)


# -- figures -----------------------------------------------------------------------------------------

@dataclass
class FamilyStats:
    tried: int = 0
    accepted: int = 0
    by_class: Counter = field(default_factory=Counter)
    worst_s: float = 0.0
    worst_input: str = ""
    cli_inputs: int = 0
    cli_worst_s: float = 0.0
    cli_peak_rss_kib: int = 0
    tarfile_differs: int = 0  # accepted inputs that Python's tarfile reads with fewer members

    @property
    def rejected(self) -> int:
        return self.tried - self.accepted

    def to_dict(self) -> dict:
        return {"tried": self.tried, "accepted": self.accepted, "rejected": self.rejected,
                "by_class": dict(sorted(self.by_class.items())), "worst_s": round(self.worst_s, 4),
                "worst_input": self.worst_input, "cli_inputs": self.cli_inputs,
                "cli_worst_s": round(self.cli_worst_s, 3), "cli_peak_rss_mib": round(self.cli_peak_rss_kib / 1024, 1),
                "tarfile_reads_fewer_members": self.tarfile_differs}


class CampaignFailure(AssertionError):
    pass


# -- the campaign --------------------------------------------------------------------------------------

SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"
NAME, VERSION = "camp", "1.0.0"
ROOT = f"{NAME}-{VERSION}"


def build_base(out: Path, key: Path, model: Path) -> Path:
    """The starting bundle: a real TensorRT-RTX engine for sm_86 and a cpu-target engine (so the
    header cross-check and the cpu rule are both reachable), golden data, the runtime files."""
    env = dict(os.environ, SOURCE_DATE_EPOCH="1700000000")
    env.pop("BUNDLE_KEY_PASSPHRASE", None)
    r = subprocess.run([sys.executable, "-m", "bundler.cli", "create", str(model), "--name", NAME, "--version", VERSION,
                        "--target", "sm_86", "--target", "cpu", "--shape", SHAPE, "--key", str(key), "--out", str(out),
                        "--backend", "tensorrt-rtx"], capture_output=True, text=True, env=env, timeout=600)
    if r.returncode != 0:
        raise RuntimeError(f"building the campaign bundle failed: {r.stderr}")
    return out / f"{ROOT}.bundle.tar"


class Campaign:
    """One starting bundle, its keys, a scratch directory, and the figures so far."""

    def __init__(self, bundle_path: Path, key_path: Path, pub_path: Path, workdir: Path,
                 findings: Optional[Path] = None) -> None:
        from bundler import api
        from bundler.signing import load_private_key
        from runtime_stub import verify as V

        self.api, self.V = api, V
        self.raw = bundle_path.read_bytes()
        self.tar = RawTar.parse(self.raw)
        self.bundle = Bundle.read(self.raw)
        self.root = self.bundle.root
        self.key = load_private_key(key_path, None)
        self.pub = pub_path
        self.trust_lib = api.load_trust([pub_path])
        self.trust_std = V.load_trust([pub_path])
        self.workdir = workdir
        self.findings = findings or (workdir / "findings")
        self.stats: Dict[str, FamilyStats] = {}
        self._outcomes: Dict[str, set] = {}
        self._cli_pool = ThreadPoolExecutor(4)
        good = self.api.verify(bundle_path, self.trust_lib)
        assert good.ok, good.error
        self.content_digest = good.content_digest
        dest = workdir / "base-tree"
        shutil.rmtree(dest, ignore_errors=True)
        assert self.api.extract(bundle_path, self.trust_lib, dest).ok
        self.tree = tree(dest)
        shutil.rmtree(dest)
        assert self.tree == self.bundle.files, "the writer view and the extracted tree differ"
        self.t0 = time.monotonic()

    def family(self, name: str) -> FamilyStats:
        return self.stats.setdefault(name, FamilyStats())

    def figures(self) -> dict:
        return {
            "families": {k: v.to_dict() for k, v in sorted(self.stats.items())},
            "process_peak_rss_mib": round(resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024, 1),
            "base_bundle_bytes": len(self.raw),
            "seconds": round(time.monotonic() - self.t0, 1),
            "python": sys.version.split()[0],
        }

    # -- one input ----------------------------------------------------------------------------------

    def _fail(self, family: str, raw: bytes, desc: str, why: str) -> None:
        self.findings.mkdir(parents=True, exist_ok=True)
        path = self.findings / f"{family}-{hashlib.sha256(raw).hexdigest()[:16]}.tar"
        path.write_bytes(raw)
        raise CampaignFailure(f"{family}: {why}\n  input: {desc}\n  saved as {path}")

    def check(self, family: str, raw: bytes, desc: str, *, files: Optional[Dict[str, bytes]] = None,
              cli: Optional[bool] = None, full: bool = True) -> int:
        """Run ``raw`` through every in-process entry point and the oracle; returns the exit code.

        ``files`` (semantic families): the bundle-relative files the mutated bundle was written
        from; acceptance then needs `spec_violations` to find nothing. Without it (structural
        families), acceptance needs the original bundle's exact tree. ``full=False`` leaves out
        extraction and inspect (the exhaustive truncation runs both verifiers on every boundary,
        and everything on a sample of them).
        """
        fs = self.family(family)
        d = Path(tempfile.mkdtemp(prefix="in-", dir=self.workdir))
        try:
            target = d / "bundle.tar"
            target.write_bytes(raw)
            out = d / "out"
            out.mkdir()
            dest = out / "dest"
            t0 = time.perf_counter()
            try:
                with hang_detector(HANG_S):
                    rep_lib = self.api.verify(target, self.trust_lib)
                    t_lib = time.perf_counter() - t0
                    rep_std = self.V.verify_bundle(target, self.trust_std, threaded=False)
                    rep_x = self.api.extract(target, self.trust_lib, dest) if full else rep_lib
                    ins, ins_err = None, None
                    if full:
                        try:
                            ins = self.api.inspect(target)
                        except self.V.BundleError as e:
                            ins_err = e
            except InputHang as e:
                self._fail(family, raw, desc, f"hang: {e}")
            except CampaignFailure:
                raise
            except BaseException as e:  # noqa: BLE001 - anything escaping an entry point is a finding
                if isinstance(e, KeyboardInterrupt):
                    raise
                self._fail(family, raw, desc, f"an entry point raised {type(e).__name__}: {e}")
            code = rep_lib.exit_code
            fs.tried += 1
            if t_lib > fs.worst_s:
                fs.worst_s, fs.worst_input = t_lib, desc[:200]
            fs.by_class["accepted" if code == 0 else rep_lib.error.failure_class] += 1
            if code == 0:
                fs.accepted += 1
            # 2. the entry points agree
            if code not in DOCUMENTED:
                self._fail(family, raw, desc, f"exit code {code} is not a documented verification code")
            if rep_lib.to_dict() != rep_std.to_dict():
                self._fail(family, raw, desc, "library and stand-alone verifier reports differ: "
                           f"{_err(rep_lib)} vs {_err(rep_std)}")
            if (rep_x.exit_code, _err(rep_x)) != (code, _err(rep_lib)):
                self._fail(family, raw, desc, f"extract says {rep_x.exit_code} {_err(rep_x)}, verify {code} {_err(rep_lib)}")
            if ins_err is not None and not isinstance(ins_err, self.V.VerificationError):
                self._fail(family, raw, desc, f"inspect raised a request error for a bundle: {ins_err!r}")
            # 4. nothing outside the destination
            left = sorted(p.name for p in out.iterdir())
            if full and left != (["dest"] if code == 0 else []):
                self._fail(family, raw, desc, f"extract left {left} beside its destination (exit {code})")
            if sorted(p.name for p in d.iterdir()) != ["bundle.tar", "out"]:
                self._fail(family, raw, desc, "something was written beside the bundle")
            # 5. acceptance only for unchanged bytes
            got: Optional[Dict[str, bytes]] = None
            if code == 0 and full:
                got = tree(dest)
                if files is None:
                    mine, theirs = signed_content(got), signed_content(self.tree)
                    if mine != theirs:
                        self._fail(family, raw, desc, "ACCEPTED with other content than the signed bundle: "
                                   f"{sorted(set(mine) ^ set(theirs)) or [p for p in mine if mine[p] != theirs.get(p)]}")
                    if rep_lib.content_digest != self.content_digest:
                        self._fail(family, raw, desc, "ACCEPTED with another content digest")
                    fewer = _tarfile_view(raw, self.root, got)
                    if fewer is None:
                        self._fail(family, raw, desc, "ACCEPTED, but Python's tarfile reads other bytes or names from it")
                    fs.tarfile_differs += int(fewer)
                else:
                    if got != {p: b for p, b in files.items()}:
                        self._fail(family, raw, desc, "ACCEPTED, but extracted files differ from the bytes written")
                    problems = spec_violations(self.root, got)
                    if problems:
                        self._fail(family, raw, desc, "ACCEPTED, but the bundle breaks its own claims: " + "; ".join(problems[:5]))
                if ins is None:
                    self._fail(family, raw, desc, f"verify accepts, inspect refuses: {ins_err}")
            # 6. the command lines, for a sample
            outcome = (code, _err(rep_lib)[0])
            seen = self._outcomes.setdefault(family, set())
            if cli is None:
                cli = (outcome not in seen and fs.cli_inputs < CLI_FIRST) or (CLI_EVERY and fs.tried % CLI_EVERY == 0)
            seen.add(outcome)
            if cli:
                self._check_cli(family, raw, desc, target, rep_lib, d, got)
            return code
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def check_library_only(self, family: str, raw: bytes, desc: str) -> int:
        """The library alone (for the exhaustive truncation's bulk): no exception, a documented
        code, counted in the figures like any other input."""
        fs = self.family(family)
        d = Path(tempfile.mkdtemp(prefix="in-", dir=self.workdir))
        try:
            target = d / "bundle.tar"
            target.write_bytes(raw)
            t0 = time.perf_counter()
            try:
                with hang_detector(HANG_S):
                    rep = self.api.verify(target, self.trust_lib)
            except InputHang as e:
                self._fail(family, raw, desc, f"hang: {e}")
            except Exception as e:  # noqa: BLE001
                self._fail(family, raw, desc, f"the library raised {type(e).__name__}: {e}")
            seconds = time.perf_counter() - t0
            fs.tried += 1
            fs.accepted += rep.ok
            fs.by_class["accepted" if rep.ok else rep.error.failure_class] += 1
            if seconds > fs.worst_s:
                fs.worst_s, fs.worst_input = seconds, desc[:200]
            if rep.exit_code not in DOCUMENTED:
                self._fail(family, raw, desc, f"exit code {rep.exit_code} is not a documented verification code")
            return rep.exit_code
        finally:
            shutil.rmtree(d, ignore_errors=True)

    def _check_cli(self, family: str, raw: bytes, desc: str, target: Path, rep: Any, d: Path,
                   expected: Optional[Dict[str, bytes]]) -> None:
        """``expected``: the tree the in-process extraction wrote (and the oracle accepted), when
        the input was accepted and extracted in-process."""
        fs = self.family(family)
        fs.cli_inputs += 1
        xdir = d / "cli-extract"
        xdir.mkdir()
        env = dict(os.environ)
        env.pop("BUNDLE_TRUST", None)
        env.pop("BUNDLE_POLICY", None)
        env.pop("BUNDLE_STATE", None)
        cli = [sys.executable, "-m", "bundler.cli"]
        jobs = {
            "verify.py": [sys.executable, "-I", str(VERIFY_PY), str(target), "--trust", str(self.pub), "--json"],
            "verify": cli + ["verify", str(target), "--trust", str(self.pub), "--json"],
            "extract": cli + ["extract", str(target), "--trust", str(self.pub), "--dest", str(xdir / "dest"), "--json"],
            "inspect --trust": cli + ["inspect", str(target), "--trust", str(self.pub), "--json"],
        }
        futures = {k: self._cli_pool.submit(run_child, v, CHILD_TIMEOUT_S, REPO, env) for k, v in jobs.items()}
        want = (rep.exit_code, _err(rep))
        for what, f in futures.items():
            c = f.result()
            fs.cli_worst_s = max(fs.cli_worst_s, c.seconds)
            fs.cli_peak_rss_kib = max(fs.cli_peak_rss_kib, c.maxrss_kib)
            if c.code < 0 or c.code in (124, 137):
                self._fail(family, raw, desc, f"{what}: killed ({c.code}) after {c.seconds:.1f} s")
            if "Traceback" in c.err or "Traceback" in c.out:
                self._fail(family, raw, desc, f"{what}: printed a traceback: {c.err[-2000:]}")
            try:
                doc = json.loads(c.out)  # exactly one document: json refuses trailing data
            except ValueError:
                self._fail(family, raw, desc, f"{what}: stdout is not one JSON document: {c.out[:300]!r}")
            got = (c.code, _doc_err(doc))
            if got != want:
                self._fail(family, raw, desc, f"{what} says {got}, the library {want}")
            if c.code and len(c.err.strip().splitlines()) != 1:
                self._fail(family, raw, desc, f"{what}: stderr is not one line: {c.err!r}")
            if what == "extract":
                left = sorted(p.name for p in xdir.iterdir())
                if left != (["dest"] if c.code == 0 else []):
                    self._fail(family, raw, desc, f"bundle extract left {left} (exit {c.code})")
                if c.code == 0 and expected is not None and tree(xdir / "dest") != expected:
                    self._fail(family, raw, desc, "bundle extract wrote other content than was verified")


def signed_content(files: Dict[str, bytes]) -> Dict[str, Any]:
    """What a signature covers in a bundle's files: every file but the signature files byte for
    byte, and of each signature file only its decoded payload and signature bytes. The rest of a
    signature file (the hint, keyid, tlogEntries, unknown members, white space) is not signed and
    the format ignores it (bundle-format.md 6.3): a flip there may verify, e.g. "publicKey"
    turned into "rublicKey" removes the hint, and a missing hint selects every trusted key."""
    out: Dict[str, Any] = {}
    for p, b in files.items():
        if p.startswith("signatures/"):
            try:
                env = plain_json(b)["dsseEnvelope"]
                out[p] = (base64.b64decode(env["payload"], validate=True),
                          base64.b64decode(env["signatures"][0]["sig"], validate=True))
            except (ValueError, KeyError, TypeError, IndexError):
                out[p] = b
        else:
            out[p] = b
    return out


def _err(rep: Any) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    e = rep.error
    return (None, None, None) if e is None else (e.failure_class, e.member, e.message)


def _doc_err(doc: dict) -> Tuple[Optional[str], Optional[str], Optional[str]]:
    e = doc.get("error")
    return (None, None, None) if e is None else (e.get("class"), e.get("member"), e.get("message"))


def _tarfile_view(raw: bytes, root: str, want: Dict[str, bytes]) -> Optional[bool]:
    """Python's tarfile on an accepted input, against what the verifier extracted from it: None
    if it yields a name or bytes the verified extraction does not have (a parser differential an
    attacker could use against `tar -x`); True if it yields fewer members (it stops at a header
    our reader accepts, e.g. garbage in an unread field); False if it yields exactly the same."""
    seen = {}
    try:
        with tarfile.open(fileobj=io.BytesIO(raw), mode="r:") as tf:
            for m in tf:
                if m.isdir():
                    continue
                if not m.isfile() or not m.name.startswith(root + "/"):
                    return None
                f = tf.extractfile(m)
                seen[m.name[len(root) + 1:]] = f.read() if f else b""
    except (tarfile.TarError, EOFError, ValueError, OSError):
        pass
    if any(want.get(p) != b for p, b in seen.items()):
        return None
    return len(seen) < len(want)


# -- an independent restatement of the format's claims (bundle-format.md sections 5-7) --------------

_NAME_RE = re.compile(r"[A-Za-z0-9][A-Za-z0-9._]*(-[A-Za-z0-9._]+)*\Z")
_HEX64 = re.compile(r"[0-9a-f]{64}\Z")
_RTX_BITS = [(0x01, "7.5"), (0x02, "8.0"), (0x04, "8.6"), (0x08, "8.9"), (0x10, "12.0"), (0x20, "12.1")]
STATEMENT_TYPE = "https://in-toto.io/Statement/v1"
PREDICATE_TYPE = "https://model_signing/signature/v1.0"


def plain_json(raw: bytes) -> Any:
    """json.loads, refusing what the format calls not JSON: duplicate keys, NaN/Infinity, a BOM."""
    def pairs(ps: list) -> dict:
        keys = [k for k, _ in ps]
        if len(set(keys)) != len(keys):
            raise ValueError("duplicate key")
        return dict(ps)

    def const(c: str) -> Any:
        raise ValueError(c)

    def flt(t: str) -> float:
        v = float(t)
        if v in (float("inf"), float("-inf")):
            raise ValueError("overflow")
        return v

    if raw.startswith(b"\xef\xbb\xbf"):
        raise ValueError("BOM")
    return json.loads(raw.decode("utf-8"), object_pairs_hook=pairs, parse_constant=const, parse_float=flt)


def _engine_header(data: bytes) -> Optional[Tuple[str, str, Optional[int], Optional[int]]]:
    if len(data) >= 40 and data[:4] == b"vtrt" and data[28:32] == b"vtrt":
        return ("tensorrt-rtx", ".".join(str(b) for b in data[24:28]), int.from_bytes(data[32:40], "little"),
                int.from_bytes(data[16:24], "little"))
    if len(data) >= 32 and data[:4] != b"vtrt" and data[1:4] == b"trt":
        return ("tensorrt", ".".join(str(b) for b in data[24:27]), None, None)
    return None


def spec_violations(root: str, files: Dict[str, bytes], now: Optional[float] = None) -> List[str]:
    """What an ACCEPTED bundle's files break of the format's claims; [] for a sound bundle."""
    v: List[str] = []
    try:
        _spec(root, files, v, time.time() if now is None else now)
    except (KeyError, TypeError, AttributeError, ValueError, IndexError) as e:
        v.append(f"not of the schema the format describes ({type(e).__name__}: {e})")
    return v


def _spec(root: str, files: Dict[str, bytes], v: List[str], now: float) -> None:
    payload = {p: d for p, d in files.items() if not p.startswith("signatures/")}
    dig = {p: hashlib.sha256(d).hexdigest() for p, d in payload.items()}
    good_statement = False
    for p, raw in files.items():
        if not p.startswith("signatures/"):
            continue
        try:
            env = plain_json(raw)["dsseEnvelope"]
            st = plain_json(base64.b64decode(env["payload"], validate=True))
            res = {r["name"]: r["digest"] for r in st["predicate"]["resources"]}
            subj = st["subject"][0]
            want = hashlib.sha256(b"".join(bytes.fromhex(res[n]) for n in sorted(res))).hexdigest()
            expires = st["predicate"].get("expires")
        except (ValueError, KeyError, TypeError, AttributeError, IndexError):
            continue
        if (res == dig and subj["name"] == root and subj["digest"]["sha256"] == want
                and st["_type"] == STATEMENT_TYPE and st["predicateType"] == PREDICATE_TYPE):
            good_statement = True
            if expires is not None:
                t = datetime.datetime.strptime(expires, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=datetime.timezone.utc)
                if t.timestamp() < now:
                    v.append(f"{p}: expired {expires}")
    if not good_statement:
        v.append("no signature file holds a statement listing exactly these files under this root")
    m = plain_json(payload["manifest.json"])
    if m.get("format", "trt-bundle/1") != "trt-bundle/1":
        v.append(f"format {m.get('format')!r}")
    name, version = m["name"], m["version"]
    import semver

    if not (isinstance(name, str) and _NAME_RE.match(name) and len(name) <= 100):
        v.append(f"name {name!r}")
    if not (isinstance(version, str) and semver.Version.is_valid(version)):
        v.append(f"version {version!r}")
    if f"{name}-{version}" != root:
        v.append(f"root {root} is not NAME-VERSION {name}-{version}")
    listed: Dict[str, Tuple[int, str]] = {}
    for f in m["files"]:
        if f["path"] in listed:
            v.append(f"files lists {f['path']} twice")
        listed[f["path"]] = (f["size"], f["sha256"])
        if f["path"] not in payload or (f["size"], f["sha256"]) != (len(payload[f["path"]]), dig[f["path"]]):
            v.append(f"files entry {f['path']} does not match the file")
    if set(listed) | {"manifest.json", "SHA256SUMS"} != set(payload):
        v.append(f"files and the bundle differ: {sorted(set(listed) ^ (set(payload) - {'manifest.json', 'SHA256SUMS'}))}")

    def signed(path: Any, size: Any, sha: Any) -> bool:
        return path in listed and listed[path] == (size, sha) and type(size) is int

    mo = m["model"]
    if not signed(mo["path"], mo["size"], mo["sha256"]):
        v.append(f"model {mo['path']} is not a signed file with its size and digest")
    graphs = {mo["precision"]: payload.get(mo["path"])}
    for var in m.get("variants", []):
        if not signed(var["graph"], var["size"], var["sha256"]):
            v.append(f"variant graph {var['graph']} is not signed with its size and digest")
        if var.get("log") is not None and var["log"] not in listed:
            v.append(f"variant log {var['log']} is not signed")
        if var["precision"] in graphs:
            v.append(f"two graphs of precision {var['precision']}")
        graphs[var["precision"]] = payload.get(var["graph"])
    g = m.get("golden")
    if g is not None:
        for ref in (g["inputs"], g["outputs"]):
            if ref not in listed:
                v.append(f"golden {ref} is not signed")
    paths = [e["path"] for e in m["engines"]]
    if len(set(paths)) != len(paths):
        v.append("an engine listed twice")
    for e in m["engines"]:
        if not signed(e["path"], e["size"], e["sha256"]):
            v.append(f"engine {e['path']} is not signed with its size and digest")
        if e["log"] not in listed:
            v.append(f"engine log {e['log']} is not signed")
        prec = e["build"]["precision"]
        if prec not in graphs:
            v.append(f"engine {e['path']}: no signed {prec} graph")
        data = payload.get(e["path"], b"")
        if not e["path"].startswith("engines/") or e["path"].endswith(".log"):
            v.append(f"engine {e['path']}: not below engines/, or a .log file")
            continue
        h, rec = _engine_header(data), e["header"]
        if rec is None:
            if e["backend"]["name"] != "onnxruntime" or e["target"]["label"] != "cpu" or h is not None:
                v.append(f"engine {e['path']}: no header recorded but not a cpu-target ONNX file")
            if data != graphs.get(prec):
                v.append(f"cpu engine {e['path']} is not the signed {prec} graph")
            continue
        if h is None:
            v.append(f"engine {e['path']}: header unreadable")
            continue
        product, hver, mask, size = h
        if (product, hver) != (rec["product"], rec["version"]):
            v.append(f"engine {e['path']}: header {product} {hver}, manifest {rec['product']} {rec['version']}")
        if product == "tensorrt-rtx":
            ccs = [cc for bit, cc in _RTX_BITS if mask & bit]
            if size != len(data):
                v.append(f"engine {e['path']}: header size {size}, file {len(data)}")
            if rec.get("cc_mask") != mask or rec.get("cc") != ccs:
                v.append(f"engine {e['path']}: header cc {ccs}/{mask}, manifest {rec.get('cc')}/{rec.get('cc_mask')}")
            if e["target"]["cc"] is not None and e["target"]["cc"] not in ccs:
                v.append(f"engine {e['path']}: labelled {e['target']['cc']}, built for {ccs}")
        a, b = hver.split("."), e["backend"]["version"].split(".")
        n = min(len(a), len(b))
        if n < 3 or a[:n] != b[:n]:
            v.append(f"engine {e['path']}: header version {hver}, backend {e['backend']['version']}")
    sums = payload["SHA256SUMS"]
    lines = sums[:-1].split(b"\n") if sums.endswith(b"\n") else None
    table: Dict[str, str] = {}
    for line in lines or [b"?"]:
        mm = re.fullmatch(rb"([0-9a-f]{64})  ([^\x00-\x1f\x7f\\]+)", line)
        if mm is None or mm.group(2).decode("utf-8") in table:
            v.append(f"SHA256SUMS line {line[:80]!r}")
            break
        table[mm.group(2).decode("utf-8")] = mm.group(1).decode()
    if table != {p: d for p, d in dig.items() if p != "SHA256SUMS"}:
        v.append("SHA256SUMS does not list exactly the files with their digests")
