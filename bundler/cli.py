"""The `bundle` command: a thin typer layer over `bundler.api`.

All logic lives in the library; this module parses flags, asks for passphrases, renders rich
tables, and maps `BundleError` classes to exit codes. Errors are one line on stderr, never a
traceback. With ``--json``, stdout carries exactly one JSON document, on success and on failure.
"""

from __future__ import annotations

if __name__ == "__main__":
    # `python -m bundler.cli`: go through the entry point, which takes SIGINT and SIGTERM before
    # the slow imports below (bundler/entry.py); it imports this module as bundler.cli, where the
    # cli_<area> modules register their commands, and runs its main().
    from bundler.entry import main as _entry_main

    raise SystemExit(_entry_main())

import json
import os
import signal
import sys
import time
from pathlib import Path
from typing import Any, Callable, List, NoReturn, Optional

import typer
from rich.console import Console
from rich.table import Table
from rich.text import Text

from . import __version__
from .errors import ArchiveError, BundleError, ExitCode, Interrupted, KeyFileError, OutputError, printable, shown_key_id
from .entry import json_mode as _json_mode
from .signing import PASSPHRASE_ENV

app = typer.Typer(
    add_completion=False,
    no_args_is_help=True,
    help="Build, seal, sign and verify TensorRT engine bundles for air-gapped hosts.",
    pretty_exceptions_enable=False,
)
keys_app = typer.Typer(no_args_is_help=True, help="Make signing keys and show key ids.")
app.add_typer(keys_app, name="keys")
policy_app = typer.Typer(no_args_is_help=True, help="Trust policies: sign a successor, check a rotation chain.")
app.add_typer(policy_app, name="policy")


# Output rule: every string that comes from a bundle, a model, a build record or the command line
# goes through `printable()` (bundler/errors.py) and is rendered as plain `Text`. The consoles parse
# no markup and no :emoji: codes at all, so even a str that slips through is shown as it is; our
# own styling is assembled from Text pieces (`Text.assemble(("VERIFIED", "bold green"), ...)`).


def _out() -> Console:
    # Piped output (CI logs, `| less`) gets wide tables instead of rich's 80-column default.
    return Console(highlight=False, markup=False, emoji=False, width=None if sys.stdout.isatty() else 200)


def _err() -> Console:
    # an error is one line, never wrapped
    return Console(stderr=True, highlight=False, markup=False, emoji=False, soft_wrap=True)


def _plain(value: object) -> Text:
    """A value that may come from a bundle, as plain escaped text (a table cell is never markup)."""
    return Text(printable(value))


def _line(label: str, *values: object) -> Text:
    """``label`` (ours) followed by values (anyone's), each escaped, separated by spaces."""
    return Text(label + " ".join(printable(v) for v in values))


def _say(console: Console, text: Text) -> None:
    """One record, one line: never wrapped by rich, so no escaped value can begin a line of its own."""
    console.print(text, soft_wrap=True)


def _json(doc: Any) -> str:
    """The one JSON document of --json: ASCII only (every control character and non-ASCII
    character escaped) and never NaN/Infinity, which are not JSON. Reports hold no float that
    unverified input chooses (inspect's strict parser refuses non-finite numbers), so this
    does not raise for what a bundle holds."""
    out = json.dumps(doc, indent=2, ensure_ascii=True, allow_nan=False)
    _SIGNAL["json_out"] = True
    return out


def _error_line(cls: str, message: str) -> None:
    """``error [class]: message`` on stderr, one line: the message may quote a bundle."""
    msg = " ".join(str(message).split())
    _err().print(Text.assemble(("error", "bold red"), " ", printable(f"[{cls}]: {msg}")))


def _fail(e: BaseException, json_mode: bool) -> NoReturn:
    if isinstance(e, BundleError):
        code, cls, msg, member = int(e.code), e.failure_class, e.message, e.member
    else:
        code, cls, msg, member = int(ExitCode.INTERNAL), "internal", f"internal error: {type(e).__name__}: {e}", None
    msg = " ".join(str(msg).split())  # one line, whatever the cause said
    if json_mode:
        print(_json({"ok": False, "exit_code": code, "error": {"class": cls, "member": member, "message": msg}}))
    _error_line(cls, msg)
    raise typer.Exit(code)


def _run(json_mode: bool, fn: Callable[[], Any]) -> Any:
    try:
        return fn()
    except typer.Exit:
        raise
    except KeyboardInterrupt as e:  # Ctrl-C, or SIGTERM through _on_signal: cleanup has run by now
        code = e.exit_code if isinstance(e, Interrupted) else 130
        what = "terminated" if code == 143 else "interrupted"
        if json_mode:
            print(json.dumps({"ok": False, "exit_code": code, "error": {"class": "interrupted", "member": None, "message": what}}))
        raise typer.Exit(_stopped(e))
    except Exception as e:  # noqa: BLE001 - every failure ends in one line and an exit code
        _fail(e, json_mode)


# -- progress bars for long operations -------------------------------------------------------------

PROGRESS_MIN_BYTES = 256 << 20  # smaller files are done before a bar would be worth reading


class _Bar:
    """A rich progress bar on stderr, fed by the library's progress callbacks.

    It appears only for more than `PROGRESS_MIN_BYTES` and only when stderr is a terminal (so
    logs, pipes and --json consumers see exactly what they saw before), and it vanishes when
    done. Drawing happens on rich's own thread four times a second. The library reports once per
    4 MiB chunk, and each update takes rich's lock and feeds its speed estimate: over a 2 GiB
    bundle that was some 40 ms of CPU on cores that are both busy hashing, so updates closer
    together than `UPDATE_S` are dropped (the last one never is).
    """

    UPDATE_S = 0.1

    def __init__(self, description: str) -> None:
        self._description = description
        self._progress = None
        self._task = None
        self._off = False
        self._last = 0.0

    def update(self, done: int, total: int) -> None:
        if self._off:
            return
        if self._progress is None:
            console = _err()
            if total <= PROGRESS_MIN_BYTES or not console.is_terminal:
                self._off = True
                return
            from rich.progress import (
                BarColumn,
                DownloadColumn,
                Progress,
                TextColumn,
                TimeRemainingColumn,
                TransferSpeedColumn,
            )

            self._progress = Progress(
                TextColumn("{task.description}"), BarColumn(), DownloadColumn(binary_units=True),
                TransferSpeedColumn(), TimeRemainingColumn(), console=console, transient=True,
                refresh_per_second=4,
            )
            self._progress.start()
            self._task = self._progress.add_task(self._description, total=total)
        now = time.monotonic()
        if now - self._last >= self.UPDATE_S or done >= total:
            self._last = now
            self._progress.update(self._task, completed=done)

    def close(self) -> None:
        if self._progress is not None:
            self._progress.stop()
            self._progress = None
        self._off = True

    def __enter__(self) -> "_Bar":
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


