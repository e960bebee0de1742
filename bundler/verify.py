"""The verification pipeline: one streaming pass, signature first, fail closed.

Order (docs/bundle-format.md, "Verification"):

1. The first members are ``ROOT/signatures/*.sig``. Each parses; at least one verifies under a
   trusted key (a key shipped inside the bundle is never trusted); all trusted ones agree.
2. The signed subject name is the bundle's top directory (binds name and version).
3. ``manifest.json`` comes next; its digest is in the signed list. It gives every payload size,
   so an oversized member is refused from its header, before its data is read.
4. Every further member is hashed as it streams and compared with the signed list; nothing
   extra, missing or twice; engine headers agree with the manifest; nothing after the end.

The result is a `VerifyReport` that holds every check, never printed here. Extraction reuses the
same pass with a sink that writes into a staging directory, moved into place only on success.
"""

from __future__ import annotations

import dataclasses
import os
import shutil
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Dict, List, Optional, Set

from .archive import CHUNK, AsyncSha256, DirectFile, Limits, Member, StrictTarReader
from .fsutil import make_workdir, remove_stale, rename_noreplace
from .engine_header import HEADER_SIZE, HeaderError, parse_header, version_matches
from .errors import (
    ArchiveError,
    BindingError,
    DigestError,
    ExitCode,
    HostError,
    KEY_ID_RE,
    InputError,
    LimitsError,
    MembersError,
    OutputError,
    SignatureError,
    UnsafeMemberError,
    VerificationError,
)
from .manifest import FORMAT_VERSION, EngineHeader, Manifest, SchemaError, parse_json
from .versioning import check_bundle_name, check_version
from .seal import MANIFEST, SHA256SUMS
from .signing import (
    SIGNATURES_DIR,
    Statement,
    TrustedKey,
    parse_signature_file,
    parse_statement,
    verify_signature,
)

MAX_SIGNATURE_SIZE = 1 << 20
MAX_SIGNATURES = 16
MAX_MANIFEST_SIZE = 16 << 20


@dataclass
class SignerReport:
    file: str
    key_id: Optional[str]
    trusted: bool
    valid: Optional[bool]  # None: not checked (no trusted key to check it with)
    trust_source: Optional[str] = None


@dataclass
class FileReport:
    path: str
    expected_size: Optional[int]
    expected_sha256: Optional[str]
    size: Optional[int] = None
    sha256: Optional[str] = None
    status: str = "pending"  # ok | size-mismatch | digest-mismatch | missing | extra | pending


@dataclass
class EngineReport:
    path: str
    target: str
    cc: Optional[str]
    backend: str
    backend_version: str
    header: Optional[EngineHeader] = None
    header_ok: Optional[bool] = None
    runnable_here: Optional[bool] = None
    reason: str = ""


@dataclass
class GpuReport:
    index: int
    name: str
    cc: str
    driver: str


@dataclass
class HostReport:
    gpus: List[GpuReport] = field(default_factory=list)
    runtimes: Dict[str, str] = field(default_factory=dict)
    runnable: List[str] = field(default_factory=list)
    required: bool = False


@dataclass
class Failure:
    code: int
    failure_class: str
    member: Optional[str]
    message: str


@dataclass
class VerifyReport:
    bundle: str
    ok: bool = False
    exit_code: int = int(ExitCode.INTERNAL)
    error: Optional[Failure] = None
    sha256: Optional[str] = None  # of the whole bundle file, when it was read to the end
    root: Optional[str] = None
    name: Optional[str] = None
    version: Optional[str] = None
    created: Optional[str] = None
    signers: List[SignerReport] = field(default_factory=list)
    files: List[FileReport] = field(default_factory=list)
    engines: List[EngineReport] = field(default_factory=list)
    host: Optional[HostReport] = None
    extracted_to: Optional[str] = None

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        if d["error"] is not None:
            d["error"]["class"] = d["error"].pop("failure_class")
        return d


# -- the sinks: where verified bytes go ---------------------------------------------------------

