"""A designed study of Zhang et al.'s conjecture (SPEC §5): the runs of a sweep pooled into one fit of

    log A_{M,k,t} = log c_M + log(1 + a (1 - q_{k,t}) + b u_{k,t})

over every classifier ``M``, run ``k`` (a design point: e.g. the ``replay`` generator's ``flip`` and ``shift``) and
generation ``t``, with one ``c_M`` per classifier and ``a``, ``b`` shared by all runs. A single run rarely moves
``q_t`` and ``u_t`` enough to identify ``a`` and ``b`` (:func:`~harness.measure.amplification.fit_amplification`
says so); a grid of runs that sets them by design can.

The point estimates, the bootstrap and the identification checks are those of ``fit_amplification``
(docs/metrics.md, "The fit"); what pooling adds is the resampling unit. Seed ``s`` of every run is one unit: the
runs of a sweep share each seed's random numbers (the harness seeds a work unit from its seed, stage, generation,
classifier and replicate, not from the spec, so the generation-0 classifiers, the oracle and every
initialisation are the same in all runs), so the chains of seed ``s`` are correlated across runs while different
seeds are independent. Each bootstrap resample therefore draws seed indices once and applies them to every run;
resampling (run, seed) pairs independently would treat correlated chains as independent and understate the
intervals. Replicates are averaged within each seed before the seeds are resampled, as in ``fit_amplification``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any, Literal

import numpy as np
from pydantic import BaseModel, ConfigDict, Field

from harness.measure.amplification import (
    FIT_MIN_SEEDS,
    _design_problems,
    _exp_or_none,
    _finite_or_none,
    _refits,
    fit_points,
)
from harness.measure.intervals import Interval, interval_from_draws, nanmean

__all__ = ["StudyFit", "StudyPoint", "StudyRun", "fit_study"]

_Z_FLOOR = 1e-300  # as in fit_amplification: stands in for 1 + a(1-q) + b u <= 0 inside the optimiser

RESAMPLING = ("seeds, jointly across runs (seed s of every run is one unit: runs share each seed's random "
              "numbers); replicates averaged within each seed first")


@dataclass(frozen=True)
class StudyRun:
    """One run of a study: its design values and what it measured, per seed.

    :param label: how the run is named in the output (e.g. its run id).
    :param bias: per classifier, the per-replicate bias ``B`` shaped ``(S seeds, R replicates, T+1 generations)``;
        NaN = missing.
    :param q: label fidelity ``(S, T)``; ``q[:, t]`` belongs to the generator whose samples enter the training set
        at generation ``t + 1``, so it is paired with ``A_t``.
    :param u: unbalanced generation ``(S, T)``, paired like ``q``.
    :param design: the design values of the run (e.g. ``{"flip": 0.2, "shift": 0.5}``), carried into the points.
    """

    label: str
    bias: Mapping[str, Any]
    q: Any
    u: Any
    design: Mapping[str, float] = field(default_factory=dict)


class StudyPoint(BaseModel):
    """One fitted point: ``A_{M,k,t}`` of classifier ``M`` in run ``k`` at generation ``t``, with its regressors."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    run: str
    classifier: str
    t: int = Field(ge=0)
    design: dict[str, float]
    q: float = Field(description="Mean over seeds of q_t.")
    u: float = Field(description="Mean over seeds of u_t.")
    A: Interval = Field(description="B_{t+1} / B_t of the seed means, with its bootstrap interval over seeds.")
    fitted: float | None = Field(description="c_M (1 + a (1 - q) + b u) at the fit; None unless identified.")
    residual: float | None = Field(description="log A - log fitted; None unless identified.")


