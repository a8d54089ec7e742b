"""vae: the conditional VAE's shapes, that it learns class-conditional images, and its state round trip."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness.errors import ConfigError
from harness.interfaces import Runtime
from harness.imageset import ImageSet
from harness.engine.progress import NullReporter
from plugins.generators.vae import ConditionalVAE
from tests.conftest import tiny_config


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make(tmp_path: Path, *, channels: int = 1, image_size: int = 28, num_classes: int = 2, **options):
    o = ConditionalVAE.Options(**{"width": 8, "epochs": 1, "batch_size": 32, **options})
    runtime = Runtime("cpu", "fp32", 0, NullReporter(), tmp_path)
    return ConditionalVAE(o, num_classes=num_classes, channels=channels, image_size=image_size,
                          class_names=[str(i) for i in range(num_classes)], runtime=runtime)


def halves(n: int = 64, channels: int = 1, size: int = 28) -> ImageSet:
    """Class 0: bright top half; class 1: bright bottom half (plus noise). Only the label says which."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % 2
    x = torch.rand(n, channels, size, size, generator=g) * 40
    top = labels == 0
    x[top, :, : size // 2] += 200
    x[~top, :, size // 2 :] += 200
    return ImageSet.create(x.clamp(0, 255).round().to(torch.uint8), labels)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 32), (3, 64)])
def test_shapes(tmp_path, channels, size):
    torch.manual_seed(0)
    gen = make(tmp_path, channels=channels, image_size=size, num_classes=3)
    stats = gen.fit(halves(8, channels, size))
    assert stats["steps"] == 1 and stats["images_seen"] == 8 and stats["kl"] >= 0
    images = gen.sample(torch.tensor([0, 1, 2, 2, 1]))
    assert images.dtype == torch.uint8 and images.shape == (5, channels, size, size)
    assert make(tmp_path).model.mu.out_features == 20  # Wyllie et al.'s latent size is the default


def test_learns_the_class_conditional_layout(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path, epochs=30, lr=1e-2, batch_size=16)
    stats = gen.fit(halves())
    assert stats["loss"] < 0.7 * stats["loss_first_epoch"], stats
    torch.manual_seed(0)
    x = gen.sample(torch.tensor([0] * 8 + [1] * 8)).float()
    top, bottom = x[:, :, :14].mean(dim=(1, 2, 3)), x[:, :, 14:].mean(dim=(1, 2, 3))
    # on average over its samples, each class puts the light where its training images have it (about 200 more)
    assert (top[:8] - bottom[:8]).mean() > 40 and (bottom[8:] - top[8:]).mean() > 40, (top, bottom)


def test_state_round_trip_gives_identical_samples(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path, conditioning="embedding", reconstruction="mse", beta=0.5, temperature=0.8)
    gen.fit(halves(32))
    state = gen.state_dict()
    assert all(k.startswith("model.") and v.is_contiguous() for k, v in state.items())
    labels = torch.tensor([1, 0, 1])
    torch.manual_seed(3)
    images = gen.sample(labels)
    fresh = make(tmp_path, conditioning="embedding", reconstruction="mse", beta=0.5, temperature=0.8)
    fresh.load_state_dict(state)
    torch.manual_seed(3)
    assert torch.equal(fresh.sample(labels), images)
    with pytest.raises(KeyError):
        fresh.load_state_dict({})


def test_sizes_and_labels_are_checked(tmp_path):
    with pytest.raises(ConfigError, match="7·2"):
        make(tmp_path, image_size=30)
    gen = make(tmp_path)
    with pytest.raises(ValueError, match="labels must lie"):
        gen.sample(torch.tensor([2]))
    with pytest.raises(ValueError, match="built for"):
        gen.fit(halves(4, channels=3))


def test_bench_run_end_to_end(tmp_path):
    from harness.cli import app

    cfg = tiny_config(
        out=str(tmp_path / "runs"),
        precision="fp32",
        dataset={"name": "colored-mnist", "options": {"source": "embedded", "train_size": 200, "test_size": 100}},
        generator={"name": "vae", "options": {"width": 8, "epochs": 1}},
        filter={"name": "none"},
        loop={"generations": 1, "samples_per_generation": 40},
        metrics={"fid": {"backbone": "none"}, "oracle": {"classifier": "lenet", "max_epochs": 1}},
    )
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(cfg))
    r = CliRunner().invoke(app, ["run", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet"])
    assert r.exit_code == 0, r.output
    results = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert results["status"] == "complete" and len(results["generations"]) == 2
