"""Wyllie et al.'s settings in bench (docs/wyllie.md): STAR reparation (the stratified batch sampler, cla- and
gen-STAR in real runs), disparity amplification against a hand-computed example, loop.synthetic_fraction, the
representation of D_t in results.json, and every Wyllie config in configs/ parsing and running tiny."""

from __future__ import annotations

import json
import time
from pathlib import Path

import pytest
import torch
from typer.testing import CliRunner

from harness import loop
from harness.cli import app
from harness.engine.plan import plan, unit
from harness.engine.records import BatchMix, MixResult, read_record
from harness.engine.reparation import (
    StratifiedBatchSampler,
    disparity_cells,
    draw_cells,
    quotas,
    star_batches,
    star_resample,
    strata_of,
)
from harness.engine.rundir import load_tensors
from harness.errors import ConfigError
from harness.publish.results import load_results
from harness.specs import build_spec, resolve_spec
from tests.conftest import REPO, shared_data_root, tiny_config

CONFIGS = ("seqclass", "seqclass_star", "seqgen_seqclass", "seqgen_nonseqclass")


def skewed_strata(n: int, shares: list[float], seed: int = 0) -> torch.Tensor:
    """``n`` strata in the given shares (exact counts), in a random order."""
    counts = [round(s * n) for s in shares]
    strata = torch.repeat_interleave(torch.arange(len(shares)), torch.tensor(counts))
    return strata[torch.randperm(strata.numel(), generator=torch.Generator().manual_seed(seed))]


def batch_counts(strata: torch.Tensor, batches: torch.Tensor, k: int) -> torch.Tensor:
    rows = torch.arange(batches.shape[0]).unsqueeze(1).expand_as(batches)
    return torch.zeros(batches.shape[0], k, dtype=torch.int64).index_put_(
        (rows.flatten(), strata[batches].flatten()), torch.ones(batches.numel(), dtype=torch.int64), accumulate=True)


# --------------------------------------------------------------------------------------------------- the sampler


def test_star_batches_hit_the_target_when_the_budget_allows():
    # 4 strata of 55 / 30 / 10 / 5 %; a uniform target asks 10 of each per batch of 40
    strata = skewed_strata(20_000, [0.55, 0.30, 0.10, 0.05])
    target = torch.full((4,), 0.25, dtype=torch.float64)
    quota = torch.cat([quotas(target, 40)[:4], torch.zeros(1, dtype=torch.int64)])
    pool = torch.arange(strata.numel())
    batches, fill = star_batches(strata, pool, quota, 40, 600, 200, torch.Generator().manual_seed(1))
    assert batches.shape == (200, 40)
    counts = batch_counts(strata, batches, 4)
    # 640 candidates hold about 32 of the rarest stratum: every quota is met, nothing is filled at random
    assert (counts == 10).all(), counts[(counts != 10).any(1)][:3]
    assert int(fill.sum()) == 0
    for row in batches:  # no image twice in a batch (candidates are a permutation's consecutive run)
        assert row.unique().numel() == 40


def test_star_batches_come_closer_to_the_target_with_more_budget():
    strata = skewed_strata(20_000, [0.55, 0.30, 0.10, 0.05])
    target = torch.full((4,), 0.25, dtype=torch.float64)
    pool_share = torch.bincount(strata, minlength=4).double() / strata.numel()
    tvs = []
    for budget in (0, 20, 80, 400):
        sampler = StratifiedBatchSampler(strata, target, budget, num_classes=2, num_subgroups=2)
        for _ in range(2):  # two epochs
            batches = list(sampler.epoch(torch.arange(strata.numel()), 40, torch.Generator().manual_seed(budget)))
            assert len(batches) == 500 and all(b.numel() == 40 for b in batches)
        summary = BatchMix.model_validate({**sampler.summary(), "subgroup_source": "known"})
        assert summary.batches == 1000 and summary.budget == budget
        assert summary.tv_pool == pytest.approx(0.5 * float((pool_share - target).abs().sum()))
        tvs.append(summary.tv_achieved)
    # budget 0: plain random batches, as far from the target as the pool; each budget after it: closer
    assert abs(tvs[0] - 0.35) < 0.01
    assert tvs[0] > tvs[1] > tvs[2] > tvs[3]
    assert tvs[3] < 0.01


