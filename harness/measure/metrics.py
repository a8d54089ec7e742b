"""Classifier fairness metrics (SPEC §3): accuracy, MEO, DI, MD, worst-k subgroup accuracy, DP and EOdds.

Hand-written from the definitions in Zhang et al. (eq. 2-5) and Wyllie et al. (DP, EOdds), because the
paper's multi-group MEO/DI/MD and the per-class subgroup scope exist in no library; ``tests/test_metrics.py``
cross-checks the shared pieces against fairlearn. Every convention for empty cells and zero division is in
``docs/metrics.md``. Pure numpy (torch tensors are accepted through ``.numpy()`` without importing torch); all
counts come from ``np.bincount``, so a 100k-image test set costs a few milliseconds.

Internally an undefined rate is NaN; the returned dict never holds NaN or inf: an undefined number is ``None``.
"""

from __future__ import annotations

import math
from typing import Any, Literal

import numpy as np

__all__ = ["classifier_metrics"]

Scope = Literal["global", "per_class"]


def classifier_metrics(
    pred: Any,
    y: Any,
    g: Any,
    *,
    num_classes: int,
    num_subgroups: int,
    scope: Scope,
) -> dict[str, Any]:
    """Metrics of one classifier on one test set.

    :param pred: predicted class per test sample, ints in ``[0, num_classes)`` (numpy, torch CPU or a list).
    :param y: true class per sample, ints in ``[0, num_classes)``.
    :param g: subgroup per sample, ints in ``[0, num_subgroups)``; ``-1`` = unknown: such samples count in
        ``acc`` and nowhere else. Under ``scope="per_class"`` ``g`` is the index of the subgroup *within its
        class* (subgroup ``i`` of class ``c``), as in :class:`harness.interfaces.DatasetBundle`.
    :param num_classes: ``L``.
    :param num_subgroups: ``G`` (global scope: number of groups; per-class scope: subgroups per class).
    :param scope: ``"global"`` or ``"per_class"`` (SPEC §1).
    :returns: a JSON-ready dict ``{acc, meo, di, md, worst_k, dp, eodds, subgroup_acc, bias_gap}``: python
        floats, lists and ``None`` where a number is undefined (never NaN or inf).
    :raises ValueError: on empty input, mismatched lengths, values out of range or an unknown scope.
    """
    if scope not in ("global", "per_class"):
        raise ValueError(f"scope must be 'global' or 'per_class', got {scope!r}")
    L, G = int(num_classes), int(num_subgroups)
    if L < 1 or G < 0:
        raise ValueError(f"need num_classes >= 1 and num_subgroups >= 0, got {L} and {G}")
    pred, y, g = _int_array(pred, "pred"), _int_array(y, "y"), _int_array(g, "g")
    if not (len(pred) == len(y) == len(g)):
        raise ValueError(f"pred, y and g must have the same length, got {len(pred)}, {len(y)}, {len(g)}")
    if len(y) == 0:
        raise ValueError("empty test set: no metric is defined")
    _check_range(pred, 0, L, "pred")
    _check_range(y, 0, L, "y")
    _check_range(g, -1, G, "g")

    correct = pred == y
    known = g >= 0
    yk, gk, pk, ck = y[known], g[known], pred[known], correct[known]

    # Acc_{c,i} = P(f(x) = y | y = c, g = i): an L×G table of counts, then of rates (NaN where the cell is empty).
    cell = yk * G + gk
    n_cell = np.bincount(cell, minlength=L * G).reshape(L, G)
    k_cell = np.bincount(cell, weights=ck, minlength=L * G).reshape(L, G)
    acc_cell = _rate(k_cell, n_cell)

    if scope == "global":
        # TPR_i = P(f(x) = y | g = i), pooled over classes: one row of G rates.
        n_g, k_g = n_cell.sum(axis=0), k_cell.sum(axis=0)
        pairs = _pairwise(_rate(k_g, n_g)[None, :], (n_g > 0)[None, :])
        meo = 1.0 - pairs["mean_abs"][0] if pairs["has_pairs"][0] else None
        di = _di_of_rows(pairs, [0])
        md = pairs["max_abs"][0] if pairs["has_pairs"][0] else None
        dp, eodds = _ovr_global(yk, gk, pk, ck, L, G)
    else:
        # Every quantity within each class over its own subgroups; classes with < 2 non-empty subgroups have no
        # pair and drop out of the average (MEO, DI) and of the maximum (MD).
        pairs = _pairwise(acc_cell, n_cell > 0)
        rows = np.flatnonzero(pairs["has_pairs"])
        meo = 1.0 - float(pairs["mean_abs"][rows].mean()) if rows.size else None
        di = _di_of_rows(pairs, rows)
        md = float(pairs["max_abs"][rows].max()) if rows.size else None
        dp, eodds = _ovr_per_class(yk, gk, pk, n_cell, L, G, pairs)

    # worst_k (eq. 5): sort each class's G subgroup accuracies ascending, average each rank over classes. Only
    # classes whose G cells are all non-empty take part (a rank is only comparable across complete classes).
    complete = (n_cell > 0).all(axis=1) if G > 0 else np.zeros(L, dtype=bool)
    if complete.any():
        worst = np.sort(acc_cell[complete], axis=1).mean(axis=0)
        worst_k: list[float | None] = [float(v) for v in worst]
        bias_gap = float(worst[-1] - worst[0]) if G >= 2 else None
    else:
        worst_k, bias_gap = [None] * G, None

    return {
        "acc": float(correct.mean()),
        "meo": _num(meo),
        "di": _num(di),
        "md": _num(md),
        "worst_k": worst_k,
        "dp": _num(dp),
        "eodds": _num(eodds),
        "subgroup_acc": [[_num(v) for v in row] for row in acc_cell],
        "bias_gap": _num(bias_gap),
    }