def _passphrase_for_new_key() -> bytes:
    env = os.environ.get(PASSPHRASE_ENV)
    if env:
        return env.encode()
    if not sys.stdin.isatty():
        raise KeyFileError(f"no passphrase: set {PASSPHRASE_ENV}, run in a terminal, or pass --no-passphrase")
    value = typer.prompt("Passphrase for the new key", hide_input=True, confirmation_prompt=True)
    if not value:
        raise KeyFileError("empty passphrase; pass --no-passphrase for an unencrypted demo key")
    return value.encode()


def _load_signing_key(path: Path):  # noqa: ANN202
    from .signing import load_private_key, private_key_is_encrypted

    passphrase = None
    if private_key_is_encrypted(path):
        env = os.environ.get(PASSPHRASE_ENV)
        if env:
            passphrase = env.encode()
        elif sys.stdin.isatty():
            passphrase = typer.prompt(f"Passphrase for {path}", hide_input=True).encode()
    return load_private_key(path, passphrase)


# -- keys -------------------------------------------------------------------------------------

@keys_app.command("generate")
def keys_generate(
    name: str = typer.Argument(..., help="Base name: writes NAME.key and NAME.pub."),
    directory: Path = typer.Option(Path("keys/local"), "--dir", help="Where to write the pair."),
    no_passphrase: bool = typer.Option(False, "--no-passphrase", help="Leave the private key unencrypted (demos only)."),
) -> None:
    """Make an ECDSA P-256 key pair and print its key id."""
    from .signing import generate_key

    def go() -> None:
        passphrase = None if no_passphrase else _passphrase_for_new_key()
        k = generate_key(name, directory, passphrase)
        _say(_err(), _line("private key: ", k.private_path) + Text(f" (mode 0600{'' if passphrase else ', NOT encrypted'})"))
        _say(_err(), _line("public key:  ", k.public_path))
        print(k.key_id)

    _run(False, go)


@keys_app.command("rotate")
def keys_rotate(
    old: Path = typer.Argument(..., help="The private key being retired (it signs the statement)."),
    new: Path = typer.Option(..., "--new", help="The successor's public key (.pub)."),
    out: Path = typer.Option(..., "--out", help="Where to write the rotation statement (JSON; never overwritten)."),
) -> None:
    """Write a rotation statement, signed by the old key, naming the new one (docs/trust-policy.md)."""
    from .policy import write_rotation

    def go() -> None:
        key = _load_signing_key(old)
        try:
            pem = new.read_bytes()
        except OSError as e:
            raise KeyFileError(f"{new}: cannot read ({e.strerror})") from None
        doc = write_rotation(key, pem, out)
        _say(_out(), _line("rotation: ", doc["old"], "->", doc["new"]))
        _say(_out(), _line("written:  ", out))

    _run(False, go)


@keys_app.command("verify-rotation")
def keys_verify_rotation(statement: Path = typer.Argument(..., help="A rotation statement made by `bundle keys rotate`.")) -> None:
    """Check a rotation statement's signature by the old key; print old and new key ids (exit 11 if invalid)."""
    from runtime_stub.verify import read_bounded, verify_rotation

    def go() -> None:
        raw = read_bounded(statement, 1 << 20, KeyFileError, "rotation statement")
        old, new, date = verify_rotation(raw, str(statement))
        _say(_out(), _line("rotation: ", old, "->", new, f"(signed by the old key, {date})"))

    _run(False, go)


@policy_app.command("update")
def policy_update(
    old: Path = typer.Argument(..., help="The policy hosts trust now."),
    new: Path = typer.Argument(..., help="Its successor (a higher version), to sign."),
    key: List[Path] = typer.Option(..., "--key", help="A policy signer's private key (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the signed policy here (default: NEW, in place)."),
) -> None:
    """Sign NEW as the successor of OLD with policy signers' keys (TUF-style rotation)."""
    from .policy import sign_policy_update

    def go() -> None:
        keys = [_load_signing_key(k) for k in key]
        pol, counted, threshold = sign_policy_update(old, new, keys, out)
        _say(_out(), _line("policy:   ", out or new, f"version {pol.version}"))
        state = "ready: hosts on the old policy will accept it" if counted >= threshold else "needs more signers"
        _say(_out(), Text(f"signed:   {counted} of the {threshold} policy signers required ({state})"))

    _run(False, go)


@policy_app.command("verify")
def policy_verify(
    chain: List[Path] = typer.Argument(..., help="The policy this host trusts now, then each newer one in order."),
) -> None:
    """Check that each policy is a valid successor of the one before (exit 11 if not)."""
    from .policy import verify_chain

    def go() -> None:
        policies = verify_chain(chain)
        for p in policies[1:]:
            _say(_out(), _line("accepted: ", p.source, f"version {p.version}"))

    _run(False, go)


@keys_app.command("id")
def keys_id(pub: Path = typer.Argument(..., help="A public key PEM.")) -> None:
    """Print a public key's id (hex SHA-256 of its PEM; model-signing's `hint`)."""
    from .signing import load_public_key

    _run(False, lambda: print(load_public_key(pub).key_id))


# -- build / seal / create --------------------------------------------------------------------

_SHAPE_HELP = "INPUT:MIN:OPT:MAX or INPUT:SHAPE, dims like 1x3x640x640 (repeatable)."
_GOLDEN_HELP = "Store sample inputs and CPU reference outputs for the loader's selftest."
_SAMPLE_HELP = ".npz with one array per model input (default: random data at the opt shapes)."
_SAMPLE_VALUE_HELP = ("NAME=VALUE: fill input NAME of the golden inputs with VALUE (true, false, an integer or a "
                      "number), e.g. sr=16000 (repeatable; not with --sample-input).")


def _request(model: Path, name: str, version: str, target: List[str], shape: List[str], workspace: Optional[str],
             backend: str, golden: bool, sample_input: Optional[Path], precision: List[str], profile: List[str],
             calibration: Optional[Path], jobs: Optional[int], timing_cache: Optional[Path],
             sample_value: List[str], keep_fp32: List[str], accept_accuracy_loss: bool):  # noqa: ANN202
    from .spec import request_from_flags  # the same mapping a spec file goes through

    profiles = [[p.strip() for p in group.split(",") if p.strip()] for group in profile]
    return request_from_flags(model, name, version, target, shape, workspace, backend, golden, sample_input,
                              precisions=list(precision) or None, profiles=profiles, calibration=calibration,
                              jobs=jobs, timing_cache=timing_cache, sample_values=list(sample_value),
                              keep_fp32=list(keep_fp32), accept_accuracy_loss=accept_accuracy_loss)


