"""Replicates, the paired control arm and the verdict (issue 13, SPEC §2 and §5b), end to end on real digits."""

from __future__ import annotations

import json
import subprocess
import sys

import pytest

from harness.engine.plan import Unit, plan, unit
from harness.publish.results import load_results
from harness.specs import build_spec

from tests.conftest import REPO, tiny_config

LABELS = {"amplified", "reduced", "no detectable change", "inconclusive"}


def _run_cli(tmp_path, name: str, **over) -> tuple[subprocess.CompletedProcess, dict]:
    cfg = tmp_path / f"{name}.json"
    cfg.write_text(json.dumps(tiny_config(**over)))
    proc = subprocess.run(
        [sys.executable, "-c", "from harness.cli import main; main()", "run", "--config", str(cfg),
         "--out", str(tmp_path / name), "--set", "training.replicates=2", "--set", "loop.control=true"],
        capture_output=True, text=True, cwd=tmp_path, timeout=600,
    )
    assert proc.returncode == 0, proc.stderr[-2000:]
    return proc, json.loads(open(proc.stdout.strip().splitlines()[-1]).read())


@pytest.fixture(scope="module")
def treated_run(tmp_path_factory):
    return _run_cli(tmp_path_factory.mktemp("treated"), "runs", seeds=[0, 1, 2],
                    loop={"generations": 1, "samples_per_generation": 200, "mix_ratio": 0.5})


def test_plan_has_replicates_and_control_twins_sharing_their_seed():
    spec = build_spec(None, tiny_config(training={"replicates": 3}, loop={"generations": 2, "control": True}))
    units = plan(spec)
    classifiers = [u for u in units if u.stage == "classifier"]
    controls = [u for u in units if u.stage == "control"]
    assert len(classifiers) == 3 * 3  # generations 0..2 × 3 replicates (one classifier, one seed)
    assert len(controls) == 2 * 3  # no control at generation 0
    assert len({u.key for u in units}) == len(units)
    for c in controls:
        twin = c.twin
        assert twin.stage == "classifier" and (twin.generation, twin.replicate) == (c.generation, c.replicate)
        assert c.unit_seed == twin.unit_seed  # same initialisation and data order
        assert twin.key in c.deps  # steps budget: the control reads its twin's optimizer steps
    assert len({u.unit_seed for u in classifiers}) == len(classifiers)  # replicates differ
    # replicate 0 keeps the key and seed a run without replicates had, so old run folders resume
    assert unit("classifier", 0, 1, "lenet").key == "seed-0/gen-001/classifier/lenet"
    assert Unit("classifier", 1, 0, "lenet", (), 2).key == "seed-0/gen-001/classifier/lenet.rep-2"
    # the filter of generation t reads replicate 0 of generation t-1 only
    filt = next(u for u in units if u.stage == "filter" and u.generation == 2)
    assert [d for d in filt.deps if "classifier" in d] == ["seed-0/gen-001/classifier/lenet"]


def test_recipe_budget_controls_do_not_wait_for_their_twin():
    spec = build_spec(None, tiny_config(loop={"generations": 1, "control_budget": "recipe"}))
    control = next(u for u in plan(spec) if u.stage == "control")
    assert control.deps == ()


def test_control_off_plans_no_twins():
    spec = build_spec(None, tiny_config(loop={"generations": 2, "control": False}))
    assert not [u for u in plan(spec) if u.stage == "control"]


def test_run_writes_replicates_paired_effects_intervals_and_a_verdict(treated_run):
    proc, data = treated_run
    r = load_results_from(data)
    g1 = r.generations[1].classifiers["lenet"]
    assert sorted((p.seed, p.replicate) for p in g1.per_seed) == [(s, k) for s in (0, 1, 2) for k in (0, 1)]
    assert sorted((p.seed, p.replicate) for p in g1.control) == [(s, k) for s in (0, 1, 2) for k in (0, 1)]
    assert all(p.train_size.get("synthetic", 0) > 0 for p in g1.per_seed)
    assert all(p.train_size.get("synthetic") == 0 for p in g1.control)
    # Δ per (seed, replicate) is treated minus its own twin, for every metric
    by_key = {(p.seed, p.replicate): p for p in g1.per_seed}
    twins = {(p.seed, p.replicate): p for p in g1.control}
    for v in g1.effect.per_replicate:
        assert v.values["acc"] == pytest.approx(by_key[v.seed, v.replicate].acc - twins[v.seed, v.replicate].acc)
    b = g1.effect.mean["B"]
    assert b.n == 3 and b.replicates == 2 and b.resamples >= 2000
    assert b.ci_low is not None and b.ci_low <= b.mean <= b.ci_high and -1 <= b.ci_low and b.ci_high <= 1
    acc = r.generations[0].classifiers["lenet"].mean.acc
    assert 0.0 <= acc.ci_low <= acc.mean <= acc.ci_high <= 1.0  # a bounded metric's interval stays in bounds
    amp = r.amplification.per_classifier["lenet"]
    assert len(amp.A_interval) == 1 and amp.A_bar_interval is not None and amp.A_bar_interval.mean == amp.A_bar
    assert amp.A_bar_interval.resamples >= 2000
    v = r.verdict.per_classifier["lenet"]
    assert v.label in LABELS and v.seeds == 3 and v.replicates == 2 and v.generations == (1,)
    assert v.mde is not None and v.mde > 0 and v.seeds_needed is not None
    assert v.effect == pytest.approx(b.mean)
    # the summary on stderr shows the verdict line
    assert "verdict lenet: " + v.label.upper() in proc.stderr.replace("\n", " ")


