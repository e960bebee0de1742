"""`bundle export`: a verified bundle into a serving system's layout (Triton; docs/triton.md).

A thin layer over `bundler.export_triton`: flags in, one summary (or one JSON document) out.
Every string that came from the bundle goes through `printable()`.
"""

from __future__ import annotations

from pathlib import Path
from typing import List, Optional

import typer
from rich.text import Text

from .cli import _POLICY_OPTION, _Bar, _err, _json, _line, _out, _run, _say, _trust, app


@app.command("export")
def export_cmd(
    bundle: Path = typer.Argument(..., help="A .bundle.tar file, or a split bundle's part index or any part."),
    triton: Path = typer.Option(..., "--triton", metavar="REPO_DIR",
                                help="Triton model repository: writes REPO_DIR/MODEL/config.pbtxt and REPO_DIR/MODEL/VERSION/."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    model_name: Optional[str] = typer.Option(None, "--model-name", help="The Triton model's name (default: the bundle's name)."),
    platform: Optional[str] = typer.Option(
        None, "--platform", help="tensorrt_plan (full TensorRT engines) or onnxruntime_onnx (the cpu target); "
                                 "default: tensorrt_plan when the bundle has full TensorRT engines."),
    precision: Optional[str] = typer.Option(None, "--precision", help="Which engines, when the bundle has several precisions."),
    json_mode: bool = typer.Option(False, "--json", help="Print what was written as one JSON document."),
    allow_expired: bool = typer.Option(False, "--allow-expired", help="Accept a signature past its signed expiry."),
) -> None:
    """Verify BUNDLE, then write it as one version of a Triton model (never over an existing version)."""
    from .export_triton import export_triton

    def go() -> None:
        trusted = _trust(trust, policy)
        with _Bar("verifying") as bar:
            res = export_triton(bundle, trusted, triton, model_name=model_name, platform=platform,
                                precision=precision, allow_expired=allow_expired, progress=bar.update)
        if json_mode:
            print(_json({"ok": True, "exit_code": 0, "error": None, **res.to_dict()}))
        else:
            c = _out()
            _say(c, Text.assemble(("EXPORTED", "bold green"), " ",
                                  _line("", res.name, res.semver, "->", f"{triton}/{res.model}/{res.version}",
                                        f"({res.platform})")))
            _say(c, _line("config:   ", f"{triton}/{res.config}",
                          "(written)" if res.config_written else "(unchanged: the same for this version)"))
            for f in res.files:
                _say(c, _line("file:     ", f"{triton}/{f.path}", "<-", f.source, "sha256", f.sha256))
            _say(c, _line("version:  ", f"{res.version} = {res.semver}", f"({res.rule}; recorded in",
                          f"{triton}/{res.mapping_file})"))
            if res.tensorrt_version:
                _say(c, _line("serve with: ", f"a Triton release whose TensorRT is {res.tensorrt_version}"))
        for s in res.skipped:  # warnings: on stderr, where they are seen, also with --json
            _say(_err(), _line("skipped: ", s.path, f"({s.target}, {s.backend}):", s.reason))

    _run(json_mode, go)
