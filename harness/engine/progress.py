"""Progress of a run: reported while it runs, and read back from its run directory.

Two channels, fed by the reporter that the loop and the stages call. Library code reports, never prints.

* **Log lines** on the :mod:`logging` logger ``bench`` (INFO): one line when a work unit starts and one when it
  finishes (what, how long, images/s, the run's ETA), one summary line per finished generation of a seed (per
  classifier the accuracy and the bias measure ``B``, and the generator's ``q`` and ``u``). :class:`RunLog`
  writes them; every run appends them to ``RUN_DIR/run.log``, and ``bench run`` prints them on stderr when
  stderr is not a terminal (a cluster job, ``nohup``, ``2> file``). A library user routes them like any
  logger's: ``logging.getLogger("bench").addHandler(...)``.
* **Bars** on a terminal (rich): generations → stages → steps (:class:`RichReporter`).

:func:`run_status` reads the same facts back from a run directory, for ``bench status`` while a run is going:
units done of all, the unit that is running (``RUN_DIR/running.json``, which :class:`RunLog` keeps while a unit
runs in this process), an estimate of the time left, and the summaries of the generations finished so far.
"""

from __future__ import annotations

import contextlib
import logging
import os
import socket
import threading
import time
from collections.abc import Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TextIO

from harness.engine.plan import Unit, generation_blocks, plan
from harness.engine.records import RECORDS, ClassifierResult, EvaluateResult, RecordT, read_record
from harness.engine.rundir import DamagedUnitError, read_json, write_json

LOGGER_NAME = "bench"
log = logging.getLogger(LOGGER_NAME)
log.addHandler(logging.NullHandler())

RUN_LOG = "run.log"
RUNNING = "running.json"
LINE_FORMAT = "%(asctime)s %(message)s"
TIME_FORMAT = "%Y-%m-%d %H:%M:%S"


# --------------------------------------------------------------------------------------------------- bars


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass


class NullReporter:
    """Reports nothing (tests, workers without a terminal)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_NullTask]:
        yield _NullTask()

    def stage(self, description: str) -> contextlib.AbstractContextManager:
        return self.task(description, None)

    def generation(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Any, task_id: int):
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._id, n)


def rich_progress(console: Any = None, *, transient: bool = False) -> Any:
    """bench's bars (spinner, description, bar, done/total, time elapsed and left) on ``console`` (stderr by
    default): a :class:`rich.progress.Progress`, not yet started."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=transient,
    )


@contextlib.contextmanager
def progress_task(progress: Any, description: str, total: int | None) -> Iterator[_RichTask]:
    """A bar of ``progress`` for the length of the block (``.advance(n)``), removed when the block ends."""
    task_id = progress.add_task(description, total=total)
    try:
        yield _RichTask(progress, task_id)
    finally:
        progress.remove_task(task_id)


class RichReporter:
    """Nested rich progress bars on stderr: one for the run's generations, one per stage, one per step loop."""

    def __init__(self, total_generations: int, *, console: Any = None, transient: bool = False):
        self.progress = rich_progress(console, transient=transient)
        self.console = self.progress.console
        self._total = total_generations
        self._gen: Any = None

    def _start(self) -> None:
        """Start drawing on first use, so that an error raised before any work shows no empty bars."""
        if self._gen is None:
            self.progress.start()
            self._gen = self.progress.add_task("generations", total=self._total)

    def generation(self, n: int = 1) -> None:
        self._start()
        self.progress.advance(self._gen, n)

    def task(self, description: str, total: int | None) -> contextlib.AbstractContextManager[_RichTask]:
        from rich.markup import escape

        self._start()  # descriptions name plugins and units: text, never markup
        return progress_task(self.progress, f"  {escape(description)}", total)

    def stage(self, description: str) -> contextlib.AbstractContextManager:
        return self.task(description, None)

    def close(self) -> None:
        if self._gen is not None:
            self.progress.stop()


# --------------------------------------------------------------------------------------------------- facts


