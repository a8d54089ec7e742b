"""Wyllie et al.'s algorithmic reparation by stratified sampling (STAR), their disparity amplification, and the
representation of a training set — as index arithmetic (docs/wyllie.md).

Strata are the (class × subgroup) cells of a dataset with ``L`` classes and ``G`` subgroups, ``s = c·G + g``;
an image whose subgroup is unknown (``-1``) is in one more stratum, ``S = L·G``, that no target asks for. Every
function works on whole index tensors (random permutations, stable sorts, bincounts, cumulative sums): no Python
loop runs over images, and a loop over batches only hands out rows already drawn. Randomness comes from the
``torch.Generator`` passed in. Pure torch: no plugin and no file.
"""

from __future__ import annotations

from collections.abc import Iterator, Sequence
from typing import Any, Literal

import torch

from harness.errors import ConfigError

SubgroupSource = Literal["known", "pixels", "oracle"]


# --------------------------------------------------------------------------------------------------- strata


def strata_of(labels: torch.Tensor, subgroups: torch.Tensor, num_classes: int, num_subgroups: int) -> torch.Tensor:
    """The stratum of every image: ``c·G + g``, or ``L·G`` where the subgroup is unknown (``-1``)."""
    unknown = num_classes * num_subgroups
    return torch.where(subgroups >= 0, labels * num_subgroups + subgroups, torch.full_like(labels, unknown))


def cell_counts(labels: torch.Tensor, subgroups: torch.Tensor, num_classes: int, num_subgroups: int) -> torch.Tensor:
    """Images per stratum, ``L·G + 1`` of them (the last: unknown subgroup)."""
    strata = strata_of(labels, subgroups, num_classes, num_subgroups)
    return torch.bincount(strata, minlength=num_classes * num_subgroups + 1)


def resolve_target(target: str | Sequence[Sequence[float]], real_counts: torch.Tensor, num_classes: int,
                   num_subgroups: int) -> torch.Tensor:
    """The target shares of the ``L·G`` known strata (float64, summing to 1).

    ``"uniform"``: equal shares of the strata that D_real has (``real_counts``, from :func:`cell_counts`), so a cell
    no image can be in (a class without that subgroup) is not asked for. A matrix: its normalised ``L×G`` values.

    :raises ConfigError: a matrix of another shape than ``L×G``, or no known stratum in D_real.
    """
    cells = num_classes * num_subgroups
    if target == "uniform":
        present = (real_counts[:cells] > 0).double()
        if present.sum() == 0:
            raise ConfigError("reparation needs subgroups, and no training image of this dataset has one")
        return present / present.sum()
    matrix = torch.tensor([list(row) for row in target], dtype=torch.float64)
    if tuple(matrix.shape) != (num_classes, num_subgroups):
        raise ConfigError(
            f"reparation.target is a {matrix.shape[0]}×{matrix.shape[1]} matrix; this dataset needs "
            f"{num_classes}×{num_subgroups} (rows = classes, columns = subgroups)"
        )
    return (matrix / matrix.sum()).flatten()


def quotas(target: torch.Tensor, batch_size: int) -> torch.Tensor:
    """Images each stratum may place in a batch: ``floor(target · batch_size)``; none for the unknown stratum."""
    return torch.cat([torch.floor(target * batch_size + 1e-9).long(), torch.zeros(1, dtype=torch.int64)])


# --------------------------------------------------------------------------------------------------- STAR


