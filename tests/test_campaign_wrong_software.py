"""Issue 13, family 5: wrong software, signed by the trusted key.

A signature proves who made a bundle, not that what it describes is right. Every case here is the
session bundle re-signed by the TRUSTED key after one change, so each must be caught by a
consistency check, and each has one exit code in `bundle verify` and in verify.py on every Python:

- an engine whose own header (its bytes) names another runtime version, another compute
  capability or another product than its record, and a record naming another runtime version;
- a GPU target without a compute capability, and a target relabelled to another one;
- two records for one engine;
- SHA256SUMS that `sha256sum -c` would read differently from the signed list: Unicode and ASCII
  line separators (U+2028, U+0085, CR, VT, FF), CRLF, no final newline, a path twice, the binary
  marker, sha256sum's own backslash escaping. Real `sha256sum -c` runs on each, and the rule is
  checked as an implication: whenever the verifier accepts a SHA256SUMS, `sha256sum -c` checks
  exactly the signed files with exactly their digests. Names that hold U+2028 or U+0085 are
  accepted by both, as controls.

Covered elsewhere (docs/security.md's threat table): a valid signature by an unknown key
(tests/test_tamper.py::test_untrusted_signer), a bundle of another name under a policy
(tests/test_trust_policy.py), an older version on a host that accepted a newer one
(tests/test_host_state.py).
"""

from __future__ import annotations

import os
import struct
import subprocess
from pathlib import Path
from typing import Callable, Dict, Tuple

import pytest

from bundler import api
from campaign import assert_verdict, pythons, stdlib_verdicts, verify_json
from hostile import Bundle, resign

SM86 = "engines/tiny_16x16_fp32_sm86.engine"


def _engine_bytes(edit: Callable[[bytearray], None]) -> Callable[[Bundle, Path], Bundle]:
    def make(b: Bundle, key: Path) -> Bundle:
        data = bytearray(b.data(SM86))
        edit(data)
        return resign(b, key, replace={SM86: bytes(data)})
    return make


def _record(edit: Callable[[dict], None]) -> Callable[[Bundle, Path], Bundle]:
    def make(b: Bundle, key: Path) -> Bundle:
        def on_manifest(m: dict) -> None:
            edit(next(e for e in m["engines"] if e["path"] == SM86))
        return resign(b, key, edit_manifest=on_manifest)
    return make


def _two_records(b: Bundle, key: Path) -> Bundle:
    def edit(m: dict) -> None:
        twin = dict(next(e for e in m["engines"] if e["path"] == SM86))
        twin["target"] = {"label": "rtx4090", "cc": "8.9", "gpu": "rtx4090"}
        m["engines"].append(twin)
    return resign(b, key, edit_manifest=edit)


# case -> (make, exit code, words of the message)
CASES: Dict[str, Tuple[Callable[[Bundle, Path], Bundle], int, str]] = {
    "engine-header-names-another-runtime-version": (
        _engine_bytes(lambda d: d.__setitem__(slice(24, 28), bytes([1, 7, 0, 0]))), 16,
        "header says tensorrt-rtx 1.7.0.0, manifest tensorrt-rtx 1.7.1.116"),
    "engine-header-names-another-compute-capability": (
        _engine_bytes(lambda d: struct.pack_into("<Q", d, 32, 0x08)), 16, "header targets ['8.9'] (mask 8), manifest ['8.6'] (mask 4)"),
    "engine-header-names-another-product": (
        _engine_bytes(lambda d: d.__setitem__(slice(0, 4), b"ftrt")), 16, "header says tensorrt "),
    "record-names-another-runtime-version": (
        _record(lambda e: e["backend"].update(version="1.8.0.0")), 16, "built by tensorrt-rtx 1.8.0.0 but the header says 1.7.1.116"),
    "gpu-target-without-compute-capability": (
        _record(lambda e: e["target"].update(cc=None)), 16, "GPU target 'sm86' without a compute capability"),
    "gpu-target-relabelled-without-compute-capability": (
        _record(lambda e: e["target"].update(label="rtx4090", gpu="rtx4090", cc=None)), 16,
        "GPU target 'rtx4090' without a compute capability"),
    "gpu-target-relabelled-to-another-compute-capability": (
        _record(lambda e: e["target"].update(label="rtx4090", gpu="rtx4090", cc="8.9")), 16, "labelled for 8.9 but built for ['8.6']"),
    "two-records-for-one-engine": (_two_records, 16, "has two records"),
}


@pytest.fixture(scope="module")
def built(tmp_path_factory, tiny_bundle, keys) -> Dict[str, Path]:  # noqa: ANN001
    d = tmp_path_factory.mktemp("wrong-software")
    b = Bundle.read(tiny_bundle)
    return {name: make(b, keys["release"]["key"]).write(d / f"{name}.tar") for name, (make, _, _) in CASES.items()}


@pytest.fixture(scope="module")
def stdlib(built, keys) -> dict:  # noqa: ANN001
    return stdlib_verdicts({n: [str(p), "--trust", str(keys["release"]["pub"]), "--json"] for n, p in built.items()})


@pytest.mark.parametrize("case", list(CASES))
def test_wrong_software_is_refused(case, built, stdlib, keys) -> None:  # noqa: ANN001
    _, code, words = CASES[case]
    doc = assert_verdict(verify_json(built[case], keys["release"]["pub"]), code)
    assert words in doc["error"]["message"], doc["error"]["message"]
    assert doc["signers"][0]["valid"] is True  # signed by the trusted key: the signature is not what stopped it
    assert len(stdlib) == len(pythons())
    for py, verdicts in stdlib.items():
        got, err, out = verdicts[case]
        assert got == code and words in err, (py, err)


# -- SHA256SUMS as sha256sum -c reads it ------------------------------------------------------------

