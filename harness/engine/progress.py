"""Progress for humans, on stderr: generations → stages → steps (rich). Library code reports, never prints."""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any


class _NullTask:
    def advance(self, n: int = 1) -> None:
        pass


class NullReporter:
    """Reports nothing (tests, workers without a terminal)."""

    @contextlib.contextmanager
    def task(self, description: str, total: int | None) -> Iterator[_NullTask]:
        yield _NullTask()

    def stage(self, description: str) -> contextlib.AbstractContextManager:
        return self.task(description, None)

    def generation(self, n: int = 1) -> None:
        pass

    def close(self) -> None:
        pass


class _RichTask:
    def __init__(self, progress: Any, task_id: int):
        self._progress, self._id = progress, task_id

    def advance(self, n: int = 1) -> None:
        self._progress.advance(self._id, n)


def rich_progress(console: Any = None, *, transient: bool = False) -> Any:
    """bench's bars (spinner, description, bar, done/total, time elapsed and left) on ``console`` (stderr by
    default): a :class:`rich.progress.Progress`, not yet started."""
    from rich.console import Console
    from rich.progress import (
        BarColumn,
        MofNCompleteColumn,
        Progress,
        SpinnerColumn,
        TextColumn,
        TimeElapsedColumn,
        TimeRemainingColumn,
    )

    return Progress(
        SpinnerColumn(),
        TextColumn("{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        console=console or Console(stderr=True),
        transient=transient,
    )


@contextlib.contextmanager
def progress_task(progress: Any, description: str, total: int | None) -> Iterator[_RichTask]:
    """A bar of ``progress`` for the length of the block (``.advance(n)``), removed when the block ends."""
    task_id = progress.add_task(description, total=total)
    try:
        yield _RichTask(progress, task_id)
    finally:
        progress.remove_task(task_id)


class RichReporter:
    """Nested rich progress bars on stderr: one for the run's generations, one per stage, one per step loop."""

    def __init__(self, total_generations: int, *, console: Any = None, transient: bool = False):
        self.progress = rich_progress(console, transient=transient)
        self.console = self.progress.console
        self._total = total_generations
        self._gen: Any = None

    def _start(self) -> None:
        """Start drawing on first use, so that an error raised before any work shows no empty bars."""
        if self._gen is None:
            self.progress.start()
            self._gen = self.progress.add_task("generations", total=self._total)

    def generation(self, n: int = 1) -> None:
        self._start()
        self.progress.advance(self._gen, n)

    def task(self, description: str, total: int | None) -> contextlib.AbstractContextManager[_RichTask]:
        self._start()
        return progress_task(self.progress, f"  {description}", total)

    def stage(self, description: str) -> contextlib.AbstractContextManager:
        return self.task(description, None)

    def close(self) -> None:
        if self._gen is not None:
            self.progress.stop()