def test_without_synthetic_data_twins_are_identical_and_nothing_changes(tmp_path):
    # mix_ratio 0: D_t = D_real, so each treated unit and its twin see the same data from the same
    # initialisation in the same order for the same steps: every paired effect is exactly 0.
    _, data = _run_cli(tmp_path, "runs", seeds=[0, 1, 2],
                       loop={"generations": 1, "samples_per_generation": 200, "mix_ratio": 0.0})
    r = load_results_from(data)
    effect = r.generations[1].classifiers["lenet"].effect
    assert all(v == 0.0 for p in effect.per_replicate for v in p.values.values() if v is not None)
    assert r.verdict.per_classifier["lenet"].label == "no detectable change"
    assert r.verdict.per_classifier["lenet"].effect == 0.0


def load_results_from(data: dict):
    from harness.publish.results import Results

    return Results.model_validate(data)


def test_committed_version_1_entries_still_load():
    entries = [p for p in sorted((REPO / "leaderboard" / "entries").glob("*.json"))
               if json.loads(p.read_text()).get("schema_version") == 1]
    assert entries
    for path in entries:
        r = load_results(path)
        assert r.schema_version == 2 and r.verdict is None


@pytest.mark.slow
def test_quick_preset_trains_a_converged_generation_0_lenet(tmp_path):
    # The default job measures converged classifiers: early stopping ends training before the epoch cap, and
    # generation-0 LeNet reaches at least 0.90 test accuracy on the embedded Colorized MNIST (issue 13 item 8).
    # CPU sums depend on the thread count, and so does this number (0.915 with one thread, 0.893 with two:
    # docs/benchmarks.md), so the test fixes one thread, as the measurement did.
    from harness.loop import run
    from harness.plugin.manager import create_plugin_manager
    from harness.scale.executor import LocalExecutor
    from harness.specs import resolve_spec

    plugins = create_plugin_manager()
    spec = resolve_spec(build_spec("quick", {"loop": {"generations": 0}, "classifiers": ["lenet"],
                                             "metrics": {"oracle": {"max_epochs": 1}},
                                             "out": str(tmp_path / "runs")}), plugins)
    r = run(spec, plugins, executor=LocalExecutor(torch_threads=1))
    p = r.generations[0].classifiers["lenet"].per_seed[0]
    assert p.train.stopped_early and p.train.epochs < spec.training.max_epochs
    assert p.acc >= 0.90


def test_a_resumed_run_adds_its_wall_time_to_the_sessions_before(tmp_path):
    from harness.loop import previous_wall_time

    run_dir = tmp_path / "run"
    run_dir.mkdir()
    assert previous_wall_time(run_dir) == 0.0
    (run_dir / "results.json").write_text(json.dumps({"timing": {"total_s": 123.5}}))
    assert previous_wall_time(run_dir) == 123.5
    (run_dir / "results.json").write_text("{damaged")
    assert previous_wall_time(run_dir) == 0.0


def test_the_summary_warns_when_control_twins_are_under_trained():
    # The committed SeqGenSeqClass reproduction collapses: treated classifiers peak after one epoch, so their
    # steps-budget twins barely train (accuracy ~0.5 on two classes); the quick job's twins are fine.
    from harness.publish.summary import verdict_lines

    entries = REPO / "leaderboard" / "entries"
    collapsed = verdict_lines(load_results(entries / "colored-mnist-wyllie-vae-ea7f2192bb.json"))
    assert any("control twins reach accuracy" in line and "under-trained" in line for line in collapsed)
    quick = verdict_lines(load_results(entries / "colored-mnist-dcgan-be7db2f109.json"))
    assert not any("under-trained" in line for line in quick)
    assert quick[0].startswith("verdict (pooled): INCONCLUSIVE") and "no interval: 1 seed" in quick[0]


def test_an_inconclusive_verdict_whose_mde_is_below_the_margin_says_why():
    # The reference study (3 seeds × 2 replicates): the large-sample MDE (2.8 SE) is below ε = 0.01, yet the
    # expanded interval at 3 seeds reaches past ε. The line must not leave "3 seeds bring it to ε" unexplained.
    from harness.measure.intervals import expansion_factor
    from harness.publish.summary import verdict_lines, verdict_text

    results = load_results(REPO / "leaderboard" / "entries" / "colored-mnist-dcgan-2116c23910.json")
    lenet = results.verdict.per_classifier["lenet"]
    assert lenet.label == "inconclusive" and lenet.mde < lenet.epsilon < lenet.ci_high
    line = verdict_text("lenet", lenet)
    assert f"at 3 seeds the rule's interval is {expansion_factor(3):.2f}×" in line and "2.69×" in line
    assert all("large-sample" in ln for ln in verdict_lines(results) if ln.startswith("verdict"))
    # a decided verdict, or one whose MDE is above the margin, needs no such clause
    assert "large-sample" not in verdict_text("lenet", lenet.model_copy(update={"label": "no detectable change"}))
    assert "large-sample" not in verdict_text("lenet", lenet.model_copy(update={"mde": 0.02}))
