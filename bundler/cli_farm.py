"""`bundle farm` (a spec's builds on a Ray cluster) and `bundle cache ls|prune` (docs/farm.md).

Registered on the main app by the import at the end of bundler/cli.py; the logic lives in
bundler.farm and bundler.cache.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Optional

import typer
from rich.table import Table
from rich.text import Text

from .cli import _BuildDisplay, _EXPIRES_HELP, _expiry, _json, _load_signing_key, _out, _plain, _print_seal, _run, _say, app

cache_app = typer.Typer(no_args_is_help=True, help="The build cache: list its entries, prune it to a size.")
app.add_typer(cache_app, name="cache")

_CACHE_HELP = "Build cache directory (default: $BUNDLE_CACHE)."


@app.command("farm")
def farm_cmd(
    spec: Path = typer.Option(..., "--spec", help="A TOML build spec (docs/build-spec.md); one bundle per model."),
    ray_address: str = typer.Option(..., "--ray", metavar="ADDRESS|auto|local",
                                    help="The Ray cluster: HOST:PORT of its head, auto (the cluster this host "
                                         "belongs to) or local (a private Ray on this host)."),
    key: Path = typer.Option(..., "--key", help="Private signing key (PEM)."),
    out: Path = typer.Option(Path("."), "--out", help="Directory for the NAME-VERSION.bundle.tar files."),
    cache: Optional[Path] = typer.Option(None, "--cache", help="Build cache directory: reuse engines built before "
                                         "from the same inputs, store new ones (default: $BUNDLE_CACHE)."),
    expires: Optional[str] = typer.Option(None, "--expires", help=_EXPIRES_HELP),
) -> None:
    """Build every (model, target, precision) of a spec as a Ray task, then seal one bundle per model."""
    from .cache import cache_path
    from .farm import check_ray, farm_create, ray_environment
    from .spec import load_spec

    def go() -> None:
        entries = load_spec(spec)  # every model checked before anything else
        until = _expiry(expires)
        for name, value in ray_environment(ray_address).items():  # the CLI owns the process: before Ray loads
            os.environ.setdefault(name, value)
        check_ray()  # no Ray: say how to install it before a passphrase is asked for
        signing_key = _load_signing_key(key)
        farm_create(entries, signing_key, out, ray_address, cache=cache_path(cache), progress=_BuildDisplay(),
                    on_bundle=lambda _e, res: _print_seal(res), expires=until)

    _run(False, go)


def _cache_root(given: Optional[Path]) -> Path:
    from .cache import CACHE_ENV, cache_path
    from .errors import UsageError

    root = cache_path(given)
    if root is None:
        raise UsageError(f"no build cache: give --cache DIR or set {CACHE_ENV}")
    return root


def _entry_doc(e) -> dict:  # noqa: ANN001 - cache.EntryInfo
    return {"key": e.key, "size": e.size, "last_used": e.last_used, "ok": e.ok, "target": e.target,
            "precision": e.precision, "builder": e.builder, "host": e.host, "started": e.started,
            "graph_sha256": e.graph_sha256, "problem": e.problem}


@cache_app.command("ls")
def cache_ls(
    cache: Optional[Path] = typer.Option(None, "--cache", help=_CACHE_HELP),
    json_mode: bool = typer.Option(False, "--json", help="Print the entries as one JSON document."),
) -> None:
    """List the entries, least recently used first: key, target, precision, builder, size, last use."""
    from .cache import BuildCache

    def go() -> None:
        root = _cache_root(cache)
        entries = BuildCache(root).entries()
        total = sum(e.size for e in entries)
        if json_mode:
            print(_json({"ok": True, "exit_code": 0, "error": None, "cache": str(root), "total_size": total,
                         "entries": [_entry_doc(e) for e in entries]}))
            return
        t = Table(title=_plain(f"build cache {root}"))
        for col in ("key", "target", "precision", "builder", "size", "last used", "built on"):
            t.add_column(col)
        for e in entries:
            built = f"{e.host} {e.started}" if e.ok else f"unreadable: {e.problem}"
            t.add_row(_plain(e.key[:16]), _plain(e.target or "-"), _plain(e.precision or "-"), _plain(e.builder or "-"),
                      _plain(f"{e.size:,}"), _plain(e.last_used), _plain(built))
        c = _out()
        c.print(t)
        _say(c, Text(f"{len(entries)} entries, {total:,} bytes"))

    _run(json_mode, go)


@cache_app.command("prune")
def cache_prune(
    max_size: str = typer.Option(..., "--max-size", metavar="SIZE",
                                 help="Keep at most this much (1G, 512M, a byte count, or 0 for nothing), "
                                      "removing the least recently used entries first."),
    cache: Optional[Path] = typer.Option(None, "--cache", help=_CACHE_HELP),
    json_mode: bool = typer.Option(False, "--json", help="Print what was removed as one JSON document."),
) -> None:
    """Remove unreadable entries, then the least recently used ones, until the cache fits SIZE."""
    from .cache import BuildCache
    from .model import parse_size

    def go() -> None:
        limit = 0 if max_size.strip() == "0" else parse_size(max_size)
        root = _cache_root(cache)
        bc = BuildCache(root)
        removed = bc.prune(limit)
        left = bc.entries()
        doc = {"ok": True, "exit_code": 0, "error": None, "cache": str(root), "max_size": limit,
               "removed": [_entry_doc(e) for e in removed], "kept": len(left), "size": sum(e.size for e in left)}
        if json_mode:
            print(_json(doc))
            return
        c = _out()
        for e in removed:
            _say(c, _plain(f"removed {e.key[:16]} {e.target or '?'} ({e.precision or '?'}) {e.size:,} bytes"
                           + ("" if e.ok else f": unreadable ({e.problem})")))
        _say(c, Text(f"kept {doc['kept']} entries, {doc['size']:,} bytes (at most {limit:,})"))

    _run(json_mode, go)
