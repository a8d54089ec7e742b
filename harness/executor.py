"""Executors run the plan's work units. ``local`` (the default) runs them in this process, in plan order.

An executor receives the run context, the units (each with the keys of the units it depends on) and a callback
to call once per finished unit. Units exchange data only through the run directory, so an executor may run
independent units (the classifiers of one generation, the seeds of a run) in other processes or machines.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any, Protocol

from harness.loop import RunContext, Unit, execute


class Executor(Protocol):
    name: str

    def run(self, ctx: RunContext, units: Sequence[Unit], on_done: Callable[[Unit], None]) -> None: ...


class LocalExecutor:
    """Sequential, in-process. Finished units (``result.json`` present) are skipped, which is how a run resumes."""

    name = "local"

    def run(self, ctx: RunContext, units: Sequence[Unit], on_done: Callable[[Unit], None]) -> None:
        done: set[str] = set()
        for u in units:
            missing = [d for d in u.deps if d not in done]
            if missing:
                raise RuntimeError(f"unit {u.key} is planned before its dependencies {missing}")
            execute(ctx, u)
            done.add(u.key)
            on_done(u)


EXECUTORS: dict[str, Callable[..., Any]] = {"local": LocalExecutor}
