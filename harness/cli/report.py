"""``bench report RUN_DIR``: the run's figures as PNGs, like the paper's (paths on stdout)."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli import app, user_errors


@app.command("report")
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory, finished or in progress."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the figures [RUN_DIR/report]."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the run's dataset lives (a run in progress only: as given to bench run)."
    ),
) -> None:
    """Draw metrics, worst-k subgroup accuracy, generator quality, A_t and sample grids per generation.

    On a run in progress (or one that stopped) the figures show the generations finished so far. One PNG path
    per line on stdout.
    """
    from harness.publish.report import write_report

    for path in write_report(run_dir, out, data_root=data_root):
        typer.echo(str(path))
