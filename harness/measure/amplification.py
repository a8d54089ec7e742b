"""Bias amplification (SPEC §5, eq. 6): the factors ``A_t = B_{t+1} / B_t``, their geometric mean ``A_bar``,
their bootstrap intervals over seeds and replicates, and the fit of the identifiable form of Zhang et al.'s
conjecture

    log A_{M,t} = log c_M + log(1 + a (1 - q_t) + b u_t)

with one ``c_M`` per classifier and ``a``, ``b`` shared, by least squares on seed-averaged values, with bootstrap
intervals over seeds, called ``identified`` only when the bootstrap and the design support it. Conventions are in
``docs/metrics.md``. Outputs are JSON-ready (python floats, None) or :class:`~harness.measure.intervals.Interval`.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import numpy as np

from harness.measure.intervals import (
    Interval,
    Method,
    bootstrap_draws,
    interval_from_draws,
    seed_replicate_mean,
)

__all__ = [
    "FIT_MAX_CONDITION",
    "FIT_MIN_BOOTSTRAP",
    "FIT_MIN_SEEDS",
    "FIT_MIN_SPREAD",
    "a_bar",
    "amplification_factors",
    "amplification_intervals",
    "bias_value",
    "fit_amplification",
]

Measure = Literal["1-meo", "md", "gap"]

#: The fit is ``identified`` only when all of these hold (SPEC §5; the reasons are in docs/metrics.md):
FIT_MIN_BOOTSTRAP = 0.95  # fraction of bootstrap resamples of the seeds whose refit converges
FIT_MIN_SEEDS = 3  # seeds for a bootstrap at all (as for every interval, SPEC §5b)
FIT_MIN_SPREAD = 0.02  # standard deviation of 1 - q_t and of u_t over the fitted points
FIT_MAX_CONDITION = 30.0  # condition number of the column-scaled Jacobian at the fit (Belsley, Kuh & Welsch)

_Z_FLOOR = 1e-300  # stands in for 1 + a(1-q) + b u <= 0 inside the optimiser (a huge, finite residual)
_CONSTANT_RTOL = 1e-9  # a regressor whose spread is below this fraction of its size counts as constant
_COLLINEAR_TOL = 1e-6  # smallest singular value of the two normalised, classifier-centred regressors


def amplification_factors(B: Sequence[float | None], eps: float = 1e-6) -> list[dict[str, Any]]:
    """``A_t = B_{t+1} / B_t`` for ``t = 0 .. T-1`` (``B`` has ``T + 1`` entries, one per generation).

    :returns: ``[{"t", "value", "reason"}]``; ``value`` is None, with a one-line ``reason``, when ``B_t`` or
        ``B_{t+1}`` is undefined (None or NaN) or ``B_t < eps`` (no bias to amplify: the ratio is meaningless).
    """
    vals = [_finite_or_none(v) for v in B]
    out: list[dict[str, Any]] = []
    for t in range(len(vals) - 1):
        b0, b1 = vals[t], vals[t + 1]
        value: float | None = None
        reason: str | None = None
        if b0 is None:
            reason = f"B_{t} is undefined"
        elif b1 is None:
            reason = f"B_{t + 1} is undefined"
        elif b0 < eps:
            reason = f"B_{t} = {b0:.3g} is below {eps:g}: no bias to amplify, so the ratio is not defined"
        elif b1 < 0:
            reason = f"B_{t + 1} = {b1:.3g} is negative: not a bias value"
        else:
            value = b1 / b0
        out.append({"t": t, "value": value, "reason": reason})
    return out


def a_bar(factors: Sequence[Mapping[str, Any]]) -> float | None:
    """Geometric mean of the defined ``A_t`` (None if none is defined; 0.0 if one of them is 0)."""
    vals = [float(f["value"]) for f in factors if f.get("value") is not None]
    if not vals:
        return None
    if any(v < 0 for v in vals):
        raise ValueError(f"amplification factors must be >= 0, got {vals}")
    if any(v == 0 for v in vals):
        return 0.0
    return math.exp(sum(math.log(v) for v in vals) / len(vals))


def bias_value(metrics: Mapping[str, Any], measure: Measure) -> float | None:
    """The bias ``B`` of one classifier at one generation, from its metrics.

    ``"1-meo"`` (the default of SPEC §5): ``1 - meo``; ``"md"``: ``md``; ``"gap"``: ``bias_gap`` (worst-vs-best
    subgroup accuracy). ``metrics`` is a per-seed dict from :func:`harness.measure.metrics.classifier_metrics`, or an
    aggregated one from :func:`harness.measure.stats.aggregate` (then its ``mean`` is used: the seed-averaged bias).
    """
    key = {"1-meo": "meo", "md": "md", "gap": "bias_gap"}.get(measure)
    if key is None:
        raise ValueError(f"measure must be one of '1-meo', 'md', 'gap', got {measure!r}")
    v = metrics.get(key)
    if isinstance(v, Mapping):
        v = v.get("mean")
    v = _finite_or_none(v)
    if v is None:
        return None
    return 1.0 - v if measure == "1-meo" else v


def amplification_intervals(
    bias: Any,
    *,
    resamples: int = 2000,
    rng: int | np.random.Generator = 0,
    eps: float = 1e-6,
    min_seeds: int = 3,
    confidence: float = 0.95,
    method: Method = "expanded percentile",
) -> tuple[list[Interval], list[Interval], Interval]:
    """``B_t``, ``A_t`` and ``A_bar`` of one classifier, each with its hierarchical-bootstrap interval.

    :param bias: ``(S seeds, R replicates, T+1 generations)`` per-replicate bias values; NaN = missing.
    :returns: ``(B, A, A_bar)``: ``T + 1`` intervals of ``B_t``, ``T`` of ``A_t``, one of ``A_bar``.

    The estimates are those of :func:`amplification_factors` and :func:`a_bar` on ``B_t`` = the mean over
    replicates within each seed, then over seeds. Every resample (seeds, then replicates within each, drawn once
    for all generations, so the ``B_t`` of one resample belong together) recomputes those ``B_t``, then
    ``A_t = B_{t+1} / B_t``; a resample where ``B_t < eps`` has no ``A_t`` and is left out of that ``t``'s
    interval (``Interval.dropped`` counts them). ``A_bar`` of a resample is the geometric mean of the ``A_t``
    defined at the point estimate; a resample missing one of them is left out. Intervals of ``B_t`` stay in
    ``[0, 1]``; those of ``A_t`` and ``A_bar`` are expanded on the log scale (see
    :func:`~harness.measure.intervals.interval_from_draws`) and stay ``>= 0``.
    """
    bias = np.asarray(bias, dtype=float)
    if bias.ndim != 3:
        raise ValueError(f"bias must be shaped (seeds, replicates, generations), got shape {bias.shape}")
    S_axis, R, T1 = bias.shape
    seeds = int(np.isfinite(bias).reshape(S_axis, -1).any(axis=1).sum())
    point = seed_replicate_mean(bias[None])[0]
    factors = amplification_factors([float(b) if np.isfinite(b) else None for b in point], eps=eps)
    defined = [f["t"] for f in factors if f["value"] is not None]

    if seeds >= min_seeds:
        draws_B = bootstrap_draws(bias, seed_replicate_mean, resamples=resamples, rng=rng)  # (n, T+1)
    else:
        draws_B = np.empty((0, T1))
    b0, b1 = draws_B[:, :-1], draws_B[:, 1:]
    with np.errstate(divide="ignore", invalid="ignore"):
        draws_A = np.where(np.isfinite(b0) & (b0 >= eps) & np.isfinite(b1) & (b1 >= 0), b1 / b0, np.nan)
        # a NaN in a row makes that resample's A_bar NaN (left out); log 0 = -inf gives A_bar = 0
        draws_bar = (np.exp(np.log(draws_A[:, defined]).mean(axis=1)) if defined
                     else np.full(draws_B.shape[0], np.nan))

    common = {"seeds": seeds, "replicates": int(R), "confidence": confidence, "method": method, "min_seeds": min_seeds}
    B_iv = [interval_from_draws(float(point[t]) if np.isfinite(point[t]) else None, draws_B[:, t],
                                bounds=(0.0, 1.0), **common) for t in range(T1)]
    A_iv = [interval_from_draws(f["value"], draws_A[:, f["t"]], bounds=(0.0, None), log=True, note=f["reason"],
                                **common) for f in factors]
    bar_iv = interval_from_draws(a_bar(factors), draws_bar, bounds=(0.0, None), log=True,
                                 note=None if defined else "no A_t is defined", **common)
    return B_iv, A_iv, bar_iv


def fit_amplification(
    B: Any,
    q: Any,
    u: Any,
    classifier_names: Sequence[str],
    *,
    n_boot: int = 1000,
    seed: int = 0,
    eps: float = 1e-6,
) -> dict[str, Any]:
    """Fit ``log A_{M,t} = log c_M + log(1 + a (1 - q_t) + b u_t)`` (SPEC §5), and say whether it is identified.

    :param B: ``[S seeds, M classifiers, T+1 generations]`` per-seed bias values (replicates already averaged);
        NaN = undefined.
    :param q: ``[S, T]`` label fidelity; ``q[:, t]`` belongs to the generator whose samples enter the training
        set at generation ``t + 1``, so it is paired with ``A_t``.
    :param u: ``[S, T]`` unbalanced generation, paired like ``q``.
    :param classifier_names: ``M`` names, keys of ``"c"`` in the result.
    :param n_boot: bootstrap resamples of the seeds (with replacement), for the intervals and for the check that
        the fit is stable.
    :param seed: seed of the bootstrap's ``numpy.random.Generator``.
    :param eps: ``A_t`` is undefined where the seed-averaged ``B_t < eps``.
    :returns: ``{"status": "identified" | "not_identified" | "too_few_points", "message", "n_points", "n_seeds",
        "c": {name: {"estimate", "ci_low", "ci_high"}}, "a": {...}, "b": {...}, "r2"}``. Estimates, intervals
        and ``r2`` are None unless the status is ``"identified"``; ``message`` gives the reason either way.

    ``identified`` needs all of: the least-squares fit converges; ``1 - q_t`` and ``u_t`` each have a standard
    deviation over the fitted points of at least :data:`FIT_MIN_SPREAD` and do not vary in lockstep; the
    condition number of the column-scaled Jacobian at the fit is at most :data:`FIT_MAX_CONDITION`; at least
    :data:`FIT_MIN_SEEDS` seeds; and at least :data:`FIT_MIN_BOOTSTRAP` of the ``n_boot`` resamples refit.
    The points are the seed-averaged ``A_{M,t} = mean_s B[s, M, t+1] / mean_s B[s, M, t]`` (means over the
    seeds where B is defined) paired with ``mean_s q[s, t]`` and ``mean_s u[s, t]``. ``r2`` is
    ``1 - SS_res / SS_tot`` of ``log A`` around its grand mean. Intervals are expanded percentile intervals of
    the bootstrap refits (:func:`~harness.measure.intervals.interval_from_draws`; ``c_M`` on the log scale).
    """
    B = np.asarray(B, dtype=float)
    q = np.asarray(q, dtype=float)
    u = np.asarray(u, dtype=float)
    names = [str(n) for n in classifier_names]
    if B.ndim != 3:
        raise ValueError(f"B must be [seeds, classifiers, generations], got shape {B.shape}")
    S, M, T1 = B.shape
    if q.shape != (S, T1 - 1) or u.shape != (S, T1 - 1):
        raise ValueError(f"q and u must have shape {(S, T1 - 1)} to match B {B.shape}, got {q.shape} and {u.shape}")
    if len(names) != M:
        raise ValueError(f"{len(names)} classifier names for {M} classifiers in B")

    point = _fit_once(_seed_mean(B), _seed_mean(q), _seed_mean(u), eps)
    result: dict[str, Any] = {
        "status": "too_few_points",
        "message": point["message"],
        "n_points": point["n_points"],
        "n_seeds": int(S),
        "c": {name: _estimate(None) for name in names},
        "a": _estimate(None),
        "b": _estimate(None),
        "r2": None,
    }
    if point["status"] == "too_few_points":
        return result
    if point["status"] == "failed":
        return result | {"status": "not_identified", "message": f"not identified: {point['message']}"}

    problems = _design_problems(point)
    if S < FIT_MIN_SEEDS:
        problems.append(f"{S} seed{'s' if S != 1 else ''}: checking the fit by bootstrap needs ≥ {FIT_MIN_SEEDS}")
    elif n_boot < 1:
        problems.append("n_boot = 0: no bootstrap to check the fit")
    theta = point["theta"]  # [log c_0 .. log c_{M-1} (NaN: no points), a, b]
    draws = np.full((max(n_boot, 0), M + 2), np.nan)
    boot_text = ""
    if S >= FIT_MIN_SEEDS and n_boot >= 1:  # also when the design already fails: the message gives every reason
        rng = np.random.default_rng(seed)
        for k in range(n_boot):
            idx = rng.integers(0, S, size=S)
            fit = _fit_once(_seed_mean(B[idx]), _seed_mean(q[idx]), _seed_mean(u[idx]), eps, x0=theta)
            if fit["status"] == "ok":
                draws[k] = fit["theta"]
        _, boot_text = _refits(draws[:, M], S, problems)
    if problems:
        return result | {"status": "not_identified",
                         "message": f"not identified: {'; '.join(problems)} ({point['message']})"}

    def estimate(est: float | None, col: np.ndarray, log: bool = False) -> dict[str, float | None]:
        iv = interval_from_draws(est, col, seeds=S, replicates=1, log=log, min_seeds=FIT_MIN_SEEDS)
        return {"estimate": iv.estimate, "ci_low": iv.ci_low, "ci_high": iv.ci_high}

    design = (f"sd of 1 - q_t {point['spread'][0]:.3g} and of u_t {point['spread'][1]:.3g}, "
              f"condition number {point['condition']:.3g}")
    with np.errstate(over="ignore"):
        c = {name: estimate(_exp_or_none(theta[m]), np.exp(draws[:, m]), log=True) for m, name in enumerate(names)}
    return result | {
        "status": "identified",
        "message": f"identified: {point['message']}; {boot_text}; {design}",
        "a": estimate(_finite_or_none(theta[M]), draws[:, M]),
        "b": estimate(_finite_or_none(theta[M + 1]), draws[:, M + 1]),
        "c": c,
        "r2": _finite_or_none(point["r2"]),
    }


# ------------------------------------------------------------------------------------------------- pieces


def _refits(column: np.ndarray, seeds: int, problems: list[str]) -> tuple[int, str]:
    """How many bootstrap refits converged (finite in ``column``, one row per resample) and the sentence saying so;
    appends the identification problem to ``problems`` when fewer than ``FIT_MIN_BOOTSTRAP`` of them did."""
    fitted, n_boot = int(np.isfinite(column).sum()), int(column.shape[0])
    text = f"{fitted} of {n_boot} bootstrap resamples of {seeds} seeds refitted"
    if fitted < FIT_MIN_BOOTSTRAP * n_boot:
        problems.append(f"only {text} (needs ≥ {FIT_MIN_BOOTSTRAP:.0%})")
    return fitted, text


def _finite_or_none(v: Any) -> float | None:
    if v is None:
        return None
    v = float(v)
    return v if math.isfinite(v) else None


def _exp_or_none(v: float) -> float | None:
    return _finite_or_none(math.exp(v)) if math.isfinite(v) else None


def _estimate(v: Any) -> dict[str, float | None]:
    return {"estimate": _finite_or_none(v), "ci_low": None, "ci_high": None}


def _seed_mean(x: np.ndarray) -> np.ndarray:
    """Mean over axis 0 of the finite entries; NaN where there is none (no warnings)."""
    finite = np.isfinite(x)
    count = finite.sum(axis=0)
    total = np.where(finite, x, 0.0).sum(axis=0)
    return np.where(count > 0, total / np.maximum(count, 1), np.nan)


def _fit_once(Bm: np.ndarray, qm: np.ndarray, um: np.ndarray, eps: float, x0: np.ndarray | None = None) -> dict:
    """One least-squares fit on seed-averaged ``Bm [M, T+1]``, ``qm [T]``, ``um [T]``.

    Returns ``status`` (``ok``, ``too_few_points`` or ``failed``), ``message``, ``n_points`` and, when ok,
    ``theta`` (``[log c_M..., a, b]``, NaN for a classifier without points), ``r2``, ``spread`` (sd of ``1 - q``
    and of ``u`` over the points) and ``condition`` (of the column-scaled Jacobian at ``theta``).
    """

    M = Bm.shape[0]
    b0, b1 = Bm[:, :-1], Bm[:, 1:]
    x1_t, x2_t = 1.0 - qm, um
    with np.errstate(divide="ignore", invalid="ignore"):
        A = b1 / b0
    ok = np.isfinite(b0) & np.isfinite(b1) & (b0 >= eps) & (A > 0)
    ok &= np.isfinite(x1_t)[None, :] & np.isfinite(x2_t)[None, :]
    m_idx, t_idx = np.nonzero(ok)
    n = int(m_idx.size)
    present = np.unique(m_idx)
    n_params = present.size + 2
    excluded = int(b0.size - n)
    base = {"n_points": n, "theta": None, "r2": None}
    skipped = f" ({excluded} of {b0.size} (classifier, generation) ratios undefined)" if excluded else ""
    if n < n_params + 1:
        return base | {
            "status": "too_few_points",
            "message": (
                f"too few points to fit: {n} defined amplification factors{skipped} for {n_params} parameters "
                f"({present.size} classifier scales c_M + a + b); the fit needs at least {n_params + 1}"
            ),
        }

    x1, x2, y = x1_t[t_idx], x2_t[t_idx], np.log(A[m_idx, t_idx])
    col = np.searchsorted(present, m_idx)  # parameter column of each point's c_M
    return fit_points(y, x1, x2, col, present, M, x0=x0, base=base, skipped=skipped)


def _design_problems(point: Mapping[str, Any]) -> list[str]:
    """Why the design of a converged fit cannot pin down ``a`` and ``b`` (empty when it can).

    The spread (standard deviation over the fitted points) of ``1 - q_t`` and of ``u_t`` must reach
    :data:`FIT_MIN_SPREAD`, and the condition number of the Jacobian at the fit, columns scaled to unit length,
    must not exceed :data:`FIT_MAX_CONDITION`.
    """
    problems = []
    for name, sd in zip(("1 - q_t", "u_t"), point["spread"], strict=True):
        if sd < FIT_MIN_SPREAD:
            problems.append(f"{name} varies too little (sd {sd:.3g} < {FIT_MIN_SPREAD:g})")
    if not point["condition"] <= FIT_MAX_CONDITION:
        problems.append(f"the design is ill-conditioned (condition number {point['condition']:.3g} > "
                        f"{FIT_MAX_CONDITION:g}): a, b and the c_M trade off against each other")
    return problems


def _identifiability(x1: np.ndarray, x2: np.ndarray, col: np.ndarray, P: int) -> str | None:
    """Why ``a`` and ``b`` cannot be told apart from the ``c_M``, or None when they can.

    Linearised at ``a = b = 0`` the model is ``log c_M + a x1 + b x2``; (a, b) are identifiable iff ``x1`` and
    ``x2``, after removing each classifier's mean (what the ``c_M`` absorb), are linearly independent.
    """
    counts = np.bincount(col, minlength=P)
    resid = []
    for name, x in (("1 - q_t", x1), ("u_t", x2)):
        r = x - (np.bincount(col, weights=x, minlength=P) / counts)[col]
        size = max(float(np.linalg.norm(x)), 1e-12)
        if np.linalg.norm(r) <= _CONSTANT_RTOL * size:
            return f"{name} does not vary across the fitted generations (e.g. q or u constant)"
        resid.append(r / np.linalg.norm(r))
    s = np.linalg.svd(np.column_stack(resid), compute_uv=False)
    if s[-1] < _COLLINEAR_TOL:
        return "1 - q_t and u_t vary in lockstep (collinear), so their effects cannot be separated"
    return None


def fit_points(y: np.ndarray, x1: np.ndarray, x2: np.ndarray, col: np.ndarray, present: np.ndarray, M: int, *,
               x0: np.ndarray | None, base: dict, skipped: str = "") -> dict:
    """Least squares of ``log A = log c_M + log(1 + a·x1 + b·x2)`` on points ``(y = log A, x1 = 1 − q, x2 = u)``
    whose classifier is column ``col`` of the ``present`` classifiers (of ``M``), after the identifiability check:
    the core that :func:`fit_amplification` and :func:`harness.measure.study.fit_study` share. Returns ``base``
    updated with the status, ``theta`` (``c_M`` logs for all ``M``, then ``a``, ``b``), R², spread and the
    condition number of the column-scaled Jacobian."""
    from scipy.optimize import least_squares

    n = y.size
    problem = _identifiability(x1, x2, col, present.size)
    if problem:
        return base | {"status": "failed", "message": problem}

    P = present.size
    onehot = np.zeros((n, P))
    onehot[np.arange(n), col] = 1.0

    def z_of(theta: np.ndarray) -> np.ndarray:
        return 1.0 + theta[P] * x1 + theta[P + 1] * x2

    def residuals(theta: np.ndarray) -> np.ndarray:
        return theta[col] + np.log(np.maximum(z_of(theta), _Z_FLOOR)) - y

    def jacobian(theta: np.ndarray) -> np.ndarray:
        z = np.maximum(z_of(theta), _Z_FLOOR)
        return np.column_stack([onehot, x1 / z, x2 / z])

    if x0 is not None and np.isfinite(x0[-2:]).all():
        start = np.concatenate([np.where(np.isfinite(x0[present]), x0[present], 0.0), x0[-2:]])
    else:
        # First-order start: log(1 + v) ≈ v makes the model linear in (log c_M, a, b).
        start = np.linalg.lstsq(np.column_stack([onehot, x1, x2]), y, rcond=None)[0]
    for _ in range(60):  # pull (a, b) towards 0 until 1 + a(1-q) + b u > 0 everywhere: (0, 0) is feasible
        if z_of(start).min() > 0.05:
            break
        start[P:] *= 0.5
    else:
        start[P:] = 0.0

    try:
        res = least_squares(residuals, start, jac=jacobian, method="trf", xtol=1e-12, ftol=1e-12, gtol=1e-12)
    except (ValueError, np.linalg.LinAlgError) as exc:  # pragma: no cover - scipy-internal failures
        return base | {"status": "failed", "message": f"least squares failed: {exc}"}
    if res.status <= 0 or not np.isfinite(res.x).all():
        return base | {"status": "failed", "message": f"least squares did not converge: {res.message}"}
    if z_of(res.x).min() <= 0:
        return base | {"status": "failed", "message": "the fit left the region 1 + a(1-q) + b u > 0"}

    J = jacobian(res.x)
    J = J / np.maximum(np.linalg.norm(J, axis=0), 1e-300)  # unit-length columns (Belsley, Kuh & Welsch)
    sv = np.linalg.svd(J, compute_uv=False)
    ss_res = float(np.sum(res.fun**2))
    ss_tot = float(np.sum((y - y.mean()) ** 2))
    theta = np.full(M + 2, np.nan)
    theta[present] = res.x[:P]
    theta[M:] = res.x[P:]
    missing = M - P
    note = f"; {missing} classifier(s) without a defined factor (c_M null)" if missing else ""
    return base | {
        "status": "ok",
        "message": f"fitted {n} points from {P} classifiers{skipped}{note}",
        "theta": theta,
        "r2": 1.0 - ss_res / ss_tot if ss_tot > 0 else None,
        "spread": (float(x1.std()), float(x2.std())),
        "condition": float(sv[0] / sv[-1]) if sv[-1] > 0 else math.inf,
    }