def unit_label(u: Unit) -> str:
    """What a unit is, for people: ``seed 0 gen 1: classifier lenet`` (``… rep 1`` for a further replicate), or
    ``oracle`` for the run-level unit. The stages name a running unit so, and the run log and status read it."""
    what = u.stage if u.name is None else f"{u.stage} {u.name}"
    if u.replicate:
        what += f" rep {u.replicate}"
    return what if u.seed is None else f"seed {u.seed} gen {u.generation}: {what}"


def duration(seconds: float | None) -> str:
    """``0.4 s``, ``12 s``, ``4 min 10 s``, ``2 h 03 min``; ``?`` when unknown."""
    if seconds is None:
        return "?"
    if seconds < 10:
        return f"{seconds:.1f} s"
    s = round(seconds)
    if s < 60:
        return f"{s} s"
    if s < 3600:
        return f"{s // 60} min {s % 60} s"
    return f"{s // 3600} h {s % 3600 // 60:02d} min"


@dataclass(frozen=True)
class UnitTime:
    """How long a finished unit took and how many images it processed (from its ``result.json``)."""

    seconds: float
    images: int

    @property
    def images_per_s(self) -> float | None:
        return self.images / self.seconds if self.seconds > 0 and self.images else None


def _record(run_dir: Path, u: Unit, model: type[RecordT]) -> RecordT | None:
    """A finished unit's record; ``None`` if it has not finished or its ``result.json`` is damaged (a unit that
    ``bench run`` computes again)."""
    try:
        return read_record(u, run_dir, model)
    except (DamagedUnitError, OSError):
        return None


def unit_time(run_dir: Path, u: Unit) -> UnitTime | None:
    """The timing a finished unit recorded; ``None`` if it has not finished (or its result is damaged)."""
    record = _record(run_dir, u, RECORDS[u.stage])
    return None if record is None else UnitTime(record.timing.seconds, record.timing.images)


def remaining_seconds(units: Sequence[Unit], times: Mapping[str, float],
                      running: Mapping[str, float] | None = None) -> float | None:
    """Estimated work left, one unit after another: each unit not in ``times`` (key → seconds of finished
    units) costs the mean of the finished units of the same stage and classifier, else of the same stage, else
    of all finished units. ``running`` (key → seconds so far) is subtracted from those units' estimates.
    ``None`` before any unit has finished; ``0`` when all have.
    """
    if not times:
        return None if any(u.key not in times for u in units) else 0.0
    by_key = {u.key: u for u in units}
    groups: dict[Any, list[float]] = {}
    for key, seconds in times.items():
        u = by_key.get(key)
        if u is None:
            continue
        groups.setdefault((u.stage, u.name), []).append(seconds)
        groups.setdefault(u.stage, []).append(seconds)
        groups.setdefault(None, []).append(seconds)
    if None not in groups:
        return None

    def mean(xs: list[float]) -> float:
        return sum(xs) / len(xs)

    left = 0.0
    for u in units:
        if u.key in times:
            continue
        cost = mean(groups.get((u.stage, u.name)) or groups.get(u.stage) or groups[None])
        left += max(0.0, cost - (running or {}).get(u.key, 0.0))
    return left


@dataclass(frozen=True)
class ClassifierSummary:
    acc: float
    bias: float | None  # B under the run's bias measure (spec.metrics.bias)


@dataclass(frozen=True)
class GenerationSummary:
    """The headline metrics of one seed's generation: per classifier acc and B (means over its replicates, the
    treated arm), the generator's q and u."""

    seed: int
    generation: int
    measure: str
    classifiers: dict[str, ClassifierSummary]
    q: float | None = None
    u: float | None = None

    def line(self) -> str:
        """``seed 0 gen 2: lenet acc 0.912 B(1-meo) 0.019; q 0.950 u 0.200``."""

        def num(x: float | None) -> str:
            return "n/a" if x is None else f"{x:.3f}"

        parts = [f"{name} acc {num(c.acc)} B({self.measure}) {num(c.bias)}" for name, c in self.classifiers.items()]
        text = f"seed {self.seed} gen {self.generation}: " + "; ".join(parts)
        if self.generation > 0:
            text += f"; q {num(self.q)} u {num(self.u)}"
        return text


