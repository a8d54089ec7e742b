"""The conditional DCGAN on tiny configs: shapes, sampling contract, state round trip, determinism, learning."""

from __future__ import annotations

import pytest
import torch

from harness.hookspecs import Runtime
from harness.imageset import ImageSet
from harness.progress import NullReporter
from plugins.generators.dcgan import DCGAN


def make(tmp_path, *, channels=3, size=28, num_classes=4, **options):
    opts = DCGAN.Options(**{"width": 8, "z_dim": 16, "embed_dim": 8, "epochs": 1, "batch_size": 16, **options})
    runtime = Runtime("cpu", "fp32", 0, NullReporter(), tmp_path)
    return DCGAN(opts, num_classes=num_classes, channels=channels, image_size=size,
                 class_names=[str(i) for i in range(num_classes)], runtime=runtime)


def data(n=64, channels=3, size=28, num_classes=4, seed=0):
    g = torch.Generator().manual_seed(seed)
    labels = torch.arange(n) % num_classes
    # class c is a bright square in quadrant c: an easy, known structure
    images = torch.randint(0, 30, (n, channels, size, size), generator=g, dtype=torch.uint8)
    h = size // 2
    for c in range(num_classes):
        r, q = divmod(c, 2)
        images[labels == c, :, r * h:(r + 1) * h, q * h:(q + 1) * h] = 220
    return ImageSet.create(images, labels)


@pytest.mark.parametrize("channels, size", [(3, 28), (1, 28), (3, 32), (1, 64)])
def test_fit_and_sample_follow_the_contract(tmp_path, channels, size):
    torch.manual_seed(0)
    gen = make(tmp_path, channels=channels, size=size)
    stats = gen.fit(data(32, channels, size))
    assert stats["images_seen"] > 0 and stats["images_per_s"] > 0
    labels = torch.tensor([0, 1, 2, 3, 3])
    out = gen.sample(labels)
    assert out.dtype == torch.uint8 and out.shape == (5, channels, size, size)


def test_unsupported_sizes_and_labels_are_refused(tmp_path):
    with pytest.raises(ValueError, match="image sizes"):
        make(tmp_path, size=30)
    gen = make(tmp_path)
    with pytest.raises(ValueError, match="labels must lie"):
        gen.sample(torch.tensor([7]))


def test_state_round_trip_gives_identical_samples(tmp_path):
    torch.manual_seed(0)
    gen = make(tmp_path)
    gen.fit(data())
    state = gen.state_dict()
    assert all(isinstance(v, torch.Tensor) for v in state.values())
    torch.manual_seed(1)
    fresh = make(tmp_path)
    fresh.load_state_dict(state)
    labels = torch.arange(8) % 4
    torch.manual_seed(5)
    a = gen.sample(labels)
    torch.manual_seed(5)
    b = fresh.sample(labels)
    assert torch.equal(a, b)


def test_same_seed_same_weights(tmp_path):
    runs = []
    for _ in range(2):
        torch.manual_seed(3)
        gen = make(tmp_path)
        gen.fit(data())
        runs.append(gen.state_dict())
    assert runs[0].keys() == runs[1].keys()
    assert all(torch.equal(runs[0][k], runs[1][k]) for k in runs[0])


def test_it_learns_the_class_conditional_structure(tmp_path):
    """After a few epochs on 'a bright square in quadrant c', samples of class c are brightest in quadrant c."""
    torch.manual_seed(0)
    gen = make(tmp_path, epochs=30, width=8, loss="bce", spectral_norm=False, minibatch_std=False,
               augment_shift=0.0, lr_d=2e-4)
    gen.fit(data(256))
    labels = torch.arange(4).repeat_interleave(16)
    x = gen.sample(labels).float().mean(1)  # N×H×W
    h = 14
    quad = torch.stack([x[:, r * h:(r + 1) * h, q * h:(q + 1) * h].mean((1, 2)) for r in (0, 1) for q in (0, 1)], 1)
    hit = (quad.argmax(1) == labels).float().mean().item()
    assert hit > 0.6, f"only {hit:.2f} of samples put their class's square in the right quadrant"
