"""Loop semantics (SPEC §2): per-class keep, queue capacity, mix sizes, regimes, re-initialisation, resume."""

from __future__ import annotations

import json
import shutil
import sys
from pathlib import Path

import pytest
import torch

from harness import loop
from harness.engine.plan import plan, queue_generations, unit
from harness.engine.records import ClassifierResult, FilterResult, GeneratorResult, MixResult, read_record
from harness.engine.rundir import load_tensors
from harness.engine.selection import keep_top_per_class, proportional_labels
from harness.engine.stages import RunContext
from harness.imageset import ImageSet
from harness.specs import build_spec, resolve_spec

sys.path.insert(0, str(Path(__file__).parent / "example_plugin"))
import bench_example  # noqa: E402
from bench_example.generator import ClassMean  # noqa: E402

from tests.conftest import tiny_config  # noqa: E402


# ------------------------------------------------------------------------------------------- pure pieces


def test_keep_top_per_class_counts_are_exact():
    labels = torch.tensor([0] * 10 + [1] * 3 + [2] * 1 + [3] * 0)
    scores = torch.arange(14, dtype=torch.float32)
    mask = keep_top_per_class(scores, labels, 0.7, num_classes=4)
    # k_c = floor(0.7 n_c + 0.5): 10 -> 7, 3 -> 2 (2.6), 1 -> 1 (0.7 rounds up; never wipe out a class)
    assert torch.bincount(labels[mask], minlength=4).tolist() == [7, 2, 1, 0]
    # the kept ones are the highest-scoring of each class
    assert mask[:10].tolist() == [False] * 3 + [True] * 7
    assert mask[10:13].tolist() == [False, True, True]


def test_keep_ties_go_to_the_earlier_candidate():
    labels = torch.zeros(4, dtype=torch.long)
    mask = keep_top_per_class(torch.ones(4), labels, 0.5, num_classes=1)
    assert mask.tolist() == [True, True, False, False]


def test_keep_one_keeps_everything():
    labels = torch.randint(0, 5, (100,))
    assert keep_top_per_class(torch.randn(100), labels, 1.0, 5).all()


def test_proportional_labels_follow_the_real_class_distribution():
    counts = torch.tensor([50, 30, 20])
    labels = proportional_labels(counts, 7, torch.Generator().manual_seed(0))
    # 3.5, 2.1, 1.4 -> floors 3, 2, 1 (6) + the largest remainder (0.5, class 0) -> 4, 2, 1
    assert torch.bincount(labels, minlength=3).tolist() == [4, 2, 1]


def test_queue_generations_by_regime():
    def spec(regime, k=3):
        return build_spec("quick", {"loop": {"regime": regime, "queue_capacity": k}})

    assert queue_generations(spec("stack", 2), 5) == [4, 5]
    assert queue_generations(spec("stack", 3), 2) == [1, 2]
    assert queue_generations(spec("accumulate"), 4) == [1, 2, 3, 4]
    assert queue_generations(spec("replace"), 4) == [4]


def test_plan_order_respects_dependencies():
    spec = build_spec("quick", {"loop": {"generations": 3}, "seeds": [0, 1]})
    units = plan(spec)
    seen = set()
    for u in units:
        assert set(u.deps) <= seen, u.key
        seen.add(u.key)
    assert len({u.key for u in units}) == len(units)
    # generation 0 is classifiers only; later generations have all seven stages (the quick preset has a control arm)
    assert {u.stage for u in units if u.generation == 0 and u.seed == 0} == {"classifier"}
    assert {u.stage for u in units if u.generation == 2 and u.seed == 1} == {
        "generator", "sample", "filter", "mix", "classifier", "control", "evaluate"}


def test_unit_seeds_depend_only_on_the_unit():
    a, b = unit("classifier", 0, 3, "lenet"), unit("classifier", 0, 3, "lenet")
    assert a.unit_seed == b.unit_seed != unit("classifier", 1, 3, "lenet").unit_seed


# ------------------------------------------------------------------------------------------- tiny real runs


