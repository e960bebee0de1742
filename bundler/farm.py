"""The build farm: every (model, target, precision) build of a spec as a Ray task.

Under full TensorRT an engine is built on a GPU of its target architecture, so a fleet build
needs one GPU host per architecture. Ray already schedules work over such hosts; this module
only maps builds onto Ray tasks and puts the results back together (docs/farm.md):

* The driver (the host running ``bundle farm``) does everything that needs no builder: spec and
  model checks, golden data, precision conversions, the placement check, build cache lookups. It
  writes one staging directory per model, exactly as a local build does (`plan_build`,
  `stage_build`).
* Each build that the cache cannot serve is one Ray task running `run_one` (the function a local
  build worker runs) on a node that offers what it needs: one CPU for TensorRT-RTX and the cpu
  target, one GPU plus the custom resource ``gpu_smXY`` of its compute capability for full
  TensorRT. The graph travels through Ray's object store; the engine and log come back the same
  way and are written into the model's staging directory.
* Only when every build of every model has an engine are the build directories finished
  (`finish_build`) and sealed, each with the same `seal` as ``bundle seal``. A failure seals
  nothing; a failed build's logs are kept as a local build keeps them.

Ray is an optional dependency (``pip install 'trt-bundler[farm]'``); nothing here imports it at
module level.
"""

from __future__ import annotations

import dataclasses
import logging
import os
import shutil
import signal
import socket
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Dict, List, Optional, Sequence, Tuple

from .backends import BuildEvent, Staged, finish_build, plan_build, select_backend, stage_build
from .backends import _keep_logs  # the same rule for a failed build's logs as local builds
from .cache import BuildCache, cache_key, job_key_inputs, open_cache
from .errors import BuildError, BundleError, FarmError, InputError, OutputError
from .fsutil import check_out_dir, make_dirs, make_workdir, remove_made_dirs, remove_stale, remove_tree
from .manifest import CacheInfo, EngineRecord
from .targets import Target, parse_target

#: Ray re-runs a build task whose worker process or node died at most this many times (so at most
#: 1 + RETRIES tries); Ray places the retry on any node that offers the resources, which is
#: another node when the first one died. A build that fails by itself (the builder refused the
#: graph) is not retried: it would fail the same way everywhere.
RETRIES = 2
WORK_PREFIX = ".bundle-farm-"  # + pid, in --out: the driver's staging directories
TASK_PREFIX = ".bundle-farm-task-"  # + pid, in a node's temp dir: one build's files
INSTALL_HINT = "pip install 'trt-bundler[farm]' (or: pip install ray)"
_HIDDEN_RESOURCES = ("memory", "object_store_memory")


def check_ray() -> None:
    """A `FarmError` that says how to install Ray when it is not installed. Cheap: importing
    Ray takes about a second, and a spec served by the build cache never needs it."""
    import importlib.util

    try:
        found = importlib.util.find_spec("ray") is not None
    except (ImportError, ValueError):  # a broken or blocked install: say the same
        found = False
    if not found:
        raise FarmError(f"the build farm needs Ray, which is not installed: {INSTALL_HINT}")


def import_ray():  # noqa: ANN201
    """The ray module, or a `FarmError` that says how to install it."""
    check_ray()
    try:
        import ray
    except ImportError:
        raise FarmError(f"the build farm needs Ray, which is not installed: {INSTALL_HINT}") from None
    return ray


# -- placement ------------------------------------------------------------------------------------

class RemoteTensorRT:
    """Full TensorRT on the farm: the driver plans, a GPU node of the target's architecture builds.

    Only what the driver can check without a GPU is checked here (a named compute capability);
    the node checks its own GPU against the target before it builds (`TensorRTBackend.resolve`).
    """

    name = "tensorrt"
    extension = ".engine"

    def version(self) -> str:
        return "as installed on the GPU node"

    def identity(self) -> None:
        return None  # only the GPU node knows its TensorRT version: it keys the cache itself

    def resolve(self, target: Target) -> Target:
        if target.is_cpu:
            raise BuildError("target cpu is built by onnxruntime, not TensorRT")
        if target.cc is None:
            raise BuildError("target local means this host's GPU; on the build farm name the compute capability "
                             "or the GPU (sm_86, l4) so that a node of that architecture builds it")
        return target

    def build(self, job, on_stage):  # noqa: ANN001, ANN201
        raise BuildError("full TensorRT builds run on a farm node")