_MATRIX_OPTIONS = dict(
    precision=typer.Option([], "--precision", help="fp32, fp16, bf16, int8 or fp8 (repeatable): the build matrix is targets x precisions."),
    profile=typer.Option([], "--profile", help="An extra optimization profile: INPUT:MIN:OPT:MAX[,INPUT:...] (repeatable)."),
    calibration=typer.Option(None, "--calibration", help="int8/fp8 calibration data: FILE.npz or a directory of them."),
    jobs=typer.Option(None, "--jobs", min=1, help="Parallel build workers (default: number of cores)."),
    timing_cache=typer.Option(None, "--timing-cache", help="Full TensorRT: timing cache file, read and updated."),
    keep_fp32=typer.Option([], "--keep-fp32", help="fp16/bf16: leave this node in fp32 (repeatable), or 'auto' to find the nodes the graph needs to meet its selftest tolerance."),
    accept_accuracy_loss=typer.Option(False, "--accept-accuracy-loss", help="Build a variant measured outside its selftest tolerance anyway (recorded in the manifest)."),
    cache=typer.Option(None, "--cache", help="Build cache directory: reuse engines built before from the same inputs, store new ones (default: $BUNDLE_CACHE; docs/farm.md)."),
)


def _print_warnings(record) -> None:  # noqa: ANN001 - a BuildRecord or Manifest
    """What a builder must read before shipping, last, where it is seen (stderr): golden data
    made up for a parameter-like input, accuracy of the precision variants, calibration."""
    from .precision import variant_warnings

    golden = record.golden.warnings if record.golden else []
    for w in list(golden) + variant_warnings(record.variants):
        _say(_err(), Text.assemble(("warning", "yellow"), ": ", printable(w)))


_SPEC_HELP = "A TOML build spec (docs/build-spec.md), one bundle per model entry; replaces MODEL and the build flags."
_SPEC_KEEPS = ("spec", "key", "out", "expires", "ledger", "cache")  # the only flags that go with --spec: the rest live in the file


def _spec_usage(ctx: typer.Context, spec: Optional[Path], flags_need: tuple, always_need: tuple) -> None:
    """Without --spec, what the flags path has always required; with it, no build flags.

    The required parameters are optional to click (so --spec can stand in for them) and checked
    here, in declaration order, with click's own MissingParameter: the messages stay as they were.
    """
    need = flags_need + always_need if spec is None else always_need
    for p in ctx.command.params:
        if p.name in need and not ctx.params.get(p.name):
            # typer vendors click in some versions: take the class from the module typer uses
            missing = getattr(sys.modules[typer.BadParameter.__module__], "MissingParameter")
            raise missing(ctx=ctx, param=p)
    if spec is None:
        return
    given = [
        ("/".join(p.opts + p.secondary_opts) if p.param_type_name == "option" else str(p.name).upper())
        for p in ctx.command.params
        if p.name not in _SPEC_KEEPS
        and getattr(ctx.get_parameter_source(p.name), "name", None) in ("COMMANDLINE", "ENVIRONMENT")
    ]
    if given:
        from .errors import UsageError

        _fail(UsageError(f"--spec cannot be combined with {', '.join(given)}: put them in the spec file "
                         f"(only --key, --out, --expires, --ledger and --cache go with --spec)"), False)


def _header_text(h) -> str:  # noqa: ANN001 - EngineHeader
    """An engine header for a table cell, before escaping (the caller escapes it)."""
    return f"{h.product} {h.version}" + (f" cc {','.join(h.cc)}" if h.cc else "")


def _engine_table(engines, title: str) -> Table:  # noqa: ANN001
    """Engines of a build record or manifest: every cell is escaped plain text (a build
    directory from another host, and any bundle, are input like any other)."""
    t = Table(title=_plain(title))
    for col in ("target", "cc", "precision", "engine", "size", "backend", "header", "build s"):
        t.add_column(col)
    for e in engines:
        hdr = "onnx (cpu target)" if e.header is None else _header_text(e.header)
        t.add_row(_plain(e.target.label), _plain(e.target.cc or "-"), _plain(e.build.precision),
                  _plain(e.path.split("/")[-1]), _plain(f"{e.size:,}"), _plain(f"{e.backend.name} {e.backend.version}"),
                  _plain(hdr), _plain(f"{e.duration_s:.2f}" + (" (reused)" if e.cache is not None and e.cache.reused else "")))
    return t


class _BuildDisplay:
    """Live table of builds (target, precision, stage, elapsed; the node, on a build farm) on
    stderr, fed by `BuildEvent`s.

    On a terminal it is a rich Live table; in CI logs it prints one line when a build starts,
    finishes, fails or is taken from the build cache. A ``warning`` event (a corrupted cache entry)
    is printed as a warning line. It stops by itself once every build it has seen queued has ended.
    """

    _END = ("done", "failed", "cancelled", "reused")

    def __init__(self) -> None:
        self._rows: dict = {}
        self._live = None
        self._console = _err()

    def _table(self) -> Table:
        t = Table(title="builds", expand=False)
        nodes = any(ev.node for ev in self._rows.values())
        for col in ("target", "precision", "engine") + (("node",) if nodes else ()) + ("stage", "elapsed"):
            t.add_column(col)
        styles = {"done": "green", "failed": "bold red", "cancelled": "yellow", "building": "cyan", "reused": "green"}
        for ev in self._rows.values():
            node = (_plain(ev.node or "-"),) if nodes else ()
            t.add_row(_plain(ev.target), _plain(ev.precision), _plain(ev.job), *node,
                      Text(printable(ev.stage), style=styles.get(ev.stage, "")), _plain(f"{ev.elapsed_s:.1f}s"))
        return t

    def __call__(self, ev) -> None:  # noqa: ANN001 - bundler.backends.BuildEvent
        if ev.stage == "warning":
            _say(self._console, Text.assemble(("warning", "yellow"), ": ", printable(ev.message)))
            return
        prev = self._rows.get(ev.job)
        self._rows[ev.job] = ev
        if self._console.is_terminal:
            from rich.live import Live

            if self._live is None:
                self._live = Live(self._table(), console=self._console, refresh_per_second=8)
                self._live.start()
            self._live.update(self._table())
        elif ev.stage in ("building", "done", "failed", "reused") and (prev is None or prev.stage != ev.stage
                                                                        or prev.node != ev.node):
            extra = f" after {ev.elapsed_s:.1f}s" if ev.stage in ("done", "failed") else ""
            on = f" on {ev.node}" if ev.node else ""
            msg = f": {ev.message}" if ev.stage in ("failed", "reused") and ev.message else ""
            _say(self._console, _plain(f"{ev.stage} {ev.target} ({ev.precision}){on}{extra}{msg}"))
        if self._live is not None and all(r.stage in self._END for r in self._rows.values()):
            self._live.stop()
            self._live = None


