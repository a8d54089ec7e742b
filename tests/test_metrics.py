"""harness.measure.metrics: every number against hand arithmetic on tiny arrays, then against fairlearn on random data."""

from __future__ import annotations

import json
import subprocess
import sys

import numpy as np
import pytest

from harness.measure.metrics import classifier_metrics

KEYS = ["acc", "meo", "di", "md", "worst_k", "dp", "eodds", "subgroup_acc", "bias_gap"]


def _strict_json(d: dict) -> None:
    json.dumps(d, allow_nan=False)  # raises on NaN / inf / numpy scalars


# Nine samples, L = 2 classes, G = 2 subgroups (the last one's subgroup is unknown).
#   i   y  g  pred  correct
#   0   0  0  0     1
#   1   0  0  1     0
#   2   1  0  1     1
#   3   1  0  1     1
#   4   0  1  0     1
#   5   1  1  0     0
#   6   1  1  0     0
#   7   1  1  1     1
#   8   0 -1  1     0      <- counts in acc only
Y = np.array([0, 0, 1, 1, 0, 1, 1, 1, 0])
G_ = np.array([0, 0, 0, 0, 1, 1, 1, 1, -1])
P = np.array([0, 1, 1, 1, 0, 0, 0, 1, 1])


def test_global_scope_by_hand():
    m = classifier_metrics(P, Y, G_, num_classes=2, num_subgroups=2, scope="global")
    _strict_json(m)
    assert list(m) == KEYS
    assert m["acc"] == pytest.approx(5 / 9)  # 5 correct of 9, the unknown-subgroup sample included
    # TPR_0 = 3/4 (samples 0-3), TPR_1 = 2/4 (samples 4-7)
    assert m["meo"] == pytest.approx(1 - 0.25)  # one pair: 1 - |0.75 - 0.5|
    assert m["md"] == pytest.approx(0.25)
    # ordered pairs: |0.75/0.5 - 1| = 0.5, |0.5/0.75 - 1| = 1/3 -> mean 5/12 -> DI = 7/12
    assert m["di"] == pytest.approx(7 / 12)
    # Acc_{c,i}: (0,0) samples 0,1 -> 1/2; (0,1) sample 4 -> 1; (1,0) samples 2,3 -> 1; (1,1) samples 5-7 -> 1/3
    assert np.allclose(m["subgroup_acc"], [[0.5, 1.0], [1.0, 1 / 3]])
    # sorted per class: [0.5, 1], [1/3, 1] -> worst_k = [(0.5 + 1/3)/2, 1] = [5/12, 1]
    assert m["worst_k"] == pytest.approx([5 / 12, 1.0])
    assert m["bias_gap"] == pytest.approx(1 - 5 / 12)
    # one-vs-rest, class 0: P(pred=0|g): g0 preds 0,1,1,1 -> 1/4; g1 preds 0,0,0,1 -> 3/4 -> DP_0 = 1/2
    #   TPR (y=0): g0 {0,1} -> 1/2, g1 {4} -> 1 -> 1/2;  FPR (y!=0): g0 {2,3} -> 0, g1 {5,6,7} -> 2/3 -> 2/3
    # class 1: P(pred=1|g): 3/4 vs 1/4 -> DP_1 = 1/2
    #   TPR (y=1): g0 {2,3} -> 1, g1 {5,6,7} -> 1/3 -> 2/3;  FPR (y!=1): g0 {0,1} -> 1/2, g1 {4} -> 0 -> 1/2
    assert m["dp"] == pytest.approx(0.5)
    assert m["eodds"] == pytest.approx(2 / 3)


