"""A typed registry per plugin kind: duplicates raise, unknown names say "did you mean", built-ins are lazy."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from harness.errors import UnknownPluginError


class DuplicatePluginError(RuntimeError):
    """Two plugins registered the same name. A packaging bug, not a user error: it is raised loudly."""


@dataclass(frozen=True)
class Entry:
    name: str
    target: type | str  # a class, or "module:attr"
    plugin: str  # the plugin (entry-point) that registered it
    distribution: str | None
    version: str | None


class Registry:
    """Maps names to plugin classes of one kind (``datasets``, ``generators``, ``classifiers``, ``filters``).

    Names ending in ``":"`` are families: ``get("timm:resnet18")`` resolves the ``"timm:"`` entry and returns the
    variant ``"resnet18"`` alongside.
    """

    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry] = {}

    def register(self, name: str, target: type | str, *, plugin: str = "?", distribution=None, version=None) -> None:
        if not isinstance(name, str) or not name:
            raise ValueError(f"{self.kind}: plugin names must be non-empty strings, got {name!r}")
        if name in self._entries:
            other = self._entries[name]
            raise DuplicatePluginError(
                f"{self.kind} {name!r} is registered twice: by {other.plugin} ({other.distribution}) "
                f"and by {plugin} ({distribution})"
            )
        self._entries[name] = Entry(name, target, plugin, distribution, version)

    def names(self) -> list[str]:
        return sorted(self._entries)

    def entries(self) -> list[Entry]:
        return [self._entries[n] for n in self.names()]

    def __contains__(self, name: str) -> bool:
        try:
            self.entry(name)
        except UnknownPluginError:
            return False
        return True

    def entry(self, name: str) -> tuple[Entry, str | None]:
        """The entry for ``name`` and the family variant (``None`` for plain names)."""
        if name in self._entries and not name.endswith(":"):
            return self._entries[name], None
        if ":" in name:
            family, variant = name.split(":", 1)
            if f"{family}:" in self._entries and variant:
                return self._entries[f"{family}:"], variant
        shown = [n + "<name>" if n.endswith(":") else n for n in self.names()]
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        raise UnknownPluginError(f"unknown {self.kind[:-1]} {name!r}.{hint} Choose from: {', '.join(shown)}.")

    def get(self, name: str) -> tuple[type, str | None]:
        """Resolve ``name`` to its class (importing a lazy target now) and the family variant."""
        entry, variant = self.entry(name)
        target = entry.target
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module_name), attr)
            except ImportError as exc:
                raise UnknownPluginError(
                    f"{self.kind[:-1]} {name!r} from {entry.distribution or entry.plugin} cannot be imported "
                    f"({exc}); install its dependencies (e.g. pip install -e '.[dev]')."
                ) from exc
        if not (isinstance(target, type) and issubclass(target, self.base)):
            raise TypeError(f"{self.kind} {name!r} resolves to {target!r}, not a subclass of {self.base.__name__}")
        return target, variant
