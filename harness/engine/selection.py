"""Selection rules of the loop, vectorised: the filter's per-class quota, proportional labels, and the oracle's
subgroup-balanced resample. Pure torch; no plugin, no file."""

from __future__ import annotations

import torch


def keep_quota(counts: torch.Tensor, keep: float) -> torch.Tensor:
    """How many candidates each class keeps (SPEC §1): ``k_c = floor(keep·n_c + 0.5)``, at least 1 when
    ``n_c > 0``, none when ``n_c = 0``. Every filter's selection rule keeps to it."""
    return torch.floor(keep * counts.double() + 0.5).long().clamp(min=1) * (counts > 0)


def keep_top_per_class(scores: torch.Tensor, labels: torch.Tensor, keep: float, num_classes: int) -> torch.Tensor:
    """Bool mask of the top ``keep`` fraction of each class by score: the :func:`keep_quota` of each class, ties to
    the earlier candidate. Vectorised: one stable sort by score, one stable sort by class.
    """
    n = scores.numel()
    counts = torch.bincount(labels, minlength=num_classes)
    k = keep_quota(counts, keep)
    by_score = torch.sort(-scores.double(), stable=True).indices
    order = by_score[torch.sort(labels[by_score], stable=True).indices]
    starts = torch.cumsum(counts, 0) - counts
    rank = torch.arange(n) - starts[labels[order]]
    mask = torch.zeros(n, dtype=torch.bool)
    mask[order[rank < k[labels[order]]]] = True
    return mask


def proportional_labels(counts: torch.Tensor, total: int, generator: torch.Generator) -> torch.Tensor:
    """``total`` labels in proportion to ``counts`` (largest remainder), shuffled."""
    p = counts.double() / counts.sum()
    base = torch.floor(p * total).long()
    rest = total - int(base.sum())
    if rest > 0:
        remainder = p * total - base
        base[torch.sort(-remainder, stable=True).indices[:rest]] += 1
    labels = torch.repeat_interleave(torch.arange(len(counts)), base)
    return labels[torch.randperm(total, generator=generator)]


def balanced_resample(labels: torch.Tensor, subgroups: torch.Tensor, generator: torch.Generator) -> torch.Tensor:
    """Indices of an oversample of D_real in which, within every class, each subgroup cell is as large as the
    class's largest cell, and every image appears at least once.

    The oracle judges generated images of every subgroup; trained on D_real as it is, it would inherit the very
    bias the study measures (on biased Colorized MNIST it learns colour as a shortcut for the digit). Balancing by
    a same-size resample instead would throw away most images of the majority cells (on the 4,000 embedded
    digits the oracle's test accuracy fell from 0.97 to 0.92). A cell of ``c`` images raised to ``m`` holds each
    image ``m // c`` times plus ``m % c`` images drawn without replacement. Unknown subgroups (-1) form their own
    cell. Classes keep the weight of their largest cell.
    """
    if labels.numel() == 0:
        return torch.zeros(0, dtype=torch.int64)
    width = int(subgroups.max()) + 2
    cells, inverse, counts = torch.unique(labels * width + (subgroups + 1), return_inverse=True, return_counts=True)
    cell_class = cells // width
    target = torch.zeros(int(labels.max()) + 1, dtype=counts.dtype).scatter_reduce(
        0, cell_class, counts, reduce="amax")[cell_class]  # per cell: the largest cell count of its class
    order = torch.sort(inverse, stable=True).indices  # indices grouped by cell
    starts = torch.cumsum(counts, 0) - counts
    parts = []
    for c in range(len(cells)):  # one iteration per cell (classes × subgroups), not per image
        members = order[starts[c] : starts[c] + counts[c]]
        reps, rest = divmod(int(target[c]), int(counts[c]))
        parts.append(members.repeat(reps))
        if rest:
            parts.append(members[torch.randperm(len(members), generator=generator)[:rest]])
    index = torch.cat(parts)
    return index[torch.randperm(len(index), generator=generator)]