@app.command("build")
def build_cmd(
    ctx: typer.Context,
    model: Optional[Path] = typer.Argument(None, help="The source ONNX model (not with --spec)."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name."),
    version: Optional[str] = typer.Option(None, "--version", help="Semantic version, e.g. 1.2.0."),
    target: List[str] = typer.Option([], "--target", help="sm_86, 8.6, a GPU name (rtx4090, l4, ...), local or cpu (repeatable)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Build directory to create (must not exist); with --spec, the directory for one NAME-VERSION build directory per model. Required."),
    shape: List[str] = typer.Option([], "--shape", help=_SHAPE_HELP),
    workspace: Optional[str] = typer.Option(None, "--workspace", help="Builder workspace limit, e.g. 2G."),
    backend: str = typer.Option("auto", "--backend", help="auto, tensorrt or tensorrt-rtx."),
    golden: bool = typer.Option(True, "--golden/--no-golden", help=_GOLDEN_HELP),
    sample_input: Optional[Path] = typer.Option(None, "--sample-input", help=_SAMPLE_HELP),
    sample_value: List[str] = typer.Option([], "--sample-value", help=_SAMPLE_VALUE_HELP),
    precision: List[str] = _MATRIX_OPTIONS["precision"],
    profile: List[str] = _MATRIX_OPTIONS["profile"],
    calibration: Optional[Path] = _MATRIX_OPTIONS["calibration"],
    jobs: Optional[int] = _MATRIX_OPTIONS["jobs"],
    timing_cache: Optional[Path] = _MATRIX_OPTIONS["timing_cache"],
    keep_fp32: List[str] = _MATRIX_OPTIONS["keep_fp32"],
    accept_accuracy_loss: bool = _MATRIX_OPTIONS["accept_accuracy_loss"],
    spec: Optional[Path] = typer.Option(None, "--spec", help=_SPEC_HELP),
    cache: Optional[Path] = _MATRIX_OPTIONS["cache"],
) -> None:
    """Build one engine per target into a build directory (seal it later, maybe with others)."""
    from .backends import build

    _spec_usage(ctx, spec, ("model", "name", "version", "target"), ("out",))

    def go() -> None:
        from .cache import cache_path

        if spec is not None:
            from .spec import build_all, load_spec

            def built(_e, d, rec) -> None:  # noqa: ANN001
                _out().print(_engine_table(rec.engines, f"{rec.name} {rec.version}: build directory {d}"))
                _print_warnings(rec)

            build_all(load_spec(spec), out, progress=_BuildDisplay(), on_build=built, cache=cache_path(cache))
            return
        req = _request(model, name, version, target, shape, workspace, backend, golden, sample_input,
                       precision, profile, calibration, jobs, timing_cache, sample_value, keep_fp32, accept_accuracy_loss)
        rec = build(req, out, progress=_BuildDisplay(), cache=cache_path(cache))
        _out().print(_engine_table(rec.engines, f"{rec.name} {rec.version}: build directory {out}"))
        _print_warnings(rec)

    _run(False, go)


_EXPIRES_HELP = ("Signature expiry: a duration (90d, 12h, 30m, 2w), a date (2027-01-31, midnight UTC) or a UTC time "
                 "(2027-01-31T12:00:00Z); signed into the statement. Verification fails after it without --allow-expired.")
_ALLOW_EXPIRED_HELP = "Accept a bundle whose signature has expired (recorded as expired_accepted in the report)."


def _expiry(text: Optional[str]) -> Optional[str]:
    from .signing import parse_expiry

    return None if text is None else parse_expiry(text)


_LEDGER_HELP = ("Signing ledger to append this signing to (default: $BUNDLE_LEDGER; neither: none). Made once by "
                "`bundle ledger init`; its head is signed into the statement (docs/ledger.md).")


def _ledger_file(flag: Optional[Path]) -> Optional[Path]:
    from .ledger import ledger_path

    return ledger_path(flag)


def _print_seal(res) -> None:  # noqa: ANN001
    c = _out()
    _say(c, _line("bundle:  ", res.path))
    _say(c, _line("sha256:  ", res.sha256))
    _say(c, _line("key id:  ", res.key_id))
    if res.expires:
        _say(c, _line("expires: ", res.expires))
    if res.ledger is not None:
        _say(c, _line("ledger:  entry ", res.ledger.seq, res.ledger.sha256))
    c.print(_engine_table(res.manifest.engines, f"{res.manifest.name} {res.manifest.version}"))
    _print_warnings(res.manifest)


@app.command("seal")
def seal_cmd(
    build_dirs: List[Path] = typer.Argument(..., help="One or more build directories of the same model."),
    key: Path = typer.Option(..., "--key", help="Private signing key (PEM)."),
    out: Path = typer.Option(Path("."), "--out", help="Directory for NAME-VERSION.bundle.tar."),
    expires: Optional[str] = typer.Option(None, "--expires", help=_EXPIRES_HELP),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=_LEDGER_HELP),
) -> None:
    """Seal build directories into one signed, deterministic bundle tar."""
    from .seal import seal

    def go() -> None:
        until = _expiry(expires)
        signing_key = _load_signing_key(key)
        with _Bar("sealing") as bar:
            res = seal(build_dirs, signing_key, out, progress=lambda _path, done, total: bar.update(done, total),
                       expires=until, ledger=_ledger_file(ledger))
        _print_seal(res)

    _run(False, go)


