"""Filter plugins: none and random shapes, random is seeded, uncertainty ranks known-confident samples first."""

from __future__ import annotations

import math
from contextlib import contextmanager

import pytest
import torch
from pydantic import ValidationError

from harness.errors import ConfigError
from harness.interfaces import FilterContext, Runtime
from harness.imageset import ImageSet, to_float
from harness.plugin.manager import create_plugin_manager


class Progress:
    def __init__(self):
        self.done = 0

    def advance(self, n: int = 1) -> None:
        self.done += n


class Reporter:
    def __init__(self):
        self.tasks: list[tuple[str, int | None, Progress]] = []

    @contextmanager
    def task(self, description, total):
        p = Progress()
        self.tasks.append((description, total, p))
        yield p


class TableHandle:
    """A previous-generation classifier whose logits are known: image ``i`` (pixel ``[0,0,0]`` = i) gets row i.

    ``noise`` > 0 makes ``train_mode=True`` passes stochastic, like dropout (drawn from torch's global RNG).
    """

    def __init__(self, name: str, table, noise: float = 0.0):
        self.name = name
        self.table = torch.as_tensor(table, dtype=torch.float32)
        self.noise = noise
        self.calls: list[bool] = []

    def logits(self, images: torch.Tensor, *, train_mode: bool = False) -> torch.Tensor:
        self.calls.append(train_mode)
        out = self.table[images[:, 0, 0, 0].long()]
        if train_mode and self.noise:
            out = out + self.noise * torch.randn_like(out)
        return out


class ModuleHandle:
    """A real trained-classifier handle: a module with the harness's preprocessing, dropout on in train mode."""

    def __init__(self, name: str, model: torch.nn.Module):
        self.name = name
        self.model = model

    def logits(self, images: torch.Tensor, *, train_mode: bool = False) -> torch.Tensor:
        self.model.train(train_mode)
        with torch.no_grad():
            return self.model(to_float(images, (0.5,) * images.shape[1], (0.5,) * images.shape[1]))


def candidates(labels) -> ImageSet:
    n = len(labels)
    images = torch.zeros(n, 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0] = torch.arange(n, dtype=torch.uint8)
    return ImageSet.create(images, labels, origin=1)


def context(tmp_path, handles, num_classes: int = 3, reporter=None) -> FilterContext:
    runtime = Runtime(device="cpu", precision="fp32", seed=0, reporter=reporter or Reporter(), workdir=tmp_path)
    names = tuple(f"class{i}" for i in range(num_classes))
    return FilterContext(generation=1, classifiers=tuple(handles), class_names=names, runtime=runtime,
                         review_dir=tmp_path)


def make(name: str, **options):
    cls, _ = create_plugin_manager().registry("filters").get(name)
    return cls(cls.Options(**options))


# Four candidates, all generated for class 0 (L = 3):
#   0 confident and right, 1 fairly sure and right, 2 unsure (barely right), 3 confident and WRONG (class 1).
TABLE = [[6.0, 0.0, 0.0], [1.5, 0.0, 0.0], [0.1, 0.0, 0.0], [0.0, 6.0, 0.0]]
LABELS = [0, 0, 0, 0]


def ranking(scores: torch.Tensor) -> list[int]:
    return torch.argsort(scores, descending=True, stable=True).tolist()


def test_registry():
    names = create_plugin_manager().registry("filters").names()
    assert {"none", "random", "uncertainty"} <= set(names)
    assert make("uncertainty").needs_classifiers and not make("random").needs_classifiers


def test_none_keeps_everything(tmp_path):
    scores = make("none").score(candidates([0, 1, 2, 1, 0]), context(tmp_path, []))
    assert scores.shape == (5,) and scores.dtype == torch.float32 and torch.all(scores == 0)


def test_random_is_seeded(tmp_path):
    f, cands, ctx = make("random"), candidates([0, 1, 2] * 20), context(tmp_path, [])
    torch.manual_seed(7)
    a = f.score(cands, ctx)
    torch.manual_seed(7)
    b = f.score(cands, ctx)
    torch.manual_seed(8)
    c = f.score(cands, ctx)
    assert a.shape == (60,) and a.dtype == torch.float32 and ((a >= 0) & (a < 1)).all()
    assert torch.equal(a, b) and not torch.equal(a, c)


def test_default_ranks_confident_right_first_and_confident_wrong_last(tmp_path):
    handle = TableHandle("f", TABLE)
    scores = make("uncertainty").score(candidates(LABELS), context(tmp_path, [handle]))
    assert scores.shape == (4,) and scores.dtype == torch.float32
    assert ranking(scores) == [0, 1, 2, 3]
    assert handle.calls == [False]  # one deterministic pass
    p = torch.softmax(torch.tensor(TABLE[0]), 0)
    assert scores[0].item() == pytest.approx((p * p.log()).sum().item(), rel=1e-5)  # −H(p̄)
    assert scores[3] < -math.log(3)  # below every agreeing candidate


