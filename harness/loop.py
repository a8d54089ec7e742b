"""What a run does: prepare the run directory, hand the plan to an executor, collect the results.

The plan (:mod:`harness.engine.plan`) lists the work units of SPEC §2; the stages (:mod:`harness.engine.stages`)
say what each unit does; this module runs them. ``results.json`` is a pure function of the units' outputs
(see :mod:`harness.publish.results`), so a resumed run ends with the same numbers as an uninterrupted one.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable, Sequence
from pathlib import Path
from typing import Any

from harness.engine.plan import Unit, generation_blocks, plan, unit
from harness.engine.progress import RunLog
from harness.engine.records import (
    RECORDS,
    ClassifierResult,
    EvaluateResult,
    read_record,
)
from harness.engine.rundir import read_json, write_json
from harness.engine.stages import RunContext
from harness.errors import RunDirError
from harness.measure.fid import preflight as fid_preflight
from harness.plugin import factory
from harness.plugin.factory import PluginRef
from harness.plugin.manager import Plugins
from harness.publish.results import Results, collect_results, git_commit, write_results
from harness.scale.executor import LocalExecutor
from harness.specs import RunSpec


def prepare_run_dir(spec: RunSpec) -> Path:
    """Create the run directory, or check that an existing one holds the same spec (then the run resumes)."""
    run_dir = spec.run_dir
    marker = run_dir / "spec.json"
    if marker.exists():
        try:
            stored = read_json(marker)
        except ValueError:
            raise RunDirError(f"{marker} is damaged; delete {run_dir} to start over") from None
        if stored.get("spec_hash") != spec.spec_hash():
            raise RunDirError(f"{run_dir} holds a run of a different spec; use another --out or delete it")
    else:
        write_json(marker, {"spec_hash": spec.spec_hash(), "spec": spec.identity()})
    return run_dir


def run(spec: RunSpec, plugins: Plugins, *, reporter: Any = None, executor: Any = None,
        trackers: Sequence[PluginRef] = (), report: Callable[[Path], Sequence[Path]] | None = None) -> Results:
    """Run (or resume) the whole plan, then write and return ``results.json`` (:class:`harness.publish.results.Results`).

    :param trackers: the experiment trackers to attach for this run (``bench run --tracker``; name and options).
    :param report: draws the report from the run directory once ``results.json`` is written, returning the figure
        files, before ``on_run_end`` (which hands them to the hooks, so trackers log them).
    """
    with factory.tracking(trackers, plugins):  # a tracker whose library is missing fails before any work
        return _run(spec, plugins, reporter, executor, report)


def _run(spec: RunSpec, plugins: Plugins, reporter: Any, executor: Any,
         report: Callable[[Path], Sequence[Path]] | None) -> Results:
    reporter = RunLog(spec, reporter)  # log lines (logger `bench`, RUN_DIR/run.log) around the caller's bars
    ctx = RunContext(spec, spec.run_dir, plugins, reporter)
    _ = ctx.data  # load (and verify) the dataset first: missing data fails before any work or progress
    ctx.check_reparation()  # a reparation target or disparity amplification the dataset cannot have
    for kind, pspec in (("generators", spec.generator), ("filters", spec.filter)):
        factory.preflight(kind, pspec, plugins)  # missing weights fail before any work
    if spec.metrics.fid.backbone != "none":
        fid_preflight(spec.metrics.fid.backbone)  # missing FID weights fail now, not after a generation of work
    run_dir = prepare_run_dir(spec)
    git_commit()  # provenance: the code this process runs is the commit checked out now, not at the end
    hook = plugins.pm.hook
    hook.on_run_start(spec=spec, run_dir=run_dir)
    units = plan(spec)
    blocks = generation_blocks(units)
    remaining = {k: {u.key for u in v} for k, v in blocks.items()}
    t_start = time.perf_counter() - previous_wall_time(run_dir)  # a resumed run adds to the sessions before

    def on_done(u: Unit) -> None:
        reporter.unit_done(u)
        if hook.on_unit_end.get_hookimpls():  # read the unit's record only when someone listens
            record = read_record(u, run_dir, RECORDS[u.stage])
            hook.on_unit_end(spec=spec, unit=u, record=record, run_dir=run_dir)
        if u.seed is None:
            return
        block = remaining[(u.seed, u.generation)]
        block.discard(u.key)
        if not block:
            reporter.generation(1)
            record = _generation_record(ctx, u.seed, u.generation)
            hook.on_generation_end(spec=spec, seed=u.seed, generation=u.generation, record=record, run_dir=run_dir)

    executor = executor or LocalExecutor()
    reporter.begin()
    try:
        executor.run(ctx, units, on_done)
    except BaseException:
        write_results(run_dir, collect_results(ctx, elapsed=time.perf_counter() - t_start))
        raise
    finally:
        reporter.end()
    results = collect_results(ctx, elapsed=time.perf_counter() - t_start)
    write_results(run_dir, results)
    figures = tuple(report(run_dir)) if report is not None else ()
    hook.on_run_end(spec=spec, results=results, run_dir=run_dir, figures=figures)
    return results


def previous_wall_time(run_dir: Path) -> float:
    """``timing.total_s`` of the results an earlier session of this run wrote (0 if none, or unreadable)."""
    try:
        return float(json.loads((run_dir / "results.json").read_text())["timing"]["total_s"])
    except (OSError, ValueError, KeyError, TypeError):
        return 0.0


def _generation_record(ctx: RunContext, seed: int, t: int) -> dict[str, Any]:
    """The ``record`` of the ``on_generation_end`` hook: plain JSON data, as documented in :mod:`harness.hookspecs`."""
    classifiers = {}
    for m in ctx.spec.classifier_names:
        result = read_record(unit("classifier", seed, t, m), ctx.run_dir, ClassifierResult)
        classifiers[m] = result.metrics.model_dump(mode="json")
    evaluated = read_record(unit("evaluate", seed, t), ctx.run_dir, EvaluateResult) if t > 0 else None
    return {"classifiers": classifiers, "generator": evaluated.model_dump(mode="json") if evaluated else None}
