"""Experiment trackers (issue 15 item 4): ``bench run --tracker mlflow|tensorboard|wandb`` logs the spec, the metrics
of each generation, the training curves and the report's figures; each is read back here with its library's own
reader after a tiny study. Files only: MLflow's store, TensorBoard's event files and W&B's offline run all live
under the run directory, and nothing touches the network."""

from __future__ import annotations

import json
import subprocess
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.engine.plan import unit
from harness.engine.records import ClassifierResult, GeneratorResult, read_record
from harness.hookspecs import hookimpl
from harness.interfaces import Tracker
from harness.specs import PluginSpec
from tests.conftest import tiny_config

TRACKERS = ("mlflow", "tensorboard", "wandb")
ACC = "seed-0/classifiers/lenet/acc"
LOSS_D = "curves/seed-0/gen-001/generator/loss_d"
VAL_ACC = "curves/seed-0/gen-001/classifier/lenet/val_acc"


@pytest.fixture(scope="module")
def tracked(tmp_path_factory):
    """A tiny study (one seed, one generation) logged to all three trackers at once, with its report."""
    for library in ("mlflow", "tensorboard", "wandb"):
        pytest.importorskip(library)
    from harness import loop
    from harness.plugin.manager import create_plugin_manager
    from harness.publish.report import write_report
    from harness.specs import build_spec, resolve_spec

    plugins = create_plugin_manager()
    config = tiny_config(out=str(tmp_path_factory.mktemp("tracked") / "runs"), loop={"generations": 1},
                         training={"max_epochs": 2, "patience": 5})
    spec = resolve_spec(build_spec(None, config), plugins)
    drawn: list[Path] = []

    def report(run_dir: Path) -> list[Path]:
        drawn.extend(write_report(run_dir))
        return drawn

    loop.run(spec, plugins, trackers=[PluginSpec(name=n) for n in TRACKERS], report=report)
    assert plugins.pm.get_plugins() == {p for p in plugins.pm.get_plugins() if not isinstance(p, Tracker)}
    return spec, drawn


def expected(spec):
    """What the unit records hold: generation metrics, and the generator's and a classifier's curves."""
    acc = [read_record(unit("classifier", 0, t, "lenet"), spec.run_dir, ClassifierResult).metrics.acc for t in (0, 1)]
    gen = read_record(unit("generator", 0, 1), spec.run_dir, GeneratorResult).curves()
    clf = read_record(unit("classifier", 0, 1, "lenet"), spec.run_dir, ClassifierResult).curves()
    return acc, list(zip(gen.at, gen.series["loss_d"])), list(zip(clf.at, clf.series["val_acc"]))


def same_points(logged, recorded, rel=1e-9):
    """``[(step, value)]`` logged are the recorded ones: the same steps, the values within ``rel``."""
    assert [step for step, _ in logged] == [step for step, _ in recorded]
    assert [value for _, value in logged] == pytest.approx([value for _, value in recorded], rel=rel)


def test_mlflow_logs_the_study(tracked):
    from mlflow import MlflowClient

    spec, figures = tracked
    acc, loss_d, val_acc = expected(spec)
    client = MlflowClient(f"sqlite:///{(spec.run_dir / 'mlflow' / 'mlflow.db').resolve()}")
    (run,) = client.search_runs([client.get_experiment_by_name("bench").experiment_id])
    assert run.info.run_name == spec.run_id and run.info.status == "FINISHED"
    params = run.data.params
    assert params["spec_hash"] == spec.spec_hash() and params["loop.generations"] == "1"
    assert params["dataset.name"] == "colored-mnist" and json.loads(params["seeds"]) == [0]

    def history(key):
        return sorted((m.step, m.value) for m in client.get_metric_history(run.info.run_id, key))

    same_points(history(ACC), list(enumerate(acc)))
    same_points(history(LOSS_D), loss_d)
    same_points(history(VAL_ACC), val_acc)
    assert "seed-0/generator/q" in run.data.metrics
    assert not any("timing" in k for k in run.data.metrics)  # a unit's wall time is not a result
    artifacts = {a.path for a in client.list_artifacts(run.info.run_id, "report")}
    assert artifacts == {f"report/{p.name}" for p in figures} and "report/curves.png" in artifacts
    assert "results.json" in {a.path for a in client.list_artifacts(run.info.run_id)}