def test_per_class_scope_by_hand():
    m = classifier_metrics(P, Y, G_, num_classes=2, num_subgroups=2, scope="per_class")
    _strict_json(m)
    # class 0: Acc = (1/2, 1): 1 - 1/2 = 1/2;  DI terms |0.5/1 - 1| = 1/2, |1/0.5 - 1| = 1 -> 1 - 3/4 = 1/4
    # class 1: Acc = (1, 1/3): 1 - 2/3 = 1/3;  DI terms |1/(1/3) - 1| = 2, |(1/3)/1 - 1| = 2/3 -> 1 - 4/3 = -1/3
    assert m["meo"] == pytest.approx((1 / 2 + 1 / 3) / 2)
    assert m["di"] == pytest.approx((1 / 4 - 1 / 3) / 2)
    assert m["md"] == pytest.approx(2 / 3)  # max over classes of 1/2, 2/3
    # DP within each superclass: gap of P(pred=c | y=c, g=i) = the Acc gap -> equals MD
    assert m["dp"] == pytest.approx(m["md"])
    # EOdds: gaps over subgroups of P(pred=c | y=c', g=i) for every (c', c):
    #   c'=0: g0 {0,1} -> P(0)=1/2, P(1)=1/2; g1 {4} -> P(0)=1, P(1)=0 -> gaps 1/2, 1/2
    #   c'=1: g0 {2,3} -> P(0)=0, P(1)=1; g1 {5,6,7} -> P(0)=2/3, P(1)=1/3 -> gaps 2/3, 2/3
    assert m["eodds"] == pytest.approx(2 / 3)
    # acc, subgroup table and worst_k do not depend on the scope
    assert m["acc"] == pytest.approx(5 / 9)
    assert m["worst_k"] == pytest.approx([5 / 12, 1.0])
    assert m["bias_gap"] == pytest.approx(7 / 12)


def test_per_class_eodds_sees_off_diagonal_gap():
    # L = 3, G = 2. Both subgroups of class 0 are half right, but their errors go to different classes:
    #   y:    0 0 0 0 1 1 2 2
    #   g:    0 0 1 1 0 1 0 1
    #   pred: 0 1 0 2 1 1 2 2
    y = np.array([0, 0, 0, 0, 1, 1, 2, 2])
    g = np.array([0, 0, 1, 1, 0, 1, 0, 1])
    p = np.array([0, 1, 0, 2, 1, 1, 2, 2])
    m = classifier_metrics(p, y, g, num_classes=3, num_subgroups=2, scope="per_class")
    # Acc: class 0 (1/2, 1/2), class 1 (1, 1), class 2 (1, 1): no accuracy gap anywhere
    assert (m["meo"], m["di"], m["md"], m["dp"]) == (1.0, 1.0, 0.0, 0.0)
    # (c'=0, c=1): P(pred=1 | y=0, g=0) = 1/2 vs P(pred=1 | y=0, g=1) = 0 -> 1/2 (same for c=2)
    assert m["eodds"] == pytest.approx(0.5)
    assert m["worst_k"] == pytest.approx([5 / 6, 5 / 6])  # each rank: (1/2 + 1 + 1) / 3


def test_empty_subgroup_and_zero_rate():
    # L = 2, G = 3; subgroup 2 has no sample; subgroup 1 is always wrong.
    #   y: 0 1 0 1;  g: 0 0 1 1;  pred: 0 1 1 0  -> TPR_0 = 1, TPR_1 = 0, TPR_2 undefined
    y = np.array([0, 1, 0, 1])
    g = np.array([0, 0, 1, 1])
    p = np.array([0, 1, 1, 0])
    m = classifier_metrics(p, y, g, num_classes=2, num_subgroups=3, scope="global")
    _strict_json(m)
    assert m["meo"] == pytest.approx(0.0)  # only the pair (0, 1): 1 - |1 - 0|
    assert m["md"] == pytest.approx(1.0)
    assert m["di"] is None  # |P_0 / P_1 - 1| with P_1 = 0 < P_0: infinite, so undefined
    assert m["subgroup_acc"] == [[1.0, 0.0, None], [1.0, 0.0, None]]
    assert m["worst_k"] == [None, None, None]  # no class has all three subgroups
    assert m["bias_gap"] is None
    # class 0: P(pred=0|g0) = 1/2, P(pred=0|g1) = 1/2 -> 0; class 1 likewise -> DP = 0
    assert m["dp"] == pytest.approx(0.0)
    # class 0 TPR: g0 (sample 0) 1, g1 (sample 2) 0 -> 1
    assert m["eodds"] == pytest.approx(1.0)


def test_zero_over_zero_counts_as_parity():
    # Both subgroups always wrong: P_0 = P_1 = 0 -> ratio 0/0 taken as 1 (equal rates): DI = 1, MEO = 1, MD = 0
    y = np.array([0, 1, 0, 1])
    g = np.array([0, 0, 1, 1])
    p = np.array([1, 0, 1, 0])
    m = classifier_metrics(p, y, g, num_classes=2, num_subgroups=2, scope="global")
    assert (m["meo"], m["di"], m["md"], m["acc"]) == (1.0, 1.0, 0.0, 0.0)


