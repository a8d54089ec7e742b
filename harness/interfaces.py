"""The interfaces a plugin implements: the five plugin base classes, their ``Options``, and the runtime and
contexts the harness hands them. The hooks that register them are in :mod:`harness.hookspecs`.

This module imports neither torch nor numpy (only for type checking).
"""

from __future__ import annotations

import importlib.util
import json
import logging
import math
from abc import ABC, abstractmethod
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING, Any, ClassVar, Literal, Protocol

from pydantic import BaseModel, ConfigDict

from harness.hookspecs import hookimpl

if TYPE_CHECKING:  # pragma: no cover
    import torch
    from torch import nn

    from harness.imageset import ImageSet


# --------------------------------------------------------------------------------------------------- options


class Options(BaseModel):
    """Base of every plugin's options model: unknown options are errors, values are immutable."""

    model_config = ConfigDict(extra="forbid", frozen=True)


# --------------------------------------------------------------------------------------------------- runtime


class Reporter(Protocol):
    """Progress reporting handed to plugins. ``with reporter.task("train", total=steps) as t: t.advance()``."""

    def task(self, description: str, total: int | None) -> Any: ...


@dataclass(frozen=True)
class Runtime:
    """Where and how a plugin runs: the harness decides, the plugin obeys.

    :ivar device: a torch device string (``"cpu"``, ``"cuda"``, ``"cuda:1"``).
    :ivar precision: ``"fp32"``, ``"bf16"`` or ``"fp16"``: the autocast dtype for heavy compute.
    :ivar seed: the seed of this work unit; the harness has already seeded python, numpy and torch with it.
    :ivar reporter: progress reporting (nested under the harness's generation and stage bars).
    :ivar workdir: a scratch directory private to this work unit (kept for resumption by the plugin if it wishes).
    """

    device: str
    precision: Literal["fp32", "bf16", "fp16"]
    seed: int
    reporter: Reporter
    workdir: Path

    @property
    def autocast_dtype(self) -> torch.dtype | None:
        import torch

        return {"fp32": None, "bf16": torch.bfloat16, "fp16": torch.float16}[self.precision]

    def autocast(self) -> torch.autocast:
        """``with runtime.autocast():`` runs the heavy compute at the run's precision on its device (fp32: autocast
        off)."""
        import torch

        dtype = self.autocast_dtype
        return torch.autocast(torch.device(self.device).type, dtype=dtype, enabled=dtype is not None)

    def grad_scaler(self) -> torch.amp.GradScaler:
        """A gradient scaler, enabled for fp16 only (its narrow range underflows small gradients); with bf16/fp32
        ``scale``, ``unscale_``, ``step`` and ``update`` pass through. One per optimizer."""
        import torch

        return torch.amp.GradScaler(torch.device(self.device).type, enabled=self.precision == "fp16")


# --------------------------------------------------------------------------------------------------- datasets


@dataclass(frozen=True)
class DatasetBundle:
    """What a dataset plugin gives the loop (SPEC §1).

    :ivar train: real training images (``origin = 0``) with labels and subgroups.
    :ivar test: real test images with labels and subgroups.
    :ivar class_names: ``L`` names; they feed prompts and CLIP.
    :ivar subgroup_names: ``"global"`` scope: ``G`` names; ``"per_class"`` scope: one tuple of ``G`` names per class.
    :ivar subgroup_scope: ``"global"`` when one attribute cuts across all classes, ``"per_class"`` otherwise.
    :ivar variants: named evaluation variants of the test set (e.g. Hard ImageNet ablations); same labels.
    :ivar source: provenance recorded in the results: at least ``source``, ``num_images`` and ``sha256``.
    """

    train: ImageSet
    test: ImageSet
    class_names: tuple[str, ...]
    subgroup_names: tuple[str, ...] | tuple[tuple[str, ...], ...]
    subgroup_scope: Literal["global", "per_class"]
    variants: Mapping[str, ImageSet] = field(default_factory=dict)
    source: Mapping[str, Any] = field(default_factory=dict)

    @property
    def num_classes(self) -> int:
        return len(self.class_names)

    @property
    def num_subgroups(self) -> int:
        names = self.subgroup_names
        return len(names[0]) if self.subgroup_scope == "per_class" else len(names)


