"""ImageSet (SPEC §1): uint8 images plus per-image integer columns. No per-sample objects.

Images are one in-memory uint8 tensor, or — for data that must not be held in RAM (ImageNet-scale sets at 224 px)
— a :class:`LazyImages`: memory-mapped shards seen through an index. ``subset`` and ``concat`` of lazy images
compose indices and copy no pixels; ``images[idx]`` (what training and evaluation loops do per batch) reads only
the rows asked for.
"""

from __future__ import annotations

import hashlib
from collections.abc import Iterator, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch

UNKNOWN_SUBGROUP = -1
#: Rows per read when a whole lazy image set is streamed (hashing, saving).
CHUNK_ROWS = 4096


class LazyImages:
    """uint8 ``N×C×H×W`` images that are not one tensor: the concatenation of ``parts`` (tensors of equal
    ``C×H×W``, typically memory-mapped shard files), seen through ``index`` (int64 positions into that
    concatenation; ``None`` = all, in order).

    It supports what the harness does with images: ``shape``, ``dtype``, ``ndim``, ``len``, and ``x[key]`` for an
    int, a slice, or an integer tensor/array/list, which returns an in-memory uint8 tensor gathered part by part
    (one vectorised gather per part touched, no per-image Python). :meth:`take` and :meth:`concat` only compose
    indices. Reading is thread- and process-safe (pages come from the OS page cache).
    """

    def __init__(self, parts: Sequence[torch.Tensor], index: torch.Tensor | None = None):
        if not parts:
            raise ValueError("LazyImages needs at least one part")
        shapes = {tuple(p.shape[1:]) for p in parts}
        if len(shapes) != 1 or any(p.dtype != torch.uint8 or p.ndim != 4 for p in parts):
            raise ValueError(f"LazyImages parts must be uint8 N×C×H×W of one C×H×W, got {sorted(shapes)}")
        self.parts = tuple(parts)
        sizes = torch.tensor([p.shape[0] for p in parts], dtype=torch.int64)
        self._offsets = torch.cumsum(sizes, 0) - sizes
        self._total = int(sizes.sum())
        self.index = None if index is None else torch.as_tensor(index, dtype=torch.int64)
        n = self._total if self.index is None else self.index.numel()
        self.shape = torch.Size((n, *shapes.pop()))

    dtype = torch.uint8
    ndim = 4
    device = torch.device("cpu")

    def __len__(self) -> int:
        return self.shape[0]

    def __repr__(self) -> str:
        return f"LazyImages(shape={tuple(self.shape)}, parts={len(self.parts)}, indexed={self.index is not None})"

    @property
    def nbytes(self) -> int:
        return int(np.prod(self.shape))

    def _positions(self, key: Any) -> torch.Tensor:
        n = len(self)
        if isinstance(key, slice):
            pos = torch.arange(n)[key]
        elif isinstance(key, int | np.integer):
            k = int(key)
            if not -n <= k < n:
                raise IndexError(f"index {k} out of range for {n} images")
            pos = torch.tensor([k % n])
        else:
            pos = torch.as_tensor(np.asarray(key) if isinstance(key, list) else key)
            if pos.dtype == torch.bool:
                pos = torch.nonzero(pos.flatten()).flatten()
            pos = pos.to(torch.int64).flatten()
            if pos.numel() and (int(pos.min()) < -n or int(pos.max()) >= n):
                raise IndexError(f"index out of range for {n} images")
            pos = torch.where(pos < 0, pos + n, pos)
        return (pos if self.index is None else self.index[pos]).contiguous()

    def _gather(self, rows: torch.Tensor) -> torch.Tensor:
        """Rows of the concatenation of the parts, as one in-memory tensor."""
        out = torch.empty((rows.numel(), *self.shape[1:]), dtype=torch.uint8)
        if rows.numel() == 0:
            return out
        which = torch.searchsorted(self._offsets, rows, right=True) - 1
        for k in torch.unique(which).tolist():
            sel = torch.nonzero(which == k).flatten()
            local = rows[sel] - self._offsets[k]
            lo, hi = int(local.min()), int(local.max()) + 1
            if hi - lo == local.numel() and bool((local[1:] > local[:-1]).all()):
                out[sel] = self.parts[k][lo:hi]  # a run of rows: one sequential read
            else:
                out[sel] = self.parts[k][local]
        return out

    def __getitem__(self, key: Any) -> torch.Tensor:
        if isinstance(key, torch.Tensor | np.ndarray) and key.ndim == 0 and key.dtype != torch.bool:
            key = int(key)
        got = self._gather(self._positions(key))
        return got[0] if isinstance(key, int | np.integer) else got

    def take(self, index: torch.Tensor) -> LazyImages:
        """The images at ``index`` (positions in this set), without reading any."""
        return LazyImages(self.parts, self._positions(index))

    def rows(self) -> torch.Tensor:
        """Positions of this set's images in the concatenation of its parts."""
        return torch.arange(self._total) if self.index is None else self.index

    def chunks(self, rows: int = CHUNK_ROWS) -> Iterator[torch.Tensor]:
        for start in range(0, len(self), rows):
            yield self[start : start + rows]

    def materialize(self) -> torch.Tensor:
        """All images as one in-memory tensor (only for sets known to fit in RAM)."""
        return self[:]

    @staticmethod
    def concat(images: Sequence[torch.Tensor | LazyImages]) -> LazyImages:
        """Concatenation of in-memory tensors and lazy sets, as index arithmetic over their parts."""
        parts: list[torch.Tensor] = []
        index: list[torch.Tensor] = []
        base = 0
        for x in images:
            if isinstance(x, LazyImages):
                parts.extend(x.parts)
                index.append(x.rows() + base)
                base += x._total
            else:
                parts.append(x)
                index.append(torch.arange(x.shape[0]) + base)
                base += x.shape[0]
        return LazyImages(parts, torch.cat(index))


