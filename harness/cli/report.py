"""``bench report RUN_DIR``: the run's figures, like the paper's, as PNG, PDF or SVG (paths on stdout)."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli import app, fail, user_errors


@app.command("report")
@user_errors
def report(
    run_dir: Path = typer.Argument(..., help="A run directory, finished or in progress."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Where to write the figures [RUN_DIR/report]."),
    data_root: Path | None = typer.Option(
        None, "--data-root", help="Where the run's dataset lives, as given to bench run (a run in progress, and "
        "the row of real images in the sample grid)."
    ),
    formats: list[str] = typer.Option(
        ["png"], "--format", "-F", help="png | pdf | svg (repeatable: --format pdf --format svg) [png]."
    ),
) -> None:
    """Draw metrics, worst-k subgroup accuracy, generator quality, B_t and A_t, and sample grids per generation.

    On a run in progress (or one that stopped) the figures show the generations finished so far. One path per
    figure and format on stdout.
    """
    from harness.publish.report import FORMATS, write_report

    for fmt in formats:
        if fmt.lower() not in FORMATS:
            raise fail(f"unknown --format {fmt!r}; choose from: {', '.join(FORMATS)}")
    for path in write_report(run_dir, out, data_root=data_root, formats=[f.lower() for f in formats]):
        typer.echo(str(path))
