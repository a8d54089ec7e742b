"""Faults and hostile input (issue 17; docs/reliability.md): a damaged run directory heals or says so in one line,
a broken third-party plugin never breaks bench, text from entries is printed as text, every mistake is one line."""

from __future__ import annotations

import json
import logging
import os
import shutil
import sys
from pathlib import Path

import pytest
from typer.testing import CliRunner

from harness import loop
from harness.cli import app
from harness.engine.plan import plan, unit
from harness.engine.rundir import (
    DamagedUnitError,
    read_result,
    unit_inputs,
    unit_problem,
    verify_file,
    verify_run,
    verify_unit,
    write_bytes,
    write_result,
)
from harness.specs import build_spec, resolve_spec
from tests.conftest import tiny_config

BENCH = [sys.executable, "-c", "from harness.cli import main; main()"]


# --------------------------------------------------------------------------------------------------- damage


def truncate(path: Path) -> None:
    """What a killed flush or a full disk leaves: the first half of the file."""
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])


def garble(path: Path) -> None:
    """Bytes flipped in place (a bad copy, a bad sector): same size, other content."""
    data = bytearray(path.read_bytes())
    mid = len(data) // 2
    data[mid : mid + 16] = b"\xff" * min(16, len(data) - mid)
    path.write_bytes(bytes(data))


def delete(path: Path) -> None:
    path.unlink()


# --------------------------------------------------------------------------------------------------- rundir


def finished_unit(directory: Path, files: dict[str, bytes], result: dict | None = None, inputs=None) -> None:
    for name, data in files.items():
        write_bytes(directory / name, data)
    write_result(directory, result or {"value": 1.5, "timing": {"seconds": 0.1}}, inputs=inputs)


def test_a_result_records_its_files_and_verifies(tmp_path):
    finished_unit(tmp_path, {"model.safetensors": b"x" * 1000, "sub/extra.bin": b"y"})
    (tmp_path / "work").mkdir()
    (tmp_path / "work" / "scratch.pt").write_bytes(b"scratch is not an output")
    (tmp_path / ".model.safetensors.abc.tmp").write_bytes(b"a write killed half-way")
    record = json.loads((tmp_path / "result.json").read_text())["integrity"]
    assert sorted(record["files"]) == ["model.safetensors", "sub/extra.bin"]
    assert record["files"]["model.safetensors"]["size"] == 1000
    assert verify_unit(tmp_path) is None and verify_file(tmp_path, "model.safetensors") is None
    assert read_result(tmp_path) == {"value": 1.5, "timing": {"seconds": 0.1}}


@pytest.mark.parametrize(
    "name, damage, problem",
    [
        ("model.safetensors", truncate, "model.safetensors has 500 bytes, 1000 were written"),
        ("model.safetensors", garble, "model.safetensors does not match its sha256"),
        ("model.safetensors", delete, "model.safetensors is missing"),
        ("result.json", truncate, "result.json is damaged"),
        ("result.json", garble, "result.json is damaged"),
        ("result.json", delete, "result.json is missing"),
    ],
)
def test_damage_is_found_and_named(tmp_path, name, damage, problem):
    finished_unit(tmp_path, {"model.safetensors": b"x" * 1000})
    damage(tmp_path / name)
    assert problem in verify_unit(tmp_path)
    if damage is not garble or name == "result.json":  # a quick look (sizes only) finds all but a same-size edit
        assert problem in verify_unit(tmp_path, contents=False)
    else:
        assert verify_unit(tmp_path, contents=False) is None


def test_an_edited_result_that_still_parses_is_found(tmp_path):
    finished_unit(tmp_path, {})
    path = tmp_path / "result.json"
    path.write_text(path.read_text().replace("1.5", "2.5"))
    assert "does not match its checksum" in verify_unit(tmp_path)
    data = json.loads(path.read_text())
    del data["integrity"]
    path.write_text(json.dumps(data))
    assert "no integrity record" in verify_unit(tmp_path)
    with pytest.raises(DamagedUnitError, match="no integrity record"):
        read_result(tmp_path)


