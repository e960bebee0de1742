"""Cases that kill surviving mutants of the shared verifier: area 'pipeline_b' (see docs/testing.md,
"Mutation testing"). Same shape as tests/_edge_cases.py, whose builders these reuse: each case is
a bundle built from the good test bundle with one expected exit code (and its message in
tests/data/verifier-messages.json). Registered as edge/pipeline_b-NAME by tests/test_verifier_cases.py.

The area: `_load_manifest` (the manifest bound to the signed list), `_check_manifest_semantics`
(engine headers, SHA256SUMS) and the extracted-directory verifier (`_walk`, `_run_directory`).
Most cases are bundles re-signed by the trusted key after an edit of their files and manifest
(`_bundle`), verified as a tar or, extracted, as a directory (the directory mode keeps SHA256SUMS
and the provenance by its own code path, which the tar cases never reach).
"""

from __future__ import annotations

import hashlib
import json
import os
import socket
from pathlib import Path
from typing import Callable, Dict, Set, Tuple

import test_stdlib_verifier as sv
from _edge_cases import SM86, _MAX_TOTAL, _dir, _entries, _manifest, _other_engine_header, _sha_edge, \
    _size_edge, _sparse_to_total
from runtime_stub import verify as shared

ROOT = sv.ROOT
RTX = "engines/tiny_16x16_fp32_rtx5090.engine"
PROV = shared.PROVENANCE
Files = Dict[str, bytes]
Build = Callable[[Path, Path, dict], Path]
_BIG = shared.MAX_MANIFEST_SIZE + 1  # over every limit a kept member (SHA256SUMS, provenance) has


