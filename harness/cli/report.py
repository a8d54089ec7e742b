"""``bench report RUN_DIR``: the run's figures as PNGs, like the paper's (paths on stdout)."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli import app, user_errors


@app.command("report")
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory (holding results.json)."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the figures [RUN_DIR/report]."),
) -> None:
    """Draw metrics, worst-k subgroup accuracy, generator quality, A_t and sample grids per generation.

    One PNG path per line on stdout.
    """
    from harness.publish.report import write_report

    for path in write_report(run_dir, out):
        typer.echo(str(path))
