"""The verdict of a run (SPEC §5b): did the synthetic data amplify the bias, reduce it, leave it unchanged within a
margin, or can the run not tell?

Input is the paired effect ``Δ_t(B) = B(f_t) − B(f_t^control)`` of the bias measure, shaped ``(S seeds,
R replicates, T generations)`` for ``t = 1..T``. The rule, the effect size, the minimum detectable effect and the
seeds needed are written out, with a worked example, in ``docs/metrics.md`` (section "The verdict").
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Literal

import numpy as np
from numpy.typing import ArrayLike
from pydantic import BaseModel, ConfigDict, Field

from harness.measure.intervals import (
    Method,
    hierarchical_bootstrap,
    variance_components,
)

__all__ = ["Z_MDE", "Label", "Verdict", "minimum_detectable_effect", "pooled_verdict", "seeds_needed", "verdict"]

Label = Literal["amplified", "reduced", "no detectable change", "inconclusive"]

#: ``z_{0.975} + z_{0.8} = 1.960 + 0.842``: the MDE of a two-sided test at α = 0.05 with power 0.8 is 2.8 SE.
Z_MDE = 2.8

_DELTA_BOUNDS = (-1.0, 1.0)  # every bias measure lies in [0, 1], so a difference of two lies in [-1, 1]


class Verdict(BaseModel):
    """The verdict on one classifier (or pooled over classifiers) with the numbers that decide it."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    label: Label
    effect: float | None = Field(description="E: the mean paired effect Δ(B) over the chosen generations.")
    ci_low: float | None
    ci_high: float | None
    epsilon: float = Field(gt=0.0, description="Practical-equivalence margin, in units of B.")
    mde: float | None = Field(ge=0.0, description="Minimum detectable effect, 2.8 · SE(E).")
    seeds: int = Field(ge=0)
    replicates: int = Field(ge=0)
    seeds_needed: int | None = Field(ge=1, description="Seeds (at this R) for MDE ≤ ε; None if not estimable.")
    var_seed: float | None = Field(ge=0.0, description="Between-seed variance of the per-replicate effect.")
    var_replicate: float | None = Field(ge=0.0, description="Between-replicate variance within a seed.")
    generations: tuple[int, ...] = Field(description="The generations t averaged into E.")
    resamples: int = Field(ge=0)
    method: str
    measure: str
    reason: str = Field(description="One sentence a reviewer can check against the numbers above.")
    note: str | None
    pooled_over: tuple[str, ...] | None = Field(default=None, description="Classifiers averaged, when pooled.")


def minimum_detectable_effect(var_seed: float, var_replicate: float, seeds: float, replicates: float) -> float:
    """``2.8 · sqrt(var_seed / S + var_replicate / (S · R))``: the MDE of the mean over ``S × R`` values."""
    return Z_MDE * math.sqrt(var_seed / seeds + var_replicate / (seeds * replicates))


def seeds_needed(var_seed: float, var_replicate: float, replicates: int, epsilon: float, min_seeds: int = 3) -> int:
    """The smallest ``S' ≥ min_seeds`` with :func:`minimum_detectable_effect` ``(…, S', R) ≤ epsilon``.

    ``S' = ceil(2.8² · (var_seed + var_replicate / R) / ε²)``, raised to ``min_seeds`` (fewer seeds give no
    interval at all).
    """
    per_seed = var_seed + var_replicate / replicates
    n = max(min_seeds, math.ceil(Z_MDE**2 * per_seed / epsilon**2))
    while n > min_seeds and minimum_detectable_effect(var_seed, var_replicate, n - 1, replicates) <= epsilon:
        n -= 1  # guard against the ceiling of a rounded quotient
    while minimum_detectable_effect(var_seed, var_replicate, n, replicates) > epsilon:
        n += 1
    return n


