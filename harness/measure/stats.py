"""Per-seed aggregation (SPEC §3, last line): mean and a Student-t 95% interval over seeds.

A missing value (``None``, or NaN) is a seed where the metric is undefined; it is left out and ``n`` says how
many seeds took part. The output is JSON-ready: python floats, ints and ``None``.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np

__all__ = ["mean_ci", "aggregate"]


def mean_ci(values: Sequence[float | None], confidence: float = 0.95) -> dict[str, Any]:
    """Mean, sample standard deviation (``ddof=1``) and Student-t interval over the defined values.

    ``ci = mean ± t_{(1+confidence)/2, n-1} · std / sqrt(n)``. ``None`` and NaN are skipped; ``mean`` is None
    when ``n == 0``; ``std`` and the interval are None when ``n < 2``.

    :raises ValueError: on an infinite value or a confidence outside (0, 1).
    """
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence must lie in (0, 1), got {confidence}")
    xs = [x for x in (float(v) for v in values if v is not None) if not math.isnan(x)]
    if any(math.isinf(v) for v in xs):
        raise ValueError("mean_ci got an infinite value; undefined numbers must be None")
    n = len(xs)
    out: dict[str, Any] = {"mean": None, "ci_low": None, "ci_high": None, "std": None, "n": n}
    if n == 0:
        return out
    a = np.asarray(xs)
    mean = float(a.mean())
    out["mean"] = mean
    if n >= 2:
        from scipy.stats import t  # scipy is heavy; only aggregation needs it

        std = float(a.std(ddof=1))
        half = float(t.ppf(0.5 + confidence / 2.0, df=n - 1)) * std / math.sqrt(n)
        out.update(std=std, ci_low=mean - half, ci_high=mean + half)
    return out


def aggregate(per_seed: Sequence[Mapping[str, Any]], confidence: float = 0.95) -> dict[str, Any]:
    """Aggregate per-seed metric dicts key by key.

    A key whose defined values are numbers gets one :func:`mean_ci`; a key whose defined values are flat lists
    of numbers (e.g. ``worst_k``) gets a list of :func:`mean_ci`, one per position. A seed where the key is
    missing or ``None`` counts as missing (``None`` inside a list: missing at that position). Keys holding
    dicts, nested lists (e.g. ``subgroup_acc``), strings or booleans are skipped. Keys keep first-seen order.

    :raises ValueError: when a key mixes numbers and lists across seeds, or its lists differ in length.
    """
    keys: dict[str, None] = {}
    for d in per_seed:
        keys.update(dict.fromkeys(d))
    out: dict[str, Any] = {}
    for key in keys:
        vals = [d.get(key) for d in per_seed]
        defined = [v for v in vals if v is not None]
        if not defined:
            out[key] = mean_ci([None] * len(vals), confidence)
            continue
        kinds = {_kind(v) for v in defined}
        if kinds == {"number"}:
            out[key] = mean_ci(defined, confidence)
        elif kinds == {"list"}:
            lengths = {len(v) for v in defined}
            if len(lengths) != 1:
                raise ValueError(f"aggregate: lists under {key!r} differ in length across seeds: {sorted(lengths)}")
            width = lengths.pop()
            out[key] = [mean_ci([v[k] for v in defined], confidence) for k in range(width)]
        elif kinds <= {"skip"}:
            continue
        else:
            raise ValueError(f"aggregate: {key!r} mixes {sorted(kinds)} across seeds")
    return out


def _is_number(v: Any) -> bool:
    return isinstance(v, (int, float, np.integer, np.floating)) and not isinstance(v, (bool, np.bool_))


def _kind(v: Any) -> str:
    if _is_number(v):
        return "number"
    if isinstance(v, (list, tuple)) and all(x is None or _is_number(x) for x in v):
        return "list"
    return "skip"  # dicts, nested lists, strings, booleans