def test_per_class_skips_classes_without_pairs():
    # L = 2, G = 2. Class 0 has both subgroups (Acc 1 and 1/2); class 1 only subgroup 0 (Acc 0).
    #   y: 0 0 0 1;  g: 0 1 1 0;  pred: 0 1 0 0
    y = np.array([0, 0, 0, 1])
    g = np.array([0, 1, 1, 0])
    p = np.array([0, 1, 0, 0])
    m = classifier_metrics(p, y, g, num_classes=2, num_subgroups=2, scope="per_class")
    # class 0 only: meo = 1 - 1/2; DI terms |1/0.5 - 1| = 1, |0.5/1 - 1| = 1/2 -> 1 - 3/4
    assert m["meo"] == pytest.approx(0.5)
    assert m["di"] == pytest.approx(0.25)
    assert m["md"] == pytest.approx(0.5)
    assert m["subgroup_acc"] == [[1.0, 0.5], [0.0, None]]
    assert m["worst_k"] == pytest.approx([0.5, 1.0])  # class 1 is incomplete, left out
    assert m["bias_gap"] == pytest.approx(0.5)


def test_no_subgroups_known():
    # Every subgroup unknown (e.g. Hard ImageNet, G = 0): accuracy only.
    m = classifier_metrics([0, 1, 1], [0, 1, 0], [-1, -1, -1], num_classes=2, num_subgroups=0, scope="global")
    _strict_json(m)
    assert m["acc"] == pytest.approx(2 / 3)
    assert m["worst_k"] == [] and m["subgroup_acc"] == [[], []]
    assert all(m[k] is None for k in ("meo", "di", "md", "dp", "eodds", "bias_gap"))


def test_single_subgroup_has_no_pairs():
    m = classifier_metrics([0, 1, 1], [0, 1, 0], [0, 0, 0], num_classes=2, num_subgroups=1, scope="per_class")
    assert m["worst_k"] == pytest.approx([0.75])  # class 0: 1/2, class 1: 1/1 -> mean 3/4
    assert all(m[k] is None for k in ("meo", "di", "md", "dp", "eodds", "bias_gap"))


def test_accepts_torch_tensors():
    torch = pytest.importorskip("torch")
    a = classifier_metrics(torch.tensor(P), torch.tensor(Y), torch.tensor(G_), num_classes=2, num_subgroups=2,
                           scope="global")
    assert a == classifier_metrics(P, Y, G_, num_classes=2, num_subgroups=2, scope="global")


@pytest.mark.parametrize(
    "kwargs, match",
    [
        (dict(pred=[0, 1], y=[0], g=[0]), "same length"),
        (dict(pred=[], y=[], g=[]), "empty"),
        (dict(pred=[0, 2], y=[0, 1], g=[0, 0]), "pred must lie"),
        (dict(pred=[0, 1], y=[0, 1], g=[0, 2]), "g must lie"),
        (dict(pred=[0.0, 1.0], y=[0, 1], g=[0, 0]), "integers"),
    ],
)
def test_rejects_bad_input(kwargs, match):
    with pytest.raises(ValueError, match=match):
        classifier_metrics(**kwargs, num_classes=2, num_subgroups=2, scope="global")


def test_rejects_unknown_scope():
    with pytest.raises(ValueError, match="scope"):
        classifier_metrics([0], [0], [0], num_classes=2, num_subgroups=2, scope="local")  # type: ignore[arg-type]


def test_module_does_not_import_torch():
    code = "import sys, harness.measure.metrics, harness.measure.stats, harness.measure.amplification; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"


# ---------------------------------------------------------------------------------------- fairlearn cross-check


def _random_case(seed: int, n: int = 3000, L: int = 4, G: int = 3):
    rng = np.random.default_rng(seed)
    y = rng.integers(0, L, n)
    g = rng.integers(0, G, n)
    # accuracy depends on the subgroup, errors land on random classes
    right = rng.random(n) < np.array([0.9, 0.7, 0.5])[g]
    p = np.where(right, y, rng.integers(0, L, n))
    g_obs = np.where(rng.random(n) < 0.05, -1, g)  # a few unknown subgroups
    return p, y, g_obs, L, G