class StudyFit(BaseModel):
    """The pooled SPEC §5 fit of a study; estimates, intervals, ``r2`` and fitted values only when identified."""

    model_config = ConfigDict(extra="forbid", frozen=True)

    status: Literal["identified", "not_identified", "too_few_points"]
    message: str
    n_points: int = Field(ge=0)
    n_runs: int = Field(ge=0)
    n_seeds: int = Field(ge=0)
    replicates: int = Field(ge=0)
    generations: list[int] = Field(description="The t whose A_t were pooled.")
    c: dict[str, Interval]
    a: Interval
    b: Interval
    r2: float | None
    spread: dict[str, float | None] = Field(description="Standard deviation of 1 - q and of u over the points.")
    condition: float | None = Field(description="Condition number of the column-scaled Jacobian at the fit.")
    resamples: int = Field(ge=0)
    refitted: int = Field(ge=0, description="Bootstrap resamples whose refit converged.")
    resampling: str
    points: list[StudyPoint]

    def predict(self, classifier: str, one_minus_q: Any, u: Any) -> np.ndarray:
        """``c_M (1 + a (1 - q) + b u)`` at the estimates (broadcast over the arrays); ValueError if not
        identified."""
        c = self.c.get(classifier)
        if self.status != "identified" or c is None or c.estimate is None:
            raise ValueError(f"no fitted surface for {classifier!r}: the fit is {self.status}")
        x1, x2 = np.asarray(one_minus_q, dtype=float), np.asarray(u, dtype=float)
        return c.estimate * (1.0 + self.a.estimate * x1 + self.b.estimate * x2)


def fit_study(
    runs: Sequence[StudyRun],
    *,
    generations: Sequence[int] | None = None,
    n_boot: int = 1000,
    seed: int = 0,
    eps: float = 1e-6,
) -> StudyFit:
    """Pool the runs of a designed study into one fit of the SPEC §5 model, and say whether it is identified.

    :param runs: the runs; all with the same classifiers, seeds (same count, in the same order), replicates and
        generations.
    :param generations: the ``t`` whose ``A_t = B_{t+1} / B_t`` enter the fit (default: all).
    :param n_boot: bootstrap resamples of the seeds (jointly across runs), for the intervals and the stability
        check.
    :param seed: seed of the bootstrap's ``numpy.random.Generator``.
    :param eps: ``A_t`` is undefined where the seed-averaged ``B_t < eps``.

    The points are ``A_{M,k,t} = B̄_{M,k,t+1} / B̄_{M,k,t}`` (``B̄``: the mean over replicates within each seed, then
    over seeds) paired with the seed means of ``q_t`` and ``u_t`` of run ``k``; a point is left out where ``A`` is
    undefined or 0, or ``q``/``u`` is undefined. The status is ``identified`` only when every check of
    :func:`~harness.measure.amplification.fit_amplification` passes: the fit converges, ``1 - q`` and ``u`` each
    spread by at least ``FIT_MIN_SPREAD`` over the points and do not move in lockstep, the condition number is at
    most ``FIT_MAX_CONDITION``, at least ``FIT_MIN_SEEDS`` seeds, and at least ``FIT_MIN_BOOTSTRAP`` of the
    resamples refit. ``message`` gives every reason that failed.
    """
    bias, q, u, names, gens = _stack(runs, generations)
    K, M, S, R, _ = bias.shape
    labels = [r.label for r in runs]

    point = _fit(*_points(_bbar(bias), nanmean(q, axis=1), nanmean(u, axis=1), gens, eps))
    base_points = _point_records(point, labels, names, runs, gens)
    empty = {name: _no_estimate() for name in names}
    result: dict[str, Any] = {
        "status": "too_few_points", "message": point["message"], "n_points": point["n_points"], "n_runs": K,
        "n_seeds": S, "replicates": R, "generations": list(gens), "c": empty, "a": _no_estimate(),
        "b": _no_estimate(), "r2": None, "spread": {"1-q": None, "u": None}, "condition": None,
        "resamples": 0, "refitted": 0, "resampling": RESAMPLING, "points": base_points,
    }
    if point["status"] == "too_few_points":
        return StudyFit(**result)
    if point["status"] == "failed":
        return StudyFit(**(result | {"status": "not_identified", "message": f"not identified: {point['message']}"}))

    problems = _design_problems(point)
    if S < FIT_MIN_SEEDS:
        problems.append(f"{S} seed{'s' if S != 1 else ''}: checking the fit by bootstrap needs ≥ {FIT_MIN_SEEDS}")
    elif n_boot < 1:
        problems.append("n_boot = 0: no bootstrap to check the fit")
    theta = point["theta"]
    draws = np.full((max(n_boot, 0), M + 2), np.nan)
    draws_A = np.full((max(n_boot, 0), K, M, len(gens)), np.nan)
    fitted = 0
    boot_text = ""
    if S >= FIT_MIN_SEEDS and n_boot >= 1:  # also when the design already fails: the message gives every reason
        rng = np.random.default_rng(seed)
        for i in range(n_boot):
            idx = rng.integers(0, S, size=S)  # the same seeds for every run
            pts = _points(_bbar(bias[:, :, idx]), nanmean(q[:, idx], axis=1), nanmean(u[:, idx], axis=1), gens, eps)
            draws_A[i] = pts[5]
            fit = _fit(*pts, x0=theta)
            if fit["status"] == "ok":
                draws[i] = fit["theta"]
        fitted, boot_text = _refits(draws[:, M], S, problems)
    spread = {"1-q": point["spread"][0], "u": point["spread"][1]}
    condition = _finite_or_none(point["condition"])
    result |= {"spread": spread, "condition": condition, "resamples": max(n_boot, 0), "refitted": fitted,
               "points": _point_records(point, labels, names, runs, gens, draws_A=draws_A, S=S, R=R)}
    if problems:
        return StudyFit(**(result | {"status": "not_identified",
                                     "message": f"not identified: {'; '.join(problems)} ({point['message']})"}))

    def estimate(est: float | None, col: np.ndarray, log: bool = False) -> Interval:
        return interval_from_draws(est, col, seeds=S, replicates=R, log=log, min_seeds=FIT_MIN_SEEDS)

    with np.errstate(over="ignore"):
        c = {name: estimate(_exp_or_none(theta[m]), np.exp(draws[:, m]), log=True) for m, name in enumerate(names)}
    design = (f"sd of 1 - q {spread['1-q']:.3g} and of u {spread['u']:.3g}, condition number {condition:.3g}")
    return StudyFit(**(result | {
        "status": "identified",
        "message": f"identified: {point['message']}; {boot_text}; {design}",
        "c": c,
        "a": estimate(_finite_or_none(theta[M]), draws[:, M]),
        "b": estimate(_finite_or_none(theta[M + 1]), draws[:, M + 1]),
        "r2": _finite_or_none(point["r2"]),
        "points": _point_records(point, labels, names, runs, gens, draws_A=draws_A, S=S, R=R, fitted=True),
    }))


