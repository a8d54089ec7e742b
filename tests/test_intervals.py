"""harness.measure.intervals: the hierarchical bootstrap, its coverage on synthetic studies with a known truth, and
the variance components of a (seeds × replicates) design, checked against hand-computed values."""

from __future__ import annotations

import json
import math
import time

import numpy as np
import pytest

from harness.measure.amplification import amplification_intervals
from harness.measure.intervals import (
    Interval,
    bootstrap_draws,
    expansion_factor,
    hierarchical_bootstrap,
    hierarchical_mean,
    interval_from_draws,
    variance_components,
)

# ------------------------------------------------------------------------------------------------ coverage

S, R = 5, 3  # the design issue 13 asks the coverage for
STUDIES = 400  # simulated studies per regime: a coverage of 0.95 is measured to ± 0.011 (one standard error)
TRUTH = 0.3


def _regimes():
    """Synthetic studies ``x[s, r] = truth + a_s + e_sr``: seed effects a_s, replicate noise e_sr."""
    return {
        "seed-dominated": lambda g: TRUTH + 1.0 * g.normal(size=(S, 1)) + 0.5 * g.normal(size=(S, R)),
        "replicate-dominated": lambda g: TRUTH + 0.2 * g.normal(size=(S, 1)) + 1.0 * g.normal(size=(S, R)),
        # skewed seed effects: exponential with mean 1, shifted so the mean is the truth
        "skewed seeds": lambda g: TRUTH - 1.0 + g.exponential(1.0, size=(S, 1)) + 0.5 * g.normal(size=(S, R)),
    }


def _coverage(make, studies: int = STUDIES, seed: int = 0) -> dict[str, float]:
    g = np.random.default_rng(seed)
    hits = {"expanded percentile": 0, "percentile": 0}
    for _ in range(studies):
        x = make(g)
        estimate = float(hierarchical_mean(x[None])[0])
        draws = bootstrap_draws(x, resamples=2000, rng=g)
        for method in hits:
            iv = interval_from_draws(estimate, draws, seeds=S, replicates=R, method=method)
            hits[method] += iv.ci_low <= TRUTH <= iv.ci_high
    return {m: h / studies for m, h in hits.items()}


@pytest.mark.parametrize("regime", list(_regimes()))
def test_nominal_95_coverage_at_5_seeds_by_3_replicates(regime):
    cov = _coverage(_regimes()[regime])
    # measured (rng 0): seed-dominated 0.950, replicate-dominated 1.000, skewed seeds 0.930 — see docs/metrics.md
    assert cov["expanded percentile"] >= 0.90, cov
    if regime == "seed-dominated":
        # the plain percentile interval is too narrow with 5 seeds (measured 0.84): why the default expands it
        assert cov["percentile"] < 0.90, cov


def test_coverage_of_amplification_factors():
    # B[s, r, t] = B_t · exp(seed effect) · exp(replicate noise): the seed-averaged ratios estimate B_{t+1} / B_t
    g = np.random.default_rng(1)
    B_true = np.array([0.02, 0.025, 0.03, 0.03])
    A_true = B_true[1:] / B_true[:-1]
    bar_true = (B_true[-1] / B_true[0]) ** (1 / 3)
    studies, hits, bar_hits = 200, np.zeros(3), 0
    for _ in range(studies):
        bias = B_true * np.exp(0.15 * g.normal(size=(S, 1, 4)) + 0.2 * g.normal(size=(S, R, 4)))
        _, A, bar = amplification_intervals(bias, resamples=2000, rng=g)
        hits += [a.ci_low <= v <= a.ci_high for a, v in zip(A, A_true, strict=True)]
        bar_hits += bar.ci_low <= bar_true <= bar.ci_high
    assert (hits / studies >= 0.90).all(), hits / studies
    assert bar_hits / studies >= 0.90


# ---------------------------------------------------------------------------------------- the bootstrap itself


def test_hierarchical_mean_weighs_seeds_equally():
    x = np.array([[1.0, 3.0, np.nan], [10.0, 10.0, 10.0]])  # seed means 2 and 10 → 6 (not 34/5 = 6.8)
    assert hierarchical_mean(x[None])[0] == pytest.approx(6.0)
    # trailing axes are averaged per (seed, replicate) first: seed 0 → (1 + 3) / 2 = 2, seed 1 → 4
    y = np.array([[[1.0, 3.0]], [[4.0, np.nan]]])
    assert hierarchical_mean(y[None])[0] == pytest.approx(3.0)


