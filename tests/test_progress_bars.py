"""The rich bars of a run and of a sweep: one layout (harness.engine.progress.rich_progress), nested tasks that
disappear when their block ends, drawn on the console given (stderr by default)."""

from __future__ import annotations

import io

import pytest
from rich.console import Console

from harness.engine.progress import RichReporter, progress_task, rich_progress
from harness.scale.sweep import SweepReporter


def console() -> tuple[Console, io.StringIO]:
    buf = io.StringIO()
    return Console(file=buf, force_terminal=True, width=120), buf


def test_one_layout_on_stderr_by_default():
    progress = rich_progress()
    assert progress.console.stderr
    names = [type(c).__name__ for c in progress.columns]
    assert names == ["SpinnerColumn", "TextColumn", "BarColumn", "MofNCompleteColumn", "TimeElapsedColumn",
                     "TimeRemainingColumn"]
    assert [type(c).__name__ for c in SweepReporter([]).progress.columns] == names
    assert [type(c).__name__ for c in RichReporter(1).progress.columns] == names


def test_a_task_lives_for_its_block_even_when_it_raises():
    progress = rich_progress(console()[0])
    with progress_task(progress, "train", 4) as task:
        task.advance(3)
        (only,) = progress.tasks
        assert (only.description, only.completed, only.total) == ("train", 3, 4)
    assert progress.tasks == []
    with pytest.raises(RuntimeError), progress_task(progress, "fails", None):
        raise RuntimeError
    assert progress.tasks == []


def test_run_reporter_draws_generations_and_stages_on_its_console():
    con, buf = console()
    reporter = RichReporter(2, console=con)
    assert reporter.console is con and buf.getvalue() == ""  # nothing drawn before the first report
    with reporter.stage("filter"), reporter.task("dcgan: train", 5) as task:
        task.advance(5)
        assert [t.description for t in reporter.progress.tasks] == ["generations", "  filter", "  dcgan: train"]
    reporter.generation()
    assert [(t.description, t.completed) for t in reporter.progress.tasks] == [("generations", 1)]
    reporter.close()
    assert "generations" in buf.getvalue()
