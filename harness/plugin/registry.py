"""A typed registry per plugin kind: names are claimed once, unknown names say "did you mean", built-ins are lazy."""

from __future__ import annotations

import difflib
import importlib
from dataclasses import dataclass

from harness.errors import ConfigError, UnknownPluginError


class DuplicatePluginError(RuntimeError):
    """Two built-in plugins registered the same name. A packaging bug, not a user error: it is raised loudly."""


@dataclass(frozen=True)
class Entry:
    name: str
    target: type | str  # a class, or "module:attr"
    plugin: str  # the plugin (entry-point) that registered it
    distribution: str | None
    version: str | None
    builtin: bool = False

    @property
    def origin(self) -> str:
        dist = f"distribution {self.distribution}" if self.distribution else "no distribution"
        return f"plugin {self.plugin!r} ({dist})"


class Registry:
    """Maps names to plugin classes of one kind (``datasets``, ``generators``, ``classifiers``, ``filters``).

    Names ending in ``":"`` are families: ``get("timm:resnet18")`` resolves the ``"timm:"`` entry and returns the
    variant ``"resnet18"`` alongside.
    """

    def __init__(self, kind: str, base: type):
        self.kind = kind
        self.base = base
        self._entries: dict[str, Entry] = {}
        self._withdrawn: dict[str, list[Entry]] = {}  # names two non-built-in plugins registered: nobody's
        #: One line per plugin that could not be loaded (it may have provided a name asked for).
        self.unloaded: tuple[str, ...] = ()

    @property
    def noun(self) -> str:
        return self.kind[:-1]

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

    def claim(self, name: str, target: type | str, *, plugin: str, distribution: str | None = None,
              version: str | None = None, builtin: bool = False) -> list[tuple[str, str]]:
        """Register ``name`` unless another plugin holds it; return ``(plugin, what it loses)`` for each plugin
        that does not get the name. A built-in plugin keeps its names; between two other plugins neither does
        (asking for the name then says so). Two built-ins with one name raise :class:`DuplicatePluginError`."""
        if not isinstance(name, str) or not name:
            return [(plugin, f"it registered an invalid {self.noun} name {name!r}")]
        new = Entry(name, target, plugin, distribution, version, builtin)
        if name in self._withdrawn:
            others = self._withdrawn[name]
            self._withdrawn[name].append(new)
            return [(plugin, self._lost(name, others[0]))]
        old = self._entries.get(name)
        if old is None:
            self._entries[name] = new
            return []
        if old.builtin and builtin:
            self.register(name, target, plugin=plugin, distribution=distribution, version=version)  # raises
        if old.builtin:
            return [(plugin, f"its {self.noun} {name!r} is not used: a built-in {self.noun} has that name")]
        del self._entries[name]
        self._withdrawn[name] = [old, new]
        return [(plugin, self._lost(name, old)), (old.plugin, self._lost(name, new))]

    def _lost(self, name: str, other: Entry) -> str:
        return f"its {self.noun} {name!r} is not used: {other.origin} registers that name too"

    def forget_plugin(self, plugin: str) -> None:
        """Drop every name ``plugin`` registered (it turned out to be broken)."""
        self._entries = {n: e for n, e in self._entries.items() if e.plugin != plugin}

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
        withdrawn = self._withdrawn.get(name) or self._withdrawn.get(name.split(":", 1)[0] + ":")
        if withdrawn:
            who = " and ".join(e.origin for e in withdrawn)
            dists = " or ".join(sorted({e.distribution or e.plugin for e in withdrawn}))
            raise UnknownPluginError(f"{self.noun} {name!r} is registered by {who}, so neither is used; "
                                     f"uninstall {dists}, or rename it in one of them.")
        shown = [n + "<name>" if n.endswith(":") else n for n in self.names()]
        close = difflib.get_close_matches(name, self.names(), n=1, cutoff=0.5)
        hint = f" Did you mean {close[0]!r}?" if close else ""
        broken = f" Plugins that could not be loaded (one may provide it): {' | '.join(self.unloaded)}." \
            if self.unloaded else ""
        raise UnknownPluginError(f"unknown {self.noun} {name!r}.{hint} Choose from: {', '.join(shown)}.{broken}")

    def get(self, name: str) -> tuple[type, str | None]:
        """Resolve ``name`` to its class (importing a lazy target now) and the family variant."""
        entry, variant = self.entry(name)
        target = entry.target
        fix = "install its dependencies (e.g. pip install -e '.[dev]')" if entry.builtin else \
            f"fix or uninstall {entry.distribution or entry.plugin}"
        if isinstance(target, str):
            module_name, _, attr = target.partition(":")
            try:
                target = getattr(importlib.import_module(module_name), attr)
            except Exception as exc:  # noqa: BLE001 - any failure of a plugin's module is one line, never a traceback
                first = (str(exc).strip().splitlines() or [""])[0]
                raise UnknownPluginError(
                    f"{self.noun} {name!r} from {entry.distribution or entry.plugin} cannot be imported "
                    f"({type(exc).__name__}: {first}); {fix}."
                ) from exc
        if not (isinstance(target, type) and issubclass(target, self.base)):
            raise ConfigError(f"{self.kind} {name!r} from {entry.origin} resolves to {target!r}, not a subclass of "
                              f"{self.base.__name__}; {fix}.")
        return target, variant
