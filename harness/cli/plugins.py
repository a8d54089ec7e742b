"""``bench plugins``: every installed plugin, with its distribution, version and hooks."""

from __future__ import annotations

from harness.cli import app, user_errors


@app.command("plugins")
@user_errors
def plugins() -> None:
    """Show every plugin of the ``bench`` entry-point group; plugins that failed to import are listed too."""
    from rich.console import Console
    from rich.table import Table

    from harness.plugin.manager import default_plugins

    loaded = default_plugins()
    table = Table(title="bench plugins")
    for col in ("plugin", "distribution", "version", "hooks / error"):
        table.add_column(col)
    for info in sorted(loaded.infos, key=lambda i: i.name):
        detail = f"[red]failed to import: {info.error}[/]" if info.error else ", ".join(info.hooks)
        table.add_row(info.name, info.distribution or "-", info.version or "-", detail)
    Console(soft_wrap=True).print(table)
