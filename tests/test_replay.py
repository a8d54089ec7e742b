"""replay: exact flip and shift quotas, draws without replacement, determinism, the state round trip — and the
calibration of the harness's q_t and u_t against replay's design values in real runs on Colorized MNIST."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file
from typer.testing import CliRunner

from harness.engine.plan import unit
from harness.engine.progress import NullReporter
from harness.errors import ConfigError
from harness.imageset import ImageSet, to_float
from harness.interfaces import Runtime
from plugins.datasets._mnist_io import MNIST_FILES
from plugins.datasets.colored_mnist import ColoredMNISTWyllie
from plugins.generators.replay import Replay, allocate
from tests.conftest import REPO, shared_data_root, tiny_config

HAS_REAL_MNIST = all((shared_data_root() / "MNIST" / "raw" / f).is_file() for f in MNIST_FILES)


@pytest.fixture(autouse=True)
def _one_thread():
    torch.set_num_threads(1)


def make(tmp_path: Path | None = None, *, num_classes: int = 3, channels: int = 1, size: int = 4, **options) -> Replay:
    runtime = Runtime("cpu", "fp32", 0, NullReporter(), tmp_path or Path("."))
    return Replay(Replay.Options(**options), num_classes=num_classes, channels=channels, image_size=size,
                  class_names=[f"class {c}" for c in range(num_classes)], runtime=runtime)


# Pool: 3 classes × 3 subgroups, majority subgroup = class index, cell sizes below (120 / 90 / 60 images).
CELLS = torch.tensor([[80, 30, 10], [20, 50, 20], [5, 15, 40]])


def pool(cells: torch.Tensor = CELLS, origin: int = 0) -> ImageSet:
    """Images whose pixels spell their own index (so a sample says which pool image it is), in a shuffled order."""
    L, G = cells.shape
    labels = torch.arange(L).repeat_interleave(cells.sum(1))
    subgroups = torch.cat([torch.arange(G).repeat_interleave(row) for row in cells])
    perm = torch.randperm(len(labels), generator=torch.Generator().manual_seed(1))
    labels, subgroups = labels[perm], subgroups[perm]
    idx = torch.arange(len(labels))
    images = torch.zeros(len(labels), 1, 4, 4, dtype=torch.uint8)
    images[:, 0, 0, 0], images[:, 0, 0, 1] = (idx % 256).to(torch.uint8), (idx // 256).to(torch.uint8)
    return ImageSet.create(images, labels, subgroups, origin=origin)


def which(images: torch.Tensor) -> torch.Tensor:
    """Pool index of each sampled image."""
    return images[:, 0, 0, 0].long() + 256 * images[:, 0, 0, 1].long()


def requested(counts: list[int]) -> torch.Tensor:
    labels = torch.arange(len(counts)).repeat_interleave(torch.tensor(counts))
    return labels[torch.randperm(len(labels), generator=torch.Generator().manual_seed(2))]


def cell_counts(src: ImageSet, picks: torch.Tensor, labels: torch.Tensor, L: int = 3, G: int = 3) -> torch.Tensor:
    """counts[c, source class, subgroup] of the samples conditioned on c."""
    out = torch.zeros(L, L, G, dtype=torch.int64)
    out.index_put_((labels, src.labels[picks], src.subgroups[picks]), torch.ones_like(labels), accumulate=True)
    return out


# ------------------------------------------------------------------------------------------- allocate


def test_allocate_hits_the_totals_and_breaks_ties_at_random():
    totals = torch.tensor([7, 10, 0, 5])
    weights = torch.tensor([[1.0, 1.0, 1.0], [0.2, 0.3, 0.5], [1.0, 0.0, 0.0], [0.0, 0.0, 0.0]])
    torch.manual_seed(0)
    out = allocate(totals, weights)
    assert out.dtype == torch.int64 and out.sum(1).tolist() == [7, 10, 0, 0]  # a weightless row gets nothing
    exact = allocate(totals, weights, integer=False)
    assert exact[1].tolist() == pytest.approx([2.0, 3.0, 5.0]) and exact[3].tolist() == [0.0, 0.0, 0.0]
    assert out[1].tolist() == [2, 3, 5] and out[0].tolist().count(2) == 2 and (out - exact).abs().max() < 1
    winners = {tuple(allocate(torch.tensor([1]), torch.ones(1, 3))[0].tolist()) for _ in range(40)}
    assert len(winners) == 3  # the odd unit goes to each of three tied cells, not always to the first


# ------------------------------------------------------------------------------------------- the sampler


def test_flip_fraction_is_exact_and_flips_come_from_other_classes():
    torch.manual_seed(0)
    src = pool()
    gen = make(flip=0.25)
    gen.fit(src)
    labels = requested([100, 60, 40])
    picks = which(gen.sample(labels))
    own = src.labels[picks] == labels
    assert int((~own).sum()) == 50  # round(0.25 × 200), exactly
    per_class = torch.bincount(labels[~own], minlength=3)
    assert ((per_class - 0.25 * torch.tensor([100, 60, 40])).abs() < 1).all(), per_class
    assert gen.last_draw["q"] == 0.75 == gen.design()["q"]
    # spread evenly over the other classes: each (class, subgroup) quota's flips split over the 2 others within 1
    counts = cell_counts(src, picks, labels)
    for c in range(3):
        others = [o for o in range(3) if o != c]
        assert ((counts[c, others[0]] - counts[c, others[1]]).abs() <= 1).all()


def test_shift_moves_each_class_toward_its_majority_by_exact_quotas():
    torch.manual_seed(0)
    src = pool()
    gen = make(shift=0.5)
    stats = gen.fit(src)
    n = torch.tensor([100, 60, 40])
    labels = requested(n.tolist())
    picks = which(gen.sample(labels))
    assert bool((src.labels[picks] == labels).all())  # no flips
    p = CELLS.double() / CELLS.sum(1, keepdim=True)
    target = 0.5 * p + 0.5 * torch.eye(3, dtype=torch.float64)  # p' = (1 − shift) p + shift e_majority
    got = cell_counts(src, picks, labels).sum(1)
    assert ((got - n[:, None] * target).abs() < 1).all() and got.sum(1).tolist() == n.tolist()
    # design u_c = shift · (1 − p_majority,c), the exact TV of p' from p
    u = 0.5 * (1 - p.diagonal())
    assert stats["target_subgroup_per_class"] == [0, 1, 2]
    assert stats["design_u_per_class"] == pytest.approx(u.tolist())
    assert stats["design_u"] == pytest.approx(float(u.mean()))
    realised = [0.5 * float((got[c] / n[c] - p[c]).abs().sum()) for c in range(3)]
    assert gen.last_draw["u_per_class"] == pytest.approx(realised)


def test_flips_keep_the_conditioning_class_subgroup_so_u_does_not_depend_on_flip():
    src = pool()
    n = [100, 60, 40]
    labels = requested(n)
    mixes = {}
    for flip in (0.0, 0.4):
        torch.manual_seed(0)
        gen = make(flip=flip, shift=0.3)
        gen.fit(src)
        picks = which(gen.sample(labels))
        mixes[flip] = cell_counts(src, picks, labels).sum(1)  # subgroup counts per conditioning class
        assert gen.design()["u"] == pytest.approx(float((0.3 * (1 - CELLS.diagonal() / CELLS.sum(1))).mean()))
    assert torch.equal(mixes[0.0], mixes[0.4])


def test_source_flips_follow_their_own_class_mix_and_design_u_counts_them():
    torch.manual_seed(0)
    src = pool()
    gen = make(flip=0.5, flip_subgroup="source")
    gen.fit(src)
    labels = requested([300, 300, 300])
    picks = which(gen.sample(labels))
    counts = cell_counts(src, picks, labels)
    p = CELLS.double() / CELLS.sum(1, keepdim=True)
    for c in range(3):
        for o in range(3):
            if o != c:  # the flipped images from class o carry o's subgroup mix (exact quotas)
                assert ((counts[c, o] - counts[c, o].sum() * p[o]).abs() < 1).all()
    # design: m_c = (1 − flip) p_c + flip · mean_{o ≠ c} p_o; u_c = TV(m_c, p_c)
    m = torch.stack([0.5 * p[c] + 0.25 * sum(p[o] for o in range(3) if o != c) for c in range(3)])
    u = 0.5 * (m - p).abs().sum(1)
    assert gen.design()["u_per_class"] == pytest.approx(u.tolist())
    realised = counts.sum(1).double() / 300
    assert gen.last_draw["u_per_class"] == pytest.approx((0.5 * (realised - p).abs().sum(1)).tolist())
    assert abs(gen.last_draw["u"] - gen.design()["u"]) < 3 / 300  # rounding only


def test_target_subgroup_is_checked():
    torch.manual_seed(0)
    gen = make(shift=1.0, target_subgroup=2)
    gen.fit(pool())
    picks = which(gen.sample(requested([30, 30, 30])))
    assert bool((pool().subgroups[picks] == 2).all())  # shift 1: every image in subgroup 2
    cells = CELLS.clone()
    cells[1, 2] = 0
    with pytest.raises(ConfigError, match="target_subgroup=2.*class 1"):
        make(shift=0.5, target_subgroup=2).fit(pool(cells))
    make(shift=0.0, target_subgroup=2).fit(pool(cells))  # no shift asked: nothing to check
    with pytest.raises(ConfigError, match="target_subgroup=7"):
        make(shift=0.5, target_subgroup=7).fit(pool())


def test_draws_are_without_replacement_while_cells_last_then_evenly_repeated():
    torch.manual_seed(0)
    src = pool()
    gen = make(flip=0.2, shift=0.2)
    gen.fit(src)
    picks = which(gen.sample(requested([30, 20, 15])))
    assert picks.unique().numel() == picks.numel()
    # a heavier request exhausts some cells (class 2, subgroup 0 holds 5 images): within every cell the uses
    # differ by at most one, so an image repeats only once its whole cell has been used
    picks = which(gen.sample(requested([150, 100, 80])))
    uses = torch.bincount(picks, minlength=len(src))
    cell = src.labels * 3 + src.subgroups
    spread = [int(uses[cell == k].max() - uses[cell == k].min()) for k in range(9)]
    assert max(spread) <= 1 and uses.max() > 1, spread
    gen = make()
    gen.fit(src)
    picks = which(gen.sample(requested([0, 0, 150])))  # class 2 holds 60 images: each used 2 or 3 times
    uses = torch.bincount(picks, minlength=len(src))[src.labels == 2]
    assert uses.min() == 2 and uses.max() == 3 and uses.sum() == 150


def test_borrow_returns_every_pool_image_once_whatever_the_pool_class_counts():
    """SeqClass from generation 2: the pool's labels are the previous classifier's (120 / 90 / 60 here), the
    harness asks for D_real's class counts (90 each)."""
    src = pool()
    labels = requested([90, 90, 90])
    torch.manual_seed(0)
    repeat = make()
    repeat.fit(src)
    assert which(repeat.sample(labels)).unique().numel() < len(src)  # class 2's 60 images serve 90 requests
    borrow = make(shortfall="borrow")
    borrow.fit(src)
    picks = which(borrow.sample(labels))
    assert torch.equal(torch.sort(picks).values, torch.arange(len(src)))  # a permutation of the pool
    # class 2's 30 missing images come from class 0's 30 spare ones: flips by design, and counted so
    assert int((src.labels[picks] != labels).sum()) == 30 and borrow.last_draw["q"] == pytest.approx(240 / 270)
    # asked for more than the pool holds, every image is used once before any repeats
    picks = which(borrow.sample(requested([150, 100, 80])))
    uses = torch.bincount(picks, minlength=len(src))
    assert uses.min() == 1 and uses.max() == 2