def test_tensorboard_logs_the_study(tracked):
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    spec, figures = tracked
    acc, loss_d, val_acc = expected(spec)
    (folder,) = (spec.run_dir / "tensorboard").iterdir()  # one subfolder per bench run
    events = EventAccumulator(str(folder), size_guidance={"scalars": 0, "images": 0, "tensors": 0})
    events.Reload()

    def history(key):
        return [(e.step, e.value) for e in events.Scalars(key)]

    same_points(history(ACC), list(enumerate(acc)), rel=1e-6)  # float32 in event files
    same_points(history(LOSS_D), loss_d, rel=1e-6)
    same_points(history(VAL_ACC), val_acc, rel=1e-6)
    (params,) = events.Tensors("params/text_summary")
    table = params.tensor_proto.string_val[0].decode()
    assert f"| spec_hash | {spec.spec_hash()} |" in table and "| loop.generations | 1 |" in table
    assert set(events.Tags()["images"]) == {f"report/{p.stem}" for p in figures}


def test_wandb_logs_the_study_offline(tracked):
    spec, figures = tracked
    acc, loss_d, val_acc = expected(spec)
    (log,) = (spec.run_dir / "wandb").glob("offline-run-*/run-*.wandb")  # offline: nothing was sent anywhere
    read = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(log)], capture_output=True,
                          text=True, timeout=120, check=True)
    records = [json.loads(line) for line in read.stdout.splitlines() if line.strip()]
    (run,) = [r["run"] for r in records if r["type"] == "run"]
    config = run["config"]["update"]
    assert run["display_name"] == spec.run_id and run["project"] == "bench"
    assert config["spec_hash"] == spec.spec_hash() and config["loop.generations"] == 1
    rows = [r["history"]["item"] for r in records if r["type"] == "history"]

    def history(key, axis):
        return [(row[axis], row[key]) for row in rows if key in row]

    same_points(history(ACC, "generation"), list(enumerate(acc)))
    same_points(history(LOSS_D, "curves/seed-0/gen-001/generator/step"), loss_d)
    same_points(history(VAL_ACC, "curves/seed-0/gen-001/classifier/lenet/epoch"), val_acc)
    steps = {r["metric"].get("name"): r["metric"].get("step_metric") for r in records if r["type"] == "metric"}
    assert steps[LOSS_D] == "curves/seed-0/gen-001/generator/step"  # each curve plotted against its own axis
    images = {k.removesuffix("._type") for row in rows for k, v in row.items() if v == "image-file"}
    assert images == {f"report/{p.stem}" for p in figures}
    assert [r["exit"]["exit_code"] for r in records if r["type"] == "exit"] == [0]
    assert (log.parent / "files" / "results.json").is_file()


# --------------------------------------------------------------------------------------------------- selection


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def tiny_file(tmp_path: Path) -> Path:
    path = tmp_path / "tiny.json"
    path.write_text(json.dumps(tiny_config()))
    return path


@pytest.mark.parametrize("library", ["wandb", "tensorboard", "mlflow", "sqlalchemy"])
def test_a_tracker_whose_library_is_missing_is_one_line_and_exit_2(tmp_path, monkeypatch, library):
    monkeypatch.setitem(sys.modules, library, None)  # as if not installed: find_spec and import both fail
    name = "mlflow" if library == "sqlalchemy" else library
    r = bench("run", "--config", tiny_file(tmp_path), "--out", tmp_path / "runs", "--quiet", "--tracker", name)
    assert r.exit_code == 2, r.output
    assert r.stderr.count("\n") == 1 and "Traceback" not in r.output
    assert f"the {library} package is not installed: pip install '" in r.stderr and ".[track]" in r.stderr
    assert not (tmp_path / "runs").exists() or not any((tmp_path / "runs").iterdir())  # before any work


@pytest.mark.parametrize(("args", "message"), [
    (["--tracker", "mlfow"], "Did you mean 'mlflow'?"),
    (["--tracker", "wandb", "--tracker", "wandb"], "tracker 'wandb' is selected twice"),
    (["--tracker", "wandb", "--tracker-option", "wandb.mod=online"], "(did you mean mode?)"),
    (["--tracker", "wandb", "--tracker-option", "wandb.mode=loud"], "'offline', 'online' or 'disabled'"),
    (["--tracker-option", "mlflow.tracking_uri=x"], "which no --tracker selects"),
    (["--tracker", "mlflow", "--tracker-option", "tracking_uri"], "expects NAME.KEY=VALUE"),
])
def test_tracker_selection_mistakes_are_one_line(tmp_path, args, message):
    r = bench("run", "--config", tiny_file(tmp_path), "--out", tmp_path / "runs", "--quiet", *args)
    assert r.exit_code == 2, r.output
    assert message in r.stderr and r.stderr.count("\n") == 1 and "Traceback" not in r.output