DIRECT_MIN = CHUNK  # members that fill a whole reader chunk are written with O_DIRECT

class _Sink:
    def begin(self, rel: str, mode: int) -> None: ...
    def write(self, chunk: memoryview) -> None: ...
    def end(self) -> None: ...
    def mkdir(self, rel: str) -> None: ...


class _ExtractSink(_Sink):
    """Writes members under a fresh staging directory, with O_NOFOLLOW|O_EXCL at every step.

    Paths were already checked by the reader; walking by directory file descriptors means that
    even a racing local attacker cannot redirect a write through a symlink.
    """

    def __init__(self, dest: Path) -> None:
        self.dest = dest
        # Leftovers of an extraction into the same place that was SIGKILLed are removed first.
        remove_stale(dest.parent, f".{dest.name}.staging-")
        self.staging = make_workdir(dest.parent, f".{dest.name}.staging-")
        self._root_fd = os.open(self.staging, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW)
        self._fd: Optional[int] = None
        self._out: Optional[DirectFile] = None

    def _dir_fd(self, parts: List[str]) -> int:
        fd = os.dup(self._root_fd)
        for p in parts:
            try:
                os.mkdir(p, 0o755, dir_fd=fd)
            except FileExistsError:
                pass
            nfd = os.open(p, os.O_RDONLY | os.O_DIRECTORY | os.O_NOFOLLOW, dir_fd=fd)
            os.close(fd)
            fd = nfd
        return fd

    def _failed(self, rel: str, e: OSError) -> OutputError:
        # A write error is about this host (disk full, name too long for this filesystem), not
        # the bundle: OUTPUT, never the ARCHIVE "read error" that _run makes of a bare OSError.
        return OutputError(f"{self.dest}: cannot write {rel or '.'}: {e.strerror or e}")

    def mkdir(self, rel: str) -> None:
        if rel:
            try:
                os.close(self._dir_fd(rel.split("/")))
            except OSError as e:
                raise self._failed(rel, e) from None

    def begin(self, rel: str, mode: int) -> None:
        parts = rel.split("/")
        try:
            dfd = self._dir_fd(parts[:-1])
            try:
                perm = 0o755 if mode & 0o111 else 0o644
                self._fd = os.open(parts[-1], os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, perm, dir_fd=dfd)
                os.fchmod(self._fd, perm)
            finally:
                os.close(dfd)
        except OSError as e:
            raise self._failed(rel, e) from None

    def write(self, chunk: memoryview) -> None:
        assert self._fd is not None
        try:
            if self._out is None:
                # A member that arrives in whole reader chunks is big: write it with O_DIRECT
                # (docs/performance.md); small ones go through the page cache as before.
                self._out = DirectFile(self._fd, direct=len(chunk) >= DIRECT_MIN)
            self._out.write(chunk)
        except OSError as e:
            raise self._failed("a member", e) from None

    def end(self) -> None:
        # Forget the number before closing it: a signal that lands right after close() must not
        # make abort() close it again (EBADF, or worse, another file that took the number).
        self._out = None
        fd, self._fd = self._fd, None
        if fd is not None:
            os.close(fd)

    def _close_root(self) -> None:
        fd, self._root_fd = self._root_fd, -1  # never close a number twice
        if fd >= 0:
            os.close(fd)

    def commit(self) -> None:
        self.end()
        os.fchmod(self._root_fd, 0o755)  # mkdtemp made it 0700
        self._close_root()
        rename_noreplace(self.staging, self.dest)

    def abort(self) -> None:
        """Remove the staging directory. Runs while another error (or a signal) is on its way
        out, so nothing here may raise in its place."""
        for step in (self.end, self._close_root):
            try:
                step()
            except OSError:
                pass
        shutil.rmtree(self.staging, ignore_errors=True)


# -- the pipeline -------------------------------------------------------------------------------