def test_sampling_is_deterministic_under_a_seed():
    src = pool()
    labels = requested([50, 50, 50])
    gen = make(flip=0.3, shift=0.4)
    torch.manual_seed(0)
    gen.fit(src)
    torch.manual_seed(5)
    a = gen.sample(labels)
    torch.manual_seed(5)
    assert torch.equal(gen.sample(labels), a)
    torch.manual_seed(6)
    assert not torch.equal(gen.sample(labels), a)


def test_state_round_trip_and_the_uint8_contract(tmp_path):
    torch.manual_seed(0)
    src = pool()
    gen = make(tmp_path, flip=0.3, shift=0.4, pool_size=150)
    stats = gen.fit(src)
    state = gen.state_dict()
    assert set(state) == {"pool.images", "pool.labels", "pool.subgroups"}
    assert state["pool.images"].dtype == torch.uint8 and state["pool.images"].shape == (150, 1, 4, 4)
    assert stats["state_bytes"] == 150 * 16 + 2 * 150 * 8 and stats["pool_images"] == 150
    labels = requested([40, 30, 20])
    torch.manual_seed(3)
    images = gen.sample(labels)
    assert images.dtype == torch.uint8 and images.shape == (90, 1, 4, 4)
    fresh = make(tmp_path, flip=0.3, shift=0.4, pool_size=150)
    fresh.load_state_dict(state)
    torch.manual_seed(3)
    assert torch.equal(fresh.sample(labels), images)
    assert fresh.design() == gen.design()
    with pytest.raises(KeyError, match="pool.images"):
        fresh.load_state_dict({})
    with pytest.raises(ValueError, match="labels must lie"):
        gen.sample(torch.tensor([3]))
    with pytest.raises(ValueError, match="built for"):
        make(channels=3).fit(src)
    with pytest.raises(RuntimeError, match="fit"):
        make().sample(labels)


