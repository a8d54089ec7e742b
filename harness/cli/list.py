"""``bench list KIND``: the registered plugins of one kind."""

from __future__ import annotations

import typer

from harness.cli import app, fail, user_errors

KINDS = ("datasets", "generators", "classifiers", "filters", "trackers")


@app.command("list")
@user_errors
def list_plugins(kind: str = typer.Argument(..., help="datasets | generators | classifiers | filters | trackers")) -> None:
    """List the registered plugins of one kind (names on stdout, one per line); one warning line on stderr per
    plugin that cannot be used (bench plugins shows them all)."""
    if kind not in KINDS:
        import difflib

        close = difflib.get_close_matches(kind, KINDS, n=1)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise fail(f"unknown kind {kind!r}.{hint} Choose from: {', '.join(KINDS)}.")
    from harness.plugin.manager import default_plugins

    plugins = default_plugins()
    for info in plugins.failed:
        typer.echo(f"warning: {info.problem}", err=True)
    for entry in plugins.registry(kind).entries():
        name = entry.name + "<name>" if entry.name.endswith(":") else entry.name
        typer.echo(name)
