"""Intervals for numbers measured over seeds and classifier replicates (SPEC §5b): a hierarchical bootstrap and
the variance components of a two-level design.

Data are arrays shaped ``(S, R, ...)``: ``S`` seeds (independent generator chains), ``R`` classifier replicates
within each seed, then anything (generations, ...). NaN marks a missing value. The seed is the independent unit;
replicates are nested in it. The method, its small-sample correction and its measured coverage are in
``docs/metrics.md`` (section "Intervals").
"""

from __future__ import annotations

import math
from collections.abc import Callable
from typing import Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

__all__ = [
    "Interval",
    "Method",
    "bootstrap_draws",
    "expansion_factor",
    "hierarchical_bootstrap",
    "hierarchical_mean",
    "interval_from_draws",
    "seed_replicate_mean",
    "variance_components",
]

Method = Literal["expanded percentile", "percentile"]
Statistic = Callable[[np.ndarray], np.ndarray]

_CHUNK_ELEMENTS = 4_000_000  # resampled values held at once (32 MB of float64)


class Interval(BaseModel):
    """A point estimate with its bootstrap interval; ``ci_low``/``ci_high`` are None when there is no interval."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    estimate: float | None
    ci_low: float | None
    ci_high: float | None
    confidence: float = Field(gt=0.0, lt=1.0)
    method: str = Field(description="How the interval was made, e.g. 'hierarchical bootstrap, expanded percentile'.")
    resamples: int = Field(ge=0, description="Bootstrap resamples drawn (0: no bootstrap).")
    dropped: int = Field(ge=0, description="Resamples left out because the statistic was undefined in them.")
    seeds: int = Field(ge=0, description="Seeds with at least one value.")
    replicates: int = Field(ge=0, description="Replicates per seed (the array's second axis).")
    note: str | None = Field(description="Why there is no interval, or what was left out.")


# ---------------------------------------------------------------------------------------------- statistics


def nanmean(x: np.ndarray, axis: int | tuple[int, ...]) -> np.ndarray:
    """Mean of the finite entries along ``axis``; NaN where there is none (no warnings)."""
    finite = np.isfinite(x)
    count = finite.sum(axis=axis)
    total = np.where(finite, x, 0.0).sum(axis=axis)
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def seed_replicate_mean(x: np.ndarray) -> np.ndarray:
    """``x`` shaped ``(n, S, R, ...)`` → ``(n, ...)``: the mean over replicates within each seed, then over seeds.

    Each seed weighs the same however many of its replicates are present (NaN-aware).
    """
    return nanmean(nanmean(x, axis=2), axis=1)


def hierarchical_mean(x: np.ndarray) -> np.ndarray:
    """The default statistic: ``x`` shaped ``(n, S, R, ...)`` → ``(n,)``.

    Per (seed, replicate) the mean over the trailing axes, then the mean over replicates within each seed, then
    over seeds; NaN-aware at every step. With no missing values it is the plain mean of everything.
    """
    x = np.asarray(x, dtype=float)
    if x.ndim > 3:
        x = nanmean(x, axis=tuple(range(3, x.ndim)))
    return seed_replicate_mean(x)


# ----------------------------------------------------------------------------------------------- bootstrap


def _as_rng(rng: int | np.random.Generator) -> np.random.Generator:
    return rng if isinstance(rng, np.random.Generator) else np.random.default_rng(rng)


def _present(values: np.ndarray) -> np.ndarray:
    """``(S, R)`` mask: the replicate has at least one finite value."""
    finite = np.isfinite(values)
    return finite.reshape(finite.shape[0], finite.shape[1], -1).any(axis=2)


def bootstrap_draws(
    values: np.ndarray,
    statistic: Statistic = hierarchical_mean,
    *,
    resamples: int = 2000,
    rng: int | np.random.Generator = 0,
) -> np.ndarray:
    """The statistic on ``resamples`` hierarchical resamples of ``values`` (``(S, R, ...)``, NaN = missing).

    Each resample draws ``S`` seeds with replacement, then, within each drawn seed, as many replicates as it has
    present (a replicate with at least one finite value), with replacement from those. Seeds with no value at all
    are left out first. ``statistic`` receives the resamples stacked on a new leading axis, ``(n, S, R, ...)``,
    and returns one result per resample, ``(n, ...)``. All resamples are drawn with index arrays, in chunks of
    bounded memory.

    :returns: ``(resamples, ...)``, the statistic of each resample (NaN where it is undefined).
    :raises ValueError: when ``values`` has fewer than two axes or no seed has a value.
    """
    values = np.asarray(values, dtype=float)
    if values.ndim < 2:
        raise ValueError(f"values must be shaped (seeds, replicates, ...), got shape {values.shape}")
    present = _present(values)
    keep = present.any(axis=1)
    if not keep.any():
        raise ValueError("no seed has a value: nothing to resample")
    values, present = values[keep], present[keep]
    S, R = present.shape
    # Per seed: the indices of its present replicates first, then the rest; draw among the first n_s.
    order = np.argsort(~present, axis=1, kind="stable")
    counts = present.sum(axis=1)
    gen = _as_rng(rng)
    per_resample = max(1, values.size)
    chunk = max(1, _CHUNK_ELEMENTS // per_resample)
    out: list[np.ndarray] = []
    for start in range(0, resamples, chunk):
        n = min(chunk, resamples - start)
        seeds = gen.integers(0, S, size=(n, S))
        pick = np.floor(gen.random((n, S, R)) * counts[seeds][..., None]).astype(np.intp)
        reps = np.take_along_axis(order[seeds], pick, axis=2)  # (n, S, R) replicate indices
        out.append(np.asarray(statistic(values[seeds[..., None], reps]), dtype=float))
    if not out:
        return np.empty((0,) + np.asarray(statistic(values[None]), dtype=float).shape[1:])
    return np.concatenate(out, axis=0)


def expansion_factor(seeds: int, confidence: float = 0.95) -> float:
    """How much the expanded percentile interval widens the percentile one with ``seeds`` independent units.

    ``sqrt(S / (S - 1)) · t_{(1+c)/2, S-1} / z_{(1+c)/2}``: the bootstrap's spread of a mean over ``S`` units is
    ``sqrt((S-1)/S)`` of the usual standard error, and its percentile interval uses normal rather than Student-t
    quantiles; both make it too narrow with few seeds (Hesterberg 2015, "What teachers should know about the
    bootstrap", §3.3). 1.58 at 5 seeds, 2.69 at 3, 1.22 at 10, → 1 as seeds grow.
    """
    # scipy.stats takes 0.6 s to import; only the expansion needs it
    from scipy.stats import norm, t

    if seeds < 2:
        raise ValueError(f"the expansion needs at least 2 seeds, got {seeds}")
    q = 0.5 + confidence / 2.0
    return math.sqrt(seeds / (seeds - 1)) * float(t.ppf(q, seeds - 1)) / float(norm.ppf(q))


def interval_from_draws(
    estimate: float | None,
    draws: np.ndarray,
    *,
    seeds: int,
    replicates: int,
    confidence: float = 0.95,
    method: Method = "expanded percentile",
    bounds: tuple[float | None, float | None] | None = None,
    log: bool = False,
    min_seeds: int = 3,
    note: str | None = None,
) -> Interval:
    """The interval of ``estimate`` from its bootstrap ``draws`` (1-d, NaN = a resample where it is undefined).

    ``"percentile"``: the ``(1-c)/2`` and ``(1+c)/2`` quantiles of the defined draws. ``"expanded percentile"``
    (the default): the same two quantiles, each one's distance from the estimate multiplied by
    :func:`expansion_factor` ``(seeds)``; with ``log=True`` (a positive ratio such as ``A_t``) the distances are
    taken between logarithms, so the interval stays positive and keeps its skew. The ends are then clipped to
    ``bounds`` and, where a skewed percentile interval would leave it out, widened to hold the estimate. No interval (``ci_low = ci_high = None``, with a note) when ``estimate`` is None, fewer than
    ``min_seeds`` seeds took part, or no draw is defined.
    """
    if method not in ("expanded percentile", "percentile"):
        raise ValueError(f"method must be 'expanded percentile' or 'percentile', got {method!r}")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    draws = np.asarray(draws, dtype=float).reshape(-1)
    defined = draws[np.isfinite(draws)]
    total = int(draws.size)
    dropped = total - int(defined.size)
    notes = [note] if note else []
    if dropped and total:
        notes.append(f"{dropped} of {total} resamples left out (statistic undefined)")
    base = {"confidence": confidence, "method": f"hierarchical bootstrap, {method}", "resamples": total,
            "dropped": dropped, "seeds": int(seeds), "replicates": int(replicates)}
    est = None if estimate is None or not math.isfinite(float(estimate)) else float(estimate)

    def no_interval(why: str) -> Interval:
        return Interval(estimate=est, ci_low=None, ci_high=None, note="; ".join([why, *notes]), **base)

    if est is None:
        return no_interval("no estimate")
    needed = max(min_seeds, 2) if method == "expanded percentile" else min_seeds  # k(S) needs S >= 2
    if seeds < needed:
        return no_interval(f"no interval: {seeds} seed{'s' if seeds != 1 else ''} (needs ≥ {needed})")
    if defined.size == 0:
        return no_interval("no interval: the statistic is undefined in every resample")
    lo, hi = (float(v) for v in np.quantile(defined, [0.5 - confidence / 2.0, 0.5 + confidence / 2.0]))
    if method == "expanded percentile":
        k = expansion_factor(seeds, confidence)
        if log and est > 0:
            lo = est * math.exp(k * math.log(lo / est)) if lo > 0 else 0.0
            hi = est * math.exp(k * math.log(hi / est)) if hi > 0 else 0.0
        else:
            lo, hi = est - k * (est - lo), est + k * (hi - est)
    if bounds is not None:
        low, high = bounds
        if low is not None:
            lo, hi = max(lo, low), max(hi, low)
        if high is not None:
            lo, hi = min(lo, high), min(hi, high)
    lo, hi = min(lo, est), max(hi, est)  # an interval always holds its own estimate
    return Interval(estimate=est, ci_low=lo, ci_high=hi, note="; ".join(notes) or None, **base)


def hierarchical_bootstrap(
    values: np.ndarray,
    statistic: Statistic = hierarchical_mean,
    *,
    resamples: int = 2000,
    bounds: tuple[float | None, float | None] | None = None,
    rng: int | np.random.Generator = 0,
    min_seeds: int = 3,
    confidence: float = 0.95,
    method: Method = "expanded percentile",
    log: bool = False,
) -> Interval:
    """A point estimate and its bootstrap interval for data shaped ``(S seeds, R replicates, ...)``.

    ``statistic`` maps a stack of arrays ``(n, S, R, ...)`` to one number each, ``(n,)``; the default,
    :func:`hierarchical_mean`, is the mean over everything with each seed weighing the same. The estimate is
    the statistic of ``values`` itself; the interval comes from :func:`bootstrap_draws` (resample seeds, then
    replicates within each) through :func:`interval_from_draws` (expanded percentile by default, clipped to
    ``bounds``). With fewer than ``min_seeds`` seeds holding a value there is no interval and the note says so
    (no resampling is done).
    """
    values = np.asarray(values, dtype=float)
    if values.ndim < 2:
        raise ValueError(f"values must be shaped (seeds, replicates, ...), got shape {values.shape}")
    if resamples < 1:
        raise ValueError(f"resamples must be at least 1, got {resamples}")
    seeds = int(_present(values).any(axis=1).sum()) if values.size else 0
    replicates = int(values.shape[1])
    estimate = float(np.asarray(statistic(values[None]), dtype=float).reshape(-1)[0]) if seeds else None
    if seeds < min_seeds:
        draws = np.empty(0)
    else:
        draws = bootstrap_draws(values, statistic, resamples=resamples, rng=rng)
    return interval_from_draws(estimate, draws, seeds=seeds, replicates=replicates, confidence=confidence,
                               method=method, bounds=bounds, log=log, min_seeds=min_seeds)


# --------------------------------------------------------------------------------------- variance components


def variance_components(x: np.ndarray) -> tuple[float, float]:
    """``(var_seed, var_replicate)`` of ``x`` shaped ``(S, R)`` (NaN = missing), one-way random-effects model.

    Model: ``x[s, r] = mu + a_s + e_sr`` with ``Var(a_s) = var_seed`` (between seeds) and ``Var(e_sr) =
    var_replicate`` (between replicates of one seed). Method of moments (one-way ANOVA): with ``n_s`` values in
    seed ``s``, ``N = sum n_s``, seed means ``m_s`` and grand mean ``m`` (over all values),
    ``MSW = sum (x - m_s)^2 / (N - S)``, ``MSB = sum n_s (m_s - m)^2 / (S - 1)``,
    ``n0 = (N - sum n_s^2 / N) / (S - 1)`` (``= R`` when balanced); ``var_replicate = MSW`` and
    ``var_seed = max(0, (MSB - MSW) / n0)`` (truncated at 0: a negative moment estimate means "no detectable
    seed variance").

    :raises ValueError: when ``x`` is not 2-d, fewer than two seeds hold a value, or no seed holds two (the
        components cannot be separated).
    """
    x = np.asarray(x, dtype=float)
    if x.ndim != 2:
        raise ValueError(f"x must be shaped (seeds, replicates), got shape {x.shape}")
    finite = np.isfinite(x)
    n = finite.sum(axis=1)
    x, finite, n = x[n > 0], finite[n > 0], n[n > 0]
    S, N = int(n.size), int(n.sum())
    if S < 2:
        raise ValueError(f"variance components need at least 2 seeds with a value, got {S}")
    if N - S < 1:
        raise ValueError("variance components need a seed with at least 2 replicates")
    xs = np.where(finite, x, 0.0)
    m_s = xs.sum(axis=1) / n
    m = xs.sum() / N
    msw = float((np.where(finite, x - m_s[:, None], 0.0) ** 2).sum() / (N - S))
    msb = float((n * (m_s - m) ** 2).sum() / (S - 1))
    n0 = (N - float((n**2).sum()) / N) / (S - 1)
    return max(0.0, (msb - msw) / n0), msw