@pytest.mark.parametrize("seed", [0, 1])
def test_global_matches_fairlearn(seed):
    fm = pytest.importorskip("fairlearn.metrics")
    from sklearn.metrics import accuracy_score

    p, y, g, L, G = _random_case(seed)
    m = classifier_metrics(p, y, g, num_classes=L, num_subgroups=G, scope="global")
    k = g >= 0
    pk, yk, gk = p[k], y[k], g[k]

    # pooled per-group accuracy = TPR_i; MD = max - min; MEO from the same rates
    frame = fm.MetricFrame(metrics=accuracy_score, y_true=yk, y_pred=pk, sensitive_features=gk)
    tpr = frame.by_group.to_numpy()
    assert m["md"] == pytest.approx(frame.difference())
    pairs = [abs(tpr[i] - tpr[j]) for i in range(G) for j in range(i + 1, G)]
    assert m["meo"] == pytest.approx(1 - np.mean(pairs))
    ratios = [abs(tpr[i] / tpr[j] - 1) for i in range(G) for j in range(G) if i != j]
    assert m["di"] == pytest.approx(1 - np.mean(ratios))

    # Acc_{c,i} with (class, subgroup) as a two-column sensitive feature
    frame = fm.MetricFrame(metrics=accuracy_score, y_true=yk, y_pred=pk, sensitive_features={"y": yk, "g": gk})
    table = np.full((L, G), np.nan)
    for (c, i), v in frame.by_group.items():
        table[c, i] = v
    assert np.allclose(np.array(m["subgroup_acc"], dtype=float), table)
    assert m["worst_k"] == pytest.approx(np.sort(table, axis=1).mean(axis=0).tolist())

    # Wyllie's DP / EOdds: one-vs-rest per class, max over classes
    dp = max(fm.demographic_parity_difference(yk == c, pk == c, sensitive_features=gk) for c in range(L))
    eo = max(fm.equalized_odds_difference(yk == c, pk == c, sensitive_features=gk) for c in range(L))
    assert m["dp"] == pytest.approx(dp)
    assert m["eodds"] == pytest.approx(eo)


def test_per_class_matches_fairlearn():
    fm = pytest.importorskip("fairlearn.metrics")

    p, y, g, L, G = _random_case(3)
    m = classifier_metrics(p, y, g, num_classes=L, num_subgroups=G, scope="per_class")
    k = g >= 0
    pk, yk, gk = p[k], y[k], g[k]

    md, meo, eo = [], [], []
    for cp in range(L):  # within each true class c', over its own subgroups
        s = yk == cp
        # TPR_{c',i} = selection rate of "pred == c'" among the samples of c'
        tpr = fm.MetricFrame(metrics=fm.selection_rate, y_true=yk[s] == cp, y_pred=(pk[s] == cp).astype(int),
                             sensitive_features=gk[s])
        md.append(tpr.difference())
        r = tpr.by_group.to_numpy()
        meo.append(1 - np.mean([abs(r[i] - r[j]) for i in range(G) for j in range(i + 1, G)]))
        for c in range(L):  # every predicted class: TPR part on the diagonal, FPR parts off it
            sel = fm.MetricFrame(metrics=fm.selection_rate, y_true=yk[s] == c, y_pred=(pk[s] == c).astype(int),
                                 sensitive_features=gk[s])
            eo.append(sel.difference())
    assert m["md"] == pytest.approx(max(md))
    assert m["dp"] == pytest.approx(max(md))
    assert m["meo"] == pytest.approx(np.mean(meo))
    assert m["eodds"] == pytest.approx(max(eo))


def test_large_test_set_is_vectorised():
    # 100k samples, CIFAR-20/100-sized tables: must be quick and strictly JSON (no per-sample python loops).
    rng = np.random.default_rng(0)
    n, L, G = 100_000, 20, 5
    y, g = rng.integers(0, L, n), rng.integers(-1, G, n)
    p = np.where(rng.random(n) < 0.6, y, rng.integers(0, L, n))
    for scope in ("global", "per_class"):
        m = classifier_metrics(p, y, g, num_classes=L, num_subgroups=G, scope=scope)
        _strict_json(m)
        assert len(m["worst_k"]) == G and len(m["subgroup_acc"]) == L
