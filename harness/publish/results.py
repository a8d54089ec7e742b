"""The results file (SPEC §6): a versioned pydantic model, and how a run directory becomes one.

``results.json`` is a pure function of the work units' outputs; only the ``timing`` block (and the per-stage
wall times inside it) differs between two runs of the same spec. Its JSON Schema is committed at
``leaderboard/schema.json``; readers reject unknown versions, unknown fields and out-of-range values, with the
field path in the message.
"""

from __future__ import annotations

import functools
import json
import platform
import subprocess
from datetime import UTC, datetime
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError, model_validator

from harness.engine.plan import Unit, plan, unit
from harness.engine.records import (
    RECORDS,
    BatchMix,
    ClassifierResult,
    EvaluateResult,
    FilterResult,
    GeneratorResult,
    MixResult,
    OracleResult,
    RealDraw,
    RecordT,
    Representation,
    SampleResult,
    StageResult,
    TrainingStats,
    read_record,
)
from harness.errors import BenchError
from harness.measure.intervals import Interval
from harness.measure.verdict import Verdict

if TYPE_CHECKING:  # pragma: no cover - RunContext imports torch; the schema half of this module must not
    from harness.engine.stages import RunContext

SCHEMA_VERSION = 2
#: Versions :func:`load_results` reads. Version 1 (harness 0.2.0) had no replicates, control arm, verdict or
#: bootstrap intervals; every field added since has a default, so a version-1 file reads as version 2 with
#: those empty (its ``Stat`` intervals are the old Student-t ones over seeds: ``method`` is None).
READABLE_VERSIONS = (1, 2)
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "leaderboard" / "schema.json"

