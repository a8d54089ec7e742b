"""``bench report RUN_DIR``: the paper's figures as PNGs, from a tiny real run and from faked run folders."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
from PIL import Image
from typer.testing import CliRunner

from harness.cli import app
from tests.test_leaderboard import run_tiny, synthetic_results, write

PNG = b"\x89PNG\r\n\x1a\n"
FIGURES = ("metrics.png", "worst_k.png", "generator.png", "amplification.png", "samples.png")


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
    # the sample grid has one row of images per generation (2) and about 20 images per row
    with Image.open(out / "samples.png") as img:
        assert img.size[0] > img.size[1]


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
    """Intervals over 3 seeds and two classifiers; grayscale samples; FID off is said on the figure."""
    from harness.publish.report import sample_rows, write_report

    run_dir = tmp_path / "run"
    write(run_dir / "results.json", synthetic_results(seeds=(0, 1, 2), classifiers=("lenet", "alexnet"),
                                                      generations=3, amp=1.1))
    for t in (1, 2, 3):
        fake_samples(run_dir, t)
    paths = write_report(run_dir, tmp_path / "out")
    assert [p.name for p in paths] == list(FIGURES)
    for p in paths:
        assert_png(p)
    rows = sample_rows(run_dir)
    assert [t for t, _ in rows] == [1, 2, 3]
    strip = rows[0][1]
    # 20 // 4 classes = 5 per class: 20 tiles of 8 px with 2 px gaps, grayscale expanded to RGB
    assert strip.shape == (8, 20 * 8 + 19 * 2, 3) and strip.dtype == np.uint8


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
