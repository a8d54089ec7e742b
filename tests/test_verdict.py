"""harness.measure.verdict: the SPEC §5b rule on constructed cases, and E, the variance components, the MDE and the
seeds needed on a hand-computed example (the one worked through in docs/metrics.md)."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest

from harness.measure.verdict import (
    Verdict,
    minimum_detectable_effect,
    pooled_verdict,
    seeds_needed,
    verdict,
)

# The worked example of docs/metrics.md: 3 seeds × 2 replicates × 2 generations. Per (seed, replicate) the mean
# over t is [[0.00, 0.02], [0.02, 0.04], [0.04, 0.06]] (generation 1 is 0.01 lower, generation 2 0.01 higher).
MEANS = np.array([[0.00, 0.02], [0.02, 0.04], [0.04, 0.06]])
EXAMPLE = np.stack([MEANS - 0.01, MEANS + 0.01], axis=2)  # (3, 2, 2)


def test_worked_example_by_hand():
    v = verdict(EXAMPLE, epsilon=0.01)
    # E: seed means 0.01, 0.03, 0.05 → 0.03
    assert v.effect == pytest.approx(0.03)
    # MSW = 6 · 0.01² / (6 − 3) = 0.0002; MSB = 2 · (0.02² + 0 + 0.02²) / 2 = 0.0008;
    # var_seed = (0.0008 − 0.0002) / 2 = 0.0003, var_replicate = 0.0002
    assert v.var_seed == pytest.approx(0.0003) and v.var_replicate == pytest.approx(0.0002)
    # SE² = 0.0003 / 3 + 0.0002 / (3 · 2) = 0.00013333; SE = 0.011547; MDE = 2.8 · SE = 0.032332
    assert v.mde == pytest.approx(2.8 * math.sqrt(0.0003 / 3 + 0.0002 / 6)) and v.mde == pytest.approx(0.032332, abs=1e-6)
    # S' = ceil(2.8² · (0.0003 + 0.0002 / 2) / 0.01²) = ceil(31.36) = 32
    assert v.seeds_needed == 32
    assert minimum_detectable_effect(0.0003, 0.0002, 32, 2) <= 0.01 < minimum_detectable_effect(0.0003, 0.0002, 31, 2)
    assert (v.seeds, v.replicates, v.generations, v.resamples, v.epsilon) == (3, 2, (1, 2), 2000, 0.01)
    # with 3 seeds the interval is wide: it holds 0 and reaches past ±ε
    assert v.ci_low < 0 < v.effect < v.ci_high and v.ci_low < -0.01
    assert v.label == "inconclusive"
    assert v.reason.startswith(f"[lo, hi] = [{v.ci_low:.3g}, {v.ci_high:.3g}] holds 0 and reaches past ±ε = ±0.01")
    assert "about 32 seeds would bring the MDE to ε" in v.reason
    json.dumps(v.model_dump(), allow_nan=False)


def _constant(value: float, S: int = 5, R: int = 3, T: int = 4) -> np.ndarray:
    return np.full((S, R, T), value)


@pytest.mark.parametrize(
    "delta, label, reason",
    [
        # no variance: the interval collapses onto E, so lo = hi = E
        (_constant(0.02), "amplified", "lo = 0.02 > 0: the synthetic data raised B"),
        (_constant(0.004), "amplified", "lo = 0.004 > 0: the synthetic data raised B"),  # small, but shown
        (_constant(-0.02), "reduced", "hi = -0.02 < 0: the synthetic data lowered B"),
        (_constant(0.0), "no detectable change",
         "-ε = -0.01 < lo = 0 and hi = 0 < ε = 0.01: any effect is smaller than the margin"),
    ],
)
def test_the_rule_on_constructed_cases(delta, label, reason):
    v = verdict(delta, epsilon=0.01)
    assert v.label == label and v.reason == reason
    assert v.var_seed == pytest.approx(0.0, abs=1e-20) and v.var_replicate == pytest.approx(0.0, abs=1e-20)
    assert v.mde == pytest.approx(0.0, abs=1e-9) and v.seeds_needed == 3


def test_the_four_labels_with_noise():
    g = np.random.default_rng(0)
    noise = 0.002 * g.normal(size=(5, 1, 1)) + 0.002 * g.normal(size=(5, 3, 4))
    assert verdict(0.01 + noise).label == "amplified"
    assert verdict(-0.01 + noise).label == "reduced"
    quiet = verdict(noise, epsilon=0.01)
    assert quiet.label == "no detectable change" and -0.01 < quiet.ci_low < 0 < quiet.ci_high < 0.01
    loud = verdict(10 * noise, epsilon=0.01)
    assert loud.label == "inconclusive" and loud.ci_low < 0 < loud.ci_high and loud.ci_high - loud.ci_low > 0.01
    # the same noise judged with a wider margin is "no detectable change"
    assert verdict(10 * noise, epsilon=0.1).label == "no detectable change"


def test_fewer_than_three_seeds_is_inconclusive():
    v = verdict(EXAMPLE[:2])
    assert v.label == "inconclusive" and v.ci_low is None and v.ci_high is None and v.resamples == 0
    assert v.reason == "no interval: 2 seeds (needs ≥ 3): the rule needs an interval"
    assert v.effect == pytest.approx(0.02) and v.mde is not None  # the variance is still estimable


def test_one_replicate_uses_the_variance_between_seeds():
    # seeds 0.01, 0.03, 0.05: variance (ddof 1) = (0.02² + 0 + 0.02²) / 2 = 0.0004; SE² = 0.0004 / 3
    v = verdict(np.array([0.01, 0.03, 0.05])[:, None, None])  # (3 seeds, 1 replicate, 1 generation)
    assert v.replicates == 1 and v.var_seed is None and v.var_replicate is None
    assert v.mde == pytest.approx(2.8 * math.sqrt(0.0004 / 3))
    assert v.seeds_needed == 32  # ceil(7.84 · 0.0004 / 0.0001) = ceil(31.36)
    assert "not separable" in v.note


def test_generations_restrict_the_effect():
    delta = np.zeros((4, 2, 3))
    delta[:, :, 0] = 0.5  # a large effect at generation 1 only
    assert verdict(delta).effect == pytest.approx(0.5 / 3)
    late = verdict(delta, generations=[2, 3])
    assert late.effect == 0.0 and late.generations == (2, 3) and late.label == "no detectable change"
    with pytest.raises(ValueError, match=r"outside 1\.\.3"):
        verdict(delta, generations=[0])
    with pytest.raises(ValueError, match="empty"):
        verdict(delta, generations=[])


def test_missing_values_are_left_out():
    delta = _constant(0.02, S=4, R=3, T=2)
    delta[0, 1] = np.nan  # one replicate missing altogether
    delta[1, 0, 0] = np.nan  # one generation of one replicate
    delta[3] = np.nan  # one seed missing altogether
    v = verdict(delta)
    assert v.effect == pytest.approx(0.02) and v.seeds == 3 and v.label == "amplified"


def test_pooled_verdict_averages_classifiers_per_seed_replicate_and_generation():
    a, b = _constant(0.03), _constant(-0.01)
    b[0, 0, 0] = np.nan  # missing for b: a alone there
    v = pooled_verdict({"lenet": a, "resnet": b}, epsilon=0.02)
    assert v.pooled_over == ("lenet", "resnet")
    expect = (0.01 * 59 + 0.03) / 60  # 59 cells of (0.03 − 0.01) / 2 and one cell of 0.03
    assert v.effect == pytest.approx(expect) and v.label == "amplified"
    assert verdict(a).pooled_over is None
    with pytest.raises(ValueError, match="differ in shape"):
        pooled_verdict({"lenet": a, "resnet": b[:, :, :2]})
    with pytest.raises(ValueError, match="at least one"):
        pooled_verdict({})


def test_seeds_needed_edges():
    assert seeds_needed(0.0, 0.0, 3, 0.01) == 3  # no variance: the minimum for an interval
    assert seeds_needed(0.0001, 0.0, 1, 0.01) == 8  # ceil(7.84)
    assert seeds_needed(0.0, 0.0003, 3, 0.01) == 8  # replicates divide the replicate variance: 7.84 · 0.0001
    assert seeds_needed(0.0001, 0.0, 1, 0.01, min_seeds=10) == 10


def test_bad_input_is_rejected():
    with pytest.raises(ValueError, match="shaped"):
        verdict(np.zeros((3, 2)))
    with pytest.raises(ValueError, match="epsilon"):
        verdict(_constant(0.0), epsilon=0.0)
    v = verdict(_constant(0.0))
    with pytest.raises(Exception, match="extra"):
        Verdict(**v.model_dump(), verdict="x")
