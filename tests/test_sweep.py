"""Sweeps without Ray: grid and list expansion, how each point becomes a resolved run, errors that name the run,
``bench sweep --dry-run``, and a small sweep run end to end on the local executor (a failing run does not stop
the others; the same command again resumes)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.errors import ConfigError, UnknownPluginError
from harness.scale.sweep import build_sweep, expand_grid, flatten, load_sweep, nest, parse_sweep
from tests.conftest import tiny_config

sys.path.insert(0, str(Path(__file__).parent / "example_plugin"))
import bench_example  # noqa: E402


def test_grid_is_the_cartesian_product_first_path_slowest():
    points = expand_grid({"loop.mix_ratio": [0.25, 0.5], "seeds": [[0], [1]], "filter.name": ["none"]})
    assert points == [
        {"loop.mix_ratio": 0.25, "seeds": [0], "filter.name": "none"},
        {"loop.mix_ratio": 0.25, "seeds": [1], "filter.name": "none"},
        {"loop.mix_ratio": 0.5, "seeds": [0], "filter.name": "none"},
        {"loop.mix_ratio": 0.5, "seeds": [1], "filter.name": "none"},
    ]


@pytest.mark.parametrize("grid", [{}, {"loop.mix_ratio": 0.5}, {"loop.mix_ratio": []}, ["loop.mix_ratio"]])
def test_a_bad_grid_is_a_config_error(grid):
    with pytest.raises(ConfigError, match="grid"):
        expand_grid(grid)


def test_dotted_paths_and_nested_mappings_mean_the_same():
    assert nest({"loop.mix_ratio": 0.5, "loop": {"generations": 2}, "filter.name": "random"}) == {
        "loop": {"mix_ratio": 0.5, "generations": 2}, "filter": {"name": "random"}}
    assert flatten({"loop": {"mix_ratio": 0.5}, "seeds": [0, 1], "generator": {"options": {}}}) == {
        "loop.mix_ratio": 0.5, "seeds": [0, 1], "generator.options": {}}
    with pytest.raises(ConfigError, match="not a spec path"):
        nest({"loop..mix_ratio": 0.5})


def test_runs_list_entries_may_be_dotted_or_nested():
    cfg = parse_sweep({"base": {"preset": "quick"},
                       "runs": [{"loop.mix_ratio": 0.25}, {"filter": {"name": "random", "keep": 0.5}}, {}]})
    assert cfg.points == ({"loop.mix_ratio": 0.25}, {"filter.name": "random", "filter.keep": 0.5}, {})
    assert cfg.base == {"preset": "quick"} and cfg.ray == {}


@pytest.mark.parametrize("data, match", [
    ({"base": {}}, "either grid"),
    ({"grid": {"seeds": [[0]]}, "runs": [{}]}, "either grid"),
    ({"grid": {"seeds": [[0]]}, "runz": []}, "unknown keys"),
    ({"runs": []}, "non-empty list"),
    ({"runs": [1, 2]}, "non-empty list"),
    ({"base": [], "runs": [{}]}, "base must be a mapping"),
    ({"runs": [{}], "ray": {"gpus": 1}}, "unknown ray options"),
])
def test_a_bad_sweep_config_is_a_config_error(data, match):
    with pytest.raises(ConfigError, match=match):
        parse_sweep(data)


def test_each_point_is_a_resolved_run_with_its_own_directory(tmp_path, plugins):
    base = tiny_config(filter={"name": "uncertainty", "keep": 0.8, "options": {"measure": "margin"}})
    cfg = parse_sweep({"base": base, "grid": {"loop.mix_ratio": [0.25, 0.5], "filter.name": ["uncertainty", "random"]},
                       "ray": {"gpus_per_unit": 0.5}})
    runs = build_sweep(cfg, plugins, out=tmp_path / "runs")
    assert [r.index for r in runs] == [1, 2, 3, 4]
    assert len({r.run_dir for r in runs}) == 4 and all(r.run_dir.parent == tmp_path / "runs" for r in runs)
    assert [(r.spec.loop.mix_ratio, r.spec.filter.name) for r in runs] == [
        (0.25, "uncertainty"), (0.25, "random"), (0.5, "uncertainty"), (0.5, "random")]
    assert runs[0].spec.filter.options["measure"] == "margin"  # resolved: the plugin's defaults filled in
    assert runs[0].spec.filter.options["method"] == "entropy"
    assert "measure" not in runs[1].spec.filter.options  # another filter drops the base filter's options
    assert runs[1].spec.filter.keep == 0.8 and runs[1].spec.generator == runs[0].spec.generator
    assert runs[0].label == 'loop.mix_ratio=0.25, filter.name="uncertainty"'
    assert runs[0].generations == 3 and cfg.ray == {"gpus_per_unit": 0.5}
    assert not (tmp_path / "runs").exists()  # building runs nothing


def test_the_base_may_name_a_preset_and_a_point_may_change_it(plugins):
    cfg = parse_sweep({"base": {"preset": "quick", "loop": {"generations": 2}},
                       "runs": [{}, {"seeds": [3, 4]}, {"preset": "paper", "loop.generations": 2}]})
    quick, seeds, paper = build_sweep(cfg, plugins)
    assert quick.spec.preset == "quick" and quick.spec.loop.generations == 2 and quick.spec.seeds == (0,)
    assert seeds.spec.seeds == (3, 4) and seeds.generations == 6
    assert paper.spec.preset == "paper" and paper.spec.loop.generations == 2 and paper.spec.seeds == (0, 1, 2)


def test_errors_name_the_run_and_identical_runs_are_refused(plugins):
    with pytest.raises(ConfigError, match=r"sweep run 2 \(loop.mix_ratio=-1\): invalid spec: loop.mix_ratio"):
        build_sweep(parse_sweep({"base": tiny_config(), "grid": {"loop.mix_ratio": [0.5, -1]}}), plugins)
    with pytest.raises(UnknownPluginError, match=r"sweep run 1 \(generator.name=\"dcgna\"\).*dcgan"):
        build_sweep(parse_sweep({"base": tiny_config(), "runs": [{"generator.name": "dcgna"}]}), plugins)
    with pytest.raises(ConfigError, match="sweep runs 1 and 2 are the same run"):  # device is not in the hash
        build_sweep(parse_sweep({"base": tiny_config(), "grid": {"device": ["cpu", "auto"]}}), plugins)


def test_sweep_files_in_every_format(tmp_path):
    import yaml

    data = {"base": {"preset": "quick"}, "grid": {"loop.mix_ratio": [0.25, 0.5]}}
    (tmp_path / "s.json").write_text(json.dumps(data))
    (tmp_path / "s.yaml").write_text(yaml.safe_dump(data))
    (tmp_path / "s.toml").write_text('base = { preset = "quick" }\n[grid]\n"loop.mix_ratio" = [0.25, 0.5]\n')
    parsed = [load_sweep(tmp_path / f"s.{ext}") for ext in ("json", "yaml", "toml")]
    assert parsed[0] == parsed[1] == parsed[2]
    assert parsed[0].points == ({"loop.mix_ratio": 0.25}, {"loop.mix_ratio": 0.5})


def write_sweep(tmp_path: Path, data: dict) -> Path:
    path = tmp_path / "sweep.json"
    path.write_text(json.dumps(data))
    return path


def test_dry_run_lists_the_runs_and_runs_nothing(tmp_path):
    cfg = write_sweep(tmp_path, {"base": tiny_config(), "grid": {"seeds": [[0], [1]]}})
    r = CliRunner().invoke(app, ["sweep", str(cfg), "--dry-run", "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    listed = json.loads(r.stdout)["runs"]
    assert [run["overrides"] for run in listed] == [{"seeds": [0]}, {"seeds": [1]}]
    # oracle, classifier at t = 0, then per generation: generator, sample, filter, mix, classifier, control, evaluate
    assert all(run["run_id"].startswith("colored-mnist-dcgan-") and run["units"] == 16 and run["units_done"] == 0
               for run in listed)
    assert listed[0]["run_id"] != listed[1]["run_id"]
    assert not (tmp_path / "runs").exists()
    bad = CliRunner().invoke(app, ["sweep", str(write_sweep(tmp_path, {"base": {}, "grid": {"seeds": 1}}))])
    assert bad.exit_code == 2 and bad.stderr.startswith("error: sweep: grid.seeds must be a non-empty list")


def test_a_local_sweep_runs_every_run_and_resumes(tmp_path, monkeypatch):
    """Two runs one after the other; a third fails (missing data) without stopping them; exit 2; rerun skips."""
    import harness.plugin.manager
    from harness.engine.plan import plan
    from harness.plugin.manager import create_plugin_manager
    from harness.publish.results import load_results

    monkeypatch.setattr(harness.plugin.manager, "default_plugins",
                        lambda: create_plugin_manager(extra_plugins=(bench_example,)))
    base = tiny_config(generator={"name": "class-mean"}, dataset={"options": {"train_size": 200, "test_size": 100}},
                       loop={"generations": 1, "samples_per_generation": 100})
    cfg = write_sweep(tmp_path, {"base": base, "runs": [
        {"loop.mix_ratio": 0.25}, {"loop.mix_ratio": 0.5},
        {"dataset.options.source": "torchvision", "data_root": str(tmp_path / "nowhere")}]})
    out = tmp_path / "runs"
    r = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out)])
    assert r.exit_code == 2, r.output
    paths = [Path(p) for p in r.stdout.split()]
    assert len(paths) == 2 and all(load_results(p).status == "complete" for p in paths)
    assert "sweep: 3 runs" in r.stderr and "complete" in r.stderr
    assert "1 of 3 runs failed (above); fix the cause and run the same command again" in r.stderr
    assert "MNIST" in r.stderr  # the failed run's own one-line error

    def mtimes():
        return {(p, u.key): (u.directory(p.parent) / "result.json").stat().st_mtime_ns
                for p in paths for u in plan(_spec(p))}

    before = mtimes()
    again = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(out), "--quiet"])
    assert again.exit_code == 2 and [Path(p) for p in again.stdout.split()] == paths
    assert mtimes() == before  # nothing ran again


def _spec(results_path: Path):
    from harness.specs import RunSpec

    return RunSpec.model_validate(json.loads(results_path.read_text())["spec"])
