"""The build cache: engines keyed by the SHA-256 of everything that determines them.

CI re-runs and fleet builds rebuild the same engines for minutes to hours each. A build's output
is determined by the graph it builds from (the source after any precision conversion), the
target, the precision, the optimization profiles, the builder's product and exact version and
the build settings. `key_inputs` lists exactly those; the key is the SHA-256 of their canonical
JSON. Names play no part: two bundles that build the same graph for the same GPU share an entry.

One entry is one directory named by its key::

    <key>/engine.engine (or engine.onnx)   the engine, as built
    <key>/build.log                        the builder's log
    <key>/entry.json                       key inputs, the original EngineRecord, log digest, and
                                           a check digest over all of it

Entries are written in a private temporary directory and renamed into place, so a reader sees a
whole entry or none, and two builds of the same key race harmlessly (the second rename fails and
its copy is dropped). A reader copies the engine and log out while hashing them, and uses the copy
only when both digests match what entry.json records: a corrupted entry is removed, a warning is
reported, and the engine is rebuilt. Last use is the entry directory's mtime (`prune` removes the
least recently used first).

The farm (bundler/farm.py) uses the same module: the driver looks up and stores, and a GPU node
whose builder version only it knows looks up and stores in the same directory when it can see it.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import hashlib
import json
import os
import shutil
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Dict, List, Optional, Union

from . import __version__
from .errors import InputError, OutputError
from .fsutil import make_dirs, make_workdir, remove_stale
from .manifest import CacheInfo, EngineRecord, SchemaError, StrictJSONError, from_dict, loads_strict
from .model import sha256_file

CACHE_ENV = "BUNDLE_CACHE"
KEY_FORMAT = "trt-bundler-cache-key/1"
ENTRY_FORMAT = "trt-bundler-cache-entry/1"
ENTRY_JSON = "entry.json"
LOG_NAME = "build.log"
_TMP = ".tmp-"  # + pid: an entry being written
_TRASH = ".trash-"  # + pid: an entry being removed
_CHUNK = 4 << 20
_MAX_ENTRY_JSON = 16 << 20

Warn = Callable[[str, str], None]  # (engine stem, message)


def cache_path(given: Optional[Union[str, Path]]) -> Optional[Path]:
    """``--cache DIR``, else ``$BUNDLE_CACHE``, else None (no cache)."""
    if given is not None and str(given) != "":
        return Path(given)
    env = os.environ.get(CACHE_ENV)
    return Path(env) if env else None


def open_cache(given: Optional[Union[str, Path, "BuildCache"]]) -> Optional["BuildCache"]:
    """The library's rule: a cache only when one is given (the CLI adds ``$BUNDLE_CACHE``)."""
    if isinstance(given, BuildCache) or given is None:
        return given
    return BuildCache(Path(given))


def canonical(doc: object) -> bytes:
    return json.dumps(doc, sort_keys=True, separators=(",", ":"), ensure_ascii=True, allow_nan=False).encode()


def key_inputs(job, builder: dict, graph_sha256: str, source_sha256: Optional[str]) -> dict:  # noqa: ANN001 - jobs.Job
    """Everything that determines a build's output, and nothing else (no names, no paths).

    ``source_sha256`` is for full TensorRT only: TensorRT <= 10 builds fp16/bf16 from the source
    graph with builder flags, so the source is an input there too.
    """
    t = job.target
    return {
        "format": KEY_FORMAT,
        "graph_sha256": graph_sha256,
        "source_sha256": source_sha256,
        "target": {"label": t.label, "cc": t.cc_str, "gpu": t.gpu},
        "precision": job.precision,
        "profiles": [{name: dataclasses.asdict(r) for name, r in p.items()} for p in job.profiles],
        "builder": builder,
        "settings": {"workspace": job.workspace, "engine": Path(job.engine_path).suffix},
        "tool": f"trt-bundler {__version__}",
    }


def cache_key(inputs: dict) -> str:
    return hashlib.sha256(canonical(inputs)).hexdigest()