class Dataset(ABC):
    """A dataset plugin. Construct cheaply; do the work in :meth:`load`.

    Follows torchvision's pattern: files live under ``data_root``; when they are missing or corrupt,
    raise :class:`harness.errors.DataError` with one sentence saying how to get them. Never print.
    """

    Options: ClassVar[type[Options]] = Options
    #: A partial run spec the ``paper`` preset merges for this dataset (e.g. ``{"filter": {"keep": 0.7}}``).
    paper_defaults: ClassVar[Mapping[str, Any]] = {}

    def __init__(self, options: Options, *, data_root: Path | None = None, cache_dir: Path | None = None):
        self.options = options
        self.data_root = data_root
        self.cache_dir = cache_dir

    @abstractmethod
    def load(self) -> DatasetBundle:
        """Load (and verify) the data. Deterministic: the same options give the same bundle."""

    def check(self) -> str:
        """Verify the data is present and valid without loading it all; return a one-line description.

        :raises harness.errors.DataError: with how to get the data. The default loads it.
        """
        bundle = self.load()
        return f"{len(bundle.train)} train / {len(bundle.test)} test images"

    def measure_subgroups(self, images: torch.Tensor, labels: torch.Tensor) -> torch.Tensor | None:
        """Subgroup of each image measured from pixels, where the attribute is observable (e.g. colour).

        Used for ``u_t`` (SPEC §4). Return ``None`` (the default) when it is not observable; the harness then
        estimates subgroups with an oracle trained to predict them.
        """
        return None


# --------------------------------------------------------------------------------------------------- generators


class Generator(ABC):
    """A class-conditional generator, created anew every generation (never fine-tuned across generations).

    Constructor arguments are its saved config. Weights travel through :meth:`state_dict`, which the harness
    writes with safetensors, so it must be a flat ``{name: tensor}`` mapping.
    """

    Options: ClassVar[type[Options]] = Options

    def __init__(
        self,
        options: Options,
        *,
        num_classes: int,
        channels: int,
        image_size: int,
        class_names: Sequence[str],
        runtime: Runtime,
    ):
        self.options = options
        self.num_classes = num_classes
        self.channels = channels
        self.image_size = image_size
        self.class_names = tuple(class_names)
        self.runtime = runtime

    @classmethod
    def preflight(cls, options: Options) -> None:
        """Called once when a run starts, before any work: raise :class:`harness.errors.WeightsError` (or
        ``ConfigError``) now if the options name weights that are not on disk. Must be cheap; the default checks
        nothing."""

    def check_data(self, data: ImageSet, name: str, min_images: int = 1) -> int:
        """Raise ``ValueError`` unless ``data`` has the ``C×H×W`` this generator was built for and at least
        ``min_images`` images; return their number."""
        c, h, w = data.shape
        if (c, h, w) != (self.channels, self.image_size, self.image_size):
            raise ValueError(f"{name} was built for {self.channels}×{self.image_size}² images, got {c}×{h}×{w}")
        if len(data) < min_images:
            raise ValueError(f"{name} needs at least {min_images} training image{'s' if min_images > 1 else ''}")
        return len(data)

    def check_labels(self, labels: Any) -> torch.Tensor:
        """``labels`` as an int64 tensor; ``ValueError`` unless each lies in ``[0, num_classes)``."""
        import torch

        labels = torch.as_tensor(labels, dtype=torch.int64)
        if labels.numel() and (labels.min() < 0 or labels.max() >= self.num_classes):
            raise ValueError(f"labels must lie in [0, {self.num_classes}), got [{labels.min()}, {labels.max()}]")
        return labels

    @abstractmethod
    def fit(self, data: ImageSet) -> Mapping[str, Any]:
        """Train from scratch on ``data`` (uint8 images, labels). Returns training statistics (recorded in the
        unit's ``result.json``: numbers, or strings such as a base model's path and hash), and optionally, under
        ``"history"``, training curves: ``{"axis": "step", "at": [steps], "series": {name: [values]}, "every": N}``
        (:class:`harness.engine.records.History`; :class:`harness.engine.training.Curves` builds one cheaply),
        which ``bench report`` draws and the trackers log.

        Read ``data.images`` by batch (``data.images[idx]``): for large datasets it is a
        :class:`~harness.imageset.LazyImages` over memory-mapped shards rather than one tensor."""

    @abstractmethod
    def sample(self, labels: torch.Tensor) -> torch.Tensor:
        """Generate one image per requested label: uint8 ``N×C×H×W`` with the dataset's C, H, W.

        Randomness comes from torch's global generator, which the harness seeds per work unit.
        """

    @abstractmethod
    def state_dict(self) -> dict[str, torch.Tensor]:
        """Everything needed to sample again after :meth:`load_state_dict` on a freshly constructed instance."""

    @abstractmethod
    def load_state_dict(self, state: Mapping[str, torch.Tensor]) -> None: ...