def test_bench_list_trackers():
    r = bench("list", "trackers")
    assert r.exit_code == 0 and r.stdout.split() == ["mlflow", "tensorboard", "wandb"]


# --------------------------------------------------------------------------------------------------- the hooks


class Recorder(Tracker):
    """A tracker that keeps what it is given; ``fail`` names a call that raises."""

    calls: list[tuple] = []
    fail: str | None = None

    def _call(self, what, *args):
        Recorder.calls.append((what, *args))
        if what == Recorder.fail:
            raise RuntimeError(f"{what} is broken")

    def start(self, *, name, params, run_dir):
        self._call("start", name, dict(params))

    def log_metrics(self, metrics, *, step, axis):
        self._call("log_metrics", dict(metrics), step, axis)

    def log_files(self, paths, *, folder):
        self._call("log_files", [Path(p).name for p in paths], folder)

    def finish(self, *, failed):
        self._call("finish", failed)


class RecorderPlugin:
    @hookimpl
    def register_trackers(self, register):
        register("recorder", Recorder)


@pytest.fixture
def recorder(monkeypatch):
    from harness.plugin.manager import create_plugin_manager

    monkeypatch.setattr(Recorder, "calls", [])
    return create_plugin_manager(extra_plugins=(RecorderPlugin(),))


def test_a_tracker_hears_every_unit_and_generation_once(tiny_spec, recorder):
    from harness import loop
    from harness.engine.plan import plan

    spec = tiny_spec()
    loop.run(spec, recorder, trackers=[PluginSpec(name="recorder")], report=lambda run_dir: [run_dir / "x.png"])
    calls = Recorder.calls
    assert calls[0][:2] == ("start", spec.run_id) and calls[-1] == ("finish", False)
    generations = [c for c in calls if c[0] == "log_metrics" and c[3] == "generation"]
    assert [c[2] for c in generations] == [0, 1, 2]
    curves = {c[3].rsplit("/", 1)[0] for c in calls if c[0] == "log_metrics" and c[3] != "generation"}
    trained = {f"curves/{u.key}" for u in plan(spec) if u.stage in ("oracle", "generator", "classifier", "control")}
    assert curves == trained  # every unit that trains, and no other
    assert ("log_files", ["x.png"], "report") in calls and ("log_files", ["results.json"], "") in calls

    Recorder.calls.clear()  # a resumed run: a new tracker run that hears every finished unit again
    loop.run(spec, recorder, trackers=[PluginSpec(name="recorder")])
    assert {c[3].rsplit("/", 1)[0] for c in Recorder.calls if c[0] == "log_metrics" and c[3] != "generation"} == trained
    assert not any(c[0] == "log_files" and c[2] == "report" for c in Recorder.calls)  # no report drawn this time


def test_a_tracker_that_fails_to_log_is_a_warning_and_the_run_goes_on(tiny_spec, recorder, monkeypatch, caplog):
    from harness import loop

    monkeypatch.setattr(Recorder, "fail", "log_metrics")
    results = loop.run(tiny_spec(), recorder, trackers=[PluginSpec(name="recorder")])
    assert results.status == "complete"
    assert [c[0] for c in Recorder.calls] == ["start", "log_metrics", "finish"]  # nothing more after the failure
    assert Recorder.calls[-1] == ("finish", False)
    (warning,) = [r for r in caplog.records if r.name == "harness.trackers"]
    assert "tracker 'recorder' could not log" in warning.getMessage() and "log_metrics is broken" in warning.getMessage()


def test_a_tracker_that_cannot_start_stops_the_run_before_any_work(tiny_spec, recorder, monkeypatch):
    from harness import loop
    from harness.errors import ConfigError

    monkeypatch.setattr(Recorder, "fail", "start")
    spec = tiny_spec()
    with pytest.raises(ConfigError, match="tracker 'recorder' could not start: RuntimeError: start is broken"):
        loop.run(spec, recorder, trackers=[PluginSpec(name="recorder")])
    assert not list(spec.run_dir.glob("seed-*"))
    assert [c[0] for c in Recorder.calls] == ["start"]  # never started: nothing to finish


def test_a_run_that_fails_finishes_its_trackers_as_failed(tiny_spec, recorder):
    from harness import loop
    from tests.test_status import StopAfter

    with pytest.raises(KeyboardInterrupt):
        loop.run(tiny_spec(), recorder, executor=StopAfter(3), trackers=[PluginSpec(name="recorder")])
    assert Recorder.calls[-1] == ("finish", True)
    assert not [p for p in recorder.pm.get_plugins() if isinstance(p, Tracker)]  # detached after the run
