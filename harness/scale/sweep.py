"""Sweeps: many runs from one config file — a ``base`` spec and a ``grid`` (cartesian product) or ``runs`` (a list).

A sweep config (TOML, YAML or JSON)::

    base = { preset = "quick", loop = { generations = 3 } }     # same format as ``bench run --config``
    [grid]                                                      # dotted spec paths → lists of values
    "loop.mix_ratio" = [0.25, 0.5]
    "seeds" = [[0], [1]]

or ``runs = [ { "loop.mix_ratio" = 0.25 }, { filter = { name = "random" } } ]`` (each entry: dotted paths or
nested mappings, deep-merged over ``base``). An optional ``[ray]`` table holds options of the ray executor
(``cpus_per_unit``, ``gpus_per_unit``, ``stage_resources``, ``max_retries``, ``torch_threads``, ...).

Every point is an ordinary run (built with :func:`~harness.specs.build_spec`, resolved with
:func:`~harness.specs.resolve_spec`) with its own run directory and results file, so a sweep that is stopped
resumes run by run, unit by unit. With an executor that can run several runs at once (``ray``) every run is
started together and their units share the cluster; otherwise runs go one after another.
"""

from __future__ import annotations

import contextlib
import itertools
import json
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from harness.engine.progress import NullReporter, progress_task, rich_progress
from harness.errors import BenchError, ConfigError
from harness.plugin import factory
from harness.plugin.manager import Plugins
from harness.specs import RunSpec, build_spec, deep_merge, load_config_file, resolve_spec

SWEEP_KEYS = ("base", "grid", "runs", "ray")

#: Options of the ``[ray]`` table, passed to :class:`harness.scale.executor.RayExecutor`.
RAY_OPTIONS = (
    "num_cpus", "num_gpus", "cpus_per_unit", "gpus_per_unit", "stage_resources", "max_retries", "torch_threads",
    "runtime_env",
)


# --------------------------------------------------------------------------------------------------- the config


@dataclass(frozen=True)
class SweepConfig:
    """A parsed sweep config: the base spec layer, one override mapping per run, the ray executor's options."""

    base: dict[str, Any]
    points: tuple[dict[str, Any], ...]  # flat: dotted path → value, in the order written
    ray: dict[str, Any] = field(default_factory=dict)