def test_pool_is_the_real_images_and_pool_size_keeps_exact_cell_quotas():
    torch.manual_seed(0)
    real, synthetic = pool(), pool(origin=1)
    gen = make()
    stats = gen.fit(ImageSet.concat([real, synthetic.subset(torch.arange(50))]))
    assert stats["pool"] == "real" and stats["pool_images"] == len(real)
    gen = make(pool_size=90)  # a third of each of the nine cells (270 images)
    gen.fit(real)
    kept = gen.state_dict()
    got = torch.zeros(3, 3, dtype=torch.int64)
    got.index_put_((kept["pool.labels"], kept["pool.subgroups"]), torch.ones(90, dtype=torch.int64), accumulate=True)
    assert got.sum() == 90 and ((got - CELLS / 3).abs() < 1).all()


def test_a_pool_without_real_images_or_subgroups_replays_everything_unshifted():
    """Regime ``replace`` from generation 2: D_{t-1} holds only the previous replay, subgroups unknown."""
    torch.manual_seed(0)
    prev = pool(origin=1)
    prev = ImageSet.create(prev.images, prev.labels, None, origin=1)
    gen = make(shift=0.8, flip=0.1)
    stats = gen.fit(prev)
    assert stats["pool"] == "all" and stats["pool_images"] == len(prev) and stats["subgroups_known"] == 0.0
    assert stats["target_subgroup_per_class"] == [-1, -1, -1] and stats["design_u"] is None
    picks = which(gen.sample(requested([40, 40, 40])))
    assert gen.last_draw["q"] == pytest.approx(108 / 120) and picks.unique().numel() == 120


