"""The plugin manager, built in a factory (never at import time), and the registries it fills.

Loading plugins never fails as a whole: each plugin is imported, registered and validated on its own, and one
that cannot be used is recorded with what is wrong and the distribution that ships it (``bench plugins`` shows
it, ``bench list`` and ``bench run`` warn about it) while the others work. What is wrong can be:

- it does not import (a missing module, an import error, any exception at import time): nothing of it is used;
- it implements a hook that does not exist (``register_generator`` for ``register_generators``) or with the wrong
  arguments: it is unregistered, nothing of it is used;
- its registration hook raises: nothing it registered in that hook is used;
- it registers a name another plugin holds. The built-in plugins (the ``bench-bias-loops`` distribution) always
  keep their names; between two other plugins neither keeps it, and asking for it is an error naming both.
"""

from __future__ import annotations

import difflib
import importlib.metadata as md
from dataclasses import dataclass, field, replace
from functools import cache
from typing import Any

import pluggy

from harness import hookspecs
from harness.hookspecs import PROJECT
from harness.interfaces import BASES, KINDS
from harness.plugin.registry import Registry

ENTRY_POINT_GROUP = PROJECT
#: The distribution that ships the built-in plugins: its plugins win every name clash.
BUILTIN_DISTRIBUTION = "bench-bias-loops"


@dataclass(frozen=True)
class PluginInfo:
    """One plugin as ``bench plugins`` shows it.

    :ivar error: why the plugin cannot be used at all (it failed to import, or to validate); ``None`` if it loaded.
    :ivar clashes: the names it registered that another plugin holds (they are not its to use).
    """

    name: str
    distribution: str | None
    version: str | None
    hooks: tuple[str, ...] = ()
    error: str | None = None
    clashes: tuple[str, ...] = ()

    @property
    def builtin(self) -> bool:
        return self.distribution == BUILTIN_DISTRIBUTION

    @property
    def origin(self) -> str:
        """``plugin 'x' (distribution y)``: who to blame, in words."""
        dist = f"distribution {self.distribution}" if self.distribution else "no distribution"
        return f"plugin {self.name!r} ({dist})"

    @property
    def fix(self) -> str:
        return f"fix or uninstall {self.distribution}" if self.distribution else f"fix or remove plugin {self.name!r}"

    @property
    def problem(self) -> str | None:
        """One line: what is wrong with the plugin and what to do; ``None`` when nothing is."""
        if self.error:
            return f"{self.origin} cannot be used: {self.error}; {self.fix}"
        if self.clashes:
            return f"{self.origin}: {'; '.join(self.clashes)}; {self.fix}"
        return None


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
        """The plugins with a problem (failed to load, or registered a name they cannot have)."""
        return [p for p in self.infos if p.problem]


def _dist_of(ep: md.EntryPoint) -> tuple[str | None, str | None]:
    dist = getattr(ep, "dist", None)
    if dist is None:
        return None, None
    return dist.metadata["Name"], dist.version


def _one_line(exc: BaseException) -> str:
    text = str(exc).strip().splitlines()
    return f"{type(exc).__name__}: {text[0]}" if text else type(exc).__name__


def _unknown_hooks(pm: pluggy.PluginManager, plugin: Any) -> list[str]:
    """The hooks ``plugin`` implements that no hookspec declares (``PluginManager.check_pending``, per plugin)."""
    unknown = []
    for caller in pm.get_hookcallers(plugin) or []:
        if not caller.has_spec() and any(i.plugin is plugin and not i.optionalhook for i in caller.get_hookimpls()):
            unknown.append(caller.name)
    return sorted(unknown)


def _hook_hint(name: str) -> str:
    specs = [n for n in dir(hookspecs) if isinstance(getattr(getattr(hookspecs, n), "bench_spec", None), dict)]
    close = difflib.get_close_matches(name, specs, n=1, cutoff=0.6)
    return f" (did you mean {close[0]!r}?)" if close else ""


