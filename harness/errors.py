"""Errors a user can cause. The CLI turns each into one line on stderr and exit code 2."""

from __future__ import annotations

import difflib
import typing
from typing import Any

from pydantic import BaseModel, ValidationError


class BenchError(Exception):
    """A mistake the user can fix (bad flag, bad value, missing data or weights). Never a bug."""

    exit_code = 2


class ConfigError(BenchError):
    """A spec, preset, flag or plugin option is invalid."""


class UnknownPluginError(ConfigError):
    """A plugin name is not in its registry."""


class DataError(BenchError):
    """Data is missing, incomplete or corrupt. The message says how to get it."""


class WeightsError(BenchError):
    """Model weights are missing. The message says what to install or where to put the file."""


class RunDirError(BenchError):
    """The run directory belongs to another spec or is damaged."""


class ReviewPending(BenchError):
    """A manual-review filter is waiting for a person's decisions; the run resumes once they exist."""

    exit_code = 3


def _model_in(annotation: Any) -> type[BaseModel] | None:
    """The pydantic model inside an annotation (``X``, ``X | None``, ``tuple[X, ...]``), if any."""
    if isinstance(annotation, type) and issubclass(annotation, BaseModel):
        return annotation
    for arg in typing.get_args(annotation):
        found = _model_in(arg)
        if found is not None:
            return found
    return None


def _did_you_mean(model: type[BaseModel] | None, loc: tuple[Any, ...]) -> str:
    """`` (did you mean loop.generations?)`` for an unknown key ``loc`` close to a field of ``model`` there."""
    loc = tuple(p for p in loc if not (isinstance(p, str) and p.startswith("function-")))
    path = [p for p in loc if not isinstance(p, int)]
    node = model
    for part in path[:-1]:
        field = node.model_fields.get(part) if node is not None else None
        node = _model_in(field.annotation) if field is not None else None
    if node is None or not path:
        return ""
    close = difflib.get_close_matches(str(path[-1]), list(node.model_fields), n=1, cutoff=0.6)
    if not close:
        return ""
    parts = [str(p) for p in loc[:-1]] + close
    return f" (did you mean {'.'.join(parts)}?)"


def format_validation_error(exc: ValidationError, where: str = "spec", model: type[BaseModel] | None = None) -> str:
    """One line for the first problem in ``exc`` (``invalid {where}: field.path: message (got value)``); an unknown
    key close to a field of ``model`` gets a hint. Used for specs and for plugin options alike."""
    err = exc.errors()[0]
    loc = ".".join(str(p) for p in err["loc"] if not (isinstance(p, str) and p.startswith("function-")))
    msg = err["msg"].removeprefix("Value error, ")
    value = err.get("input")
    shown = "" if isinstance(value, (dict, list)) or value is None else f" (got {value!r})"
    more = f" (+{len(exc.errors()) - 1} more)" if len(exc.errors()) > 1 else ""
    hint = _did_you_mean(model, tuple(err["loc"])) if err["type"] == "extra_forbidden" else ""
    return f"invalid {where}: {loc or '<root>'}: {msg}{shown}{more}{hint}"