@pytest.mark.parametrize(
    "options,expected",
    [
        ({"measure": "entropy", "target": "any"}, [0, 3, 1, 2]),  # confidence only: the wrong one ties the best
        ({"measure": "label_prob"}, [0, 1, 2, 3]),
        ({"measure": "label_prob", "target": "any"}, [0, 3, 1, 2]),
        ({"measure": "margin"}, [0, 1, 2, 3]),
        ({"measure": "margin", "target": "any"}, [0, 3, 1, 2]),
    ],
)
def test_measures(tmp_path, options, expected):
    scores = make("uncertainty", **options).score(candidates(LABELS), context(tmp_path, [TableHandle("f", TABLE)]))
    assert ranking(scores) == expected


def test_margin_and_label_prob_values(tmp_path):
    scores = make("uncertainty", measure="margin").score(candidates(LABELS), context(tmp_path, [TableHandle("f", TABLE)]))
    p3 = torch.softmax(torch.tensor(TABLE[3]), 0)
    assert scores[3].item() == pytest.approx((p3[0] - p3[1]).item(), rel=1e-5)  # negative: wrong class wins
    assert (scores >= -1).all() and (scores <= 1).all()


def test_the_ensemble_is_the_mean_softmax(tmp_path):
    # candidate 0: the two classifiers disagree confidently; candidate 1: both fairly sure of class 0.
    a = TableHandle("a", [[8.0, 0.0, 0.0], [2.0, 0.0, 0.0]])
    b = TableHandle("b", [[0.0, 8.0, 0.0], [2.0, 0.0, 0.0]])
    f = make("uncertainty", target="any")
    scores = f.score(candidates([0, 0]), context(tmp_path, [a, b]))
    assert ranking(scores) == [1, 0]
    mean = (torch.softmax(a.table, 1) + torch.softmax(b.table, 1)) / 2
    torch.testing.assert_close(scores, (mean * mean.log()).sum(1).float())


def test_mc_dropout(tmp_path):
    handles = [TableHandle("a", TABLE, noise=0.3), TableHandle("b", TABLE, noise=0.3)]
    reporter = Reporter()
    torch.manual_seed(0)
    scores = make("uncertainty", method="mc_dropout", passes=6).score(
        candidates(LABELS), context(tmp_path, handles, reporter=reporter)
    )
    assert all(h.calls == [True] * 6 for h in handles)  # dropout kept on in every pass
    assert ranking(scores) == [0, 1, 2, 3] and torch.isfinite(scores).all()
    assert reporter.tasks[0][1] == 12 and reporter.tasks[0][2].done == 12


def test_mc_dropout_without_dropout_is_an_error(tmp_path):
    with pytest.raises(ConfigError, match="no active dropout"):
        make("uncertainty", method="mc_dropout", passes=3).score(
            candidates(LABELS), context(tmp_path, [TableHandle("f", TABLE)])
        )


def test_mc_dropout_with_a_real_lenet(tmp_path):
    from plugins.classifiers.lenet import LeNet

    torch.manual_seed(0)
    model = LeNet(LeNet.Options(dropout=0.5)).build(num_classes=3, channels=1, image_size=28)
    images = torch.randint(0, 256, (10, 1, 28, 28), dtype=torch.uint8)
    cands = ImageSet.create(images, torch.arange(10) % 3, origin=1)
    ctx = context(tmp_path, [ModuleHandle("lenet", model)])
    mc = make("uncertainty", method="mc_dropout", passes=4).score(cands, ctx)
    det = make("uncertainty").score(cands, ctx)
    assert mc.shape == det.shape == (10,) and torch.isfinite(mc).all()
    assert not torch.equal(mc, det)


def test_no_classifiers_is_a_clear_error(tmp_path):
    with pytest.raises(ConfigError, match="previous generation's classifiers"):
        make("uncertainty").score(candidates(LABELS), context(tmp_path, []))


def test_empty_candidates(tmp_path):
    scores = make("uncertainty").score(candidates([]), context(tmp_path, [TableHandle("f", TABLE)]))
    assert scores.shape == (0,)


def test_options_are_checked():
    with pytest.raises(ValidationError):
        make("uncertainty", method="bald")
    with pytest.raises(ValidationError):
        make("uncertainty", passes=1)
    with pytest.raises(ValidationError):
        make("uncertainty", mesure="margin")