def star_batches(strata: torch.Tensor, pool: torch.Tensor, quota: torch.Tensor, batch_size: int, budget: int,
                 steps: int, generator: torch.Generator) -> tuple[torch.Tensor, torch.Tensor]:
    """``steps`` STAR batches of ``batch_size`` indices from ``pool`` (indices into ``strata``), and how many places
    of each batch were filled at random.

    Each batch is chosen from ``batch_size + budget`` candidates, consecutive runs of a random permutation of
    ``pool`` (further permutations follow when an epoch needs more): the first ``quota[s]`` candidates of each
    stratum ``s``, then the earliest remaining candidates for the places left (where a stratum had too few).
    With ``budget = 0`` every candidate is taken: plain random batches. Batches keep the candidates' random order.
    """
    n = pool.numel()
    if n == 0 or steps <= 0:
        return torch.zeros(0, batch_size, dtype=torch.int64), torch.zeros(0, dtype=torch.int64)
    width = batch_size + budget
    need = steps * width
    perms = [pool[torch.randperm(n, generator=generator)] for _ in range(-(-need // n))]  # one per pass over pool
    candidates = torch.cat(perms)[:need].view(steps, width)
    s = strata[candidates]
    k = quota.numel()
    key = (torch.arange(steps).unsqueeze(1) * k + s).flatten()
    order = torch.sort(key, stable=True).indices
    sorted_key = key[order]
    rank = torch.empty_like(order)
    rank[order] = torch.arange(key.numel()) - torch.searchsorted(sorted_key, sorted_key)  # rank in (batch, stratum)
    take = rank.view(steps, width) < quota[s]
    fill = batch_size - take.sum(1)
    spare = ~take
    take |= spare & (torch.cumsum(spare, 1) <= fill.unsqueeze(1))
    return candidates[take].view(steps, batch_size), fill


class BatchMixTally:
    """Counts what STAR batches held, stratum by stratum, for :class:`harness.engine.records.BatchMix`."""

    def __init__(self, strata: torch.Tensor, target: torch.Tensor, num_classes: int, num_subgroups: int,
                 budget: int, source: SubgroupSource):
        self.strata = strata
        self.target = target
        self.shape = (num_classes, num_subgroups)
        self.budget = budget
        self.source = source
        self.k = num_classes * num_subgroups + 1
        self.counts = torch.zeros(self.k, dtype=torch.int64)
        self.pool_counts = torch.zeros(self.k, dtype=torch.int64)
        self.batches = 0
        self.places = 0
        self.filled = 0
        self.batch_size = 1

    def add_pool(self, pool: torch.Tensor) -> None:
        if not bool(self.pool_counts.any()):
            self.pool_counts = torch.bincount(self.strata[pool], minlength=self.k)

    def add(self, batch: torch.Tensor, filled: int) -> None:
        self.counts += torch.bincount(self.strata[batch.flatten()], minlength=self.k)
        self.batches += batch.shape[0] if batch.ndim == 2 else 1
        self.places += batch.numel()
        self.filled += filled

    def summary(self) -> dict[str, Any]:
        """The fields of :class:`harness.engine.records.BatchMix`."""
        target = torch.cat([self.target, torch.zeros(1, dtype=torch.float64)])

        def shares(c: torch.Tensor) -> torch.Tensor:
            return c.double() / c.sum() if c.sum() > 0 else torch.zeros(self.k, dtype=torch.float64)

        achieved, pool = shares(self.counts), shares(self.pool_counts)

        def matrix(p: torch.Tensor) -> list[list[float]]:
            return p[:-1].view(self.shape).tolist()

        return {
            "target": matrix(target), "achieved": matrix(achieved), "pool": matrix(pool),
            "unknown_achieved": float(achieved[-1]), "unknown_pool": float(pool[-1]),
            "tv_achieved": min(1.0, 0.5 * float((achieved - target).abs().sum())),
            "tv_pool": min(1.0, 0.5 * float((pool - target).abs().sum())),
            "filled": self.filled / self.places if self.places else 0.0,
            "batches": self.batches, "batch_size": self.batch_size, "budget": self.budget,
            "subgroup_source": self.source,
        }


class StratifiedBatchSampler:
    """cla-STAR: the training batches of a classifier, drawn by :func:`star_batches` toward ``target``.

    ``strata`` holds the stratum of every image of the training set (:func:`strata_of`). An epoch over ``pool``
    (the indices training may use: the held-out split left out) has ``ceil(|pool| / batch_size)`` batches of
    ``batch_size`` images each, as many optimizer steps as an epoch of plain batches. :meth:`summary` is what the
    batches handed out so far held.
    """

    def __init__(self, strata: torch.Tensor, target: torch.Tensor, budget: int, *, num_classes: int,
                 num_subgroups: int, source: SubgroupSource = "known"):
        self.budget = budget
        self.tally = BatchMixTally(strata, target, num_classes, num_subgroups, budget, source)

    def epoch(self, pool: torch.Tensor, batch_size: int, generator: torch.Generator) -> Iterator[torch.Tensor]:
        """The batches of one epoch, as index tensors (CPU, int64); each is counted once the next one is asked for
        or the epoch ends, so a batch fetched but not trained on (a step budget reached) is not."""
        self.tally.batch_size = batch_size
        self.tally.add_pool(pool)
        steps = -(-pool.numel() // batch_size)
        batches, fill = star_batches(self.tally.strata, pool, quotas(self.tally.target, batch_size), batch_size,
                                     self.budget, steps, generator)
        for row, filled in zip(batches, fill.tolist(), strict=True):  # one iteration per batch
            yield row
            self.tally.add(row, filled)

    def summary(self) -> dict[str, Any]:
        return self.tally.summary()


def star_resample(strata: torch.Tensor, target: torch.Tensor, budget: int, batch_size: int,
                  generator: torch.Generator, *, num_classes: int, num_subgroups: int,
                  source: SubgroupSource = "known") -> tuple[torch.Tensor, dict[str, Any]]:
    """gen-STAR: indices of a resample of the whole set (same size), made of STAR batches of ``batch_size``, and
    what it holds (:class:`harness.engine.records.BatchMix` fields)."""
    n = strata.numel()
    pool = torch.arange(n)
    tally = BatchMixTally(strata, target, num_classes, num_subgroups, budget, source)
    tally.batch_size = batch_size
    tally.add_pool(pool)
    steps = -(-n // batch_size)
    batches, fill = star_batches(strata, pool, quotas(target, batch_size), batch_size, budget, steps, generator)
    index = batches.flatten()[:n]
    tally.add(index, int(fill.sum()))
    tally.batches, tally.places = steps, batches.numel()
    return index, tally.summary()


# --------------------------------------------------------------------------------------------------- disparity


def largest_remainder(total: int, weights: torch.Tensor) -> torch.Tensor:
    """``total`` split in proportion to ``weights`` (int64 counts summing to ``total``; ties to the lower index)."""
    w = weights.double().flatten()
    if total <= 0 or w.sum() <= 0:
        return torch.zeros_like(w, dtype=torch.int64)
    exact = w / w.sum() * total
    base = torch.floor(exact).long()
    rest = total - int(base.sum())
    if rest > 0:
        base[torch.sort(-(exact - base), stable=True).indices[:rest]] += 1
    return base


def disparity_cells(predicted: torch.Tensor, subgroups: torch.Tensor, num_classes: int, num_subgroups: int,
                    count: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Disparity amplification: how many real images of each (class, subgroup) cell enter generation ``t``.

    ``predicted``: f_{t-1}'s class for every image of D_real; ``subgroups``: their subgroups. The ``count`` real
    images keep D_real's subgroup shares, and within each subgroup their classes follow f_{t-1}'s predicted-label
    distribution on that subgroup: ``n_{c,g} ∝ #{i : f_{t-1}(x_i) = c, g_i = g}`` (largest remainder).
    Unknown subgroups form one more column. Returns ``(counts L×(G+1), shares L×(G+1))``: the shares are, per
    subgroup column, the fraction of its images predicted as each class.
    """
    width = num_subgroups + 1
    g = torch.where(subgroups >= 0, subgroups, torch.full_like(subgroups, num_subgroups))
    joint = torch.bincount(predicted * width + g, minlength=num_classes * width).view(num_classes, width)
    column = joint.sum(0, keepdim=True).double()
    shares = torch.where(column > 0, joint.double() / column.clamp(min=1), torch.zeros_like(column))
    return largest_remainder(count, joint).view(num_classes, width), shares


def draw_cells(cells: torch.Tensor, counts: torch.Tensor, generator: torch.Generator
               ) -> tuple[torch.Tensor, int, int]:
    """Indices drawn from the images of each cell (``cells``: the cell of every image; ``counts``: how many per
    cell): without replacement up to the cell's size, then uniformly with replacement. Returns the sorted
    indices, the draws beyond the cells' sizes, and the draws asked of empty cells (not served)."""
    k = counts.numel()
    n = cells.numel()
    size = torch.bincount(cells, minlength=k)
    perm = torch.randperm(n, generator=generator)
    order = perm[torch.sort(cells[perm], stable=True).indices]  # images grouped by cell, random within it
    starts = torch.cumsum(size, 0) - size
    rank = torch.arange(n) - starts[cells[order]]
    first = order[rank < torch.minimum(counts, size)[cells[order]]]
    extra = (counts - size).clamp(min=0) * (size > 0)
    cell_ids = torch.repeat_interleave(torch.arange(k), extra)
    offsets = (torch.rand(cell_ids.numel(), generator=generator, dtype=torch.float64) * size[cell_ids]).long()
    more = order[starts[cell_ids] + offsets]
    unserved = int((counts * (size == 0)).sum())
    return torch.sort(torch.cat([first, more])).values, int(extra.sum()), unserved


# --------------------------------------------------------------------------------------------------- annotation


def annotate(pixels: torch.Tensor | None, oracle: torch.Tensor | None, prefer: Literal["pixels", "oracle"]
             ) -> tuple[torch.Tensor | None, SubgroupSource | None]:
    """The subgroups of generated images and where they came from: measured from ``pixels`` (the dataset's
    ``measure_subgroups``) or predicted by the ``oracle`` (Wyllie et al.'s annotator), ``prefer`` first, the other
    where the preferred one is not there."""
    options: dict[str, torch.Tensor | None] = {"pixels": pixels, "oracle": oracle}
    for name in (prefer, "oracle" if prefer == "pixels" else "pixels"):
        if options[name] is not None:
            return options[name], name  # type: ignore[return-value]
    return None, None


def representation(labels: torch.Tensor, subgroups: torch.Tensor, origin: torch.Tensor, num_classes: int,
                   num_subgroups: int, source: SubgroupSource) -> dict[str, Any]:
    """The fields of :class:`harness.engine.records.Representation` for a training set's columns."""
    known = subgroups >= 0
    cells = torch.bincount(labels[known] * num_subgroups + subgroups[known],
                           minlength=num_classes * num_subgroups).view(num_classes, num_subgroups).double()
    total = cells.sum()
    cells = cells / total if total > 0 else cells

    def part(mask: torch.Tensor) -> list[float] | None:
        if not bool(mask.any()):
            return None
        h = torch.bincount(subgroups[mask & known], minlength=num_subgroups).double()
        return (h / h.sum()).tolist() if h.sum() > 0 else [0.0] * num_subgroups

    n = labels.numel()
    synthetic = origin > 0
    return {
        "size": n, "real": int((~synthetic).sum()), "synthetic": int(synthetic.sum()),
        "subgroup": cells.sum(0).tolist(), "cells": cells.tolist(),
        "unknown": float((~known).sum()) / n if n else 0.0,
        "real_subgroup": part(~synthetic), "synthetic_subgroup": part(synthetic),
        "source": source if bool(synthetic.any()) else "known",
    }


def check(*, reparation: Any, disparity_amplification: bool, num_classes: int, num_subgroups: int,
          subgroup_scope: str, real_counts: torch.Tensor) -> None:
    """Refuse, before any work, a reparation or disparity amplification the dataset cannot have.

    :raises ConfigError: with the reason.
    """
    if reparation is not None:
        if num_subgroups < 1:
            raise ConfigError("reparation needs subgroups, and this dataset has none")
        resolve_target(reparation.target, real_counts, num_classes, num_subgroups)
    if disparity_amplification and (subgroup_scope != "global" or num_subgroups < 1):
        raise ConfigError(
            "loop.disparity_amplification needs one subgroup attribute shared by all classes "
            f"(subgroup_scope 'global'); this dataset's is {subgroup_scope!r}"
        )
