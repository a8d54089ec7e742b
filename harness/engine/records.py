"""What each work unit records in its ``result.json``: one pydantic model per stage.

A stage function returns its record; :func:`harness.engine.stages.execute` writes it and reads a finished unit's
file back through the same model, so the results collector and the lifecycle hooks read fields, not string
keys, and a renamed field fails when a unit is read, not when a results file is assembled. Pure: no torch.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Mapping
from pathlib import Path
from typing import Annotated, Any, Literal, TypeVar

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.engine.plan import RESULT, Unit
from harness.engine.rundir import DamagedUnitError, read_result


class Record(BaseModel):
    model_config = ConfigDict(extra="forbid")


class UnitTiming(Record):
    """Wall time of one unit, the images it processed (trained on, sampled, scored) and its torch threads."""

    seconds: float = Field(ge=0.0)
    images: int = Field(ge=0)
    images_per_s: float | None
    threads: int | None = Field(default=None, ge=1, description="torch intra-op threads; None in older results.")


class Stopwatch:
    """Started when a unit starts; :meth:`timing` is the unit's :class:`UnitTiming` up to now.

    :param threads: returns the torch thread count the unit runs with (read when the timing is taken).
    """

    def __init__(self, threads: Callable[[], int] | None = None) -> None:
        self._start = time.perf_counter()
        self._threads = threads

    def timing(self, images: int) -> UnitTiming:
        seconds = time.perf_counter() - self._start
        return UnitTiming(seconds=seconds, images=images, images_per_s=images / seconds if seconds else None,
                          threads=self._threads() if self._threads else None)


class History(Record):
    """Training curves of one unit: each series' value at points along one axis (observation only: recording
    them changes no trained number).

    Classifiers: one point per epoch (``train_loss``, the mean loss over the epoch's batches, and ``val_acc``, the
    held-out accuracy after it). Generators: one point every ``every`` optimizer steps, each the mean over those
    steps (dcgan ``loss_d``, ``loss_g``; vae ``loss``, ``recon``, ``kl``; ddpm ``loss``).
    """

    axis: Literal["epoch", "step"]
    at: list[int] = Field(description="The axis value of each point (the epoch, or the last step of its window).")
    series: dict[str, list[float | None]] = Field(description="One value per point; None where not finite.")
    every: int = Field(default=1, ge=1, description="Steps (or epochs) a point summarises.")

    @model_validator(mode="after")
    def _aligned(self) -> History:
        bad = [name for name, values in self.series.items() if len(values) != len(self.at)]
        if bad:
            raise ValueError(f"series {bad[0]!r} has a length other than the {len(self.at)} points")
        return self


class TrainingStats(Record):
    """What :func:`harness.engine.training.train_classifier` reports."""

    epochs: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    val_acc: float
    stopped_early: bool
    train_images: int = Field(ge=0)
    images_seen: int = Field(ge=0)
    seconds: float = Field(ge=0.0)
    images_per_s: float | None
    steps: int | None = Field(default=None, ge=0, description="Optimizer steps taken (None in older results).")
    best_steps: int | None = Field(
        default=None, ge=0, description="Optimizer steps up to the kept weights (the best epoch, or the budget)."
    )
    history: History | None = Field(default=None, description="Per-epoch curves (None in older results).")


class StageResult(Record):
    timing: UnitTiming

    def curves(self) -> History | None:
        """The unit's training curves: a classifier's or the oracle's per epoch, a generator's per N steps; None
        for stages that train nothing, and in results written before curves were kept."""
        return None


Share = Annotated[float, Field(ge=0.0, le=1.0)]


class BatchMix(Record):
    """What STAR (Wyllie et al.'s reparation, docs/wyllie.md) drew: the (class × subgroup) shares of the images in
    the batches it made, against its target and against the pool it drew from (what plain random batches draw).

    ``achieved`` and ``pool`` are shares of all images (rows = classes, columns = subgroups); images without a
    subgroup are the rest (``unknown_*``)."""

    target: list[list[Share]]
    achieved: list[list[Share]]
    pool: list[list[Share]]
    unknown_achieved: Share
    unknown_pool: Share
    tv_achieved: Share = Field(description="Total-variation distance of the achieved shares from the target.")
    tv_pool: Share = Field(description="The same for the pool: what batches without STAR achieve on average.")
    filled: Share = Field(description="Share of batch places filled from the spare candidates at random (the "
                                      "target could not be met within the budget).")
    batches: int = Field(ge=0)
    batch_size: int = Field(ge=1)
    budget: int = Field(ge=0)
    subgroup_source: Literal["known", "pixels", "oracle"] = Field(
        description="Where synthetic images' subgroups came from (known: no synthetic image in the pool).")


class RealDraw(Record):
    """How the real part of D_t was drawn (loop.synthetic_fraction, loop.disparity_amplification)."""

    mode: Literal["fresh", "disparity"] = Field(
        description="fresh: uniformly at random from D_real; disparity: by the previous classifier's outcomes — "
        "D_real's subgroup shares kept, and within each subgroup the classes in f_{t-1}'s predicted-label shares "
        "for it (bench's reading of Wyllie et al., docs/wyllie.md).")
    count: int = Field(ge=0, description="Real images drawn.")
    classifier: str | None = Field(None, description="disparity: the classifier of generation t-1 that was used.")
    predicted: list[list[Share]] | None = Field(
        None, description="disparity: per subgroup (columns; a last one for unknown subgroups), the share of "
        "D_real's images of that subgroup that the classifier assigns to each class (rows).")
    cells: list[list[int]] = Field(description="Images drawn per class (rows) and subgroup (columns; last: unknown).")
    repeated: int = Field(0, ge=0, description="Draws beyond a cell's size (images repeated).")
    unserved: int = Field(0, ge=0, description="Draws asked of cells D_real does not have (left out).")


class Representation(Record):
    """Who is in a training set D_t (SPEC §6): its subgroup and (class × subgroup) shares, the real part's subgroups
    known, the synthetic part's measured from pixels or estimated by the oracle (``source``)."""

    size: int = Field(ge=0)
    real: int = Field(ge=0)
    synthetic: int = Field(ge=0)
    subgroup: list[Share] = Field(description="Share of each subgroup among the images with a known subgroup.")
    cells: list[list[Share]] = Field(description="Share of each (class, subgroup) cell, same denominator.")
    unknown: Share = Field(description="Share of D_t whose subgroup is unknown (not measurable).")
    real_subgroup: list[Share] | None = Field(description="The subgroup shares of the real part (None: no real part).")
    synthetic_subgroup: list[Share] | None = Field(description="The same for the synthetic part.")
    source: Literal["known", "pixels", "oracle"]


class OracleResult(StageResult):
    classifier: str
    joint: bool = Field(description="Predicts (class, subgroup) jointly (subgroups not observable from pixels).")
    training: str
    test_acc: float
    subgroup_test_acc: float | None
    train: TrainingStats

    def curves(self) -> History | None:
        return self.train.history


class GeneratorResult(StageResult):
    train: dict[str, Any] = Field(description="The generator plugin's own training statistics.")
    train_size: int = Field(ge=0)
    reparation: BatchMix | None = Field(default=None, description="gen-STAR: how its training set was resampled.")
    history: History | None = Field(default=None, description="The plugin's training curves, if it keeps them.")

    def curves(self) -> History | None:
        return self.history


class SampleResult(StageResult):
    count: int = Field(ge=0)


class FilterResult(StageResult):
    kept_per_class: list[int]
    dropped_per_class: list[int]
    kept: int = Field(ge=0)
    relabeled: int | None
    filter: dict[str, Any] = Field(description="What the filter plugin describes about itself (e.g. weights).")


class MixResult(StageResult):
    queue: list[int]
    pool: int = Field(ge=0)
    real: int = Field(ge=0)
    synthetic: int = Field(ge=0)
    synthetic_per_generation: dict[str, int]
    real_draw: RealDraw | None = Field(default=None, description="How the real part was drawn; None: all of "
                                                                  "D_real (or none, regime replace).")


class ClassifierMetrics(Record):
    """:func:`harness.measure.metrics.classifier_metrics` on the real test set."""

    acc: float
    meo: float | None
    di: float | None
    md: float | None
    worst_k: list[float | None]
    dp: float | None
    eodds: float | None
    subgroup_acc: list[list[float | None]]
    bias_gap: float | None


class VariantResult(Record):
    acc: float
    drop: float


class TrainSize(Record):
    real: int = Field(ge=0)
    synthetic: int = Field(ge=0)


class ControlBudget(Record):
    """How a control twin was trained (SPEC §2): on D_real alone, for its twin's steps or with the plain recipe."""

    mode: Literal["steps", "recipe"]
    twin: str = Field(description="The treated unit's key.")
    steps: int | None = Field(description="mode steps: the optimizer steps the twin took up to its kept weights.")


class ClassifierResult(StageResult):
    metrics: ClassifierMetrics
    variants: dict[str, VariantResult]
    train: TrainingStats
    train_size: TrainSize
    model: dict[str, Any] = Field(description="What the classifier plugin built (input handling, weights).")
    control: ControlBudget | None = Field(default=None, description="Set on a control twin only.")
    reparation: BatchMix | None = Field(default=None, description="cla-STAR: what its training batches held.")

    def curves(self) -> History | None:
        return self.train.history


class EvaluateResult(StageResult):
    q: float
    u: float | None
    u_per_class: list[float | None] | None
    u_source: Literal["pixels", "oracle"] | None
    class_balance: list[float]
    oracle_class_balance: list[float]
    fid: float | None = None
    kid: float | None = None
    kid_std: float | None = None
    fid_note: str | None = None
    fid_provenance: dict[str, Any] | None = None


RecordT = TypeVar("RecordT", bound="StageResult")

RECORDS: dict[str, type[StageResult]] = {
    "oracle": OracleResult,
    "generator": GeneratorResult,
    "sample": SampleResult,
    "filter": FilterResult,
    "mix": MixResult,
    "classifier": ClassifierResult,
    "control": ClassifierResult,
    "evaluate": EvaluateResult,
}


def parse_record(u: Unit, data: Mapping[str, Any]) -> StageResult:
    """A unit's result (``result.json`` without its integrity record) read through its stage's model.

    :raises DamagedUnitError: the result does not fit the model (edited, or written by another version).
    """
    try:
        return RECORDS[u.stage].model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        where = ".".join(str(p) for p in err["loc"]) or "<root>"
        raise DamagedUnitError(u.key, f"{RESULT} does not fit a {u.stage} result ({where}: {err['msg']})") from None


def read_record(u: Unit, run_dir: Path, model: type[RecordT]) -> RecordT | None:
    """The record of unit ``u`` in ``run_dir`` (``model``: its stage's record class); ``None`` if the unit has not
    finished.

    :raises DamagedUnitError: its ``result.json`` is damaged or does not fit ``model``.
    """
    if RECORDS[u.stage] is not model:
        raise TypeError(f"unit {u.key} records a {RECORDS[u.stage].__name__}, not a {model.__name__}")
    directory = u.directory(run_dir)
    if not (directory / RESULT).exists():
        return None
    record = parse_record(u, read_result(directory))
    assert isinstance(record, model)
    return record
