"""The seal stage: build directories -> manifest, checksums, signature -> one deterministic tar.

Sealing reads each payload byte once and writes it once. Engine and model digests come from the
build records and are re-computed while the bytes are copied into the tar; if a file changed
since it was built, the partial tar is deleted and nothing appears under the final name.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import os
from dataclasses import dataclass
from importlib import resources
from pathlib import Path
from typing import Callable, Dict, List, Optional, Sequence, Tuple

from cryptography.hazmat.primitives.asymmetric import ec

from . import __version__
from . import ledger as _ledger
from .archive import AsyncSha256, DirectFile, Limits, TarWriter, check_member_name
from .backends import BUILD_RECORD
from .engine_header import HeaderError, parse_header
from .errors import InputError, OutputError, VerificationError
from .fsutil import check_out_dir, fsync_dir, make_dirs, make_workfile, remove_made_dirs, remove_stale, removed_on_failure
from .manifest import (
    MANIFEST,
    RUNTIME_DIR,
    SHA256SUMS,
    BuildRecord,
    EngineRecord,
    FileEntry,
    Manifest,
    PrecisionVariant,
    SchemaError,
    parse_json,
    to_json,
)
from .model import sha256_file
from .provenance import PROVENANCE, sign_envelope
from .provenance import make_statement as make_provenance
from .signing import SIGNATURES_DIR, LedgerHead, key_id, make_statement, sign_statement, subject_digest


@dataclass(frozen=True)
class SealResult:
    path: Path
    sha256: str
    key_id: str
    manifest: Manifest
    expires: Optional[str] = None  # the signature's signed expiry (predicate.expires), if any
    ledger: Optional[LedgerHead] = None  # the signing ledger entry written for this seal, if any


@dataclass(frozen=True)
class _Payload:
    """One file to pack: where it is on disk, where it goes in the bundle, what it must hash to."""

    src: Path
    entry: FileEntry
    mode: int = 0o644


def source_date_epoch() -> Optional[int]:
    value = os.environ.get("SOURCE_DATE_EPOCH")
    if value is None or value == "":
        return None
    try:
        epoch = int(value)
    except ValueError:
        raise InputError(f"SOURCE_DATE_EPOCH={value!r} is not an integer") from None
    if epoch < 0:
        raise InputError("SOURCE_DATE_EPOCH must not be negative")
    return epoch


def load_build_dir(path: Path) -> BuildRecord:
    rec_path = Path(path) / BUILD_RECORD
    if not rec_path.is_file():
        raise InputError(f"{path}: not a build directory (no {BUILD_RECORD}); make one with `bundle build`")
    try:
        return parse_json(BuildRecord, rec_path.read_bytes(), str(rec_path))
    except SchemaError as e:
        raise InputError(f"{e}") from None


def runtime_files() -> List[Tuple[str, bytes, int]]:
    """(name, bytes, mode) of every file in runtime_stub/, which goes into ``runtime/``."""
    out = []
    root = resources.files("runtime_stub")
    for item in sorted(root.iterdir(), key=lambda p: p.name):
        if not item.is_file() or item.name == "__init__.py" or item.name.endswith(".pyc"):
            continue
        data = item.read_bytes()
        mode = 0o755 if item.name.endswith(".py") else 0o644
        out.append((item.name, data, mode))
    return out


def _collect(
    build_dirs: Sequence[Path],
) -> Tuple[List[Tuple[Path, BuildRecord]], List[Tuple[Path, EngineRecord]]]:
    """Load every build dir's record once and check they can share one bundle."""
    records = [(Path(d), load_build_dir(Path(d))) for d in build_dirs]
    if not records:
        raise InputError("give at least one build directory")
    first_dir, first = records[0]
    engines: List[Tuple[Path, EngineRecord]] = []
    seen: Dict[str, Path] = {}
    for d, rec in records:
        if rec.model.sha256 != first.model.sha256:
            raise InputError(
                f"{d} was built from a different source model (sha256 {rec.model.sha256[:12]}...) than "
                f"{first_dir} ({first.model.sha256[:12]}...); one bundle holds engines of one model"
            )
        if (rec.name, rec.version) != (first.name, first.version):
            raise InputError(f"{d} is {rec.name} {rec.version} but {first_dir} is {first.name} {first.version}")
        for e in rec.engines:
            if e.path in seen:
                raise InputError(f"engine {e.path} is in both {seen[e.path]} and {d}")
            seen[e.path] = d
            engines.append((d, e))
    return records, engines


