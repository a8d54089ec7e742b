"""Typed unit results: every stage writes its record and a finished unit is read back through the same model."""

from __future__ import annotations

import pytest

from harness import loop
from harness.engine.plan import plan, unit
from harness.engine.records import RECORDS, EvaluateResult, MixResult, SampleResult, Stopwatch, read_record
from harness.engine.rundir import DamagedUnitError, write_result
from harness.engine.stages import RunContext, execute

MIX = {"timing": {"seconds": 0.5, "images": 0, "images_per_s": 0.0, "threads": 2},
       "queue": [1], "pool": 10, "real": 600, "synthetic": 10, "synthetic_per_generation": {"1": 10}}


def test_every_unit_of_a_run_reads_back_as_its_stage_record(tmp_path, tiny_spec, plugins):
    spec = tiny_spec(loop={"generations": 1, "samples_per_generation": 100})
    results = loop.run(spec, plugins)
    ctx = RunContext(spec, spec.run_dir, plugins)
    for u in plan(spec):
        record = read_record(u, spec.run_dir, RECORDS[u.stage])
        assert type(record) is RECORDS[u.stage], u.key
        assert execute(ctx, u) == record  # a finished unit is not run again: its record, typed
        assert record.timing.seconds > 0 and record.timing.threads is not None
    sample = read_record(unit("sample", 0, 1), spec.run_dir, SampleResult)
    assert sample.count == 100 == sample.timing.images == results.generations[1].generator.per_seed[0].candidates
    evaluated = read_record(unit("evaluate", 0, 1), spec.run_dir, EvaluateResult)
    assert evaluated.fid is None and "disabled" in evaluated.fid_note and evaluated.fid_provenance is None
    assert evaluated.q == results.generations[1].generator.per_seed[0].q
    assert results.timing.stages["sample"].images == 100


def test_a_result_that_does_not_fit_its_record_names_the_unit_and_field(tmp_path):
    mix = unit("mix", 0, 1)
    write_result(mix.directory(tmp_path), {**MIX, "pool": -1})
    with pytest.raises(DamagedUnitError, match=r"unit seed-0/gen-001/mix: result.json does not fit a mix result \(pool:"):
        read_record(mix, tmp_path, MixResult)
    write_result(mix.directory(tmp_path), {**MIX, "queued": [1]})
    with pytest.raises(DamagedUnitError, match="queued: Extra inputs are not permitted"):
        read_record(mix, tmp_path, MixResult)


def test_unfinished_units_and_the_wrong_model(tmp_path):
    mix = unit("mix", 0, 1)
    assert read_record(mix, tmp_path, MixResult) is None
    write_result(mix.directory(tmp_path), MIX)
    assert read_record(mix, tmp_path, MixResult).synthetic_per_generation == {"1": 10}
    with pytest.raises(TypeError, match="records a MixResult, not a SampleResult"):
        read_record(mix, tmp_path, SampleResult)


def test_an_evaluate_result_without_fid_fields_reads_with_none(tmp_path):
    evaluate = unit("evaluate", 0, 1)
    write_result(evaluate.directory(tmp_path), {
        "q": 0.5, "u": None, "u_per_class": None, "u_source": None, "class_balance": [0.5, 0.5],
        "oracle_class_balance": [1.0, 0.0], "fid_note": "FID/KID disabled",
        "timing": {"seconds": 1.0, "images": 4, "images_per_s": 4.0},
    })
    record = read_record(evaluate, tmp_path, EvaluateResult)
    assert (record.fid, record.kid, record.kid_std, record.fid_provenance, record.timing.threads) == (None,) * 5


def test_stopwatch_timing():
    clock = Stopwatch(threads=lambda: 3)
    timing = clock.timing(images=50)
    assert timing.images == 50 and timing.threads == 3 and timing.seconds > 0
    assert timing.images_per_s == pytest.approx(50 / timing.seconds)
    assert Stopwatch().timing(0).threads is None