def farm_backend(backend: str, target: Target) -> str:
    """Which builder a farm uses: ``auto`` means TensorRT-RTX (it builds on any node, CPUs only),
    as on a host without a GPU; full TensorRT only when the spec says ``backend = "tensorrt"``."""
    if target.is_cpu:
        return "onnxruntime"
    return "tensorrt" if backend == "tensorrt" else "tensorrt-rtx"


def requirements(backend: str, target: Target) -> Dict[str, float]:
    """The Ray resources one build needs."""
    if backend == "tensorrt" and target.cc is not None:
        return {"CPU": 1.0, "GPU": 1.0, f"gpu_sm{target.cc[0]}{target.cc[1]}": 1.0}
    return {"CPU": 1.0}


def node_label(node: dict) -> str:
    return f"{node.get('NodeManagerHostname') or node.get('NodeManagerAddress', '?')}/{str(node.get('NodeID', ''))[:8]}"


def _offer(resources: Dict[str, float]) -> str:
    shown = {k: v for k, v in resources.items() if k not in _HIDDEN_RESOURCES and not k.startswith("node:")}
    return ", ".join(f"{k} {v:g}" for k, v in sorted(shown.items())) or "nothing"


def check_placement(builds: Sequence[Tuple[str, Any]], nodes: Sequence[dict]) -> None:
    """Refuse, before any build is submitted, builds that no live node can run, naming what each
    node offers. ``builds``: (which model, job). A build's resources must all be on one node."""
    alive = [n for n in nodes if n.get("Alive", n.get("alive", False))]
    problems: List[str] = []
    for model, job in builds:
        need = requirements(job.backend, job.target)
        if not any(all(n.get("Resources", {}).get(k, 0) >= v for k, v in need.items()) for n in alive):
            what = f"{model} target {job.target.label} ({job.backend}) needs {_offer(need)}"
            if what not in problems:
                problems.append(what)
    if problems:
        offers = "; ".join(f"{node_label(n)}: {_offer(n.get('Resources', {}))}" for n in alive) or "no live node"
        raise FarmError(f"no node of the Ray cluster can run these builds: {'; '.join(problems)}. The cluster offers: "
                        f"{offers}. A GPU host advertises its architecture with ray start --resources "
                        f"'{{\"gpu_sm86\": 1}}' (docs/farm.md)")


def ray_environment(address: str) -> Dict[str, str]:
    """Environment defaults for Ray in the driver process, set before Ray is imported.

    No usage statistics are ever sent (an air-gapped packager phones nowhere). And the driver
    never probes a public address for its own: Ray finds a host's address by opening a UDP socket
    towards 8.8.8.8 where it has no better idea (a local Ray; a log line when a driver connects),
    which prints a warning on an air-gapped host. Despite its name, this variable only makes Ray
    take 127.0.0.1 in that case; a driver joining a cluster takes its address from the cluster.
    """
    del address  # the same for local, auto and HOST:PORT
    return {"RAY_USAGE_STATS_ENABLED": "0", "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER": "0"}


# -- the task (runs on a node) ----------------------------------------------------------------------

class _Events:
    """A Ray actor the build tasks report their stages to; the driver takes them for its table."""

    def __init__(self) -> None:
        self.items: List[tuple] = []

    def put(self, item: tuple) -> None:
        self.items.append(item)

    def take(self) -> List[tuple]:
        out, self.items = self.items, []
        return out


class _Reporter:
    """What `run_one` takes as its event queue: forwards ``(stem, stage, elapsed, message)``."""

    def __init__(self, events: Any, jid: tuple, node: str) -> None:
        self.events, self.jid, self.node = events, jid, node

    def put(self, item: tuple) -> None:
        _stem, stage, elapsed, message = item
        self.events.put.remote((self.jid, stage, elapsed, message, self.node))


def this_node() -> str:
    import ray

    return f"{socket.gethostname()}/{ray.get_runtime_context().get_node_id()[:8]}"


