"""The plugin manager, built in a factory (never at import time), and the registries it fills."""

from __future__ import annotations

import importlib.metadata as md
from dataclasses import dataclass, field
from functools import cache
from typing import Any

import pluggy

from harness import hookspecs
from harness.hookspecs import PROJECT
from harness.interfaces import BASES, KINDS
from harness.plugin.registry import Registry

ENTRY_POINT_GROUP = PROJECT


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``bench plugins`` shows it."""

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...] = ()
    error: str | None = None  # set when the plugin failed to import


@dataclass
class Plugins:
    """A plugin manager with its registries filled."""

    pm: pluggy.PluginManager
    registries: dict[str, Registry]
    infos: list[PluginInfo] = field(default_factory=list)

    def registry(self, kind: str) -> Registry:
        return self.registries[kind]

    @property
    def failed(self) -> list[PluginInfo]:
        return [p for p in self.infos if p.error]


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def create_plugin_manager(*, extra_plugins: tuple[Any, ...] = (), load_entry_points: bool = True) -> Plugins:
    """Build a plugin manager: hookspecs, every ``bench`` entry point, then ``extra_plugins`` (tests).

    A plugin that fails to import is recorded (with its distribution) instead of breaking the CLI; a
    misspelled hook implementation raises :class:`pluggy.PluginValidationError` (``check_pending``).
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    infos: list[PluginInfo] = []
    owners: dict[int, PluginInfo] = {}
    if load_entry_points:
        seen: set[tuple[str, str]] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist, version = _dist_of(ep)
            if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            try:
                plugin = ep.load()
            except Exception as exc:  # noqa: BLE001 - any import failure is reported, never fatal
                infos.append(PluginInfo(ep.name, dist, version, error=f"{type(exc).__name__}: {exc}"))
                continue
            if pm.is_registered(plugin):
                continue
            pm.register(plugin, name=ep.name)
            info = PluginInfo(ep.name, dist, version)
            infos.append(info)
            owners[id(plugin)] = info
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        pm.register(plugin, name=name)
        info = PluginInfo(name, None, None)
        infos.append(info)
        owners[id(plugin)] = info
    pm.check_pending()

    infos = [
        PluginInfo(i.name, i.distribution, i.version, _hooks_of(pm, i.name), i.error) if not i.error else i
        for i in infos
    ]
    by_name = {i.name: i for i in infos}
    registries = {kind: Registry(kind, BASES[kind]) for kind in KINDS}
    for kind in KINDS:
        hook = getattr(pm.hook, f"register_{kind}")
        for impl in hook.get_hookimpls():
            info = by_name.get(impl.plugin_name, PluginInfo(impl.plugin_name, None, None))

            def register(name: str, target: type | str, _info: PluginInfo = info, _reg: Registry = registries[kind]):
                _reg.register(name, target, plugin=_info.name, distribution=_info.distribution, version=_info.version)

            impl.function(register=register)
    return Plugins(pm, registries, infos)


def _hooks_of(pm: pluggy.PluginManager, name: str) -> tuple[str, ...]:
    plugin = pm.get_plugin(name)
    if plugin is None:
        return ()
    return tuple(sorted(h.name for h in (pm.get_hookcallers(plugin) or [])))


@cache
def default_plugins() -> Plugins:
    """The process-wide plugin manager of installed plugins (built on first use)."""
    return create_plugin_manager()
