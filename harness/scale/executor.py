"""Executors run the plan's work units. ``local`` (the default) runs them in this process, in plan order.

An executor receives the run context, the units (each with the keys of the units it depends on) and a callback
to call once per finished unit. Units exchange data only through the run directory, so an executor may run
independent units (the classifiers of one generation, the seeds of a run) in other processes or machines.
"""

from __future__ import annotations

import json
import os
import threading
from collections import OrderedDict
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Protocol

from harness.engine import threads
from harness.engine.plan import STAGES, Unit
from harness.engine.rundir import unit_problem
from harness.engine.stages import RunContext, execute


class Executor(Protocol):
    name: str

    def run(self, ctx: RunContext, units: Sequence[Unit], on_done: Callable[[Unit], None]) -> None: ...


class LocalExecutor:
    """Sequential, in-process. Finished units (``result.json`` present) are skipped, which is how a run resumes.

    Units run with the torch intra-op thread count of :func:`harness.engine.threads.choose_threads`
    (``torch_threads`` when given, else ``OMP_NUM_THREADS``, else the CPUs this process may use); the process's
    previous count is restored afterwards.
    """

    name = "local"

    def __init__(self, torch_threads: int | None = None):
        self.torch_threads = torch_threads

    def run(self, ctx: RunContext, units: Sequence[Unit], on_done: Callable[[Unit], None]) -> None:
        done: set[str] = set()
        with threads.torch_threads(threads.choose_threads(self.torch_threads).count):
            for u in units:
                missing = [d for d in u.deps if d not in done]
                if missing:
                    raise RuntimeError(f"unit {u.key} is planned before its dependencies {missing}")
                execute(ctx, u)
                done.add(u.key)
                on_done(u)


EXECUTORS: dict[str, Callable[..., Any]] = {"local": LocalExecutor}


def create_executor(name: str, *, torch_threads: int | None = None, **options: Any) -> Executor:
    """``local`` or ``ray`` (options: ``ray_address``, ...); ``torch_threads``: ``bench run --threads``, for every
    unit (None: chosen per process or task, :mod:`harness.engine.threads`). An unknown name is a
    :class:`ConfigError`."""
    from harness.errors import ConfigError

    if torch_threads is not None and torch_threads < 1:
        raise ConfigError(f"--threads must be a positive integer, got {torch_threads}")
    if name == "local":
        return LocalExecutor(torch_threads=torch_threads)
    if name not in EXECUTORS:
        raise ConfigError(f"unknown executor {name!r}; choose from: {', '.join(sorted(EXECUTORS))}")
    if torch_threads is not None:
        options["torch_threads"] = torch_threads
    return EXECUTORS[name](**options)


# --------------------------------------------------------------------------------------------------- ray

#: Stages that train or run a network: they ask Ray for a GPU when the run uses CUDA. ``mix`` only shuffles indices.
GPU_STAGES = frozenset({"oracle", "generator", "sample", "filter", "classifier", "evaluate"})

RAY_MISSING = "the ray executor needs Ray: pip install -e '.[ray]'"


def _import_ray() -> Any:
    from harness.errors import ConfigError

    try:
        import ray
    except ImportError:
        raise ConfigError(RAY_MISSING) from None
    return ray