def _put(files: Files, m: dict, rel: str, data: bytes) -> None:
    """Member ``rel`` set to ``data``, its manifest file entry (added or updated) to match."""
    files[rel] = data
    ent = {"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)}
    m["files"] = [f for f in m["files"] if f["path"] != rel] + [ent]


def _no_provenance(files: Files, m: dict) -> None:
    """The SLSA provenance left out (it names each engine's digest; optional in a bundle)."""
    del files[PROV]
    m["files"] = [f for f in m["files"] if f["path"] != PROV]


def _write_dir(entries: list, d: Path) -> Path:
    """``entries`` extracted into ``d`` (large all-zero members written sparse)."""
    for ti, data in entries:
        rel = ti.name[len(ROOT) + 1:]
        if ti.isdir():
            (d / rel).mkdir(parents=True, exist_ok=True)
        elif ti.isfile():
            p = d / rel
            p.parent.mkdir(parents=True, exist_ok=True)
            with open(p, "wb") as f:
                if len(data) > (1 << 20) and not data.strip(b"\0"):
                    f.truncate(len(data))
                else:
                    f.write(data)
    return d


def _bundle(edit: Callable[[Files, dict], None], as_dir: bool = False, **kw: object) -> Build:
    """The good bundle's members and manifest edited together (``edit``), re-signed by the trusted
    key (``kw``: sv.resign's subject, edit_sums, edit_statement), as a tar or extracted directory."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good)
        files = {ti.name[len(ROOT) + 1:]: d for ti, d in es if ti.isfile()}
        m = json.loads(files["manifest.json"])
        edit(files, m)
        files["manifest.json"] = (json.dumps(m, sort_keys=True, indent=2) + "\n").encode()
        out = []
        for ti, d in es:
            rel = ti.name[len(ROOT) + 1:]
            if not ti.isfile():
                out.append((ti, d))
            elif rel in files:
                out.append((ti, files.pop(rel)))
        out += [sv.reg(f"{ROOT}/{rel}", d) for rel, d in files.items()]
        out = sv.resign(out, ctx["keys"]["release"]["key"], **kw)
        if as_dir:
            return _write_dir(out, work / ROOT)
        return sv.write_tar(work / "case.tar", out)
    return build


VARIANT = "model/tiny_fp16.onnx"


def _variant(edit: Callable[[dict], None] = None, precision: str = "fp16") -> Callable[[Files, dict], None]:
    """A signed precision variant of the source graph (``edit`` changes its record)."""
    def go(files: Files, m: dict) -> None:
        data = b"an fp16 graph\n"
        _put(files, m, VARIANT, data)
        m["variants"] = [{"precision": precision, "graph": VARIANT, "sha256": hashlib.sha256(data).hexdigest(),
                          "size": len(data), "converter": "test"}]
        if edit is not None:
            edit(m)
    return go


def _unlist(*rels: str) -> Callable[[Files, dict], None]:
    def go(files: Files, m: dict) -> None:
        m["files"] = [f for f in m["files"] if f["path"] not in rels]
    return go


def _cpu_record(e: dict) -> None:
    e["header"] = None
    e["backend"] = {"name": "onnxruntime", "version": "1.20.1", "module": "onnxruntime", "cuda": None, "driver": None}
    e["target"] = {"label": "cpu", "cc": None, "gpu": None}


def _engine_as_cpu(path: str, graph: str) -> Callable[[Files, dict], None]:
    """Engine ``path`` recorded as a cpu target whose file is the source graph; with ``graph``
    "engine" the source graph itself is first replaced by the sm_86 engine's bytes (a graph that
    parses as a TensorRT-RTX engine header)."""
    def go(files: Files, m: dict) -> None:
        _no_provenance(files, m)
        if graph == "engine":
            _put(files, m, m["model"]["path"], files[SM86])
            m["model"]["sha256"], m["model"]["size"] = hashlib.sha256(files[SM86]).hexdigest(), len(files[SM86])
        data = files[m["model"]["path"]]
        _put(files, m, path, data)
        e = next(e for e in m["engines"] if e["path"] == path)
        _cpu_record(e)
        e["sha256"], e["size"] = hashlib.sha256(data).hexdigest(), len(data)
    return go


def _both(*edits: Callable[[Files, dict], None]) -> Callable[[Files, dict], None]:
    def go(files: Files, m: dict) -> None:
        for e in edits:
            e(files, m)
    return go


def _header_version(path: str, version: str) -> Callable[[Files, dict], None]:
    def go(files: Files, m: dict) -> None:
        next(e for e in m["engines"] if e["path"] == path)["header"]["version"] = version
    return go


def _socket(d: Path) -> None:
    """A Unix socket among the engines (bound by a relative name: socket paths are short)."""
    cwd = os.getcwd()
    os.chdir(d / "engines")
    try:
        s = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        s.bind("sock")
        s.close()
    finally:
        os.chdir(cwd)


def _long_name(d: Path) -> None:
    """Nested directories whose path passes the name limit (each component within NAME_MAX)."""
    p = d / "engines"
    while len(str(p.relative_to(d)).encode()) <= shared.Limits().max_name_bytes:
        p = p / ("d" * 200)
    p.mkdir(parents=True)


def _sig_at_the_limit(d: Path) -> None:
    """The signature file led by JSON whitespace to exactly the signature size limit (its last
    byte, the closing brace, is the one a read cut short would lose)."""
    sig = next((d / "signatures").iterdir())
    data = sig.read_bytes().rstrip()
    sig.write_bytes(b" " * (shared.MAX_SIGNATURE_SIZE - len(data)) + data)


def _size_and_digest_wrong(d: Path) -> None:
    """An engine changed in place (same size) and a later member grown: the sizes are all checked
    before any digest, so the grown one is named."""
    p = d / RTX
    data = bytearray(p.read_bytes())
    data[len(data) // 2] ^= 1
    p.write_bytes(bytes(data))
    with open(d / "runtime" / "README.txt", "ab") as f:
        f.write(b"x")


def _big_files(files: Files, m: dict) -> None:
    """Two signed members over the kept-member limits, one named below SHA256SUMS and one above
    the provenance: only SHA256SUMS and the provenance are held in memory (and limited)."""
    for rel in ("A.bin", "z.bin"):
        files[rel] = bytes(_BIG)
        m["files"].append({"path": rel, "sha256": _ZEROS_SHA, "size": _BIG})


_ZEROS_SHA = hashlib.sha256(bytes(_BIG)).hexdigest()


def _provenance_at_the_limit(files: Files, m: dict) -> None:
    """The provenance led by JSON whitespace to exactly its size limit (a kept member may be
    exactly its limit)."""
    data = files[PROV].strip()
    _put(files, m, PROV, b" " * (shared.MAX_PROVENANCE_SIZE - len(data)) + data)


def _bad_sums(sums: bytes) -> bytes:
    return sums[:sums.rindex(b"\n", 0, len(sums) - 1) + 1]  # the last line dropped


EDGES: Dict[str, Tuple[object, int]] = {
    # _load_manifest: the manifest's NAME-VERSION against the signed subject (directory) or the tar's root
    "dir-subject-lower": (_bundle(lambda f, m: None, as_dir=True, subject="tiny-0.0.9"), 16),
    "dir-subject-higher": (_bundle(lambda f, m: None, as_dir=True, subject="tiny-9.0.0"), 16),
    "manifest-version-higher-than-root": (_manifest(lambda m: m.update(version="9.0.0")), 16),
    # the file list against the signed list: fewer files listed (two), a file listed but not signed
    "manifest-two-files-unlisted": (_bundle(_unlist("runtime/README.txt", "runtime/loader.py")), 16),
    "manifest-lists-an-unsigned-file": (_manifest(lambda m: m["files"].append(
        {"path": "runtime/zz.txt", "sha256": "0" * 64, "size": 1})), 16),
    "manifest-golden-not-signed": (_manifest(lambda m: m["golden"].update(inputs="golden/none.npz")), 16),
    # precision variants: a good one, its digest and size below and above, a second fp32 graph
    "variant-good": (_bundle(_variant()), 0),
    **{f"variant-sha-{'low' if low else 'high'}": (_bundle(_variant(_sha_edge("variant", low))), 16)
       for low in (True, False)},
    **{f"variant-size-{'minus' if d < 0 else 'plus'}-one": (_bundle(_variant(_size_edge("variant", d))), 16)
       for d in (-1, 1)},
    "variant-second-fp32-graph": (_bundle(_variant(precision="fp32")), 16),
    # engine headers: a cpu record whose "graph" parses as an engine; a cpu record before a bad one
    "cpu-graph-that-is-an-engine": (_bundle(_engine_as_cpu(SM86, "engine")), 16),
    "cpu-record-then-bad-header": (_bundle(_both(_engine_as_cpu(RTX, "model"), _header_version(SM86, "1.7.1.117"))), 16),
    "manifest-engine-version-higher": (_manifest(_other_engine_header("version", "9.9.9.9")), 16),
    # SHA256SUMS: a signed root file named below it, a path that is not UTF-8
    "root-file-named-below-sums": (_bundle(lambda f, m: _put(f, m, "A.txt", b"a\n")), 0),
    "sums-path-not-utf8": (_bundle(lambda f, m: None, edit_sums=lambda s: s + b"0" * 64 + b"  x\xff\n"), 16),
    # the directory walk
    "dir-socket": (_dir(_socket), 14),
    "dir-total-one-byte-over": (_dir(_sparse_to_total(_MAX_TOTAL + 1)), 15),
    "dir-name-over-the-limit": (_dir(_long_name), 15),
    # the directory pass: signatures, sizes before digests, the kept members
    "dir-signature-at-the-size-limit": (_dir(_sig_at_the_limit), 0),
    "dir-directory-in-signatures": (_dir(lambda d: (d / "signatures" / "sub").mkdir()), 11),
    "dir-sizes-before-digests": (_dir(_size_and_digest_wrong), 12),
    "dir-sums-signed-but-wrong": (_bundle(lambda f, m: None, as_dir=True, edit_sums=_bad_sums), 16),
    "dir-provenance-signed-but-bad": (_bundle(lambda f, m: _put(f, m, PROV, b"{}"), as_dir=True), 11),
    "dir-provenance-at-the-size-limit": (_bundle(_provenance_at_the_limit, as_dir=True), 0),
    "dir-file-executable-by-others": (_dir(lambda d: os.chmod(d / "runtime" / "loader.py", 0o755)), 0),
    "dir-big-members-not-kept": (_bundle(_big_files, as_dir=True), 0),
}
# A signed file the verifier may not open (a read error, exit 10; not 14 "symlink"): open() fails
# with EACCES only for a user without CAP_DAC_OVERRIDE, so the case exists only when not run as
# root (its message was recorded as uid 65534). Kills _open_regular's `_O_NOFOLLOW and islink`
# mutants in a non-root run; as root nothing makes that open fail.
if os.geteuid() != 0:
    EDGES["dir-unreadable-file"] = (_dir(lambda d: os.chmod(d / "runtime" / "README.txt", 0)), 10)
BOTH_KEYS: Set[str] = set()  # names of cases verified against both test keys