def test_a_class_missing_from_the_pool_is_served_by_the_others():
    torch.manual_seed(0)
    src = pool()
    gen = make(num_classes=4, flip=0.1)
    gen.fit(src)
    labels = requested([30, 30, 30, 10])
    picks = which(gen.sample(labels))
    assert bool((src.labels[picks][labels == 3] != 3).all())
    assert gen.last_draw["q"] == pytest.approx((90 - 9) / 100)


def test_bench_list_generators_shows_replay():
    from harness.cli import app

    r = CliRunner().invoke(app, ["list", "generators"])
    assert r.exit_code == 0 and "replay" in r.stdout.split()


# ------------------------------------------------------------------------------------------- calibration
#
# The harness measures q_t with its oracle (SPEC §4) and u_t from pixel colour. For replay data both have a
# prediction. Let R[c, s, g] be the quotas of one draw (images conditioned on c taken from pool cell (class s,
# subgroup g)) and π_{s,g}(c) the fraction of that cell's images the oracle assigns to c. Each cell's images are
# drawn uniformly without replacement, so
#     E[q] = (1/N) Σ_{c,s,g} R[c, s, g] · π_{s,g}(c)
#          = (1 − flip) · acc_own + flip · P(oracle says the conditioning class | another class's image)
# (the own-class term is the oracle's accuracy on the replayed training images, not its test accuracy), and the
# sampling SE is at most the binomial one, sqrt(Σ R π (1 − π)) / N (without replacement only shrinks it). The test
# allows 4 SE. u has no sampling error at all: the subgroup quotas are exact, the colour of every pool image is
# measured without error (asserted), so the measured u_t must equal the draw's design u to float precision, and
# the run-level design u (fit statistics, fractional quotas) within rounding, K / (2 min n_c).