@dataclass(frozen=True)
class PluginRecipe:
    """How a worker process rebuilds the driver's plugin manager: entry points, plus the extra plugins.

    Extra plugins (``create_plugin_manager(extra_plugins=...)``) travel as module names when they are modules
    (the worker imports them: they must be installed there, or on its ``PYTHONPATH``) and pickled otherwise.
    """

    load_entry_points: bool
    modules: tuple[str, ...] = ()
    objects: bytes = b""  # cloudpickle of a tuple of plugin objects that are not modules

    @classmethod
    def of(cls, plugins: Any) -> PluginRecipe:
        import types

        infos = [i for i in plugins.infos if not i.error]
        modules: list[str] = []
        objects: list[Any] = []
        for info in infos:
            if info.distribution is not None:
                continue
            obj = plugins.pm.get_plugin(info.name)
            if obj is None:
                continue
            if isinstance(obj, types.ModuleType):
                if info.name != obj.__name__:  # an entry point that came without a distribution: loaded anyway
                    continue
                modules.append(obj.__name__)
            else:
                objects.append(obj)
        blob = b""
        if objects:
            from ray import cloudpickle

            blob = cloudpickle.dumps(tuple(objects))
        return cls(any(i.distribution is not None for i in infos), tuple(modules), blob)

    def build(self) -> Any:
        import importlib
        import pickle

        from harness.plugin.manager import create_plugin_manager, default_plugins

        extra = [importlib.import_module(m) for m in self.modules]
        if self.objects:
            extra += list(pickle.loads(self.objects))
        if self.load_entry_points and not extra:
            return default_plugins()
        return create_plugin_manager(extra_plugins=tuple(extra), load_entry_points=self.load_entry_points)

    def import_dirs(self) -> list[str]:
        """The folders the extra plugin modules were imported from, outside site-packages (for a local instance)."""
        import sys
        import sysconfig

        site = {str(Path(sysconfig.get_paths()[k]).resolve()) for k in ("purelib", "platlib")}
        dirs: list[str] = []
        for name in self.modules:
            top = sys.modules.get(name.partition(".")[0])
            origin = getattr(top, "__file__", None)
            if origin is None:
                continue
            path = Path(origin).resolve().parent
            if Path(origin).name == "__init__.py":
                path = path.parent
            if str(path) not in dirs and str(path) not in site:
                dirs.append(str(path))
        return dirs


# Per worker process: plugin managers and run contexts, so a worker that runs many units of one run builds the
# plugins and loads the dataset once. Bounded, so a long sweep does not grow a worker without limit.
_WORKER_PLUGINS: dict[PluginRecipe, Any] = {}
_WORKER_CONTEXTS: OrderedDict[tuple[Any, ...], RunContext] = OrderedDict()
_WORKER_CONTEXTS_MAX = 4


@dataclass(frozen=True)
class _UserError:
    """A :class:`BenchError` raised by a unit, returned as a value so that Ray does not retry it."""

    error: BaseException


def _worker_device(spec_device: str, stage: str, gpu_ids: Sequence[Any]) -> str:
    """The device a unit uses in a Ray worker: Ray hides all but the task's GPUs, so ``cuda:N`` becomes ``cuda``."""
    if gpu_ids:
        return "cuda" if spec_device == "auto" or spec_device.startswith("cuda") else spec_device
    if spec_device.startswith("cuda") and stage not in GPU_STAGES:
        return "cpu"  # the unit computes nothing on the device (mix); a worker without a GPU runs it
    return spec_device


def worker_context(spec_json: str, spec_hash: str, run_dir: str, recipe: PluginRecipe, device: str) -> RunContext:
    """The cached :class:`RunContext` of this worker process for a run (built on first use)."""
    from harness.specs import RunSpec

    key = (spec_json, run_dir, recipe, device)
    ctx = _WORKER_CONTEXTS.get(key)
    if ctx is not None:
        _WORKER_CONTEXTS.move_to_end(key)
        return ctx
    spec = RunSpec.model_validate_json(spec_json)
    if spec.spec_hash() != spec_hash:
        raise RuntimeError(f"the spec of {run_dir} changed on its way to a Ray worker (hash mismatch)")
    if device != spec.device:
        spec = spec.model_copy(update={"device": device})
    plugins = _WORKER_PLUGINS.get(recipe)
    if plugins is None:
        plugins = _WORKER_PLUGINS[recipe] = recipe.build()
    ctx = RunContext(spec, Path(run_dir), plugins)
    _WORKER_CONTEXTS[key] = ctx
    while len(_WORKER_CONTEXTS) > _WORKER_CONTEXTS_MAX:
        _WORKER_CONTEXTS.popitem(last=False)
    return ctx


