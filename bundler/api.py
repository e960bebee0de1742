"""The public library API: everything the `bundle` CLI does, callable from Python.

    from bundler import api
    rec = api.build(api.BuildRequest(Path("m.onnx"), "det", "1.0.0", ["sm_86", "rtx5090"]), Path("build/"))
    res = api.seal([Path("build/")], api.load_private_key(Path("k.key"), None), Path("out/"))
    rep = api.verify(res.path, api.load_trust([Path("k.pub")]))
    assert rep.ok
"""

from __future__ import annotations

import dataclasses
from pathlib import Path
from typing import Dict, Optional, Union


from .archive import Limits
from .backends import BuildRequest, build, select_backend
from .errors import BundleError, ExitCode
from .inspect import InspectReport, inspect_bundle
from .manifest import BuildRecord, Manifest
from .engine_header import inspect_engine_file
from .model import ShapeSpec, fix_shared_dims, load_model, parse_shape, resolve_profile
from .runtime import run_loader, write_verifier
from .spec import build_all, create_all, load_spec, request_from_flags
from .seal import SealResult, seal
from .create import create
from .cache import BuildCache
from .farm import farm_create
from .countersign import SignResult, sign_bundle as sign
from .signing import (
    GeneratedKey,
    TrustedKey,
    generate_key,
    key_id,
    load_private_key,
    load_public_key,
    load_trust,
    parse_expiry,
)
from .targets import Target, parse_target
from .media import CopyResult, copy_to_media as copy
from .parts import JoinResult, SplitResult, join_parts as join, split_bundle as split
from .verify import VerifyReport, verify_bundle
from runtime_stub.verify import StateOptions, TrustPolicy, load_policy, state_options, verify_policy_update

__all__ = [
    "BuildCache", "BuildRequest", "BuildRecord", "BundleError", "ExitCode", "GeneratedKey", "InspectReport", "Limits",
    "Manifest", "SealResult", "ShapeSpec", "SignResult", "Target", "TrustedKey", "VerifyReport",
    "build", "build_all", "create", "create_all", "extract", "farm_create", "fix_shared_dims", "generate_key", "inspect",
    "inspect_engine_file", "key_id", "load_model", "load_private_key", "load_public_key", "load_spec", "load_trust",
    "parse_expiry", "parse_shape", "parse_target", "request_from_flags", "resolve_profile", "run_loader", "seal",
    "select_backend", "sign", "verify", "write_verifier",
    "StateOptions", "TrustPolicy", "load_policy", "state_options", "verify_policy_update",
    "CopyResult", "JoinResult", "SplitResult", "copy", "join", "split",
]


def verify(
    bundle: Path, trusted: "Union[Dict[str, TrustedKey], TrustPolicy]", *, require_host: bool = False,
    limits: Limits = Limits(), allow_expired: bool = False, state: Optional[StateOptions] = None,
) -> VerifyReport:
    """Verify a bundle tar or extracted directory. ``trusted``: keys (any one signature counts,
    as ``--trust``) or a `TrustPolicy` (`load_policy`, as ``--policy``); ``state``: the host
    state for rollback protection (`state_options`, as ``--state``/``--record``)."""
    return verify_bundle(bundle, trusted, limits=limits, require_host=require_host, allow_expired=allow_expired,
                         state=state)


def extract(bundle: Path, trusted: "Union[Dict[str, TrustedKey], TrustPolicy]", dest: Path, *,
            limits: Limits = Limits(), allow_expired: bool = False, state: Optional[StateOptions] = None) -> VerifyReport:
    """Verify while extracting; ``dest`` appears only when every check passed (and, with a
    ``state``, the host state accepted the bundle, which is then recorded)."""
    if state is not None:
        state = dataclasses.replace(state, record=True)
    return verify_bundle(bundle, trusted, limits=limits, extract_to=dest, allow_expired=allow_expired, state=state)


def inspect(bundle: Path) -> InspectReport:
    return inspect_bundle(bundle)

from .export_triton import TritonExport, export_triton  # noqa: E402 - `bundle export --triton` (docs/triton.md)

__all__ += ["TritonExport", "export_triton"]