@app.command("create")
def create_cmd(
    ctx: typer.Context,
    model: Optional[Path] = typer.Argument(None, help="The source ONNX model (not with --spec)."),
    name: Optional[str] = typer.Option(None, "--name", help="Bundle name."),
    version: Optional[str] = typer.Option(None, "--version", help="Semantic version, e.g. 1.2.0."),
    target: List[str] = typer.Option([], "--target", help="sm_86, 8.6, a GPU name (rtx4090, l4, ...), local or cpu (repeatable)."),
    key: Optional[Path] = typer.Option(None, "--key", help="Private signing key (PEM). Required."),
    out: Path = typer.Option(Path("."), "--out", help="Directory for NAME-VERSION.bundle.tar."),
    shape: List[str] = typer.Option([], "--shape", help=_SHAPE_HELP),
    workspace: Optional[str] = typer.Option(None, "--workspace", help="Builder workspace limit, e.g. 2G."),
    backend: str = typer.Option("auto", "--backend", help="auto, tensorrt or tensorrt-rtx."),
    golden: bool = typer.Option(True, "--golden/--no-golden", help=_GOLDEN_HELP),
    sample_input: Optional[Path] = typer.Option(None, "--sample-input", help=_SAMPLE_HELP),
    sample_value: List[str] = typer.Option([], "--sample-value", help=_SAMPLE_VALUE_HELP),
    precision: List[str] = _MATRIX_OPTIONS["precision"],
    profile: List[str] = _MATRIX_OPTIONS["profile"],
    calibration: Optional[Path] = _MATRIX_OPTIONS["calibration"],
    jobs: Optional[int] = _MATRIX_OPTIONS["jobs"],
    timing_cache: Optional[Path] = _MATRIX_OPTIONS["timing_cache"],
    keep_fp32: List[str] = _MATRIX_OPTIONS["keep_fp32"],
    accept_accuracy_loss: bool = _MATRIX_OPTIONS["accept_accuracy_loss"],
    spec: Optional[Path] = typer.Option(None, "--spec", help=_SPEC_HELP),
    expires: Optional[str] = typer.Option(None, "--expires", help=_EXPIRES_HELP),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=_LEDGER_HELP),
    cache: Optional[Path] = _MATRIX_OPTIONS["cache"],
) -> None:
    """Build one engine per target and seal them into a signed bundle (build + seal)."""
    from .api import create

    _spec_usage(ctx, spec, ("model", "name", "version", "target"), ("key",))

    def go() -> None:
        from .cache import cache_path

        if spec is not None:
            from .spec import create_all, load_spec

            entries = load_spec(spec)  # every model checked before the key is asked for or anything built
            until = _expiry(expires)
            signing_key = _load_signing_key(key)
            create_all(entries, signing_key, out, progress=_BuildDisplay(), on_bundle=lambda _e, res: _print_seal(res),
                       expires=until, ledger=_ledger_file(ledger), cache=cache_path(cache))
            return
        request = _request(model, name, version, target, shape, workspace, backend, golden, sample_input,
                       precision, profile, calibration, jobs, timing_cache, sample_value, keep_fp32, accept_accuracy_loss)
        until = _expiry(expires)  # a duration counts from here: the build takes seconds to hours
        signing_key = _load_signing_key(key)  # before the build: a wrong passphrase should cost nothing
        _print_seal(create(request, signing_key, out, progress=_BuildDisplay(), expires=until, ledger=_ledger_file(ledger), cache=cache_path(cache)))

    _run(False, go)


@app.command("sign")
def sign_cmd(
    bundle: Path = typer.Argument(..., help="A sealed .bundle.tar to countersign."),
    key: Path = typer.Option(..., "--key", help="Your private signing key (PEM)."),
    trust: List[Path] = typer.Option([], "--trust", help="Public key(s) the bundle must verify against first (repeatable; default: $BUNDLE_TRUST)."),
    out: Optional[Path] = typer.Option(None, "--out", help="Directory for the countersigned NAME-VERSION.bundle.tar (never overwritten)."),
    in_place: bool = typer.Option(False, "--in-place", help="Replace BUNDLE with the countersigned bundle (atomic rename)."),
    expires: Optional[str] = typer.Option(None, "--expires", help=_EXPIRES_HELP),
    ledger: Optional[Path] = typer.Option(None, "--ledger", help=_LEDGER_HELP),
) -> None:
    """Countersign: verify BUNDLE against --trust, then add your signature over the same content.

    Every other member keeps its bytes; the content digest stays, the tar's SHA-256 changes.
    """
    from .countersign import sign_bundle
    from .errors import UsageError

    def go() -> None:
        if (out is None) == (not in_place):
            raise UsageError("give exactly one of --out DIR and --in-place; see 'bundle sign --help'")
        until = _expiry(expires)
        trusted = _trust(trust)
        signing_key = _load_signing_key(key)
        res = sign_bundle(bundle, signing_key, trusted, out_dir=out, in_place=in_place, expires=until,
                          ledger=_ledger_file(ledger))
        c = _out()
        _say(c, _line("bundle:  ", res.path))
        _say(c, _line("content: ", res.content_digest) + Text("  (unchanged: the digest every signature signs)"))
        _say(c, _line("sha256:  ", res.sha256))
        _say(c, _line("key id:  ", res.key_id) + _line("  added as ", res.signature))
        if res.expires:
            _say(c, _line("expires: ", res.expires))
        for name in res.signers:
            _say(c, _line("signature: ", name))
        if res.ledger is not None:
            _say(c, _line("ledger:  entry ", res.ledger.seq, res.ledger.sha256))

    _run(False, go)


# -- verify / extract / inspect ---------------------------------------------------------------

def _trust(paths: List[Path], policy: Optional[Path] = None):  # noqa: ANN202
    """What this host trusts: --policy or BUNDLE_POLICY (a policy file), else --trust or
    BUNDLE_TRUST (key files), by the one rule verify.py and the loader use (`trust_from_args`)."""
    from runtime_stub.verify import trust_from_args

    return trust_from_args([str(p) for p in paths], str(policy) if policy else None)


_POLICY_OPTION = typer.Option(None, "--policy", help="Trust policy file (default: $BUNDLE_POLICY); replaces --trust.")


def _print_report(rep) -> None:  # noqa: ANN001 - VerifyReport
    """The human verify report. A failed report holds strings read before (or without) any
    signature check: key hints, member names. All of it is escaped; only our VERIFIED is styled."""
    c = _out()
    if rep.ok:
        _say(c, Text.assemble(("VERIFIED", "bold green"), " ", printable(f"{rep.name} {rep.version}  ({rep.bundle})")))
    from runtime_stub.verify import signer_lines

    for line in signer_lines(rep):
        _say(c, Text(line))
    if rep.expired_accepted:
        _say(c, Text("expired: a signature has expired; accepted because of --allow-expired", style="bold yellow"))
    if rep.content_digest:
        _say(c, _line("content: ", rep.content_digest))
    if rep.sha256:
        _say(c, _line("sha256:  ", rep.sha256))
    ok_files = sum(1 for f in rep.files if f.status == "ok")
    _say(c, Text(f"files:   {ok_files}/{len(rep.files)} match the signed digests"))
    from runtime_stub.verify import part_lines  # a split bundle: its parts, and which are bad

    for line in part_lines(rep):
        _say(c, Text(line))
    from runtime_stub.verify import provenance_line  # the signed SLSA provenance, when the bundle has one

    if provenance_line(rep):
        _say(c, Text(provenance_line(rep)))
    if rep.engines:
        t = Table(title="engines")
        for col in ("engine", "target", "cc", "header", "runs here"):
            t.add_column(col)
        for e in rep.engines:
            hdr = ("onnx (cpu)" if e.backend == "onnxruntime" else "-") if e.header is None else f"{e.header.product} {e.header.version}" + (" ok" if e.header_ok else " MISMATCH")
            runs = "-" if e.runnable_here is None else ("yes" if e.runnable_here else f"no: {e.reason}")
            t.add_row(_plain(e.path.split("/")[-1]), _plain(e.target), _plain(e.cc or "-"), _plain(hdr), _plain(runs))
        c.print(t)
    if rep.host is not None and not rep.host.runnable:
        why = "no GPU found" if not rep.host.gpus else "no engine matches this host"
        _say(c, Text(f"host:    {why}; the bundle is authentic, but none of its engines can run here"))
    if rep.host_state is not None:
        from runtime_stub.verify import state_line

        _say(c, _plain(state_line(rep)))