def farm_task(job: Any, graph: bytes, source: Optional[bytes], cache_dir: Optional[str], events: Any,
              jid: tuple) -> dict:
    """One build on a node: the graph from the object store into a private directory, `run_one`,
    and the engine and log back as bytes. A build that fails returns its message and log (kept by
    the driver); anything else raises, and Ray reports it.

    ``cache_dir`` is given only for builds whose builder version the driver does not know (full
    TensorRT): a node that sees that directory (a shared path) looks up and stores there itself.
    """
    from .backends.jobs import _backend, run_one

    node = this_node()
    reporter = _Reporter(events, jid, node)
    base = Path(tempfile.gettempdir())
    remove_stale(base, TASK_PREFIX)  # what a cancelled (killed) task left on this node
    work = make_workdir(base, TASK_PREFIX)
    try:
        (work / "engines").mkdir()
        graph_path = work / Path(job.model_path).name
        graph_path.write_bytes(graph)
        source_path = None
        if source is not None:
            (work / "source").mkdir()
            source_path = work / "source" / Path(job.source_path).name
            source_path.write_bytes(source)
        j = dataclasses.replace(job, model_path=graph_path, source_path=source_path or graph_path,
                                engine_path=work / "engines" / Path(job.engine_path).name,
                                log_path=work / "engines" / Path(job.log_path).name, timing_cache=None)
        try:
            backend = _backend(j.backend)
            if j.backend == "tensorrt":
                backend.resolve(j.target)  # this node's GPU must be the target's architecture
            bc = BuildCache(Path(cache_dir)) if cache_dir and os.path.isdir(cache_dir) else None
            key = inputs = None
            if bc is not None:
                inputs = job_key_inputs(j, backend.identity(), {})
                key = cache_key(inputs)

                def warn(_stem: str, msg: str) -> None:
                    events.put.remote((jid, "warning", 0.0, msg, node))

                rec = bc.lookup(key, j.engine_path, j.log_path, warn, j.stem)
                if rec is not None:
                    return {"ok": True, "record": rec, "engine": j.engine_path.read_bytes(),
                            "log": j.log_path.read_bytes(), "node": node, "key": key, "inputs": inputs}
            rec = run_one(j, reporter)
            if bc is not None and key is not None:
                try:
                    bc.store(key, inputs, rec, j.engine_path, j.log_path)
                except OSError:
                    pass  # the driver stores it too, where it can
                rec = dataclasses.replace(rec, cache=CacheInfo(key=key, reused=False))
        except BuildError as e:
            log = j.log_path.read_bytes() if j.log_path.is_file() else None
            return {"ok": False, "error": e.message, "log": log, "node": node}
        return {"ok": True, "record": rec, "engine": j.engine_path.read_bytes(), "log": j.log_path.read_bytes(),
                "node": node, "key": key, "inputs": inputs}
    finally:
        shutil.rmtree(work, ignore_errors=True)


# -- the driver -------------------------------------------------------------------------------------

@dataclass
class _Model:
    entry: Any  # spec.SpecEntry
    plan: Any  # backends.Plan
    staged: Staged
    staging: Path


@dataclass
class _Pending:
    model: int
    job: Any
    key: Optional[str]  # the cache key, where the driver knows the builder's version
    inputs: Optional[dict]
    node_keys: bool = False  # only the node knows its builder's version: it keys the cache itself


def connect(ray: Any, address: str) -> None:
    """``ray.init`` for ``local`` (a private Ray on this host, advertised on 127.0.0.1), ``auto``
    (the cluster this host belongs to) or ``HOST:PORT``. Ray's own logging stays off the terminal,
    and the caller's signal handlers (the CLI turns Ctrl-C into a clean unwind) stay in place."""
    _check_reachable(address)
    main = threading.current_thread() is threading.main_thread()
    saved = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)} if main else {}
    kwargs: Dict[str, Any] = dict(logging_level=logging.ERROR, log_to_driver=False)
    try:
        if address == "local":
            ray.init(address="local", include_dashboard=False, _node_ip_address="127.0.0.1", **kwargs)
        else:
            ray.init(address=address, **kwargs)
    except KeyboardInterrupt:
        raise
    except Exception as e:  # noqa: BLE001 - whatever Ray raises, one line
        text = " ".join(str(e).split())[:300] or type(e).__name__
        raise FarmError(f"cannot connect to the Ray cluster at {address!r}: {text}") from None
    finally:
        for s, h in saved.items():
            if h is not None:
                signal.signal(s, h)


def _check_reachable(address: str, timeout: float = 5.0) -> None:
    """A head's HOST:PORT that takes no TCP connection is one line now; ray.init would retry for
    minutes, printing warnings (``local``, ``auto`` and ``ray://`` are left to Ray)."""
    if address in ("local", "auto") or "://" in address or ":" not in address:
        return
    host, _, port = address.rpartition(":")
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=timeout):
            pass
    except (OSError, ValueError) as e:
        why = getattr(e, "strerror", None) or str(e) or type(e).__name__
        raise FarmError(f"cannot reach the Ray cluster at {address!r} ({why}); start its head with ray start --head, "
                        f"or use --ray local for a Ray on this host only") from None


