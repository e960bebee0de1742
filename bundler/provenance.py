"""SLSA v1.0 provenance: what a build records about itself, and the signed statement `seal` packs.

Each bundle carries ``provenance/slsa-v1.intoto.json``: a DSSE envelope (DSSE's own JSON form,
the one in-toto and cosign use for attestations) over an in-toto Statement v1 with predicate type
``https://slsa.dev/provenance/v1``, one subject per engine, signed with the sealing key. It is a
signed member of the bundle like any other (listed in the manifest, SHA256SUMS and the signed
statement), so removing or swapping it breaks the bundle's signature; its own signature lets it
be checked on its own, by SLSA and in-toto tooling, once taken out of the bundle
(docs/auditors.md). The rules a verifier applies to it live in runtime_stub/verify.py
(`check_provenance`); docs/bundle-format.md section 14 is the specification.

Where the facts come from: `bundle build` records what it was asked and when and where it ran
(`BuildProvenance` in ``build.json``: `record_build`); everything else (engines and their
digests, builders and versions, converters, calibration data) is in the build records that
`seal` merges, so the statement is a pure function of the build records and the manifest.
Sealing the same build directories again gives the same bytes (deterministic JSON, RFC 6979
signatures), which reproducible sealing depends on.
"""

from __future__ import annotations

import base64
import dataclasses
import datetime as _dt
import hashlib
import json
import math
import socket
import uuid
from pathlib import Path
from typing import Any, Dict, List, Optional, Sequence, Tuple

from cryptography.hazmat.primitives.asymmetric import ec

from runtime_stub.verify import (  # noqa: F401 - re-exported: the library's names for them
    MAX_PROVENANCE_SIZE,
    PAYLOAD_TYPE,
    PROVENANCE,
    SLSA_PREDICATE_TYPE,
    STATEMENT_TYPE,
    ProvenanceMissingError,
    ProvenanceReport,
    pae,
)

from . import __version__
from .manifest import BuildProvenance, BuildRecord, Manifest

# The build type names this recipe (what `externalParameters` mean and how a bundle is made from
# them); the builder id names the trust boundary that ran it: bundler on the build host, offline.
# Neither is a fetchable URL: SLSA only needs URIs that identify (docs/bundle-format.md 14.2).
BUILD_TYPE = "https://trt-bundler/build/v1"
BUILDER_ID = "https://trt-bundler/builder/local/v1"


def utc_now() -> str:
    return _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


def _sample_value(v: Any) -> Any:
    """A --sample-value for JSON: the strict parser refuses NaN and infinities, so those are text."""
    return v if not isinstance(v, float) or math.isfinite(v) else repr(v)


def _file_ref(path: Optional[Path]) -> Optional[Dict[str, str]]:
    """A named input file as (last path component, SHA-256): a directory's path on the build host
    is nobody's business, its content is. A directory (calibration sets) gets its name only: its
    digest is the calibration record's."""
    if path is None:
        return None
    path = Path(path)
    if not path.is_file():
        return {"name": path.name}
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return {"name": path.name, "sha256": h.hexdigest()}


def build_parameters(plan: Any) -> Dict[str, Any]:
    """SLSA ``externalParameters`` of one build: everything the user chose, as given (targets as
    typed) or as resolved where the resolution is the meaning (profiles, precisions)."""
    r = plan.request
    return {
        "model": Path(r.model).name,
        "targets": list(r.targets),
        "precisions": list(plan.precisions),
        "profiles": [{n: dataclasses.asdict(rng) for n, rng in p.items()} for p in plan.profiles],
        "flags": {
            "backend": r.backend,
            "workspace": r.workspace,
            "golden": r.golden,
            "sample_input": _file_ref(r.sample_input),
            "sample_values": {k: _sample_value(v) for k, v in sorted(r.sample_values.items())},
            "calibration": _file_ref(r.calibration) if r.calibration is not None else None,
            "timing_cache": str(r.timing_cache) if r.timing_cache is not None else None,
            "keep_fp32": list(r.keep_fp32),
            "accept_accuracy_loss": r.accept_accuracy_loss,
        },
        "spec": dict(r.spec) if r.spec is not None else None,
    }


def record_build(plan: Any, started: str) -> BuildProvenance:
    """The provenance facts of a build that has just finished (`finish_build`)."""
    return BuildProvenance(started=started, finished=utc_now(), host=socket.gethostname(),
                           invocation=str(uuid.uuid4()), parameters=build_parameters(plan))


def _derived(rec: BuildRecord) -> BuildProvenance:
    """For a build directory made before builds recorded provenance: what its engine records say
    (targets by label, times spanning the engines' builds). Marked by an empty invocation id."""
    starts = [_dt.datetime.strptime(e.started, "%Y-%m-%dT%H:%M:%SZ").replace(tzinfo=_dt.timezone.utc)
              for e in rec.engines]
    ends = [s + _dt.timedelta(seconds=e.duration_s) for s, e in zip(starts, rec.engines)]
    fmt = "%Y-%m-%dT%H:%M:%SZ"
    return BuildProvenance(
        started=min(starts).strftime(fmt), finished=max(ends).strftime(fmt),
        host=", ".join(dict.fromkeys(e.host for e in rec.engines)), invocation="",
        parameters={
            "model": rec.model.path.rsplit("/", 1)[-1],
            "targets": list(dict.fromkeys(e.target.label for e in rec.engines)),
            "precisions": list(dict.fromkeys(e.build.precision for e in rec.engines)),
            "profiles": [{n: dataclasses.asdict(rng) for n, rng in p.items()} for p in rec.engines[0].build.profiles],
            "flags": None, "spec": None,
        })