class _State:
    def __init__(self, report: VerifyReport) -> None:
        self.report = report
        self.statement: Optional[Statement] = None
        self.manifest: Optional[Manifest] = None
        self.expected_sizes: Dict[str, int] = {}
        self.files: Dict[str, FileReport] = {}
        self.dirs: Set[str] = set()
        self.engine_heads: Dict[str, bytes] = {}
        self.sums_raw: Optional[bytes] = None


def verify_bundle(
    path: Path,
    trusted: Dict[str, TrustedKey],
    *,
    limits: Limits = Limits(),
    require_host: bool = False,
    extract_to: Optional[Path] = None,
    progress: Optional[Callable[[int, int], None]] = None,
) -> VerifyReport:
    """Verify a bundle tar against trusted keys; optionally extract it into ``extract_to``.

    Never raises for a bad bundle: the report carries the failure, its class and exit code.
    Raises `InputError`/`OutputError` for problems with the request itself (no such file,
    destination exists), which are not findings about the bundle.
    """
    path = Path(path)
    if not path.is_file():
        raise InputError(f"{path}: no such bundle file")
    if not trusted:
        raise InputError("no trusted key given (--trust KEY.pub); a key inside the bundle is never trusted")
    sink: Optional[_ExtractSink] = None
    if extract_to is not None:
        extract_to = Path(extract_to)
        if extract_to.exists() or extract_to.is_symlink():
            raise OutputError(f"{extract_to}: already exists; extraction never overwrites")
        if not extract_to.parent.is_dir():
            raise OutputError(f"{extract_to.parent}: no such directory")
        try:
            sink = _ExtractSink(extract_to)
        except OSError as e:
            raise OutputError(f"{extract_to.parent}: cannot create a staging directory there ({e.strerror})") from None
    report = VerifyReport(bundle=str(path))
    state = _State(report)
    try:
        with open(path, "rb") as f:
            total = os.fstat(f.fileno()).st_size
            reader = StrictTarReader(f, limits)
            try:
                _run(reader, trusted, state, sink, lambda: progress(reader.position, total) if progress else None)
            except OSError as e:
                raise ArchiveError(f"read error at byte {reader.position}: {e.strerror or e}") from None
            report.sha256 = reader.archive_sha256
        _check_manifest_semantics(state)
        report.host = host_report(state.manifest, report.engines, required=require_host)
        if require_host and not report.host.runnable:
            raise HostError("no engine in this bundle can run on this host (see the host section of the report)")
        if sink is not None:
            sink.commit()
            report.extracted_to = str(extract_to)
        report.ok = True
        report.exit_code = int(ExitCode.OK)
    except VerificationError as e:
        report.ok = False
        report.exit_code = int(e.code)
        report.error = Failure(int(e.code), e.failure_class, e.member, e.message)
        if sink is not None:
            sink.abort()
    except BaseException:
        if sink is not None:
            sink.abort()
        raise
    report.files = sorted(state.files.values(), key=lambda r: r.path)
    return report


def _rel(root: str, m: Member) -> str:
    if m.name == root:
        return ""
    if not m.name.startswith(root + "/"):
        raise UnsafeMemberError(f"{m.name}: outside the bundle's top directory {root}/", member=m.name)
    return m.name[len(root) + 1 :]