def test_resamples_draw_seeds_then_replicates_within_each_seed():
    values = 10.0 * np.arange(4)[:, None] + np.arange(3)[None, :]  # x[s, r] = 10 s + r
    values[2, 1] = np.nan  # seed 2 has replicates 0 and 2 only
    seen_seeds: list[np.ndarray] = []

    def check(x: np.ndarray) -> np.ndarray:
        seed_of = np.floor(x / 10.0)
        assert np.isfinite(x).all()  # a missing replicate is never drawn
        assert (seed_of == seed_of[:, :, :1]).all()  # the replicates of a drawn seed all come from that seed
        seen_seeds.append(seed_of[:, :, 0])
        return x.mean(axis=(1, 2))

    draws = bootstrap_draws(values, check, resamples=3000, rng=0)
    assert draws.shape == (3000,)
    seeds = np.concatenate(seen_seeds)
    assert set(np.unique(seeds)) == {0, 1, 2, 3}
    # with replacement: some resamples hold a seed twice (all 4 distinct has probability 4!/4^4 = 0.094)
    assert np.mean([len(set(row)) == 4 for row in seeds]) == pytest.approx(24 / 256, abs=0.02)


def test_seeds_without_any_value_do_not_count():
    values = np.full((4, 2), np.nan)
    values[:2] = [[0.1, 0.2], [0.3, 0.4]]
    iv = hierarchical_bootstrap(values)
    assert iv.seeds == 2 and iv.ci_low is None and iv.resamples == 0
    assert iv.note == "no interval: 2 seeds (needs ≥ 3)"
    assert iv.estimate == pytest.approx(0.25)
    assert hierarchical_bootstrap(values, min_seeds=2).ci_low is not None
    empty = hierarchical_bootstrap(np.full((3, 2), np.nan))
    assert empty.estimate is None and empty.seeds == 0 and empty.ci_low is None


def test_bounded_metric_stays_in_its_bounds():
    acc = np.array([[1.0, 1.0, 0.99], [0.97, 0.96, 0.98], [1.0, 0.99, 1.0], [0.95, 0.96, 0.97], [1.0, 1.0, 1.0]])
    free = hierarchical_bootstrap(acc)
    assert free.ci_high > 1.0  # the expanded interval of an unbounded statistic runs past 1 ...
    iv = hierarchical_bootstrap(acc, bounds=(0.0, 1.0))
    assert iv.ci_high == 1.0 and iv.ci_low == free.ci_low  # ... clipped, it stops at the bound
    assert 0.0 <= iv.ci_low <= iv.estimate <= iv.ci_high <= 1.0


def test_same_rng_same_interval_and_json_ready():
    x = np.random.default_rng(3).normal(size=(6, 2, 4))
    a, b = hierarchical_bootstrap(x, rng=7), hierarchical_bootstrap(x, rng=7)
    assert a == b and hierarchical_bootstrap(x, rng=8) != a
    assert a.method == "hierarchical bootstrap, expanded percentile" and (a.seeds, a.replicates) == (6, 2)
    json.dumps(a.model_dump(), allow_nan=False)
    with pytest.raises(Exception, match="frozen"):
        a.estimate = 0.0  # type: ignore[misc]
    with pytest.raises(Exception, match="extra"):
        Interval(**a.model_dump(), width=1.0)


def test_2000_resamples_take_milliseconds():
    x = np.random.default_rng(0).normal(size=(10, 5, 10))  # 10 seeds × 5 replicates × 10 generations
    hierarchical_bootstrap(x)  # warm up
    start = time.perf_counter()
    hierarchical_bootstrap(x, resamples=2000)
    assert time.perf_counter() - start < 0.5  # measured 4 ms (10 × 5) and 12 ms (10 × 5 × 10) on 1 thread


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="seeds, replicates"):
        hierarchical_bootstrap(np.zeros(5))
    with pytest.raises(ValueError, match="resamples"):
        hierarchical_bootstrap(np.zeros((3, 2)), resamples=0)
    with pytest.raises(ValueError, match="method"):
        interval_from_draws(0.0, np.zeros(10), seeds=3, replicates=1, method="bca")  # type: ignore[arg-type]


# ------------------------------------------------------------------------------------------- by hand


