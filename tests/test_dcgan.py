"""dcgan: shapes and dtypes, sampling, state round trip, determinism, and that a tiny model learns the label."""

from __future__ import annotations

from pathlib import Path

import pytest
import torch
from pydantic import ValidationError

from harness.interfaces import Runtime
from harness.imageset import ImageSet
from plugins.generators.dcgan import DCGAN


class _Task:
    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def advance(self, n: int = 1) -> None:
        self.done = getattr(self, "done", 0) + n


class _Reporter:
    """Records the tasks it was given, so the test can check progress is reported."""

    def __init__(self):
        self.tasks: list[tuple[str, int | None, _Task]] = []

    def task(self, description: str, total: int | None) -> _Task:
        t = _Task()
        self.tasks.append((description, total, t))
        return t


@pytest.fixture(autouse=True)
def _one_thread():
    n = torch.get_num_threads()
    torch.set_num_threads(1)  # tiny nets: threads only add overhead (and contention on shared machines)
    yield
    torch.set_num_threads(n)


def make(tmp_path: Path, *, channels: int = 3, image_size: int = 28, num_classes: int = 3, reporter=None, **opt):
    options = DCGAN.Options(**{"width": 8, "epochs": 1, "batch_size": 32, **opt})
    runtime = Runtime(device="cpu", precision="fp32", seed=0, reporter=reporter or _Reporter(), workdir=tmp_path)
    return DCGAN(options, num_classes=num_classes, channels=channels, image_size=image_size,
                 class_names=[str(i) for i in range(num_classes)], runtime=runtime)