def _run(reader: StrictTarReader, trusted: Dict[str, TrustedKey], st: _State, sink: Optional[_ExtractSink], tick) -> None:  # noqa: ANN001
    report = st.report
    member = reader.next()
    if member is None:
        raise ArchiveError("empty archive: no members")
    root = member.name.split("/", 1)[0]
    report.root = root

    # 1. signatures, which must come first
    sig_files: List[tuple] = []
    while member is not None:
        rel = _rel(root, member)
        if member.is_dir:
            st.dirs.add(rel)
            member = reader.next()
            continue
        if not rel.startswith(SIGNATURES_DIR + "/"):
            break
        name = rel[len(SIGNATURES_DIR) + 1 :]
        if "/" in name or not name.endswith(".sig"):
            raise SignatureError(f"{member.name}: only signatures/*.sig files may live in signatures/", member=member.name)
        if member.size > MAX_SIGNATURE_SIZE:
            raise LimitsError(f"{member.name}: signature file of {member.size} bytes is over the limit", member=member.name)
        if len(sig_files) >= MAX_SIGNATURES:
            raise LimitsError(f"more than {MAX_SIGNATURES} signature files", member=member.name)
        buf = bytearray()
        reader.read_data(buf.extend)
        sig_files.append((member.name, rel, bytes(buf)))
        if sink is not None:
            sink.begin(rel, member.mode)
            sink.write(memoryview(buf))
            sink.end()
        member = reader.next()
    if not sig_files:
        raise SignatureError(f"no signature: a bundle's first members must be {root}/{SIGNATURES_DIR}/*.sig")
    st.statement = _check_signatures(sig_files, trusted, report)
    if st.statement.subject != root:
        raise BindingError(
            f"the signature is for {st.statement.subject!r} but the bundle's directory is {root!r}", member=root
        )
    signed = st.statement.resources
    for p, d in signed.items():
        st.files[p] = FileReport(p, None, d)
    if MANIFEST not in signed:
        raise BindingError(f"the signed file list has no {MANIFEST}; not a bundle of this format")
    # A directory member must be a parent of a signed path: checked as each one arrives, so an
    # archive of a million unsigned directories costs extraction no more than verification.
    parents = _parents(list(signed) + [rel for _, rel, _ in sig_files])
    for d in sorted(st.dirs):
        _check_dir(root, d, parents)

    # 2. manifest.json, then everything else, hashed as it streams
    first_payload = True
    while member is not None:
        rel = _rel(root, member)
        if member.is_dir:
            _check_dir(root, rel, parents)
            st.dirs.add(rel)
            if sink is not None:
                sink.mkdir(rel)
            member = reader.next()
            continue
        if first_payload and rel != MANIFEST:
            raise MembersError(f"{member.name}: {MANIFEST} must come right after the signatures", member=member.name)
        first_payload = False
        if rel.startswith(SIGNATURES_DIR + "/"):
            raise MembersError(f"{member.name}: signature file after the payload began", member=member.name)
        fr = st.files.get(rel)
        if fr is None:
            st.files[rel] = FileReport(rel, None, None, size=member.size, status="extra")
            raise MembersError(f"{member.name}: extra member, not in the signed file list", member=member.name)
        expected_size = st.expected_sizes.get(rel)
        fr.expected_size = expected_size
        if expected_size is not None and member.size != expected_size:
            fr.size, fr.status = member.size, "size-mismatch"
            raise DigestError(
                f"{member.name}: size {member.size} differs from the signed {expected_size}", member=member.name
            )
        if rel in (MANIFEST, SHA256SUMS) and member.size > MAX_MANIFEST_SIZE:
            raise LimitsError(f"{member.name}: {rel} of {member.size} bytes is over the limit", member=member.name)
        h = AsyncSha256()  # fed by the reader on its own thread, beside the archive digest
        keep: Optional[bytearray] = bytearray() if rel in (MANIFEST, SHA256SUMS) else None
        head = bytearray()
        want_head = rel.startswith("engines/") and not rel.endswith(".log")

        def consume(chunk: memoryview) -> None:
            if keep is not None:
                keep.extend(chunk)
            if want_head and len(head) < HEADER_SIZE:
                head.extend(chunk[: HEADER_SIZE - len(head)])
            if sink is not None:
                sink.write(chunk)
            tick()

        if sink is not None:
            sink.begin(rel, member.mode)
        reader.read_data(consume, digest=h)
        if sink is not None:
            sink.end()
        fr.size, fr.sha256 = member.size, h.hexdigest()
        if fr.sha256 != fr.expected_sha256:
            fr.status = "digest-mismatch"
            raise DigestError(f"{member.name}: SHA-256 differs from the signed digest", member=member.name)
        fr.status = "ok"
        if want_head:
            st.engine_heads[rel] = bytes(head)
        if rel == MANIFEST:
            assert keep is not None
            _load_manifest(bytes(keep), st, root)
        elif rel == SHA256SUMS:
            assert keep is not None
            st.sums_raw = bytes(keep)
        member = reader.next()
    if not reader.finished:  # pragma: no cover - next() returns None only at the end
        raise ArchiveError("archive did not end cleanly")
    missing = sorted(p for p, fr in st.files.items() if fr.status == "pending")
    for p in missing:
        st.files[p].status = "missing"
    if missing:
        raise MembersError(f"{root}/{missing[0]}: signed member missing from the bundle" +
                           (f" (and {len(missing) - 1} more)" if len(missing) > 1 else ""), member=f"{root}/{missing[0]}")