def _register(pm: pluggy.PluginManager, plugin: Any, info: PluginInfo) -> PluginInfo:
    """Register ``plugin`` and validate it alone; on any problem unregister it and record the problem."""
    try:
        if pm.is_registered(plugin):
            return replace(info, error=f"the same object is already registered as {pm.get_name(plugin)!r}")
        if pm.get_plugin(info.name) is not None:
            return replace(info, error=f"another plugin is registered under the entry-point name {info.name!r}")
        pm.register(plugin, name=info.name)
    except pluggy.PluginValidationError as exc:
        return replace(info, error=f"invalid hook implementation: {_one_line(exc)}")
    except Exception as exc:  # noqa: BLE001 - whatever a plugin does wrong is reported, never fatal
        return replace(info, error=f"cannot be registered: {_one_line(exc)}")
    unknown = _unknown_hooks(pm, plugin)
    if unknown:
        pm.unregister(plugin)
        what = ", ".join(f"{h!r}{_hook_hint(h)}" for h in unknown)
        return replace(info, error=f"unknown hook {what}")
    return info


def create_plugin_manager(*, extra_plugins: tuple[Any, ...] = (), load_entry_points: bool = True) -> Plugins:
    """Build a plugin manager: hookspecs, every ``bench`` entry point, then ``extra_plugins`` (tests).

    Never raises for a plugin's fault: see the module docstring for what is recorded instead.
    """
    pm = pluggy.PluginManager(PROJECT)
    pm.add_hookspecs(hookspecs)
    loaded: list[tuple[PluginInfo, Any]] = []  # registered plugins, in the order their names are claimed
    broken: list[PluginInfo] = []
    if load_entry_points:
        seen: set[tuple[str, str]] = set()
        for ep in sorted(md.entry_points(group=ENTRY_POINT_GROUP), key=lambda e: e.name):
            dist, version = _dist_of(ep)
            if (ep.name, ep.value) in seen:  # the same distribution visible twice on sys.path
                continue
            seen.add((ep.name, ep.value))
            info = PluginInfo(ep.name, dist, version)
            try:
                plugin = ep.load()
            except BaseException as exc:  # noqa: BLE001 - SystemExit at import time included: never fatal
                if isinstance(exc, KeyboardInterrupt):
                    raise
                broken.append(replace(info, error=f"failed to import: {_one_line(exc)}"))
                continue
            if pm.is_registered(plugin):  # two entry points naming one module
                continue
            info = _register(pm, plugin, info)
            (broken.append(info) if info.error else loaded.append((info, plugin)))
    for plugin in extra_plugins:
        name = getattr(plugin, "__name__", None) or type(plugin).__name__
        info = _register(pm, plugin, PluginInfo(name, None, None))
        (broken.append(info) if info.error else loaded.append((info, plugin)))
    loaded.sort(key=lambda item: not item[0].builtin)  # built-ins claim their names first (stable otherwise)

    registries = {kind: Registry(kind, BASES[kind]) for kind in KINDS}
    clashes: dict[str, list[str]] = {}
    failed: dict[str, str] = {}
    for kind in KINDS:
        registry = registries[kind]
        for info, plugin in loaded:
            if info.name in failed:
                continue
            impls = [i for i in getattr(pm.hook, f"register_{kind}").get_hookimpls() if i.plugin is plugin]
            for impl in impls:
                staged: list[tuple[str, Any]] = []
                try:
                    impl.function(register=lambda name, target, _s=staged: _s.append((name, target)))
                except Exception as exc:  # noqa: BLE001 - a plugin's bug is reported, never fatal
                    failed[info.name] = f"register_{kind} raised {_one_line(exc)}"
                    continue
                for name, target in staged:
                    lost = registry.claim(name, target, plugin=info.name, distribution=info.distribution,
                                          version=info.version, builtin=info.builtin)
                    for who, what in lost:
                        clashes.setdefault(who, []).append(what)
    infos = []
    for info, plugin in loaded:
        if info.name in failed:
            pm.unregister(plugin)
            for registry in registries.values():
                registry.forget_plugin(info.name)
            info = replace(info, error=failed[info.name])
        else:
            info = replace(info, hooks=_hooks_of(pm, info.name), clashes=tuple(clashes.get(info.name, ())))
        infos.append(info)
    infos += broken
    unusable = [i for i in infos if i.error]
    for registry in registries.values():
        registry.unloaded = tuple(f"{i.origin}: {i.error}; {i.fix}" for i in unusable)
    return Plugins(pm, registries, sorted(infos, key=lambda i: i.name))


def _hooks_of(pm: pluggy.PluginManager, name: str) -> tuple[str, ...]:
    plugin = pm.get_plugin(name)
    if plugin is None:
        return ()
    return tuple(sorted(h.name for h in (pm.get_hookcallers(plugin) or [])))


@cache
def default_plugins() -> Plugins:
    """The process-wide plugin manager of installed plugins (built on first use)."""
    return create_plugin_manager()