# ------------------------------------------------------------------------------------------------- pieces


def _int_array(x: Any, name: str) -> np.ndarray:
    if hasattr(x, "detach"):  # a torch tensor; converted without importing torch
        x = x.detach().cpu().numpy()
    a = np.asarray(x)
    if a.ndim != 1:
        raise ValueError(f"{name} must be 1-D, got shape {a.shape}")
    if a.size and a.dtype.kind not in "iu":
        raise ValueError(f"{name} must hold integers, got dtype {a.dtype}")
    return a.astype(np.int64, copy=False)


def _check_range(a: np.ndarray, lo: int, hi: int, name: str) -> None:
    if a.size and (a.min() < lo or a.max() >= hi):
        raise ValueError(f"{name} must lie in [{lo}, {hi}), got values in [{a.min()}, {a.max()}]")


def _rate(num: np.ndarray, den: np.ndarray) -> np.ndarray:
    """``num / den`` as floats, NaN where ``den == 0``."""
    out = np.full(np.shape(num), np.nan)
    np.divide(num, den, out=out, where=den > 0)
    return out


def _num(x: Any) -> float | None:
    """A python float, or None for None/NaN/inf (the output must be strict JSON)."""
    if x is None:
        return None
    x = float(x)
    return x if math.isfinite(x) else None


def _pairwise(rates: np.ndarray, valid: np.ndarray) -> dict[str, np.ndarray]:
    """Pair statistics of each row of ``rates`` (K×G) over its ``valid`` entries.

    ``mean_abs``/``max_abs``: mean / max of ``|r_i - r_j|`` over unordered pairs ``i < j``; ``di_term``: mean of
    ``|r_i / r_j - 1|`` over ordered pairs ``i != j``, with ``0/0 := ratio 1`` (equal rates); ``di_inf``: the row
    has a pair with ``r_j = 0 < r_i`` (an infinite ratio); ``has_pairs``: at least two valid entries.
    """
    K, G = rates.shape
    r = np.where(valid, rates, 0.0)
    ri, rj = r[:, :, None], r[:, None, :]
    both = valid[:, :, None] & valid[:, None, :]
    upper = both & np.triu(np.ones((G, G), dtype=bool), k=1)
    ordered = both & ~np.eye(G, dtype=bool)
    n_pairs = upper.sum(axis=(1, 2))
    diff = np.abs(ri - rj)
    mean_abs = _rate(np.sum(diff, axis=(1, 2), where=upper), n_pairs)
    max_abs = np.max(diff, axis=(1, 2), where=upper, initial=-np.inf)

    ratio_term = np.abs(np.divide(ri, rj, out=np.ones((K, G, G)), where=rj > 0) - 1.0)  # rj == 0 -> term 0 ...
    di_inf = np.any(ordered & (rj == 0) & (ri > 0), axis=(1, 2))  # ... unless ri > 0: infinite, flagged here
    di_term = _rate(np.sum(ratio_term, axis=(1, 2), where=ordered), ordered.sum(axis=(1, 2)))
    return {
        "has_pairs": n_pairs > 0,
        "mean_abs": mean_abs,
        "max_abs": max_abs,
        "di_term": di_term,
        "di_inf": di_inf,
    }