Prob = Annotated[float, Field(ge=0.0, le=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stat(Model):
    """A mean over seeds (of each seed's mean over replicates) with its 95% interval (docs/metrics.md).

    The interval is a hierarchical bootstrap (seeds, then replicates within each seed; ``method``), kept inside
    the metric's bounds; with fewer than 3 seeds there is none and ``note`` says so.
    """

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    std: float | None = Field(description="Standard deviation (ddof 1) of the seeds' means; None below 2 seeds.")
    n: int = Field(ge=0, description="Seeds with a value.")
    replicates: int = Field(1, ge=0, description="Replicates per seed.")
    method: str | None = Field(None, description="How the interval was made (None: a version-1 Student-t).")
    resamples: int = Field(0, ge=0)
    note: str | None = None


class VariantAccuracy(Model):
    acc: Prob
    drop: float = Field(ge=-1.0, le=1.0, description="Clean accuracy minus the variant's accuracy.")


class TrainStats(Model):
    epochs: int = Field(ge=0)
    best_epoch: int = Field(ge=0)
    val_acc: float = Field(ge=-1.0, le=1.0)
    stopped_early: bool
    train_images: int = Field(ge=0)
    images_seen: int = Field(ge=0)


class ClassifierSeedMetrics(Model):
    seed: int
    replicate: int = Field(0, ge=0)
    acc: Prob
    meo: Prob | None
    di: float | None = Field(le=1.0, description="1 − mean |P_i/P_j − 1|; can be negative under strong disparity.")
    md: Prob | None
    worst_k: list[Prob | None]
    dp: Prob | None
    eodds: Prob | None
    bias_gap: Prob | None
    subgroup_acc: list[list[Prob | None]]
    variants: dict[str, VariantAccuracy] = Field(default_factory=dict)
    train: TrainStats
    train_size: dict[Literal["real", "synthetic"], int]
    reparation: BatchMix | None = Field(None, description="cla-STAR: what its training batches held.")


class ClassifierAggregate(Model):
    acc: Stat
    meo: Stat
    di: Stat
    md: Stat
    worst_k: list[Stat]
    dp: Stat
    eodds: Stat
    bias_gap: Stat
    variants: dict[str, Stat] = Field(default_factory=dict)


class PairedValue(Model):
    """The paired effect ``Δ = m(f_t) − m(f_t^control)`` of one (seed, replicate), per metric (SPEC §5b)."""

    seed: int
    replicate: int = Field(ge=0)
    values: dict[str, float | None]


class PairedEffect(Model):
    """What the synthetic data did to one classifier at one generation: treated minus control twin."""

    per_replicate: list[PairedValue]
    mean: dict[str, Stat]


class ClassifierRecord(Model):
    per_seed: list[ClassifierSeedMetrics] = Field(description="The treated arm: every seed and replicate.")
    mean: ClassifierAggregate
    control: list[ClassifierSeedMetrics] = Field(
        default_factory=list, description="The control twins (t >= 1, loop.control): trained on D_real alone."
    )
    control_mean: ClassifierAggregate | None = None
    effect: PairedEffect | None = Field(None, description="Treated minus control, per metric and the bias B.")


class GeneratorSeedMetrics(Model):
    seed: int
    q: Prob = Field(description="Label fidelity: oracle agrees with the conditioning class.")
    u: Prob | None = Field(description="Mean over classes of the TV distance of subgroup distributions.")
    u_source: Literal["pixels", "oracle"] | None
    fid: NonNeg | None
    kid: float | None
    kid_std: float | None = None
    fid_note: str | None
    class_balance: list[Prob] = Field(description="Label histogram of F_t, the filtered set that enters training.")
    oracle_class_balance: list[Prob] = Field(description="Histogram of the oracle's predictions on C_t.")
    kept_per_class: list[int]
    dropped_per_class: list[int]
    relabeled: int | None
    generator_train_size: int = Field(ge=0)
    candidates: int = Field(ge=0)
    reparation: BatchMix | None = Field(None, description="gen-STAR: how the generator's training set was resampled.")


class GeneratorAggregate(Model):
    q: Stat
    u: Stat
    fid: Stat
    kid: Stat


class GeneratorRecord(Model):
    per_seed: list[GeneratorSeedMetrics]
    mean: GeneratorAggregate


class RepresentationSeed(Representation):
    """Who is in one seed's D_t, and how its real part was drawn."""

    seed: int
    real_draw: RealDraw | None = Field(None, description="None: the real part is all of D_real (or none).")


class RepresentationBlock(Model):
    """Who is in D_t (SPEC §6), so that a minority's loss is visible: per seed, and the subgroup shares' means
    over seeds with their intervals."""

    per_seed: list[RepresentationSeed]
    subgroup: list[Stat] = Field(description="Mean share of each subgroup (among images with a known one).")
    cells: list[list[Prob]] = Field(description="Mean share of each (class, subgroup) cell over seeds.")
    minority: int = Field(ge=0, description="The subgroup with the smallest share of D_real (ties: the lower index).")
    class_minority: list[int] = Field(
        description="Per class, its subgroup with the smallest share of the class in D_real, among those it has "
        "(-1: the class has no image with a known subgroup).")
    minority_share: Stat = Field(
        description="Mean over classes of the share of the class's images in D_t that are of its class_minority "
        "subgroup: the minority's representation (D_real: its value at generation 0).")


class GenerationRecord(Model):
    generation: int = Field(ge=0)
    generator: GeneratorRecord | None = Field(description="None at generation 0 (real data only).")
    classifiers: dict[str, ClassifierRecord]
    representation: RepresentationBlock | None = Field(
        None, description="Who is in D_t; None for a dataset without subgroups or a run of an older bench.")


class ReparationSummary(Model):
    """STAR as it ran (SPEC §2, docs/wyllie.md): the resolved target, and how close the STAR batches came to it
    compared with their pools (the unit records hold each one's shares)."""

    apply_to: Literal["classifiers", "generators", "both"]
    budget: int = Field(ge=0)
    target: list[list[Prob]] = Field(description="Target share of each (class, subgroup) cell.")
    subgroups_of_synthetic: Literal["pixels", "oracle"] = Field(description="What the spec asked for.")
    subgroup_sources: list[Literal["known", "pixels", "oracle"]] = Field(
        description="Where the STAR units' synthetic subgroups came from, distinct (known: no synthetic image).")
    units: int = Field(ge=0, description="Finished units that drew STAR batches.")
    tv_achieved: Prob | None = Field(description="Mean over those units of the TV distance of their batches' "
                                                 "shares from the target.")
    tv_pool: Prob | None = Field(description="The same for their pools (what plain random batches draw).")


class AFactor(Model):
    t: int = Field(ge=0)
    value: float | None = Field(ge=0.0)
    reason: str | None


class ClassifierAmplification(Model):
    bias: list[float | None] = Field(description="B_t from seed-averaged metrics, t = 0..T.")
    A: list[AFactor]
    A_bar: float | None = Field(ge=0.0)
    bias_interval: list[Stat] = Field(default_factory=list, description="B_t with its interval, t = 0..T.")
    A_interval: list[Stat] = Field(default_factory=list, description="A_t with its interval, t = 0..T-1.")
    A_bar_interval: Stat | None = None


class Estimate(Model):
    estimate: float | None
    ci_low: float | None
    ci_high: float | None


class Fit(Model):
    status: Literal["identified", "not_identified", "too_few_points"]
    message: str
    n_points: int = Field(ge=0)
    n_seeds: int = Field(ge=0)
    c: dict[str, Estimate]
    a: Estimate
    b: Estimate
    r2: float | None


class Amplification(Model):
    measure: Literal["1-meo", "md", "gap"]
    per_classifier: dict[str, ClassifierAmplification]
    fit: Fit


class VerdictBlock(Model):
    """SPEC §5b: did the synthetic data change the bias measure? Per classifier and pooled over classifiers,
    decided on the paired effect Δ(B) (treated minus control twin); ``A_bar`` stands beside it, not in it."""

    measure: Literal["1-meo", "md", "gap"]
    epsilon: float = Field(gt=0.0)
    control_budget: Literal["steps", "recipe"]
    generations: list[int] = Field(description="The generations t averaged into the effect E.")
    per_classifier: dict[str, Verdict]
    pooled: Verdict | None
    rule: str = Field(description="The rule, in one sentence.")


class PluginProvenance(Model):
    kind: str
    name: str
    plugin: str
    distribution: str | None
    version: str | None


class Provenance(Model):
    harness_version: str
    git_commit: str | None
    python: str
    torch: str
    cuda: str | None
    device: str
    precision: str
    platform: str
    plugins: list[PluginProvenance]
    dataset_source: dict[str, Any]
    fid: dict[str, Any] | None
    oracle: dict[str, Any] | None
    classifiers: dict[str, dict[str, Any]] = Field(
        default_factory=dict, description="What each classifier plugin built (input handling, weights)."
    )
    filter: dict[str, Any] = Field(default_factory=dict, description="What the filter used (e.g. weights).")
    torch_threads: list[int] = Field(
        default_factory=list,
        description="The torch intra-op thread counts the finished units ran with, distinct and sorted (one value "
        "unless units ran under different counts, e.g. a resumed run or Ray tasks of different sizes); empty in "
        "results written before it was recorded.",
    )


class DatasetInfo(Model):
    name: str
    num_classes: int = Field(ge=1)
    class_names: list[str]
    subgroup_scope: Literal["global", "per_class"]
    subgroup_names: list[str] | list[list[str]]
    num_subgroups: int = Field(ge=0)
    train_size: int = Field(ge=0)
    test_size: int = Field(ge=0)
    image_shape: list[int]
    variants: list[str]


class StageTiming(Model):
    seconds: NonNeg
    images: int = Field(ge=0)
    images_per_s: NonNeg | None


class Timing(Model):
    total_s: NonNeg = Field(description="Wall time of the sessions that ran this run, summed (a resumed run adds its "
                            "session; one killed before it wrote results.json is not counted).")
    stages: dict[str, StageTiming]
    finished_at: str


class Results(Model):
    schema_version: Literal[2]
    run_id: str
    spec_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    status: Literal["complete", "partial"]
    last_generation: int = Field(ge=-1, description="Last generation finished by every seed (-1: none).")
    spec: dict[str, Any]
    provenance: Provenance
    dataset: DatasetInfo
    generations: list[GenerationRecord]
    amplification: Amplification | None
    verdict: VerdictBlock | None = Field(
        None, description="None without a control arm (loop.control off) or before generation 1 finished."
    )
    reparation: ReparationSummary | None = Field(None, description="None: no reparation section in the spec.")
    timing: Timing

    @model_validator(mode="after")
    def _spec_is_a_run_spec(self) -> Results:
        from harness.specs import RunSpec

        RunSpec.model_validate(self.spec)
        return self

    def to_dataframe(self) -> Any:
        """The per-seed, per-replicate numbers as a tidy :class:`pandas.DataFrame`, one row per value.

        Columns: ``run`` (the run_id), ``seed``, ``replicate``, ``generation``, ``classifier`` (``None`` for the
        generator's metrics), ``arm``, ``metric``, ``value`` (float; NaN where the metric is undefined).
        ``arm`` is ``treated`` (the classifiers of the loop), ``control`` (their control twins, trained on
        D_real alone, with ``loop.control``), ``effect`` (treated minus its control twin, per pair) or
        ``generator``. Classifier metrics: ``acc``, ``meo``, ``di``, ``md``, ``dp``, ``eodds``, ``bias_gap``,
        ``worst_1`` … ``worst_G`` (worst-k subgroup accuracy) and ``acc:VARIANT`` per dataset variant; effects:
        the same differences with ``worst`` (worst subgroup) and ``B`` (the bias under the run's measure);
        generator metrics (generations ≥ 1): ``q``, ``u``, ``fid``, ``kid``. Means, intervals, the
        amplification fit and the verdict stay on the model.
        """
        import pandas as pd

        rows: list[tuple[Any, ...]] = []

        def add(seed: int, replicate: int, t: int, classifier: str | None, arm: str, metric: str,
                value: float | None) -> None:
            rows.append((self.run_id, seed, replicate, t, classifier, arm, metric,
                         float("nan") if value is None else value))

        def classifier_rows(t: int, name: str, arm: str, runs: list[ClassifierSeedMetrics]) -> None:
            for p in runs:
                for metric in ("acc", "meo", "di", "md", "dp", "eodds", "bias_gap"):
                    add(p.seed, p.replicate, t, name, arm, metric, getattr(p, metric))
                for k, v in enumerate(p.worst_k, start=1):
                    add(p.seed, p.replicate, t, name, arm, f"worst_{k}", v)
                for variant, va in p.variants.items():
                    add(p.seed, p.replicate, t, name, arm, f"acc:{variant}", va.acc)

        for g in self.generations:
            for name, record in g.classifiers.items():
                classifier_rows(g.generation, name, "treated", record.per_seed)
                classifier_rows(g.generation, name, "control", record.control)
                for pair in record.effect.per_replicate if record.effect is not None else []:
                    for metric, value in pair.values.items():
                        add(pair.seed, pair.replicate, g.generation, name, "effect", metric, value)
            if g.generator is not None:
                for gp in g.generator.per_seed:
                    for metric in ("q", "u", "fid", "kid"):
                        add(gp.seed, 0, g.generation, None, "generator", metric, getattr(gp, metric))
        columns = ["run", "seed", "replicate", "generation", "classifier", "arm", "metric", "value"]
        frame = pd.DataFrame(rows, columns=columns)
        return frame.astype({"seed": "int64", "replicate": "int64", "generation": "int64", "value": "float64"})


def json_schema() -> dict[str, Any]:
    schema = Results.model_json_schema()
    schema["$id"] = f"https://bench.example/schema/results-v{SCHEMA_VERSION}.json"
    schema["title"] = f"bench results, schema_version {SCHEMA_VERSION}"
    return schema


def load_results(path: Path) -> Results:
    """Read and validate a results file; :class:`BenchError` naming the file and the field on any problem."""
    try:
        data = json.loads(Path(path).read_text())
    except (OSError, ValueError) as exc:
        raise BenchError(f"{path}: cannot read a results file ({exc})") from None
    version = data.get("schema_version") if isinstance(data, dict) else None
    if version not in READABLE_VERSIONS:
        readable = ", ".join(map(str, READABLE_VERSIONS))
        raise BenchError(f"{path}: unknown schema_version {version!r} (this bench reads {readable})")
    data = upgrade(data)
    try:
        return Results.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BenchError(f"{path}: {loc}: {err['msg']}") from None


def unchecked_fit(doc: dict[str, Any]) -> dict[str, Any]:
    """Read a fit written before bench checked that the SPEC §5 fit is identified as ``not_identified``.

    Such files call every converged fit ``"ok"`` (and a singular design ``"failed"``), whatever its bootstrap or
    design said (the reference MNIST study: ``"ok"`` with 305 of 1,000 resamples failing and ``a`` in
    [-269, -1.6]). Nothing shows such a fit is identified, so it is read as ``not_identified``, its estimates
    withheld (they stay in the file) and the reason in ``message``. Other documents are returned as they are;
    the input is not modified.
    """
    amplification = doc.get("amplification")
    fit = amplification.get("fit") if isinstance(amplification, dict) else None
    if not isinstance(fit, dict) or fit.get("status") not in ("ok", "failed"):
        return doc
    none = {"estimate": None, "ci_low": None, "ci_high": None}
    names = fit.get("c") if isinstance(fit.get("c"), dict) else {}
    fit = {**fit, "status": "not_identified", "a": dict(none), "b": dict(none), "r2": None,
           "c": {name: dict(none) for name in names},
           "message": f"not identified: written as {fit.get('status')!r} before bench checked that a fit is "
                      f"identified (SPEC §5); estimates withheld ({fit.get('message')})"}
    return {**doc, "amplification": {**amplification, "fit": fit}}


def upgrade(data: dict[str, Any]) -> dict[str, Any]:
    """A results document of any readable version as the current version (a copy; see :data:`READABLE_VERSIONS`),
    its fit read by :func:`unchecked_fit`."""
    data = unchecked_fit(data)
    if data.get("schema_version") == 1:
        data = {**data, "schema_version": SCHEMA_VERSION}
    return data


def write_results(run_dir: Path, results: Results) -> Path:
    from harness.engine.rundir import write_json

    path = run_dir / "results.json"
    write_json(path, results.model_dump(mode="json"))
    return path


# --------------------------------------------------------------------------------------------------- collecting


@functools.cache
def git_commit() -> str | None:
    """The harness's git commit, read once per process — :func:`harness.loop.run` reads it when the run starts,
    so a commit made while a long run is going is not attributed to it."""
    try:
        out = subprocess.run(
            ["git", "rev-parse", "HEAD"], cwd=Path(__file__).resolve().parent, capture_output=True, text=True,
            timeout=5,
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return out.stdout.strip() or None if out.returncode == 0 else None


class _Finished:
    """The records of a run's finished units, read once, by unit and typed by stage."""

    def __init__(self, run_dir: Path, units: list[Unit]):
        self.units = units
        self._records: dict[str, StageResult] = {}
        for u in units:
            record = read_record(u, run_dir, RECORDS[u.stage])
            if record is not None:
                self._records[u.key] = record

    def get(self, model: type[RecordT], u: Unit) -> RecordT | None:
        record = self._records.get(u.key)
        if record is not None and not isinstance(record, model):
            raise TypeError(f"unit {u.key} records a {type(record).__name__}, not a {model.__name__}")
        return record

    def done(self, u: Unit) -> bool:
        return u.key in self._records

    def all(self) -> list[tuple[Unit, StageResult]]:
        return [(u, self._records[u.key]) for u in self.units if u.key in self._records]


def provenance(ctx: RunContext, oracle: dict[str, Any] | None, torch_threads: list[int]) -> Provenance:
    import torch

    from harness import __version__

    spec = ctx.spec
    used = {
        "datasets": [spec.dataset.name],
        "generators": [spec.generator.name],
        "classifiers": sorted({*spec.classifier_names, spec.metrics.oracle.classifier.name}),
        "filters": [spec.filter.name],
    }
    plugins = []
    for kind, names in used.items():
        for name in names:
            entry, _ = ctx.plugins.registry(kind).entry(name)
            plugins.append(PluginProvenance(kind=kind, name=name, plugin=entry.plugin,
                                            distribution=entry.distribution, version=entry.version))
    return Provenance(
        harness_version=__version__,
        git_commit=git_commit(),
        python=platform.python_version(),
        torch=torch.__version__,
        cuda=torch.version.cuda if ctx.device.startswith("cuda") else None,
        device=ctx.device,
        precision=ctx.precision,
        platform=platform.platform(),
        plugins=plugins,
        dataset_source=dict(ctx.data.source),
        fid=None,
        oracle=oracle,
        torch_threads=torch_threads,
    )


def _train_stats(train: TrainingStats) -> TrainStats:
    return TrainStats(epochs=train.epochs, best_epoch=train.best_epoch, val_acc=train.val_acc,
                      stopped_early=train.stopped_early, train_images=train.train_images,
                      images_seen=train.images_seen)


def _classifier_seed(seed: int, replicate: int, r: ClassifierResult) -> ClassifierSeedMetrics:
    return ClassifierSeedMetrics(
        seed=seed, replicate=replicate, **r.metrics.model_dump(),
        variants={v: VariantAccuracy(acc=a.acc, drop=a.drop) for v, a in r.variants.items()},
        train=_train_stats(r.train), train_size={"real": r.train_size.real, "synthetic": r.train_size.synthetic},
        reparation=r.reparation,
    )


#: Bounds of the classifier metrics (SPEC §3): intervals stay inside them. ``di`` can fall below 0.
PROB = (0.0, 1.0)
METRIC_BOUNDS: dict[str, tuple[float | None, float | None] | None] = {
    "acc": PROB, "meo": PROB, "di": (None, 1.0), "md": PROB, "dp": PROB, "eodds": PROB, "bias_gap": PROB,
}
#: The metrics of the paired effect: the classifier metrics, the worst-subgroup accuracy and the bias B.
EFFECT_METRICS = ("acc", "meo", "di", "md", "dp", "eodds", "bias_gap", "worst", "B")
VERDICT_RULE = ("amplified if lo > 0; reduced if hi < 0; no detectable change if -ε < lo and hi < ε; "
                "otherwise inconclusive — [lo, hi] the 95% interval of E, the mean paired effect Δ(B)")


def _nan(v: float | None) -> float:
    return float("nan") if v is None else float(v)


def _from_interval(iv: Interval, std: float | None = None) -> Stat:
    return Stat(mean=iv.estimate, ci_low=iv.ci_low, ci_high=iv.ci_high, std=std, n=iv.seeds,
                replicates=iv.replicates, method=iv.method, resamples=iv.resamples, note=iv.note)


def _stat(grid: list[list[float | None]], bounds: tuple[float | None, float | None] | None) -> Stat:
    """The :class:`Stat` of values laid out ``[seed][replicate]`` (None = undefined)."""
    import numpy as np

    from harness.measure.intervals import hierarchical_bootstrap

    x = np.array([[_nan(v) for v in row] for row in grid], dtype=float).reshape(len(grid), -1)
    present = np.isfinite(x).any(axis=1)
    if not present.any():
        return Stat(mean=None, ci_low=None, ci_high=None, std=None, n=0, replicates=x.shape[1],
                    note="undefined in every seed")
    with np.errstate(invalid="ignore"):
        seed_means = np.nanmean(x[present], axis=1)
    std = float(seed_means.std(ddof=1)) if seed_means.size >= 2 else None
    return _from_interval(hierarchical_bootstrap(x, bounds=bounds), std)


def _aggregate(grid: list[list[ClassifierSeedMetrics]]) -> ClassifierAggregate:
    """Every metric of a classifier's ``[seed][replicate]`` results with its interval."""
    first = grid[0][0]

    def stat(get, bounds) -> Stat:
        return _stat([[get(p) for p in row] for row in grid], bounds)

    return ClassifierAggregate(
        **{k: stat(lambda p, k=k: getattr(p, k), b) for k, b in METRIC_BOUNDS.items()},
        worst_k=[stat(lambda p, k=k: p.worst_k[k] if k < len(p.worst_k) else None, PROB)
                 for k in range(len(first.worst_k))],
        variants={v: stat(lambda p, v=v: p.variants[v].acc if v in p.variants else None, PROB)
                  for v in first.variants},
    )


def _effect_values(p: ClassifierSeedMetrics, measure: str) -> dict[str, float | None]:
    from harness.measure.amplification import bias_value

    values = {k: getattr(p, k) for k in METRIC_BOUNDS}
    values["worst"] = p.worst_k[0] if p.worst_k else None
    values["B"] = bias_value(p.model_dump(), measure)
    return values


def _paired_effect(treated: list[list[ClassifierSeedMetrics]], control: list[list[ClassifierSeedMetrics]],
                   measure: str) -> PairedEffect:
    """Δ = treated − control twin, per (seed, replicate) and metric, and its mean with an interval (in [-1, 1];
    ``di`` unbounded)."""
    pairs: list[PairedValue] = []
    grid: list[list[dict[str, float | None]]] = []
    for t_row, c_row in zip(treated, control, strict=True):
        row = []
        for a, b in zip(t_row, c_row, strict=True):
            va, vb = _effect_values(a, measure), _effect_values(b, measure)
            d = {k: None if va[k] is None or vb[k] is None else va[k] - vb[k] for k in EFFECT_METRICS}
            pairs.append(PairedValue(seed=a.seed, replicate=a.replicate, values=d))
            row.append(d)
        grid.append(row)
    mean = {k: _stat([[d[k] for d in row] for row in grid], None if k == "di" else (-1.0, 1.0))
            for k in EFFECT_METRICS}
    return PairedEffect(per_replicate=pairs, mean=mean)


def _verdict(spec: Any, names: list[str], delta: Any, last: int) -> VerdictBlock:
    """SPEC §5b on ``delta`` shaped ``(classifier, seed, replicate, t = 1..last)``."""
    from harness.measure.verdict import pooled_verdict, verdict

    vs = spec.metrics.verdict
    k = vs.last_generations
    gens = list(range(1, last + 1)) if k is None else list(range(max(1, last - k + 1), last + 1))
    options = {"epsilon": vs.epsilon, "generations": gens, "resamples": vs.resamples, "measure": spec.metrics.bias}
    return VerdictBlock(
        measure=spec.metrics.bias, epsilon=vs.epsilon, control_budget=spec.loop.control_budget, generations=gens,
        per_classifier={m: verdict(delta[i], **options) for i, m in enumerate(names)},
        pooled=pooled_verdict({m: delta[i] for i, m in enumerate(names)}, **options) if len(names) > 1 else None,
        rule=VERDICT_RULE,
    )



def _generator_seed(seed: int, ev: EvaluateResult, fl: FilterResult, gr: GeneratorResult,
                    sm: SampleResult) -> GeneratorSeedMetrics:
    return GeneratorSeedMetrics(
        seed=seed, q=ev.q, u=ev.u, u_source=ev.u_source, fid=ev.fid, kid=ev.kid, kid_std=ev.kid_std,
        fid_note=ev.fid_note, class_balance=ev.class_balance, oracle_class_balance=ev.oracle_class_balance,
        kept_per_class=fl.kept_per_class, dropped_per_class=fl.dropped_per_class, relabeled=fl.relabeled,
        generator_train_size=gr.train_size, candidates=sm.count, reparation=gr.reparation,
    )


def _representation(ctx: RunContext, finished: _Finished, t: int) -> RepresentationBlock | None:
    """Who is in D_t, every seed (None where a seed's cannot be read: see ``RunContext.training_representation``)."""
    import torch

    per_seed = []
    for s in ctx.spec.seeds:
        found = ctx.training_representation(s, t)
        if found is None:
            return None
        mix = finished.get(MixResult, unit("mix", s, t)) if t > 0 else None
        per_seed.append(RepresentationSeed(seed=s, **found.model_dump(),
                                           real_draw=None if mix is None else mix.real_draw))
    data = ctx.data
    L, G = data.num_classes, data.num_subgroups
    real = data.train
    known = real.subgroups >= 0
    counts = torch.bincount(real.subgroups[known], minlength=G)
    real_cells = torch.bincount(real.labels[known] * G + real.subgroups[known], minlength=L * G).view(L, G)
    # per class, its smallest subgroup among those it has
    class_minority = torch.where(real_cells > 0, real_cells, real_cells.max() + 1).argmin(1)
    class_minority = torch.where(real_cells.sum(1) > 0, class_minority, -1).tolist()

    def minority_share(p: RepresentationSeed) -> float | None:
        shares = [p.cells[c][m] / sum(p.cells[c]) for c, m in enumerate(class_minority)
                  if m >= 0 and sum(p.cells[c]) > 0]
        return sum(shares) / len(shares) if shares else None

    cells = [[sum(p.cells[c][g] for p in per_seed) / len(per_seed) for g in range(G)] for c in range(L)]
    return RepresentationBlock(
        per_seed=per_seed,
        subgroup=[_stat([[p.subgroup[g]] for p in per_seed], PROB) for g in range(G)],
        cells=[[min(1.0, v) for v in row] for row in cells],
        minority=int(torch.argmin(counts)),
        class_minority=class_minority,
        minority_share=_stat([[minority_share(p)] for p in per_seed], PROB),
    )


def _reparation_summary(ctx: RunContext, finished: _Finished) -> ReparationSummary | None:
    """STAR as it ran: its resolved target and the finished STAR units' distances from it."""
    rep = ctx.spec.reparation
    if rep is None:
        return None
    mixes = [r.reparation for _, r in finished.all()
             if isinstance(r, (ClassifierResult, GeneratorResult)) and r.reparation is not None]
    data = ctx.data

    def mean(values: list[float]) -> float | None:
        return sum(values) / len(values) if values else None

    return ReparationSummary(
        apply_to=rep.apply_to, budget=rep.budget, subgroups_of_synthetic=rep.subgroups_of_synthetic,
        target=ctx.star_target.view(data.num_classes, data.num_subgroups).tolist(),
        subgroup_sources=sorted({m.subgroup_source for m in mixes}),
        units=len(mixes),
        tv_achieved=mean([m.tv_achieved for m in mixes]),
        tv_pool=mean([m.tv_pool for m in mixes]),
    )


def collect_results(ctx: RunContext, *, elapsed: float) -> Results:
    """Build :class:`Results` from whatever units have finished (``status = "partial"`` if not all)."""
    import numpy as np

    from harness.measure.amplification import (
        a_bar,
        amplification_factors,
        amplification_intervals,
        bias_value,
        fit_amplification,
    )

    spec, run_dir, data = ctx.spec, ctx.run_dir, ctx.data
    finished = _Finished(run_dir, plan(spec))
    units = finished.units

    # timing per stage, over every finished unit
    stages: dict[str, dict[str, float]] = {}
    threads: set[int] = set()
    for u, r in finished.all():
        s = stages.setdefault(u.stage, {"seconds": 0.0, "images": 0})
        s["seconds"] += r.timing.seconds
        s["images"] += r.timing.images
        if r.timing.threads is not None:
            threads.add(r.timing.threads)
    timing = Timing(
        total_s=elapsed,
        stages={k: StageTiming(seconds=v["seconds"], images=int(v["images"]),
                               images_per_s=v["images"] / v["seconds"] if v["seconds"] > 0 else None)
                for k, v in stages.items()},
        finished_at=datetime.now(UTC).isoformat(timespec="seconds"),
    )

    # the last generation that every seed finished
    last = -1
    for t in range(spec.loop.generations + 1):
        block = [u for u in units if u.seed is not None and u.generation == t]
        if all(finished.done(u) for u in block):
            last = t
        else:
            break

    R = spec.training.replicates
    generations: list[GenerationRecord] = []
    for t in range(last + 1):
        classifiers = {}
        for m in spec.classifier_names:
            treated = [[_classifier_seed(s, r, finished.get(ClassifierResult, unit("classifier", s, t, m, replicate=r)))
                        for r in range(R)] for s in spec.seeds]
            record = ClassifierRecord(per_seed=[p for row in treated for p in row], mean=_aggregate(treated))
            if t > 0 and spec.loop.control:
                control = [[_classifier_seed(s, r, finished.get(ClassifierResult, unit("control", s, t, m, replicate=r)))
                            for r in range(R)] for s in spec.seeds]
                record = record.model_copy(update={
                    "control": [p for row in control for p in row],
                    "control_mean": _aggregate(control),
                    "effect": _paired_effect(treated, control, spec.metrics.bias),
                })
            classifiers[m] = record
        generator = None
        if t > 0:
            gens = [
                _generator_seed(s, finished.get(EvaluateResult, unit("evaluate", s, t)),
                                finished.get(FilterResult, unit("filter", s, t)),
                                finished.get(GeneratorResult, unit("generator", s, t)),
                                finished.get(SampleResult, unit("sample", s, t)))
                for s in spec.seeds
            ]
            generator = GeneratorRecord(per_seed=gens, mean=GeneratorAggregate(
                q=_stat([[g.q] for g in gens], PROB), u=_stat([[g.u] for g in gens], PROB),
                fid=_stat([[g.fid] for g in gens], (0.0, None)), kid=_stat([[g.kid] for g in gens], None),
            ))
        generations.append(GenerationRecord(generation=t, generator=generator, classifiers=classifiers,
                                            representation=_representation(ctx, finished, t)))

    amplification = None
    verdict_block = None
    if last >= 0:
        measure = spec.metrics.bias
        names = list(spec.classifier_names)
        per_classifier = {}
        # B per (seed, replicate, t) of the treated arm, and the paired Δ_t(B) for t >= 1
        bias = np.full((len(names), len(spec.seeds), R, last + 1), np.nan)
        delta = np.full((len(names), len(spec.seeds), R, last), np.nan)
        for mi, m in enumerate(names):
            for t, g in enumerate(generations):
                record = g.classifiers[m]
                for p in record.per_seed:
                    bias[mi, spec.seeds.index(p.seed), p.replicate, t] = _nan(bias_value(p.model_dump(), measure))
                if t > 0 and record.effect is not None:
                    for v in record.effect.per_replicate:
                        delta[mi, spec.seeds.index(v.seed), v.replicate, t - 1] = _nan(v.values["B"])
            B_iv, A_iv, A_bar_iv = amplification_intervals(bias[mi], resamples=spec.metrics.verdict.resamples)
            point = [iv.estimate for iv in B_iv]
            factors = amplification_factors(point)
            per_classifier[m] = ClassifierAmplification(
                bias=point, A=factors, A_bar=a_bar(factors), bias_interval=[_from_interval(iv) for iv in B_iv],
                A_interval=[_from_interval(iv) for iv in A_iv], A_bar_interval=_from_interval(A_bar_iv),
            )
        q = np.full((len(spec.seeds), last), np.nan)
        u = np.full((len(spec.seeds), last), np.nan)
        for t in range(1, last + 1):
            for si, g in enumerate(generations[t].generator.per_seed):
                q[si, t - 1] = g.q
                u[si, t - 1] = np.nan if g.u is None else g.u
        with np.errstate(invalid="ignore"):
            seed_bias = np.nanmean(bias, axis=2).transpose(1, 0, 2)  # (S, M, T+1): replicates averaged first
        fit = fit_amplification(seed_bias, q, u, names, n_boot=spec.metrics.bootstrap, seed=0)
        amplification = Amplification(measure=measure, per_classifier=per_classifier, fit=Fit(**fit))
        if spec.loop.control and last >= 1:
            verdict_block = _verdict(spec, names, delta, last)
    oracle = finished.get(OracleResult, unit("oracle", None, 0))
    oracle_info = None if oracle is None else {
        "classifier": oracle.classifier, "joint": oracle.joint, "test_acc": oracle.test_acc,
        "subgroup_test_acc": oracle.subgroup_test_acc,
    }
    prov = provenance(ctx, oracle_info, sorted(threads))
    described = {}
    for m in spec.classifier_names:
        r = finished.get(ClassifierResult, unit("classifier", spec.seeds[0], 0, m))
        if r is not None:
            described[m] = r.model
    first_filter = finished.get(FilterResult, unit("filter", spec.seeds[0], 1)) if spec.loop.generations else None
    prov = prov.model_copy(update={"classifiers": described,
                                   "filter": first_filter.filter if first_filter is not None else {}})
    fid_info = _fid_provenance(ctx, finished)
    if fid_info is not None:
        prov = prov.model_copy(update={"fid": fid_info})
    train, test = data.train, data.test
    complete = last == spec.loop.generations and all(finished.done(u) for u in units)
    return Results(
        schema_version=SCHEMA_VERSION,
        run_id=spec.run_id,
        spec_hash=spec.spec_hash(),
        status="complete" if complete else "partial",
        last_generation=last,
        spec=spec.identity(),
        provenance=prov,
        dataset=DatasetInfo(
            name=spec.dataset.name,
            num_classes=data.num_classes,
            class_names=list(data.class_names),
            subgroup_scope=data.subgroup_scope,
            subgroup_names=[list(n) if isinstance(n, tuple) else n for n in data.subgroup_names],
            num_subgroups=data.num_subgroups,
            train_size=len(train),
            test_size=len(test),
            image_shape=list(train.shape),
            variants=sorted(data.variants),
        ),
        generations=generations,
        amplification=amplification,
        verdict=verdict_block,
        reparation=_reparation_summary(ctx, finished),
        timing=timing,
    )


def _fid_provenance(ctx: RunContext, finished: _Finished) -> dict[str, Any] | None:
    fid = ctx.spec.metrics.fid
    if fid.backbone == "none":
        return None
    for u, r in finished.all():
        if isinstance(r, EvaluateResult) and r.fid_provenance:
            return r.fid_provenance
    return {"backbone": fid.backbone}


def write_schema(path: Path = SCHEMA_PATH) -> Path:
    """Write the committed JSON Schema (``python -m harness.publish.results`` regenerates it)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(json_schema(), indent=2, sort_keys=True) + "\n")
    return path


if __name__ == "__main__":
    import sys

    sys.stdout.write(f"{write_schema()}\n")