def generation_summary(spec: Any, run_dir: Path, seed: int, t: int) -> GenerationSummary | None:
    """The summary of generation ``t`` of ``seed`` from its units' results; ``None`` until they all exist."""
    from harness.measure.amplification import bias_value

    classifiers = {}
    for name in spec.classifier_names:
        records = [_record(run_dir, Unit("classifier", t, seed, name, replicate=r), ClassifierResult)
                   for r in range(spec.training.replicates)]
        if any(r is None for r in records):
            return None
        biases = [b for r in records if (b := bias_value(r.metrics.model_dump(), spec.metrics.bias)) is not None]
        classifiers[name] = ClassifierSummary(sum(r.metrics.acc for r in records) / len(records),
                                              sum(biases) / len(biases) if biases else None)
    q = u = None
    if t > 0:
        ev = _record(run_dir, Unit("evaluate", t, seed), EvaluateResult)
        if ev is None:
            return None
        q, u = ev.q, ev.u
    return GenerationSummary(seed, t, spec.metrics.bias, classifiers, q, u)


# --------------------------------------------------------------------------------------------------- the log


def line_formatter(*, run_ids: bool = False) -> logging.Formatter:
    """``2026-01-01 12:00:00 message``; with ``run_ids``, the run's id before the message (several runs log
    at once in a sweep)."""
    if run_ids:
        return logging.Formatter("%(asctime)s %(run_id)s: %(message)s", TIME_FORMAT, defaults={"run_id": "-"})
    return logging.Formatter(LINE_FORMAT, TIME_FORMAT)


@contextlib.contextmanager
def log_to_stream(stream: TextIO, *, run_ids: bool = False) -> Iterator[logging.Handler]:
    """While the block runs, the ``bench`` logger's INFO lines also go to ``stream``, one flushed line each
    (``run_ids``: each prefixed with its run's id)."""
    handler = logging.StreamHandler(stream)
    handler.setFormatter(line_formatter(run_ids=run_ids))
    level = log.level
    log.addHandler(handler)
    log.setLevel(logging.INFO)
    try:
        yield handler
    finally:
        log.removeHandler(handler)
        log.setLevel(level)
        handler.close()


