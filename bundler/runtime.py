"""The runtime side on hosts where bundler is installed: the standalone verifier and `bundle run`.

`bundle run` verifies with the library (cryptography, streaming) and then hands over to the
bundle's own loader. The loader verifies once more before it loads anything, and here it is
pointed at the verifier installed with bundler, not the copy inside the bundle: a verifier
shipped in a bundle is only as trustworthy as the bundle.
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
from importlib import resources
from pathlib import Path
from typing import Dict, List

from .errors import InputError, OutputError, error_for_code
from .signing import TrustedKey

VERIFIER = "verify.py"
LOADER = "loader.py"


def verifier_bytes() -> bytes:
    return resources.files("runtime_stub").joinpath(VERIFIER).read_bytes()


def write_verifier(dest: Path) -> None:
    """Write the standalone verifier to a new file (never overwriting), mode 0755."""
    data = verifier_bytes()
    try:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_NOFOLLOW, 0o755)
    except FileExistsError:
        raise OutputError(f"{dest}: already exists; not overwritten") from None
    except OSError as e:
        raise OutputError(f"{dest}: cannot write ({e.strerror})") from None
    with os.fdopen(fd, "wb") as f:
        f.write(data)


def run_loader(bundle: Path, trusted: Dict[str, TrustedKey], trust_paths: List[Path], args: List[str]) -> int:
    """Verify ``bundle`` (a tar, extracted into a temporary directory, or a directory), then run
    ``runtime/loader.py ARGS`` from it. Returns the loader's exit code."""
    from .verify import verify_bundle

    bundle = Path(bundle)
    if not args:
        raise InputError("give the loader command after --, e.g. bundle run B --trust K -- selftest")
    work = None
    try:
        if bundle.is_dir():
            root = bundle
        elif bundle.is_file():
            work = Path(tempfile.mkdtemp(prefix="bundle-run-"))
            root = work / "bundle"
            report = verify_bundle(bundle, trusted, extract_to=root)
            if not report.ok:
                assert report.error is not None
                raise error_for_code(report.exit_code, report.error.message, report.error.member)
        else:
            raise InputError(f"{bundle}: no such bundle file or directory")
        loader = root / "runtime" / LOADER
        if not loader.is_file():
            raise InputError(f"{bundle}: has no runtime/{LOADER}; it was sealed by an older trt-bundler")
        with tempfile.TemporaryDirectory(prefix="bundle-verifier-") as vd:
            verifier = Path(vd) / VERIFIER
            write_verifier(verifier)
            cmd = [sys.executable, str(loader), args[0], "--bundle", str(root), "--verifier", str(verifier)]
            for t in trust_paths:
                cmd += ["--trust", str(t)]
            return subprocess.run(cmd + args[1:]).returncode
    finally:
        if work is not None:
            shutil.rmtree(work, ignore_errors=True)