@pytest.fixture
def example_plugins():
    from harness.plugin.manager import create_plugin_manager

    return create_plugin_manager(extra_plugins=(bench_example,))


def run_tiny(tmp_path, plugins, **over):
    cfg = tiny_config(out=str(tmp_path / "runs"), generator={"name": "class-mean", "options": {}}, **over)
    spec = resolve_spec(build_spec(None, cfg), plugins)
    return spec, loop.run(spec, plugins)


def test_queue_mix_and_keep_on_a_real_run(tmp_path, example_plugins):
    spec, results = run_tiny(
        tmp_path, example_plugins,
        loop={"generations": 4, "queue_capacity": 2, "samples_per_generation": 150, "mix_ratio": 0.5},
        filter={"name": "uncertainty", "keep": 0.8},
    )
    run_dir = spec.run_dir
    n_real = results.dataset.train_size
    assert results.status == "complete" and results.last_generation == 4
    for t in range(1, 5):
        mix = load_tensors(unit("mix", 0, t).directory(run_dir) / "mix.safetensors")
        gens = set(mix["generation"].tolist())
        assert gens <= set(queue_generations(spec, t)), (t, gens)
        info = read_record(unit("mix", 0, t), run_dir, MixResult)
        assert info.synthetic == min(info.pool, int(0.5 * n_real + 0.5))
        filt = read_record(unit("filter", 0, t), run_dir, FilterResult)
        per_class = [k + d for k, d in zip(filt.kept_per_class, filt.dropped_per_class)]
        assert filt.kept_per_class == [int(0.8 * n + 0.5) for n in per_class]
        clf = read_record(unit("classifier", 0, t, "lenet"), run_dir, ClassifierResult)
        assert (clf.train_size.real, clf.train_size.synthetic) == (n_real, info.synthetic)
        gen = read_record(unit("generator", 0, t), run_dir, GeneratorResult)
        prev = n_real if t == 1 else n_real + read_record(unit("mix", 0, t - 1), run_dir, MixResult).synthetic
        assert gen.train_size == prev  # g_t is trained on D_{t-1}
    # one results row per generation, every SPEC §3 metric for every classifier
    g = results.generations[-1]
    m = g.classifiers["lenet"].per_seed[0]
    assert len(m.worst_k) == 3 and m.meo is not None and m.dp is not None
    assert g.generator.per_seed[0].u_source == "pixels"
    # the third-party logger hook saw every generation
    lines = (run_dir / "logs" / "example.jsonl").read_text().splitlines()
    assert [json.loads(x)["generation"] for x in lines] == [0, 1, 2, 3, 4]


def test_generator_is_reinitialised_every_generation(tmp_path, example_plugins):
    before = ClassMean.instances
    run_tiny(tmp_path, example_plugins, loop={"generations": 3, "samples_per_generation": 100})
    # one fresh instance to fit and one to sample, per generation (fit() asserts it is called once per instance)
    assert ClassMean.instances - before == 2 * 3


@pytest.mark.parametrize("regime", ["accumulate", "replace"])
def test_regimes(tmp_path, example_plugins, regime):
    spec, results = run_tiny(
        tmp_path, example_plugins, loop={"generations": 3, "regime": regime, "samples_per_generation": 100,
                                         "mix_ratio": 1.0},
    )
    last = results.generations[-1].classifiers["lenet"].per_seed[0].train_size
    if regime == "replace":
        assert last["real"] == 0 and last["synthetic"] == 100 * 0.8  # only F_3, no real data
    else:
        assert last["real"] == results.dataset.train_size and last["synthetic"] == 3 * 80


def test_previous_classifier_labeler(tmp_path, example_plugins):
    spec, results = run_tiny(tmp_path, example_plugins, loop={"labeler": "previous_classifier"})
    relabeled = [g.generator.per_seed[0].relabeled for g in results.generations[1:]]
    assert all(r is not None and r >= 0 for r in relabeled)
    kept = load_tensors(unit("filter", 0, 1).directory(spec.run_dir) / "filtered.safetensors")
    prev = RunContext(spec, spec.run_dir, example_plugins).classifiers_of(0, 0)[0]
    samples = ImageSet.load(unit("sample", 0, 1).directory(spec.run_dir) / "samples.safetensors")
    assert torch.equal(kept["labels"], prev.predict(samples.images[kept["index"]]))


