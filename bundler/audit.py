"""`bundle audit`: find every bundle under some paths, verify each, and report on all of them.

An auditor (or a release manager before a delivery) points the audit at a release store, a
stick, or a host's model directory. Every file and directory below the paths is either a bundle
candidate or ignored, and the report lists both. Each candidate is verified by the one verifier
(runtime_stub/verify.py, through `bundler.verify.verify_bundle`), and gets exactly one status:

============== ==============================================================================
verified        every check held (and, with a ledger, every valid signature is in it)
tampered        the file is not what was signed: archive, digest, members, unsafe, limits, a
                signature that claims a trusted key and does not verify, a malformed or
                missing signature, signed metadata that disagrees with the bundle
unknown-signer  well-formed, but no signature is by a key of the trust given
policy-refused  signed by known keys that the trust policy does not count enough of (revoked,
                outside its validity window, not allowed for this name, threshold not met)
expired         a counted signature's signed expiry has passed (an audit never accepts it)
unledgered      verified, but a valid signature is not in the ledger (`--ledger`): made
                outside the official process
missing         a ledger entry whose signature no bundle under the paths carries
error           the candidate could not be read (vanished, permission denied, not a file)
============== ==============================================================================

Nothing read from a bundle, a file name or the ledger is trusted for display: the terminal gets
`printable()`, the HTML `html.escape(printable())` (so the page is ASCII and no bidi control or
markup survives), the JSON is ASCII-escaped. A hostile file can fail its own row, never the
audit: every exception but an interrupt becomes an `error` row.

Kinds. What the audit recognises is a list of `Kind`s (`DEFAULT_KINDS`): each claims its
candidates from the files found, in order, and verifies them to a `VerifyReport`. Part sets
(a split bundle: a signed part index and numbered parts) come *first*, so that they claim their
parts before `claim_tars` would take the first part (which begins with a tar header) for a
bundle.
"""

from __future__ import annotations

import hashlib
import html
import json
import os
import stat
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Dict, Iterable, List, Optional, Sequence, Set, Tuple, Union

from runtime_stub.verify import (
    AUDIT_PREDICATE_TYPE,
    STATEMENT_TYPE,
    LedgerBreak,
    LedgerCheck,
    LedgerEntry,
    LedgerError,
    LedgerHead,
    SignedFileReport,
    TrustedKey,
    TrustPolicy,
    expires_epoch,
    part_index_for,
    printable,
    read_bounded,
    shown_key_id,
    verify_signed_file,
)

from . import __version__
from .archive import Limits
from .errors import BundleError, ExitCode, InputError, OutputError
from .fsutil import fsync_dir, make_workfile, remove_stale, write_all
from .verify import VerifyReport, verify_bundle

AUDIT_FORMAT = "trt-bundler-audit/1"
STATUSES = ("verified", "tampered", "unknown-signer", "policy-refused", "expired", "unledgered", "missing", "error")
MAX_DEPTH = 64  # directory levels below an audited path; deeper ones are listed as ignored
_TIME = "%Y-%m-%dT%H:%M:%SZ"
_LEFTOVER_MARKS = (".partial-", ".staging-")  # unfinished outputs of seal, sign, extract and audit itself

Trust = Union[Dict[str, TrustedKey], TrustPolicy]


# -- discovery -------------------------------------------------------------------------------------

@dataclass
class FoundFile:
    """A regular file found under the audited paths, with its first bytes (for recognising it)."""

    path: Path
    head: bytes
    explicit: bool = False  # named on the command line (always a candidate)
    error: Optional[str] = None  # could not be opened or read


@dataclass
class Candidate:
    """Something the audit verifies: ``kind`` says which `Kind` verifies it."""

    kind: str
    path: Path
    parts: List[Path] = field(default_factory=list)  # further files it stands for (a part set's parts)
    error: Optional[str] = None  # found, but unreadable: reported as an error row


@dataclass
class Ignored:
    path: str
    why: str


@dataclass(frozen=True)
class AuditOptions:
    """What every kind's verifier is given: the trust, the clock every expiry is judged by
    (one instant for the whole audit), and the reader's limits."""

    trusted: Any  # Trust
    now: float
    limits: Limits = Limits()


@dataclass(frozen=True)
class Kind:
    """One kind of thing an audit finds and verifies.

    ``claim`` takes the files found and returns the candidates it recognises, each listing the
    files it stands for (``path`` and ``parts``): those are not offered to later kinds. ``verify``
    verifies one candidate to a `VerifyReport` (it may raise `BundleError` or `OSError`, which
    become an error row). The report's ``signers`` (their ``sha256``) are what ledger entries are
    matched with; its ``manifest`` fills the row's model, targets, precisions and build hosts."""

    name: str
    claim: Callable[[List[FoundFile]], List[Candidate]]
    verify: Callable[[Candidate, AuditOptions], VerifyReport]


def _is_tar_head(head: bytes) -> bool:
    return len(head) >= 262 and head[257:262] == b"ustar"


def claim_tars(files: List[FoundFile]) -> List[Candidate]:
    """Bundle tars: a file with a tar header (ustar magic at byte 257), one whose name ends in
    ``.tar`` whatever it holds (a bundle cut to nothing, or with a damaged first header, must
    show up as tampered, not vanish from the audit), and any file named on the command line.
    The tar's name is not trusted: a renamed bundle is still audited (bundle-format.md 3)."""
    out = []
    for f in files:
        if f.explicit or f.path.name.lower().endswith(".tar") or _is_tar_head(f.head):
            out.append(Candidate("bundle", f.path, error=f.error))
    return out


