"""Weights & Biases: an offline W&B run under ``RUN_DIR/wandb`` by default, which never touches the network.

The spec is the run's config; the metrics of each generation are plotted against ``generation`` and each training
curve against its own step (``curves/…/epoch`` or ``curves/…/step``, with ``define_metric``); the report's PNG
figures are logged as images, the other figure files (PDF, SVG) and ``results.json`` copied into the run's files. ``wandb sync
RUN_DIR/wandb/offline-run-*`` uploads an offline run later; ``wandb leet inspect --summary RUN_DIR/wandb`` reads
it here. ``mode: online`` logs live (and needs ``wandb login``): only when asked for.
"""

from __future__ import annotations

import shutil
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Literal

from pydantic import Field

from harness.interfaces import Options, Param, Tracker


class WandbOptions(Options):
    mode: Literal["offline", "online", "disabled"] = Field(
        "offline", description="offline (default): files only, no network; online: log to the W&B server.")
    project: str = Field("bench", min_length=1, description="The W&B project.")
    entity: str | None = Field(None, description="The W&B team or user (online); default: the logged-in user's.")
    dir: Path | None = Field(None, description="The folder W&B writes its wandb/ folder in; default the run directory.")


class WandbTracker(Tracker):
    """Logs a run to Weights & Biases, offline by default (docs/trackers.md)."""

    Options = WandbOptions
    library = "wandb"
    requirements = ("wandb>=0.31,<1",)

    def start(self, *, name: str, params: Mapping[str, Param], run_dir: Path) -> None:
        import wandb

        o: WandbOptions = self.options  # type: ignore[assignment]
        root = o.dir if o.dir is not None else run_dir
        root.mkdir(parents=True, exist_ok=True)
        settings = wandb.Settings(silent=True, console="off", disable_git=True, disable_code=True, save_code=False,
                                  reinit="create_new")
        self.run = wandb.init(mode=o.mode, project=o.project, entity=o.entity, name=name, dir=str(root),
                              config=dict(params), settings=settings)
        self._axes: set[str] = set()
        self._defined: set[str] = set()

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        if axis not in self._axes:
            self.run.define_metric(axis, hidden=True)
            self._axes.add(axis)
        for key in metrics:
            if key not in self._defined:
                self.run.define_metric(key, step_metric=axis)
                self._defined.add(key)
        self.run.log({**metrics, axis: step})

    def log_files(self, paths: Sequence[Path], *, folder: str) -> None:
        import wandb

        images = {f"{folder}/{p.stem}" if folder else p.stem: wandb.Image(str(p)) for p in paths
                  if p.suffix.lower() == ".png"}
        if images:
            self.run.log(images)
        files = Path(self.run.dir) / folder  # the run's files, uploaded by wandb sync (copies: the run dir may move)
        for path in paths:
            if path.suffix.lower() != ".png":  # PNGs are in the run's media already
                files.mkdir(parents=True, exist_ok=True)
                shutil.copyfile(path, files / path.name)

    def finish(self, *, failed: bool) -> None:
        self.run.finish(exit_code=1 if failed else 0)