def farm_create(
    entries: Sequence[Any],
    key: Any,
    out_dir: Path,
    address: str,
    cache: Optional[Path] = None,
    progress: Optional[Callable[[BuildEvent], None]] = None,
    on_bundle: Optional[Callable[[Any, Any], None]] = None,
    expires: Optional[str] = None,
) -> List[Any]:
    """Build every model of a spec on a Ray cluster and seal one bundle per model.

    ``address``: ``local``, ``auto`` or ``HOST:PORT`` (`connect`). Nothing is sealed unless every
    build succeeded; on a failure, every model with a failed build keeps its builder logs in
    ``out_dir/NAME-VERSION.failed-logs`` and the error says where. Ctrl-C (or SIGTERM, which the
    CLI turns into the same `KeyboardInterrupt`) cancels every task of this run on the cluster.
    """
    from .seal import seal

    out_dir = Path(out_dir)
    check_out_dir(out_dir, "the bundles")
    for entry in entries:
        final = out_dir / f"{entry.bundle_name}.bundle.tar"
        if final.exists():
            raise OutputError(f"{final}: already exists (model #{entry.index}); bundles are never overwritten")
        if entry.request.timing_cache is not None:
            raise InputError(f"model #{entry.index} ({entry.request.name}): timing_cache is not used by the build "
                             f"farm (each GPU node would need its own); leave it out of the spec for bundle farm")
    check_ray()
    ray: Any = None
    made: List[Path] = []
    work: Optional[Path] = None
    sealed: List[Any] = []
    try:
        try:
            made = make_dirs(out_dir)
            remove_stale(out_dir, WORK_PREFIX)
            work = make_workdir(out_dir, WORK_PREFIX)
        except OSError as e:
            raise OutputError(f"{out_dir}: cannot write there ({e.strerror})") from None
        models: List[_Model] = []
        for entry in entries:
            try:
                models.append(_stage(entry, work))
            except BundleError as e:
                raise type(e)(f"model #{entry.index} ({entry.request.name}) failed: {e.message}; nothing built") from None
        bc = open_cache(cache)
        records, todo = _lookups(models, bc, progress)
        if todo:  # a spec whose engines are all in the cache never needs the cluster (nor Ray)
            ray = import_ray()
            connect(ray, address)
            check_placement([(_label(models[p.model]), p.job) for p in todo], ray.nodes())
            records.update(_run(ray, models, todo, bc, progress, out_dir))
        for mi, m in enumerate(models):
            finish_build(m.plan, m.staged, [records[(mi, j.stem)] for j in m.staged.jobs], m.staging)
        for m in models:
            try:
                res = seal([m.staging], key, out_dir, expires=expires)
            except BundleError as e:
                kept = ", ".join(str(r.path) for r in sealed) or "none"
                raise type(e)(f"model #{m.entry.index} ({m.entry.request.name}): sealing failed: {e.message}; "
                              f"bundles sealed before it (kept): {kept}") from None
            sealed.append(res)
            if on_bundle is not None:
                on_bundle(m.entry, res)
        return sealed
    except OSError as e:
        raise OutputError(f"{e.filename or out_dir}: cannot write ({e.strerror or e})") from None
    finally:
        if work is not None:
            remove_tree(work)  # finishes even if a signal lands in it
        if not sealed:
            remove_made_dirs(made)  # a failed farm build leaves no --out it made (kept logs excepted)
        if ray is not None and ray.is_initialized():
            try:
                ray.shutdown()
            except Exception:  # noqa: BLE001 - disconnecting must not hide the real outcome
                pass


def _label(m: "_Model") -> str:
    return f"model #{m.entry.index} ({m.entry.request.name})"


def _emit(progress: Optional[Callable], job: Any, stage: str, elapsed: float = 0.0, message: str = "",
          node: str = "") -> None:
    if progress is not None:
        progress(BuildEvent(job.stem, job.target.label, job.precision, stage, elapsed, message, node))


