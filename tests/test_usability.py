"""Small things a user trips on: file modes that honour the umask, ``bench --version``, "did you mean" for a
misspelled spec key, ``--dry-run`` checking the data, and help texts free of reStructuredText markup."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest
import typer
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import tiny_config


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


@pytest.fixture
def umask():
    def set_umask(mask: int) -> None:
        os.umask(mask)

    old = os.umask(0o022)
    os.umask(old)
    yield set_umask
    os.umask(old)


@pytest.mark.parametrize("mask, expected", [(0o022, 0o644), (0o027, 0o640), (0o077, 0o600)])
def test_atomic_writes_honour_the_umask(tmp_path, umask, mask, expected):
    from harness.engine.rundir import save_tensors, write_json

    umask(mask)
    write_json(tmp_path / "a.json", {"x": 1})
    import torch

    save_tensors(tmp_path / "t.safetensors", {"x": torch.zeros(2)})
    assert mode(tmp_path / "a.json") == expected and mode(tmp_path / "t.safetensors") == expected


def test_a_run_its_report_and_the_site_are_readable_by_others(tmp_path, umask):
    umask(0o022)
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_config(loop={"generations": 1})))
    r = bench("run", "--config", cfg, "--out", tmp_path / "runs", "--quiet")
    assert r.exit_code == 0, r.output
    run_dir = Path(r.stdout.strip()).parent
    files = [p for p in run_dir.rglob("*") if p.is_file()]
    assert {p.name for p in files} >= {"results.json", "spec.json", "run.log", "result.json", "metrics.png"}
    assert {str(p.relative_to(run_dir)): oct(mode(p)) for p in files if mode(p) != 0o644} == {}

    entries = tmp_path / "entries"
    assert bench("leaderboard", "submit", run_dir / "results.json", "--dir", entries).exit_code == 0
    r = bench("leaderboard", "render", "--dir", entries, "--out", tmp_path / "site")
    assert r.exit_code == 0, r.output
    site = [p for p in (tmp_path / "site").rglob("*") if p.is_file()]
    assert site and all(mode(p) == 0o644 for p in site) and all(mode(p) == 0o644 for p in entries.iterdir())


def test_version():
    from harness import __version__

    r = bench("--version")
    assert r.exit_code == 0 and r.stdout == f"bench {__version__}\n"


@pytest.mark.parametrize("over, hint", [
    ({"loop": {"generatoins": 3}}, "(did you mean loop.generations?)"),
    ({"metrics": {"oracle": {"max_epoch": 2}}}, "(did you mean metrics.oracle.max_epochs?)"),
    ({"classifiers": [{"name": "lenet", "optoins": {}}]}, "(did you mean classifiers.0.options?)"),
    ({"filter": {"name": "none", "kep": 0.5}}, "(did you mean filter.keep?)"),
])
def test_a_misspelled_spec_key_gets_a_suggestion(over, hint):
    from harness.errors import ConfigError
    from harness.specs import build_spec

    with pytest.raises(ConfigError) as err:
        build_spec("quick", over)
    assert hint in str(err.value) and "\n" not in str(err.value)


def test_a_suggestion_on_the_command_line_and_none_for_a_far_key():
    r = bench("run", "--set", "loop.generatoins=3", "--dry-run")
    assert r.exit_code == 2 and "did you mean loop.generations?" in r.stderr
    assert len(r.stderr.strip().splitlines()) == 1
    r = bench("run", "--set", "loop.zzz=3", "--dry-run")
    assert r.exit_code == 2 and "loop.zzz" in r.stderr and "did you mean" not in r.stderr


def test_dry_run_checks_the_data(tmp_path):
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_config()))
    r = bench("run", "--config", cfg, "--dry-run")
    assert r.exit_code == 0, r.output
    assert "train" in json.loads(r.stdout)["data"]
    r = bench("run", "--config", cfg, "--dry-run", "--set", "dataset.options.source=torchvision",
              "--data-root", tmp_path / "empty")
    assert r.exit_code == 2 and r.stdout == ""
    assert "MNIST" in r.stderr and len(r.stderr.strip().splitlines()) == 1


def _commands(command, path=()):
    yield path, command
    for name, sub in getattr(command, "commands", {}).items():
        yield from _commands(sub, (*path, name))


def test_help_texts_have_no_restructuredtext_markup():
    command = typer.main.get_command(app)
    texts = []
    for path, cmd in _commands(command):
        texts.append((path, cmd.help or ""))
        texts += [((*path, p.name), getattr(p, "help", None) or "") for p in cmd.params]
    assert len(texts) > 40
    marked = [(p, t) for p, t in texts if "``" in t or ":class:" in t or ":func:" in t or ":meth:" in t]
    assert marked == []


def test_an_unexpected_error_is_not_hidden_by_the_error_handling(monkeypatch, capsys):
    # main() handles click's exceptions; any other error propagates as itself (not an AttributeError of the handler)
    import pytest

    from harness import cli

    def boom(**_):
        raise ZeroDivisionError("boom")

    monkeypatch.setattr(cli, "app", boom)
    with pytest.raises(ZeroDivisionError):
        cli.main()


def _needs_shared_data(path: Path) -> bool:
    import tomllib

    spec = tomllib.loads(path.read_text())
    spec = spec.get("base", spec)
    return spec.get("dataset", {}).get("options", {}).get("source") == "torchvision"


@pytest.mark.parametrize("path", sorted((Path(__file__).parents[1] / "configs").glob("*.toml")), ids=lambda p: p.stem)
def test_every_committed_config_resolves_and_finds_its_data(path):
    """The configs the docs tell researchers to run (and the leaderboard's reproduce commands name) stay valid as the
    spec evolves: each resolves, plans and passes ``--dry-run``'s data check."""
    from tests.conftest import shared_data_root

    sweep = "\n[base]" in path.read_text()
    args = ["sweep", path, "--dry-run"] if sweep else ["run", "--config", path, "--dry-run"]
    if _needs_shared_data(path):
        root = shared_data_root()
        if not (root / "MNIST").is_dir():
            pytest.skip(f"{path.name} reads torchvision MNIST: no MNIST folder under {root} (set BENCH_DATA_ROOT)")
        if not sweep:  # a sweep names its data_root in the file
            args += ["--data-root", root]
    r = bench(*args)
    assert r.exit_code == 0, r.output
    shown = json.loads(r.stdout)
    if sweep:
        assert shown["runs"] and all(run["units"] > 0 for run in shown["runs"])
    else:
        assert shown["units"] and "train" in shown["data"]
