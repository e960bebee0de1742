"""`bundle split`, `bundle join` and `bundle copy`: the carrier's commands (docs/operators.md).

A thin layer over `bundler.parts` and `bundler.media`. `verify`, `extract` and `run` take a part
set as they are (the shared verifier recognises a part index or a part by its name).
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from .cli import _POLICY_OPTION, _Bar, _err, _json, _line, _load_signing_key, _out, _print_report, _run, _say, _trust
from .cli import _verify_failed, app

_SIZE_HELP = ("Largest part, in bytes or with K, M, G, T (binary: 700M, 2G, 2GiB). Default 4294967295 (4 GiB - 1, "
              "what FAT32 holds); parts are whole 512-byte tar blocks, so a part is at most 4 GiB - 512.")


@app.command("split")
def split_cmd(
    bundle: Path = typer.Argument(..., help="A sealed .bundle.tar to cut into parts."),
    key: Path = typer.Option(..., "--key", help="Private key that signs the part index (one the closed host trusts for this bundle)."),
    out: Path = typer.Option(..., "--out", help="Directory for the parts and their index (made if missing; nothing is overwritten)."),
    trust: List[Path] = typer.Option([], "--trust", help="Public key(s) the bundle must verify against first (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    max_part_size: str = typer.Option("4294967295", "--max-part-size", help=_SIZE_HELP),
) -> None:
    """Verify BUNDLE, then cut it into numbered parts and a signed part index.

    The parts are plain byte ranges: `cat NAME.ID.part-* > NAME-VERSION.bundle.tar` rebuilds the
    bundle. `bundle verify INDEX` checks every part, `bundle join INDEX --out DIR` rebuilds it.
    """
    from .model import parse_size
    from .parts import split_bundle

    def go() -> None:
        size = parse_size(max_part_size)
        trusted = _trust(trust, policy)
        signing_key = _load_signing_key(key)
        with _Bar("splitting") as bar:
            res = split_bundle(bundle, signing_key, trusted, out, max_part_size=size, progress=bar.update)
        c = _out()
        _say(c, _line("index:   ", res.index))
        for p in res.parts:
            _say(c, _line("part:    ", p))
        _say(c, _line("split:   ", res.split_id, f"({len(res.parts)} parts of at most {res.part_size} bytes)"))
        _say(c, _line("sha256:  ", res.sha256) + Text("  (the whole bundle)"))
        _say(c, _line("content: ", res.content_digest))
        _say(c, _line("key id:  ", res.key_id) + Text("  (signed the index)"))

    _run(False, go)


@app.command("join")
def join_cmd(
    index: Path = typer.Argument(..., help="A part index (NAME-VERSION.bundle.tar.ID.parts.json) or any of its parts."),
    out: Path = typer.Option(..., "--out", help="Directory for NAME-VERSION.bundle.tar (made if missing; never overwritten)."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    json_mode: bool = typer.Option(False, "--json", help="Print the verification report as one JSON document."),
    allow_expired: bool = typer.Option(False, "--allow-expired", help="Accept a signature past its signed expiry."),
) -> None:
    """Check every part, verify the bundle they make, and only then write it to DIR (read back)."""
    from .parts import join_parts

    def go() -> None:
        trusted = _trust(trust, policy)
        with _Bar("joining") as bar:
            res = join_parts(index, trusted, out, allow_expired=allow_expired, progress=bar.update)
        rep = res.report
        if json_mode:
            print(_json(dict(rep.to_dict(), joined_to=str(res.path) if res.path else None)))
        else:
            _print_report(rep)
            if res.path is not None:
                _say(_out(), _line("joined to ", res.path))
        if not rep.ok:
            _verify_failed(rep)

    _run(json_mode, go)


@app.command("copy")
def copy_cmd(
    sources: List[Path] = typer.Argument(..., help="Bundles, part indexes (each brings its parts) or parts; then DEST_DIR."),
) -> None:
    """Copy bundles or part sets onto removable media, and read every copy back to prove it.

    `bundle copy SRC... DEST_DIR`: refuses before writing when DEST_DIR cannot hold a file (FAT32:
    4 GiB - 1) or lacks the space, and says how to split; writes under a temporary name, syncs,
    renames, drops the cache and reads the copy back; an interrupted copy resumes.
    """
    from .errors import UsageError
    from .media import copy_to_media

    def go() -> None:
        if len(sources) < 2:
            raise UsageError("give one or more sources and then the destination directory; see 'bundle copy --help'")
        *srcs, dest = sources
        with _Bar("copy + read back") as bar:  # a fixed label: rich would read a path as markup
            res = copy_to_media(srcs, dest, progress=bar.update)
        c = _out()
        for f in res.files:
            how = ("already there, identical" if f.already else
                   f"resumed at byte {f.resumed_at}, verified" if f.resumed_at else "copied, verified")
            _say(c, _line("", f.dest) + Text(f"  {f.size} bytes  {how}"))
        _say(_err(), _line("", f"{len(res.files)} file(s) on", res.fs.mountpoint, f"({res.fs.fstype})"))

    _run(False, go)