def oracle_predictions(spec, plugins, run_dir: Path, images: torch.Tensor) -> torch.Tensor:
    """The run's oracle, rebuilt from its saved weights through the public classifier interface."""
    pspec = spec.metrics.oracle.classifier
    cls, variant = plugins.registry("classifiers").get(pspec.name)
    plugin = cls(cls.Options.model_validate(pspec.options), variant=variant)
    c, h, _ = images.shape[1:]
    model = plugin.build(num_classes=10, channels=c, image_size=h)
    model.load_state_dict(load_file(unit("oracle", None, 0).directory(run_dir) / "model.safetensors"))
    model.eval()
    assert plugin.input_size(h) == h
    mean, std = plugin.normalization(c)
    with torch.no_grad():
        return torch.cat([model(to_float(x, mean, std)).argmax(1) for x in images.split(512)])


def calibrate(tmp_path: Path, plugins, dataset: dict, options: dict, *, samples: int,
              data_root: Path | None = None) -> dict:
    from harness import loop
    from harness.specs import build_spec, resolve_spec

    cfg = tiny_config(
        out=str(tmp_path / "runs"), precision="fp32", device="cpu", dataset=dataset,
        generator={"name": "replay", "options": options},
        filter={"name": "none", "keep": 1.0},
        loop={"generations": 1, "samples_per_generation": samples, "mix_ratio": 0.5},
        training={"max_epochs": 1, "batch_size": 64},
        metrics={"fid": {"backbone": "none"}, "oracle": {"classifier": "lenet", "max_epochs": 3}},
    )
    if data_root is not None:
        cfg["data_root"] = str(data_root)
    spec = resolve_spec(build_spec(None, cfg), plugins)
    results = loop.run(spec, plugins)
    run_dir = spec.run_dir
    measured = results.generations[1].generator.per_seed[0]
    fit = json.loads((unit("generator", 0, 1).directory(run_dir) / "result.json").read_text())["train"]
    saved = ImageSet.load(unit("sample", 0, 1).directory(run_dir) / "samples.safetensors")

    # the generator unit's state, sampled again under the sample unit's seed: the harness's draw, with its quotas
    ds_cls, _ = plugins.registry("datasets").get(spec.dataset.name)
    dataset_plugin = ds_cls(ds_cls.Options.model_validate(spec.dataset.options), data_root=spec.data_root)
    train = dataset_plugin.load().train
    gen = Replay(Replay.Options(**spec.generator.options), num_classes=10, channels=3, image_size=28,
                 class_names=[str(c) for c in range(10)], runtime=Runtime("cpu", "fp32", 0, NullReporter(), tmp_path))
    gen.load_state_dict(load_file(unit("generator", 0, 1).directory(run_dir) / "model.safetensors"))
    torch.manual_seed(unit("sample", 0, 1).unit_seed)
    assert torch.equal(gen.sample(saved.labels), saved.images)
    R = gen.last_draw["counts"].double()  # [c, s, g] (g = 3: unknown, empty here)

    # every pool image's colour is measured correctly, so u has no measurement error
    assert fit["pool"] == "real" and fit["pool_images"] == len(train)
    assert torch.equal(dataset_plugin.measure_subgroups(train.images, train.labels), train.subgroups)

    pred = oracle_predictions(spec, plugins, run_dir, train.images)
    cell = train.labels * 4 + train.subgroups
    size = torch.bincount(cell, minlength=40).double().clamp_min(1)
    pi = torch.zeros(40, 10, dtype=torch.float64)  # π[cell, c]
    pi.index_put_((cell, pred), torch.ones(len(pred), dtype=torch.float64), accumulate=True)
    pi = (pi / size[:, None]).view(10, 4, 10)  # [s, g, c]
    p = pi.permute(2, 0, 1)  # [c, s, g]: P(oracle says c | an image of cell (s, g))
    n = float(R.sum())
    expected_q = float((R * p).sum()) / n
    se_q = float((R * p * (1 - p)).sum()) ** 0.5 / n
    own = torch.eye(10, dtype=torch.bool)[:, :, None].expand_as(R)
    acc_own = float((R * p)[own].sum() / R[own].sum())
    says_c = float((R * p)[~own].sum() / R[~own].sum()) if R[~own].sum() > 0 else None
    return {
        "q": measured.q, "expected_q": expected_q, "se_q": se_q, "design_q": fit["design_q"],
        "draw_q": gen.last_draw["q"], "acc_own": acc_own, "p_says_c": says_c,
        "u": measured.u, "u_source": measured.u_source, "design_u": fit["design_u"], "draw_u": gen.last_draw["u"],
        "min_n": int(torch.bincount(saved.labels, minlength=10).min()), "oracle": results,
    }


