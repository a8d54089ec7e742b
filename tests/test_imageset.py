from __future__ import annotations

import pytest
import torch

from harness.imageset import ImageSet, from_unit_float, to_float


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
