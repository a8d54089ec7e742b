"""The ``bench`` command line. One module per command; heavy imports (torch) happen inside command bodies.

Installed plugins add their own commands through the ``register_commands`` hook (e.g. ``bench review``, from
the ``manual`` filter); the core never imports a plugin module.
"""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer
from typer.main import get_command_name

from harness.plugin.manager import default_plugins

app = typer.Typer(
    name="bench",
    help="Does bias get amplified when classifiers train on generated data, generation after generation?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


def _print_version(value: bool) -> None:
    if value:
        from harness import __version__

        typer.echo(f"bench {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: bool = typer.Option(False, "--version", callback=_print_version, is_eager=True,
                                 help="Print the version and exit."),
) -> None:
    pass


def fail(message: str, code: int = 2) -> typer.Exit:
    """Print one line on stderr and return the Exit to raise."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[bold red]error:[/] {escape(message)}", markup=True)
    return typer.Exit(code)


def user_errors(fn: Callable[..., Any]) -> Callable[..., Any]:
    """Turn errors a user can cause into one line on stderr and exit code 2 (never a traceback)."""

    @functools.wraps(fn)
    def wrapper(*args: Any, **kwargs: Any) -> Any:
        from harness.errors import BenchError

        try:
            return fn(*args, **kwargs)
        except BenchError as exc:
            raise fail(str(exc), exc.exit_code) from None
        except KeyboardInterrupt:
            raise fail("interrupted; run the same command again to resume from the last finished unit", 130) from None

    return wrapper


def warn(message: str) -> None:
    """Print one warning line on stderr."""
    from rich.console import Console
    from rich.markup import escape

    Console(stderr=True, highlight=False, soft_wrap=True).print(f"[yellow]warning:[/] {escape(message)}", markup=True)


def _register_commands() -> None:
    """Import each command module (one per command); each registers itself on ``app``. No torch here."""
    import importlib
    import importlib.util

    for name in COMMANDS:
        if importlib.util.find_spec(f"harness.cli.{name}") is not None:
            importlib.import_module(f"harness.cli.{name}")


def _names(commands: list[Any]) -> set[str]:
    return {c.name or get_command_name(c.callback.__name__) for c in commands if c.callback}


def _register_plugin_commands() -> None:
    """Let every installed plugin add its commands (the ``register_commands`` hook), after the core's.

    A plugin that fails here, or that takes a name already taken, is reported in one line on stderr and left out;
    every other command still works. A :class:`~harness.errors.BenchError` raised by a plugin's command becomes
    one line on stderr, as for the core's commands.
    """
    try:
        plugins = default_plugins()
    except Exception as exc:  # noqa: BLE001 - a broken plugin never takes the CLI down
        warn(f"plugins could not be loaded, their commands are missing: {type(exc).__name__}: {exc}")
        return
    args = {"app": app}
    for impl in plugins.pm.hook.register_commands.get_hookimpls():
        taken, before = _names(app.registered_commands), len(app.registered_commands)
        try:
            impl.function(*(args[name] for name in impl.argnames))
        except Exception as exc:  # noqa: BLE001
            del app.registered_commands[before:]
            warn(f"plugin {impl.plugin_name} could not add its commands: {type(exc).__name__}: {exc}")
            continue
        added = app.registered_commands[before:]
        clash = sorted(_names(added) & taken)
        if clash:
            del app.registered_commands[before:]
            warn(f"plugin {impl.plugin_name}: its command(s) {', '.join(clash)} left out, the name is taken")
            continue
        for command in added:
            if command.callback is not None:
                command.callback = user_errors(command.callback)


COMMANDS = ("run", "status", "list", "plugins", "data", "report", "leaderboard", "sweep")
_register_commands()
_register_plugin_commands()


def main() -> None:
    """Console-script entry point. A mistake on the command line itself (a value of the wrong type, an unknown
    option, a missing argument) is one line on stderr and exit code 2, like every other user error."""
    try:
        from typer._click import exceptions as click  # typer vendors click
    except ImportError:  # pragma: no cover - a typer that uses click itself
        from click import exceptions as click

    # Ctrl-C outside a command body; typer keeps its Abort beside its vendored click, click in its exceptions
    ABORT = getattr(click, "Abort", None) or getattr(typer, "Abort", KeyboardInterrupt)
    try:
        code = app(standalone_mode=False)
    except click.NoArgsIsHelpError as exc:  # `bench` alone: the help, as usual
        exc.show()
        sys.exit(exc.exit_code)
    except click.ClickException as exc:
        ctx = getattr(exc, "ctx", None)
        hint = f" (see {ctx.command_path} --help)" if isinstance(exc, click.UsageError) and ctx is not None else ""
        fail(" ".join(exc.format_message().split()) + hint, exc.exit_code)
        sys.exit(exc.exit_code)
    except ABORT:
        fail("aborted", 130)
        sys.exit(130)
    except BrokenPipeError:  # e.g. `bench list datasets | head`
        sys.exit(0)
    sys.exit(code if isinstance(code, int) else 0)