# ------------------------------------------------------------------------------------------------- pieces


def _stack(runs: Sequence[StudyRun], generations: Sequence[int] | None):
    """The runs as arrays: bias ``(K, M, S, R, T+1)``, q and u ``(K, S, T)``; names; the pooled generations."""
    if not runs:
        raise ValueError("a study needs at least one run")
    names = list(runs[0].bias)
    if not names:
        raise ValueError(f"run {runs[0].label!r} has no classifier")
    shape = None
    bias, q, u = [], [], []
    for r in runs:
        if list(r.bias) != names:
            raise ValueError(f"run {r.label!r} has classifiers {list(r.bias)}, the first run {names}")
        arrays = [np.asarray(r.bias[n], dtype=float) for n in names]
        for name, a in zip(names, arrays, strict=True):
            if a.ndim != 3:
                raise ValueError(f"run {r.label!r}: bias of {name} must be (seeds, replicates, generations), got "
                                 f"shape {a.shape}")
            if shape is None:
                shape = a.shape
            elif a.shape != shape:
                raise ValueError(f"run {r.label!r}: bias of {name} has shape {a.shape} (seeds, replicates, "
                                 f"generations), the first {shape}: pooling needs the same seeds in every run")
        b = np.stack(arrays)
        qr, ur = np.asarray(r.q, dtype=float), np.asarray(r.u, dtype=float)
        if qr.shape != (shape[0], shape[2] - 1) or ur.shape != qr.shape:
            raise ValueError(f"run {r.label!r}: q and u must have shape {(shape[0], shape[2] - 1)}, got "
                             f"{qr.shape} and {ur.shape}")
        bias.append(b)
        q.append(qr)
        u.append(ur)
    T = shape[2] - 1
    gens = list(range(T)) if generations is None else sorted({int(t) for t in generations})
    bad = [t for t in gens if not 0 <= t < T]
    if bad or not gens:
        raise ValueError(f"generations must be a non-empty subset of 0..{T - 1} (A_t needs B_t and B_t+1), got "
                         f"{list(generations or [])}")
    return np.stack(bias), np.stack(q), np.stack(u), names, gens


def _bbar(bias: np.ndarray) -> np.ndarray:
    """``(K, M, S, R, T+1)`` → ``(K, M, T+1)``: the mean over replicates within each seed, then over seeds."""
    return nanmean(nanmean(bias, axis=3), axis=2)


