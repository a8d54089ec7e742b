"""``bench run``: run (or resume) the self-consuming loop and write the results file."""

from __future__ import annotations

import contextlib
import logging
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import typer

from harness.cli import app, user_errors


def parse_seeds(text: str) -> list[int]:
    """``"0,1,2"`` or ``"0-2"`` → ``[0, 1, 2]``."""
    from harness.errors import ConfigError

    seeds: list[int] = []
    try:
        for part in text.split(","):
            part = part.strip()
            if "-" in part[1:]:
                lo, hi = part.split("-", 1)
                seeds += list(range(int(lo), int(hi) + 1))
            else:
                seeds.append(int(part))
    except ValueError:
        raise ConfigError(f"--seeds expects integers like 0,1,2 or 0-2, got {text!r}") from None
    return seeds


def overrides_from_flags(**flags: Any) -> dict[str, Any]:
    from harness.specs import deep_merge, parse_set

    out: dict[str, Any] = {}
    if flags["dataset"]:
        out["dataset"] = {"name": flags["dataset"]}
    if flags["generator"]:
        out["generator"] = {"name": flags["generator"]}
    if flags["classifier"]:
        out["classifiers"] = list(flags["classifier"])
    if flags["filter"] or flags["keep"] is not None:
        out["filter"] = {}
        if flags["filter"]:
            out["filter"]["name"] = flags["filter"]
        if flags["keep"] is not None:
            out["filter"]["keep"] = flags["keep"]
    if flags["generations"] is not None:
        out.setdefault("loop", {})["generations"] = flags["generations"]
    if flags["seeds"]:
        out["seeds"] = parse_seeds(flags["seeds"])
    for key in ("device", "precision", "data_root", "out", "preset"):
        if flags[key] is not None:
            out[key] = str(flags[key]) if isinstance(flags[key], Path) else flags[key]
    return deep_merge(out, parse_set(list(flags["set"])))


def tracker_refs(names: list[str], options: list[str]) -> list[Any]:
    """The ``--tracker`` names with their ``--tracker-option NAME.KEY=VALUE`` options (values read as in ``--set``),
    as plugin specs."""
    from harness.errors import ConfigError
    from harness.specs import PluginSpec, deep_merge, parse_set

    chosen: dict[str, dict[str, Any]] = {}
    for item in options:
        key, sep, raw = item.partition("=")
        name, dot, field = key.strip().partition(".")
        if not sep or not dot or not field:
            raise ConfigError(f"--tracker-option expects NAME.KEY=VALUE (e.g. mlflow.tracking_uri=http://host:5000), "
                              f"got {item!r}")
        if name not in names:
            raise ConfigError(f"--tracker-option {item!r} is for tracker {name!r}, which no --tracker selects")
        chosen[name] = deep_merge(chosen.get(name, {}), parse_set([f"{field}={raw}"]))
    return [PluginSpec(name=n, options=chosen.get(n, {})) for n in names]


def writable_out(out: Path) -> None:
    """Create ``out`` (the parent of run directories) and check that files can be written in it.

    :raises ConfigError: ``out`` is a file, cannot be created, or is read-only (one line naming the reason).
    """
    import tempfile

    from harness.errors import ConfigError

    if out.exists() and not out.is_dir():
        raise ConfigError(f"--out {out} is a file; give a folder (run directories are created in it)")
    try:
        out.mkdir(parents=True, exist_ok=True)
    except OSError as exc:
        raise ConfigError(f"--out {out} cannot be created: {exc.strerror or exc}") from None
    try:
        with tempfile.TemporaryFile(dir=out):
            pass
    except OSError as exc:
        raise ConfigError(f"--out {out} is not writable: {exc.strerror or exc}") from None


class _ConsoleWarnings(logging.Handler):
    def __init__(self, console: Any):
        super().__init__(logging.WARNING)
        self.console = console

    def emit(self, record: logging.LogRecord) -> None:
        from rich.markup import escape

        try:
            self.console.print(f"[yellow]warning:[/] {escape(record.getMessage())}", highlight=False, soft_wrap=True)
        except Exception:  # noqa: BLE001 - a warning never breaks a run
            self.handleError(record)


