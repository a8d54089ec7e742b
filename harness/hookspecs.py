"""What a plugin may provide: the hooks. The interfaces the registered classes implement are in
:mod:`harness.interfaces`.

A plugin is any importable object with ``@hookimpl`` functions, exposed through the ``bench`` entry-point group::

    [project.entry-points.bench]
    my_plugin = "my_package.plugin"

Contribution hooks pass a *registrar*. Register a class, or a lazy ``"module:attr"`` string so that listing
plugins never imports torch::

    from harness import hookimpl

    @hookimpl
    def register_generators(register):
        register("my-gan", "my_package.gan:MyGAN")

The registered class subclasses one of :class:`Dataset`, :class:`Generator`, :class:`Classifier`, :class:`Filter`
or :class:`Tracker` (:mod:`harness.interfaces`), and declares its options as a pydantic model in ``Options``. The
harness validates the user's options with that model, so a typo in an option is an error, not a silent default.

Hooks are only ever extended with new *optional* arguments (pluggy passes only the arguments an implementation
names), so a plugin written today keeps working.

This module imports neither torch nor numpy.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import pluggy

if TYPE_CHECKING:  # pragma: no cover
    import typer

    from harness.publish.results import Results

PROJECT = "bench"
hookspec = pluggy.HookspecMarker(PROJECT)
hookimpl = pluggy.HookimplMarker(PROJECT)

#: ``register(name, obj)``: ``obj`` is a plugin class or a lazy ``"module:attr"`` string naming one.
Registrar = Callable[[str, "type | str"], None]


# --------------------------------------------------------------------------------------------------- hooks


@hookspec
def register_datasets(register: Registrar) -> None:
    """Contribute dataset plugins.

    :param register: call ``register(name, cls_or_path)`` once per dataset; ``cls`` subclasses :class:`Dataset`.
        Registering a name twice (by any plugin) is an error.
    :returns: nothing.
    """


@hookspec
def register_generators(register: Registrar) -> None:
    """Contribute generator plugins.

    :param register: call ``register(name, cls_or_path)`` once per generator; ``cls`` subclasses
        :class:`Generator`. Registering a name twice (by any plugin) is an error.
    :returns: nothing.
    """


@hookspec
def register_classifiers(register: Registrar) -> None:
    """Contribute classifier plugins.

    :param register: call ``register(name, cls_or_path)`` once per classifier; ``cls`` subclasses
        :class:`Classifier`. A name ending in ``:`` (e.g. ``"timm:"``) registers a *family*: the user then names
        ``"timm:resnet18"`` and the class receives the part after the colon as ``variant``.
    :returns: nothing.
    """


@hookspec
def register_filters(register: Registrar) -> None:
    """Contribute filter plugins.

    :param register: call ``register(name, cls_or_path)`` once per filter; ``cls`` subclasses :class:`Filter`.
    :returns: nothing.
    """


@hookspec
def register_trackers(register: Registrar) -> None:
    """Contribute experiment trackers, which ``bench run --tracker NAME`` selects per run.

    :param register: call ``register(name, cls_or_path)`` once per tracker; ``cls`` subclasses :class:`Tracker`
        (:mod:`harness.interfaces`), whose instances receive the lifecycle hooks below while the run they were
        selected for runs.
    :returns: nothing.
    """


@hookspec
def on_run_start(spec: Any, run_dir: Path) -> None:
    """Called once when a run starts or resumes, before any work unit runs.

    :param spec: the validated :class:`harness.specs.RunSpec` (frozen; do not try to change it).
    :param run_dir: the run directory. Loggers may write their own files under ``run_dir / "logs"``.
    :returns: nothing. An exception here aborts the run.
    """


@hookspec
def on_generation_end(spec: Any, seed: int, generation: int, record: Mapping[str, Any], run_dir: Path) -> None:
    """Called after every work unit of one generation of one seed has finished (also on resume).

    :param spec: the validated run spec.
    :param seed: the seed of the chain.
    :param generation: ``t``; 0 is the classifiers trained on real data only.
    :param record: that generation's metrics for this seed: ``{"classifiers": {name: {...}}, "generator": {...}}``
        (``generator`` is ``None`` at ``t = 0``). Read-only.
    :param run_dir: the run directory.
    :returns: nothing.
    """


@hookspec
def on_unit_end(spec: Any, unit: Any, record: Any, run_dir: Path) -> None:
    """Called after each work unit has finished (also on resume, for the units finished before), in the process
    that runs the loop, whichever executor ran the unit.

    :param spec: the validated run spec.
    :param unit: the :class:`harness.engine.plan.Unit` (``stage``, ``seed``, ``generation``, ``name``, ``key``).
    :param record: what the unit recorded in its ``result.json``, as its stage's pydantic model
        (:mod:`harness.engine.records`; ``record.curves()`` is its training curves or ``None``). Read-only.
    :param run_dir: the run directory.
    :returns: nothing.
    """


@hookspec
def on_run_end(spec: Any, results: Results, run_dir: Path, figures: Sequence[Path]) -> None:
    """Called once after ``results.json`` has been written (and the report drawn, when the caller draws one).

    :param spec: the validated run spec.
    :param results: the :class:`harness.publish.results.Results` written to ``run_dir / "results.json"``.
    :param run_dir: the run directory.
    :param figures: the report's figure files drawn for this run before the hook (``bench run`` draws them); empty
        when none were drawn.
    :returns: nothing.
    """


@hookspec
def register_commands(app: typer.Typer) -> None:
    """Contribute ``bench`` subcommands (as ``llm``'s ``register_commands``): the core never imports a plugin.

    :param app: the ``bench`` Typer application; add commands with ``@app.command()``. Import heavy modules
        inside the command bodies, so ``bench --help`` stays fast. A command named like one already there is left
        out (with a warning), and so are the commands of a plugin whose hook raises; a
        :class:`~harness.errors.BenchError` raised in a command is one line on stderr with its exit code.
    :returns: nothing.
    """