def verify_path(c: Candidate, opts: AuditOptions) -> VerifyReport:
    """A bundle tar or an extracted bundle directory, by the one verifier."""
    return verify_bundle(c.path, opts.trusted, limits=opts.limits, now=opts.now)


def claim_part_sets(files: List[FoundFile]) -> List[Candidate]:
    """Split bundles (bundle-format.md section 13): one candidate per part index, standing for
    the index and every file beside it named like a part of that split (``SUBJECT.ID.part-K-of-N``),
    so that part 1, which begins with a tar header, is never audited as a bundle tar. Parts whose
    index is not there are one candidate too: their verification says the index is missing (19)."""
    groups: Dict[Path, List[FoundFile]] = {}
    for f in files:
        index = part_index_for(f.path)
        if index is not None:
            groups.setdefault(index, []).append(f)
    out = []
    for index, found in sorted(groups.items()):
        parts = sorted(f.path for f in found if f.path != index)
        error = next((f.error for f in found if f.error), None)
        out.append(Candidate("part-set", index, parts=parts, error=error))
    return out


def verify_part_set(c: Candidate, opts: AuditOptions) -> VerifyReport:
    """The bundle streamed through its verified part set, by the one verifier: through the
    index, or through a part when the index is missing (which the verifier then reports)."""
    target = c.path if c.path.exists() or not c.parts else c.parts[0]
    return verify_bundle(target, opts.trusted, limits=opts.limits, now=opts.now)


# Part sets come first: they claim their parts before `claim_tars` would take part 1 as a tar.
DEFAULT_KINDS: Tuple[Kind, ...] = (Kind("part-set", claim_part_sets, verify_part_set), Kind("bundle", claim_tars, verify_path))
_DIRECTORY = Kind("directory", lambda files: [], verify_path)  # found by the walk, not claimed from files


def _looks_extracted(directory: Path) -> bool:
    """An extracted bundle (`bundle extract`, `tar -x --strip-components=1`): its top holds
    ``manifest.json`` or ``signatures``. Audited as one candidate; it is walked into only if it
    fails verification (a verified one holds nothing but its signed files)."""
    try:
        names = set(os.listdir(directory))
    except OSError:
        return False
    return "manifest.json" in names or "signatures" in names


def _read_head(path: Path) -> Tuple[bytes, Optional[str]]:
    """The first 512 bytes of a regular file, opened so that nothing can hang or redirect the
    read: non-blocking (a FIFO swapped in meanwhile), no symlink followed, regular files only."""
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_NOFOLLOW | os.O_CLOEXEC)
    except OSError as e:
        return b"", f"cannot open ({e.strerror or e})"
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            return b"", "no longer a regular file"
        return os.read(fd, 512), None
    except OSError as e:
        return b"", f"cannot read ({e.strerror or e})"
    finally:
        os.close(fd)


class _Walk:
    """Collects files, extracted-bundle directories and ignored entries below some paths,
    never following a symlink below them, never opening anything but regular files."""

    def __init__(self) -> None:
        self.files: List[FoundFile] = []
        self.dirs: List[Path] = []
        self.ignored: List[Ignored] = []

    def top(self, path: Path) -> None:
        """A path named on the command line: it must exist; a symlink there is followed (the
        auditor named it)."""
        try:
            st = os.stat(path)
        except OSError as e:
            raise InputError(f"{path}: cannot audit ({e.strerror or e})") from None
        if stat.S_ISDIR(st.st_mode):
            if _looks_extracted(path):
                self.dirs.append(path)
            else:
                self.walk(path, 0)
        elif stat.S_ISREG(st.st_mode):
            head, err = _read_head(Path(os.path.realpath(path)))
            self.files.append(FoundFile(path, head, True, err))
        else:
            raise InputError(f"{path}: not a file or directory; give bundle files or directories to audit")

    def walk(self, directory: Path, depth: int) -> None:
        if depth >= MAX_DEPTH:
            self.ignored.append(Ignored(str(directory), f"more than {MAX_DEPTH} directory levels deep: not searched"))
            return
        try:
            with os.scandir(directory) as it:
                entries = sorted(it, key=lambda e: e.name)
        except OSError as e:
            self.ignored.append(Ignored(str(directory), f"cannot list the directory ({e.strerror or e})"))
            return
        for e in entries:
            p = directory / e.name
            try:
                st = e.stat(follow_symlinks=False)
            except OSError as err:
                self.ignored.append(Ignored(str(p), f"cannot stat ({err.strerror or err})"))
                continue
            if stat.S_ISLNK(st.st_mode):
                self.ignored.append(Ignored(str(p), "symbolic link: not followed (audit its target by naming it)"))
            elif stat.S_ISDIR(st.st_mode):
                if _looks_extracted(p):
                    self.dirs.append(p)
                else:
                    self.walk(p, depth + 1)
            elif not stat.S_ISREG(st.st_mode):
                self.ignored.append(Ignored(str(p), "not a regular file (device, FIFO or socket): never opened"))
            elif e.name.startswith(".") and any(m in e.name for m in _LEFTOVER_MARKS):
                self.ignored.append(Ignored(str(p), "an unfinished output of seal, sign, extract or audit (in progress, "
                                                    "or left by a killed run)"))
            else:
                head, err = _read_head(p)
                self.files.append(FoundFile(p, head, False, err))