def strip_timing(results) -> dict:
    data = results.model_dump(mode="json") if not isinstance(results, dict) else results
    data = json.loads(json.dumps(data))
    data.pop("timing")
    return data


def test_resume_after_losing_units_gives_identical_results(tmp_path, example_plugins):
    spec, first = run_tiny(tmp_path, example_plugins, loop={"generations": 3, "samples_per_generation": 100})
    # lose generation 2's classifier and everything after, as if killed mid-generation
    run_dir = spec.run_dir
    for key in ("seed-0/gen-002/classifier", "seed-0/gen-002/evaluate", "seed-0/gen-003"):
        shutil.rmtree(run_dir / key)
    (run_dir / "results.json").unlink()
    resumed = loop.run(spec, example_plugins)
    assert strip_timing(resumed) == strip_timing(first)


def test_a_run_dir_of_another_spec_is_refused(tmp_path, example_plugins):
    from harness.engine.rundir import write_json
    from harness.errors import RunDirError

    spec, _ = run_tiny(tmp_path, example_plugins, loop={"generations": 1, "samples_per_generation": 50})
    write_json(spec.run_dir / "spec.json", {"spec_hash": "0" * 64, "spec": {}})
    with pytest.raises(RunDirError, match="different spec"):
        loop.run(spec, example_plugins)


@pytest.mark.parametrize("backbone", ["random-conv-test", "inception-tf2015"])
def test_fid_and_kid_reach_the_results_with_their_provenance(tmp_path, example_plugins, backbone):
    if backbone == "inception-tf2015":
        from harness.errors import WeightsError
        from harness.measure.fid import preflight

        try:
            preflight(backbone)
        except WeightsError as exc:
            pytest.skip(f"no TF-2015 Inception weights here: {exc}")
    spec, results = run_tiny(
        tmp_path, example_plugins, loop={"generations": 1, "samples_per_generation": 20},
        metrics={"fid": {"backbone": backbone, "samples": 6, "real_samples": 6, "kid_subset_size": 4}},
    )
    g = results.generations[1].generator.per_seed[0]
    assert g.fid is not None and g.fid >= 0 and g.kid is not None
    fid = results.provenance.fid
    assert fid["backbone"] == backbone and fid["resize"] and fid["real_samples"] == 6
    assert len(fid["weights_sha256"]) == 64


def test_balanced_resample_keeps_every_image_and_levels_the_cells():
    from harness.engine.selection import balanced_resample

    # class 0: subgroup 0 has 8 images, subgroup 1 has 2; class 1: 3 of subgroup 0, 1 of subgroup 1, 1 unknown
    labels = torch.tensor([0] * 10 + [1] * 5)
    subgroups = torch.tensor([0] * 8 + [1] * 2 + [0, 0, 0, 1, -1])
    index = balanced_resample(labels, subgroups, torch.Generator().manual_seed(0))
    counts = torch.bincount(index, minlength=15).tolist()
    # every cell grows to its class's largest cell (8 and 3): 2 images × 4, 1 image × 3, the unknown one × 3
    assert counts == [1] * 8 + [4, 4] + [1, 1, 1, 3, 3] and len(index) == 16 + 9
    # a cell that does not divide evenly: each image once or twice, drawn without replacement
    index = balanced_resample(torch.zeros(8, dtype=torch.int64), torch.tensor([0] * 5 + [1] * 3),
                              torch.Generator().manual_seed(1))
    counts = torch.bincount(index, minlength=8)
    assert counts[:5].tolist() == [1] * 5 and sorted(counts[5:].tolist()) == [1, 2, 2]
    assert balanced_resample(torch.zeros(0, dtype=torch.int64), torch.zeros(0, dtype=torch.int64),
                             torch.Generator()).numel() == 0