def _verify_failed(rep) -> NoReturn:  # noqa: ANN001 - VerifyReport
    """The one error line of a failed verification, and its exit code (verify, extract, inspect)."""
    assert rep.error is not None
    _error_line(rep.error.failure_class, rep.error.message)
    raise typer.Exit(rep.exit_code)


def _state(path: Optional[Path], record: bool, allow_downgrade: bool, max_age: Optional[str],
           records: bool = False):  # noqa: ANN202
    """The host state a command uses (--state, else BUNDLE_STATE, else none), by the rule
    verify.py and the loader use (`state_options`): flags that need a state without one are a
    usage error, never silently ignored. ``records``: the command (extract, run) records in a
    state whenever there is one; `verify` only with --record."""
    from runtime_stub.verify import parse_duration, state_options

    seconds = parse_duration(max_age) if max_age is not None else None
    state = state_options(str(path) if path is not None else None, record, allow_downgrade, seconds)
    if state is not None and records:
        state.record = True
    return state


_STATE_HELP = "Host state file: rollback protection across runs (default: $BUNDLE_STATE; neither: no state)."
_DOWNGRADE_HELP = "Accept a lower version than this host accepted before (logged in the state file)."
_MAX_AGE_HELP = ("Refuse a bundle sealed more than DURATION (3600, 90m, 12h, 30d, 2w) before the newest one of its "
                 "name this host has seen (exit 18).")


def _verify_like(bundle: Path, trust: List[Path], json_mode: bool, require_host: bool, dest: Optional[Path],
                 state_args: tuple = (None, False, False, None, False), policy: Optional[Path] = None,
                 allow_expired: bool = False) -> None:
    from .verify import verify_bundle

    def go() -> None:
        state = _state(*state_args)
        trusted = _trust(trust, policy)
        with _Bar("verifying" if dest is None else "extracting") as bar:
            rep = verify_bundle(bundle, trusted, require_host=require_host, extract_to=dest, progress=bar.update,
                                state=state, allow_expired=allow_expired)
        if json_mode:
            print(_json(rep.to_dict()))
        else:
            _print_report(rep)
            if rep.ok and dest is not None:
                _say(_out(), _line("extracted to ", dest))
        if not rep.ok:
            _verify_failed(rep)

    _run(json_mode, go)


