"""Issue 5, "done when": a tiny ``bench run`` completes with every classifier of the paper's zoo, and with
every filter (the clip filter on a tiny randomly initialised open_clip model; the manual filter with its
decisions written before the run)."""

from __future__ import annotations

import json
import math
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness.cli import app
from tests.conftest import tiny_config

ZOO = ["lenet", "alexnet", "vgg19", "resnet50", "mobilenet-v3", "deit-s"]
SAMPLES = 40
KEEP = 0.8
#: A tiny randomly initialised open_clip model (as in test_filter_clip.py): the clip filter's real path, no weights.
TINY_CLIP = {
    "embed_dim": 16,
    "vision_cfg": {"image_size": 32, "layers": 1, "width": 32, "patch_size": 8, "head_width": 16},
    "text_cfg": {"context_length": 16, "vocab_size": 49408, "width": 32, "heads": 2, "layers": 1},
}


def zoo_config(**over) -> dict:
    """Embedded Colorized MNIST, 200 train / 100 test, one generation of 40 candidates, one epoch, fp32 on the CPU
    (CPU bf16 autocast is emulated, and very slow, on CPUs without bf16 instructions)."""
    base = tiny_config(
        dataset={"options": {"train_size": 200, "test_size": 100}},
        loop={"generations": 1, "samples_per_generation": SAMPLES, "mix_ratio": 0.5},
        training={"max_epochs": 1, "batch_size": 64},
        filter={"keep": KEEP},
        device="cpu",
        precision="fp32",
    )
    from harness.specs import deep_merge

    return deep_merge(base, over)


def run(tmp_path: Path, cfg: dict, *extra: str):
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(cfg))
    return CliRunner().invoke(app, ["run", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet", *extra])


def complete(r) -> tuple[Path, dict]:
    assert r.exit_code == 0, r.output
    path = Path(r.stdout.strip())
    results = json.loads(path.read_text())
    assert results["status"] == "complete"
    return path.parent, results


def filter_result(run_dir: Path) -> dict:
    return json.loads((run_dir / "seed-0" / "gen-001" / "filter" / "result.json").read_text())


def candidate_classes(run_dir: Path) -> list[int]:
    from harness.imageset import ImageSet

    return ImageSet.load(run_dir / "seed-0" / "gen-001" / "sample" / "samples.safetensors").labels.tolist()


def per_class_keep(labels: list[int]) -> list[int]:
    counts = [labels.count(c) for c in range(10)]
    return [max(1, math.floor(KEEP * n + 0.5)) if n else 0 for n in counts]


@pytest.fixture(autouse=True)
def one_thread():
    import torch

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)


@pytest.mark.slow
def test_the_whole_classifier_zoo_runs(tmp_path):
    # half the filter runs' data (100 train / 50 test / 20 candidates): ResNet-50, DeiT-S and VGG-19 cost most
    cfg = zoo_config(classifiers=ZOO, filter={"name": "uncertainty"},
                     dataset={"options": {"train_size": 100, "test_size": 50}}, loop={"samples_per_generation": 20})
    run_dir, results = complete(run(tmp_path, cfg))
    assert [g["generation"] for g in results["generations"]] == [0, 1]
    for g in results["generations"]:
        assert sorted(g["classifiers"]) == sorted(ZOO)
    for m in ZOO:
        for t in (0, 1):
            unit = json.loads((run_dir / "seed-0" / f"gen-00{t}" / "classifier" / m / "result.json").read_text())
            assert 0.0 <= unit["metrics"]["acc"] <= 1.0 and unit["train"]["epochs"] == 1
        assert unit["train_size"]["synthetic"] > 0  # generation 1 trained on generated images too
    assert filter_result(run_dir)["kept_per_class"] == per_class_keep(candidate_classes(run_dir))


@pytest.mark.parametrize(
    "name, options",
    [
        ("none", {}),
        ("random", {}),
        ("uncertainty", {}),
        ("clip", {"pretrained": None, "model_cfg": TINY_CLIP, "binning": True, "batch_size": 16}),
    ],
)
def test_every_filter_runs(tmp_path, name, options):
    if name == "clip":
        pytest.importorskip("open_clip")
    run_dir, results = complete(run(tmp_path, zoo_config(filter={"name": name, "options": options})))
    assert results["spec"]["filter"]["name"] == name
    kept = filter_result(run_dir)["kept_per_class"]
    want = per_class_keep(candidate_classes(run_dir))
    if name == "none":
        assert sum(kept) == SAMPLES
    elif name == "clip":  # whole top bins: at least the keep fraction of each class
        assert all(k >= w for k, w in zip(kept, want, strict=True)) and sum(kept) <= SAMPLES
    else:
        assert kept == want


def test_manual_filter_runs_with_decisions_written_beforehand(tmp_path):
    cfg = zoo_config(filter={"name": "manual"})
    dry = run(tmp_path, cfg, "--dry-run")
    assert dry.exit_code == 0, dry.output
    run_dir = Path(json.loads(dry.stdout)["run_dir"])
    rejected = {0, 5, 17, 39}
    decisions = run_dir / "review" / "seed-0" / "gen-001" / "decisions.csv"
    decisions.parent.mkdir(parents=True)
    decisions.write_text("id,decision\n" + "".join(f"{i},reject\n" for i in sorted(rejected)))
    run_dir2, _ = complete(run(tmp_path, cfg))
    assert run_dir2 == run_dir
    labels = candidate_classes(run_dir)
    expected = [sum(1 for i, y in enumerate(labels) if y == c and i not in rejected) for c in range(10)]
    assert filter_result(run_dir)["kept_per_class"] == expected
    assert not (decisions.parent / "candidates.csv").exists()  # nobody was asked: the decisions were there