def test_a_manifest_cannot_point_outside_its_unit(tmp_path):
    unit_dir = tmp_path / "u"
    finished_unit(unit_dir, {"a.bin": b"a"})
    data = json.loads((unit_dir / "result.json").read_text())
    data["integrity"]["files"] = {"../../etc/passwd": {"size": 1, "sha256": "0"}}
    body = {k: v for k, v in data.items() if k != "integrity"}
    import hashlib

    data["integrity"]["result_sha256"] = hashlib.sha256(
        json.dumps(body, sort_keys=True, separators=(",", ":")).encode()).hexdigest()
    (unit_dir / "result.json").write_text(json.dumps(data))
    assert "invalid file entry" in verify_unit(unit_dir)


def test_a_unit_is_stale_when_an_input_changed_since_it_read_it(tmp_path):
    sample = unit("sample", 0, 1)
    filt = unit("filter", 0, 1, deps=[sample])
    finished_unit(sample.directory(tmp_path), {"samples.safetensors": b"first"})
    finished_unit(filt.directory(tmp_path), {"filtered.safetensors": b"f"}, inputs=unit_inputs(tmp_path, filt))
    assert unit_problem(tmp_path, filt) is None
    # the sample unit computed again with the same bytes: what filter read is unchanged
    finished_unit(sample.directory(tmp_path), {"samples.safetensors": b"first"}, {"timing": {"seconds": 9.0}})
    assert unit_problem(tmp_path, filt) is None
    # ... with other bytes: filter read something else
    finished_unit(sample.directory(tmp_path), {"samples.safetensors": b"second"})
    assert unit_problem(tmp_path, filt) == "its input seed-0/gen-001/sample has changed since it was computed"
    assert verify_run(tmp_path, [sample, filt]) == [(filt.key, unit_problem(tmp_path, filt))]
    # a lost result.json below a finished reader is reported; the reader is not reported for it again
    (sample.directory(tmp_path) / "result.json").unlink()
    assert [k for k, _ in verify_run(tmp_path, [sample, filt])] == [sample.key]
    with pytest.raises(DamagedUnitError, match="seed-0/gen-001/sample"):
        unit_inputs(tmp_path, filt)


# --------------------------------------------------------------------------------------------------- runs heal


def comparable(data: dict) -> dict:
    """A results document without what differs between two runs of the same spec on the same code: the timings,
    and the commit recorded at start (another commit may land between two runs of a test in a shared checkout)."""
    data = {k: v for k, v in data.items() if k != "timing"}
    data["provenance"] = {k: v for k, v in data["provenance"].items() if k != "git_commit"}
    return data


def strip_timing(results) -> dict:
    return comparable(json.loads(results.model_dump_json()))


@pytest.fixture(scope="module")
def reference(tmp_path_factory):
    """One undamaged tiny run (dcgan, uncertainty filter, oracle, two generations) and its results."""
    from harness.plugin.manager import create_plugin_manager

    plugins = create_plugin_manager()
    spec = resolve_spec(build_spec(None, tiny_config(out=str(tmp_path_factory.mktemp("reference")))), plugins)
    return spec, plugins, strip_timing(loop.run(spec, plugins))


def copy_run(reference, tmp_path: Path):
    spec = reference[0]
    copy = spec.model_copy(update={"out": tmp_path / "runs"})  # `out` is not part of the spec hash
    shutil.copytree(spec.run_dir, copy.run_dir)
    (copy.run_dir / "results.json").unlink()
    return copy


DAMAGE = [
    # a generator's weights, read by the sample unit of the same generation
    ("seed-0/gen-001/generator", "model.safetensors", truncate),
    # a classifier's weights, read by the next generation's filter (uncertainty)
    ("seed-0/gen-000/classifier/lenet", "model.safetensors", truncate),
    # weights nothing downstream reads: found all the same
    ("seed-0/gen-002/classifier/lenet", "model.safetensors", garble),
    ("seed-0/gen-002/sample", "samples.safetensors", garble),
    ("seed-0/gen-001/mix", "result.json", garble),
    ("seed-0/gen-001/filter", "result.json", truncate),
    ("oracle", "result.json", truncate),
    ("seed-0/gen-001/classifier/lenet", "predictions.safetensors", delete),
]