def _parents(paths: List[str]) -> Set[str]:
    """Every directory that holds a signed path, the bundle's top directory ("") included."""
    out = {""}
    for p in paths:
        parts = p.split("/")[:-1]
        for i in range(1, len(parts) + 1):
            out.add("/".join(parts[:i]))
    return out


def _check_dir(root: str, rel: str, parents: Set[str]) -> None:
    if rel not in parents:
        raise MembersError(f"{root}/{rel}/: directory member that holds no signed file", member=f"{root}/{rel}")


def _short_key_id(hint: Optional[str]) -> str:
    """A key hint in a message: it was read before anything was authenticated, so only a real
    key id (64 lowercase hex) is quoted, shortened; anything else is named, never echoed."""
    if hint is None:
        return "unknown"
    return hint[:16] + "..." if KEY_ID_RE.match(hint) else "invalid-hint"


def _check_signatures(sig_files: List[tuple], trusted: Dict[str, TrustedKey], report: VerifyReport) -> Statement:
    statements: List[Statement] = []
    for full, rel, raw in sig_files:
        sf = parse_signature_file(raw, full)
        candidates = [trusted[sf.hint]] if sf.hint in trusted else ([] if sf.hint else list(trusted.values()))
        sr = SignerReport(file=rel, key_id=sf.hint, trusted=False, valid=None)
        report.signers.append(sr)
        for tk in candidates:
            if verify_signature(sf, tk.key):
                sr.key_id, sr.trusted, sr.valid, sr.trust_source = tk.key_id, True, True, tk.source
                statements.append(parse_statement(sf.payload, full))
                break
        else:
            if candidates:
                sr.trusted, sr.valid = sf.hint is not None, False
                raise SignatureError(
                    f"{full}: signature does not verify under trusted key {candidates[0].key_id[:16]}...", member=full
                )
    if not statements:
        signers = ", ".join(sorted(_short_key_id(s.key_id) for s in report.signers))
        trusted_ids = ", ".join(sorted(k[:16] + "..." for k in trusted))
        raise SignatureError(f"no signature from a trusted key (signed by {signers}; trusted: {trusted_ids})")
    first = statements[0]
    for s in statements[1:]:
        if s.resources != first.resources or s.subject != first.subject:
            raise SignatureError("trusted signatures disagree about the bundle's contents")
    return first


