"""Issue 13, family 7: key hygiene, through the CLI (tests/test_keys.py has the basics: 0600,
encrypted with BUNDLE_KEY_PASSPHRASE, no passphrase source -> 4, a 0640 key refused, the wrong
passphrase).

- A private key never enters a bundle, even when it lies in the model's own directory (the
  signing key itself, and an unencrypted one): no member is named like it, and none of its PEM
  lines, nor the private scalar, occur anywhere in the bundle's bytes.
- Keys that group or others can read, write or execute are refused, also behind a symlink.
- Keys are encrypted at rest by default: asked on a real terminal (a pty, twice, never echoed), and
  the file is PBES2 (PBKDF2-HMAC-SHA256, AES-256-CBC) with the iteration count recorded.
- The passphrase never appears in stdout, stderr, error messages, `--json`, any file `create`
  leaves (the bundle, its logs), or the command line and name (/proc/PID/cmdline, comm) of
  `bundle create` and its build workers while they run.
- Key generation draws on the kernel's CSPRNG: under strace, OpenSSL's entropy pool is seeded by a
  blocking getrandom(2) call during `keys generate`; keys made in two forked children differ (the
  generator reseeds after fork); signing takes no randomness at all (RFC 6979).
"""

from __future__ import annotations

import json
import os
import pty
import select
import shutil
import subprocess
import sys
import time
from pathlib import Path
from typing import Dict, List, Tuple

import pytest

from conftest import REPO, make_conv_model, run_bundle

PASSPHRASE = "campaign-Päss\u2028phrase-qzxvQZXVkwjy"  # non-ASCII and a line separator: it must not leak in any form
SHAPE = "x:1x3x16x16:2x3x16x16:4x3x16x16"


def _forms(secret: str) -> List[bytes]:
    """The ways a passphrase could show up in bytes: UTF-8, and escaped as printable() and JSON would."""
    return [secret.encode(), secret.encode("unicode_escape"), json.dumps(secret).encode()[1:-1], b"qzxvQZXVkwjy"]


def _assert_absent(blob: bytes, what: str) -> None:
    for form in _forms(PASSPHRASE):
        assert form not in blob, f"the passphrase ({form!r}) appears in {what}"


def _generate(tmp_path: Path, name: str, passphrase: str = "") -> Tuple[Path, Path]:
    env = {"BUNDLE_KEY_PASSPHRASE": passphrase} if passphrase else {}
    r = run_bundle("keys", "generate", name, "--dir", tmp_path, *([] if passphrase else ["--no-passphrase"]), env=env)
    assert r.code == 0, r.err
    if passphrase:
        _assert_absent((r.out + r.err).encode(), "keys generate's output")
    return tmp_path / f"{name}.key", tmp_path / f"{name}.pub"


# -- a key inside the model directory, and the passphrase everywhere --------------------------------

def _children(pid: int) -> List[int]:
    try:
        return [int(c) for c in Path(f"/proc/{pid}/task/{pid}/children").read_text().split()]
    except OSError:
        return []


def _proc_samples(p: subprocess.Popen) -> Dict[int, set]:
    """Poll /proc while ``p`` runs: every (cmdline, comm) seen, per pid of it and its descendants."""
    seen: Dict[int, set] = {}
    while p.poll() is None:
        todo = [p.pid]
        while todo:
            pid = todo.pop()
            todo += _children(pid)
            try:
                cmd = Path(f"/proc/{pid}/cmdline").read_bytes()
                comm = Path(f"/proc/{pid}/comm").read_bytes()
            except OSError:
                continue
            seen.setdefault(pid, set()).add((cmd, comm))
        time.sleep(0.002)
    return seen


