"""The ray executor on a private local Ray instance (2 CPUs, loopback, no dashboard): a sweep on Ray gives the
same results files as on ``local``; a unit that crashes (an exception, or its worker process dying) is retried;
a user's error surfaces as it is, unretried; a stopped sweep resumes, skipping finished units."""

from __future__ import annotations

import json
import sys
import textwrap
from pathlib import Path

import pytest

from tests.conftest import tiny_config

# A plugin module the Ray workers import (its folder goes on their PYTHONPATH): a class-mean generator that can
# crash once, die once or refuse to run, and a hook that logs finished generations in the driver.
PLUGIN = '''
import os
from pathlib import Path

import torch

from harness.errors import ConfigError
from harness.hookspecs import hookimpl
from harness.interfaces import Generator, Options


class FlakyOptions(Options):
    log: str | None = None  # every fit appends its unit ("seed-0/gen-001/generator") and pid
    fail_once: str | None = None  # a marker: the first fit that finds it missing creates it and raises
    die_once: str | None = None  # a marker: the first fit that finds it missing creates it and kills its process
    block: str | None = None  # while this file exists, every fit raises a ConfigError (a user's mistake)


class FlakyMean(Generator):
    Options = FlakyOptions

    def __init__(self, options, **kwargs):
        super().__init__(options, **kwargs)
        shape = (self.num_classes, self.channels, self.image_size, self.image_size)
        self.mean, self.std = torch.zeros(shape), torch.zeros(shape)

    def fit(self, data):
        o = self.options
        if o.log:
            with open(o.log, "a") as fh:
                fh.write(f"{'/'.join(Path(self.runtime.workdir).parts[-4:-1])} {os.getpid()}\\n")
        if o.block and Path(o.block).exists():
            raise ConfigError(f"blocked by {o.block}")
        if o.fail_once and not Path(o.fail_once).exists():
            Path(o.fail_once).touch()
            raise RuntimeError("injected failure")
        if o.die_once and not Path(o.die_once).exists():
            Path(o.die_once).touch()
            os._exit(1)
        x = data.images.float()
        for c in range(self.num_classes):
            sel = x[data.labels == c]
            if len(sel):
                self.mean[c], self.std[c] = sel.mean(0), sel.std(0, unbiased=False)
        return {"images_seen": len(data)}

    def sample(self, labels):
        x = self.mean[labels] + torch.randn((len(labels), *self.mean.shape[1:])) * self.std[labels]
        return x.round().clamp(0, 255).to(torch.uint8)

    def state_dict(self):
        return {"mean": self.mean, "std": self.std}

    def load_state_dict(self, state):
        self.mean, self.std = state["mean"].clone(), state["std"].clone()


@hookimpl
def register_generators(register):
    register("flaky-mean", "bench_ray_testplugin:FlakyMean")


@hookimpl
def on_generation_end(seed, generation, record, run_dir):
    with open(run_dir / "generations.log", "a") as fh:
        fh.write(f"{seed} {generation}\\n")
'''


def base(**over):
    """tiny_config, smaller still: one seed, one classifier, the flaky class-mean generator."""
    from harness.specs import deep_merge

    small = {"generator": {"name": "flaky-mean"}, "dataset": {"options": {"train_size": 200, "test_size": 100}},
             "loop": {"generations": 2, "samples_per_generation": 100}}
    return tiny_config(**deep_merge(small, over))


@pytest.fixture(scope="module")
def test_plugin(tmp_path_factory):
    folder = tmp_path_factory.mktemp("plugin")
    (folder / "bench_ray_testplugin.py").write_text(textwrap.dedent(PLUGIN))
    sys.path.insert(0, str(folder))
    import bench_ray_testplugin

    yield bench_ray_testplugin
    sys.path.remove(str(folder))
    sys.modules.pop("bench_ray_testplugin", None)


@pytest.fixture(scope="module")
def plugins(test_plugin):
    from harness.plugin.manager import create_plugin_manager

    return create_plugin_manager(extra_plugins=(test_plugin,))


