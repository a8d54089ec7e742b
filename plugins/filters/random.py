"""``random``: a control filter — uniform random scores, so the harness keeps a random ``keep`` fraction per class.

Compare a real filter with ``random`` at the same ``keep`` to separate what the filter selects from the mere
reduction in synthetic data.
"""

from __future__ import annotations

import torch

from harness.interfaces import Filter, FilterContext
from harness.imageset import ImageSet


class RandomFilter(Filter):
    """Uniform scores in ``[0, 1)`` from torch's global generator, which the harness seeds per work unit."""

    def score(self, candidates: ImageSet, context: FilterContext) -> torch.Tensor:
        return torch.rand(len(candidates), dtype=torch.float32)