def execute_remote(
    spec_json: str, spec_hash: str, run_dir: str, unit: Unit, recipe: PluginRecipe, torch_threads: int | None = None
) -> Any:
    """The body of a unit's Ray task: rebuild (or reuse) the run's context in this worker, run the unit.

    Returns ``None``, or a :class:`_UserError` for a :class:`BenchError` (a user's mistake is not retried);
    any other exception propagates and Ray retries the task.
    """
    import pickle

    import ray

    from harness.errors import BenchError

    reserved = ray.get_runtime_context().get_assigned_resources().get("CPU")
    choice = threads.choose_threads(torch_threads or None, reserved_cpus=float(reserved or 0))
    try:
        device = _worker_device(json.loads(spec_json).get("device", "auto"), unit.stage, ray.get_gpu_ids())
        with threads.torch_threads(choice.count):
            execute(worker_context(spec_json, spec_hash, run_dir, recipe, device), unit)
    except BenchError as exc:
        try:
            pickle.loads(pickle.dumps(exc))
        except Exception:  # noqa: BLE001 - a plugin's error class that does not survive pickling
            exc = BenchError(str(exc))
        return _UserError(exc)
    return None


class Cancelled(KeyboardInterrupt):
    """The executor was cancelled (e.g. Ctrl-C in a sweep) while a run was in progress."""


