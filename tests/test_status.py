"""``bench status`` and ``bench report`` on a run that is in progress or stopped: units done, the running unit,
the time left, the finished generations; the report draws what exists."""

from __future__ import annotations

import contextlib
import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.engine.plan import plan
from harness.engine.progress import RUNNING, NullReporter, run_status, unit_label
from harness.scale.executor import LocalExecutor


class StopAfter:
    """The local executor, stopped (as Ctrl-C would) once ``n`` units have finished."""

    name = "stop-after"

    def __init__(self, n: int):
        self.n = n

    def run(self, ctx, units, on_done):
        count = 0

        def done(u):
            nonlocal count
            on_done(u)
            count += 1
            if count == self.n:
                raise KeyboardInterrupt

        LocalExecutor().run(ctx, units, done)


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


@pytest.fixture(scope="module")
def stopped_run(tmp_path_factory):
    """A tiny run (2 classifiers, 2 replicates, 2 generations) stopped after generation 1 and the first unit of
    generation 2."""
    from harness import loop
    from harness.plugin.manager import create_plugin_manager
    from harness.specs import build_spec, resolve_spec
    from tests.conftest import tiny_config

    plugins = create_plugin_manager()
    out = tmp_path_factory.mktemp("stopped") / "runs"
    config = tiny_config(out=str(out), classifiers=["lenet", "timm:test_resnet"], training={"replicates": 2})
    spec = resolve_spec(build_spec(None, config), plugins)
    units = plan(spec)
    stop = units.index(next(u for u in units if u.generation == 2)) + 1
    with pytest.raises(KeyboardInterrupt):
        loop.run(spec, plugins, executor=StopAfter(stop))
    return spec, stop


def test_status_of_a_stopped_run(stopped_run):
    spec, stop = stopped_run
    st = run_status(spec.run_dir)
    units = plan(spec)
    done = {u.key for u in units[:stop]}
    assert (st.done, st.total) == (stop, len(units))
    assert not st.complete and st.running == []
    assert st.ready == [unit_label(u) for u in units if u.key not in done and set(u.deps) <= done]
    assert "seed 0 gen 2: sample" in st.ready
    assert st.eta_s is not None and st.eta_s > 0 and st.work_done_s > 0
    assert [(g.seed, g.generation) for g in st.generations] == [(0, 0), (0, 1)]
    g1 = st.generations[1]
    replicates = [json.loads((u.directory(spec.run_dir) / "result.json").read_text())["metrics"] for u in units
                  if (u.stage, u.generation, u.name) == ("classifier", 1, "lenet")]
    assert len(replicates) == 2  # the summary is the mean over the replicates
    assert g1.classifiers["lenet"].acc == pytest.approx(sum(m["acc"] for m in replicates) / 2)
    assert g1.classifiers["lenet"].bias == pytest.approx(sum(1 - m["meo"] for m in replicates) / 2)
    evaluate = json.loads((spec.run_dir / "seed-0/gen-001/evaluate/result.json").read_text())
    assert (g1.q, g1.u) == (evaluate["q"], evaluate["u"])
    assert set(g1.classifiers) == {"lenet", "timm:test_resnet"}

    r = bench("status", spec.run_dir)
    assert r.exit_code == 0, r.output
    assert f"units: {stop}/{len(units)} done" in r.stdout and "next: " in r.stdout
    assert "time left: about " in r.stdout and "finished generations (B = 1-meo)" in r.stdout
    assert f"{g1.q:.3f}" in r.stdout
    data = json.loads(bench("status", spec.run_dir, "--json").stdout)
    assert data["done"] == stop and data["total"] == len(units) and len(data["generations"]) == 2
    assert data["complete"] is False


def test_the_estimate_uses_the_finished_units_of_each_kind():
    from harness.engine.plan import Unit
    from harness.engine.progress import remaining_seconds

    units = [Unit("classifier", 0, 0, "a"), Unit("classifier", 0, 0, "b"), Unit("generator", 1, 0),
             Unit("classifier", 1, 0, "a"), Unit("classifier", 1, 0, "b"), Unit("evaluate", 1, 0)]
    times = {units[0].key: 10.0, units[1].key: 30.0, units[2].key: 100.0}
    # classifier a: 10, classifier b: 30, evaluate: never seen, so the mean of all finished units (140/3)
    assert remaining_seconds(units, times) == pytest.approx(10 + 30 + 140 / 3)
    assert remaining_seconds(units, times, {units[4].key: 25.0}) == pytest.approx(10 + 5 + 140 / 3)
    assert remaining_seconds(units, {}) is None
    assert remaining_seconds(units[:1], {units[0].key: 1.0}) == 0.0


def test_report_draws_a_stopped_run_from_its_units(stopped_run, tmp_path):
    spec, _ = stopped_run
    (spec.run_dir / "results.json").unlink(missing_ok=True)  # as while a run is going: no results file yet
    r = bench("report", spec.run_dir, "--out", tmp_path / "fig")
    assert r.exit_code == 0, r.output
    names = {Path(p).name for p in r.stdout.split()}
    assert {"metrics.png", "worst_k.png", "generator.png", "samples.png"} <= names
    from harness.publish.report import run_results

    results = run_results(spec.run_dir)
    assert results.status == "partial" and results.last_generation == 1 and len(results.generations) == 2


def test_running_unit_is_marked_while_it_runs(tiny_spec, plugins):
    from harness import loop

    spec = tiny_spec(loop={"generations": 0})
    seen = []

    class Peek(NullReporter):
        @contextlib.contextmanager
        def stage(self, description):
            seen.append((description, run_status(spec.run_dir)))
            yield

    loop.run(spec, plugins, reporter=Peek())
    assert [d for d, _ in seen] == [unit_label(u) for u in plan(spec)]
    description, st = seen[1]
    assert [r.unit for r in st.running] == [description] and st.running[0].alive is True
    assert st.done == 1
    assert not (spec.run_dir / RUNNING).exists()
    assert "complete" in bench("status", spec.run_dir).stdout


def test_a_marker_left_by_a_dead_process_says_the_run_stopped(stopped_run):
    import socket

    spec, _ = stopped_run
    dead = subprocess.run([sys.executable, "-c", "import os; print(os.getpid())"], capture_output=True, text=True)
    marker = spec.run_dir / RUNNING
    marker.write_text(json.dumps({"host": socket.gethostname(), "pid": int(dead.stdout),
                                  "units": [{"unit": "seed 0 gen 2: sample", "started_at": "2026-01-01T00:00:00+00:00"}]}))
    try:
        st = run_status(spec.run_dir)
        assert st.running[0].alive is False
        r = bench("status", spec.run_dir)
        assert "stopped: seed 0 gen 2: sample was running" in r.stdout and "has exited" in r.stdout
    finally:
        marker.unlink()


def test_status_and_report_of_a_folder_that_is_not_a_run(tmp_path):
    r = bench("status", tmp_path)
    assert r.exit_code == 2 and "no spec.json" in r.stderr and len(r.stderr.strip().splitlines()) == 1
    r = bench("report", tmp_path)
    assert r.exit_code == 2 and "no results.json or spec.json" in r.stderr