def check(r: dict, *, flip: float) -> None:
    # q: the design is hit exactly by the quotas; measured q = E[q] within 4 binomial SE
    assert r["draw_q"] == pytest.approx(1 - flip, abs=1e-12) and r["design_q"] == pytest.approx(1 - flip)
    assert r["expected_q"] == pytest.approx((1 - flip) * r["acc_own"] + flip * (r["p_says_c"] or 0.0))
    assert abs(r["q"] - r["expected_q"]) <= 4 * r["se_q"] + 1e-12, r
    # u: pixel-measured colour of exact quotas
    assert r["u_source"] == "pixels"
    assert r["u"] == pytest.approx(r["draw_u"], abs=1e-9), r
    assert abs(r["u"] - r["design_u"]) <= 4 / (2 * r["min_n"]), r


def test_calibration_on_embedded_colored_mnist(tmp_path, plugins):
    """Biased Colorized MNIST (majority colour 80 %), 600 training digits, 2,000 replayed images, flip 0.3,
    shift 0.5: design q = 0.7, design u = 0.5 · (1 − 0.8) = 0.1."""
    dataset = {"name": "colored-mnist",
               "options": {"source": "embedded", "bias": "biased", "train_size": 600, "test_size": 200}}
    r = calibrate(tmp_path, plugins, dataset, {"flip": 0.3, "shift": 0.5}, samples=2000)
    check(r, flip=0.3)
    assert r["design_u"] == pytest.approx(0.1)
    # the flips are what lowers q: an oracle that is right on most own images rarely names the conditioning class
    # for another class's image
    assert r["acc_own"] > 0.6 and r["p_says_c"] < 0.2 and r["q"] < r["acc_own"] - 0.15


