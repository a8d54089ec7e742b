"""``bench report RUN_DIR``: the paper's figures as PNG, PDF or SVG, from a tiny real run and from faked run
folders: axis labels on every panel, intervals inside the metrics' bounds, A_t intervals where the results carry
them, a worst-k figure that stays readable with many subgroups, sample grids labelled by class under real images."""

from __future__ import annotations

import json
import xml.etree.ElementTree as ET
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from tests.test_leaderboard import run_tiny, synthetic_results, write

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("metrics.png", "worst_k.png", "generator.png", "amplification.png", "curves.png", "representation.png",
           "samples.png")


@pytest.fixture(scope="session")
def tiny_run(tmp_path_factory) -> Path:
    return run_tiny(tmp_path_factory)  # the same folder tests/test_leaderboard.py uses, made once per session


def assert_png(path: Path, min_size: tuple[int, int] = (200, 100)) -> None:
    data = path.read_bytes()
    assert data[:8] == PNG and len(data) > 2000, path
    with Image.open(path) as img:
        img.verify()
    with Image.open(path) as img:
        assert img.size[0] >= min_size[0] and img.size[1] >= min_size[1], (path, img.size)
        pixels = np.asarray(img.convert("L"))
    assert pixels.std() > 1.0, f"{path} is blank"


def test_report_writes_the_papers_figures_for_a_real_run(tiny_run, tmp_path):
    out = tmp_path / "figures"
    r = CliRunner().invoke(app, ["report", str(tiny_run), "--out", str(out)])
    assert r.exit_code == 0, r.output
    paths = [Path(line) for line in r.stdout.strip().splitlines()]
    assert [p.name for p in paths] == list(FIGURES)
    for p in paths:
        assert p.parent == out
        assert_png(p)
    # the sample grid has a row of real images and one per generation (2), about 20 images per row
    with Image.open(out / "samples.png") as img:
        assert img.size[0] > img.size[1]


def test_report_writes_pdf_and_svg(tiny_run, tmp_path):
    out = tmp_path / "figures"
    r = CliRunner().invoke(app, ["report", str(tiny_run), "--out", str(out), "--format", "pdf", "--format", "svg"])
    assert r.exit_code == 0, r.output
    paths = [Path(line) for line in r.stdout.strip().splitlines()]
    assert [p.name for p in paths] == [f"{stem}.{ext}" for stem in (f.removesuffix(".png") for f in FIGURES)
                                       for ext in ("pdf", "svg")]
    for p in paths:
        data = p.read_bytes()
        if p.suffix == ".pdf":
            assert data.startswith(b"%PDF-") and data.rstrip().endswith(b"%%EOF") and len(data) > 2000, p
            assert b"/FontFile2" in data  # TrueType fonts embedded, as journals ask (not Type 3)
        else:
            root = ET.fromstring(data)
            assert root.tag == "{http://www.w3.org/2000/svg}svg" and root.find(".//{*}path") is not None, p
    # the same figures give the same bytes: no date in them
    again = CliRunner().invoke(app, ["report", str(tiny_run), "--out", str(tmp_path / "again"), "--format", "pdf"])
    assert again.exit_code == 0 and (tmp_path / "again" / "metrics.pdf").read_bytes() == \
        (out / "metrics.pdf").read_bytes()

    r = CliRunner().invoke(app, ["report", str(tiny_run), "--out", str(out), "--format", "jpeg"])
    assert r.exit_code == 2 and "unknown --format 'jpeg'" in r.stderr and "png, pdf, svg" in r.stderr
    assert "Traceback" not in r.output


def test_the_sample_grid_is_labelled_by_class_under_real_images(tiny_run):
    from harness.publish.report import real_examples, run_results, samples_figure

    results = run_results(tiny_run)

    def real(classes: list[int], k: int) -> Any:
        return real_examples(tiny_run, classes, k)

    fig = samples_figure(tiny_run, results, seed=0, real=real)
    ax = fig.axes[0]
    assert [t.get_text() for t in ax.get_yticklabels()] == ["real", "gen 1", "gen 2"]
    assert [t.get_text() for t in ax.get_xticklabels()] == list(results.dataset.class_names)  # digit 0 … digit 9
    assert ax.get_xlabel() == "class (2 images each)" and ax.get_ylabel()
    images, labels = real(list(range(10)), 2)
    assert images.shape[0] == 20 and sorted(labels.tolist()) == sorted(list(range(10)) * 2)
    grid = ax.get_images()[0].get_array()
    # the real row is real data: its first tile is the first real image of class 0
    first = np.asarray(images[0]).transpose(1, 2, 0)
    first = np.repeat(first, 3, axis=2) if first.shape[2] == 1 else first
    assert np.array_equal(np.asarray(grid)[: first.shape[0], : first.shape[1]], first[:, :, :3])


def test_write_report_defaults_to_the_run_folder(tiny_run):
    from harness.publish.report import write_report

    paths = write_report(tiny_run)
    assert [p.name for p in paths] == list(FIGURES)
    assert all(p.parent == tiny_run / "report" and p.stat().st_size > 2000 for p in paths)


