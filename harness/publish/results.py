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
    ClassifierResult,
    EvaluateResult,
    FilterResult,
    GeneratorResult,
    OracleResult,
    RecordT,
    SampleResult,
    StageResult,
    TrainingStats,
    read_record,
)
from harness.errors import BenchError

if TYPE_CHECKING:  # pragma: no cover - RunContext imports torch; the schema half of this module must not
    from harness.engine.stages import RunContext

SCHEMA_VERSION = 1
SCHEMA_PATH = Path(__file__).resolve().parents[2] / "leaderboard" / "schema.json"

Prob = Annotated[float, Field(ge=0.0, le=1.0)]
NonNeg = Annotated[float, Field(ge=0.0)]


class Model(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Stat(Model):
    """Mean over seeds with a 95% Student-t interval (``None`` with fewer than two seeds)."""

    mean: float | None
    ci_low: float | None
    ci_high: float | None
    std: float | None
    n: int = Field(ge=0)


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


class ClassifierRecord(Model):
    per_seed: list[ClassifierSeedMetrics]
    mean: ClassifierAggregate


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


class GeneratorAggregate(Model):
    q: Stat
    u: Stat
    fid: Stat
    kid: Stat


class GeneratorRecord(Model):
    per_seed: list[GeneratorSeedMetrics]
    mean: GeneratorAggregate


class GenerationRecord(Model):
    generation: int = Field(ge=0)
    generator: GeneratorRecord | None = Field(description="None at generation 0 (real data only).")
    classifiers: dict[str, ClassifierRecord]


class AFactor(Model):
    t: int = Field(ge=0)
    value: float | None = Field(ge=0.0)
    reason: str | None


class ClassifierAmplification(Model):
    bias: list[float | None] = Field(description="B_t from seed-averaged metrics, t = 0..T.")
    A: list[AFactor]
    A_bar: float | None = Field(ge=0.0)


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
    total_s: NonNeg
    stages: dict[str, StageTiming]
    finished_at: str


class Results(Model):
    schema_version: Literal[1]
    run_id: str
    spec_hash: str = Field(pattern=r"^[0-9a-f]{64}$")
    status: Literal["complete", "partial"]
    last_generation: int = Field(ge=-1, description="Last generation finished by every seed (-1: none).")
    spec: dict[str, Any]
    provenance: Provenance
    dataset: DatasetInfo
    generations: list[GenerationRecord]
    amplification: Amplification | None
    timing: Timing

    @model_validator(mode="after")
    def _spec_is_a_run_spec(self) -> Results:
        from harness.specs import RunSpec

        RunSpec.model_validate(self.spec)
        return self

    def to_dataframe(self) -> Any:
        """The per-seed metrics as a tidy :class:`pandas.DataFrame`, one row per value.

        Columns: ``run`` (the run_id), ``seed``, ``replicate`` (0), ``generation``, ``classifier`` (``None`` for
        the generator's metrics), ``metric``, ``value`` (float; NaN where the metric is undefined). Classifier
        metrics: ``acc``, ``meo``, ``di``, ``md``, ``dp``, ``eodds``, ``bias_gap``, ``worst_1`` … ``worst_G``
        (worst-k subgroup accuracy) and ``acc:VARIANT`` per dataset variant; generator metrics (generations
        ≥ 1): ``q``, ``u``, ``fid``, ``kid``. Seed means, intervals and the amplification fit stay on the model.
        """
        import pandas as pd

        rows: list[tuple[Any, ...]] = []

        def add(seed: int, t: int, classifier: str | None, metric: str, value: float | None) -> None:
            rows.append((self.run_id, seed, 0, t, classifier, metric, float("nan") if value is None else value))

        for g in self.generations:
            for name, record in g.classifiers.items():
                for p in record.per_seed:
                    for metric in ("acc", "meo", "di", "md", "dp", "eodds", "bias_gap"):
                        add(p.seed, g.generation, name, metric, getattr(p, metric))
                    for k, v in enumerate(p.worst_k, start=1):
                        add(p.seed, g.generation, name, f"worst_{k}", v)
                    for variant, va in p.variants.items():
                        add(p.seed, g.generation, name, f"acc:{variant}", va.acc)
            if g.generator is not None:
                for p in g.generator.per_seed:
                    for metric in ("q", "u", "fid", "kid"):
                        add(p.seed, g.generation, None, metric, getattr(p, metric))
        columns = ["run", "seed", "replicate", "generation", "classifier", "metric", "value"]
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
    if version != SCHEMA_VERSION:
        raise BenchError(f"{path}: unknown schema_version {version!r} (this bench reads {SCHEMA_VERSION})")
    try:
        return Results.model_validate(data)
    except ValidationError as exc:
        err = exc.errors()[0]
        loc = ".".join(str(p) for p in err["loc"])
        raise BenchError(f"{path}: {loc}: {err['msg']}") from None


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


def _classifier_seed(seed: int, r: ClassifierResult) -> ClassifierSeedMetrics:
    return ClassifierSeedMetrics(
        seed=seed, **r.metrics.model_dump(),
        variants={v: VariantAccuracy(acc=a.acc, drop=a.drop) for v, a in r.variants.items()},
        train=_train_stats(r.train), train_size={"real": r.train_size.real, "synthetic": r.train_size.synthetic},
    )


def _generator_seed(seed: int, ev: EvaluateResult, fl: FilterResult, gr: GeneratorResult,
                    sm: SampleResult) -> GeneratorSeedMetrics:
    return GeneratorSeedMetrics(
        seed=seed, q=ev.q, u=ev.u, u_source=ev.u_source, fid=ev.fid, kid=ev.kid, kid_std=ev.kid_std,
        fid_note=ev.fid_note, class_balance=ev.class_balance, oracle_class_balance=ev.oracle_class_balance,
        kept_per_class=fl.kept_per_class, dropped_per_class=fl.dropped_per_class, relabeled=fl.relabeled,
        generator_train_size=gr.train_size, candidates=sm.count,
    )


def collect_results(ctx: RunContext, *, elapsed: float) -> Results:
    """Build :class:`Results` from whatever units have finished (``status = "partial"`` if not all)."""
    import numpy as np

    from harness.measure.amplification import a_bar, amplification_factors, bias_value, fit_amplification
    from harness.measure.stats import aggregate, mean_ci

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

    generations: list[GenerationRecord] = []
    for t in range(last + 1):
        classifiers = {}
        for m in spec.classifier_names:
            per_seed = [_classifier_seed(s, finished.get(ClassifierResult, unit("classifier", s, t, m)))
                        for s in spec.seeds]
            flat = [{k: v for k, v in p.model_dump().items() if k not in ("seed", "train", "train_size", "variants",
                                                                          "subgroup_acc")} for p in per_seed]
            agg = aggregate(flat)
            agg["variants"] = {
                v: mean_ci([p.variants[v].acc for p in per_seed]) for v in (per_seed[0].variants if per_seed else {})
            }
            classifiers[m] = ClassifierRecord(per_seed=per_seed, mean=ClassifierAggregate(**agg))
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
                q=mean_ci([g.q for g in gens]), u=mean_ci([g.u for g in gens]),
                fid=mean_ci([g.fid for g in gens]), kid=mean_ci([g.kid for g in gens]),
            ))
        generations.append(GenerationRecord(generation=t, generator=generator, classifiers=classifiers))

    amplification = None
    if last >= 0:
        measure = spec.metrics.bias
        names = list(spec.classifier_names)
        per_classifier = {}
        B = np.full((len(spec.seeds), len(names), last + 1), np.nan)
        for mi, m in enumerate(names):
            for t, g in enumerate(generations):
                for si, p in enumerate(g.classifiers[m].per_seed):
                    v = bias_value(p.model_dump(), measure)
                    B[si, mi, t] = np.nan if v is None else v
            seed_avg = [None if np.all(np.isnan(B[:, mi, t])) else float(np.nanmean(B[:, mi, t]))
                        for t in range(last + 1)]
            factors = amplification_factors(seed_avg)
            per_classifier[m] = ClassifierAmplification(bias=seed_avg, A=factors, A_bar=a_bar(factors))
        q = np.full((len(spec.seeds), last), np.nan)
        u = np.full((len(spec.seeds), last), np.nan)
        for t in range(1, last + 1):
            for si, g in enumerate(generations[t].generator.per_seed):
                q[si, t - 1] = g.q
                u[si, t - 1] = np.nan if g.u is None else g.u
        fit = fit_amplification(B, q, u, names, n_boot=spec.metrics.bootstrap, seed=0)
        amplification = Amplification(measure=measure, per_classifier=per_classifier, fit=Fit(**fit))

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
