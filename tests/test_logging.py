"""Progress without a terminal: a plain line per work unit and per finished generation on stderr (a pipe, a log
file), the same lines in RUN_DIR/run.log, and the ``bench`` logger for library users."""

from __future__ import annotations

import json
import logging
import os
import re
import subprocess
import sys
from pathlib import Path

from harness.engine.plan import plan
from harness.engine.progress import unit_label
from tests.conftest import tiny_config

BENCH = [sys.executable, "-c", "from harness.cli import main; main()"]
STAMP = re.compile(r"^\d{4}-\d\d-\d\d \d\d:\d\d:\d\d ")


def write_config(tmp_path: Path, **over) -> Path:
    path = tmp_path / "spec.json"
    path.write_text(json.dumps(tiny_config(**over)))
    return path


def log_lines(text: str) -> list[str]:
    return [line for line in text.splitlines() if STAMP.match(line)]


def test_bench_run_on_a_pipe_prints_a_line_per_unit_as_it_goes_and_keeps_them_in_run_log(tmp_path, tiny_spec):
    cfg = write_config(tmp_path)
    env = {k: v for k, v in os.environ.items() if k not in ("TTY_COMPATIBLE", "FORCE_COLOR")}
    env["OMP_NUM_THREADS"] = "1"
    proc = subprocess.Popen(BENCH + ["run", "--config", str(cfg), "--out", str(tmp_path / "runs")],
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=env)
    lines, running_when = [], {}
    assert proc.stderr is not None
    for line in proc.stderr:  # read as the lines come, not at the end
        lines.append(line.rstrip("\n"))
        if " finished " in line and "first" not in running_when:
            running_when["first"] = proc.poll() is None
    stdout = proc.stdout.read() if proc.stdout else ""
    assert proc.wait(timeout=600) == 0, "\n".join(lines)
    assert running_when["first"], "the first unit's line came only after the run had ended"

    stderr_log = log_lines("\n".join(lines))
    units = plan(tiny_spec())
    for u in units:
        started = [x for x in stderr_log if f"] started {unit_label(u)}" in x]
        finished = [x for x in stderr_log if f"] finished {unit_label(u)} in " in x]
        assert len(started) == 1 and len(finished) == 1, (u.key, stderr_log)
    finished = [x for x in stderr_log if " finished " in x]
    assert [int(re.search(r"\[(\d+)/(\d+)\]", x).group(1)) for x in finished] == list(range(1, len(units) + 1))
    assert all(f"/{len(units)}]" in x for x in finished)
    assert all("run ETA " in x for x in finished[:-1]) and "run ETA" not in finished[-1]
    classifier = next(x for x in finished if "classifier lenet" in x)
    assert re.search(r" in \d+(\.\d)? s, [\d,]+ images/s; run ETA ", classifier), classifier

    summaries = [x for x in stderr_log if "generation done: " in x]
    assert len(summaries) == 3
    assert re.search(r"seed 0 gen 0: lenet acc 0\.\d{3} B\(1-meo\) (0\.\d{3}|n/a)$", summaries[0]), summaries[0]
    for t, line in enumerate(summaries[1:], start=1):
        assert re.search(rf"seed 0 gen {t}: lenet acc 0\.\d{{3}} B\(1-meo\) \S+; q [01]\.\d{{3}} u \S+$", line), line
    assert f"run finished: {len(units)}/{len(units)} work units" in stderr_log[-1]

    run_dir = Path(stdout.strip()).parent
    in_file = (run_dir / "run.log").read_text().splitlines()
    assert in_file == stderr_log
    results = json.loads((run_dir / "results.json").read_text())
    acc0 = results["generations"][0]["classifiers"]["lenet"]["per_seed"][0]["acc"]
    assert f"lenet acc {acc0:.3f}" in summaries[0]
    assert not (run_dir / "running.json").exists()


def test_library_runs_log_to_the_bench_logger_and_run_log_but_print_nothing(tiny_spec, plugins, capsys):
    from harness import loop

    spec = tiny_spec(loop={"generations": 1})
    records: list[logging.LogRecord] = []

    class Keep(logging.Handler):
        def emit(self, record: logging.LogRecord) -> None:
            records.append(record)

    logger = logging.getLogger("bench")
    handler, level = Keep(), logger.level
    logger.addHandler(handler)
    logger.setLevel(logging.INFO)
    try:
        loop.run(spec, plugins)
    finally:
        logger.removeHandler(handler)
        logger.setLevel(level)
    captured = capsys.readouterr()
    assert captured.out == "" and "started" not in captured.err
    messages = [r.getMessage() for r in records]
    n = len(plan(spec))
    assert sum(" finished " in m for m in messages) == n
    assert sum(m.startswith("generation done: ") for m in messages) == 2
    in_file = (spec.run_dir / "run.log").read_text()
    assert all(m in in_file for m in messages)

    # resumed: nothing to do, so no unit lines; run.log is appended to, never overwritten
    before = in_file.count("\n")
    records.clear()
    loop.run(spec, plugins)  # the bench logger is back at its default level: run.log only
    assert records == []
    after = (spec.run_dir / "run.log").read_text().splitlines()
    assert len(after) == before + 2
    assert after[-2].endswith(f"{n} work units, all done already") and f"run finished: {n}/{n}" in after[-1]


def test_a_terminal_gets_bars_not_lines(tmp_path):
    cfg = write_config(tmp_path, loop={"generations": 0})
    env = {**os.environ, "OMP_NUM_THREADS": "1", "FORCE_COLOR": "1"}  # rich (13.8 and later): stderr is a terminal
    r = subprocess.run(BENCH + ["run", "--config", str(cfg), "--out", str(tmp_path / "runs")], capture_output=True,
                       text=True, env=env, timeout=600)
    assert r.returncode == 0, r.stderr
    assert "generations" in r.stderr and log_lines(r.stderr) == []
    run_log = (Path(r.stdout.strip()).parent / "run.log").read_text()
    assert re.search(r"\[\d+/\d+\] finished seed 0 gen 0: classifier lenet in ", run_log)


def test_a_sweep_without_a_terminal_prints_each_runs_lines_with_its_id(tmp_path):
    from typer.testing import CliRunner

    from harness.cli import app

    cfg = tmp_path / "sweep.json"
    cfg.write_text(json.dumps({"base": tiny_config(loop={"generations": 0}), "grid": {"seeds": [[0], [1]]}}))
    r = CliRunner().invoke(app, ["sweep", str(cfg), "--out", str(tmp_path / "runs")])
    assert r.exit_code == 0, r.output
    run_dirs = [Path(p).parent for p in r.stdout.split()]
    lines = log_lines(r.stderr)
    for run_dir in run_dirs:
        mine = [x.split(f" {run_dir.name}: ", 1)[1] for x in lines if f" {run_dir.name}: " in x]
        assert any(x.startswith("[1/") and " finished oracle in " in x for x in mine)
        assert mine[-1].startswith("run finished: ")
        in_file = [STAMP.sub("", x) for x in (run_dir / "run.log").read_text().splitlines()]
        assert in_file == mine  # run.log has the same lines, without the id
