"""The plugin factory: the one place a plugin spec becomes an instance, its options validated once."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest
from pydantic import field_validator

from harness import hookimpl
from harness.errors import ConfigError, UnknownPluginError
from harness.interfaces import Filter, Options
from harness.plugin import factory
from harness.plugin.manager import create_plugin_manager
from harness.specs import FilterSpec, PluginSpec

HARNESS = Path(__file__).resolve().parents[1] / "harness"


class CountingOptions(Options):
    threshold: float = 0.5

    @field_validator("threshold")
    @classmethod
    def _count(cls, value: float) -> float:
        CountingFilter.validations += 1
        return value


class CountingFilter(Filter):
    """A filter that counts how often its options are validated and what its preflight saw."""

    Options = CountingOptions
    validations = 0
    preflights: list[CountingOptions] = []

    @classmethod
    def preflight(cls, options: CountingOptions) -> None:
        cls.preflights.append(options)

    def score(self, candidates, context):  # pragma: no cover - never run here
        raise NotImplementedError


class CountingPlugin:
    @staticmethod
    @hookimpl
    def register_filters(register):
        register("counting", CountingFilter)


@pytest.fixture
def counting():
    CountingFilter.validations, CountingFilter.preflights = 0, []
    return create_plugin_manager(extra_plugins=(CountingPlugin,))


def test_create_validates_the_options_once_and_builds_the_plugin(counting):
    plugin = factory.create("filters", FilterSpec(name="counting", options={"threshold": 0.25}), plugins=counting)
    assert CountingFilter.validations == 1
    assert isinstance(plugin, CountingFilter) and plugin.options.threshold == 0.25


def test_wrong_options_are_one_config_error_line(counting):
    with pytest.raises(ConfigError) as e:
        factory.create("filters", FilterSpec(name="counting", options={"treshold": 0.25}), plugins=counting)
    msg = str(e.value)
    assert "\n" not in msg and msg.startswith("invalid options for filter 'counting': treshold:")
    assert msg.endswith("(did you mean threshold?)")
    with pytest.raises(ConfigError, match="threshold"):
        factory.create("filters", FilterSpec(name="counting", options={"threshold": "high"}), plugins=counting)


def test_unknown_names_say_did_you_mean(counting):
    with pytest.raises(UnknownPluginError, match="(?i)did you mean 'counting'"):
        factory.create("filters", FilterSpec(name="countin"), plugins=counting)


def test_classifier_families_get_their_variant(plugins):
    clf = factory.create("classifiers", PluginSpec(name="timm:test_resnet"), plugins=plugins)
    assert clf.variant == "test_resnet"
    assert factory.create("classifiers", PluginSpec(name="lenet"), plugins=plugins).variant is None


def test_the_installed_plugins_are_the_default():
    plugin = factory.create("filters", FilterSpec(name="uncertainty", options={}))
    assert type(plugin).__name__ == "Uncertainty"


def test_preflight_sees_the_validated_options(counting):
    resolved = factory.preflight("filters", FilterSpec(name="counting", options={"threshold": 0.75}), counting)
    assert [o.threshold for o in CountingFilter.preflights] == [0.75] and resolved.cls is CountingFilter
    assert CountingFilter.preflights[0] is resolved.options


def test_paper_defaults_come_from_the_dataset_class(plugins):
    cls, _ = plugins.registry("datasets").get("colored-mnist")
    assert factory.paper_defaults(plugins)("colored-mnist") == cls.paper_defaults
    with pytest.raises(UnknownPluginError):
        factory.paper_defaults(plugins)("colored-mnsit")


def _calls(tree: ast.AST) -> list[str]:
    return [ast.unparse(node.func) for node in ast.walk(tree) if isinstance(node, ast.Call)]


def test_only_the_factory_validates_options_or_instantiates_plugin_classes():
    """No module of the harness but the factory calls ``<plugin class>.Options.model_validate`` or resolves a
    registry name to a class (``registry(kind).get``), which is what building a plugin needs."""
    offenders = []
    for path in sorted(HARNESS.rglob("*.py")):
        if path == HARNESS / "plugin" / "factory.py" or path.parent.name == "plugin" and path.name == "registry.py":
            continue
        for call in _calls(ast.parse(path.read_text())):
            if call.endswith("Options.model_validate") or (".registry(" in call and call.endswith(".get")):
                offenders.append(f"{path.relative_to(HARNESS.parent)}: {call}")
    assert offenders == []
