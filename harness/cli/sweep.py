"""``bench sweep``: run (or resume) every run of a sweep config — a base spec and a grid or a list of runs."""

from __future__ import annotations

import contextlib
import sys
from pathlib import Path

import typer

from harness.cli import app, fail, user_errors
from harness.cli.run import console_warnings, warn_broken_plugins, writable_out


@app.command("sweep")
@user_errors
def sweep(
    config: Path = typer.Argument(..., help="Sweep config (TOML, YAML or JSON): base + grid, or base + runs."),
    executor: str = typer.Option("local", "--executor", help="local (runs one after another) or ray (all at once)."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="An existing Ray cluster (--executor ray)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Parent directory of the run directories."),
    dry_run: bool = typer.Option(False, "--dry-run", help="List the runs (run_id, overrides); run nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
) -> None:
    """Run every point of a sweep; print the results paths on stdout and a summary table on stderr.

    Each point is a run with its own run directory; the same command again resumes where the sweep stopped.
    """
    import json
    import traceback

    from rich.console import Console
    from rich.markup import escape

    from harness.errors import BenchError
    from harness.plugin.manager import default_plugins
    from harness.scale.sweep import SweepReporter, build_sweep, dry_run as list_runs, load_sweep, run_sweep, summary_table

    plugins = default_plugins()
    cfg = load_sweep(config)
    runs = build_sweep(cfg, plugins, out=out)
    if dry_run:
        typer.echo(json.dumps(list_runs(runs), indent=2))
        return

    from harness.scale.executor import create_executor

    options = {"ray_address": ray_address, **cfg.ray} if executor == "ray" else {}
    runner = create_executor(executor, **options)
    console = Console(stderr=True)
    warn_broken_plugins(plugins, console)
    for parent in sorted({r.spec.out for r in runs}):
        writable_out(parent)
    from harness.engine.progress import log_to_stream

    bars = not quiet and console.is_terminal  # else: a plain line per unit and generation, with its run's id
    reporter = SweepReporter(runs, console=console) if bars else None
    lines = log_to_stream(sys.stderr, run_ids=True) if not (quiet or bars) else contextlib.nullcontext()
    try:
        with console_warnings(console), lines:
            outcomes = run_sweep(runs, plugins, executor=runner, reporter=reporter)
    finally:
        if reporter is not None:
            reporter.close()
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    for o in outcomes:
        if o.run.results_path.exists():
            typer.echo(str(o.run.results_path))
    if not quiet:
        console.print(summary_table(outcomes))
    failures = [o for o in outcomes if o.error is not None]
    if not failures:
        return
    for o in failures:
        err = o.error
        assert err is not None
        if isinstance(err, BenchError):
            console.print(f"[bold red]run {o.run.index}[/] ({escape(o.run.run_id)}): {escape(str(err))}",
                          highlight=False)
        else:
            text = "".join(traceback.format_exception(type(err), err, err.__traceback__))
            console.print(f"[bold red]run {o.run.index}[/] ({escape(o.run.run_id)}) failed:", markup=True)
            console.print(text, markup=False, highlight=False)
    code = max(o.error.exit_code for o in failures if isinstance(o.error, BenchError)) if all(
        isinstance(o.error, BenchError) for o in failures) else 1
    raise fail(f"{len(failures)} of {len(outcomes)} runs failed (above); fix the cause and run the same command "
               "again: finished runs and units are skipped", code)