@pytest.mark.parametrize("key, name, damage", DAMAGE, ids=[f"{k}/{n}:{d.__name__}" for k, n, d in DAMAGE])
def test_a_damaged_unit_is_computed_again_and_the_run_ends_as_if_undamaged(reference, tmp_path, caplog, key, name,
                                                                          damage):
    _, plugins, expected = reference
    spec = copy_run(reference, tmp_path)
    damage(spec.run_dir / key / name)
    found = verify_run(spec.run_dir, plan(spec))
    assert [k for k, _ in found] == [key] and name in found[0][1]

    with caplog.at_level(logging.WARNING, logger="harness"):
        results = loop.run(spec, plugins)
    assert strip_timing(results) == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and key in warnings[0] and name in warnings[0], warnings
    assert "\n" not in warnings[0]
    assert verify_run(spec.run_dir, plan(spec)) == []


def test_a_file_damaged_after_its_unit_was_checked_is_not_loaded(reference, tmp_path):
    from harness.engine.stages import RunContext

    spec = copy_run(reference, tmp_path)
    ctx = RunContext(spec, spec.run_dir, reference[1])
    assert len(ctx.filtered(0, 1)) > 0
    truncate(spec.run_dir / "seed-0/gen-002/mix/mix.safetensors")
    with pytest.raises(DamagedUnitError, match=r"unit seed-0/gen-002/mix: mix.safetensors has \d+ bytes"):
        ctx.trainset(0, 2)


def test_bench_run_verify_lists_damaged_units_and_runs_nothing(tmp_path):
    cfg = tmp_path / "spec.json"
    cfg.write_text(json.dumps(tiny_config(loop={"generations": 1})))
    args = ["run", "--config", str(cfg), "--out", str(tmp_path / "runs")]
    done = CliRunner().invoke(app, [*args, "--quiet"])
    assert done.exit_code == 0, done.output
    run_dir = Path(done.stdout.strip()).parent
    (run_dir / "results.json").unlink()
    ok = CliRunner().invoke(app, [*args, "--verify"])
    assert ok.exit_code == 0, ok.output
    assert ok.stdout == "" and "all intact" in ok.stderr
    truncate(run_dir / "seed-0/gen-001/generator/model.safetensors")
    garble(run_dir / "seed-0/gen-001/evaluate/result.json")
    bad = CliRunner().invoke(app, [*args, "--verify"])
    assert bad.exit_code == 2
    lines = bad.stdout.strip().splitlines()
    assert len(lines) == 2
    assert lines[0].startswith("seed-0/gen-001/generator: model.safetensors has")
    assert lines[1].startswith("seed-0/gen-001/evaluate: result.json is damaged")
    assert not (run_dir / "results.json").exists()  # nothing ran
    status = CliRunner().invoke(app, ["status", str(run_dir)])
    assert status.exit_code == 0, status.output
    damaged = [line for line in status.stdout.splitlines() if line.startswith("damaged: ")]
    assert damaged == [f"damaged: {line}; the same bench run command computes it again" for line in lines]
    healed = CliRunner().invoke(app, [*args, "--quiet"])
    assert healed.exit_code == 0, healed.output
    warnings = healed.stderr.strip().splitlines()
    assert warnings == [
        f"warning: unit seed-0/gen-001/generator: {lines[0].split(': ', 1)[1]}; computing it again",
        f"warning: unit seed-0/gen-001/evaluate: {lines[1].split(': ', 1)[1]}; computing it again",
    ]
    assert CliRunner().invoke(app, [*args, "--verify"]).exit_code == 0
    missing = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(tmp_path / "elsewhere"), "--verify"])
    assert missing.exit_code == 2 and "no run directory" in missing.stderr


# --------------------------------------------------------------------------------------------------- hostile text

HOSTILE = "[/][bold red]x[/bold red][/]"


@pytest.fixture
def hostile_entry(tmp_path):
    """A leaderboard entry whose every free-text name (classifier, generator, filter) is rich markup."""
    from harness.publish.leaderboard import submit
    from tests.test_leaderboard import synthetic_results, write

    doc = synthetic_results(classifiers=(HOSTILE, "lenet"), generator={"name": f"gen{HOSTILE}", "options": {}},
                            filter={"name": f"filter{HOSTILE}", "keep": 0.8})
    other = synthetic_results(classifiers=(HOSTILE, "lenet"), loop={"mix_ratio": 0.25})
    entries = tmp_path / "entries"
    for d in (doc, other):
        submit(write(tmp_path / "in" / f"{d['run_id']}.json", d), entries)
    return entries, doc, other


