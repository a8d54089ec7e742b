"""TensorBoard: event files under ``RUN_DIR/tensorboard``, one subfolder (a TensorBoard run) per ``bench run``.

Scalars for the metrics of each generation (step = the generation) and the training curves (step = the epoch or
optimizer step), the spec as a text table (``params``), and the report's PNG figures as images (TensorBoard keeps
no other files). ``tensorboard --logdir RUN_DIR/tensorboard`` shows them. The writer is torch's
:class:`torch.utils.tensorboard.SummaryWriter`, which needs the ``tensorboard`` package.
"""

from __future__ import annotations

import os
import time
from collections.abc import Mapping, Sequence
from pathlib import Path

from pydantic import Field

from harness.interfaces import Options, Param, Tracker


class TensorBoardOptions(Options):
    log_dir: Path | None = Field(
        None, description="The folder TensorBoard reads (tensorboard --logdir); default RUN_DIR/tensorboard. Each "
        "bench run (start or resume) writes its own subfolder in it.")


def params_table(params: Mapping[str, Param]) -> str:
    """``params`` as a Markdown table, which TensorBoard's text dashboard renders."""
    rows = [f"| {k} | {'' if v is None else str(v).replace('|', '&#124;')} |" for k, v in params.items()]
    return "\n".join(["| parameter | value |", "| --- | --- |", *rows])


class TensorBoardTracker(Tracker):
    """Logs a run as TensorBoard event files (docs/trackers.md)."""

    Options = TensorBoardOptions
    library = "tensorboard"
    requirements = ("tensorboard>=2.21,<3",)

    def start(self, *, name: str, params: Mapping[str, Param], run_dir: Path) -> None:
        from torch.utils.tensorboard import SummaryWriter

        o: TensorBoardOptions = self.options  # type: ignore[assignment]
        root = o.log_dir if o.log_dir is not None else run_dir / "tensorboard"
        self.log_dir = root / f"{time.strftime('%Y%m%d-%H%M%S')}-{os.getpid()}"
        self.writer = SummaryWriter(log_dir=str(self.log_dir))
        self.writer.add_text("params", params_table(params))
        self.writer.add_text("run", name)

    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        for key, value in metrics.items():
            self.writer.add_scalar(key, value, global_step=step)

    def log_files(self, paths: Sequence[Path], *, folder: str) -> None:
        import numpy as np
        from PIL import Image

        for path in paths:
            if path.suffix.lower() != ".png":
                continue
            with Image.open(path) as image:
                pixels = np.asarray(image.convert("RGB"))
            tag = f"{folder}/{path.stem}" if folder else path.stem
            self.writer.add_image(tag, pixels, dataformats="HWC")

    def finish(self, *, failed: bool) -> None:
        if failed:
            self.writer.add_text("run", "the run stopped on an error")
        self.writer.close()
