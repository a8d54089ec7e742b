"""``bench data check NAME``: is a dataset's data there and valid? If not, how to get it."""

from __future__ import annotations

from pathlib import Path

import typer

from harness.cli import app, user_errors

data_app = typer.Typer(help="Inspect datasets.", no_args_is_help=True)
app.add_typer(data_app, name="data")


@data_app.command("check")
@user_errors
def check(
    name: str = typer.Argument(..., help="A registered dataset, e.g. colored-mnist."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where the dataset's files live."),
    option: list[str] = typer.Option([], "--option", "-o", help="A dataset option, KEY=VALUE (repeatable)."),
) -> None:
    """Check that a dataset's files are present and valid; exit 2 with how to get them otherwise."""
    from harness.plugin import factory
    from harness.specs import PluginSpec, parse_set

    pspec = PluginSpec(name=name, options=parse_set(option))
    dataset = factory.create("datasets", pspec, data_root=data_root, cache_dir=(data_root or Path("runs")) / ".cache")
    typer.echo(f"{name}: ok — {dataset.check()}")