UNICODE_NAMES = {"runtime/line\u2028separator.txt": b"ls\n", "runtime/next\u0085line.txt": b"nel\n"}


def _sums_variant(kind: str) -> Callable[[bytes], bytes]:
    def edit(sums: bytes) -> bytes:
        lines = sums[:-1].split(b"\n")
        if kind == "exact":
            return sums
        if kind in ("u2028", "u0085", "cr", "vt", "ff"):  # one of the separators replaces the first newline
            sep = {"u2028": "\u2028".encode(), "u0085": "\u0085".encode(), "cr": b"\r", "vt": b"\x0b", "ff": b"\x0c"}[kind]
            return lines[0] + sep + b"\n".join(lines[1:]) + b"\n"
        if kind == "crlf":
            return b"".join(line + b"\r\n" for line in lines)
        if kind == "no-final-newline":
            return sums[:-1]
        if kind == "path-twice":
            return sums + lines[-1] + b"\n"
        if kind == "binary-marker":
            return b"\n".join(line.replace(b"  ", b" *", 1) for line in lines) + b"\n"
        if kind == "backslash-escaped":
            return b"\n".join(b"\\" + line for line in lines) + b"\n"
        if kind == "blank-line":
            return sums + b"\n"
        raise AssertionError(kind)
    return edit


SUMS_KINDS = ["exact", "u2028", "u0085", "cr", "vt", "ff", "crlf", "no-final-newline", "path-twice", "binary-marker",
              "backslash-escaped", "blank-line"]


def _sha256sum_c(b: Bundle, where: Path) -> Tuple[int, Dict[str, str]]:
    """Write the bundle's files into ``where`` and run the real `sha256sum -c SHA256SUMS` there:
    its exit code and, per file name it reported, OK or FAILED."""
    for rel, data, _ in b.members:
        p = where / rel
        p.parent.mkdir(parents=True, exist_ok=True)
        p.write_bytes(data)
    p = subprocess.run(["sha256sum", "-c", "SHA256SUMS"], cwd=where, capture_output=True, timeout=60,
                       env={**os.environ, "LC_ALL": "C"})
    seen = {}
    for line in p.stdout.split(b"\n"):
        if b": " in line:
            name, verdict = line.rsplit(b": ", 1)
            seen[name.decode("utf-8", "surrogateescape")] = verdict.decode()
    return p.returncode, seen


@pytest.mark.skipif(subprocess.run(["sha256sum", "--version"], capture_output=True).returncode != 0, reason="no sha256sum")
@pytest.mark.parametrize("names", ["ascii", "unicode"], ids=["ascii-names", "u2028-u0085-names"])
def test_sha256sums_is_accepted_only_as_sha256sum_reads_it(names, tiny_bundle, keys, tmp_path) -> None:  # noqa: ANN001
    base = Bundle.read(tiny_bundle)
    extra = UNICODE_NAMES if names == "unicode" else {}
    kinds = SUMS_KINDS if names == "ascii" else ["exact", "u2028", "u0085"]
    results = {}
    tars = {}
    for kind in kinds:
        b = resign(base, keys["release"]["key"], extra_files=extra, edit_sums=_sums_variant(kind))
        b = Bundle(b.root, b.members + [(rel, data, 0o644) for rel, data in extra.items()])
        tars[kind] = b.write(tmp_path / f"{kind}.tar")
        (tmp_path / kind).mkdir()
        results[kind] = _sha256sum_c(b, tmp_path / kind)
    signed = set(base.rels()) - {"SHA256SUMS", base.signature_rel()} | set(extra)
    stdlib = stdlib_verdicts({k: [str(p), "--trust", str(keys["release"]["pub"])] for k, p in tars.items()})
    trusted = api.load_trust([keys["release"]["pub"]])
    for kind in kinds:
        code = api.verify(tars[kind], trusted).exit_code  # bundle verify's code, in-process
        assert {v[kind][0] for v in stdlib.values()} == {code}, kind  # verify.py on every Python agrees
        rc, seen = results[kind]
        if code == 0:  # accepted: then sha256sum -c checks exactly the signed files, all OK
            assert rc == 0 and seen == {p: "OK" for p in signed}, (kind, rc, seen)
        else:
            assert code == 16, (kind, code)
        assert (code == 0) == (kind == "exact"), (kind, code, rc, seen)
    if names == "unicode":  # the separators inside names are data to both, never line ends
        assert set(UNICODE_NAMES) <= set(results["exact"][1])
        assert results["u2028"][0] != 0  # sha256sum reads the first two entries as one line (one odd name)


def test_sums_variants_really_differ_from_what_sha256sum_checks(tiny_bundle, keys, tmp_path) -> None:  # noqa: ANN001
    """Control for the test above: for the separator variants, sha256sum -c does NOT check the
    signed set, so a verifier that split lines on Unicode or ASCII separators (str.splitlines)
    and accepted them would disagree with it. Our refusals are necessary, not just strict."""
    base = Bundle.read(tiny_bundle)
    signed = set(base.rels()) - {"SHA256SUMS", base.signature_rel()}
    for kind in ("u2028", "u0085", "cr", "vt", "ff"):
        sums = _sums_variant(kind)(base.data("SHA256SUMS"))
        assert sorted(p for line in sums.decode().splitlines() for p in [line.split("  ", 1)[1]]) == sorted(signed), kind
        b = Bundle(base.root, [(r, sums if r == "SHA256SUMS" else d, m) for r, d, m in base.members])
        (tmp_path / kind).mkdir()
        rc, seen = _sha256sum_c(b, tmp_path / kind)
        assert rc != 0 and set(k for k, v in seen.items() if v == "OK") != signed, (kind, rc, seen)
