"""Results as a tidy pandas DataFrame, and ``bench leaderboard show --format csv|json`` with every generation."""

from __future__ import annotations

import csv
import io
import json
import math

import pytest
from typer.testing import CliRunner

from harness.cli import app
from harness.publish.results import Results
from tests.test_leaderboard import run_tiny, synthetic_results, write

COLUMNS = ["run", "seed", "replicate", "generation", "classifier", "arm", "metric", "value"]


def bench(*args):
    return CliRunner().invoke(app, [str(a) for a in args])


def test_one_row_per_seed_generation_classifier_and_metric():
    doc = synthetic_results(classifiers=("lenet", "alexnet"), seeds=(0, 1, 2), generations=2)
    results = Results.model_validate(doc)
    df = results.to_dataframe()
    assert list(df.columns) == COLUMNS
    assert str(df["value"].dtype) == "float64" and str(df["seed"].dtype) == "int64"
    assert set(df["run"]) == {results.run_id} and set(df["replicate"]) == {0}
    assert set(df["arm"]) == {"treated", "generator"}  # no control twins in this file

    G = results.dataset.num_subgroups
    per_classifier = 7 + G  # acc meo di md dp eodds bias_gap + worst_1..worst_G (no variants here)
    expected = 3 * (2 * 3 * per_classifier) + 2 * (3 * 4)  # 3 generations × 2 classifiers × 3 seeds; q u fid kid
    assert len(df) == expected
    assert not df.duplicated(["seed", "generation", "classifier", "metric"]).any()

    for t, g in enumerate(results.generations):
        for name, record in g.classifiers.items():
            for p in record.per_seed:
                rows = df[(df.generation == t) & (df.classifier == name) & (df.seed == p.seed)]
                values = dict(zip(rows.metric, rows.value, strict=True))
                assert values["acc"] == p.acc and values["meo"] == p.meo
                assert [values[f"worst_{k}"] for k in range(1, G + 1)] == p.worst_k
    gen = df[df.classifier.isna()]
    assert (gen.arm == "generator").all() and (df[df.classifier.notna()].arm == "treated").all()
    assert set(gen.metric) == {"q", "u", "fid", "kid"} and set(gen.generation) == {1, 2}
    q = gen[(gen.metric == "q") & (gen.generation == 2) & (gen.seed == 1)].value.item()
    assert q == results.generations[2].generator.per_seed[1].q
    assert gen[gen.metric == "fid"].value.isna().all()  # FID off: undefined, not dropped


def test_a_real_run_with_control_twins_and_replicates(tmp_path_factory):
    from harness.publish.results import load_results

    results = load_results(run_tiny(tmp_path_factory) / "results.json")
    df = results.to_dataframe()
    lenet0 = results.generations[0].classifiers["lenet"].per_seed[0]
    row = df[(df.generation == 0) & (df.classifier == "lenet") & (df.metric == "acc") & (df.arm == "treated")]
    assert row.value.item() == lenet0.acc
    assert df[df.metric == "u"].value.notna().all()

    record = results.generations[1].classifiers["lenet"]
    assert record.control and record.effect is not None  # loop.control is on by default
    acc = df[(df.generation == 1) & (df.classifier == "lenet") & (df.metric == "acc")].set_index("arm").value
    assert acc["treated"] == record.per_seed[0].acc and acc["control"] == record.control[0].acc
    assert acc["effect"] == pytest.approx(acc["treated"] - acc["control"])
    assert set(df[df.arm == "effect"].metric) == set(record.effect.per_replicate[0].values)
    assert df[(df.generation == 0) & (df.arm != "treated")].empty  # no control twin at t = 0

    doc = results.model_dump(mode="json")  # two replicates of every classifier unit
    for g in doc["generations"]:
        for rec in g["classifiers"].values():
            rec["per_seed"] += [{**p, "replicate": 1, "acc": p["acc"] / 2} for p in rec["per_seed"]]
    twice = Results.model_validate(doc).to_dataframe()
    halves = twice[(twice.metric == "acc") & (twice.arm == "treated") & (twice.replicate == 1)]
    firsts = twice[(twice.metric == "acc") & (twice.arm == "treated") & (twice.replicate == 0)]
    assert len(halves) == len(firsts) == 3 and list(halves.value) == [v / 2 for v in firsts.value]

    doc = synthetic_results()
    doc["generations"][1]["classifiers"]["lenet"]["per_seed"][0]["variants"] = {"no-color": {"acc": 0.4, "drop": 0.39}}
    df = Results.model_validate(doc).to_dataframe()
    assert df[df.metric == "acc:no-color"][["generation", "classifier", "value"]].values.tolist() == \
        [[1, "lenet", 0.4]]

    partial = Results.model_validate(synthetic_results(generations=3, last_generation=1))
    assert sorted(set(partial.to_dataframe().generation)) == [0, 1]
    empty = Results.model_validate(synthetic_results(generations=3, last_generation=-1))
    frame = empty.to_dataframe()
    assert frame.empty and list(frame.columns) == COLUMNS


