"""``uncertainty``: keep the candidates the previous generation's classifiers are surest about.

The predictive distribution of a candidate is the softmax averaged over every classifier of generation
``t − 1`` (an ensemble), and, with ``method: mc_dropout``, over ``passes`` stochastic forward passes with
dropout active (Gal & Ghahramani, 2016: the mean of the sampled softmaxes approximates the Bayesian predictive
distribution). From that mean ``p̄`` a ``measure`` gives the score (higher = keep):

- ``entropy`` (default): ``−H(p̄) = Σ_k p̄_k log p̄_k`` (nats, in ``[−log L, 0]``).
- ``label_prob``: ``p̄_y`` for the conditioning class ``y`` (``target: any``: ``max_k p̄_k``).
- ``margin``: ``p̄_y − max_{k≠y} p̄_k`` (``target: any``: top-1 minus top-2), in ``[−1, 1]``.

``target: conditioning`` (default) uses the class each image was generated for: a confidently *wrong* image —
the ensemble predicts another class — is not kept for being confident. With ``measure: entropy`` this means
every candidate whose ensemble prediction is not its conditioning class ranks below every candidate whose
prediction is (its score is lowered by ``log L + 1``); among each group, lower entropy ranks higher.
``target: any`` scores confidence alone, whatever the class.
"""

from __future__ import annotations

import math
from contextlib import nullcontext
from typing import Literal

import torch
from pydantic import Field

from harness.errors import ConfigError
from harness.interfaces import ClassifierHandle, Filter, FilterContext, Options
from harness.imageset import ImageSet


class UncertaintyOptions(Options):
    """:ivar method: ``entropy`` — one deterministic pass per classifier; ``mc_dropout`` — ``passes`` passes
        with dropout on.
    :ivar passes: stochastic passes per classifier for ``mc_dropout``.
    :ivar measure: ``entropy`` | ``label_prob`` | ``margin`` of the ensemble-mean softmax.
    :ivar target: ``conditioning`` — judge against the class the image was generated for; ``any`` — confidence only.
    """

    method: Literal["entropy", "mc_dropout"] = "entropy"
    passes: int = Field(default=10, ge=2, le=1000)
    measure: Literal["entropy", "label_prob", "margin"] = "entropy"
    target: Literal["conditioning", "any"] = "conditioning"


class Uncertainty(Filter):
    """Scores candidates by the confidence of the previous generation's classifier ensemble."""

    Options = UncertaintyOptions
    options: UncertaintyOptions
    needs_classifiers = True

    def score(self, candidates: ImageSet, context: FilterContext) -> torch.Tensor:
        handles = list(context.classifiers)
        if not handles:
            raise ConfigError(
                "the uncertainty filter scores with the previous generation's classifiers, but none were given; "
                "list at least one classifier in the spec."
            )
        if len(candidates) == 0:
            return torch.zeros(0, dtype=torch.float32)
        probs = self.ensemble_probs(candidates.images, handles, context)
        return self.measure(probs, candidates.labels)

    # ------------------------------------------------------------------ predictive distribution

    def ensemble_probs(
        self, images: torch.Tensor, handles: list[ClassifierHandle], context: FilterContext | None = None
    ) -> torch.Tensor:
        """``N×L`` mean softmax over classifiers (and MC-dropout passes), float64 on the CPU."""
        mc = self.options.method == "mc_dropout"
        passes = self.options.passes if mc else 1
        reporter = getattr(getattr(context, "runtime", None), "reporter", None)
        task = reporter.task("uncertainty", total=len(handles) * passes) if reporter else nullcontext()
        total: torch.Tensor | None = None
        with task as progress:
            for handle in handles:
                first: torch.Tensor | None = None
                varied = False
                for _ in range(passes):
                    logits = handle.logits(images, train_mode=mc).detach().to("cpu", torch.float64)
                    if logits.ndim != 2 or logits.shape[0] != images.shape[0]:
                        raise ValueError(
                            f"classifier {handle.name!r} returned logits of shape {tuple(logits.shape)} for "
                            f"{images.shape[0]} images"
                        )
                    if mc:
                        if first is None:
                            first = logits
                        elif not varied and not torch.equal(first, logits):
                            varied = True
                    p = torch.softmax(logits, dim=1)
                    total = p if total is None else total + p
                    if progress is not None:
                        progress.advance()
                if mc and not varied:
                    raise ConfigError(
                        f"uncertainty filter, method mc_dropout: classifier {handle.name!r} gave identical outputs "
                        f"in {passes} passes with dropout on, so it has no active dropout; give it some (e.g. lenet "
                        f"dropout: 0.25, or drop_rate for the ImageNet models) or use method: entropy."
                    )
        assert total is not None
        return total / (len(handles) * passes)

    # ------------------------------------------------------------------ scores

    def measure(self, probs: torch.Tensor, labels: torch.Tensor) -> torch.Tensor:
        """Scores (higher = keep) from the ensemble-mean softmax ``probs`` (``N×L``) and conditioning ``labels``."""
        n, num_classes = probs.shape
        labels = labels.to(torch.int64).cpu()
        conditioning = self.options.target == "conditioning"
        if conditioning and n and (int(labels.min()) < 0 or int(labels.max()) >= num_classes):
            raise ValueError(f"candidate labels must lie in [0, {num_classes}) to match the classifiers' outputs")
        rows = torch.arange(n)
        measure = self.options.measure
        if measure == "entropy":
            score = (probs * torch.log(probs.clamp_min(1e-30))).sum(dim=1)  # −H(p̄)
            if conditioning:
                wrong = probs.argmax(dim=1) != labels
                score = score - wrong.to(score.dtype) * (math.log(num_classes) + 1.0)
        elif measure == "label_prob":
            score = probs[rows, labels] if conditioning else probs.max(dim=1).values
        else:  # margin
            if conditioning:
                own = probs[rows, labels]
                others = probs.clone()
                others[rows, labels] = -1.0
                score = own - others.max(dim=1).values
            else:
                top2 = probs.topk(min(2, num_classes), dim=1).values
                score = top2[:, 0] - (top2[:, 1] if num_classes > 1 else 0.0)
        return score.to(torch.float32)