def _di_of_rows(pairs: dict[str, np.ndarray], rows: Any) -> float | None:
    """DI = 1 - mean ordered-pair term, averaged over ``rows``; None if no row has a pair or any ratio is
    infinite (some P_j = 0 < P_i: the mean, hence DI, is -inf, which JSON cannot hold)."""
    rows = np.asarray(rows, dtype=np.int64)
    rows = rows[pairs["has_pairs"][rows]]
    if rows.size == 0 or pairs["di_inf"][rows].any():
        return None
    return float(np.mean(1.0 - pairs["di_term"][rows]))


def _gap(rates: np.ndarray, valid: np.ndarray, axis: int) -> np.ndarray:
    """max - min of ``rates`` along ``axis`` over ``valid`` entries; NaN where fewer than two are valid."""
    hi = np.max(rates, axis=axis, where=valid, initial=-np.inf)
    lo = np.min(rates, axis=axis, where=valid, initial=np.inf)
    return np.where(valid.sum(axis=axis) >= 2, hi - lo, np.nan)


def _max_defined(x: np.ndarray) -> float | None:
    x = x[np.isfinite(x)]
    return float(x.max()) if x.size else None


def _ovr_global(yk, gk, pk, ck, L: int, G: int) -> tuple[float | None, float | None]:
    """Wyllie's DP and EOdds differences, one-vs-rest per class ``c`` (positive = ``pred == c``, true positive
    = ``y == c``), groups = the G subgroups; the max over classes of the per-class differences."""
    sel = np.bincount(gk * L + pk, minlength=G * L).reshape(G, L)  # group g predicted as c
    gy = gk * L + yk
    pos = np.bincount(gy, minlength=G * L).reshape(G, L)  # group g, true class c
    tp = np.bincount(gy, weights=ck, minlength=G * L).reshape(G, L)  # group g, y = c and pred = c
    n_g = pos.sum(axis=1, keepdims=True)
    neg = n_g - pos
    fp = sel - tp
    dp_c = _gap(_rate(sel, np.broadcast_to(n_g, sel.shape)), np.broadcast_to(n_g > 0, sel.shape), axis=0)
    tpr_gap = _gap(_rate(tp, pos), pos > 0, axis=0)
    fpr_gap = _gap(_rate(fp, neg), neg > 0, axis=0)
    eodds_c = np.fmax(tpr_gap, fpr_gap)  # fmax: the defined one when the other is NaN
    return _max_defined(dp_c), _max_defined(eodds_c)


def _ovr_per_class(yk, gk, pk, n_cell, L: int, G: int, pairs) -> tuple[float | None, float | None]:
    """DP and EOdds when subgroups are nested in classes (see docs/metrics.md).

    Subgroup ``i`` of class ``c`` exists only among samples with ``y = c``, so every comparison is between the
    subgroups of one true class. EOdds conditions on the true class: for every (true class c', predicted class
    c) the gap over the subgroups of c' of ``P(pred = c | y = c', g = i)``: the diagonal is the TPR part, the
    off-diagonal entries the FPR part; EOdds is the max over all of them. DP, restricted to the samples of
    class c, is the gap of ``P(pred = c | y = c, g = i)``: the diagonal only, which makes it equal to MD.
    """
    dp = float(pairs["max_abs"][pairs["has_pairs"]].max()) if pairs["has_pairs"].any() else None
    conf = np.bincount((yk * G + gk) * L + pk, minlength=L * G * L).reshape(L, G, L)  # [true c', sub i, pred c]
    rate = _rate(conf, n_cell[:, :, None])
    gap = _gap(rate, np.broadcast_to((n_cell > 0)[:, :, None], rate.shape), axis=1)  # [true c', pred c]
    return dp, _max_defined(gap)
