"""The public API: what a plugin and a notebook import from ``harness``, kept light, and plugins' CLI commands."""

from __future__ import annotations

import ast
import subprocess
import sys

import pytest
import typer
from typer.testing import CliRunner

import harness
from tests.conftest import REPO, tiny_config

PUBLIC = ("Dataset", "Generator", "Classifier", "Filter", "Options", "Runtime", "FilterContext", "DatasetBundle",
          "hookimpl", "ImageSet", "RunSpec", "run", "load_results", "BenchError", "__version__")


def python(code: str) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, cwd=REPO, timeout=120, check=False)


def test_public_names_import_from_harness():
    """(A fresh interpreter imports them in tests/test_architecture.py.)"""
    assert sorted(harness.__all__) == sorted(PUBLIC)
    for name in PUBLIC:
        assert getattr(harness, name) is not None
    assert harness.Generator.__module__ == "harness.interfaces" and harness.run.__module__ == "harness.api"
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        harness.nope  # noqa: B018


@pytest.mark.parametrize("module", ["harness", "harness.cli"])
def test_importing_the_package_and_the_cli_loads_no_torch(module):
    """``bench --help`` imports harness.cli, which imports harness: the torch-backed names load on first use."""
    r = python(f"import sys, {module}; assert 'torch' not in sys.modules, sorted(m for m in sys.modules "
               f"if m.startswith('torch'))[:5]; import harness; harness.ImageSet; assert 'torch' in sys.modules")
    assert r.returncode == 0, r.stderr
    r = subprocess.run([sys.executable, "-X", "importtime", "-c", "import harness.cli"], capture_output=True, check=False,
                       text=True, cwd=REPO, timeout=120)
    assert r.returncode == 0 and "| harness.cli" in r.stderr
    assert [line for line in r.stderr.splitlines() if "torch" in line] == []


def test_the_example_plugin_imports_from_harness_only():
    for path in sorted((REPO / "tests" / "example_plugin").rglob("*.py")):
        for node in ast.walk(ast.parse(path.read_text())):
            if isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "harness":
                assert node.module == "harness", f"{path.name}: from {node.module} import …"
            if isinstance(node, ast.Import):
                assert all(a.name.split(".")[0] != "harness" or a.name == "harness" for a in node.names), path.name


def test_notebook_run_and_load_results(tmp_path):
    """A notebook runs a plain dict and reads the results file back, validated, with the same numbers."""
    config = tiny_config(loop={"generations": 1, "samples_per_generation": 100}, out=str(tmp_path / "runs"),
                         device="cpu", precision="fp32")
    from harness.api import build
    from harness.publish.results import Results

    results = harness.run(config, preset="quick")
    assert isinstance(results, Results)
    spec = build(config)
    assert spec.run_dir.parent == tmp_path / "runs" and results.run_id == spec.run_id
    loaded = harness.load_results(spec.run_dir / "results.json")
    assert loaded == results and loaded.status == "complete" and loaded.last_generation == 1
    assert [g.generation for g in loaded.generations] == [0, 1]
    again = harness.run(spec)  # a RunSpec works too; the finished run resumes to the same results
    assert again.model_dump(exclude={"timing"}) == results.model_dump(exclude={"timing"})


def test_run_checks_the_spec_before_any_work(tmp_path):
    with pytest.raises(harness.BenchError, match="unknown preset 'fast'"):
        harness.run({"out": str(tmp_path)}, preset="fast")
    with pytest.raises(harness.BenchError, match="generator"):
        harness.run({"generator": {"name": "no-such-gan"}, "out": str(tmp_path)})
    with pytest.raises(harness.BenchError, match="a run takes a RunSpec"):
        harness.run(42)  # type: ignore[arg-type]
    assert not list(tmp_path.iterdir())


def test_build_layers_the_paper_defaults_of_the_dataset(tmp_path):
    from harness.api import build

    quick = build({"out": str(tmp_path)})
    assert quick.preset == "quick" and quick.filter.keep == 0.9
    paper = build({"dataset": {"name": "cifar20"}, "out": str(tmp_path)}, preset="paper")
    assert (paper.filter.keep, paper.loop.generations) == (0.7, 10)
    cfg = tmp_path / "spec.json"
    cfg.write_text('{"loop": {"generations": 3}}')
    assert build(cfg).loop.generations == 3


# ------------------------------------------------------------------ plugins add commands


class Hello:
    @harness.hookimpl
    def register_commands(self, app):
        @app.command("hello")
        def hello(name: str) -> None:
            if name == "nobody":
                raise harness.BenchError("nobody is there")
            typer.echo(f"hello {name}")


class Broken:
    @harness.hookimpl
    def register_commands(self, app):
        app.command("half")(lambda: None)
        raise RuntimeError("boom")


class Greedy:
    @harness.hookimpl
    def register_commands(self, app):
        app.command("run")(lambda: None)


def test_plugin_commands_are_added_and_a_broken_plugin_is_one_line(monkeypatch, capsys):
    from harness import cli
    from harness.plugin.manager import create_plugin_manager

    app = typer.Typer()

    @app.command("run")
    def run() -> None: ...

    plugins = create_plugin_manager(load_entry_points=False, extra_plugins=(Broken(), Greedy(), Hello()))
    monkeypatch.setattr(cli, "app", app)
    monkeypatch.setattr(cli, "default_plugins", lambda: plugins)
    cli._register_plugin_commands()
    err = capsys.readouterr().err
    assert "plugin Broken could not add its commands: RuntimeError: boom" in err
    assert "plugin Greedy: its command(s) run left out, the name is taken" in err
    assert len(err.strip().splitlines()) == 2
    names = [c.name for c in app.registered_commands]
    assert names == ["run", "hello"]
    r = CliRunner().invoke(app, ["hello", "world"])
    assert r.exit_code == 0 and r.stdout == "hello world\n"
    r = CliRunner().invoke(app, ["hello", "nobody"])  # a plugin's BenchError: one line, exit 2
    assert r.exit_code == 2 and r.stderr.strip() == "error: nobody is there"


def test_bench_help_lists_plugin_commands_without_torch():
    code = ("import sys; from typer.testing import CliRunner; from harness.cli import app; "
            "r = CliRunner().invoke(app, ['--help']); assert r.exit_code == 0, r.output; "
            "assert 'review' in r.stdout, r.stdout; assert 'torch' not in sys.modules")
    r = python(code)
    assert r.returncode == 0, r.stderr