class RunLog:
    """The reporter a run uses: log lines for every unit and finished generation, around an inner reporter
    (bars, or nothing) that it passes ``task``, ``stage`` and ``generation`` on to.

    :meth:`begin` (once the run directory exists) opens ``RUN_DIR/run.log``, which gets every line of this run
    whatever the logging configuration; :meth:`end` closes it. While a unit runs in this process (``stage``), ``RUN_DIR/
    running.json`` names it. :meth:`unit_done` is called for every unit the executor reports finished (units
    that were already done when the run resumed are counted, not logged again).
    """

    def __init__(self, spec: Any, inner: Any = None):
        self.spec = spec
        self.inner = inner if inner is not None else NullReporter()
        self.run_dir = Path(spec.run_dir)
        self.units = plan(spec)
        self._blocks = {k: {u.key for u in v} for k, v in generation_blocks(self.units).items()}
        self._keys = {unit_label(u): u for u in self.units}
        self._times: dict[str, float] = {}
        self._session: list[float] = []  # seconds of the units finished by this process
        self._running: dict[str, float] = {}  # label → perf_counter at start
        self._lock = threading.RLock()
        self._handler: logging.Handler | None = None
        self._t0 = time.perf_counter()

    # ---------------------------------------------------------------- lifecycle

    def begin(self) -> None:
        """Start the run's ``run.log`` and log what is planned (and what is already done, on resume)."""
        with self._lock:
            self._t0 = time.perf_counter()
            for u in self.units:
                ut = unit_time(self.run_dir, u)
                if ut is not None:
                    self._times[u.key] = ut.seconds
                    if u.seed is not None:
                        self._blocks[(u.seed, u.generation)].discard(u.key)
            self._handler = logging.FileHandler(self.run_dir / RUN_LOG, mode="a", encoding="utf-8")
            self._handler.setFormatter(line_formatter())
            logging.getLogger("harness").addHandler(self._handler)  # the harness's warnings (a damaged unit)
        done, total = len(self._times), len(self.units)
        resumed = ", all done already" if done == total else f", {done} done already: resuming" if done else ""
        self._info(f"run {self.spec.run_id} in {self.run_dir}: {total} work units{resumed}")

    def end(self) -> None:
        """Log how the run ended and close ``run.log``."""
        with self._lock:
            done, total = len(self._times), len(self.units)
            wall = time.perf_counter() - self._t0
            if done == total:
                self._info(f"run finished: {total}/{total} work units, {duration(wall)} in this session")
            else:
                self._info(f"run stopped: {done}/{total} work units done, {duration(wall)} in this session; "
                           "the same command resumes it")
            self._clear_running()
            if self._handler is not None:
                logging.getLogger("harness").removeHandler(self._handler)
                self._handler.close()
                self._handler = None

    # ---------------------------------------------------------------- the reporter interface

    def task(self, description: str, total: int | None) -> contextlib.AbstractContextManager:
        return self.inner.task(description, total)

    @contextlib.contextmanager
    def stage(self, description: str) -> Iterator[Any]:
        with self._lock:
            u = self._keys.get(description)
            if u is not None and self._times.pop(u.key, None) is not None and u.seed is not None:
                self._blocks[(u.seed, u.generation)].add(u.key)  # found damaged: computed again
            self._running[description] = time.perf_counter()
            self._write_running()
            position = len(self._times) + len(self._running)
        self._info(f"[{position}/{len(self.units)}] started {description}")
        try:
            with self.inner.stage(description) as task:
                yield task
        finally:
            with self._lock:
                self._running.pop(description, None)
                self._write_running()

    def generation(self, n: int = 1) -> None:
        self.inner.generation(n)

    def close(self) -> None:
        self.inner.close()

    # ---------------------------------------------------------------- events

    def unit_done(self, u: Unit) -> None:
        """Log a finished unit (elapsed, images/s, the run's ETA) and, when it completes a generation of a seed,
        that generation's summary."""
        with self._lock:
            if u.key in self._times:
                return  # already done when the run started (resume) or reported twice
            ut = unit_time(self.run_dir, u)
            self._times[u.key] = ut.seconds if ut is not None else 0.0
            if ut is not None:
                self._session.append(ut.seconds)
            done, total = len(self._times), len(self.units)
            eta = self.eta()
            block = self._blocks[(u.seed, u.generation)] if u.seed is not None else None
            if block is not None:
                block.discard(u.key)
        speed = f", {ut.images_per_s:,.0f} images/s" if ut is not None and ut.images_per_s else ""
        took = duration(ut.seconds) if ut is not None else "?"
        left = "" if done == total else f"; run ETA {duration(eta)}"
        self._info(f"[{done}/{total}] finished {unit_label(u)} in {took}{speed}{left}")
        if u.seed is not None and block is not None and not block:
            summary = generation_summary(self.spec, self.run_dir, u.seed, u.generation)
            if summary is not None:
                self._info(f"generation done: {summary.line()}")

    def eta(self) -> float | None:
        """Seconds until the run ends: the work left, divided by how many units ran at once in this session."""
        with self._lock:
            left = remaining_seconds(self.units, self._times)
            if left is None:
                return None
            wall = time.perf_counter() - self._t0
            parallel = max(1.0, sum(self._session) / wall) if wall > 0 else 1.0
            return left / parallel

    # ---------------------------------------------------------------- helpers

    def _info(self, message: str) -> None:
        """One line: into ``run.log`` always, and to the ``bench`` logger's handlers as configured."""
        record = log.makeRecord(log.name, logging.INFO, __file__, 0, message, (), None,
                                extra={"run_id": self.spec.run_id})
        with self._lock:
            if self._handler is not None:
                self._handler.handle(record)
        if log.isEnabledFor(logging.INFO):
            log.handle(record)

    def _write_running(self) -> None:
        if not self._running:
            self._clear_running()
            return
        now = time.perf_counter()
        started = {k: datetime.now(UTC).timestamp() - (now - v) for k, v in self._running.items()}
        try:
            write_json(self.run_dir / RUNNING, {
                "host": socket.gethostname(), "pid": os.getpid(),
                "units": [{"unit": k, "started_at": datetime.fromtimestamp(s, UTC).isoformat(timespec="seconds")}
                          for k, s in started.items()],
            })
        except OSError:
            pass  # the marker is a courtesy to `bench status`; a full disk fails the unit itself soon enough

    def _clear_running(self) -> None:
        with contextlib.suppress(OSError):
            (self.run_dir / RUNNING).unlink(missing_ok=True)


