"""Cases that kill surviving mutants of the shared verifier: area 'pipeline_a' (see docs/testing.md,
"Mutation testing"). Same shape as tests/_edge_cases.py, whose builders these reuse: each case is
a bundle built from the good test bundle with one expected exit code (and its message in
tests/data/verifier-messages.json). Registered as edge/pipeline_a-NAME by tests/test_verifier_cases.py.

The pipeline's own checks: the signature members (their names, sizes and count, an unsupported
one before the trusted one, a signature by a key outside the trust), two trusted signatures
(a subject that sorts below the first's, both expired), the order of the payload, directory
members, and the size checks against the signed sizes and the in-memory limits (directory mode,
with sparse files, so that a 16 MiB member costs no disk and no tar bytes).
"""

from __future__ import annotations

import hashlib
import json
import tarfile
from pathlib import Path
from typing import Callable, Dict, List, Set, Tuple

import test_stdlib_verifier as sv
from _edge_cases import Build, Entry, _entries, _manifest, _second_signature, _tar
from runtime_stub import verify as shared

ROOT = sv.ROOT
_SIG_MAX = shared.MAX_SIGNATURE_SIZE
_SIGS_MAX = shared.MAX_SIGNATURES
_MANIFEST_MAX = shared.MAX_MANIFEST_SIZE
_PROVENANCE_MAX = shared.MAX_PROVENANCE_SIZE


def _sig_entry(es: List[Entry]) -> Entry:
    return es[sv.sig_index(es)]


def _extra_sigs(names: List[str], data_of: Callable[[bytes], bytes] = lambda d: d, before: bool = False):  # noqa: ANN202
    """Extra signature members (``names``) holding the good signature's bytes as ``data_of``
    makes them, after the good one (or before it)."""
    def edit(es: List[Entry], ctx: dict) -> List[Entry]:
        gi = sv.sig_index(es)
        data = data_of(es[gi][1])
        extra = [sv.reg(f"{ROOT}/signatures/{n}", data) for n in names]
        at = gi if before else gi + 1
        return es[:at] + extra + es[at:]
    return edit


def _unsupported(raw: bytes) -> bytes:
    """The good signature file turned into a certificate-based one (reported, never checked)."""
    doc = json.loads(raw)
    doc["verificationMaterial"] = {"certificate": {"rawBytes": "AAAA"}}
    return json.dumps(doc).encode()


def _padded_to(size: int) -> Callable[[bytes], bytes]:
    def data_of(raw: bytes) -> bytes:
        return raw + b" " * (size - len(raw))
    return data_of


def _move_after_sigs(rel: str):  # noqa: ANN202
    def edit(es: List[Entry], ctx: dict) -> List[Entry]:
        i = sv.find(es, rel)
        moved = es.pop(i)
        gi = sv.sig_index(es)
        return es[:gi + 1] + [moved] + es[gi + 1:]
    return edit


def _dir_member_first(rel: str):  # noqa: ANN202
    def edit(es: List[Entry], ctx: dict) -> List[Entry]:
        return [sv.special(f"{ROOT}/{rel}", tarfile.DIRTYPE)] + es
    return edit


def _signed_by_other(good: Path, work: Path, ctx: dict) -> Path:
    return sv.write_tar(work / "case.tar", sv.resign(_entries(good), ctx["keys"]["other"]["key"]))


def _two_signatures(first_edit: Callable[[dict], None], second_edit: Callable[[dict], None]) -> Build:
    """Signed by the release key (its statement edited by ``first_edit``), plus a signature by
    the 'other' key over the statement edited by ``second_edit`` (both keys trusted), its
    subject digest left as the edit made it."""
    return _second_signature(second_edit, first_edit, coherent=False)


def _expires(when: str) -> Callable[[dict], None]:
    def edit(st: dict) -> None:
        st["predicate"]["expires"] = when
    return edit


def _subject(name: str) -> Callable[[dict], None]:
    def edit(st: dict) -> None:
        st["subject"][0]["name"] = name
    return edit


def _sizes_of(rel: str, size: int) -> Callable[[dict], None]:
    """Every size the manifest records for ``rel`` set to ``size``."""
    def walk(v: object) -> None:
        if isinstance(v, dict):
            if v.get("path") == rel and "size" in v:
                v["size"] = size
            for x in v.values():
                walk(x)
        elif isinstance(v, list):
            for x in v:
                walk(x)
    return walk


def _sparse_dir(rel: str, size: int, signed: bool) -> Build:
    """The bundle as a directory, ``rel`` extended (sparse) or cut to ``size`` bytes; with
    ``signed``, the manifest re-signed to record that size, so that only the content differs."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good)
        if signed:
            es = sv.resign(es, ctx["keys"]["release"]["key"], edit_manifest=_sizes_of(rel, size))
        src = sv.write_tar(work / "src.tar", es)
        with tarfile.open(src) as tf:
            tf.extractall(work)
        src.unlink()
        with open(work / ROOT / rel, "r+b") as f:
            f.truncate(size)
        return work / ROOT
    return build


def _readme_longer(m: dict) -> None:
    _sizes_of("runtime/README.txt", len_of_readme(m) + 1)(m)


def len_of_readme(m: dict) -> int:
    return next(f["size"] for f in m["files"] if f["path"] == "runtime/README.txt")


def _engine_at(rel: str) -> Build:
    """The sm_86 engine's record pointed at another signed file ``rel`` (its digest and size),
    outside engines/: no engine header is kept for it, so the header check finds none."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good)
        data = es[sv.find(es, rel)][1]

        def edit(m: dict) -> None:
            e = next(e for e in m["engines"] if e["path"] == "engines/tiny_16x16_fp32_sm86.engine")
            e["path"], e["sha256"], e["size"] = rel, hashlib.sha256(data).hexdigest(), len(data)
        return sv.write_tar(work / "case.tar", sv.resign(es, ctx["keys"]["release"]["key"], edit_manifest=edit))
    return build