@pytest.fixture(scope="module")
def ray_executor(plugins):
    """One private Ray instance for the module (starting one takes ~10 s here)."""
    pytest.importorskip("ray")
    from harness.scale.executor import RayExecutor

    executor = RayExecutor(num_cpus=2, max_retries=2, poll_s=0.1)
    executor.start(plugins)  # the test plugin's folder goes on the workers' PYTHONPATH
    yield executor
    executor.close()


def sweep_of(tmp_path, plugins, data, out):
    from harness.scale.sweep import build_sweep, parse_sweep

    return build_sweep(parse_sweep(data), plugins, out=tmp_path / out)


def strip_timing(path: Path) -> dict:
    data = json.loads(path.read_text())
    data.pop("timing")
    return data


# --------------------------------------------------------------------------------------------------- no Ray


def test_without_ray_the_ray_executor_is_a_one_line_config_error(monkeypatch, tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app
    from harness.errors import ConfigError
    from harness.scale.executor import create_executor

    monkeypatch.setitem(sys.modules, "ray", None)  # `import ray` raises ImportError
    with pytest.raises(ConfigError, match=r"the ray executor needs Ray: pip install -e '\.\[ray\]'"):
        create_executor("ray", ray_address=None)
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_config()))
    r = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--executor", "ray"])
    assert r.exit_code == 2
    lines = r.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: the ray executor needs Ray: pip install -e '.[ray]'")
    assert not (tmp_path / "runs").exists()


def test_unit_resources_follow_the_stage_and_the_device():
    pytest.importorskip("ray")
    from harness.errors import ConfigError
    from harness.scale.executor import RayExecutor, _worker_device
    from harness.engine.plan import Unit

    ex = RayExecutor(gpus_per_unit=0.5, stage_resources={"evaluate": {"num_cpus": 2}})
    assert ex.task_options(Unit("classifier", 1, 0, "lenet"), gpu=True) == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert ex.task_options(Unit("mix", 1, 0), gpu=True) == {"num_cpus": 1.0, "num_gpus": 0}
    assert ex.task_options(Unit("generator", 1, 0), gpu=False) == {"num_cpus": 1.0, "num_gpus": 0}
    assert ex.task_options(Unit("evaluate", 1, 0), gpu=True) == {"num_cpus": 2, "num_gpus": 0.5}
    assert _worker_device("cuda:3", "classifier", ["0"]) == "cuda"  # Ray shows a task only its own GPU
    assert _worker_device("auto", "classifier", ["1"]) == "cuda"
    assert _worker_device("cuda", "mix", []) == "cpu"
    assert _worker_device("cpu", "classifier", []) == "cpu"
    with pytest.raises(ConfigError, match="unknown stages"):
        RayExecutor(stage_resources={"train": {"num_gpus": 1}})


# --------------------------------------------------------------------------------------------------- on Ray


def test_a_sweep_on_ray_gives_the_same_results_files_as_local(tmp_path, plugins, ray_executor):
    import torch

    from harness.scale.executor import LocalExecutor
    from harness.scale.sweep import run_sweep

    data = {"base": base(), "grid": {"loop.mix_ratio": [0.25, 0.5]}}
    on_ray = run_sweep(sweep_of(tmp_path, plugins, data, "ray"), plugins, executor=ray_executor)
    threads = torch.get_num_threads()
    # Ray gives each 1-CPU task one thread; CPU sums (and the recorded thread count) depend on it, so the local
    # executor runs its units with one thread too (else it would take every CPU of the process: no OMP_NUM_THREADS
    # in CI)
    local = run_sweep(sweep_of(tmp_path, plugins, data, "local"), plugins, executor=LocalExecutor(torch_threads=1))
    assert torch.get_num_threads() == threads  # the executor restored the process's count
    assert [o.status for o in on_ray] == [o.status for o in local] == ["complete", "complete"]
    for r, l in zip(on_ray, local, strict=True):
        assert r.run.run_id == l.run.run_id and r.run.run_dir != l.run.run_dir
        assert strip_timing(r.run.results_path) == strip_timing(l.run.results_path)
        # the on_generation_end hook ran in the driver, once per (seed, generation) block, generations in order
        assert (r.run.run_dir / "generations.log").read_text().split("\n")[:-1] == ["0 0", "0 1", "0 2"]


