"""Training curves (issue 15 item 3): per epoch for classifiers, per N steps for generators, kept in each unit's
``result.json`` (observation only) and drawn by ``bench report``."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch

from harness.engine.plan import unit
from harness.engine.records import ClassifierResult, GeneratorResult, History, OracleResult, parse_record, read_record
from harness.engine.training import Curves


def test_curves_average_windows_of_every_steps():
    curves = Curves(("a", "b"), total_steps=10, points=4)
    assert curves.every == 3  # ceil(10 / 4)
    for step in range(12):  # two steps past the total: not recorded
        curves.add(torch.tensor(float(step)), 2.0 * step)
    h = History.model_validate(curves.history())
    assert h.axis == "step" and h.every == 3
    assert h.at == [3, 6, 9, 10]  # each point at the last step of its window; the last window is short
    assert h.series["a"] == pytest.approx([1.0, 4.0, 7.0, 9.0])  # means of 0..2, 3..5, 6..8, 9
    assert h.series["b"] == pytest.approx([2.0, 8.0, 14.0, 18.0])


def test_curves_of_a_short_run_and_values_that_are_not_finite():
    curves = Curves(("loss",), total_steps=250)
    assert curves.every == 3  # at most CURVE_POINTS = 100 points
    curves.add(float("nan"))
    curves.add(1.0)
    h = curves.history()  # stopped after 2 of 250 steps
    assert h["at"] == [2] and h["series"] == {"loss": [None]}  # NaN in a window: no value, not a number
    with pytest.raises(ValueError, match="takes 1 values"):
        curves.add(1.0, 2.0)


def test_history_series_must_have_one_value_per_point():
    with pytest.raises(ValueError, match="series 'loss'"):
        History(axis="epoch", at=[1, 2], series={"loss": [0.5]})


def test_results_written_before_curves_still_read():
    """A unit's result.json from before the history fields reads, with no curves."""
    old = {"timing": {"seconds": 1.0, "images": 8, "images_per_s": 8.0}, "train": {"loss_d": 1.0}, "train_size": 8}
    record = parse_record(unit("generator", 0, 1), old)
    assert isinstance(record, GeneratorResult) and record.curves() is None


def test_train_classifier_keeps_a_curve_per_epoch(tmp_path):
    from harness.engine.progress import NullReporter
    from harness.engine.training import build_classifier, train_classifier
    from harness.imageset import ImageSet
    from harness.interfaces import Runtime
    from harness.plugin import factory
    from harness.specs import PluginSpec, TrainingSpec

    g = torch.Generator().manual_seed(0)
    labels = torch.arange(96) % 2
    images = (torch.rand(96, 1, 28, 28, generator=g) * 80).to(torch.uint8)
    images[labels == 1, :, 10:18, 10:18] = 255  # class 1 has a bright square: learnable in a few epochs
    data = ImageSet.create(images, labels)
    torch.manual_seed(0)
    plugin = factory.create("classifiers", PluginSpec(name="lenet"))
    clf = build_classifier("lenet", plugin, num_classes=2, channels=1, image_size=28, device="cpu", precision="fp32")
    recipe = TrainingSpec(max_epochs=4, patience=10, batch_size=16, lr=1e-2)
    stats = train_classifier(clf, data, recipe, Runtime("cpu", "fp32", 0, NullReporter(), tmp_path))
    h = History.model_validate(stats["history"])
    assert h.axis == "epoch" and h.at == [1, 2, 3, 4] and stats["epochs"] == 4
    assert h.series["val_acc"][stats["best_epoch"] - 1] == stats["val_acc"]  # the kept epoch's held-out accuracy
    assert max(h.series["val_acc"]) == stats["val_acc"]
    losses = h.series["train_loss"]
    assert all(v is not None and v >= 0 for v in losses) and losses[-1] < losses[0]


def test_dcgan_curve_measures_the_losses_it_reports(tmp_path):
    """The points are means over windows of steps: weighted by their steps they give the run's mean losses."""
    from tests.test_dcgan import halves, make

    torch.manual_seed(0)
    stats = make(tmp_path, channels=1, num_classes=2, epochs=3, batch_size=16).fit(halves(64, channels=1))
    h = History.model_validate(stats["history"])
    assert h.axis == "step" and h.at[-1] == stats["steps"] == 12
    counts = [end - start for start, end in zip([0, *h.at[:-1]], h.at)]
    for name, mean in (("loss_d", stats["loss_d_mean"]), ("loss_g", stats["loss_g_mean"])):
        total = sum(v * n for v, n in zip(h.series[name], counts, strict=True))
        assert total / stats["steps"] == pytest.approx(mean, rel=1e-9)


@pytest.fixture(scope="module")
def curved_run(tmp_path_factory):
    from harness import loop
    from harness.plugin.manager import create_plugin_manager
    from harness.specs import build_spec, resolve_spec
    from tests.conftest import tiny_config

    plugins = create_plugin_manager()
    config = tiny_config(out=str(tmp_path_factory.mktemp("curves") / "runs"), loop={"generations": 1},
                         training={"max_epochs": 2, "patience": 5})
    spec = resolve_spec(build_spec(None, config), plugins)
    loop.run(spec, plugins)
    return spec


def test_every_training_unit_keeps_its_curves(curved_run):
    spec = curved_run
    for t in (0, 1):
        record = read_record(unit("classifier", 0, t, "lenet"), spec.run_dir, ClassifierResult)
        h = record.curves()
        assert h is record.train.history and h.axis == "epoch" and h.at == list(range(1, record.train.epochs + 1))
        assert h.series["val_acc"][record.train.best_epoch - 1] == record.train.val_acc
    oracle = read_record(unit("oracle", None, 0), spec.run_dir, OracleResult)
    assert oracle.curves() is not None and oracle.curves().axis == "epoch"
    gen = read_record(unit("generator", 0, 1), spec.run_dir, GeneratorResult)
    h = gen.curves()
    assert h.axis == "step" and h.at[-1] == gen.train["steps"] and set(h.series) == {"loss_d", "loss_g"}
    assert "history" not in gen.train  # kept typed beside the plugin's statistics, not inside them
    assert all(math.isfinite(v) for v in h.series["loss_d"])


def test_the_report_draws_the_curves_of_a_seed(curved_run, tmp_path):
    from harness.publish.report import curves_figure, run_results, write_report

    spec = curved_run
    fig = curves_figure(spec.run_dir, run_results(spec.run_dir), seed=0)
    axes = [ax for ax in fig.axes if ax.get_title()]
    titles = [ax.get_title() for ax in axes]
    assert any("generator" in t for t in titles) and any("lenet" in t for t in titles), titles
    assert all(ax.get_xlabel() and ax.get_ylabel() for ax in axes)
    lenet = next(ax for ax in axes if "lenet" in ax.get_title() and "accuracy" in ax.get_ylabel())
    record = read_record(unit("classifier", 0, 1, "lenet"), spec.run_dir, ClassifierResult)
    drawn = {tuple(line.get_ydata()) for line in lenet.get_lines()}
    assert tuple(record.train.history.series["val_acc"]) in drawn  # the recorded curve, point for point
    paths = write_report(spec.run_dir, tmp_path / "report")
    assert tmp_path / "report" / "curves.png" in [Path(p) for p in paths]