def fake_samples(run_dir: Path, generation: int, classes: int = 4, per_class: int = 5, channels: int = 1,
                 size: int = 8, seed: int = 0) -> None:
    from safetensors.numpy import save_file

    rng = np.random.default_rng(generation)
    labels = np.repeat(np.arange(classes), per_class).astype(np.int64)
    images = rng.integers(0, 256, (len(labels), channels, size, size), dtype=np.uint8)
    path = run_dir / f"seed-{seed}" / f"gen-{generation:03d}" / "sample" / "samples.safetensors"
    path.parent.mkdir(parents=True)
    save_file({"images": images, "labels": labels}, str(path))


def test_multi_seed_multi_classifier_report_from_a_faked_run_folder(tmp_path):
    """Intervals over 3 seeds and two classifiers; grayscale samples; FID off is said on the figure; without
    the run's dataset the sample grid says why it has no row of real images."""
    from harness.publish.report import (
        real_examples,
        run_results,
        sample_rows,
        samples_figure,
        write_report,
    )

    run_dir = tmp_path / "run"
    write(run_dir / "results.json", synthetic_results(seeds=(0, 1, 2), classifiers=("lenet", "alexnet"),
                                                      generations=3, amp=1.1))
    for t in (1, 2, 3):
        fake_samples(run_dir, t)
    paths = write_report(run_dir, tmp_path / "out")
    # faked: no D_t recorded, no unit in the folder (no curves)
    assert [p.name for p in paths] == [f for f in FIGURES if f not in ("curves.png", "representation.png")]
    for p in paths:
        assert_png(p)
    rows = sample_rows(run_dir)
    assert [t for t, _ in rows] == [1, 2, 3]
    strip = rows[0][1]
    # 20 // 4 classes = 5 per class: 20 tiles of 8 px with 2 px gaps, grayscale expanded to RGB
    assert strip.shape == (8, 20 * 8 + 19 * 2, 3) and strip.dtype == np.uint8
    fig = samples_figure(run_dir, run_results(run_dir), real=lambda c, k: real_examples(run_dir, c, k))
    assert [t.get_text() for t in fig.axes[0].get_yticklabels()] == ["gen 1", "gen 2", "gen 3"]
    assert [t.get_text() for t in fig.axes[0].get_xticklabels()] == [f"digit {i}" for i in range(4)]
    assert "real images not shown" in fig.axes[0].get_title() and "no spec.json" in fig.axes[0].get_title()


def _results(doc: dict[str, Any]) -> Any:
    from harness.publish.results import Results

    return Results.model_validate(doc)


def _figures(results: Any) -> dict[str, Any]:
    from harness.publish.report import (
        amplification_figure,
        generator_figure,
        metrics_figure,
        worst_k_figure,
    )

    return {"metrics": metrics_figure(results), "worst_k": worst_k_figure(results),
            "generator": generator_figure(results), "amplification": amplification_figure(results)}


def test_every_panel_has_axis_labels_with_units():
    results = _results(synthetic_results(seeds=(0, 1, 2), classifiers=("lenet", "alexnet"), generations=3))
    for name, fig in _figures(results).items():
        for ax in fig.axes:
            assert ax.get_xlabel() and ax.get_ylabel(), (name, ax.get_title())
            if ax.get_yticks().size and name != "generator":
                assert "(" in ax.get_ylabel(), (name, ax.get_ylabel())  # a unit or a range: "(fraction, 0–1)"
        assert fig._suptitle is not None and results.run_id in fig._suptitle.get_text()
    labels = [ax.get_ylabel() for ax in _figures(results)["metrics"].axes]
    assert labels[0] == "accuracy (fraction, 0–1)" and labels[2].startswith("DI (≤ 1")


def _band_ys(ax: Any) -> list[float]:
    from matplotlib.collections import PolyCollection

    return [y for c in ax.collections if isinstance(c, PolyCollection)
            for path in c.get_paths() for y in path.vertices[:, 1] if np.isfinite(y)]


def test_intervals_stay_inside_the_metrics_bounds():
    doc = synthetic_results(seeds=(0, 1, 2), generations=3)
    last = doc["generations"][-1]["classifiers"]["lenet"]["mean"]
    last["acc"].update(mean=0.99, ci_low=0.95, ci_high=1.03)  # a t-interval of a mean near 1 reaches past 1
    last["md"].update(mean=0.01, ci_low=-0.02, ci_high=0.04)  # and one near 0 below 0
    results = _results(doc)
    fig = _figures(results)["metrics"]
    acc, _, _, md = fig.axes
    assert _band_ys(acc) and max(_band_ys(acc)) == 1.0 and min(_band_ys(md)) == 0.0
    assert 0.95 in _band_ys(acc)  # the bound that lies inside stays where it was
    for ax in (acc, md):  # the axis stops within a 3% margin of the bounds
        low, high = ax.get_ylim()
        assert high - 1.0 <= 0.031 * (high - low) and -low <= 0.031 * (high - low)