@pytest.fixture
def board(tmp_path):
    entries = tmp_path / "entries"
    write(entries / "low.json", synthetic_results(amp=0.8, acc=0.7, classifiers=("lenet", "alexnet"),
                                                  seeds=(0, 1), generations=3))
    write(entries / "high.json", synthetic_results(amp=1.2, acc=0.9))
    return entries


def test_leaderboard_show_csv_and_json_have_every_generation_in_rank_order(board):
    ranked = json.loads(bench("leaderboard", "show", "--dir", board, "--json").stdout)
    assert len(ranked) == 3  # (entry, classifier) rows, last generation

    r = bench("leaderboard", "show", "--dir", board, "--format", "json")
    assert r.exit_code == 0, r.output
    rows = json.loads(r.stdout)
    assert len(rows) == 2 * 4 + 1 * 3  # low: 2 classifiers × generations 0..3; high: 1 × 0..2
    order = [(row["run_id"], row["classifier"]) for row in rows]
    assert [k for i, k in enumerate(order) if i == 0 or k != order[i - 1]] == \
        [(row["run_id"], row["classifier"]) for row in ranked]
    best = ranked[0]
    first = [row for row in rows if (row["run_id"], row["classifier"]) == (best["run_id"], best["classifier"])]
    assert [row["generation"] for row in first] == [0, 1, 2, 3]
    assert first[-1]["acc"] == pytest.approx(best["acc"]) and first[0]["q"] is None
    assert all(math.isclose(row["B"], 0.05 * 0.8 ** row["generation"]) for row in first)
    assert {row["rank"] for row in first} == {best["rank"]} == {1}

    r = bench("leaderboard", "show", "--dir", board, "--format", "csv")
    assert r.exit_code == 0, r.output
    table = list(csv.DictReader(io.StringIO(r.stdout)))
    assert len(table) == len(rows) and list(table[0]) == list(rows[0])
    assert float(table[3]["acc"]) == pytest.approx(rows[3]["acc"])

    r = bench("leaderboard", "show", "--dir", board, "--format", "xml")
    assert r.exit_code == 2 and "unknown --format 'xml'" in r.stderr


def test_the_default_entries_folder_is_found_from_a_subfolder(board, tmp_path, monkeypatch):
    project = tmp_path / "project"
    (project / "leaderboard").mkdir(parents=True)
    board.rename(project / "leaderboard" / "entries")
    deep = project / "analysis" / "notebooks"
    deep.mkdir(parents=True)
    monkeypatch.chdir(deep)
    monkeypatch.delenv("BENCH_LEADERBOARD", raising=False)
    r = bench("leaderboard", "show", "--json")
    assert r.exit_code == 0, r.output
    assert len(json.loads(r.stdout)) == 3
    monkeypatch.setenv("BENCH_LEADERBOARD", str(tmp_path / "nowhere"))
    r = bench("leaderboard", "show")
    assert r.exit_code == 2 and "nowhere: no such leaderboard directory" in r.stderr
