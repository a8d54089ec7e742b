from __future__ import annotations

import json

import pytest

from harness.errors import ConfigError, UnknownPluginError
from harness.specs import PRESETS, RunSpec, build_spec, deep_merge, load_config_file, parse_set, resolve_spec


def test_quick_is_the_default_and_valid():
    spec = build_spec()
    assert spec.preset == "quick"
    # T = 3 since the quick job trains converged classifiers and a control twin for each (issue 13)
    assert spec.loop.generations >= 3 and len(spec.classifiers) >= 2
    assert spec.loop.control and spec.training.max_epochs > 4


def test_paper_preset_follows_spec_section_2(plugins):
    spec = build_spec("paper", paper_defaults=lambda name: {"filter": {"keep": 0.7}})
    assert spec.loop.generations == 10 and spec.loop.queue_capacity == 3
    assert spec.training.optimizer == "adam" and spec.training.max_epochs == 50
    assert len(spec.seeds) == 3
    assert spec.filter.keep == 0.7  # the dataset's paper default wins over the preset's


@pytest.mark.parametrize("dataset,oracle,keep", [("colored-mnist", "lenet", 0.9), ("cifar20", "resnet50", 0.7),
                                                  ("breeds", "resnet50", 0.4), ("hard-imagenet", "resnet50", 0.4)])
def test_paper_oracle_per_dataset(plugins, dataset, oracle, keep):
    """The oracle is an instrument: LeNet (width 2, dropout) for MNIST, ResNet-50 for natural images."""
    from harness.plugin import factory

    spec = build_spec("paper", {"dataset": {"name": dataset}}, paper_defaults=factory.paper_defaults(plugins))
    assert spec.metrics.oracle.classifier.name == oracle and spec.filter.keep == keep
    if oracle == "lenet":
        assert spec.metrics.oracle.classifier.options == {"width": 2, "dropout": 0.5}
    else:
        assert spec.metrics.oracle.max_epochs == 50 and spec.metrics.oracle.patience == 5
    # an explicit oracle wins over the dataset's default
    spec = build_spec("paper", {"dataset": {"name": dataset}, "metrics": {"oracle": {"classifier": "alexnet"}}},
                      paper_defaults=factory.paper_defaults(plugins))
    assert spec.metrics.oracle.classifier.name == "alexnet"


def test_layers_file_then_flags_override_preset():
    spec = build_spec("quick", {"loop": {"generations": 7}}, {"loop": {"mix_ratio": 0.25}, "seeds": [1, 2]})
    assert spec.loop.generations == 7 and spec.loop.mix_ratio == 0.25 and spec.seeds == (1, 2)
    assert spec.loop.queue_capacity == PRESETS["quick"]["loop"]["queue_capacity"]


def test_changing_a_plugin_name_drops_the_presets_options():
    merged = deep_merge(PRESETS["quick"], {"dataset": {"name": "other"}})
    assert merged["dataset"] == {"name": "other"}
    kept = deep_merge(PRESETS["quick"], {"dataset": {"name": "colored-mnist"}})
    assert kept["dataset"]["options"]


@pytest.mark.parametrize(
    "over, where",
    [
        ({"loop": {"generations": -1}}, "loop.generations"),
        ({"loop": {"regime": "fifo"}}, "loop.regime"),
        ({"filter": {"keep": 1.5}}, "filter.keep"),
        ({"seeds": [0, 0]}, "seeds"),
        ({"bogus": 1}, "bogus"),
        ({"device": "tpu"}, "device"),
        ({"classifiers": []}, "classifiers"),
    ],
)
def test_bad_values_name_the_field(over, where):
    with pytest.raises(ConfigError, match=where):
        build_spec("quick", over)


def test_unknown_preset():
    with pytest.raises(ConfigError, match="unknown preset"):
        build_spec("fast")


def test_config_files_in_three_formats(tmp_path):
    (tmp_path / "a.toml").write_text('[loop]\ngenerations = 3\n')
    (tmp_path / "a.yaml").write_text("loop:\n  generations: 3\n")
    (tmp_path / "a.json").write_text(json.dumps({"loop": {"generations": 3}}))
    for name in ("a.toml", "a.yaml", "a.json"):
        assert build_spec("quick", load_config_file(tmp_path / name)).loop.generations == 3


def test_unreadable_config_files(tmp_path):
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(tmp_path / "missing.toml")
    (tmp_path / "bad.toml").write_text("[loop\n")
    with pytest.raises(ConfigError, match="cannot parse"):
        load_config_file(tmp_path / "bad.toml")
    (tmp_path / "a.ini").write_text("")
    with pytest.raises(ConfigError, match="must end in"):
        load_config_file(tmp_path / "a.ini")


def test_parse_set():
    assert parse_set(["loop.mix_ratio=0.3", "seeds=[0, 1]", "filter.name=none"]) == {
        "loop": {"mix_ratio": 0.3}, "seeds": [0, 1], "filter": {"name": "none"}
    }
    with pytest.raises(ConfigError):
        parse_set(["novalue"])


def test_hash_ignores_execution_fields_only():
    a = build_spec("quick", {"out": "x", "device": "cpu"})
    b = build_spec("quick", {"out": "y", "device": "auto", "data_root": "/tmp"})
    c = build_spec("quick", {"loop": {"mix_ratio": 0.3}})
    assert a.spec_hash() == b.spec_hash() != c.spec_hash()
    assert a.run_id.startswith("colored-mnist-dcgan-")


def test_resolve_fills_plugin_defaults_and_rejects_bad_options(plugins):
    spec = resolve_spec(build_spec("quick"), plugins)
    assert "bias" in spec.dataset.options and len(spec.dataset.options) > 2  # defaults filled in
    with pytest.raises(ConfigError, match="options for dataset 'colored-mnist'"):
        resolve_spec(build_spec("quick", {"dataset": {"name": "colored-mnist", "options": {"colour": 1}}}), plugins)
    with pytest.raises(UnknownPluginError, match="(?i)did you mean 'dcgan'"):
        resolve_spec(build_spec("quick", {"generator": {"name": "dcgna"}}), plugins)


def test_spec_is_frozen():
    spec = build_spec()
    with pytest.raises(Exception):
        spec.loop = None  # type: ignore[misc]
    assert isinstance(spec, RunSpec)