def _claim(files: List[FoundFile], kinds: Sequence[Kind], ignored: List[Ignored]) -> List[Candidate]:
    """Offer the files to each kind in turn; what no kind claims is ignored (and listed)."""
    left = list(files)
    out: List[Candidate] = []
    for kind in kinds:
        claimed = kind.claim(left)
        taken: Set[Path] = set()
        for c in claimed:
            taken.add(c.path)
            taken.update(c.parts)
        out.extend(claimed)
        left = [f for f in left if f.path not in taken]
    for f in left:
        ignored.append(Ignored(str(f.path), f.error or "not a bundle: no tar header, and no kind claims it"))
    return out


# -- the report ------------------------------------------------------------------------------------

@dataclass
class SignerRow:
    file: str
    key_id: Optional[str]  # as the signature file gives it: show it with `shown_key_id`
    name: str = ""  # the trust policy's name for the key
    valid: Optional[bool] = None  # None: not checked (the key is not trusted)
    counted: bool = False
    reason: str = ""
    expires: Optional[str] = None
    sha256: Optional[str] = None  # of the signature file
    ledger: Optional[LedgerHead] = None  # the head its signed statement records
    ledgered: Optional[bool] = None  # with --ledger: whether the ledger has this signature (None: not checked)
    ledger_entry: Optional[int] = None  # that entry's number


@dataclass
class EngineRow:
    path: str
    target: str
    cc: Optional[str]
    precision: str
    backend: str
    backend_version: str
    host: str
    started: str


@dataclass
class ModelRow:
    path: str
    sha256: str
    precision: str


@dataclass
class AuditRow:
    path: str
    kind: str  # "bundle", "directory", a plugged-in kind, or "ledger-entry" (a missing row)
    status: str
    reason: str = ""
    exit_code: int = 0  # the verification's exit code (0: verified)
    failure_class: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    created: Optional[str] = None  # the seal time the signed manifest records
    sha256: Optional[str] = None  # of the whole tar (null for a directory)
    content_digest: Optional[str] = None  # the signed subject digest
    manifest_sha256: Optional[str] = None
    model: Optional[ModelRow] = None
    targets: List[str] = field(default_factory=list)
    precisions: List[str] = field(default_factory=list)
    build_hosts: List[str] = field(default_factory=list)
    built: Optional[str] = None  # the earliest engine build start
    engines: List[EngineRow] = field(default_factory=list)
    signers: List[SignerRow] = field(default_factory=list)
    parts: List[str] = field(default_factory=list)
    ledger_entries: List[int] = field(default_factory=list)

    def to_dict(self) -> Dict[str, Any]:
        d = asdict(self)
        d["class"] = d.pop("failure_class")
        return d


@dataclass
class LedgerSummary:
    path: str
    ok: bool
    id: Optional[str]
    entries: int  # signing entries before the first break (the init entry not counted)
    head: Optional[LedgerHead]  # the last good entry: record it, and pass it to `ledger verify --head` next time
    broken: Optional[LedgerBreak]


@dataclass
class AuditReport:
    time: str
    paths: List[str]
    trust: Dict[str, Any]
    ledger: Optional[LedgerSummary] = None
    bundles: List[AuditRow] = field(default_factory=list)
    ignored: List[Ignored] = field(default_factory=list)
    ok: bool = False
    exit_code: int = int(ExitCode.INTERNAL)
    message: str = ""
    format: str = AUDIT_FORMAT
    tool: str = f"trt-bundler {__version__}"

    @property
    def summary(self) -> Dict[str, int]:
        counts = {s: 0 for s in STATUSES}
        for r in self.bundles:
            counts[r.status] = counts.get(r.status, 0) + 1
        return counts

    def to_dict(self) -> Dict[str, Any]:
        """The JSON report: the `--json` contract's ``ok``, ``exit_code`` and ``error`` first."""
        error = None if self.ok else {"class": ExitCode(self.exit_code).name.lower(), "member": None,
                                      "message": self.message}
        return {
            "ok": self.ok, "exit_code": self.exit_code, "error": error, "format": self.format, "time": self.time,
            "tool": self.tool, "paths": self.paths, "trust": self.trust,
            "ledger": asdict(self.ledger) if self.ledger is not None else None,
            "summary": self.summary, "bundles": [r.to_dict() for r in self.bundles],
            "ignored": [asdict(i) for i in self.ignored],
        }


def classify(rep: VerifyReport, now: float) -> Tuple[str, str]:
    """The one status of a verification report, and the reason (the verifier's message)."""
    if rep.ok:
        return "verified", ""
    err = rep.error
    assert err is not None
    cls, why = err.failure_class, err.message
    if cls == "binding" and any(s.counted and s.expires and expires_epoch(s.expires) < now for s in rep.signers):
        return "expired", why  # the verifier's expiry check runs right after counting (bundle-format.md 7 step 4)
    if cls != "signature":
        return "tampered", why
    if any(s.valid is False for s in rep.signers):
        return "tampered", why  # a signature that names a trusted key and does not verify
    if any(s.reason.startswith("key revoked") for s in rep.signers) and not any(s.counted for s in rep.signers):
        return "policy-refused", why
    if err.member is not None or why.startswith("trusted signatures disagree") or not rep.signers:
        return "tampered", why  # a malformed, misnamed or missing signature file, or spliced statements
    if not any(s.trusted for s in rep.signers):
        return "unknown-signer", why
    return "policy-refused", why