def job_key_inputs(job, builder: dict, digests: Dict[Path, str]) -> dict:  # noqa: ANN001
    """`key_inputs` for a job whose graphs are files here (digests memoized per path)."""

    def digest(p: Path) -> str:
        p = Path(p)
        if p not in digests:
            digests[p] = sha256_file(p)[0]
        return digests[p]

    source = digest(job.source_path) if builder.get("name") == "tensorrt" and job.source_path else None
    return key_inputs(job, builder, digest(job.model_path), source)


@dataclass
class EntryInfo:
    """One entry, as `bundle cache ls` shows it."""

    key: str
    size: int
    last_used: str  # UTC, from the entry directory's mtime
    ok: bool  # entry.json readable and bound to its key (the engine is checked only on reuse)
    target: str = ""
    precision: str = ""
    builder: str = ""
    host: str = ""
    started: str = ""
    graph_sha256: str = ""
    problem: str = ""
    mtime: float = 0.0  # last use, seconds since the epoch (for ordering)


class BuildCache:
    """A build cache directory (made on first store)."""

    def __init__(self, root: Path) -> None:
        self.root = Path(root)

    def _entry(self, key: str) -> Path:
        return self.root / key

    # -- reuse ---------------------------------------------------------------------------------
    def lookup(self, key: str, engine_dest: Path, log_dest: Path, warn: Optional[Warn] = None,
               stem: str = "") -> Optional[EngineRecord]:
        """Copy the entry's engine and log to the destinations and return its record (renamed to
        the destinations, marked reused, original host and time kept), or None on a miss.

        Both files are hashed while copied and used only when the digests match the entry: a
        corrupted entry is removed (``warn`` says so) and None returned, so the engine is rebuilt.
        """
        d = self._entry(key)
        try:
            raw = _read_bounded(d / ENTRY_JSON)
        except FileNotFoundError:
            return None
        except OSError as e:
            self._corrupt(d, f"entry.json unreadable ({e.strerror})", warn, stem)
            return None
        try:
            doc = _parse_entry(raw, key)
            rec = from_dict(EngineRecord, doc["record"], "entry.record")
        except (ValueError, KeyError, TypeError, SchemaError) as e:
            self._corrupt(d, str(e), warn, stem)
            return None
        engine_src = d / ("engine" + Path(rec.path).suffix)
        try:
            ok_engine = _copy_checked(engine_src, Path(engine_dest), rec.sha256, rec.size)
            ok_log = ok_engine and _copy_checked(d / LOG_NAME, Path(log_dest), doc["log_sha256"], doc["log_size"])
        except FileNotFoundError:
            _unlink(Path(engine_dest), Path(log_dest))
            if d.exists() and (d / ENTRY_JSON).exists():  # a file gone from a whole entry: damaged
                self._corrupt(d, "a file of the entry is missing", warn, stem)
            return None  # else removed meanwhile (prune, or another build's repair): a miss
        if not (ok_engine and ok_log):
            _unlink(Path(engine_dest), Path(log_dest))
            what = "engine" if not ok_engine else "build log"
            self._corrupt(d, f"the {what}'s SHA-256 or size differs from the entry's record", warn, stem)
            return None
        try:
            os.utime(d)  # last use, for prune
        except OSError:
            pass
        return dataclasses.replace(
            rec, path=f"engines/{Path(engine_dest).name}", log=f"engines/{Path(log_dest).name}",
            cache=CacheInfo(key=key, reused=True),
        )

    def _corrupt(self, d: Path, why: str, warn: Optional[Warn], stem: str) -> None:
        _remove_entry(self.root, d)
        if warn is not None:
            warn(stem, f"build cache entry {d.name[:16]}... is corrupted ({why}); removed, rebuilding")

    # -- store ---------------------------------------------------------------------------------
    def store(self, key: str, inputs: dict, record: EngineRecord, engine: Union[Path, bytes],
              log: Union[Path, bytes]) -> bool:
        """Add an entry for a fresh build (``record`` as built, ``engine``/``log`` files or bytes).
        False when the key is there already (another build stored it first). Raises OSError."""
        if self._entry(key).exists():
            return False
        made = make_dirs(self.root)
        del made  # the cache directory stays: it is meant to outlive this run
        remove_stale(self.root, _TMP)
        remove_stale(self.root, _TRASH)
        tmp = make_workdir(self.root, _TMP)
        try:
            engine_name = "engine" + Path(record.path).suffix
            _write(tmp / engine_name, engine)
            log_sha, log_size = _write(tmp / LOG_NAME, log)
            rec = dataclasses.replace(record, cache=None)
            body = {
                "format": ENTRY_FORMAT, "key": key, "inputs": inputs, "record": dataclasses.asdict(rec),
                "log_sha256": log_sha, "log_size": log_size,
                "stored": _dt.datetime.now(_dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ"),
            }
            body["check"] = hashlib.sha256(canonical(body)).hexdigest()
            _write(tmp / ENTRY_JSON, json.dumps(body, sort_keys=True, indent=1).encode())
            os.chmod(tmp, 0o755)
            dirfd = os.open(tmp, os.O_RDONLY)
            try:
                os.fsync(dirfd)
            finally:
                os.close(dirfd)
            try:
                from .fsutil import rename_noreplace

                rename_noreplace(tmp, self._entry(key))
            except OutputError:
                return False  # stored meanwhile by a concurrent build of the same key
        finally:
            if tmp.exists():
                shutil.rmtree(tmp, ignore_errors=True)
        return True

    # -- management ----------------------------------------------------------------------------
    def entries(self) -> List[EntryInfo]:
        """Every entry, least recently used first."""
        if not self.root.is_dir():
            raise InputError(f"{self.root}: no such build cache directory")
        out = []
        for name in sorted(os.listdir(self.root)):
            if len(name) != 64 or any(c not in "0123456789abcdef" for c in name):
                continue
            d = self.root / name
            try:
                st = os.stat(d)
                size = sum((d / f).stat().st_size for f in os.listdir(d))
            except OSError:
                continue
            used = _dt.datetime.fromtimestamp(st.st_mtime, _dt.timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
            info = EntryInfo(key=name, size=size, last_used=used, ok=False, mtime=st.st_mtime)
            try:
                doc = _parse_entry(_read_bounded(d / ENTRY_JSON), name)
                rec = from_dict(EngineRecord, doc["record"], "entry.record")
                b = doc["inputs"].get("builder") or {}
                info.ok = True
                info.target, info.precision = rec.target.label, rec.build.precision
                info.builder = f"{b.get('name', '?')} {b.get('version', '?')}"
                info.host, info.started = rec.host, rec.started
                info.graph_sha256 = str(doc["inputs"].get("graph_sha256", ""))
            except (OSError, ValueError, KeyError, TypeError, AttributeError, SchemaError) as e:
                info.problem = str(e) or type(e).__name__
            out.append(info)
        out.sort(key=lambda i: (i.mtime, i.key))
        return out

    def prune(self, max_size: int) -> List[EntryInfo]:
        """Remove unreadable entries, then the least recently used, until the cache holds at most
        ``max_size`` bytes. Returns what was removed."""
        entries = self.entries()
        remove_stale(self.root, _TMP)
        remove_stale(self.root, _TRASH)
        removed = [e for e in entries if not e.ok]
        kept = [e for e in entries if e.ok]
        total = sum(e.size for e in kept)
        while kept and total > max_size:
            e = kept.pop(0)
            removed.append(e)
            total -= e.size
        for e in removed:
            _remove_entry(self.root, self._entry(e.key))
        return removed


def run_cached(jobs: list, builders: Dict[str, Optional[dict]], run: Callable[[list], List[EngineRecord]],
               cache: Optional[BuildCache], progress: Optional[Callable] = None) -> List[EngineRecord]:
    """`run` the jobs the cache cannot serve; return records in job order.

    Hits are copied into place first (reported as stage ``reused``); the misses are built by
    ``run`` and stored. A cache that cannot be written (disk full) is a warning: the build stands.
    """
    if cache is None:
        return run(jobs)
    from .backends import BuildEvent

    def warn(stem: str, msg: str) -> None:
        if progress is not None:
            j = next((j for j in jobs if j.stem == stem), None)
            progress(BuildEvent(stem, j.target.label if j else "", j.precision if j else "", "warning", 0.0, msg))

    digests: Dict[Path, str] = {}
    keys: Dict[str, tuple] = {}
    records: Dict[str, EngineRecord] = {}
    for j in jobs:
        builder = builders.get(j.backend)
        if builder is None:
            continue
        inputs = job_key_inputs(j, builder, digests)
        key = cache_key(inputs)
        keys[j.stem] = (key, inputs)
        rec = cache.lookup(key, j.engine_path, j.log_path, warn, j.stem)
        if rec is not None:
            records[j.stem] = rec
            if progress is not None:
                progress(BuildEvent(j.stem, j.target.label, j.precision, "reused", rec.duration_s,
                                    f"built on {rec.host} at {rec.started}"))
    misses = [j for j in jobs if j.stem not in records]
    if misses:
        for j, rec in zip(misses, run(misses)):
            if j.stem in keys:
                key, inputs = keys[j.stem]
                try:
                    cache.store(key, inputs, rec, j.engine_path, j.log_path)
                except OSError as e:
                    warn(j.stem, f"cannot store in the build cache {cache.root} ({e.strerror or e})")
                rec = dataclasses.replace(rec, cache=CacheInfo(key=key, reused=False))
            records[j.stem] = rec
    return [records[j.stem] for j in jobs]


# -- helpers ------------------------------------------------------------------------------------

def _parse_entry(raw: bytes, key: str) -> dict:
    try:
        doc = loads_strict(raw)
    except StrictJSONError as e:
        raise ValueError(f"entry.json: {e}") from None
    if not isinstance(doc, dict) or doc.get("format") != ENTRY_FORMAT:
        raise ValueError("entry.json: not a build cache entry")
    check = doc.pop("check", None)
    if check != hashlib.sha256(canonical(doc)).hexdigest():
        raise ValueError("entry.json does not match its check digest")
    if doc.get("key") != key or not isinstance(doc.get("inputs"), dict) or cache_key(doc["inputs"]) != key:
        raise ValueError("entry.json is not the entry of this key")
    if not isinstance(doc.get("log_sha256"), str) or not isinstance(doc.get("log_size"), int):
        raise ValueError("entry.json: no build log digest")
    return doc


def _read_bounded(path: Path) -> bytes:
    with open(path, "rb") as f:
        raw = f.read(_MAX_ENTRY_JSON + 1)
    if len(raw) > _MAX_ENTRY_JSON:
        raise ValueError("entry.json is too large")
    return raw


def _copy_checked(src: Path, dest: Path, sha256: str, size: int) -> bool:
    """Copy ``src`` to the new file ``dest``, hashing what is written; True when it matches."""
    h = hashlib.sha256()
    n = 0
    with open(src, "rb") as fi:
        fd = os.open(dest, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
        with os.fdopen(fd, "wb") as fo:
            while True:
                chunk = fi.read(_CHUNK)
                if not chunk:
                    break
                h.update(chunk)
                n += len(chunk)
                fo.write(chunk)
    return n == size and h.hexdigest() == sha256


def _write(path: Path, data: Union[Path, bytes]) -> tuple:
    """Write bytes or copy a file to ``path`` (fsynced); return its (sha256, size)."""
    h = hashlib.sha256()
    n = 0
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    with os.fdopen(fd, "wb") as fo:
        if isinstance(data, (bytes, bytearray, memoryview)):
            h.update(data)
            n = len(data)
            fo.write(data)
        else:
            with open(data, "rb") as fi:
                while True:
                    chunk = fi.read(_CHUNK)
                    if not chunk:
                        break
                    h.update(chunk)
                    n += len(chunk)
                    fo.write(chunk)
        fo.flush()
        os.fsync(fo.fileno())
    return h.hexdigest(), n


def _unlink(*paths: Path) -> None:
    for p in paths:
        try:
            p.unlink()
        except OSError:
            pass


def _remove_entry(root: Path, d: Path) -> None:
    """Rename the entry out of the way first (readers then miss it as a whole), then delete it."""
    try:
        trash = make_workdir(root, _TRASH)
    except OSError:
        shutil.rmtree(d, ignore_errors=True)
        return
    try:
        os.rename(d, trash / "entry")
    except OSError:
        pass  # gone already (another process removed or repaired it)
    shutil.rmtree(trash, ignore_errors=True)