def test_a_t_is_drawn_with_its_intervals_when_the_results_carry_them():
    from matplotlib.container import ErrorbarContainer

    results = _results(synthetic_results(seeds=(0, 1, 2), amp=1.2, generations=3))
    fig = _figures(results)["amplification"]
    ax_a = fig.axes[1]
    assert not [c for c in ax_a.containers if isinstance(c, ErrorbarContainer)]  # none in these results
    assert "A_bar = 1.200, no interval" in ax_a.get_legend().get_texts()[0].get_text()
    assert "verdict: none (no control arm)" in fig._suptitle.get_text()

    # results that carry intervals on A_t and A_bar (issue 13): whiskers, A_bar's interval in the legend, and the
    # verdict in the title
    pc = results.amplification.per_classifier["lenet"]
    intervals = [{"mean": a.value, "ci_low": a.value - 0.5, "ci_high": a.value + 0.3} for a in pc.A]
    pc = pc.model_copy(update={"A_interval": intervals, "A_bar_interval": {"ci_low": 0.9, "ci_high": 1.6}})
    amp = results.amplification.model_copy(update={"per_classifier": {"lenet": pc}})
    verdict = {"pooled": {"label": "amplified", "effect": 0.012, "ci_low": 0.004, "ci_high": 0.02}}
    fig = _figures(results.model_copy(update={"amplification": amp, "verdict": verdict}))["amplification"]
    ax_a = fig.axes[1]
    bars = [c for c in ax_a.containers if isinstance(c, ErrorbarContainer)]
    assert len(bars) == 1
    segments = bars[0].lines[2][0].get_segments()
    assert [(round(s[0][1], 6), round(s[1][1], 6)) for s in segments] == [(0.7, 1.5)] * 3  # A_t = 1.2, [−0.5, +0.3]
    assert "A_bar = 1.200 [0.900, 1.600]" in ax_a.get_legend().get_texts()[0].get_text()
    assert "verdict (pooled): amplified, E = +0.012 [+0.004, +0.02]" in fig._suptitle.get_text()


def test_worst_k_stays_readable_with_many_subgroups():
    """30 subgroups over 6 generations: by rank, four generations without markers; across generations, only
    the worst, median and best subgroup, with a legend that says of how many."""
    from harness.measure.stats import mean_ci

    doc = synthetic_results(seeds=(0, 1, 2), classifiers=("lenet", "alexnet"), generations=6)
    for g in doc["generations"]:
        for record in g["classifiers"].values():
            record["mean"]["worst_k"] = [mean_ci([0.3 + 0.02 * k + 0.01 * s for s in range(3)]) for k in range(30)]
    fig = _figures(_results(doc))["worst_k"]
    assert len(fig.axes) == 4  # two classifiers × (by rank, across generations)
    by_rank, across = fig.axes[0], fig.axes[1]
    assert len(by_rank.get_lines()) == 4 and all(line.get_marker() in (None, "None", "") for line in by_rank.lines)
    assert [line.get_label() for line in across.get_lines()] == ["worst (k = 1)", "median (k = 15)", "best (k = 30)"]
    assert by_rank.get_legend().get_title().get_text() == "30 subgroups, 4 generations"
    assert across.get_title() == "lenet: worst, median and best of 30 subgroups"
    worst = across.get_lines()[0].get_ydata()
    assert np.allclose(worst, 0.31)  # k = 1: 0.3 + 0.01 · mean seed

    few = _figures(_results(synthetic_results(seeds=(0, 1, 2))))["worst_k"]  # 3 subgroups: markers, every generation
    assert len(few.axes[0].get_lines()) == 3 and few.axes[0].get_lines()[0].get_marker() == "o"


def test_report_skips_what_a_partial_run_does_not_have(tmp_path):
    from harness.publish.report import write_report

    run_dir = tmp_path / "run"
    write(run_dir / "results.json", synthetic_results(generations=3, last_generation=0))
    paths = write_report(run_dir)
    assert [p.name for p in paths] == ["metrics.png", "worst_k.png", "amplification.png"]


def test_report_of_a_folder_without_results_is_a_one_line_error(tmp_path):
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "no results.json" in r.stderr and "Traceback" not in r.output
    (tmp_path / "results.json").write_text(json.dumps({"schema_version": 7}))
    r = CliRunner().invoke(app, ["report", str(tmp_path)])
    assert r.exit_code == 2 and "unknown schema_version 7" in r.stderr


def test_names_with_dollar_signs_are_drawn_as_text_not_mathtext(tmp_path, monkeypatch):
    from tests.conftest import REPO

    # A classifier or run name from a stranger's results file may hold "$...$": the report's figures are built
    # with mathtext off, so such a name is drawn as it is written.
    import shutil

    import matplotlib

    from harness.publish import report

    run = tmp_path / "run"
    run.mkdir()
    shutil.copy(REPO / "leaderboard" / "entries" / "colored-mnist-dcgan-be7db2f109.json", run / "results.json")
    seen = []

    def spy(results):
        seen.append(matplotlib.rcParams["text.parse_math"])

    monkeypatch.setattr(report, "amplification_figure", spy)
    report.write_report(run, tmp_path / "out")
    assert seen == [False] and matplotlib.rcParams["text.parse_math"] is True