@app.command("verify")
def verify_cmd(
    bundle: Path = typer.Argument(..., help="A .bundle.tar file, or an extracted bundle directory."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    json_mode: bool = typer.Option(False, "--json", help="Print the full report as one JSON document."),
    require_host: bool = typer.Option(False, "--require-host", help="Also fail (exit 17) unless an engine can run on this host."),
    allow_expired: bool = typer.Option(False, "--allow-expired", help=_ALLOW_EXPIRED_HELP),
    state: Optional[Path] = typer.Option(None, "--state", help=_STATE_HELP),
    record: bool = typer.Option(False, "--record", help="Remember this bundle in the host state once it is verified."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help=_DOWNGRADE_HELP),
    max_age: Optional[str] = typer.Option(None, "--max-age", metavar="DURATION", help=_MAX_AGE_HELP),
) -> None:
    """Verify a bundle against trusted keys in one streaming pass. Exit 0 only if every check holds."""
    _verify_like(bundle, trust, json_mode, require_host, None, (state, record, allow_downgrade, max_age), policy,
                 allow_expired)


@app.command("extract")
def extract_cmd(
    bundle: Path = typer.Argument(..., help="A .bundle.tar file."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    dest: Path = typer.Option(..., "--dest", help="Directory to create; it appears only if every check passes."),
    json_mode: bool = typer.Option(False, "--json", help="Print the full report as one JSON document."),
    allow_expired: bool = typer.Option(False, "--allow-expired", help=_ALLOW_EXPIRED_HELP),
    state: Optional[Path] = typer.Option(None, "--state", help=_STATE_HELP + " An extracted bundle is recorded there."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help=_DOWNGRADE_HELP),
    max_age: Optional[str] = typer.Option(None, "--max-age", metavar="DURATION", help=_MAX_AGE_HELP),
) -> None:
    """Verify while extracting into a staging directory; move it to DEST only when all checks pass."""
    _verify_like(bundle, trust, json_mode, False, dest, (state, False, allow_downgrade, max_age, True), policy,
                 allow_expired)


@app.command("inspect")
def inspect_cmd(
    bundle: Path = typer.Argument(..., help="A .bundle.tar file, or an extracted bundle directory."),
    trust: List[Path] = typer.Option([], "--trust", help="Verify too, against these trusted keys."),
    policy: Optional[Path] = typer.Option(None, "--policy", help="Verify too, under this trust policy file."),
    json_mode: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
    allow_expired: bool = typer.Option(False, "--allow-expired", help="With --trust: " + _ALLOW_EXPIRED_HELP),
) -> None:
    """Show metadata, signers, files, targets and engine headers without extracting."""
    from .inspect import inspect_bundle
    from .verify import MAX_MANIFEST_SIZE, verify_bundle

    def go() -> None:
        # With --trust, verify first and on its own terms: the same verdict, error line and exit
        # code as `bundle verify`, and nothing of a bundle that fails it is parsed for display.
        vrep = verify_bundle(bundle, _trust(trust, policy), allow_expired=allow_expired) if trust or policy else None
        v = vrep.to_dict() if vrep is not None else None
        if vrep is not None and not vrep.ok:
            if json_mode:
                print(_json({"ok": False, "exit_code": vrep.exit_code, "error": v["error"], "bundle": str(bundle),
                             "verified": False, "verification": v}))
            else:
                _print_report(vrep)
            _verify_failed(vrep)
        if vrep is not None:
            # Verified: the signed manifest may be as large as verify allows; the digest checks
            # make sure this second read saw the very bytes that were verified (a tar: the whole
            # file's digest; a directory: the manifest's digest and every engine header).
            digests = {f.path: f.sha256 for f in vrep.files if f.sha256}
            rep = inspect_bundle(bundle, max_manifest=MAX_MANIFEST_SIZE, verified_digests=digests)
            headers = {e.path: e.header for e in vrep.engines if e.header is not None}
            if rep.sha256 != vrep.sha256 or any(rep.engine_headers.get(p) != h for p, h in headers.items()):
                raise ArchiveError(f"{bundle}: the bundle changed between verification and inspection")
            rep.verified = True
            rep.notes[0] = "VERIFIED against the trusted keys given"
        else:
            rep = inspect_bundle(bundle)
        if json_mode:
            # The --json contract: ok, exit_code and error at the top, as for every command.
            print(_json({"ok": True, "exit_code": 0, "error": None, **rep.to_dict(), "verification": v}))
        else:
            _print_inspect(rep)

    _run(json_mode, go)


def _variant_table(variants) -> Table:  # noqa: ANN001 - PrecisionVariant list
    """Each converted graph with the accuracy measured at build time against its selftest's
    tolerance: what decides whether a reduced precision is fit to ship."""
    t = Table(title="precision variants (accuracy on the golden inputs, against the fp32 reference)")
    for col in ("precision", "graph", "worst error / allowance", "values outside", "max abs err", "kept in fp32", "verdict"):
        t.add_column(col)
    for v in variants:
        a = v.accuracy
        if a is None or a.within_tolerance is None:
            ratio = outside = err = "-"
            verdict = "not measured" if a is None else "not measured: " + a.note
        else:
            ratio = f"{a.tolerance_ratio:.3g}"
            outside = f"{100 * (a.outside_fraction or 0):.2f}%"
            err = f"{a.max_abs_err:.3g}"
            verdict = "within tolerance" if a.within_tolerance else "OUTSIDE tolerance"
        if v.accuracy_loss_accepted:
            verdict += " (accepted: --accept-accuracy-loss)"
        kept = f"{len(v.kept_fp32)} node(s)" if v.kept_fp32 else "-"
        t.add_row(_plain(v.precision), _plain(v.graph.split("/")[-1]), _plain(ratio), _plain(outside), _plain(err),
                  _plain(kept), _plain(verdict))
    return t


def _print_inspect(rep) -> None:  # noqa: ANN001 - bundler.inspect.InspectReport
    """The human inspect report, built from the schema-checked manifest only (never raw JSON);
    every value from the bundle is escaped, and key hints are shown only if they are key ids."""
    c = _out()
    _say(c, Text(printable(rep.notes[0]), style="bold green" if rep.verified else "bold yellow"))
    _say(c, _line("bundle:   ", rep.bundle))
    m = rep.manifest
    where = f"(directory {printable(rep.root)}, signed subject {printable(rep.signed_subject)})"
    if m is None:
        _say(c, Text(f"name:     ? (no usable manifest; see the notes)  {where}"))
    else:
        _say(c, _line("name:     ", m.name, m.version) + Text(f"  {where}"))
        _say(c, _line("created:  ", m.created))
        _say(c, _line("model:    ", m.model.path, "sha256", m.model.sha256))
        for io, tensors in (("input", m.model.inputs), ("output", m.model.outputs)):
            for ts in tensors:
                dims = "x".join("?" if d is None else str(d) for d in ts.shape)
                _say(c, _line(f"  {io:6} ", f"{ts.name}: {ts.dtype} [{dims}]"))
    for kid in rep.signer_key_ids:
        _say(c, Text(f"signer:   {shown_key_id(kid)}"))
    if m is not None:
        t = Table(title="engines")
        for col in ("engine", "target", "cc", "backend", "header (read from the engine)"):
            t.add_column(col)
        for e in m.engines:
            h = rep.engine_headers.get(e.path)
            hdr = "onnx (cpu target)" if e.header is None and h is None else "unreadable" if h is None else _header_text(h)
            t.add_row(_plain(e.path.split("/")[-1]), _plain(e.target.label), _plain(e.target.cc or "-"),
                      _plain(f"{e.backend.name} {e.backend.version}"), _plain(hdr))
        c.print(t)
        if m.variants:
            c.print(_variant_table(m.variants))
    ft = Table(title="files")
    ft.add_column("path")
    ft.add_column("size", justify="right")
    ft.add_column("mode")
    for mem in rep.members:
        ft.add_row(_plain(mem.path + ("/" if mem.is_dir else "")), _plain(f"{mem.size:,}"), _plain(mem.mode))
    c.print(ft)
    for n in rep.notes[1:]:
        _say(c, _line("note: ", n))


@app.command("inspect-engine")
def inspect_engine_cmd(
    file: Path = typer.Argument(..., help="An engine file, a .bundle.tar, or an extracted bundle directory."),
    json_mode: bool = typer.Option(False, "--json", help="Print the report as one JSON document."),
) -> None:
    """Read engine headers offline (no GPU, no TensorRT): runtime, version, compute capabilities."""
    from .engine_header import inspect_engine_file

    def go() -> None:
        rep = inspect_engine_file(file)
        if json_mode:
            print(_json({"ok": True, "exit_code": 0, "error": None, **rep.to_dict()}))
            return
        c = _out()
        for n in rep.notes:
            _say(c, Text(printable(n), style="bold yellow"))
        t = Table(title=_line("engine headers: ", rep.path))
        for col in ("engine", "size", "runtime", "version", "cc", "GPUs"):
            t.add_column(col)
        for e in rep.engines:
            h = e.header
            cc = ", ".join(h.cc) if h.cc else ("none set" if h.cc is not None else "not recorded")
            if h.cc_mask is not None and h.cc is not None and h.cc_mask & ~0x3F:
                cc += f" (unknown bits, mask {h.cc_mask:#x})"
            gpus = "; ".join(f"{k}: {', '.join(v) or '-'}" for k, v in e.gpus.items()) or "-"
            t.add_row(_plain(e.name), _plain(f"{e.size:,}"), _plain(h.product), _plain(h.version), _plain(cc), _plain(gpus))
        c.print(t)

    _run(json_mode, go)


@app.command("fix-dims")
def fix_dims_cmd(
    model: Path = typer.Argument(..., help="An ONNX model whose inputs reuse one dim name on unrelated axes."),
    out: Path = typer.Option(..., "--out", help="Where to write the fixed model (must not exist)."),
) -> None:
    """Give each input axis that shares a dim name with an unrelated axis a name of its own.

    TensorRT treats every use of a dim name as one dimension: rapidocr's cls model names both H and
    W '?', so a profile with different H and W ranges is rejected. The fixed model builds.
    """
    from .model import fix_shared_dims, load_model

    def go() -> None:
        if out.exists():
            raise OutputError(f"{out}: already exists; not overwritten")
        load_model(model)  # the same checks as a build: a clear error for a bad file
        try:
            renames = fix_shared_dims(model, out)
        except OSError as e:
            raise OutputError(f"{out}: cannot write ({e.strerror})") from None
        if not renames:
            _say(_err(), _plain(f"{model}: no dim name is shared by unrelated axes; nothing written"))
            return
        for where, new in renames.items():  # dim and input names come from the model file
            _say(_out(), _plain(f"{where} -> {new!r}"))
        _say(_out(), _line("wrote ", out))

    _run(False, go)


@app.command("verifier")
def verifier_cmd(
    print_digest: bool = typer.Option(  # noqa: ARG001 - printing is what the command always does
        False, "--print-digest", help="Print the SHA-256 of the standalone verifier (done with or without --out)."
    ),
    out: Optional[Path] = typer.Option(None, "--out", help="Write the standalone verifier to this new file."),
) -> None:
    """The stdlib-only verifier (runtime/verify.py): its digest, or a standalone copy for a closed host."""
    from .runtime import verifier_bytes, write_verifier

    def go() -> None:
        import hashlib

        digest = hashlib.sha256(verifier_bytes()).hexdigest()
        if out is not None:
            write_verifier(out)
            _say(_err(), _plain(f"wrote {out}; check on the closed host: sha256sum {out.name} must print {digest}"))
        print(digest)  # with or without --out: what to compare the copy against

    _run(False, go)


@app.command(
    "run",
    context_settings={"allow_extra_args": True, "ignore_unknown_options": True},
)
def run_cmd(
    ctx: typer.Context,
    bundle: Path = typer.Argument(..., help="A .bundle.tar file or an extracted bundle directory."),
    trust: List[Path] = typer.Option([], "--trust", help="Trusted public key PEM (repeatable; default: $BUNDLE_TRUST)."),
    policy: Optional[Path] = _POLICY_OPTION,
    allow_expired: bool = typer.Option(False, "--allow-expired", help=_ALLOW_EXPIRED_HELP),
    state: Optional[Path] = typer.Option(None, "--state", help=_STATE_HELP + " The bundle run is recorded there."),
    allow_downgrade: bool = typer.Option(False, "--allow-downgrade", help=_DOWNGRADE_HELP),
    max_age: Optional[str] = typer.Option(None, "--max-age", metavar="DURATION", help=_MAX_AGE_HELP),
) -> None:
    """Verify, then run the bundle's loader: `bundle run B --trust K -- selftest|run|bench|info ...`."""
    from .runtime import run_loader

    def go() -> None:
        code = run_loader(bundle, _trust(trust, policy), list(trust), ctx.args, policy, allow_expired=allow_expired,
                          state=_state(state, False, allow_downgrade, max_age, records=True))
        raise typer.Exit(code)

    _run(False, go)


def _version_cb(value: bool) -> None:
    if value:
        print(f"trt-bundler {__version__}")
        raise typer.Exit()


@app.callback()
def _main(
    version: bool = typer.Option(False, "--version", callback=_version_cb, is_eager=True, help="Show the version and exit."),
) -> None:
    pass


# The first SIGINT/SIGTERM this process took, and whether "interrupted"/"terminated" was said.
# Typer turns a KeyboardInterrupt that leaves a command outside `_run` (in its imports, in click's
# parameter conversion) into a silent exit 130, whatever the signal; `_invoke` says it then, with
# the signal's own code (found by the interrupt loop of tests/test_campaign_interrupts.py). The
# CLI owns the process and its signals, so this state is the CLI's, never the library's.
# "json_out": a --json document was made (each is printed as soon as `_json` makes it), so a
# signal after it must not print a second one.
_SIGNAL: dict = {"num": None, "said": False, "json_out": False}


def _on_signal(signum: int, frame: object) -> None:
    """First SIGINT or SIGTERM: ignore any further one (a second Ctrl-C must never interrupt the
    cleanup half-way, nor hang it), then unwind from wherever the program is."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    _SIGNAL["num"] = signum
    raise Interrupted(signum)


def _invoke(argv: List[str]) -> int:
    """Run the typer app and return the exit code, with click's usage errors as one line.

    In standalone mode click prints a usage block and a rich box for a mistyped option; the
    README promises one line per failure, so usage errors are caught here and rendered like
    every other error: ``error [usage]: No such option: --tust Did you mean --trust?; see
    'bundle verify --help'`` (exit 2). `bundle` or `bundle keys` alone still prints its help.
    """
    exc = sys.modules[typer.BadParameter.__module__]  # typer vendors click: its own classes
    try:
        rc = app(args=argv, prog_name="bundle", standalone_mode=False)
    except exc.NoArgsIsHelpError as e:
        if e.format_message().strip():  # typer's rich help is printed (on stdout) as it is made
            e.show()  # no arguments at all: the help is the answer (exit 2)
        return int(ExitCode.USAGE)
    except exc.UsageError as e:
        hint = f"; see '{e.ctx.command_path} --help'" if e.ctx is not None else ""
        _error_line("usage", f"{e.format_message().rstrip('.')}{hint}")
        return int(ExitCode.USAGE)
    except exc.ClickException as e:  # any other error click reports (none is expected)
        _error_line("usage", e.format_message())
        return int(e.exit_code)
    except typer.Abort as e:  # EOF, Ctrl-C or SIGTERM before our command ran (click wraps them)
        return _stopped(e.__cause__, argv)
    except KeyboardInterrupt as e:  # while typer still builds the command, where click wraps nothing
        return _stopped(e, argv)
    if _SIGNAL["num"] is not None and not _SIGNAL["said"]:  # typer's silent 130 (see _SIGNAL)
        return _stopped(Interrupted(_SIGNAL["num"]), argv)
    return rc if isinstance(rc, int) else 0


def _stopped(cause: Optional[BaseException], argv: Optional[List[str]] = None) -> int:
    """Say "interrupted" or "terminated" (once) and return the exit code, 130 or 143.

    Under --json (in ``argv``), when no document was printed yet (stopped before the command
    ran, or in its own imports), the one a command interrupted later prints is printed here:
    --json means one document on stdout, whenever the signal came."""
    code = cause.exit_code if isinstance(cause, Interrupted) else 130
    if not _SIGNAL["said"]:
        _SIGNAL["said"] = True
        what = "terminated" if code == 143 else "interrupted"
        if argv is not None and _json_mode(argv) and not _SIGNAL["json_out"]:
            print(json.dumps({"ok": False, "exit_code": code, "error": {"class": "interrupted", "member": None,
                                                                        "message": what}}))
        _err().print(what, markup=False)
    return code


def main() -> None:
    # The CLI owns the process, so it (not the library) decides what a signal does: SIGTERM
    # (`timeout`, a CI cancel) unwinds like Ctrl-C, removing staging and temporary directories.
    signal.signal(signal.SIGINT, _on_signal)
    signal.signal(signal.SIGTERM, _on_signal)
    sys.exit(_invoke(sys.argv[1:]))


from . import cli_parts  # noqa: E402,F401 - registers its commands
from . import cli_audit  # noqa: E402,F401 - registers its commands
from . import cli_farm  # noqa: E402,F401 - registers its commands
from . import cli_export  # noqa: E402,F401 - registers its commands
from . import cli_provenance  # noqa: E402,F401 - registers its commands