def _variants(records: Sequence[Tuple[Path, BuildRecord]]) -> Tuple[List[PrecisionVariant], List[_Payload]]:
    """Converted graphs (fp16, int8, ...) of every build dir; the same precision must be the same graph."""
    seen: Dict[str, Tuple[Path, PrecisionVariant]] = {}
    for d, rec in records:
        for v in rec.variants:
            prev = seen.get(v.precision)
            if prev is None:
                seen[v.precision] = (Path(d), v)
            elif prev[1].sha256 != v.sha256:
                raise InputError(
                    f"{d} and {prev[0]} hold different {v.precision} graphs (other converter or calibration data); "
                    f"build every target of one precision from the same conversion"
                )
    variants = [v for _, v in sorted(seen.values(), key=lambda x: x[1].graph)]
    payloads = []
    for d, v in sorted(seen.values(), key=lambda x: x[1].graph):
        src = d / v.graph
        if not src.is_file() or src.stat().st_size != v.size:
            raise InputError(f"{src}: converted {v.precision} graph missing or changed since the build")
        payloads.append(_Payload(src, FileEntry(v.graph, v.size, v.sha256)))
        if v.log is not None:  # the converter's messages: hashed here, like the builders' logs
            log_src = d / v.log
            if not log_src.is_file():
                raise InputError(f"{log_src}: conversion log listed in {BUILD_RECORD} is missing")
            digest, size = sha256_file(log_src)
            payloads.append(_Payload(log_src, FileEntry(v.log, size, digest)))
    return variants, payloads


def _golden_payloads(build_dirs: Sequence[Path], record: BuildRecord) -> List[_Payload]:
    """The golden .npz files of the first build dir that has them; the others must agree."""
    if record.golden is None:
        return []
    first = Path(build_dirs[0])
    out = []
    for rel in (record.golden.inputs, record.golden.outputs):
        digest, size = sha256_file(first / rel)
        out.append(_Payload(first / rel, FileEntry(rel, size, digest)))
    inputs_digest = out[0].entry.sha256
    for d in build_dirs[1:]:
        p = Path(d) / record.golden.inputs
        if p.is_file() and sha256_file(p)[0] != inputs_digest:
            raise InputError(f"{d} has other golden inputs than {first} (different --shape or --sample-input)")
    return out


def _check_engine_file(src: Path, rec: EngineRecord) -> None:
    try:
        size = src.stat().st_size
    except FileNotFoundError:
        raise InputError(f"{src}: engine listed in {BUILD_RECORD} is missing") from None
    if size != rec.size:
        raise InputError(f"{src}: is {size} bytes but {BUILD_RECORD} records {rec.size}; the build dir changed")
    if rec.header is None:  # the cpu target's ONNX file has no engine header
        return
    with open(src, "rb") as f:
        head = f.read(64)
    try:
        header = parse_header(head, size)
    except HeaderError as e:
        raise InputError(f"{src}: not a readable engine ({e})") from None
    if header != rec.header:
        raise InputError(f"{src}: header says {header.product} {header.version} {header.cc}, the build record says otherwise")