def test_budget_zero_draws_plain_random_batches():
    strata = skewed_strata(1000, [0.7, 0.2, 0.1])
    quota = torch.tensor([10, 10, 10, 0])
    pool = torch.arange(100, 1000)  # the held-out 100 are left out
    batches, fill = star_batches(strata, pool, quota, 30, 0, 20, torch.Generator().manual_seed(5))
    # the batches are exactly the consecutive runs of the shuffled pool: no resampling
    expected = pool[torch.randperm(pool.numel(), generator=torch.Generator().manual_seed(5))][:600].view(20, 30)
    assert torch.equal(batches, expected)
    counts = batch_counts(strata, batches, 3)
    assert int(fill.sum()) == int((30 - torch.minimum(counts, quota[:3]).sum(1)).sum())


def test_sampler_epochs_use_only_the_pool_and_never_ask_for_unknown_subgroups():
    labels = torch.tensor([0, 1] * 500)
    subgroups = torch.tensor(([0] * 3 + [1] + [-1]) * 200)  # a fifth unknown
    strata = strata_of(labels, subgroups, 2, 2)
    assert set(strata.tolist()) == {0, 1, 2, 3, 4}
    target = torch.full((4,), 0.25, dtype=torch.float64)
    sampler = StratifiedBatchSampler(strata, target, 64, num_classes=2, num_subgroups=2, source="pixels")
    pool = torch.arange(1000)[torch.arange(1000) % 7 != 0]  # a held-out seventh left out
    seen = torch.cat(list(sampler.epoch(pool, 32, torch.Generator().manual_seed(0))))
    assert set(seen.tolist()) <= set(pool.tolist())
    assert seen.numel() == -(-pool.numel() // 32) * 32
    summary = sampler.summary()
    assert summary["unknown_achieved"] < summary["unknown_pool"]
    assert summary["tv_achieved"] < summary["tv_pool"]
    assert summary["subgroup_source"] == "pixels"


def test_the_sampler_counts_only_the_batches_training_used():
    strata = skewed_strata(1000, [0.5, 0.5])
    sampler = StratifiedBatchSampler(strata, torch.tensor([0.5, 0.5], dtype=torch.float64), 10, num_classes=1,
                                     num_subgroups=2)
    for i, _ in enumerate(sampler.epoch(torch.arange(1000), 50, torch.Generator().manual_seed(0))):
        if i == 7:  # a step budget reached: the 8th batch was fetched, not trained on
            break
    assert sampler.summary()["batches"] == 7
    assert sum(1 for _ in sampler.epoch(torch.arange(1000), 50, torch.Generator().manual_seed(1))) == 20
    assert sampler.summary()["batches"] == 27


def test_star_resample_keeps_the_size_and_moves_toward_the_target():
    strata = skewed_strata(3000, [0.6, 0.25, 0.1, 0.05])
    target = torch.full((4,), 0.25, dtype=torch.float64)
    index, summary = star_resample(strata, target, 128, 64, torch.Generator().manual_seed(3), num_classes=2,
                                   num_subgroups=2)
    assert index.numel() == 3000 and int(index.max()) < 3000
    share = torch.bincount(strata[index], minlength=4).double() / 3000
    assert summary["tv_achieved"] == pytest.approx(0.5 * float((share - target).abs().sum()))
    assert summary["tv_pool"] == pytest.approx(0.35)
    # 192 candidates hold about 10 of the rarest stratum for its quota of 16: closer, not all the way
    assert summary["tv_achieved"] < summary["tv_pool"] / 2 and summary["filled"] > 0


def test_the_sampler_is_vectorised():
    """A million candidates in well under the time a Python loop over them would take."""
    strata = skewed_strata(1_000_000, [0.4, 0.3, 0.2, 0.1])
    target = torch.full((4,), 0.25, dtype=torch.float64)
    sampler = StratifiedBatchSampler(strata, target, 256, num_classes=2, num_subgroups=2)
    start = time.perf_counter()
    n = sum(b.numel() for b in sampler.epoch(torch.arange(strata.numel()), 256, torch.Generator().manual_seed(0)))
    seconds = time.perf_counter() - start
    assert n == 3907 * 256
    assert seconds < 10.0, f"an epoch of 2 million candidates took {seconds:.1f} s"


# --------------------------------------------------------------------------------------------------- disparity


def test_disparity_amplification_against_a_hand_computed_example():
    # ten real images: 4 green (subgroup 0), 6 red (subgroup 1); f_{t-1} predicts class 1 for 3 of the 4 green
    # images and for 1 of the 6 red ones
    subgroups = torch.tensor([0, 0, 0, 0, 1, 1, 1, 1, 1, 1])
    predicted = torch.tensor([1, 1, 1, 0, 1, 0, 0, 0, 0, 0])
    labels = torch.tensor([0, 0, 1, 1, 0, 0, 0, 1, 1, 1])  # the true classes: 2 / 2 green, 3 / 3 red
    counts, shares = disparity_cells(predicted, subgroups, 2, 2, 20)
    # D_real's subgroup shares (8 green, 12 red of 20) split by f's per-subgroup outcomes: green 1/4 : 3/4,
    # red 5/6 : 1/6 -> class 0: 2 green, 10 red; class 1: 6 green, 2 red; no unknown subgroup (last column)
    assert counts.tolist() == [[2, 10, 0], [6, 2, 0]]
    assert shares[:, :2].flatten().tolist() == pytest.approx([0.25, 5 / 6, 0.75, 1 / 6])
    # 7 images: exact shares 0.7, 3.5 | 2.1, 0.7 -> floors 0, 3 | 2, 0 and the two largest remainders (0.7, 0.7)
    assert disparity_cells(predicted, subgroups, 2, 2, 7)[0].tolist() == [[1, 3, 0], [2, 1, 0]]
    cells = labels * 3 + subgroups  # (class, subgroup) cell of each real image, width G + 1
    index, repeated, unserved = draw_cells(cells, counts.flatten(), torch.Generator().manual_seed(0))
    drawn = torch.bincount(cells[index], minlength=6).view(2, 3)
    assert drawn.tolist() == [[2, 10, 0], [6, 2, 0]]
    # (0, green) holds 2 images: both once; (0, red) 3 for 10 draws: 7 repeats; (1, green) 2 for 6: 4 repeats;
    # (1, red) 3 for 2 draws: two distinct images
    assert repeated == 11 and unserved == 0
    red1 = index[cells[index] == 4]
    assert red1.unique().numel() == 2
    for cell, size in ((0, 2), (1, 3), (3, 2)):
        assert index[cells[index] == cell].unique().numel() == size
    # a cell D_real lacks cannot be served
    _, _, unserved = draw_cells(torch.tensor([0, 0, 1]), torch.tensor([1, 1, 3]), torch.Generator().manual_seed(0))
    assert unserved == 3


# --------------------------------------------------------------------------------------------------- the spec


def test_the_spec_sections_and_their_mistakes():
    spec = build_spec("quick", {"loop": {"synthetic_fraction": 0.8, "regime": "replace"},
                                "reparation": {"apply_to": "both", "target": [[1, 2], [3, 4]]}})
    assert spec.loop.mix_ratio == 0.8  # synthetic_fraction sets it: |D_t| = |D_real|
    assert spec.reparation.classifiers and spec.reparation.generators
    plain = build_spec("quick")
    ident = plain.identity()
    assert "reparation" not in ident
    assert "synthetic_fraction" not in ident["loop"] and "disparity_amplification" not in ident["loop"]
    assert spec.spec_hash() != plain.spec_hash()
    for bad, words in (
        ({"reparation": {"budgett": 3}}, "did you mean reparation.budget"),
        ({"reparation": {"apply_to": "filters"}}, "apply_to"),
        ({"reparation": {"target": [[1, 2], [3]]}}, "rows of equal length"),
        ({"reparation": {"target": [[0, 0]]}}, "not all 0"),
        ({"reparation": {"budget": -1}}, "budget"),
        ({"loop": {"synthetic_fraction": 1.5}}, "synthetic_fraction"),
        ({"loop": {"regime": "replace", "disparity_amplification": True}}, "has none"),
        ({"loop": {"synthetic_fraction": 1.0, "disparity_amplification": True}}, "has none"),
    ):
        with pytest.raises(ConfigError, match=words):
            build_spec("quick", bad)


def test_star_units_read_the_evaluate_units_they_need():
    spec = build_spec(None, tiny_config(loop={"generations": 3, "regime": "stack", "queue_capacity": 2},
                                        reparation={"apply_to": "both"}))
    units = {u.key: u for u in plan(spec)}
    keys = list(units)
    assert set(units["seed-0/gen-003/classifier/lenet"].deps) == {
        "seed-0/gen-003/mix", "seed-0/gen-002/evaluate", "seed-0/gen-003/evaluate"}
    assert set(units["seed-0/gen-003/generator"].deps) == {
        "seed-0/gen-002/mix", "seed-0/gen-001/evaluate", "seed-0/gen-002/evaluate"}
    assert units["seed-0/gen-001/generator"].deps == ()
    for key, u in units.items():  # the plan's order respects every dependency
        assert all(keys.index(d) < keys.index(key) for d in u.deps), key
    da = build_spec(None, tiny_config(loop={"synthetic_fraction": 0.5, "disparity_amplification": True}))
    mix = next(u for u in plan(da) if u.key == "seed-0/gen-002/mix")
    assert "seed-0/gen-001/classifier/lenet" in mix.deps


# --------------------------------------------------------------------------------------------------- real runs


def wyllie_config(tmp_path: Path, **over) -> dict:
    """A tiny SeqClass on Wyllie et al.'s ColoredMNIST made of real MNIST digits."""
    base = tiny_config(
        out=str(tmp_path / "runs"),
        dataset={"name": "colored-mnist-wyllie", "options": {"source": "embedded", "train_size": 400,
                                                             "test_size": 200}},
        generator={"name": "replay", "options": {"shortfall": "borrow"}},
        filter={"name": "none", "keep": 1.0},
        loop={"generations": 1, "samples_per_generation": 400, "regime": "replace", "synthetic_fraction": 1.0,
              "labeler": "previous_classifier"},
        training={"max_epochs": 2, "batch_size": 32},
    )
    from harness.specs import deep_merge

    return deep_merge(base, over)


def test_star_runs_end_to_end_on_real_mnist_digits(tmp_path, plugins):
    root = shared_data_root()
    if not (root / "MNIST" / "raw").is_dir():
        pytest.skip(f"no MNIST under {root} (set BENCH_DATA_ROOT)")
    cfg = wyllie_config(
        tmp_path,
        dataset={"options": {"source": "torchvision", "train_size": 600}},
        loop={"samples_per_generation": 600},
        reparation={"apply_to": "both", "budget": 64},
        data_root=str(root),
    )
    spec = resolve_spec(build_spec(None, cfg), plugins)
    results = loop.run(spec, plugins)
    assert results.provenance.dataset_source["source"] == "torchvision-mnist"
    data = json.loads((spec.run_dir / "results.json").read_text())  # what the file says, not the model
    target = [[0.25, 0.25], [0.25, 0.25]]
    assert data["reparation"]["target"] == target
    assert data["reparation"]["subgroup_sources"] == ["known", "pixels"]
    for g in data["generations"]:
        record = g["classifiers"]["lenet"]
        for p in record["per_seed"] + record["control"]:
            mix = p["reparation"]
            assert mix["target"] == target and mix["batches"] > 0
            # Wyllie's ColoredMNIST puts 15 / 35 / 35 / 15 % of the images in the four (class × colour) cells: the
            # pool (what batches without STAR draw, on average) is far from the uniform target, STAR's batches close
            assert mix["tv_achieved"] < mix["tv_pool"] - 0.1, mix
        rep = g["representation"]
        assert rep is not None and len(rep["per_seed"]) == 1
        assert sum(map(sum, rep["cells"])) == pytest.approx(1.0)
    # generation 0 is D_real: its minority within each class is 30 % of the class (P(green | y) = 0.3, 0.7)
    rep0 = data["generations"][0]["representation"]
    assert rep0["class_minority"] == [0, 1] and rep0["minority_share"]["mean"] == pytest.approx(0.3, abs=0.01)
    assert rep0["per_seed"][0]["source"] == "known" and rep0["per_seed"][0]["synthetic"] == 0
    rep1 = data["generations"][1]["representation"]["per_seed"][0]
    assert rep1["synthetic"] == 600 and rep1["real"] == 0 and rep1["source"] == "pixels"
    gen = data["generations"][1]["generator"]["per_seed"][0]["reparation"]
    assert gen["tv_achieved"] < gen["tv_pool"] and gen["subgroup_source"] == "known"  # D_0 = D_real
    assert load_results(spec.run_dir / "results.json").reparation.units == 4


def test_synthetic_fraction_and_disparity_amplification_in_a_run(tmp_path, plugins):
    cfg = wyllie_config(tmp_path, loop={"generations": 2, "synthetic_fraction": 0.5,
                                        "disparity_amplification": True})
    spec = resolve_spec(build_spec(None, cfg), plugins)
    results = loop.run(spec, plugins)
    for t in (1, 2):
        info = read_record(unit("mix", 0, t), spec.run_dir, MixResult)
        assert info.real == 200 and info.synthetic == 200
        draw = info.real_draw
        assert draw.mode == "disparity" and draw.classifier == "lenet" and draw.count == 200
        assert sum(map(sum, draw.cells)) == 200
        # the real part keeps D_real's colour shares (200 each) and follows f_{t-1}'s outcomes within each colour
        green = [row[0] for row in draw.cells]
        assert sum(green) == 100
        for col in range(2):
            wanted = [draw.predicted[c][col] * 100 for c in range(2)]
            assert [row[col] for row in draw.cells] == pytest.approx(wanted, abs=1.0)
        real = load_tensors(unit("mix", 0, t).directory(spec.run_dir) / "mix.safetensors")["real"]
        assert real.numel() == 200
        per_seed = results.generations[t].representation.per_seed[0]
        assert per_seed.real == 200 and per_seed.synthetic == 200 and per_seed.real_draw == draw
        classifier = results.generations[t].classifiers["lenet"].per_seed[0]
        assert classifier.train_size == {"real": 200, "synthetic": 200}


def test_a_target_of_the_wrong_shape_is_refused_before_any_work(tmp_path, plugins):
    cfg = wyllie_config(tmp_path, reparation={"target": [[1, 1, 1], [1, 1, 1]]})
    spec = resolve_spec(build_spec(None, cfg), plugins)
    with pytest.raises(ConfigError, match="needs 2×2"):
        loop.run(spec, plugins)
    assert not spec.run_dir.exists()


@pytest.mark.parametrize("name", CONFIGS)
def test_each_wyllie_config_parses_and_runs_tiny(tmp_path, name):
    path = REPO / "configs" / f"{name}.toml"
    tiny = ["dataset.options.train_size=200", "dataset.options.test_size=100", "loop.generations=1",
            "loop.samples_per_generation=200", "training.max_epochs=1", "metrics.oracle.max_epochs=1",
            "loop.control=false", "metrics.bootstrap=20"]
    if name.startswith("seqgen"):
        tiny.append("generator.options.epochs=1")
    args = ["run", "--config", str(path), "--out", str(tmp_path / "runs"), "--quiet"]
    for item in tiny:
        args += ["--set", item]
    r = CliRunner().invoke(app, args)
    assert r.exit_code == 0, r.output
    results = load_results(Path(r.stdout.strip()))
    assert results.dataset.name == "colored-mnist-wyllie" and results.status == "complete"
    assert results.spec["loop"]["synthetic_fraction"] == 1.0 and results.spec["loop"]["regime"] == "replace"
    assert results.generations[1].representation.per_seed[0].synthetic == 200
    assert (results.reparation is not None) == (name == "seqclass_star")