def verdict(
    delta: ArrayLike,
    *,
    epsilon: float = 0.01,
    generations: Sequence[int] | None = None,
    resamples: int = 2000,
    rng: int | np.random.Generator = 0,
    measure: str = "1-meo",
    min_seeds: int = 3,
    confidence: float = 0.95,
    method: Method = "expanded percentile",
) -> Verdict:
    """The SPEC §5b verdict on the paired effect ``delta`` of the bias measure, shaped ``(S, R, T)``, t = 1..T.

    - ``E``: per (seed, replicate) the mean of ``Δ_t`` over ``generations`` (default: all, ``1..T``), then the
      mean over replicates within each seed, then over seeds (NaN = missing, left out at each step).
    - ``[lo, hi]``: the :func:`~harness.measure.intervals.hierarchical_bootstrap` interval of ``E`` (seeds, then
      replicates within each, resampled with their whole ``t`` series), clipped to ``[-1, 1]``.
    - The rule: ``amplified`` if ``lo > 0``; ``reduced`` if ``hi < 0``; ``no detectable change`` if
      ``-ε < lo`` and ``hi < ε``; otherwise ``inconclusive`` — also when there is no interval (fewer than
      ``min_seeds`` seeds).
    - ``var_seed``, ``var_replicate``: :func:`~harness.measure.intervals.variance_components` of the
      per-(seed, replicate) means over ``t``. ``SE(E)² = var_seed / S + var_replicate / (S · R)`` (``R``: the
      harmonic mean of the replicates present per seed, which is ``R`` when none is missing); ``MDE = 2.8 ·
      SE(E)``; ``seeds_needed`` from :func:`seeds_needed` at this ``R``. With one replicate per seed the two
      components cannot be separated: both are None and ``SE(E)² = var / S`` with ``var`` the sample variance
      (ddof 1) of the seeds' values.

    :raises ValueError: on a ``delta`` that is not 3-d, a generation outside ``1..T``, or ``epsilon <= 0``.
    """
    delta = np.asarray(delta, dtype=float)
    if delta.ndim != 3:
        raise ValueError(f"delta must be shaped (seeds, replicates, generations), got shape {delta.shape}")
    if not epsilon > 0:
        raise ValueError(f"epsilon must be positive, got {epsilon}")
    _, R, T = delta.shape
    gens = tuple(range(1, T + 1)) if generations is None else tuple(int(t) for t in generations)
    if not gens:
        raise ValueError("generations is empty: name at least one generation to average")
    bad = [t for t in gens if not 1 <= t <= T]
    if bad:
        raise ValueError(f"generations {bad} are outside 1..{T} (the generations delta holds)")

    chosen = delta[:, :, [t - 1 for t in gens]]
    finite = np.isfinite(chosen)
    count = finite.sum(axis=2)
    with np.errstate(invalid="ignore", divide="ignore"):
        x = np.where(count > 0, np.where(finite, chosen, 0.0).sum(axis=2) / np.maximum(count, 1), np.nan)  # (S, R)

    iv = hierarchical_bootstrap(x, resamples=resamples, bounds=_DELTA_BOUNDS, rng=rng, min_seeds=min_seeds,
                                confidence=confidence, method=method)
    per_seed = np.isfinite(x).sum(axis=1)
    per_seed = per_seed[per_seed > 0]
    S = int(per_seed.size)

    var_seed = var_rep = None
    mde = needed = None
    notes: list[str] = []
    if S >= 2 and (per_seed >= 2).any():
        var_seed, var_rep = variance_components(x)
        r_eff = float(per_seed.size / (1.0 / per_seed).sum())
        mde = minimum_detectable_effect(var_seed, var_rep, S, r_eff)
        needed = seeds_needed(var_seed, var_rep, R, epsilon, min_seeds)
    elif S >= 2:
        seed_values = np.array([row[np.isfinite(row)].mean() for row in x if np.isfinite(row).any()])
        var_total = float(seed_values.var(ddof=1))
        mde = minimum_detectable_effect(var_total, 0.0, S, 1)
        needed = seeds_needed(var_total, 0.0, 1, epsilon, min_seeds)
        notes.append("one replicate per seed: seed and replicate variance are not separable; SE from the "
                     "variance between seeds")

    label, reason = _decide(iv.estimate, iv.ci_low, iv.ci_high, epsilon, iv.note, needed)
    if iv.note and iv.ci_low is not None:
        notes.append(iv.note)
    return Verdict(
        label=label, effect=iv.estimate, ci_low=iv.ci_low, ci_high=iv.ci_high, epsilon=float(epsilon), mde=mde,
        seeds=S, replicates=int(R), seeds_needed=needed, var_seed=var_seed, var_replicate=var_rep,
        generations=gens, resamples=iv.resamples, method=iv.method, measure=measure, reason=reason,
        note="; ".join(notes) or None,
    )


def pooled_verdict(deltas: Mapping[str, ArrayLike], **options) -> Verdict:
    """The verdict pooled over classifiers: ``Δ`` averaged over the classifiers at every (seed, replicate, t),
    then :func:`verdict` (``options`` are its keyword arguments).

    A classifier missing (NaN) at some (seed, replicate, t) is left out of that average. Pooling keeps the seed
    as the independent unit: the classifiers of one seed share its generator chain, so they are not
    independent evidence.

    :raises ValueError: with no classifier, or when the classifiers' arrays differ in shape.
    """
    if not deltas:
        raise ValueError("pooled_verdict needs at least one classifier")
    arrays = {name: np.asarray(d, dtype=float) for name, d in deltas.items()}
    shapes = {name: a.shape for name, a in arrays.items()}
    if len(set(shapes.values())) != 1:
        raise ValueError(f"the classifiers' paired effects differ in shape: {shapes}")
    stacked = np.stack(list(arrays.values()))
    finite = np.isfinite(stacked)
    count = finite.sum(axis=0)
    with np.errstate(invalid="ignore", divide="ignore"):
        pooled = np.where(count > 0, np.where(finite, stacked, 0.0).sum(axis=0) / np.maximum(count, 1), np.nan)
    return verdict(pooled, **options).model_copy(update={"pooled_over": tuple(arrays)})


def _decide(
    effect: float | None, lo: float | None, hi: float | None, eps: float, no_interval: str | None,
    needed: int | None,
) -> tuple[Label, str]:
    if effect is None:
        return "inconclusive", "no paired effect was measured"
    if lo is None or hi is None:
        return "inconclusive", f"{no_interval or 'no interval'}: the rule needs an interval"
    if lo > 0:
        return "amplified", f"lo = {lo:.3g} > 0: the synthetic data raised B"
    if hi < 0:
        return "reduced", f"hi = {hi:.3g} < 0: the synthetic data lowered B"
    if -eps < lo and hi < eps:
        return "no detectable change", (f"-ε = {-eps:.3g} < lo = {lo:.3g} and hi = {hi:.3g} < ε = {eps:.3g}: "
                                        "any effect is smaller than the margin")
    more = f"; about {needed} seeds would bring the MDE to ε" if needed is not None else ""
    return "inconclusive", (f"[lo, hi] = [{lo:.3g}, {hi:.3g}] holds 0 and reaches past ±ε = ±{eps:.3g}: "
                            f"neither a change nor its absence is shown{more}")