def _load_manifest(raw: bytes, st: _State, root: str) -> None:
    try:
        m = parse_json(Manifest, raw, MANIFEST)
    except SchemaError as e:
        raise BindingError(f"{root}/{MANIFEST}: {e}", member=f"{root}/{MANIFEST}") from None
    st.manifest = m
    r = st.report
    r.name, r.version, r.created = m.name, m.version, m.created
    where = f"{root}/{MANIFEST}"
    if m.format != FORMAT_VERSION:
        raise BindingError(f"{where}: format {m.format!r}; this verifier knows {FORMAT_VERSION}", member=where)
    try:
        check_version(m.version)
        check_bundle_name(m.name)
    except InputError as e:
        raise BindingError(f"{where}: {e.message}", member=where) from None
    if m.root != root:
        raise BindingError(
            f"{root}/{MANIFEST}: names {m.name} {m.version}, which does not match the directory {root}",
            member=f"{root}/{MANIFEST}",
        )
    assert st.statement is not None
    signed = st.statement.resources
    listed = {f.path: f for f in m.files}
    expected = set(listed) | {MANIFEST, SHA256SUMS}
    if expected != set(signed):
        diff = sorted(expected ^ set(signed))
        raise BindingError(f"{root}/{MANIFEST}: file list differs from the signed list ({diff[0]})", member=f"{root}/{MANIFEST}")
    for p, f in listed.items():
        if f.sha256 != signed[p]:
            raise BindingError(f"{root}/{MANIFEST}: digest of {p} differs from the signed list", member=f"{root}/{p}")
        st.expected_sizes[p] = f.size
        st.files[p].expected_size = f.size
    # Everything the manifest points at must be a signed file, with the digest it claims.
    mf = listed.get(m.model.path)
    if mf is None or mf.sha256 != m.model.sha256 or mf.size != m.model.size:
        raise BindingError(f"{where}: source model {m.model.path} is not listed with its size and digest", member=where)
    refs = [e.log for e in m.engines] + ([m.golden.inputs, m.golden.outputs] if m.golden else [])
    for ref in refs:
        if ref not in listed:
            raise BindingError(f"{where}: refers to {ref}, which is not a signed file", member=where)
    for v in m.variants:
        vf = listed.get(v.graph)
        if vf is None or vf.sha256 != v.sha256 or vf.size != v.size:
            raise BindingError(f"{where}: {v.precision} graph {v.graph} is not listed with its size and digest", member=where)
    # Every engine says which graph it was built from: the source's own precision or a variant.
    graphs = {m.model.precision: m.model.sha256}
    graphs.update({v.precision: v.sha256 for v in m.variants})
    for e in m.engines:
        if e.build.precision not in graphs:
            raise BindingError(f"{where}: engine {e.path} is {e.build.precision}, but no graph of that precision is signed", member=where)
        if e.header is None and e.sha256 != graphs[e.build.precision]:
            raise BindingError(f"{where}: cpu engine {e.path} is not the signed {e.build.precision} graph", member=where)
    for e in m.engines:
        f = listed.get(e.path)
        if f is None or f.sha256 != e.sha256 or f.size != e.size:
            raise BindingError(f"{root}/{MANIFEST}: engine {e.path} is not listed with its size and digest", member=f"{root}/{e.path}")
        st.report.engines.append(
            EngineReport(e.path, e.target.label, e.target.cc, e.backend.name, e.backend.version)
        )


def _check_manifest_semantics(st: _State) -> None:
    """Checks that need the whole pass: engine headers against the manifest, SHA256SUMS."""
    m = st.manifest
    root = st.report.root
    if m is None:  # pragma: no cover - the signed list always holds manifest.json
        raise BindingError("no manifest")
    by_path = {e.path: e for e in m.engines}
    for er in st.report.engines:
        rec = by_path[er.path]
        member = f"{root}/{er.path}"
        if rec.header is None:
            # Only the cpu target ships without an engine header; anything else claiming that is
            # a way around the header cross-check, and so is a TensorRT engine labelled as cpu.
            is_engine = True
            try:
                parse_header(st.engine_heads.get(er.path, b""))
            except HeaderError:
                is_engine = False
            if rec.backend.name != "onnxruntime" or rec.target.label != "cpu" or is_engine:
                er.header_ok = False
                raise BindingError(f"{member}: manifest records no engine header, but this is not a cpu-target ONNX file", member=member)
            continue
        try:
            header = parse_header(st.engine_heads.get(er.path, b""), rec.size)
        except HeaderError as e:
            er.header_ok = False
            raise BindingError(f"{member}: engine header unreadable ({e})", member=member) from None
        er.header = header
        problems = []
        if header.product != rec.header.product or header.version != rec.header.version:
            problems.append(f"header says {header.product} {header.version}, manifest {rec.header.product} {rec.header.version}")
        if header.cc != rec.header.cc or header.cc_mask != rec.header.cc_mask:
            problems.append(f"header targets {header.cc}, manifest {rec.header.cc}")
        if header.product == "tensorrt-rtx" and rec.target.cc is not None and rec.target.cc not in (header.cc or []):
            problems.append(f"labelled for {rec.target.cc} but built for {header.cc}")
        if not version_matches(header.version, rec.backend.version):
            problems.append(f"built by {rec.backend.name} {rec.backend.version} but the header says {header.version}")
        if problems:
            er.header_ok = False
            raise BindingError(f"{member}: " + "; ".join(problems), member=member)
        er.header_ok = True
    if st.sums_raw is not None:
        expected = {p: fr.expected_sha256 for p, fr in st.files.items() if p != SHA256SUMS}
        got: Dict[str, str] = {}
        for line in st.sums_raw.decode("utf-8", "replace").splitlines():
            digest, _, p = line.partition("  ")
            got[p] = digest
        if got != expected:
            raise BindingError(f"{root}/{SHA256SUMS}: does not list exactly the signed files and digests", member=f"{root}/{SHA256SUMS}")


