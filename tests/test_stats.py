"""harness.measure.stats: the t-interval by hand, missing seeds, and aggregation of metric dicts."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.measure.metrics import classifier_metrics
from harness.measure.stats import aggregate, mean_ci


def test_t_interval_by_hand():
    # values 1, 2, 3, 4: mean 2.5; squared deviations 2.25 + 0.25 + 0.25 + 2.25 = 5 -> std = sqrt(5/3)
    # se = sqrt(5/3) / 2 = 0.645497; t_{0.975, df=3} = 3.182446 (t table) -> half-width 3.182446 * 0.645497 = 2.054260
    r = mean_ci([1.0, 2.0, 3.0, 4.0])
    assert r["n"] == 4
    assert r["mean"] == pytest.approx(2.5)
    assert r["std"] == pytest.approx(math.sqrt(5 / 3))
    assert r["ci_low"] == pytest.approx(2.5 - 2.054260, abs=1e-5)
    assert r["ci_high"] == pytest.approx(2.5 + 2.054260, abs=1e-5)
    # 90%: t_{0.95, df=3} = 2.353363 -> half-width 2.353363 * 0.645497 = 1.519090
    r90 = mean_ci([1, 2, 3, 4], confidence=0.90)
    assert r90["ci_high"] - r90["mean"] == pytest.approx(1.519090, abs=1e-6)


def test_single_value_has_no_interval():
    assert mean_ci([0.7]) == {"mean": 0.7, "ci_low": None, "ci_high": None, "std": None, "n": 1}


def test_missing_values_are_skipped():
    assert mean_ci([]) == {"mean": None, "ci_low": None, "ci_high": None, "std": None, "n": 0}
    assert mean_ci([None, float("nan")])["n"] == 0
    r = mean_ci([None, 1.0, float("nan"), 3.0])  # two defined values: mean 2, std sqrt(2)
    assert (r["n"], r["mean"], r["std"]) == (2, 2.0, pytest.approx(math.sqrt(2)))
    # t_{0.975, df=1} = 12.706205 -> half-width 12.706205 * sqrt(2) / sqrt(2)
    assert r["ci_high"] == pytest.approx(2.0 + 12.706205, abs=1e-5)


def test_identical_values_give_a_zero_width_interval():
    r = mean_ci([0.5, 0.5, 0.5])
    assert (r["ci_low"], r["ci_high"], r["std"]) == (0.5, 0.5, 0.0)


def test_rejects_inf_and_bad_confidence():
    with pytest.raises(ValueError, match="infinite"):
        mean_ci([1.0, float("inf")])
    with pytest.raises(ValueError, match="confidence"):
        mean_ci([1.0, 2.0], confidence=95)


def test_aggregate_metric_dicts():
    rng = np.random.default_rng(0)
    per_seed = []
    for _ in range(3):
        y, g = rng.integers(0, 3, 300), rng.integers(0, 2, 300)
        p = np.where(rng.random(300) < 0.8, y, rng.integers(0, 3, 300))
        per_seed.append(classifier_metrics(p, y, g, num_classes=3, num_subgroups=2, scope="global"))
    per_seed[1]["di"] = None  # a seed where DI is undefined
    agg = aggregate(per_seed)
    json.dumps(agg, allow_nan=False)
    assert "subgroup_acc" not in agg  # nested lists are skipped
    assert agg["acc"] == mean_ci([d["acc"] for d in per_seed])
    assert agg["di"]["n"] == 2
    assert len(agg["worst_k"]) == 2
    assert agg["worst_k"][0] == mean_ci([d["worst_k"][0] for d in per_seed])


def test_aggregate_shapes_and_skips():
    per_seed = [
        {"x": 1, "v": [1.0, None], "d": {"a": 1}, "s": "name", "flag": True, "none": None},
        {"x": 3.0, "v": [3.0, 2.0], "d": {"a": 2}, "s": "name", "flag": False, "none": None, "late": 5.0},
    ]
    agg = aggregate(per_seed)
    assert list(agg) == ["x", "v", "none", "late"]
    assert agg["x"]["mean"] == 2.0
    assert [e["n"] for e in agg["v"]] == [2, 1]
    assert agg["none"]["n"] == 0 and agg["none"]["mean"] is None
    assert agg["late"] == mean_ci([5.0])  # missing in the first seed
    assert aggregate([]) == {}


def test_aggregate_rejects_inconsistent_seeds():
    with pytest.raises(ValueError, match="differ in length"):
        aggregate([{"v": [1.0, 2.0]}, {"v": [1.0]}])
    with pytest.raises(ValueError, match="mixes"):
        aggregate([{"v": [1.0]}, {"v": 1.0}])