# --------------------------------------------------------------------------------------------------- classifiers


class Classifier(ABC):
    """Builds a classification network. The harness owns the training recipe (SPEC §1), so entries compare.

    ``variant`` is the part after the colon for family registrations (``timm:resnet18`` → ``"resnet18"``).
    """

    Options: ClassVar[type[Options]] = Options

    def __init__(self, options: Options, *, variant: str | None = None):
        self.options = options
        self.variant = variant

    @classmethod
    def preflight(cls, options: Options, *, variant: str | None = None) -> None:
        """Called when a run's spec is resolved, before any work: raise :class:`harness.errors.ConfigError` now if
        ``variant`` names no model this plugin can build, :class:`harness.errors.WeightsError` if the options name
        weights that are not on disk. Must be cheap (build nothing); the default checks nothing."""

    @abstractmethod
    def build(self, *, num_classes: int, channels: int, image_size: int) -> nn.Module:
        """Return a fresh ``nn.Module`` for the dataset's ``image_size``; it maps float ``B×C×S×S`` to logits,
        with ``S = input_size(image_size)`` (the harness resizes each batch to ``S``).

        :raises harness.errors.WeightsError: when pretrained weights were asked for and are not on disk.
        """

    def input_size(self, image_size: int) -> int:
        """The side the network sees. The harness resizes batches on the fly (bilinear, antialiased)."""
        return image_size

    def normalization(self, channels: int) -> tuple[tuple[float, ...], tuple[float, ...]]:
        """Per-channel ``(mean, std)`` applied to ``[0, 1]`` pixels. Default maps to ``[-1, 1]``."""
        return (0.5,) * channels, (0.5,) * channels

    def describe(self) -> Mapping[str, Any]:
        """Recorded in the results: architecture, input handling, weights source."""
        return {}


# --------------------------------------------------------------------------------------------------- filters


class ClassifierHandle(Protocol):
    """A trained classifier of the previous generation, with its preprocessing built in."""

    name: str

    def logits(self, images: torch.Tensor, *, train_mode: bool = False) -> torch.Tensor:
        """``uint8 N×C×H×W`` → ``N×L`` logits (batched internally). ``train_mode`` keeps dropout on (MC dropout)."""
        ...


@dataclass(frozen=True)
class FilterContext:
    """What a filter may use to score candidates.

    :ivar generation: ``t`` of the candidates.
    :ivar classifiers: the classifiers of generation ``t - 1`` (trained on ``D_{t-1}``).
    :ivar class_names: the dataset's class names.
    :ivar runtime: device, precision, seed, progress.
    :ivar review_dir: a directory for human-in-the-loop filters (contact sheets, decisions).
    :ivar seed: the seed of the chain the candidates belong to.
    :ivar run_dir: the run directory.
    """

    generation: int
    classifiers: Sequence[ClassifierHandle]
    class_names: tuple[str, ...]
    runtime: Runtime
    review_dir: Path
    seed: int | None = None  # the chain's seed (the run's spec seed, not the unit's RNG seed)
    run_dir: Path | None = None


class Filter(ABC):
    """Scores generated candidates; the harness keeps the top ``keep`` fraction **per class** (SPEC §1)."""

    Options: ClassVar[type[Options]] = Options
    #: True when :meth:`score` needs ``context.classifiers``.
    needs_classifiers: ClassVar[bool] = False

    def __init__(self, options: Options):
        self.options = options

    @classmethod
    def preflight(cls, options: Options) -> None:
        """Like :meth:`Generator.preflight`: fail at run start when weights the filter needs are missing."""

    @abstractmethod
    def score(self, candidates: ImageSet, context: FilterContext) -> torch.Tensor:
        """One float per candidate, higher = keep.

        :raises harness.errors.ReviewPending: a human-review filter whose decisions do not exist yet.
        """

    def describe(self) -> Mapping[str, Any]:
        """Recorded in the filter unit's result and the results' provenance (e.g. weights file and sha256)."""
        return {}

    def select(self, scores: torch.Tensor, labels: torch.Tensor, keep: float) -> torch.Tensor | None:
        """Optionally override the harness's per-class top-``keep`` rule; return a bool mask, or ``None``."""
        return None


