"""The shared ImageNet-folder decoder and its shard cache (plugins/datasets/_imagefolder.py)."""

from __future__ import annotations

import json
import os
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from harness.errors import ConfigError, DataError
from plugins.datasets import _imagefolder as imf

HINT = "get ImageNet"


# --------------------------------------------------------------------------------------------------- helpers
# (imported by test_hard_imagenet.py and test_breeds.py)


def write_image(path: Path, array: np.ndarray, fmt: str | None = None) -> Path:
    """Save ``H×W×3`` (or ``H×W``) uint8 ``array``; JPEG unless ``fmt`` says otherwise (PIL opens by content)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fmt = fmt or ("PNG" if path.suffix.lower() == ".png" else "JPEG")
    Image.fromarray(array).save(path, format=fmt, **({"quality": 95} if fmt == "JPEG" else {}))
    return path


def random_image(rng: np.random.Generator, size: tuple[int, int] = (30, 40), tint: int | None = None) -> np.ndarray:
    """A smooth-ish random ``H×W×3`` image (optionally tinted by class, so classes are learnable)."""
    h, w = size
    base = rng.integers(0, 256, (max(2, h // 8), max(2, w // 8), 3), dtype=np.uint8)
    img = np.asarray(Image.fromarray(base).resize((w, h), Image.Resampling.BILINEAR))
    if tint is not None:
        img = img.copy()
        img[..., tint % 3] = np.clip(img[..., tint % 3].astype(int) + 60, 0, 255).astype(np.uint8)
    return img


def fake_imagenet(root: Path, wnids, *, n_train: int, n_val: int, seed: int = 0, size=(30, 40)) -> Path:
    """``root/imagenet/{train,val}/<wnid>/`` with tiny JPEGs named as ImageNet names them."""
    rng = np.random.default_rng(seed)
    k = 0
    for c, wnid in enumerate(wnids):
        for i in range(n_train):
            write_image(root / "imagenet" / "train" / wnid / f"{wnid}_{i + 1}.JPEG", random_image(rng, size, c))
        for _ in range(n_val):
            k += 1
            write_image(root / "imagenet" / "val" / wnid / f"ILSVRC2012_val_{k:08d}.JPEG", random_image(rng, size, c))
    return root / "imagenet"


def items_of(paths) -> list[tuple[str, None]]:
    return [(str(p), None) for p in paths]


@pytest.fixture
def images(tmp_path):
    rng = np.random.default_rng(0)
    return [write_image(tmp_path / "img" / f"{i}.JPEG", random_image(rng, (24 + i, 36))) for i in range(7)]


def load(items, cache_dir, **kw):
    kw.setdefault("size", 16)
    return imf.load_images(items, name="demo", role="train", cache_dir=cache_dir, hint=HINT, **kw)


# --------------------------------------------------------------------------------------------------- decoding


def test_decode_geometry_is_a_centre_crop(tmp_path):
    wide = np.zeros((32, 64, 3), dtype=np.uint8)
    wide[:, :32, 0] = 255  # left half red
    wide[:, 32:, 2] = 255  # right half blue
    wide[:, 16] = (0, 255, 0)  # the first column of the centre square: green
    path = write_image(tmp_path / "wide.png", wide)
    out, wh = imf.decode_image(path, 32, crop=1.0)
    assert wh == (64, 32) and out.shape == (3, 32, 32) and out.dtype == np.uint8
    assert np.array_equal(out, wide[:, 16:48].transpose(2, 0, 1))  # same scale: an exact crop
    small, _ = imf.decode_image(path, 8, crop=0.5)  # the centre 16×16 (columns 24..39), shrunk to 8×8
    assert small[0, :, 0].min() > 200 and small[2, :, -1].min() > 200 and small[1].max() < 10


def test_decode_grey_and_large_jpegs(tmp_path):
    grey = write_image(tmp_path / "grey.JPEG", np.full((50, 60), 77, dtype=np.uint8))
    out, _ = imf.decode_image(grey, 16)
    assert out.shape == (3, 16, 16) and abs(int(out.mean()) - 77) <= 2
    rng = np.random.default_rng(1)
    big = random_image(rng, (600, 800))
    path = write_image(tmp_path / "big.JPEG", big)
    fast, wh = imf.decode_image(path, 32)  # JPEG draft (DCT scaling) then bilinear
    assert wh == (800, 600)
    side = 0.875 * 600
    box = ((800 - side) / 2, (600 - side) / 2, (800 + side) / 2, (600 + side) / 2)
    ref = np.asarray(Image.open(path).convert("RGB").resize((32, 32), Image.Resampling.BILINEAR, box=box))
    assert np.abs(fast.transpose(1, 2, 0).astype(int) - ref.astype(int)).mean() < 4


def test_decode_mask_aligns_with_the_image(tmp_path):
    mask = np.zeros((32, 64), dtype=np.uint8)
    mask[8:12, 20:30] = 1  # any non-zero value is object
    mask[0, 0] = 7  # outside the crop
    path = write_image(tmp_path / "m.png", mask)
    m = imf.decode_mask(path, 32, (64, 32), crop=1.0)
    expected = np.zeros((32, 32), dtype=np.uint8)
    expected[8:12, 4:14] = 1
    assert m.shape == (1, 32, 32) and np.array_equal(m[0], expected)
    # a mask of another size is stretched to its image first
    half = write_image(tmp_path / "half.png", mask[::2, ::2] * 255)
    assert np.array_equal(imf.decode_mask(half, 32, (64, 32), crop=1.0)[0], expected)


# --------------------------------------------------------------------------------------------------- cache


def test_second_load_reads_shards_without_decoding(tmp_path, images, monkeypatch):
    monkeypatch.setattr(imf, "SHARD_SIZE", 3)
    first = load(items_of(images), tmp_path / "cache")
    assert first.cache["hit"] is False and first.images.shape == (7, 3, 16, 16)
    directory = Path(first.cache["dir"])
    assert sorted(p.name for p in directory.iterdir()) == ["index.json", "shard-00000.safetensors",
                                                           "shard-00001.safetensors", "shard-00002.safetensors"]
    index = json.loads((directory / "index.json").read_text())
    assert index["count"] == 7 and [s["count"] for s in index["shards"]] == [3, 3, 1]

    def boom(*args, **kwargs):
        raise AssertionError("decoded a JPEG on a cached load")

    monkeypatch.setattr(imf, "decode_image", boom)
    second = load(items_of(images), tmp_path / "cache")
    assert second.cache == {"dir": str(directory), "key": first.cache["key"], "hit": True}
    assert torch.equal(second.images, first.images)
    # each image decodes as it would alone, in order
    monkeypatch.undo()
    for i, p in enumerate(images):
        assert np.array_equal(first.images[i].numpy(), imf.decode_image(p, 16)[0])


def test_cache_key_follows_files_order_and_parameters(tmp_path, images):
    base = load(items_of(images), tmp_path / "c")
    assert load(items_of(images), tmp_path / "c", size=12).cache["key"] != base.cache["key"]
    assert load(items_of(images), tmp_path / "c", crop=0.5).cache["key"] != base.cache["key"]
    assert load(items_of(images[::-1]), tmp_path / "c").cache["key"] != base.cache["key"]
    assert imf.load_images(items_of(images), name="demo", role="test", size=16, cache_dir=tmp_path / "c",
                           hint=HINT).cache["key"] != base.cache["key"]
    # a replaced file (new size / mtime) misses the cache and is decoded again
    write_image(images[3], np.zeros((10, 10, 3), dtype=np.uint8))
    os.utime(images[3], ns=(1, 1))
    again = load(items_of(images), tmp_path / "c")
    assert again.cache["hit"] is False and again.cache["key"] != base.cache["key"]
    assert again.images[3].max() < 10 and torch.equal(again.images[:3], base.images[:3])


def test_broken_cache_is_rebuilt(tmp_path, images):
    first = load(items_of(images), tmp_path / "c")
    shard = Path(first.cache["dir"]) / "shard-00000.safetensors"
    shard.write_bytes(shard.read_bytes()[:100])
    rebuilt = load(items_of(images), tmp_path / "c")
    assert rebuilt.cache["hit"] is False and torch.equal(rebuilt.images, first.images)
    assert load(items_of(images), tmp_path / "c").cache["hit"] is True
    (Path(first.cache["dir"]) / "index.json").write_text("{not json")
    assert load(items_of(images), tmp_path / "c").cache["hit"] is False


def test_no_cache_dir_and_unwritable_cache(tmp_path, images):
    plain = load(items_of(images), None)
    assert plain.cache == {"dir": None, "key": None, "hit": False}
    off = load(items_of(images), tmp_path / "c", use_cache=False)
    assert not (tmp_path / "c").exists() and torch.equal(off.images, plain.images)
    blocker = tmp_path / "file"
    blocker.write_text("not a folder")
    stuck = load(items_of(images), blocker / "cache")
    assert stuck.cache["dir"] is None and torch.equal(stuck.images, plain.images)


def test_parallel_decoding_matches_inline(tmp_path, images, monkeypatch):
    monkeypatch.setattr(imf, "PARALLEL_MIN", 0)
    monkeypatch.setattr(imf, "CHUNK_SIZE", 2)
    many = images * 3
    parallel = imf.decode_all(items_of(many), size=16, workers=2, dataset="demo", hint=HINT)[0]
    inline = imf.decode_all(items_of(many), size=16, workers=1, dataset="demo", hint=HINT)[0]
    assert torch.equal(parallel, inline)
    (tmp_path / "bad.JPEG").write_bytes(b"\xff\xd8\xff\xe0 truncated")
    with pytest.raises(DataError, match=r"cannot decode .*bad\.JPEG .*damaged"):
        imf.decode_all(items_of(images + [tmp_path / "bad.JPEG"]), size=16, workers=2, dataset="demo", hint=HINT)


def test_damaged_or_missing_files(tmp_path, images):
    bad = tmp_path / "img" / "bad.JPEG"
    bad.write_bytes(b"garbage")
    with pytest.raises(DataError) as err:
        load(items_of(images + [bad]), tmp_path / "c")
    assert "demo: cannot decode" in str(err.value) and "bad.JPEG" in str(err.value) and HINT in str(err.value)
    assert not any((tmp_path / "c").rglob("index.json"))  # no partial cache
    with pytest.raises(DataError, match="disappeared"):
        load(items_of(images + [tmp_path / "gone.JPEG"]), tmp_path / "c")


# --------------------------------------------------------------------------------------------------- folders


def test_folders_listing_and_imagenet_root(tmp_path):
    root = fake_imagenet(tmp_path, ["n01", "n02"], n_train=2, n_val=1)
    (root / "train" / "n01" / "notes.txt").write_text("x")
    write_image(root / "train" / "n01" / "extra.png", np.zeros((4, 4, 3), np.uint8))
    files = imf.list_class_folders(root / "train", ["n01", "n02"], dataset="demo", hint=HINT)
    assert [p.name for p in files[0]] == ["extra.png", "n01_1.JPEG", "n01_2.JPEG"]
    with pytest.raises(DataError, match=r"demo: 1 of 3 class folders are missing or empty .*\(n03\); get"):
        imf.list_class_folders(root / "train", ["n01", "n02", "n03"], dataset="demo", hint=HINT)
    assert imf.find_imagenet_root(tmp_path, None, "demo") == root
    assert imf.find_imagenet_root(root, None, "demo") == root  # the ImageNet folder itself
    assert imf.find_imagenet_root(None, str(root), "demo") == root
    with pytest.raises(DataError, match="image-net.org"):
        imf.find_imagenet_root(tmp_path / "nothing", None, "demo")
    with pytest.raises(DataError, match="no --data-root"):
        imf.find_imagenet_root(None, None, "demo")
    with pytest.raises(DataError, match="has no train/"):
        imf.find_imagenet_root(None, str(tmp_path), "demo")


def test_stratified_pick():
    from plugins.datasets._common import stratified_pick

    cells = np.repeat(np.arange(4), [10, 20, 30, 40])
    idx = stratified_pick(cells, 10, np.random.default_rng(0), what="x")
    assert np.bincount(cells[idx]).tolist() == [1, 2, 3, 4]
    assert stratified_pick(cells, None, np.random.default_rng(0), what="x").size == 100
    with pytest.raises(ConfigError, match="x=101 exceeds the 100"):
        stratified_pick(cells, 101, np.random.default_rng(0), what="x")


def test_a_cache_written_meanwhile_by_another_process_is_kept(tmp_path, images):
    first = load(items_of(images), tmp_path / "c")
    directory = Path(first.cache["dir"])
    stamp = (directory / "index.json").stat().st_mtime_ns
    other = torch.zeros_like(first.images)
    # another process finished the same key between our read and our write: its cache stays
    assert imf._write_cache(directory, other, None, first.cache["key"]) is True
    assert (directory / "index.json").stat().st_mtime_ns == stamp
    assert torch.equal(load(items_of(images), tmp_path / "c").images, first.images)
    # a cache we could not read is replaced
    assert imf._write_cache(directory, other, None, first.cache["key"], broken=True) is True
    assert load(items_of(images), tmp_path / "c").images.max() == 0
    assert not [p for p in directory.parent.iterdir() if p.name.startswith(".")]  # no temporary left behind


_PARENT = os.getpid()
_ORIGINAL_DECODE_CHUNK = imf._decode_chunk


def _dies_in_workers(*args):
    if os.getpid() != _PARENT:
        os._exit(1)  # e.g. killed by the OOM killer
    return _ORIGINAL_DECODE_CHUNK(*args)


def test_a_dying_worker_falls_back_to_decoding_here(tmp_path, images, monkeypatch):
    monkeypatch.setattr(imf, "PARALLEL_MIN", 0)
    monkeypatch.setattr(imf, "CHUNK_SIZE", 3)
    monkeypatch.setattr(imf, "_decode_chunk", _dies_in_workers)
    out = imf.decode_all(items_of(images), size=16, workers=2, dataset="demo", hint=HINT)[0]
    assert torch.equal(out, imf.decode_all(items_of(images), size=16, workers=1, dataset="demo", hint=HINT)[0])


def test_large_sets_are_mapped_from_the_shards(tmp_path, images, monkeypatch):
    from harness.imageset import LazyImages

    monkeypatch.setattr(imf, "SHARD_SIZE", 3)
    plain = load(items_of(images), tmp_path / "c", in_memory=True)
    mapped = load(items_of(images), tmp_path / "c", in_memory=False)
    assert isinstance(mapped.images, LazyImages) and len(mapped.images.parts) == 3
    assert torch.equal(mapped.images[:], plain.images) and mapped.cache["hit"] is True
    # a miss streams into the shards and then maps them; the size rule decides when in_memory is None
    monkeypatch.setenv(imf.ENV_IN_MEMORY, str(7 * 3 * 16 * 16 / 2**30 * 0.99))
    fresh = load(items_of(images), tmp_path / "d")
    assert isinstance(fresh.images, LazyImages) and fresh.cache["hit"] is False
    assert torch.equal(fresh.images[:], plain.images)
    monkeypatch.setenv(imf.ENV_IN_MEMORY, str(7 * 3 * 16 * 16 / 2**30 * 1.01))
    assert isinstance(load(items_of(images), tmp_path / "d").images, torch.Tensor)


def test_shards_stay_near_256_mib():
    assert imf.shard_rows(16) == imf.SHARD_SIZE
    assert imf.shard_rows(224) == 256 * 2**20 // (3 * 224 * 224) == 1783


def test_a_failed_cache_write(tmp_path, images, monkeypatch):
    import safetensors.torch

    def full(*args, **kwargs):
        raise OSError(28, "No space left on device")

    monkeypatch.setattr(safetensors.torch, "save_file", full)
    # a set that fits in memory is decoded there, and the run goes on without a cache
    fallback = load(items_of(images), tmp_path / "c", in_memory=True)
    assert fallback.cache["dir"] is None and fallback.images.shape == (7, 3, 16, 16)
    # one that does not fit stops with one sentence
    with pytest.raises(DataError, match=r"demo: cannot write the image cache under .*No space left.*free 0\.0 GiB"):
        load(items_of(images), tmp_path / "c", in_memory=False)
    assert not [p for p in (tmp_path / "c" / "demo").iterdir()]  # no temporary left behind


def test_decoding_keeps_a_bounded_number_of_chunks_in_flight(tmp_path, images, monkeypatch):
    monkeypatch.setattr(imf, "PARALLEL_MIN", 0)
    monkeypatch.setattr(imf, "CHUNK_SIZE", 1)
    submitted = []

    class Counting(imf.ProcessPoolExecutor):
        def submit(self, *args, **kwargs):
            submitted.append(1)
            return super().submit(*args, **kwargs)

    monkeypatch.setattr(imf, "ProcessPoolExecutor", Counting)
    many = items_of(images * 4)
    stream = imf.iter_decoded(many, size=16, workers=2, dataset="demo", hint=HINT)
    assert next(stream)[0] == 0 and len(submitted) == 4  # 2 × workers chunks ahead, not all 28
    assert [start for start, _, _ in stream] == list(range(1, 28)) and len(submitted) == 28
    inline = imf.decode_all(many, size=16, workers=1, dataset="demo", hint=HINT)[0]
    assert torch.equal(imf.decode_all(many, size=16, workers=2, dataset="demo", hint=HINT)[0], inline)
