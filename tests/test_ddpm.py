"""ddpm: a tiny real diffusers UNet (two levels, 8/16 channels) trained for an epoch, DDIM-sampled in two steps."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from pydantic import ValidationError
from typer.testing import CliRunner

from harness.errors import ConfigError
from harness.interfaces import Runtime
from harness.imageset import ImageSet
from harness.engine.progress import NullReporter
from tests.conftest import tiny_config

pytest.importorskip("diffusers")

from plugins.generators.ddpm import DDPM  # noqa: E402

TINY = dict(block_out_channels=(8, 16), layers_per_block=1, norm_num_groups=4, epochs=1, batch_size=32,
            train_timesteps=100, sample_steps=2, sample_batch_size=3)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make(tmp_path: Path, *, channels: int = 3, image_size: int = 28, num_classes: int = 4, **options) -> DDPM:
    o = DDPM.Options(**{**TINY, **options})
    runtime = Runtime("cpu", "fp32", 0, NullReporter(), tmp_path)
    return DDPM(o, num_classes=num_classes, channels=channels, image_size=image_size,
                class_names=[str(i) for i in range(num_classes)], runtime=runtime)


def toy_data(n: int = 64, channels: int = 3, size: int = 28, num_classes: int = 4) -> ImageSet:
    """Class c is a flat image of brightness 60·c plus a little noise: easy to learn, easy to check."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % num_classes
    x = (labels.view(-1, 1, 1, 1) * 60.0 + torch.randn(n, channels, size, size, generator=g) * 10).clamp(0, 255)
    return ImageSet.create(x.round().to(torch.uint8), labels)


def test_fit_sample_and_state_round_trip(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path)
    stats = gen.fit(toy_data())
    assert stats["steps"] == 2 and stats["images_seen"] == 64 and stats["cond_drop_prob"] == 0.0
    assert stats["images_per_s"] > 0 and stats["loss"] == pytest.approx(stats["loss_mean"])

    labels = torch.tensor([0, 1, 2, 3, 3])
    torch.manual_seed(11)
    images = gen.sample(labels)
    assert images.dtype == torch.uint8 and images.shape == (5, 3, 28, 28)

    state = gen.state_dict()
    assert any(k.startswith("unet.") for k in state) and any(k.startswith("unet_ema.") for k in state)
    assert all(isinstance(v, torch.Tensor) and v.is_contiguous() for v in state.values())
    fresh = make(tmp_path)
    fresh.load_state_dict(state)
    torch.manual_seed(11)
    assert torch.equal(fresh.sample(labels), images)
    torch.manual_seed(12)
    assert not torch.equal(fresh.sample(labels), images)  # the noise matters


def test_classifier_free_guidance(tmp_path):
    torch.manual_seed(0)
    guided = make(tmp_path, guidance_scale=3.0, channels=1, ema=False)
    assert guided.options.drop_prob == 0.1  # label dropout switches on with guidance
    assert guided.fit(toy_data(channels=1))["cond_drop_prob"] == 0.1
    labels = torch.tensor([0, 3])
    torch.manual_seed(5)
    with_cfg = guided.sample(labels)
    assert with_cfg.shape == (2, 1, 28, 28) and with_cfg.dtype == torch.uint8

    plain = make(tmp_path, guidance_scale=1.0, cond_drop_prob=0.1, channels=1, ema=False)
    plain.load_state_dict(guided.state_dict())  # the same network, sampled without guidance
    torch.manual_seed(5)
    assert not torch.equal(plain.sample(labels), with_cfg)

    # guidance scale 0 is the unconditional model: the class label must not matter at all
    uncond = make(tmp_path, guidance_scale=0.0, cond_drop_prob=0.1, channels=1, ema=False)
    uncond.load_state_dict(guided.state_dict())
    torch.manual_seed(5)
    a = uncond.sample(torch.tensor([0]))
    torch.manual_seed(5)
    assert torch.equal(a, uncond.sample(torch.tensor([3])))


def test_training_lowers_the_denoising_loss(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path, channels=1, num_classes=2, epochs=4, batch_size=16, lr=3e-3, attention=False, ema=False)
    stats = gen.fit(toy_data(32, channels=1, num_classes=2))
    assert stats["steps"] == 8
    # ε-prediction starts at MSE ≈ 1 (a zero output); flat images are quickly learnt
    assert stats["loss_first_epoch"] > 0.5 and stats["loss"] < 0.6 * stats["loss_first_epoch"], stats


def test_options_and_sizes_are_checked(tmp_path):
    with pytest.raises(ValidationError, match="cond_drop_prob"):
        DDPM.Options(guidance_scale=2.0, cond_drop_prob=0.0)
    with pytest.raises(ValidationError, match="norm_num_groups"):
        DDPM.Options(block_out_channels=(8, 12), norm_num_groups=8)
    with pytest.raises(ValidationError, match="sample_steps"):
        DDPM.Options(train_timesteps=10, sample_steps=20)
    with pytest.raises(ConfigError, match="divisible by 4"):
        make(tmp_path, block_out_channels=(8, 8, 16), image_size=30)
    gen = make(tmp_path)
    with pytest.raises(ValueError, match="labels must lie"):
        gen.sample(torch.tensor([4]))
    with pytest.raises(ValueError, match="built for"):
        gen.fit(toy_data(channels=1))


def test_bench_run_end_to_end(tmp_path):
    from harness.cli import app

    cfg = tiny_config(
        out=str(tmp_path / "runs"),
        precision="fp32",
        dataset={"name": "colored-mnist", "options": {"source": "embedded", "train_size": 200, "test_size": 100}},
        generator={"name": "ddpm", "options": {**TINY, "block_out_channels": [8, 16], "sample_batch_size": 40}},
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