# --------------------------------------------------------------------------------------------------- trackers

#: A parameter value as trackers take it.
Param = str | int | float | bool | None


def flat_params(data: Mapping[str, Any], prefix: str = "") -> dict[str, Param]:
    """Nested mappings as one level of dotted keys (``loop.generations``); lists as JSON text."""
    out: dict[str, Param] = {}
    for key, value in data.items():
        name = f"{prefix}{key}"
        if isinstance(value, Mapping):
            out.update(flat_params(value, f"{name}."))
        elif isinstance(value, (list, tuple)):
            out[name] = json.dumps(value, separators=(",", ":"), default=str)
        elif value is None or isinstance(value, (str, int, float, bool)):
            out[name] = value
        else:
            out[name] = str(value)
    return out


def flat_numbers(data: Mapping[str, Any], prefix: str, skip: tuple[str, ...] = ()) -> dict[str, float]:
    """The finite numbers of a nested mapping under slash-joined keys (``seed-0/classifiers/lenet/acc``); lists,
    text, booleans, ``None`` and the keys in ``skip`` (at any depth) are left out."""
    out: dict[str, float] = {}
    for key, value in data.items():
        name = f"{prefix}/{key}"
        if key in skip:
            continue
        if isinstance(value, Mapping):
            out.update(flat_numbers(value, name, skip))
        elif isinstance(value, (int, float)) and not isinstance(value, bool) and math.isfinite(value):
            out[name] = float(value)
    return out