@contextlib.contextmanager
def console_warnings(console: Any) -> Iterator[None]:
    """Show the warnings the harness logs (e.g. a damaged unit computed again) as ``warning:`` lines on ``console``."""
    logger = logging.getLogger("harness")
    handler = _ConsoleWarnings(console)
    logger.addHandler(handler)
    propagate, logger.propagate = logger.propagate, False
    try:
        yield
    finally:
        logger.removeHandler(handler)
        logger.propagate = propagate


def warn_broken_plugins(plugins: Any, console: Any) -> None:
    """One ``warning:`` line per plugin that could not be loaded."""
    from rich.markup import escape

    for failed in plugins.failed:
        console.print(f"[yellow]warning:[/] {escape(failed.problem)}", highlight=False, soft_wrap=True)


def verify_run_dir(spec: Any, console: Any) -> int:
    """``bench run --verify``: one line per damaged or stale unit on stdout; the exit code (2 if any, else 0)."""
    from harness.engine.plan import plan
    from harness.engine.rundir import verify_run
    from harness.errors import RunDirError

    run_dir = spec.run_dir
    if not (run_dir / "spec.json").is_file():
        raise RunDirError(f"no run directory {run_dir} for this spec (check --out and the spec)")
    units = plan(spec)
    problems = verify_run(run_dir, units)
    for key, problem in problems:
        typer.echo(f"{key}: {problem}")
    finished = sum((u.directory(run_dir) / "result.json").exists() for u in units)
    if problems:
        console.print(f"{len(problems)} damaged or stale unit(s) in {run_dir}; `bench run` with the same spec "
                      "computes them again", markup=False, highlight=False, soft_wrap=True)
        return 2
    console.print(f"ok: {finished} of {len(units)} units finished, all intact ({run_dir})", markup=False,
                  highlight=False, soft_wrap=True)
    return 0