def _lookups(models: List["_Model"], cache: Optional[BuildCache], progress: Optional[Callable]):  # noqa: ANN202
    """Every job: queued, then served by the cache where it can be; the rest is to build."""
    digests: Dict[Path, str] = {}
    records: Dict[Tuple[int, str], EngineRecord] = {}
    todo: List[_Pending] = []
    for m in models:
        for j in m.staged.jobs:
            _emit(progress, j, "queued")
    for mi, m in enumerate(models):
        builders = m.plan.builders()
        for j in m.staged.jobs:
            builder = builders.get(j.backend)
            key = inputs = None
            if cache is not None and builder is not None:
                inputs = job_key_inputs(j, builder, digests)
                key = cache_key(inputs)

                def warn(_stem: str, msg: str, j: Any = j) -> None:
                    _emit(progress, j, "warning", message=msg)

                rec = cache.lookup(key, j.engine_path, j.log_path, warn, j.stem)
                if rec is not None:
                    records[(mi, j.stem)] = rec
                    _emit(progress, j, "reused", rec.duration_s, f"built on {rec.host} at {rec.started}")
                    continue
            todo.append(_Pending(mi, j, key, inputs, builder is None))
    return records, todo


def _stage(entry: Any, work: Path) -> _Model:
    req = entry.request
    targets = [parse_target(t) for t in req.targets]
    gpu = None
    if any(not t.is_cpu for t in targets):
        gpu = RemoteTensorRT() if req.backend == "tensorrt" else select_backend("tensorrt-rtx")
    plan = plan_build(req, gpu)
    staging = work / entry.bundle_name
    staging.mkdir()
    return _Model(entry, plan, stage_build(plan, staging), staging)


def _run(ray: Any, models: List[_Model], todo: List[_Pending], cache: Optional[BuildCache],
         progress: Optional[Callable], out_dir: Path) -> Dict[Tuple[int, str], EngineRecord]:
    """Run the builds as Ray tasks and write their engines into the staging directories; raise
    when any build failed (logs kept) or was lost, after cancelling what had not started."""
    from ray import exceptions as rx
    from ray.util.scheduling_strategies import NodeAffinitySchedulingStrategy

    def emit(mi: int, job: Any, stage: str, elapsed: float = 0.0, message: str = "", node: str = "") -> None:
        _emit(progress, job, stage, elapsed, message, node)

    task = ray.remote(farm_task)
    here = NodeAffinitySchedulingStrategy(ray.get_runtime_context().get_node_id(), soft=False)
    # on the driver's own node: the progress table must not die with a build node
    events = ray.remote(_Events).options(num_cpus=0, scheduling_strategy=here).remote()
    events_alive = [True]
    objects: Dict[Path, Any] = {}
    pending: Dict[Any, _Pending] = {}
    results: Dict[Tuple[int, str], EngineRecord] = {}
    started: Dict[Tuple[int, str], float] = {}
    nodes: Dict[Tuple[int, str], str] = {}
    failed: List[Tuple[int, str]] = []
    messages: List[str] = []
    lost: List[str] = []

    def put(path: Path) -> Any:
        if path not in objects:
            objects[path] = ray.put(Path(path).read_bytes())
        return objects[path]

    def drain() -> None:
        if not events_alive[0]:
            return
        try:
            taken = ray.get(events.take.remote())
        except rx.RayActorError:  # progress is a nicety: the builds go on without it
            events_alive[0] = False
            return
        for jid, stage, elapsed, message, node in taken:
            p = next((p for p in pending.values() if (p.model, p.job.stem) == tuple(jid)), None)
            if p is None:
                continue  # finished meanwhile: the driver's own event came first
            key = (p.model, p.job.stem)
            if stage != "warning":
                started.setdefault(key, time.monotonic() - elapsed)
                nodes[key] = node
            emit(p.model, p.job, stage, elapsed, message, node)

    try:
        for p in todo:
            j = p.job
            opts: Dict[str, Any] = {"num_cpus": 1, "max_retries": RETRIES, "retry_exceptions": False}
            need = requirements(j.backend, j.target)
            if "GPU" in need:
                opts["num_gpus"] = 1
                opts["resources"] = {k: v for k, v in need.items() if k not in ("CPU", "GPU")}
            source = put(j.source_path) if j.backend == "tensorrt" else None
            shared = str(cache.root) if cache is not None and p.node_keys else None
            ref = task.options(**opts).remote(j, put(j.model_path), source, shared, events, (p.model, j.stem))
            pending[ref] = p
        while pending:
            ready, _ = ray.wait(list(pending), num_returns=1, timeout=0.2)
            drain()
            for ref in ready:
                p = pending.pop(ref)
                jid = (p.model, p.job.stem)
                elapsed = time.monotonic() - started.get(jid, time.monotonic())
                try:
                    res = ray.get(ref)
                except rx.TaskCancelledError:
                    emit(p.model, p.job, "cancelled", node=nodes.get(jid, ""))
                    continue
                except rx.RayTaskError as e:  # an unexpected exception in the task: a failed build
                    cause = getattr(e, "cause", None) or e
                    res = {"ok": False, "node": nodes.get(jid, ""), "log": None,
                           "error": f"target {p.job.target.label} ({p.job.precision}): {type(cause).__name__}: "
                                    f"{' '.join(str(cause).split())[:300]}"}
                except rx.RayError as e:  # the worker or its node died, and so did every retry
                    text = " ".join(str(e).split())[:200]
                    lost.append(f"model #{models[p.model].entry.index} ({models[p.model].entry.request.name}) target "
                                f"{p.job.target.label} ({p.job.precision}): {type(e).__name__}: {text}")
                    emit(p.model, p.job, "failed", elapsed, "lost by the cluster", nodes.get(jid, ""))
                    _cancel_queued(ray, pending, started)
                    continue
                if res["ok"]:
                    results[jid] = _keep_result(p, res, cache)
                    emit(p.model, p.job, "reused" if results[jid].cache and results[jid].cache.reused else "done",
                         elapsed, "", res["node"])
                else:
                    if res.get("log") is not None:
                        p.job.log_path.write_bytes(res["log"])
                    failed.append(jid)
                    messages.append(f"model #{models[p.model].entry.index} ({models[p.model].entry.request.name}): "
                                    f"{res['error']}")
                    emit(p.model, p.job, "failed", elapsed, res["error"], res["node"])
                    _cancel_queued(ray, pending, started)
        drain()
    except BaseException:
        # Ctrl-C, SIGTERM or an error of our own: nothing more is worth finishing. Kill every task
        # of this run wherever it runs (force: a TensorRT build never returns to Python to notice).
        for ref in list(pending):
            try:
                ray.cancel(ref, force=True)
            except Exception:  # noqa: BLE001
                pass
        raise
    finally:
        try:
            ray.kill(events)
        except Exception:  # noqa: BLE001
            pass
    if lost:
        raise FarmError(f"the cluster lost {len(lost)} build(s) after {1 + RETRIES} tries each: {'; '.join(lost)}; "
                        f"nothing was sealed")
    if failed:
        kept = []
        for mi in sorted({mi for mi, _ in failed}):
            m = models[mi]
            k = _keep_logs(m.staging, out_dir / f"{m.entry.bundle_name}.failed-logs")
            if k is not None:
                kept.append(str(k))
        more = f" (and {len(messages) - 1} more failed)" if len(messages) > 1 else ""
        where = f"; builder logs kept in {', '.join(kept)}" if kept else ""
        raise BuildError(f"{messages[0]}{more}{where}; nothing was sealed")
    missing = [f"{models[p.model].entry.request.name} {p.job.stem}" for p in todo
               if (p.model, p.job.stem) not in results]
    if missing:  # cancelled by the cluster itself (not by us): never seal a partial set
        raise FarmError(f"builds did not finish: {', '.join(missing)}; nothing was sealed")
    return results


