"""Hard ImageNet dataset plugin: the release's layout (ImageNet folders + per-image masks), the three ablations on
known pixels, caching, error paths, and a tiny end-to-end run."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from pydantic import ValidationError

from harness.errors import ConfigError, DataError
from harness.specs import PAPER_IMAGE_ORACLE
from plugins.datasets import _imagefolder
from plugins.datasets import hard_imagenet as hi
from plugins.datasets.hard_imagenet import GRAY, WNIDS, HardImageNet, HardImageNetOptions, ablate
from tests.test_dataset_cache import random_image, write_image


def write_release(root: Path, *, n_train: int = 3, n_val: int = 2, extra_train: int = 1, size=(30, 40),
                  seed: int = 0) -> dict:
    """``root/imagenet/{train,val}/<wnid>/`` JPEGs and ``root/hardImageNet/{train,val}/<wnid>_<file>`` masks.

    Masks are PNG-encoded, named after their image (the release keeps the image's file name). Train images beyond
    ``n_train`` (``extra_train``) have no mask, as in the release (train_images="all" uses them)."""
    rng = np.random.default_rng(seed)
    h, w = size
    k = 0
    for c, wnid in enumerate(WNIDS):
        for i in range(n_train + extra_train):
            name = f"{wnid}_{100 + i}.JPEG"
            write_image(root / "imagenet" / "train" / wnid / name, random_image(rng, size, c))
            if i < n_train:
                mask = np.zeros((h, w), dtype=np.uint8)
                mask[h // 4 : h // 2, w // 3 : w // 2] = 255
                write_image(root / "hardImageNet" / "train" / f"{wnid}_{name}", mask, fmt="PNG")
        for _ in range(n_val):
            k += 1
            name = f"ILSVRC2012_val_{k:08d}.JPEG"
            write_image(root / "imagenet" / "val" / wnid / name, random_image(rng, size, c))
            mask = np.zeros((h, w), dtype=np.uint8)
            mask[h // 3 : h // 3 + 6, w // 2 : w // 2 + 5 + k % 3] = 1
            write_image(root / "hardImageNet" / "val" / f"{wnid}_{name}", mask, fmt="PNG")
    (root / "hardImageNet" / "meta").mkdir()
    return {"n_train": n_train, "n_val": n_val}


def make(root: Path | None, cache: Path | None = None, **options) -> HardImageNet:
    options.setdefault("resolution", 16)
    options.setdefault("workers", 1)
    return HardImageNet(HardImageNetOptions(**options), data_root=root, cache_dir=cache)


@pytest.fixture
def release(tmp_path):
    write_release(tmp_path)
    return tmp_path


# --------------------------------------------------------------------------------------------------- ablations


def picture() -> tuple[np.ndarray, np.ndarray]:
    """3×8×10 image, pixel (c, r, x) = 100c + 10r + x; an L-shaped object in rows 2..4, columns 6..7."""
    c, r, x = np.meshgrid(np.arange(3), np.arange(8), np.arange(10), indexing="ij")
    image = (100 * c + 10 * r + x).astype(np.uint8)
    mask = np.zeros((8, 10), dtype=np.uint8)
    mask[2:5, 6] = 1
    mask[4, 7] = 1
    return image, mask


def test_object_and_bbox_gray_exact_pixels():
    image, mask = picture()
    assert hi.mask_bbox(mask) == (2, 4, 6, 7)
    obj = hi.object_gray(image, mask)
    expected = image.copy()
    expected[:, [2, 3, 4, 4], [6, 6, 6, 7]] = GRAY
    assert np.array_equal(obj, expected) and obj[0, 2, 7] == 27  # inside the box but not the object: untouched
    box = hi.bbox_gray(image, mask)
    expected = image.copy()
    expected[:, 2:5, 6:8] = GRAY
    assert np.array_equal(box, expected) and GRAY == 128
    empty = np.zeros_like(mask)
    assert np.array_equal(hi.object_gray(image, empty), image) and hi.mask_bbox(empty) is None
    assert np.array_equal(hi.bbox_gray(image, empty), image)


def test_bbox_tile_exact_pixels():
    image, mask = picture()
    # box rows 2..4, columns 6..7 (h 3, w 2): room left 6, right 2, above 2, below 3 → left/right strips of area
    # 2×3 = 6 tie with the below strip (2 rows × w 2 = 4 < 6): the left one wins the tie; columns 4..5 shift by 2
    out, fell = hi.bbox_tile(image, mask)
    expected = image.copy()
    expected[:, 2:5, 6:8] = image[:, 2:5, 4:6]
    assert not fell and np.array_equal(out, expected)
    # a box against the left border with a narrow right strip: the tile repeats periodically
    mask2 = np.zeros((8, 10), dtype=np.uint8)
    mask2[0:8, 0:7] = 1  # rows 0..7 (no room above/below), columns 0..6 (no room left), 3 columns right
    out2, _ = hi.bbox_tile(image, mask2)
    # tile = columns 7..9; box column x takes 7 + ((x - 7) mod 3): 0→9, 1→7, 2→8, 3→9, 4→7, 5→8, 6→9
    assert np.array_equal(out2[:, :, :7], image[:, :, [9, 7, 8, 9, 7, 8, 9]])
    assert np.array_equal(out2[:, :, 7:], image[:, :, 7:])
    # vertical strips: a wide box near the top
    mask3 = np.zeros((8, 10), dtype=np.uint8)
    mask3[1:3, 0:10] = 1
    out3, _ = hi.bbox_tile(image, mask3)  # above: 1 row (area 10), below: 2 rows (area 20) → below
    assert np.array_equal(out3[:, 1:3], image[:, 3:5]) and np.array_equal(out3[:, 3:], image[:, 3:])
    # no context at all: gray
    full = np.ones((8, 10), dtype=np.uint8)
    out4, fell4 = hi.bbox_tile(image, full)
    assert fell4 and (out4 == GRAY).all()
    assert np.array_equal(hi.bbox_tile(image, np.zeros_like(full))[0], image)


def test_ablate_batches_and_counts():
    image, mask = picture()
    images = torch.from_numpy(np.stack([image, image, image]))
    masks = torch.from_numpy(np.stack([mask, np.zeros_like(mask), np.ones_like(mask)])[:, None])
    out, stats = ablate(images, masks)
    assert set(out) == {"object_gray", "bbox_gray", "bbox_tile"}
    assert torch.equal(out["bbox_gray"][0], torch.from_numpy(hi.bbox_gray(image, mask)))
    assert torch.equal(out["object_gray"][1], images[1]) and (out["bbox_tile"][2] == GRAY).all()
    assert stats == {"empty_masks": 1, "tile_fell_back_to_gray": 1}
    assert set(ablate(images, masks, ("bbox_tile",))[0]) == {"bbox_tile"}


# --------------------------------------------------------------------------------------------------- loading


def test_load_release_layout(release, tmp_path):
    b = make(release, tmp_path / "cache").load()
    assert b.num_classes == 15 and b.class_names[0] == "dog sled" and b.class_names[2] == "seat belt"
    assert (len(b.train), len(b.test)) == (45, 30) and b.train.images.shape[1:] == (3, 16, 16)
    assert b.train.class_counts(15).tolist() == [3] * 15 and b.test.class_counts(15).tolist() == [2] * 15
    assert b.subgroup_scope == "global" and b.subgroup_names == ("all",) and b.num_subgroups == 1
    assert int(b.train.subgroups.abs().sum()) == 0
    assert sorted(b.variants) == ["bbox_gray", "bbox_tile", "object_gray"]
    for v in b.variants.values():
        assert torch.equal(v.labels, b.test.labels) and v.images.shape == b.test.images.shape
    # the variants are the ablations of the decoded test images with their decoded masks
    test_items = sorted((release / "hardImageNet" / "val").iterdir())
    assert len(test_items) == 30
    src = b.source
    assert src["num_images"] == 75 and src["mask_stats"] == {"empty_masks": 0, "tile_fell_back_to_gray": 0}
    assert src["wnids"] == list(WNIDS) and src["imagenet_indices"][0] == 537 and len(src["sha256"]) == 64
    assert src["cache"]["test"]["hit"] is False
    json.dumps(src)
    # gray pixels appear exactly where the decoded mask is (the fixture images have no pixel at exactly 128
    # in all three channels inside the object)
    gray = (b.variants["object_gray"].images == GRAY).all(1)
    changed = (b.variants["object_gray"].images != b.test.images).any(1)
    assert changed.sum() > 0 and bool((gray | ~changed).all())
    box = (b.variants["bbox_gray"].images == GRAY).all(1)
    assert bool((box | ~gray).all())  # the box covers the object


def test_variants_match_masks_on_known_pixels(tmp_path):
    """A lossless 16×16 image at resolution 16 with crop 1.0: decoding is exact, so every variant is known."""
    write_release(tmp_path, n_train=1, n_val=1, extra_train=0)
    wnid = WNIDS[4]
    val = next((tmp_path / "imagenet" / "val" / wnid).iterdir())
    image, mask = picture()
    big = np.zeros((3, 16, 16), dtype=np.uint8)
    big[:, 4:12, 3:13] = image
    big_mask = np.zeros((16, 16), dtype=np.uint8)
    big_mask[4:12, 3:13] = mask
    write_image(val, big.transpose(1, 2, 0), fmt="PNG")  # named .JPEG like ImageNet, PNG inside: exact pixels
    write_image(tmp_path / "hardImageNet" / "val" / f"{wnid}_{val.name}", big_mask * 255, fmt="PNG")
    b = make(tmp_path, None, crop=1.0).load()
    i = int(torch.nonzero(b.test.labels == 4)[0])
    assert np.array_equal(b.test.images[i].numpy(), big)
    assert np.array_equal(b.variants["object_gray"].images[i].numpy(), hi.object_gray(big, big_mask))
    assert np.array_equal(b.variants["bbox_gray"].images[i].numpy(), hi.bbox_gray(big, big_mask))
    assert np.array_equal(b.variants["bbox_tile"].images[i].numpy(), hi.bbox_tile(big, big_mask)[0])
    expected = big.copy()
    expected[:, 6:9, 9:11] = GRAY  # rows 2..4 + 4, columns 6..7 + 3
    assert np.array_equal(b.variants["bbox_gray"].images[i].numpy(), expected)


def test_train_images_all_and_subsampling(release):
    b = make(release, train_images="all", variants=["bbox_tile"]).load()
    assert len(b.train) == 60 and list(b.variants) == ["bbox_tile"]
    s = make(release, train_size=15, test_size=15, seed=3).load()
    assert s.train.class_counts(15).tolist() == [1] * 15 and s.test.class_counts(15).tolist() == [1] * 15
    with pytest.raises(ConfigError, match="train_size=46 exceeds the 45"):
        make(release, train_size=46).load()
    with pytest.raises(ConfigError, match="test_size=31"):
        make(release, test_size=31).check()


def test_second_load_reads_shards(release, tmp_path, monkeypatch):
    first = make(release, tmp_path / "cache").load()

    def boom(*args, **kwargs):
        raise AssertionError("decoded an image on a cached load")

    monkeypatch.setattr(_imagefolder, "decode_image", boom)
    monkeypatch.setattr(_imagefolder, "decode_mask", boom)
    second = make(release, tmp_path / "cache").load()
    assert second.source["cache"]["train"]["hit"] and second.source["cache"]["test"]["hit"]
    assert torch.equal(second.train.images, first.train.images)
    for name in first.variants:
        assert torch.equal(second.variants[name].images, first.variants[name].images)
    assert (tmp_path / "cache" / "hard-imagenet").is_dir()


def test_options_and_roots(release, tmp_path):
    b = make(None, imagenet_root=str(release / "imagenet"), masks_root=str(release / "hardImageNet")).load()
    assert len(b.test) == 30
    with pytest.raises(ValidationError):
        HardImageNetOptions(variants=["object_gray", "object_gray"])
    with pytest.raises(ValidationError):
        HardImageNetOptions(variants=["blur"])
    with pytest.raises(ValidationError):
        HardImageNetOptions(resolutoin=32)
    opts = HardImageNetOptions(variants=["bbox_gray"])
    assert HardImageNetOptions.model_validate(opts.model_dump(mode="json")) == opts
    assert HardImageNet.paper_defaults == {"filter": {"keep": 0.4}, "loop": {"generations": 4},
                                  "metrics": {"oracle": PAPER_IMAGE_ORACLE}}
    line = make(release).check()
    assert "45 train / 30 test images, 15 classes" in line and "\n" not in line


# --------------------------------------------------------------------------------------------------- errors


def test_missing_masks(tmp_path):
    write_release(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "hardImageNet")
    with pytest.raises(DataError, match=r"masks not found .*github.com/mmoayeri/HardImageNet.*masks_root"):
        make(tmp_path).load()
    with pytest.raises(DataError, match="no --data-root"):
        make(None).load()


def test_missing_imagenet(tmp_path):
    write_release(tmp_path)
    import shutil

    shutil.rmtree(tmp_path / "imagenet" / "val")
    with pytest.raises(DataError, match="has no val/ folder .*image-net.org"):
        make(tmp_path).load()
    shutil.rmtree(tmp_path / "imagenet")
    with pytest.raises(DataError, match="no ImageNet under .*image-net.org"):
        make(tmp_path).check()


def test_mask_without_its_image(release):
    next((release / "imagenet" / "val" / WNIDS[3]).iterdir()).unlink()
    with pytest.raises(DataError, match=r"1 masked images are missing from ImageNet val \(validation images must be "
                                        r"sorted into class folders\)"):
        make(release).load()


def test_incomplete_or_foreign_mask_folder(release):
    for p in (release / "hardImageNet" / "val").glob(f"{WNIDS[7]}_*"):
        p.unlink()
    with pytest.raises(DataError, match="no masks for 1 of the 15 classes .*n03535780"):
        make(release).load()


def test_foreign_mask_folder(release):
    write_image(release / "hardImageNet" / "train" / "n01440764_n01440764_1.JPEG", np.zeros((4, 4), np.uint8))
    with pytest.raises(DataError, match="not Hard ImageNet's"):
        make(release).load()


def test_damaged_jpeg(release):
    victim = next((release / "imagenet" / "train" / WNIDS[0]).iterdir())
    victim.write_bytes(b"\xff\xd8 not really")
    with pytest.raises(DataError, match=f"cannot decode .*{victim.name}"):
        make(release).load()


# --------------------------------------------------------------------------------------------------- end to end


@pytest.mark.parametrize("in_memory_gb", ["4", "0"], ids=["in-memory", "mapped"])
def test_bench_run_hard_imagenet_end_to_end(tmp_path, monkeypatch, in_memory_gb):
    """``0``: the train split is read from memory-mapped shards; the test split (edited by the ablations) stays
    in memory either way."""
    from tests.test_cifar import run_bench

    monkeypatch.setenv(_imagefolder.ENV_IN_MEMORY, in_memory_gb)
    torch.set_num_threads(1)
    write_release(tmp_path / "data", n_train=4, n_val=2, extra_train=0)
    res = run_bench(tmp_path, tmp_path / "data",
                    {"name": "hard-imagenet", "options": {"resolution": 32, "workers": 1}})
    assert res["status"] == "complete" and res["dataset"]["variants"] == ["bbox_gray", "bbox_tile", "object_gray"]
    assert res["dataset"]["image_shape"] == [3, 32, 32]
    for gen in res["generations"]:
        m = gen["classifiers"]["lenet"]["per_seed"][0]
        assert set(m["variants"]) == {"object_gray", "bbox_gray", "bbox_tile"}
        for v in m["variants"].values():
            assert 0.0 <= v["acc"] <= 1.0 and abs(m["acc"] - v["acc"] - v["drop"]) < 1e-9
        assert m["meo"] is None  # one group: no subgroup metrics
    assert (tmp_path / "data" / ".cache" / "hard-imagenet").is_dir()