def _row(c: Candidate, rep: VerifyReport, now: float) -> AuditRow:
    status, why = classify(rep, now)
    row = AuditRow(str(c.path), c.kind, status, why, rep.exit_code,
                   rep.error.failure_class if rep.error is not None else None,
                   rep.name, rep.version, rep.created, rep.sha256, rep.content_digest,
                   parts=[str(p) for p in c.parts])
    row.manifest_sha256 = next((f.sha256 for f in rep.files if f.path == "manifest.json" and f.status == "ok"), None)
    m = rep.manifest
    if m is not None:
        row.model = ModelRow(m.model.path, m.model.sha256, m.model.precision)
        row.engines = [EngineRow(e.path, e.target.label, e.target.cc, e.build.precision, e.backend.name,
                                 e.backend.version, e.host, e.started) for e in m.engines]
        row.targets = sorted({e.target for e in row.engines})
        row.precisions = sorted({e.precision for e in row.engines})
        row.build_hosts = sorted({e.host for e in row.engines})
        row.built = min((e.started for e in row.engines), default=None)
    row.signers = [SignerRow(s.file, s.key_id, s.name, s.valid, s.counted, s.reason, s.expires, s.sha256, s.ledger)
                   for s in rep.signers]
    return row


def _error_row(c: Candidate, e: BaseException) -> AuditRow:
    if isinstance(e, BundleError):
        code, cls, msg = int(e.code), e.failure_class, e.message
    elif isinstance(e, OSError):
        code, cls, msg = int(ExitCode.INPUT), "input", f"{c.path}: cannot read ({e.strerror or e})"
    else:
        code, cls, msg = int(ExitCode.INTERNAL), "internal", f"internal error: {type(e).__name__}: {e}"
    return AuditRow(str(c.path), c.kind, "error", " ".join(msg.split()), code, cls, parts=[str(p) for p in c.parts])


def _trust_summary(trusted: Trust) -> Dict[str, Any]:
    if isinstance(trusted, TrustPolicy):
        keys = trusted.keys
        return {"source": trusted.source, "version": trusted.version,
                "keys": [{"key_id": k, "name": keys[k].name} for k in sorted(keys)],
                "revoked": sorted(trusted.revoked)}
    return {"source": "--trust", "version": 0,
            "keys": [{"key_id": k, "name": trusted[k].name, "file": trusted[k].source} for k in sorted(trusted)],
            "revoked": []}


def _read_ledger(path: Path) -> LedgerCheck:
    from .ledger import read_ledger

    return read_ledger(path)


def _match_ledger(rows: List[AuditRow], start: LedgerCheck, end: LedgerCheck, ledger: Path,
                  names: Dict[str, str]) -> List[AuditRow]:
    """Mark every valid signature ledgered or not; turn verified rows with an unledgered
    signature into `unledgered`; return a `missing` row for each signing entry (of the ledger as
    it was when the audit started) whose signature no audited bundle carries."""
    by_sig: Dict[str, LedgerEntry] = {e.signature_sha256: e for e in end.entries[1:] if e.signature_sha256}
    broken = "" if end.ok else (f" (the ledger's chain is broken at entry {end.broken.seq}: no later entry "
                                "is trusted)" if end.broken else "")
    for row in rows:
        problems = []
        for s in row.signers:
            if not s.valid:
                continue
            who = f"{shown_key_id(s.key_id)[:16]}...{' (' + s.name + ')' if s.name else ''}"
            e = by_sig.get(s.sha256 or "")
            if e is None:
                s.ledgered = False
                other = (f"; its statement records a head of another ledger ({s.ledger.id})"
                         if s.ledger is not None and s.ledger.id != end.id else
                         "; its statement records no ledger head" if s.ledger is None else "")
                problems.append(f"signature {s.file} by {who} is not in the ledger{other}{broken}")
            elif e.key_id != s.key_id or e.content_digest != row.content_digest:
                s.ledgered, s.ledger_entry = False, e.seq
                problems.append(f"signature {s.file} by {who}: ledger entry {e.seq} names another key or content")
            elif s.ledger is None or e.extends is None or (s.ledger.id, s.ledger.seq, s.ledger.sha256) != (
                    e.extends.id, e.extends.seq, e.extends.sha256):
                s.ledgered, s.ledger_entry = False, e.seq
                problems.append(f"signature {s.file} by {who}: the ledger head its statement records is not the one "
                                f"ledger entry {e.seq} extended")
            else:
                s.ledgered, s.ledger_entry = True, e.seq
                row.ledger_entries.append(e.seq)
        if problems and row.status == "verified":
            row.status = "unledgered"
            row.reason = "; ".join(problems) + ": signed outside the official process?"
            row.exit_code, row.failure_class = int(ExitCode.AUDIT), "audit"
    carried = {s.sha256 for row in rows for s in row.signers if s.sha256}
    missing = []
    for e in start.entries[1:]:
        if e.signature_sha256 in carried:
            continue
        who = f"{(e.key_id or '')[:16]}..."
        missing.append(AuditRow(
            f"{ledger}#{e.seq}", "ledger-entry", "missing",
            f"ledger entry {e.seq} ({e.event} of {e.name} {e.version} by {who} at {e.time}, bundle sha256 "
            f"{(e.bundle_sha256 or '')[:16]}...): no bundle under the audited paths carries its signature "
            f"{e.signature}", int(ExitCode.AUDIT), "audit", e.name, e.version, None, e.bundle_sha256,
            e.content_digest, signers=[SignerRow(e.signature or "", e.key_id, names.get(e.key_id or "", ""),
                                                 sha256=e.signature_sha256,
                                                 ledger=e.extends, ledgered=True, ledger_entry=e.seq)],
            ledger_entries=[e.seq]))
    return missing