class RayExecutor:
    """Units as Ray tasks, each submitted once its dependencies are done, on a local instance or a cluster.

    Without ``ray_address`` a private local instance is started on first use (loopback only, no dashboard) and
    shut down by :meth:`close`; with one (``auto``, ``HOST:PORT`` or ``ray://HOST:PORT``) the executor connects
    to that cluster. If Ray is already initialised in this process it is used as it is.

    Each task rebuilds the run's context in its worker from the resolved spec (cached per worker process) and
    runs :func:`harness.engine.stages.execute`; units exchange data only through the run directory, which every worker
    and the driver must see at the same path. ``on_done`` is called in the driver as units finish (a unit always
    after its dependencies). Resources per unit: ``cpus_per_unit`` CPUs, and ``gpus_per_unit`` GPUs for the
    stages in :data:`GPU_STAGES` when the run uses CUDA (``device`` cuda, or auto on a cluster with GPUs);
    ``stage_resources`` overrides both per stage (``"classifier"``) or per named unit (``"classifier:lenet"``,
    which wins over its stage), e.g. ``{"classifier:lenet": {"num_gpus": 0.25}}``: a fractional GPU lets Ray run
    several small units (LeNet-sized classifiers, the seeds' replicates) on one GPU at once. A task that fails
    (an exception other than :class:`BenchError`, or a dead worker) is retried up to ``max_retries`` times.

    Each task runs with ``torch_threads`` torch intra-op threads when given (``bench run --threads``), else with
    the CPUs it reserved (``floor(num_cpus)``, at least 1; :mod:`harness.engine.threads`). On the CPU a unit's
    numbers depend on that count (floating-point sums split differently), so they equal the ``local`` executor's
    where both use the same count.

    ``run`` may be called from several threads at once (a sweep): the tasks of all runs share the cluster and
    ``on_done`` callbacks are serialised.
    """

    name = "ray"
    concurrent = True  # several runs (threads) may call run() at once: a sweep submits all its runs together

    def __init__(
        self,
        ray_address: str | None = None,
        *,
        num_cpus: int | None = None,
        num_gpus: int | None = None,
        cpus_per_unit: float = 1.0,
        gpus_per_unit: float = 1.0,
        stage_resources: Mapping[str, Mapping[str, float]] | None = None,
        max_retries: int = 2,
        torch_threads: int | None = None,
        runtime_env: Mapping[str, Any] | None = None,
        poll_s: float = 0.5,
        init_options: Mapping[str, Any] | None = None,
    ):
        from harness.errors import ConfigError

        self._ray = _import_ray()
        unknown = {k for k in stage_resources or {} if k.partition(":")[0] not in STAGES or k.endswith(":")}
        if unknown:
            raise ConfigError(f"stage_resources: unknown stages {sorted(unknown)}; keys are a stage or STAGE:NAME "
                              f"(a classifier's name), stages are {', '.join(STAGES)}")
        for key, res in (stage_resources or {}).items():
            if any(not isinstance(v, int | float) or v < 0 for v in res.values()):
                raise ConfigError(f"stage_resources.{key}: resources must be numbers >= 0, got {dict(res)}")
        if cpus_per_unit < 0 or gpus_per_unit < 0 or max_retries < 0 or (torch_threads or 0) < 0:
            raise ConfigError("cpus_per_unit, gpus_per_unit, max_retries and torch_threads must be >= 0")
        self.ray_address = ray_address
        self.num_cpus, self.num_gpus = num_cpus, num_gpus
        self.cpus_per_unit, self.gpus_per_unit = cpus_per_unit, gpus_per_unit
        self.stage_resources = {k: dict(v) for k, v in (stage_resources or {}).items()}
        self.max_retries = max_retries
        self.torch_threads = torch_threads
        self.runtime_env = dict(runtime_env or {})
        self.poll_s = poll_s
        self.init_options = dict(init_options or {})
        self._owns = False
        self._lock = threading.Lock()
        self._callback_lock = threading.RLock()
        self._cancel = threading.Event()
        self._remote: Any = None

    # ---------------------------------------------------------------- the Ray instance

    def start(self, plugins: Any = None) -> None:
        """Connect to (or start) Ray; idempotent. ``plugins``: their import folders go on a local instance's path."""
        ray = self._ray
        with self._lock:
            if not ray.is_initialized():
                ray.init(**self._init_kwargs(plugins))
                self._owns = True
            if self._remote is None:
                self._remote = ray.remote(execute_remote)

    def _init_kwargs(self, plugins: Any) -> dict[str, Any]:
        import logging

        runtime_env = dict(self.runtime_env)
        kwargs: dict[str, Any] = {"log_to_driver": False, "logging_level": logging.WARNING}
        if self.ray_address:
            kwargs["address"] = self.ray_address
        else:
            # "local": a new private instance, never one found through RAY_ADDRESS or /tmp/ray (another user's);
            # loopback only, no dashboard, no usage reports; Ray's start-up chatter (warnings included) is muted.
            os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
            kwargs.update(address="local", num_cpus=self.num_cpus, num_gpus=self.num_gpus, include_dashboard=False,
                          _node_ip_address="127.0.0.1", logging_level=logging.ERROR)
            dirs = PluginRecipe.of(plugins).import_dirs() if plugins is not None else []
            if dirs:
                env = dict(runtime_env.get("env_vars") or {})
                current = env.get("PYTHONPATH", os.environ.get("PYTHONPATH", ""))
                env["PYTHONPATH"] = os.pathsep.join([*dirs, *filter(None, current.split(os.pathsep))])
                runtime_env["env_vars"] = env
        if runtime_env:
            kwargs["runtime_env"] = runtime_env
        kwargs.update(self.init_options)
        return kwargs

    def close(self) -> None:
        """Shut down the local instance this executor started (a cluster it connected to keeps running)."""
        with self._lock:
            if self._owns and self._ray.is_initialized():
                self._ray.shutdown()
            self._owns = False
            self._remote = None

    def __enter__(self) -> RayExecutor:
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()

    def cancel(self) -> None:
        """Make every ``run`` in progress cancel its tasks and raise :class:`Cancelled` (finished units stay)."""
        self._cancel.set()

    def reset_cancel(self) -> None:
        """Accept runs again after :meth:`cancel` (once the cancelled runs have returned)."""
        self._cancel.clear()

    # ---------------------------------------------------------------- resources

    def uses_gpu(self, spec: Any) -> bool:
        if spec.device.startswith("cuda"):
            return True
        if spec.device == "auto":
            return self._ray.cluster_resources().get("GPU", 0) > 0
        return False

    def task_options(self, u: Unit, gpu: bool) -> dict[str, Any]:
        options: dict[str, Any] = {
            "num_cpus": self.cpus_per_unit,
            "num_gpus": self.gpus_per_unit if gpu and u.stage in GPU_STAGES else 0,
        }
        options.update(self.stage_resources.get(u.stage, {}))
        if u.name is not None:
            options.update(self.stage_resources.get(f"{u.stage}:{u.name}", {}))
        if not gpu:
            options["num_gpus"] = 0  # a CPU run never waits for a GPU a per-stage setting asks for
        return options

    # ---------------------------------------------------------------- a run

    def run(self, ctx: RunContext, units: Sequence[Unit], on_done: Callable[[Unit], None]) -> None:
        from harness.errors import ConfigError

        ray = self._ray
        self.start(ctx.plugins)
        keys = {u.key for u in units}
        for u in units:
            missing = [d for d in u.deps if d not in keys]
            if missing:
                raise RuntimeError(f"unit {u.key} depends on units that are not planned: {missing}")
        spec = ctx.spec
        gpu = self.uses_gpu(spec)
        if gpu and self._ray.cluster_resources().get("GPU", 0) == 0 and self.gpus_per_unit > 0:
            raise ConfigError(f"the run uses device {spec.device!r} but the Ray cluster has no GPUs")
        run_dir = Path(ctx.run_dir).resolve()
        shipped = spec.model_copy(update={
            "out": Path(spec.out).resolve(),
            "data_root": Path(spec.data_root).resolve() if spec.data_root is not None else None,
        })
        spec_json, spec_hash = shipped.model_dump_json(), spec.spec_hash()
        recipe = PluginRecipe.of(ctx.plugins)

        waiting = list(units)
        done: set[str] = set()
        in_flight: dict[Any, Unit] = {}

        def finish(u: Unit) -> None:
            done.add(u.key)
            with self._callback_lock:
                on_done(u)

        try:
            while waiting or in_flight:
                if self._cancel.is_set():
                    raise Cancelled("the executor was cancelled")
                still: list[Unit] = []
                for u in waiting:  # plan order: a unit made ready by one just above is seen in the same pass
                    if not all(d in done for d in u.deps):
                        still.append(u)
                    elif unit_problem(run_dir, u) is None:  # finished and intact: a damaged one runs again
                        finish(u)
                    else:
                        ref = self._remote.options(
                            max_retries=self.max_retries, retry_exceptions=True, name=f"bench {u.key}",
                            **self.task_options(u, gpu),
                        ).remote(spec_json, spec_hash, str(run_dir), u, recipe, self.torch_threads)
                        in_flight[ref] = u
                waiting = still
                if not in_flight:
                    if waiting:
                        raise RuntimeError(f"units {[u.key for u in waiting]} wait on units that never finish")
                    break
                ready, rest = ray.wait(list(in_flight), num_returns=1, timeout=self.poll_s)
                if ready and rest:  # everything else that is already finished, in one go
                    ready += ray.wait(rest, num_returns=len(rest), timeout=0)[0]
                for ref in ready:
                    u = in_flight.pop(ref)
                    outcome = self._get(ray, ref, u)
                    if isinstance(outcome, _UserError):
                        raise outcome.error
                    finish(u)
        except BaseException:
            for ref in in_flight:
                ray.cancel(ref)
            raise

    @staticmethod
    def _get(ray: Any, ref: Any, u: Unit) -> Any:
        try:
            return ray.get(ref)
        except ray.exceptions.RayTaskError as exc:
            cause = exc.as_instanceof_cause()
            raise cause from None
        except ray.exceptions.RayError as exc:  # a worker or node died more often than max_retries
            raise RuntimeError(f"unit {u.key} failed on Ray: {exc}") from exc


EXECUTORS["ray"] = RayExecutor