def test_key_in_the_model_directory_and_the_passphrase_leak_nowhere(tmp_path) -> None:  # noqa: ANN001
    model_dir = tmp_path / "model"
    model_dir.mkdir()
    model = make_conv_model(model_dir / "tiny.onnx")
    key, pub = _generate(model_dir, "signing", PASSPHRASE)  # the signing key lies beside the model
    loose, _ = _generate(model_dir, "loose")  # and an unencrypted one
    out = tmp_path / "out"
    env = {**os.environ, "BUNDLE_KEY_PASSPHRASE": PASSPHRASE, "PYTHONPATH": str(REPO)}
    p = subprocess.Popen([sys.executable, "-m", "bundler.cli", "create", str(model), "--name", "tiny", "--version", "1.0.0",
                          "--target", "sm_86", "--target", "rtx5090", "--shape", SHAPE,
                          "--key", str(key), "--out", str(out), "--backend", "tensorrt-rtx"],
                         env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE, cwd=model_dir)
    seen = _proc_samples(p)
    stdout, stderr = p.communicate(timeout=600)
    assert p.returncode == 0, stderr.decode()
    assert p.pid in seen and sum(len(v) for v in seen.values()) >= 1
    for pid, titles in seen.items():
        for cmd, comm in titles:
            _assert_absent(cmd + comm, f"/proc/{pid}/cmdline or comm")
    _assert_absent(stdout + stderr, "create's output")
    bundle = out / "tiny-1.0.0.bundle.tar"
    files = [f for f in out.rglob("*") if f.is_file()]
    assert bundle in files
    for f in files:  # the bundle, and anything else create left in --out
        _assert_absent(f.read_bytes(), str(f))

    from cryptography.hazmat.primitives import serialization
    blob = bundle.read_bytes()
    import tarfile
    names = tarfile.open(bundle).getnames()
    assert not [n for n in names if n.endswith((".key", ".pem", ".pub"))], names
    for k in (key, loose):
        for line in k.read_bytes().splitlines():
            if not line.startswith(b"-----"):
                assert line not in blob, f"a line of {k.name} is in the bundle"
    scalar = serialization.load_pem_private_key(loose.read_bytes(), None).private_numbers().private_value
    assert scalar.to_bytes(32, "big") not in blob and b"%064x" % scalar not in blob
    # verify --json with the passphrase in the environment: nothing of it either
    r = run_bundle("verify", bundle, "--trust", pub, "--json", env={"BUNDLE_KEY_PASSPHRASE": PASSPHRASE})
    assert r.code == 0
    _assert_absent((r.out + r.err).encode(), "verify --json")


def test_wrong_passphrase_errors_do_not_quote_it(tmp_path, tiny_bundle, tiny_model, keys) -> None:  # noqa: ANN001
    key, _ = _generate(tmp_path, "enc", "right-one")
    for args in (("sign", tiny_bundle, "--key", key, "--trust", keys["release"]["pub"], "--out", tmp_path / "o"),
                 ("create", tiny_model, "--name", "t", "--version", "1.0.0", "--target", "sm_86", "--shape", SHAPE,
                  "--key", key, "--out", tmp_path / "o2")):
        r = run_bundle(*args, env={"BUNDLE_KEY_PASSPHRASE": PASSPHRASE})
        assert r.code == 4 and "wrong passphrase" in r.err, r.err
        _assert_absent((r.out + r.err).encode(), f"bundle {args[0]}'s error")
    assert not (tmp_path / "o").exists() and not (tmp_path / "o2").exists()


# -- permissions ------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode", [0o640, 0o620, 0o610, 0o604, 0o602, 0o601, 0o644])
def test_keys_group_or_others_can_touch_are_refused(mode, tmp_path, tiny_bundle, keys) -> None:  # noqa: ANN001
    """Each of the six group and other bits alone, and 0644 behind a symlink (the file's mode counts)."""
    key = tmp_path / "k.key"
    shutil.copyfile(keys["release"]["key"], key)
    os.chmod(key, mode)
    if mode == 0o644:
        key = tmp_path / "link.key"
        key.symlink_to(tmp_path / "k.key")
    r = run_bundle("sign", tiny_bundle, "--key", key, "--trust", keys["release"]["pub"], "--out", tmp_path / "o")
    assert r.code == 4, r.err
    assert f"accessible to group or others (mode {mode:04o})" in r.err and f"chmod 600 {key}" in r.err
    assert not (tmp_path / "o").exists()


def test_owner_only_modes_are_accepted(tmp_path, tiny_bundle, keys) -> None:  # noqa: ANN001
    """Control for the refusals above: 0600 and 0400 sign (with another key, since the release key
    signed the bundle already)."""
    for mode in (0o600, 0o400):
        key = tmp_path / f"k{mode:o}.key"
        shutil.copyfile(keys["other"]["key"], key)
        os.chmod(key, mode)
        out = tmp_path / f"o{mode:o}"
        r = run_bundle("sign", tiny_bundle, "--key", key, "--trust", keys["release"]["pub"], "--out", out)
        assert r.code == 0, r.err


# -- encrypted at rest, asked on a terminal ---------------------------------------------------------