def audit(paths: Sequence[Path], trusted: Trust, *, ledger: Optional[Path] = None, now: Optional[float] = None,
          limits: Limits = Limits(), kinds: Sequence[Kind] = DEFAULT_KINDS,
          progress: Optional[Callable[[int, int, str], None]] = None) -> AuditReport:
    """Find every bundle (and every plugged-in kind) under ``paths``, verify each against
    ``trusted`` (keys, as ``--trust``, or a policy), and with ``ledger`` match every valid
    signature against the signing ledger. Never raises for what it finds (a bad candidate is a
    row); raises `InputError` for a path that does not exist and the ledger's own errors (no
    such ledger, exit 3). ``progress(done, total, path)`` is called after each candidate."""
    if not paths:
        raise InputError("give at least one file or directory to audit")
    now = time.time() if now is None else now
    opts = AuditOptions(trusted, now, limits)
    report = AuditReport(time.strftime(_TIME, time.gmtime(now)), [str(p) for p in paths], _trust_summary(trusted))
    start = _read_ledger(ledger) if ledger is not None else None  # which entries must be present: those before the audit
    w = _Walk()
    for p in paths:
        w.top(Path(p))
    by_kind = {k.name: k for k in kinds}
    by_kind.setdefault(_DIRECTORY.name, _DIRECTORY)
    queue: List[Candidate] = [Candidate("directory", d) for d in w.dirs] + _claim(w.files, kinds, w.ignored)
    w.dirs, w.files = [], []
    rows: List[AuditRow] = []
    seen: Set[str] = set()  # a path named twice (or a directory and a file in it) is audited once
    done = 0
    while queue:
        c = queue.pop(0)
        real = os.path.realpath(c.path)
        if real in seen:
            continue
        seen.add(real)
        kind = by_kind.get(c.kind)
        try:
            if c.error is not None:
                raise InputError(f"{c.path}: {c.error}")
            if kind is None:  # pragma: no cover - a claimer naming a kind it did not register
                raise InputError(f"{c.path}: no verifier for kind {c.kind!r}")
            rep = kind.verify(c, opts)
            row = _row(c, rep, now)
        except KeyboardInterrupt:
            raise
        except Exception as e:  # noqa: BLE001 - a hostile candidate fails its own row, never the audit
            row, rep = _error_row(c, e), None
        rows.append(row)
        done += 1
        if c.kind == "directory" and (rep is None or not rep.ok):
            # A failed extracted bundle may hold anything: search it like any directory.
            w.walk(c.path, 1)
            queue += [Candidate("directory", d) for d in w.dirs] + _claim(w.files, kinds, w.ignored)
            w.dirs, w.files = [], []
        if progress is not None:
            progress(done, done + len(queue), str(c.path))
    rows.sort(key=lambda r: r.path)
    report.ignored = sorted(w.ignored, key=lambda i: i.path)
    exit_code = ExitCode.OK
    if ledger is not None and start is not None:
        end = _read_ledger(ledger)
        if start.head is not None and (len(end.hashes) <= start.head.seq or end.hashes[start.head.seq] != start.head.sha256
                                       or end.id != start.id):
            raise LedgerError(f"{ledger}: rewritten while the audit ran (entry {start.head.seq} changed); audit again")
        names = {k["key_id"]: k.get("name") or "" for k in report.trust["keys"]}
        rows += _match_ledger(rows, start, end, ledger, names)
        report.ledger = LedgerSummary(str(ledger), end.ok, end.id, max(len(end.entries) - 1, 0), end.head, end.broken)
        if not end.ok:
            exit_code = ExitCode.LEDGER
    report.bundles = rows
    failed = [r for r in rows if r.status != "verified"]
    if failed and exit_code == ExitCode.OK:
        exit_code = ExitCode.AUDIT
    report.exit_code, report.ok = int(exit_code), exit_code == ExitCode.OK
    counts = ", ".join(f"{n} {s}" for s, n in report.summary.items() if n and s != "verified")
    found = sum(1 for r in rows if r.kind != "ledger-entry")
    if exit_code == ExitCode.LEDGER:
        b = report.ledger.broken if report.ledger is not None else None
        assert b is not None
        report.message = (f"{ledger}: the ledger's chain is broken at line {b.line} (entry {b.seq}): {b.reason}"
                          + (f"; also {len(failed)} finding(s): {counts}" if failed else ""))
    elif failed:
        report.message = f"{len(failed)} finding(s) in {found} bundle(s) audited: {counts}"
    else:
        report.message = f"all {found} bundle(s) verified" + (" and in the ledger" if ledger is not None else "")
    return report