# --------------------------------------------------------------------------------------------------- status


@dataclass(frozen=True)
class Running:
    """A unit that a process marked as running (``RUN_DIR/running.json``)."""

    unit: str
    started_at: datetime
    host: str
    pid: int
    alive: bool | None  # None: on another host, cannot tell


@dataclass(frozen=True)
class RunStatus:
    """Where a run stands, read from its directory (:func:`run_status`)."""

    run_dir: Path
    run_id: str
    total: int
    done: int
    work_done_s: float
    running: list[Running]
    ready: list[str]  # units whose inputs are all there but that have not finished (what runs next, or now)
    eta_s: float | None
    generations: list[GenerationSummary] = field(default_factory=list)
    results_status: str | None = None  # the status in results.json, if the file exists

    @property
    def complete(self) -> bool:
        return self.done == self.total


def read_spec(run_dir: Path) -> Any:
    """The :class:`~harness.specs.RunSpec` stored in ``RUN_DIR/spec.json``, with ``out`` the folder above it
    (use ``run_dir`` itself, not ``spec.run_dir``: the folder may have been renamed).

    :raises RunDirError: there is no readable ``spec.json``: not a run directory.
    """
    from harness.errors import RunDirError
    from harness.specs import RunSpec

    run_dir = Path(run_dir)
    path = run_dir / "spec.json"
    try:
        stored = read_json(path)
        spec = RunSpec.model_validate({**stored["spec"], "out": str(run_dir.parent)})
    except FileNotFoundError:
        raise RunDirError(f"{run_dir}: no spec.json (is this a run directory? `bench run` prints it)") from None
    except (OSError, ValueError, KeyError, TypeError) as exc:
        raise RunDirError(f"{path}: cannot read the run's spec ({exc})") from None
    return spec


def run_status(run_dir: Path) -> RunStatus:
    """Units done of all, the running unit, the time left and the finished generations of a run directory."""
    import json as _json

    run_dir = Path(run_dir)
    spec = read_spec(run_dir)
    units = plan(spec)
    times: dict[str, float] = {}
    for u in units:
        ut = unit_time(run_dir, u)
        if ut is not None:
            times[u.key] = ut.seconds
    running = _read_running(run_dir)
    live = {r.unit: (datetime.now(UTC) - r.started_at).total_seconds() for r in running if r.alive is not False}
    by_label = {unit_label(u): u.key for u in units}
    ready = [unit_label(u) for u in units if u.key not in times and all(d in times for d in u.deps)]
    eta = remaining_seconds(units, times, {by_label[k]: v for k, v in live.items() if k in by_label})
    generations = []
    for (seed, t), block in generation_blocks(units).items():
        if all(u.key in times for u in block):
            summary = generation_summary(spec, run_dir, seed, t)
            if summary is not None:
                generations.append(summary)
    results_status = None
    with contextlib.suppress(OSError, ValueError, AttributeError):
        results_status = _json.loads((run_dir / "results.json").read_text()).get("status")
    return RunStatus(run_dir, spec.run_id, len(units), len(times), sum(times.values()), running, ready,
                     eta, sorted(generations, key=lambda g: (g.generation, g.seed)), results_status)


def _read_running(run_dir: Path) -> list[Running]:
    try:
        data = read_json(run_dir / RUNNING)
        host, pid = str(data["host"]), int(data["pid"])
        entries = [(str(e["unit"]), datetime.fromisoformat(e["started_at"])) for e in data["units"]]
    except (OSError, ValueError, KeyError, TypeError):
        return []
    alive = _pid_alive(pid) if host == socket.gethostname() else None
    return [Running(unit, started, host, pid, alive) for unit, started in entries]


def _pid_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True
