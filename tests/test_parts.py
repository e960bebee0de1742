"""Split bundles: `bundle split`, `verify`/`extract`/`run` from parts, `join`, `copy` to media.

Real bundles (cpu-target engines, so `bundle run -- selftest` really runs), real keys, real files,
the real CLI in subprocesses, and the stdlib `verify.py` under the oldest and newest Python here.
A bundle of ~280 KB is cut into 3 parts, so every case runs in seconds.
"""

from __future__ import annotations

import ast
import glob
import hashlib
import json
import os
import shutil
import signal
import subprocess
import sys
import tarfile
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import List, Optional, Tuple

import pytest

from conftest import REPO, make_conv_model, run_bundle

VERIFIER = REPO / "runtime_stub" / "verify.py"


def _python(version: str) -> str:
    found = sorted(glob.glob(os.path.expanduser(f"~/.pyenv/versions/{version}.*/bin/python{version}")))
    return found[0] if found else sys.executable


PY38, PY313 = _python("3.8"), _python("3.13")


def verify_py(python: str, target: Path, *args: object) -> subprocess.CompletedProcess:
    p = subprocess.run([python, "-I", str(VERIFIER), str(target), *map(str, args)], capture_output=True, text=True,
                       timeout=120, cwd="/")
    assert "Traceback" not in p.stderr, p.stderr
    return p


@pytest.fixture(scope="module")
def bundles(tmp_path_factory, keys) -> dict:  # noqa: ANN001
    """Two real cpu-target bundles of different models: the one carried, and another one."""
    d = tmp_path_factory.mktemp("parts-dist")
    out = {}
    for name, version, hw in (("tiny", "1.0.0", 16), ("other", "2.0.0", 32)):
        model = make_conv_model(d / f"{name}.onnx", hw=hw)
        r = run_bundle("create", model, "--name", name, "--version", version, "--target", "cpu",
                       "--shape", f"x:1x3x{hw}x{hw}:2x3x{hw}x{hw}:4x3x{hw}x{hw}", "--key", keys["release"]["key"],
                       "--out", d, env={"SOURCE_DATE_EPOCH": "1700000000"})
        assert r.code == 0, r.err
        out[name] = d / f"{name}-{version}.bundle.tar"
    return out