def _pty_run(args: List[str], answers: List[Tuple[bytes, str]], timeout: float = 120) -> Tuple[int, bytes]:
    """Run `bundle ARGS` on a pseudo-terminal (its controlling terminal), answering each prompt.

    A prompt counts as seen with its trailing space: click prints the text, then getpass turns
    echo off (flushing anything typed so far) and prints the space. Answering earlier would be
    type-ahead, which the terminal echoes before getpass can stop it."""
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    env.pop("BUNDLE_KEY_PASSPHRASE", None)
    pid, fd = pty.fork()
    if pid == 0:  # pragma: no cover - the child
        os.execvpe(sys.executable, [sys.executable, "-m", "bundler.cli", *args], env)
    out, pos, pending = b"", 0, list(answers)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        ready, _, _ = select.select([fd], [], [], 0.2)
        if ready:
            try:
                chunk = os.read(fd, 4096)
            except OSError:  # EIO: the child closed the terminal
                break
            if not chunk:
                break
            out += chunk
        if pending and pending[0][0] in out[pos:]:
            pos = out.index(pending[0][0], pos) + len(pending[0][0])
            os.write(fd, pending.pop(0)[1].encode() + b"\r")
    done, status = os.waitpid(pid, os.WNOHANG)
    if done == 0:  # still waiting for input: end it, then report
        os.kill(pid, 9)
        _, status = os.waitpid(pid, 0)
    os.close(fd)
    assert not pending, f"prompts not seen: {pending}; output: {out!r}"
    return os.waitstatus_to_exitcode(status), out


def test_generate_asks_on_a_terminal_and_encrypts_without_echo(tmp_path, tiny_bundle, keys) -> None:  # noqa: ANN001
    code, out = _pty_run(["keys", "generate", "tty", "--dir", str(tmp_path)],
                         [(b"Passphrase for the new key: ", PASSPHRASE), (b"Repeat for confirmation: ", PASSPHRASE)])
    assert code == 0, out
    _assert_absent(out, "the terminal (echo)")
    key = tmp_path / "tty.key"
    pem = key.read_bytes()
    assert pem.startswith(b"-----BEGIN ENCRYPTED PRIVATE KEY-----") and (key.stat().st_mode & 0o777) == 0o600
    kdf = _pbes2(pem)
    assert kdf["scheme"] == "PBES2" and kdf["kdf"] == "PBKDF2-HMAC-SHA256" and kdf["cipher"] == "AES-256-CBC", kdf
    assert kdf["iterations"] >= 2048, kdf  # OpenSSL's default for PKCS#8: see docs/security.md
    from cryptography.hazmat.primitives import serialization
    with pytest.raises(TypeError):
        serialization.load_pem_private_key(pem, None)
    serialization.load_pem_private_key(pem, PASSPHRASE.encode())
    # ... and the key signs with the passphrase typed at its prompt (again unechoed)
    code, out = _pty_run(["sign", str(tiny_bundle), "--key", str(key), "--trust", str(keys["release"]["pub"]),
                          "--out", str(tmp_path / "signed")], [(b".key: ", PASSPHRASE)])
    assert code == 0, out
    _assert_absent(out, "the terminal (echo)")


def _der(data: bytes, pos: int = 0) -> Tuple[int, int, int]:
    tag, n = data[pos], data[pos + 1]
    pos += 2
    if n & 0x80:
        k = n & 0x7F
        n, pos = int.from_bytes(data[pos:pos + k], "big"), pos + k
    return tag, pos, pos + n


def _pbes2(pem: bytes) -> dict:
    """What protects an EncryptedPrivateKeyInfo (RFC 5958/8018), read from its DER."""
    import base64
    der = base64.b64decode(b"".join(line for line in pem.splitlines() if not line.startswith(b"-----")))
    names = {"2a864886f70d01050d": "PBES2", "2a864886f70d01050c": "PBKDF2", "2a864886f70d0209": "HMAC-SHA256",
             "60864801650304012a": "AES-256-CBC", "608648016503040102": "AES-128-CBC"}
    _, s0, _ = _der(der)
    _, a0, _ = _der(der, s0)  # AlgorithmIdentifier
    _, o0, o1 = _der(der, a0)
    scheme = names.get(der[o0:o1].hex(), der[o0:o1].hex())
    _, p0, _ = _der(der, o1)  # PBES2-params
    _, k0, k1 = _der(der, p0)  # keyDerivationFunc
    _, ko0, ko1 = _der(der, k0)
    _, kp0, kp1 = _der(der, ko1)  # PBKDF2-params
    _, salt0, salt1 = _der(der, kp0)
    _, it0, it1 = _der(der, salt1)
    rest, prf = it1, "HMAC-SHA1"
    while rest < kp1:
        tag, r0, r1 = _der(der, rest)
        if tag == 0x30:
            _, po0, po1 = _der(der, r0)
            prf = names.get(der[po0:po1].hex(), der[po0:po1].hex())
        rest = r1
    _, e0, _ = _der(der, k1)  # encryptionScheme
    _, eo0, eo1 = _der(der, e0)
    return {"scheme": scheme, "kdf": f"{names.get(der[ko0:ko1].hex())}-{prf}",
            "iterations": int.from_bytes(der[it0:it1], "big"), "salt_bytes": salt1 - salt0,
            "cipher": names.get(der[eo0:eo1].hex(), der[eo0:eo1].hex())}


