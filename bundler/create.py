"""`create`: build into a private directory, then seal; only the bundle is left behind.

Its own module so that the spec runner (bundler/spec.py) and the public API (bundler/api.py)
both use it without importing each other.
"""

from __future__ import annotations

from pathlib import Path
from typing import Callable, List, Optional

from cryptography.hazmat.primitives.asymmetric import ec

from .backends import BuildRequest, build
from .errors import OutputError
from .fsutil import check_out_dir, make_dirs, make_workdir, remove_made_dirs, remove_stale, remove_tree
from .seal import SealResult, seal

WORK_PREFIX = ".bundle-build-"  # + pid: a later run into the same --out removes a killed run's


def create(
    request: BuildRequest,
    key: ec.EllipticCurvePrivateKey,
    out_dir: Path,
    progress: Optional[Callable[..., None]] = None,
    expires: Optional[str] = None,
    ledger: Optional[Path] = None,
    cache: Optional[Path] = None,
) -> SealResult:
    """`build` into a private temporary directory, then `seal` (with the signed ``expires``, if
    given, and the signing ledger's entry when ``ledger`` is set); only the bundle is left behind.
    ``cache``: a build cache directory (`bundler.cache`)."""
    out_dir = Path(out_dir)
    check_out_dir(out_dir, "NAME-VERSION.bundle.tar")
    final = out_dir / f"{request.name}-{request.version}.bundle.tar"
    if final.exists():
        raise OutputError(f"{final}: already exists; bundles are never overwritten")
    if ledger is not None:  # a missing or broken ledger must cost nothing, not a build (seal reads it again)
        from .ledger import head_for_signing

        head_for_signing(ledger)
    made: List[Path] = []
    try:
        made = make_dirs(out_dir)
        remove_stale(out_dir, WORK_PREFIX)  # what a SIGKILLed create left behind
        work = make_workdir(out_dir, WORK_PREFIX)
    except OSError as e:
        remove_made_dirs(made)
        raise OutputError(f"{out_dir}: cannot write there ({e.strerror})") from None
    try:
        build(request, work / "build", progress=progress,
              logs_dir=out_dir / f"{request.name}-{request.version}.failed-logs", cache=cache)
        result = seal([work / "build"], key, out_dir, expires=expires, ledger=ledger)
    except BaseException:
        # A failed create leaves nothing new: no --out made for it (unless it now holds the
        # builder logs of a failed build, which the error names), no work directory.
        remove_tree(work)
        remove_made_dirs(made)
        raise
    remove_tree(work)
    return result