@app.command("run")
@user_errors
def run(
    dataset: str | None = typer.Option(None, "--dataset", "-d", help="Dataset plugin (bench list datasets)."),
    generator: str | None = typer.Option(None, "--generator", "-g", help="Generator plugin."),
    classifier: list[str] = typer.Option([], "--classifier", "-c", help="Classifier plugin (repeatable)."),
    filter: str | None = typer.Option(None, "--filter", "-f", help="Filter plugin."),
    keep: float | None = typer.Option(None, "--keep", help="Fraction of each class's candidates to keep."),
    generations: int | None = typer.Option(None, "--generations", "-T", help="Generations after generation 0."),
    seeds: str | None = typer.Option(None, "--seeds", help="Seeds: 0,1,2 or 0-2."),
    preset: str | None = typer.Option(None, "--preset", "-p", help="quick (default) or paper."),
    config: Path | None = typer.Option(None, "--config", help="A TOML, YAML or JSON spec file."),
    data_root: Path | None = typer.Option(None, "--data-root", help="Where datasets live."),
    device: str | None = typer.Option(None, "--device", help="auto | cpu | cuda | cuda:N."),
    precision: str | None = typer.Option(None, "--precision", help="auto | fp32 | bf16 | fp16."),
    out: Path | None = typer.Option(None, "--out", "-o", help="Parent directory of run directories [runs]."),
    set: list[str] = typer.Option([], "--set", help="Any spec field, KEY.PATH=VALUE (repeatable)."),
    executor: str = typer.Option("local", "--executor", help="Where work units run: local (default) or ray."),
    ray_address: str | None = typer.Option(None, "--ray-address", help="An existing Ray cluster (with --executor ray)."),
    threads: int | None = typer.Option(
        None, "--threads", help="torch intra-op threads per unit [a Ray task's CPUs, else OMP_NUM_THREADS, else "
        "the CPUs this process may use].",
    ),
    dry_run: bool = typer.Option(False, "--dry-run", help="Check the data; print the resolved spec and the plan; run nothing."),
    verify: bool = typer.Option(False, "--verify", help="Check the run directory's finished units (sizes, sha256); "
                                "one line per damaged unit on stdout, exit 2 if any; run nothing."),
    quiet: bool = typer.Option(False, "--quiet", "-q", help="No progress bars or summary."),
    tracker: list[str] = typer.Option(
        [], "--tracker", help="Log the run to an experiment tracker (repeatable): mlflow, tensorboard, wandb "
        "(bench list trackers). Files under the run directory by default; W&B offline.",
    ),
    tracker_option: list[str] = typer.Option(
        [], "--tracker-option", help="A tracker's option, NAME.KEY=VALUE (repeatable), e.g. "
        "mlflow.tracking_uri=http://host:5000 or wandb.mode=online.",
    ),
) -> None:
    """Run the self-consuming loop; print the results path on stdout and a summary on stderr.

    Starting the same spec again resumes it from the last finished work unit.
    """
    import json

    from rich.console import Console
    from rich.markup import escape

    from harness.plugin.manager import default_plugins
    from harness.plugin import factory
    from harness.specs import build_spec, load_config_file, resolve_spec

    flags = dict(dataset=dataset, generator=generator, classifier=classifier, filter=filter, keep=keep,
                 generations=generations, seeds=seeds, preset=preset, data_root=data_root, device=device,
                 precision=precision, out=out, set=set)
    plugins = default_plugins()
    cfg = load_config_file(config) if config else {}

    spec = build_spec("quick", cfg, overrides_from_flags(**flags), paper_defaults=factory.paper_defaults(plugins))
    spec = resolve_spec(spec, plugins)
    trackers = tracker_refs(tracker, tracker_option)
    console = Console(stderr=True)
    if verify:
        raise typer.Exit(verify_run_dir(spec, console))
    if dry_run:
        from harness.engine.plan import plan
        from harness.engine.stages import RunContext

        data = RunContext(spec, spec.run_dir, plugins).dataset_plugin.check()  # missing data: DataError, exit 2
        typer.echo(json.dumps({"run_dir": str(spec.run_dir), "spec_hash": spec.spec_hash(),
                               "spec": spec.model_dump(mode="json"), "data": data,
                               "units": [u.key for u in plan(spec)]}, indent=2))
        return

    from harness import loop
    from harness.scale.executor import create_executor
    from harness.engine.progress import NullReporter, RichReporter, log_to_stream

    runner = create_executor(executor, ray_address=ray_address, torch_threads=threads)

    warn_broken_plugins(plugins, console)
    writable_out(spec.out)
    if spec.run_dir.exists() and not spec.run_dir.is_dir():
        from harness.errors import RunDirError

        raise RunDirError(f"{spec.run_dir} is a file, where this spec's run directory goes; move it or use "
                          "another --out")
    total = len(spec.seeds) * (spec.loop.generations + 1)
    bars = not quiet and console.is_terminal  # else (a log file, a pipe): a plain line per unit and generation
    reporter = RichReporter(total, console=console) if bars else NullReporter()
    lines = log_to_stream(sys.stderr) if not (quiet or bars) else contextlib.nullcontext()
    from harness.errors import BenchError
    from harness.publish.report import write_report

    figures: list[Path] | None = None

    def draw(run_dir: Path) -> list[Path]:
        """The report, drawn before the run's end hooks so that trackers log its figures; a warning if it fails."""
        nonlocal figures
        try:
            figures = write_report(run_dir)
        except BenchError as exc:
            console.print(f"[yellow]warning:[/] report: {escape(str(exc))}")
        return figures or []

    try:
        with console_warnings(console), lines:
            results = loop.run(spec, plugins, reporter=reporter, executor=runner, trackers=trackers, report=draw)
    except Exception as exc:
        from harness.engine.rundir import disk_full
        from harness.errors import RunDirError

        if disk_full(exc):
            raise RunDirError(f"the disk holding {spec.run_dir} is full; free some space and run the same command "
                              "again: finished units are kept, the unit being written is computed again") from None
        raise
    finally:
        reporter.close()
        close = getattr(runner, "close", None)
        if close is not None:
            close()
    typer.echo(str(spec.run_dir / "results.json"))
    if not quiet:
        from harness.publish.summary import print_summary

        print_summary(results, console)
    if figures is not None and not quiet:
        console.print(f"figures: {spec.run_dir / 'report'} ({len(figures)} PNG)")
