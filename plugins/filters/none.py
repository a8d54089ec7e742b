"""``none``: no filtering — every candidate is kept, whatever ``keep`` says."""

from __future__ import annotations

import torch

from harness.interfaces import Filter, FilterContext
from harness.imageset import ImageSet


class NoFilter(Filter):
    """Keeps every candidate (``keep`` is ignored); use ``random`` for a control that drops images at random."""

    def score(self, candidates: ImageSet, context: FilterContext) -> torch.Tensor:
        return torch.zeros(len(candidates), dtype=torch.float32)

    def select(self, scores: torch.Tensor, labels: torch.Tensor, keep: float) -> torch.Tensor:
        return torch.ones(len(scores), dtype=torch.bool)
