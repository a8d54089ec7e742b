"""ImageSet (SPEC §1): images as one uint8 tensor plus per-image integer columns. No per-sample objects."""

from __future__ import annotations

import hashlib
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path

import torch

UNKNOWN_SUBGROUP = -1


@dataclass(frozen=True)
class ImageSet:
    """``images``: uint8 ``N×C×H×W``; ``labels``, ``subgroups`` (``-1`` = unknown), ``origin`` (0 = real,
    ``t`` = made by the generator of generation ``t``): int64 ``N``."""

    images: torch.Tensor
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
        return cls(images.contiguous(), labels, subgroups, origin)

    def __len__(self) -> int:
        return self.images.shape[0]

    @property
    def shape(self) -> tuple[int, int, int]:
        """``(C, H, W)``."""
        return tuple(self.images.shape[1:])  # type: ignore[return-value]

    def subset(self, index: torch.Tensor) -> ImageSet:
        return ImageSet(self.images[index], self.labels[index], self.subgroups[index], self.origin[index])

    def with_labels(self, labels: torch.Tensor) -> ImageSet:
        return ImageSet(self.images, labels.to(torch.int64), self.subgroups, self.origin)

    @staticmethod
    def concat(sets: Sequence[ImageSet]) -> ImageSet:
        if not sets:
            raise ValueError("concat needs at least one ImageSet")
        return ImageSet(
            torch.cat([s.images for s in sets]),
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
        h.update(self.images.contiguous().numpy().tobytes())
        h.update(self.labels.numpy().tobytes())
        h.update(self.subgroups.numpy().tobytes())
        return h.hexdigest()

    # ------------------------------------------------------------------ persistence (safetensors, atomic)

    def tensors(self, prefix: str = "") -> dict[str, torch.Tensor]:
        return {
            f"{prefix}images": self.images,
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
        from harness.rundir import save_tensors

        save_tensors(path, self.tensors())

    @classmethod
    def load(cls, path: Path) -> ImageSet:
        from harness.rundir import load_tensors

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