def test_expansion_factor_by_hand():
    # sqrt(5/4) · t_{0.975, 4} / z_{0.975} = 1.118034 · 2.776445 / 1.959964 = 3.104158 / 1.959964 = 1.583784
    assert expansion_factor(5) == pytest.approx(1.583784, abs=1e-5)
    # sqrt(3/2) · t_{0.975, 2} / z_{0.975} = 1.224745 · 4.302653 / 1.959964 = 5.269654 / 1.959964 = 2.688647
    assert expansion_factor(3) == pytest.approx(2.688647, abs=1e-5)
    assert expansion_factor(1000) == pytest.approx(1.0, abs=0.003)
    with pytest.raises(ValueError):
        expansion_factor(1)


def test_interval_from_draws_by_hand():
    draws = np.arange(1001.0)  # quantiles 2.5 % and 97.5 % are 25 and 975
    plain = interval_from_draws(500.0, draws, seeds=5, replicates=3, method="percentile")
    assert (plain.ci_low, plain.ci_high) == (pytest.approx(25.0), pytest.approx(975.0))
    k = expansion_factor(5)
    wide = interval_from_draws(500.0, draws, seeds=5, replicates=3)
    assert wide.ci_low == pytest.approx(500 - k * 475) and wide.ci_high == pytest.approx(500 + k * 475)
    # log scale: draws 0.5 .. 2 around an estimate of 1 → [1 · 0.5^k, 1 · 2^k]
    ratio = interval_from_draws(1.0, np.array([0.5] * 30 + [1.0] * 940 + [2.0] * 30), seeds=5, replicates=3,
                                log=True, bounds=(0.0, None))
    assert ratio.ci_low == pytest.approx(0.5**k, rel=1e-9) and ratio.ci_high == pytest.approx(2.0**k, rel=1e-9)
    # undefined draws are left out and counted
    some = interval_from_draws(1.0, np.array([np.nan, 1.0, 1.0, np.nan]), seeds=3, replicates=1)
    assert some.dropped == 2 and some.resamples == 4 and some.note == "2 of 4 resamples left out (statistic undefined)"
    assert interval_from_draws(None, draws, seeds=5, replicates=1).note == "no estimate"


def test_variance_components_by_hand():
    # seed means 2, 5, 8; grand mean 5. MSW = (1 + 0 + 1) · 3 / (9 - 3) = 1;
    # MSB = 3 · (9 + 0 + 9) / 2 = 27; var_seed = (27 - 1) / 3 = 26/3
    x = np.array([[1.0, 2.0, 3.0], [4.0, 5.0, 6.0], [7.0, 8.0, 9.0]])
    assert variance_components(x) == (pytest.approx(26 / 3), pytest.approx(1.0))
    # equal seed means: MSB = 0 < MSW = 2, the seed component is truncated at 0
    assert variance_components(np.array([[1.0, 3.0]] * 3)) == (0.0, pytest.approx(2.0))
    # unbalanced: n = (2, 3), N = 5, seed means 2 and 4, grand mean 16/5 = 3.2;
    # MSW = (1 + 1 + 4 + 0 + 4) / 3 = 10/3; MSB = 2 · 1.44 + 3 · 0.64 = 4.8; n0 = 5 - 13/5 = 2.4
    # var_seed = (4.8 - 10/3) / 2.4 = 0.611111
    u = np.array([[1.0, 3.0, np.nan], [2.0, 4.0, 6.0]])
    vs, vr = variance_components(u)
    assert vr == pytest.approx(10 / 3) and vs == pytest.approx((4.8 - 10 / 3) / 2.4)
    assert math.isclose(vs, 0.611111, abs_tol=1e-6)


def test_variance_components_need_two_seeds_and_a_replicate():
    with pytest.raises(ValueError, match="2 seeds"):
        variance_components(np.array([[1.0, 2.0], [np.nan, np.nan]]))
    with pytest.raises(ValueError, match="2 replicates"):
        variance_components(np.array([[1.0], [2.0], [3.0]]))
    with pytest.raises(ValueError, match="seeds, replicates"):
        variance_components(np.zeros((2, 2, 2)))


def test_one_seed_never_gets_an_expanded_interval():
    x = np.array([[0.1, 0.2, 0.3]])
    assert hierarchical_bootstrap(x, min_seeds=1).note == "no interval: 1 seed (needs ≥ 2)"
    plain = hierarchical_bootstrap(x, min_seeds=1, method="percentile")  # replicates alone: allowed if asked
    assert plain.ci_low is not None and plain.ci_low < 0.2 < plain.ci_high