# -- renderings: JSON and HTML ------------------------------------------------------------------

def report_json(report: AuditReport) -> bytes:
    """The JSON report exactly as `--json -` prints it: ASCII only, never NaN, indented."""
    return (json.dumps(report.to_dict(), indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def _h(value: Any) -> str:
    """Any value for the page: escaped for the terminal rule first (ASCII, no control or bidi
    character survives), then for HTML (no markup survives, quotes included)."""
    return html.escape(printable("" if value is None else value), quote=True)


_CSS = """
:root { color-scheme: light; }
body { font-family: -apple-system, "Segoe UI", Roboto, "Helvetica Neue", Arial, sans-serif; margin: 2em; color: #111; }
h1 { font-size: 1.5em; margin-bottom: .2em; } h2 { font-size: 1.15em; margin-top: 1.6em; }
table { border-collapse: collapse; width: 100%; margin-top: .5em; }
th, td { border: 1px solid #bbb; padding: 4px 6px; vertical-align: top; text-align: left; font-size: 90%;
         overflow-wrap: anywhere; }
table.fixed { table-layout: fixed; } table.narrow { width: auto; }
th { background: #eee; }
.mono { font-family: "DejaVu Sans Mono", Menlo, Consolas, monospace; font-size: 85%; word-break: break-all; }
.st { font-weight: bold; }
.verdict { font-size: 1.1em; font-weight: bold; padding: .4em .6em; border: 2px solid; display: inline-block; }
.pass { color: #0a5d0a; border-color: #0a5d0a; } .fail { color: #9b0000; border-color: #9b0000; }
tr.st-verified td.st { background: #d8f0d8; }
tr.st-tampered td.st, tr.st-error td.st { background: #f6c9c9; }
tr.st-unknown-signer td.st, tr.st-policy-refused td.st, tr.st-expired td.st { background: #fbe3c0; }
tr.st-unledgered td.st, tr.st-missing td.st { background: #f3d3f3; }
dl.meta { display: grid; grid-template-columns: max-content auto; gap: 2px 1em; }
dl.meta dt { font-weight: bold; } dl.meta dd { margin: 0; }
@media print {
  body { margin: 0; font-size: 9pt; }
  th { background: #ddd !important; }
  tr { page-break-inside: avoid; }
  td, th { padding: 2px 4px; }
  * { -webkit-print-color-adjust: exact; print-color-adjust: exact; }
}
"""


def _signers_html(row: AuditRow) -> str:
    out = []
    for s in row.signers:
        state = ("valid, counted" if s.counted else "valid" if s.valid else
                 "INVALID" if s.valid is False else "not checked (key not trusted)")
        bits = [f'<span class="mono">{_h(shown_key_id(s.key_id))}</span>']
        if s.name:
            bits.append(f"({_h(s.name)})")
        bits.append(_h(state))
        if s.reason:
            bits.append(f"- {_h(s.reason)}")
        if s.expires:
            bits.append(f"expires {_h(s.expires)}")
        if s.ledgered is not None:
            bits.append(f"ledger entry {_h(s.ledger_entry)}" if s.ledgered else "NOT IN THE LEDGER")
        out.append(" ".join(bits))
    return "<br>".join(out) or "-"


def render_html(report: AuditReport) -> str:
    """One self-contained page: inline CSS (with print rules), no script, no external URL, ASCII
    only. One table row per bundle with ``data-status`` and ``data-path`` for tools."""
    title = f"trt-bundler audit {report.time}"
    verdict = "PASSED" if report.ok else f"FAILED (exit {report.exit_code})"
    p: List[str] = [
        "<!DOCTYPE html>", '<html lang="en">', "<head>", '<meta charset="utf-8">',
        f"<title>{_h(title)}</title>", f"<style>{_CSS}</style>", "</head>", "<body>",
        "<h1>Bundle audit</h1>",
        f'<p class="verdict {"pass" if report.ok else "fail"}" id="verdict">{_h(verdict)}: {_h(report.message)}</p>',
        '<dl class="meta">',
        f"<dt>time</dt><dd>{_h(report.time)}</dd>", f"<dt>tool</dt><dd>{_h(report.tool)}</dd>",
        f"<dt>paths</dt><dd>{'<br>'.join(_h(x) for x in report.paths)}</dd>",
    ]
    t = report.trust
    keys = "<br>".join(f'<span class="mono">{_h(k["key_id"])}</span> {_h(k.get("name") or "")}' for k in t["keys"])
    p.append(f"<dt>trust</dt><dd>{_h(t['source'])}" + (f" version {_h(t['version'])}" if t["version"] else "")
             + f"<br>{keys}</dd>")
    if report.ledger is not None:
        lg = report.ledger
        head = (f'entry {_h(lg.head.seq)} <span class="mono">{_h(lg.head.sha256)}</span>' if lg.head else "none")
        state = "chain holds" if lg.ok else (f"BROKEN at line {_h(lg.broken.line)} (entry {_h(lg.broken.seq)}): "
                                             f"{_h(lg.broken.reason)}" if lg.broken else "BROKEN")
        p.append(f"<dt>ledger</dt><dd>{_h(lg.path)}: {state}; {_h(lg.entries)} signing entries; head {head}</dd>")
    p.append("</dl>")
    p.append("<h2>Summary</h2>")
    p.append('<table id="summary" class="narrow"><thead><tr><th>status</th><th>count</th></tr></thead><tbody>')
    for status, n in report.summary.items():
        p.append(f'<tr class="st-{_h(status)}" data-status="{_h(status)}"><td class="st">{_h(status)}</td>'
                 f"<td>{_h(n)}</td></tr>")
    p.append("</tbody></table>")
    p.append("<h2>Bundles</h2>")
    cols = (("status", 10), ("bundle", 10), ("signers (key id, name)", 14), ("model", 12), ("targets", 6),
            ("precisions", 6), ("digests", 17), ("built", 10), ("reason", 15))
    p.append('<table id="bundles" class="fixed"><colgroup>' + "".join(f'<col style="width:{w}%">' for _, w in cols)
             + "</colgroup><thead><tr>" + "".join(f"<th>{_h(c)}</th>" for c, _ in cols) + "</tr></thead><tbody>")
    for r in report.bundles:
        bundle = f"<b>{_h(r.name or '?')} {_h(r.version or '')}</b><br>" + f'<span class="mono">{_h(r.path)}</span>'
        if r.kind != "bundle":
            bundle += f"<br>({_h(r.kind)})"
        if r.parts:
            bundle += "<br>parts: " + ", ".join(f'<span class="mono">{_h(x)}</span>' for x in r.parts)
        model = (f'{_h(r.model.path)} ({_h(r.model.precision)})<br><span class="mono">{_h(r.model.sha256)}</span>'
                 if r.model else "-")
        digests = "<br>".join(f'{label} <span class="mono">{_h(v)}</span>' for label, v in (
            ("bundle", r.sha256), ("manifest", r.manifest_sha256), ("content", r.content_digest)) if v) or "-"
        built = (f"{', '.join(_h(h) for h in r.build_hosts)}<br>{_h(r.built)}" if r.build_hosts else "-")
        if r.created:
            built += f"<br>sealed {_h(r.created)}"
        cells = [f'<td class="st">{_h(r.status)}</td>', f"<td>{bundle}</td>", f"<td>{_signers_html(r)}</td>",
                 f"<td>{model}</td>", f"<td>{', '.join(_h(x) for x in r.targets) or '-'}</td>",
                 f"<td>{', '.join(_h(x) for x in r.precisions) or '-'}</td>", f"<td>{digests}</td>",
                 f"<td>{built}</td>", f"<td>{_h(r.reason) or '-'}</td>"]
        p.append(f'<tr class="st-{_h(r.status)}" data-status="{_h(r.status)}" data-path="{_h(r.path)}">'
                 + "".join(cells) + "</tr>")
    if not report.bundles:
        p.append(f'<tr><td colspan="{len(cols)}">no bundle found under the audited paths</td></tr>')
    p.append("</tbody></table>")
    engines = [(r, e) for r in report.bundles for e in r.engines]
    if engines:
        p.append("<h2>Engines</h2>")
        ecols = ("bundle", "engine", "target", "cc", "precision", "backend", "build host", "build start")
        p.append('<table id="engines" class="fixed"><thead><tr>' + "".join(f"<th>{_h(c)}</th>" for c in ecols) + "</tr></thead><tbody>")
        for r, e in engines:
            p.append("<tr>" + "".join(f"<td>{v}</td>" for v in (
                f'{_h(r.name)} {_h(r.version)}<br><span class="mono">{_h(r.path)}</span>', f'<span class="mono">{_h(e.path)}</span>', _h(e.target),
                _h(e.cc or "-"), _h(e.precision), f"{_h(e.backend)} {_h(e.backend_version)}", _h(e.host),
                _h(e.started))) + "</tr>")
        p.append("</tbody></table>")
    if report.ignored:
        p.append(f"<h2>Ignored ({len(report.ignored)})</h2>")
        p.append('<table id="ignored" class="fixed"><thead><tr><th>path</th><th>why</th></tr></thead><tbody>')
        for i in report.ignored:
            p.append(f'<tr><td class="mono">{_h(i.path)}</td><td>{_h(i.why)}</td></tr>')
        p.append("</tbody></table>")
    p += ["</body>", "</html>", ""]
    return "\n".join(p)


# -- writing the report, signing it, checking a signed one -----------------------------------------

SIG_SUFFIX = ".sig"
MAX_SIG_FILE = 1 << 20


def output_paths(json_path: Optional[Path], html_path: Optional[Path], signed: bool) -> List[Path]:
    """Every file a report run will create (``FILE.sig`` beside each when ``signed``)."""
    out: List[Path] = []
    for p in (json_path, html_path):
        if p is not None:
            out.append(Path(p))
            if signed:
                out.append(Path(str(p) + SIG_SUFFIX))
    return out


def check_outputs(paths: Iterable[Path]) -> None:
    """Before anything is verified: every output must be new, in an existing directory, and
    named once. A report, and above all a signed one (an auditor's sign-off), is never replaced."""
    seen: Set[str] = set()
    for p in paths:
        key = os.path.abspath(p)
        if key in seen:
            raise InputError(f"{p}: named twice as an output")
        seen.add(key)
        if p.exists() or p.is_symlink():
            raise OutputError(f"{p}: already exists; reports are never overwritten (pick a new name)")
        if not p.parent.is_dir():
            raise OutputError(f"{p}: its directory {p.parent} does not exist")


def sign_report_file(data: bytes, name: str, key: Any, report: AuditReport) -> bytes:
    """A detached signature over one report file: the bundle signatures' envelope (sigstore
    bundle v0.3, DSSE, in-toto statement v1, ECDSA P-256, the same key ids), but its own
    predicate type, so a report's signature can never pass for a bundle's, nor the reverse."""
    from .signing import sign_statement

    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": name, "digest": {"sha256": hashlib.sha256(data).hexdigest()}}],
        "predicateType": AUDIT_PREDICATE_TYPE,
        "predicate": {"format": AUDIT_FORMAT, "time": report.time, "tool": report.tool,
                      "exit_code": report.exit_code, "summary": report.summary},
    }
    return sign_statement(json.dumps(statement, indent=2).encode("ascii"), key)


def _stage(final: Path, data: bytes) -> Path:
    """``data`` in a synced 0644 temporary file beside ``final`` (leftovers of killed runs
    removed first); the caller links it into place."""
    prefix = f".{final.name}.partial-"
    remove_stale(final.parent, prefix)
    try:
        fd, tmp = make_workfile(final.parent, prefix)
    except OSError as e:
        raise OutputError(f"{final}: cannot write there ({e.strerror or e})") from None
    try:
        try:
            write_all(fd, data)
            os.fchmod(fd, 0o644)
            os.fsync(fd)
        finally:
            os.close(fd)
    except BaseException as e:
        tmp.unlink(missing_ok=True)
        if isinstance(e, OSError):
            raise OutputError(f"{final}: cannot write ({e.strerror or e})") from None
        raise
    return tmp


def publish_report(report: AuditReport, *, json_path: Optional[Path] = None, html_path: Optional[Path] = None,
                   key: Any = None) -> List[Path]:
    """Write the JSON and/or HTML report (and with ``key`` a ``.sig`` beside each) all or
    nothing: every file is staged and synced under a temporary name first, then linked into
    place without replacing anything; if any step fails or is interrupted, the files already
    linked are removed again. Returns the paths written."""
    from .seal import _publish

    outputs: List[Tuple[Path, bytes]] = []
    if json_path is not None:
        outputs.append((Path(json_path), report_json(report)))
    if html_path is not None:
        outputs.append((Path(html_path), render_html(report).encode("ascii")))
    if key is not None:
        outputs += [(Path(str(p) + SIG_SUFFIX), sign_report_file(data, p.name, key, report)) for p, data in list(outputs)]
    check_outputs([p for p, _ in outputs])
    staged: List[Tuple[Path, Path]] = []
    published: List[Path] = []
    try:
        for final, data in outputs:
            staged.append((_stage(final, data), final))
        for tmp, final in staged:
            try:
                _publish(tmp, final)
            except OSError as e:
                raise OutputError(f"{final}: cannot write ({e.strerror or e})") from None
            published.append(final)
        for d in {final.parent for _, final in staged}:
            fsync_dir(d)
    except BaseException:
        for tmp, _ in staged:
            tmp.unlink(missing_ok=True)
        for final in published:
            final.unlink(missing_ok=True)
        raise
    return published


def _sha256_file(path: Path) -> str:
    try:
        fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK | os.O_CLOEXEC)
    except FileNotFoundError:
        raise InputError(f"{path}: no such file") from None
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    h = hashlib.sha256()
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise InputError(f"{path}: not a regular file")
        while True:
            chunk = os.read(fd, 1 << 20)
            if not chunk:
                break
            h.update(chunk)
    except OSError as e:
        raise InputError(f"{path}: cannot read ({e.strerror or e})") from None
    finally:
        os.close(fd)
    return h.hexdigest()