def _package(text: str) -> Tuple[str, str]:
    """(name, version) from a converter record such as ``onnxconverter-common 1.16.0 (keep_io_types)``."""
    parts = text.split()
    return (parts[0], parts[1]) if len(parts) >= 2 else (text, "")


def _dependencies(manifest: Manifest, provs: Sequence[BuildProvenance]) -> List[Dict[str, Any]]:
    """SLSA ``resolvedDependencies``: the source model, each builder product and version, each
    converter or quantizer and the calibration data, each by digest or package URL."""
    m = manifest.model
    deps: List[Dict[str, Any]] = [{"name": m.path, "digest": {"sha256": m.sha256},
                                   "annotations": {"role": "source model"}}]
    seen = set()
    for e in manifest.engines:
        b = e.backend
        if (b.name, b.version) in seen:
            continue
        seen.add((b.name, b.version))
        ann = {"role": "builder", "module": b.module}
        if b.cuda is not None:
            ann["cuda"] = b.cuda
        deps.append({"name": b.name, "uri": f"pkg:generic/{b.name}@{b.version}", "annotations": ann})
    for v in manifest.variants:
        name, version = _package(v.converter)
        role = "quantizer" if v.calibration is not None else "converter"
        deps.append({"name": name, "uri": f"pkg:pypi/{name}@{version}",
                     "annotations": {"role": role, "precision": v.precision, "converter": v.converter}})
        if v.calibration is not None:
            c = v.calibration
            deps.append({"name": f"calibration/{c.source}", "digest": {"sha256": c.sha256},
                         "annotations": {"role": "calibration data", "precision": v.precision, "files": c.files,
                                         "samples": c.samples}})
    for p in provs:
        si = (p.parameters.get("flags") or {}).get("sample_input")
        if si and si.get("sha256") and not any(d.get("digest") == {"sha256": si["sha256"]} for d in deps):
            deps.append({"name": f"sample-input/{si['name']}", "digest": {"sha256": si["sha256"]},
                         "annotations": {"role": "golden inputs"}})
    return deps


def make_statement(records: Sequence[Tuple[Path, BuildRecord]], manifest: Manifest) -> bytes:
    """The in-toto statement: one subject per engine (path and SHA-256, as in the manifest), the
    SLSA v1 predicate from the build records. Deterministic: sorted keys, two-space indent,
    ASCII (docs/bundle-format.md 14.1)."""
    provs = [rec.provenance or _derived(rec) for _, rec in records]
    builds = []
    for p in provs:
        builds.append({"host": p.host, "invocationId": p.invocation, "startedOn": p.started, "finishedOn": p.finished})
    metadata: Dict[str, Any] = {
        "invocationId": "+".join(p.invocation for p in provs if p.invocation) or None,
        "startedOn": min(p.started for p in provs),
        "finishedOn": max(p.finished for p in provs),
        "trtbundler_host": ", ".join(dict.fromkeys(p.host for p in provs)),
        "trtbundler_builds": builds,
    }
    if metadata["invocationId"] is None:
        del metadata["invocationId"]
    statement = {
        "_type": STATEMENT_TYPE,
        "subject": [{"name": e.path, "digest": {"sha256": e.sha256}} for e in manifest.engines],
        "predicateType": SLSA_PREDICATE_TYPE,
        "predicate": {
            "buildDefinition": {
                "buildType": BUILD_TYPE,
                "externalParameters": {"name": manifest.name, "version": manifest.version,
                                       "builds": [p.parameters for p in provs]},
                "resolvedDependencies": _dependencies(manifest, provs),
            },
            "runDetails": {
                "builder": {"id": BUILDER_ID, "version": {"trt-bundler": __version__}},
                "metadata": metadata,
            },
        },
    }
    return (json.dumps(statement, sort_keys=True, indent=2, ensure_ascii=True, allow_nan=False) + "\n").encode("ascii")


def sign_envelope(statement: bytes, key: ec.EllipticCurvePrivateKey) -> bytes:
    """The DSSE envelope of ``statement`` signed with ``key`` (deterministic ECDSA P-256, RFC 6979):
    ``{"payload", "payloadType", "signatures": [{"keyid", "sig"}]}``, ``keyid`` the key id."""
    from cryptography.hazmat.primitives import hashes

    from .signing import key_id

    sig = key.sign(pae(PAYLOAD_TYPE, statement), ec.ECDSA(hashes.SHA256(), deterministic_signing=True))
    doc = {
        "payload": base64.b64encode(statement).decode("ascii"),
        "payloadType": PAYLOAD_TYPE,
        "signatures": [{"keyid": key_id(key.public_key()), "sig": base64.b64encode(sig).decode("ascii")}],
    }
    return (json.dumps(doc, indent=2) + "\n").encode("ascii")


def provenance_of(report: Any) -> ProvenanceReport:
    """The verified provenance of a verification report, or `ProvenanceMissingError` (exit 28)
    for an authentic bundle sealed before bundles carried one."""
    if report.provenance is None:
        raise ProvenanceMissingError(
            f"{report.bundle}: verified, but it carries no SLSA provenance ({PROVENANCE}); it was sealed before "
            "bundler wrote one: seal its build directories again for a bundle that has it")
    return report.provenance