# -- host check ---------------------------------------------------------------------------------

_RUNTIME_DISTS = (
    ("tensorrt_rtx", "tensorrt-rtx", ("tensorrt-rtx-cu13", "tensorrt-rtx-cu12", "tensorrt-rtx")),
    ("tensorrt", "tensorrt", ("tensorrt", "tensorrt-cu13", "tensorrt-cu12", "tensorrt-cu11")),
    ("tensorrt_lean", "tensorrt", ("tensorrt-lean", "tensorrt-lean-cu13", "tensorrt-lean-cu12")),
    ("onnxruntime", "onnxruntime", ("onnxruntime", "onnxruntime-gpu")),
)


def installed_runtimes() -> Dict[str, str]:
    """TensorRT runtimes importable here, by product, with versions, without importing them
    (tensorrt_rtx loads a 234 MB library). Known distribution names are asked first; scanning
    every installed package's metadata (0.17 s, 11% of a 4 GiB verify) is the fallback."""
    from importlib import metadata, util

    found: Dict[str, str] = {}
    scanned = None
    for module, product, dists in _RUNTIME_DISTS:
        if product in found or util.find_spec(module) is None:
            continue
        for dist in dists:
            try:
                found[product] = metadata.version(dist)
                break
            except metadata.PackageNotFoundError:
                continue
        else:
            scanned = scanned if scanned is not None else metadata.packages_distributions()
            for dist in scanned.get(module, []):
                try:
                    found[product] = metadata.version(dist)
                    break
                except metadata.PackageNotFoundError:
                    continue
    return found


def host_report(manifest: Optional[Manifest], engines: List[EngineReport], required: bool = False) -> HostReport:
    from .cuda import query_gpus

    gpus = query_gpus()
    runtimes = installed_runtimes()
    rep = HostReport(
        gpus=[GpuReport(g.index, g.name, g.cc_str, g.driver) for g in gpus], runtimes=runtimes, required=required
    )
    for er in engines:
        header = er.header
        product = header.product if header else er.backend
        version = header.version if header else er.backend_version
        ccs = (header.cc if header and header.cc is not None else ([er.cc] if er.cc else []))
        if er.backend == "onnxruntime":
            ort = runtimes.get("onnxruntime")
            er.runnable_here = ort is not None
            er.reason = f"onnxruntime {ort} on the CPU" if ort else "no onnxruntime installed"
            if ort:
                rep.runnable.append(er.path)
            continue
        rt = runtimes.get(product)
        if rt is None:
            er.runnable_here, er.reason = False, f"no {product} runtime installed"
        elif not version_matches(version, rt):
            er.runnable_here, er.reason = False, f"engine needs {product} {version}, host has {rt}"
        elif not gpus:
            er.runnable_here, er.reason = False, "no GPU on this host"
        elif not any(g.cc_str in ccs for g in gpus):
            er.runnable_here, er.reason = False, f"engine is for compute capability {', '.join(ccs)}; host GPUs are {', '.join(g.cc_str for g in gpus)}"
        else:
            er.runnable_here, er.reason = True, "matches a GPU and runtime on this host"
            rep.runnable.append(er.path)
    return rep
