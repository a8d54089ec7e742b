"""``bench plugins``: every installed plugin, with its distribution, version and hooks, and what is wrong with it."""

from __future__ import annotations

from harness.cli import app, user_errors


@app.command("plugins")
@user_errors
def plugins() -> None:
    """Show every plugin of the bench entry-point group; plugins that cannot be used are listed with the reason.

    A plugin that fails to import or implements an unknown hook is not used at all; a name that a built-in plugin
    already has stays the built-in's. Exit code 0 either way: this command is how such problems are diagnosed.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    from harness.plugin.manager import default_plugins

    loaded = default_plugins()
    table = Table(title="bench plugins")
    for col in ("plugin", "distribution", "version", "hooks", "problem"):
        table.add_column(col)
    for info in sorted(loaded.infos, key=lambda i: i.name):
        problem = Text("")
        if info.error:
            problem = Text(f"not used: {info.error}; {info.fix}", style="red")
        elif info.clashes:
            problem = Text(f"{'; '.join(info.clashes)}; {info.fix}", style="yellow")
        # every cell is Text: names and messages come from third-party packages and are never read as markup
        table.add_row(Text(info.name), Text(info.distribution or "-"), Text(info.version or "-"),
                      Text(", ".join(info.hooks) or "-"), problem)
    Console(soft_wrap=True).print(table)