def seal(
    build_dirs: Sequence[Path],
    key: ec.EllipticCurvePrivateKey,
    out_dir: Path,
    progress: Optional[Callable[[str, int, int], None]] = None,
    expires: Optional[str] = None,
    ledger: Optional[Path] = None,
) -> SealResult:
    """Pack build directories into ``out_dir/NAME-VERSION.bundle.tar``, signed with ``key``.

    ``expires`` (``YYYY-MM-DDTHH:MM:SSZ``, see `signing.parse_expiry`) goes into the signed
    statement; verifiers refuse the bundle after that time unless told ``--allow-expired``.
    ``ledger``: a signing ledger (bundler/ledger.py) whose head goes into the statement and
    which gets this seal's entry before the bundle is published.
    """
    check_out_dir(Path(out_dir), "NAME-VERSION.bundle.tar")
    records, engines = _collect(build_dirs)
    first_dir, record = records[0]
    root = f"{record.name}-{record.version}"
    out_dir = Path(out_dir)
    final = out_dir / f"{root}.bundle.tar"
    if final.exists():
        raise OutputError(f"{final}: already exists; bundles are never overwritten")

    payloads: List[_Payload] = []
    for d, e in sorted(engines, key=lambda x: x[1].path):
        src = d / e.path
        _check_engine_file(src, e)
        payloads.append(_Payload(src, FileEntry(e.path, e.size, e.sha256)))
        log_src = d / e.log
        if not log_src.is_file():
            raise InputError(f"{log_src}: build log listed in {BUILD_RECORD} is missing")
        digest, size = sha256_file(log_src)
        payloads.append(_Payload(log_src, FileEntry(e.log, size, digest)))
    payloads.sort(key=lambda p: p.entry.path)
    model_src = first_dir / record.model.path
    if not model_src.is_file() or model_src.stat().st_size != record.model.size:
        raise InputError(f"{model_src}: source model missing or changed since the build")
    payloads.append(_Payload(model_src, FileEntry(record.model.path, record.model.size, record.model.sha256)))
    payloads += _golden_payloads(build_dirs, record)
    variants, variant_payloads = _variants(records)
    payloads += sorted(variant_payloads, key=lambda p: p.entry.path)
    runtime = [
        (f"{RUNTIME_DIR}/{n}", data, mode) for n, data, mode in runtime_files()
    ]
    runtime_entries = [
        FileEntry(p, len(data), hashlib.sha256(data).hexdigest()) for p, data, _ in runtime
    ]

    epoch = source_date_epoch()
    created = _dt.datetime.fromtimestamp(
        epoch if epoch is not None else int(_dt.datetime.now(_dt.timezone.utc).timestamp()), _dt.timezone.utc
    )
    manifest = Manifest(
        name=record.name,
        version=record.version,
        created=created.strftime("%Y-%m-%dT%H:%M:%SZ"),
        model=record.model,
        engines=[e for _, e in sorted(engines, key=lambda x: x[1].path)],
        files=[p.entry for p in payloads] + runtime_entries,
        golden=record.golden,
        variants=variants,
        tool={"name": "trt-bundler", "version": __version__},
    )
    # The SLSA provenance: made from the build records and the manifest's engines (never from the
    # clock: sealing again gives the same bytes), signed with the sealing key, and then a signed
    # member like any other, listed in the manifest, SHA256SUMS and the statement.
    provenance = sign_envelope(make_provenance(records, manifest), key)
    manifest.files.append(FileEntry(PROVENANCE, len(provenance), hashlib.sha256(provenance).hexdigest()))
    manifest_bytes = to_json(manifest)
    all_entries = [FileEntry(MANIFEST, len(manifest_bytes), hashlib.sha256(manifest_bytes).hexdigest())]
    all_entries += manifest.files
    sums = "".join(f"{e.sha256}  {e.path}\n" for e in all_entries).encode("utf-8")
    resources_ = {e.path: e.sha256 for e in all_entries}
    resources_[SHA256SUMS] = hashlib.sha256(sums).hexdigest()
    head = _ledger.head_for_signing(ledger) if ledger is not None else None
    signature = sign_statement(make_statement(root, resources_, expires, ledger=head), key)
    kid = key_id(key.public_key())

    for e in [*all_entries, FileEntry(SHA256SUMS, 0, "")]:
        try:
            check_member_name(f"{root}/{e.path}", Limits(), 0)
        except VerificationError as err:
            raise InputError(f"cannot seal: {err.message} (rename the file; verify would refuse this bundle)") from None
    made: List[Path] = []
    try:
        made = make_dirs(out_dir)
        remove_stale(out_dir, f".{final.name}.partial-")  # a killed seal's half-written tar
        fd, tmp = make_workfile(out_dir, f".{final.name}.partial-")
    except OSError as e:
        remove_made_dirs(made)
        raise OutputError(f"{out_dir}: cannot write the bundle there ({e.strerror})") from None
    with removed_on_failure(tmp, made, final):  # a failed seal leaves no --out it made either
        os.fchmod(fd, 0o644)  # mkstemp makes 0600; a bundle is meant to be copied and shared
        try:
            out = DirectFile(fd)  # large aligned writes skip the page cache (docs/performance.md)
            tw = TarWriter(out, epoch or 0, digest=True)  # the bundle digest, on its own thread
            tw.add_bytes(f"{root}/{SIGNATURES_DIR}/{kid}.sig", signature)
            tw.add_bytes(f"{root}/{MANIFEST}", manifest_bytes)
            tw.add_bytes(f"{root}/{SHA256SUMS}", sums)
            total = sum(p.entry.size for p in payloads)
            done = 0
            for p in payloads:
                h = AsyncSha256()  # the member check, on a second thread: two cores hash at once
                tick = _Ticker(progress, p.entry.path, done, total) if progress is not None else None
                with open(p.src, "rb") as f:
                    tw.add_stream(f"{root}/{p.entry.path}", f, p.entry.size, p.mode, tick, digest=h)
                if h.hexdigest() != p.entry.sha256:
                    raise InputError(f"{p.src}: content changed since it was built (sha256 differs from {BUILD_RECORD})")
                done += p.entry.size
                if progress:
                    progress(p.entry.path, done, total)
            for path, data, mode in runtime:
                tw.add_bytes(f"{root}/{path}", data, mode)
            tw.add_bytes(f"{root}/{PROVENANCE}", provenance)
            tw.close()
            os.fsync(fd)
            digest = tw.hexdigest()
        finally:
            os.close(fd)
        entry = None
        if ledger is not None and head is not None:  # recorded before it appears, never after
            entry = _ledger.record_signing(
                ledger, event="seal", key_id=kid, name=record.name, version=record.version, bundle_sha256=digest,
                content_digest=subject_digest(resources_), signature=f"{SIGNATURES_DIR}/{kid}.sig",
                signature_sha256=hashlib.sha256(signature).hexdigest(), extends=head, expires=expires)
        # The file is synced; its directory too, before and after the link, so that after a
        # power loss the bundle is under its final name whole or not at all, like every other
        # publishing writer (found by tests/test_campaign_interrupts.py, which reads the syscalls).
        fsync_dir(out_dir)
        _publish(tmp, final)
        fsync_dir(out_dir)
    return SealResult(final, digest, kid, manifest, expires, entry)


class _Ticker:
    """Calls ``progress(path, bytes done, total)`` as a payload's chunks are copied."""

    def __init__(self, progress: Callable[[str, int, int], None], path: str, done: int, total: int) -> None:
        self._progress, self._path, self._done, self._total = progress, path, done, total

    def __call__(self, chunk: memoryview) -> None:
        self._done += len(chunk)
        self._progress(self._path, self._done, self._total)


def _publish(tmp: Path, final: Path) -> None:
    """Move into place without ever replacing an existing file.

    link(2) fails if ``final`` exists, atomically; FAT/exFAT sticks have no hard links, and
    there renameat2(RENAME_NOREPLACE) does the same job.
    """
    try:
        os.link(tmp, final)
    except FileExistsError:
        raise OutputError(f"{final}: appeared while sealing; not overwritten") from None
    except OSError:
        from .fsutil import rename_noreplace

        rename_noreplace(tmp, final)
        return
    tmp.unlink()