def _cpu_with_trt_magic_at(rel: str) -> Build:
    """The signed model's bytes begun with a TensorRT magic ("ftrt"), and the sm_86 record turned
    into a cpu-target onnxruntime one whose file is those bytes, at ``rel``: refused at
    engines/... ("this is not a cpu-target ONNX file"), accepted elsewhere (see below)."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = [e for e in _entries(good) if not e[0].name.startswith(f"{ROOT}/provenance/")]
        mi = sv.find(es, "model/tiny.onnx")
        model = b"ftrt" + es[mi][1][4:]
        es[mi] = (es[mi][0], model)
        es[sv.find(es, _SM86)] = sv.reg(f"{ROOT}/{rel}", model)
        sha = hashlib.sha256(model).hexdigest()

        def edit(m: dict) -> None:
            m["model"]["sha256"] = sha
            for f in m["files"]:
                if f["path"] == "model/tiny.onnx":
                    f["sha256"] = sha
                elif f["path"] == _SM86:
                    f["path"], f["sha256"], f["size"] = rel, sha, len(model)
            m["files"] = [f for f in m["files"] if not f["path"].startswith("provenance/")]
            e = next(e for e in m["engines"] if e["path"] == _SM86)
            e["path"], e["sha256"], e["size"], e["header"] = rel, sha, len(model), None
            e["backend"] = {"name": "onnxruntime", "version": "1.20.1", "module": "onnxruntime", "cuda": None, "driver": None}
            e["target"] = {"label": "cpu", "cc": None, "gpu": None}
        return sv.write_tar(work / "case.tar", sv.resign(es, ctx["keys"]["release"]["key"], edit_manifest=edit))
    return build


_SM86 = "engines/tiny_16x16_fp32_sm86.engine"


def _signed_file_after_sums(rel: str, data: bytes) -> Build:
    """One more signed file, ``rel`` (sorting below SHA256SUMS), at the end of the bundle."""
    def build(good: Path, work: Path, ctx: dict) -> Path:
        es = _entries(good) + [sv.reg(f"{ROOT}/{rel}", data)]

        def edit(m: dict) -> None:
            m["files"].append({"path": rel, "sha256": hashlib.sha256(data).hexdigest(), "size": len(data)})
        return sv.write_tar(work / "case.tar", sv.resign(es, ctx["keys"]["release"]["key"], edit_manifest=edit))
    return build


EDGES: Dict[str, Tuple[object, int]] = {
    # signature members: name (its first character), size at the limit, one too many
    "sig-name-first-char-bad": (_tar(_extra_sigs(["~a.sig"])), 11),
    "sig-size-at-the-limit": (_tar(_extra_sigs(["b.sig"], _padded_to(_SIG_MAX))), 0),
    "sig-one-too-many": (_tar(_extra_sigs([f"s{i:02}.sig" for i in range(_SIGS_MAX)])), 15),
    # an unsupported signature first: reported, not counted, and the trusted one after it still counts
    "sig-unsupported-before-trusted": (_tar(_extra_sigs(["a.sig"], _unsupported, before=True)), 0),
    # signed only by a key outside the trust: the message names signer and trusted key
    "signed-by-untrusted-key-only": (_signed_by_other, 11),
    # two trusted signatures: a subject sorting below the first's; both expired (the earliest named)
    "two-signatures-lower-subject": (_two_signatures(lambda st: None, _subject("tiny-0.0.0")), 11),
    "two-signatures-both-expired": (_two_signatures(_expires("2001-01-01T00:00:00Z"),
                                                    _expires("2000-01-01T00:00:00Z")), 16),
    # payload order and directory members
    "readme-right-after-signatures": (_tar(_move_after_sigs("runtime/README.txt")), 13),
    "unsigned-dir-before-signatures": (_tar(_dir_member_first("zzz")), 13),
    "dir-named-like-top-level-file": (_tar(_dir_member_first("SHA256SUMS")), 13),
    # sizes: a member shorter than its signed size; the in-memory limits of manifest and provenance
    "member-shorter-than-signed": (_manifest(_readme_longer), 12),
    "dir-manifest-at-the-limit": (_sparse_dir("manifest.json", _MANIFEST_MAX, False), 12),
    "dir-provenance-at-the-limit": (_sparse_dir("provenance/slsa-v1.intoto.json", _PROVENANCE_MAX, True), 12),
    "dir-readme-over-the-manifest-limit": (_sparse_dir("runtime/README.txt", _MANIFEST_MAX + 1, True), 12),
    "dir-golden-over-the-provenance-limit": (_sparse_dir("golden/inputs.npz", _PROVENANCE_MAX + 1, True), 12),
    # a signed file sorting below SHA256SUMS, after it, leaves SHA256SUMS's bytes as read
    "signed-file-sorting-below-sums": (_signed_file_after_sums("A.txt", b"a\n"), 0),
    # engine records outside engines/: refused by name (they were checked against an empty head:
    # a wrong message for a header engine, and a TensorRT-magic cpu record accepted)
    "engine-record-outside-engines": (_engine_at("model/tiny.onnx"), 16),
    "cpu-trt-magic-outside-engines": (_cpu_with_trt_magic_at("bin/cpu.onnx"), 16),
}
BOTH_KEYS: Set[str] = {"two-signatures-lower-subject", "two-signatures-both-expired"}
