"""The ``bench`` command line. One module per command; heavy imports (torch) happen inside command bodies."""

from __future__ import annotations

import functools
import sys
from collections.abc import Callable
from typing import Any

import typer

app = typer.Typer(
    name="bench",
    help="Does bias get amplified when classifiers train on generated data, generation after generation?",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    add_completion=False,
    context_settings={"help_option_names": ["-h", "--help"]},
)


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


def _register_commands() -> None:
    """Import each command module (one per command); each registers itself on ``app``. No torch here."""
    import importlib
    import importlib.util

    for name in COMMANDS:
        if importlib.util.find_spec(f"harness.cli.{name}") is not None:
            importlib.import_module(f"harness.cli.{name}")


COMMANDS = ("run", "list", "plugins", "data", "review", "report", "leaderboard", "sweep")
_register_commands()


def main() -> None:
    """Console-script entry point."""
    try:
        app()
    except BrokenPipeError:  # e.g. `bench list datasets | head`
        sys.exit(0)