@pytest.mark.slow
@pytest.mark.skipif(not HAS_REAL_MNIST, reason=f"real MNIST not found under {shared_data_root()}/MNIST/raw")
def test_calibration_on_real_mnist(tmp_path, plugins):
    """The torchvision MNIST files, 3,000 training digits, 3,000 replayed images, flip 0.15, shift 0.7 toward
    colour 2 (blue) in every class (~30 s)."""
    dataset = {"name": "colored-mnist",
               "options": {"source": "torchvision", "bias": "biased", "train_size": 3000, "test_size": 1000}}
    options = {"flip": 0.15, "shift": 0.7, "target_subgroup": 2}
    r = calibrate(tmp_path, plugins, dataset, options, samples=3000, data_root=shared_data_root())
    check(r, flip=0.15)
    # u_c = 0.7 · (1 − p_{2,c}): p = 0.8 for the three classes whose majority colour is 2, 0.1 for the other seven
    assert r["design_u"] == pytest.approx((3 * 0.7 * 0.2 + 7 * 0.7 * 0.9) / 10, abs=1e-3)


# ------------------------------------------------------------------------------------------- SeqClass


def test_seqclass_config_spells_the_setting_and_runs(tmp_path):
    from harness.cli import app

    path = REPO / "configs" / "seqclass.toml"
    r = CliRunner().invoke(app, [
        "run", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet", "--generations", "2",
        "--set", "dataset.options.train_size=300", "--set", "dataset.options.test_size=100",
        "--set", "loop.samples_per_generation=300", "--set", "training.max_epochs=1",
        "--set", "metrics.oracle.max_epochs=1", "--set", "precision=fp32",
    ])
    assert r.exit_code == 0, r.output
    results = json.loads(Path(r.stdout.strip().splitlines()[-1]).read_text())
    assert results["status"] == "complete"
    spec = results["spec"]
    assert spec["generator"]["name"] == "replay" and spec["generator"]["options"]["flip"] == 0.0
    assert spec["generator"]["options"]["shift"] == 0.0 and spec["loop"]["labeler"] == "previous_classifier"
    assert spec["generator"]["options"]["shortfall"] == "borrow" and spec["loop"]["regime"] == "replace"
    first, second = (g["generator"]["per_seed"][0] for g in results["generations"][1:])
    assert first["relabeled"] is not None and second["relabeled"] is not None
    # generation 1 replays D_real itself (300 of 300, exact class quotas): the same colours, u = 0
    assert first["u"] == pytest.approx(0.0, abs=1e-12) and first["generator_train_size"] == 300
    assert second["generator_train_size"] == 300  # D_1: the replayed images only (regime replace)
    # generation 2 replays D_1 (f_0's labels) and still returns every real training image exactly once
    run_dir = Path(r.stdout.strip().splitlines()[-1]).parent
    samples = ImageSet.load(unit("sample", 0, 2).directory(run_dir) / "samples.safetensors").images
    assert spec["dataset"]["name"] == "colored-mnist-wyllie"  # Wyllie et al.'s ColoredMNIST (docs/wyllie.md)
    ds = ColoredMNISTWyllie(ColoredMNISTWyllie.Options.model_validate(spec["dataset"]["options"]))
    real = ds.load().train.images
    assert torch.equal(torch.unique(samples.flatten(1), dim=0), torch.unique(real.flatten(1), dim=0))
    assert torch.unique(samples.flatten(1), dim=0).shape[0] == len(samples) == 300
