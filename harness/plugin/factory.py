"""The one place a plugin spec becomes a plugin: look the name up, validate the options once, build it.

``create("generators", spec.generator, num_classes=10, ...)`` resolves the name in the registry of the given
:class:`~harness.plugin.manager.Plugins` (the installed plugins by default), validates the user's options with the
class's ``Options`` model (a :class:`ConfigError` of one line if they are wrong) and calls the class with the
validated options and the context the caller passes. A classifier family (``timm:resnet18``) also gets its
``variant``. :func:`tracking` builds the trackers a run selects and attaches them to the plugin manager.
"""

from __future__ import annotations

import contextlib
import logging
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from pydantic import ValidationError

from harness.errors import ConfigError, format_validation_error
from harness.interfaces import Options
from harness.plugin.manager import Plugins, default_plugins

log = logging.getLogger("harness.trackers")


class PluginRef(Protocol):
    """What names a plugin in a spec (:class:`harness.specs.PluginSpec`): its name and its options."""

    @property
    def name(self) -> str: ...

    @property
    def options(self) -> Mapping[str, Any]: ...


@dataclass(frozen=True)
class Resolved:
    """A plugin spec resolved against a registry: the class, the family variant and the validated options."""

    cls: type
    variant: str | None
    options: Options


def plugin_class(kind: str, name: str, plugins: Plugins | None = None) -> tuple[type, str | None]:
    """The class registered as ``name`` in the ``kind`` registry and the family variant (``None`` if plain)."""
    return (plugins or default_plugins()).registry(kind).get(name)


def validate_options(kind: str, ref: PluginRef, cls: type) -> Options:
    """``ref.options`` validated with ``cls.Options``; a one-line :class:`ConfigError` if they are wrong."""
    try:
        return cls.Options.model_validate(dict(ref.options))
    except ValidationError as exc:
        where = f"options for {kind[:-1]} {ref.name!r}"
        raise ConfigError(format_validation_error(exc, where=where, model=cls.Options)) from None


def resolve(kind: str, ref: PluginRef, plugins: Plugins | None = None) -> Resolved:
    """Look ``ref`` up in the ``kind`` registry and validate its options."""
    cls, variant = plugin_class(kind, ref.name, plugins)
    return Resolved(cls, variant, validate_options(kind, ref, cls))


def create(kind: str, ref: PluginRef, *, plugins: Plugins | None = None, **context: Any) -> Any:
    """A new instance of the plugin ``ref`` names, built with its validated options and ``context``."""
    resolved = resolve(kind, ref, plugins)
    if kind == "classifiers":
        context["variant"] = resolved.variant
    return resolved.cls(resolved.options, **context)


def preflight(kind: str, ref: PluginRef, plugins: Plugins | None = None) -> Resolved:
    """Resolve ``ref`` and run its class's cheap ``preflight`` check (e.g. its weights are on disk; a classifier
    family's variant exists) on the validated options. Datasets have none."""
    resolved = resolve(kind, ref, plugins)
    if kind == "classifiers":
        resolved.cls.preflight(resolved.options, variant=resolved.variant)
    elif kind != "datasets":
        resolved.cls.preflight(resolved.options)
    return resolved


@contextlib.contextmanager
def tracking(refs: Sequence[PluginRef], plugins: Plugins | None = None) -> Iterator[list[Any]]:
    """The trackers ``refs`` name (``bench run --tracker``), attached to ``plugins`` for the block: each resolved,
    preflighted (its library is installed: else a :class:`ConfigError` before any work) and built, then registered
    on the plugin manager, so it receives the lifecycle hooks; on leaving, unregistered and finished once, as
    failed when the block raises (a run that ends normally has finished them in ``on_run_end``)."""
    plugins = plugins or default_plugins()
    names = [ref.name for ref in refs]
    twice = next((n for i, n in enumerate(names) if n in names[:i]), None)
    if twice is not None:
        raise ConfigError(f"tracker {twice!r} is selected twice; select each tracker once")
    trackers = []
    for ref in refs:
        resolved = preflight("trackers", ref, plugins)
        tracker = resolved.cls(resolved.options)
        tracker.name = ref.name
        trackers.append(tracker)
    for tracker, name in zip(trackers, names, strict=True):
        plugins.pm.register(tracker, name=f"tracker:{name}:{id(tracker)}")
    failed = True
    try:
        yield trackers
        failed = False
    finally:
        for tracker in trackers:
            plugins.pm.unregister(tracker)
            try:
                tracker.end(failed=failed)
            except Exception:  # noqa: BLE001 - closing a tracker never hides the run's own error
                if not failed:
                    raise
                log.warning("tracker %r could not be closed after the run failed", tracker.name, exc_info=True)


def paper_defaults(plugins: Plugins | None = None) -> Callable[[str], Mapping[str, Any]]:
    """:func:`harness.specs.build_spec`'s ``paper_defaults``: the spec layer a dataset declares for the ``paper``
    preset, looked up in ``plugins``."""

    def of(dataset: str) -> Mapping[str, Any]:
        cls, _ = plugin_class("datasets", dataset, plugins)
        return cls.paper_defaults

    return of