def verify_report_signatures(files: Sequence[Path], trusted: Dict[str, TrustedKey],
                             signatures: Optional[Sequence[Path]] = None) -> List[SignedFileReport]:
    """Check signed report files (`bundle audit-verify`): each ``FILE`` against ``FILE.sig``
    (or the matching entry of ``signatures``) and the auditors' keys, by the shared rule
    (`verify_signed_file` in runtime_stub/verify.py). Raises at the first failure: 3 (a file
    or signature missing), 11 (not signed by a trusted key, malformed), 12 (the file changed)."""
    from .signing import ecdsa_fast

    if signatures is not None and len(signatures) != len(files):
        raise InputError("give one --sig per report file, or none (FILE.sig is used)")
    out = []
    for i, f in enumerate(files):
        f = Path(f)
        sig = Path(signatures[i]) if signatures is not None else Path(str(f) + SIG_SUFFIX)
        digest = _sha256_file(f)
        try:
            raw = read_bounded(sig, MAX_SIG_FILE, InputError, "signature file")
        except InputError as e:
            raise InputError(f"{e.message} (a signed report has its signature beside it as {f.name}{SIG_SUFFIX})") from None
        out.append(verify_signed_file(digest, raw, str(f), str(sig), trusted, ecdsa=ecdsa_fast))
    return out