def test_leaderboard_show_and_compare_print_entry_names_as_text(hostile_entry):
    entries, doc, other = hostile_entry
    shown = CliRunner().invoke(app, ["leaderboard", "show", "--dir", str(entries)])
    assert shown.exit_code == 0, shown.output
    for word in (*HOSTILE.split(), f"gen{HOSTILE.split()[0]}", f"filter{HOSTILE.split()[0]}"):
        assert word in shown.stdout, word  # the table wraps names at spaces; each piece is there as written
    compared = CliRunner().invoke(app, ["leaderboard", "compare", doc["run_id"], other["run_id"], "--dir",
                                        str(entries)])
    assert compared.exit_code == 0, compared.output
    assert f"{HOSTILE}: per generation" in compared.stdout and f"gen{HOSTILE}" in compared.stdout


def test_the_run_summary_prints_names_as_text(hostile_entry):
    import io

    from rich.console import Console

    from harness.publish.leaderboard import load_entries
    from harness.publish.summary import print_summary

    entries, doc, _ = hostile_entry
    results = next(e.results for e in load_entries(entries) if e.results.run_id == doc["run_id"])
    buffer = io.StringIO()
    print_summary(results, Console(file=buffer, width=300))
    assert f"{HOSTILE}: A_bar" in buffer.getvalue() and HOSTILE in buffer.getvalue().splitlines()[2]


def test_the_sweep_table_prints_overrides_as_text(tmp_path):
    import io

    from rich.console import Console

    from harness.scale.sweep import Outcome, SweepRun, summary_table

    spec = build_spec(None, tiny_config())
    outcome = Outcome(SweepRun(1, {"generator.options.note": HOSTILE}, spec))
    buffer = io.StringIO()
    Console(file=buffer, width=300).print(summary_table([outcome]))
    assert json.dumps(HOSTILE) in buffer.getvalue()


def test_warnings_print_what_they_quote_as_text():
    import io

    from rich.console import Console

    from harness.cli.run import console_warnings

    buffer = io.StringIO()
    with console_warnings(Console(file=buffer, width=300)):
        logging.getLogger("harness.engine.stages").warning("unit %s: damaged", HOSTILE)
    assert buffer.getvalue() == f"warning: unit {HOSTILE}: damaged\n"


# --------------------------------------------------------------------------------------------------- full disk


def cli_results(stdout: str) -> dict:
    return comparable(json.loads(Path(stdout.strip()).read_text()))


@pytest.fixture(scope="module")
def cli_reference(tmp_path_factory):
    """A tiny run through the CLI (one generation) and its results, timings aside."""
    root = tmp_path_factory.mktemp("cli-reference")
    cfg = root / "spec.json"
    cfg.write_text(json.dumps(tiny_config(loop={"generations": 1})))
    done = CliRunner().invoke(app, ["run", "--config", str(cfg), "--out", str(root / "runs"), "--quiet"])
    assert done.exit_code == 0, done.output
    return cfg, cli_results(done.stdout)


def no_space(flavour: str) -> BaseException:
    if flavour == "OSError":
        import errno

        return OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
    from safetensors import (
        SafetensorError,  # safetensors writes through its own I/O and keeps only the message
    )

    return SafetensorError('Error while serializing: IoError(Os { code: 28, kind: StorageFull, message: "No space '
                           'left on device" })')