# -- where key material comes from ------------------------------------------------------------------

def test_key_generation_seeds_from_the_kernel_csprng(tmp_path) -> None:  # noqa: ANN001
    """`ec.generate_private_key` is OpenSSL's (statically linked into cryptography): its DRBG takes
    its seed from the kernel with getrandom(2). strace -k shows the blocking call (flags 0, not
    GRND_INSECURE/NONBLOCK) made by OpenSSL's entropy pool while `keys generate` runs."""
    if shutil.which("strace") is None:
        pytest.skip("no strace")
    log = tmp_path / "strace.txt"
    env = {**os.environ, "PYTHONPATH": str(REPO)}
    p = subprocess.run(["strace", "-f", "-k", "-qq", "-e", "trace=getrandom", "-o", str(log), sys.executable, "-m",
                        "bundler.cli", "keys", "generate", "s", "--dir", str(tmp_path / "k"), "--no-passphrase"],
                       capture_output=True, text=True, env=env, timeout=120)
    if p.returncode != 0 and ("ptrace" in p.stderr or "-k" in p.stderr or "unwind" in p.stderr):
        pytest.skip(f"strace cannot trace here: {p.stderr.strip()[:200]}")
    assert p.returncode == 0, p.stderr
    calls = log.read_text().split("getrandom(")[1:]  # each: its arguments and result, then its stack
    blocking = [c for c in calls if c.split("\n", 1)[0].split(") =")[0].endswith(", 0")]
    assert any("ossl_pool_acquire_entropy" in c or "libcrypto" in c for c in blocking), log.read_text()[-3000:]


FORKED = r"""
import os, sys
from pathlib import Path
from bundler.signing import generate_key
top = Path(sys.argv[1])
generate_key("parent", top, None)  # the generator is initialised before the forks
pids = []
for name in ("a", "b"):
    pid = os.fork()
    if pid == 0:
        generate_key(name, top, None)
        os._exit(0)
    pids.append(pid)
for pid in pids:
    assert os.waitstatus_to_exitcode(os.waitpid(pid, 0)[1]) == 0
"""


def test_keys_made_in_forked_children_differ(tmp_path) -> None:  # noqa: ANN001
    """A user-space generator copied by fork() would give both children the same key; OpenSSL
    reseeds in each child. (Distinctness alone proves little; it is the fork case that matters.)"""
    p = subprocess.run([sys.executable, "-c", FORKED, str(tmp_path)], capture_output=True, text=True, timeout=120,
                       env={**os.environ, "PYTHONPATH": str(REPO)})
    assert p.returncode == 0, p.stderr
    keys = {n: (tmp_path / f"{n}.key").read_bytes() for n in ("parent", "a", "b")}
    assert len(set(keys.values())) == 3


def test_signing_takes_no_randomness(keys) -> None:  # noqa: ANN001
    """RFC 6979: the ECDSA nonce comes from the key and the message, so a weak generator at signing
    time cannot leak the key, and signing the same statement twice gives the same bytes."""
    from bundler.signing import load_private_key, make_statement, sign_statement
    k = load_private_key(keys["release"]["key"], None)
    st = make_statement("t-1.0.0", {"manifest.json": "0" * 64})
    assert sign_statement(st, k) == sign_statement(st, k)


def test_only_cryptography_makes_keys() -> None:
    """No module of bundler/ imports `random` (a Mersenne twister) or makes keys another way."""
    import ast
    for path in (REPO / "bundler").rglob("*.py"):
        tree = ast.parse(path.read_text())
        imported = {a.name.split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.Import) for a in n.names}
        imported |= {(n.module or "").split(".")[0] for n in ast.walk(tree) if isinstance(n, ast.ImportFrom)}
        assert "random" not in imported, path
        calls = {n.func.attr for n in ast.walk(tree) if isinstance(n, ast.Call) and isinstance(n.func, ast.Attribute)}
        if "generate_private_key" in calls:
            assert path.name == "signing.py", path