def test_a_unit_that_crashes_or_whose_worker_dies_is_retried(tmp_path, plugins, ray_executor):
    from harness import loop
    from harness.specs import build_spec, resolve_spec

    log, fail, die = tmp_path / "fits.log", tmp_path / "fail-once", tmp_path / "die-once"
    options = {"log": str(log), "fail_once": str(fail), "die_once": str(die)}
    spec = resolve_spec(build_spec(None, base(generator={"name": "flaky-mean", "options": options},
                                              loop={"generations": 1}, out=str(tmp_path / "runs"))), plugins)
    results = loop.run(spec, plugins, executor=ray_executor)
    assert results.status == "complete" and fail.exists() and die.exists()
    attempts = log.read_text().splitlines()
    assert [a.split()[0] for a in attempts] == ["seed-0/gen-001/generator"] * 3  # raised, died, succeeded
    assert len({a.split()[1] for a in attempts[1:]}) == 2  # the retry after the death ran in a new process


def test_a_user_error_is_not_retried_and_a_stopped_sweep_resumes(tmp_path, plugins, ray_executor):
    from harness.errors import ConfigError
    from harness.engine.plan import plan
    from harness.scale.sweep import run_sweep

    log, block = tmp_path / "fits.log", tmp_path / "block"
    block.touch()
    data = {
        "base": base(loop={"generations": 1}),
        "runs": [{"generator.options.log": str(log)},
                 {"generator.options.log": str(log), "generator.options.block": str(block)}],
    }
    runs = sweep_of(tmp_path, plugins, data, "runs")
    first = run_sweep(runs, plugins, executor=ray_executor)
    assert first[0].status == "complete"
    assert first[1].status == "failed" and type(first[1].error) is ConfigError
    assert str(first[1].error) == f"blocked by {block}"
    assert log.read_text().count("\n") == 2  # one fit per run: the user's error was not retried
    assert first[1].results is not None and first[1].results.status == "partial"

    def finished(run):
        return {u.key: (u.directory(run.run_dir) / "result.json").stat().st_mtime_ns
                for u in plan(run.spec) if u.is_done(run.run_dir)}

    before = [finished(r) for r in runs]
    assert "oracle" in before[1] and "seed-0/gen-001/generator" not in before[1]
    block.unlink()
    second = run_sweep(runs, plugins, executor=ray_executor)
    assert [o.status for o in second] == ["complete", "complete"]
    after = [finished(r) for r in runs]
    for b, a in zip(before, after, strict=True):
        assert {k: a[k] for k in b} == b  # every unit finished before was skipped, not run again
    assert len(after[1]) == len(plan(runs[1].spec))
    assert log.read_text().count("\n") == 3  # only run 2's generator ran again


def test_a_named_unit_may_ask_for_a_gpu_fraction_of_its_own():
    pytest.importorskip("ray")
    from harness.engine.plan import Unit
    from harness.errors import ConfigError
    from harness.scale.executor import RayExecutor

    ex = RayExecutor(stage_resources={"classifier": {"num_gpus": 0.5}, "classifier:lenet": {"num_gpus": 0.25}})
    assert ex.task_options(Unit("classifier", 1, 0, "lenet"), gpu=True) == {"num_cpus": 1.0, "num_gpus": 0.25}
    assert ex.task_options(Unit("classifier", 1, 0, "vgg19"), gpu=True) == {"num_cpus": 1.0, "num_gpus": 0.5}
    assert ex.task_options(Unit("classifier", 1, 0, "lenet"), gpu=False)["num_gpus"] == 0  # a CPU run
    for bad in ({"classifier:": {"num_gpus": 1}}, {"train:lenet": {"num_gpus": 1}}):
        with pytest.raises(ConfigError, match="unknown stages"):
            RayExecutor(stage_resources=bad)
    with pytest.raises(ConfigError, match="numbers >= 0"):
        RayExecutor(stage_resources={"classifier:lenet": {"num_gpus": -0.5}})