@pytest.mark.parametrize("flavour", ["OSError", "SafetensorError"])
def test_a_full_disk_is_one_line_and_the_rerun_ends_as_if_it_never_filled(cli_reference, tmp_path, monkeypatch,
                                                                          flavour):
    from harness.engine import rundir

    cfg, expected = cli_reference
    args = ["run", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"]
    real, writes = rundir._atomic_write, []

    def filling(path, write):
        writes.append(path)
        if len(writes) != 6:
            return real(path, write)

        def half_then_full(tmp):  # the disk fills half-way through the sixth file
            write(tmp)
            tmp.write_bytes(tmp.read_bytes()[: tmp.stat().st_size // 2])
            raise no_space(flavour)

        return real(path, half_then_full)

    monkeypatch.setattr(rundir, "_atomic_write", filling)
    full = CliRunner().invoke(app, args)
    assert full.exit_code == 2, full.output
    assert full.stderr.startswith("error: the disk holding ") and "is full" in full.stderr
    assert len(full.stderr.strip().splitlines()) == 1 and full.stdout == ""
    assert not writes[5].exists() and not list(writes[5].parent.glob(".*.tmp"))  # no half file, no leftover

    monkeypatch.setattr(rundir, "_atomic_write", real)  # space freed
    healed = CliRunner().invoke(app, args)
    assert healed.exit_code == 0, healed.output
    assert cli_results(healed.stdout) == expected


# --------------------------------------------------------------------------------------------------- concurrency


@pytest.mark.slow
def test_two_runs_of_one_spec_into_one_folder_end_with_the_same_intact_results(cli_reference, tmp_path):
    import subprocess

    cfg, expected = cli_reference
    args = BENCH + ["run", "--config", str(cfg), "--out", str(tmp_path / "runs"), "--quiet"]
    procs = [subprocess.Popen(args, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True) for _ in range(2)]
    outs = [p.communicate(timeout=600) for p in procs]
    for p, (out, err) in zip(procs, outs, strict=True):
        assert p.returncode == 0, err
        assert cli_results(out) == expected
    spec_dir = Path(outs[0][0].strip()).parent
    from harness.specs import RunSpec

    stored = json.loads((spec_dir / "results.json").read_text())["spec"]
    spec = RunSpec.model_validate({**stored, "out": spec_dir.parent})
    assert verify_run(spec_dir, plan(spec)) == []


def test_the_site_prints_entry_names_as_text(tmp_path):
    from harness.publish.leaderboard import load_entries, submit
    from harness.publish.site import render_site
    from tests.test_leaderboard import synthetic_results, write

    script = "<script>alert(1)</script>"
    doc = synthetic_results(classifiers=(f"{script}{HOSTILE}",), generator={"name": f"gen{script}", "options": {}})
    submit(write(tmp_path / "in" / "a.json", doc), tmp_path / "entries")
    index = render_site(load_entries(tmp_path / "entries"), tmp_path / "site", runs=[])
    pages = [p.read_text() for p in index.parent.rglob("*.html")]
    assert len(pages) >= 2
    for page in pages:
        assert script not in page
    assert any("&lt;script&gt;alert(1)&lt;/script&gt;" in page for page in pages)


def test_progress_bars_print_unit_and_plugin_names_as_text():
    import io

    from rich.console import Console

    from harness.engine.progress import RichReporter

    buffer = io.StringIO()
    reporter = RichReporter(1, console=Console(file=buffer, width=200, force_terminal=True))
    with reporter.stage(f"seed 0 gen 1: classifier {HOSTILE}"):
        reporter.progress.refresh()
    reporter.close()
    assert f"classifier {HOSTILE}" in buffer.getvalue()


def test_an_intact_result_of_the_wrong_shape_is_computed_again_and_logged_in_run_log(reference, tmp_path, caplog):
    # A result.json whose integrity record is valid but whose content is not a result of its stage (an edit that
    # re-signed it, or a file written by another version) is computed again like a damaged one, not a stop.
    from harness.engine.rundir import unit_inputs, write_result

    _, plugins, expected = reference
    spec = copy_run(reference, tmp_path)
    mix = next(u for u in plan(spec) if u.key == "seed-0/gen-001/mix")
    directory = mix.directory(spec.run_dir)
    data = read_result(directory)
    del data["queue"]
    write_result(directory, data, inputs=unit_inputs(spec.run_dir, mix))
    with caplog.at_level(logging.WARNING, logger="harness"):
        results = loop.run(spec, plugins)
    assert strip_timing(results) == expected
    warnings = [r.getMessage() for r in caplog.records if r.levelno >= logging.WARNING]
    assert len(warnings) == 1 and "seed-0/gen-001/mix" in warnings[0] and "queue" in warnings[0]
    assert "seed-0/gen-001/mix" in (spec.run_dir / "run.log").read_text()  # the warning is in the run's log too