def flatten(mapping: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """``{"loop": {"mix_ratio": 0.5}}`` → ``{"loop.mix_ratio": 0.5}``; lists and scalars are leaves."""
    out: dict[str, Any] = {}
    for key, value in mapping.items():
        path = f"{prefix}{key}"
        if isinstance(value, Mapping) and value:
            out.update(flatten(value, f"{path}."))
        else:
            out[path] = value
    return out


def nest(flat: Mapping[str, Any], where: str = "overrides") -> dict[str, Any]:
    """``{"loop.mix_ratio": 0.5, "filter": {"name": "random"}}`` → nested, deep-merged in order."""
    out: dict[str, Any] = {}
    for key, value in flat.items():
        if not isinstance(key, str) or not key or any(not part for part in key.split(".")):
            raise ConfigError(f"{where}: {key!r} is not a spec path like loop.mix_ratio")
        node: dict[str, Any] = {}
        parts = key.split(".")
        leaf = node
        for part in parts[:-1]:
            leaf = leaf.setdefault(part, {})
        leaf[parts[-1]] = value
        out = deep_merge(out, node)
    return out


def expand_grid(grid: Mapping[str, Any]) -> list[dict[str, Any]]:
    """The cartesian product of ``{path: [values]}``, the first path varying slowest."""
    if not isinstance(grid, Mapping) or not grid:
        raise ConfigError("sweep: grid must map spec paths to lists of values, e.g. \"loop.mix_ratio\" = [0.25, 0.5]")
    for path, values in grid.items():
        if not isinstance(values, list) or not values:
            raise ConfigError(f"sweep: grid.{path} must be a non-empty list of values, got {values!r}")
    keys = list(grid)
    return [dict(zip(keys, combo, strict=True)) for combo in itertools.product(*(grid[k] for k in keys))]


def parse_sweep(data: Mapping[str, Any]) -> SweepConfig:
    """Check a sweep config's shape and expand it into one override mapping per run."""
    if not isinstance(data, Mapping):
        raise ConfigError("sweep: the config must be a mapping with base and grid (or runs)")
    unknown = [k for k in data if k not in SWEEP_KEYS]
    if unknown:
        raise ConfigError(f"sweep: unknown keys {unknown}; a sweep config has {', '.join(SWEEP_KEYS)}")
    base = data.get("base")
    base = {} if base is None else base
    if not isinstance(base, Mapping):
        raise ConfigError("sweep: base must be a mapping (a spec, as in bench run --config)")
    if ("grid" in data) == ("runs" in data):
        raise ConfigError("sweep: give either grid (a cartesian product) or runs (a list), not both or neither")
    if "grid" in data:
        points = expand_grid(data["grid"])
    else:
        runs = data["runs"]
        if not isinstance(runs, list) or not runs or not all(isinstance(r, Mapping) for r in runs):
            raise ConfigError("sweep: runs must be a non-empty list of mappings of spec overrides")
        points = [flatten(nest(r, where=f"runs[{i}]")) if r else {} for i, r in enumerate(runs)]
    ray = data.get("ray")
    ray = {} if ray is None else ray
    if not isinstance(ray, Mapping):
        raise ConfigError("sweep: ray must be a mapping of ray executor options")
    bad = [k for k in ray if k not in RAY_OPTIONS]
    if bad:
        raise ConfigError(f"sweep: unknown ray options {bad}; choose from: {', '.join(RAY_OPTIONS)}")
    return SweepConfig(dict(base), tuple(points), dict(ray))


def load_sweep(path: Path) -> SweepConfig:
    return parse_sweep(load_config_file(path))


# --------------------------------------------------------------------------------------------------- the runs


@dataclass(frozen=True)
class SweepRun:
    """One point of a sweep: its overrides (dotted paths, as written) and its resolved spec."""

    index: int  # 1-based, in expansion order
    overrides: dict[str, Any]
    spec: RunSpec

    @property
    def run_id(self) -> str:
        return self.spec.run_id

    @property
    def run_dir(self) -> Path:
        return self.spec.run_dir

    @property
    def results_path(self) -> Path:
        return self.spec.run_dir / "results.json"

    @property
    def label(self) -> str:
        return label_of(self.overrides)

    @property
    def generations(self) -> int:
        """Generation blocks the run finishes (its progress total): seeds × (T + 1)."""
        return len(self.spec.seeds) * (self.spec.loop.generations + 1)


def label_of(overrides: Mapping[str, Any]) -> str:
    """``loop.mix_ratio=0.25, seeds=[0]``: a run's overrides on one line."""
    return ", ".join(f"{k}={json.dumps(v, separators=(',', ':'))}" for k, v in overrides.items()) or "(base)"


def build_sweep(config: SweepConfig, plugins: Plugins, *, out: Path | str | None = None) -> list[SweepRun]:
    """Build and resolve every run of the sweep; a :class:`ConfigError` names the run that is wrong."""
    runs: list[SweepRun] = []
    seen: dict[Path, int] = {}
    for i, flat in enumerate(config.points, start=1):
        overrides = nest(flat)
        if out is not None:
            overrides["out"] = str(out)
        try:
            spec = build_spec("quick", config.base, overrides, paper_defaults=factory.paper_defaults(plugins))
            spec = resolve_spec(spec, plugins)
        except ConfigError as exc:
            raise type(exc)(f"sweep run {i} ({label_of(flat)}): {exc}") from None
        run = SweepRun(i, flat, spec)
        if run.run_dir in seen:
            raise ConfigError(
                f"sweep runs {seen[run.run_dir]} and {i} are the same run ({run.run_id}); drop one of them"
            )
        seen[run.run_dir] = i
        runs.append(run)
    return runs


def dry_run(runs: Sequence[SweepRun]) -> dict[str, Any]:
    """What ``bench sweep --dry-run`` prints: each run's id, directory, overrides and work units (none run)."""
    from harness.engine.plan import plan

    listed = []
    for r in runs:
        units = plan(r.spec)
        listed.append({
            "index": r.index,
            "run_id": r.run_id,
            "run_dir": str(r.run_dir),
            "overrides": r.overrides,
            "units": len(units),
            "units_done": sum(u.is_done(r.run_dir) for u in units),
        })
    return {"runs": listed}


# --------------------------------------------------------------------------------------------------- running


@dataclass
class Outcome:
    """How one run of a sweep ended: its results (``None`` if it failed before writing any) or its error."""

    run: SweepRun
    results: Any = None
    error: BaseException | None = None
    seconds: float = 0.0

    @property
    def status(self) -> str:
        if self.error is not None:
            return "failed"
        return self.results.status if self.results is not None else "not run"


def run_sweep(
    runs: Sequence[SweepRun], plugins: Plugins, *, executor: Any = None, reporter: Any = None
) -> list[Outcome]:
    """Run (or resume) every run of the sweep; return one :class:`Outcome` per run, in sweep order.

    A run that fails is recorded (its error in the outcome) and the others go on; Ctrl-C stops the sweep (the
    finished units stay, and the same command resumes). With an executor that has ``concurrent = True``
    (``ray``) all runs start together, one driver thread each, and their units share the executor.
    """
    from harness.scale.executor import LocalExecutor

    executor = executor or LocalExecutor()
    reporter = reporter or NullSweepReporter()
    outcomes = [Outcome(r) for r in runs]

    def one(outcome: Outcome) -> None:
        from harness import loop

        t0 = time.perf_counter()
        try:
            with reporter.run(outcome.run) as run_reporter:
                outcome.results = loop.run(outcome.run.spec, plugins, reporter=run_reporter, executor=executor)
        except Exception as exc:  # noqa: BLE001 - one run's failure is recorded; the sweep goes on
            outcome.error = exc
            outcome.results = _partial_results(outcome.run)
        finally:
            outcome.seconds = time.perf_counter() - t0

    if not getattr(executor, "concurrent", False) or len(runs) <= 1:
        for outcome in outcomes:
            one(outcome)
        return outcomes

    from concurrent.futures import FIRST_EXCEPTION, ThreadPoolExecutor, wait

    executor.start(plugins)
    pool = ThreadPoolExecutor(max_workers=len(runs), thread_name_prefix="bench-sweep")
    futures = [pool.submit(one, o) for o in outcomes]
    try:
        pending = set(futures)
        while pending:
            done, pending = wait(pending, timeout=0.5, return_when=FIRST_EXCEPTION)
            for f in done:
                f.result()  # a BaseException (a Ctrl-C inside a run) stops the sweep
    except BaseException:
        executor.cancel()
        wait(futures)
        executor.reset_cancel()
        raise
    finally:
        pool.shutdown(wait=True)
    return outcomes


def _partial_results(run: SweepRun) -> Any:
    from harness.publish.results import load_results

    try:
        return load_results(run.results_path) if run.results_path.exists() else None
    except BenchError:
        return None


# --------------------------------------------------------------------------------------------------- progress


class NullSweepReporter:
    """Reports nothing."""

    @contextlib.contextmanager
    def run(self, run: SweepRun) -> Iterator[Any]:
        yield NullReporter()

    def close(self) -> None:
        pass


class _RunReporter:
    """The reporter one run of a sweep gets: advances its own bar and the sweep's; stages appear under it."""

    def __init__(self, owner: SweepReporter, run_task: Any):
        self._owner, self._task = owner, run_task

    def generation(self, n: int = 1) -> None:
        progress = self._owner.progress
        progress.advance(self._task, n)
        progress.advance(self._owner.total_task, n)

    def task(self, description: str, total: int | None) -> contextlib.AbstractContextManager:
        return progress_task(self._owner.progress, f"    {description}", total)

    def stage(self, description: str) -> contextlib.AbstractContextManager:
        return self.task(description, None)

    def close(self) -> None:
        pass


class SweepReporter:
    """Rich progress on stderr: one bar for the whole sweep (generation blocks of all runs), one per run."""

    def __init__(self, runs: Sequence[SweepRun], *, console: Any = None):
        self.progress = rich_progress(console)
        self.console = self.progress.console
        self._runs = list(runs)
        self._lock = threading.Lock()
        self.total_task: Any = None
        self._started = False

    def _start(self) -> None:
        with self._lock:
            if not self._started:
                self.progress.start()
                total = sum(r.generations for r in self._runs)
                self.total_task = self.progress.add_task(f"sweep: {len(self._runs)} runs", total=total)
                self._started = True

    @contextlib.contextmanager
    def run(self, run: SweepRun) -> Iterator[_RunReporter]:
        self._start()
        from rich.markup import escape

        description = f"  {run.index}: {escape(run.label)}"
        task_id = self.progress.add_task(description, total=run.generations)
        try:
            yield _RunReporter(self, task_id)
        except KeyboardInterrupt:
            self.progress.update(task_id, description=f"{description} [yellow](interrupted)[/]")
            raise
        except BaseException:
            self.progress.update(task_id, description=f"{description} [red](failed)[/]")
            raise
        finally:
            self.progress.stop_task(task_id)

    def close(self) -> None:
        if self._started:
            self.progress.stop()


def summary_table(outcomes: Sequence[Outcome]) -> Any:
    """A rich table: one row per run — overrides, status, last generation, Ā per classifier, wall time."""
    from rich.table import Table
    from rich.text import Text

    table = Table(title=f"sweep: {len(outcomes)} runs")
    for name, justify in (("#", "right"), ("run", "left"), ("overrides", "left"), ("status", "left"),
                          ("last gen", "right"), ("A_bar", "left"), ("time", "right")):
        table.add_column(name, justify=justify, overflow="fold")  # type: ignore[arg-type]
    for o in outcomes:
        r = o.results
        amp = getattr(r, "amplification", None) if r is not None else None
        a_bar = "-"
        if amp is not None:
            a_bar = ", ".join(f"{m} {a.A_bar:.3f}" if a.A_bar is not None else f"{m} -"
                              for m, a in amp.per_classifier.items())
        status = o.status
        if o.error is not None:
            status = f"failed: {type(o.error).__name__}"
        cells = (str(o.run.index), o.run.run_id, o.run.label, status,
                 str(r.last_generation) if r is not None else "-", a_bar, f"{o.seconds:.0f}s")
        table.add_row(*(Text(c) for c in cells))  # labels and names come from configs: text, never markup
    return table