def _points(Bbar: np.ndarray, q: np.ndarray, u: np.ndarray, gens: Sequence[int], eps: float):
    """The fit's points from seed-averaged ``Bbar (K, M, T+1)``, ``q``, ``u`` ``(K, T)``.

    Returns ``(y, x1, x2, col, where, A)``: ``log A``, ``1 - q``, ``u`` and the classifier column of each defined
    point, ``where`` its ``(k, m, j)`` indices (``j`` into ``gens``), and ``A (K, M, len(gens))`` with NaN where
    undefined.
    """
    g = np.asarray(gens)
    b0, b1 = Bbar[:, :, g], Bbar[:, :, g + 1]
    with np.errstate(divide="ignore", invalid="ignore"):
        A = np.where(np.isfinite(b0) & (b0 >= eps) & np.isfinite(b1) & (b1 >= 0), b1 / b0, np.nan)
    x1_kt, x2_kt = 1.0 - q[:, g], u[:, g]
    ok = np.isfinite(A) & (A > 0) & np.isfinite(x1_kt)[:, None, :] & np.isfinite(x2_kt)[:, None, :]
    k, m, j = np.nonzero(ok)
    return np.log(A[k, m, j]), x1_kt[k, j], x2_kt[k, j], m, (k, m, j, A.size), A


def _fit(y: np.ndarray, x1: np.ndarray, x2: np.ndarray, col: np.ndarray, where: tuple, A: np.ndarray,
         x0: np.ndarray | None = None) -> dict[str, Any]:
    """Least squares of ``log A = log c_M + log(1 + a x1 + b x2)`` over the points (the algorithm of
    ``fit_amplification``: a first-order start pulled into ``1 + a x1 + b x2 > 0``, trust-region steps with the
    analytic Jacobian). ``theta = [log c_0 .. log c_{M-1} (NaN: no point), a, b]``."""
    M = A.shape[1]
    n, total = int(y.size), where[3]
    present = np.unique(col)
    P = present.size
    n_params = P + 2
    skipped = f" ({total - n} of {total} ratios undefined)" if total - n else ""
    base = {"n_points": n, "theta": None, "r2": None, "where": where[:3], "A": A}
    if n < n_params + 1:
        return base | {"status": "too_few_points", "message": (
            f"too few points to fit: {n} defined amplification factors{skipped} for {n_params} parameters "
            f"({P} classifier scales c_M + a + b); the fit needs at least {n_params + 1}")}
    pcol = np.searchsorted(present, col)
    return fit_points(y, x1, x2, pcol, present, M, x0=x0, base=base, skipped=skipped)


def _point_records(point: Mapping[str, Any], labels: Sequence[str], names: Sequence[str],
                   runs: Sequence[StudyRun], gens: Sequence[int], *, draws_A: np.ndarray | None = None,
                   S: int = 0, R: int = 0, fitted: bool = False) -> list[StudyPoint]:
    """One :class:`StudyPoint` per defined point, in (run, classifier, generation) order."""
    k_idx, m_idx, j_idx = point["where"]
    A = point["A"]
    theta = point.get("theta")
    out = []
    for k, m, j in zip(k_idx.tolist(), m_idx.tolist(), j_idx.tolist(), strict=True):
        run = runs[k]
        t = int(gens[j])
        qv = float(nanmean(np.asarray(run.q, dtype=float)[:, t], axis=0))
        uv = float(nanmean(np.asarray(run.u, dtype=float)[:, t], axis=0))
        est = float(A[k, m, j])
        col = draws_A[:, k, m, j] if draws_A is not None else np.empty(0)
        iv = interval_from_draws(est, col, seeds=S, replicates=R, bounds=(0.0, None), log=True,
                                 min_seeds=FIT_MIN_SEEDS)
        fit_value = resid = None
        if fitted and theta is not None:
            M = A.shape[1]
            fit_value = float(math.exp(theta[m]) * (1.0 + theta[M] * (1.0 - qv) + theta[M + 1] * uv))
            resid = math.log(est) - math.log(fit_value) if fit_value > 0 else None
        out.append(StudyPoint(run=labels[k], classifier=names[m], t=t, design=dict(run.design), q=qv, u=uv,
                              A=iv, fitted=fit_value, residual=resid))
    return out


def _no_estimate() -> Interval:
    return Interval(estimate=None, ci_low=None, ci_high=None, confidence=0.95, method="none", resamples=0,
                    dropped=0, seeds=0, replicates=0, note="no estimate: the fit is not identified (see message)")