def halves(n: int = 256, channels: int = 3, size: int = 28, num_classes: int = 2) -> ImageSet:
    """Class 0: bright top half; class 1: bright bottom half (plus noise); class 2 (if any): all dark."""
    g = torch.Generator().manual_seed(0)
    labels = torch.arange(n) % num_classes
    x = torch.rand(n, channels, size, size, generator=g) * 40
    x[labels == 0, :, : size // 2] += 200
    x[labels == 1, :, size // 2 :] += 200
    return ImageSet.create(x.clamp(0, 255).round().to(torch.uint8), labels)


@pytest.mark.parametrize(("channels", "size"), [(1, 28), (3, 28), (1, 32), (3, 32)])
def test_shapes_and_dtypes(tmp_path, channels, size):
    torch.manual_seed(0)
    reporter = _Reporter()
    gen = make(tmp_path, channels=channels, image_size=size, reporter=reporter)
    stats = gen.fit(halves(64, channels, size, num_classes=3))
    assert stats["steps"] == 2 and stats["images_seen"] == 64 and stats["images_per_s"] > 0
    assert all(isinstance(v, float) for k, v in stats.items() if k != "history")  # history: the curves
    (desc, total, task), = reporter.tasks
    assert "dcgan" in desc and total == 2 and task.done == 2
    images = gen.sample(torch.tensor([0, 1, 2, 2, 1]))
    assert images.dtype == torch.uint8 and images.shape == (5, channels, size, size)


def test_sample_count_batches_and_label_check(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path, ema=False, conditioning="cbn", output="linear", minibatch_std=4, mode_seeking=0)
    gen.fit(halves(64))
    images = gen.sample(torch.zeros(1030, dtype=torch.long))  # more than one sampling batch
    assert images.shape == (1030, 3, 28, 28) and images.dtype == torch.uint8
    assert gen.sample(torch.zeros(0, dtype=torch.long)).shape == (0, 3, 28, 28)
    with pytest.raises(ValueError, match="labels must lie in"):
        gen.sample(torch.tensor([3]))


@pytest.mark.parametrize("size", [56, 64])
def test_larger_sizes_build(tmp_path, size):
    gen = make(tmp_path, image_size=size)
    torch.manual_seed(0)
    assert gen.G(torch.randn(4, 64), torch.tensor([0, 1, 2, 0])).shape == (4, 3, size, size)
    assert gen.D(torch.zeros(4, 3, size, size), torch.tensor([0, 1, 2, 0])).shape == (4,)


def test_rejects_bad_sizes_and_options(tmp_path):
    with pytest.raises(ValueError, match="7·2\\^n or 4·2\\^n"):
        make(tmp_path, image_size=30)
    with pytest.raises(ValidationError):
        DCGAN.Options(betas=(0.5, 1.0))
    with pytest.raises(ValidationError, match="multiple of minibatch_std"):
        DCGAN.Options(batch_size=30, minibatch_std=4)
    with pytest.raises(ValidationError):
        DCGAN.Options(widht=8)  # a typo is an error, not a silent default
    # earlier versions took a bool (committed specs say minibatch_std: false)
    assert DCGAN.Options(minibatch_std=False).minibatch_std == 0
    assert DCGAN.Options(minibatch_std=True).minibatch_std == 4


def test_state_dict_round_trip(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path)
    gen.fit(halves(64))
    state = gen.state_dict()
    assert all(isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items())
    assert any(k.startswith("G.") for k in state) and any(k.startswith("G_ema.") for k in state)
    assert not any(k.startswith("D.") for k in state)  # D is not needed to sample

    labels = torch.tensor([0, 1, 2] * 4)
    torch.manual_seed(7)
    expected = gen.sample(labels)
    torch.manual_seed(123)  # a fresh instance gets different random weights...
    fresh = make(tmp_path)
    fresh.load_state_dict(state)  # ...until it loads the state
    torch.manual_seed(7)
    assert torch.equal(fresh.sample(labels), expected)


def test_same_seed_same_weights(tmp_path):
    def train():
        torch.manual_seed(3)
        # exercise the optional paths too
        gen = make(tmp_path, r1_gamma=1.0, augment_shift=0.1, augment_cutout=0.25, minibatch_std=4)
        stats = gen.fit(halves(64))
        return gen.state_dict(), stats

    (a, sa), (b, sb) = train(), train()
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)
    assert sa["loss_d"] == sb["loss_d"] and sa["loss_g"] == sb["loss_g"]


def test_learns_the_class_conditional_layout(tmp_path):
    """A few seconds of training: samples of class 0 are brighter on top, class 1 at the bottom."""
    torch.manual_seed(0)
    gen = make(tmp_path, epochs=6, lr_g=1e-3, lr_d=1e-3, batch_size=32)
    stats = gen.fit(halves(256, num_classes=2))
    torch.manual_seed(0)
    x = gen.sample(torch.tensor([0] * 32 + [1] * 32)).float()
    top, bottom = x[:, :, :14].mean(dim=(1, 2, 3)), x[:, :, 14:].mean(dim=(1, 2, 3))
    diff = top - bottom
    assert diff[:32].mean() > 20 and diff[32:].mean() < -20, (diff[:32].mean(), diff[32:].mean(), stats)
    assert (diff[:32] > 0).float().mean() > 0.9 and (diff[32:] < 0).float().mean() > 0.9


def test_fp16_trains_through_a_grad_scaler(tmp_path):
    """fp16 (older GPUs under precision=auto) needs loss scaling; the scaler is off for bf16/fp32."""
    import math

    from harness.interfaces import Runtime
    from harness.imageset import ImageSet
    from harness.engine.progress import NullReporter

    torch.manual_seed(0)
    rt = Runtime("cpu", "fp16", 0, NullReporter(), tmp_path)
    assert rt.grad_scaler().is_enabled()
    assert not Runtime("cpu", "bf16", 0, NullReporter(), tmp_path).grad_scaler().is_enabled()
    gen = DCGAN(DCGAN.Options(width=8, epochs=1, batch_size=8), num_classes=2, channels=1, image_size=28,
                class_names=["a", "b"], runtime=rt)
    data = ImageSet.create(torch.randint(0, 256, (16, 1, 28, 28), dtype=torch.uint8), torch.arange(16) % 2)
    stats = gen.fit(data)
    assert math.isfinite(stats["loss_d"]) and math.isfinite(stats["loss_g"])
    assert gen.sample(torch.tensor([0, 1])).shape == (2, 1, 28, 28)


def test_fit_checks_the_data(tmp_path):
    from harness.interfaces import Runtime
    from harness.imageset import ImageSet
    from harness.engine.progress import NullReporter

    gen = DCGAN(DCGAN.Options(width=8, epochs=1, batch_size=8), num_classes=2, channels=1, image_size=28,
                class_names=["a", "b"], runtime=Runtime("cpu", "fp32", 0, NullReporter(), tmp_path))
    with pytest.raises(ValueError, match=r"dcgan was built for 1×28² images, got 3×28×28"):
        gen.fit(ImageSet.create(torch.zeros(4, 3, 28, 28, dtype=torch.uint8), [0, 1, 0, 1]))
    with pytest.raises(ValueError, match="dcgan needs at least 2 training images"):
        gen.fit(ImageSet.create(torch.zeros(1, 1, 28, 28, dtype=torch.uint8), [0]))