def _cancel_queued(ray: Any, pending: Dict[Any, _Pending], started: Dict[Tuple[int, str], float]) -> None:
    """After a failure: builds not started yet are cancelled; running ones finish (their logs are
    kept), as with local ``--jobs`` builds."""
    for ref, p in pending.items():
        if (p.model, p.job.stem) not in started:
            try:
                ray.cancel(ref, force=False)
            except Exception:  # noqa: BLE001
                pass


def _keep_result(p: _Pending, res: dict, cache: Optional[BuildCache]) -> EngineRecord:
    """Write a finished build's engine and log into the staging directory; store it in the cache."""
    job = p.job
    job.engine_path.write_bytes(res["engine"])
    job.log_path.write_bytes(res["log"])
    rec: EngineRecord = res["record"]
    rec = dataclasses.replace(rec, path=f"engines/{job.engine_path.name}", log=f"engines/{job.log_path.name}")
    key, inputs = p.key or res.get("key"), p.inputs or res.get("inputs")
    if cache is not None and key is not None and inputs is not None:
        if not (rec.cache is not None and rec.cache.reused):
            try:
                cache.store(key, inputs, dataclasses.replace(rec, cache=None), job.engine_path, job.log_path)
            except OSError:
                pass  # a cache that cannot be written never fails a build
            rec = dataclasses.replace(rec, cache=CacheInfo(key=key, reused=False))
    return rec
