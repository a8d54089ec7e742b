"""What the dataset plugins share: subsets that keep each class's share exactly, and the ``paper`` preset's layer
for the natural-image datasets (SPEC §2)."""

from __future__ import annotations

from typing import Any

import numpy as np

from harness.errors import ConfigError
from harness.specs import PAPER_IMAGE_ORACLE


def largest_remainder(n: int, p: np.ndarray) -> np.ndarray:
    """Integer counts summing to ``n`` proportional to ``p`` (Hamilton's method; ties go to the lower index)."""
    p = np.asarray(p, dtype=np.float64)
    p = p / p.sum()
    exact = n * p
    counts = np.floor(exact).astype(np.int64)
    short = n - int(counts.sum())
    if short > 0:
        order = np.argsort(-(exact - counts), kind="stable")
        counts[order[:short]] += 1
    return counts


def stratified_subset(labels: np.ndarray, size: int, rng: np.random.Generator) -> np.ndarray:
    """Sorted indices of a ``size``-subset whose class proportions follow ``labels``'s (exact quotas)."""
    classes, freq = np.unique(labels, return_counts=True)
    quotas = largest_remainder(size, freq)
    picked = [rng.choice(np.flatnonzero(labels == c), k, replace=False) for c, k in zip(classes, quotas, strict=True)]
    return np.sort(np.concatenate(picked))


def check_size(size: int | None, available: int, *, what: str) -> None:
    """:raises ConfigError: a subset of ``size`` images (``what``: the option, ``"cifar option train_size"``) was
    asked for, and only ``available`` exist."""
    if size is not None and size > available:
        raise ConfigError(f"{what}={size} exceeds the {available} images available")


def stratified_pick(cells: np.ndarray, size: int | None, rng: np.random.Generator, *, what: str) -> np.ndarray:
    """Sorted indices of a ``size``-subset keeping each cell's share (exact quotas), or all indices (``None``).

    :raises ConfigError: as :func:`check_size`.
    """
    check_size(size, cells.size, what=what)
    return np.arange(cells.size) if size is None else stratified_subset(cells, size, rng)


def natural_image_paper_defaults(*, keep: float, generations: int) -> dict[str, Any]:
    """The ``paper`` preset's layer for a natural-image dataset: Zhang et al.'s ``keep`` and ``T`` for it, and the
    natural-image oracle (the MNIST-sized default would misjudge most generated images)."""
    return {"filter": {"keep": keep}, "loop": {"generations": generations}, "metrics": {"oracle": PAPER_IMAGE_ORACLE}}


#: The ImageNet subsets (``breeds``, ``hard-imagenet``): keep 0.4, T = 4 (SPEC §2).
IMAGENET_PAPER_DEFAULTS = natural_image_paper_defaults(keep=0.4, generations=4)
