"""`bundle audit`, `bundle audit-verify` and `bundle ledger`: a thin layer over bundler.audit and
bundler.ledger (registered on the main app by the import at the end of bundler/cli.py).

Every string from a bundle, a file name or the ledger is shown through `printable()` as plain
`Text`; `--json -` prints exactly one JSON document (the report) through `_json`.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import List, Optional

import typer
from rich.table import Table
from rich.text import Text

from .cli import _err, _error_line, _json, _line, _load_signing_key, _out, _plain, _run, _say, _trust, app
from .errors import ExitCode, printable, shown_key_id

ledger_app = typer.Typer(no_args_is_help=True, help="The signing ledger: create one, check its hash chain.")
app.add_typer(ledger_app, name="ledger")

_STYLES = {"verified": "bold green", "tampered": "bold red", "error": "bold red", "unknown-signer": "bold yellow",
           "policy-refused": "bold yellow", "expired": "bold yellow", "unledgered": "bold magenta",
           "missing": "bold magenta"}


def _short(digest: Optional[str]) -> str:
    return f"{digest[:16]}..." if digest else "-"


def _signers_cell(row) -> Text:  # noqa: ANN001 - AuditRow
    lines = []
    for s in row.signers:
        state = ("counted" if s.counted else "valid" if s.valid else "INVALID" if s.valid is False else "not trusted")
        kid = shown_key_id(s.key_id)
        kid = kid[:16] + "..." if len(kid) == 64 else kid
        mark = "" if s.ledgered is None else (f" ledger #{s.ledger_entry}" if s.ledgered else " NOT IN LEDGER")
        lines.append(printable(f"{kid}{' (' + s.name + ')' if s.name else ''} {state}{mark}"))
    return Text("\n".join(lines) or "-")


def _print_table(report) -> None:  # noqa: ANN001 - AuditReport
    c = _out()
    t = Table(title=f"audit {report.time}: {len([r for r in report.bundles if r.kind != 'ledger-entry'])} bundle(s)")
    t.add_column("status", no_wrap=True)
    t.add_column("bundle")
    t.add_column("path", overflow="fold")
    t.add_column("signers (key id, name)")
    t.add_column("targets")
    t.add_column("precisions")
    t.add_column("built (host, start; sealed)")
    t.add_column("sha256 / manifest", no_wrap=True)
    t.add_column("reason", overflow="fold")
    for r in report.bundles:
        built = ", ".join(r.build_hosts) + (f" {r.built}" if r.built else "") + (f"; {r.created}" if r.created else "")
        t.add_row(Text(r.status, style=_STYLES.get(r.status, "")), _plain(f"{r.name or '?'} {r.version or ''}".strip()),
                  _plain(r.path), _signers_cell(r), _plain(", ".join(r.targets) or "-"),
                  _plain(", ".join(r.precisions) or "-"), _plain(built or "-"),
                  Text(f"{_short(r.sha256)}\n{_short(r.manifest_sha256)}"), _plain(r.reason or "-"))
    c.print(t)
    if report.ledger is not None:
        lg = report.ledger
        head = f"head entry {lg.head.seq} {lg.head.sha256}" if lg.head else "no head"
        state = "chain holds" if lg.ok else "chain BROKEN"
        _say(c, _line("ledger:  ", lg.path, f"({state}, {lg.entries} signing entries, {head})"))
    if report.ignored:
        _say(c, Text(f"ignored: {len(report.ignored)} file(s) that are not bundles (listed in the JSON and HTML reports)"))
    style = "bold green" if report.ok else "bold red"
    _say(c, Text.assemble(("PASSED" if report.ok else "FAILED", style), " ", printable(report.message)))


@app.command("audit")
def audit_cmd(
    paths: List[Path] = typer.Argument(..., help="Bundle files and directories to search (extracted bundles too)."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Trust policy file (default: $BUNDLE_POLICY); replaces --trust."),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help="Signing ledger to check every signature against "
                                          "(default: $BUNDLE_LEDGER; neither: no ledger check)."),
    json_out: Optional[str] = typer.Option(None, "--json", metavar="FILE|-", help="Write the JSON report to FILE, or "
                                           "print it as the only output with -."),
    html_out: Optional[Path] = typer.Option(None, "--html", metavar="FILE", help="Write a self-contained HTML report "
                                            "(no scripts, no external assets; printable)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Sign each written report file (FILE.sig beside it) with "
                                       "this private key: the auditor's sign-off, checked by `bundle audit-verify`."),
) -> None:
    """Find every bundle under PATHS, verify each, and report: a table, --json, --html.

    Exit 0 when every bundle verified (and, with a ledger, every valid signature is in it); 24
    when any did not; 25 when the ledger's chain is broken. The reports are written either way.
    """
    from .audit import audit, check_outputs, output_paths, publish_report
    from .errors import UsageError
    from .ledger import ledger_path

    to_stdout = json_out == "-"

    def go() -> None:
        json_path = Path(json_out) if json_out is not None and not to_stdout else None
        if key is not None and json_path is None and html_out is None:
            raise UsageError("--key signs the report files: give --json FILE or --html FILE; see 'bundle audit --help'")
        trusted = _trust(trust, policy)
        signing_key = _load_signing_key(key) if key is not None else None  # before the audit: a wrong passphrase costs nothing
        check_outputs(output_paths(json_path, html_out, key is not None))
        report = audit(paths, trusted, ledger=ledger_path(ledger))
        written = publish_report(report, json_path=json_path, html_path=html_out, key=signing_key)
        if to_stdout:
            print(_json(report.to_dict()))
        else:
            _print_table(report)
            for p in written:
                _say(_out(), _line("written: ", p))
        if not report.ok:  # the reports are written; the one error line and the code say it failed
            _error_line(ExitCode(report.exit_code).name.lower(), report.message)
            raise typer.Exit(report.exit_code)

    _run(to_stdout, go)


@app.command("audit-verify")
def audit_verify_cmd(
    reports: List[Path] = typer.Argument(..., help="Signed report files (JSON or HTML) made by `bundle audit --key`."),
    trust: List[Path] = typer.Option([], "--trust", help="The auditor's public key (repeatable)."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="A trust policy whose (unrevoked) keys are trusted."),
    sig: List[Path] = typer.Option([], "--sig", help="Signature file per report, in order (default: REPORT.sig)."),
) -> None:
    """Check signed audit reports: signed by a trusted key, unchanged since (exit 11, 12)."""
    from runtime_stub.verify import TrustPolicy

    from .audit import verify_report_signatures

    def go() -> None:
        trusted = _trust(trust, policy)
        if isinstance(trusted, TrustPolicy):
            trusted = {k: v for k, v in trusted.keys.items() if k not in trusted.revoked}
        for r in verify_report_signatures(reports, trusted, list(sig) or None):
            who = f"{r.key_id}{' (' + r.name + ')' if r.name else ''}"
            when = r.predicate.get("time") if isinstance(r.predicate.get("time"), str) else "?"
            _say(_out(), Text.assemble(("VERIFIED", "bold green"), " ",
                                       printable(f"{r.file}  signed by {who}, audit of {when}; sha256 {r.sha256}")))

    _run(False, go)


@ledger_app.command("init")
def ledger_init_cmd(file: Path = typer.Argument(..., help="The ledger file to create (never replaced).")) -> None:
    """Create a signing ledger (its init entry names it with a random id). Point seal, create
    and sign at it with --ledger or BUNDLE_LEDGER."""
    from .ledger import init_ledger

    def go() -> None:
        head = init_ledger(file)
        _say(_out(), _line("ledger:  ", file, f"id {head.id}, head entry 0 {head.sha256}"))
        _say(_err(), Text("point the release environment at it: export BUNDLE_LEDGER=" + printable(os.path.abspath(file))))

    _run(False, go)


@ledger_app.command("verify")
def ledger_verify_cmd(
    file: Optional[Path] = typer.Argument(None, help="The ledger (default: $BUNDLE_LEDGER)."),
    head: Optional[str] = typer.Option(None, "--head", help="An entry hash recorded earlier (a signed audit report's "
                                       "ledger head): the ledger must still contain it (catches a cut-off end)."),
    json_mode: bool = typer.Option(False, "--json", help="Print the result as one JSON document."),
) -> None:
    """Check the ledger's hash chain; name the first broken entry (exit 25)."""
    from dataclasses import asdict

    from .errors import InputError, LedgerError
    from .ledger import LEDGER_ENV, ledger_path, verify_ledger

    def go() -> None:
        path = ledger_path(file)
        if path is None:
            raise InputError(f"no ledger: give FILE or set {LEDGER_ENV}")
        try:
            chk = verify_ledger(path, head)
        except LedgerError as e:
            if json_mode:
                from .ledger import read_ledger

                chk = read_ledger(path)
                print(_json({"ok": False, "exit_code": int(e.code), "error": {"class": e.failure_class, "member": None,
                                                                          "message": " ".join(e.message.split())},
                             "path": str(path), "id": chk.id, "entries": max(len(chk.entries) - 1, 0),
                             "head": asdict(chk.head) if chk.head else None,
                             "broken": asdict(chk.broken) if chk.broken else None}))
                _error_line(e.failure_class, e.message)
                raise typer.Exit(int(e.code))
            raise
        h = chk.head
        assert h is not None
        if json_mode:
            print(_json({"ok": True, "exit_code": 0, "error": None, "path": str(path), "id": chk.id,
                         "entries": len(chk.entries) - 1, "head": asdict(h), "broken": None}))
            return
        c = _out()
        _say(c, Text.assemble(("CHAIN HOLDS", "bold green"), " ", printable(f"{path}: ledger {chk.id}, "
                                                                           f"{len(chk.entries) - 1} signing entries")))
        _say(c, _line("head:    entry ", h.seq, h.sha256))
        if head is not None:
            _say(c, _line("--head:  ", head, "is in the chain"))

    _run(json_mode, go)

