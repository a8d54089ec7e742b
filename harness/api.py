"""Run the loop from Python (a notebook, a script): ``harness.run({...})`` returns the validated results.

::

    import harness
    from harness.api import build

    config = {"loop": {"generations": 2}, "out": "runs"}
    results = harness.run(config)                                        # the quick preset, two generations
    results.amplification.fit.a                                          # the fitted amplification rate
    same = harness.load_results(build(config).run_dir / "results.json")  # read back, validated

The spec is layered exactly as ``bench run`` layers it (preset ← the dataset's paper defaults with
``preset="paper"`` ← the mapping) and checked against the installed plugins before any work starts.
"""

from __future__ import annotations

from collections.abc import Mapping
from pathlib import Path
from typing import Any

from harness import loop
from harness.errors import ConfigError
from harness.plugin import factory
from harness.plugin.manager import Plugins, default_plugins
from harness.publish.results import Results
from harness.specs import RunSpec, build_spec, load_config_file, resolve_spec


def build(
    spec_or_config: RunSpec | Mapping[str, Any] | str | Path,
    *,
    preset: str | None = "quick",
    plugins: Plugins | None = None,
) -> RunSpec:
    """A validated :class:`RunSpec` whose plugin names and options are checked against ``plugins``.

    :param spec_or_config: a :class:`RunSpec`, a mapping shaped like a config file, or the path of one
        (TOML, YAML or JSON). A mapping's own ``preset`` key wins over ``preset``.
    :param preset: the preset a mapping or file is layered on (``quick``, ``paper``, or ``None`` for none).
    :param plugins: the plugin manager; the installed plugins by default.
    :raises ConfigError: the spec, a plugin name or a plugin option is invalid.
    """
    plugins = plugins or default_plugins()
    if isinstance(spec_or_config, RunSpec):
        return resolve_spec(spec_or_config, plugins)
    if isinstance(spec_or_config, (str, Path)):
        config = load_config_file(Path(spec_or_config))
    elif isinstance(spec_or_config, Mapping):
        config = dict(spec_or_config)
    else:
        raise ConfigError(f"a run takes a RunSpec, a mapping or a config file path, not {type(spec_or_config).__name__}")

    return resolve_spec(build_spec(preset, config, paper_defaults=factory.paper_defaults(plugins)), plugins)


def run(
    spec_or_config: RunSpec | Mapping[str, Any] | str | Path,
    *,
    preset: str | None = "quick",
    plugins: Plugins | None = None,
    executor: Any = None,
    reporter: Any = None,
) -> Results:
    """Run (or resume) one spec and return its results (also written to ``RUN_DIR/results.json``).

    :param spec_or_config: as :func:`build`.
    :param preset: as :func:`build`.
    :param plugins: the plugin manager; the installed plugins by default.
    :param executor: where the work units run (:mod:`harness.scale.executor`); in this process by default.
    :param reporter: progress reporting (:mod:`harness.engine.progress`); none by default.
    :raises harness.errors.BenchError: a mistake the user can fix (spec, data, weights, run directory).
    """
    plugins = plugins or default_plugins()
    spec = build(spec_or_config, preset=preset, plugins=plugins)
    return loop.run(spec, plugins, reporter=reporter, executor=executor)
