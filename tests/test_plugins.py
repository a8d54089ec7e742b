"""The plugin manager and the registries: entry points, loud failures, did-you-mean, lazy imports."""

from __future__ import annotations

import subprocess
import sys

import pluggy
import pytest

from harness.errors import UnknownPluginError
from harness.hookspecs import hookimpl
from harness.interfaces import Generator
from harness.plugin.manager import create_plugin_manager
from harness.plugin.registry import DuplicatePluginError, Registry


def test_builtins_register_through_our_own_entry_points(plugins):
    infos = {i.name: i for i in plugins.infos}
    for kind in ("datasets", "generators", "classifiers", "filters"):
        assert infos[kind].distribution == "bench-bias-loops"
        assert f"register_{kind}" in infos[kind].hooks
    assert "colored-mnist" in plugins.registry("datasets").names()
    assert "dcgan" in plugins.registry("generators").names()


def test_registering_a_name_twice_raises():
    class Twice:
        @hookimpl
        def register_generators(self, register):
            register("dcgan", "somewhere:Else")

    with pytest.raises(DuplicatePluginError, match="registered twice"):
        create_plugin_manager(extra_plugins=(Twice(),))


def test_misspelled_hook_fails_loudly():
    class Typo:
        @hookimpl
        def register_generator(self, register):  # missing "s"
            pass

    with pytest.raises(pluggy.PluginValidationError):
        create_plugin_manager(extra_plugins=(Typo(),))


def test_unknown_name_says_did_you_mean_and_lists_choices(plugins):
    with pytest.raises(UnknownPluginError) as err:
        plugins.registry("classifiers").get("lenett")
    assert "Did you mean 'lenet'" in str(err.value) and "timm:<name>" in str(err.value)


def test_family_names_resolve_with_their_variant(plugins):
    cls, variant = plugins.registry("classifiers").get("timm:resnet18")
    assert variant == "resnet18"
    with pytest.raises(UnknownPluginError):
        plugins.registry("classifiers").get("timm:")


def test_lazy_targets_must_subclass_the_kind():
    reg = Registry("generators", Generator)
    reg.register("odd", "harness.errors:BenchError")
    with pytest.raises(TypeError, match="not a subclass"):
        reg.get("odd")
    reg.register("gone", "no_such_module_xyz:Thing")
    with pytest.raises(UnknownPluginError, match="cannot be imported"):
        reg.get("gone")


def test_a_broken_entry_point_is_reported_not_fatal(monkeypatch):
    import importlib.metadata as md

    broken = md.EntryPoint(name="broken", value="no_such_module_xyz", group="bench")
    real = md.entry_points

    def fake(**kw):
        eps = list(real(**kw))
        return eps + [broken] if kw.get("group") == "bench" else eps

    monkeypatch.setattr(md, "entry_points", fake)
    pm = create_plugin_manager()
    failed = {i.name: i for i in pm.failed}
    assert "broken" in failed and "ModuleNotFoundError" in failed["broken"].error
    assert "dcgan" in pm.registry("generators").names()  # the rest still works


@pytest.mark.parametrize("argv", [["--help"], ["list", "generators"], ["plugins"]])
def test_cli_without_torch(argv):
    code = (
        "import sys; from typer.testing import CliRunner; from harness.cli import app; "
        f"r = CliRunner().invoke(app, {argv!r}); assert r.exit_code == 0, r.output; "
        "assert 'torch' not in sys.modules, 'torch was imported'"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