def _chunks(images: torch.Tensor | LazyImages) -> Iterator[torch.Tensor]:
    if isinstance(images, LazyImages):
        yield from images.chunks()
    else:
        yield images


@dataclass(frozen=True)
class ImageSet:
    """``images``: uint8 ``N×C×H×W``; ``labels``, ``subgroups`` (``-1`` = unknown), ``origin`` (0 = real,
    ``t`` = made by the generator of generation ``t``): int64 ``N``."""

    images: torch.Tensor | LazyImages
    labels: torch.Tensor
    subgroups: torch.Tensor
    origin: torch.Tensor

    def __post_init__(self) -> None:
        n = self.images.shape[0]
        if self.images.dtype != torch.uint8 or self.images.ndim != 4:
            raise ValueError(f"images must be uint8 N×C×H×W, got {self.images.dtype} {tuple(self.images.shape)}")
        for name in ("labels", "subgroups", "origin"):
            col = getattr(self, name)
            if col.dtype != torch.int64 or col.shape != (n,):
                raise ValueError(f"{name} must be int64 of shape ({n},), got {col.dtype} {tuple(col.shape)}")

    @classmethod
    def create(
        cls,
        images: torch.Tensor,
        labels: torch.Tensor | Sequence[int],
        subgroups: torch.Tensor | Sequence[int] | None = None,
        origin: int | torch.Tensor = 0,
    ) -> ImageSet:
        n = images.shape[0]
        labels = torch.as_tensor(labels, dtype=torch.int64)
        subgroups = (
            torch.full((n,), UNKNOWN_SUBGROUP, dtype=torch.int64)
            if subgroups is None
            else torch.as_tensor(subgroups, dtype=torch.int64)
        )
        origin = torch.full((n,), origin, dtype=torch.int64) if isinstance(origin, int) else origin.to(torch.int64)
        return cls(images if isinstance(images, LazyImages) else images.contiguous(), labels, subgroups, origin)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    @property
    def lazy(self) -> bool:
        """Whether the images are :class:`LazyImages` (read on demand) rather than one in-memory tensor."""
        return isinstance(self.images, LazyImages)

    def subset(self, index: torch.Tensor) -> ImageSet:
        index = torch.as_tensor(index)
        images = self.images.take(index) if isinstance(self.images, LazyImages) else self.images[index]
        return ImageSet(images, self.labels[index], self.subgroups[index], self.origin[index])

    def in_memory(self) -> ImageSet:
        """The same set with its images read into one tensor (a no-op when they already are)."""
        if not isinstance(self.images, LazyImages):
            return self
        return ImageSet(self.images.materialize(), self.labels, self.subgroups, self.origin)

    def with_labels(self, labels: torch.Tensor) -> ImageSet:
        return ImageSet(self.images, labels.to(torch.int64), self.subgroups, self.origin)

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        if not sets:
            raise ValueError("concat needs at least one ImageSet")
        lazy = any(isinstance(s.images, LazyImages) for s in sets)
        return ImageSet(
            LazyImages.concat([s.images for s in sets]) if lazy else torch.cat([s.images for s in sets]),
            torch.cat([s.labels for s in sets]),
            torch.cat([s.subgroups for s in sets]),
            torch.cat([s.origin for s in sets]),
        )

    def class_counts(self, num_classes: int) -> torch.Tensor:
        return torch.bincount(self.labels, minlength=num_classes)

    def sha256(self) -> str:
        """Content hash of images and labels (recorded as the dataset checksum)."""
        h = hashlib.sha256()
        h.update(str(tuple(self.images.shape)).encode())
        for chunk in _chunks(self.images):
            h.update(chunk.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        h.update(self.subgroups.numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ persistence (safetensors, atomic)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        """The columns as tensors (lazy images are read into memory)."""
        images = self.images.materialize() if isinstance(self.images, LazyImages) else self.images
        return {
            f"{prefix}images": images,
            f"{prefix}labels": self.labels,
            f"{prefix}subgroups": self.subgroups,
            f"{prefix}origin": self.origin,
        }

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor], prefix: str = "") -> ImageSet:
        return cls(
            tensors[f"{prefix}images"],
            tensors[f"{prefix}labels"],
            tensors[f"{prefix}subgroups"],
            tensors[f"{prefix}origin"],
        )

    def save(self, path: Path) -> None:
        from harness.engine.rundir import save_tensors

        save_tensors(path, self.tensors())

    @classmethod
    def load(cls, path: Path) -> ImageSet:
        from harness.engine.rundir import load_tensors

        return cls.from_tensors(load_tensors(path))


def to_float(images: torch.Tensor, mean: Sequence[float], std: Sequence[float]) -> torch.Tensor:
    """uint8 ``N×C×H×W`` → normalised float32, ``(x/255 − mean) / std`` per channel."""
    x = images.float().div_(255.0)
    m = torch.tensor(mean, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    s = torch.tensor(std, dtype=x.dtype, device=x.device).view(1, -1, 1, 1)
    return x.sub_(m).div_(s)


def from_unit_float(x: torch.Tensor) -> torch.Tensor:
    """Float images in ``[-1, 1]`` → uint8 ``[0, 255]`` (the usual generator output convention)."""
    return ((x.float().clamp(-1, 1) + 1) * 127.5).round_().to(torch.uint8)