def third(bundle: Path) -> int:
    """A --max-part-size that cuts ``bundle`` into exactly three parts."""
    return (bundle.stat().st_size // 3 // 512 + 1) * 512


def split(bundle: Path, out: Path, keys: dict, size: int, key: str = "release") -> Tuple[Path, List[Path]]:
    r = run_bundle("split", bundle, "--key", keys[key]["key"], "--trust", keys["release"]["pub"], "--out", out,
                   "--max-part-size", size)
    assert r.code == 0, r.err
    index = next(out.glob(f"{bundle.name}.*.parts.json"))
    sid = index.name.split(".")[-3]
    return index, sorted(out.glob(f"{bundle.name}.{sid}.part-*"))


@pytest.fixture(scope="module")
def three(tmp_path_factory, bundles, keys) -> Tuple[Path, List[Path]]:  # noqa: ANN001
    """tiny split into three parts (read-only: tests that damage parts work on a copy)."""
    return split(bundles["tiny"], tmp_path_factory.mktemp("three"), keys, third(bundles["tiny"]))


@pytest.fixture()
def parts(tmp_path, three) -> Tuple[Path, List[Path]]:  # noqa: ANN001
    d = tmp_path / "stick"
    shutil.copytree(three[0].parent, d)
    return d / three[0].name, [d / p.name for p in three[1]]


def verify(target: Path, keys: dict, *extra: object) -> Tuple[int, str, dict]:
    """`bundle verify --json` and verify.py on Python 3.8: the same exit code, message and report
    (but for what each can run on this host)."""
    with ThreadPoolExecutor(2) as pool:
        lib_f = pool.submit(run_bundle, "verify", target, "--trust", keys["release"]["pub"], "--json", *extra)
        std_f = pool.submit(verify_py, PY38, target, "--trust", keys["release"]["pub"], "--json", *extra)
        lib, std = lib_f.result(), std_f.result()
    assert lib.code == std.returncode, (lib.err, std.stderr)
    assert lib.err.strip() == std.stderr.strip()
    doc, other = json.loads(lib.out), json.loads(std.stdout)
    for d in (doc, other):  # what this host can run differs between the venv and a bare 3.8
        d.pop("host", None)
        for e in d.get("engines") or []:
            e.pop("runnable_here"), e.pop("reason")
    assert doc == other
    return lib.code, lib.err.strip(), doc


def statuses(doc: dict) -> List[str]:
    return [p["status"] for p in doc["parts"]["parts"]]


# -- split -------------------------------------------------------------------------------------------

def test_split_cuts_plain_byte_ranges_under_a_signed_index(three, bundles, keys, tmp_path):
    index, files = three
    bundle = bundles["tiny"]
    size = third(bundle)
    assert len(files) == 3 and [p.name[-10:] for p in files] == ["001-of-003", "002-of-003", "003-of-003"]
    assert [p.stat().st_size for p in files[:2]] == [size, size] and 0 < files[2].stat().st_size <= size
    # Plain byte ranges: cat of the parts in order is the bundle, byte for byte.
    assert b"".join(p.read_bytes() for p in files) == bundle.read_bytes()
    # The index is a model-signing style signature file (DSSE, in-toto) by the release key over the parts.
    doc = json.loads(index.read_bytes())
    assert doc["verificationMaterial"]["publicKey"]["hint"] == keys["release"]["id"]
    import base64

    statement = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    assert statement["subject"] == [{"name": "tiny-1.0.0.bundle.tar",
                                     "digest": {"sha256": hashlib.sha256(bundle.read_bytes()).hexdigest()}}]
    assert statement["predicateType"] == "https://trt-bundler/part-index/v1"
    recs = statement["predicate"]["parts"]
    assert [(r["name"], r["size"], r["sha256"]) for r in recs] == [
        (p.name, p.stat().st_size, hashlib.sha256(p.read_bytes()).hexdigest()) for p in files]
    assert recs[0]["first_header"] == {"offset": 0, "name": f"tiny-1.0.0/signatures/{keys['release']['id']}.sig"}
    # The same split again: the same names (a function of the bundle and the part size), never overwritten.
    r = run_bundle("split", bundle, "--key", keys["release"]["key"], "--trust", keys["release"]["pub"],
                   "--out", index.parent, "--max-part-size", size)
    assert r.code == 6 and "already exists" in r.err
    # A split killed while publishing left parts 1 and 2, no index: the same split completes it,
    # keeping the identical parts; a file with other bytes under a part's name is never replaced.
    again = tmp_path / "again"
    again.mkdir()
    for p in files[:2]:
        shutil.copyfile(p, again / p.name)
    r = run_bundle("split", bundle, "--key", keys["release"]["key"], "--trust", keys["release"]["pub"],
                   "--out", again, "--max-part-size", size)
    assert r.code == 0, r.err
    assert sorted(os.listdir(again)) == sorted([index.name] + [p.name for p in files])
    assert b"".join((again / p.name).read_bytes() for p in files) == bundle.read_bytes()
    (again / index.name).unlink()
    (again / files[2].name).write_bytes(b"not this part")
    r = run_bundle("split", bundle, "--key", keys["release"]["key"], "--trust", keys["release"]["pub"],
                   "--out", again, "--max-part-size", size)
    assert r.code == 6 and "other bytes" in r.err
    assert not (again / index.name).exists() and not list(again.glob(".*partial*"))
    # A bundle that does not verify is not split, and nothing is written.
    r = run_bundle("split", bundle, "--key", keys["release"]["key"], "--trust", keys["other"]["pub"],
                   "--out", tmp_path / "x", "--max-part-size", size)
    assert r.code == 11 and "cannot split a bundle that fails verification" in r.err
    assert not (tmp_path / "x").exists()
    # A part size that would make too many parts is refused before anything is read (this 5 GiB
    # sparse file is no bundle at all: verification would refuse it, but it never gets that far).
    big = tmp_path / "big.bundle.tar"
    with open(big, "wb") as f:
        f.truncate(5 << 30)
    r = run_bundle("split", big, "--key", keys["release"]["key"], "--trust", keys["release"]["pub"],
                   "--out", tmp_path / "x", "--max-part-size", "1M")
    assert r.code == 3 and "5120 parts" in r.err and "at most 4096" in r.err and "--max-part-size 1310720" in r.err
    r = run_bundle("split", bundle, "--key", keys["release"]["key"], "--trust", keys["release"]["pub"],
                   "--out", tmp_path / "x", "--max-part-size", "100")
    assert r.code == 3 and "at least 512" in r.err
    assert not (tmp_path / "x").exists()


# -- verify: which part, and why ------------------------------------------------------------------

def test_verify_a_good_part_set_by_index_or_by_any_part(three, bundles, keys):
    index, files = three
    code, _, doc = verify(index, keys)
    assert code == 0 and doc["ok"] and statuses(doc) == ["ok", "ok", "ok"]
    assert doc["sha256"] == hashlib.sha256(bundles["tiny"].read_bytes()).hexdigest()
    assert doc["parts"]["signer"]["key_id"] == keys["release"]["id"] and doc["name"] == "tiny"
    code, _, doc2 = verify(files[1], keys)
    assert code == 0 and doc2["parts"] == doc["parts"]
    # The human report counts the parts, under 3.13 too.
    p = verify_py(PY313, files[2], "--trust", keys["release"]["pub"])
    assert p.returncode == 0 and "parts:   3/3 match the signed part index" in p.stdout
    r = run_bundle("verify", index, "--trust", keys["release"]["pub"])
    assert r.code == 0 and "parts:   3/3 match the signed part index" in r.out


def test_a_corrupted_part_is_named_by_number(parts, keys):
    index, files = parts
    data = bytearray(files[1].read_bytes())
    data[len(data) // 2] ^= 0xFF
    files[1].write_bytes(bytes(data))
    code, err, doc = verify(files[0], keys)
    assert code == 19 and err.startswith("error [parts]: part 2 of 3 (") and "is damaged" in err
    assert statuses(doc) == ["ok", "damaged", "ok"] and doc["error"]["member"] == files[1].name
    assert doc["sha256"] is None


def test_a_missing_part_is_named_and_every_other_part_still_checked(parts, keys):
    index, files = parts
    files[2].unlink()
    data = bytearray(files[0].read_bytes())
    data[-1] ^= 1
    files[0].write_bytes(bytes(data))
    code, err, doc = verify(index, keys)
    assert code == 19 and "part 1 of 3" in err and "also bad: part 3 missing" in err
    assert statuses(doc) == ["damaged", "ok", "missing"]
    r = run_bundle("verify", index, "--trust", keys["release"]["pub"])
    assert "part 3 [missing]" in r.out and "part 1 [damaged]" in r.out


def test_a_part_from_another_bundle(parts, bundles, keys, tmp_path):
    index, files = parts
    _, others = split(bundles["other"], tmp_path / "other", keys, third(bundles["tiny"]))
    shutil.copyfile(others[1], files[1])  # the carrier took part 2 of the wrong bundle
    code, err, doc = verify(index, keys)
    assert code == 19 and "part 2 of 3" in err and "another bundle" in err and "other-2.0.0/" in err
    assert statuses(doc) == ["ok", "other-bundle", "ok"]


def test_a_part_from_an_older_split_of_the_same_bundle(parts, bundles, keys, tmp_path):
    index, files = parts
    # An older split of the same bundle with another part size, left on the medium. Its part 2
    # must hold a tar header that this split's part 2 does not start with (else its bytes are
    # only the middle of one member, which no verifier can tell from a truncated part): the size
    # is chosen from the bundle's own layout, which moves whenever a shipped file changes size.
    with tarfile.open(bundles["tiny"]) as tf:
        heads = [m.offset for m in tf.getmembers()]
    size = next(s for s in range(third(bundles["tiny"]) - 4096, 4096, -512)
                if any(s <= h and h + 512 <= 2 * s and h < third(bundles["tiny"]) for h in heads))
    _, old = split(bundles["tiny"], tmp_path / "old", keys, size)
    assert old[1].name != files[1].name  # its own names: it never overwrote this split's parts
    files[1].unlink()
    shutil.copyfile(old[1], files[1].parent / old[1].name)
    code, err, doc = verify(index, keys)
    assert code == 19 and "part 2 of 3" in err and "is missing" in err and f"{old[1].name} beside it" in err
    # ... and the same part under this split's name (copied by hand): its bytes tell.
    shutil.copyfile(old[1], files[1])
    code, err, doc = verify(index, keys)
    assert code == 19 and "part 2 of 3" in err and "another split of tiny-1.0.0" in err
    assert statuses(doc) == ["ok", "other-split", "ok"]


def test_a_part_from_a_split_of_a_countersigned_copy(parts, bundles, keys, tmp_path):
    """Same part size, same name and version, other bytes (a signature was added): still told apart."""
    index, files = parts
    r = run_bundle("sign", bundles["tiny"], "--key", keys["other"]["key"], "--trust", keys["release"]["pub"],
                   "--out", tmp_path / "signed")
    assert r.code == 0, r.err
    _, cs = split(tmp_path / "signed" / "tiny-1.0.0.bundle.tar", tmp_path / "cs", keys, third(bundles["tiny"]))
    shutil.copyfile(cs[0], files[0])
    code, err, doc = verify(index, keys)
    assert code == 19 and "part 1 of 3" in err and "another split" in err
    assert statuses(doc)[0] == "other-split"


def test_the_index_is_checked_against_the_same_trust(parts, bundles, keys, tmp_path):
    index, files = parts
    # Signed by a key the host does not trust: refused like a bundle signature (11).
    other_index, _ = split(bundles["tiny"], tmp_path / "o", keys, third(bundles["tiny"]), key="other")
    code, err, _ = verify(other_index, keys)
    assert code == 11 and "part index signed by" in err and "not a trusted key" in err
    # An index whose statement was changed after signing.
    doc = json.loads(index.read_bytes())
    import base64

    st = json.loads(base64.b64decode(doc["dsseEnvelope"]["payload"]))
    st["predicate"]["parts"][1]["sha256"] = "0" * 64
    doc["dsseEnvelope"]["payload"] = base64.b64encode(json.dumps(st).encode()).decode()
    index.write_text(json.dumps(doc))
    code, err, _ = verify(index, keys)
    assert code == 11 and "signature does not verify" in err
    # A part whose index is not beside it.
    index.unlink()
    code, err, _ = verify(files[0], keys)
    assert code == 19 and "no such part index" in err


# -- join ---------------------------------------------------------------------------------------------

def test_join_refuses_a_bad_part_then_succeeds(parts, bundles, keys, tmp_path, three):
    index, files = parts
    good = files[2].read_bytes()
    files[2].write_bytes(good[:-512])
    out = tmp_path / "joined"
    r = run_bundle("join", index, "--trust", keys["release"]["pub"], "--out", out)
    assert r.code == 19 and "part 3 of 3" in r.err and "part 3 [size-mismatch]" in r.out
    assert not out.exists()  # nothing written, not even the directory
    files[2].write_bytes(good)
    r = run_bundle("join", files[0], "--trust", keys["release"]["pub"], "--out", out, "--json")
    assert r.code == 0, r.err
    doc = json.loads(r.out)
    joined = out / "tiny-1.0.0.bundle.tar"
    assert doc["ok"] and doc["joined_to"] == str(joined) and statuses(doc) == ["ok", "ok", "ok"]
    assert joined.read_bytes() == bundles["tiny"].read_bytes()
    assert sorted(p.name for p in out.iterdir()) == [joined.name]  # no temporary file left
    assert run_bundle("verify", joined, "--trust", keys["release"]["pub"]).code == 0
    r = run_bundle("join", index, "--trust", keys["release"]["pub"], "--out", out)
    assert r.code == 6 and "already exists" in r.err
    r = run_bundle("join", bundles["tiny"], "--trust", keys["release"]["pub"], "--out", out)
    assert r.code == 3 and "join takes a part index" in r.err


def test_join_reads_every_part_once(three, keys, tmp_path):
    """No part is read twice: the bytes the verifier streams are the bytes join writes."""
    index, files = three
    out = tmp_path / "j"
    code = (
        "import sys, builtins, os\n"
        "from pathlib import Path\n"
        "reads = {}\n"
        "real = os.open\n"
        "def counting(path, *a, **k):\n"
        "    name = os.path.basename(str(path))\n"
        "    if '.part-' in name: reads[name] = reads.get(name, 0) + 1\n"
        "    return real(path, *a, **k)\n"
        "os.open = counting\n"
        "from bundler import api\n"
        f"res = api.join(Path({str(index)!r}), api.load_trust([Path({str(keys['release']['pub'])!r})]), Path({str(out)!r}))\n"
        "assert res.report.ok, res.report.error\n"
        "print(sorted(reads.values()), len(reads))\n"
    )
    p = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, timeout=120)
    assert p.returncode == 0, p.stderr
    assert p.stdout.strip() == "[1, 1, 1] 3"


# -- extract and run straight from parts ------------------------------------------------------------

def test_extract_and_run_from_parts_without_a_joined_copy(three, bundles, keys, tmp_path):
    index, files = three
    from_parts, from_tar = tmp_path / "p", tmp_path / "t"
    r = run_bundle("extract", files[1], "--trust", keys["release"]["pub"], "--dest", from_parts)
    assert r.code == 0, r.err
    assert run_bundle("extract", bundles["tiny"], "--trust", keys["release"]["pub"], "--dest", from_tar).code == 0
    listing = sorted(str(p.relative_to(from_parts)) for p in from_parts.rglob("*"))
    assert listing == sorted(str(p.relative_to(from_tar)) for p in from_tar.rglob("*"))
    assert all((from_parts / f).read_bytes() == (from_tar / f).read_bytes() for f in listing if (from_tar / f).is_file())
    assert not list(tmp_path.glob("*.bundle.tar"))  # nothing joined on disk
    tmpdir = tmp_path / "tmp"
    tmpdir.mkdir()
    r = run_bundle("run", index, "--trust", keys["release"]["pub"], "--", "selftest", "--json",
                   env={"TMPDIR": str(tmpdir)})
    assert r.code == 0, r.err
    assert json.loads(r.out)["pass"] is True
    assert not [p for p in tmpdir.iterdir() if p.name.startswith("bundle-")]


def test_extract_and_run_refuse_a_bad_part(parts, keys, tmp_path):
    index, files = parts
    data = bytearray(files[1].read_bytes())
    data[100] ^= 1
    files[1].write_bytes(bytes(data))
    dest = tmp_path / "x"
    r = run_bundle("extract", index, "--trust", keys["release"]["pub"], "--dest", dest)
    assert r.code == 19 and "part 2 of 3" in r.err and not dest.exists()
    assert not list(tmp_path.glob(".x.staging-*"))
    r = run_bundle("run", index, "--trust", keys["release"]["pub"], "--", "selftest")
    assert r.code == 19 and "part 2 of 3" in r.err


def test_library_split_verify_join(bundles, keys, tmp_path):
    from bundler import api

    key = api.load_private_key(keys["release"]["key"], None)
    trusted = api.load_trust([keys["release"]["pub"]])
    res = api.split(bundles["tiny"], key, trusted, tmp_path / "parts", max_part_size=third(bundles["tiny"]))
    assert len(res.parts) == 3 and res.key_id == keys["release"]["id"]
    rep = api.verify(res.parts[2], trusted)
    assert rep.ok and [p.status for p in rep.parts.parts] == ["ok"] * 3 and rep.sha256 == res.sha256
    joined = api.join(res.index, trusted, tmp_path / "j")
    assert joined.path is not None and joined.path.read_bytes() == bundles["tiny"].read_bytes()


# -- copy to media ---------------------------------------------------------------------------------

def _fake_mount(tmp_path: Path, where: Path, fstype: str) -> dict:
    """The filesystem-type query's test seam: a mount table (mountinfo format) that puts ``where``
    on ``fstype``; everything else stays as the real table says."""
    table = tmp_path / "mountinfo"
    real = Path("/proc/self/mountinfo").read_text()
    table.write_text(real + f"999 1 0:99 / {where} rw,relatime - {fstype} /dev/sdz1 rw\n")
    return {"BUNDLE_MOUNTINFO": str(table)}


def test_copy_refuses_a_file_fat32_cannot_hold(tmp_path, three):
    big = tmp_path / "big-1.0.0.bundle.tar"
    with open(big, "wb") as f:
        f.truncate(5 << 30)  # sparse: 5 GiB of nothing on this disk
    stick = tmp_path / "stick"
    stick.mkdir()
    r = run_bundle("copy", big, stick, env=_fake_mount(tmp_path, stick, "vfat"))
    assert r.code == 23 and r.err.startswith("error [media]: ") and "vfat" in r.err
    assert "bundle split" in r.err and "--max-part-size 4294967295" in r.err and "Nothing was written" in r.err
    assert list(stick.iterdir()) == []
    # The same stick takes the parts (each well under the limit).
    r = run_bundle("copy", three[0], stick, env=_fake_mount(tmp_path, stick, "vfat"))
    assert r.code == 0, r.err
    assert sorted(p.name for p in stick.iterdir()) == sorted([three[0].name] + [p.name for p in three[1]])


def _fat_image(tmp_path: Path) -> Optional[Path]:
    """A real FAT32 file system made by mkfs.vfat, mounted with the kernel's vfat when it has one,
    else with FUSE fusefat; None where neither can be done (no root, no tools)."""
    img, mnt = tmp_path / "fat.img", tmp_path / "fat"
    if not shutil.which("mkfs.vfat") or os.geteuid() != 0:
        return None
    with open(img, "wb") as f:
        f.truncate(64 << 20)
    mnt.mkdir()
    if subprocess.run(["mkfs.vfat", "-F", "32", str(img)], capture_output=True).returncode != 0:
        return None
    for cmd in (["mount", "-o", "loop", str(img), str(mnt)], ["fusefat", "-o", "rw+", str(img), str(mnt)]):
        if shutil.which(cmd[0]) and subprocess.run(cmd, capture_output=True).returncode == 0:
            return mnt
    return None


def test_copy_to_a_real_fat_file_system(tmp_path, three, keys):
    mnt = _fat_image(tmp_path)
    if mnt is None:
        pytest.skip("cannot make and mount a FAT image here (needs root and mkfs.vfat, with vfat or fusefat)")
    try:
        fstype = next(line.split(" - ")[1].split()[0] for line in open("/proc/self/mountinfo")
                      if line.split()[4] == str(mnt))
        assert fstype in ("vfat", "fuse.fusefat")
        big = tmp_path / "big-1.0.0.bundle.tar"
        with open(big, "wb") as f:
            f.truncate((4 << 30) + 1)
        r = run_bundle("copy", big, mnt)
        assert r.code == 23 and fstype in r.err and "--max-part-size 4294967295" in r.err
        assert os.listdir(mnt) == []
        r = run_bundle("copy", three[0], mnt)
        assert r.code == 0, r.err
        code, _, doc = verify(mnt / three[0].name, keys)
        assert code == 0 and statuses(doc) == ["ok", "ok", "ok"]
    finally:
        subprocess.run(["umount", str(mnt)], capture_output=True)


def test_copy_refuses_when_free_space_is_short(tmp_path):
    huge = tmp_path / "huge-1.0.0.bundle.tar"
    free = shutil.disk_usage(tmp_path).free
    with open(huge, "wb") as f:
        f.truncate(free + (1 << 30))  # sparse: larger than the free space of the file system it is on
    stick = tmp_path / "stick"
    stick.mkdir()
    r = run_bundle("copy", huge, stick)
    assert r.code == 23 and "free" in r.err and "bundle split" in r.err and "several media" in r.err
    assert list(stick.iterdir()) == []


def test_copy_refuses_a_damaged_source_part(parts, tmp_path):
    index, files = parts
    data = bytearray(files[0].read_bytes())
    data[7] ^= 1
    files[0].write_bytes(bytes(data))
    stick = tmp_path / "dst"
    stick.mkdir()
    r = run_bundle("copy", index, stick)
    assert r.code == 19 and "part 1 of 3" in r.err and "damaged at the source" in r.err
    assert not (stick / files[0].name).exists() and not list(stick.glob(f".{files[0].name}.copy-*"))


def _start_copy(src: Path, dest: Path, stop_after: int) -> subprocess.Popen:
    """`bundle copy` that stops itself (SIGSTOP) right after its ``stop_after``-th journal
    checkpoint, so a signal lands mid-copy, after durable progress, every time."""
    env = dict(os.environ, BUNDLE_COPY_TEST_STOP=str(stop_after))
    p = subprocess.Popen([sys.executable, "-m", "bundler.cli", "copy", str(src), str(dest)], env=env,
                         stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)
    deadline = time.monotonic() + 60
    while True:
        with open(f"/proc/{p.pid}/stat") as f:
            if f.read().rsplit(")", 1)[1].split()[0] == "T":
                return p
        assert p.poll() is None and time.monotonic() < deadline, p.communicate()
        time.sleep(0.01)


@pytest.fixture()
def payload(tmp_path) -> Path:
    src = tmp_path / "payload-1.0.0.bundle.tar"
    src.write_bytes(os.urandom(100 << 20))  # 100 MiB: one 64 MiB checkpoint, then more
    return src


def test_copy_killed_by_sigkill_resumes_from_the_last_verified_block(tmp_path, payload):
    stick = tmp_path / "stick"
    stick.mkdir()
    p = _start_copy(payload, stick, 1)
    p.kill()
    p.communicate(timeout=10)
    assert p.returncode == -signal.SIGKILL
    assert not (stick / payload.name).exists()  # never a partial file under the final name
    partial, journal = stick / f".{payload.name}.copy-partial", stick / f".{payload.name}.copy-journal"
    assert partial.stat().st_size >= 64 << 20 and len(journal.read_text().splitlines()) == 1 + 16
    r = run_bundle("copy", payload, stick)
    assert r.code == 0, r.err
    assert f"resumed at byte {64 << 20}, verified" in r.out
    assert (stick / payload.name).read_bytes() == payload.read_bytes()
    assert sorted(os.listdir(stick)) == [payload.name]


def test_copy_resume_recopies_a_block_damaged_on_the_medium(tmp_path, payload):
    stick = tmp_path / "stick"
    stick.mkdir()
    p = _start_copy(payload, stick, 1)
    p.kill()
    p.communicate(timeout=10)
    partial = stick / f".{payload.name}.copy-partial"
    with open(partial, "r+b") as f:  # the stick lost a byte of block 3 (of 16 journalled)
        f.seek((3 << 22) + 5)
        f.write(b"\xff" if payload.read_bytes()[(3 << 22) + 5] != 0xFF else b"\0")
    r = run_bundle("copy", payload, stick)
    assert r.code == 0, r.err
    assert f"resumed at byte {3 << 22}, verified" in r.out
    assert (stick / payload.name).read_bytes() == payload.read_bytes()


@pytest.mark.parametrize("sig, code", [(signal.SIGTERM, 143), (signal.SIGINT, 130)])
def test_a_signal_stops_copy_cleanly_and_the_rerun_succeeds(tmp_path, payload, sig, code):
    stick = tmp_path / "stick"
    stick.mkdir()
    p = _start_copy(payload, stick, 1)
    p.send_signal(sig)
    os.kill(p.pid, signal.SIGCONT)
    _, err = p.communicate(timeout=20)
    assert p.returncode == code and err.strip().endswith("terminated" if code == 143 else "interrupted")
    assert "Traceback" not in err
    assert not (stick / payload.name).exists()
    r = run_bundle("copy", payload, stick)
    assert r.code == 0 and "resumed at byte" in r.out, r.err
    assert (stick / payload.name).read_bytes() == payload.read_bytes()
    r = run_bundle("copy", payload, stick)  # once more: already there, identical
    assert r.code == 0 and "already there, identical" in r.out


def test_no_second_copy_of_the_part_rules_in_the_library():
    """The part-set rules are the shared verifier's: the library must not define its own."""
    shared_only = {"parse_part_index", "load_part_index", "HeaderMarks", "part_file_name", "part_index_name",
                   "part_index_for", "split_id_for", "_judge_part", "_run_parts", "_PartsSource", "_key_reason",
                   "_candidate_keys", "part_lines"}
    for path in sorted((REPO / "bundler").rglob("*.py")):
        tree = ast.parse(path.read_text())
        defined = {n.name for n in ast.walk(tree) if isinstance(n, (ast.FunctionDef, ast.ClassDef))}
        assert not defined & shared_only, (path, defined & shared_only)