class Tracker(ABC):
    """An experiment tracker (MLflow, TensorBoard, W&B, ...): chosen per run (``bench run --tracker NAME``) and not
    part of the spec, it mirrors a run into an outside tool and changes nothing in the run.

    The harness builds each selected tracker with its validated options and registers the object on the plugin
    manager for the run (:func:`harness.plugin.factory.tracking`), so it receives the lifecycle hooks of
    :mod:`harness.hookspecs`. This class implements those hooks and turns them into the calls a tracker
    implements, so every tracker logs the same things under the same names (docs/trackers.md):

    - :meth:`start`, when the run starts: the spec, flattened (``loop.generations``, ``spec_hash``), as parameters;
    - :meth:`log_metrics`, at each generation's end: that generation's numbers per seed, at step ``t``
      (``seed-0/classifiers/lenet/acc``, ``seed-0/generator/q``), on the axis ``"generation"``;
    - :meth:`log_metrics`, at each unit's end: its training curves (:class:`harness.engine.records.History`) point
      by point (``curves/seed-0/gen-001/generator/loss_d`` on the axis ``curves/seed-0/gen-001/generator/step``);
    - :meth:`log_files`, at the run's end: the report's figures (when ``bench run`` drew them) and ``results.json``;
    - :meth:`finish`, once: at the run's end, or ``failed=True`` when the run stops on an error.

    A tracker that cannot start is an error before any work; one that fails to log later is a warning (logger
    ``harness.trackers``), and the run goes on without it.
    """

    Options: ClassVar[type[Options]] = Options
    #: The module the tracker's library provides, and the pip requirements that install it (for the message).
    library: ClassVar[str | None] = None
    requirements: ClassVar[tuple[str, ...]] = ()

    def __init__(self, options: Options):
        self.options = options
        self.name = type(self).__name__  # the registered name, once the harness has built it for a run
        self._state = "new"  # new → started → finished (or broken: a log call failed; no more calls)

    @classmethod
    def preflight(cls, options: Options) -> None:
        """Called before the run starts: raise :class:`harness.errors.ConfigError` (one line saying what to
        ``pip install``) when the tracker's library is missing. Must be cheap; the default checks ``library``."""
        if cls.library:
            cls.require(cls.library, *cls.requirements)

    @classmethod
    def require(cls, module: str, *requirements: str) -> None:
        """Raise :class:`harness.errors.ConfigError` saying what to ``pip install`` unless ``module`` imports."""
        from harness.errors import ConfigError

        if importlib.util.find_spec(module) is None:
            what = " ".join(f"'{r}'" for r in requirements or (module,))
            raise ConfigError(f"the {module} package is not installed: pip install {what} (or, in a bench "
                              "checkout, every tracker: pip install -e '.[track]')")

    # ---------------------------------------------------------------- what a tracker implements

    @abstractmethod
    def start(self, *, name: str, params: Mapping[str, Param], run_dir: Path) -> None:
        """Open a tracker run called ``name`` (the bench run id) with ``params``; by default keep its files under
        ``run_dir``."""

    @abstractmethod
    def log_metrics(self, metrics: Mapping[str, float], *, step: int, axis: str) -> None:
        """Log ``metrics`` at ``step``; ``axis`` names what the step counts (``"generation"``, or a curve's
        ``…/epoch`` or ``…/step``), for trackers that plot each metric against its own axis."""

    @abstractmethod
    def log_files(self, paths: Sequence[Path], *, folder: str) -> None:
        """Keep copies of ``paths`` with the tracker run, under ``folder`` (``"report"``, or ``""``)."""

    @abstractmethod
    def finish(self, *, failed: bool) -> None:
        """Close the tracker run (marked failed when ``failed``)."""

    # ---------------------------------------------------------------- the hooks

    @hookimpl
    def on_run_start(self, spec: Any, run_dir: Path) -> None:
        from harness.errors import BenchError, ConfigError

        params = flat_params({"run_id": spec.run_id, "spec_hash": spec.spec_hash(), **spec.identity()})
        try:
            self.start(name=spec.run_id, params=params, run_dir=run_dir)
        except BenchError:
            raise
        except Exception as exc:  # noqa: BLE001 - a tracker that cannot start is one line, before any work
            first = (str(exc).strip().splitlines() or [""])[0]
            raise ConfigError(f"tracker {self.name!r} could not start: {type(exc).__name__}: {first}") from exc
        self._state = "started"

    @hookimpl
    def on_generation_end(self, seed: int, generation: int, record: Mapping[str, Any]) -> None:
        metrics = flat_numbers(record, f"seed-{seed}", skip=("timing",))  # a unit's wall time is no result
        if metrics:
            self._safely("metrics", lambda: self.log_metrics(metrics, step=generation, axis="generation"))

    @hookimpl
    def on_unit_end(self, unit: Any, record: Any) -> None:
        def log() -> None:
            history = record.curves() if record is not None else None
            prefix = f"curves/{unit.key}"
            for i, at in enumerate(history.at if history is not None else ()):
                point = {f"{prefix}/{k}": v[i] for k, v in history.series.items() if v[i] is not None}
                if point:
                    self.log_metrics(point, step=at, axis=f"{prefix}/{history.axis}")

        self._safely("training curves", log)

    @hookimpl
    def on_run_end(self, run_dir: Path, figures: Sequence[Path]) -> None:
        if figures:
            self._safely("figures", lambda: self.log_files(list(figures), folder="report"))
        if (run_dir / "results.json").exists():
            self._safely("results.json", lambda: self.log_files([run_dir / "results.json"], folder=""))
        self.end(failed=False)

    def end(self, *, failed: bool) -> None:
        """Finish the tracker run once, if it started (the harness calls this when the run ends or fails)."""
        if self._state in ("started", "broken"):
            self._state = "finished"
            self.finish(failed=failed)

    def _safely(self, what: str, call: Callable[[], None]) -> None:
        if self._state != "started":
            return
        try:
            call()
        except Exception as exc:  # noqa: BLE001 - a tracker's failure never stops a run
            self._state = "broken"
            logging.getLogger("harness.trackers").warning(
                "tracker %r could not log the %s (%s: %s); it logs nothing more in this run", self.name, what,
                type(exc).__name__, (str(exc).strip().splitlines() or [""])[0])


#: The kinds of plugin, in the order ``bench plugins`` lists them.
KINDS: tuple[str, ...] = ("datasets", "generators", "classifiers", "filters", "trackers")
BASES: dict[str, type] = {"datasets": Dataset, "generators": Generator, "classifiers": Classifier, "filters": Filter,
                          "trackers": Tracker}
