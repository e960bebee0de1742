"""`bundle provenance`: show a bundle's signed SLSA v1 provenance, after verifying the bundle.

A thin layer over the shared verifier: `check_provenance` (runtime_stub/verify.py) has judged the
provenance member during verification, and what is printed here is the statement it verified,
from the bytes it read (no second read of the bundle). Every value shown comes from the bundle
and is escaped (`_line`, `printable`); ``--json`` prints exactly the in-toto statement.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any, List, Optional

import typer
from rich.text import Text

from .cli import _POLICY_OPTION, _Bar, _json, _line, _out, _run, _say, _trust, _verify_failed, app


def _get(doc: Any, *keys: str) -> Any:
    """``doc[k1][k2]...`` or None: an authentic statement may still lack an optional field."""
    for k in keys:
        if not isinstance(doc, dict):
            return None
        doc = doc.get(k)
    return doc


def _print_provenance(rep: Any, prov: Any) -> None:
    c = _out()
    st = prov.statement
    _say(c, Text.assemble(("VERIFIED", "bold green"), " ", _line("", rep.name, rep.version, f" ({rep.bundle})")))
    _say(c, _line("provenance: ", prov.path, " (SLSA v1.0 provenance, in-toto Statement v1)"))
    how = "signature valid" if prov.checked else f"signature not checked: {prov.reason}"
    _say(c, _line("signed by:  ", prov.key_id, f" [{how}]"))
    _say(c, _line("build type: ", prov.build_type))
    version = _get(st, "predicate", "runDetails", "builder", "version")
    shown = ", ".join(f"{k} {v}" for k, v in version.items()) if isinstance(version, dict) else ""
    _say(c, _line("builder:    ", prov.builder, f"({shown})" if shown else ""))
    meta = _get(st, "predicate", "runDetails", "metadata") or {}
    for label, key in (("host:       ", "trtbundler_host"), ("started:    ", "startedOn"), ("finished:   ", "finishedOn"),
                       ("invocation: ", "invocationId")):
        if _get(meta, key) is not None:
            _say(c, _line(label, _get(meta, key)))
    ext = _get(st, "predicate", "buildDefinition", "externalParameters") or {}
    builds = _get(ext, "builds")
    for i, b in enumerate(builds if isinstance(builds, list) else [], 1):
        label = f"build {i}:    " if len(builds) > 1 else "parameters: "
        targets = _get(b, "targets") or []
        precisions = _get(b, "precisions") or []
        spec = _get(b, "spec")
        spec_text = f"; spec {_get(spec, 'name')} (sha256 {_get(spec, 'sha256')})" if isinstance(spec, dict) else ""
        _say(c, _line(label, f"model {_get(b, 'model')}; targets {', '.join(map(str, targets))}; "
                             f"precisions {', '.join(map(str, precisions))}{spec_text}"))
    _say(c, Text(f"subjects:   {prov.subjects} engines"))
    for s in _get(st, "subject") or []:
        _say(c, _line("  ", _get(s, "name"), f" sha256:{_get(s, 'digest', 'sha256')}"))
    deps = _get(st, "predicate", "buildDefinition", "resolvedDependencies")
    if isinstance(deps, list) and deps:
        _say(c, Text("dependencies:"))
        for d in deps:
            where = _get(d, "uri") or (f"sha256:{_get(d, 'digest', 'sha256')}" if _get(d, "digest") else "")
            role = _get(d, "annotations", "role")
            _say(c, _line("  ", _get(d, "name"), where, f"({role})" if role else ""))


@app.command("provenance")
def provenance_cmd(
    bundle: Path = typer.Argument(..., help="A .bundle.tar file, an extracted bundle directory, or a split bundle."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    json_mode: bool = typer.Option(False, "--json", help="Print exactly the verified in-toto statement (SLSA v1 provenance)."),
    allow_expired: bool = typer.Option(False, "--allow-expired", help="Accept a signature past its signed expiry."),
) -> None:
    """Verify BUNDLE, then show its signed SLSA v1 provenance: builder, build type, times, engines.

    Exit 0 with the provenance; the codes of `bundle verify` when the bundle (or its provenance)
    fails verification; 28 when the bundle verifies but carries no provenance (sealed before it
    existed).
    """
    from .provenance import provenance_of
    from .verify import verify_bundle

    def go() -> None:
        trusted = _trust(trust, policy)
        with _Bar("verifying") as bar:
            rep = verify_bundle(bundle, trusted, progress=bar.update, allow_expired=allow_expired)
        if not rep.ok:
            if json_mode:
                print(_json({"ok": False, "exit_code": rep.exit_code, "error": {
                    "class": rep.error.failure_class, "member": rep.error.member, "message": rep.error.message}}))
            _verify_failed(rep)
        prov = provenance_of(rep)
        if json_mode:
            print(_json(prov.statement))
        else:
            _print_provenance(rep, prov)

    _run(json_mode, go)
