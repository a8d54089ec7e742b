from __future__ import annotations

import numpy as np
import pytest
import torch

from harness.imageset import ImageSet, LazyImages, from_unit_float, to_float


def make(n=6):
    return ImageSet.create(torch.arange(n * 3 * 2 * 2, dtype=torch.uint8).view(n, 3, 2, 2), list(range(n)), origin=2)


def test_columns_and_validation():
    s = make()
    assert len(s) == 6 and s.shape == (3, 2, 2)
    assert s.subgroups.tolist() == [-1] * 6 and s.origin.tolist() == [2] * 6
    with pytest.raises(ValueError, match="uint8"):
        ImageSet.create(torch.zeros(2, 1, 2, 2), [0, 1])
    with pytest.raises(ValueError, match="labels"):
        ImageSet(torch.zeros(2, 1, 2, 2, dtype=torch.uint8), torch.zeros(3, dtype=torch.int64),
                 torch.zeros(2, dtype=torch.int64), torch.zeros(2, dtype=torch.int64))


def test_subset_concat_and_roundtrip(tmp_path):
    s = make()
    sub = s.subset(torch.tensor([4, 1]))
    assert sub.labels.tolist() == [4, 1]
    both = ImageSet.concat([s, sub])
    assert len(both) == 8 and torch.equal(both.images[6], s.images[4])
    s.save(tmp_path / "s.safetensors")
    back = ImageSet.load(tmp_path / "s.safetensors")
    assert back.sha256() == s.sha256()


def test_float_conversions():
    x = torch.tensor([[[[0, 255]]]], dtype=torch.uint8)
    assert to_float(x, (0.5,), (0.5,)).flatten().tolist() == [-1.0, 1.0]
    assert from_unit_float(torch.tensor([-1.0, 0.0, 1.0, 2.0])).tolist() == [0, 128, 255, 255]


# --------------------------------------------------------------------------------------------------- lazy images


def mapped_parts(tmp_path, sizes=(5, 3, 4)):
    """Image parts written as safetensors shards and mapped back (what the dataset cache does)."""
    from harness.engine.rundir import map_tensors, save_tensors

    gen = torch.Generator().manual_seed(0)
    parts, mapped = [], []
    for k, n in enumerate(sizes):
        x = torch.randint(0, 256, (n, 3, 4, 4), dtype=torch.uint8, generator=gen)
        save_tensors(tmp_path / f"shard-{k}.safetensors", {"images": x})
        parts.append(x)
        mapped.append(map_tensors(tmp_path / f"shard-{k}.safetensors")["images"])
    return torch.cat(parts), mapped


def test_lazy_images_read_like_the_tensor(tmp_path):
    full, mapped = mapped_parts(tmp_path)
    lazy = LazyImages(mapped)
    assert lazy.shape == full.shape and len(lazy) == 12 and lazy.dtype == torch.uint8 and lazy.ndim == 4
    for key in (slice(None), slice(2, 9), slice(10, 100), slice(None, None, 3), 0, 7, -1,
                torch.tensor([11, 0, 5, 5, 8]), [3, 4], np.array([9, 1]), torch.arange(12) % 2 == 0,
                torch.tensor([], dtype=torch.int64), torch.tensor(4), np.int64(2)):
        assert torch.equal(lazy[key], full[key]), key
    with pytest.raises(IndexError):
        lazy[12]
    with pytest.raises(IndexError):
        lazy[torch.tensor([0, 12])]
    assert torch.equal(lazy.materialize(), full)
    assert torch.equal(torch.cat(list(lazy.chunks(5))), full)


def test_lazy_subset_and_concat_copy_no_pixels(tmp_path):
    full, mapped = mapped_parts(tmp_path)
    real = ImageSet.create(LazyImages(mapped), torch.arange(12) % 3, torch.arange(12) % 2)
    synthetic = ImageSet.create(torch.full((4, 3, 4, 4), 7, dtype=torch.uint8), [0, 1, 2, 0], origin=1)
    sub = real.subset(torch.tensor([10, 2, 2, 6]))
    assert sub.lazy and sub.images.parts == real.images.parts  # only the index is new
    assert torch.equal(sub.images[:], full[[10, 2, 2, 6]]) and sub.labels.tolist() == [1, 2, 2, 0]
    both = ImageSet.concat([sub, synthetic, real.subset(torch.tensor([0]))])
    assert both.lazy and len(both) == 9
    expected = torch.cat([full[[10, 2, 2, 6]], synthetic.images, full[[0]]])
    assert torch.equal(both.images[:], expected) and both.origin.tolist() == [0] * 4 + [1] * 4 + [0]
    assert torch.equal(both.subset(torch.tensor([8, 4])).images[:], expected[[8, 4]])
    # hashing and saving stream the rows; the results equal those of the in-memory set
    plain = ImageSet.create(expected, both.labels, both.subgroups, both.origin)
    assert both.sha256() == plain.sha256() and torch.equal(both.in_memory().images, expected)
    both.save(tmp_path / "both.safetensors")
    assert torch.equal(ImageSet.load(tmp_path / "both.safetensors").images, expected)
    # in-memory sets stay tensors
    assert not ImageSet.concat([synthetic, synthetic]).lazy


def test_map_tensors_refuses_damaged_files(tmp_path):
    from harness.engine.rundir import map_tensors, save_tensors

    save_tensors(tmp_path / "a.safetensors", {"images": torch.ones(4, 3, 8, 8, dtype=torch.uint8),
                                              "f": torch.zeros(2)})
    with pytest.raises(ValueError, match="only U8 and I64"):
        map_tensors(tmp_path / "a.safetensors")
    save_tensors(tmp_path / "b.safetensors", {"images": torch.ones(4, 3, 8, 8, dtype=torch.uint8)})
    data = (tmp_path / "b.safetensors").read_bytes()
    (tmp_path / "b.safetensors").write_bytes(data[:-10])
    with pytest.raises(ValueError, match="truncated"):
        map_tensors(tmp_path / "b.safetensors")
    (tmp_path / "c.safetensors").write_bytes(b"\x01")
    with pytest.raises(ValueError, match="not a safetensors file"):
        map_tensors(tmp_path / "c.safetensors")
